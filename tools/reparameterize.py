"""Re-parameterize a trained checkpoint of any task into its deploy form.

    python tools/reparameterize.py CONFIG CHECKPOINT OUT.pth [--weights ema|raw]

Writes OUT.pth (deploy weights only) and OUT.py (the config with ``deploy=True`` on the backbone)
after checking on a random input that the deploy model's outputs match the train-time model's.
Both files are written atomically (temp file + rename).
"""

import argparse
import copy
import os.path as osp
import sys

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
from mobileone_dense.engine.deploy import (
    atomic_dump_config,
    atomic_save,
    deploy_checkpoint,
    deploy_config,
    max_relative_difference,
    output_tensors,
)


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
        '--tolerance', type=float, default=1e-5, help='largest accepted relative output difference'
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
    with torch.no_grad():
        call = (
            (lambda m: m(inputs, mode='tensor'))
            if hasattr(model, 'data_preprocessor')
            else (lambda m: m(inputs))
        )
        error = max_relative_difference(output_tensors(call(deploy)), output_tensors(call(model)))
    if error > args.tolerance:
        print(
            f'deploy outputs differ from the train-time model by {error:.2e} (relative) > '
            f'{args.tolerance:g}: nothing written',
            file=sys.stderr,
        )
        return 1
    out_config = osp.splitext(args.out)[0] + '.py'
    meta = dict(
        source_checkpoint=osp.abspath(args.checkpoint),
        weights=args.weights,
        deploy_error=error,
        dataset_meta=checkpoint.get('meta', {}).get('dataset_meta'),
    )
    atomic_save(deploy_checkpoint(deploy, meta), args.out)
    atomic_dump_config(deploy_config(cfg, osp.abspath(args.out)), out_config)
    print(
        f'deploy model verified (max relative difference {error:.2e}); wrote {args.out} and '
        f'{out_config}'
    )
    return 0


if __name__ == '__main__':
    sys.exit(main())
