# MobileOne-S2/S3/S4 on ImageNet-1k: mobileone_imagenet.py plus AutoAugment (the ImageNet policy)
# whose magnitudes follow the curriculum's strength (paper supplementary C.1, Table 15).
_base_ = ['./mobileone_imagenet.py']

curriculum = _base_.curriculum
# fill of the geometric ops: the mean pixel (BGR, as the images are loaded), as mmpretrain's
# imagenet_bs64_autoaug.py
autoaugment_hparams = dict(
    pad_val=[round(x) for x in _base_.data_preprocessor['mean'][::-1]], interpolation='bicubic'
)


def train_pipeline_at(size, strength):
    return [
        dict(type='mobileone_dense.LoadImageFromFile'),  # errors name corrupt images
        dict(type='mmpretrain.RandomResizedCrop', scale=size, backend='pillow'),
        dict(type='mmpretrain.RandomFlip', prob=0.5, direction='horizontal'),
        # each op's magnitude level (0-9) x strength; see mobileone_dense/datasets/transforms.py
        dict(
            type='mobileone_dense.ScaledAutoAugment',
            policies='imagenet',
            strength=strength,
            hparams=autoaugment_hparams,
        ),
        dict(type='mmpretrain.PackInputs'),
    ]


train_pipeline = train_pipeline_at(*curriculum[0][1:])
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
custom_hooks = [
    dict(
        type='mmpretrain.SwitchRecipeHook',
        schedule=[
            dict(action_epoch=first + 1, train_pipeline=train_pipeline_at(size, strength))
            for first, size, strength in curriculum[1:]
        ],
    ),
    *_base_.custom_hooks[1:],  # FiniteLossHook, EMAHook, ReparameterizeHook
]
