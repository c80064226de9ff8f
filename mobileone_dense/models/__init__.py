from .dense_heads import SSDHead
from .blocks import MobileOneBlock, SqueezeExcite, fold_batch_norm
from .mobileone import ARCH_SETTINGS, MobileOne, resolve_arch, stage_channels
from .reparameterize import reparameterize

__all__ = ['ARCH_SETTINGS', 'MobileOne', 'MobileOneBlock', 'SSDHead', 'SqueezeExcite', 'fold_batch_norm',
           'reparameterize', 'resolve_arch', 'stage_channels']
