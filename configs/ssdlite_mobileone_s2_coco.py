_base_ = ['./_base_/ssdlite_mobileone_coco.py']

# MobileOne-S2: stages at strides 16 and 32 have 640 and 2048 channels.
arch = 's2'
channels = (640, 2048)
model = dict(
    backbone=dict(arch=arch, init_cfg=dict(checkpoint=_base_.apple_imagenet.format(arch))),
    neck=dict(in_channels=channels, out_channels=channels + (512, 256, 256, 128)),
    bbox_head=dict(in_channels=channels + (512, 256, 256, 128)),
)
