"""Errors for bad input (data, annotations, checkpoints, configs) whose message says what to fix.

Every class also derives from the builtin a caller would expect (``FileNotFoundError``,
``ValueError``, ...), so ``except ValueError`` keeps working; ``InputError`` alone is what the
tools and the demo turn into a one-line ``error: ...`` exit instead of a traceback.
"""


class InputError(Exception):
    """Bad input, not a bug: the message names the problem and the fix."""

    def __str__(self) -> str:
        # KeyError would quote its message; ours are sentences, printed as they are
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class MissingDataError(InputError, FileNotFoundError):
    """A data set root, image folder or annotation file that does not exist."""


class BadDataError(InputError, ValueError):
    """A data file that exists but cannot be used (empty, truncated, corrupt, out of range)."""


class CheckpointError(InputError, RuntimeError):
    """A checkpoint file that cannot be read (truncated, not a torch checkpoint, unsafe)."""


class DownloadError(InputError, ConnectionError):
    """A file that could not be downloaded (no network, no answer in time, an HTTP error, a
    download cut short): the message names the URL and where to put the file by hand."""


class WeightsMismatchError(InputError, ValueError):
    """Weights that do not fit the model (another variant, another task, deploy vs
    train-time form)."""


class ConfigError(InputError, ValueError):
    """Config values that contradict each other (e.g. class counts)."""


class UnknownTypeError(InputError, KeyError):
    """A ``type=`` that no registry of the scope holds (usually a typo)."""


class FoldingError(InputError, ValueError):
    """A norm layer that cannot be folded into its convolution (no running statistics, not a
    BatchNorm, channel counts that differ): the model cannot be re-parameterized as built."""


class OnnxParityError(RuntimeError):
    """An exported ONNX file whose outputs differ from PyTorch's by more than the tolerance (a
    bug to report, not bad input: the file is not written)."""


class DeployConfigError(InputError, ValueError):
    """A model whose deploy form its config cannot describe: a part whose folded Conv+BN pairs
    ``norm_cfg=None`` does not turn into plain convs with a bias (the message names the part and
    the fix)."""
