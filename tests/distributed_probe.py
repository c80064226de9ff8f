"""Imported (``custom_imports``) by the tool processes of ``tests/test_distributed.py``.

Each process writes ``<work_dir>/probe_rank<rank>.json`` when its run ends: rank and world
size, the model wrapper and norm layers the Runner built, the model each validation/test ran on
(deploy form or not, norm layers, a hash of its weights and buffers), the metrics the rank received,
and every ``*.pth`` file the process opened for writing (a Python audit hook, so any writer
counts: mmengine's checkpoint saving, our deploy export).
"""

import hashlib
import json
import os
import os.path as osp
import sys

import torch
import torch.nn as nn
from mmengine.dist import get_dist_info
from mmengine.hooks import Hook
from mmengine.model import MMDistributedDataParallel, is_model_wrapper
from mmengine.registry import HOOKS, MODEL_WRAPPERS
from torch.nn.modules.batchnorm import _BatchNorm

from mobileone_dense.models import in_deploy_form

PTH_WRITES = []


def _record_pth_writes(event, args):
    """Audit hook: ``open`` (builtin ``open``, ``os.open``, ``tempfile``) of a .pth for writing."""
    if event != 'open' or not isinstance(args[0], (str, bytes, os.PathLike)):
        return
    path, mode, flags = args
    writing = (
        any(c in mode for c in 'wax+')
        if mode
        else bool((flags or 0) & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
    )
    if writing and '.pth' in osp.basename(os.fsdecode(path)):
        PTH_WRITES.append(osp.abspath(os.fsdecode(path)))


sys.addaudithook(_record_pth_writes)
_torch_save = torch.save


def _save(obj, f, *args, **kwargs):  # a path given to torch.save is opened in C++: no audit event
    if isinstance(f, (str, os.PathLike)) and '.pth' in osp.basename(os.fsdecode(f)):
        PTH_WRITES.append(osp.abspath(os.fsdecode(f)))
    return _torch_save(obj, f, *args, **kwargs)


torch.save = _save


def norm_layers(model: nn.Module) -> dict:
    """How many SyncBatchNorm and other BatchNorm layers ``model`` holds."""
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    sync = sum(isinstance(m, nn.SyncBatchNorm) for m in norms)
    return dict(sync_bn=sync, bn=len(norms) - sync)


# SyncBN on CPU tensors: torch has no kernels for its statistics and DDP refuses such modules.
# In these test processes a SyncBN layer fed CPU tensors normalizes with its own process's batch
# statistics (as BN), so everything around SyncBN (Runner, DDP, EMA, deploy validation, deploy
# export) runs as in a GPU job; only the cross-process statistics are not exercised.
_sync_bn_forward = nn.SyncBatchNorm.forward


def _sync_bn_forward_on_cpu(self, input):
    if input.device.type != 'cpu':
        return _sync_bn_forward(self, input)
    return _BatchNorm.forward(self, input)


nn.SyncBatchNorm.forward = _sync_bn_forward_on_cpu


@MODEL_WRAPPERS.register_module()
class CPUSyncBNDistributedDataParallel(MMDistributedDataParallel):
    """mmengine's DDP wrapper, accepting SyncBN layers in CPU processes (see above)."""

    def _passing_sync_batchnorm_handle(self, module):
        pass


@HOOKS.register_module()
class DistributedProbeHook(Hook):
    """Records what each rank ran (see the module docstring)."""

    priority = 'LOWEST'  # after ReparameterizeHook swapped in / reparameterized the evaluated model

    def __init__(self) -> None:
        self.record = dict(evaluated=[], metrics=[])

    def before_run(self, runner) -> None:
        rank, world_size = get_dist_info()
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        self.record.update(
            rank=rank,
            world_size=world_size,
            wrapper=type(runner.model).__name__,
            **norm_layers(model),
        )

    def _evaluated(self, runner, mode) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        digest = hashlib.sha1()
        for key, value in model.state_dict().items():
            digest.update(key.encode() + value.detach().cpu().contiguous().numpy().tobytes())
        self.record['evaluated'].append(
            dict(
                mode=mode,
                wrapper=type(runner.model).__name__,
                deploy=in_deploy_form(model),
                state_sha1=digest.hexdigest(),
                **norm_layers(model),
            )
        )

    def before_val_epoch(self, runner) -> None:
        self._evaluated(runner, 'val')

    def before_test_epoch(self, runner) -> None:
        self._evaluated(runner, 'test')

    def after_val_epoch(self, runner, metrics=None) -> None:
        self.record['metrics'].append({k: float(v) for k, v in (metrics or {}).items()})

    def after_test_epoch(self, runner, metrics=None) -> None:
        self.after_val_epoch(runner, metrics)

    def after_run(self, runner) -> None:
        self.record['pth_writes'] = list(PTH_WRITES)
        path = osp.join(runner.work_dir, f'probe_rank{self.record["rank"]}.json')
        with open(path, 'w') as f:
            json.dump(self.record, f, indent=1)
