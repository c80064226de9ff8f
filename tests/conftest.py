import os
import socket

import pytest
import torch
from apple_reference import apple_imagenet_url, save_apple_checkpoint
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


PROXY_VARIABLES = ('http_proxy', 'https_proxy', 'HTTP_PROXY', 'HTTPS_PROXY')


@pytest.fixture(scope='session', autouse=True)
def no_network(tmp_path_factory):
    """Nothing in the suite reaches the network, and a test that tries fails at once, loudly.

    torch's hub cache (``TORCH_HOME``) is an empty folder of the session, and every HTTP(S)
    request goes through a proxy on a local port that refuses connections (bound, never
    listening: no other process can take it), so a config's ImageNet download raises our
    offline error instead of downloading; subprocesses inherit both. Tests that need Apple's
    checkpoints seed the cache (``apple_checkpoints``). Yields the refusing proxy's URL.
    """
    refusing = socket.socket()
    refusing.bind(('127.0.0.1', 0))
    proxy = f'http://127.0.0.1:{refusing.getsockname()[1]}'
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv('TORCH_HOME', str(tmp_path_factory.mktemp('torch_home')))
        for name in PROXY_VARIABLES:
            patch.setenv(name, proxy)
        for name in ('no_proxy', 'NO_PROXY'):
            patch.delenv(name, raising=False)
        patch.setenv('PIP_DISABLE_PIP_VERSION_CHECK', '1')  # pip's own look-up of its version
        yield proxy
    refusing.close()


@pytest.fixture(scope='session')
def apple_checkpoints(no_network):
    """``apple_checkpoints('s1')``: writes a stand-in for Apple's ``mobileone_s1_unfused.pth.tar``
    (random weights in Apple's layout, ``apple_reference.save_apple_checkpoint``) where the
    configs' download would put it, in the session's torch hub cache; returns the Apple model
    (eval) it holds. Each arch is made once per session, when a test first asks for it."""
    from mobileone_dense.converters.download import hub_cache_path

    made = {}

    def seed(arch: str):
        if arch not in made:
            made[arch] = save_apple_checkpoint(arch, hub_cache_path(apple_imagenet_url(arch)))
        return made[arch]

    return seed


@pytest.fixture(scope='session', autouse=True)
def training_runs(request, tmp_path_factory, no_network):
    """Starts the training runs the collected tests need, in the background (after
    ``no_network``: the runs inherit its environment)."""
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
