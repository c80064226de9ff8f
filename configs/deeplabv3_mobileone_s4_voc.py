_base_ = ['./_base_/deeplabv3_mobileone_voc.py']

# MobileOne-S4 without squeeze-excite, as the paper's S4 segmentation models (Table 11b, †).
# It starts from Apple's S4 ImageNet weights (no S4 without SE is released) without their SE
# layers: every other weight loads, and the log names the SE weights left out. arch='s4' keeps
# SE and loads all of them.
arch = 's4_no_se'
model = dict(
    backbone=dict(arch=arch, init_cfg=dict(checkpoint=_base_.apple_imagenet.format('s4'))),
    decode_head=dict(in_channels=2048),  # stage 3 channels
)
