"""Point a COCO detection config at another COCO-format folder (paths only)."""

import os.path as osp

from mmengine.config import Config

from ..datasets.wrappers import innermost_dataset


def use_coco_folder(cfg: Config, data_root: str) -> Config:
    """Train on ``train2017``, validate and test on ``val2017`` of ``data_root`` (in place).

    The folder has the COCO 2017 layout: ``{train,val}2017/`` images and
    ``annotations/instances_{train,val}2017.json``.
    """
    data_root = osp.join(data_root, '')
    splits = dict(train_dataloader='train2017', val_dataloader='val2017', test_dataloader='val2017')
    for loader, split in splits.items():
        dataset = innermost_dataset(cfg[loader].dataset)  # inside e.g. RepeatDataset
        dataset.data_root = data_root
        dataset.ann_file = f'annotations/instances_{split}.json'
        dataset.data_prefix = dict(img=f'{split}/')
    for evaluator in ('val_evaluator', 'test_evaluator'):
        cfg[evaluator].ann_file = osp.join(data_root, 'annotations/instances_val2017.json')
    return cfg
