"""Inference helpers: read any image, build a deploy model from a config + checkpoint."""

import os.path as osp
from typing import Optional, Union

import mmcv
import numpy as np
import torch.nn as nn
from mmengine.config import Config

from ..converters import load_checkpoint_file, load_weights_strictly, state_dict_of
from ..datasets.metainfo import config_dataset_meta
from ..engine.deploy_checkpoints import reparameterize_to_load
from ..engine.model_building import build_model_from_config
from ..errors import BadDataError, MissingDataError
from ..models.reparameterize import reparameterize


def read_image(path: str) -> np.ndarray:
    """Read an image file as BGR uint8 (H, W, 3), whatever its depth and channels.

    ``mmcv.imread(flag='color')`` already replicates grayscale, drops alpha and reduces 16-bit
    images to 8 bits (the upstream inferencers' array loaders take an array as it is: a
    grayscale one fails there); this adds errors that name the file and the problem.
    """
    if osp.isdir(path):
        raise BadDataError(f'{path!r} is a directory; give the path of one image file')
    if not osp.isfile(path):
        raise MissingDataError(f'image {path!r} does not exist')
    image = mmcv.imread(path, flag='color')
    if image is None:
        raise BadDataError(
            f'{path!r} is not a readable image (OpenCV cannot decode it); give a '
            'JPEG, PNG, BMP, TIFF or WebP file'
        )
    return image


def init_model(
    config: Union[str, Config],
    checkpoint: Optional[str] = None,
    device: str = 'cpu',
    deploy: bool = True,
) -> nn.Module:
    """Build the config's model, load ``checkpoint`` strictly (``weights_only``), eval; with
    ``deploy`` (default) re-parameterize it into its deploy form.

    Works for training checkpoints (EMA weights when present, as mmengine saves them) and for
    the deploy checkpoints of ``ReparameterizeHook``/``tools/reparameterize.py`` with their
    deploy config.
    """
    cfg = Config.fromfile(config) if isinstance(config, str) else config
    model = build_model_from_config(cfg)
    dataset_meta = None
    if checkpoint is not None:
        loaded = load_checkpoint_file(checkpoint, run_checkpoint=True)
        # deploy configs of earlier versions still build the neck/head BN that the file has folded
        reparameterize_to_load(model, loaded)
        load_weights_strictly(model, state_dict_of(loaded), source=f'checkpoint {checkpoint!r}')
        dataset_meta = loaded.get('meta', {}).get('dataset_meta')
    if dataset_meta is None:
        dataset_meta = config_dataset_meta(cfg)
    model.cfg = cfg
    model.dataset_meta = dataset_meta
    model.to(device).eval()
    return reparameterize(model) if deploy else model
