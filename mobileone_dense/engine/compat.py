"""Every workaround for a third-party bug, and every use of a third-party private API, of the
engine layer: one small function each, whose docstring names the upstream package and version it
targets and what upstream does. ``tests/test_compat.py`` asserts, for each, that upstream still
behaves so: when an upgrade fails one of those tests, the workaround beside it can go (or must
change).

Built on these, ``runner.py`` replaces two upstream behaviours outright: ``--resume`` without a
path picks a loadable checkpoint itself (``find_resumable_checkpoint``; mmengine 0.10.7's
``find_latest_checkpoint`` returns whatever ``last_checkpoint`` names, even a missing or
truncated file), and checkpoints are saved atomically (upstream writes them in place).

Workarounds below the engine layer cannot import this module (layers import only downward) and
live where they are needed:

- model layer: ``mobileone_dense/models/dense_heads/ssd_head.py`` (mmdet 3.3.0's ``SSDHead``
  never sets the ``loss_cls`` its ``predict`` reads; NMS through torchvision instead of mmcv's
  compiled ops);
- converters layer: ``mobileone_dense/converters/checkpoint_io.py``
  (``allow_mmengine_checkpoints``: torch >= 2.6 loads with ``weights_only=True``, which refuses
  the numpy arrays and ``HistoryBuffer`` objects mmengine 0.10.7 pickles in its checkpoints).
"""

import datetime
from typing import List, Optional, Sequence, Tuple

import torch.distributed as dist
import torch.nn as nn
from mmengine.hooks import EMAHook
from mmengine.runner.checkpoint import _load_checkpoint_to_model

from .deploy_checkpoints import unwrap_model

# mmengine 0.10.7's CheckpointHook writes the path of the checkpoint it saved last into this
# file of the work dir (and ``find_latest_checkpoint`` reads it back for ``--resume``).
CHECKPOINT_POINTER = 'last_checkpoint'
# ... and into this message hub info key (``runner.message_hub.get_info``), undocumented.
LAST_CHECKPOINT_KEY = 'last_ckpt'


def checkpoint_plan(runner) -> Tuple[bool, bool, Optional[str]]:
    """``(already loaded, resume, load_from)`` of an mmengine Runner.

    mmengine 0.10.7's ``Runner`` keeps them in private attributes (``_has_loaded``, ``_resume``,
    ``_load_from``; the public ``load_from``/``resume`` config keys are not kept), and
    ``Runner.load_or_resume`` reads them: our Runner's own ``load_or_resume`` needs them too.
    """
    return runner._has_loaded, runner._resume, runner._load_from


def mark_checkpoint_loaded(runner) -> None:
    """Tell an mmengine 0.10.7 ``Runner`` that its checkpoint is loaded (private
    ``_has_loaded``, which ``Runner.load_checkpoint`` and ``load_or_resume`` set), so that
    ``train``/``test`` do not load it again."""
    runner._has_loaded = True


def load_loaded_checkpoint(
    runner, checkpoint: dict, filename: str, strict: bool, revise_keys: Sequence[Tuple[str, str]]
) -> dict:
    """``Runner.load_checkpoint`` of mmengine 0.10.7 for a checkpoint already read into memory.

    Upstream reads the file itself (``_load_checkpoint``) and has no way to take a loaded dict;
    this does what it does after the read: the ``after_load_checkpoint`` hooks, mmengine's
    private ``_load_checkpoint_to_model`` (``revise_keys``, non-strict logging), the private
    ``_has_loaded`` flag and the log line. Returns the checkpoint, as upstream.
    """
    runner.call_hook('after_load_checkpoint', checkpoint=checkpoint)
    checkpoint = _load_checkpoint_to_model(
        unwrap_model(runner.model), checkpoint, strict, revise_keys=list(revise_keys)
    )
    mark_checkpoint_loaded(runner)
    runner.logger.info(f'Load checkpoint from {filename}')
    return checkpoint


def last_checkpoint(runner) -> Optional[str]:
    """The path of the checkpoint mmengine's ``CheckpointHook`` saved last in this run (or in
    the run it resumed), None before the first one.

    mmengine 0.10.7's ``CheckpointHook`` records it in the message hub (``'last_ckpt'``, an
    undocumented key, restored on resume) and in ``work_dir/last_checkpoint``; the message hub
    is read here: no file access, and it holds exactly what the file holds.
    """
    return runner.message_hub.get_info(LAST_CHECKPOINT_KEY)


def ema_copies(runner) -> List[nn.Module]:
    """The averaged model copies of the runner's ``EMAHook``\\ s (built in ``before_run``).

    mmengine 0.10.7's ``EMAHook`` swaps the averaged weights in and out (validation, test,
    checkpoints) by zipping the copy's parameter list with the model's, by position
    (``_swap_ema_parameters``), not by name: whatever changes the model's structure (the
    re-parameterization before a test or before loading a deploy checkpoint) must change each
    copy the same way.
    """
    return [
        hook.ema_model.module
        for hook in runner.hooks
        if isinstance(hook, EMAHook) and hasattr(hook, 'ema_model')
    ]


def init_cpu_process_group(dist_cfg: dict) -> None:
    """Start the gloo process group of a ``--launcher pytorch`` run from torchrun's environment
    (rank, world size, master address), on a machine without a GPU.

    mmengine 0.10.7's ``init_dist('pytorch')`` always calls ``torch.cuda.set_device(LOCAL_RANK)``
    first, which fails without a GPU; the Runner skips ``init_dist`` when a group is already
    started. ``dist_cfg``: the config's ``env_cfg.dist_cfg`` without ``backend`` (``timeout`` in
    seconds, as mmengine takes it).
    """
    dist_cfg = dict(dist_cfg)
    if dist_cfg.get('timeout') is not None:
        dist_cfg['timeout'] = datetime.timedelta(seconds=dist_cfg['timeout'])
    dist.init_process_group(backend='gloo', **dist_cfg)


def cpu_ddp_wrapper_cfg(model_wrapper_cfg: Optional[dict], find_unused_parameters: bool) -> dict:
    """The ``model_wrapper_cfg`` for DDP over CPU processes: ``device_ids=None``.

    mmengine 0.10.7's ``Runner.wrap_model`` gives DDP wrappers ``device_ids=[LOCAL_RANK]``
    (always without a ``model_wrapper_cfg``, as a default argument with one), and torch's DDP
    refuses device ids for CPU modules. ``None``: mmengine's default wrapper, whose arguments
    (``broadcast_buffers=False``, the config's ``find_unused_parameters``) are kept.
    """
    wrapper = dict(
        model_wrapper_cfg
        or dict(
            type='MMDistributedDataParallel',
            broadcast_buffers=False,
            find_unused_parameters=find_unused_parameters,
        )
    )
    wrapper.setdefault('device_ids', None)  # an explicit value beats mmengine's default
    return wrapper
