"""The dataset configs inside dataset wrappers: the one home for unwrapping them.

mmengine/mmdet/mmseg/mmpretrain wrappers hold their data set under ``dataset``
(``RepeatDataset``, ``ClassBalancedDataset``, mmdet's ``MultiImageMixDataset``...) or, for
``ConcatDataset``, a list under ``datasets``.
"""

from typing import Iterator, Tuple


def innermost_dataset(dataset_cfg: dict) -> dict:
    """The dataset config inside the ``dataset`` wrappers of ``dataset_cfg`` (itself if none).

    A ``ConcatDataset`` is returned as it is: it has several data sets (see
    :func:`leaf_datasets`).
    """
    while isinstance(dataset_cfg.get('dataset'), dict):
        dataset_cfg = dataset_cfg['dataset']
    return dataset_cfg


def is_wrapper(dataset_cfg: dict) -> bool:
    """Whether ``dataset_cfg`` wraps other dataset configs (``datasets`` or ``dataset``)."""
    return 'datasets' in dataset_cfg or isinstance(dataset_cfg.get('dataset'), dict)


def dataset_configs(dataset_cfg: dict, key: str = 'dataset') -> Iterator[Tuple[str, dict]]:
    """``(config key, dataset config)`` of ``dataset_cfg`` and of every dataset config inside
    it, wrappers before their contents, in config order (ConcatDataset's ``datasets`` too).

    ``key`` is the config key of ``dataset_cfg`` (e.g. ``'train_dataloader.dataset'``); the
    inner keys extend it (``'train_dataloader.dataset.datasets.1'``). The dicts are the
    config's own (not copies).
    """
    yield key, dataset_cfg
    if 'datasets' in dataset_cfg:
        for i, child in enumerate(dataset_cfg['datasets']):
            yield from dataset_configs(child, f'{key}.datasets.{i}')
    elif isinstance(dataset_cfg.get('dataset'), dict):
        yield from dataset_configs(dataset_cfg['dataset'], f'{key}.dataset')


def leaf_datasets(dataset_cfg: dict, key: str = 'dataset') -> Iterator[Tuple[str, dict]]:
    """:func:`dataset_configs` without the wrappers: the data sets that read data."""
    return ((k, d) for k, d in dataset_configs(dataset_cfg, key) if not is_wrapper(d))
