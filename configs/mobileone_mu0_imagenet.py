_base_ = ['./_base_/mobileone_imagenet.py']

# MobileOne-mu0 on ImageNet-1k; its last stage has 384 channels.
# Random resized crop and flip, progressive resolution: the paper gives no recipe for the
# micro variants (Table 13); we train them as the small S0/S1.
arch = 'mu0'
model = dict(backbone=dict(arch=arch), head=dict(in_channels=384))
