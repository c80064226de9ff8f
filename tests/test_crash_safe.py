"""Crash-safe training: atomic checkpoints, a robust ``--resume``, an exact resume after SIGKILL,
and a clear stop at the first non-finite loss."""

import glob
import json
import os
import os.path as osp
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import make_image_folder, tiny_classifier_config
from mmengine.config import Config
from mmengine.fileio import LocalBackend
from mmengine.hooks import Hook

from mobileone_dense.apis.classification import set_imagenet_schedule
from mobileone_dense.converters.checkpoint_io import load_checkpoint_file
from mobileone_dense.datasets.synthetic_imagenet import make_imagenet_folder
from mobileone_dense.engine import Runner
from mobileone_dense.engine.runner import find_resumable_checkpoint
from mobileone_dense.errors import CheckpointError

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TESTS = osp.join(REPO, 'tests')


class Killed(BaseException):
    """Stands for a SIGKILL arriving while a checkpoint is written."""


class ListLogger:
    """Collects what ``find_resumable_checkpoint`` logs."""

    def __init__(self):
        self.messages = []

    def warning(self, message):
        self.messages.append(('warning', message))

    def info(self, message):
        self.messages.append(('info', message))


def tiny_config(work_dir, data, max_iters, **checkpoint):
    """helpers' iteration-based mu0 classifier, no validation, CheckpointHook args updated."""
    cfg = tiny_classifier_config(work_dir, data, max_iters=max_iters, val_interval=100)
    cfg['default_hooks']['checkpoint'].update(checkpoint)
    return cfg


def checkpoints(work_dir):
    """The training checkpoints of ``work_dir`` (not ReparameterizeHook's deploy files)."""
    return sorted(
        osp.basename(p)
        for p in glob.glob(osp.join(work_dir, '*.pth'))
        if not p.endswith('_deploy.pth')
    )


def pointer(work_dir):
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        return f.read().strip()


def assert_finite_training_checkpoint(path, iteration):
    checkpoint = load_checkpoint_file(path, run_checkpoint=True)
    assert checkpoint['meta']['iter'] == iteration
    assert checkpoint['state_dict'] and all(
        torch.isfinite(v).all() for v in checkpoint['state_dict'].values() if v.is_floating_point()
    )
    return checkpoint


@pytest.fixture(scope='module')
def killed_while_saving(tmp_path_factory):
    """Checkpoint every iteration, keep 2; the save of iteration 4 dies half-written (after
    CheckpointHook already removed iter_2.pth for max_keep_ckpts); then ``resume=True``."""
    root = tmp_path_factory.mktemp('killed_while_saving')
    data = make_image_folder(str(root / 'data'), per_class=4)
    work_dir = str(root / 'work')
    cfg = tiny_config(work_dir, data, max_iters=4, interval=1, max_keep_ckpts=2)
    put = LocalBackend.put

    def dying_put(self, obj, filepath):
        if 'iter_4' in osp.basename(str(filepath)):
            with open(filepath, 'wb') as f:
                f.write(obj[: len(obj) // 2])
            raise Killed
        return put(self, obj, filepath)

    LocalBackend.put = dying_put
    try:
        with pytest.raises(Killed):
            Runner.from_cfg(Config(cfg)).train()
    finally:
        LocalBackend.put = put
    after_kill = dict(files=sorted(os.listdir(work_dir)), pointer=pointer(work_dir))
    # a real SIGKILL leaves the partial file behind: the resume must remove it
    with open(osp.join(work_dir, '.iter_4.pth.part'), 'wb') as f:
        f.write(b'PK\x03\x04 half a checkpoint')
    runner = Runner.from_cfg(Config(dict(cfg, resume=True)))
    runner.train()
    return dict(
        work_dir=work_dir,
        data=data,
        cfg=cfg,
        after_kill=after_kill,
        iter=runner.iter,
        files=sorted(os.listdir(work_dir)),
    )


def test_kill_while_saving_leaves_previous_checkpoint_and_no_partial_file(killed_while_saving):
    run = killed_while_saving
    work_dir = run['work_dir']
    assert 'iter_4.pth' not in run['after_kill']['files'], 'a truncated checkpoint was left'
    assert not [f for f in run['after_kill']['files'] if f.endswith('.part')]
    # max_keep_ckpts=2 removed iter_1 and iter_2 before saving iter_3 and iter_4
    assert [f for f in run['after_kill']['files'] if '.pth' in f] == ['iter_3.pth']
    assert run['after_kill']['pointer'] == osp.join(work_dir, 'iter_3.pth')
    # resumed from iter_3, finished, and max_keep_ckpts / last_checkpoint still work
    assert run['iter'] == 4
    assert checkpoints(work_dir) == ['iter_3.pth', 'iter_4.pth']
    assert not [f for f in run['files'] if f.endswith('.part')], 'stale partial file kept'
    assert pointer(work_dir) == osp.join(work_dir, 'iter_4.pth')
    assert_finite_training_checkpoint(osp.join(work_dir, 'iter_3.pth'), 3)
    assert_finite_training_checkpoint(osp.join(work_dir, 'iter_4.pth'), 4)


def test_resume_falls_back_to_the_newest_loadable_checkpoint(killed_while_saving, tmp_path):
    work_dir = str(tmp_path / 'work')
    shutil.copytree(killed_while_saving['work_dir'], work_dir)
    iter_3, iter_4 = (osp.join(work_dir, f'iter_{i}.pth') for i in (3, 4))
    os.utime(iter_3, (1e9, 1e9))  # older, whatever the copy did to the times
    last = osp.join(work_dir, 'last_checkpoint')

    def resumable(pointer_text):
        if pointer_text is None:
            if osp.exists(last):
                os.remove(last)
        else:
            with open(last, 'w') as f:
                f.write(pointer_text)
        logger = ListLogger()
        return find_resumable_checkpoint(work_dir, logger), logger.messages

    assert resumable(iter_4) == (iter_4, [])
    path, messages = resumable('')  # killed while CheckpointHook rewrote the pointer
    assert path == iter_4 and messages[0][0] == 'warning' and 'is empty' in messages[0][1]
    path, messages = resumable(osp.join(work_dir, 'iter_9.pth'))
    assert path == iter_4 and 'does not exist' in messages[0][1]
    path, messages = resumable(None)  # killed between the first save and the pointer
    assert path == iter_4 and 'there is no' in messages[0][1]
    with open(iter_4, 'r+b') as f:  # e.g. written by a runner without atomic saves
        f.truncate(os.path.getsize(iter_4) // 2)
    path, messages = resumable(iter_4)
    assert path == iter_3 and 'truncated' in messages[0][1]

    # the Runner takes the same way: empty pointer, truncated newest -> resume from iter_3
    resumable('')
    runner = Runner.from_cfg(
        Config(dict(killed_while_saving['cfg'], work_dir=work_dir, resume=True))
    )
    runner.load_or_resume()
    assert runner.iter == 3
    with open(iter_3, 'r+b') as f:
        f.truncate(100)
    with pytest.raises(CheckpointError, match='no other checkpoint'):
        resumable(iter_4)
    path, messages = resumable(None)
    assert path is None and messages[0][0] == 'warning' and 'none of' in messages[0][1]
    for path in glob.glob(osp.join(work_dir, '*.pth')):
        os.remove(path)
    assert resumable(None) == (
        None,
        [('info', f'no checkpoint to resume from in {work_dir}: training from the start')],
    )


# ---------------------------------------------------------------------------------------------
# SIGKILL mid-epoch, then --resume: the same weights as an uninterrupted run

MAX_EPOCHS = 3


def run_env():
    """One intra-op thread (two cores are shared); the kill-point hook importable."""
    return dict(
        os.environ,
        OMP_NUM_THREADS='1',
        PYTHONPATH=os.pathsep.join([TESTS, os.environ.get('PYTHONPATH', '')]),
    )


def mu0_config(root, data, marker=None):
    """configs/mobileone_mu0_imagenet.py, shortened: 3 epochs of 4 batches of 4 images (32 px,
    then 40 px from the third epoch), lr 0.02, EMA momentum 0.1 (so that the average moves),
    validation only at the end, a checkpoint every epoch (the config's), seeded, deterministic,
    no data loader workers (the augmentations draw from the main process's RNGs)."""
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'mobileone_mu0_imagenet.py'))
    set_imagenet_schedule(
        cfg, max_epochs=MAX_EPOCHS, curriculum=[(0, 32, 0.3), (2, 40, 0.6)], eval_size=32
    )
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[loader].update(batch_size=4, num_workers=0, persistent_workers=False)
        cfg[loader].dataset.data_root = data
    next(h for h in cfg.custom_hooks if h.type == 'EMAHook').momentum = 0.1
    cfg.optim_wrapper.optimizer.lr = 0.02  # 0.1 is for batches of 256; 4 images diverge
    cfg.train_cfg.val_interval = MAX_EPOCHS
    cfg.randomness = dict(seed=0, deterministic=True)
    name = 'plain.py'
    if marker is not None:
        cfg.custom_imports.imports = list(cfg.custom_imports.imports) + ['crash_probe']
        cfg.custom_hooks.append(dict(type='KillPointHook', marker=marker, epoch=2, batch=2))
        name = 'kill_point.py'
    path = str(root / name)
    cfg.dump(path)
    return path


def train_cmd(config, work_dir, *extra):
    return [
        sys.executable,
        osp.join(REPO, 'tools', 'train.py'),
        config,
        '--work-dir',
        work_dir,
        *extra,
    ]


def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path):
    data = make_imagenet_folder(
        str(tmp_path / 'data'), num_classes=2, train_per_class=8, val_per_class=2, size=40
    )['root']
    marker = str(tmp_path / 'kill_point.json')
    plain, kill_point = mu0_config(tmp_path, data), mu0_config(tmp_path, data, marker)
    straight_dir, killed_dir = str(tmp_path / 'straight'), str(tmp_path / 'killed')
    # the uninterrupted reference runs beside the run to kill; logs to files (a full pipe
    # would block a run)
    logs = {name: str(tmp_path / f'{name}.log') for name in ('straight', 'killed')}

    def start(cmd, name):
        with open(logs[name], 'w') as log:
            return subprocess.Popen(
                cmd, cwd=str(tmp_path), env=run_env(), stdout=log, stderr=subprocess.STDOUT
            )

    def tail(name):
        with open(logs[name]) as f:
            return f.read()[-4000:]

    straight = start(train_cmd(plain, straight_dir), 'straight')
    killed = start(train_cmd(kill_point, killed_dir), 'killed')
    try:
        deadline = time.time() + 240
        while not osp.exists(marker) and killed.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert osp.exists(marker), 'the run never reached the kill point:\n' + tail('killed')
        on_disk = checkpoints(killed_dir)
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait(timeout=60)
        with open(marker) as f:
            assert json.load(f) == dict(iter=6, epoch=2)  # mid-epoch 2 (4 iterations per epoch)
        assert killed.returncode == -signal.SIGKILL
        assert on_disk == ['epoch_1.pth'], on_disk

        resumed = subprocess.run(
            train_cmd(plain, killed_dir, '--resume'),
            timeout=300,
            capture_output=True,
            text=True,
            cwd=str(tmp_path),
            env=run_env(),
        )
        assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-4000:]
        resumed_logs = resumed.stdout + resumed.stderr
        assert (
            f'Auto resumed from the latest checkpoint {osp.join(killed_dir, "epoch_1.pth")}'
            in resumed_logs
        )
        assert 'restored the RNG states of the checkpoint' in resumed_logs
        assert straight.wait(timeout=300) == 0, tail('straight')
    finally:  # nothing left running when an assertion fails
        for process in (killed, straight):
            if process.poll() is None:
                process.kill()
                process.wait()

    final = f'epoch_{MAX_EPOCHS}.pth'
    a = load_checkpoint_file(osp.join(straight_dir, final), run_checkpoint=True)
    b = load_checkpoint_file(osp.join(killed_dir, final), run_checkpoint=True)
    assert (
        (a['meta']['epoch'], a['meta']['iter'])
        == (b['meta']['epoch'], b['meta']['iter'])
        == (MAX_EPOCHS, 4 * MAX_EPOCHS)
    )
    # EMAHook saves the averaged weights as `state_dict` and the raw ones as `ema_state_dict`
    for key in ('state_dict', 'ema_state_dict'):
        assert a[key].keys() == b[key].keys()
        torch.testing.assert_close(b[key], a[key], msg=lambda m: f'{key}: {m}')
    torch.testing.assert_close(b['optimizer']['state'], a['optimizer']['state'])
    # the comparison is sensitive: the weights moved over the last epoch
    before = load_checkpoint_file(
        osp.join(straight_dir, f'epoch_{MAX_EPOCHS - 1}.pth'), run_checkpoint=True
    )
    moved = max(
        (a['ema_state_dict'][k] - before['ema_state_dict'][k]).abs().max().item()
        for k in a['ema_state_dict']
        if a['ema_state_dict'][k].is_floating_point()
    )
    assert moved > 1e-3


# ---------------------------------------------------------------------------------------------
# non-finite loss


class PoisonWeights(Hook):
    """Before iteration ``at`` (1-based), sets the classifier's weights to NaN (broken weights
    or data: the loss of that iteration is NaN)."""

    def __init__(self, at):
        self.at = at

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if runner.iter + 1 == self.at:
            with torch.no_grad():
                runner.model.head.fc.weight.fill_(float('nan'))


def test_non_finite_loss_stops_before_its_checkpoint(tmp_path):
    data = make_image_folder(str(tmp_path / 'data'), per_class=4)
    work_dir = str(tmp_path / 'work')
    cfg = tiny_config(work_dir, data, max_iters=6, interval=1)
    cfg['custom_hooks'] = [
        dict(type='mobileone_dense.FiniteLossHook'),
        dict(type='EMAHook', momentum=0.5),
    ]
    runner = Runner.from_cfg(Config(cfg))
    runner.register_hook(PoisonWeights(at=3))
    with pytest.raises(FloatingPointError) as error:
        runner.train()
    message = str(error.value)
    assert 'not finite at iteration 3' in message and 'loss=nan' in message
    assert osp.join(work_dir, 'iter_2.pth') in message
    assert 'learning rate' in message and 'clip_grad' in message and 'data' in message
    # no checkpoint of the NaN weights; the last one is good and is what --resume takes
    assert checkpoints(work_dir) == ['iter_1.pth', 'iter_2.pth']
    assert pointer(work_dir) == osp.join(work_dir, 'iter_2.pth')
    checkpoint = assert_finite_training_checkpoint(osp.join(work_dir, 'iter_2.pth'), 2)
    assert all(
        torch.isfinite(v).all()
        for v in checkpoint['ema_state_dict'].values()
        if v.is_floating_point()
    )
