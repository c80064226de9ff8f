"""Real images for the ExecuTorch programs (``executorch_export``): check, calibration and
evaluation batches at the program's fixed input size, the detector's checks against
``model.predict``, the accuracy of a program on a split, and the INT8 accuracy as a function of
the modules left float (the callback an automatic float-fallback search calls).

Images are read as for the ONNX checks (``onnx_data``: a split of the config through its test
pipeline and the model's data preprocessor), with the pipeline's resizing made to give the
program's size (:func:`fixed_size_pipeline`).
"""

import copy
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

from ..datasets.wrappers import innermost_dataset
from ..errors import InputError
from ..models.tasks import DEFAULT_INPUT_SIZE
from .executorch_export import PteRunner, export_program
from .numpy_postprocess import ssd_detections
from .onnx_data import preprocessed_batches, split_dataset, spread_indices
from .onnx_end2end_check import check_detections, padded_detections
from .onnx_evaluation import evaluate_batches, task_metrics
from .onnx_export import exportable_task, ssd_postprocess

Batch = Tuple[torch.Tensor, list]


def _kind(step: dict) -> str:
    return str(step.get('type', '')).split('.')[-1]


def default_input_size(cfg: Any, task: str) -> Tuple[int, int]:
    """``(H, W)`` the config's test pipeline gives every image (a fixed-size ``Resize``, or a
    ``CenterCrop``), else the task's ``DEFAULT_INPUT_SIZE``."""
    size = None
    for step in innermost_dataset(cfg.test_dataloader.dataset).pipeline:
        if _kind(step) == 'Resize' and step.get('scale') and not step.get('keep_ratio', False):
            scale = step['scale']
            w, h = (scale, scale) if isinstance(scale, int) else scale
            size = (int(h), int(w))
        elif _kind(step) == 'CenterCrop':
            crop = step['crop_size']
            w, h = (crop, crop) if isinstance(crop, int) else crop
            size = (int(h), int(w))
    return size or DEFAULT_INPUT_SIZE[task]


def fixed_size_pipeline(pipeline: Sequence[dict], size: Sequence[int]) -> List[dict]:
    """``pipeline`` changed to output images of ``size`` ``(H, W)``: a ``CenterCrop`` crops to
    it (``ResizeEdge`` scaled as much as the crop), else each ``Resize`` resizes to it without
    keeping the aspect ratio. ``ValueError`` if the pipeline has neither."""
    h, w = int(size[0]), int(size[1])
    steps = copy.deepcopy(list(pipeline))
    crops = [s for s in steps if _kind(s) == 'CenterCrop']
    resizes = [s for s in steps if _kind(s) == 'Resize']
    if crops:
        crop = crops[-1]['crop_size']
        side = crop if isinstance(crop, int) else min(crop)
        for step in steps:
            if _kind(step) == 'ResizeEdge':
                step['scale'] = round(step['scale'] * min(h, w) / side)
        crops[-1]['crop_size'] = (w, h)
    elif resizes:
        for step in resizes:
            step.pop('scale_factor', None)
            step.update(scale=(w, h), keep_ratio=False)
    else:
        raise ValueError(
            'the test pipeline has no Resize or CenterCrop to give the fixed input size of '
            'the ExecuTorch program'
        )
    return steps


def fixed_size_dataset(cfg: Any, split: str, size: Sequence[int]) -> Any:
    """The config's ``split`` with its test pipeline resized to ``size`` (H, W)."""
    pipeline = innermost_dataset(cfg.test_dataloader.dataset).pipeline
    dataset = split_dataset(cfg, split, fixed_size_pipeline(pipeline, size))
    if len(dataset) == 0:
        raise InputError(f"the config's {split} split has no images")
    return dataset


def fixed_size_batches(
    model: nn.Module,
    cfg: Any,
    split: str,
    count: int,
    size: Sequence[int],
    indices: Optional[Sequence[int]] = None,
) -> List[Batch]:
    """``count`` images of ``split`` (spread over it; 0: all), or those at ``indices``, batch 1,
    at ``size`` (H, W)."""
    dataset = fixed_size_dataset(cfg, split, size)
    chosen = spread_indices(len(dataset), count) if indices is None else list(indices)
    batches = preprocessed_batches(model, dataset, chosen)
    for inputs, _ in batches:
        if tuple(inputs.shape[2:]) != tuple(size):
            raise InputError(
                f'the data preprocessor made a {tuple(inputs.shape[2:])} input of a '
                f'{tuple(size)} image (padding?): give an --input-size it keeps'
            )
    return batches


def detections_of(samples: Sequence[Any]) -> List[Dict[str, np.ndarray]]:
    """``pred_instances`` of ``DetDataSample`` s as dicts of numpy ``boxes``, ``scores``,
    ``labels``."""
    return [
        dict(
            boxes=s.pred_instances.bboxes.cpu().numpy(),
            scores=s.pred_instances.scores.cpu().numpy(),
            labels=s.pred_instances.labels.cpu().numpy(),
        )
        for s in samples
    ]


def check_detector(
    model: nn.Module,
    runner: Callable[[torch.Tensor], List[torch.Tensor]],
    batches: Sequence[Batch],
    decoding: Optional[Dict[str, Any]] = None,
    box_tol: float = 1e-2,
    score_tol: float = 1e-4,
) -> Dict[str, Dict[str, Any]]:
    """The program's raw outputs turned into detections, against ``model.predict``.

    Per path a report as :func:`.onnx_end2end_check.check_end2end`'s (``detections``,
    ``at_cut``, ``tied``, ``max_box_diff``, ``max_score_diff``): ``'mmdet'`` through
    :func:`.onnx_export.ssd_postprocess`, and with ``decoding`` (the JSON's ``detection``
    entry) ``'numpy'`` through :func:`.numpy_postprocess.ssd_detections`. Raises
    ``OnnxParityError`` where a detection is on one side only and rounding cannot explain it.

    The tolerances are ten times the end-to-end ONNX check's: XNNPACK picks its own kernels
    for the CPU it runs on (independent of torch's), so its rounding differs from PyTorch's
    more, and more from one CPU to another, than onnxruntime's does.
    """
    reports = {}
    for path in ('mmdet', 'numpy') if decoding else ('mmdet',):
        reports[path] = dict(
            images=0, detections=0, at_cut=0, tied=0, max_box_diff=0.0, max_score_diff=0.0
        )
    for inputs, samples in batches:
        outputs = runner(inputs)
        n = len(outputs) // 2
        found = {'mmdet': detections_of(ssd_postprocess(outputs[:n], outputs[n:], model, samples))}
        if decoding:
            found['numpy'] = ssd_detections(
                [o.numpy() for o in outputs],
                decoding,
                tuple(inputs.shape[2:]),
                samples[0].metainfo['scale_factor'],
            )
        for path, results in found.items():
            report = reports[path]
            padded = padded_detections(results)
            check_detections(model, inputs, samples, padded, report, box_tol, score_tol)
            report['images'] += inputs.shape[0]
    return reports


def evaluate_program(
    runner: PteRunner, model: nn.Module, batches: Sequence[Batch], cfg: Any, split: str = 'val'
) -> Dict[str, float]:
    """The config's ``val_evaluator`` metrics of the program on ``batches`` (images of
    ``split``, from :func:`fixed_size_batches`), post-processed by the libraries' own code as
    ``quantization`` does it for ONNX files (the runner answers onnxruntime's calls)."""
    meta = dict(task=exportable_task(model), layout='raw')
    with torch.no_grad():
        return evaluate_batches(runner, meta, model, cfg, list(batches), split_dataset(cfg, split))


def task_metric(model: nn.Module, metrics: Dict[str, float]) -> Tuple[str, float]:
    """The task's headline metric (mAP, mIoU, top-1; percent) and its name."""
    name, value = next(iter(task_metrics(exportable_task(model), metrics).items()))
    return name, value


def int8_metric(
    model: nn.Module,
    cfg: Any,
    calibration: Sequence[torch.Tensor],
    batches: Sequence[Batch],
    split: str = 'val',
    num_threads: Optional[int] = None,
) -> Callable[[Sequence[str]], float]:
    """``evaluate(float_modules) -> metric``: the task metric (percent) on ``batches`` (images
    of ``split``) of the
    INT8 program calibrated on ``calibration`` with the modules ``float_modules`` (names as
    :func:`quantizable_modules` gives them, or any of their parents) left float.

    The interface of an automatic float-fallback search: layer names in, metric out.
    """
    shape = tuple(batches[0][0].shape)

    def evaluate(float_modules: Sequence[str]) -> float:
        program = export_program(model, shape, True, calibration, float_modules)
        metrics = evaluate_program(PteRunner(program, num_threads), model, batches, cfg, split)
        return task_metric(model, metrics)[1]

    return evaluate


def quantizable_modules(model: nn.Module) -> List[str]:
    """Names of the model's conv and linear layers (the weighted operations INT8 quantizes),
    in definition order: candidates for ``float_modules``."""
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, (nn.Conv2d, nn.Linear)) and name
    ]
