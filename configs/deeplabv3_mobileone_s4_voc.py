_base_ = ['./_base_/deeplabv3_mobileone_voc.py']

# MobileOne-S4 without squeeze-excite, as the paper's S4 segmentation models (Table 11b, †).
# With S4 ImageNet weights trained with SE, use arch='s4' instead.
arch = 's4_no_se'
model = dict(backbone=dict(arch=arch), decode_head=dict(in_channels=2048))  # stage 3 channels
