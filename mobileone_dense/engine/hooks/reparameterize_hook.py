"""One hook, for detection, segmentation and classification: validate, test and ship the deploy
model."""

import copy
import os.path as osp
from typing import Dict, Optional

import torch
import torch.nn as nn
from mmengine.dist import broadcast, get_world_size, is_main_process
from mmengine.hooks import Hook
from mmengine.utils import deprecated_api_warning

from ...models.reparameterize import in_deploy_form, reparameterize
from ...registry import HOOKS
from ..compat import ema_copies, last_checkpoint
from ..deploy_checkpoints import deploy_error, unwrap_model
from ..deploy_files import write_deploy_files


@HOOKS.register_module()
class ReparameterizeHook(Hook):
    """Evaluate and export what will be deployed: the re-parameterized (deploy) model.

    - Validation during training runs on a deploy *copy* (the training model, its branches and
      the optimizer state are untouched); with ``EMAHook`` the copy is made from the EMA weights.
    - Testing re-parameterizes the model in place (and EMAHook's averaged copy, so its weight
      swap still pairs up).
    - After training, writes ``<last checkpoint>_deploy.pth`` (deploy weights only; EMA weights
      when EMA is on; ``meta['dataset_meta']`` with the class names and palette) and
      ``<config name>_deploy.py`` (the deploy model in plain config terms, ``load_from`` set:
      ``deploy_files.write_deploy_files``), and logs the deploy-vs-train-time difference on
      one real validation batch: in float64 (``last_deploy_error_float64``; exact
      re-parameterization gives ~1e-13) and in float32 (``last_deploy_error``; rounding,
      reported only).

    Priority ``LOW`` runs it after ``EMAHook`` (``NORMAL``) in every event: EMA swaps the averaged
    weights in before we copy, and back after we restored the training model.

    Args:
        deploy_val: validate the deploy copy during training.
        deploy_test: re-parameterize the model before testing.
        save_deploy: write the deploy checkpoint and config after training.
        check_deploy: measure and log the deploy-vs-train-time difference after training.

    The former names ``fuse_val``, ``fuse_test`` and ``check_fusion`` are still accepted, with a
    ``DeprecationWarning`` naming the new one.
    """

    priority = 'LOW'

    @deprecated_api_warning(
        dict(fuse_val='deploy_val', fuse_test='deploy_test', check_fusion='check_deploy'),
        cls_name='ReparameterizeHook',
    )
    def __init__(
        self,
        deploy_val: bool = True,
        deploy_test: bool = True,
        save_deploy: bool = True,
        check_deploy: bool = True,
    ) -> None:
        self.deploy_val = deploy_val
        self.deploy_test = deploy_test
        self.save_deploy = save_deploy
        self.check_deploy = check_deploy
        self._training_model: Optional[nn.Module] = None
        self._active = True
        self.last_deploy_error: Optional[float] = None  # float32
        self.last_deploy_error_float64: Optional[float] = None
        self.deploy_files: Dict[str, str] = {}

    def before_run(self, runner) -> None:
        self._active = not in_deploy_form(unwrap_model(runner.model))
        if not self._active:
            runner.logger.info(
                'ReparameterizeHook: the model has no re-parameterizable branches '
                '(already in deploy form, or no MobileOne parts); nothing to do.'
            )

    # -- validation during training: a deploy copy is swapped in for the loop ----------------
    def before_val_epoch(self, runner) -> None:
        if not (self._active and self.deploy_val):
            return
        # EMAHook (higher priority) has already swapped the averaged weights into the model.
        model = copy.deepcopy(unwrap_model(runner.model))
        if get_world_size() > 1:
            # Every rank validates rank 0's model, the one saved and exported: DDP keeps the
            # parameters equal, not the buffers (BN running statistics, per-rank batches).
            for buffer in model.buffers():
                broadcast(buffer, src=0)
        self._training_model = runner.model
        runner.model = reparameterize(model)

    def after_val_epoch(self, runner, metrics: Optional[Dict[str, float]] = None) -> None:
        self._restore(runner)

    def after_val(self, runner) -> None:
        self._restore(runner)

    def _restore(self, runner) -> None:
        if self._training_model is not None:
            runner.model = self._training_model
            self._training_model = None

    # -- testing: re-parameterize in place ----------------------------------------------------
    def before_test_epoch(self, runner) -> None:
        if not (self._active and self.deploy_test):
            return
        reparameterize(unwrap_model(runner.model))
        for ema_copy in ema_copies(runner):  # swapped back by position: same structure needed
            reparameterize(ema_copy)
        runner.logger.info('ReparameterizeHook: testing the re-parameterized (deploy) model.')

    # -- after training: deploy checkpoint + config ----------------------------------------
    def after_train(self, runner) -> None:
        if not self._active or not (self.save_deploy or self.check_deploy):
            return
        averaged = ema_copies(runner)
        source = averaged[0] if averaged else unwrap_model(runner.model)
        deploy = reparameterize(copy.deepcopy(source)).eval()
        if self.check_deploy:
            self._check(runner, source, deploy)
            if self.last_deploy_error is not None:
                runner.logger.info(
                    'ReparameterizeHook: deploy vs train-time model on a validation batch: max '
                    f'relative difference {self.last_deploy_error_float64:.1e} in float64, '
                    f'{self.last_deploy_error:.1e} in float32 (rounding)'
                    f'{" (EMA weights)" if averaged else ""}'
                )
        if self.save_deploy and is_main_process():  # one writer in distributed runs
            self._save(runner, source, deploy, ema=bool(averaged))

    @torch.no_grad()
    def _check(self, runner, source: nn.Module, deploy: nn.Module) -> None:
        loop = runner.val_loop if runner.val_loop is not None else runner.train_loop
        try:
            batch = next(iter(loop.dataloader))
        except StopIteration:
            return
        data = source.data_preprocessor(batch, False)

        def forward(model, inputs):
            return model(inputs, data['data_samples'], mode='tensor')

        inputs = data['inputs']
        self.last_deploy_error_float64 = deploy_error(source, inputs, torch.float64, forward)
        self.last_deploy_error = deploy_error(source, inputs, torch.float32, forward, deploy)

    def _save(self, runner, source: nn.Module, deploy: nn.Module, ema: bool) -> None:
        last = last_checkpoint(runner)  # CheckpointHook's, of this run
        stem = osp.splitext(last)[0] if last else osp.join(runner.work_dir, f'iter_{runner.iter}')
        checkpoint_path = f'{stem}_deploy.pth'
        meta = dict(
            epoch=runner.epoch,
            iter=runner.iter,
            ema=ema,
            deploy_error=self.last_deploy_error,
            deploy_error_float64=self.last_deploy_error_float64,
            # completed from the config's data set where the data set has no metainfo
            dataset_meta=getattr(runner.train_dataloader.dataset, 'metainfo', None),
        )
        cfg_name = osp.splitext(osp.basename(runner.cfg.filename or 'config.py'))[0]
        config_path = osp.join(runner.work_dir, f'{cfg_name}_deploy.py')
        self.deploy_files = write_deploy_files(
            runner.cfg, source, deploy, checkpoint_path, config_path, meta
        )
        runner.logger.info(
            f'ReparameterizeHook: wrote the deploy model to {checkpoint_path} and '
            f'its config to {config_path}'
        )
