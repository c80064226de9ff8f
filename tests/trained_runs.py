"""The tiny trained models of a test session, one per task, and how they are trained.

``conftest.py`` exposes them as session fixtures (``quickstart`` for detection,
``learned_segmentor``, ``learned_classifier``, ``s2_resumed_run``), so that the learning tests and
the val / test / demo / export / reparameterization tests all use one training run per task;
``background_runs.py`` trains them in the background while the other tests run.

Each ``prepare_*`` function writes a run's data and config in the calling thread and returns the
run: a function that only starts tool processes and reads what they wrote, so that it can go on
in another thread. (mmengine's config loading is not thread-safe: it asks pkg_resources whether a
package is installed, which failed with ``TypeError: Expected str, Requirement, or
Distribution`` while the main thread loaded a config too.) Every process goes through
`run_process`, so that an interrupted session can stop them.
"""

import contextlib
import functools
import json
import os
import os.path as osp
import pathlib
import subprocess
import sys
import threading
import time

from mmengine.config import Config

from mobileone_dense.apis.classification import set_imagenet_schedule
from mobileone_dense.datasets import make_voc_shapes
from mobileone_dense.datasets.synthetic_imagenet import make_imagenet_folder

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TESTS = osp.join(REPO, 'tests')


_LIVE = {}  # the processes started by `run_process` that have not ended yet -> the thread
_LIVE_LOCK = threading.Lock()
_THREADS = threading.local()  # .count: set by `process_threads` in this thread


@contextlib.contextmanager
def process_threads(count: int):
    """The processes `run_process` starts from this thread inside the block use ``count``
    OpenMP threads, which sleep while they wait (``OMP_WAIT_POLICY=PASSIVE``) instead of
    spinning: the background runs share the cores with the rest of the suite
    (``background_runs.py``). Spinning or sleeping changes no result."""
    _THREADS.count = count
    try:
        yield
    finally:
        del _THREADS.count


def run_process(args, timeout, env=None, cwd=None) -> subprocess.CompletedProcess:
    """``subprocess.run(args)`` with the output captured as text, the process registered in
    `_LIVE` with the thread that started it until it ends (killed on a timeout).

    The environment is always passed as a copy (``env``, default this process's): with none,
    the child reads the C-level environment while it starts, which the main thread may be
    changing at that moment (``background_runs.apply_thread_policy``); seen as ``OSError:
    [Errno 14] Bad address``. (Copying ``os.environ`` in a run's thread is safe: it iterates
    over a snapshot of its keys, and the main thread removes a key only when no run is under
    way.)
    """
    env = dict(os.environ if env is None else env)
    count = getattr(_THREADS, 'count', None)
    if count is not None:
        env.update(OMP_NUM_THREADS=str(count), OMP_WAIT_POLICY='PASSIVE')
    process = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd
    )
    with _LIVE_LOCK:
        _LIVE[process] = threading.get_ident()
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        raise AssertionError(f'{args} ran past {timeout} s:\n{(out + err)[-5000:]}') from None
    finally:
        with _LIVE_LOCK:
            _LIVE.pop(process, None)
    return subprocess.CompletedProcess(args, process.returncode, out, err)


def kill_live_processes(threads) -> None:
    """Stop what `run_process` started from one of ``threads`` (idents) and is still running."""
    with _LIVE_LOCK:
        for process, thread in _LIVE.items():
            if thread in threads:
                process.kill()


# Seconds a tool run of the suite may take; ``tests/learning_run.py --tool-timeout`` raises it
# for matrix runs that share the CPU with other work.
TOOL_TIMEOUT = 900


def run_tool(*args, timeout=None, env=None, cwd=None) -> str:
    """``python ARGS``; fails with the end of the output unless it exits 0 within ``timeout``
    seconds (default ``TOOL_TIMEOUT``)."""
    result = run_process([sys.executable, *args], timeout or TOOL_TIMEOUT, env=env, cwd=cwd)
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    return result.stdout + result.stderr


# -- detection: the quickstart ---------------------------------------------------------------
def prepare_quickstart(root):
    """One run of the README's first command, ``demo/quickstart.py`` with its defaults (train,
    deploy validation, test, demo), with mmcv's kernels disabled (``mmcv_kernel_guard.py``).

    The run returns the work dir, the generated data root, the printed output, the exit status,
    the file the guard records any mmcv kernel call in, and the run's seconds.
    """
    return functools.partial(_quickstart, pathlib.Path(root))


def _quickstart(root):
    work_dir, log = root / 'work', root / 'mmcv_kernels.log'
    start = time.time()
    result = run_process(
        [
            sys.executable,
            osp.join(TESTS, 'mmcv_kernel_guard.py'),
            '--log',
            str(log),
            osp.join(REPO, 'demo', 'quickstart.py'),
            '--work-dir',
            str(work_dir),
        ],
        timeout=1200,
    )
    return dict(
        work_dir=str(work_dir),
        data_root=str(work_dir / 'data' / 'coco'),
        out=result.stdout,
        err=result.stderr,
        returncode=result.returncode,
        kernels_log=str(log),
        seconds=time.time() - start,
    )


# -- classification --------------------------------------------------------------------------
def classification_config_path(arch):
    return osp.join(REPO, 'configs', f'mobileone_{arch}_imagenet.py')


def hook_of(cfg, name):
    return next(h for h in cfg.custom_hooks if h.type.split('.')[-1] == name)


EVAL_SIZE = 48
LEARN_EPOCHS = 10
LEARN_CURRICULUM = [(0, 32, 0.3), (4, 40, 0.6), (6, 48, 1.0)]


def run_env():
    """Environment of the tool runs: the probe importable; one intra-op thread, because the
    runs' data loader workers share the two cores and OpenMP's two threads then stall each other
    (measured here: a training step 10-15x slower)."""
    return dict(
        os.environ,
        OMP_NUM_THREADS='1',
        PYTHONPATH=os.pathsep.join([TESTS, os.environ.get('PYTHONPATH', '')]),
    )


def prepare_training(
    arch,
    root,
    data,
    max_epochs,
    curriculum,
    batch_size,
    split_at=None,
    ema_momentum=None,
    lr=None,
    seed=0,
):
    """The real config, with only data paths, epochs (schedulers and curriculum scaled with
    `set_imagenet_schedule`), image sizes and batch size changed, and a probe hook added, written
    here; the run trains it by tools/train.py, with a resume after `split_at` epochs when
    given."""
    cfg = Config.fromfile(classification_config_path(arch))
    set_imagenet_schedule(cfg, max_epochs=max_epochs, curriculum=curriculum, eval_size=EVAL_SIZE)
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[loader].dataset.data_root = data
        cfg[loader].batch_size = batch_size
    if ema_momentum is not None:
        hook_of(cfg, 'EMAHook').momentum = ema_momentum
    if lr is not None:
        cfg.optim_wrapper.optimizer.lr = lr
    probe_file = str(root / 'probe.jsonl')
    cfg.custom_imports.imports = list(cfg.custom_imports.imports) + ['classification_probe']
    cfg.custom_hooks.append(dict(type='ClassificationProbeHook', out_file=probe_file))
    cfg.randomness = dict(seed=seed)
    config = str(root / f'mobileone_{arch}_imagenet.py')
    cfg.dump(config)
    work_dir = str(root / 'work')
    runs = (
        [['--cfg-options', f'train_cfg.max_epochs={split_at}'], ['--resume']] if split_at else [[]]
    )

    def run():
        logs = ''
        for extra in runs:
            result = run_process(
                [sys.executable, osp.join(REPO, 'tools', 'train.py'), config]
                + ['--work-dir', work_dir, *extra],
                timeout=600,
                cwd=str(root),
                env=run_env(),
            )
            logs += result.stdout + result.stderr
            assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
        with open(probe_file) as f:
            records = [json.loads(line) for line in f]
        return dict(config=config, work_dir=work_dir, records=records, logs=logs, cfg=cfg)

    return run


def generated_imagenet(root, train_per_class):
    return make_imagenet_folder(
        osp.join(root, 'imagenet'),
        num_classes=4,
        train_per_class=train_per_class,
        val_per_class=6,
        size=56,
    )['root']


def prepare_classifier(root, seed=0):
    """S0 learning run through tools/train.py: 10 epochs of 12 steps of 16 images (4 classes x 48).

    Two changes, only here: EMA momentum 0.2 instead of 5e-4 (the paper's 0.9995 decay would
    keep the averaged weights at their initialization for thousands of steps), and lr 0.03: the
    config's 0.1 is for 256 images per step after a 5-epoch warm-up; at 16 per step with a
    1-epoch warm-up it diverges, and the linearly scaled 0.00625 (`--auto-scale-lr`) is too slow
    for this run (both measured). With 32 images per class (80 steps) the deploy EMA model
    learnt only in the last epochs, which a change of Pillow's resize already moved below the
    test's threshold once; 48 (120 steps) learn with epochs to spare (docs/tests.md)."""
    os.makedirs(root, exist_ok=True)
    training = prepare_training(
        's0',
        pathlib.Path(root),
        generated_imagenet(root, 48),
        LEARN_EPOCHS,
        LEARN_CURRICULUM,
        batch_size=16,
        ema_momentum=0.2,
        lr=0.03,
        seed=seed,
    )

    def run():
        result = training()
        last = osp.join(result['work_dir'], f'epoch_{LEARN_EPOCHS}')
        return dict(
            result,
            data=osp.join(root, 'imagenet'),
            checkpoint=f'{last}.pth',
            deploy_checkpoint=f'{last}_deploy.pth',
            deploy_config=osp.join(result['work_dir'], 'mobileone_s0_imagenet_deploy.py'),
        )

    return run


E2E_EPOCHS = 6
# Table 15's three stages, scaled down: 0-based epochs 0-1 / 2-3 / 4-5, 32 / 40 / 48 px
E2E_CURRICULUM = [(0, 32, 0.3), (2, 40, 0.6), (4, 48, 1.0)]


def prepare_s2_resume(root):
    """S2 (AutoAugment) through tools/train.py: 6 epochs, stopped after 3 (inside curriculum
    stage 2) and resumed."""
    os.makedirs(root, exist_ok=True)
    return prepare_training(
        's2',
        pathlib.Path(root),
        generated_imagenet(root, 16),
        E2E_EPOCHS,
        E2E_CURRICULUM,
        batch_size=16,
        split_at=3,
    )


# -- segmentation ----------------------------------------------------------------------------
LEARNING_ITERS = 120


def learning_config(voc_root, work_dir, max_iters=LEARNING_ITERS, crop_size=128, lr=3e-3, seed=0):
    """The real S0 VOC config on small images: small crops, batch 8, higher lr, short schedule."""
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'deeplabv3_mobileone_s0_voc.py'))
    cfg.model.backbone.init_cfg = None  # learns from scratch, as its settings were measured
    crop = (crop_size, crop_size)
    cfg.model.data_preprocessor.size = crop
    for dataset in cfg.train_dataloader.dataset.datasets:
        dataset.data_root = voc_root
        dataset.pipeline[2].scale = (2 * crop_size, crop_size)
        dataset.pipeline[2].ratio_range = (0.75, 1.5)
        dataset.pipeline[3].crop_size = crop
    for loader in ('val_dataloader', 'test_dataloader'):
        cfg[loader].dataset.data_root = voc_root
        cfg[loader].dataset.pipeline[1].scale = (2 * crop_size, crop_size)
        cfg[loader].num_workers = 0
        cfg[loader].persistent_workers = False
    cfg.train_dataloader.batch_size = 8
    # data loading in the main process: worker processes would take the cores from the
    # model's OpenMP threads, which then wait for each other (several times slower on 2 cores)
    cfg.train_dataloader.num_workers = 0
    cfg.train_dataloader.persistent_workers = False
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
    cfg.optim_wrapper.optimizer.lr = lr
    cfg.param_scheduler = [
        dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=10),
        dict(type='CosineAnnealingLR', by_epoch=False, begin=10, end=max_iters, eta_min_ratio=0.01),
    ]
    # a 5e-4 EMA averages over ~2000 iterations: over 120 it would keep the initial weights.
    # 0.1 (the last ~10 iterations) with lr 3e-3 is the pair that still learns when the run
    # keeps to one thread (background_runs.py); 0.05 with lr 2e-3 did not (docs/tests.md)
    next(h for h in cfg.custom_hooks if h.type == 'EMAHook').momentum = 0.1
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=max_iters, by_epoch=False)
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=20)
    cfg.work_dir = work_dir
    cfg.randomness = dict(seed=seed)
    return cfg


def miou_printed_by(out):
    """The mIoU tools/test.py printed."""
    line = next(row for row in out.splitlines() if 'mIoU:' in row and 'Iter(test)' in row)
    return float(line.split('mIoU:')[1].split()[0])


def prepare_segmentor(root, seed=0):
    """The real S0 VOC config (learning settings: data, crops, batch, schedule) and generated VOC
    data, written here; the run trains it by tools/train.py, then tools/test.py on its training
    and its deploy checkpoint."""
    voc = make_voc_shapes(
        osp.join(root, 'VOCdevkit'),
        num_train=24,
        num_aug=8,
        num_val=8,
        image_size=(128, 128),
        seed=1,
    )
    work_dir = osp.join(root, 'work')
    config = osp.join(root, 'deeplabv3_mobileone_s0_voc.py')
    learning_config(voc, work_dir, seed=seed).dump(config)
    return functools.partial(_learn_segmentor, root, voc, work_dir, config)


def _learn_segmentor(root, voc, work_dir, config):
    log = run_tool(osp.join(REPO, 'tools', 'train.py'), config)
    last = f'iter_{LEARNING_ITERS}'
    tests = {}
    for name, (test_config, checkpoint) in {
        'training': (config, osp.join(work_dir, f'{last}.pth')),
        'deploy': (
            osp.join(work_dir, 'deeplabv3_mobileone_s0_voc_deploy.py'),
            osp.join(work_dir, f'{last}_deploy.pth'),
        ),
    }.items():
        tests[name] = run_tool(
            osp.join(REPO, 'tools', 'test.py'),
            test_config,
            checkpoint,
            '--work-dir',
            osp.join(root, f'test_{name}'),
        )
    return dict(
        voc=voc,
        work_dir=work_dir,
        config=config,
        log=log,
        tests=tests,
        last=last,
        deploy_config=osp.join(work_dir, 'deeplabv3_mobileone_s0_voc_deploy.py'),
        deploy_checkpoint=osp.join(work_dir, f'{last}_deploy.pth'),
    )
