"""The latency benchmark's rows and what is made of them: ratios, the machine, a text table,
``benchmark.json`` and the paper's Figure 1 with latency measured here (``benchmark.png``)."""

import datetime
import json
import os
import os.path as osp
import platform
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from matplotlib.figure import Figure

# ImageNet-1k top-1 (%) as printed in the paper's Table 9 (not measured here).
PAPER_TOP1 = {'s0': 71.4, 's1': 75.9, 's2': 77.4, 's3': 78.1, 's4': 79.4}
PAPER_TOP1_MOBILENETV2 = 72.0  # Table 9, MobileNetV2-x1.0


@dataclass
class BenchmarkRow:
    """One timed model. Latencies are per forward call (whole batch); MACs are per image."""

    model: str
    variant: str
    task: str
    form: str
    role: str  # 'ours', 'baseline' (MobileNetV2) or 'reference' (timm, mmpretrain)
    input_shape: Tuple[int, int, int, int]
    params_m: float
    macs_g: Optional[float]
    median_ms: float
    min_ms: float
    times_ms: List[float]
    gflops: Optional[float] = None
    peak_percent: Optional[float] = None
    weights_mb: Optional[float] = None
    activation_peak_mb: Optional[float] = None
    peak_mem_mb: Optional[float] = None
    vs_mobilenetv2: Optional[float] = None
    deploy_vs_train_time: Optional[float] = None

    @property
    def input(self) -> str:
        return 'x'.join(str(s) for s in self.input_shape)


def add_ratios(rows: Sequence[BenchmarkRow]) -> None:
    """Fill ``vs_mobilenetv2`` and ``deploy_vs_train_time`` from the rows' medians (in place)."""
    baselines = {
        (r.task, r.input_shape): r for r in rows if r.role == 'baseline' and r.form == 'BN folded'
    }
    # the baseline in another runtime (benchmark --runtimes): compared runtime with runtime
    same_runtime = {
        (r.task, r.input_shape, r.form): r
        for r in rows
        if r.role == 'baseline' and r.form not in ('as built', 'BN folded')
    }
    train_time = {
        (r.model, r.variant, r.task, r.input_shape): r
        for r in rows
        if r.form in ('train-time', 'as built')
    }
    for row in rows:
        base = same_runtime.get((row.task, row.input_shape, row.form)) or baselines.get(
            (row.task, row.input_shape)
        )
        if base is not None:
            row.vs_mobilenetv2 = row.median_ms / base.median_ms
        if row.form in ('deploy', 'BN folded'):
            plain = train_time.get((row.model, row.variant, row.task, row.input_shape))
            if plain is not None:
                row.deploy_vs_train_time = row.median_ms / plain.median_ms


def rows_from_result(result: dict) -> List[BenchmarkRow]:
    """``BenchmarkRow`` objects back from a result (or a loaded ``benchmark.json``)."""
    names = set(BenchmarkRow.__dataclass_fields__)
    return [
        BenchmarkRow(
            **{k: (tuple(v) if k == 'input_shape' else v) for k, v in row.items() if k in names}
        )
        for row in result['rows']
    ]


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform's processor string elsewhere)."""
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or 'unknown CPU'


def machine_info(device: str, threads: int) -> dict:
    """Where and with what the numbers were measured (``threads``: the torch threads used)."""
    info = dict(
        cpu=cpu_model(),
        cores=os.cpu_count(),
        usable_cores=len(os.sched_getaffinity(0))
        if hasattr(os, 'sched_getaffinity')
        else os.cpu_count(),
        threads=threads,
        torch=torch.__version__,
        python=platform.python_version(),
        date=datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
        load_average=os.getloadavg() if hasattr(os, 'getloadavg') else None,
    )
    if torch.device(device).type == 'cuda':
        info['gpu'] = torch.cuda.get_device_name()
    for package in ('torchvision', 'timm', 'mmpretrain', 'mmdet', 'mmseg', 'onnxruntime'):
        try:
            info[package] = __import__(package).__version__
        except ImportError:
            info[package] = None
    return info


def _fmt(value: Optional[float], spec: str, missing: str = '-') -> str:
    return missing if value is None else format(value, spec)


TABLE_COLUMNS = (
    ('model', 34),
    ('variant', 7),
    ('task', 8),
    ('form', 18),
    ('input', 13),
    ('params M', 8),
    ('MACs G', 7),
    ('median ms', 9),
    ('min ms', 8),
    ('GFLOP/s', 7),
    ('% peak', 6),
    ('peak MB', 7),
    ('vs MNv2', 7),
    ('dep/train', 9),
)


def format_table(rows: Sequence[BenchmarkRow]) -> str:
    """The rows as a fixed-width text table; peak memory not measured reads 'n/a'."""
    header = ' '.join(
        f'{name:>{width}}' if i > 4 else f'{name:<{width}}'
        for i, (name, width) in enumerate(TABLE_COLUMNS)
    )
    lines = [header, '-' * len(header)]
    for r in rows:
        cells = [
            r.model,
            r.variant,
            r.task,
            r.form,
            r.input,
            _fmt(r.params_m, '.2f'),
            _fmt(r.macs_g, '.3f'),
            _fmt(r.median_ms, '.2f'),
            _fmt(r.min_ms, '.2f'),
            _fmt(r.gflops, '.1f'),
            _fmt(r.peak_percent, '.1f'),
            _fmt(r.peak_mem_mb, '.1f', 'n/a'),
            _fmt(r.vs_mobilenetv2, '.2f'),
            _fmt(r.deploy_vs_train_time, '.2f'),
        ]
        lines.append(
            ' '.join(
                f'{c:>{w}}' if i > 4 else f'{c:<{w}}'
                for i, (c, (_, w)) in enumerate(zip(cells, TABLE_COLUMNS))
            )
        )
    return '\n'.join(lines)


def format_comparison(comparison: Sequence[dict]) -> str:
    """``compare_settings``' results (ms per image) as a text table."""
    lines = [f'{"channels_last":<14} {"batch":>5} {"median ms/image":>16} {"min ms/image":>13}']
    for c in comparison:
        lines.append(
            f'{str(c["channels_last"]):<14} {c["batch"]:>5} '
            f'{c["median_ms_per_image"]:>16.3f} {c["min_ms_per_image"]:>13.3f}'
        )
    return '\n'.join(lines)


def plot_latency_vs_top1(rows: Sequence[BenchmarkRow], machine: dict, path: str) -> bool:
    """The paper's Figure 1 with latency measured here: deploy classifiers (x, ms) against the
    paper-reported ImageNet top-1 (y). False (nothing written) without classifier rows."""
    ours = sorted(
        (
            r
            for r in rows
            if r.task == 'cls'
            and r.role == 'ours'
            and r.form == 'deploy'
            and r.variant in PAPER_TOP1
        ),
        key=lambda r: r.variant,
    )
    baseline = next(
        (r for r in rows if r.task == 'cls' and r.role == 'baseline' and r.form == 'BN folded'),
        None,
    )
    if not ours and baseline is None:
        return False
    # a Figure without pyplot: no global backend or figure state (savefig renders with Agg)
    fig = Figure(figsize=(6.4, 4.8), dpi=120)
    ax = fig.subplots()
    if ours:
        ax.plot(
            [r.median_ms for r in ours],
            [PAPER_TOP1[r.variant] for r in ours],
            '-o',
            color='tab:red',
            label='MobileOne (deploy)',
        )
        for r in ours:
            ax.annotate(
                f'MobileOne-{r.variant.upper()}',
                (r.median_ms, PAPER_TOP1[r.variant]),
                textcoords='offset points',
                xytext=(6, -4),
                fontsize=8,
            )
    if baseline is not None:
        ax.plot(
            [baseline.median_ms],
            [PAPER_TOP1_MOBILENETV2],
            's',
            color='tab:blue',
            label='MobileNetV2 x1.0 (BN folded)',
        )
        ax.annotate(
            'MobileNetV2',
            (baseline.median_ms, PAPER_TOP1_MOBILENETV2),
            textcoords='offset points',
            xytext=(6, -4),
            fontsize=8,
        )
    shape = (ours or [baseline])[0].input
    threads = machine['threads']
    where = machine.get('gpu') or f'CPU, {threads} thread{"s" if threads != 1 else ""}'
    ax.set_xlabel(f'latency measured here (ms, median of forward calls, input {shape})')
    ax.set_ylabel('paper-reported top-1 (%), ImageNet-1k (Table 9)')
    ax.set_title(
        f'{machine["cpu"]} ({machine["cores"]} cores), {where}, torch '
        f'{machine["torch"]}, {machine["date"][:10]}',
        fontsize=9,
    )
    ax.set_xlim(left=0, right=1.25 * max(r.median_ms for r in ours + [baseline] if r))
    ax.set_ylim(min(PAPER_TOP1.values()) - 1.5, max(PAPER_TOP1.values()) + 1.5)
    ax.grid(True, alpha=0.3)
    ax.legend(loc='best')
    fig.tight_layout()
    fig.savefig(path)
    return True


def write_outputs(result: dict, out_dir: str) -> Dict[str, Optional[str]]:
    """``benchmark.json`` and ``benchmark.png`` (if there are classifier rows) in ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    json_path = osp.join(out_dir, 'benchmark.json')
    with open(json_path, 'w') as f:
        json.dump(result, f, indent=2)
    png_path = osp.join(out_dir, 'benchmark.png')
    if not plot_latency_vs_top1(rows_from_result(result), result['machine'], png_path):
        png_path = None
    return dict(json=json_path, png=png_path)
