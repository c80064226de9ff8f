"""The one re-parameterization entry point for any model that contains MobileOne parts."""
import torch.nn as nn


def reparameterize(model: nn.Module) -> nn.Module:
    """Fuse every re-parameterizable module of ``model`` in place and return it.

    Works on a bare backbone, an mmdet detector, an mmseg segmentor or a classifier: every
    submodule with a ``reparameterize()`` method (``MobileOneBlock``, ``MobileOne``) is fused. BN
    running statistics are folded, so the result does not depend on train/eval mode; calling it
    again is a no-op. Raises if a branch cannot be fused (e.g. BN without running statistics).
    """
    for module in list(model.modules()):
        fuse = getattr(module, 'reparameterize', None)
        if callable(fuse) and isinstance(module, nn.Module):
            fuse()
    return model
