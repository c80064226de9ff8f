"""The one re-parameterization entry point for any model that contains MobileOne parts."""
from typing import List

import torch
import torch.nn as nn
from mmcv.cnn import ConvModule
from mmcv.cnn.utils.fuse_conv_bn import _fuse_conv_bn
from torch.nn.modules.batchnorm import _BatchNorm


def reparameterize(model: nn.Module) -> nn.Module:
    """Fuse ``model`` in place for inference and return it.

    Works on a bare backbone, an mmdet detector, an mmseg segmentor or a classifier:

    1. every submodule with a ``reparameterize()`` method (``MobileOneBlock``, ``MobileOne``)
       folds its branches into one conv;
    2. every remaining Conv+BN pair (SSDLite neck and head, ASPP, ...) is folded into the conv
       (:func:`fuse_conv_bn_pairs`), so the deployed model has no BN left on those paths.

    BN running statistics are folded, so the result does not depend on train/eval mode and is
    meant for inference only. Calling it again is a no-op; on a freshly built model it produces
    the exact module structure of a fused checkpoint (which is how those are loaded). Raises if a
    BN cannot be folded (no running statistics).
    """
    for module in list(model.modules()):
        fuse = getattr(module, 'reparameterize', None)
        if callable(fuse) and isinstance(module, nn.Module):
            fuse()
    fuse_conv_bn_pairs(model)
    return model


def fuse_conv_bn_pairs(model: nn.Module) -> List[str]:
    """Fold each BN into the conv it directly follows, in place; returns the fused BN names.

    Only pairs whose execution order is known are fused: mmcv ``ConvModule``s whose ``order``
    puts the conv before the norm, and a ``Conv2d`` followed by a BN in an ``nn.Sequential``.
    mmcv's ``fuse_conv_bn`` instead pairs any BN with the previous conv *child* of any module,
    assuming registration order is call order: wrong for ``ConvModule(order=('norm', 'conv',
    'act'))`` (the conv is registered first, but the norm runs first) or modules whose forward
    branches. The folding arithmetic is mmcv's (``_fuse_conv_bn``). A fused BN becomes
    ``nn.Identity`` (state-dict keys of the BN disappear, the conv gains a ``bias``).
    """
    fused = []
    for name, module in list(model.named_modules()):
        if isinstance(module, ConvModule):
            order = tuple(module.order)
            if (module.with_norm and isinstance(module.conv, nn.Conv2d)
                    and isinstance(module.norm, _BatchNorm)
                    and order.index('conv') < order.index('norm')):
                _fold(module.conv, module.norm)
                setattr(module, module.norm_name, nn.Identity())
                fused.append(f'{name}.{module.norm_name}' if name else module.norm_name)
        elif isinstance(module, nn.Sequential):
            children = list(module.named_children())
            for (_, first), (second_name, second) in zip(children, children[1:]):
                if isinstance(first, nn.Conv2d) and isinstance(second, _BatchNorm):
                    _fold(first, second)
                    module._modules[second_name] = nn.Identity()
                    fused.append(f'{name}.{second_name}' if name else second_name)
    return fused


@torch.no_grad()
def _fold(conv: nn.Conv2d, norm: _BatchNorm) -> None:
    if norm.running_mean is None or norm.running_var is None:
        raise ValueError(f'cannot fold {norm}: it has no running statistics '
                         '(track_running_stats=False); keep it or train with running statistics')
    if norm.num_features != conv.out_channels:
        raise ValueError(f'cannot fold {norm} into {conv}: channel counts differ')
    if norm.weight is None:  # affine=False: gamma 1, beta 0
        norm.weight = nn.Parameter(torch.ones_like(norm.running_mean), requires_grad=False)
        norm.bias = nn.Parameter(torch.zeros_like(norm.running_mean), requires_grad=False)
    _fuse_conv_bn(conv, norm)
