"""A config's dataset meta (class names, palette) without reading any data: what inference and the
deploy checkpoints record when no trained run supplied it."""

import copy
from collections.abc import Mapping
from typing import Any, Optional

from mmengine.config import Config
from mmengine.registry import DATASETS

from .wrappers import leaf_datasets

LOADERS = ('test_dataloader', 'val_dataloader', 'train_dataloader')


def config_dataset_meta(cfg: Config) -> dict:
    """The metainfo (``classes``, ``palette``, ...) of the config's test data set (else its
    val or train data set; the first data set of a ``ConcatDataset``) as that data set would
    have it: its class's ``METAINFO`` updated by the config's ``metainfo`` (and mmpretrain's
    ``classes=``), through mmengine's own ``BaseDataset._load_metainfo``.

    Building the data set instead would need its files (mmseg's VOC data set checks them when
    it is built, even with ``lazy_init``). Returns plain dicts, lists and tuples (safe for
    ``torch.load(weights_only=True)``); ``{}`` when the config has no data set.
    """
    dataset = next((cfg[key].dataset for key in LOADERS if _has_dataset(cfg, key)), None)
    if dataset is None:
        return {}
    leaf = next(leaf_datasets(dataset), (None, dataset))[1]
    metainfo = dict(leaf.get('metainfo') or {})
    if leaf.get('classes') is not None and 'classes' not in metainfo:  # mmpretrain's old style
        metainfo['classes'] = leaf['classes']
    # in the config's scope: the root registry alone does not find e.g. mmseg's datasets
    with DATASETS.switch_scope_and_registry(cfg.get('default_scope')) as registry:
        dataset_class = registry.get(leaf.get('type', ''))
    load = getattr(dataset_class, '_load_metainfo', None)
    if load is not None:
        meta = load(copy.deepcopy(metainfo))
    else:
        meta = {**getattr(dataset_class, 'METAINFO', {}), **metainfo}
    return plain(meta)


def plain(value: Any) -> Any:
    """``value`` with every mapping made a ``dict`` (mmengine's ``ConfigDict`` too), recursively:
    what ``torch.load(weights_only=True)`` accepts."""
    if isinstance(value, Mapping):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain(item) for item in value)
    return value


def _has_dataset(cfg: Config, key: str) -> bool:
    loader: Optional[dict] = cfg.get(key)
    return isinstance(loader, Mapping) and isinstance(loader.get('dataset'), Mapping)
