"""ReparameterizeHook in a real mmengine run: deploy validation (EMA-aware), deploy test, deploy
files."""

import copy
import os.path as osp

import pytest
import torch
from helpers import make_image_folder, tiny_classifier_config
from mmengine.config import Config
from mmengine.hooks import EMAHook, Hook

from mobileone_dense import reparameterize
from mobileone_dense.engine import ReparameterizeHook, Runner
from mobileone_dense.models import MobileOne, in_deploy_form


class ValProbe(Hook):
    """Records what the validation loop really runs (registered after every other hook)."""

    def __init__(self):
        self.records = []

    def before_val_epoch(self, runner):
        ema = next((h for h in runner.hooks if isinstance(h, EMAHook)), None)
        self.records.append(
            dict(
                val_model=copy.deepcopy(runner.model),
                # after EMAHook's swap, the training model object holds the averaged weights and
                # ema_model.module the raw ones
                training_model_id=id(self.training_model),
                ema_weights=copy.deepcopy(self.training_model.state_dict()),
                raw_weights=(copy.deepcopy(ema.ema_model.module.state_dict()) if ema else None),
            )
        )

    def after_val_epoch(self, runner, metrics=None):
        self.records[-1]['model_after'] = runner.model
        self.records[-1]['metrics'] = metrics


def build_runner(tmp_path, **kwargs):
    data = make_image_folder(str(tmp_path / 'data'))
    cfg = Config(tiny_classifier_config(str(tmp_path / 'work'), data, **kwargs))
    runner = Runner.from_cfg(cfg)
    probe = ValProbe()
    probe.training_model = runner.model
    runner.register_hook(probe, priority='VERY_LOW')
    return runner, probe


def outputs_with(model_template, state_dict, inputs):
    model = copy.deepcopy(model_template)
    model.load_state_dict(state_dict)
    model = reparameterize(model).eval()
    with torch.no_grad():
        return model(inputs, mode='tensor')


def test_validation_runs_the_deploy_ema_model(tmp_path):
    runner, probe = build_runner(tmp_path, max_iters=4, val_interval=2, ema=True)
    training_model = runner.model
    runner.train()
    assert len(probe.records) == 2
    inputs = torch.rand(2, 3, 32, 32)
    for record in probe.records:
        val_model = record['val_model']
        assert in_deploy_form(val_model), 'validation must run the deploy model'
        assert record['model_after'] is training_model, 'training model restored after val'
        expected = outputs_with(training_model, record['ema_weights'], inputs)
        wrong = outputs_with(training_model, record['raw_weights'], inputs)
        with torch.no_grad():
            got = val_model.eval()(inputs, mode='tensor')
        assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5), 'not the EMA weights'
        assert not torch.allclose(got, wrong, rtol=1e-3, atol=1e-4), 'EMA had no effect?'
    # the training model keeps its branches and the optimizer still drives its parameters
    assert not in_deploy_form(training_model)
    optimizer_params = {
        id(p) for g in runner.optim_wrapper.optimizer.param_groups for p in g['params']
    }
    assert optimizer_params == {id(p) for p in training_model.parameters()}
    assert 'accuracy/top1' in probe.records[-1]['metrics']


def test_training_weights_untouched_by_validation(tmp_path):
    runner, probe = build_runner(tmp_path, max_iters=2, val_interval=1)
    states = []

    class Snapshot(Hook):
        def before_val_epoch(self, runner_):
            states.append(copy.deepcopy(probe.training_model.state_dict()))

        def after_val_epoch(self, runner_, metrics=None):
            states.append(copy.deepcopy(probe.training_model.state_dict()))

    runner.register_hook(Snapshot(), priority='HIGHEST')
    runner.train()
    for before, after in zip(states[::2], states[1::2]):
        assert before.keys() == after.keys()
        assert all(torch.equal(before[k], after[k]) for k in before)
    assert in_deploy_form(probe.records[0]['val_model'])


def test_deploy_checkpoint_and_config_after_training(tmp_path):
    runner, _ = build_runner(tmp_path, max_iters=2, val_interval=2, ema=True)
    runner.train()
    hook = next(h for h in runner.hooks if isinstance(h, ReparameterizeHook))
    files = hook.deploy_files
    assert files['checkpoint'].endswith('iter_2_deploy.pth') and osp.isfile(files['checkpoint'])
    assert hook.last_deploy_error_float64 is not None and hook.last_deploy_error_float64 < 1e-9
    assert hook.last_deploy_error is not None  # float32: rounding, reported only
    deploy_cfg = Config.fromfile(files['config'])
    assert deploy_cfg.model.backbone.deploy is True
    assert deploy_cfg.load_from == files['checkpoint']
    checkpoint = torch.load(files['checkpoint'], weights_only=True)
    assert not any('conv_branches' in k for k in checkpoint['state_dict'])
    # the deploy config builds a deploy model that loads the deploy checkpoint strictly, and its
    # weights are the EMA model's
    from mobileone_dense.apis import build_model_from_config

    model = build_model_from_config(deploy_cfg)
    model.load_state_dict(checkpoint['state_dict'], strict=True)
    ema = next(h for h in runner.hooks if isinstance(h, EMAHook))
    expected = reparameterize(copy.deepcopy(ema.ema_model.module)).state_dict()
    assert all(torch.allclose(checkpoint['state_dict'][k], v.cpu()) for k, v in expected.items())
    # no temp files left behind
    assert not [
        f for f in __import__('os').listdir(osp.dirname(files['checkpoint'])) if f.endswith('.tmp')
    ]


def test_test_reparameterizes_in_place_and_each_part_can_be_switched_off(tmp_path):
    runner, _ = build_runner(tmp_path, max_iters=2, val_interval=2, ema=True)
    runner.train()
    metrics = runner.test()
    assert in_deploy_form(runner.model), 'runner.test() must run the deploy model'
    assert 'accuracy/top1' in metrics

    runner2, probe2 = build_runner(
        tmp_path / 'off',
        max_iters=2,
        val_interval=2,
        reparameterize_hook=dict(deploy_val=False, deploy_test=False, save_deploy=False),
    )
    runner2.train()
    assert not in_deploy_form(probe2.records[0]['val_model'])
    runner2.test()
    assert not in_deploy_form(runner2.model)
    assert not list((tmp_path / 'off' / 'work').glob('*_deploy.pth'))


def test_noop_on_models_without_branches(tmp_path, caplog):
    hook = ReparameterizeHook()

    class FakeRunner:
        model = reparameterize(MobileOne('mu0'))

        class logger:
            messages = []

            @classmethod
            def info(cls, message):
                cls.messages.append(message)

    runner = FakeRunner()
    hook.before_run(runner)
    model = runner.model
    hook.before_val_epoch(runner)
    assert runner.model is model
    assert len(FakeRunner.logger.messages) == 1 and 'nothing to do' in FakeRunner.logger.messages[0]


@pytest.mark.parametrize(
    'old,new',
    [('fuse_val', 'deploy_val'), ('fuse_test', 'deploy_test'), ('check_fusion', 'check_deploy')],
)
def test_old_argument_names_still_work_with_a_deprecation_warning(old, new):
    with pytest.warns(DeprecationWarning, match=f'"{old}" is deprecated.*use "{new}"'):
        hook = ReparameterizeHook(**{old: False})
    assert getattr(hook, new) is False
    others = {'deploy_val', 'deploy_test', 'check_deploy'} - {new}
    assert all(getattr(hook, name) is True for name in others)
