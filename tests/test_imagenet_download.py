"""The backbone's ImageNet checkpoint by URL: downloaded once into torch's hub cache, never a
hang, never a partial file at the cache path, rank 0 first, and one-line errors that say what to
do (offline, no answer, a corrupt cached file, a cached file of another arch).

The network is blocked for the whole suite (conftest ``no_network``: HTTP(S) through a proxy on
a refusing local port); local servers stand in for Apple's, with ``no_proxy`` for 127.0.0.1.
Each test has its own empty torch hub cache and a 1 s download timeout.
"""

import contextlib
import http.server
import json
import os
import os.path as osp
import socket
import subprocess
import sys
import threading
import time

import pytest
import torch
from apple_reference import apple_imagenet_url, save_apple_checkpoint
from mmengine.config import Config

from mobileone_dense import MobileOne
from mobileone_dense.converters import backbone_state_dict, convert_state_dict
from mobileone_dense.converters.download import TIMEOUT_VARIABLE
from mobileone_dense.errors import CheckpointError, ConfigError, DownloadError, WeightsMismatchError

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
FILE = 'mobileone_s0_unfused.pth.tar'  # Apple's file name for S0
SCRATCH = '--cfg-options model.backbone.init_cfg=None'


@pytest.fixture(scope='module')
def s0_settings() -> dict:
    """The S0 detection config's backbone (Apple's S0 URL as its init), parsed once."""
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'ssdlite_mobileone_s0_coco.py'))
    return {k: v for k, v in cfg.model.backbone.items() if k != 'type'}


def s0_backbone(settings: dict, url: str = None) -> MobileOne:
    settings = dict(settings)
    if url is not None:
        settings['init_cfg'] = dict(settings['init_cfg'], checkpoint=url)
    return MobileOne(**settings)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> str:
    """An empty torch hub cache folder of this test (``$TORCH_HOME/hub/checkpoints``) and a 1 s
    download timeout; returns the folder (not created)."""
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    monkeypatch.setenv(TIMEOUT_VARIABLE, '1')
    return str(tmp_path / 'torch_home' / 'hub' / 'checkpoints')


@pytest.fixture(scope='module')
def s0_file(tmp_path_factory):
    """Bytes of a stand-in for Apple's S0 checkpoint, and the Apple model it holds."""
    path = str(tmp_path_factory.mktemp('apple') / FILE)
    model = save_apple_checkpoint('s0', path)
    with open(path, 'rb') as f:
        return f.read(), model


class _Handler(http.server.BaseHTTPRequestHandler):
    """Answers ``GET /<name>`` from ``server.routes[name]``: ``(body, announced length, seconds
    to wait before the body, seconds to stall after it)``; other names get 404."""

    def do_GET(self):
        name = self.path.lstrip('/')
        self.server.requests.append(name)
        if name not in self.server.routes:
            self.send_error(404)
            return
        body, announced, delay, stall = self.server.routes[name]
        time.sleep(delay)
        self.send_response(200)
        self.send_header('Content-Length', str(announced))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()
        time.sleep(stall)

    def log_message(self, *args):
        pass


class _Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # a client that gave up (the timeout tests): expected, not worth a traceback


@contextlib.contextmanager
def serving(monkeypatch, routes: dict):
    """A local HTTP server (a thread) reached without the suite's proxy; yields (base URL,
    the list of requested names)."""
    server = _Server(('127.0.0.1', 0), _Handler)
    server.routes, server.requests = routes, []
    for name in ('no_proxy', 'NO_PROXY'):
        monkeypatch.setenv(name, '127.0.0.1')
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f'http://127.0.0.1:{server.server_address[1]}', server.requests
    finally:
        server.shutdown()
        server.server_close()


def assert_one_line(message: str, *parts: str) -> None:
    assert '\n' not in message, message
    for part in parts:
        assert part in message, (part, message)


def test_no_network_and_no_cached_file_fail_at_once_naming_url_cache_path_and_scratch(
    s0_settings, cache
):
    backbone = s0_backbone(s0_settings)
    start = time.monotonic()
    with pytest.raises(DownloadError) as error:
        backbone.init_weights()
    assert time.monotonic() - start < 5
    # the refusing proxy: the connection is refused
    assert_one_line(str(error.value), apple_imagenet_url('s0'), osp.join(cache, FILE), SCRATCH)
    assert 'refused' in str(error.value)
    assert os.listdir(cache) == []  # no partial file


def test_a_network_that_never_answers_times_out(s0_settings, cache, monkeypatch):
    """A proxy that accepts connections and never answers: the download gives up after the
    timeout (``$MOBILEONE_DENSE_DOWNLOAD_TIMEOUT``, 1 s here) instead of hanging."""
    with socket.socket() as silent:
        silent.bind(('127.0.0.1', 0))
        silent.listen(8)  # the kernel accepts; nobody reads or answers
        for name in ('https_proxy', 'HTTPS_PROXY'):
            monkeypatch.setenv(name, f'http://127.0.0.1:{silent.getsockname()[1]}')
        start = time.monotonic()
        with pytest.raises(DownloadError) as error:
            s0_backbone(s0_settings).init_weights()
        assert time.monotonic() - start < 10
    assert_one_line(str(error.value), 'no answer within 1 s', osp.join(cache, FILE), SCRATCH)
    assert os.listdir(cache) == []


@pytest.mark.parametrize('how', ['cut', 'stall'])
def test_an_interrupted_download_leaves_no_file(s0_settings, cache, monkeypatch, how):
    """A body cut short (the server announced more bytes) or stalling past the timeout: an
    error, and nothing at the cache path (the bytes went to a temporary file, removed)."""
    route = (b'x' * 100, 1000, 0, 0 if how == 'cut' else 3)
    with serving(monkeypatch, {FILE: route}) as (base, _):
        with pytest.raises(DownloadError) as error:
            s0_backbone(s0_settings, f'{base}/{FILE}').init_weights()
    reason = 'stopped after 100 of 1000 bytes' if how == 'cut' else 'no answer within 1 s'
    assert_one_line(str(error.value), reason, osp.join(cache, FILE))
    assert os.listdir(cache) == []


def test_download_lands_in_the_hub_cache_once_and_loads(s0_settings, s0_file, cache, monkeypatch):
    body, apple = s0_file
    with serving(monkeypatch, {FILE: (body, len(body), 0, 0)}) as (base, requests):
        for _ in range(2):  # the second run reads the cache
            backbone = s0_backbone(s0_settings, f'{base}/{FILE}')
            backbone.init_weights()
    assert requests == [FILE]
    assert os.listdir(cache) == [FILE]
    expected = backbone_state_dict(convert_state_dict(apple.state_dict()))
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, expected[key]), key


@pytest.mark.parametrize('content', ['truncated', 'not a checkpoint'])
def test_a_corrupt_cached_file_names_the_file_to_delete(s0_settings, s0_file, cache, content):
    os.makedirs(cache)
    path = osp.join(cache, FILE)
    with open(path, 'wb') as f:
        f.write(s0_file[0][:5000] if content == 'truncated' else b'<html>not found</html>')
    with pytest.raises(CheckpointError) as error:
        s0_backbone(s0_settings).init_weights()
    assert_one_line(str(error.value), repr(path), 'delete it')


@pytest.mark.parametrize('holds', ['s1', 'other weights'])
def test_a_cached_file_of_another_arch_names_its_arch(s0_settings, cache, holds):
    path = osp.join(cache, FILE)
    if holds == 's1':
        save_apple_checkpoint('s1', path)  # S1 weights under S0's name
    else:
        os.makedirs(cache)
        torch.save({'conv.weight': torch.zeros(1)}, path)
    with pytest.raises(WeightsMismatchError) as error:
        s0_backbone(s0_settings).init_weights()
    holds = 'MobileOne-s1 backbone' if holds == 's1' else 'no MobileOne weights'
    expected = (repr(path), holds, 'not weights of the MobileOne-s0', 'delete')
    assert_one_line(str(error.value), *expected)


def test_a_bad_timeout_setting_is_named(s0_settings, cache, monkeypatch):
    monkeypatch.setenv(TIMEOUT_VARIABLE, 'soon')
    with pytest.raises(ConfigError, match=f"{TIMEOUT_VARIABLE}='soon'"):
        s0_backbone(s0_settings).init_weights()


# Two processes of a gloo group, each asking for a missing file (404), then for a file the
# server answers after a delay: rank 0 downloads it while rank 1 waits at the barrier and then
# finds it in the cache (without the barrier rank 1 would not find it and download it too).
# The ranks import only the download module and the errors (bare parent packages): the
# package's own __init__ registers every model, seconds per process on two cores.
_RANK = """
import json, os, sys, types
for name in ('mobileone_dense', 'mobileone_dense.converters'):
    package = sys.modules[name] = types.ModuleType(name)
    package.__path__ = [os.path.join(sys.argv[1], *name.split('.'))]
import torch.distributed as dist
from mobileone_dense.converters.download import cached_download
from mobileone_dense.errors import DownloadError
rank, port, base = int(sys.argv[2]), sys.argv[3], sys.argv[4]
dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank, world_size=2)
try:
    cached_download(base + '/missing.pth')
    failure = None
except DownloadError as error:
    failure = str(error)
print(json.dumps(dict(failure=failure, path=cached_download(base + '/weights.pth'))))
dist.destroy_process_group()
"""


def test_rank_0_downloads_first_the_others_read_the_cache(cache, monkeypatch):
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = str(s.getsockname()[1])
    monkeypatch.setenv(TIMEOUT_VARIABLE, '30')
    route = (b'w' * 1000, 1000, 1, 0)  # answered after 1 s
    with serving(monkeypatch, {'weights.pth': route}) as (base, requests):
        ranks = [
            subprocess.Popen(
                [sys.executable, '-c', _RANK, REPO, str(rank), port, base],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=dict(os.environ, OMP_NUM_THREADS='1'),
            )
            for rank in range(2)
        ]
        outs = [rank.communicate(timeout=120) for rank in ranks]
    for rank, (out, err) in zip(ranks, outs):
        assert rank.returncode == 0, err[-3000:]
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert requests.count('weights.pth') == 1  # rank 0's download only
    assert [r['path'] for r in results] == [osp.join(cache, 'weights.pth')] * 2
    for r in results:  # the failed download on rank 0 did not leave rank 1 at the barrier
        assert_one_line(r['failure'], 'HTTP 404', osp.join(cache, 'missing.pth'))
    assert sorted(os.listdir(cache)) == ['weights.pth']


def test_train_tool_without_network_exits_with_one_line(tmp_path, cache):
    """tools/train.py with the default config, no network and no cached file: exit status 1,
    the one-line error, no traceback (the data checks pass first: generated COCO data)."""
    from mobileone_dense.datasets import make_coco_shapes

    data = str(tmp_path / 'coco') + '/'
    make_coco_shapes(data, num_train=2, num_val=1, image_size=(64, 64))
    loaders = ('train_dataloader', 'val_dataloader', 'test_dataloader')
    options = [f'{loader}.dataset.data_root={data}' for loader in loaders]
    options += [f'{loader}.num_workers=0' for loader in loaders]
    options += [f'{loader}.persistent_workers=False' for loader in loaders]
    options.append(f'val_evaluator.ann_file={data}annotations/instances_val2017.json')
    result = subprocess.run(
        [
            sys.executable,
            osp.join(REPO, 'tools', 'train.py'),
            osp.join(REPO, 'configs', 'ssdlite_mobileone_s0_coco.py'),
            '--work-dir',
            str(tmp_path / 'work'),
            '--cfg-options',
            *options,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, OMP_NUM_THREADS='1'),
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert 'Traceback' not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f'error: cannot download {apple_imagenet_url("s0")}'), last
    assert_one_line(last, osp.join(cache, FILE), SCRATCH)
