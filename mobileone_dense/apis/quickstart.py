"""The embedded default job: SSDLite-MobileOne-S0 on a generated COCO-format set, on the CPU."""

import os.path as osp

from mmengine.config import Config

from ..datasets.wrappers import innermost_dataset
from .coco_data import use_coco_folder

# The configs shipped with the package (a symlink to the checkout's configs/ when editable);
# a checkout used without installing (PYTHONPATH, tools/cuda_check.sh) has only configs/.
_PACKAGE = osp.dirname(osp.dirname(osp.abspath(__file__)))
PACKAGE_CONFIGS = next(
    (
        path
        for path in (
            osp.join(_PACKAGE, '.mim', 'configs', 'configs'),
            osp.join(osp.dirname(_PACKAGE), 'configs'),
        )
        if osp.isdir(path)
    ),
    osp.join(_PACKAGE, '.mim', 'configs', 'configs'),
)


# The generated set of the quickstart (``make_coco_shapes``): training and validation images.
QUICKSTART_IMAGES = dict(num_train=128, num_val=24)


def quickstart_config(
    data_root: str,
    work_dir: str,
    max_iters: int = 400,
    batch_size: int = 4,
    lr: float = 0.1,
    warmup_iters: int = 10,
    input_size: int = 192,
    clip_grad_norm: float = 35.0,
    ema_momentum: float = 0.05,
    seed: int = 0,
    config: str = osp.join(PACKAGE_CONFIGS, 'ssdlite_mobileone_s0_coco.py'),
) -> Config:
    """The real S0 detection config (same backbone, neck and head), shortened to a few minutes
    of CPU training.

    What changes, and why: the data paths; an iteration-based schedule (``max_iters``, a
    ``warmup_iters`` linear warm-up then cosine) instead of 200 epochs with 4500 warm-up
    iterations; a higher learning rate for the tiny batch, with the gradient norm clipped at
    ``clip_grad_norm``; the light augmentation (resize + flip) that a generated set needs to be
    learnt in that time; ``input_size`` square inputs for training, validation and test instead
    of 320 (a CPU iteration costs in proportion to batch x pixels: at 192 the same time buys more
    iterations, which is what learning needs here; the generated shapes are large enough); and
    an exponential moving average of the weights (``EMAHook``, ``ema_momentum`` per iteration,
    BN statistics averaged too), validated, tested and shipped as the deploy model. With the
    averaged weights the end result no longer follows the last few steps of a noisy
    small-batch trajectory, which is what made the outcome depend on the CPU's floating-point
    rounding. The backbone keeps the BN settings it was measured with (``norm_cfg`` below),
    whatever the detection config's default becomes, and starts from scratch (the config's
    default downloads Apple's ImageNet weights; the quickstart runs offline). Validation runs
    once at the end, on the deploy model. docs/get_started.md ("What `make demo` does") has the
    robustness matrix (seeds x threads x kernel sets) of these defaults and the schedules tried
    before.
    """
    cfg = Config.fromfile(config)
    use_coco_folder(cfg, data_root)
    cfg.work_dir = work_dir
    cfg.train_dataloader.batch_size = batch_size
    cfg.train_dataloader.sampler = dict(type='InfiniteSampler', shuffle=True)
    # without RepeatDataset (mmdet's own configs): a few passes are enough
    cfg.train_dataloader.dataset = train_set = innermost_dataset(cfg.train_dataloader.dataset)
    train_set.pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='LoadAnnotations', with_bbox=True),
        dict(type='Resize', scale=(input_size, input_size), keep_ratio=False),
        dict(type='RandomFlip', prob=0.5),
        dict(type='PackDetInputs'),
    ]
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[loader].num_workers = 2
        cfg[loader].persistent_workers = False
        if loader != 'train_dataloader':
            for transform in cfg[loader].dataset.pipeline:
                if transform['type'] == 'Resize':
                    transform['scale'] = (input_size, input_size)
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
    cfg.param_scheduler = [
        dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=warmup_iters),
        dict(
            type='CosineAnnealingLR',
            begin=0,
            end=max_iters,
            T_max=max_iters,
            by_epoch=False,
            eta_min=0,
        ),
    ]
    cfg.model.backbone.norm_cfg = dict(type='BN', eps=0.001, momentum=0.03)
    cfg.model.backbone.init_cfg = None  # from scratch, offline: no ImageNet download
    cfg.optim_wrapper.optimizer.lr = lr
    cfg.optim_wrapper.clip_grad = dict(max_norm=clip_grad_norm, norm_type=2)
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=max_iters, by_epoch=False)
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=10)
    cfg.log_processor = dict(by_epoch=False)
    # before ReparameterizeHook (priority LOW), which then validates and ships the averaged model
    cfg.custom_hooks = [
        dict(type='EMAHook', momentum=ema_momentum, update_buffers=True, priority='ABOVE_NORMAL'),
        *cfg.get('custom_hooks', []),
    ]
    cfg.randomness = dict(seed=seed)
    return cfg
