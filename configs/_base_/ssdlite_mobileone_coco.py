# SSDLite with a MobileOne backbone on COCO: the paper's recipe (supplementary E.1).
# Variant files (configs/ssdlite_mobileone_s*_coco.py) set the arch and the channels.
_base_ = [
    'mmdet::ssd/ssdlite_mobilenetv2-scratch_8xb24-600e_coco.py',
    './mobileone_dense.py',
    './apple_imagenet_weights.py',
]

arch = 's0'
channels = (256, 1024)  # MobileOne-S0 stages 2 and 3 (strides 16, 32)
model = dict(
    backbone=dict(
        _delete_=True,  # the base's MobileNetV2 settings (and its init) do not apply
        type='mobileone_dense.MobileOne',
        arch=arch,
        out_indices=(2, 3),
        # BN eps 1e-5 as Apple's ImageNet weights were trained with (PyTorch's default): with
        # mmdet's from-scratch 1e-3 the loaded backbone would not compute Apple's features.
        # Momentum 0.03 is mmdet's SSDLite recipe (how fast the running statistics follow the
        # new data). The neck and head keep mmdet's eps 1e-3.
        norm_cfg=dict(type='BN', eps=1e-5, momentum=0.03),
        # Apple's ImageNet weights of the arch, as the paper fine-tunes (variant files name
        # theirs). From scratch: init_cfg=None (--cfg-options model.backbone.init_cfg=None).
        init_cfg=dict(
            type='Pretrained', checkpoint=_base_.apple_imagenet.format(arch), prefix='backbone.'
        ),
    ),
    neck=dict(in_channels=channels, out_channels=channels + (512, 256, 256, 128)),
    bbox_head=dict(
        # mmdet 3.3.0's SSDHead crashes in predict(); ours fixes it
        type='mobileone_dense.SSDHead',
        in_channels=channels + (512, 256, 256, 128),
    ),
)

# Training and validation read images with our loader (same arguments): a corrupt or truncated
# image raises an error naming the file (or, with skip_corrupt=True, is skipped with a warning)
# instead of mmcv's bare assertion. The test loader keeps mmcv's: mmdet's inferencers look for
# 'LoadImageFromFile' in test_dataloader's pipeline by name.
train_pipeline = [
    dict(_base_.train_pipeline[0], type='mobileone_dense.LoadImageFromFile'),
    *_base_.train_pipeline[1:],
]
val_pipeline = [
    dict(_base_.test_pipeline[0], type='mobileone_dense.LoadImageFromFile'),
    *_base_.test_pipeline[1:],
]
val_dataloader = dict(dataset=dict(pipeline=val_pipeline))

# 200 real passes over train2017 (the base repeats the dataset 5x: dropped).
train_dataloader = dict(
    batch_size=24,  # x 8 GPUs = 192, the paper's effective batch
    num_workers=4,
    dataset=dict(
        _delete_=True,
        type='mmdet.CocoDataset',
        data_root='data/coco/',
        ann_file='annotations/instances_train2017.json',
        data_prefix=dict(img='train2017/'),
        filter_cfg=dict(filter_empty_gt=True, min_size=32),
        pipeline=train_pipeline,
    ),
)

max_epochs = 200
train_cfg = dict(max_epochs=max_epochs, val_interval=5)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=4500),
    dict(
        type='CosineAnnealingLR',
        begin=0,
        end=max_epochs,
        T_max=max_epochs,
        by_epoch=True,
        eta_min=0,
    ),
]
optim_wrapper = dict(optimizer=dict(lr=0.05, momentum=0.9, weight_decay=1e-4))
# lr 0.05 is for 192 images per step; `--auto-scale-lr` style scaling uses this base.
auto_scale_lr = dict(base_batch_size=192)

# (no mmdet NumClassCheckHook: tools/train.py and tools/test.py check the class counts before
# building anything, mobileone_dense/engine/checks/data.py::check_num_classes)
custom_hooks = [
    # stop at the first NaN/inf loss term, before EMA/CheckpointHook see the broken weights
    # (replaces mmdet's CheckInvalidLossHook: every 50 iterations, after the checkpoint)
    dict(type='mobileone_dense.FiniteLossHook'),
    # validation mAP is the deploy (re-parameterized) model's; deploy checkpoint + config at the end
    dict(type='mobileone_dense.ReparameterizeHook'),
]
