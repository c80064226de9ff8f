"""Our deploy files in mmdet's, mmseg's and mmpretrain's own tools: their inferencers
(``DetInferencer``, ``MMSegInferencer``, ``ImageClassificationInferencer``) and their
``tools/test.py`` (shipped in their wheels under ``.mim/``), with nothing of our loading code.

Per task one short training run of the real S0 config on generated data (tests/short_configs.py)
writes the deploy files with ``ReparameterizeHook``; ``tools/reparameterize.py`` writes a second
pair from the run's weights saved as a plain state dict (no ``meta``). The upstream tools load
them with no missing or unexpected key, predict what ``init_model`` + ``predict`` predict, and
score what our ``tools/test.py`` scores. Everything runs in this process, with the network
refused: the tools are run as scripts (``runpy``), as ``python TOOL`` would.
"""

import glob
import json
import os
import os.path as osp
import runpy
import socket
import sys

import mmdet
import mmengine
import mmpretrain
import mmseg
import pytest
import torch
from mmengine.config import Config
from short_configs import (
    short_classification_config,
    short_detection_config,
    short_segmentation_config,
)

from mobileone_dense.apis.inference import init_model, read_image
from mobileone_dense.apis.prediction import predict
from mobileone_dense.converters import load_checkpoint_file, state_dict_of
from mobileone_dense.engine import ReparameterizeHook, Runner
from mobileone_dense.engine.compat import last_checkpoint

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TASKS = ('detection', 'segmentation', 'classification')
UPSTREAM_TEST = {
    task: osp.join(osp.dirname(package.__file__), '.mim', 'tools', 'test.py')
    for task, package in zip(TASKS, (mmdet, mmseg, mmpretrain))
}
# what mmengine's load_state_dict logs for a checkpoint that does not fit the model
MISMATCH = ('unexpected key in source state_dict', 'missing keys in source state_dict')


def short_config(task: str, root: str) -> Config:
    """The task's S0 config on a few generated images: one training step (two for the
    classifier: its schedule needs two epochs)."""
    if task == 'detection':
        cfg = short_detection_config(root, num_train=2, num_val=2)
    elif task == 'segmentation':
        cfg = short_segmentation_config(root, max_iters=1, num_val=2)
        # mmseg's inference_model reads cfg.test_pipeline, its inferencer the test loader's
        cfg.test_pipeline = cfg.test_dataloader.dataset.pipeline
    else:
        cfg = short_classification_config(root)
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[loader].update(num_workers=0, persistent_workers=False)
    cfg.train_dataloader.batch_size = 4 if task == 'classification' else 2  # 1 step an epoch
    cfg.val_dataloader.batch_size = cfg.test_dataloader.batch_size = 1
    cfg.work_dir = osp.join(root, 'work')
    return cfg


def split_images(cfg: Config) -> list:
    """Two images of the folder the config's test data set reads."""
    dataset = cfg.test_dataloader.dataset
    prefix = dataset.get('data_prefix', {})  # mmpretrain's ImageNet: a split folder
    folder = prefix.get('img', prefix.get('img_path', dataset.get('split', '')))
    names = sorted(os.listdir(osp.join(dataset.data_root, folder)))
    return [osp.join(dataset.data_root, folder, name) for name in names][:2]


@pytest.fixture(scope='module', params=TASKS)
def deploy_run(request, tmp_path_factory):
    """One short training run of the task: its config, the deploy files the hook wrote
    (``hook``), those ``tools/reparameterize.py`` wrote from a plain state dict (``tool``),
    and two test images."""
    task = request.param
    root = str(tmp_path_factory.mktemp(task))
    cfg = short_config(task, root)
    config = osp.join(root, f'short_{task}.py')
    cfg.dump(config)
    runner = Runner.from_cfg(Config.fromfile(config))
    runner.train()
    hook = next(h for h in runner.hooks if isinstance(h, ReparameterizeHook))
    files = dict(hook=(hook.deploy_files['config'], hook.deploy_files['checkpoint']))
    # the run's weights (the EMA ones where EMA is on) as a plain state dict: no meta
    weights = state_dict_of(load_checkpoint_file(last_checkpoint(runner), run_checkpoint=True))
    plain = osp.join(root, 'plain.pth')
    torch.save(dict(state_dict=weights), plain)
    del runner
    out = osp.join(root, 'tool', 'deployed.pth')
    os.makedirs(osp.dirname(out))
    tool = runpy.run_path(osp.join(REPO, 'tools', 'reparameterize.py'))
    assert tool['main']([config, plain, out, '--input-size', '64', '64']) == 0
    files['tool'] = (osp.splitext(out)[0] + '.py', out)
    return dict(task=task, root=root, cfg=cfg, files=files, images=split_images(cfg))


@pytest.fixture
def refused_network(monkeypatch):
    """Refuse (and record) every connection and name look-up; the test fails if any was tried,
    even when the library caught the error."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError('network access refused by the test')

    monkeypatch.setattr(socket.socket, 'connect', refuse)
    monkeypatch.setattr(socket, 'create_connection', refuse)
    monkeypatch.setattr(socket, 'getaddrinfo', refuse)
    yield attempts
    assert not attempts, f'tried to reach the network: {attempts}'


def upstream_inferencer(task: str, config: str, checkpoint: str):
    """The upstream inferencer of ``task`` on a config file and checkpoint, on the CPU, and a
    function that gives its predictions (data samples) of a list of image files."""
    if task == 'detection':
        from mmdet.apis import DetInferencer

        inferencer = DetInferencer(config, weights=checkpoint, device='cpu', show_progress=False)
        kwargs = dict(no_save_vis=True, no_save_pred=True)
    elif task == 'segmentation':
        from mmseg.apis import MMSegInferencer

        inferencer = MMSegInferencer(config, weights=checkpoint, device='cpu')
        kwargs = {}
    else:
        from mmpretrain.apis import ImageClassificationInferencer

        inferencer = ImageClassificationInferencer(config, pretrained=checkpoint, device='cpu')
        kwargs = {}

    def run(images):
        result = inferencer(images, return_datasamples=True, **kwargs)
        result = result['predictions'] if isinstance(result, dict) else result  # mmdet's
        return result if isinstance(result, list) else [result]  # mmseg's, for one image

    return inferencer, run


def assert_same_predictions(task: str, theirs: dict, ours: dict) -> None:
    """Two predictions of one image (data samples as dicts) agree: detection labels equal, boxes
    within 1e-3 px, scores within 1e-5; label maps equal; class scores within 1e-5."""
    if task == 'detection':
        a, b = theirs['pred_instances'], ours['pred_instances']
        assert len(a['labels']) == len(b['labels']) > 0
        assert torch.equal(a['labels'], b['labels'])
        assert torch.allclose(a['bboxes'], b['bboxes'], rtol=0, atol=1e-3)
        assert torch.allclose(a['scores'], b['scores'], rtol=0, atol=1e-5)
    elif task == 'segmentation':
        assert torch.equal(theirs['pred_sem_seg']['data'], ours['pred_sem_seg']['data'])
    else:
        assert torch.equal(theirs['pred_label'], ours['pred_label'])
        assert torch.isfinite(ours['pred_score']).all()
        assert torch.allclose(theirs['pred_score'], ours['pred_score'], rtol=0, atol=1e-5)


@pytest.mark.parametrize('writer', ['hook', 'tool'])
def test_upstream_inferencer_loads_our_deploy_files_and_predicts_as_we_do(
    deploy_run, writer, refused_network, capsys
):
    task = deploy_run['task']
    config, checkpoint = deploy_run['files'][writer]
    inferencer, run = upstream_inferencer(task, config, checkpoint)
    printed = capsys.readouterr()
    assert not [m for m in MISMATCH if m in printed.out + printed.err], printed.out[-3000:]
    # exactly the checkpoint's weights, nothing left at its initial value
    weights = torch.load(checkpoint, weights_only=True)['state_dict']
    state = inferencer.model.state_dict()
    assert sorted(state) == sorted(weights)
    assert all(torch.equal(state[k].cpu(), v) for k, v in weights.items())
    ours = init_model(config, checkpoint)
    images = deploy_run['images']
    for theirs, image in zip(run(images), images):
        assert_same_predictions(task, theirs.to_dict(), predict(ours, read_image(image)).to_dict())


@pytest.mark.parametrize('writer', ['hook', 'tool'])
def test_deploy_checkpoints_carry_a_complete_dataset_meta(deploy_run, writer):
    """mmseg's inferencer read ``meta['dataset_meta'] = None`` (what the tool copied from a
    plain state dict) as classes and failed; every deploy file names its classes (and palette
    where the task draws one), readable with ``weights_only``."""
    _, checkpoint = deploy_run['files'][writer]
    meta = torch.load(checkpoint, weights_only=True)['meta']['dataset_meta']
    task = deploy_run['task']
    if task == 'classification':  # the generated folder's classes; mmpretrain has no palette
        assert meta['classes'] == tuple(deploy_run['cfg'].test_dataloader.dataset.metainfo.classes)
        return
    from mmdet.datasets import CocoDataset
    from mmseg.datasets import PascalVOCDataset

    expected = (CocoDataset if task == 'detection' else PascalVOCDataset).METAINFO
    assert tuple(meta['classes']) == tuple(expected['classes'])
    assert [tuple(c) for c in meta['palette']] == [tuple(c) for c in expected['palette']]


def metrics_of(work_dir: str) -> dict:
    """The test metrics mmengine's LoggerHook dumped for the run in ``work_dir``."""
    (path,) = glob.glob(osp.join(work_dir, '*', '*.json'))
    with open(path) as f:
        record = json.loads(f.read().splitlines()[-1])
    return {k: v for k, v in record.items() if k not in ('time', 'data_time', 'step')}


def run_script(path: str, args: list, monkeypatch) -> None:
    """``python PATH ARGS`` in this process."""
    monkeypatch.setattr(sys, 'argv', [path, *args])
    monkeypatch.setattr(sys, 'path', list(sys.path))
    monkeypatch.setenv('LOCAL_RANK', '0')  # mmdet's and mmpretrain's test.py set it otherwise
    runpy.run_path(path, run_name='__main__')


def test_upstream_test_tool_gives_our_metrics(deploy_run, refused_network, monkeypatch, capsys):
    """Their ``tools/test.py`` with mmengine's own Runner (``runner_type=Runner``: none of our
    loading) on the hook's deploy files scores what our ``tools/test.py`` scores, from the same
    predictions (both dumped by mmengine's ``DumpResults``: our ``--out``; in theirs, added to
    the deploy config's test evaluator, as their ``--out`` options differ by task)."""
    task, root = deploy_run['task'], deploy_run['root']
    config, checkpoint = deploy_run['files']['hook']
    ours, theirs = osp.join(root, 'test_ours'), osp.join(root, 'test_theirs')
    script = osp.join(REPO, 'tools', 'test.py')
    run_script(
        script, [config, checkpoint, '--work-dir', ours, '--out', f'{ours}.pkl'], monkeypatch
    )
    cfg = Config.fromfile(config)
    evaluators = (
        cfg.test_evaluator if isinstance(cfg.test_evaluator, list) else [cfg.test_evaluator]
    )
    cfg.test_evaluator = [*evaluators, dict(type='DumpResults', out_file_path=f'{theirs}.pkl')]
    # another file name: mmengine names a run's logger by config file and second, and hands
    # the first run's logger (and its log file) to a second run of the same name
    upstream = osp.join(root, 'upstream_deploy.py')
    cfg.dump(upstream)
    args = [upstream, checkpoint, '--work-dir', theirs, '--cfg-options', 'runner_type=Runner']
    capsys.readouterr()
    run_script(UPSTREAM_TEST[task], args, monkeypatch)
    logs = ''.join(open(p).read() for p in glob.glob(osp.join(theirs, '*', '*.log')))
    assert 'Load checkpoint from' in logs
    # mmengine's Runner hands no logger to load_state_dict: a mismatch is print()ed
    printed = capsys.readouterr().out + logs
    assert not [m for m in MISMATCH if m in printed], printed[-3000:]
    expected = metrics_of(ours)
    assert expected and metrics_of(theirs) == expected
    predictions = mmengine.load(f'{theirs}.pkl'), mmengine.load(f'{ours}.pkl')
    assert len(predictions[0]) == len(predictions[1]) > 0
    for a, b in zip(*predictions):
        assert a['img_path'] == b['img_path']
        assert_same_predictions(task, a, b)
