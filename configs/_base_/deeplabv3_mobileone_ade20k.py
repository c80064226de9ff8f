# DeepLabV3-MobileOne on ADE20K (ADEChallengeData2016: 20,210 training images, 150 classes),
# with the same recipe as VOC (the paper's supplementary F.1).
_base_ = [
    'mmseg::_base_/datasets/ade20k.py',
    './deeplabv3_mobileone.py',
]

model = dict(decode_head=dict(num_classes=150))

# Random resize, random 512x512 crop and horizontal flip only (no PhotoMetricDistortion).
crop_size = (512, 512)
train_pipeline = [
    dict(type='mobileone_dense.LoadImageFromFile'),
    dict(type='mobileone_dense.LoadSegAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='mmseg.RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='mmseg.PackSegInputs'),
]
# Validation reads with the same checking loaders. The test loader and `test_pipeline` stay
# mmseg's: mmseg's inference APIs find 'LoadImageFromFile'/'LoadAnnotations' there by name.
val_pipeline = [
    dict(type='mobileone_dense.LoadImageFromFile'),
    dict(type='Resize', scale=(2048, 512), keep_ratio=True),
    dict(type='mobileone_dense.LoadSegAnnotations', reduce_zero_label=True),
    dict(type='mmseg.PackSegInputs'),
]
val_dataloader = dict(dataset=dict(pipeline=val_pipeline))

# 50 epochs as iterations: ceil(20210 images / 128 per step) = 158 iterations per epoch.
num_train_images = 20210
gpus, batch_per_gpu = 8, 16  # effective batch 128
iters_per_epoch = -(-num_train_images // (gpus * batch_per_gpu))
max_epochs = 50
max_iters = max_epochs * iters_per_epoch  # 7900
train_dataloader = dict(
    batch_size=batch_per_gpu, num_workers=4, dataset=dict(pipeline=train_pipeline)
)
auto_scale_lr = dict(enable=False, base_batch_size=gpus * batch_per_gpu)

train_cfg = dict(max_iters=max_iters, val_interval=5 * iters_per_epoch)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=500),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=500, end=max_iters, eta_min_ratio=0.01),
]
default_hooks = dict(checkpoint=dict(interval=5 * iters_per_epoch))
