"""Latency, complexity and memory of MobileOne models next to their baselines, in one process.

What is timed: the network's forward only, ``model(inputs, mode='tensor')`` for mmdet / mmseg /
mmpretrain models (backbone + neck + head, raw head outputs: no data preprocessor, no
post-processing such as NMS or upsampling to the input size) and ``model(inputs)`` for backbones
and torchvision / timm models, on one random input tensor created beforehand, under
``torch.inference_mode()`` with ``torch.set_num_threads(threads)``. Each model gets ``warmup``
untimed calls, then ``repeats`` timed calls, round-robin with the task's other models (so that a
load change on a shared machine hits them alike); we report the median and the minimum per call
(of the whole batch). On CUDA, the device is synchronized before and after every timed call.

Forms: our models are timed ``train-time`` (with their branches, eval mode) and ``deploy``
(``mobileone_dense.reparameterize``: branches and every Conv+BN pair folded); baselines ``as
built`` and ``BN folded`` (the same ``reparameterize``, which folds their Conv+BN pairs, as any
deployment runtime does); timm's and mmpretrain's MobileOne are timed in deploy form with their
own re-parameterization. Ratios to the MobileNetV2 baseline use its ``BN folded`` row.

This module runs the measurements; the models come from :mod:`.baselines`, the timers from
:mod:`.timing`, memory from :mod:`.memory`, and the rows, table, JSON and plot from :mod:`.report`.
"""

import copy
import gc
import statistics
from dataclasses import asdict, dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ..models.reparameterize import reparameterize
from .baselines import (
    ARCHS,
    BASELINE_NAMES,
    DEFAULT_INPUT_SIZE,
    OUR_NAMES,
    build_mmpretrain_mobileone,
    build_mobilenet_v2,
    build_ours,
    build_timm_mobileone,
)
from .complexity import params_and_macs
from .deploy_check import randomize_batch_norm
from .memory import activation_peak_bytes, module_bytes
from .report import BenchmarkRow, add_ratios, machine_info
from .runtimes import onnx_runner, runtime_runners
from .timing import matmul_peak_gflops, sync_for, time_callable, time_interleaved

NOTES = {
    'timing': __doc__.split('\n\n')[1].replace('\n', ' '),
    'forms': __doc__.split('\n\n')[2].replace('\n', ' '),
    'order': 'all models of a task are built, counted and memory-profiled first, then timed '
    'round-robin (each round calls every model once; warm-up calls first) unless '
    "settings.interleave is false (--sequential: each model's calls back to back)",
    'macs': 'multiply-accumulates per image at batch 1 (mmengine FlopAnalyzer, fvcore-style, '
    'as the paper); params: all parameters of the timed module',
    'gflops': '2 * MACs * batch / median latency; % of peak: against a float32 torch.mm of '
    'matmul_size x matmul_size on the same device and threads (best of its repeats)',
    'memory': 'peak_mem_mb = weights_mb (parameters + buffers) + activation_peak_mb, the peak '
    'of tensor memory allocated above what was allocated before one forward (CPU: '
    'running total of the c10 CPU allocator recorded by torch.profiler with '
    'profile_memory=True, so memory that oneDNN or onnxruntime allocate themselves '
    'is not counted; CUDA: torch.cuda.max_memory_allocated); not measured for '
    "onnxruntime rows, nor on the CPU when this torch's profiler does not give the "
    'allocator records (null in the JSON, n/a in the table, a note under skipped); '
    'MB here means MiB (2**20 bytes)',
    'ratios': 'vs_mobilenetv2: median / median of the same task\'s MobileNetV2 "BN folded" '
    'row; deploy_vs_train_time: median of a deploy (BN folded) row / median of the '
    "same model's train-time (as built) row; a row of another runtime (--runtimes) is "
    "compared with the baseline's row in the same runtime",
    'segmentation baseline': "mmseg's DeepLabV3-MobileNetV2 keeps its own 512-channel ASPP "
    '(ours: 256 channels, as MobileViT/the paper); classes set to 21, '
    'auxiliary head removed, no pretrained weights',
    'onnx': 'our deploy classifier/detector/segmentor exported with mobileone_dense.apis.'
    'onnx_export.export_onnx (graph: the same outputs as mode="tensor"; for '
    'segmentation it also upsamples the logits to the input size) and run by an '
    'onnxruntime CPU session with intra_op_num_threads = threads; MACs and params are '
    "the deploy PyTorch model's; vs_mobilenetv2 compares with the eager PyTorch baseline",
    'runtimes': 'with --runtimes, our deploy model and the BN-folded baseline, each exactly as '
    'PyTorch times it (outputs flattened), also in onnxruntime float32 and INT8 (QDQ, '
    'per-channel weights) and ExecuTorch XNNPACK float32 and INT8 (PT2E); INT8 calibrated on '
    'random inputs (speed only); every runtime with the same thread count, timed round-robin '
    'with the PyTorch rows (mobileone_dense/analysis/runtimes.py)',
    'top1': "the plot's y axis is the ImageNet top-1 reported in the paper (Table 9), not "
    'measured here',
}
CPU_PEAK_NA = (
    f'CPU peak memory n/a: the profiler of torch {torch.__version__} does not give the '
    'c10 CPU allocator records (see the warning)'
)


@dataclass
class BenchmarkSettings:
    """What to measure and how (see ``tools/benchmark.py --help``)."""

    tasks: Sequence[str] = ('cls',)
    archs: Sequence[str] = ('s0',)
    input_size: Optional[int] = None  # None: DEFAULT_INPUT_SIZE per task
    batch: int = 1
    threads: int = 2
    warmup: int = 5
    repeats: int = 30
    device: str = 'cpu'
    channels_last: bool = False
    onnx: bool = False
    runtimes: bool = False  # onnxruntime / ExecuTorch, float32 / INT8, ours and the baseline
    matmul_size: int = 2048
    compare_settings: bool = False
    interleave: bool = True  # time a task's models round-robin (False: one after the other)
    notes: List[str] = field(default_factory=list)  # filled while running (skipped parts)

    def size_for(self, task: str) -> int:
        return self.input_size or DEFAULT_INPUT_SIZE[task]


def _prepare(module: nn.Module, settings: BenchmarkSettings) -> nn.Module:
    module = module.to(settings.device)
    module.eval()
    if settings.channels_last:
        module = module.to(memory_format=torch.channels_last)
    return module


def make_inputs(
    size: int, settings: BenchmarkSettings, batch: Optional[int] = None
) -> torch.Tensor:
    """Random (batch, 3, size, size) float32 input on the device, channels_last if asked."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch or settings.batch, 3, size, size, generator=generator)
    x = x.to(settings.device)
    if settings.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def trained_scale(model: nn.Module, task: str, settings: BenchmarkSettings) -> nn.Module:
    """With ``--runtimes``: ``model``'s BN statistics measured on random inputs of the task's
    size (as training leaves them, :func:`.deploy_check.randomize_batch_norm`), in place.

    Why: from the initial statistics (mean 0, var 1) a random-weight detector's activations grow
    by orders of magnitude before the neck, and INT8 calibrated on them gives conv layers whose
    requantization scale (input x weight / output) XNNPACK refuses to build
    (``xnn_status_unsupported_parameter``). Latency does not depend on the values."""
    if settings.runtimes and task != 'backbone':
        calibration = make_inputs(settings.size_for(task), settings, batch=4).cpu()
        randomize_batch_norm(model, calibration_inputs=calibration)
    return model


def profile_module(module: nn.Module, inputs: torch.Tensor, device: str) -> dict:
    """Params (M), MACs per image (G), weights and activation peak (MB) of ``module(inputs)``."""
    with torch.no_grad():
        # counted at batch 1 on a contiguous input: MACs do not depend on the layout
        params, macs = params_and_macs(module, inputs[:1].contiguous())
    module.eval()
    with torch.inference_mode():
        activation = activation_peak_bytes(lambda: module(inputs), device)
    weights_mb = module_bytes(module) / 2**20
    stats = dict(params_m=params, macs_g=macs / 1e3, weights_mb=weights_mb)
    if activation is not None:
        stats.update(
            activation_peak_mb=activation / 2**20, peak_mem_mb=weights_mb + activation / 2**20
        )
    return stats


def _row(
    meta: dict,
    stats: dict,
    times: Sequence[float],
    inputs: torch.Tensor,
    peak_gflops: Optional[float],
) -> BenchmarkRow:
    row = BenchmarkRow(
        **meta,
        **stats,
        input_shape=tuple(inputs.shape),
        median_ms=statistics.median(times) * 1e3,
        min_ms=min(times) * 1e3,
        times_ms=[t * 1e3 for t in times],
    )
    if row.macs_g is not None:
        row.gflops = 2 * row.macs_g * row.input_shape[0] / (row.median_ms / 1e3)
        if peak_gflops:
            row.peak_percent = 100 * row.gflops / peak_gflops
    return row


def _release() -> None:
    """Give back the memory of models no longer referenced (between tasks, not timed)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def benchmark_task(
    task: str,
    settings: BenchmarkSettings,
    peak_gflops: Optional[float],
    log: Callable[[str], None] = print,
) -> List[BenchmarkRow]:
    """All rows of one task: MobileNetV2 (as built, BN folded), then per arch ours (train-time,
    deploy, [onnxruntime]) and, for 'backbone'/'cls', timm's and mmpretrain's deploy MobileOne.

    Every model is built, counted and memory-profiled first; then all are timed together
    (round-robin, see :func:`.timing.time_interleaved`, or one after the other with
    ``settings.interleave=False``) on the same input.
    """
    inputs = make_inputs(settings.size_for(task), settings)
    entries: List[Tuple[dict, Callable[[], object], dict]] = []  # (meta, call, stats)

    def add(module: nn.Module, **meta) -> Tuple[nn.Module, dict]:
        module = _prepare(module, settings)
        stats = profile_module(module, inputs, settings.device)
        if 'peak_mem_mb' not in stats and CPU_PEAK_NA not in settings.notes:
            settings.notes.append(CPU_PEAK_NA)
        meta.setdefault('task', task)
        entries.append((meta, lambda: module(inputs), stats))
        log(
            f'  built {meta["model"]} {meta["variant"]} {meta["form"]}: '
            f'{stats["params_m"]:.2f} M params, {stats["macs_g"]:.3f} GMACs'
        )
        return module, stats

    def add_runtimes(module: nn.Module, stats: dict, names: dict) -> None:
        if not settings.runtimes or task == 'backbone':
            return
        label = f'{names["model"]} {names["variant"]} {task}'
        for form, run in runtime_runners(module, inputs, settings, label):
            counts = {k: stats[k] for k in ('params_m', 'macs_g')}
            entries.append((dict(names, task=task, form=form), run, counts))
            log(f'  built {names["model"]} {names["variant"]} {form}')

    baseline = trained_scale(build_mobilenet_v2(task), task, settings)
    folded = reparameterize(copy.deepcopy(baseline))
    names = dict(model=BASELINE_NAMES[task], variant='x1.0', role='baseline')
    add(baseline, form='as built', **names)
    folded, stats = add(folded, form='BN folded', **names)
    add_runtimes(folded, stats, names)
    for arch in settings.archs:
        ours = trained_scale(build_ours(task, arch), task, settings)
        deploy = reparameterize(copy.deepcopy(ours))
        names = dict(model=OUR_NAMES[task], variant=arch, role='ours')
        add(ours, form='train-time', **names)
        deploy, stats = add(deploy, form='deploy', **names)
        add_runtimes(deploy, stats, names)
        # export_onnx takes whole models only; --runtimes has its own onnxruntime rows
        if settings.onnx and not settings.runtimes and task != 'backbone':
            run = onnx_runner(deploy, inputs, settings, f'{names["model"]} {arch} {task}')
            if run is not None:
                onnx_stats = {k: stats[k] for k in ('params_m', 'macs_g')}
                entries.append((dict(names, task=task, form='onnxruntime (CPU)'), run, onnx_stats))
        if task not in ('backbone', 'cls'):
            continue
        for library, builder in (
            ('timm', build_timm_mobileone),
            ('mmpretrain', build_mmpretrain_mobileone),
        ):
            try:
                reference = builder(arch, backbone=task == 'backbone')
            except ImportError as error:
                settings.notes.append(f'{library} MobileOne skipped: {error}')
                continue
            add(
                reference,
                model=f'MobileOne ({library})',
                variant=arch,
                form='deploy',
                role='reference',
            )

    log(
        f'  timing {len(entries)} models, {settings.warmup} warm-up + {settings.repeats} '
        f'timed calls each ({"round-robin" if settings.interleave else "one after the other"})'
    )
    calls = [call for _, call, _ in entries]
    sync = sync_for(settings.device)
    with torch.inference_mode():
        if settings.interleave:
            times = time_interleaved(calls, settings.warmup, settings.repeats, sync)
        else:
            times = [time_callable(call, settings.warmup, settings.repeats, sync) for call in calls]
    return [
        _row(meta, stats, t, inputs, peak_gflops) for (meta, _, stats), t in zip(entries, times)
    ]


def compare_settings(
    settings: BenchmarkSettings, arch: str = 's0', batches: Sequence[int] = (1, 8)
) -> List[dict]:
    """Deploy ``arch`` classifier per image with and without channels_last, at each batch size."""
    model = reparameterize(build_ours('cls', arch)).to(settings.device).eval()
    results = []
    for channels_last in (False, True):
        variant = copy.copy(settings)
        variant.channels_last = channels_last
        module = model.to(
            memory_format=torch.channels_last if channels_last else torch.contiguous_format
        )
        for batch in batches:
            inputs = make_inputs(settings.size_for('cls'), variant, batch)
            with torch.inference_mode():
                times = time_callable(
                    lambda: module(inputs),
                    settings.warmup,
                    settings.repeats,
                    sync_for(settings.device),
                )
            results.append(
                dict(
                    model=OUR_NAMES['cls'],
                    variant=arch,
                    form='deploy',
                    channels_last=channels_last,
                    batch=batch,
                    input_shape=list(inputs.shape),
                    median_ms_per_image=statistics.median(times) * 1e3 / batch,
                    min_ms_per_image=min(times) * 1e3 / batch,
                )
            )
    return results


def run_benchmark(settings: BenchmarkSettings, log: Callable[[str], None] = print) -> dict:
    """Measure everything ``settings`` asks for; returns the JSON-ready result."""
    if torch.device(settings.device).type == 'cuda' and not torch.cuda.is_available():
        raise RuntimeError('--device cuda, but torch sees no CUDA device; use --device cpu')
    unknown = set(settings.archs) - set(ARCHS)
    if unknown:
        raise ValueError(f'unknown archs {sorted(unknown)}; valid: {", ".join(ARCHS)}')
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        machine = machine_info(settings.device, settings.threads)
        peak = matmul_peak_gflops(settings.matmul_size, settings.device)
        log(
            f'matmul peak ({settings.matmul_size}x{settings.matmul_size} float32, '
            f'{settings.threads} threads, {settings.device}): {peak:.1f} GFLOP/s'
        )
        rows = []
        for task in settings.tasks:
            for sub_task in ('backbone', 'cls') if task == 'cls' else (task,):
                log(
                    f'[{sub_task}] input {settings.size_for(sub_task)}x'
                    f'{settings.size_for(sub_task)}, batch {settings.batch}'
                )
                rows += benchmark_task(sub_task, settings, peak, log)
                _release()  # the task's models are gone with benchmark_task's frame
        add_ratios(rows)
        comparison = compare_settings(settings) if settings.compare_settings else None
    finally:
        torch.set_num_threads(previous_threads)
    return dict(
        machine=machine,
        matmul_peak_gflops=peak,
        settings={k: v for k, v in asdict(settings).items() if k != 'notes'},
        notes=dict(NOTES, skipped=list(settings.notes)),
        rows=[dict(asdict(r), input=r.input) for r in rows],
        settings_comparison=comparison,
    )
