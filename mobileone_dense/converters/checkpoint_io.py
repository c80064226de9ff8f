"""Loading checkpoints safely (``weights_only=True``) and explaining failures."""

import contextlib
import errno
import os.path as osp
import pickle
from typing import Any, Dict, Iterator

import torch

from ..errors import CheckpointError, MissingDataError


def mmengine_checkpoint_globals() -> list:
    """The non-tensor globals an mmengine training checkpoint pickles (its ``message_hub``).

    Measured on mmengine 0.10.7 checkpoints with numpy 2: log history buffers hold numpy arrays and
    scalars; ``getattr`` is how numpy 2 pickles its dtype classes.
    """
    import numpy as np
    from mmengine.logging import HistoryBuffer

    multiarray = np._core.multiarray if hasattr(np, '_core') else np.core.multiarray
    allowed = [
        HistoryBuffer,
        multiarray._reconstruct,
        multiarray.scalar,
        np.ndarray,
        np.dtype,
        getattr,
    ]
    allowed += [
        getattr(np.dtypes, name)
        for name in ('Float64DType', 'Int64DType', 'Float32DType', 'Int32DType', 'BoolDType')
        if hasattr(np, 'dtypes') and hasattr(np.dtypes, name)
    ]
    return allowed


@contextlib.contextmanager
def allow_mmengine_checkpoints() -> Iterator[None]:
    """Inside: ``torch.load(weights_only=True)`` also accepts mmengine's own run checkpoints.

    Scoped on purpose (torch's ``safe_globals`` context): outside it, ``getattr`` and numpy objects
    stay refused for every other ``torch.load`` in the process. ``weights_only`` stays on.
    Re-entrant: torch's context removes its globals on exit even when an outer context added
    them too, so only the globals not allowed yet are added here.
    """
    allowed = torch.serialization.get_safe_globals()
    with torch.serialization.safe_globals(
        [g for g in mmengine_checkpoint_globals() if g not in allowed]
    ):
        yield


# What torch's weights-only unpickler says of bytes that are no pickle at all (an HTML page
# saved under a checkpoint's name, a cut file of the legacy format), unlike a pickle of objects
# it does not allow
_NOT_A_PICKLE = ('Unsupported operand', 'invalid load key', 'truncated')


def load_checkpoint_file(
    path: str,
    run_checkpoint: bool = False,
    corrupt_fix: str = 're-download it, or re-save it from the run that wrote it',
) -> Dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` onto the CPU.

    Args:
        path: the file.
        run_checkpoint: also accept the extra objects of an mmengine training checkpoint
            (message hub with numpy history); use it only for checkpoints of your own runs.
        corrupt_fix: what the error for a truncated or corrupt file tells the user to do.
    """
    if not osp.isfile(path):
        raise MissingDataError(
            f'checkpoint {path!r} does not exist: check the path (relative '
            'paths start from the current directory)'
        )
    context = allow_mmengine_checkpoints() if run_checkpoint else contextlib.nullcontext()
    corrupt = (
        f'checkpoint {path!r} is truncated or corrupt (or not a torch checkpoint): '
        '{}; ' + corrupt_fix
    )
    try:
        with context:
            checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as error:
        lines = [line.strip() for line in str(error).splitlines()]
        garbage = next((line for line in lines if any(w in line for w in _NOT_A_PICKLE)), None)
        if garbage is not None:  # not a checkpoint holding objects: do not call it unsafe
            raise CheckpointError(corrupt.format(garbage)) from None
        raise CheckpointError(
            f'refusing to load {path!r}: it contains pickled Python objects that weights_only '
            'loading does not allow, and unpickling arbitrary objects can run code. If you trust '
            'the file, re-save only its tensors once, e.g. `sd = torch.load(path, '
            'weights_only=False)["state_dict"]; torch.save(sd, "weights.pth")`, and use that. '
            f'Details: {str(error).splitlines()[0]}'
        ) from error
    except (RuntimeError, EOFError, OSError) as error:
        # torch's zip reader: RuntimeError without a central directory, OSError EINVAL when
        # a record runs past the end of a cut file
        invalid = isinstance(error, OSError) and error.errno == errno.EINVAL
        if (
            invalid
            or isinstance(error, EOFError)
            or any(word in str(error).lower() for word in ('zip', 'magic'))
        ):
            # `from None`: torch's own traceback adds nothing to this message
            raise CheckpointError(corrupt.format(str(error).splitlines()[0])) from None
        raise
    if not isinstance(checkpoint, dict):
        raise CheckpointError(
            f'checkpoint {path!r} holds a {type(checkpoint).__name__}, not a '
            'dict of tensors (state dict) or a dict with a "state_dict" entry; '
            'save the weights as `torch.save(model.state_dict(), path)`'
        )
    return checkpoint


def state_dict_of(checkpoint: Dict[str, Any]) -> Dict[str, torch.Tensor]:
    """The weights of a checkpoint: its ``state_dict``/``model`` entry, or the dict itself."""
    for key in ('state_dict', 'model', 'model_state_dict'):
        if key in checkpoint and isinstance(checkpoint[key], dict):
            return checkpoint[key]
    return checkpoint


def training_weights(checkpoint: Dict[str, Any], weights: str = 'ema') -> Dict[str, torch.Tensor]:
    """The model weights of a training checkpoint: EMA-averaged (``ema``) or raw (``raw``).

    mmengine's ``EMAHook`` saves the averaged weights as ``state_dict`` and the raw ones as
    ``ema_state_dict`` entries prefixed ``module.``. Without EMA (or for a plain state dict) there
    is one set of weights, returned for both.
    """
    if weights not in ('ema', 'raw'):
        raise ValueError(f"weights must be 'ema' or 'raw', got {weights!r}")
    if weights == 'raw' and 'ema_state_dict' in checkpoint:
        return {
            k[len('module.') :]: v
            for k, v in checkpoint['ema_state_dict'].items()
            if k.startswith('module.')
        }
    return state_dict_of(checkpoint)
