"""mmengine's Runner, able to resume from its own checkpoints on torch >= 2.6."""
from mmengine.runner import Runner as MMEngineRunner

from ..converters.checkpoint_io import allow_mmengine_checkpoints
from ..registry import RUNNERS


@RUNNERS.register_module()
class Runner(MMEngineRunner):
    """``mmengine.runner.Runner`` whose checkpoint loading accepts mmengine's own checkpoints.

    torch >= 2.6 loads with ``weights_only=True``, which refuses the numpy arrays and
    ``HistoryBuffer`` objects mmengine 0.10.7 pickles in ``message_hub``, so ``--resume`` crashes.
    The exact globals those checkpoints need are allowed only while the runner loads a checkpoint
    (``resume`` and ``load_from``); every other ``torch.load`` in the process keeps the default.
    Select it with ``runner_type = 'mobileone_dense.Runner'`` (our configs do).
    """

    def load_checkpoint(self, *args, **kwargs):
        """``Runner.load_checkpoint``; ``Runner.resume`` and ``load_from`` both go through it."""
        with allow_mmengine_checkpoints():
            return super().load_checkpoint(*args, **kwargs)
