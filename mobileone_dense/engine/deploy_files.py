"""The two deploy files, written together by ``ReparameterizeHook`` and
``tools/reparameterize.py``: the checkpoint (deploy weights, a complete ``dataset_meta``) and a
config that describes the deploy model in plain mmdet/mmseg/mmpretrain terms.

Any tool that builds the model from that config (mmdet's ``DetInferencer`` and ``tools/test.py``,
mmseg's and mmpretrain's, mmengine's own Runner) gets exactly the checkpoint's structure, and the
weights load with no missing or unexpected key; no loading path of ours is needed.
"""

import copy
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from mmengine.config import Config

from ..datasets.metainfo import config_dataset_meta, plain
from ..errors import ConfigError, DeployConfigError
from ..models.reparameterize import folded_norm_names, reparameterize
from .deploy_checkpoints import (
    EXACT_TOLERANCE,
    atomic_dump_config,
    atomic_save,
    deploy_checkpoint,
    max_relative_difference,
    output_tensors,
    tensor_forward,
)
from .model_building import build_model_from_config

# Sizes (H = W) of the random input on which a deploy config's model must compute the deploy
# model's function, tried in turn: the structure, not the size, is what is checked, so the
# smallest that the model can run (an unpadded conv on a stride-32 map needs more than 64 px).
CHECK_SIZES = (64, 256, 512)


def deploy_config(
    cfg: Config,
    checkpoint: Optional[str] = None,
    model: Optional[nn.Module] = None,
    deployed: Optional[nn.Module] = None,
) -> Config:
    """The config of ``cfg``'s deploy model (:func:`mobileone_dense.reparameterize`), so that
    building it gives exactly the structure of a deploy checkpoint:

    - the MobileOne backbone with ``deploy=True`` (one conv per block), no pretrained init;
    - every other model part whose Conv+BN pairs the re-parameterization folds (SSDLite's neck
      and head, DeepLabV3's ASPP head) with ``norm_cfg=None``: mmcv's ``ConvModule`` then builds
      each of those convs with a bias and no norm layer, which is the folded form;
    - no ``EMAHook``: the deploy checkpoint already holds the EMA weights, and EMAHook's copy
      (swapped with the model's parameters by position) would be a second one;
    - ``load_from`` = ``checkpoint`` when given; resuming off.

    Args:
        cfg: the training config (the deploy config of an earlier version works too: its
            neck/head BN are found and removed the same way).
        checkpoint: the deploy checkpoint the config is for.
        model: the model built from ``cfg``, when the caller has it (built here otherwise);
            only its structure matters, and it is not changed.
        deployed: ``model`` re-parameterized, when the caller has it (made here otherwise).

    Checked before it is returned (:func:`check_deploy_config`); raises ``DeployConfigError``
    naming a part whose deploy form ``norm_cfg=None`` cannot describe.
    """
    cfg = copy.deepcopy(cfg)
    target = cfg.model.get('backbone', cfg.model)
    if 'MobileOne' not in str(target.get('type', '')):
        raise ValueError(
            f'cannot make a deploy config: the backbone type is '
            f'{target.get("type")!r}, not mobileone_dense.MobileOne'
        )
    if model is None:
        model = build_model_from_config(cfg)
    parts = dict(_part_of(cfg.model, name) for name in folded_norm_names(model))
    for part in parts.values():
        part.norm_cfg = None
    target.deploy = True
    target.init_cfg = None  # the deploy checkpoint carries the weights; train-time ones don't fit
    cfg.custom_hooks = [
        hook for hook in cfg.get('custom_hooks', []) if 'EMAHook' not in str(hook.get('type', ''))
    ]
    if checkpoint is not None:
        cfg.load_from = checkpoint
    cfg.resume = False
    if deployed is None:
        deployed = reparameterize(copy.deepcopy(model))
    check_deploy_config(cfg, deployed, [f'{k} ({p.type})' for k, p in sorted(parts.items())])
    return cfg


def check_deploy_config(cfg: Config, deployed: nn.Module, parts: Sequence[str] = ()) -> None:
    """Raise ``DeployConfigError`` unless the model built from the deploy config ``cfg`` has
    exactly the state-dict keys and shapes of ``deployed`` (a re-parameterized model, left as it
    is) and, given its weights, computes its outputs (both in float64 on the CPU, on a random
    image of the first of ``CHECK_SIZES`` the model runs at, relative difference within
    ``EXACT_TOLERANCE``). ``parts``: the model parts
    given ``norm_cfg=None`` (config key and type), for the message."""
    fix = (
        f'(model parts given norm_cfg=None: {", ".join(parts) or "none"}). A module that cannot '
        'be built without the norm layers of its folded convs needs a registered deploy variant '
        '(the same module with those convs biased and no norm) to name in the deploy config'
    )
    try:
        built = build_model_from_config(cfg)
    except TypeError as error:  # a part whose class takes no norm_cfg
        raise DeployConfigError(f'the deploy config cannot be built: {error} {fix}') from None
    expected = {k: tuple(v.shape) for k, v in deployed.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in built.state_dict().items()}
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    shapes = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])
    if missing or unexpected or shapes:
        raise DeployConfigError(
            'the deploy config does not build the deploy model: it lacks '
            f'{missing[:6]}, has {unexpected[:6]} that the deploy weights lack, and other '
            f'shapes for {shapes[:6]} {fix}'
        )
    deployed = copy.deepcopy(deployed).cpu().double().eval()
    built.double().load_state_dict(deployed.state_dict())
    for size in CHECK_SIZES:
        inputs = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
        try:
            with torch.no_grad():
                reference = output_tensors(tensor_forward(deployed, inputs.double()))
        except RuntimeError:  # too small for this model: the next size
            if size == CHECK_SIZES[-1]:
                raise
            continue
        break
    with torch.no_grad():
        outputs = output_tensors(tensor_forward(built.eval(), inputs.double()))
    error = float('inf')
    if len(outputs) == len(reference):
        error = max_relative_difference(outputs, reference)
    if error > EXACT_TOLERANCE:
        raise DeployConfigError(
            'the model of the deploy config has the deploy weights but computes another '
            f'function (max relative difference {error:.1e} in float64) {fix}'
        )


def complete_dataset_meta(source: Optional[dict], cfg: Config) -> dict:
    """``source`` (the ``dataset_meta`` of a trained run, or None) completed from the config's
    data set (:func:`~mobileone_dense.datasets.metainfo.config_dataset_meta`): class names, and
    the palette where the data set class has one; ``source``'s values win. Raises
    ``ConfigError`` when neither names the classes."""
    given = {k: v for k, v in plain(source or {}).items() if v is not None}
    meta = {**config_dataset_meta(cfg), **given}
    if not meta.get('classes'):
        raise ConfigError(
            "no class names for the deploy checkpoint's meta['dataset_meta']: the source "
            "checkpoint has none and the config's test data set defines none; set "
            "test_dataloader.dataset.metainfo=dict(classes=('name', ...)) in the config"
        )
    return meta


def write_deploy_files(
    cfg: Config,
    model: nn.Module,
    deployed: nn.Module,
    checkpoint_path: str,
    config_path: str,
    meta: dict,
) -> Dict[str, str]:
    """Write ``checkpoint_path`` (:func:`~.deploy.deploy_checkpoint` of ``deployed``, ``meta``
    with its ``dataset_meta`` completed by :func:`complete_dataset_meta`) and ``config_path``
    (:func:`deploy_config` of ``cfg`` loading ``checkpoint_path``), each atomically; both are
    made and checked first, so a failure writes nothing.

    ``model`` is the train-time model that ``deployed`` was re-parameterized from (a copy).
    Returns ``dict(checkpoint=checkpoint_path, config=config_path)``.
    """
    meta = dict(meta, dataset_meta=complete_dataset_meta(meta.get('dataset_meta'), cfg))
    config = deploy_config(cfg, checkpoint_path, model, deployed)
    atomic_save(deploy_checkpoint(deployed, meta), checkpoint_path)
    atomic_dump_config(config, config_path)
    return dict(checkpoint=checkpoint_path, config=config_path)


def _part_of(model_cfg: dict, module_name: str) -> Tuple[str, dict]:
    """``(config key, config dict)`` of the model part that built the module ``module_name``: a
    top-level entry of ``model_cfg``, or an item of a list entry (mmseg's auxiliary heads)."""
    first, _, rest = module_name.partition('.')
    key, part = first, model_cfg.get(first)
    index = rest.partition('.')[0]
    if isinstance(part, (list, tuple)) and index.isdigit() and int(index) < len(part):
        key, part = f'{first}.{index}', part[int(index)]
    if not isinstance(part, dict) or 'type' not in part:
        raise DeployConfigError(
            f'the re-parameterization folds {module_name!r}, which no model part of the config '
            f'builds (model.{first} is not a module config): a config cannot describe this '
            'deploy model'
        )
    return key, part
