"""Resuming on torch >= 2.6 with a scoped allowlist; weights_only stays strict elsewhere."""

import copy
import os.path as osp
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import make_image_folder, tiny_classifier_config
from mmengine.config import Config
from mmengine.hooks import Hook

from mobileone_dense.converters import allow_mmengine_checkpoints, load_checkpoint_file
from mobileone_dense.engine import Runner
from mobileone_dense.engine.launch import build_runner

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


class UsesGetattr:
    """Pickles as a call of the builtin ``getattr`` (what numpy 2 dtypes need)."""

    def __reduce__(self):
        return getattr, ('ABC', 'upper')


@pytest.fixture(scope='module')
def first_run(tmp_path_factory):
    """Two iterations of the tiny classifier through tools/train.py, checkpoint at iter 2."""
    root = tmp_path_factory.mktemp('resume')
    data = make_image_folder(str(root / 'data'))
    cfg = Config(tiny_classifier_config(str(root / 'work'), data, max_iters=2, val_interval=2))
    config_path = str(root / 'tiny_cls.py')
    cfg.dump(config_path)
    result = subprocess.run(
        [sys.executable, osp.join(REPO, 'tools', 'train.py'), config_path],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert osp.isfile(root / 'work' / 'iter_2.pth')
    return root, config_path


def test_plain_weights_only_load_refuses_mmengine_checkpoint(first_run):
    """The failure we fix: torch's default loader refuses mmengine's own checkpoint."""
    root, _ = first_run
    with pytest.raises(pickle.UnpicklingError):
        torch.load(root / 'work' / 'iter_2.pth', weights_only=True)
    with allow_mmengine_checkpoints():
        checkpoint = torch.load(root / 'work' / 'iter_2.pth', weights_only=True)
    assert checkpoint['meta']['iter'] == 2


def test_resume_from_the_command_line(first_run):
    root, config_path = first_run
    result = subprocess.run(
        [
            sys.executable,
            osp.join(REPO, 'tools', 'train.py'),
            config_path,
            '--resume',
            '--cfg-options',
            'train_cfg.max_iters=4',
            'log_level=INFO',
        ],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'resumed epoch: 0, iter: 2' in result.stdout + result.stderr
    with allow_mmengine_checkpoints():
        final = torch.load(root / 'work' / 'iter_4.pth', weights_only=True)
    assert final['meta']['iter'] == 4


def test_resume_restores_iteration_optimizer_and_weights(first_run, tmp_path):
    root, config_path = first_run
    cfg = Config.fromfile(config_path)
    cfg.work_dir = str(tmp_path)
    cfg.resume = True
    cfg.load_from = str(root / 'work' / 'iter_2.pth')
    cfg.train_cfg.max_iters = 3
    runner = Runner.from_cfg(cfg)
    seen = {}

    class AtStart(Hook):
        def before_train(self, runner_):
            seen['iter'] = runner_.iter
            seen['weights'] = {k: v.clone() for k, v in runner_.model.state_dict().items()}
            seen['optimizer'] = copy.deepcopy(runner_.optim_wrapper.optimizer.state_dict())

    runner.register_hook(AtStart(), priority='LOWEST')
    runner.train()
    with allow_mmengine_checkpoints():
        saved = torch.load(cfg.load_from, weights_only=True)
    assert seen['iter'] == 2
    assert all(torch.equal(seen['weights'][k], v) for k, v in saved['state_dict'].items())
    momentum_saved = saved['optimizer']['state']
    momentum_seen = seen['optimizer']['state']
    assert momentum_saved.keys() == momentum_seen.keys() and len(momentum_saved) > 0
    for key in momentum_saved:
        assert torch.equal(
            momentum_saved[key]['momentum_buffer'], momentum_seen[key]['momentum_buffer']
        )
    assert runner.iter == 3


def test_a_test_run_reads_its_checkpoint_once(first_run, tmp_path, monkeypatch):
    """tools/test.py's path: the checks read the checkpoint (truncated? does it fit?), the
    Runner takes that read instead of reading the file again (deploy check, then mmengine's
    loader)."""
    root, config_path = first_run
    cfg = Config.fromfile(config_path)
    cfg.work_dir, cfg.resume = str(tmp_path), False
    cfg.load_from = str(root / 'work' / 'iter_2.pth')
    reads = []
    load = torch.load

    def counting_load(f, *args, **kwargs):
        reads.append(str(f))
        return load(f, *args, **kwargs)

    monkeypatch.setattr(torch, 'load', counting_load)
    runner = build_runner(cfg, mode='test')
    runner.load_or_resume()  # what runner.test() does first
    assert reads == [cfg.load_from]
    with allow_mmengine_checkpoints():
        saved = load(cfg.load_from, weights_only=True)['state_dict']
    assert all(torch.equal(runner.model.state_dict()[k], v) for k, v in saved.items())


def test_allowlist_is_not_process_wide(first_run, tmp_path):
    """After a resume in this process, getattr and numpy stay refused by plain torch.load."""
    root, config_path = first_run
    cfg = Config.fromfile(config_path)
    cfg.work_dir, cfg.resume = str(tmp_path), True
    cfg.load_from = str(root / 'work' / 'iter_2.pth')
    cfg.train_cfg.max_iters = 2
    Runner.from_cfg(cfg).train()
    assert getattr not in torch.serialization.get_safe_globals()
    gadget = tmp_path / 'getattr.pth'
    torch.save({'x': UsesGetattr()}, gadget)
    with pytest.raises(pickle.UnpicklingError, match='getattr'):
        torch.load(gadget, weights_only=True)
    with allow_mmengine_checkpoints():  # the scoped allowlist is what lets it through
        assert torch.load(gadget, weights_only=True)['x']() == 'ABC'
    path = tmp_path / 'numpy.pth'
    torch.save({'array': np.arange(3.0), 'dtype': np.dtype('float64')}, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)


def test_our_loader_refuses_arbitrary_objects_with_an_explanation(tmp_path):
    path = tmp_path / 'pickled.pth'
    torch.save({'state_dict': {}, 'extra': np.arange(3.0)}, path)
    with pytest.raises(RuntimeError) as error:
        load_checkpoint_file(str(path))
    message = str(error.value)
    assert 'weights_only' in message and 're-save only its tensors' in message


def test_truncated_checkpoint_is_reported(tmp_path):
    path = tmp_path / 'model.pth'
    torch.save({'state_dict': {'w': torch.zeros(1000)}}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(RuntimeError, match='truncated'):
        load_checkpoint_file(str(path))
