"""Writing fused (deploy) checkpoints and configs, shared by the hook and the tools."""
import copy
import os
import os.path as osp
import tempfile
from typing import Any, Dict, Iterable, List, Union

import torch
import torch.nn as nn
from mmengine.config import Config


def atomic_save(obj: Any, path: str) -> None:
    """``torch.save`` to a temp file in the same folder, then rename: never a half-written file."""
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.' + osp.basename(path) + '.', suffix='.tmp', dir=folder)
    try:
        with os.fdopen(fd, 'wb') as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise


def atomic_dump_config(cfg: Config, path: str) -> None:
    """``Config.dump`` through a temp file and rename."""
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.' + osp.basename(path) + '.', suffix='.py', dir=folder)
    os.close(fd)
    try:
        cfg.dump(tmp)
        os.replace(tmp, path)
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise


def deploy_config(cfg: Config, checkpoint: Union[str, None] = None) -> Config:
    """The same config with the fused backbone (``deploy=True``) and no pretrained init.

    ``load_from`` points at ``checkpoint`` (the fused weights) when given; resuming is off.
    """
    cfg = copy.deepcopy(cfg)
    model = cfg.model
    target = model.get('backbone', model)
    if 'MobileOne' not in str(target.get('type', '')):
        raise ValueError(f'cannot make a deploy config: the backbone type is '
                         f'{target.get("type")!r}, not mobileone_dense.MobileOne')
    target.deploy = True
    target.init_cfg = None  # the fused checkpoint carries the weights; unfused init would not fit
    if checkpoint is not None:
        cfg.load_from = checkpoint
    cfg.resume = False
    return cfg


def output_tensors(outputs: Any) -> List[torch.Tensor]:
    """All tensors of a (nested) model output, in a stable order."""
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    if isinstance(outputs, dict):
        return [t for key in sorted(outputs) for t in output_tensors(outputs[key])]
    if isinstance(outputs, (list, tuple)):
        return [t for item in outputs for t in output_tensors(item)]
    return []


def max_relative_difference(a: Iterable[torch.Tensor], b: Iterable[torch.Tensor]) -> float:
    """max over paired tensors of max|a - b| / max|b|."""
    errors = [((x.float() - y.float()).abs().max() / y.float().abs().max().clamp_min(1e-12)).item()
              for x, y in zip(a, b)]
    if not errors:
        raise ValueError('no tensors to compare')
    return max(errors)


def deploy_checkpoint(model: nn.Module, meta: Dict[str, Any]) -> Dict[str, Any]:
    """The dict written as a deploy checkpoint (fused weights only, mmengine layout)."""
    state_dict = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return dict(meta=dict(meta, mobileone_dense_deploy=True), state_dict=state_dict)
