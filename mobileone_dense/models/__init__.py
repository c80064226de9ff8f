from .blocks import MobileOneBlock, SqueezeExcite, fold_batch_norm
from .dense_heads import SSDHead
from .mobileone import ARCH_SETTINGS, MobileOne, resolve_arch, stage_channels
from .reparameterize import in_deploy_form, load_deploy_state_dict, reparameterize

__all__ = [
    'ARCH_SETTINGS',
    'MobileOne',
    'MobileOneBlock',
    'SSDHead',
    'SqueezeExcite',
    'fold_batch_norm',
    'in_deploy_form',
    'load_deploy_state_dict',
    'reparameterize',
    'resolve_arch',
    'stage_channels',
]
