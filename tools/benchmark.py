"""Latency of MobileOne (train-time, deploy) next to MobileNetV2, timm and mmpretrain, side by side.

    python tools/benchmark.py --task all --arch s0 [s1 ...] [--threads 2] [--out-dir DIR]
    python tools/benchmark.py --task cls --arch s0 s1 s2 s3 s4 --compare-settings --onnx
    python tools/benchmark.py --task all --arch s0 --runtimes   # + onnxruntime / ExecuTorch
    python tools/benchmark.py --device cuda      # GPU: images/s, inference and training

Latency mode (the default on the CPU):

Times the network forward only (``model(inputs, mode='tensor')`` / the backbone's forward on one
pre-made random input; no data loading, preprocessing or post-processing) under
``torch.inference_mode()`` with fixed threads: ``--warmup`` untimed calls, then ``--repeats``
timed calls (round-robin over the task's models, so that load changes hit all alike; or
``--sequential``), median and minimum reported. Per task: 'cls' measures the bare backbone and the
classifier (``configs/mobileone_<arch>_imagenet.py``) against torchvision's MobileNetV2 and
timm's / mmpretrain's MobileOne; 'det' SSDLite (``configs/ssdlite_mobileone_<arch>_coco.py``,
320x320) against mmdet's SSDLite-MobileNetV2; 'seg' DeepLabV3
(``configs/deeplabv3_mobileone_<arch>_voc.py``, 512x512) against mmseg's DeepLabV3-MobileNetV2.
Prints a table, writes ``benchmark.json`` and ``benchmark.png`` (measured latency vs
paper-reported top-1) in ``--out-dir``. Definitions of every column: the ``notes`` of the JSON
(``mobileone_dense/analysis/benchmark.py``).

Throughput mode (``--mode throughput``, the default with ``--device cuda``): images/s of the deploy
and train-time S0-S4 classifiers, SSDLite S0/S2, DeepLabV3 S0 and the MobileNetV2 baselines at
batch 1 and 64 in float32/float16/bfloat16 (cudnn.benchmark on), and training images/s (forward,
backward, SGD step) of the train-time S0-S4 classifier networks against MobileNetV2, mmpretrain's
MobileOne and the same network trained without branches, at batch 32/224, 24/320 and 8/512,
float32 vs AMP, contiguous vs channels_last (``mobileone_dense/analysis/throughput.py``).
Writes ``throughput.json``.
"""

import argparse
import json
import os
import os.path as osp
import sys
from typing import List, Optional

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a checkout

import torch

import mobileone_dense  # noqa: F401  (registers our scope and `mobileone_dense::` configs)
from mobileone_dense.analysis.baselines import ARCHS, TASKS
from mobileone_dense.analysis.benchmark import BenchmarkSettings, run_benchmark
from mobileone_dense.analysis.report import (
    format_comparison,
    format_table,
    machine_info,
    rows_from_result,
    write_outputs,
)
from mobileone_dense.analysis.throughput import (
    DTYPES,
    INFERENCE_MODELS,
    ThroughputSettings,
    run_throughput,
)
from mobileone_dense.analysis.throughput_report import format_throughput


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog='\n'.join(__doc__.split('\n')[1:]),
    )
    parser.add_argument(
        '--task',
        choices=list(TASKS) + ['all'],
        default='all',
        help='cls (backbone + classifier), det, seg or all (default)',
    )
    parser.add_argument(
        '--arch',
        nargs='+',
        choices=ARCHS,
        default=None,
        help='MobileOne variants (default: s0 for latency; s0-s4 classifiers, '
        'S0/S2 SSDLite and S0 DeepLabV3 for throughput)',
    )
    parser.add_argument(
        '--input-size',
        type=int,
        default=None,
        help='square input side for every task (default: 224 cls, 320 det, 512 seg)',
    )
    parser.add_argument('--batch', type=int, default=1, help='images per forward (default 1)')
    parser.add_argument(
        '--threads',
        type=int,
        default=2,
        help='torch.set_num_threads / onnxruntime intra-op threads (default 2)',
    )
    parser.add_argument('--warmup', type=int, default=5, help='untimed calls per model (default 5)')
    parser.add_argument(
        '--repeats',
        type=int,
        default=None,
        help='timed calls per model (latency, default 30) or timed rounds per '
        'measurement (throughput, default 5)',
    )
    parser.add_argument('--device', choices=['cpu', 'cuda'], default='cpu')
    parser.add_argument(
        '--mode',
        choices=['latency', 'throughput'],
        default=None,
        help='latency (default on cpu) or throughput (default on cuda)',
    )
    throughput = parser.add_argument_group('throughput mode')
    throughput.add_argument(
        '--batches',
        type=int,
        nargs='*',
        default=[1, 64],
        help='inference batch sizes (default 1 64; none: no inference)',
    )
    throughput.add_argument(
        '--dtypes', nargs='+', choices=list(DTYPES), default=['float32', 'float16', 'bfloat16']
    )
    throughput.add_argument(
        '--train-settings',
        nargs='*',
        default=['32x224', '24x320', '8x512'],
        metavar='BATCHxSIZE',
        help='training batch x input side (default 32x224 24x320 8x512; none: no training table)',
    )
    throughput.add_argument(
        '--reference-arch',
        nargs='*',
        default=['s0'],
        choices=ARCHS,
        help="archs also trained as mmpretrain's MobileOne and without branches (default s0)",
    )
    throughput.add_argument(
        '--budget-s',
        type=float,
        default=None,
        help='stop measuring after this many seconds (rest: skipped)',
    )
    parser.add_argument(
        '--channels-last',
        action='store_true',
        help='models and inputs in torch.channels_last memory format',
    )
    parser.add_argument(
        '--onnx',
        action='store_true',
        help='also time our deploy models exported to ONNX in onnxruntime',
    )
    parser.add_argument(
        '--runtimes',
        action='store_true',
        help='also time our deploy models and the MobileNetV2 baselines in onnxruntime and '
        'ExecuTorch (XNNPACK), float32 and INT8, with the same threads (replaces --onnx rows)',
    )
    parser.add_argument(
        '--compare-settings',
        action='store_true',
        help='also time the deploy S0 classifier with/without channels_last at '
        'batch 1 and 8 (per image)',
    )
    parser.add_argument(
        '--sequential',
        action='store_true',
        help="time each model's calls back to back instead of round-robin "
        "with the task's other models",
    )
    parser.add_argument(
        '--matmul-size',
        type=int,
        default=2048,
        help='side of the float32 torch.mm that measures the peak (default 2048)',
    )
    parser.add_argument(
        '--out-dir', default='work_dirs/benchmark', help='where benchmark.json and benchmark.png go'
    )
    args = parser.parse_args(argv)
    if args.mode is None:
        args.mode = 'throughput' if args.device == 'cuda' else 'latency'
    if args.repeats is None:
        args.repeats = 30 if args.mode == 'latency' else 5
    for name in ('batch', 'threads', 'repeats', 'matmul_size'):
        if getattr(args, name) < 1:
            parser.error(f'--{name.replace("_", "-")} must be >= 1, got {getattr(args, name)}')
    if args.warmup < 0:
        parser.error(f'--warmup must be >= 0, got {args.warmup}')
    try:
        args.train_settings = [
            tuple(int(v) for v in item.lower().split('x')) for item in args.train_settings
        ]
    except ValueError:
        parser.error(f'--train-settings takes BATCHxSIZE items, got {args.train_settings}')
    if any(len(item) != 2 or min(item) < 1 for item in args.train_settings):
        parser.error(f'--train-settings takes BATCHxSIZE items, got {args.train_settings}')
    if args.input_size is not None and args.input_size < 32:
        parser.error(
            f'--input-size must be >= 32 (MobileOne downsamples 32x), got {args.input_size}'
        )
    return args


def throughput(args: argparse.Namespace) -> int:
    """--mode throughput: images/s tables (``analysis/throughput.py``)."""
    tasks = list(TASKS) if args.task == 'all' else [args.task]
    models = [
        (task, tuple(args.arch) if args.arch else archs)
        for task, archs in INFERENCE_MODELS
        if task in tasks
    ]
    settings = ThroughputSettings(
        device=args.device,
        inference_models=models,
        batches=args.batches,
        dtypes=args.dtypes,
        input_size=None if args.input_size is None else {t: args.input_size for t in TASKS},
        train_archs=args.arch or ARCHS,
        reference_archs=args.reference_arch,
        train_settings=args.train_settings,
        warmup=args.warmup,
        rounds=args.repeats,
        budget_s=args.budget_s,
    )
    if args.device == 'cpu':
        torch.set_num_threads(args.threads)
    result = run_throughput(settings)
    result['machine'] = machine_info(args.device, args.threads)
    machine = result['machine']
    print(f'\n{machine.get("gpu") or machine["cpu"]}, torch {machine["torch"]}, {machine["date"]}')
    print(format_throughput(result['rows']))
    os.makedirs(args.out_dir, exist_ok=True)
    path = osp.join(args.out_dir, 'throughput.json')
    with open(path, 'w') as f:
        json.dump(result, f, indent=2)
    print(f'\nwrote {path}')
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.mode == 'throughput':
        return throughput(args)
    settings = BenchmarkSettings(
        tasks=list(TASKS) if args.task == 'all' else [args.task],
        archs=args.arch or ['s0'],
        input_size=args.input_size,
        batch=args.batch,
        threads=args.threads,
        warmup=args.warmup,
        repeats=args.repeats,
        device=args.device,
        channels_last=args.channels_last,
        onnx=args.onnx,
        runtimes=args.runtimes,
        matmul_size=args.matmul_size,
        compare_settings=args.compare_settings,
        interleave=not args.sequential,
    )
    result = run_benchmark(settings)
    machine = result['machine']
    print(
        f'\n{machine["cpu"]}, {machine["cores"]} cores, {settings.threads} threads, '
        f'torch {machine["torch"]}, {settings.device}, {machine["date"]}, load average '
        f'{machine["load_average"]}; matmul peak {result["matmul_peak_gflops"]:.1f} GFLOP/s'
    )
    print(format_table(rows_from_result(result)))
    for note in result['notes']['skipped']:
        print(f'note: {note}')
    if result['settings_comparison']:
        print('\ndeploy S0 classifier, per image:')
        print(format_comparison(result['settings_comparison']))
    paths = write_outputs(result, args.out_dir)
    print(
        f'\nwrote {paths["json"]}'
        + (f' and {paths["png"]}' if paths['png'] else ' (no plot: no classifier rows)')
    )
    return 0


if __name__ == '__main__':
    sys.exit(main())
