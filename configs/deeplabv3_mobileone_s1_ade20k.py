_base_ = ['./_base_/deeplabv3_mobileone_ade20k.py']

arch = 's1'
model = dict(
    backbone=dict(arch=arch, init_cfg=dict(checkpoint=_base_.apple_imagenet.format(arch))),
    decode_head=dict(in_channels=1280),  # stage 3 channels
)
