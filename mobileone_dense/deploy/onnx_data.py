"""Real images for ONNX checks, calibration and evaluation.

A config's data split (``train``, ``val`` or ``test``) is read through the config's own **test**
pipeline (so that calibration images are prepared exactly as the images the model is evaluated
on) and the model's data preprocessor, giving the ``(inputs, data_samples)`` pairs that
``model.predict`` and the ONNX ``input`` take.
"""

import copy
from typing import Any, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from mmengine.dataset import pseudo_collate
from mmengine.registry import DATASETS

from ..datasets.wrappers import innermost_dataset, leaf_datasets
from ..errors import MissingDataError

# test-pipeline steps whose size the second export check scales (see pipeline_at_scale)
_SIZED_STEPS = ('Resize', 'ResizeEdge', 'CenterCrop')


def split_dataset(cfg: Any, split: str, pipeline: Optional[Sequence[dict]] = None) -> Any:
    """The dataset of ``cfg``'s ``<split>_dataloader``, every part reading through ``pipeline``.

    Args:
        cfg: the model's config (mmengine ``Config``).
        split: ``'train'``, ``'val'`` or ``'test'``.
        pipeline: transforms (default: the config's test pipeline, the one evaluation uses).
    """
    if split not in ('train', 'val', 'test'):
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    loader = f'{split}_dataloader'
    if not cfg.get(loader):
        raise ValueError(f'the config has no {loader}: give another split')
    if pipeline is None:
        pipeline = innermost_dataset(cfg.test_dataloader.dataset).pipeline
    dataset_cfg = copy.deepcopy(cfg[loader].dataset)
    for _, leaf in leaf_datasets(dataset_cfg):
        leaf.pipeline = copy.deepcopy(list(pipeline))
    with DATASETS.switch_scope_and_registry(cfg.get('default_scope')) as registry:
        try:
            return registry.build(dataset_cfg)
        except (FileNotFoundError, OSError) as error:
            raise MissingDataError(
                f"cannot read the config's {split} split ({error}); put the data where "
                f'{loader}.dataset says (data_root, ann_file, data_prefix) or point the config '
                'at it'
            ) from error


def pipeline_at_scale(pipeline: Sequence[dict], scale_h: float, scale_w: float) -> List[dict]:
    """``pipeline`` with its output size scaled: fixed-size ``Resize`` by ``(scale_w,
    scale_h)`` (rounded to multiples of 8), keep-ratio ``Resize``, ``ResizeEdge`` and
    ``CenterCrop`` by ``scale_h`` (one factor: they keep the aspect ratio)."""
    result = []
    for step in copy.deepcopy(list(pipeline)):
        kind = str(step.get('type', '')).split('.')[-1]
        if kind == 'Resize' and step.get('scale') is not None:
            w, h = step['scale'] if not isinstance(step['scale'], int) else (step['scale'],) * 2
            if step.get('keep_ratio', False):
                step['scale'] = (round(w * scale_h), round(h * scale_h))
            else:
                step['scale'] = (
                    max(8, round(w * scale_w / 8) * 8),
                    max(8, round(h * scale_h / 8) * 8),
                )
        elif kind == 'ResizeEdge':
            step['scale'] = round(step['scale'] * scale_h)
        elif kind == 'CenterCrop':
            size = step['crop_size']
            step['crop_size'] = (
                round(size * scale_h)
                if isinstance(size, int)
                else tuple(round(s * scale_h) for s in size)
            )
        result.append(step)
    return result


@torch.no_grad()
def preprocessed_batches(
    model: nn.Module, dataset: Any, indices: Sequence[int], batch_size: int = 1
) -> List[Tuple[torch.Tensor, list]]:
    """``(inputs, data_samples)`` of ``dataset[i]`` for ``i`` in ``indices`` after the model's
    data preprocessor (test mode); consecutive samples of equal size share a batch of up to
    ``batch_size`` (no padding)."""
    groups: List[list] = []
    for index in indices:
        sample = dataset[index]
        shape = tuple(sample['inputs'].shape)
        if (
            groups
            and len(groups[-1]) < batch_size
            and tuple(groups[-1][0]['inputs'].shape) == shape
        ):
            groups[-1].append(sample)
        else:
            groups.append([sample])
    batches = []
    for group in groups:
        data = model.data_preprocessor(pseudo_collate(group), False)
        batches.append((data['inputs'], data['data_samples']))
    return batches


def spread_indices(length: int, count: int) -> List[int]:
    """``count`` indices spread evenly over ``range(length)`` (all of them if fewer)."""
    if count <= 0 or count >= length:
        return list(range(length))
    return [int(i * length / count) for i in range(count)]


def disjoint_indices(length: int, first: int, second: int = 0) -> Tuple[List[int], List[int]]:
    """Two disjoint index sets of ``range(length)``: ``first`` indices spread over it (at most
    half of it), and ``second`` spread over the rest (``0``: all the rest)."""
    chosen = spread_indices(length, min(first, length // 2)) if first > 0 else []
    taken = set(chosen)
    rest = [i for i in range(length) if i not in taken]
    return chosen, [rest[i] for i in spread_indices(len(rest), second)]
