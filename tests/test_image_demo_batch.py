"""``demo/image_demo.py`` on many inputs: a folder, a glob, a video; batches; ``--out-json``;
bad files inside a folder.

Untrained models (random weights, the real S0 configs on tiny generated data, small test sizes)
keep it fast: what is tested is the plumbing (which inputs, in which order, batched how, written
where and in which format), not what a model learned. ``main()`` runs in this process.
"""

import glob
import importlib.util
import json
import os
import os.path as osp
import shutil

import cv2
import numpy as np
import pytest
import torch
from mmengine.registry import DefaultScope
from short_configs import (
    short_classification_config,
    short_detection_config,
    short_segmentation_config,
)
from test_onnx_export import make_checkpoint

from mobileone_dense.apis.inference import init_model, read_image
from mobileone_dense.apis.prediction import Predictor
from mobileone_dense.datasets.synthetic import COCO_CATEGORY_IDS

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
_spec = importlib.util.spec_from_file_location(
    'image_demo_batch', osp.join(REPO, 'demo', 'image_demo.py')
)
image_demo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(image_demo)


def run_demo(capsys, *argv):
    code = image_demo.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    """Per task a config file and a checkpoint of its randomly initialized model (training
    form: the demo re-parameterizes it), and the generated images (COCO val images of varied
    sizes around 64 px, with their annotation file)."""
    root = str(tmp_path_factory.mktemp('demo_batch'))
    det = short_detection_config(root, num_train=1, num_val=5, size=64)
    seg = short_segmentation_config(root, num_val=2)
    seg.test_pipeline = seg.test_dataloader.dataset.pipeline  # mmseg's inference_model's
    cls = short_classification_config(root, num_classes=5)
    made = {}
    for task, cfg in (('detection', det), ('segmentation', seg), ('classification', cls)):
        config = osp.join(root, f'{task}.py')
        cfg.dump(config)
        # input-dependent, well-conditioned random weights (test_onnx_export.py's)
        checkpoint = make_checkpoint(config, osp.join(root, f'{task}.pth'), 64)
        made[task] = (config, checkpoint)
    coco = osp.join(root, 'coco')
    made['images'] = sorted(glob.glob(osp.join(coco, 'val2017', '*.jpg')))
    made['ann_file'] = osp.join(coco, 'annotations', 'instances_val2017.json')
    return made


@pytest.fixture(scope='module')
def models(files):
    return {
        task: init_model(*files[task]) for task in ('detection', 'segmentation', 'classification')
    }


def image_folder(root, files, extra=()):
    """The generated images copied into ``root`` (plus ``extra``: (name, bytes))."""
    os.makedirs(root, exist_ok=True)
    for path in files['images']:
        shutil.copy(path, root)
    for name, data in extra:
        with open(osp.join(root, name), 'wb') as f:
            f.write(data)
    return str(root)


# Batch 3 against batch 1: on the CPU other batch sizes run other kernels, so the results differ
# by float32 rounding. Random weights are less well conditioned than trained ones: that rounding
# reaches the tolerances of the trained models' comparisons (tests/test_upstream_deploy.py:
# 1e-3 px, scores 1e-5), so these are ten times theirs.
BOX_TOL, SCORE_TOL = 1e-2, 1e-4


def assert_same_detections(a, b, box_tol=BOX_TOL, score_tol=SCORE_TOL):
    """Two predictions of one image, as (label, box xyxy or xywh, score) triples, agree: each
    detection of one has a partner in the other with the same label, the box within
    ``box_tol`` px and the score within ``score_tol``. The order may differ between scores
    that tie (within ``score_tol``); a detection may lack its partner only at the cut-off (its
    score within ``score_tol`` of the lowest kept one), where a tie decides which is kept."""
    unmatched = [list(b), []]
    for label, box, score in a:
        partner = next(
            (
                j
                for j, (l2, b2, s2) in enumerate(unmatched[0])
                if l2 == label
                and abs(s2 - score) <= score_tol
                and np.abs(np.subtract(b2, box)).max() <= box_tol
            ),
            None,
        )
        if partner is None:
            unmatched[1].append((label, box, score))
        else:
            unmatched[0].pop(partner)
    for left, full in ((unmatched[1], a), (unmatched[0], b)):
        floor = min(s for _, _, s in full) if full else 0.0
        assert all(s - floor <= score_tol for _, _, s in left), left[:3]
    assert len(a) > 0 and len(unmatched[1]) + len(unmatched[0]) <= 0.05 * len(a)


def triples(result):
    instances = result.pred_instances
    return list(
        zip(
            instances.labels.tolist(),
            instances.bboxes.numpy().tolist(),
            instances.scores.tolist(),
        )
    )


def upstream_prediction(task, model, image):
    """What the libraries' own single-image APIs predict for one BGR array (in the model's
    scope: they build its transforms by name)."""
    with DefaultScope.overwrite_default_scope(model.cfg.default_scope):
        return _upstream_prediction(task, model, image)


def _upstream_prediction(task, model, image):
    if task == 'detection':
        from mmdet.apis import inference_detector

        return inference_detector(model, image)
    if task == 'segmentation':
        from mmseg.apis import inference_model

        return inference_model(model, image)
    from mmpretrain.apis import ImageClassificationInferencer

    model._config = model.cfg  # what mmpretrain's get_model leaves on a model it builds
    inferencer = ImageClassificationInferencer(model, device='cpu')
    return inferencer(image, return_datasamples=True)[0]


@pytest.mark.parametrize('task', ['detection', 'segmentation', 'classification'])
def test_batches_predict_what_batch_one_and_the_upstream_api_predict(files, models, task):
    """Images of three sizes (two share one), batch 3: the batched predictions are the
    upstream batch-1 APIs' (``inference_detector``, mmseg's ``inference_model``, mmpretrain's
    ``ImageClassificationInferencer``)."""
    model = models[task]
    base = read_image(files['images'][0])
    images = [base, cv2.resize(base, (80, 48)), base[::-1].copy(), cv2.resize(base, (40, 72))]
    batched = Predictor(model, batch_size=3)(images)
    assert len(batched) == len(images)
    # the model tells the images apart, so a mix-up within a batch would show
    first, flipped = (b.to_dict() for b in (batched[0], batched[2]))
    key = dict(
        detection=('pred_instances', 'scores'),
        segmentation=('pred_sem_seg', 'data'),
        classification=('pred_score',),
    )[task]
    for part in key:
        first, flipped = first[part], flipped[part]
    assert first.shape != flipped.shape or not torch.equal(first, flipped)
    for image, ours in zip(images, batched):
        theirs = upstream_prediction(task, model, image)
        if task == 'detection':
            assert_same_detections(triples(theirs), triples(ours))
        elif task == 'segmentation':
            assert ours.pred_sem_seg.data.shape[1:] == image.shape[:2]
            assert torch.equal(theirs.pred_sem_seg.data, ours.pred_sem_seg.data)
        else:
            assert torch.allclose(theirs.pred_score, ours.pred_score, rtol=0, atol=SCORE_TOL)


def test_folder_in_batches_draws_and_writes_coco_results(files, tmp_path, capsys):
    folder = image_folder(tmp_path / 'images', files)
    config, checkpoint = files['detection']
    outputs = {}
    for batch in (1, 3):
        out = tmp_path / f'batch{batch}'
        code, stdout, err = run_demo(
            capsys, folder, config, checkpoint, '--out-dir', out / 'drawn',
            '--out-json', out / 'results.json', '--batch-size', batch,
        )  # fmt: skip
        assert code == 0, err
        assert 'ETA' in err and f'processed 5 of 5 inputs; drawings in {out / "drawn"}' in stdout
        names = sorted(os.listdir(out / 'drawn'))
        assert names == [osp.splitext(osp.basename(p))[0] + '.png' for p in files['images']]
        for name, source in zip(names, files['images']):  # detections keep the image's size
            assert cv2.imread(str(out / 'drawn' / name)).shape == cv2.imread(source).shape
        with open(out / 'results.json') as f:
            outputs[batch] = json.load(f)
    records = outputs[1]
    assert set(records[0]) == {'image_id', 'category_id', 'bbox', 'score', 'file_name'}
    # no annotation file: image ids are the positions in sorted order; COCO's 80 classes
    # (the generated set's): COCO's own category ids, not the label indices
    assert {r['image_id'] for r in records} == set(range(5))
    assert {r['file_name'] for r in records} == {osp.basename(p) for p in files['images']}
    assert {r['category_id'] for r in records} <= set(COCO_CATEGORY_IDS)
    assert max(r['category_id'] for r in records) > 80  # the ids past the gaps are used
    assert all(w >= 0 and h >= 0 for _, _, w, h in (r['bbox'] for r in records))
    for image_id in range(5):
        per_batch = [
            [(r['category_id'], r['bbox'], r['score']) for r in out if r['image_id'] == image_id]
            for out in (outputs[1], outputs[3])
        ]
        assert_same_detections(*per_batch)


def test_glob_with_an_annotation_file_takes_its_ids(files, models, tmp_path, capsys):
    folder = image_folder(tmp_path / 'images', files)
    cv2.imwrite(osp.join(folder, 'other.png'), np.zeros((8, 8, 3), np.uint8))  # not matched
    # an annotation file whose image ids and order are not the sorted positions
    with open(files['ann_file']) as f:
        content = json.load(f)
    for k, image in enumerate(reversed(content['images'])):
        image['id'] = 1000 + 7 * k
    ann_file = str(tmp_path / 'instances.json')
    with open(ann_file, 'w') as f:
        json.dump(content, f)
    out = tmp_path / 'results.json'
    code, stdout, err = run_demo(
        capsys, osp.join(folder, '*.jpg'), *files['detection'],
        '--out-json', out, '--ann-file', ann_file, '--batch-size', '2',
    )  # fmt: skip
    assert code == 0, err
    assert f'processed 5 of 5 inputs; saved {out}' in stdout
    records = json.load(open(out))
    by_name = {image['file_name']: image['id'] for image in content['images']}
    assert {r['image_id'] for r in records} == set(by_name.values())
    assert all(by_name[r['file_name']] == r['image_id'] for r in records)
    # the file is a COCO results file for pycocotools, with every box the model returned
    from pycocotools.coco import COCO

    loaded = COCO(ann_file).loadRes(str(out))
    assert len(loaded.anns) == len(records)
    image = read_image(files['images'][2])
    expected = triples(Predictor(models['detection'])([image])[0])
    ids = COCO_CATEGORY_IDS
    got = [
        (ids.index(r['category_id']), [*r['bbox'][:2], r['bbox'][0] + r['bbox'][2],
                                        r['bbox'][1] + r['bbox'][3]], r['score'])
        for r in records if r['image_id'] == by_name[osp.basename(files['images'][2])]
    ]  # fmt: skip
    assert_same_detections(expected, got)
    # an image the annotation file does not list: one line naming it, nothing run
    code, _, err = run_demo(
        capsys, osp.join(folder, '*'), *files['detection'], '--out-json', out,
        '--ann-file', ann_file,
    )  # fmt: skip
    assert code == 2 and err.startswith('error: 1 input image(s) are not in') and 'other.png' in err


def make_video(path, frames=5, size=(64, 48)):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'mp4v'), 5, size)
    assert writer.isOpened()
    rng = np.random.default_rng(0)
    for _ in range(frames):
        writer.write(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    writer.release()
    return str(path)


def test_video_becomes_an_annotated_video_and_frame_lists(files, tmp_path, capsys):
    video = make_video(tmp_path / 'clip.mp4')
    out_json = tmp_path / 'clip.json'
    code, stdout, err = run_demo(
        capsys, video, *files['detection'], '--out-dir', tmp_path / 'drawn',
        '--out-json', out_json, '--batch-size', '2',
    )  # fmt: skip
    assert code == 0, err
    drawn = tmp_path / 'drawn' / 'clip.mp4'
    assert 'ETA' in err and f'processed 5 of 5 frames; saved {drawn}' in stdout
    reader = cv2.VideoCapture(str(drawn))
    frames = []
    while True:
        ok, frame = reader.read()
        if not ok:
            break
        frames.append(frame)
    assert len(frames) == 5 and frames[0].shape == (48, 64, 3)
    per_frame = json.load(open(out_json))
    assert len(per_frame) == 5 and all(records for records in per_frame)
    assert all(r['image_id'] == i for i, records in enumerate(per_frame) for r in records)
    assert {r['file_name'] for records in per_frame for r in records} == {'clip.mp4'}


def test_bad_files_in_a_folder_are_skipped_and_listed(files, tmp_path, capsys):
    good = open(files['images'][0], 'rb').read()
    folder = image_folder(
        tmp_path / 'images',
        files,
        extra=[('000000000002_broken.jpg', good[: len(good) // 3]), ('notes.png', b'not an')],
    )
    out = tmp_path / 'results.json'
    code, stdout, err = run_demo(capsys, folder, *files['detection'], '--out-json', out)
    assert code == 0, err
    assert 'processed 5 of 7 inputs' in stdout
    for name in ('000000000002_broken.jpg', 'notes.png'):
        assert f'skipped {osp.join(folder, name)}: ' in err
    assert 'not a readable image' in err and err.split('skipped 2:')[1].count('\n') == 3
    # image ids are positions among all 7 sorted names (the broken image is 3, notes.png 6)
    assert {r['image_id'] for r in json.load(open(out))} == {0, 1, 2, 4, 5}
    # nothing readable: exit status 2, and no results file
    only_bad = image_folder(tmp_path / 'bad', dict(images=[]), extra=[('a.jpg', b'x')])
    code, stdout, err = run_demo(
        capsys, only_bad, *files['detection'], '--out-json', tmp_path / 'none.json'
    )
    assert code == 2 and 'error: none of the 1 inputs could be processed' in err
    assert not osp.exists(tmp_path / 'none.json')


def test_inputs_and_outputs_that_give_nothing_are_refused(files, tmp_path, capsys):
    config, checkpoint = files['detection']
    empty = tmp_path / 'empty'
    empty.mkdir()
    folder = image_folder(tmp_path / 'images', files)
    for argv, expected in (
        ([empty], f'the folder {str(empty)!r} has no image files'),
        ([tmp_path / 'nope' / '*.jpg'], 'no image file matches'),
        ([folder], 'nothing to write: give --out-dir'),
        ([folder, '--out-file', tmp_path / 'a.png'], '--out-file takes the drawing of one'),
        ([folder, '--out-dir', tmp_path, '--batch-size', '0'], '--batch-size must be >= 1'),
    ):
        code, _, err = run_demo(capsys, argv[0], config, checkpoint, *argv[1:])
        assert code == 2 and err.startswith('error: ') and expected in err, err


def test_segmentation_label_maps_and_index(files, models, tmp_path, capsys):
    folder = image_folder(tmp_path / 'images', files)
    cv2.imwrite(osp.join(folder, 'wide.png'), cv2.resize(cv2.imread(files['images'][0]), (90, 40)))
    out = tmp_path / 'seg' / 'index.json'
    code, stdout, err = run_demo(
        capsys, folder, *files['segmentation'], '--out-json', out, '--out-dir', tmp_path / 'drawn',
        '--batch-size', '4',
    )  # fmt: skip
    assert code == 0, err
    index = json.load(open(out))
    assert index['task'] == 'segmentation' and len(index['classes']) == 21
    records = index['label_maps']
    assert [r['file_name'] for r in records] == sorted(os.listdir(folder))
    assert [r['index'] for r in records] == list(range(6))
    for record in records:
        path = osp.join(folder, record['file_name'])
        label_map = cv2.imread(str(out.parent / record['label_map']), cv2.IMREAD_UNCHANGED)
        expected = Predictor(models['segmentation'])([read_image(path)])[0]
        assert label_map.dtype == np.uint8
        assert (record['height'], record['width']) == label_map.shape == cv2.imread(path).shape[:2]
        np.testing.assert_array_equal(label_map, expected.pred_sem_seg.data[0].numpy())
        drawing = cv2.imread(
            str(tmp_path / 'drawn' / (osp.splitext(record['file_name'])[0] + '.png'))
        )
        assert drawing.shape[1] > label_map.shape[1]  # the image and its legend


def test_classification_top_k(files, models, tmp_path, capsys):
    folder = image_folder(tmp_path / 'images', files)
    out = tmp_path / 'top.json'
    code, _, err = run_demo(
        capsys, folder, *files['classification'], '--out-json', out, '--topk', '3',
        '--batch-size', '2',
    )  # fmt: skip
    assert code == 0, err
    records = json.load(open(out))
    classes = models['classification'].dataset_meta['classes']
    assert [r['file_name'] for r in records] == [osp.basename(p) for p in files['images']]
    for record, path in zip(records, files['images']):
        scores = Predictor(models['classification'])([read_image(path)])[0].pred_score
        top = torch.topk(scores, 3)
        assert [t['label'] for t in record['topk']] == top.indices.tolist()
        assert [t['name'] for t in record['topk']] == [classes[i] for i in top.indices]
        np.testing.assert_allclose([t['score'] for t in record['topk']], top.values, atol=SCORE_TOL)
    # one image: still --out-file and the summary line
    code, stdout, err = run_demo(
        capsys, files['images'][0], *files['classification'], '--out-file', tmp_path / 'one.png'
    )
    assert code == 0 and stdout.startswith('top-5: ') and f'saved {tmp_path / "one.png"}' in stdout
    assert 'ETA' not in err
