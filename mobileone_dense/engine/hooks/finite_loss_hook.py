"""Stop training at the first non-finite loss, before anything saves the broken weights."""

from typing import Dict, List, Optional, Sequence

import torch
from mmengine.dist import all_reduce, get_world_size
from mmengine.hooks import Hook
from mmengine.runner import EpochBasedTrainLoop

from ...registry import HOOKS
from ..compat import last_checkpoint


def loss_terms(outputs: Optional[dict]) -> Dict[str, torch.Tensor]:
    """The loss entries of a ``train_step`` output (``log_vars``: every key containing 'loss').

    Values may be tensors, numbers or (mmdet's multi-level losses) sequences of them; each is
    returned as a float tensor on its own device.
    """
    terms = {}
    for key, value in (outputs or {}).items():
        if 'loss' not in key:
            continue  # e.g. 'acc' may be NaN legitimately (no positives in the batch)
        values = value if isinstance(value, (list, tuple)) else [value]
        tensors = [
            v.detach().float().reshape(-1)
            if isinstance(v, torch.Tensor)
            else torch.tensor([float(v)])
            for v in values
        ]
        if tensors:
            terms[key] = torch.cat([t.to(tensors[0].device) for t in tensors])
    return terms


@HOOKS.register_module()
class FiniteLossHook(Hook):
    """Raise ``FloatingPointError`` at the first iteration whose loss is NaN or infinite.

    Unlike mmdet's ``CheckInvalidLossHook`` (an ``assert`` on the total loss every 50 iterations,
    run after the checkpoint hook), this checks every loss term of every iteration and runs with
    priority ``VERY_HIGH``: before ``EMAHook`` averages the broken weights and before
    ``CheckpointHook`` (``VERY_LOW``) saves them, so the last checkpoint on disk stays the last
    good one and ``--resume`` restarts from it. In distributed runs every rank stops together
    (one all-reduce of a flag per iteration) instead of the healthy ranks hanging.

    Iterations in the message count from 1, as in the logs and in ``iter_N.pth`` names.
    """

    priority = 'VERY_HIGH'

    def after_train_iter(
        self, runner, batch_idx: int, data_batch=None, outputs: Optional[dict] = None
    ) -> None:
        terms = loss_terms(outputs)
        if not terms:
            return
        device = next(iter(terms.values())).device
        # one device sync per iteration, however many terms
        finite = torch.stack([torch.isfinite(v).all().to(device) for v in terms.values()]).tolist()
        bad = [key for key, ok in zip(terms, finite) if not ok]
        if get_world_size() > 1:
            # one rank's NaN reaches every rank's weights through the gradient all-reduce anyway
            flag = torch.tensor(float(bool(bad)))
            all_reduce(flag, op='max')
            if flag.item() and not bad:
                raise FloatingPointError(
                    f'another rank got a non-finite loss at iteration {runner.iter + 1}; '
                    'stopped with it (see its log for the loss terms)'
                )
        if bad:
            message = self.message(runner, batch_idx, terms, bad)
            runner.logger.error(message)
            raise FloatingPointError(message)

    @staticmethod
    def message(runner, batch_idx: int, terms: Dict[str, torch.Tensor], bad: Sequence[str]) -> str:
        """What went wrong, where, what is on disk, and what to try."""
        where = f'iteration {runner.iter + 1}'
        if isinstance(runner.train_loop, EpochBasedTrainLoop):
            where += f' (epoch {runner.epoch + 1}, batch {batch_idx + 1} of the epoch)'
        values: List[str] = []
        for key in bad:
            shown = terms[key][:4].tolist()
            values.append(f'{key}={shown[0] if len(shown) == 1 else shown}')
        last = last_checkpoint(runner)
        saved = (
            f'The last checkpoint, written before this iteration, is {last}; '
            '`tools/train.py CONFIG --resume` restarts from it.'
            if last
            else 'No checkpoint was written yet.'
        )
        return (
            f'the loss is not finite at {where}: {", ".join(values)}. Training stopped before '
            f'these weights were saved. {saved} Try: a lower learning rate '
            '(optim_wrapper.optimizer.lr, or --auto-scale-lr for a smaller batch), gradient '
            'clipping (optim_wrapper.clip_grad=dict(max_norm=10.)), a longer warm-up, or '
            'check the data of this iteration (empty or degenerate boxes/masks, corrupt '
            'images, labels out of range).'
        )
