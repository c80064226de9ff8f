"""Checks of the checkpoint a run loads, before the runner builds anything (a truncated file)
and once the model is built (weights that do not fit it)."""

import copy
import re
from typing import Optional, Tuple

import torch.nn as nn
from mmengine.config import Config

from ...converters import load_checkpoint_file, state_dict_of
from ...converters.loading import check_weights_match
from ...errors import WeightsMismatchError
from ..deploy_checkpoints import is_deploy_checkpoint, reparameterize_to_load, unwrap_model


def read_checkpoint(cfg: Config) -> Optional[Tuple[str, dict]]:
    """``(path, checkpoint)`` of the run's ``load_from`` (also ``--resume CKPT``), read now
    (``weights_only``) so that a truncated or corrupt file raises ``CheckpointError`` before
    anything is built. None when there is none (or it is remote). ``--resume`` without a path is
    left to our Runner, which skips a truncated latest checkpoint for the one before."""
    path = cfg.get('load_from')
    if not path or '://' in path:
        return None
    return path, load_checkpoint_file(path, run_checkpoint=True)


def check_checkpoint_fits(
    cfg: Config, model: nn.Module, path: str, checkpoint: dict, mode: str
) -> None:
    """Compare a run's checkpoint weights with its model (the runner's).

    Testing and resuming need exactly the model's weights (mmengine's non-strict load would only
    log what does not fit and go on with random weights): any mismatch raises
    ``WeightsMismatchError`` listing missing and unexpected keys and what the weights look like.
    ``load_from`` for training follows the fine-tuning convention (heads may differ and are
    logged by mmengine), so only the backbone must fit, and the checkpoint must share weights
    with the model.
    """
    model = unwrap_model(model)
    if is_deploy_checkpoint(checkpoint):  # our Runner re-parameterizes the model before loading
        model = copy.deepcopy(model)
        reparameterize_to_load(model, checkpoint)
    # mmengine's default revise_keys: DataParallel prefixes
    weights = {re.sub(r'^module\.', '', k): v for k, v in state_dict_of(checkpoint).items()}
    source = f'checkpoint {path!r}'
    if mode == 'test' or cfg.get('resume'):
        check_weights_match(model, weights, source)
        return
    model_state = model.state_dict()
    if not set(weights) & set(model_state):
        check_weights_match(model, weights, source)  # nothing in common: say what it is
    backbone = {k: v for k, v in model_state.items() if k.startswith('backbone.')}
    mismatched = [k for k in backbone if k not in weights or weights[k].shape != backbone[k].shape]
    if mismatched:
        try:
            check_weights_match(model, weights, source)
        except WeightsMismatchError as error:
            raise WeightsMismatchError(
                f'load_from: the backbone does not fit ({len(mismatched)} '
                'backbone weights missing or of another shape): '
                f'{error}'
            ) from None
