"""Strict loading of weights into a MobileOne backbone, with errors that say what to change."""

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from mmengine.logging import print_log

from ..errors import WeightsMismatchError
from ..models import ARCH_SETTINGS, MobileOne
from ..models.reparameterize import load_deploy_state_dict
from ..registry import WEIGHT_LOADERS
from .checkpoint_io import load_checkpoint_file, state_dict_of
from .download import cached_download, is_url
from .mobileone import backbone_state_dict, convert_state_dict, is_deploy_state_dict


def _short_list(keys: List[str], limit: int = 8) -> str:
    """``n [k1, k2, ...]``: long key lists would bury the message."""
    more = f', ... ({len(keys) - limit} more)' if len(keys) > limit else ''
    return f'{len(keys)} [{", ".join(keys[:limit])}{more}]'


HEAD_TASKS = {'bbox_head': 'detector', 'decode_head': 'segmentor', 'head': 'classifier'}


def describe_weights(state_dict: Dict[str, torch.Tensor]) -> str:
    """What a whole-model state dict looks like, e.g. ``'a detector (bbox_head) with a
    MobileOne-s1 backbone'``; ``''`` when it cannot tell. Builds each arch once: error paths
    only."""
    head = next((h for h in HEAD_TASKS if any(k.startswith(h + '.') for k in state_dict)), None)
    what = f'a {HEAD_TASKS[head]} ({head})' if head else 'weights'
    backbone = backbone_state_dict(state_dict) or state_dict
    try:
        arch = recognise_arch(backbone)
    except ValueError:
        return what if head else ''
    form = ' deploy-form' if is_deploy_state_dict(backbone) else ''
    return f'{what} with a MobileOne-{arch}{form} backbone'


def check_weights_match(
    model: nn.Module,
    state_dict: Dict[str, torch.Tensor],
    source: str = 'checkpoint',
    describe: bool = True,
) -> None:
    """Raise ``WeightsMismatchError`` unless ``state_dict`` fits ``model`` exactly (keys, shapes).

    The message names the ``deploy`` setting to use when deploy-form weights meet a train-time
    model (or the reverse), the first shape mismatch (usually another arch), or the missing and
    unexpected keys; with ``describe``, also what the weights look like (task and MobileOne arch).
    """
    model_state = model.state_dict()
    model_deploy = is_deploy_state_dict(model_state)
    if state_dict and is_deploy_state_dict(state_dict) != model_deploy:
        if is_deploy_state_dict(state_dict):
            raise WeightsMismatchError(
                f'{source} holds deploy-form (re-parameterized) MobileOne weights but the model '
                'has train-time branches: build the backbone with deploy=True (use the deploy '
                'config written next to the deploy checkpoint)'
            )
        raise WeightsMismatchError(
            f'{source} holds train-time MobileOne weights (with branches) but the model is in '
            'deploy form: build the backbone with deploy=False, load, then call '
            'mobileone_dense.reparameterize(model)'
        )
    arch = next((m.arch_name for m in model.modules() if hasattr(m, 'arch_name')), '?')

    def looks_like() -> str:
        described = describe_weights(state_dict) if describe else ''
        return f'; the {source} looks like {described}' if described else ''

    for key, value in state_dict.items():
        if key in model_state and model_state[key].shape != value.shape:
            raise WeightsMismatchError(
                f'size mismatch for {key}: {source} has {tuple(value.shape)}, the model '
                f'(arch={arch!r}) has {tuple(model_state[key].shape)}{looks_like()}: the weights '
                'are probably for another MobileOne variant or class count; use the config they '
                'were trained with'
            )
    missing = sorted(set(model_state) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(model_state))
    if missing or unexpected:
        raise WeightsMismatchError(
            f'{source} does not match the model ({type(model).__name__}, arch={arch!r}): missing '
            f'keys {_short_list(missing)}, unexpected keys {_short_list(unexpected)}'
            f'{looks_like()}; use the config the weights were trained with (or '
            "init_cfg=dict(type='Pretrained', prefix='backbone.') to take only a backbone)"
        )


def load_weights_strictly(
    model: nn.Module, state_dict: Dict[str, torch.Tensor], source: str = 'checkpoint'
) -> None:
    """Load a state dict into ``model`` (a backbone or a whole model); fail loudly on any mismatch.

    Raises ``WeightsMismatchError`` (a ``ValueError``), see ``check_weights_match``.
    """
    check_weights_match(model, state_dict, source)
    model.load_state_dict(state_dict, strict=True)


@WEIGHT_LOADERS.register_module(name='MobileOne')
def load_pretrained_backbone(
    backbone: nn.Module, checkpoint: str, prefix: Optional[str] = None
) -> None:
    """``init_cfg=dict(type='Pretrained', checkpoint=..., prefix=...)`` for our backbone.

    Accepts our own checkpoints (classifier, detector, segmentor or bare backbone) and Apple, timm
    or mmpretrain MobileOne weights; ``prefix`` selects the backbone inside a larger model
    (e.g. ``'backbone.'``). ``checkpoint`` may be an ``http(s)://`` URL (the detection and
    segmentation configs give Apple's): it is downloaded once into torch's hub cache
    (:func:`~.download.cached_download`) and loaded weights-only from there, and a cached file
    that cannot be used (truncated, another arch) raises an error naming the file to delete.
    Deploy weights (a deploy checkpoint) initialize a train-time backbone
    through :func:`~mobileone_dense.models.reparameterize.load_deploy_state_dict` (same function
    in eval mode, trainable branches) and say so in the log. An ``s4_no_se`` backbone takes S4
    weights without their squeeze-excite layers (logged). Unlike mmengine's
    ``PretrainedInit`` (which only logs mismatches), anything else that does not fit raises.
    """
    if not is_url(checkpoint):
        weights = _backbone_weights(checkpoint, prefix, run_checkpoint=True)
        _load_backbone(backbone, weights, f'checkpoint {checkpoint!r}')
        return
    path = cached_download(checkpoint)
    delete = 'delete it (the next run downloads it again)'
    source = f'{path!r} (the cached download of {checkpoint})'
    weights = {}
    try:
        weights = _backbone_weights(path, prefix, corrupt_fix=delete)
        _load_backbone(backbone, weights, source)
    except ValueError:  # weights of another arch, or no MobileOne weights at all
        described = (describe_weights(weights) if weights else '') or 'no MobileOne weights'
        raise WeightsMismatchError(
            f'{source} holds {described}, not weights of the MobileOne-{backbone.arch_name} '
            f'backbone of the config: {delete}, or give the config the URL of the weights '
            'of its arch'
        ) from None


def _backbone_weights(path: str, prefix: Optional[str], **load_options) -> Dict[str, torch.Tensor]:
    """The (``backbone.``-less) MobileOne backbone weights of a checkpoint file, converted to
    our layout. ``load_options`` go to ``load_checkpoint_file``."""
    raw = state_dict_of(load_checkpoint_file(path, **load_options))
    if prefix and any(k.startswith(prefix) for k in raw):
        raw = {k[len(prefix) :]: v for k, v in raw.items() if k.startswith(prefix)}
    # else: public weights (Apple, timm) have no prefix; conversion finds the backbone keys.
    weights = backbone_state_dict(convert_state_dict(raw, strict=False))
    if not weights:
        raise WeightsMismatchError(
            f'{path!r} holds no MobileOne backbone weights'
            f'{" under prefix " + repr(prefix) if prefix else ""}'
        )
    return weights


def _load_backbone(backbone: nn.Module, weights: Dict[str, torch.Tensor], source: str) -> None:
    """Load converted backbone weights strictly (deploy weights into branches, S4 weights
    into ``s4_no_se`` without their SE layers) and log what was loaded."""
    weights, left_out = _without_squeeze_excite(backbone, weights)
    if is_deploy_state_dict(weights) and not is_deploy_state_dict(backbone.state_dict()):
        # fine-tuning from a deploy checkpoint: the branches are set so that the train-time
        # backbone in eval mode computes the deploy one's function
        load_deploy_state_dict(backbone, weights)
        print_log(
            f'initialized the train-time branches of the MobileOne backbone from the '
            f'deploy weights of {source}: the first conv branch of every block '
            'carries the deploy kernel (its BN the identity plus the deploy bias), the '
            'other branches start at zero output; in eval mode it computes the deploy '
            'model',
            logger='current',
        )
    else:
        load_weights_strictly(backbone, weights, source=source)
        print_log(
            f'initialized the MobileOne-{backbone.arch_name} backbone from {source}',
            logger='current',
        )
    if left_out:
        blocks = sorted({k.rsplit('.se.', 1)[0] for k in left_out}, key=_natural)
        print_log(
            f'left out the squeeze-excite weights ({len(left_out)} tensors) of {source}, '
            f'blocks {_short_list(blocks, limit=4)}: s4_no_se has no SE layers; every other '
            'weight was loaded',
            logger='current',
        )


def _without_squeeze_excite(
    backbone: nn.Module, weights: Dict[str, torch.Tensor]
) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """For an ``s4_no_se`` backbone: the weights without the SE keys it has no place for (S4's
    ImageNet weights are trained with SE; no S4 without SE is published), and those keys.
    Other archs get the weights unchanged (and any SE key left fails the strict load)."""
    if getattr(backbone, 'arch_name', None) != 's4_no_se':
        return weights, []
    own = backbone.state_dict()
    left_out = [k for k in weights if '.se.' in k and k not in own]
    return {k: v for k, v in weights.items() if k not in left_out}, left_out


def _natural(key: str) -> list:
    """Sort key that orders ``stages.2.10`` after ``stages.2.9``."""
    return [int(part) if part.isdigit() else part for part in key.split('.')]


def recognise_arch(backbone_weights: Dict[str, torch.Tensor]) -> str:
    """The MobileOne arch whose backbone loads these (``backbone.``-less) weights exactly."""
    deploy = is_deploy_state_dict(backbone_weights)
    for arch in ARCH_SETTINGS:
        try:
            check_weights_match(MobileOne(arch, deploy=deploy), backbone_weights, describe=False)
            return arch
        except WeightsMismatchError:
            continue
    raise ValueError(
        'the converted weights fit none of the MobileOne archs '
        f'{list(ARCH_SETTINGS)} (deploy={deploy})'
    )
