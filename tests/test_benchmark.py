"""tools/benchmark.py and mobileone_dense.analysis (benchmark, baselines, timing, memory, report):
rows, ratios, outputs, timer syncs, peak memory and its fallback.

Speed itself is never asserted (shared CPU): only that every number is measured, positive and
consistent with the others.
"""

import importlib.util
import json
import math
import os.path as osp
import warnings

import pytest
import torch
from PIL import Image

from mobileone_dense.analysis import baselines, memory, report, timing
from mobileone_dense.analysis import benchmark as bm

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def load_tool():
    spec = importlib.util.spec_from_file_location(
        'benchmark_tool', osp.join(REPO, 'tools', 'benchmark.py')
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_cls_s0_rows_json_plot(tmp_path, capsys):
    out_dir = tmp_path / 'bench'
    threads_before = torch.get_num_threads()
    assert (
        load_tool().main(
            [
                '--task',
                'cls',
                '--arch',
                's0',
                '--input-size',
                '64',
                '--warmup',
                '1',
                '--repeats',
                '2',
                '--threads',
                '1',
                '--matmul-size',
                '128',
                '--compare-settings',
                '--out-dir',
                str(out_dir),
            ]
        )
        == 0
    )
    assert torch.get_num_threads() == threads_before  # the benchmark restores it
    printed = capsys.readouterr().out
    assert 'median ms' in printed and 'PASS' not in printed and 'FAIL' not in printed

    result = json.loads((out_dir / 'benchmark.json').read_text())
    machine = result['machine']
    assert machine['cpu'] and machine['cores'] >= 1 and machine['threads'] == 1
    assert machine['torch'] == torch.__version__ and machine['date']
    assert result['settings']['repeats'] == 2 and result['settings']['input_size'] == 64
    assert result['matmul_peak_gflops'] > 0

    rows = {(r['model'], r['task'], r['form']): r for r in result['rows']}
    # timm and mmpretrain are in requirements.txt; rows for them exist when installed
    libraries = [name for name in ('timm', 'mmpretrain') if importlib.util.find_spec(name)]
    expected = set()
    for task, mnv2 in (
        ('backbone', 'MobileNetV2 features (torchvision)'),
        ('cls', 'MobileNetV2 (torchvision)'),
    ):
        expected |= {
            (mnv2, task, 'as built'),
            (mnv2, task, 'BN folded'),
            ('MobileOne (ours)', task, 'train-time'),
            ('MobileOne (ours)', task, 'deploy'),
        }
        expected |= {(f'MobileOne ({name})', task, 'deploy') for name in libraries}
    assert set(rows) == expected
    for key, row in rows.items():
        assert row['input_shape'] == [1, 3, 64, 64], key
        assert len(row['times_ms']) == 2 and all(t > 0 for t in row['times_ms']), key
        assert row['min_ms'] == min(row['times_ms']) and row['min_ms'] <= row['median_ms'], key
        for name in (
            'params_m',
            'macs_g',
            'gflops',
            'peak_percent',
            'weights_mb',
            'activation_peak_mb',
            'vs_mobilenetv2',
        ):
            assert math.isfinite(row[name]) and row[name] > 0, (key, name)
        assert row['peak_mem_mb'] == pytest.approx(row['weights_mb'] + row['activation_peak_mb'])
        assert row['gflops'] == pytest.approx(2 * row['macs_g'] / (row['median_ms'] / 1e3))

    for task, mnv2 in (
        ('backbone', 'MobileNetV2 features (torchvision)'),
        ('cls', 'MobileNetV2 (torchvision)'),
    ):
        train_time = rows[('MobileOne (ours)', task, 'train-time')]
        deploy = rows[('MobileOne (ours)', task, 'deploy')]
        baseline = rows[(mnv2, task, 'BN folded')]
        # ratios come from the rows' own medians
        assert deploy['deploy_vs_train_time'] == pytest.approx(
            deploy['median_ms'] / train_time['median_ms']
        )
        assert deploy['vs_mobilenetv2'] == pytest.approx(
            deploy['median_ms'] / baseline['median_ms']
        )
        assert baseline['vs_mobilenetv2'] == pytest.approx(1.0)
        assert train_time['deploy_vs_train_time'] is None
        # reparameterizing removes branches: fewer params and MACs; all deploy MobileOnes count
        # the same
        assert deploy['params_m'] < train_time['params_m']
        assert deploy['macs_g'] < train_time['macs_g']
        for library in libraries:
            reference = rows[(f'MobileOne ({library})', task, 'deploy')]
            assert reference['params_m'] == pytest.approx(deploy['params_m'], rel=1e-3)
            assert reference['macs_g'] == pytest.approx(deploy['macs_g'], rel=1e-3)

    assert 'targets' not in result  # docs/performance.md states the ratios; the tool judges none
    comparison = result['settings_comparison']
    assert {(c['channels_last'], c['batch']) for c in comparison} == {
        (False, 1),
        (False, 8),
        (True, 1),
        (True, 8),
    }
    assert all(c['median_ms_per_image'] > 0 and c['min_ms_per_image'] > 0 for c in comparison)

    with Image.open(out_dir / 'benchmark.png') as image:
        assert image.format == 'PNG' and image.size[0] > 100 and image.size[1] > 100
        image.verify()


def test_timer_syncs_around_every_timed_call():
    events = []
    times = timing.time_callable(
        lambda: events.append('call'), warmup=2, repeats=3, sync=lambda: events.append('sync')
    )
    assert len(times) == 3 and all(t >= 0 for t in times)
    assert events == ['call'] * 2 + ['sync', 'call', 'sync'] * 3

    events.clear()
    times = timing.time_interleaved(
        [lambda: events.append('a'), lambda: events.append('b')],
        warmup=1,
        repeats=2,
        sync=lambda: events.append('sync'),
    )
    assert [len(t) for t in times] == [2, 2]
    assert events == ['a', 'b'] + ['sync', 'a', 'sync', 'sync', 'b', 'sync'] * 2


def test_cuda_device_synchronizes(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, 'synchronize', lambda *args: calls.append('sync'))
    assert timing.sync_for('cpu') is None
    sync = timing.sync_for('cuda')
    model = torch.nn.Conv2d(3, 4, 3)
    x = torch.zeros(1, 3, 8, 8)
    timing.time_callable(lambda: model(x), warmup=1, repeats=4, sync=sync)
    assert calls == ['sync'] * 8  # before and after each timed call, none around warm-up
    calls.clear()
    timing.matmul_peak_gflops(size=16, device='cpu', repeats=2)
    assert calls == []  # CPU path never syncs


def test_activation_peak_bytes_cpu():
    def two_live_tensors():
        a = torch.ones(2**20)  # 4 MiB
        b = torch.ones(2**19)  # 2 MiB, while a is alive
        return float(a.sum() + b.sum())

    peak = memory.activation_peak_bytes(two_live_tensors, 'cpu')
    assert 6 * 2**20 <= peak < 6.1 * 2**20


def test_activation_peak_bytes_of_a_conv_model():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, 16, 3, padding=1)
    ).eval()
    x = torch.randn(1, 3, 64, 64)
    output_bytes = 16 * 64 * 64 * 4
    with torch.inference_mode():
        peak = memory.activation_peak_bytes(lambda: model(x), 'cpu')
    # at least the ReLU's output and the last conv's output are alive together; the weights
    # (allocated before) are not counted
    assert 2 * output_bytes <= peak < 8 * output_bytes


class ProfileWithoutRecords(torch.profiler.profile):
    """``torch.profiler.profile`` as in a torch whose profiler keeps no ``kineto_results``."""

    def __exit__(self, *exc_info):
        result = super().__exit__(*exc_info)
        del self.profiler.kineto_results
        return result


@pytest.mark.parametrize('change', ['records missing', 'records renamed'])
def test_cpu_peak_is_none_with_one_warning_without_the_private_records(monkeypatch, change):
    if change == 'records missing':
        monkeypatch.setattr(memory, 'profile', ProfileWithoutRecords)
    else:
        monkeypatch.setattr(memory, 'MEMORY_RECORD', '[memory v2]')
    monkeypatch.setattr(memory, '_WARNED', set())
    with pytest.warns(RuntimeWarning) as caught:
        peaks = [
            memory.activation_peak_bytes(lambda: torch.ones(1000).sum(), 'cpu') for _ in range(3)
        ]
    assert peaks == [None] * 3
    messages = [str(w.message) for w in caught if 'CPU peak memory' in str(w.message)]
    assert len(messages) == 1  # one warning, not one per model
    assert 'CPU peak memory is n/a' in messages[0]
    assert f'torch {torch.__version__}' in messages[0]


def tiny_model(*args, **kwargs) -> torch.nn.Module:
    """A Conv+BN+ReLU stand-in for every builder (the benchmark's path, not its models)."""
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU()
    ).eval()


def test_benchmark_reports_cpu_peak_as_na_without_the_private_records(monkeypatch):
    monkeypatch.setattr(memory, 'profile', ProfileWithoutRecords)
    monkeypatch.setattr(memory, '_WARNED', set())
    for builder in (
        'build_mobilenet_v2',
        'build_ours',
        'build_timm_mobileone',
        'build_mmpretrain_mobileone',
    ):
        monkeypatch.setattr(bm, builder, tiny_model)
    settings = bm.BenchmarkSettings(input_size=32, threads=1, warmup=0, repeats=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        rows = bm.benchmark_task('backbone', settings, None, log=lambda line: None)
    assert len([w for w in caught if 'CPU peak memory is n/a' in str(w.message)]) == 1
    assert settings.notes.count(bm.CPU_PEAK_NA) == 1
    assert len(rows) == 6  # MobileNetV2 and ours, two forms each; timm's and mmpretrain's
    assert all(r.peak_mem_mb is None and r.activation_peak_mb is None for r in rows)
    assert all(r.weights_mb > 0 and r.median_ms > 0 for r in rows)  # the rest is measured
    peak_column = [line.split()[-3] for line in report.format_table(rows).split('\n')[2:]]
    assert peak_column == ['n/a'] * len(rows)


def _row(model, task, form, role, median, variant='s0'):
    return report.BenchmarkRow(
        model=model,
        variant=variant,
        task=task,
        form=form,
        role=role,
        input_shape=(1, 3, 64, 64),
        params_m=1.0,
        macs_g=0.1,
        median_ms=median,
        min_ms=median,
        times_ms=[median],
    )


def test_ratios_from_rows():
    ours = baselines.OUR_NAMES['cls']
    rows = [
        _row('MNv2', 'cls', 'as built', 'baseline', 12.0, 'x1.0'),
        _row('MNv2', 'cls', 'BN folded', 'baseline', 10.0, 'x1.0'),
        _row(ours, 'cls', 'train-time', 'ours', 40.0),
        _row(ours, 'cls', 'deploy', 'ours', 8.0),
        _row(ours, 'backbone', 'deploy', 'ours', 6.0),
        _row('MobileOne (timm)', 'backbone', 'deploy', 'reference', 5.0),
        _row('MobileOne (mmpretrain)', 'backbone', 'deploy', 'reference', 7.0),
    ]
    report.add_ratios(rows)
    assert rows[3].vs_mobilenetv2 == pytest.approx(0.8)
    assert rows[3].deploy_vs_train_time == pytest.approx(0.2)
    assert rows[1].deploy_vs_train_time == pytest.approx(10 / 12)
    assert rows[4].vs_mobilenetv2 is None and rows[4].deploy_vs_train_time is None  # no pairs


def test_cli_rejects_bad_input():
    tool = load_tool()
    for argv in (['--input-size', '16'], ['--arch', 's9'], ['--repeats', '0']):
        with pytest.raises(SystemExit):
            tool.parse_args(argv)


def test_mmpretrain_baseline_builds_whatever_the_default_scope():
    # regression: after an mmseg model was built (default scope mmseg), mmpretrain's MobileOne
    # was looked up in mmseg's registry and the benchmark crashed
    pytest.importorskip('mmpretrain')
    import mmseg.models  # noqa: F401
    from mmengine.registry import init_default_scope

    init_default_scope('mmseg')
    assert isinstance(baselines.build_mmpretrain_mobileone('s0', backbone=True), torch.nn.Module)
