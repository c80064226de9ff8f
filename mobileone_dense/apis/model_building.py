"""Build a model from any mobileone_dense config (detection, segmentation or classification)."""
from typing import Union

import torch.nn as nn
from mmengine.config import Config
from mmengine.registry import MODELS, init_default_scope


def build_model_from_config(cfg: Union[str, Config]) -> nn.Module:
    """The config's ``model`` built in its ``default_scope`` (weights not initialized)."""
    if isinstance(cfg, str):
        cfg = Config.fromfile(cfg)
    init_default_scope(cfg.get('default_scope', 'mmengine'))
    return MODELS.build(cfg.model)
