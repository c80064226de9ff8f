"""MobileOne backbones for dense prediction (mmdet, mmseg) and classification (mmpretrain)."""

from mobileone_dense_mmengine_scope import install as _register_config_scope

from . import datasets  # noqa: F401  (registers our datasets and transforms)
from .engine import ReparameterizeHook
from .models import MobileOne, MobileOneBlock, reparameterize

__version__ = '0.1.0'

# mmengine resolves ``pkg::folder/file.py`` config bases only for the packages in its
# MODULE2PACKAGE table. Installed, the .pth beside that module adds us at start-up in every
# process (mmdet's/mmseg's own tools too); this covers checkouts used without installing.
_register_config_scope()

__all__ = ['MobileOne', 'MobileOneBlock', 'ReparameterizeHook', 'reparameterize', '__version__']
