"""End-to-end ONNX graphs (detections with NMS / label map / top-k) and the numpy-only demo.

- a random detector: the graph's PyTorch twin gives ``predict``'s detections bit for bit, the
  ONNX file equals ``predict`` at two sizes with batch 2 (thresholds in a gap of the scores, as
  in test_onnx_export.py), and the check fails when the graph and the model disagree;
- the trained quickstart detector: ``tools/deploy/export_onnx.py --end2end`` checks itself on the
  test images, then ``demo/onnx_demo.py`` (run with torch, torchvision, mm* and mobileone_dense
  made unimportable) finds the detections ``demo/image_demo.py`` finds;
- the trained segmentor and classifier: end-to-end exports through the tool and the demo's
  label map / top-5 against mmseg's / mmpretrain's inference.
"""

import copy
import importlib.util
import json
import os
import os.path as osp
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from mmengine.config import Config
from test_onnx_export import DET_CFG, image_like, make_checkpoint

from mobileone_dense.apis.inference import init_model, read_image
from mobileone_dense.apis.visualization import predict
from mobileone_dense.deploy.onnx_end2end import end2end_graph, export_end2end
from mobileone_dense.deploy.onnx_end2end_check import check_end2end, match_detections
from mobileone_dense.deploy.onnx_metadata import read_metadata
from mobileone_dense.errors import OnnxParityError

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
EXPORT = osp.join(REPO, 'tools', 'deploy', 'export_onnx.py')
ONNX_DEMO = osp.join(REPO, 'demo', 'onnx_demo.py')
# Runs a script with torch, torchvision, every mm* package and mobileone_dense unimportable,
# then checks that none of them was imported after all.
GUARDED = """
import runpy, sys
BLOCKED = ('torch', 'torchvision', 'mmcv', 'mmdet', 'mmseg', 'mmpretrain', 'mmengine',
           'mobileone_dense')
def blocked(name):
    return name.split('.')[0] in BLOCKED
class Block:
    def find_spec(self, name, path=None, target=None):
        if blocked(name):
            raise ImportError(f'{name} must not be imported by the ONNX demo')
sys.meta_path.insert(0, Block())
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name='__main__')
except SystemExit as exit:
    code = exit.code
else:
    code = 0
loaded = sorted(name for name in sys.modules if blocked(name))
print('BLOCKED-IMPORTS', loaded)
sys.exit(code)
"""


def run_guarded(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            '-c',
            GUARDED,
            ONNX_DEMO,
            *args,
            '--threads',
            str(torch.get_num_threads()),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )


def detections_of(instances) -> dict:
    return dict(
        boxes=instances.bboxes.numpy(),
        scores=instances.scores.numpy(),
        labels=instances.labels.numpy(),
    )


@pytest.fixture(scope='module')
def det_checkpoint(tmp_path_factory):
    """A random S0 detector checkpoint with calibrated BN (see test_onnx_export.py)."""
    return make_checkpoint(DET_CFG, str(tmp_path_factory.mktemp('e2e') / 'det.pth'), 128)


def test_detector_graph_equals_predict_and_the_check_catches_differences(det_checkpoint, tmp_path):
    model = init_model(DET_CFG, det_checkpoint)
    from mmdet.structures import DetDataSample

    batches = []
    for seed, (h, w) in enumerate([(128, 128), (96, 160)]):
        metas = [
            dict(img_shape=(h, w), ori_shape=(300, 400), scale_factor=(w / 400, h / 300)),
            dict(img_shape=(h, w), ori_shape=(h, w), scale_factor=(1.0, 1.0)),
        ]
        batches.append((image_like(2, h, w, seed), [DetDataSample(metainfo=m) for m in metas]))
    # A random head is unsure (scores spread around 1/81): keep at least 10 boxes per image
    # with a threshold in the widest gap between nearby scores, so that no score sits at it,
    # and let nms_pre cut nothing
    with torch.no_grad():
        per_image = [
            torch.cat([s[i].permute(1, 2, 0).reshape(-1, 81) for s in model(x, mode='tensor')[0]])
            .softmax(-1)[:, :80]
            .flatten()
            for x, _ in batches
            for i in range(x.shape[0])
        ]
    upper = min(scores.sort(descending=True).values[9] for scores in per_image)
    every = torch.cat(per_image)
    ranked = every[every < upper].sort(descending=True).values[:300]
    gap, r = (ranked[:-1] - ranked[1:]).max(0)
    assert gap > 1e-5
    model.bbox_head.test_cfg.update(
        score_thr=((ranked[r] + ranked[r + 1]) / 2).item(), nms_pre=100000, max_per_img=150
    )

    # the PyTorch twin of the graph is predict itself, bit for bit (NMS included)
    graph = end2end_graph(model)
    for inputs, samples in batches:
        factors = torch.tensor([s.metainfo['scale_factor'] for s in samples])
        with torch.no_grad():
            boxes, kept, labels, counts = graph(inputs, factors)
            expected = model.predict(inputs, copy.deepcopy(samples), rescale=True)
        for i, sample in enumerate(expected):
            want, n = sample.pred_instances, int(counts[i])
            assert n == len(want) > 0
            assert torch.equal(boxes[i, :n], want.bboxes)
            assert torch.equal(kept[i, :n], want.scores)
            assert torch.equal(labels[i, :n], want.labels)
            # padding after the detections
            assert (labels[i, n:] == -1).all()
            assert not boxes[i, n:].any() and not kept[i, n:].any()

    path = str(tmp_path / 'det_e2e.onnx')
    assert export_end2end(model, path, (1, 3, 128, 128)) == [
        'boxes',
        'scores',
        'labels',
        'num_dets',
    ]
    report = check_end2end(model, path, batches)
    assert report['images'] == 4 and report['detections'] >= 40 and report['at_cut'] == 0
    assert report['max_box_diff'] <= 1e-3 and report['max_score_diff'] <= 1e-5
    meta = read_metadata(path)
    assert meta['layout'] == 'end2end' and meta['task'] == 'detection'
    assert list(meta['outputs']) == ['boxes', 'scores', 'labels', 'num_dets']
    assert meta['max_per_img'] == 150 and len(meta['classes']) == 80

    # the contract is real: a model that suppresses differently no longer matches the file
    model.bbox_head.test_cfg.nms.iou_threshold = 0.1
    with pytest.raises(OnnxParityError, match='detections'):
        check_end2end(model, path, batches)


def load_module(path: str, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def quickstart_deploy_files(quickstart) -> tuple:
    assert quickstart['returncode'] == 0, quickstart['err'][-3000:]
    lines = {
        line.split(':')[0].strip(): line.split(':', 1)[1].strip()
        for line in quickstart['out'].splitlines()
        if ' : ' in line
    }
    return lines['deploy config'], lines['deploy checkpoint']


def test_quickstart_detector_end_to_end_and_numpy_demo_match_image_demo(
    quickstart, tmp_path, capsys
):
    config, checkpoint = quickstart_deploy_files(quickstart)
    out = str(tmp_path / 'det.onnx')
    tool = load_module(EXPORT, 'export_onnx_det')
    assert tool.main([config, checkpoint, '--end2end', '--out', out]) == 0
    printed = capsys.readouterr().out
    check = next(line for line in printed.splitlines() if 'end-to-end check' in line)
    # checked on the test images at the test size and a second size, every detection equal
    test_size = next(
        t['scale']
        for t in Config.fromfile(config).test_dataloader.dataset.pipeline
        if t['type'] == 'Resize'
    )
    sizes = re.search(r'input sizes (\d+)x(\d+) and (\d+)x(\d+)', check).groups()
    assert tuple(map(int, sizes[:2])) == tuple(test_size)[::-1] and sizes[2:] != sizes[:2]
    assert 'equal to model.predict' in check
    assert int(check.split(': ')[1].split()[0]) > 0
    assert os.listdir(tmp_path) == ['det.onnx']

    image_path = sorted(os.listdir(osp.join(quickstart['data_root'], 'val2017')))[0]
    image_path = osp.join(quickstart['data_root'], 'val2017', image_path)
    demo = run_guarded(
        image_path,
        out,
        '--out-file',
        str(tmp_path / 'onnx.png'),
        '--out-json',
        str(tmp_path / 'onnx.json'),
    )
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert 'BLOCKED-IMPORTS []' in demo.stdout
    with open(tmp_path / 'onnx.json') as f:
        got = json.load(f)['detections']

    # demo/image_demo.py: same summary line, and its predict's detections are the demo's
    image_demo = load_module(osp.join(REPO, 'demo', 'image_demo.py'), 'image_demo_e2e')
    capsys.readouterr()
    assert (
        image_demo.main([image_path, config, checkpoint, '--out-file', str(tmp_path / 'torch.png')])
        == 0
    )
    summary = demo.stdout.splitlines()[0].split('; saved')[0]
    assert capsys.readouterr().out.splitlines()[-1].split('; saved')[0] == summary
    model = init_model(config, checkpoint)
    want = detections_of(predict(model, read_image(image_path)).pred_instances)
    have = dict(
        boxes=np.array([d['box'] for d in got]).reshape(-1, 4),
        scores=np.array([d['score'] for d in got]),
        labels=np.array([d['label'] for d in got]),
    )
    assert len(got) == len(want['scores']) > 0
    assert len(match_detections(want, have, box_tol=1e-3, score_tol=1e-5)) == len(got)
    keep = want['scores'] >= 0.3
    names = sorted({model.dataset_meta['classes'][i] for i in want['labels'][keep]})
    assert summary == f'{int(keep.sum())} detections with score >= 0.3: {", ".join(names)}'
    assert osp.getsize(tmp_path / 'onnx.png') > 0 and osp.getsize(tmp_path / 'torch.png') > 0


def test_end2end_export_needs_the_check_images(det_checkpoint, tmp_path, capsys):
    tool = load_module(EXPORT, 'export_onnx_e2e')
    out = tmp_path / 'out' / 'det.onnx'
    # the config's data_root (data/coco/) is not there: nothing to check on, nothing written
    assert tool.main([DET_CFG, det_checkpoint, '--end2end', '--out', str(out)]) == 1
    err = capsys.readouterr().err
    assert 'test split' in err and 'no ONNX file written' in err
    assert not out.exists() and os.listdir(out.parent) == []


def test_segmentor_label_map_and_numpy_demo(learned_segmentor, tmp_path):
    seg = learned_segmentor
    tool = load_module(EXPORT, 'export_onnx_seg')
    paths = {}
    for layout, extra in (('end2end', ['--end2end']), ('raw', [])):
        paths[layout] = str(tmp_path / f'seg_{layout}.onnx')
        assert (
            tool.main(
                [
                    seg['deploy_config'],
                    seg['deploy_checkpoint'],
                    '--out',
                    paths[layout],
                    '--input-size',
                    '128',
                    '128',
                    *extra,
                ]
            )
            == 0
        )
    assert read_metadata(paths['end2end'])['outputs'] == {
        'labels': 'int64 (N, H, W): class index per pixel at the input size'
    }
    model = init_model(seg['deploy_config'], seg['deploy_checkpoint'])
    image_path = osp.join(
        seg['voc'], 'JPEGImages', sorted(os.listdir(osp.join(seg['voc'], 'JPEGImages')))[0]
    )
    want = predict(model, read_image(image_path)).pred_sem_seg.data[0].numpy()
    demo_out = load_module(ONNX_DEMO, 'onnx_demo_seg')
    for layout, path in paths.items():
        json_path = str(tmp_path / f'{layout}.json')
        assert (
            demo_out.main(
                [
                    image_path,
                    path,
                    '--out-file',
                    str(tmp_path / f'{layout}.png'),
                    '--out-json',
                    json_path,
                ]
            )
            == 0
        )
        import onnxruntime as ort

        session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
        labels = demo_out.predict(session, demo_out.read_metadata(session), read_image(image_path))[
            'labels'
        ]
        assert labels.shape == want.shape
        # logits resized bilinearly, then argmax: mmseg's label map; nearest-resized labels
        # (end2end) differ along class borders only
        agreement = (labels == want).mean()
        assert agreement >= (0.999 if layout == 'raw' else 0.99), (layout, agreement)
    # the drawing is image_demo's (same overlay and legend code on the same labels)
    from mobileone_dense.apis.visualization import draw_segmentation

    image = read_image(image_path)
    ours, _ = demo_out.draw_segmentation(
        image, want, model.dataset_meta['classes'], model.dataset_meta['palette']
    )
    theirs, _ = draw_segmentation(
        image, want, model.dataset_meta['classes'], model.dataset_meta['palette']
    )
    assert np.array_equal(ours, theirs)


def test_classifier_topk_and_numpy_demo(learned_classifier, tmp_path):
    cls = learned_classifier
    tool = load_module(EXPORT, 'export_onnx_cls')
    path = str(tmp_path / 'cls.onnx')
    assert (
        tool.main(
            [
                cls['deploy_config'],
                cls['deploy_checkpoint'],
                '--out',
                path,
                '--input-size',
                '48',
                '48',
                '--end2end',
                '--topk',
                '3',
            ]
        )
        == 0
    )
    meta = read_metadata(path)
    assert list(meta['outputs']) == ['scores', 'labels'] and meta['layout'] == 'end2end'
    model = init_model(cls['deploy_config'], cls['deploy_checkpoint'])
    folder = osp.join(cls['data'], 'val')
    image_path = osp.join(folder, sorted(os.listdir(folder))[0])
    from mobileone_dense.apis.visualization import draw_classification

    want = predict(model, read_image(image_path)).pred_score.numpy()
    demo = load_module(ONNX_DEMO, 'onnx_demo_cls')
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    got = demo.predict(session, demo.read_metadata(session), read_image(image_path))['scores']
    top = np.argsort(-want)[:3]
    assert np.array_equal(np.argsort(-got)[:3], top)
    # Pillow's resampling redone in numpy: the scores agree closely (see onnx_demo.py)
    assert np.abs(got[top] - want[top]).max() < 2e-3
    classes = model.dataset_meta['classes']
    ours, _ = demo.draw_classification(read_image(image_path), want, classes)
    theirs, _ = draw_classification(read_image(image_path), want, classes)
    assert np.array_equal(ours, theirs)
