"""torchrun (``--launcher pytorch``) on machines without a GPU: CPU processes over gloo."""

from typing import Any, List

import torch
import torch.distributed as dist
from mmengine.config import Config

from .compat import cpu_ddp_wrapper_cfg, init_cpu_process_group

SYNC_BN_TYPES = ('SyncBN', 'MMSyncBN', 'SyncBatchNorm')


def sync_bn_keys(node: Any, prefix: str = 'model') -> List[str]:
    """Config keys (``model.backbone.norm_cfg``, ...) of every SyncBN norm config under ``node``."""
    keys = []
    if isinstance(node, dict):
        if str(node.get('type', '')).split('.')[-1] in SYNC_BN_TYPES:
            keys.append(prefix)
        for key, value in node.items():
            keys += sync_bn_keys(value, f'{prefix}.{key}')
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            keys += sync_bn_keys(value, f'{prefix}.{i}')
    return keys


def setup_cpu_distributed(cfg: Config) -> None:
    """Start the process group of a CPU-only ``--launcher pytorch`` run, before the Runner.

    mmengine 0.10.7's pytorch launcher fails without a GPU and its DDP wrapper refuses CPU
    modules (``engine/compat.py``): here the gloo process group is started from torchrun's
    environment (:func:`.compat.init_cpu_process_group`; the Runner then skips its own
    ``init_dist``) and ``model_wrapper_cfg`` gets ``device_ids=None``
    (:func:`.compat.cpu_ddp_wrapper_cfg`). Does nothing with a GPU, another launcher, or a
    group already started. A config with SyncBN layers (or ``sync_bn``) stops with the
    ``--cfg-options`` that switch them to BN: SyncBN runs on GPUs only.
    """
    if (
        cfg.get('launcher', 'none') != 'pytorch'
        or torch.cuda.is_available()
        or (dist.is_available() and dist.is_initialized())
    ):
        return
    dist_cfg = dict(cfg.get('env_cfg', {}).get('dist_cfg', {}))
    backend = dist_cfg.pop('backend', 'nccl')
    if backend != 'gloo':
        raise SystemExit(
            f'--launcher pytorch on a machine without a GPU needs the gloo backend, '
            f'the config has {backend!r}: add '
            f'--cfg-options env_cfg.dist_cfg.backend=gloo'
        )
    if cfg.get('model_wrapper_cfg') is None:
        # torch's DDP refuses SyncBatchNorm layers in CPU modules (and SyncBN's statistics
        # are GPU-only): say which keys to switch, before any process waits for another.
        fix = [f'{key}.type=BN' for key in sync_bn_keys(cfg.model)]
        fix += ['sync_bn=None'] if cfg.get('sync_bn') else []
        if fix:
            raise SystemExit(
                'SyncBN needs GPUs (torch runs SyncBatchNorm, and DDP with it, on '
                'GPUs only); on CPU processes use plain BN: add --cfg-options ' + ' '.join(fix)
            )
    init_cpu_process_group(dist_cfg)  # rank, world size: torchrun's env
    cfg.model_wrapper_cfg = cpu_ddp_wrapper_cfg(
        cfg.get('model_wrapper_cfg'), cfg.get('find_unused_parameters', False)
    )
