_base_ = ['./_base_/deeplabv3_mobileone_ade20k.py']

# MobileOne-S4 without squeeze-excite, as the paper's S4 segmentation models (Table 11b, †).
# With S4 ImageNet weights trained with SE, use arch='s4' instead.
arch = dict(num_blocks=(2, 8, 10, 1), width_factors=(3.0, 3.5, 3.5, 4.0), num_conv_branches=1)
model = dict(backbone=dict(arch=dict(_delete_=True, **arch)),  # a dict replaces the name
             decode_head=dict(in_channels=2048))  # stage 3 channels
