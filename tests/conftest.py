import os

import pytest
import torch
from background_runs import RUNS, SUITE_THREADS, BackgroundRuns, apply_thread_policy, order_of

# Two cores: keep intra-op threads fixed so the suite's run time is predictable.
torch.set_num_threads(SUITE_THREADS)

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
    # pytest-xdist's own mark (``--dist loadgroup``), declared for runs without the plugin
    config.addinivalue_line('markers', 'xdist_group(name): tests that share one xdist worker')


def pytest_collection_modifyitems(session, config, items):
    """The tests that need a training run (``background_runs.py``) go last, in the order of
    `RUNS`; the others keep their order and run while the runs train."""
    order = {id(item): order_of(item.fixturenames) for item in items}
    items.sort(key=lambda item: order[id(item)])  # stable
    config.stash[_NEEDED] = {name for item in items for name in RUNS if name in item.fixturenames}


_NEEDED = pytest.StashKey[set]()
_RUNS: BackgroundRuns = None


@pytest.fixture(scope='session', autouse=True)
def training_runs(request, tmp_path_factory):
    """Starts the training runs the collected tests need, in the background."""
    global _RUNS
    _RUNS = BackgroundRuns()
    folders = {name: str(tmp_path_factory.mktemp(name)) for name in RUNS}
    _RUNS.start(request.config.stash.get(_NEEDED, set()), folders.get)
    yield (_RUNS, folders.get)
    _RUNS.stop()
    _SUMMARY.append(_RUNS.summary())
    _RUNS = None


_SUMMARY = []  # the runs' durations, printed after the test results


def pytest_terminal_summary(terminalreporter):
    for line in _SUMMARY:
        terminalreporter.write_line(line)


def pytest_runtest_setup(item):
    apply_thread_policy(_RUNS)


def _run_result(training_runs, name):
    runs, folder_of = training_runs
    result = runs.result(name, folder_of)
    apply_thread_policy(runs)
    return result


@pytest.fixture(scope='session')
def quickstart(training_runs):
    """The README's first command, ``demo/quickstart.py`` with its defaults, under the mmcv
    kernel guard: the trained detector every detection test of the session reuses
    (``trained_runs.prepare_quickstart``)."""
    return _run_result(training_runs, 'quickstart')


@pytest.fixture(scope='session')
def learned_segmentor(training_runs):
    """DeepLabV3-S0 trained until it segments generated VOC shapes, through tools/train.py, and
    tested (training and deploy checkpoints) by tools/test.py:
    ``trained_runs.prepare_segmentor``."""
    return _run_result(training_runs, 'learned_segmentor')


@pytest.fixture(scope='session')
def learned_classifier(training_runs):
    """MobileOne-S0 classifier trained until it classifies a generated ImageNet folder, through
    tools/train.py: ``trained_runs.prepare_classifier``."""
    return _run_result(training_runs, 'learned_classifier')


@pytest.fixture(scope='session')
def s2_resumed_run(training_runs):
    """S2 with AutoAugment, stopped inside curriculum stage 2 and resumed:
    ``trained_runs.prepare_s2_resume``."""
    return _run_result(training_runs, 's2_resumed_run')
