"""Checks a run's inputs before the runner builds anything: data paths, annotation files,
class counts, registered types and checkpoints.

mmdet/mmseg/mmpretrain find a missing folder, an empty annotation file or a class-count mismatch
only when they build the dataloaders (raw ``FileNotFoundError``/``JSONDecodeError``, or nothing at
all); these checks fail first, and each message names the problem, the config key and the fix.
``tools/train.py`` and ``tools/test.py`` run them through ``launch.build_runner``. No check
changes the config it checks: what one computes for the run is returned, for the caller to apply.

- ``data``: data paths, annotation files, class counts, dataset/pipeline types;
- ``registered``: registry look-ups, closest names, ``KeyError`` of a build explained;
- ``checkpoint``: the checkpoint read early, and compared with the built model.
"""

from typing import Any, Dict

from mmengine.config import Config

from .checkpoint import check_checkpoint_fits, read_checkpoint
from .data import (
    check_annotation_file,
    check_annotation_files,
    check_dataset_paths,
    check_num_classes,
    check_registered_types,
    label_check_settings,
    loaders_of,
)
from .registered import explain_registry_error, suggest_types, unknown_type_error


def check_data(cfg: Config, mode: str = 'train') -> Dict[str, Any]:
    """Every data check for a ``mode`` (``'train'`` or ``'test'``) run, cheapest first.

    Returns the settings the run needs beyond the config (:func:`.data.label_check_settings`),
    as ``--cfg-options`` entries for ``cfg.merge_from_dict``; ``cfg`` itself is not changed.
    """
    check_registered_types(cfg, mode)
    check_num_classes(cfg, mode)
    check_dataset_paths(cfg, mode)
    check_annotation_files(cfg, mode)
    return label_check_settings(cfg)


__all__ = [
    'check_annotation_file',
    'check_annotation_files',
    'check_checkpoint_fits',
    'check_data',
    'check_dataset_paths',
    'check_num_classes',
    'check_registered_types',
    'explain_registry_error',
    'label_check_settings',
    'loaders_of',
    'read_checkpoint',
    'suggest_types',
    'unknown_type_error',
]
