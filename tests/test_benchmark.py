"""tools/benchmark.py and mobileone_dense.analysis.benchmark: rows, ratios, outputs, timer syncs.

Speed itself is never asserted (shared CPU): only that every number is measured, positive and
consistent with the others.
"""
import importlib.util
import json
import math
import os.path as osp

import pytest
import torch
from PIL import Image

from mobileone_dense.analysis import benchmark as bm

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def load_tool():
    spec = importlib.util.spec_from_file_location('benchmark_tool',
                                                  osp.join(REPO, 'tools', 'benchmark.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_cls_s0_rows_json_plot(tmp_path, capsys):
    out_dir = tmp_path / 'bench'
    threads_before = torch.get_num_threads()
    assert load_tool().main(['--task', 'cls', '--arch', 's0', '--input-size', '64',
                             '--warmup', '1', '--repeats', '2', '--threads', '1',
                             '--matmul-size', '128', '--compare-settings',
                             '--out-dir', str(out_dir)]) == 0
    assert torch.get_num_threads() == threads_before  # the benchmark restores it
    printed = capsys.readouterr().out
    assert 'median ms' in printed and 'targets (measured here, not asserted)' in printed

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
    for task, mnv2 in (('backbone', 'MobileNetV2 features (torchvision)'),
                       ('cls', 'MobileNetV2 (torchvision)')):
        expected |= {(mnv2, task, 'as built'), (mnv2, task, 'BN folded'),
                     ('MobileOne (ours)', task, 'unfused'), ('MobileOne (ours)', task, 'fused')}
        expected |= {(f'MobileOne ({name})', task, 'fused') for name in libraries}
    assert set(rows) == expected
    for key, row in rows.items():
        assert row['input_shape'] == [1, 3, 64, 64], key
        assert len(row['times_ms']) == 2 and all(t > 0 for t in row['times_ms']), key
        assert row['min_ms'] == min(row['times_ms']) and row['min_ms'] <= row['median_ms'], key
        for name in ('params_m', 'macs_g', 'gflops', 'peak_percent', 'weights_mb',
                     'activation_peak_mb', 'vs_mobilenetv2'):
            assert math.isfinite(row[name]) and row[name] > 0, (key, name)
        assert row['peak_mem_mb'] == pytest.approx(row['weights_mb'] + row['activation_peak_mb'])
        assert row['gflops'] == pytest.approx(2 * row['macs_g'] / (row['median_ms'] / 1e3))

    for task, mnv2 in (('backbone', 'MobileNetV2 features (torchvision)'),
                       ('cls', 'MobileNetV2 (torchvision)')):
        unfused = rows[('MobileOne (ours)', task, 'unfused')]
        fused = rows[('MobileOne (ours)', task, 'fused')]
        baseline = rows[(mnv2, task, 'BN folded')]
        # ratios come from the rows' own medians
        assert fused['fused_vs_unfused'] == pytest.approx(fused['median_ms'] / unfused['median_ms'])
        assert fused['vs_mobilenetv2'] == pytest.approx(fused['median_ms'] / baseline['median_ms'])
        assert baseline['vs_mobilenetv2'] == pytest.approx(1.0)
        assert unfused['fused_vs_unfused'] is None
        # fusion removes branches: fewer params and MACs; all fused MobileOnes count the same
        assert fused['params_m'] < unfused['params_m'] and fused['macs_g'] < unfused['macs_g']
        for library in libraries:
            reference = rows[(f'MobileOne ({library})', task, 'fused')]
            assert reference['params_m'] == pytest.approx(fused['params_m'], rel=1e-3)
            assert reference['macs_g'] == pytest.approx(fused['macs_g'], rel=1e-3)

    assert len(result['targets']) == 5
    assert all(line.split()[0] in ('PASS', 'FAIL') for line in result['targets'])
    comparison = result['settings_comparison']
    assert {(c['channels_last'], c['batch']) for c in comparison} == {
        (False, 1), (False, 8), (True, 1), (True, 8)}
    assert all(c['median_ms_per_image'] > 0 and c['min_ms_per_image'] > 0 for c in comparison)

    with Image.open(out_dir / 'benchmark.png') as image:
        assert image.format == 'PNG' and image.size[0] > 100 and image.size[1] > 100
        image.verify()


def test_timer_syncs_around_every_timed_call():
    events = []
    times = bm.time_callable(lambda: events.append('call'), warmup=2, repeats=3,
                             sync=lambda: events.append('sync'))
    assert len(times) == 3 and all(t >= 0 for t in times)
    assert events == ['call'] * 2 + ['sync', 'call', 'sync'] * 3

    events.clear()
    times = bm.time_interleaved([lambda: events.append('a'), lambda: events.append('b')],
                                warmup=1, repeats=2, sync=lambda: events.append('sync'))
    assert [len(t) for t in times] == [2, 2]
    assert events == ['a', 'b'] + ['sync', 'a', 'sync', 'sync', 'b', 'sync'] * 2


def test_cuda_device_synchronizes(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, 'synchronize', lambda *args: calls.append('sync'))
    assert bm.sync_for('cpu') is None
    sync = bm.sync_for('cuda')
    model = torch.nn.Conv2d(3, 4, 3)
    x = torch.zeros(1, 3, 8, 8)
    bm.time_callable(lambda: model(x), warmup=1, repeats=4, sync=sync)
    assert calls == ['sync'] * 8  # before and after each timed call, none around warm-up
    calls.clear()
    bm.matmul_peak_gflops(size=16, device='cpu', repeats=2)
    assert calls == []  # CPU path never syncs


def test_activation_peak_bytes_cpu():
    def two_live_tensors():
        a = torch.ones(2 ** 20)  # 4 MiB
        b = torch.ones(2 ** 19)  # 2 MiB, while a is alive
        return float(a.sum() + b.sum())

    peak = bm.activation_peak_bytes(two_live_tensors, 'cpu')
    assert 6 * 2 ** 20 <= peak < 6.1 * 2 ** 20


def _row(model, task, form, role, median, variant='s0'):
    return bm.BenchmarkRow(model=model, variant=variant, task=task, form=form, role=role,
                           input_shape=(1, 3, 64, 64), params_m=1.0, macs_g=0.1,
                           median_ms=median, min_ms=median, times_ms=[median])


def test_ratios_and_targets_from_rows():
    ours = bm.OUR_NAMES['cls']
    rows = [_row('MNv2', 'cls', 'as built', 'baseline', 12.0, 'x1.0'),
            _row('MNv2', 'cls', 'BN folded', 'baseline', 10.0, 'x1.0'),
            _row(ours, 'cls', 'unfused', 'ours', 40.0), _row(ours, 'cls', 'fused', 'ours', 8.0),
            _row(ours, 'backbone', 'fused', 'ours', 6.0),
            _row('MobileOne (timm)', 'backbone', 'fused', 'reference', 5.0),
            _row('MobileOne (mmpretrain)', 'backbone', 'fused', 'reference', 7.0)]
    bm.add_ratios(rows)
    assert rows[3].vs_mobilenetv2 == pytest.approx(0.8)
    assert rows[3].fused_vs_unfused == pytest.approx(0.2)
    assert rows[1].fused_vs_unfused == pytest.approx(10 / 12)
    assert rows[4].vs_mobilenetv2 is None and rows[4].fused_vs_unfused is None  # no pairs
    lines = bm.target_lines(rows)
    assert lines[0].startswith('PASS') and '0.80x' in lines[0]  # 0.8 <= 0.85
    assert lines[1].startswith('FAIL') and 'timm' in lines[1]  # 6 / 5 > 1
    assert lines[2].startswith('PASS') and 'mmpretrain' in lines[2]
    assert lines[3].startswith('PASS') and 'cls' in lines[3]  # 0.2 <= 0.35


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
    assert isinstance(bm.build_mmpretrain_mobileone('s0', backbone=True), torch.nn.Module)
