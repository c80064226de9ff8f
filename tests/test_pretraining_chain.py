"""Pretrain with our ImageNet config, then fine-tune detection from it: the documented path
(docs/reproduce.md, docs/classification.md) on generated data, cheaply.

A 2-step (2-epoch) ``tools/train.py`` run of ``configs/mobileone_s0_imagenet.py`` writes a
classification checkpoint; the SSDLite-S0 detector's backbone, initialized with the one option
of the docs (``model.backbone.init_cfg.checkpoint=<that checkpoint>``), or from the file
``tools/extract_backbone.py`` makes of it, holds exactly the checkpoint's backbone weights: the
EMA weights the run validated, not the raw ones. (The same on a classifier that has learned:
``test_classification.py``, which needs the long ``learned_classifier`` run.)
"""

import os
import os.path as osp
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config
from short_configs import short_classification_config

from mobileone_dense.apis import build_model_from_config
from mobileone_dense.converters import backbone_state_dict, load_checkpoint_file

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def run_tool(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, OMP_NUM_THREADS='1'),
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result


@pytest.fixture(scope='module')
def classifier_checkpoint(tmp_path_factory) -> str:
    """The last checkpoint of a 2-epoch, 2-step S0 ImageNet run (5 classes x 1 image, 32 px,
    batch 4: top-5 accuracy needs 5 classes; the schedule's warm-up takes the first epoch)."""
    root = str(tmp_path_factory.mktemp('pretrain'))
    cfg = short_classification_config(root, num_classes=5, per_class=1, max_epochs=2)
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[loader].update(batch_size=4, num_workers=0, persistent_workers=False)
    config = osp.join(root, 'mobileone_s0_imagenet.py')
    cfg.dump(config)
    work_dir = osp.join(root, 'work')
    run_tool(osp.join(REPO, 'tools', 'train.py'), config, '--work-dir', work_dir)
    return osp.join(work_dir, 'epoch_2.pth')


@pytest.mark.parametrize('source', ['classifier checkpoint', 'extracted backbone'])
def test_detector_starts_from_our_imagenet_checkpoint(classifier_checkpoint, source, tmp_path):
    checkpoint = classifier_checkpoint
    if source == 'extracted backbone':
        checkpoint = str(tmp_path / 's0_imagenet.pth')
        run_tool(osp.join(REPO, 'tools', 'extract_backbone.py'), classifier_checkpoint, checkpoint)
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'ssdlite_mobileone_s0_coco.py'))
    cfg.merge_from_dict({'model.backbone.init_cfg.checkpoint': checkpoint})  # = --cfg-options
    detector = build_model_from_config(cfg)
    detector.init_weights()  # our strict loader: a missing or unexpected key raises
    loaded = detector.backbone.state_dict()

    run = load_checkpoint_file(classifier_checkpoint, run_checkpoint=True)
    ema = backbone_state_dict(run['state_dict'])  # EMAHook saves the averaged weights here
    raw = {
        k[len('module.backbone.') :]: v
        for k, v in run['ema_state_dict'].items()
        if k.startswith('module.backbone.')
    }
    assert set(loaded) == set(ema) == set(raw)
    assert all(torch.equal(loaded[k], ema[k]) for k in ema), 'not the EMA weights'
    assert not all(torch.equal(loaded[k], raw[k]) for k in raw)  # the 2 steps moved them
