"""Re-parameterize a trained checkpoint of any task into its deploy form.

    python tools/reparameterize.py CONFIG CHECKPOINT OUT.pth [--weights ema|raw]

Writes OUT.pth (deploy weights only, ``meta['dataset_meta']`` with the class names and palette)
and OUT.py (the deploy model in plain mmdet/mmseg/mmpretrain config terms: ``deploy=True`` on the
backbone, ``norm_cfg=None`` on the parts whose Conv+BN were folded) after checking on a random
input that the deploy model computes the train-time model's function: decided in float64, where
the fold is exact (``--tolerance``); the float32 difference is rounding, larger where outputs are
small (an early checkpoint): it is printed, with a warning above 1e-3. Both files are written
atomically (temp file + rename).
"""

import argparse
import copy
import os.path as osp
import sys
import warnings

import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a checkout
from mmengine.config import Config

import mobileone_dense  # noqa: F401
from mobileone_dense import reparameterize
from mobileone_dense.apis import build_model_from_config
from mobileone_dense.converters import (
    load_checkpoint_file,
    load_weights_strictly,
    training_weights,
)
from mobileone_dense.engine.deploy_checkpoints import EXACT_TOLERANCE, FLOAT32_WARNING, deploy_error
from mobileone_dense.engine.deploy_files import write_deploy_files
from mobileone_dense.errors import InputError


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[1])
    parser.add_argument('config', help='the training config')
    parser.add_argument('checkpoint', help='a checkpoint written by training with that config')
    parser.add_argument(
        'out',
        help='deploy checkpoint to write (.pth); the deploy config is '
        'written beside it with the .py suffix',
    )
    parser.add_argument(
        '--weights',
        choices=['ema', 'raw'],
        default='ema',
        help='ema: the EMA-averaged weights when the checkpoint has them (mmengine '
        'stores those as state_dict); raw: the un-averaged training weights',
    )
    parser.add_argument(
        '--input-size',
        type=int,
        nargs=2,
        default=(256, 256),
        metavar=('H', 'W'),
        help='random input used to verify the deploy model',
    )
    parser.add_argument(
        '--tolerance',
        type=float,
        default=EXACT_TOLERANCE,
        help='largest accepted relative output difference, computed in float64',
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = Config.fromfile(args.config)
    model = build_model_from_config(cfg)
    checkpoint = load_checkpoint_file(args.checkpoint, run_checkpoint=True)
    if args.weights == 'ema' and 'ema_state_dict' not in checkpoint:
        print('note: the checkpoint has no EMA weights; re-parameterizing its state_dict')
    load_weights_strictly(
        model, training_weights(checkpoint, args.weights), source=f'checkpoint {args.checkpoint!r}'
    )
    model.eval()
    deploy = reparameterize(copy.deepcopy(model)).eval()
    inputs = torch.randn(1, 3, *args.input_size, generator=torch.Generator().manual_seed(0))
    error = deploy_error(model, inputs, torch.float64)
    error32 = deploy_error(model, inputs, torch.float32, deploy=deploy)
    if error > args.tolerance:
        print(
            f'deploy outputs differ from the train-time model by {error:.2e} (relative, float64) '
            f'> {args.tolerance:g}: the re-parameterization is not exact; nothing written',
            file=sys.stderr,
        )
        return 1
    if error32 > FLOAT32_WARNING:
        warnings.warn(
            f'in float32 the deploy outputs differ from the train-time model by {error32:.2e} '
            f'(relative; exact in float64: {error:.1e}): rounding, largest where outputs are '
            'small, as in an early checkpoint',
            stacklevel=1,
        )
    out_config = osp.splitext(args.out)[0] + '.py'
    meta = dict(
        source_checkpoint=osp.abspath(args.checkpoint),
        weights=args.weights,
        deploy_error=error32,
        deploy_error_float64=error,
        # Runner checkpoints carry it; plain state dicts do not: completed from the config
        dataset_meta=(checkpoint.get('meta') or {}).get('dataset_meta'),
    )
    write_deploy_files(cfg, model, deploy, osp.abspath(args.out), out_config, meta)
    print(
        f'deploy model verified (max relative difference {error:.1e} in float64, '
        f'{error32:.1e} in float32); wrote {args.out} and {out_config}'
    )
    return 0


if __name__ == '__main__':
    try:
        sys.exit(main())
    except InputError as error:  # bad checkpoint/config: the message says what to fix
        sys.exit(f'error: {error}')
