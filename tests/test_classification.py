"""ImageNet classification: the paper's recipe in the configs, the curriculum really switching
(also across a resume), the annealed weight decay, learning, and the weights handed downstream."""

import math
import os.path as osp
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from trained_runs import (
    E2E_CURRICULUM,
    E2E_EPOCHS,
    LEARN_CURRICULUM,
    LEARN_EPOCHS,
    hook_of,
    run_env,
)

from mobileone_dense.apis import build_model_from_config
from mobileone_dense.apis.classification import set_imagenet_schedule
from mobileone_dense.datasets.synthetic_imagenet import make_imagenet_folder
from mobileone_dense.datasets.transforms import ScaledAutoAugment
from mobileone_dense.models import stage_channels

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TESTS = osp.join(REPO, 'tests')
ARCHS = ['s0', 's1', 's2', 's3', 's4', 'mu0', 'mu1', 'mu2']
# The learned classifier's deploy EMA top-1 (%, 4 classes, chance 25): the minimum of its
# robustness matrix (seeds x kernel sets, docs/tests.md) less a margin of three val images.
LEARN_TOP1_FLOOR = 70.0
AUTOAUGMENT_ARCHS = {'s2', 's3', 's4'}
PAPER_CURRICULUM = [(0, 160, 0.3), (39, 192, 0.6), (114, 224, 1.0)]


def config_path(arch):
    return osp.join(REPO, 'configs', f'mobileone_{arch}_imagenet.py')


def find(pipeline, name):
    return [t for t in pipeline if t['type'].split('.')[-1] == name]


# -- configs: the paper's recipe -------------------------------------------------------------
@pytest.mark.parametrize('arch', ARCHS)
def test_config_recipe_and_one_training_step(arch):
    cfg = Config.fromfile(config_path(arch))
    assert 'http' not in cfg.pretty_text, 'configs must not download anything'
    model_cfg = cfg.model
    assert model_cfg.type == 'mmpretrain.ImageClassifier'
    assert (model_cfg.backbone.type, model_cfg.backbone.arch) == ('mobileone_dense.MobileOne', arch)
    assert model_cfg.neck.type == 'mmpretrain.GlobalAveragePooling'
    assert model_cfg.head.in_channels == stage_channels(arch)[3]
    assert model_cfg.head.num_classes == 1000
    assert (model_cfg.head.loss.type, model_cfg.head.loss.label_smooth_val) == (
        'mmpretrain.LabelSmoothLoss',
        0.1,
    )
    # 300 epochs, 32 x 8 GPUs = 256, SGD momentum 0.9, lr 0.1, decay 1e-4 annealed to 1e-5
    assert cfg.train_cfg.max_epochs == 300
    assert cfg.train_dataloader.batch_size * 8 == cfg.auto_scale_lr.base_batch_size == 256
    optimizer = cfg.optim_wrapper.optimizer
    assert (optimizer.type, optimizer.lr, optimizer.momentum, optimizer.weight_decay) == (
        'SGD',
        0.1,
        0.9,
        1e-4,
    )
    assert cfg.optim_wrapper.paramwise_cfg.norm_decay_mult == 0
    warmup, cosine, decay = cfg.param_scheduler
    assert (warmup.type, warmup.end, cosine.type, cosine.begin, cosine.end) == (
        'LinearLR',
        5,
        'CosineAnnealingLR',
        5,
        300,
    )
    assert (decay.type, decay.param_name, decay.end, decay.eta_min, decay.eta_min_ratio) == (
        'CosineAnnealingParamScheduler',
        'weight_decay',
        300,
        None,
        0.1,
    )
    ema = hook_of(cfg, 'EMAHook')
    assert ema.momentum == 5e-4  # decay 0.9995
    assert cfg.custom_hooks[-1].type == 'mobileone_dense.ReparameterizeHook'
    # curriculum: Table 15, switched by mmpretrain's hook through the key it reads
    assert [tuple(s) for s in cfg.curriculum] == PAPER_CURRICULUM
    schedule = hook_of(cfg, 'SwitchRecipeHook').schedule
    assert [s.action_epoch for s in schedule] == [40, 115]  # 1-based: 0-based epochs 39, 114
    pipelines = [cfg.train_dataloader.dataset.pipeline] + [s.train_pipeline for s in schedule]
    for (_, size, strength), pipeline in zip(PAPER_CURRICULUM, pipelines):
        assert find(pipeline, 'RandomResizedCrop')[0].scale == size
        assert find(pipeline, 'RandomFlip')[0].prob == 0.5
        autoaugment = find(pipeline, 'ScaledAutoAugment')
        if arch in AUTOAUGMENT_ARCHS:
            assert (autoaugment[0].policies, autoaugment[0].strength) == ('imagenet', strength)
        else:
            assert not autoaugment and len(pipeline) == 4
    for loader in (cfg.val_dataloader, cfg.test_dataloader):  # evaluated at 224
        assert find(loader.dataset.pipeline, 'CenterCrop')[0].crop_size == 224
    # applying the config's own curriculum and length changes nothing
    before = cfg.pretty_text
    set_imagenet_schedule(cfg, max_epochs=300, curriculum=cfg.curriculum, eval_size=224)
    assert cfg.pretty_text == before

    model = build_model_from_config(cfg).train()
    inputs = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    from mmpretrain.structures import DataSample

    data = model.data_preprocessor(
        dict(inputs=list(inputs), data_samples=[DataSample().set_gt_label(i) for i in (1, 7)]), True
    )
    losses = model(**data, mode='loss')
    losses['loss'].backward()
    assert torch.isfinite(losses['loss'])
    assert model.backbone.stem.conv_branches[0].conv.weight.grad is not None


def test_set_imagenet_schedule_scales_every_epoch():
    cfg = Config.fromfile(config_path('s2'))
    set_imagenet_schedule(cfg, max_epochs=100)
    warmup, cosine, decay = cfg.param_scheduler
    assert (warmup.end, cosine.begin, cosine.end, cosine.T_max, decay.end) == (2, 2, 100, 98, 100)
    assert [tuple(s) for s in cfg.curriculum] == [(0, 160, 0.3), (13, 192, 0.6), (38, 224, 1.0)]
    assert [s.action_epoch for s in hook_of(cfg, 'SwitchRecipeHook').schedule] == [14, 39]
    with pytest.raises(ValueError, match='starting at epoch 0'):
        set_imagenet_schedule(cfg, curriculum=[(1, 32, 0.3)])


def test_user_config_inherits_ours_and_builds_every_part(tmp_path):
    """Through `mobileone_dense::` our dicts carry `_scope_='mobileone_dense'`: all must still
    build (model, dataset with ScaledAutoAugment, the switch hook's pipelines)."""
    data = make_imagenet_folder(
        str(tmp_path / 'imagenet'), num_classes=2, train_per_class=1, val_per_class=1, size=40
    )
    user_config = tmp_path / 'my_s2.py'
    user_config.write_text(
        textwrap.dedent(f"""
        _base_ = ['mobileone_dense::configs/mobileone_s2_imagenet.py']
        train_dataloader = dict(dataset=dict(data_root={data['root']!r}))
    """)
    )
    cfg = Config.fromfile(str(user_config))
    assert cfg.model._scope_ == 'mobileone_dense'
    from mmengine.registry import DATASETS, HOOKS

    init_default_scope(cfg.default_scope)
    model = build_model_from_config(cfg)
    assert type(model.backbone).__module__.startswith('mobileone_dense')
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    assert dataset[0]['inputs'].shape == (3, 160, 160)
    assert type(dataset.pipeline.transforms[3]).__name__ == 'ScaledAutoAugment'
    hook_cfg = {k: v for k, v in hook_of(cfg, 'SwitchRecipeHook').items() if k != 'priority'}
    hook = HOOKS.build(hook_cfg)
    assert [type(t).__name__ for t in hook.schedule[115]['train_pipeline'].transforms] == [
        'LoadImageFromFile',
        'RandomResizedCrop',
        'RandomFlip',
        'ScaledAutoAugment',
        'PackInputs',
    ]


# -- ScaledAutoAugment -----------------------------------------------------------------------
def test_scaled_autoaugment_scales_each_magnitude_level():
    from mmpretrain.datasets.transforms import AutoAugment
    from mmpretrain.datasets.transforms.auto_augment import AUTOAUG_POLICIES

    full = ScaledAutoAugment('imagenet', strength=1.0)
    stock = AutoAugment('imagenet')
    # strength 1: mmpretrain's ImageNet policy, op for op
    assert [[type(op).__name__ for op in sub.transforms] for sub in full.transforms] == [
        [type(op).__name__ for op in sub.transforms] for sub in stock.transforms
    ]
    stock_magnitudes = [
        [
            getattr(
                op,
                {'Rotate': 'angle', 'Solarize': 'thr', 'Posterize': 'bits'}.get(
                    type(op).__name__, 'magnitude'
                ),
                None,
            )
            for op in sub.transforms
        ]
        for sub in stock.transforms
    ]
    assert full.magnitudes() == stock_magnitudes
    third = ScaledAutoAugment('imagenet', strength=0.3)
    for policy_full, policy_third, raw in zip(
        full.policies, third.policies, AUTOAUG_POLICIES['imagenet']
    ):
        for op_full, op_third, op_raw in zip(policy_full, policy_third, raw):
            assert op_third['prob'] == op_raw['prob']  # probabilities are not scaled
            if op_raw['type'] == 'Rotate':
                assert op_third['angle'] == pytest.approx(0.3 * op_raw['angle'])
            elif op_raw['type'] == 'Solarize':  # 256 inverts nothing
                assert 256 - op_third['thr'] == pytest.approx(0.3 * (256 - op_raw['thr']))
            elif op_raw['type'] == 'Posterize':  # 8 bits keep everything
                assert 8 - op_third['bits'] == pytest.approx(0.3 * (8 - op_raw['bits']))
            elif 'magnitude' in op_raw:
                assert op_third['magnitude'] == pytest.approx(0.3 * op_raw['magnitude'])
    # the ops built are the scaled ones, with the hparams (mmpretrain's AutoAugment drops them)
    padded = ScaledAutoAugment('imagenet', strength=0.6, hparams=dict(pad_val=(1, 2, 3)))
    rotate = padded.transforms[0].transforms[1]
    assert type(rotate).__name__ == 'Rotate' and rotate.angle == pytest.approx(18.0)
    assert rotate.pad_val == (1, 2, 3)
    assert (
        AutoAugment('imagenet', hparams=dict(pad_val=(1, 2, 3))).transforms[0].transforms[1].pad_val
        == 128
    )


def test_scaled_autoaugment_output():
    from mmpretrain.datasets.transforms import Rotate

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    ops = [
        dict(type=t, prob=1.0, **kw)
        for t, kw in [
            ('Rotate', dict(angle=30.0)),
            ('Shear', dict(magnitude=0.3)),
            ('Solarize', dict(thr=50)),
            ('Posterize', dict(bits=4)),
            ('ColorTransform', dict(magnitude=0.8)),
            ('Contrast', dict(magnitude=0.8)),
            ('Sharpness', dict(magnitude=0.7)),
        ]
    ]
    identity = ScaledAutoAugment([ops], strength=0.0)
    out = identity(dict(img=image.copy()))['img']
    assert np.array_equal(out, image), 'strength 0 must leave the image unchanged'
    half = ScaledAutoAugment(
        [[dict(type='Rotate', angle=30.0, prob=1.0, random_negative_prob=0.0)]], strength=0.5
    )
    expected = Rotate(angle=15.0, prob=1.0, random_negative_prob=0.0)(dict(img=image.copy()))
    assert np.array_equal(half(dict(img=image.copy()))['img'], expected['img'])
    with pytest.raises(ValueError, match='cannot scale'):
        ScaledAutoAugment([[dict(type='Rotate', magnitude_range=(0, 30))]], strength=0.5)


# -- end to end: tools/train.py on a generated ImageNet folder ---------------------------------
def stage_at(curriculum, epoch):
    return [s for s in curriculum if s[0] <= epoch][-1]


def check_curriculum(records, curriculum, max_epochs, autoaugment):
    epochs = [r for r in records if r['event'] == 'train_epoch']
    assert [r['epoch'] for r in epochs] == list(range(max_epochs))
    for record in epochs:
        _, size, strength = stage_at(curriculum, record['epoch'])
        assert record['crop_scale'] == [size, size], record
        shapes = {
            tuple(s)
            for r in records
            if r['event'] == 'train_iter' and r['epoch'] == record['epoch']
            for s in r['shapes']
        }
        assert shapes == {(3, size, size)}, f'epoch {record["epoch"]}: the model got {shapes}'
        if autoaugment:
            assert record['strength'] == pytest.approx(strength)
            rotate_30 = record['magnitudes'][0][1]  # sub-policy 0: Posterize, Rotate(30 deg)
            assert rotate_30 == pytest.approx(30 * strength)
        else:
            assert record['strength'] is None


def check_weight_decay(records, max_epochs):
    for record in (r for r in records if r['event'] == 'train_epoch'):
        expected = 1e-5 + (1e-4 - 1e-5) * (1 + math.cos(math.pi * record['epoch'] / max_epochs)) / 2
        assert record['weight_decay']['other'] == [pytest.approx(expected, rel=1e-6)], record
        assert record['weight_decay']['norm'] == [0.0], 'BN parameters must not decay'


def test_s2_curriculum_switches_size_and_strength_across_resume(s2_resumed_run):
    records = s2_resumed_run['records']
    check_curriculum(records, E2E_CURRICULUM, E2E_EPOCHS, autoaugment=True)
    # epoch 3 is the first of the resumed run: the stage-2 recipe had to be re-applied
    assert 'resume recipe of epoch 3' in s2_resumed_run['logs']
    switches = s2_resumed_run['logs'].count('Switch train pipeline at epoch')
    assert switches == 2  # epochs 3 and 5 (1-based)


def test_weight_decay_follows_the_cosine_at_each_epoch(learned_classifier, s2_resumed_run):
    check_weight_decay(learned_classifier['records'], LEARN_EPOCHS)
    check_weight_decay(s2_resumed_run['records'], E2E_EPOCHS)  # across the resume too


def test_s0_curriculum_switches_size(learned_classifier):
    check_curriculum(
        learned_classifier['records'], LEARN_CURRICULUM, LEARN_EPOCHS, autoaugment=False
    )


def test_s0_learns_and_the_untrained_model_does_not(learned_classifier):
    records = learned_classifier['records']
    assert all(r['deploy'] for r in records if r['event'] == 'val_model')
    top1 = [r['metrics']['accuracy/top1'] for r in records if r['event'] == 'val']
    assert len(top1) == LEARN_EPOCHS
    assert top1[-1] >= LEARN_TOP1_FLOOR, f'deploy EMA top-1 per epoch: {top1}'
    assert 'ReparameterizeHook: deploy vs train-time model' in learned_classifier['logs']
    # the same config and data, untrained
    from mmengine.runner import Runner

    cfg = Config.fromfile(learned_classifier['config'])
    cfg.custom_hooks = [h for h in cfg.custom_hooks if 'Probe' not in h.type]
    cfg.work_dir = osp.join(osp.dirname(learned_classifier['config']), 'untrained')
    cfg.log_level = 'WARNING'
    cfg.val_dataloader.num_workers = 0
    # mmengine 0.10.7's CheckpointHook(save_best=...) needs a training run (its file backend is
    # set in before_train): runner.val() alone crashes in after_val_epoch
    cfg.default_hooks.checkpoint.pop('save_best')
    untrained = Runner.from_cfg(cfg).val()
    assert untrained['accuracy/top1'] < LEARN_TOP1_FLOOR, untrained


def last_checkpoint(work_dir):
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        return f.read().strip()


@pytest.fixture(scope='module')
def extracted(learned_classifier, tmp_path_factory):
    out = str(tmp_path_factory.mktemp('extracted') / 's0_imagenet.pth')
    result = subprocess.run(
        [
            sys.executable,
            osp.join(REPO, 'tools', 'extract_backbone.py'),
            last_checkpoint(learned_classifier['work_dir']),
            out,
            '--keep-head',
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=run_env(),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'MobileOne-s0 ema weights' in result.stdout
    return out


@pytest.mark.parametrize(
    'config', ['ssdlite_mobileone_s0_coco.py', 'deeplabv3_mobileone_s0_voc.py']
)
@pytest.mark.parametrize('source', ['training checkpoint', 'extracted'])
def test_imagenet_weights_initialize_downstream_backbones(
    learned_classifier, extracted, config, source
):
    from mobileone_dense.converters import load_checkpoint_file

    checkpoint = (
        last_checkpoint(learned_classifier['work_dir'])
        if source == 'training checkpoint'
        else extracted
    )
    ema = load_checkpoint_file(last_checkpoint(learned_classifier['work_dir']), run_checkpoint=True)
    assert 'ema_state_dict' in ema
    expected = {
        k[len('backbone.') :]: v for k, v in ema['state_dict'].items() if k.startswith('backbone.')
    }
    cfg = Config.fromfile(osp.join(REPO, 'configs', config))
    cfg.model.backbone.init_cfg = dict(type='Pretrained', checkpoint=checkpoint, prefix='backbone.')
    model = build_model_from_config(cfg)
    model.init_weights()  # our strict loader: any missing or unexpected key raises
    state = model.backbone.state_dict()
    assert set(state) == set(expected)
    assert all(torch.equal(state[k], expected[k]) for k in expected), 'not the EMA weights'


def test_extracted_checkpoint_evaluates_like_the_run(learned_classifier, extracted, tmp_path):
    weights = torch.load(extracted, weights_only=True)  # no allowlist needed
    assert weights['meta']['arch'] == 's0' and weights['meta']['weights'] == 'ema'
    assert {k.split('.')[0] for k in weights['state_dict']} == {'backbone', 'head'}
    result = subprocess.run(
        [
            sys.executable,
            osp.join(REPO, 'tools', 'test.py'),
            learned_classifier['config'],
            extracted,
            '--work-dir',
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=run_env(),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout + result.stderr
    top1 = float(out.split('accuracy/top1:')[1].split()[0])
    last_val = [r for r in learned_classifier['records'] if r['event'] == 'val'][-1]
    assert top1 == pytest.approx(last_val['metrics']['accuracy/top1'], abs=1e-3)


def test_converted_public_weights_evaluate_in_our_classifier(tmp_path):
    """mmpretrain's own MobileOne-S0 classifier -> convert -> our config gives the same logits."""
    from mmengine.runner import load_checkpoint
    from mmpretrain.models import ImageClassifier

    init_default_scope('mmpretrain')
    torch.manual_seed(0)
    theirs = ImageClassifier(
        backbone=dict(type='MobileOne', arch='s0', out_indices=(3,)),
        neck=dict(type='GlobalAveragePooling'),
        head=dict(type='LinearClsHead', num_classes=1000, in_channels=1024),
    ).eval()
    for module in theirs.modules():  # non-trivial BN statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    source = str(tmp_path / 'mmpretrain_s0.pth')
    torch.save(dict(state_dict=theirs.state_dict()), source)
    converted = str(tmp_path / 's0_imagenet.pth')
    result = subprocess.run(
        [sys.executable, osp.join(REPO, 'tools', 'convert_checkpoint.py'), source, converted],
        capture_output=True,
        text=True,
        timeout=300,
        env=run_env(),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ours = build_model_from_config(Config.fromfile(config_path('s0'))).eval()
    load_checkpoint(ours, converted, strict=True)  # what tools/test.py's runner does
    inputs = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        got, expected = ours(inputs, mode='tensor'), theirs(inputs, mode='tensor')
    assert got.shape == (2, 1000)
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()


@pytest.mark.parametrize(
    'strides,dilations', [((2, 2, 1, 1), (1, 1, 2, 4)), ((2, 2, 2, 1), (1, 1, 1, 2))]
)
def test_imagenet_backbone_weights_load_into_dilated_backbones(strides, dilations):
    """A stage's first block keeps its branches when its stride becomes a dilation (before the
    fix it gained an identity BN, and ImageNet weights missed those keys)."""
    from mobileone_dense.converters import load_weights_strictly
    from mobileone_dense.models import MobileOne

    imagenet = MobileOne('s0').state_dict()
    dilated = MobileOne('s0', out_indices=(3,), strides=strides, dilations=dilations)
    load_weights_strictly(dilated, imagenet)
    assert set(dilated.state_dict()) == set(imagenet)
