"""The one re-parameterization entry point for any model that contains MobileOne parts."""

from functools import partial
from typing import Callable, Dict, List, Tuple

import torch
import torch.nn as nn
from mmcv.cnn import ConvModule
from torch.nn.modules.batchnorm import _BatchNorm

from ..errors import FoldingError, WeightsMismatchError
from .blocks import MobileOneBlock, fold_batch_norm


def reparameterize(model: nn.Module) -> nn.Module:
    """Re-parameterize ``model`` in place into its deploy form (for inference) and return it.

    Works on a bare backbone, an mmdet detector, an mmseg segmentor or a classifier:

    1. every submodule with a ``reparameterize()`` method (``MobileOneBlock``, ``MobileOne``)
       folds its branches into one conv;
    2. every remaining Conv+BN pair (SSDLite neck and head, ASPP, ...) is folded into the conv
       (:func:`fuse_conv_bn_pairs`), so the deployed model has no BN left on those paths.

    BN running statistics are folded, so the result does not depend on train/eval mode and is
    meant for inference only. Calling it again is a no-op; on a freshly built model it produces
    the exact module structure of a deploy checkpoint (which is how those are loaded). Raises if a
    BN cannot be folded (no running statistics).
    """
    for module in list(model.modules()):
        method = getattr(module, 'reparameterize', None)
        if callable(method) and isinstance(module, nn.Module):
            method()
    fuse_conv_bn_pairs(model)
    return model


def in_deploy_form(model: nn.Module) -> bool:
    """Whether every ``MobileOneBlock`` of ``model`` is in its deploy (single conv) form; True
    for a model without MobileOne blocks (there is nothing to re-parameterize)."""
    return all(m.deploy for m in model.modules() if isinstance(m, MobileOneBlock))


def fuse_conv_bn_pairs(model: nn.Module) -> List[str]:
    """Fold each BN into the conv it directly follows, in place; returns the folded BN names.

    Only pairs whose execution order is known are folded: mmcv ``ConvModule``s whose ``order``
    puts the conv before the norm, and a ``Conv2d`` followed by a BN in an ``nn.Sequential``.
    mmcv's ``fuse_conv_bn`` instead pairs any BN with the previous conv *child* of any module,
    assuming registration order is call order: wrong for ``ConvModule(order=('norm', 'conv',
    'act'))`` (the conv is registered first, but the norm runs first) or modules whose forward
    branches. The folding is :func:`.blocks.fold_batch_norm`'s, in float64. A folded BN becomes
    ``nn.Identity`` (state-dict keys of the BN disappear, the conv gains a ``bias``).
    """
    folded = []
    for _, conv, bn_name, norm, replace in conv_bn_pairs(model):
        _fold(conv, norm)
        replace()
        folded.append(bn_name)
    return folded


def folded_norm_names(model: nn.Module) -> List[str]:
    """The names of the BN layers of ``model`` that step 2 of :func:`reparameterize` folds into
    a conv: those of :func:`conv_bn_pairs` outside the modules that fold their own branches in
    step 1 (a ``reparameterize()`` method). ``model`` is not changed."""
    own = [
        name for name, m in model.named_modules() if callable(getattr(m, 'reparameterize', None))
    ]
    if '' in own:  # the model folds itself (a bare backbone)
        return []
    inside = tuple(f'{name}.' for name in own)
    return [norm for _, _, norm, _, _ in conv_bn_pairs(model) if not norm.startswith(inside)]


def conv_bn_pairs(model: nn.Module) -> List[Tuple[str, nn.Conv2d, str, _BatchNorm, Callable]]:
    """The Conv+BN pairs :func:`fuse_conv_bn_pairs` folds: ``(conv name, conv, BN name, BN,
    replace)``, where ``replace()`` swaps the BN for ``nn.Identity`` (see there for which pairs)."""
    pairs = []
    for name, module in list(model.named_modules()):
        prefix = f'{name}.' if name else ''
        if isinstance(module, ConvModule):
            order = tuple(module.order)
            if (
                module.with_norm
                and isinstance(module.conv, nn.Conv2d)
                and isinstance(module.norm, _BatchNorm)
                and order.index('conv') < order.index('norm')
            ):
                pairs.append(
                    (
                        prefix + 'conv',
                        module.conv,
                        prefix + module.norm_name,
                        module.norm,
                        partial(setattr, module, module.norm_name, nn.Identity()),
                    )
                )
        elif isinstance(module, nn.Sequential):
            children = list(module.named_children())
            for (first_name, first), (second_name, second) in zip(children, children[1:]):
                if isinstance(first, nn.Conv2d) and isinstance(second, _BatchNorm):
                    pairs.append(
                        (
                            prefix + first_name,
                            first,
                            prefix + second_name,
                            second,
                            partial(module._modules.__setitem__, second_name, nn.Identity()),
                        )
                    )
    return pairs


@torch.no_grad()
def load_deploy_state_dict(model: nn.Module, state_dict: Dict[str, torch.Tensor]) -> Dict[str, int]:
    """Initialize a train-time ``model`` (with branches) from the state dict of its deploy form
    (the inverse of :func:`reparameterize`), so that in eval mode it computes the deploy model's
    function.

    Every train-time ``MobileOneBlock`` gets its ``reparam_conv`` through
    :meth:`MobileOneBlock.init_from_deploy` (the first conv branch carries the deploy kernel with
    a BN that is the identity plus the deploy bias; the other branches start at zero output).
    Every Conv+BN pair that :func:`reparameterize` folds (:func:`conv_bn_pairs`) gets the folded
    conv's weight, and its BN becomes the identity plus the folded bias (running statistics
    (0, 1), weight ``sqrt(1 + eps)``). All other tensors load as they are. In train mode the BN
    layers normalize with batch statistics instead, as in any training.

    Raises ``WeightsMismatchError`` naming missing or unexpected keys and shape mismatches.
    Returns how many ``blocks``, ``conv_bn`` pairs and other ``tensors`` were set.
    """
    blocks = {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, MobileOneBlock) and not m.deploy
    }
    inside_blocks = tuple(f'{name}.' for name in blocks)
    pairs = [pair for pair in conv_bn_pairs(model) if not (pair[0] + '.').startswith(inside_blocks)]
    remaining = dict(state_dict)

    def take(key: str, like: torch.Tensor) -> torch.Tensor:
        if key not in remaining:
            raise WeightsMismatchError(
                f'the deploy weights have no {key!r}: they are not the '
                f'deploy form of this {type(model).__name__}'
            )
        value = remaining.pop(key)
        if tuple(value.shape) != tuple(like.shape):
            raise WeightsMismatchError(
                f'size mismatch for {key}: deploy weights '
                f'{tuple(value.shape)}, model {tuple(like.shape)} '
                '(another variant?)'
            )
        return value

    for name, block in blocks.items():
        prefix = f'{name}.' if name else ''
        carrier = block.conv_branches[0].conv.weight
        block.init_from_deploy(
            take(prefix + 'reparam_conv.weight', carrier),
            take(prefix + 'reparam_conv.bias', carrier[:, 0, 0, 0]),
        )
    for conv_name, conv, _, norm, _ in pairs:
        conv.weight.copy_(take(conv_name + '.weight', conv.weight))
        bias = take(conv_name + '.bias', norm.running_mean)
        norm.running_mean.zero_()
        norm.running_var.fill_(1.0)
        norm.weight.fill_((1.0 + norm.eps) ** 0.5)
        if conv.bias is not None:
            conv.bias.copy_(bias)
            norm.bias.zero_()
        else:
            norm.bias.copy_(bias)
    handled = {
        f'{name}.{branch}.'
        for name in blocks
        for branch in ('conv_branches', 'scale_branch', 'identity_branch')
    }
    handled |= {f'{pair[2]}.' for pair in pairs}
    expected = {
        key
        for key in model.state_dict()
        if not key.startswith(tuple(handled))
        and key not in {f'{pair[0]}.{p}' for pair in pairs for p in ('weight', 'bias')}
    }
    missing, unexpected = sorted(expected - set(remaining)), sorted(set(remaining) - expected)
    if missing or unexpected:
        raise WeightsMismatchError(
            f'the deploy weights do not fit this {type(model).__name__}: '
            f'missing {missing[:8]}, unexpected {unexpected[:8]}'
        )
    model.load_state_dict(remaining, strict=False)
    return dict(blocks=len(blocks), conv_bn=len(pairs), tensors=len(remaining))


@torch.no_grad()
def _fold(conv: nn.Conv2d, norm: _BatchNorm) -> None:
    """Fold ``norm`` into ``conv`` in place (float64, :func:`.blocks.fold_batch_norm`); the conv
    gains a bias. Raises ``FoldingError`` when it cannot."""
    if norm.num_features != conv.out_channels:
        raise FoldingError(f'cannot fold {norm} into {conv}: channel counts differ')
    kernel, bias = fold_batch_norm(conv.weight, norm)
    if conv.bias is not None:  # BN(conv(x) + c) = BN(conv(x)) + c * gamma / sigma
        bias = bias + fold_batch_norm(conv.bias.reshape(-1, 1, 1, 1), norm)[0].flatten()
    dtype, trainable = conv.weight.dtype, conv.weight.requires_grad
    conv.weight = nn.Parameter(kernel.to(dtype), trainable)
    conv.bias = nn.Parameter(bias.to(dtype), trainable)
