_base_ = ['./_base_/ssdlite_mobileone_coco.py']

# MobileOne-S1: stages at strides 16 and 32 have 512 and 1280 channels.
arch = 's1'
channels = (512, 1280)
model = dict(
    backbone=dict(arch=arch, init_cfg=dict(checkpoint=_base_.apple_imagenet.format(arch))),
    neck=dict(in_channels=channels, out_channels=channels + (512, 256, 256, 128)),
    bbox_head=dict(in_channels=channels + (512, 256, 256, 128)),
)
