_base_ = ['./_base_/mobileone_imagenet.py']

# MobileOne-S1 on ImageNet-1k; its last stage has 1280 channels.
# Random resized crop and flip, progressive resolution (paper: S0, S1).
arch = 's1'
model = dict(backbone=dict(arch=arch), head=dict(in_channels=1280))
