"""A learning result across the CPU's rounding: seeds x OpenMP threads x kernel sets.

    python tools/analysis/learning_robustness.py [--job quickstart] [--seeds 0 1 2 3 4 5]
        [--threads 1 2] [--kernels default other] [--work-dir work_dirs/robustness]
        [--out-json FILE] [-- JOB ARGS ...]

Runs the job once for every combination (runs of ``t`` threads go ``cores // t`` at a time, so
that no two runs share a core; the result of a run does not depend on what else runs, only its
duration does), and prints every run's figures, then min / median / max of each over all runs.
The jobs:

- ``quickstart``: ``demo/quickstart.py --seed S``; bbox mAP@0.5 and mAP of its deploy files;
- ``classifier``, ``segmentor``: the suite's learning runs (``tests/learning_run.py``, the
  session fixtures' runs with another seed): the deploy EMA classifier's top-1 and the deploy
  segmentor's mIoU, the figures the suite asserts floors on.

A training run's outcome depends on floating-point rounding: the order of its sums (thread
count), the kernels (the CPU's instruction set: torch and oneDNN pick the widest one the CPU
has) and the seed. The kernel sets:

- ``default``: what torch picks on this CPU;
- ``other``: one step down: ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2`` where the default
  is AVX-512, ``ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41`` where it is AVX2 (the same
  machine, different rounding).

Arguments after ``--`` go to every run of the job (e.g. ``-- --iters 120``).
docs/get_started.md has the quickstart's table, docs/tests.md the suite's.
"""

import argparse
import concurrent.futures
import json
import os
import os.path as osp
import platform
import re
import statistics
import subprocess
import sys
import time
from typing import Dict, List

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
# job -> (script and its arguments before the seed's, the names of its figures, their pattern)
JOBS = {
    'quickstart': (
        [osp.join(REPO, 'demo', 'quickstart.py')],
        ('mAP@0.5', 'mAP'),
        re.compile(r'bbox mAP@0\.5 = ([0-9.]+), mAP@\[\.5:\.95\] = ([0-9.]+)'),
    ),
    'classifier': (
        [osp.join(REPO, 'tests', 'learning_run.py'), 'classifier'],
        ('top-1',),
        re.compile(r'classifier top-1 = ([0-9.]+)'),
    ),
    'segmentor': (
        [osp.join(REPO, 'tests', 'learning_run.py'), 'segmentor'],
        ('mIoU',),
        re.compile(r'segmentor mIoU = ([0-9.]+)'),
    ),
}


def cpu_capability() -> str:
    """torch's kernel set on this CPU by default ('AVX512', 'AVX2', ...)."""
    out = subprocess.run(
        [sys.executable, '-c', 'import torch; print(torch.backends.cpu.get_cpu_capability())'],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k not in KERNEL_VARIABLES},
        check=True,
    )
    return out.stdout.strip()


KERNEL_VARIABLES = ('ATEN_CPU_CAPABILITY', 'ONEDNN_MAX_CPU_ISA')


def kernel_environment(name: str, default_capability: str) -> Dict[str, str]:
    """The environment variables of kernel set ``name`` ('default' or 'other')."""
    if name == 'default':
        return {}
    if default_capability.upper().startswith('AVX512'):
        return dict(ATEN_CPU_CAPABILITY='avx2', ONEDNN_MAX_CPU_ISA='AVX2')
    return dict(ATEN_CPU_CAPABILITY='default', ONEDNN_MAX_CPU_ISA='SSE41')


def cpu_model() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            return next(line.split(':', 1)[1].strip() for line in f if 'model name' in line)
    except (OSError, StopIteration):
        return platform.processor() or 'unknown CPU'


def run_job(
    job: str, seed: int, threads: int, kernels: Dict[str, str], work_dir: str, extra: List[str]
) -> dict:
    """One run of ``job``; returns its settings, figures (``values``, in the order of the job's
    names) and seconds, or ``error`` with the end of its output."""
    script, _, pattern = JOBS[job]
    env = {k: v for k, v in os.environ.items() if k not in KERNEL_VARIABLES}
    # passive: waiting threads sleep instead of spinning, so runs beside other work are not
    # slowed several times over (the results do not change, only the duration)
    env.update(kernels, OMP_NUM_THREADS=str(threads), OMP_WAIT_POLICY='PASSIVE')
    start = time.time()
    result = subprocess.run(
        [sys.executable, *script, '--seed', str(seed), '--work-dir', work_dir, *extra],
        capture_output=True,
        text=True,
        env=env,
    )
    found = pattern.search(result.stdout)
    return dict(
        seed=seed,
        threads=threads,
        kernels=' '.join(f'{k}={v}' for k, v in kernels.items()) or 'default',
        values=[float(v) for v in found.groups()] if found else None,
        seconds=round(time.time() - start, 1),
        error=None if found else (result.stdout + result.stderr)[-2000:],
    )


def summary(values: List[float]) -> str:
    """'min / median / max' of ``values`` with the spread (max - min)."""
    low, middle, high = min(values), statistics.median(values), max(values)
    return f'min {low:.3f} / median {middle:.3f} / max {high:.3f} (spread {high - low:.3f})'


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index('--') + 1 :] if '--' in argv else []
    own = argv[: argv.index('--')] if '--' in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--job', choices=list(JOBS), default='quickstart')
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2, 3, 4, 5])
    parser.add_argument('--threads', type=int, nargs='+', default=[1, 2])
    parser.add_argument(
        '--kernels', nargs='+', default=['default', 'other'], choices=['default', 'other']
    )
    parser.add_argument('--work-dir', default='work_dirs/robustness')
    parser.add_argument('--out-json', help='write every run and the summary here')
    args = parser.parse_args(own)

    capability = cpu_capability()
    names = JOBS[args.job][1]
    print(f'CPU: {cpu_model()}; torch kernels by default: {capability}; {args.job} args: {extra}')
    runs = []
    cores = os.cpu_count() or 1
    for kernels in args.kernels:
        env = kernel_environment(kernels, capability)
        for threads in args.threads:
            jobs = max(1, cores // threads)
            with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
                futures = [
                    pool.submit(
                        run_job,
                        args.job,
                        seed,
                        threads,
                        env,
                        osp.join(args.work_dir, f'{args.job}_{kernels}_t{threads}_s{seed}'),
                        extra,
                    )
                    for seed in args.seeds
                ]
                for future in futures:
                    run = future.result()
                    runs.append(run)
                    shown = (
                        '  '.join(f'{n} {v:.3f}' for n, v in zip(names, run['values']))
                        if run['error'] is None
                        else 'FAILED'
                    )
                    print(
                        f'kernels {run["kernels"]:<45} threads {threads} seed {run["seed"]}: '
                        f'{shown}  ({run["seconds"]:.0f} s)',
                        flush=True,
                    )
                    if run['error']:
                        print(run['error'], file=sys.stderr)
    done = [r for r in runs if r['error'] is None]
    if done:
        print(f'\n{len(done)} of {len(runs)} runs:')
        for i, name in enumerate(names):
            print(f'  {name}: {summary([r["values"][i] for r in done])}')
    if args.out_json:
        with open(args.out_json, 'w') as f:
            json.dump(
                dict(
                    job=args.job,
                    figures=names,
                    cpu=cpu_model(),
                    capability=capability,
                    extra=extra,
                    runs=runs,
                ),
                f,
                indent=1,
            )
    return 0 if len(done) == len(runs) else 1


if __name__ == '__main__':
    sys.exit(main())
