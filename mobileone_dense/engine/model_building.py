"""Build a model from any mobileone_dense config (detection, segmentation or classification)."""

import copy
from typing import Union

import torch.distributed as dist
import torch.nn as nn
from mmengine.config import Config
from mmengine.model import revert_sync_batchnorm
from mmengine.registry import MODELS, init_default_scope

from .checks import explain_registry_error


def build_model_from_config(cfg: Union[str, Config]) -> nn.Module:
    """The config's ``model`` built in its ``default_scope`` (weights not initialized).

    Outside a distributed job, SyncBN layers (mmseg's bases use them) become plain BN, as
    mmengine's Runner does for single-process runs: SyncBN cannot run without a process group.
    The state dict keys are the same either way. ``cfg`` is left as it was (mmdet's detectors
    write ``train_cfg``/``test_cfg`` into the head config they are given: they get a copy).
    """
    if isinstance(cfg, str):
        cfg = Config.fromfile(cfg)
    init_default_scope(cfg.get('default_scope', 'mmengine'))
    try:
        model = MODELS.build(copy.deepcopy(cfg.model))
    except KeyError as error:  # a type= typo: name it and the closest registered names
        explained = explain_registry_error(error, cfg.model, cfg.get('default_scope'), 'model')
        if explained is None:
            raise
        raise explained from None
    if not (dist.is_available() and dist.is_initialized()):
        model = revert_sync_batchnorm(model)
    return model
