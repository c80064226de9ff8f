"""The models the benchmarks time: ours and the same-task baselines of other libraries.

Every builder returns an eval-mode ``nn.Module`` whose ``forward(x)`` takes one image batch
(N, 3, H, W): mmdet / mmseg / mmpretrain models wrapped in :class:`TensorMode` (raw head outputs,
no data preprocessor or post-processing), backbones and torchvision / timm models as they are.
Weights are random; nothing is downloaded.
"""

import os.path as osp

import torch
import torch.nn as nn
from mmengine.hub import get_config
from mmpretrain.registry import MODELS as MMPRETRAIN_MODELS
from torchvision.models import mobilenet_v2

from ..apis import build_model_from_config
from ..apis.quickstart import PACKAGE_CONFIGS
from ..models.mobileone import MobileOne, stage_channels
from ..models.tasks import CLASSIFICATION, DETECTION, SEGMENTATION
from ..models.tasks import DEFAULT_INPUT_SIZE as TASK_INPUT_SIZE

ARCHS = ('s0', 's1', 's2', 's3', 's4')
TASKS = ('cls', 'det', 'seg')
# Square input side per task (the configs' test sizes, models.tasks.DEFAULT_INPUT_SIZE); the
# 'backbone' rows are measured with the 'cls' runs.
DEFAULT_INPUT_SIZE = {
    abbreviation: TASK_INPUT_SIZE[task][0]
    for abbreviation, task in (
        ('backbone', CLASSIFICATION),
        ('cls', CLASSIFICATION),
        ('det', DETECTION),
        ('seg', SEGMENTATION),
    )
}

OUR_CONFIGS = {
    'cls': 'mobileone_{arch}_imagenet.py',
    'det': 'ssdlite_mobileone_{arch}_coco.py',
    'seg': 'deeplabv3_mobileone_{arch}_voc.py',
}
OUR_NAMES = {
    'backbone': 'MobileOne (ours)',
    'cls': 'MobileOne (ours)',
    'det': 'SSDLite-MobileOne (ours)',
    'seg': 'DeepLabV3-MobileOne (ours)',
}
BASELINE_NAMES = {
    'backbone': 'MobileNetV2 features (torchvision)',
    'cls': 'MobileNetV2 (torchvision)',
    'det': 'SSDLite-MobileNetV2 (mmdet)',
    'seg': 'DeepLabV3-MobileNetV2 (mmseg)',
}
MMDET_SSDLITE_MOBILENETV2 = 'mmdet::ssd/ssdlite_mobilenetv2-scratch_8xb24-600e_coco.py'
# mmseg ships DeepLabV3-MobileNetV2 for Cityscapes and ADE20K only; the ADE20K one is trained on
# 512x512 crops like our VOC models (its classes are set to VOC's 21 below).
MMSEG_DEEPLABV3_MOBILENETV2 = (
    'mmseg::mobilenet_v2/mobilenet-v2-d8_deeplabv3_4xb4-160k_ade20k-512x512.py'
)


class TensorMode(nn.Module):
    """``model(x, mode='tensor')`` of an mmdet / mmseg / mmpretrain model as ``forward(x)``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor):
        return self.model(x, mode='tensor')


class PlainForward(nn.Module):
    """``model(x)``, with a ``train()``/``eval()`` that returns the module (mmpretrain's
    MobileOne returns None, which breaks chaining in counters)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor):
        return self.model(x)


class ForwardFeatures(nn.Module):
    """A timm classifier's ``forward_features(x)`` (backbone without pooling and head)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


def our_config(task: str, arch: str) -> str:
    """Path of our config for ``task`` ('cls', 'det', 'seg') and ``arch``."""
    return osp.join(PACKAGE_CONFIGS, OUR_CONFIGS[task].format(arch=arch))


def build_ours(task: str, arch: str) -> nn.Module:
    """Our train-time model (with branches), eval mode: the bare backbone or the config's whole
    model."""
    if task == 'backbone':
        return MobileOne(arch, out_indices=(3,)).eval()
    return TensorMode(build_model_from_config(our_config(task, arch))).eval()


def build_mobilenet_v2(task: str) -> nn.Module:
    """The task's MobileNetV2 baseline, as built (random weights, nothing downloaded)."""
    if task in ('backbone', 'cls'):
        model = mobilenet_v2(weights=None)
        return (model.features if task == 'backbone' else model).eval()
    if task == 'det':
        cfg = get_config(MMDET_SSDLITE_MOBILENETV2)  # 80 classes, like ours
    elif task == 'seg':
        cfg = get_config(MMSEG_DEEPLABV3_MOBILENETV2)
        cfg.model.pretrained = None  # the base's mmcls:// URL
        cfg.model.decode_head.num_classes = 21  # VOC, as ours
        cfg.model.auxiliary_head = None  # ours has none (and 'tensor' mode never runs it)
    else:
        raise ValueError(f'unknown task {task!r}; valid: backbone, {", ".join(TASKS)}')
    cfg.model.backbone.init_cfg = None
    return TensorMode(build_model_from_config(cfg)).eval()


def build_timm_mobileone(arch: str, backbone: bool) -> nn.Module:
    """timm's ``mobileone_<arch>``, put in deploy form by ``reparameterize_model``; raises
    ImportError without timm. ``backbone``: its ``forward_features`` only (our backbone's
    counterpart)."""
    # imported here: timm is an optional reference (the benchmark notes it as skipped without)
    import timm
    from timm.utils.model import reparameterize_model

    # num_classes=0 drops the classifier's linear layer: the backbone's params are its own
    model = timm.create_model(
        f'mobileone_{arch}', pretrained=False, num_classes=0 if backbone else 1000
    )
    model = reparameterize_model(model.eval())
    return ForwardFeatures(model) if backbone else model


def build_mmpretrain_mobileone(arch: str, backbone: bool) -> nn.Module:
    """mmpretrain's MobileOne backbone (or ImageClassifier with GAP + linear head) after
    ``switch_to_deploy()``."""
    cfg = dict(type='MobileOne', arch=arch, out_indices=(3,))
    if not backbone:
        cfg = dict(
            type='ImageClassifier',
            backbone=cfg,
            neck=dict(type='GlobalAveragePooling'),
            head=dict(type='LinearClsHead', num_classes=1000, in_channels=stage_channels(arch)[3]),
        )
    # in mmpretrain's scope whatever the current default scope is (mmseg's has no MobileOne)
    model = MMPRETRAIN_MODELS.build(dict(cfg, _scope_='mmpretrain'))
    model.eval()  # not chained: mmpretrain's MobileOne.train() returns None
    if backbone:
        model.switch_to_deploy()
        return PlainForward(model)
    model.backbone.switch_to_deploy()
    return TensorMode(model)
