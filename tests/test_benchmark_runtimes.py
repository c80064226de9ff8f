"""``tools/benchmark.py --runtimes``: the onnxruntime and ExecuTorch rows of the runtime
comparison (``mobileone_dense/analysis/runtimes.py``) beside PyTorch's, a program XNNPACK refuses
left out with a note, and the benchmark's random-weight detector getting an INT8 program XNNPACK
builds."""

import pytest
import torch
from test_executorch import _TwoParts

from mobileone_dense.deploy.executorch_export import PteRunner, lower_to_pte, quantize_graph


def test_benchmark_times_every_runtime_for_ours_and_the_baseline(monkeypatch):
    """``tools/benchmark.py --runtimes``: four runtime rows per model, interleaved with PyTorch's,
    ratios against the baseline in the same runtime (tiny stand-in models: the path, not speed)."""
    from mobileone_dense.analysis import benchmark as bm
    from mobileone_dense.analysis.runtimes import RUNTIME_FORMS

    def tiny(*args, **kwargs):
        return torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU()
        ).eval()

    for builder in ('build_mobilenet_v2', 'build_ours'):
        monkeypatch.setattr(bm, builder, tiny)
    settings = bm.BenchmarkSettings(input_size=32, threads=1, warmup=1, repeats=2, runtimes=True)
    rows = bm.benchmark_task('det', settings, None, log=lambda line: None)
    bm.add_ratios(rows)
    forms = [(r.role, r.form) for r in rows]
    for role, pytorch in (('baseline', 'BN folded'), ('ours', 'deploy')):
        assert [f for r, f in forms if r == role][-5:] == [pytorch, *RUNTIME_FORMS]
    assert all(len(r.times_ms) == 2 and r.median_ms > 0 for r in rows)
    ours = {r.form: r for r in rows if r.role == 'ours'}
    base = {r.form: r for r in rows if r.role == 'baseline'}
    for form in RUNTIME_FORMS:
        assert ours[form].vs_mobilenetv2 == pytest.approx(
            ours[form].median_ms / base[form].median_ms
        )
    assert settings.notes == [] or all('CPU peak' in note for note in settings.notes)


def test_benchmark_leaves_out_a_program_xnnpack_refuses(monkeypatch):
    from mobileone_dense.analysis import runtimes

    monkeypatch.setattr(runtimes, 'quantize_graph', lambda graph, x, calibration: 'int8')
    monkeypatch.setattr(runtimes, 'lower_to_pte', lambda module, x: module)

    class Runner:
        def __init__(self, program, threads=None):
            if program == 'int8':
                raise RuntimeError('Failed to load method forward, error: 0x:1')

        def __call__(self, x):
            return x

    monkeypatch.setattr(runtimes, 'PteRunner', Runner)
    notes = []
    graph = runtimes.FlatOutputs(_TwoParts())
    built = runtimes._executorch_runners(graph, torch.zeros(1, 3, 8, 8), 1, notes, 'tiny det')
    assert [form for form, _ in built] == [runtimes.RUNTIME_FORMS[2]]
    assert len(notes) == 1 and 'not timed: XNNPACK refused it' in notes[0]
    assert runtimes.RUNTIME_FORMS[3] in notes[0] and 'tiny det' in notes[0]


def test_the_benchmarks_random_weight_detector_gets_an_int8_program_xnnpack_builds():
    """SSDLite-S0 with random weights: from BN's initial statistics its INT8 program is refused
    by XNNPACK (activations grow by orders of magnitude before the neck); with the statistics
    measured as the benchmark now does (``trained_scale``) it builds and runs."""
    from mobileone_dense.analysis import benchmark as bm
    from mobileone_dense.analysis import runtimes
    from mobileone_dense.analysis.baselines import build_ours
    from mobileone_dense.models.reparameterize import reparameterize

    torch.manual_seed(0)  # the random weights
    settings = bm.BenchmarkSettings(input_size=96, threads=1, runtimes=True)
    model = reparameterize(bm.trained_scale(build_ours('det', 's0'), 'det', settings))
    inputs = bm.make_inputs(96, settings)
    with torch.no_grad():  # the benchmark's INT8 program (runtimes._executorch_runners)
        graph = runtimes.FlatOutputs(model)
        int8 = quantize_graph(graph, inputs, runtimes._calibration(inputs))
        outputs = PteRunner(lower_to_pte(int8, inputs), 1)(inputs)  # refused: RuntimeError
    assert len(outputs) == 12  # cls_score and bbox_pred of the 6 levels
