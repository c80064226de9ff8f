"""The three tasks, spelled one way everywhere, and which one a built model does."""

import torch.nn as nn

DETECTION, SEGMENTATION, CLASSIFICATION = 'detection', 'segmentation', 'classification'
TASKS = (DETECTION, SEGMENTATION, CLASSIFICATION)
# Default (height, width) input per task: our configs' test sizes (SSDLite 320x320, DeepLabV3
# 512x512 crops, ImageNet 224x224 centre crops).
DEFAULT_INPUT_SIZE = {DETECTION: (320, 320), SEGMENTATION: (512, 512), CLASSIFICATION: (224, 224)}


def model_task(model: nn.Module) -> str:
    """``'detection'``, ``'segmentation'`` or ``'classification'``, from the model's base class
    (mmdet ``BaseDetector``, mmseg ``BaseSegmentor``, mmpretrain ``BaseClassifier``); raises
    ``TypeError`` for anything else."""
    # imported on use: importing mobileone_dense does not load mmseg.models
    from mmdet.models.detectors import BaseDetector
    from mmpretrain.models.classifiers import BaseClassifier
    from mmseg.models.segmentors import BaseSegmentor

    for base, task in (
        (BaseDetector, DETECTION),
        (BaseSegmentor, SEGMENTATION),
        (BaseClassifier, CLASSIFICATION),
    ):
        if isinstance(model, base):
            return task
    raise TypeError(
        f'{type(model).__name__} is none of the three tasks: mmdet detectors, mmseg '
        'segmentors and mmpretrain classifiers are'
    )
