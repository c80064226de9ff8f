"""Reproducer: CPU training in channels_last crashes or hangs (torch / oneDNN), smallest case first.

    python tools/analysis/channels_last_training_repro.py [--cases ...] [--trials 6]
        [--kernels default avx2] [--timeout 60]

Each trial is a fresh process (float32, 5 SGD steps, model and input in ``torch.channels_last``)
run with a time limit, so a crash (heap corruption: "double free", "corrupted size vs.
prev_size", SIGABRT / SIGSEGV) or a hang is reported as such instead of taking the caller down.
The cases, from a single layer up to the whole network (every case but ``mobileone_s0`` is plain
torch, ready for torch's issue tracker):

- ``conv_bn``: one depthwise 3x3 conv + BN + ReLU at S0's stage-1 shape;
- ``block``: one MobileOne-like block (k=4 conv+BN branches, a 1x1 conv+BN branch and an identity
  BN, summed, ReLU), depthwise then pointwise, at the same shape;
- ``stack``: S0's layout in such blocks (stem, 4 stages: 48/128/256/1024 channels), pooling and a
  linear head, batch 2 at 32 px;
- ``mobileone_s0``: this package's S0 classifier network (``analysis.throughput``), as
  ``tests/test_gpu_setup.py`` ran it before channels_last training was taken off the CPU.

Kernel sets: ``default`` (what torch picks on this CPU) and ``avx2`` (``ATEN_CPU_CAPABILITY=avx2
ONEDNN_MAX_CPU_ISA=AVX2``). docs/performance.md has the measured output. Re-run after a torch
upgrade before running channels_last training on the CPU again.
"""

import argparse
import os
import os.path as osp
import platform
import signal
import subprocess
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

KERNELS = {'default': {}, 'avx2': dict(ATEN_CPU_CAPABILITY='avx2', ONEDNN_MAX_CPU_ISA='AVX2')}
CASES = ('conv_bn', 'block', 'stack', 'mobileone_s0')


def conv_bn(cin: int, cout: int, kernel: int, stride: int, groups: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    )


class Block(nn.Module):
    """MobileOne's train-time block in plain torch: k conv+BN branches, a 1x1 conv+BN branch and
    an identity BN (when shapes allow), summed, then ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, groups: int, k: int = 4):
        super().__init__()
        self.branches = nn.ModuleList(conv_bn(cin, cout, kernel, stride, groups) for _ in range(k))
        self.scale = conv_bn(cin, cout, 1, stride, groups) if kernel > 1 else None
        self.identity = nn.BatchNorm2d(cin) if cin == cout and stride == 1 else None

    def forward(self, x):
        out = sum(branch(x) for branch in self.branches)
        if self.scale is not None:
            out = out + self.scale(x)
        if self.identity is not None:
            out = out + self.identity(x)
        return F.relu(out)


def mobileone_unit(cin: int, cout: int, stride: int) -> nn.Sequential:
    """Depthwise 3x3 block then pointwise 1x1 block, as one MobileOne layer."""
    return nn.Sequential(Block(cin, cin, 3, stride, cin), Block(cin, cout, 1, 1, 1))


def s0_like() -> nn.Module:
    layers, cin = [Block(3, 48, 3, 2, 1, k=1)], 48
    for cout, blocks in ((48, 2), (128, 8), (256, 10), (1024, 1)):
        for i in range(blocks):
            layers.append(mobileone_unit(cin, cout, 2 if i == 0 else 1))
            cin = cout
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 1000))


def build(case: str):
    """(model, input batch) of one case."""
    if case == 'conv_bn':
        return nn.Sequential(conv_bn(48, 48, 3, 1, 48), nn.ReLU()), (2, 48, 16, 16)
    if case == 'block':
        return mobileone_unit(48, 48, 1), (2, 48, 16, 16)
    if case == 'stack':
        return s0_like(), (2, 3, 32, 32)
    sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
    from mobileone_dense.analysis.throughput import classifier_network

    return classifier_network('s0', 'train-time'), (2, 3, 32, 32)


def train_once(case: str, steps: int = 5) -> None:
    """The child process: ``steps`` SGD steps of ``case`` in channels_last, float32."""
    torch.manual_seed(0)
    model, shape = build(case)
    model = model.to(memory_format=torch.channels_last).train()
    x = torch.randn(*shape).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    for _ in range(steps):
        optimizer.zero_grad()
        out = model(x)
        out.float().square().mean().backward()
        optimizer.step()
    print('ok', flush=True)


def trial(case: str, kernels: str, timeout: float) -> str:
    """One fresh process: 'ok', 'hang (> T s)' or 'crash (signal / exit status: last line)'."""
    env = dict(os.environ, **KERNELS[kernels])
    start = time.time()
    try:
        result = subprocess.run(
            [sys.executable, __file__, '--child', case],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return f'hang (> {timeout:.0f} s)'
    if result.returncode == 0 and result.stdout.strip().endswith('ok'):
        return f'ok ({time.time() - start:.1f} s)'
    code = result.returncode
    how = f'signal {signal.Signals(-code).name}' if code < 0 else f'exit status {code}'
    last = (result.stderr.strip().splitlines() or [''])[-1][:160]
    return f'crash ({how}: {last})'


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--cases', nargs='+', default=list(CASES), choices=CASES)
    parser.add_argument('--kernels', nargs='+', default=list(KERNELS), choices=list(KERNELS))
    parser.add_argument('--trials', type=int, default=6)
    parser.add_argument('--timeout', type=float, default=60.0, help='seconds per trial')
    parser.add_argument('--child', choices=CASES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        train_once(args.child)
        return 0
    print(
        f'torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, '
        f'{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads'
    )
    failures = 0
    for case in args.cases:
        for kernels in args.kernels:
            outcomes = [trial(case, kernels, args.timeout) for _ in range(args.trials)]
            bad = [o for o in outcomes if not o.startswith('ok')]
            failures += len(bad)
            print(f'{case:<13} {kernels:<8} {len(bad)} of {len(outcomes)} failed', flush=True)
            for outcome in bad:
                print(f'    {outcome}')
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
