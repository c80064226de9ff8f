"""Prediction on BGR images in batches, for every task: one path for one image and for many.

Each image goes through the config's test pipeline as the upstream single-image APIs prepare an
array (mmdet's ``inference_detector``, mmseg's ``inference_model``, mmpretrain's
``ImageClassificationInferencer``: the file-loading step replaced or removed), the prepared
images are collated (``pseudo_collate``, as those APIs do) and the model's ``test_step`` runs on
them, as ``BaseInferencer.forward`` does.

Why not the upstream inferencers themselves: they load files inside the pipeline (one unreadable
file ends the run), keep every prediction and drawing in memory until the end (no video), and a
batch of images of different sizes fails in mmseg (its preprocessor asserts one size) and is
padded in mmdet (padding changes what the model sees, so a batch would not predict what batch 1
predicts). Here a batch only ever holds images of one preprocessed size: consecutive images of
another size start a new batch.
"""

import copy
from typing import Any, Callable, List, Sequence

import numpy as np
import torch
import torch.nn as nn
from mmengine.dataset import Compose, pseudo_collate
from mmengine.registry import DefaultScope

from ..models.tasks import CLASSIFICATION, DETECTION, model_task


def _type_name(step: dict) -> str:
    return str(step.get('type', '')).split('.')[-1]


def _detection_pipeline(cfg) -> Callable[[np.ndarray], dict]:
    """mmdet's ``inference_detector`` on an array: its test pipeline, loading from the array."""
    from mmdet.utils import get_test_pipeline_cfg

    steps = get_test_pipeline_cfg(cfg.copy())
    steps[0].type = 'mmdet.LoadImageFromNDArray'
    pipeline = Compose(steps)
    return lambda image: pipeline(dict(img=image, img_id=0))


def _segmentation_pipeline(cfg) -> Callable[[np.ndarray], dict]:
    """mmseg's ``inference_model`` on an array: ``cfg.test_pipeline`` without
    ``LoadAnnotations``, loading from the array."""
    steps = copy.deepcopy(list(cfg.get('test_pipeline') or cfg.test_dataloader.dataset.pipeline))
    steps = [s for s in steps if _type_name(s) not in ('LoadAnnotations', 'LoadSegAnnotations')]
    steps[0]['type'] = 'LoadImageFromNDArray'
    pipeline = Compose(steps)
    return lambda image: pipeline(dict(img=image))


def _classification_pipeline(cfg) -> Callable[[np.ndarray], dict]:
    """mmpretrain's ``ImageClassificationInferencer``: the test loader's pipeline without its
    file loading, on ``dict(img, img_shape, ori_shape)``."""
    from mmpretrain.registry import TRANSFORMS

    steps = [
        TRANSFORMS.build(s)
        for s in cfg.test_dataloader.dataset.pipeline
        if not _type_name(s).endswith('LoadImageFromFile')
    ]
    pipeline = Compose(steps)
    return lambda image: pipeline(
        dict(img=image, img_shape=image.shape[:2], ori_shape=image.shape[:2])
    )


class Predictor:
    """A model (``init_model``'s: with ``cfg`` and ``dataset_meta``) and its test pipeline.

    ``predictor(images)``: the data samples (mmdet ``DetDataSample`` with ``pred_instances``,
    mmseg ``SegDataSample`` with ``pred_sem_seg``, mmpretrain ``DataSample`` with
    ``pred_score``) of BGR uint8 ``images`` (each (H, W, 3)), in their order, in original-image
    coordinates. At most ``batch_size`` images go through ``test_step`` at once, and only images
    of one preprocessed size, so each prediction is the one batch 1 gives (within float
    rounding).
    """

    def __init__(self, model: nn.Module, batch_size: int = 1):
        if batch_size < 1:
            raise ValueError(f'batch_size must be >= 1, got {batch_size}')
        self.model = model
        self.batch_size = batch_size
        self.task = model_task(model)
        build = {
            DETECTION: _detection_pipeline,
            CLASSIFICATION: _classification_pipeline,
        }.get(self.task, _segmentation_pipeline)
        # the transforms' names are the config's scope's (the current default scope is the
        # last model's built in this process)
        with DefaultScope.overwrite_default_scope(model.cfg.get('default_scope')):
            self.pipeline = build(model.cfg)

    def __call__(self, images: Sequence[np.ndarray]) -> List[Any]:
        prepared = [self.pipeline(image) for image in images]
        results: List[Any] = []
        batch: List[dict] = []
        for data in prepared:
            if batch and (
                len(batch) == self.batch_size or data['inputs'].shape != batch[0]['inputs'].shape
            ):
                results.extend(self._forward(batch))
                batch = []
            batch.append(data)
        if batch:
            results.extend(self._forward(batch))
        return results

    def _forward(self, batch: List[dict]) -> List[Any]:
        with torch.no_grad():
            return self.model.test_step(pseudo_collate(batch))


def predict(model: nn.Module, image: np.ndarray) -> Any:
    """The data sample ``model`` predicts for one BGR uint8 image (``Predictor`` of batch 1)."""
    return Predictor(model)([image])[0]
