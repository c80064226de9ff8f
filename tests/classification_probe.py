"""Test instrumentation for the classification runs of tests/test_classification.py.

Imported by those runs through ``custom_imports`` (the tests put this folder on PYTHONPATH); the
hook writes one JSON line per event to ``out_file``, appending, so a resumed run continues it.
"""

import json

from mmengine.hooks import Hook
from mmengine.registry import HOOKS
from torch.nn.modules.batchnorm import _BatchNorm


def _unwrap(model):
    return getattr(model, 'module', model)


@HOOKS.register_module(force=True)
class ClassificationProbeHook(Hook):
    """Records what the model really receives and runs with (lowest priority: after every
    switch)."""

    priority = 'LOWEST'

    def __init__(self, out_file: str) -> None:
        self.out_file = out_file

    def _write(self, **record) -> None:
        with open(self.out_file, 'a') as f:
            f.write(json.dumps(record) + '\n')

    def before_train_epoch(self, runner) -> None:
        model = _unwrap(runner.model)
        norm_params = {
            id(p)
            for m in model.modules()
            if isinstance(m, _BatchNorm)
            for p in m.parameters(recurse=False)
        }
        decays = {'norm': set(), 'other': set()}
        for group in runner.optim_wrapper.optimizer.param_groups:
            kind = 'norm' if all(id(p) in norm_params for p in group['params']) else 'other'
            decays[kind].add(group['weight_decay'])
        # the pipeline object the epoch's data loader workers are forked with
        pipeline = runner.train_loop.dataloader.dataset.pipeline.transforms
        crop = next(t for t in pipeline if type(t).__name__ == 'RandomResizedCrop')
        autoaug = next((t for t in pipeline if type(t).__name__ == 'ScaledAutoAugment'), None)
        self._write(
            event='train_epoch',
            epoch=runner.epoch,
            crop_scale=list(crop.scale),
            weight_decay={k: sorted(v) for k, v in decays.items()},
            strength=None if autoaug is None else autoaug.strength,
            magnitudes=None if autoaug is None else autoaug.magnitudes(),
        )

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        shapes = sorted({tuple(image.shape) for image in data_batch['inputs']})
        self._write(event='train_iter', epoch=runner.epoch, iter=runner.iter, shapes=shapes)

    def before_val_epoch(self, runner) -> None:
        from mobileone_dense.models import in_deploy_form

        self._write(
            event='val_model', epoch=runner.epoch, deploy=in_deploy_form(_unwrap(runner.model))
        )

    def after_val_epoch(self, runner, metrics=None) -> None:
        self._write(
            event='val',
            epoch=runner.epoch,
            metrics={k: float(v) for k, v in (metrics or {}).items()},
        )
