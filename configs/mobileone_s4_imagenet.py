_base_ = ['./_base_/mobileone_imagenet_autoaug.py']

# MobileOne-S4 on ImageNet-1k; its last stage has 2048 channels.
# AutoAugment with progressive strength and resolution (paper: S2-S4).
arch = 's4'
model = dict(backbone=dict(arch=arch), head=dict(in_channels=2048))
