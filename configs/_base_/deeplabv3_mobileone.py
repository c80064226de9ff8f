# DeepLabV3 with a MobileOne backbone: the paper's segmentation recipe (supplementary F.1, which
# follows MobileViT/cvnets). Dataset bases (deeplabv3_mobileone_{voc,ade20k}.py) add the data and
# turn the 50 epochs into iterations; variant files set the arch and the head's input channels.
_base_ = [
    'mmseg::_base_/models/deeplabv3_r50-d8.py',
    'mmseg::_base_/default_runtime.py',
    './mobileone_dense.py',
    './apple_imagenet_weights.py',
]

norm_cfg = dict(type='SyncBN', requires_grad=True)  # reverted to BN by single-process runs
model = dict(
    data_preprocessor=dict(size=(512, 512)),  # pads batches to the 512x512 crops
    pretrained=None,  # the base's ResNet URL: nothing is downloaded here
    backbone=dict(
        _delete_=True,
        type='mobileone_dense.MobileOne',
        arch='s0',
        out_indices=(3,),
        # Output stride 8: the last two stages keep stride 8 and dilate instead. For output
        # stride 16 override strides=(2, 2, 2, 1), dilations=(1, 1, 1, 2) and the ASPP
        # dilations=(1, 6, 12, 18) (docs/segmentation.md, "Output stride 16").
        strides=(2, 2, 1, 1),
        dilations=(1, 1, 2, 4),
        norm_cfg=norm_cfg,
        # Apple's ImageNet weights of the arch, as the paper fine-tunes (variant files name
        # theirs). From scratch: init_cfg=None (--cfg-options model.backbone.init_cfg=None).
        init_cfg=dict(
            type='Pretrained', checkpoint=_base_.apple_imagenet.format('s0'), prefix='backbone.'
        ),
    ),
    # ASPP as in MobileViT's DeepLabV3: 256 channels, rates 12/24/36 at output stride 8.
    decode_head=dict(
        in_channels=1024,
        in_index=0,
        channels=256,
        dilations=(1, 12, 24, 36),
        dropout_ratio=0.1,
        norm_cfg=norm_cfg,
    ),
    auxiliary_head=None,
)  # MobileViT's DeepLabV3 has no auxiliary FCN head

# AdamW, lr 1e-4 (1e-3 on the segmentation head: multiplier 10), weight decay 0.01 on every
# parameter (cvnets does not exempt norms/biases by default).
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(custom_keys={'decode_head': dict(lr_mult=10.0)}),
)

train_cfg = dict(type='IterBasedTrainLoop')  # lengths: the dataset bases
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

# mmseg's schedule bases' hooks (checkpoint interval: the dataset bases).
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, max_keep_ckpts=3),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='mmseg.SegVisualizationHook'),
)

custom_hooks = [
    # stop at the first NaN/inf loss term, before EMA/CheckpointHook see the broken weights
    dict(type='mobileone_dense.FiniteLossHook'),
    # EMA of the weights, momentum 5e-4 (mmengine: ema = (1 - m) * ema + m * weights).
    dict(type='EMAHook', momentum=5e-4),
    # Validation mIoU is the deploy (re-parameterized) EMA model's; deploy checkpoint + config at
    # the end.
    dict(type='mobileone_dense.ReparameterizeHook'),
]
