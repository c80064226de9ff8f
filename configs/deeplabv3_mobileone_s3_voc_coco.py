_base_ = ['./_base_/deeplabv3_mobileone_voc_coco.py']

arch = 's3'
model = dict(backbone=dict(arch=arch), decode_head=dict(in_channels=2048))  # stage 3 channels
