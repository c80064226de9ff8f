# Apple's ImageNet-1k checkpoints of MobileOne in train-time form (with branches), by arch:
# apple_imagenet.format('s2'). The detection and segmentation backbones start from them, as the
# paper's do: downloaded once into torch's hub cache ($TORCH_HOME/hub/checkpoints), loaded
# weights-only and converted by the backbone's Pretrained init (docs/weights.md).
apple_imagenet = (
    'https://docs-assets.developer.apple.com/ml-research/datasets/mobileone/'
    'mobileone_{}_unfused.pth.tar'
)
