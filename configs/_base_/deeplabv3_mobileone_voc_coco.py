# DeepLabV3-MobileOne trained on COCO and VOC-aug together, as the paper's VOC models are
# (supplementary F.1, after MobileViT): COCO train2017 images that show VOC categories, with
# VOC-indexed masks rendered from the instance annotations (mobileone_dense.COCOVOCSegDataset),
# concatenated with VOC-aug; validation on VOC 2012 val.
_base_ = ['./deeplabv3_mobileone_voc.py']

coco_root = 'data/coco'
coco_train = dict(
    type='mobileone_dense.COCOVOCSegDataset',
    data_root=coco_root,
    ann_file='annotations/instances_train2017.json',
    data_prefix=dict(img_path='train2017'),
    pipeline=[
        dict(type='mobileone_dense.LoadImageFromFile'),
        dict(type='mobileone_dense.LoadCocoSemanticMask'),  # in place of LoadAnnotations
        *_base_.train_pipeline[2:],
    ],
)
train_dataloader = dict(
    # How many COCO images have VOC objects depends on the annotation file, so the 50 epochs
    # are counted by an epoch-based loop over whatever the concatenation holds (the
    # scheduler is still stepped every iteration).
    sampler=dict(_delete_=True, type='mmengine.DefaultSampler', shuffle=True),
    dataset=dict(datasets=[_base_.voc_train, _base_.voc_aug, coco_train]),
)

train_cfg = dict(_delete_=True, type='EpochBasedTrainLoop', max_epochs=50, val_interval=5)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=500),
    dict(
        type='CosineAnnealingLR',
        by_epoch=True,
        begin=0,
        end=50,
        eta_min_ratio=0.01,
        convert_to_iter_based=True,
    ),
]
default_hooks = dict(
    checkpoint=dict(by_epoch=True, interval=5), logger=dict(log_metric_by_epoch=True)
)
log_processor = dict(by_epoch=True)
