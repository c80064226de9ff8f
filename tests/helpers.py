"""Tiny generated datasets and run configs shared by the tests."""

import os
import os.path as osp

import cv2
import numpy as np


def make_image_folder(
    root: str, classes=('dark', 'bright'), per_class: int = 8, size: int = 32, seed: int = 0
) -> str:
    """``root/<class>/*.jpg``: class 0 dark noisy images, class 1 bright ones (trivially
    separable)."""
    rng = np.random.default_rng(seed)
    for label, name in enumerate(classes):
        os.makedirs(osp.join(root, name), exist_ok=True)
        for i in range(per_class):
            base = 60 if label == 0 else 190
            image = np.clip(rng.normal(base, 25, (size, size, 3)), 0, 255).astype(np.uint8)
            cv2.imwrite(osp.join(root, name, f'{name}_{i:03d}.jpg'), image)
    return root


def tiny_classifier_config(
    work_dir: str,
    data_root: str,
    max_iters: int = 4,
    val_interval: int = 2,
    ema: bool = False,
    reparameterize_hook: dict = None,
) -> dict:
    """An mmpretrain ImageClassifier with our mu0 backbone on ``make_image_folder`` data."""
    pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='Resize', scale=(32, 32)),
        dict(type='PackInputs'),
    ]
    loader = dict(
        batch_size=4,
        num_workers=0,
        dataset=dict(type='CustomDataset', data_root=data_root, pipeline=pipeline),
        sampler=dict(type='DefaultSampler', shuffle=False),
    )
    hooks = [dict(type='mobileone_dense.ReparameterizeHook', **(reparameterize_hook or {}))]
    if ema:
        hooks.insert(0, dict(type='EMAHook', momentum=0.01))
    return dict(
        default_scope='mmpretrain',
        custom_imports=dict(imports=['mobileone_dense'], allow_failed_imports=False),
        model=dict(
            type='ImageClassifier',
            backbone=dict(type='mobileone_dense.MobileOne', arch='mu0', out_indices=(3,)),
            neck=dict(type='GlobalAveragePooling'),
            head=dict(
                type='LinearClsHead',
                num_classes=2,
                in_channels=384,
                loss=dict(type='CrossEntropyLoss'),
                topk=(1,),
            ),
        ),
        work_dir=work_dir,
        train_dataloader=loader,
        val_dataloader=loader,
        val_evaluator=dict(type='Accuracy', topk=(1,)),
        train_cfg=dict(by_epoch=False, max_iters=max_iters, val_interval=val_interval),
        val_cfg=dict(),
        test_dataloader=loader,
        test_evaluator=dict(type='Accuracy', topk=(1,)),
        test_cfg=dict(),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.05, momentum=0.9)),
        default_hooks=dict(
            checkpoint=dict(type='CheckpointHook', interval=2, by_epoch=False),
            logger=dict(type='LoggerHook', interval=1),
        ),
        custom_hooks=hooks,
        randomness=dict(seed=0),
        log_level='WARNING',
        env_cfg=dict(dist_cfg=dict(backend='gloo')),
    )
