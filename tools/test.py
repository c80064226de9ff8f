"""Test a checkpoint of any mobileone_dense config; the model is in deploy form for testing.

python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out results.pkl]
    [--cfg-options k=v ...]

CHECKPOINT: a file or an http(s):// URL (downloaded once into torch's hub cache), of our runs or
a public MobileOne classifier (Apple's mobileone_s0.pth.tar / mobileone_s0_unfused.pth.tar,
timm's, mmpretrain's), converted on load; deploy-form weights build the backbone with
deploy=True.
"""

import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a checkout
from mmengine.evaluator import DumpResults

import mobileone_dense  # noqa: F401
from mobileone_dense.engine.launch import (
    add_common_arguments,
    build_runner,
    load_config,
    parse_common_arguments,
)
from mobileone_dense.engine.public_weights import local_checkpoint
from mobileone_dense.errors import InputError


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Test a model')
    parser.add_argument('config', help='config file path')
    parser.add_argument(
        'checkpoint',
        help='checkpoint file or http(s):// URL: of a run of ours (deploy form or not), or a '
        "public MobileOne classifier (Apple's, timm's, mmpretrain's; converted on load)",
    )
    parser.add_argument(
        '--out',
        help='also dump every prediction to this .pkl file (mmengine '
        "DumpResults: one dict per image, e.g. pred_instances' "
        'bboxes/scores/labels)',
    )
    add_common_arguments(parser)
    args = parse_common_arguments(parser)
    if args.out is not None and not args.out.endswith(('.pkl', '.pickle')):
        parser.error(f'--out must name a .pkl or .pickle file, got {args.out!r}')
    return args


def main() -> None:
    args = parse_args()
    checkpoint = local_checkpoint(args.checkpoint)  # a URL: downloaded into the hub cache
    if not osp.isfile(checkpoint):
        raise SystemExit(f'checkpoint {checkpoint!r} does not exist')
    cfg = load_config(args.config, args.cfg_options, args.launcher, args.work_dir)
    cfg.load_from = checkpoint
    cfg.resume = False
    runner = build_runner(cfg, mode='test')  # checks data and checkpoint first
    if args.out is not None:
        runner.test_evaluator.metrics.append(DumpResults(out_file_path=args.out))
    runner.test()


if __name__ == '__main__':
    try:
        main()
    except InputError as error:  # bad data/checkpoint/config: the message says what to fix
        sys.exit(f'error: {error}')
