"""SSDLite-MobileOne: configs, the SSDHead fix, val/test/demo of the quickstart's trained
detector (the session fixture ``quickstart``; its learning test is tests/test_quickstart.py)."""

import glob
import importlib.util
import os.path as osp
import re
import subprocess
import sys
import textwrap

import cv2
import numpy as np
import pytest
import torch
from apple_reference import apple_imagenet_url, apple_init_cfg
from mmengine.config import Config

from mobileone_dense.apis import build_model_from_config
from mobileone_dense.datasets import SHAPE_CATEGORIES, make_coco_shapes
from mobileone_dense.models import stage_channels

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
_spec = importlib.util.spec_from_file_location(
    'image_demo', osp.join(REPO, 'demo', 'image_demo.py')
)
image_demo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(image_demo)
ARCHS = ['s0', 's1', 's2', 's3', 's4']


def config_path(arch):
    return osp.join(REPO, 'configs', f'ssdlite_mobileone_{arch}_coco.py')


def detection_batch(model, num_images=2, size=320):
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData

    samples = []
    for i in range(num_images):
        sample = DetDataSample(
            metainfo=dict(
                img_shape=(size, size),
                ori_shape=(size, size),
                pad_shape=(size, size),
                scale_factor=(1.0, 1.0),
            )
        )
        sample.gt_instances = InstanceData(
            bboxes=torch.tensor([[40.0, 50.0, 160.0, 170.0], [200.0, 100.0, 300.0, 220.0]]),
            labels=torch.tensor([i, 5]),
        )
        samples.append(sample)
    return torch.randn(num_images, 3, size, size), samples


@pytest.mark.parametrize('arch', ARCHS)
def test_every_config_builds_and_trains_a_step(arch):
    cfg = Config.fromfile(config_path(arch))
    assert cfg.model.backbone.arch == arch
    # Apple's ImageNet weights of the arch, with the BN eps they were trained with
    assert cfg.model.backbone.init_cfg == apple_init_cfg(arch)
    assert cfg.model.backbone.norm_cfg == dict(type='BN', eps=1e-5, momentum=0.03)
    assert cfg.model.neck.norm_cfg.eps == cfg.model.bbox_head.norm_cfg.eps == 0.001
    c2, c3 = stage_channels(arch)[2:]
    assert tuple(cfg.model.neck.in_channels) == (c2, c3)
    assert tuple(cfg.model.bbox_head.in_channels) == (c2, c3, 512, 256, 256, 128)
    model = build_model_from_config(cfg).train()
    inputs, samples = detection_batch(model)
    losses = model.loss(inputs, samples)
    total, _ = model.parse_losses(losses)
    total.backward()
    assert torch.isfinite(total)
    assert model.backbone.stem.conv_branches[0].conv.weight.grad is not None


def test_recipe_of_the_paper():
    cfg = Config.fromfile(config_path('s2'))
    assert cfg.train_cfg.max_epochs == 200
    assert cfg.train_dataloader.dataset.type == 'mmdet.CocoDataset'  # no RepeatDataset
    assert cfg.train_dataloader.batch_size * 8 == cfg.auto_scale_lr.base_batch_size == 192
    optimizer = cfg.optim_wrapper.optimizer
    assert (optimizer.type, optimizer.lr, optimizer.momentum, optimizer.weight_decay) == (
        'SGD',
        0.05,
        0.9,
        1e-4,
    )
    warmup, cosine = cfg.param_scheduler
    assert (warmup.type, warmup.start_factor, warmup.end, warmup.by_epoch) == (
        'LinearLR',
        0.001,
        4500,
        False,
    )
    assert (cosine.type, cosine.end, cosine.by_epoch) == ('CosineAnnealingLR', 200, True)
    assert any(h.type == 'mobileone_dense.ReparameterizeHook' for h in cfg.custom_hooks)
    for pipeline in (cfg.train_dataloader.dataset.pipeline, cfg.test_dataloader.dataset.pipeline):
        resize = next(t for t in pipeline if t.type == 'Resize')
        assert tuple(resize.scale) == (320, 320)
    urls = set(re.findall(r'https?://[^\'"\s]+', cfg.pretty_text))
    assert urls == {cfg.apple_imagenet, apple_imagenet_url('s2')}, 'downloads only the backbone'


def test_mmdet_ssdhead_predict_crashes_and_ours_does_not():
    cfg = Config.fromfile(config_path('s0'))
    inputs, samples = detection_batch(None, num_images=1)
    ours = build_model_from_config(cfg).eval()
    with torch.no_grad():
        results = ours.predict(inputs, samples)
    assert len(results) == 1 and results[0].pred_instances.bboxes.shape[1] == 4
    cfg.model.bbox_head.type = 'mmdet.SSDHead'
    theirs = build_model_from_config(cfg).eval()
    with pytest.raises(AttributeError, match='loss_cls'), torch.no_grad():
        theirs.predict(inputs, samples)


def test_user_config_inherits_our_s2_config(tmp_path):
    user_config = tmp_path / 'my_ssdlite.py'
    user_config.write_text(
        textwrap.dedent("""
        _base_ = ['mobileone_dense::configs/ssdlite_mobileone_s2_coco.py']
        train_cfg = dict(max_epochs=12)
    """)
    )
    script = textwrap.dedent(f"""
        import mobileone_dense
        from mmengine.config import Config
        from mmengine.registry import HOOKS, init_default_scope
        from mobileone_dense.apis import build_model_from_config
        cfg = Config.fromfile({str(user_config)!r})
        model = build_model_from_config(cfg)
        assert type(model.backbone).__name__ == 'MobileOne' and model.backbone.arch_name == 's2'
        assert type(model.bbox_head).__module__.startswith('mobileone_dense')
        init_default_scope(cfg.default_scope)
        hooks = [HOOKS.build({{k: v for k, v in h.items() if k != 'priority'}})
                 for h in cfg.custom_hooks]  # the Runner pops priority the same way
        print(cfg.train_cfg.max_epochs, [type(h).__name__ for h in hooks])
    """)
    result = subprocess.run(
        [sys.executable, '-c', script], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "12 ['FiniteLossHook', 'ReparameterizeHook']" in result.stdout


def test_generated_coco_data_is_coco(tmp_path):
    from pycocotools.coco import COCO

    paths = make_coco_shapes(str(tmp_path), num_train=4, num_val=2)
    coco = COCO(paths['train2017'])
    assert len(coco.getCatIds()) == 80
    used = {ann['category_id'] for ann in coco.loadAnns(coco.getAnnIds())}
    assert used <= {cat_id for cat_id, _ in SHAPE_CATEGORIES.values()}
    from mmdet.datasets import CocoDataset

    dataset = CocoDataset(
        data_root=str(tmp_path),
        ann_file='annotations/instances_train2017.json',
        data_prefix=dict(img='train2017/'),
        pipeline=[],
    )
    classes = dataset.metainfo['classes']
    for item in dataset:  # labels are COCO's label indices, names COCO's names
        for instance in item['instances']:
            assert classes[instance['bbox_label']] in {n for _, n in SHAPE_CATEGORIES.values()}
    for image in coco.loadImgs(coco.getImgIds()):
        array = cv2.imread(osp.join(str(tmp_path), 'train2017', image['file_name']))
        assert array.shape[:2] == (image['height'], image['width'])
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=image['id'])):
            x, y, w, h = ann['bbox']
            assert 0 <= x and x + w <= image['width'] and 0 <= y and y + h <= image['height']


@pytest.fixture(scope='module')
def trained_detector(quickstart):
    """The quickstart's trained S0 detector (session fixture): its dumped training config and
    last checkpoint, its deploy config and checkpoint, its generated data."""
    assert quickstart['returncode'] == 0, quickstart['err'][-4000:]
    work_dir = quickstart['work_dir']
    training = sorted(glob.glob(osp.join(work_dir, 'iter_*.pth')))
    training = [path for path in training if not path.endswith('_deploy.pth')]
    assert len(training) == 1, training
    return dict(
        data=quickstart['data_root'],
        work_dir=work_dir,
        log=quickstart['out'] + quickstart['err'],
        config=osp.join(work_dir, 'ssdlite_mobileone_s0_coco.py'),
        checkpoint=training[0],
        deploy_config=osp.join(work_dir, 'ssdlite_mobileone_s0_coco_deploy.py'),
        deploy_checkpoint=training[0].replace('.pth', '_deploy.pth'),
    )


def test_training_validated_the_deploy_model_and_wrote_deploy_files(trained_detector):
    log = trained_detector['log']
    assert 'Evaluating bbox' in log  # CocoMetric ran on the deploy copy ...
    assert 'ReparameterizeHook: deploy vs train-time model on a validation batch' in log
    assert 'model on cpu' in log  # ... and the log says where the model ran
    for key in ('config', 'checkpoint', 'deploy_config', 'deploy_checkpoint'):
        assert osp.isfile(trained_detector[key]), key


def test_test_tool_with_training_and_deploy_checkpoints(trained_detector, tmp_path):
    maps = []
    for config, checkpoint in [
        (trained_detector['config'], trained_detector['checkpoint']),
        (trained_detector['deploy_config'], trained_detector['deploy_checkpoint']),
    ]:
        result = subprocess.run(
            [
                sys.executable,
                osp.join(REPO, 'tools', 'test.py'),
                config,
                checkpoint,
                '--work-dir',
                str(tmp_path / 'test'),
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stderr[-4000:]
        out = result.stdout + result.stderr
        assert 'testing the re-parameterized (deploy) model' in out or 'nothing to do' in out
        line = next(row for row in out.splitlines() if 'coco/bbox_mAP_50:' in row)
        maps.append(float(line.split('coco/bbox_mAP_50:')[1].split()[0]))
    # the re-parameterized training checkpoint and the deploy checkpoint are the same model
    assert maps[0] == pytest.approx(maps[1], abs=1e-3) and maps[0] > 0.5


@pytest.mark.parametrize('kind', ['color', 'gray', 'rgba', 'uint16', 'tiny'])
def test_demo_draws_detections(trained_detector, tmp_path, kind):
    image = cv2.imread(sorted(glob.glob(osp.join(trained_detector['data'], 'val2017', '*.jpg')))[0])
    path = str(tmp_path / f'{kind}.png')
    if kind == 'gray':
        cv2.imwrite(path, cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))
    elif kind == 'rgba':
        cv2.imwrite(path, cv2.cvtColor(image, cv2.COLOR_BGR2BGRA))
    elif kind == 'uint16':
        cv2.imwrite(path, image.astype(np.uint16) * 257)
    elif kind == 'tiny':
        cv2.imwrite(path, image[:1, :1])
    else:
        cv2.imwrite(path, image)
    out = str(tmp_path / 'out' / f'{kind}_det.png')
    assert (
        image_demo.main(
            [
                path,
                trained_detector['deploy_config'],
                trained_detector['deploy_checkpoint'],
                '--out-file',
                out,
                '--score-thr',
                '0.0',
            ]
        )
        == 0
    )
    drawn = cv2.imread(out)
    source = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    assert drawn.shape[:2] == source.shape[:2]


def test_demo_prints_what_it_drew(trained_detector, tmp_path):
    """The command line itself (a subprocess): exit status and the summary line."""
    image = sorted(glob.glob(osp.join(trained_detector['data'], 'val2017', '*.jpg')))[0]
    out = str(tmp_path / 'drawn.png')
    result = subprocess.run(
        [
            sys.executable,
            osp.join(REPO, 'demo', 'image_demo.py'),
            image,
            trained_detector['deploy_config'],
            trained_detector['deploy_checkpoint'],
            '--out-file',
            out,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r'[1-9]\d* detections with score >= 0\.3: ', result.stdout), result.stdout
    assert f'saved {out}' in result.stdout


@pytest.mark.parametrize('bad', ['missing', 'directory', 'text'])
def test_demo_explains_bad_images(trained_detector, tmp_path, capsys, bad):
    path = {
        'missing': str(tmp_path / 'nope.jpg'),
        'directory': str(tmp_path),
        'text': str(tmp_path / 'notes.jpg'),
    }[bad]
    if bad == 'text':
        with open(path, 'w') as f:
            f.write('not an image')
    assert image_demo.main([path, config_path('s0'), trained_detector['checkpoint']]) == 2
    expected = {
        'missing': 'does not exist',
        'directory': 'has no image files',
        'text': 'not a readable image',
    }[bad]
    err = capsys.readouterr().err
    assert expected in err and path in err
