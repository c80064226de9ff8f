"""Distributed runs: tools/dist_train.sh and dist_test.sh with 2 CPU processes (torchrun, gloo).

For each task's S0 config (only data, lengths, sizes and batch changed, on tiny generated data):
both ranks run in one process group, every checkpoint is written once, by rank 0, both ranks
validate the same deploy model, and the validation metric gathered over the 2 ranks equals the
single-process metric of the deploy checkpoint on the same validation set, whose 5 images do not
split evenly over 2 ranks (mmengine's sampler repeats one; the gather must drop it, else the
metric changes). Classification trains as 2 "nodes" of 1 process (NNODES, NODE_RANK,
MASTER_ADDR, PORT) and is also tested with dist_test.sh. What each rank did is recorded by
``tests/distributed_probe.py``.

SyncBN: torch computes SyncBN statistics, and wraps SyncBN models in DDP, on GPUs only. The
segmentation run keeps the config's SyncBN layers (the Runner must not revert them in a
distributed run); the probe lets them pass DDP on CPU and normalize with each process's own
batch statistics, so everything around them (EMA, validation of the deploy copy, deploy export)
runs as in a GPU job.
"""

import json
import os
import os.path as osp
import socket
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import MODELS, init_default_scope
from short_configs import (
    short_classification_config,
    short_detection_config,
    short_segmentation_config,
)

from mobileone_dense.engine.distributed import setup_cpu_distributed, sync_bn_keys
from mobileone_dense.engine.launch import load_config

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TESTS = osp.join(REPO, 'tests')
NPROC = 2
NUM_VAL = 5  # odd: 2 ranks get 3 + 3 samples, one of them a repeat
pytestmark = pytest.mark.skipif(
    sys.platform == 'win32' or not torch.distributed.is_available(),
    reason='needs torch.distributed and bash',
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def tool_env(**extra) -> dict:
    """Tools run on the CPU with one intra-op thread per process, this interpreter, the probe
    importable."""
    return dict(
        os.environ,
        OMP_NUM_THREADS='1',
        CUDA_VISIBLE_DEVICES='',
        PYTHON=sys.executable,
        PORT=str(free_port()),
        PYTHONPATH=os.pathsep.join([TESTS, os.environ.get('PYTHONPATH', '')]),
        **extra,
    )


def run(args, timeout=300) -> str:
    """Run a tool (bash script or python) from a foreign cwd."""
    result = subprocess.run(
        args, capture_output=True, text=True, timeout=timeout, env=tool_env(), cwd=TESTS
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-6000:]
    return out


def dist_train(config, work_dir):
    return run(
        [
            'bash',
            osp.join(REPO, 'tools', 'dist_train.sh'),
            config,
            str(NPROC),
            '--work-dir',
            work_dir,
        ]
    )


def dist_train_two_nodes(config, work_dir, timeout=300):
    """The multi-node form: NNODES=2 "nodes" (here on one machine) of 1 process each, with
    NODE_RANK, MASTER_ADDR and PORT, as on a cluster."""
    env = tool_env(NNODES='2', MASTER_ADDR='127.0.0.1')
    nodes = [
        subprocess.Popen(
            ['bash', osp.join(REPO, 'tools', 'dist_train.sh'), config, '1', '--work-dir', work_dir],
            env=dict(env, NODE_RANK=str(rank)),
            cwd=TESTS,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(2)
    ]
    try:
        outs = [node.communicate(timeout=timeout)[0] for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
    for rank, (node, out) in enumerate(zip(nodes, outs)):
        assert node.returncode == 0, f'node {rank}:\n{out[-6000:]}'


def dist_test(config, checkpoint, work_dir):
    return run(
        [
            'bash',
            osp.join(REPO, 'tools', 'dist_test.sh'),
            config,
            checkpoint,
            str(NPROC),
            '--work-dir',
            work_dir,
        ]
    )


def single_test(config, checkpoint, work_dir):
    return run(
        [
            sys.executable,
            osp.join(REPO, 'tools', 'test.py'),
            config,
            checkpoint,
            '--work-dir',
            work_dir,
        ]
    )


def probe_records(work_dir, world_size):
    records = []
    for rank in range(world_size):
        path = osp.join(work_dir, f'probe_rank{rank}.json')
        assert osp.isfile(path), f'rank {rank} did not finish its run'
        with open(path) as f:
            records.append(json.load(f))
    assert [(r['rank'], r['world_size']) for r in records] == [
        (rank, world_size) for rank in range(world_size)
    ]
    return records


def checkpoint_name(path):
    """The checkpoint a written file becomes (``.iter_2.pth.part`` -> ``iter_2.pth``)."""
    name = osp.basename(path).lstrip('.')
    return name[: name.index('.pth') + len('.pth')]


def finish(cfg, tmp_path, name):
    """Common shortening: gloo, quiet log, probe hook; dumps ``tmp_path/<name>.py``."""
    cfg.env_cfg.dist_cfg = dict(backend='gloo', timeout=300)
    cfg.log_level = 'WARNING'
    cfg.randomness = dict(seed=0)
    cfg.custom_imports.imports = list(cfg.custom_imports.imports) + ['distributed_probe']
    cfg.custom_hooks = list(cfg.custom_hooks) + [dict(type='DistributedProbeHook')]
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[loader].update(num_workers=0, persistent_workers=False)
    cfg.train_dataloader.batch_size = 2
    # one image per forward: the same computation however the images are split over ranks
    cfg.val_dataloader.batch_size = cfg.test_dataloader.batch_size = 1
    path = str(tmp_path / f'{name}.py')
    cfg.dump(path)
    return path


def train_and_check(tmp_path, config, checkpoints, deploy_config, two_nodes=False):
    """2-process training, then the single-process test of its deploy checkpoint.

    Returns both ranks' probe records and the single-process test's record."""
    work_dir = str(tmp_path / 'work')
    (dist_train_two_nodes if two_nodes else dist_train)(config, work_dir)
    records = probe_records(work_dir, NPROC)
    assert all('DistributedDataParallel' in r['wrapper'] for r in records)
    # one file per save point, written by rank 0 only (mmengine rewrites the last checkpoint
    # after saving a new best one: a second write of the same file, also in 1-process runs)
    assert sorted(f for f in os.listdir(work_dir) if f.endswith('.pth')) == sorted(checkpoints)
    assert set(map(checkpoint_name, records[0]['pth_writes'])) == set(checkpoints)
    assert records[1]['pth_writes'] == []
    # validation (during training, at the last step) ran on the deploy model on both ranks, and
    # both got the metrics of the whole set
    for r in records:
        assert [e['mode'] for e in r['evaluated']] == ['val'] and r['evaluated'][0]['deploy']
    # ... the same model on both ranks (rank 0's: BN statistics differ between ranks) ...
    assert records[0]['evaluated'][0]['state_sha1'] == records[1]['evaluated'][0]['state_sha1']
    assert len(records[0]['metrics']) == 1 and records[0]['metrics'] == records[1]['metrics']
    # the same weights (the deploy checkpoint), one process
    deploy = [c for c in checkpoints if c.endswith('_deploy.pth')][0]
    single_dir = str(tmp_path / 'test1')
    single_test(osp.join(work_dir, deploy_config), osp.join(work_dir, deploy), single_dir)
    single = probe_records(single_dir, 1)[0]
    assert single['metrics'][0].keys() == records[0]['metrics'][0].keys()
    for key, value in single['metrics'][0].items():
        assert records[0]['metrics'][0][key] == pytest.approx(value, abs=1e-4), key
    return records, single, work_dir


def test_detection_two_processes(tmp_path):
    # 8 images / (2 ranks x 2) = 2 steps
    cfg = short_detection_config(str(tmp_path), num_train=8, num_val=NUM_VAL)
    config = finish(cfg, tmp_path, 'ssdlite_mobileone_s0_coco')
    records, single, _ = train_and_check(
        tmp_path,
        config,
        ['epoch_1.pth', 'epoch_1_deploy.pth'],
        'ssdlite_mobileone_s0_coco_deploy.py',
    )
    assert single['metrics'][0]['coco/bbox_mAP_50'] > 0  # a repeated image would change it


def test_segmentation_two_processes_keep_syncbn(tmp_path):
    cfg = short_segmentation_config(str(tmp_path), max_iters=2, num_val=NUM_VAL)
    cfg.model_wrapper_cfg = dict(
        type='CPUSyncBNDistributedDataParallel',
        broadcast_buffers=False,
        find_unused_parameters=False,
    )
    # 2 steps: a larger lr and EMA momentum than the recipe's, so the validated (EMA) model
    # predicts some pixels right and the mIoU is not 0 (a repeated image would then change it)
    cfg.optim_wrapper.optimizer.lr = 1e-2
    next(h for h in cfg.custom_hooks if h['type'] == 'EMAHook').momentum = 0.9
    config = finish(cfg, tmp_path, 'deeplabv3_mobileone_s0_voc')
    records, single, _ = train_and_check(
        tmp_path,
        config,
        ['iter_2.pth', 'iter_2_deploy.pth'],
        'deeplabv3_mobileone_s0_voc_deploy.py',
    )
    for r in records:  # the Runner kept SyncBN in the distributed run ...
        assert r['sync_bn'] > 0 and r['bn'] == 0, r
    assert single['sync_bn'] == 0  # ... and reverted it in the single-process one
    assert 0 < single['metrics'][0]['mIoU'] < 100


def test_classification_two_processes(tmp_path):
    # 5 classes (of 1000, an untrained model gets top-1 = top-5 = 0); 2 epochs (warm-up, then
    # cosine), validated and saved after the second; 5 images: one step of 2 per rank and epoch
    cfg = short_classification_config(str(tmp_path), num_classes=NUM_VAL)
    config = finish(cfg, tmp_path, 'mobileone_s0_imagenet')
    records, single, work_dir = train_and_check(
        tmp_path,
        config,
        ['epoch_2.pth', 'best_accuracy_top1_epoch_2.pth', 'epoch_2_deploy.pth'],
        'mobileone_s0_imagenet_deploy.py',
        two_nodes=True,
    )
    top1 = single['metrics'][0]['accuracy/top1']
    assert 0 < top1 < 100  # k of 5 images: a repeated one would change it
    # dist_test.sh on the training checkpoint: re-parameterized in place on both ranks, same metric
    test_dir = str(tmp_path / 'test2')
    dist_test(config, osp.join(work_dir, 'epoch_2.pth'), test_dir)
    tested = probe_records(test_dir, NPROC)
    for r in tested:
        assert [(e['mode'], e['deploy']) for e in r['evaluated']] == [('test', True)]
        assert r['evaluated'][0]['state_sha1'] == tested[0]['evaluated'][0]['state_sha1']
        assert r['pth_writes'] == []
        assert r['metrics'][0]['accuracy/top1'] == pytest.approx(top1, abs=1e-4)


def test_syncbn_switches_off_with_cfg_options():
    """The seg configs build SyncBN; the documented --cfg-options make them plain BN."""
    path = osp.join(REPO, 'configs', 'deeplabv3_mobileone_s0_voc.py')
    cfg = load_config(path, None, 'pytorch', None)
    keys = sync_bn_keys(cfg.model)
    assert keys == ['model.backbone.norm_cfg', 'model.decode_head.norm_cfg']
    switched = load_config(path, {f'{key}.type': 'BN' for key in keys}, 'pytorch', None)
    assert sync_bn_keys(switched.model) == []
    init_default_scope(cfg.default_scope)
    for config, sync in ((cfg, True), (switched, False)):
        norms = [
            m
            for m in MODELS.build(config.model).modules()
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
        ]
        assert norms and all(isinstance(m, torch.nn.SyncBatchNorm) == sync for m in norms)


@pytest.mark.skipif(torch.cuda.is_available(), reason='the CPU-only path')
@pytest.mark.parametrize('case', ['nccl', 'syncbn'])
def test_cpu_distributed_run_names_the_fix(case):
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'deeplabv3_mobileone_s0_voc.py'))
    cfg.launcher = 'pytorch'
    if case == 'syncbn':
        cfg.env_cfg.dist_cfg.backend = 'gloo'
    with pytest.raises(SystemExit) as error:
        setup_cpu_distributed(cfg)  # fails before starting any process group
    expected = (
        'env_cfg.dist_cfg.backend=gloo'
        if case == 'nccl'
        else '--cfg-options model.backbone.norm_cfg.type=BN model.decode_head.norm_cfg.type=BN'
    )
    assert expected in str(error.value)
    assert not torch.distributed.is_initialized()


@pytest.mark.parametrize('script', ['dist_train.sh', 'dist_test.sh'])
def test_dist_scripts_print_usage(script):
    result = subprocess.run(
        ['bash', osp.join(REPO, 'tools', script)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2 and 'usage:' in result.stderr
