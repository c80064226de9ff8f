"""tools/reparameterize.py: re-parameterize a trained checkpoint, verify, write atomically."""

import importlib.util
import os
import os.path as osp
import re
import subprocess
import sys

import pytest
import torch
from helpers import make_image_folder, tiny_classifier_config
from mmengine.config import Config

from mobileone_dense.apis import build_model_from_config
from mobileone_dense.engine import Runner
from mobileone_dense.engine.deploy_checkpoints import atomic_save
from mobileone_dense.errors import ConfigError, WeightsMismatchError

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp('reparam')
    data = make_image_folder(str(root / 'data'))
    cfg = Config(
        tiny_classifier_config(
            str(root / 'work'),
            data,
            max_iters=2,
            val_interval=2,
            ema=True,
            reparameterize_hook=dict(save_deploy=False),
        )
    )
    config_path = str(root / 'tiny_cls.py')
    cfg.dump(config_path)
    Runner.from_cfg(Config.fromfile(config_path)).train()
    return root, config_path, str(root / 'work' / 'iter_2.pth')


def load_tool():
    spec = importlib.util.spec_from_file_location(
        'reparameterize_tool', osp.join(REPO, 'tools', 'reparameterize.py')
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TOOL = load_tool()


@pytest.mark.parametrize('weights', ['ema', 'raw'])
def test_reparameterizes_verifies_and_writes_checkpoint_and_config(
    trained, tmp_path, weights, capsys
):
    _, config_path, checkpoint = trained
    out = str(tmp_path / 'deploy.pth')
    if weights == 'ema':  # the command line itself, once
        result = subprocess.run(
            [
                sys.executable,
                osp.join(REPO, 'tools', 'reparameterize.py'),
                config_path,
                checkpoint,
                out,
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stderr
        printed = result.stdout
    else:
        assert TOOL.main([config_path, checkpoint, out, '--weights', weights]) == 0
        printed = capsys.readouterr().out
    assert 'deploy model verified' in printed
    deploy_cfg = Config.fromfile(str(tmp_path / 'deploy.py'))
    assert deploy_cfg.model.backbone.deploy is True
    deploy_state = torch.load(out, weights_only=True)['state_dict']
    model = build_model_from_config(deploy_cfg)
    model.load_state_dict(deploy_state, strict=True)
    # ema and raw weights really differ: the tool picked what was asked for
    from mobileone_dense.converters import allow_mmengine_checkpoints

    with allow_mmengine_checkpoints():
        source = torch.load(checkpoint, weights_only=True)
    expected = (
        source['state_dict']
        if weights == 'ema'
        else {k[7:]: v for k, v in source['ema_state_dict'].items() if k.startswith('module.')}
    )
    head = expected['head.fc.weight']
    assert torch.allclose(deploy_state['head.fc.weight'], head)


def test_failed_verification_writes_nothing(trained, tmp_path, capsys):
    _, config_path, checkpoint = trained
    out = tmp_path / 'deploy.pth'
    assert TOOL.main([config_path, checkpoint, str(out), '--tolerance', '-1']) == 1
    assert 'nothing written' in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / 'deploy.py').exists()
    assert os.listdir(tmp_path) == []


def test_wrong_checkpoint_fails_loudly(trained, tmp_path):
    _, config_path, _ = trained
    bad = tmp_path / 'other.pth'
    torch.save({'state_dict': {'backbone.stem.reparam_conv.weight': torch.zeros(1)}}, bad)
    with pytest.raises(WeightsMismatchError, match='deploy=True'):
        TOOL.main([config_path, str(bad), str(tmp_path / 'out.pth')])
    assert not (tmp_path / 'out.pth').exists()


def test_atomic_save_keeps_the_previous_file_on_failure(tmp_path):
    path = tmp_path / 'model.pth'
    atomic_save({'w': torch.ones(3)}, str(path))

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError('interrupted while writing')

    with pytest.raises(RuntimeError, match='interrupted'):
        atomic_save({'w': torch.zeros(3), 'bad': Unpicklable()}, str(path))
    assert torch.equal(torch.load(path, weights_only=True)['w'], torch.ones(3))
    assert os.listdir(tmp_path) == ['model.pth']


def test_atomic_writes_get_the_permissions_open_would_give(tmp_path):
    """mkstemp creates 0600 files: a checkpoint or ONNX file written through a temp file must
    still be readable by the group/others as a plain ``open()`` would make it (umask 022)."""
    umask = os.umask(0o022)
    try:
        atomic_save({'w': torch.ones(1)}, str(tmp_path / 'model.pth'))
        with open(tmp_path / 'plain.txt', 'w'):
            pass
    finally:
        os.umask(umask)
    mode = (tmp_path / 'model.pth').stat().st_mode & 0o777
    assert mode == (tmp_path / 'plain.txt').stat().st_mode & 0o777 == 0o644


def test_an_early_detector_checkpoint_is_written(tmp_path, capsys):
    """Regression (issue 23): an S0 detector with mild random BN statistics (as early in
    training) was refused because its float32 outputs differ by ~1e-4 (rounding, amplified where
    outputs are small); exactness is decided in float64, the float32 difference only reported."""
    config = osp.join(REPO, 'configs', 'ssdlite_mobileone_s0_coco.py')
    torch.manual_seed(0)
    model = build_model_from_config(Config.fromfile(config))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                n = module.num_features
                module.running_var.copy_(0.8 + 0.45 * torch.rand(n, generator=generator))
                module.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
                module.weight.copy_(0.9 + 0.2 * torch.rand(n, generator=generator))
    checkpoint = str(tmp_path / 'early.pth')
    torch.save(dict(state_dict=model.state_dict(), meta={}), checkpoint)
    out = tmp_path / 'early_deploy.pth'
    assert TOOL.main([config, checkpoint, str(out)]) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    found = re.search(r'difference (\S+) in float64, (\S+) in float32', printed)
    assert float(found[1]) < 1e-9, printed
    assert out.exists() and (tmp_path / 'early_deploy.py').exists()
    meta = torch.load(out, weights_only=True)['meta']
    assert meta['deploy_error_float64'] < 1e-9 and meta['deploy_error'] == pytest.approx(
        float(found[2]), rel=0.1
    )
    # a plain state dict has no dataset_meta: the config's data set class gives it (issue 25:
    # mmdet's and mmseg's inferencers failed on the None written before)
    from mmdet.datasets import CocoDataset

    assert meta['dataset_meta']['classes'] == CocoDataset.METAINFO['classes']
    assert meta['dataset_meta']['palette'] == CocoDataset.METAINFO['palette']


def test_no_class_names_anywhere_is_refused_before_writing(trained, tmp_path, capsys):
    """A plain state dict (no meta) with a config whose data set names no classes (a
    ``CustomDataset`` reading them from its folders): nothing to write as ``dataset_meta``."""
    _, config_path, checkpoint = trained
    from mobileone_dense.converters import load_checkpoint_file, state_dict_of

    plain = str(tmp_path / 'plain.pth')
    weights = state_dict_of(load_checkpoint_file(checkpoint, run_checkpoint=True))
    torch.save(dict(state_dict=weights), plain)
    out = tmp_path / 'out' / 'deploy.pth'
    with pytest.raises(ConfigError, match=r'metainfo=dict\(classes='):
        TOOL.main([config_path, plain, str(out)])
    assert not out.parent.exists() or os.listdir(out.parent) == []
