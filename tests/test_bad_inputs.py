"""Bad input gets a clear error, nothing lost: each message names the problem and the fix.

Data sets are generated in temp dirs in their real on-disk formats, then broken one way each.
The checks run before the runner builds anything (``build_runner(cfg, mode)``, which
tools/train.py and tools/test.py call); two tool runs prove the one-line ``error: ...`` exit.
Demo runs on detection configs are in test_detection.py (odd images, missing/dir/text inputs);
here the segmentation demo and the demo's checkpoint errors.
"""

import copy
import json
import os
import os.path as osp
import shutil
import subprocess
import sys
import warnings

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config

import mobileone_dense  # noqa: F401  (registers our scope)
from mobileone_dense.apis import build_model_from_config
from mobileone_dense.apis.inference import init_model
from mobileone_dense.datasets import (
    LoadImageFromFile,
    LoadSegAnnotations,
    make_ade20k_shapes,
    make_coco_shapes,
    make_imagenet_folder,
    make_voc_shapes,
)
from mobileone_dense.engine.checks import (
    check_checkpoint_fits,
    check_data,
    explain_registry_error,
    read_checkpoint,
)
from mobileone_dense.engine.launch import build_runner
from mobileone_dense.errors import (
    BadDataError,
    CheckpointError,
    ConfigError,
    MissingDataError,
    UnknownTypeError,
    WeightsMismatchError,
)

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
_CONFIGS = {}


def config(name: str) -> Config:
    """A fresh copy of ``configs/<name>.py`` (each file is parsed once per session: mmseg's
    bases take seconds)."""
    if name not in _CONFIGS:
        _CONFIGS[name] = Config.fromfile(osp.join(REPO, 'configs', f'{name}.py'))
    return copy.deepcopy(_CONFIGS[name])


def tool_env():
    return dict(os.environ, OMP_NUM_THREADS='1')


# -- data sets -------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def coco(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('coco'))
    make_coco_shapes(root, num_train=4, num_val=2, image_size=(96, 96))
    return root


@pytest.fixture(scope='module')
def voc(tmp_path_factory):
    return make_voc_shapes(
        str(tmp_path_factory.mktemp('voc')), num_train=2, num_aug=2, num_val=2, image_size=(64, 64)
    )


def copy_tree(source, target):
    shutil.copytree(source, target)
    return str(target)


def detection_config(data, work_dir):
    """The real S0 detection config on generated data (only paths changed)."""
    cfg = config('ssdlite_mobileone_s0_coco')
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[loader].dataset.data_root = data + '/'
        cfg[loader].num_workers = 0
        cfg[loader].persistent_workers = False
    for evaluator in ('val_evaluator', 'test_evaluator'):
        cfg[evaluator].ann_file = osp.join(data, 'annotations', 'instances_val2017.json')
    cfg.work_dir = str(work_dir)
    return cfg


def voc_config(voc_root, name='deeplabv3_mobileone_s0_voc'):
    cfg = config(name)
    for dataset in cfg.train_dataloader.dataset.datasets[:2]:
        dataset.data_root = voc_root
    cfg.val_dataloader.dataset.data_root = voc_root
    cfg.test_dataloader.dataset.data_root = voc_root
    return cfg


def assert_names(message, *parts):
    for part in parts:
        assert str(part) in message, f'{part!r} not in: {message}'


# -- 1. missing data set root or annotation file ---------------------------------------------
def test_missing_coco_root_and_annotation_file(coco, tmp_path):
    cfg = detection_config(str(tmp_path / 'nowhere'), tmp_path / 'work')
    with pytest.raises(MissingDataError) as error:
        check_data(cfg, 'train')
    assert_names(
        str(error.value),
        str(tmp_path / 'nowhere'),
        'train_dataloader.dataset.data_root',
        'annotations/instances_{train,val}2017.json',
        'download',
    )

    data = copy_tree(coco, tmp_path / 'coco')
    os.remove(osp.join(data, 'annotations', 'instances_train2017.json'))
    with pytest.raises(MissingDataError) as error:
        check_data(detection_config(data, tmp_path / 'work'), 'train')
    assert_names(
        str(error.value),
        osp.join(data, 'annotations', 'instances_train2017.json'),
        'annotation file',
        'train_dataloader.dataset.data_root',
    )
    # testing needs only the test data: the missing training file does not matter
    check_data(detection_config(data, tmp_path / 'work'), 'test')


def test_missing_voc_split_ade_folder_and_imagenet_folder(voc, tmp_path):
    data = copy_tree(voc, tmp_path / 'VOC2012')
    os.remove(osp.join(data, 'ImageSets', 'Segmentation', 'aug.txt'))
    with pytest.raises(MissingDataError) as error:
        check_data(voc_config(data), 'train')
    assert_names(
        str(error.value),
        'train_dataloader.dataset.datasets.1',
        osp.join(data, 'ImageSets/Segmentation/aug.txt'),
        'SegmentationClass',
    )

    ade = make_ade20k_shapes(
        str(tmp_path / 'ADEChallengeData2016'), num_train=1, num_val=1, image_size=(32, 32)
    )
    os.rename(osp.join(ade, 'images', 'validation'), osp.join(ade, 'images', 'val'))
    cfg = config('deeplabv3_mobileone_s0_ade20k')
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[loader].dataset.data_root = ade
    with pytest.raises(MissingDataError) as error:
        check_data(cfg, 'train')
    assert_names(
        str(error.value),
        'val_dataloader.dataset',
        osp.join(ade, 'images/validation'),
        'images/{training,validation}',
    )

    imagenet = make_imagenet_folder(
        str(tmp_path / 'imagenet'), num_classes=2, train_per_class=1, val_per_class=1, size=16
    )['root']
    os.rename(osp.join(imagenet, 'train'), osp.join(imagenet, 'training'))
    os.remove(osp.join(imagenet, 'meta', 'train.txt'))
    cfg = config('mobileone_s0_imagenet')
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[loader].dataset.data_root = imagenet
    with pytest.raises(MissingDataError) as error:
        check_data(cfg, 'train')
    assert_names(
        str(error.value),
        osp.join(imagenet, 'train'),
        '<class folder>',
        'train_dataloader.dataset.data_root',
    )


def test_train_tool_fails_before_building_anything(tmp_path):
    """A missing data set is reported before the model is built (its typo never shows) and the
    tool exits with one line, no traceback."""
    missing = str(tmp_path / 'no_coco')
    result = subprocess.run(
        [
            sys.executable,
            osp.join(REPO, 'tools', 'train.py'),
            osp.join(REPO, 'configs', 'ssdlite_mobileone_s0_coco.py'),
            '--work-dir',
            str(tmp_path / 'work'),
            '--cfg-options',
            f'train_dataloader.dataset.data_root={missing}',
            'model.bbox_head.type=SSDHaed',
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=tool_env(),
    )
    assert result.returncode == 1
    assert 'Traceback' not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith('error: train_dataloader.dataset.data_root') and missing in last
    assert not osp.exists(tmp_path / 'work')  # nothing ran, not even the runner's logger


# -- 2. corrupt or truncated images ------------------------------------------------------------
def test_corrupt_and_truncated_images_are_named(tmp_path):
    image = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    good = str(tmp_path / 'good.jpg')
    cv2.imwrite(good, image)
    data = open(good, 'rb').read()
    truncated, garbage, empty = (str(tmp_path / n) for n in ('cut.jpg', 'text.jpg', 'empty.jpg'))
    open(truncated, 'wb').write(data[: len(data) // 2])
    open(garbage, 'wb').write(b'not an image at all')
    open(empty, 'wb').close()
    # mmcv's loader: a bare assertion, no word on what to do
    from mmcv.transforms import LoadImageFromFile as MMCVLoadImageFromFile

    with pytest.raises(AssertionError, match='failed to load image'):
        MMCVLoadImageFromFile()(dict(img_path=truncated))

    load = LoadImageFromFile()
    assert load(dict(img_path=good))['img'].shape == (48, 64, 3)
    for path in (truncated, garbage, empty):
        with pytest.raises(BadDataError) as error:
            load(dict(img_path=path))
        assert_names(
            str(error.value),
            path,
            'cannot decode image',
            'corrupt or truncated',
            'remove or replace it',
            'skip_corrupt=True',
        )
    with pytest.raises(MissingDataError, match='does not exist'):
        load(dict(img_path=str(tmp_path / 'gone.jpg')))

    skipping = LoadImageFromFile(skip_corrupt=True)
    with pytest.warns(UserWarning, match='cut.jpg: cannot decode image'):
        assert skipping(dict(img_path=truncated)) is None
    assert skipping(dict(img_path=good))['img'].shape == (48, 64, 3)


def test_training_dataset_skips_a_corrupt_image_when_configured(coco, tmp_path):
    """mmengine's dataset takes another sample when the loader skips one (training only)."""
    from mmdet.datasets import CocoDataset

    data = copy_tree(coco, tmp_path / 'coco')
    names = sorted(os.listdir(osp.join(data, 'train2017')))
    bad = osp.join(data, 'train2017', names[0])
    raw = open(bad, 'rb').read()
    open(bad, 'wb').write(raw[: len(raw) // 3])

    def dataset(skip):
        return CocoDataset(
            data_root=data,
            ann_file='annotations/instances_train2017.json',
            data_prefix=dict(img='train2017/'),
            pipeline=[dict(type='mobileone_dense.LoadImageFromFile', skip_corrupt=skip)],
        )

    with pytest.raises(BadDataError, match=names[0]):
        [dataset(False)[i] for i in range(len(names))]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        paths = [dataset(True)[i]['img_path'] for i in range(len(names))]
    assert bad not in paths and len(paths) == len(names)
    assert any(names[0] in str(w.message) for w in caught)


def test_configs_train_and_validate_with_the_checking_loaders():
    def types(pipeline):
        return [t['type'] for t in pipeline]

    def plain(pipeline):  # without the `_scope_` mmengine adds to inherited dicts
        return [{k: v for k, v in t.items() if k != '_scope_'} for t in pipeline]

    det = config('ssdlite_mobileone_s0_coco')
    assert types(det.train_dataloader.dataset.pipeline)[0] == 'mobileone_dense.LoadImageFromFile'
    assert types(det.val_dataloader.dataset.pipeline)[0] == 'mobileone_dense.LoadImageFromFile'
    # everything else is mmdet's pipeline, and the test loader stays mmdet's (its inferencers
    # look for 'LoadImageFromFile' by name)
    import mmdet

    mmdet = Config.fromfile(
        osp.join(
            osp.dirname(mmdet.__file__),
            '.mim',
            'configs',
            'ssd',
            'ssdlite_mobilenetv2-scratch_8xb24-600e_coco.py',
        )
    )
    for ours, theirs in (
        (det.train_dataloader.dataset.pipeline, mmdet.train_pipeline),
        (det.val_dataloader.dataset.pipeline, mmdet.test_pipeline),
    ):
        assert plain(ours[1:]) == plain(theirs[1:])
        assert plain([dict(ours[0], type='LoadImageFromFile')]) == plain(theirs[:1])
    assert plain(det.test_dataloader.dataset.pipeline) == plain(mmdet.test_pipeline)
    for name in ('deeplabv3_mobileone_s0_voc', 'deeplabv3_mobileone_s0_ade20k'):
        seg = config(name)
        train = seg.train_dataloader.dataset
        for pipeline in [d.pipeline for d in train.get('datasets', [train])] + [
            seg.val_dataloader.dataset.pipeline
        ]:
            assert types(pipeline)[:1] == ['mobileone_dense.LoadImageFromFile']
            assert 'mobileone_dense.LoadSegAnnotations' in types(pipeline)
        assert 'LoadAnnotations' in types(seg.test_pipeline)  # mmseg's inference API needs it
    voc_coco = config('deeplabv3_mobileone_s0_voc_coco').train_dataloader.dataset.datasets[2]
    assert types(voc_coco.pipeline)[:2] == [
        'mobileone_dense.LoadImageFromFile',
        'mobileone_dense.LoadCocoSemanticMask',
    ]
    cls = config('mobileone_s2_imagenet')
    switch = next(h for h in cls.custom_hooks if h.type.endswith('SwitchRecipeHook'))
    for pipeline in [
        cls.train_dataloader.dataset.pipeline,
        cls.val_dataloader.dataset.pipeline,
        *(stage.train_pipeline for stage in switch.schedule),
    ]:
        assert types(pipeline)[0] == 'mobileone_dense.LoadImageFromFile'


# -- 3. classes of the data vs num_classes of the model ----------------------------------------
def test_class_count_mismatch_names_both_numbers_and_keys(coco, voc, tmp_path):
    cfg = detection_config(coco, tmp_path)
    three = ('sports ball', 'tv', 'kite')
    for loader in ('train_dataloader', 'val_dataloader'):
        cfg[loader].dataset.metainfo = dict(classes=three)
    with pytest.raises(ConfigError) as error:
        check_data(cfg, 'train')
    assert_names(
        str(error.value),
        'train_dataloader.dataset has 3 classes',
        'sports ball',
        'model.bbox_head.num_classes = 80',
        'model.bbox_head.num_classes=3',
        'metainfo',
    )
    with pytest.raises(ConfigError, match='model.bbox_head.num_classes = 80'):
        build_runner(cfg, 'train')  # the tools' path (the configs run no NumClassCheckHook)
    cfg.model.bbox_head.num_classes = 3
    check_data(cfg, 'train')  # consistent now
    cfg.train_dataloader.dataset.metainfo = dict(classes='sports ball')  # not ('sports ball',)
    with pytest.raises(ConfigError) as error:
        check_data(cfg, 'train')
    assert_names(
        str(error.value),
        "train_dataloader.dataset.metainfo.classes is the string 'sports ball'",
        "classes=('sports ball',)",
    )

    cfg = voc_config(voc)
    cfg.merge_from_dict({'model.decode_head.num_classes': 5})
    with pytest.raises(ConfigError) as error:
        check_data(cfg, 'train')
    assert_names(
        str(error.value),
        'has 21 classes',
        'PascalVOCDataset.METAINFO',
        'model.decode_head.num_classes = 5',
        'model.decode_head.num_classes=21',
    )


# -- 4. empty annotation files ---------------------------------------------------------------
def test_empty_and_imageless_annotation_files(coco, voc, tmp_path):
    data = copy_tree(coco, tmp_path / 'coco')
    ann = osp.join(data, 'annotations', 'instances_train2017.json')
    cfg = detection_config(data, tmp_path / 'work')
    content = json.load(open(ann))
    breakages = {
        '0 bytes': lambda: open(ann, 'w').close(),
        'lists no images': lambda: json.dump(
            dict(content, images=[], annotations=[]), open(ann, 'w')
        ),
        'truncated': lambda: open(ann, 'w').write(json.dumps(content)[:500]),
        'no "images" list': lambda: json.dump(dict(annotations=[]), open(ann, 'w')),
    }
    for problem, breakage in breakages.items():
        breakage()
        with pytest.raises(BadDataError) as error:
            check_data(cfg, 'train')
        assert_names(str(error.value), ann, problem, 'train_dataloader.dataset.ann_file')
    # the evaluator's copy of the validation file is checked too
    os.remove(ann)
    data2 = copy_tree(coco, tmp_path / 'coco2')
    val = osp.join(data2, 'annotations', 'instances_val2017.json')
    open(val, 'w').close()
    with pytest.raises(BadDataError, match='val_dataloader.dataset.ann_file.*0 bytes'):
        check_data(detection_config(data2, tmp_path / 'work'), 'train')

    voc_data = copy_tree(voc, tmp_path / 'VOC2012')
    split = osp.join(voc_data, 'ImageSets', 'Segmentation', 'train.txt')
    open(split, 'w').write('\n\n')
    with pytest.raises(BadDataError) as error:
        check_data(voc_config(voc_data), 'train')
    assert_names(str(error.value), split, 'lists no images', 'datasets.0.ann_file')


# -- 5. segmentation labels outside the classes ----------------------------------------------
def test_mask_labels_outside_the_classes_are_named(voc, tmp_path):
    from PIL import Image

    mask = np.zeros((8, 8), np.uint8)
    mask[0, :3] = [15, 255, 30]  # person, ignored, out of range (VOC has 21 classes)
    mask[1, 0] = 21
    path = str(tmp_path / 'mask.png')
    Image.fromarray(mask).save(path)
    results = dict(seg_map_path=path, reduce_zero_label=False, seg_fields=[])
    # mmseg's own loader takes the values as they are: the loss would crash later, unnamed
    from mmseg.datasets.transforms import LoadAnnotations

    assert 30 in LoadAnnotations()(dict(results, seg_fields=[]))['gt_seg_map']

    with pytest.raises(BadDataError) as error:
        LoadSegAnnotations(num_classes=21)(dict(results, seg_fields=[]))
    assert_names(
        str(error.value),
        path,
        '[21, 30]',
        'outside the 21 classes',
        '255 = ignore_index',
        'model.decode_head.num_classes',
    )
    mask[0, 2] = mask[1, 0] = 255
    Image.fromarray(mask).save(path)
    loaded = LoadSegAnnotations(num_classes=21)(dict(results, seg_fields=[]))
    assert loaded['gt_seg_map'][0, 0] == 15

    # ADE20K's files hold class + 1 (0 = "other"): the message gives the file's values too
    Image.fromarray(np.full((4, 4), 200, np.uint8)).save(path)
    with pytest.raises(BadDataError, match=r'\[199\] \(values \[200\] in the file'):
        LoadSegAnnotations(num_classes=150, reduce_zero_label=True)(
            dict(results, reduce_zero_label=True, seg_fields=[])
        )

    # the tools give the loaders the decode head's num_classes (overrides included): the
    # checks return the settings, build_runner applies them
    cfg = voc_config(voc)
    cfg.merge_from_dict({'model.decode_head.num_classes': 21})
    cfg.work_dir = str(tmp_path / 'work')
    settings = check_data(cfg, 'train')
    assert settings['val_dataloader.dataset.pipeline.2.num_classes'] == 21
    runner_cfg = build_runner(cfg, 'train').cfg
    loaders = [
        t
        for d in runner_cfg.train_dataloader.dataset.datasets
        for t in d.pipeline
        if t['type'] == 'mobileone_dense.LoadSegAnnotations'
    ]
    loaders += [
        t
        for t in runner_cfg.val_dataloader.dataset.pipeline
        if t['type'] == 'mobileone_dense.LoadSegAnnotations'
    ]
    assert len(loaders) == 3 and all(t.num_classes == 21 and t.ignore_index == 255 for t in loaders)


def test_checks_never_change_the_config(coco, voc, checkpoints, tmp_path):
    """Every check only reads: what one computes comes back for the caller to apply."""
    seg = voc_config(voc)
    seg.merge_from_dict({'model.decode_head.num_classes': 21})
    det = detection_config(coco, tmp_path / 'work')
    det.load_from = checkpoints['det_s0']
    for cfg in (seg, det):
        before = copy.deepcopy(cfg)
        settings = {**check_data(cfg, 'train'), **check_data(cfg, 'test')}
        loaded = read_checkpoint(cfg)
        if loaded is not None:
            model = build_model_from_config(copy.deepcopy(cfg))  # (mmdet's builders write)
            check_checkpoint_fits(cfg, model, *loaded, 'test')
        assert cfg.to_dict() == before.to_dict()
        assert bool(settings) == (cfg is seg)  # (the label checks' class counts)


# -- 6 and 7. truncated checkpoints, checkpoints of another variant or task ------------------
@pytest.fixture(scope='module')
def checkpoints(coco, tmp_path_factory):
    """State dicts of randomly initialized models, saved as the runner saves them."""
    root = tmp_path_factory.mktemp('checkpoints')
    paths = {}
    for name, cfg in (
        ('det_s0', detection_config(coco, root)),
        ('det_s1', config('ssdlite_mobileone_s1_coco')),
    ):
        path = str(root / f'{name}.pth')
        torch.save(dict(state_dict=build_model_from_config(cfg).state_dict(), meta={}), path)
        paths[name] = path
    data = open(paths['det_s0'], 'rb').read()
    paths['truncated'] = str(root / 'truncated.pth')
    open(paths['truncated'], 'wb').write(data[: len(data) // 2])
    return paths


def test_truncated_checkpoint_everywhere(coco, checkpoints, tmp_path):
    truncated = checkpoints['truncated']
    cfg = detection_config(coco, tmp_path / 'work')
    with pytest.raises(CheckpointError) as error:
        init_model(cfg, truncated)
    assert_names(str(error.value), truncated, 'truncated or corrupt', 're-download')
    assert error.value.__cause__ is None and error.value.__suppress_context__  # no chained soup

    for mode, resume in (('test', False), ('train', True), ('train', False)):
        cfg = detection_config(coco, tmp_path / 'work')
        cfg.load_from, cfg.resume = truncated, resume
        with pytest.raises(CheckpointError, match='truncated or corrupt'):
            build_runner(cfg, mode)
    # (--resume without a path is our Runner's: it falls back to the checkpoint before a
    # truncated one, tests/test_crash_safe.py)


def test_test_tool_reports_a_truncated_checkpoint_in_one_line(coco, checkpoints, tmp_path):
    data = coco + '/'
    result = subprocess.run(
        [
            sys.executable,
            osp.join(REPO, 'tools', 'test.py'),
            osp.join(REPO, 'configs', 'ssdlite_mobileone_s0_coco.py'),
            checkpoints['truncated'],
            '--work-dir',
            str(tmp_path / 'work'),
            '--cfg-options',
            f'test_dataloader.dataset.data_root={data}',
            f'test_evaluator.ann_file={data}annotations/instances_val2017.json',
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=tool_env(),
    )
    assert result.returncode == 1 and 'Traceback' not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith('error: checkpoint') and checkpoints['truncated'] in last
    assert 'truncated or corrupt' in last


def test_checkpoint_of_another_variant_or_task(coco, voc, checkpoints, tmp_path):
    s1 = checkpoints['det_s1']
    with pytest.raises(WeightsMismatchError) as error:
        init_model(detection_config(coco, tmp_path), s1)
    assert_names(
        str(error.value),
        s1,
        'size mismatch',
        "arch='s0'",
        'looks like a detector (bbox_head) with a MobileOne-s1 backbone',
    )

    # mmengine's loader would log the mismatch and test random weights; the tools refuse
    cfg = detection_config(coco, tmp_path / 'work')
    cfg.load_from = s1
    with pytest.raises(WeightsMismatchError, match='size mismatch'):
        build_runner(cfg, 'test')
    cfg = detection_config(coco, tmp_path / 'work')
    cfg.load_from = checkpoints['det_s0']
    build_runner(cfg, 'test')  # the right checkpoint passes

    seg_cfg = voc_config(voc)
    seg = build_model_from_config(seg_cfg)
    weights = torch.load(checkpoints['det_s0'], weights_only=True)['state_dict']
    with pytest.raises(WeightsMismatchError) as error:
        check_checkpoint_fits(seg_cfg, seg, 'det.pth', weights, 'test')
    assert_names(
        str(error.value),
        'missing keys',
        'decode_head.',
        'unexpected keys',
        'bbox_head.',
        'a detector (bbox_head) with a MobileOne-s0 backbone',
        'use the config the weights were trained with',
    )
    # load_from for training is fine-tuning: a detector's S0 backbone may start a segmentor...
    check_checkpoint_fits(seg_cfg, seg, 'det.pth', weights, 'train')
    # ... but another variant's backbone may not
    with pytest.raises(WeightsMismatchError, match='load_from: the backbone does not fit'):
        check_checkpoint_fits(
            seg_cfg, seg, 's1.pth', torch.load(s1, weights_only=True)['state_dict'], 'train'
        )


# -- 8. a type= typo -------------------------------------------------------------------------
@pytest.mark.parametrize(
    'key,typo,suggestion,registry',
    [
        ('model.bbox_head.type', 'SSDHaed', "'SSDHead'", 'mmdet::model'),
        (
            'model.backbone.type',
            'mobileone_dense.MobilOne',
            "'mobileone_dense.MobileOne'",
            'mmdet::model',
        ),
    ],
)
def test_type_typo_suggests_the_registered_name(key, typo, suggestion, registry):
    cfg = config('ssdlite_mobileone_s0_coco')
    cfg.merge_from_dict({key: typo})
    with pytest.raises(UnknownTypeError) as error:
        build_model_from_config(cfg)
    assert_names(
        str(error.value), f'unknown type {typo!r} at {key}', registry, f'did you mean {suggestion}'
    )


def test_type_typos_in_the_runner_and_the_data(coco, tmp_path):
    cfg = detection_config(coco, tmp_path / 'work')
    cfg.model.bbox_head.type = 'SSDHaed'
    with pytest.raises(UnknownTypeError, match="at model.bbox_head.type.*did you mean 'SSDHead'"):
        build_runner(cfg, 'train')
    cfg = detection_config(coco, tmp_path / 'work')
    cfg.train_dataloader.dataset.pipeline[2].type = 'MinIoURandomCorp'
    with pytest.raises(UnknownTypeError) as error:
        check_data(cfg, 'train')
    assert_names(
        str(error.value),
        'train_dataloader.dataset.pipeline.2.type',
        'mmdet::transform',
        "did you mean 'MinIoURandomCrop'",
    )
    # other KeyErrors are not touched, not even where the config has a type= that no registry
    # holds (mmcv's 'nms' op of the head's test_cfg)
    cfg = config('ssdlite_mobileone_s0_coco')
    assert cfg.model.test_cfg.nms.type == 'nms'
    assert explain_registry_error(KeyError('num_classes'), cfg.model, cfg.default_scope) is None
    cfg = config('ssdlite_mobileone_s0_coco')
    del cfg.model.neck['type']
    with pytest.raises(KeyError) as error:
        build_model_from_config(cfg)
    assert not isinstance(error.value, UnknownTypeError)


# -- 9. the demo -----------------------------------------------------------------------------
@pytest.fixture(scope='module')
def segmentation_demo(voc, tmp_path_factory):
    """The S0 VOC config tested at 128 px (fast), with a randomly initialized checkpoint."""
    root = tmp_path_factory.mktemp('seg_demo')
    config_file = str(root / 'seg_s0_128.py')
    with open(config_file, 'w') as f:
        f.write(
            f'_base_ = [{osp.join(REPO, "configs", "deeplabv3_mobileone_s0_voc.py")!r}]\n'
            "test_pipeline = [dict(type='LoadImageFromFile'),\n"
            "                 dict(type='Resize', scale=(128, 128), keep_ratio=True),\n"
            "                 dict(type='LoadAnnotations'), dict(type='PackSegInputs')]\n"
        )
    checkpoint = str(root / 'seg_s0.pth')
    model = build_model_from_config(Config.fromfile(config_file))
    torch.save(dict(state_dict=model.state_dict()), checkpoint)
    return config_file, checkpoint


def run_demo(capsys, *argv):
    """demo/image_demo.py's main() in this process (no subprocess start-up per image)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        'image_demo', osp.join(REPO, 'demo', 'image_demo.py')
    )
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    code = demo.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_demo_bad_inputs_and_odd_images(segmentation_demo, voc, checkpoints, tmp_path, capsys):
    config_file, checkpoint = segmentation_demo
    text = tmp_path / 'notes.jpg'
    text.write_text('not an image')
    expected = 'not a readable image (OpenCV cannot decode it); give a JPEG'
    code, _, err = run_demo(capsys, text, config_file, checkpoint)
    assert code == 2 and err.startswith('error: ') and str(text) in err and expected in err
    # a folder whose only image is that file: skipped and listed, nothing processed
    code, _, err = run_demo(capsys, tmp_path, config_file, checkpoint, '--out-dir', tmp_path)
    assert code == 2 and f'skipped {text}: ' in err and expected in err
    assert err.rstrip().endswith('error: none of the 1 inputs could be processed')
    image = cv2.imread(osp.join(voc, 'JPEGImages', os.listdir(osp.join(voc, 'JPEGImages'))[0]))
    for kind, pixels in (
        ('uint16', image.astype(np.uint16) * 257),
        ('rgba', cv2.cvtColor(image, cv2.COLOR_BGR2BGRA)),
    ):
        path, out = tmp_path / f'{kind}.png', tmp_path / 'out' / f'{kind}_seg.png'
        cv2.imwrite(str(path), pixels)
        code, stdout, err = run_demo(capsys, path, config_file, checkpoint, '--out-file', out)
        assert code == 0, err
        assert 'classes:' in stdout and cv2.imread(str(out)).shape[0] >= image.shape[0]
    # a broken or foreign checkpoint: one line naming it
    for bad, expected in (
        (checkpoints['truncated'], 'truncated or corrupt'),
        (checkpoints['det_s0'], 'looks like a detector'),
    ):
        code, _, err = run_demo(capsys, text.with_name('uint16.png'), config_file, bad)
        assert code == 2 and err.startswith('error: checkpoint') and bad in err and expected in err
