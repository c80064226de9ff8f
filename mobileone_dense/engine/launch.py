"""Command-line options, config loading and runner building shared by tools/train.py and test.py."""

import argparse
import os
import os.path as osp
from typing import Optional

from mmengine.config import Config, DictAction

from ..registry import RUNNERS
from .checks import check_checkpoint_fits, check_data, explain_registry_error, read_checkpoint
from .distributed import setup_cpu_distributed
from .public_weights import adopt_public_weights
from .runner import Runner


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """--work-dir, --cfg-options, --launcher and --local-rank, as mmdet's tools have them."""
    parser.add_argument(
        '--work-dir', help='where logs (and checkpoints) go (default: ./work_dirs/<config name>)'
    )
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        metavar='KEY=VALUE',
        help='override config entries, e.g. train_cfg.max_epochs=1',
    )
    parser.add_argument(
        '--launcher',
        choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none',
        help='job launcher (pytorch for torchrun)',
    )
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def parse_common_arguments(parser: argparse.ArgumentParser) -> argparse.Namespace:
    args = parser.parse_args()
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def load_config(
    path: str, cfg_options: Optional[dict], launcher: str, work_dir: Optional[str]
) -> Config:
    """Read ``path``, apply ``--cfg-options``, set launcher and work dir (mmdet's conventions)."""
    if not osp.isfile(path):
        raise FileNotFoundError(f'config file {path!r} does not exist')
    cfg = Config.fromfile(path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    cfg.launcher = launcher
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(path))[0])
    return cfg


def build_runner(cfg: Config, mode: Optional[str] = None) -> Runner:
    """Our checkpoint-safe ``Runner`` unless the config names another ``runner_type``.

    With ``mode`` (``'train'`` or ``'test'``: what the runner will do), the data of that run and
    the checkpoint it loads are checked first (``engine/checks.py``): a missing or empty data set,
    class counts that contradict the model or a truncated/mismatched checkpoint raise an
    ``InputError`` that says what to fix, before anything runs. A ``type=`` no registry holds
    raises ``UnknownTypeError`` with the closest registered names.

    The settings the checks compute (``check_data``'s: the label checks' class counts) are
    merged into ``cfg`` here, and the checkpoint they read is handed to our Runner, which then
    does not read the file again. A public MobileOne checkpoint (Apple's, timm's, mmpretrain's)
    is converted to our layout on that way, and deploy-form weights to test set
    ``model.backbone.deploy=True`` (``public_weights.adopt_public_weights``).
    """
    checkpoint = None
    if mode is not None:
        cfg.merge_from_dict(check_data(cfg, mode))
        checkpoint = read_checkpoint(cfg)  # a truncated file fails before any build
        if checkpoint is not None:
            checkpoint, settings = adopt_public_weights(cfg, *checkpoint, mode)
            cfg.merge_from_dict(settings)
    setup_cpu_distributed(cfg)  # torchrun without a GPU: gloo group, DDP without device ids
    try:
        runner = RUNNERS.build(cfg) if 'runner_type' in cfg else Runner.from_cfg(cfg)
    except KeyError as error:
        explained = explain_registry_error(error, cfg, cfg.get('default_scope'))
        if explained is None:
            raise
        raise explained from None
    if checkpoint is not None:
        check_checkpoint_fits(cfg, runner.model, *checkpoint, mode)
        if isinstance(runner, Runner):
            runner.use_loaded_checkpoint(*checkpoint)
    return runner
