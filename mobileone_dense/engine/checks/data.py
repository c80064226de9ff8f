"""Checks of a run's data before the runner builds anything: registered dataset and transform
types, class counts, data paths and annotation files.

mmdet/mmseg/mmpretrain find a missing folder, an empty annotation file or a class-count mismatch
only when they build the dataloaders (raw ``FileNotFoundError``/``JSONDecodeError``, or nothing at
all); these checks fail first, and each message names the problem, the config key and the fix.
They read the config and never change it: :func:`label_check_settings` returns the values it
computes, for the caller to apply.
"""

import mmap
import os
import os.path as osp
import re
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from mmengine.config import Config
from mmengine.registry import DATASETS, TRANSFORMS

from ...datasets.wrappers import dataset_configs, leaf_datasets
from ...errors import BadDataError, ConfigError, MissingDataError
from .registered import check_type, registry_class

# Where each kind of data set lives: the layouts of docs/{detection,segmentation,classification}.md.
LAYOUTS = {
    'CocoDataset': '<data_root>/annotations/instances_{train,val}2017.json and '
    '<data_root>/{train,val}2017/*.jpg',
    'COCOVOCSegDataset': '<data_root>/annotations/instances_train2017.json and '
    '<data_root>/train2017/*.jpg',
    'PascalVOCDataset': '<data_root> = VOCdevkit/VOC2012 with JPEGImages/*.jpg, '
    'SegmentationClass[Aug]/*.png and '
    'ImageSets/Segmentation/{train,val,aug}.txt',
    'ADE20KDataset': '<data_root> = ADEChallengeData2016 with images/{training,validation}/*.jpg '
    'and annotations/{training,validation}/*.png',
    'ImageNet': '<data_root>/{train,val}/<class folder>/*.JPEG (or '
    '<data_root>/meta/{train,val}.txt lists)',
    'CustomDataset': '<data_root>/<class folder>/*.jpg',
}
# model keys whose ``num_classes`` must equal the data set's class count
HEAD_KEYS = (
    'bbox_head',
    'decode_head',
    'auxiliary_head',
    'head',
    'roi_head.bbox_head',
    'roi_head.mask_head',
)


def loaders_of(cfg: Config, mode: str) -> List[str]:
    """The dataloader keys a ``'train'`` run (with validation) or a ``'test'`` run builds."""
    if mode == 'test':
        return [key for key in ('test_dataloader',) if cfg.get(key)]
    if mode != 'train':
        raise ValueError(f"mode must be 'train' or 'test', got {mode!r}")
    keys = ['train_dataloader'] if cfg.get('train_dataloader') else []
    if cfg.get('val_cfg') is not None and cfg.get('val_dataloader'):
        keys.append('val_dataloader')
    return keys


def _leaf_datasets(cfg: Config, mode: str) -> Iterator[Tuple[str, dict]]:
    for loader in loaders_of(cfg, mode):
        yield from leaf_datasets(cfg[loader]['dataset'], f'{loader}.dataset')


def _type_name(type_) -> str:
    """``'mmdet.CocoDataset'`` -> ``'CocoDataset'`` (types may also be classes)."""
    return type_.split('.')[-1] if isinstance(type_, str) else getattr(type_, '__name__', '')


def _is_remote(dataset: dict) -> bool:
    backend = (dataset.get('backend_args') or {}).get('backend', 'local')
    return backend != 'local' or '://' in str(dataset.get('data_root', ''))


def _fix_hint(key: str, dataset: dict) -> str:
    layout = LAYOUTS.get(_type_name(dataset.get('type')))
    return (
        f'set {key}.data_root to where the data set is (e.g. --cfg-options '
        f'{key}.data_root=/path/to/data/), or download it there'
        + (f'; expected layout: {layout}' if layout else '')
        + f' (relative paths start from the current directory, {os.getcwd()})'
    )


def _dataset_paths(dataset: dict) -> Iterator[Tuple[str, str, bool]]:
    """(what, path, is_file) of the files and folders a dataset config reads, as mmengine's
    ``BaseDataset`` joins them (``ann_file`` and ``data_prefix`` under ``data_root``)."""
    root = dataset.get('data_root') or ''

    def join(path: str) -> str:
        return path if not root or osp.isabs(path) else osp.join(root, path)

    if _type_name(dataset.get('type')) == 'ImageNet' and dataset.get('split'):
        # mmpretrain's ImageNet: data_prefix defaults to the split, ann_file to meta/<split>.txt
        # when that exists (otherwise the class folders are scanned)
        if not dataset.get('data_prefix'):
            yield 'image folder', join(dataset['split']), False
    if dataset.get('ann_file'):
        yield 'annotation file', join(dataset['ann_file']), True
    prefix = dataset.get('data_prefix') or {}
    for name, path in prefix.items() if isinstance(prefix, dict) else [('img', prefix)]:
        if path:
            yield f'{name} folder', join(path), False


def check_dataset_paths(cfg: Config, mode: str = 'train') -> None:
    """Raise ``MissingDataError`` naming the first missing data root, folder or annotation file
    of the dataloaders (and evaluators) a ``mode`` run builds, the config key to set and the
    expected layout. Remote data (``backend_args``, URLs) is not checked."""
    for key, dataset in _leaf_datasets(cfg, mode):
        if _is_remote(dataset):
            continue
        root = dataset.get('data_root')
        if root and not osp.isdir(root):
            raise MissingDataError(
                f'{key}.data_root: data set root {root!r} does not exist: '
                + _fix_hint(key, dataset)
            )
        for what, path, is_file in _dataset_paths(dataset):
            if not (osp.isfile(path) if is_file else osp.isdir(path)):
                raise MissingDataError(
                    f'{key}: {what} {path!r} does not exist: ' + _fix_hint(key, dataset)
                )
    for key, ann_file in _evaluator_ann_files(cfg, mode):
        if not osp.isfile(ann_file):
            raise MissingDataError(
                f'{key}.ann_file: annotation file {ann_file!r} does not exist: '
                f"set {key}.ann_file to the data set's annotation file (the "
                'one of the matching dataloader)'
            )


def _evaluator_ann_files(cfg: Config, mode: str) -> Iterator[Tuple[str, str]]:
    keys = (
        ['test_evaluator']
        if mode == 'test'
        else (['val_evaluator'] if 'val_dataloader' in loaders_of(cfg, mode) else [])
    )
    for key in keys:
        evaluators = cfg.get(key) or []
        evaluators = evaluators if isinstance(evaluators, (list, tuple)) else [evaluators]
        for i, evaluator in enumerate(evaluators):
            ann_file = evaluator.get('ann_file') if isinstance(evaluator, dict) else None
            if ann_file and '://' not in ann_file:
                yield (key if len(evaluators) == 1 else f'{key}.{i}'), ann_file


def check_annotation_file(path: str, key: str = 'ann_file') -> None:
    """Raise ``BadDataError`` if an annotation file is empty, a truncated JSON or a COCO file
    without images (cheap: reads the file's ends and scans it, never parses a large JSON)."""
    size = osp.getsize(path)
    if size == 0:
        raise BadDataError(
            f'{key}: annotation file {path!r} is empty (0 bytes; an interrupted '
            'download or copy leaves such files): download or generate it again'
        )
    with open(path, 'rb') as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        if size < 4096 and not data[:].strip():
            raise BadDataError(
                f'{key}: annotation file {path!r} lists no images (only '
                'whitespace): regenerate it, or point the config at the right one'
            )
        if not path.endswith('.json'):
            return
        head = data[: min(size, 64)].lstrip()[:1]
        tail = data[max(0, size - 64) :].rstrip()[-1:]
        if head != b'{' or tail != b'}':
            raise BadDataError(
                f'{key}: {path!r} is not a complete JSON object (starts with '
                f'{head!r}, ends with {tail!r}): the file is truncated or not a '
                'COCO annotation file; download or generate it again'
            )
        if re.search(rb'"images"\s*:', data) is None:
            raise BadDataError(
                f'{key}: {path!r} has no "images" list: it is not a COCO-format '
                'annotation file (images, annotations, categories)'
            )
        if re.search(rb'(?<!\\)"images"\s*:\s*\[\s*\]', data) is not None:
            raise BadDataError(
                f'{key}: COCO annotation file {path!r} lists no images ("images": '
                '[]): nothing to train or evaluate on; regenerate it, or point the '
                'config at the right file'
            )


def check_annotation_files(cfg: Config, mode: str = 'train') -> None:
    """``check_annotation_file`` on every local annotation file of a ``mode`` run."""
    for key, dataset in _leaf_datasets(cfg, mode):
        if not _is_remote(dataset):
            for what, path, is_file in _dataset_paths(dataset):
                if is_file and osp.isfile(path):
                    check_annotation_file(path, f'{key}.ann_file')
    for key, ann_file in _evaluator_ann_files(cfg, mode):
        if osp.isfile(ann_file):
            check_annotation_file(ann_file, f'{key}.ann_file')


def dataset_classes(dataset: dict, scope: str) -> Optional[Sequence[str]]:
    """The class names a dataset config will have: its ``metainfo`` or its class's ``METAINFO``."""
    classes = (dataset.get('metainfo') or {}).get('classes')
    if classes is None:
        dataset_class = registry_class(DATASETS, dataset.get('type'), scope)
        classes = getattr(dataset_class, 'METAINFO', {}).get('classes')
    return classes


def model_num_classes(model_cfg: dict) -> Dict[str, int]:
    """``{'model.bbox_head.num_classes': 80, ...}`` for the heads of ``HEAD_KEYS``."""
    found = {}
    for path in HEAD_KEYS:
        node = model_cfg
        for part in path.split('.'):
            node = node.get(part) if isinstance(node, dict) else None
        for i, head in enumerate(node if isinstance(node, (list, tuple)) else [node]):
            if isinstance(head, dict) and isinstance(head.get('num_classes'), int):
                index = f'.{i}' if isinstance(node, (list, tuple)) else ''
                found[f'model.{path}{index}.num_classes'] = head['num_classes']
    return found


def check_num_classes(cfg: Config, mode: str = 'train') -> None:
    """Raise ``ConfigError`` when a dataset's class count differs from a head's ``num_classes``.

    Also for a ``metainfo.classes`` string that is no file: ``classes='person'`` instead of
    ``('person',)`` (mmpretrain reads a string as a file of class names; such a file is left to
    mmpretrain). It checks what mmdet's ``NumClassCheckHook`` checks (which finds it only once
    the dataloaders are built, for training and validation), for every head of ``HEAD_KEYS``;
    mmseg and mmpretrain have no such check (labels beyond ``num_classes`` crash the loss, or
    are never predicted).
    """
    heads = model_num_classes(cfg.get('model') or {})
    scope = cfg.get('default_scope') or 'mmengine'
    for key, dataset in _leaf_datasets(cfg, mode):
        classes = dataset_classes(dataset, scope)
        if isinstance(classes, str) and not osp.isfile(classes) and '://' not in classes:
            raise ConfigError(
                f'{key}.metainfo.classes is the string {classes!r}, not a tuple of class names: '
                f'write classes=({classes!r},) (the comma makes a one-class tuple), or give the '
                'path of an existing file of class names (mmpretrain reads one per line)'
            )
        if not classes or isinstance(classes, str):  # (mmpretrain: a file of class names)
            continue
        source = (
            'its metainfo'
            if (dataset.get('metainfo') or {}).get('classes')
            else f'{_type_name(dataset.get("type"))}.METAINFO'
        )
        for head_key, num_classes in heads.items():
            if num_classes != len(classes):
                shown = ', '.join(map(str, classes[:4])) + (', ...' if len(classes) > 4 else '')
                raise ConfigError(
                    f'{key} has {len(classes)} classes ({source}: {shown}) but {head_key} = '
                    f'{num_classes}: set {head_key}={len(classes)} (e.g. --cfg-options '
                    f'{head_key}={len(classes)}), or give the dataset '
                    f'{key}.metainfo=dict(classes=(...)) with the {num_classes} classes the '
                    'model predicts'
                )


def label_check_settings(cfg: Config) -> Dict[str, Any]:
    """The values that give every ``mobileone_dense.LoadSegAnnotations`` without ``num_classes``
    the decode head's ``num_classes`` and ``ignore_index`` (so a ``num_classes`` override
    reaches its label check), as ``--cfg-options`` entries: ``{'train_dataloader.dataset.
    pipeline.2.num_classes': 21, ...}``, for ``cfg.merge_from_dict``. ``cfg`` is not changed."""
    head = (cfg.get('model') or {}).get('decode_head')
    if not isinstance(head, dict) or not isinstance(head.get('num_classes'), int):
        return {}
    settings = {}
    for mode in ('train', 'test'):
        for key, dataset in _leaf_datasets(cfg, mode):
            for i, transform in enumerate(dataset.get('pipeline') or []):
                if (
                    isinstance(transform, dict)
                    and _type_name(transform.get('type')) == 'LoadSegAnnotations'
                    and transform.get('num_classes') is None
                ):
                    settings[f'{key}.pipeline.{i}.num_classes'] = head['num_classes']
                    if 'ignore_index' not in transform:
                        settings[f'{key}.pipeline.{i}.ignore_index'] = head.get('ignore_index', 255)
    return settings


def check_registered_types(cfg: Config, mode: str = 'train') -> None:
    """Raise ``UnknownTypeError`` for a dataset or pipeline ``type=`` no registry holds, before
    the runner builds the model (mmengine would find it only when it builds the dataloaders)."""
    scope = cfg.get('default_scope') or 'mmengine'
    for loader in loaders_of(cfg, mode):
        for key, dataset in dataset_configs(cfg[loader]['dataset'], f'{loader}.dataset'):
            dataset_scope = dataset.get('_scope_', scope)
            check_type(DATASETS, dataset.get('type'), dataset_scope, f' at {key}.type')
            for i, transform in enumerate(dataset.get('pipeline') or []):
                if isinstance(transform, dict):
                    check_type(
                        TRANSFORMS,
                        transform.get('type'),
                        transform.get('_scope_', dataset_scope),
                        f' at {key}.pipeline.{i}.type',
                    )
