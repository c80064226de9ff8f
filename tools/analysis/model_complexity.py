"""Self-check of every MobileOne arch: reparameterize, compare with train-time, count params/MACs.

Prints one row per arch: deploy-form parameters and multiply-accumulates of backbone + global
pool + 1000-class linear head at 224x224 beside the paper's Tables 9/13, and the
deploy-vs-train-time error
(max |difference| relative to the output's max magnitude, in float64, eval mode, randomized BN
statistics).

    python tools/analysis/model_complexity.py [--archs s0 s1 ...] [--input-size 224]
    python tools/analysis/model_complexity.py --configs CONFIG [CONFIG ...] [--input-size 320]

With ``--configs``, prints the deploy-form params/MACs of each config's whole model instead.
"""

import argparse
import os.path as osp
import sys
from typing import List

import torch

import mobileone_dense  # noqa: F401  (registers the mobileone_dense scope)
from mobileone_dense.analysis import (
    PAPER_COMPLEXITY,
    deploy_error,
    measure_classifier_complexity,
    randomize_batch_norm,
)
from mobileone_dense.models import MobileOne, reparameterize


def parse_args(argv: List[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument(
        '--archs',
        nargs='+',
        default=list(PAPER_COMPLEXITY),
        choices=list(PAPER_COMPLEXITY),
        help='archs to check (default: all)',
    )
    parser.add_argument('--configs', nargs='+', help="count these configs' deploy models instead")
    parser.add_argument(
        '--input-size',
        type=int,
        default=None,
        help='square input side in pixels (default 224; 320 with --configs)',
    )
    parser.add_argument(
        '--tolerance',
        type=float,
        default=1e-5,
        help='largest accepted relative deploy-vs-train-time error',
    )
    return parser.parse_args(argv)


def config_table(configs: List[str], input_size: int) -> int:
    from mobileone_dense.analysis import params_and_macs
    from mobileone_dense.apis import build_model_from_config

    print(
        f'{"config":<40} {"params (M)":>10} {"MACs (G)":>9}   '
        f'(deploy form, {input_size}x{input_size})'
    )
    for config in configs:
        model = reparameterize(build_model_from_config(config))
        params, macs = params_and_macs(model, torch.zeros(1, 3, input_size, input_size))
        print(f'{osp.basename(config):<40} {params:>10.2f} {macs / 1e3:>9.2f}', flush=True)
    return 0


def main(argv: List[str]) -> int:
    args = parse_args(argv)
    if args.configs:
        return config_table(args.configs, args.input_size or 320)
    args.input_size = args.input_size or 224
    torch.manual_seed(0)
    inputs = torch.randn(2, 3, args.input_size, args.input_size)
    calibration = torch.randn(4, 3, args.input_size, args.input_size)
    header = (
        f'{"arch":<5} {"params (M)":>10} {"paper":>6} {"delta":>7}   {"MACs (M)":>9} '
        f'{"paper":>6} {"delta":>7}   {"deploy vs train-time (rel.)":>27}'
    )
    print(header)
    print('-' * len(header))
    failed = []
    for arch in args.archs:
        row = measure_classifier_complexity(arch, args.input_size)
        backbone = MobileOne(arch, out_indices=(0, 1, 2, 3))
        backbone = randomize_batch_norm(backbone, seed=1, calibration_inputs=calibration)
        error = deploy_error(backbone, inputs)
        status = 'ok' if error <= args.tolerance else 'FAIL'
        if status != 'ok':
            failed.append(arch)
        print(
            f'{arch:<5} {row.params_m:>10.3f} {row.paper_params_m:>6} '
            f'{row.params_delta:>+7.1%}   '
            f'{row.macs_m:>9.1f} {row.paper_macs_m:>6} {row.macs_delta:>+7.1%}   '
            f'{error:>22.1e} {status}',
            flush=True,
        )
    if args.input_size != 224:
        print(
            f'note: counts are at {args.input_size}x{args.input_size}; the paper counts at 224x224'
        )
    if failed:
        print(
            f'reparameterizing changed the outputs of {failed} beyond {args.tolerance}',
            file=sys.stderr,
        )
        return 1
    print(
        f'all {len(args.archs)} archs: deploy outputs match the train-time model within '
        f'{args.tolerance:g} (relative)'
    )
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
