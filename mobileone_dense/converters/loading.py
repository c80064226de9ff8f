"""Strict loading of weights into a MobileOne backbone, with errors that say what to change."""
from typing import Dict, Optional

import torch
import torch.nn as nn

from .checkpoint_io import load_checkpoint_file, state_dict_of
from .mobileone import backbone_state_dict, convert_state_dict, is_fused


def load_weights_strictly(model: nn.Module, state_dict: Dict[str, torch.Tensor],
                          source: str = 'checkpoint') -> None:
    """Load a state dict into ``model`` (a backbone or a whole model); fail loudly on any mismatch.

    Raises ``ValueError`` naming the ``deploy`` setting to use when fused weights meet an unfused
    model (or the reverse), the first shape mismatch (usually another arch), or every missing and
    unexpected key.
    """
    model_state = model.state_dict()
    model_fused = is_fused(model_state)
    if state_dict and is_fused(state_dict) != model_fused:
        if is_fused(state_dict):
            raise ValueError(f'{source} holds fused (re-parameterized) MobileOne weights but the '
                             'model has train-time branches: build the backbone with deploy=True')
        raise ValueError(f'{source} holds unfused MobileOne weights (with branches) but the '
                         'model is fused: build the backbone with deploy=False, load, then call '
                         'mobileone_dense.reparameterize(model)')
    for key, value in state_dict.items():
        if key in model_state and model_state[key].shape != value.shape:
            arch = next((m.arch_name for m in model.modules() if hasattr(m, 'arch_name')), '?')
            raise ValueError(f'size mismatch for {key}: {source} has {tuple(value.shape)}, the '
                             f'model (arch={arch!r}) has {tuple(model_state[key].shape)}; the '
                             'weights are probably for another MobileOne variant')
    missing = sorted(set(model_state) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(model_state))
    if missing or unexpected:
        raise ValueError(f'{source} does not match the model: missing keys {missing}, '
                         f'unexpected keys {unexpected}')
    model.load_state_dict(state_dict, strict=True)


def load_pretrained_backbone(backbone: nn.Module, checkpoint: str,
                             prefix: Optional[str] = None) -> None:
    """``init_cfg=dict(type='Pretrained', checkpoint=..., prefix=...)`` for our backbone.

    Accepts our own checkpoints (classifier, detector, segmentor or bare backbone) and Apple, timm
    or mmpretrain MobileOne weights; ``prefix`` selects the backbone inside a larger model
    (e.g. ``'backbone.'``). Unlike mmengine's ``PretrainedInit`` (which only logs mismatches),
    anything that does not fit raises.
    """
    raw = state_dict_of(load_checkpoint_file(checkpoint, run_checkpoint=True))
    if prefix and any(k.startswith(prefix) for k in raw):
        raw = {k[len(prefix):]: v for k, v in raw.items() if k.startswith(prefix)}
    # else: public weights (Apple, timm) have no prefix; conversion finds the backbone keys.
    converted = convert_state_dict(raw, strict=False)
    weights = backbone_state_dict(converted)
    if not weights:
        raise ValueError(f'{checkpoint!r} holds no MobileOne backbone weights'
                         f'{" under prefix " + repr(prefix) if prefix else ""}')
    load_weights_strictly(backbone, weights, source=f'checkpoint {checkpoint!r}')


def recognise_arch(backbone_weights: Dict[str, torch.Tensor]) -> str:
    """The MobileOne arch whose backbone loads these (``backbone.``-less) weights exactly."""
    from ..models import ARCH_SETTINGS, MobileOne
    fused = is_fused(backbone_weights)
    for arch in ARCH_SETTINGS:
        try:
            load_weights_strictly(MobileOne(arch, deploy=fused), backbone_weights)
            return arch
        except ValueError:
            continue
    raise ValueError('the converted weights fit none of the MobileOne archs '
                     f'{list(ARCH_SETTINGS)} (fused={fused})')
