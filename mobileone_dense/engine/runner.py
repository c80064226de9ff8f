"""mmengine's Runner, able to resume from its own checkpoints on torch >= 2.6, saving them
atomically and resuming exactly (RNG states) after a crash."""

import glob
import os
import os.path as osp
import random
import zipfile
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
from mmengine.dist import get_world_size, is_main_process, master_only
from mmengine.fileio import LocalBackend, get_file_backend
from mmengine.runner import Runner as MMEngineRunner

from ..converters.checkpoint_io import allow_mmengine_checkpoints, load_checkpoint_file
from ..errors import CheckpointError
from ..models.reparameterize import reparameterize
from ..registry import RUNNERS
from .compat import (
    CHECKPOINT_POINTER,
    checkpoint_plan,
    ema_copies,
    load_loaded_checkpoint,
    mark_checkpoint_loaded,
)
from .deploy_checkpoints import reparameterize_to_load, replace_durably, unwrap_model

# message_hub key of the RNG states at the moment a checkpoint was written
RNG_STATE_KEY = 'mobileone_dense_rng_state'


def partial_path(path: str) -> str:
    """Where checkpoint ``path`` is written until complete: hidden, in the same folder."""
    folder, name = osp.split(path)
    return osp.join(folder, f'.{name}.part')


def checkpoint_problem(path: str) -> Optional[str]:
    """Why ``path`` cannot be resumed from ('does not exist', 'is truncated ...'), or None.

    Loads with ``weights_only=True`` and memory-mapped tensors: the pickle is read and the zip
    directory checked, the tensor data is not copied.
    """
    if not osp.isfile(path):
        return 'does not exist'
    if osp.getsize(path) == 0:
        return 'is empty'
    try:
        with allow_mmengine_checkpoints():
            checkpoint = torch.load(
                path, map_location='cpu', weights_only=True, mmap=zipfile.is_zipfile(path)
            )
    except Exception as error:  # noqa: BLE001 (any failure means: not resumable)
        detail = (str(error).splitlines() or [''])[0]
        return f'cannot be loaded, truncated or corrupt ({type(error).__name__}: {detail})'
    meta = checkpoint.get('meta') if isinstance(checkpoint, dict) else None
    if not isinstance(meta, dict) or 'iter' not in meta or 'state_dict' not in checkpoint:
        return 'is not an mmengine training checkpoint (no meta/state_dict)'
    if meta.get('mobileone_dense_deploy'):
        return 'is a deploy checkpoint, not a training one'
    return None


class _Silent:
    def warning(self, message: str) -> None:
        pass

    info = warning


def find_resumable_checkpoint(work_dir: str, logger=None) -> Optional[str]:
    """The checkpoint ``--resume`` (without a path) restarts from; None to train from the start.

    The one ``work_dir/last_checkpoint`` names, if it loads. A run killed while CheckpointHook
    rewrote that pointer leaves it empty, and a checkpoint may be missing or truncated (deleted,
    disk full, or written by a runner without atomic saves): then the newest loadable ``*.pth``
    of the work dir (and of the pointer's folder) is used, with a warning (``logger``: any object
    with ``warning``/``info``; None: silent). Raises ``CheckpointError`` if the pointer exists but
    nothing can be loaded, rather than silently training from scratch.
    """
    log = logger or _Silent()
    pointer = osp.join(work_dir, CHECKPOINT_POINTER)
    folders = [work_dir]
    if osp.isfile(pointer):
        with open(pointer) as f:
            target = f.read().strip()
        if '://' in target:
            return target  # an object store (CheckpointHook out_dir): mmengine's loader checks
        if target:
            problem = checkpoint_problem(target)
            if problem is None:
                return target
            reason = f'{pointer} names {target}, which {problem}'
            folders.append(osp.dirname(target))
        else:
            reason = f'{pointer} is empty (the run was probably killed while writing it)'
    else:
        reason = f'there is no {pointer}'
    candidates = {
        path
        for folder in folders
        for path in glob.glob(osp.join(folder, '*.pth'))
        if not path.endswith('_deploy.pth')
    }
    for path in sorted(candidates, key=lambda p: (os.stat(p).st_mtime_ns, p), reverse=True):
        if checkpoint_problem(path) is None:
            log.warning(f'{reason}: resuming from the newest loadable checkpoint {path}')
            return path
    if osp.isfile(pointer):
        raise CheckpointError(
            f'cannot resume: {reason}, and no other checkpoint in {sorted(set(folders))} loads. '
            f'Pass --resume CKPT with a checkpoint of this run, or delete {pointer} to train '
            'from the start.'
        )
    if candidates:
        log.warning(f'{reason}, and none of {sorted(candidates)} loads: training from the start')
    else:
        log.info(f'no checkpoint to resume from in {work_dir}: training from the start')
    return None


def rng_state() -> dict:
    """Python, numpy and torch (CPU and CUDA) RNG states, as tensors and plain numbers, so that
    ``weights_only`` loading accepts them."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = dict(
        python=random.getstate(),
        torch=torch.get_rng_state(),
        numpy=(
            name,
            torch.from_numpy(keys.astype(np.int64)),
            int(pos),
            int(has_gauss),
            float(cached),
        ),
    )
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Inverse of :func:`rng_state`."""
    random.setstate(state['python'])
    name, keys, pos, has_gauss, cached = state['numpy']
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state['torch'])
    if (
        'cuda' in state
        and torch.cuda.is_available()
        and len(state['cuda']) == torch.cuda.device_count()
    ):
        torch.cuda.set_rng_state_all(state['cuda'])


def describe_device(model: nn.Module) -> str:
    """'cuda:0 (NVIDIA H200)', 'cpu', or 'cpu (torch sees no CUDA GPU ...)' for ``model``."""
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device('cpu')
    if device.type == 'cuda':
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f'cuda:{index} ({torch.cuda.get_device_name(index)})'
    if device.type == 'cpu' and not torch.cuda.is_available():
        return (
            f'cpu (torch {torch.__version__} sees no CUDA GPU: torch.cuda.is_available() is False)'
        )
    return str(device)


@RUNNERS.register_module()
class Runner(MMEngineRunner):
    """``mmengine.runner.Runner`` whose checkpoint loading accepts mmengine's own checkpoints.

    torch >= 2.6 loads with ``weights_only=True``, which refuses the numpy arrays and
    ``HistoryBuffer`` objects mmengine 0.10.7 pickles in ``message_hub``, so ``--resume`` crashes.
    The exact globals those checkpoints need are allowed only while the runner loads a checkpoint
    (``resume`` and ``load_from``); every other ``torch.load`` in the process keeps the default.
    Select it with ``runner_type = 'mobileone_dense.Runner'`` (our configs do).

    Crash safety (mmengine writes checkpoints in place, so a kill leaves a truncated file):

    - ``save_checkpoint`` writes ``.NAME.part`` in the same folder, fsyncs it and renames it to
      ``NAME``: a checkpoint file is complete or absent.
    - Checkpoints carry the python/numpy/torch RNG states; a non-distributed resume restores
      them, so with ``num_workers=0`` a resumed run draws the same augmentations as an
      uninterrupted one.
    - ``--resume`` without a path survives an empty/broken ``last_checkpoint`` and a missing or
      truncated checkpoint (see :func:`find_resumable_checkpoint`), and removes stale ``.part``
      files.

    A checkpoint file is read once per load (``load_checkpoint``), and not at all when
    :meth:`use_loaded_checkpoint` handed it over already read (``launch.build_runner``'s checks
    read it first).
    """

    # (path, checkpoint) read before the runner was built, for the next load of that path
    _loaded_checkpoint: Optional[Tuple[str, dict]] = None

    def wrap_model(self, model_wrapper_cfg, model: nn.Module) -> nn.Module:
        """``Runner.wrap_model`` (moves the model to mmengine's device, wraps it for DDP), then
        logs where the model runs: a GPU machine whose torch cannot see the GPU trains on the CPU
        without any other sign."""
        model = super().wrap_model(model_wrapper_cfg, model)
        self.logger.info(f'model on {describe_device(unwrap_model(model))}')
        return model

    def load_checkpoint(
        self,
        filename: str,
        map_location='cpu',
        strict: bool = False,
        revise_keys=((r'^module.', ''),),
    ):
        """``Runner.load_checkpoint``; ``Runner.resume`` and ``load_from`` both go through it.

        A deploy checkpoint (``ReparameterizeHook`` / ``tools/reparameterize.py``) has no BN
        entries for the neck/head: the model (and EMAHook's copy, whose parameters are swapped
        with the model's by position) is re-parameterized first, and the load is strict.

        A local file is read once (on the CPU: loading copies the weights to the model's device,
        and the optimizer moves its state to its parameters'), or taken from
        :meth:`use_loaded_checkpoint`; other locations go through mmengine's loader.
        """
        loaded, self._loaded_checkpoint = self._loaded_checkpoint, None
        if loaded is not None and loaded[0] == filename:
            checkpoint = loaded[1]
        elif osp.isfile(filename):
            checkpoint = load_checkpoint_file(filename, run_checkpoint=True)
        else:
            with allow_mmengine_checkpoints():
                return super().load_checkpoint(
                    filename,
                    map_location=map_location,
                    strict=strict,
                    revise_keys=list(revise_keys),
                )
        if reparameterize_to_load(unwrap_model(self.model), checkpoint):
            for ema_copy in ema_copies(self):
                reparameterize(ema_copy)
            strict = True
        return load_loaded_checkpoint(self, checkpoint, filename, strict, revise_keys)

    def use_loaded_checkpoint(self, filename: str, checkpoint: dict) -> None:
        """Let the next :meth:`load_checkpoint` of ``filename`` use ``checkpoint`` (that file,
        already read with ``load_checkpoint_file(filename, run_checkpoint=True)``) instead of
        reading it again."""
        self._loaded_checkpoint = (filename, checkpoint)

    @master_only
    def save_checkpoint(
        self,
        out_dir: str,
        filename: str,
        file_client_args=None,
        save_optimizer: bool = True,
        save_param_scheduler: bool = True,
        meta: Optional[dict] = None,
        by_epoch: bool = True,
        backend_args: Optional[dict] = None,
    ) -> None:
        """``Runner.save_checkpoint``, atomic for local folders; also records the RNG states."""
        self.message_hub.update_info(RNG_STATE_KEY, rng_state())
        args = (
            file_client_args,
            save_optimizer,
            save_param_scheduler,
            meta,
            by_epoch,
            backend_args,
        )
        if file_client_args is not None or not isinstance(
            get_file_backend(out_dir, backend_args=backend_args), LocalBackend
        ):
            return super().save_checkpoint(out_dir, filename, *args)  # object stores: as is
        tmp_name = partial_path(filename)
        tmp, path = osp.join(out_dir, tmp_name), osp.join(out_dir, filename)
        try:
            super().save_checkpoint(out_dir, tmp_name, *args)
            replace_durably(tmp, path)
        except BaseException:
            if osp.exists(tmp):
                os.remove(tmp)
            raise

    def load_or_resume(self) -> None:
        """``Runner.load_or_resume``, with a robust choice of the checkpoint for ``--resume``."""
        has_loaded, resume, load_from = checkpoint_plan(self)
        if has_loaded or not resume:
            return super().load_or_resume()
        if is_main_process():
            for stale in glob.glob(osp.join(self.work_dir, '.*.part')):
                self.logger.info(f'removing {stale}, left by a run killed while saving')
                os.remove(stale)
        if load_from is not None:  # an explicit --resume CKPT: no guessing
            return super().load_or_resume()
        resume_from = find_resumable_checkpoint(self.work_dir, self.logger)
        if resume_from is not None:
            self.logger.info(f'Auto resumed from the latest checkpoint {resume_from}.')
            self.resume(resume_from)
        mark_checkpoint_loaded(self)

    def resume(
        self,
        filename: str,
        resume_optimizer: bool = True,
        resume_param_scheduler: bool = True,
        map_location='default',
    ) -> None:
        """``Runner.resume``, also restoring the RNG states saved with the checkpoint.

        Only in non-distributed runs: the states are rank 0's, and every rank must keep its
        own stream.
        """
        self.message_hub.runtime_info.pop(RNG_STATE_KEY, None)
        super().resume(filename, resume_optimizer, resume_param_scheduler, map_location)
        state = self.message_hub.runtime_info.get(RNG_STATE_KEY)
        if state is not None and get_world_size() == 1:
            set_rng_state(state)
            self.logger.info('restored the RNG states of the checkpoint')
