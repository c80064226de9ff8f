"""Each task's real S0 config on tiny generated data: only data, lengths, sizes and batch change
(and the detection and segmentation backbones start from scratch: no ImageNet download).

Shared by the distributed tests (2 CPU processes) and the CUDA tests; the caller sets what is
specific to its run (backend, hooks, loaders) and dumps the config for the tools.
"""

import os
import os.path as osp

from mmengine.config import Config

from mobileone_dense.apis.classification import set_imagenet_schedule
from mobileone_dense.datasets import make_coco_shapes, make_voc_shapes
from mobileone_dense.datasets.synthetic_imagenet import make_imagenet_folder

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def config_path(name: str) -> str:
    return osp.join(REPO, 'configs', f'{name}.py')


def short_detection_config(
    root: str, num_train: int = 8, num_val: int = 5, size: int = 96
) -> Config:
    """``ssdlite_mobileone_s0_coco.py`` on generated COCO data, resized to ``size``; one epoch
    (``num_train / batch`` iterations), validated at its end."""
    data = osp.join(root, 'coco') + '/'
    make_coco_shapes(data, num_train=num_train, num_val=num_val, image_size=(64, 64))
    cfg = Config.fromfile(config_path('ssdlite_mobileone_s0_coco'))
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[loader].dataset.data_root = data
        for transform in cfg[loader].dataset.pipeline:
            if transform['type'].endswith('Resize'):
                transform['scale'] = (size, size)  # the config's 320 x 320, smaller
    for evaluator in ('val_evaluator', 'test_evaluator'):
        cfg[evaluator].ann_file = data + 'annotations/instances_val2017.json'
    cfg.train_cfg.update(max_epochs=1, val_interval=1)
    cfg.model.test_cfg.score_thr = 0.0  # keep the untrained model's boxes: a non-zero mAP
    cfg.model.backbone.init_cfg = None
    return cfg


def short_segmentation_config(root: str, max_iters: int = 2, num_val: int = 5) -> Config:
    """``deeplabv3_mobileone_s0_voc.py`` on generated VOC data (64 px crops), ``max_iters``
    iterations, validated and saved at the last."""
    voc = make_voc_shapes(
        osp.join(root, 'VOCdevkit'), num_train=2, num_aug=2, num_val=num_val, image_size=(64, 64)
    )
    cfg = Config.fromfile(config_path('deeplabv3_mobileone_s0_voc'))
    datasets = cfg.train_dataloader.dataset.datasets + [
        cfg.val_dataloader.dataset,
        cfg.test_dataloader.dataset,
    ]
    for dataset in datasets:
        dataset.data_root = voc
        for transform in dataset.pipeline:
            if transform['type'].endswith('Resize'):
                transform['scale'] = (128, 64)
            elif transform['type'].endswith('RandomCrop'):
                transform['crop_size'] = (64, 64)
    cfg.model.data_preprocessor.size = (64, 64)
    cfg.model.backbone.init_cfg = None
    cfg.train_cfg.update(max_iters=max_iters, val_interval=max_iters)
    cfg.default_hooks.checkpoint.interval = max_iters
    return cfg


def short_classification_config(
    root: str, num_classes: int = 5, per_class: int = 1, max_epochs: int = 2
) -> Config:
    """``mobileone_s0_imagenet.py`` on a generated ImageNet folder of ``num_classes`` classes,
    32 px, ``max_epochs`` epochs (warm-up, then cosine), validated and saved after the last."""
    data = make_imagenet_folder(
        osp.join(root, 'imagenet'),
        num_classes=num_classes,
        train_per_class=per_class,
        val_per_class=1,
        size=40,
    )['root']
    cfg = Config.fromfile(config_path('mobileone_s0_imagenet'))
    cfg.model.head.num_classes = num_classes
    classes = tuple(sorted(os.listdir(osp.join(data, 'train'))))
    set_imagenet_schedule(cfg, max_epochs=max_epochs, curriculum=[(0, 32, 0.3)], eval_size=32)
    cfg.train_cfg.val_interval = max_epochs
    cfg.default_hooks.checkpoint.interval = max_epochs
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[loader].dataset.update(data_root=data, metainfo=dict(classes=classes))
    cfg.train_dataloader.drop_last = True  # no batch of 1 for BN
    return cfg
