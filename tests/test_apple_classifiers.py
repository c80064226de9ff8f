"""``tools/test.py configs/mobileone_s0_imagenet.py CHECKPOINT`` evaluates Apple's released
classifiers as they are: the train-time ``mobileone_s0_unfused.pth.tar`` (here by its URL, from
torch's hub cache) and the deploy-form ``mobileone_s0.pth.tar`` (here by path, which builds the
backbone with ``deploy=True``).

Stand-ins for Apple's files (``apple_reference.py``: random weights in Apple's layout, the deploy
file re-parameterized as Apple's ``reparameterize_model`` does) are evaluated on a generated
ImageNet-format val set; each image's top-1 label and scores equal those of Apple's model on the
same preprocessed input. The network is blocked (conftest ``no_network``).
"""

import os
import os.path as osp
import pickle
import subprocess
import sys

import pytest
import torch
from apple_reference import apple_imagenet_url, save_apple_checkpoint
from mmengine.config import Config

from mobileone_dense.datasets import make_imagenet_folder

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = osp.join(REPO, 'configs', 'mobileone_s0_imagenet.py')
DEPLOY_URL = apple_imagenet_url('s0').replace('_unfused', '')


@pytest.fixture(scope='module')
def val_set(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp('apple_eval') / 'imagenet')
    return make_imagenet_folder(root, num_classes=4, train_per_class=1, val_per_class=1, size=48)[
        'root'
    ]


def run_test_tool(checkpoint: str, data: str, work_dir: str) -> subprocess.CompletedProcess:
    """``tools/test.py`` with the real config, only the data root and loader workers changed;
    predictions dumped to ``work_dir/preds.pkl``."""
    return subprocess.run(
        [sys.executable, osp.join(REPO, 'tools', 'test.py'), CONFIG, checkpoint]
        + ['--work-dir', work_dir, '--out', osp.join(work_dir, 'preds.pkl')]
        + ['--cfg-options', f'test_dataloader.dataset.data_root={data}']
        + ['test_dataloader.num_workers=0', 'test_dataloader.batch_size=2'],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, OMP_NUM_THREADS='1'),
    )


def apple_scores(model: torch.nn.Module, data: str) -> dict:
    """Image path -> softmax scores of Apple's ``model`` on the config's test pipeline and
    normalization (mmpretrain's ``ClsDataPreprocessor``)."""
    from mmengine.registry import init_default_scope
    from mmengine.runner import Runner
    from mmpretrain.models import ClsDataPreprocessor

    cfg = Config.fromfile(CONFIG)
    cfg.test_dataloader.dataset.data_root = data
    cfg.test_dataloader.num_workers = 0
    init_default_scope('mmpretrain')
    loader = Runner.build_dataloader(cfg.test_dataloader)
    preprocess = ClsDataPreprocessor(
        **{k: v for k, v in cfg.model.data_preprocessor.items() if k != 'type'}
    )
    scores = {}
    with torch.no_grad():
        for batch in loader:
            data_batch = preprocess(batch)
            probabilities = model(data_batch['inputs']).softmax(dim=1)
            for sample, score in zip(data_batch['data_samples'], probabilities):
                scores[sample.img_path] = score
    return scores


@pytest.mark.parametrize('form', ['train-time, by URL', 'deploy, by path'])
def test_test_tool_evaluates_apples_classifier(form, val_set, apple_checkpoints, tmp_path):
    apple = apple_checkpoints('s0')  # the unfused file, at its URL's place in the hub cache
    if form.startswith('deploy'):
        checkpoint = str(tmp_path / 'mobileone_s0.pth.tar')
        save_apple_checkpoint('s0', checkpoint, deploy=True)  # the same weights, fused
    else:
        checkpoint = apple_imagenet_url('s0')
    result = run_test_tool(checkpoint, val_set, str(tmp_path / 'work'))
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    assert "Apple's MobileOne weights, converted to this config's layout" in out
    says_deploy = 'testing with the backbone built in deploy form (model.backbone.deploy=True)'
    assert (says_deploy in out) == form.startswith('deploy'), out[-4000:]
    assert 'accuracy/top1:' in out
    with open(tmp_path / 'work' / 'preds.pkl', 'rb') as f:
        predictions = pickle.load(f)  # written by this test's run: trusted
    expected = apple_scores(apple, val_set)
    assert sorted(p['img_path'] for p in predictions) == sorted(expected)
    for prediction in predictions:
        reference = expected[prediction['img_path']]
        assert int(prediction['pred_label']) == int(reference.argmax())
        torch.testing.assert_close(prediction['pred_score'], reference, rtol=1e-4, atol=1e-7)


def test_offline_url_not_in_the_cache_is_one_line(val_set, tmp_path):
    result = run_test_tool(DEPLOY_URL, val_set, str(tmp_path / 'work'))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(f'error: cannot download {DEPLOY_URL} ('), result.stderr[-3000:]
    assert 'Traceback' not in result.stderr
    assert lines[-1].endswith(
        'give tools/test.py the path of a local copy of the file instead of its URL'
    )
