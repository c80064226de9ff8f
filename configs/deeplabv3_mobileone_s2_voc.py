_base_ = ['./_base_/deeplabv3_mobileone_voc.py']

arch = 's2'
model = dict(
    backbone=dict(arch=arch, init_cfg=dict(checkpoint=_base_.apple_imagenet.format(arch))),
    decode_head=dict(in_channels=2048),  # stage 3 channels
)
