# MobileOne on ImageNet-1k with the paper's recipe (section 4 and supplementary C.1), built on
# mmpretrain's ImageNet bases; S0, S1 and the micro variants use it as is (random resized crop and
# horizontal flip only), S2-S4 add AutoAugment (mobileone_imagenet_autoaug.py). Variant files
# (configs/mobileone_*_imagenet.py) set the arch and the head's input channels.
_base_ = [
    'mmpretrain::_base_/datasets/imagenet_bs32_pil_resize.py',
    'mmpretrain::_base_/schedules/imagenet_bs256_coslr_coswd_300e.py',
    'mmpretrain::_base_/default_runtime.py',
    './mobileone_dense.py',
]
# Every type added here carries its scope (mmpretrain., mobileone_dense.): configs inheriting this
# one through `mobileone_dense::` get `_scope_='mobileone_dense'` on our dicts.

arch = 's0'
model = dict(
    type='mmpretrain.ImageClassifier',
    # mmpretrain's normalization, inside the model so that every way of building it (the Runner,
    # build_model_from_config, a config inheriting ours) normalizes the same way.
    data_preprocessor=dict(_base_.data_preprocessor, type='mmpretrain.ClsDataPreprocessor'),
    backbone=dict(type='mobileone_dense.MobileOne', arch=arch, out_indices=(3,)),
    neck=dict(type='mmpretrain.GlobalAveragePooling'),
    head=dict(
        type='mmpretrain.LinearClsHead',
        num_classes=1000,
        in_channels=1024,  # last stage of the arch (variant files set it)
        loss=dict(type='mmpretrain.LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        topk=(1, 5),
    ),
)

# Progressive learning (paper Table 15): (first epoch, 0-based as in the table; training crop
# size; AutoAugment strength alpha, used only by the AutoAugment variants). Evaluation is at 224
# (mmpretrain's resize of the short edge to 256, centre crop 224). mmpretrain's SwitchRecipeHook
# numbers epochs from 1 (`action_epoch=E` switches before the E-th epoch, logged
# `Epoch(train) [E]`), hence `first epoch + 1` below. To change the stages or the schedule's
# length, do not edit the derived pipelines by hand: see mobileone_dense.apis.set_imagenet_schedule.
curriculum = [(0, 160, 0.3), (39, 192, 0.6), (114, 224, 1.0)]


def train_pipeline_at(size, strength):
    # `strength` is unused without AutoAugment (the paper's S0/S1 use plain augmentation)
    return [
        dict(type='mobileone_dense.LoadImageFromFile'),  # errors name corrupt images
        dict(type='mmpretrain.RandomResizedCrop', scale=size, backend='pillow'),
        dict(type='mmpretrain.RandomFlip', prob=0.5, direction='horizontal'),
        dict(type='mmpretrain.PackInputs'),
    ]


train_pipeline = train_pipeline_at(*curriculum[0][1:])
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))  # 32 per GPU x 8 GPUs = 256
# validation: the base's evaluation pipeline with our image loader (the test loader keeps mmcv's:
# mmpretrain's inferencer removes 'LoadImageFromFile' from test_dataloader's pipeline by name)
val_pipeline = [
    dict(type='mobileone_dense.LoadImageFromFile'),
    dict(type='mmpretrain.ResizeEdge', scale=256, edge='short', backend='pillow'),
    dict(type='mmpretrain.CenterCrop', crop_size=224),
    dict(type='mmpretrain.PackInputs'),
]
val_dataloader = dict(dataset=dict(pipeline=val_pipeline))

# SGD, lr 0.1, momentum 0.9, weight decay 1e-4 (the base). The paper is silent on decay of BN
# parameters and on warm-up: as mmpretrain's MobileOne configs, no decay on BN (norm_decay_mult=0)
# and the base's 5-epoch linear warm-up, then cosine to 1e-6 (the base's).
optim_wrapper = dict(paramwise_cfg=dict(norm_decay_mult=0.0))
# Weight decay annealed by the same cosine from 1e-4 to 1e-5 (the base's
# CosineAnnealingParamScheduler over the 300 epochs). The base's absolute eta_min=1e-5 would
# *raise* the decay of the BN groups (0 with norm_decay_mult=0) towards 1e-5, as it does in
# mmpretrain's own MobileOne configs; eta_min_ratio=0.1 takes every group to 0.1x its initial
# value instead: 1e-4 -> 1e-5, and BN stays at 0.
param_scheduler = [
    *_base_.param_scheduler[:2],
    dict(_base_.param_scheduler[2], eta_min=None, eta_min_ratio=0.1),
]
# lr 0.1 is for 256 images per step; `tools/train.py --auto-scale-lr` scales it to yours.
auto_scale_lr = dict(base_batch_size=256)

default_hooks = dict(
    # every epoch, as the base, but keep the last 3 and the best (top-1 of the deploy EMA model)
    checkpoint=dict(interval=1, max_keep_ckpts=3, save_best='auto')
)
custom_hooks = [
    # mmpretrain's hook switches the training pipeline at the stage boundaries, and re-applies
    # every past switch when resuming. It reads `train_pipeline=` (mmpretrain's MobileOne configs
    # pass `pipeline=`, which it ignores, so their curriculum never switches).
    dict(
        type='mmpretrain.SwitchRecipeHook',
        schedule=[
            dict(action_epoch=first + 1, train_pipeline=train_pipeline_at(size, strength))
            for first, size, strength in curriculum[1:]
        ],
    ),
    # stop at the first NaN/inf loss term, before EMA/CheckpointHook see the broken weights
    # (after SwitchRecipeHook: mobileone_imagenet_autoaug.py replaces the first hook)
    dict(type='mobileone_dense.FiniteLossHook'),
    # EMA with decay 0.9995, as mmpretrain's MobileOne configs (averages BN statistics too)
    dict(type='EMAHook', momentum=5e-4, priority='ABOVE_NORMAL', update_buffers=True),
    # validation top-1 is the deploy (re-parameterized) EMA model's; deploy files at the end
    dict(type='mobileone_dense.ReparameterizeHook'),
]
