"""Writing and recognising deploy (re-parameterized) checkpoints and configs, shared by the hook
and the tools."""

import copy
import os
import os.path as osp
import tempfile
from typing import Any, Callable, Dict, Iterable, List, Optional

import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.model import is_model_wrapper

from ..models.reparameterize import reparameterize


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside an mmengine wrapper (DDP, ...), or the model itself."""
    return model.module if is_model_wrapper(model) else model


def replace_durably(tmp: str, path: str) -> None:
    """Flush the complete file ``tmp`` to disk, then rename it to ``path`` (atomic within one
    file system) and flush the folder entry, so a crash leaves either the old or the new file."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    try:  # the rename is durable once the folder entry is; some file systems refuse this
        fd = os.open(osp.dirname(osp.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def write_atomically(path: str, write: Callable[[str], None], suffix: str) -> None:
    """``write(tmp)`` to a temp file beside ``path``, then :func:`replace_durably`: the one atomic
    writer of the package (checkpoints, configs, ONNX files, JSON). The file gets the permissions
    ``open`` would have given it (``mkstemp`` creates it readable by its owner only)."""
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.' + osp.basename(path) + '.', suffix=suffix, dir=folder)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        replace_durably(tmp, path)
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise


def atomic_save(obj: Any, path: str) -> None:
    """``torch.save`` to a temp file in the same folder, then rename: never a half-written file."""
    write_atomically(path, lambda tmp: torch.save(obj, tmp), '.tmp')


def atomic_dump_config(cfg: Config, path: str) -> None:
    """``Config.dump`` through a temp file and rename."""
    write_atomically(path, cfg.dump, '.py')


def output_tensors(outputs: Any) -> List[torch.Tensor]:
    """All tensors of a (nested) model output, in a stable order."""
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    if isinstance(outputs, dict):
        return [t for key in sorted(outputs) for t in output_tensors(outputs[key])]
    if isinstance(outputs, (list, tuple)):
        return [t for item in outputs for t in output_tensors(item)]
    return []


def tensor_forward(model: nn.Module, inputs: torch.Tensor) -> Any:
    """The network's raw outputs: ``model(inputs, mode='tensor')`` for mmengine models (no
    pre- or post-processing), else ``model(inputs)``."""
    if hasattr(model, 'data_preprocessor'):
        return model(inputs, mode='tensor')
    return model(inputs)


def max_relative_difference(a: Iterable[torch.Tensor], b: Iterable[torch.Tensor]) -> float:
    """max over paired tensors of max|a - b| / max|b|, computed in float64 (so float64
    comparisons keep their precision)."""
    errors = [
        ((x.double() - y.double()).abs().max() / y.double().abs().max().clamp_min(1e-12)).item()
        for x, y in zip(a, b)
    ]
    if not errors:
        raise ValueError('no tensors to compare')
    return max(errors)


# Re-parameterization is exact when the float64 difference (:func:`deploy_error`) is below
# EXACT_TOLERANCE: the fold is exact there, up to float64 rounding. A float32 difference is
# rounding (larger where outputs are small, as in an untrained model): only reported, with a
# warning above FLOAT32_WARNING.
EXACT_TOLERANCE = 1e-9
FLOAT32_WARNING = 1e-3


@torch.no_grad()
def deploy_error(
    model: nn.Module,
    inputs: torch.Tensor,
    dtype: torch.dtype = torch.float64,
    forward: Optional[Callable[[nn.Module, torch.Tensor], Any]] = None,
    deploy: Optional[nn.Module] = None,
) -> float:
    """Largest relative difference (:func:`max_relative_difference`) between the train-time
    ``model`` and its re-parameterized copy on ``inputs``, both computed in ``dtype`` in eval
    mode (``model`` itself is left unchanged).

    Args:
        model: a train-time model (any task, or a backbone).
        inputs: ``(N, 3, H, W)`` as the model's forward takes them (preprocessed).
        dtype: float64 judges exactness (compare with ``EXACT_TOLERANCE``); float32 shows what
            rounding does in use.
        forward: ``forward(model, inputs)`` -> outputs (a tensor or nested tuples / dicts of
            them); default :func:`tensor_forward`.
        deploy: the deploy model when already made in ``dtype`` (else re-parameterized here).
    """
    if forward is None:
        forward = tensor_forward
    train_time = copy.deepcopy(model).to(dtype).eval()
    if deploy is None:
        deploy = reparameterize(copy.deepcopy(train_time))
    deploy.eval()
    inputs = inputs.to(dtype)
    reference = output_tensors(forward(train_time, inputs))
    outputs = output_tensors(forward(deploy, inputs))
    if len(outputs) != len(reference):
        raise RuntimeError(
            f'deploy model returned {len(outputs)} outputs, train-time {len(reference)}'
        )
    return max_relative_difference(outputs, reference)


# A deploy checkpoint's ``meta[DEPLOY_KEY]`` is ``WHOLE_MODEL``: the backbone is in deploy form
# and the Conv+BN pairs outside it are folded too (:func:`reparameterize`). The deploy config
# written with it builds exactly that structure (``deploy_files.deploy_config``); the deploy
# configs of earlier versions still build the neck/head BN, and our loaders recognise their
# checkpoints by this key (:func:`reparameterize_to_load`). Versions up to 0.1.0 wrote the pair
# ``mobileone_dense_deploy=True, fused='whole_model'`` instead (:func:`is_deploy_checkpoint`).
DEPLOY_KEY = 'mobileone_dense_deploy'
WHOLE_MODEL = 'whole_model'


def deploy_checkpoint(model: nn.Module, meta: Dict[str, Any]) -> Dict[str, Any]:
    """The dict written as a deploy checkpoint (deploy-form weights only, mmengine layout).

    ``model`` must be re-parameterized with :func:`mobileone_dense.reparameterize` (backbone
    branches and every Conv+BN pair), which ``meta[DEPLOY_KEY]`` records.
    """
    state_dict = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return dict(meta=dict(meta, **{DEPLOY_KEY: WHOLE_MODEL}), state_dict=state_dict)


def is_deploy_checkpoint(checkpoint: Dict[str, Any]) -> bool:
    """Whether ``checkpoint`` is a deploy checkpoint (whole model re-parameterized, no BN left):
    ``meta[DEPLOY_KEY] == WHOLE_MODEL``, or the pair earlier versions wrote
    (``meta[DEPLOY_KEY] is True`` and ``meta['fused'] == WHOLE_MODEL``)."""
    meta = checkpoint.get('meta') if isinstance(checkpoint, dict) else None
    if not isinstance(meta, dict):
        return False
    flag = meta.get(DEPLOY_KEY)
    return flag == WHOLE_MODEL or (flag is True and meta.get('fused') == WHOLE_MODEL)


def reparameterize_to_load(model: nn.Module, checkpoint: Dict[str, Any]) -> bool:
    """Re-parameterize ``model`` in place when ``checkpoint`` is a deploy checkpoint; True if it
    did.

    A model built from a deploy config (``deploy_files.deploy_config``) already has the deploy
    structure: this changes nothing. The deploy configs of earlier versions built the neck/head
    with their BN, which the checkpoint has folded into conv biases: re-parameterizing the freshly
    built model gives exactly the checkpoint's structure, and the weights then load strictly. The
    values it computes are overwritten by the load. mmdet's, mmseg's and mmpretrain's own tools do
    not do this: they need the deploy config of this version.
    """
    if not is_deploy_checkpoint(checkpoint):
        return False
    reparameterize(model)
    return True
