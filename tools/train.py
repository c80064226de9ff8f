"""Train any mobileone_dense config (detection, segmentation, classification) with mmengine.

python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp] [--auto-scale-lr]
    [--cfg-options k=v ...]
torchrun --nproc_per_node=N tools/train.py CONFIG --launcher pytorch
"""

import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a checkout
import mobileone_dense  # noqa: F401  (registers our scope and `mobileone_dense::` configs)
from mobileone_dense.engine.launch import (
    add_common_arguments,
    build_runner,
    load_config,
    parse_common_arguments,
)
from mobileone_dense.errors import InputError


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Train a model')
    parser.add_argument('config', help='config file path')
    parser.add_argument(
        '--resume',
        nargs='?',
        const='auto',
        default=None,
        help='resume from CKPT, or from the latest checkpoint of the work dir if no CKPT is given',
    )
    parser.add_argument('--amp', action='store_true', help='automatic mixed precision')
    parser.add_argument(
        '--auto-scale-lr',
        action='store_true',
        help='scale the lr linearly with the total batch (auto_scale_lr base)',
    )
    add_common_arguments(parser)
    return parse_common_arguments(parser)


def main() -> None:
    args = parse_args()
    cfg = load_config(args.config, args.cfg_options, args.launcher, args.work_dir)
    if args.amp:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    if args.auto_scale_lr:
        if 'auto_scale_lr' not in cfg or 'base_batch_size' not in cfg.auto_scale_lr:
            raise SystemExit('--auto-scale-lr needs auto_scale_lr.base_batch_size in the config')
        cfg.auto_scale_lr.enable = True
    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif args.resume is not None:
        cfg.resume, cfg.load_from = True, args.resume
    runner = build_runner(cfg, mode='train')  # checks data and checkpoint first
    runner.train()


if __name__ == '__main__':
    try:
        main()
    except InputError as error:  # bad data/checkpoint/config: the message says what to fix
        sys.exit(f'error: {error}')
