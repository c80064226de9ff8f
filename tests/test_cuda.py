"""Every path on a CUDA GPU: training (float32 and --amp), deploy validation, tools/test.py, the
demo, reparameterization exactness, ONNX export of a GPU model, NCCL with SyncBN, the GPU
benchmark.

Skipped where torch sees no GPU. ``tools/cuda_check.sh`` runs them (``pytest -m cuda``) on a GPU
machine. ``MOBILEONE_DENSE_TEST_DEVICE=cpu`` runs the same tests on the CPU (all but AMP and
NCCL), which is how they are checked on machines without a GPU.

Each task's real S0 config on tiny generated data (``tests/short_configs.py``), 10 training
iterations. With mmcv's kernels disabled (``tests/mmcv_kernel_guard.py``): on a GPU, the
CPU-ops mmcv of ``tools/setup_env.sh`` has none for CUDA tensors, and on the CPU the guard makes
any path that would need one fail the same way.
"""

import copy
import json
import os
import os.path as osp
import socket
import subprocess
import sys

import cv2
import pytest
import torch
from mmengine.config import Config
from short_configs import (
    short_classification_config,
    short_detection_config,
    short_segmentation_config,
)

from mobileone_dense.analysis.deploy_check import randomize_batch_norm
from mobileone_dense.apis import build_model_from_config
from mobileone_dense.deploy import check_onnx_parity, export_onnx
from mobileone_dense.engine.deploy_checkpoints import max_relative_difference, output_tensors
from mobileone_dense.models.reparameterize import reparameterize

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TESTS = osp.join(REPO, 'tests')
DEVICE = os.environ.get('MOBILEONE_DENSE_TEST_DEVICE', 'cuda')
ON_GPU = DEVICE == 'cuda'
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        ON_GPU and not torch.cuda.is_available(),
        reason='no CUDA GPU (torch.cuda.is_available() is False); '
        'tools/cuda_check.sh runs these on a GPU machine',
    ),
]
needs_gpu = pytest.mark.skipif(not ON_GPU, reason='needs a CUDA GPU (AMP, NCCL)')

TASKS = ('detection', 'segmentation', 'classification')
NAMES = {
    'detection': 'ssdlite_mobileone_s0_coco',
    'segmentation': 'deeplabv3_mobileone_s0_voc',
    'classification': 'mobileone_s0_imagenet',
}
METRIC = {
    'detection': 'coco/bbox_mAP_50',
    'segmentation': 'mIoU',
    'classification': 'accuracy/top1',
}
# the last checkpoint of 10 iterations: detection 1 epoch of 20 images / 2, classification
# 2 epochs of 10 / 2, segmentation iteration-based
LAST = {'detection': 'epoch_1', 'segmentation': 'iter_10', 'classification': 'epoch_2'}
INPUT_SIZE = {'detection': 96, 'segmentation': 64, 'classification': 32}


def short_config(task: str, root: str) -> str:
    """The task's S0 config for 10 iterations on generated data, dumped under ``root``."""
    if task == 'detection':
        cfg = short_detection_config(root, num_train=20, num_val=4)
    elif task == 'segmentation':
        cfg = short_segmentation_config(root, max_iters=10, num_val=4)
    else:
        cfg = short_classification_config(root, num_classes=5, per_class=2)
    cfg.train_dataloader.batch_size = 2
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[loader].update(num_workers=0, persistent_workers=False)
    cfg.randomness = dict(seed=0)
    path = osp.join(root, f'{NAMES[task]}.py')
    cfg.dump(path)
    return path


def guarded(tool: str, *args: str, log: str) -> list:
    """The command that runs ``tool`` with mmcv's kernels disabled (calls recorded in ``log``)."""
    return [
        sys.executable,
        osp.join(TESTS, 'mmcv_kernel_guard.py'),
        '--log',
        log,
        osp.join(REPO, tool),
        *args,
    ]


def run(command: list, timeout: int = 600) -> str:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([TESTS, os.environ.get('PYTHONPATH', '')]))
    if not ON_GPU:
        env['CUDA_VISIBLE_DEVICES'] = ''
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, env=env, cwd=TESTS
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-6000:]
    return out


def assert_no_mmcv_kernel(log: str) -> None:
    assert not osp.exists(log), f'mmcv kernels were called: {open(log).read().split()}'


def metric_of(out: str, task: str) -> float:
    line = [line for line in out.splitlines() if f'{METRIC[task]}:' in line][-1]
    return float(line.split(f'{METRIC[task]}:')[1].split()[0])


# one xdist worker per task's tests (``tools/cuda_check.sh`` runs them with ``-n 4 --dist
# loadgroup`` where pytest-xdist is installed): else each worker would train the model again
@pytest.fixture(
    scope='module', params=[pytest.param(t, marks=pytest.mark.xdist_group(t)) for t in TASKS]
)
def trained(request, tmp_path_factory):
    """10 float32 iterations of the task's S0 config through tools/train.py on the device."""
    task = request.param
    root = str(tmp_path_factory.mktemp(task))
    config = short_config(task, root)
    work_dir = osp.join(root, 'work')
    log = osp.join(root, 'mmcv_kernels.log')
    out = run(guarded('tools/train.py', config, '--work-dir', work_dir, log=log))
    return dict(task=task, root=root, config=config, work_dir=work_dir, out=out, log=log)


def test_train_validates_deploy_and_writes_deploy_files(trained):
    task, work_dir, out = trained['task'], trained['work_dir'], trained['out']
    assert_no_mmcv_kernel(trained['log'])
    assert ('model on cuda:0' if ON_GPU else 'model on cpu') in out
    agreement = 'ReparameterizeHook: deploy vs train-time model on a validation batch'
    assert agreement in out
    # shown by `pytest -rA` (tools/cuda_check.sh): the agreement with cuDNN's default TF32
    print(task, next(line for line in out.splitlines() if agreement in line))
    assert f'{METRIC[task]}:' in out  # the deploy model was validated
    assert osp.isfile(osp.join(work_dir, f'{LAST[task]}.pth'))
    assert osp.isfile(osp.join(work_dir, f'{LAST[task]}_deploy.pth'))
    assert osp.isfile(osp.join(work_dir, f'{NAMES[task]}_deploy.py'))


@needs_gpu
@pytest.mark.parametrize('task', TASKS)
def test_train_with_amp(task, tmp_path):
    """``tools/train.py --amp``: mmengine's AmpOptimWrapper (float16 autocast, loss scaling)."""
    config = short_config(task, str(tmp_path))
    work_dir, log = str(tmp_path / 'work'), str(tmp_path / 'mmcv_kernels.log')
    out = run(guarded('tools/train.py', config, '--amp', '--work-dir', work_dir, log=log))
    assert_no_mmcv_kernel(log)
    assert 'model on cuda:0' in out and f'{METRIC[task]}:' in out
    with open(osp.join(work_dir, f'{NAMES[task]}.py')) as f:
        assert 'AmpOptimWrapper' in f.read()
    assert osp.isfile(osp.join(work_dir, f'{LAST[task]}_deploy.pth'))


def test_test_tool_gives_the_same_metric_for_training_and_deploy_checkpoints(trained):
    task, work_dir = trained['task'], trained['work_dir']
    results = []
    for config, checkpoint in [
        (trained['config'], osp.join(work_dir, f'{LAST[task]}.pth')),
        (
            osp.join(work_dir, f'{NAMES[task]}_deploy.py'),
            osp.join(work_dir, f'{LAST[task]}_deploy.pth'),
        ),
    ]:
        out = run(
            guarded(
                'tools/test.py',
                config,
                checkpoint,
                '--work-dir',
                osp.join(trained['root'], 'test'),
                log=trained['log'],
            )
        )
        assert 'testing the re-parameterized (deploy) model' in out or 'nothing to do' in out
        results.append(metric_of(out, task))
    assert_no_mmcv_kernel(trained['log'])
    assert results[0] == pytest.approx(results[1], abs=1e-3)


def test_demo_on_the_device(trained, tmp_path):
    task, work_dir = trained['task'], trained['work_dir']
    image = str(tmp_path / 'photo.jpg')
    cv2.imwrite(image, (torch.rand(120, 160, 3) * 255).byte().numpy())
    out_file = str(tmp_path / 'drawn.png')
    out = run(
        guarded(
            'demo/image_demo.py',
            image,
            osp.join(work_dir, f'{NAMES[task]}_deploy.py'),
            osp.join(work_dir, f'{LAST[task]}_deploy.pth'),
            '--out-file',
            out_file,
            '--device',
            'cuda:0' if ON_GPU else 'cpu',
            '--score-thr',
            '0.0',
            log=trained['log'],
        )
    )
    assert_no_mmcv_kernel(trained['log'])
    drawn = cv2.imread(out_file)  # the photo, plus a legend (segmentation) or panel (top-5)
    assert drawn.shape[0] >= 120 and drawn.shape[1] >= 160 and 'saved' in out, (drawn.shape, out)


def device_model(task: str, root: str):
    """The task's S0 model with random BN statistics (calibrated on random input), on DEVICE."""
    cfg = Config.fromfile(short_config(task, root))
    model = build_model_from_config(cfg).eval()
    size = INPUT_SIZE[task]
    generator = torch.Generator().manual_seed(0)
    calibration = torch.randn(4, 3, size, size, generator=generator)
    randomize_batch_norm(model, seed=0, calibration_inputs=calibration)
    return model.to(DEVICE).eval(), torch.randn(2, 3, size, size, generator=generator).to(DEVICE)


@pytest.mark.parametrize('task', TASKS)
def test_deploy_equals_train_time_on_the_device(task, tmp_path):
    """float32 <= 1e-4 relative; TF32 (on by default for cuDNN convolutions on Ampere and newer)
    is switched off, else the comparison measures TF32's 10-bit mantissa, not the
    reparameterization."""
    model, x = device_model(task, str(tmp_path))
    previous = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.no_grad():
            reference = output_tensors(model(x, mode='tensor'))
            deploy = reparameterize(copy.deepcopy(model))
            assert next(deploy.parameters()).device.type == torch.device(DEVICE).type
            outputs = output_tensors(deploy(x, mode='tensor'))
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = previous
    assert max_relative_difference(outputs, reference) <= 1e-4


@pytest.mark.parametrize('task', TASKS)
def test_onnx_export_of_a_device_model(task, tmp_path):
    model, x = device_model(task, str(tmp_path))
    reparameterize(model)
    path = str(tmp_path / 'model.onnx')
    export_onnx(model, path, tuple(x.shape))
    previous = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # compare float32 with float32
    try:
        assert check_onnx_parity(model, path, x) <= 1e-4
    finally:
        torch.backends.cudnn.allow_tf32 = previous
    assert next(model.parameters()).device.type == torch.device(DEVICE).type


@needs_gpu
def test_nccl_launcher_keeps_syncbn(tmp_path):
    """``torchrun --nproc_per_node=1 tools/train.py SEG --launcher pytorch``: NCCL, DDP, SyncBN
    kept (not reverted to BN as in single-process runs), deploy validation, deploy files."""
    cfg = Config.fromfile(short_config('segmentation', str(tmp_path)))
    assert cfg.env_cfg.dist_cfg.backend == 'nccl'
    cfg.custom_imports.imports = list(cfg.custom_imports.imports) + ['distributed_probe']
    cfg.custom_hooks = list(cfg.custom_hooks) + [dict(type='DistributedProbeHook')]
    config = str(tmp_path / 'deeplabv3_mobileone_s0_voc.py')
    cfg.dump(config)
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    work_dir = str(tmp_path / 'work')
    run(
        [
            sys.executable,
            '-m',
            'torch.distributed.run',
            '--nproc_per_node=1',
            f'--master_port={port}',
            osp.join(REPO, 'tools', 'train.py'),
            config,
            '--launcher',
            'pytorch',
            '--work-dir',
            work_dir,
        ]
    )
    with open(osp.join(work_dir, 'probe_rank0.json')) as f:
        record = json.load(f)
    assert 'DistributedDataParallel' in record['wrapper']
    assert record['sync_bn'] > 0 and record['bn'] == 0, record
    assert record['evaluated'][0]['deploy']
    assert osp.isfile(osp.join(work_dir, 'iter_10_deploy.pth'))


def test_gpu_benchmark_measures_every_row(tmp_path):
    """``tools/benchmark.py --mode throughput`` on the device, tiny: every row has images/s."""
    out_dir = str(tmp_path / 'bench')
    dtypes = ['float32', 'float16'] if ON_GPU else ['float32', 'bfloat16']
    run(
        [
            sys.executable,
            osp.join(REPO, 'tools', 'benchmark.py'),
            '--device',
            DEVICE,
            '--mode',
            'throughput',
            '--task',
            'cls',
            '--arch',
            's0',
            '--input-size',
            '64',
            '--batches',
            '2',
            '--dtypes',
            *dtypes,
            '--train-settings',
            '2x64',
            '--warmup',
            '1',
            '--repeats',
            '2',
            '--out-dir',
            out_dir,
        ]
    )
    with open(osp.join(out_dir, 'throughput.json')) as f:
        rows = json.load(f)['rows']
    assert {r['kind'] for r in rows} == {'inference', 'training'}
    for row in rows:
        assert row['error'] is None and row['images_per_s'] > 0, row
