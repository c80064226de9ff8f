import os

import pytest
import torch

# Two cores: keep intra-op threads fixed so the suite's run time is predictable.
torch.set_num_threads(int(os.environ.get('MOBILEONE_DENSE_TEST_THREADS', '2')))

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def repo_root() -> str:
    return REPO_ROOT


def pytest_configure(config):
    config.addinivalue_line(
        'markers',
        'cuda: runs on a CUDA GPU (tests/test_cuda.py; skipped '
        'without one; tools/cuda_check.sh runs them)',
    )


@pytest.fixture(scope='session')
def quickstart(tmp_path_factory):
    """One run of the README's first command, ``demo/quickstart.py`` with its defaults (train,
    deploy validation, test, demo), with mmcv's kernels disabled (``mmcv_kernel_guard.py``):
    the trained detector every detection test of the session reuses.

    Returns the work dir, the generated data root, the printed output, the exit status and the
    file the guard records any mmcv kernel call in.
    """
    import subprocess
    import sys
    import time

    root = tmp_path_factory.mktemp('quickstart')
    work_dir, log = root / 'work', root / 'mmcv_kernels.log'
    start = time.time()
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO_ROOT, 'tests', 'mmcv_kernel_guard.py'),
            '--log',
            str(log),
            os.path.join(REPO_ROOT, 'demo', 'quickstart.py'),
            '--work-dir',
            str(work_dir),
        ],
        capture_output=True,
        text=True,
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


@pytest.fixture(scope='session')
def learned_segmentor(tmp_path_factory):
    """DeepLabV3-S0 trained until it segments generated VOC shapes, through tools/train.py, and
    tested (training and deploy checkpoints) by tools/test.py: ``trained_runs.learn_segmentor``."""
    from trained_runs import learn_segmentor

    return learn_segmentor(str(tmp_path_factory.mktemp('seg_learn')))


@pytest.fixture(scope='session')
def learned_classifier(tmp_path_factory):
    """MobileOne-S0 classifier trained until it classifies a generated ImageNet folder, through
    tools/train.py: ``trained_runs.learn_classifier``."""
    from trained_runs import learn_classifier

    return learn_classifier(str(tmp_path_factory.mktemp('cls_learn')))
