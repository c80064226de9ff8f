# DeepLabV3-MobileOne on Pascal VOC 2012 + SBD ("VOC-aug"): mmseg's pascal_voc12_aug layout,
# 10,582 training images (train.txt with SegmentationClass + aug.txt with SegmentationClassAug).
_base_ = [
    'mmseg::_base_/datasets/pascal_voc12_aug.py',
    './deeplabv3_mobileone.py',
]

model = dict(decode_head=dict(num_classes=21))

# The paper's augmentation: random resize, random 512x512 crop and horizontal flip only (mmseg's
# base adds PhotoMetricDistortion, removed here). mmseg's own transforms carry their scope, so
# that configs inheriting this one through `mobileone_dense::` (built in that scope) get them
# and not mmcv's same-named ones; the unscoped ones are mmcv's (the root registry). Loading is
# ours: errors that name a corrupt image or a mask with labels outside the classes
# (LoadSegAnnotations gets num_classes from model.decode_head in tools/train.py and test.py).
crop_size = (512, 512)
train_pipeline = [
    dict(type='mobileone_dense.LoadImageFromFile'),
    dict(type='mobileone_dense.LoadSegAnnotations'),
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
    dict(type='mobileone_dense.LoadSegAnnotations'),
    dict(type='mmseg.PackSegInputs'),
]
val_dataloader = dict(dataset=dict(pipeline=val_pipeline))
data_root = 'data/VOCdevkit/VOC2012'
voc_train = dict(
    type='mmseg.PascalVOCDataset',
    data_root=data_root,
    data_prefix=dict(img_path='JPEGImages', seg_map_path='SegmentationClass'),
    ann_file='ImageSets/Segmentation/train.txt',
    pipeline=train_pipeline,
)
voc_aug = dict(
    type='mmseg.PascalVOCDataset',
    data_root=data_root,
    data_prefix=dict(img_path='JPEGImages', seg_map_path='SegmentationClassAug'),
    ann_file='ImageSets/Segmentation/aug.txt',
    pipeline=train_pipeline,
)

# 50 epochs as iterations: ceil(10582 images / 128 per step) = 83 iterations per epoch.
num_train_images = 10582
gpus, batch_per_gpu = 8, 16  # effective batch 128, as MobileViT's 4 x 32
iters_per_epoch = -(-num_train_images // (gpus * batch_per_gpu))
max_epochs = 50
max_iters = max_epochs * iters_per_epoch  # 4150
train_dataloader = dict(
    batch_size=batch_per_gpu,
    num_workers=4,
    dataset=dict(_delete_=True, type='mmengine.ConcatDataset', datasets=[voc_train, voc_aug]),
)
auto_scale_lr = dict(enable=False, base_batch_size=gpus * batch_per_gpu)

train_cfg = dict(max_iters=max_iters, val_interval=5 * iters_per_epoch)
# Linear warm-up over 500 iterations, then cosine to 1e-6 (x10 on the head): eta_min_ratio
# keeps the head's multiplier at the end of the schedule, as cvnets scales the whole schedule.
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=500),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=500, end=max_iters, eta_min_ratio=0.01),
]
default_hooks = dict(checkpoint=dict(interval=5 * iters_per_epoch))
