"""MobileOne backbones for dense prediction (mmdet, mmseg) and classification (mmpretrain)."""
from mmengine.config.utils import MODULE2PACKAGE

from . import datasets  # noqa: F401  (registers our datasets and transforms)
from .engine import ReparameterizeHook
from .models import MobileOne, MobileOneBlock, reparameterize

__version__ = '0.1.0'

# mmengine resolves ``pkg::folder/file.py`` config bases only for packages in this table; adding
# ours lets user configs inherit ``mobileone_dense::configs/<name>.py`` once this package is
# imported (our tools import it before reading any config; add
# ``custom_imports=dict(imports=['mobileone_dense'])`` for mmdet/mmseg tools).
MODULE2PACKAGE.setdefault('mobileone_dense', 'mobileone_dense')

__all__ = ["MobileOne", "MobileOneBlock", "ReparameterizeHook", "reparameterize", "__version__"]
