"""Test instrumentation for tests/test_crash_safe.py's kill-and-resume runs.

Imported by ``tools/train.py`` runs through ``custom_imports`` (the test puts this folder on
PYTHONPATH). The hook marks the moment to kill the run and holds it there, so that the SIGKILL
lands mid-epoch deterministically instead of racing the training loop.
"""

import json
import time

from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module(force=True)
class KillPointHook(Hook):
    """After batch ``batch`` (1-based) of epoch ``epoch`` (1-based): write ``marker``, then sleep.

    Lowest priority: every other hook (EMA, checkpoint) has finished with the iteration.
    """

    priority = 'LOWEST'

    def __init__(self, marker: str, epoch: int, batch: int, sleep_s: float = 60.0) -> None:
        self.marker, self.epoch, self.batch, self.sleep_s = marker, epoch, batch, sleep_s

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        if runner.epoch + 1 == self.epoch and batch_idx + 1 == self.batch:
            with open(self.marker, 'w') as f:
                json.dump(dict(iter=runner.iter + 1, epoch=runner.epoch + 1), f)
            time.sleep(self.sleep_s)
