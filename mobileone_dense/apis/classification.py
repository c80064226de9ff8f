"""ImageNet classification configs: change their schedule (length, curriculum) consistently.

The configs derive their training pipelines and the ``SwitchRecipeHook`` schedule from one list,
``curriculum = [(first epoch, crop size, AutoAugment strength), ...]``, when they are read, so
``--cfg-options`` cannot change it afterwards (nor rescale the 300-epoch schedulers). Do it in
Python on the loaded config, then train from the dumped file::

    import mobileone_dense
    from mmengine.config import Config
    from mobileone_dense.apis import set_imagenet_schedule
    cfg = Config.fromfile('configs/mobileone_s2_imagenet.py')
    set_imagenet_schedule(cfg, max_epochs=100)   # schedulers and curriculum epochs x 1/3
    cfg.dump('mobileone_s2_imagenet_100e.py')    # then: python tools/train.py <that file>
"""

import copy
from typing import List, Optional, Sequence, Tuple

from mmengine.config import Config

Stage = Tuple[int, int, float]
# mmpretrain's evaluation: short edge to 256, centre crop 224
EVAL_RESIZE_RATIO = 256 / 224


def _type_is(transform: dict, name: str) -> bool:
    return str(transform.get('type', '')).split('.')[-1] == name


def _pipeline_at(template: Sequence[dict], size: int, strength: float) -> List[dict]:
    pipeline = copy.deepcopy(list(template))
    crops = [t for t in pipeline if _type_is(t, 'RandomResizedCrop')]
    if len(crops) != 1:
        raise ValueError(
            'the training pipeline needs exactly one RandomResizedCrop, found '
            f'{len(crops)}: {[t.get("type") for t in pipeline]}'
        )
    crops[0]['scale'] = size
    for transform in pipeline:
        if _type_is(transform, 'ScaledAutoAugment'):
            transform['strength'] = strength
    return pipeline


def _switch_hook(cfg: Config) -> Optional[dict]:
    return next((h for h in cfg.get('custom_hooks', []) if _type_is(h, 'SwitchRecipeHook')), None)


def _check_curriculum(curriculum: Sequence[Sequence], max_epochs: int) -> List[Stage]:
    stages = [(int(first), int(size), float(strength)) for first, size, strength in curriculum]
    firsts = [first for first, _, _ in stages]
    if not stages or firsts[0] != 0 or firsts != sorted(set(firsts)) or firsts[-1] >= max_epochs:
        raise ValueError(
            f'the curriculum needs stages starting at epoch 0, at increasing epochs '
            f'below max_epochs={max_epochs}; got {stages}'
        )
    return stages


def set_imagenet_schedule(
    cfg: Config,
    max_epochs: Optional[int] = None,
    curriculum: Optional[Sequence[Sequence]] = None,
    eval_size: Optional[int] = None,
) -> Config:
    """Change a classification config's length, curriculum or evaluation size, in place.

    Args:
        cfg: a loaded ``configs/mobileone_*_imagenet.py`` (or a config built the same way).
        max_epochs: new number of epochs; every epoch of the parameter schedulers (warm-up end,
            cosine begin/end/``T_max``) is scaled by ``max_epochs / old``, rounded, keeping at
            least one warm-up epoch; so are the curriculum's epochs unless ``curriculum`` is given.
        curriculum: new ``[(first epoch (0-based), crop size, strength), ...]``; the first stage
            must start at epoch 0. The dataset's pipeline becomes the first stage's, and the
            ``SwitchRecipeHook`` switches to each later stage before its first epoch.
        eval_size: validation/test crop (the short edge is resized to ``eval_size * 256 / 224``).

    Returns ``cfg``. Applying the config's own curriculum changes nothing.
    """
    old_max = cfg.train_cfg.max_epochs
    stages = list(cfg.get('curriculum', [(0, None, None)]))
    if max_epochs is not None and max_epochs != old_max:
        if max_epochs < 1:
            raise ValueError(f'max_epochs must be >= 1, got {max_epochs}')

        def scale(epoch):
            return 0 if epoch == 0 else max(1, int(round(epoch * max_epochs / old_max)))

        for scheduler in cfg.get('param_scheduler', []):
            if not scheduler.get('by_epoch', True):
                continue
            span = scheduler.get('end', old_max) - scheduler.get('begin', 0)
            for key in ('begin', 'end'):
                if key in scheduler:
                    scheduler[key] = scale(scheduler[key])
            if scheduler.get('T_max') is not None:
                # the base's cosine runs from its begin to its end: keep it so
                scheduler['T_max'] = (
                    scheduler.get('end', max_epochs) - scheduler.get('begin', 0)
                    if scheduler['T_max'] == span
                    else scale(scheduler['T_max'])
                )
        cfg.train_cfg.max_epochs = max_epochs
        if curriculum is None and stages[0][1] is not None:
            curriculum = [(scale(first), size, strength) for first, size, strength in stages]
    if curriculum is not None:
        stages = _check_curriculum(curriculum, cfg.train_cfg.max_epochs)
        dataset = cfg.train_dataloader.dataset
        template = dataset.pipeline
        dataset.pipeline = _pipeline_at(template, *stages[0][1:])
        cfg.train_pipeline = dataset.pipeline
        hook = _switch_hook(cfg)
        if hook is None and len(stages) > 1:
            raise ValueError('the config has no SwitchRecipeHook to switch the curriculum stages')
        if hook is not None:
            hook.schedule = [
                dict(action_epoch=first + 1, train_pipeline=_pipeline_at(template, size, strength))
                for first, size, strength in stages[1:]
            ]
        cfg.curriculum = [tuple(stage) for stage in stages]
    if eval_size is not None:
        for loader in ('val_dataloader', 'test_dataloader'):
            for transform in cfg.get(loader, {}).get('dataset', {}).get('pipeline', []):
                if _type_is(transform, 'ResizeEdge'):
                    transform['scale'] = int(round(eval_size * EVAL_RESIZE_RATIO))
                elif _type_is(transform, 'CenterCrop'):
                    transform['crop_size'] = eval_size
    return cfg
