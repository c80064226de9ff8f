"""GPU readiness on any machine: the setup's GPU check with fake drivers, the device the logs
name, the GPU benchmark's code paths on the CPU."""

import json
import os
import os.path as osp
import stat
import subprocess
import sys

import pytest
import torch

from mobileone_dense.analysis import throughput as tp
from mobileone_dense.analysis.throughput_report import format_throughput
from mobileone_dense.engine.runner import describe_device

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
PREFLIGHT = osp.join(REPO, 'tools', 'gpu_preflight.py')


def preflight(tmp_path, nvidia_smi=None, **env):
    """Run tools/gpu_preflight.py with a fake ``nvidia-smi`` (a script printing ``nvidia_smi``,
    or failing if it is an int) first on PATH; None: no nvidia-smi at all."""
    folder = tmp_path / 'bin'
    folder.mkdir(exist_ok=True)
    path = [str(folder)]
    if nvidia_smi is not None:
        script = folder / 'nvidia-smi'
        body = (
            f'echo "{nvidia_smi}"'
            if isinstance(nvidia_smi, str)
            else f'echo "NVIDIA-SMI has failed" >&2; exit {nvidia_smi}'
        )
        script.write_text(f'#!/bin/sh\n{body}\n')
        script.chmod(script.stat().st_mode | stat.S_IEXEC)
    # only the interpreter's folder besides: no real nvidia-smi can be found
    path.append(osp.dirname(sys.executable))
    result = subprocess.run(
        [sys.executable, PREFLIGHT],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, PATH=os.pathsep.join(path), **env),
    )
    return result.returncode, result.stdout + result.stderr


def test_no_gpu_means_cpu_setup(tmp_path):
    code, out = preflight(tmp_path)
    assert code == 0 and 'no NVIDIA GPU' in out


@pytest.mark.skipif(torch.version.cuda is None, reason='needs a CUDA build of torch')
def test_driver_too_old_for_the_torch_build_stops_and_says_what_to_do(tmp_path):
    code, out = preflight(tmp_path, 'NVIDIA A100-SXM4-80GB, 535.104.05')
    assert code == 1
    major = int(torch.version.cuda.split('.')[0])
    assert '535.104.05' in out and f'CUDA {torch.version.cuda}' in out and 'A100' in out
    if major >= 13:
        assert 'needs driver >= 580.65.06' in out
        assert 'download.pytorch.org/whl/cu126' in out  # a build the driver runs
    assert 'MOBILEONE_DENSE_ALLOW_CPU=1' in out
    code, out = preflight(
        tmp_path, 'NVIDIA A100-SXM4-80GB, 535.104.05', MOBILEONE_DENSE_ALLOW_CPU='1'
    )
    assert code == 0 and 'warning' in out


@pytest.mark.skipif(
    torch.version.cuda is None or torch.cuda.is_available(),
    reason='needs a CUDA build of torch on a machine without a usable GPU',
)
def test_new_enough_driver_but_no_usable_gpu_stops(tmp_path):
    code, out = preflight(tmp_path, 'NVIDIA H200, 580.159.03', CUDA_VISIBLE_DEVICES='')
    assert code == 1
    assert 'torch cannot use the GPU' in out and "CUDA_VISIBLE_DEVICES is ''" in out


def test_failing_nvidia_smi_is_reported(tmp_path):
    code, out = preflight(tmp_path, 9)
    assert code == 1 and 'nvidia-smi is installed but failed' in out
    assert 'NVIDIA-SMI has failed' in out


def test_the_log_names_the_device():
    model = torch.nn.Linear(2, 2)
    text = describe_device(model)
    if torch.cuda.is_available():
        assert text == 'cpu'
        assert describe_device(model.cuda()).startswith('cuda:0 (')
    else:
        assert text.startswith('cpu (torch ') and 'sees no CUDA GPU' in text


def test_throughput_rows_on_the_cpu(tmp_path):
    """Every inference and training row of a tiny throughput run is measured (no error), with
    the settings it names, and the tables print ratios to MobileNetV2."""
    settings = tp.ThroughputSettings(
        device='cpu',
        inference_models=(('cls', ('s0',)),),
        batches=(1, 2),
        dtypes=('float32', 'bfloat16'),
        input_size={'cls': 32},
        train_archs=('s0',),
        reference_archs=('s0',),
        train_settings=((2, 32),),
        warmup=1,
        rounds=2,
        min_round_s=0.0,
    )
    before, torch.backends.cudnn.benchmark = torch.backends.cudnn.benchmark, False
    result = tp.run_throughput(settings, log=lambda line: None)
    rows = result['rows']
    inference = {
        (r['model'], r['form'], r['dtype'], r['batch']) for r in rows if r['kind'] == 'inference'
    }
    for form in ('train-time', 'deploy'):
        for dtype in ('float32', 'bfloat16'):
            assert {(tp.OUR_NAMES['cls'], form, dtype, b) for b in (1, 2)} <= inference
    training = {
        (r['form'], r['dtype'], r['channels_last']) for r in rows if r['kind'] == 'training'
    }
    assert training == {
        (form, dtype, cl)
        for form in ('mobilenet_v2', 'train-time', 'plain', 'mmpretrain')
        for dtype in ('float32', 'amp')
        for cl in (False, True)
    }
    for row in rows:
        if row['kind'] == 'training' and row['channels_last']:
            # never run on the CPU (a torch / oneDNN crash), skipped with the reason
            assert row['error'] == tp.CPU_CHANNELS_LAST_TRAINING and row['images_per_s'] is None
            continue
        assert row['error'] is None, row
        assert row['images_per_s'] == pytest.approx(row['batch'] / row['ms_per_batch'] * 1e3)
    assert torch.backends.cudnn.benchmark is False  # restored (it is on while measuring)
    torch.backends.cudnn.benchmark = before
    table = format_throughput(rows)
    assert 'training step time relative to MobileNetV2' in table and 'b2@32 amp CL' in table
    json.dumps(result)  # JSON-ready


def test_training_step_updates_the_weights():
    model = tp.classifier_network('s0', 'plain')
    before = [p.detach().clone() for p in model.parameters()]
    tp.train_step(model, 2, 32, 'cpu', amp=False, channels_last=False)()
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


def test_over_budget_rows_are_marked_skipped():
    settings = tp.ThroughputSettings(device='cpu', budget_s=0.0)
    clock = tp.Clock(settings.budget_s)
    row = tp._measure(
        tp.ThroughputRow('inference', 'm', 's0', 'deploy', 1, 32, 'float32'),
        lambda: lambda: None,
        settings,
        clock,
    )
    assert row.images_per_s is None and row.error.startswith('skipped')
