"""Whole-model reparameterization: the deploy detector / segmentor has no BN left, computes the
same."""

import copy
import os.path as osp

import pytest
import torch
import torch.nn as nn
from mmcv.cnn import ConvModule, fuse_conv_bn
from mmengine.config import Config
from mmengine.registry import MODELS, DefaultScope
from torch.nn.modules.batchnorm import _BatchNorm

import mobileone_dense  # noqa: F401
from mobileone_dense import reparameterize
from mobileone_dense.analysis.deploy_check import randomize_batch_norm
from mobileone_dense.apis import build_model_from_config
from mobileone_dense.apis.inference import init_model
from mobileone_dense.engine.deploy_checkpoints import (
    atomic_save,
    deploy_checkpoint,
    is_deploy_checkpoint,
    max_relative_difference,
    output_tensors,
)
from mobileone_dense.engine.deploy_files import deploy_config
from mobileone_dense.errors import DeployConfigError, FoldingError
from mobileone_dense.models.reparameterize import fuse_conv_bn_pairs
from mobileone_dense.registry import MODELS as OUR_MODELS

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = {
    'detector': ('configs/ssdlite_mobileone_s0_coco.py', 128),
    'segmentor': ('configs/deeplabv3_mobileone_s0_voc.py', 96),
}


class TensorOutputs(nn.Module):
    """``model(inputs, mode='tensor')`` as a flat list of tensors (for BN calibration)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs):
        return output_tensors(self.model(inputs, mode='tensor'))


def trained_like(task: str):
    """The S0 model of ``task`` with calibrated, perturbed BN statistics (as after training)."""
    config, size = CONFIGS[task]
    cfg = Config.fromfile(osp.join(REPO, config))
    torch.manual_seed(0)
    model = build_model_from_config(cfg)
    inputs = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    randomize_batch_norm(TensorOutputs(model), calibration_inputs=inputs)
    return cfg, model.eval(), inputs


@pytest.mark.parametrize('task', sorted(CONFIGS))
def test_whole_model_reparameterization_is_exact_and_leaves_no_batch_norm(task):
    _, model, inputs = trained_like(task)
    neck_and_head_bn = [
        n
        for n, m in model.named_modules()
        if isinstance(m, _BatchNorm) and not n.startswith('backbone.')
    ]
    assert neck_and_head_bn, 'the train-time model should have BN outside the backbone'
    model = model.double()
    inputs = inputs.double()
    with torch.no_grad():
        reference = output_tensors(model(inputs, mode='tensor'))
        deploy = reparameterize(copy.deepcopy(model)).eval()
        outputs = output_tensors(deploy(inputs, mode='tensor'))
    assert not [n for n, m in deploy.named_modules() if isinstance(m, _BatchNorm)]
    # float64: the folding is exact up to rounding (float32 gives ~1e-5 here)
    assert max_relative_difference(outputs, reference) < 1e-10
    # fusing again changes nothing
    before = {k: v.clone() for k, v in deploy.state_dict().items()}
    reparameterize(deploy)
    assert all(torch.equal(before[k], v) for k, v in deploy.state_dict().items())


def old_deploy_config(cfg: Config) -> Config:
    """The deploy config as versions before issue 25 wrote it: only the backbone in deploy form,
    the neck/head still with their BN (our loaders re-parameterized the model before loading)."""
    cfg = copy.deepcopy(cfg)
    cfg.model.backbone.update(deploy=True, init_cfg=None)
    return cfg


@pytest.mark.parametrize('task', sorted(CONFIGS))
def test_deploy_checkpoint_loads_into_deploy_config_and_training_config(task, tmp_path):
    cfg, model, inputs = trained_like(task)
    deploy = reparameterize(copy.deepcopy(model)).eval()
    path = str(tmp_path / 'deploy.pth')
    atomic_save(deploy_checkpoint(deploy, dict(dataset_meta=None)), path)
    config = deploy_config(cfg, path)
    # the deploy config of an earlier version, given to deploy_config, becomes this one
    assert deploy_config(old_deploy_config(cfg), path).model.to_dict() == config.model.to_dict()
    # the deploy config alone describes the deploy model: built as any mmdet/mmseg tool builds
    # it (no re-parameterization), it takes the deploy weights with no missing or unexpected key
    with DefaultScope.overwrite_default_scope(config.default_scope):
        plain = MODELS.build(copy.deepcopy(config.model))
    plain.load_state_dict(torch.load(path, weights_only=True)['state_dict'], strict=True)
    with torch.no_grad():
        expected = output_tensors(deploy(inputs, mode='tensor'))
        outputs = output_tensors(plain.eval()(inputs, mode='tensor'))
        assert max_relative_difference(outputs, expected) == 0
        # our loader takes it with this config, with the deploy configs of earlier versions and
        # with the training config
        for config in (config, old_deploy_config(cfg), cfg):
            loaded = init_model(config, path)
            assert not any(isinstance(m, _BatchNorm) for m in loaded.modules())
            outputs = output_tensors(loaded(inputs, mode='tensor'))
            assert max_relative_difference(outputs, expected) == 0
    # a deploy config drops EMAHook: its averaged copy would be of another structure
    assert not [h for h in deploy_config(cfg).custom_hooks if 'EMAHook' in h['type']]


def test_deploy_meta_is_one_key_and_old_checkpoints_still_load(tmp_path):
    """Deploy checkpoints record ``mobileone_dense_deploy='whole_model'``; those written by
    earlier versions (the pair ``mobileone_dense_deploy=True, fused='whole_model'``) load too."""
    cfg, model, inputs = trained_like('segmentor')
    deploy = reparameterize(copy.deepcopy(model)).eval()
    new = deploy_checkpoint(deploy, dict(dataset_meta=None))
    assert new['meta'] == dict(dataset_meta=None, mobileone_dense_deploy='whole_model')
    old = dict(
        meta=dict(dataset_meta=None, mobileone_dense_deploy=True, fused='whole_model'),
        state_dict=new['state_dict'],
    )
    path = str(tmp_path / 'old_deploy.pth')
    atomic_save(old, path)
    with torch.no_grad():
        expected = output_tensors(deploy(inputs, mode='tensor'))
        outputs = output_tensors(init_model(cfg, path)(inputs, mode='tensor'))
    assert max_relative_difference(outputs, expected) == 0
    assert is_deploy_checkpoint(new) and is_deploy_checkpoint(old)
    for meta in ({}, dict(fused=True), dict(mobileone_dense_deploy=True), dict(deploy=True)):
        assert not is_deploy_checkpoint(dict(meta=meta, state_dict={})), meta


def test_only_conv_then_norm_pairs_are_folded():
    torch.manual_seed(0)
    norm_first = ConvModule(
        4, 4, 3, padding=1, norm_cfg=dict(type='BN'), order=('norm', 'conv', 'act')
    )
    conv_first = ConvModule(4, 4, 3, padding=1, norm_cfg=dict(type='BN'))
    sequential = nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4), nn.ReLU())
    model = nn.Sequential(norm_first, conv_first, sequential)
    inputs = torch.randn(2, 4, 8, 8)
    randomize_batch_norm(model, calibration_inputs=inputs)
    model.eval()
    with torch.no_grad():
        reference = model(inputs)
        ours = copy.deepcopy(model)
        folded = fuse_conv_bn_pairs(ours)
        assert folded == ['1.bn', '2.1']
        assert torch.allclose(ours(inputs), reference, atol=1e-5)
        # mmcv's fuse_conv_bn pairs by registration order and silently breaks norm-first modules:
        # the reason fuse_conv_bn_pairs exists.
        theirs = fuse_conv_bn(copy.deepcopy(model))
        assert not torch.allclose(theirs(inputs), reference, atol=1e-3)


def test_batch_norm_without_running_statistics_is_refused():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4, track_running_stats=False))
    with pytest.raises(FoldingError, match='without running statistics'):
        fuse_conv_bn_pairs(model)


@OUR_MODELS.register_module(force=True)
class FixedNormNeck(nn.Module):
    """A neck whose Conv+BN is built whatever its config says: without a ``norm_cfg`` argument
    (``takes_norm_cfg=False``), or ignoring it."""

    def __init__(self, channels: int, takes_norm_cfg: bool = False, **kwargs) -> None:
        super().__init__()
        if kwargs and not (takes_norm_cfg and set(kwargs) == {'norm_cfg'}):
            raise TypeError(f'unexpected arguments {sorted(kwargs)}')
        self.layers = nn.Sequential(nn.Conv2d(channels, channels, 1), nn.BatchNorm2d(channels))

    def forward(self, inputs):
        return (self.layers(inputs[-1]).mean((2, 3)),)


def mu0_classifier_with(neck: dict) -> Config:
    """An mmpretrain classifier: MobileOne-mu0 (384 channels out), ``neck``, a linear head."""
    return Config(
        dict(
            default_scope='mmpretrain',
            model=dict(
                type='ImageClassifier',
                backbone=dict(type='mobileone_dense.MobileOne', arch='mu0', out_indices=(3,)),
                neck=neck,
                head=dict(type='LinearClsHead', num_classes=2, in_channels=384),
            ),
        )
    )


@pytest.mark.parametrize('takes_norm_cfg', [False, True])
def test_a_part_whose_deploy_form_no_config_describes_is_named(takes_norm_cfg):
    cfg = mu0_classifier_with(
        dict(type='mobileone_dense.FixedNormNeck', channels=384, takes_norm_cfg=takes_norm_cfg)
    )
    expected = 'cannot be built' if not takes_norm_cfg else 'does not build the deploy model'
    with pytest.raises(DeployConfigError, match=expected) as error:
        deploy_config(cfg)
    assert 'model parts given norm_cfg=None: neck (mobileone_dense.FixedNormNeck)' in str(
        error.value
    )
    assert 'registered deploy variant' in str(error.value)


@OUR_MODELS.register_module(force=True)
class UnpaddedNeck(nn.Module):
    """A neck with an unpadded 5x5 ConvModule on the last feature map: it needs a map of at
    least 5x5, more than a 64 px image gives at stride 32."""

    def __init__(self, channels: int, norm_cfg=None) -> None:
        super().__init__()
        self.conv = ConvModule(channels, channels, 5, norm_cfg=norm_cfg)

    def forward(self, inputs):
        return (self.conv(inputs[-1]).mean((2, 3)),)


def test_the_deploy_config_check_runs_models_that_need_larger_inputs():
    cfg = mu0_classifier_with(
        dict(type='mobileone_dense.UnpaddedNeck', channels=384, norm_cfg=dict(type='BN'))
    )
    assert deploy_config(cfg).model.neck.norm_cfg is None
