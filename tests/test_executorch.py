"""ExecuTorch export (XNNPACK ``.pte``): the programs run by ``executorch.runtime`` against PyTorch.

The S0 classifier, detector and segmentor of our configs on tiny generated data at small input
sizes, random weights with calibrated BN (``test_onnx_export.make_checkpoint``, training-time
checkpoints: the tool re-parameterizes them). Float32 programs must give PyTorch's raw outputs
within 1e-3 (relative); the detector's outputs, post-processed by mmdet's code and by the numpy
decoding + NMS, must give ``model.predict``'s detections (the tie rule of docs/deployment.md);
INT8 programs must stay close to float.
"""

import builtins
import importlib.util
import json
import os
import os.path as osp

import numpy as np
import pytest
import torch
from helpers import make_image_folder, tiny_classifier_config
from mmengine.config import Config
from short_configs import (
    short_classification_config,
    short_detection_config,
    short_segmentation_config,
)
from test_onnx_export import image_like, make_checkpoint

from mobileone_dense.apis.inference import init_model
from mobileone_dense.deploy import executorch_export
from mobileone_dense.deploy.executorch_check import (
    check_detector,
    fixed_size_batches,
    fixed_size_pipeline,
    int8_metric,
    quantizable_modules,
)
from mobileone_dense.deploy.executorch_export import (
    PteRunner,
    check_pte,
    export_program,
    quantize_graph,
    read_pte_metadata,
    traced_graph,
)
from mobileone_dense.deploy.executorch_fallback import module_groups
from mobileone_dense.deploy.numpy_postprocess import ssd_detections
from mobileone_dense.deploy.onnx_end2end_check import check_detections, padded_detections
from mobileone_dense.deploy.onnx_metadata import detection_decoding
from mobileone_dense.errors import OnnxParityError

pytest.importorskip('executorch')  # CI installs it (requirements-mobile.txt); a bare env skips

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOOL = osp.join(REPO, 'tools', 'deploy', 'export_executorch.py')
TOLERANCE = 1e-3  # the tool's default: float32 rounding across runtimes, with margin
# INT8 logits vs float32, relative to the largest logit, on calibration-like images
INT8_BUDGET = 0.1


def mu0_data(folder: str) -> str:
    return make_image_folder(osp.join(folder, 'images'), per_class=4)


def load_tool():
    spec = importlib.util.spec_from_file_location('export_executorch_tool', TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    """``task -> (config path, training checkpoint)`` on generated data, made once."""
    root = tmp_path_factory.mktemp('executorch')
    made = {}

    def get(task):
        if task not in made:
            folder = str(root / task)
            os.makedirs(folder)
            build, size = {
                'det': (
                    lambda: short_detection_config(folder, num_train=2, num_val=2, size=64),
                    64,
                ),
                'seg': (lambda: short_segmentation_config(folder, num_val=2), 64),
                'cls': (lambda: short_classification_config(folder), 32),
                'mu0': (lambda: Config(tiny_classifier_config(folder, mu0_data(folder))), 32),
            }[task]
            cfg = build()
            cfg.work_dir = folder
            path = osp.join(folder, 'cfg.py')
            cfg.dump(path)
            made[task] = (path, make_checkpoint(path, osp.join(folder, 'ckpt.pth'), size))
        return made[task]

    return get


def test_classifier_tool_from_a_training_checkpoint(runs, tmp_path, capsys):
    config, checkpoint = runs('cls')
    out = str(tmp_path / 'cls.pte')
    args = [config, checkpoint, '--out', out, '--check-images', '2', '--threads', '1']
    assert load_tool().main(args) == 0
    assert 'max relative difference' in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == ['cls.json', 'cls.pte']  # no temp file left
    meta = read_pte_metadata(out)
    assert meta['task'] == 'classification' and meta['input_shape'] == [1, 3, 32, 32]
    assert meta['check']['max_relative_difference'] <= TOLERANCE and meta['quantization'] is None
    assert meta['preprocess']['bgr_to_rgb'] and meta['classes'][0] == 'n00000000'
    # independently of the tool: the re-parameterized model's logits within TOLERANCE
    model = init_model(config, checkpoint)
    inputs = [image_like(1, 32, 32, seed=3), image_like(1, 32, 32, seed=4)]
    assert check_pte(model, PteRunner(out), inputs) <= TOLERANCE


def test_int8_tool_stays_near_float(runs, tmp_path, capsys):
    config, checkpoint = runs('mu0')
    out = str(tmp_path / 'mu0_int8.pte')
    args = [config, checkpoint, '--out', out, '--check-images', '2', '--int8']
    assert load_tool().main(args + ['--calib-images', '4', '--exclude', 'backbone.stem']) == 0
    printed = capsys.readouterr().out
    assert 'INT8 (calibrated on 4 training images' in printed
    assert 'float fallback on 4 val images, budget 1.0 top-1 agreement with float' in printed
    quantization = read_pte_metadata(out)['quantization']
    # the float fallback chose on half of the 8 val images and the report is on the other half;
    # --exclude stays float whatever the search keeps
    fallback = quantization['fallback']
    assert fallback['selection_images'] == 4 and quantization['eval_images'] == 4
    assert fallback['float_metric'] == 100.0 and fallback['evaluations'] >= 1
    assert quantization['float_modules'][0] == 'backbone.stem' and quantization['metric'] == 'top-1'
    # on the images it is evaluated on: INT8 logits near the deploy model's
    model = init_model(config, checkpoint)
    runner = PteRunner(out)
    for inputs, _ in fixed_size_batches(model, model.cfg, 'val', 4, (32, 32)):
        with torch.no_grad():
            expected = model(inputs, mode='tensor')
        got = runner(inputs)[0]
        assert ((got - expected).abs().max() / expected.abs().max()).item() < INT8_BUDGET


def test_detector_outputs_through_ssd_postprocess_and_numpy_equal_predict(runs, tmp_path, capsys):
    config, checkpoint = runs('det')
    out = str(tmp_path / 'det.pte')
    assert load_tool().main([config, checkpoint, '--out', out, '--check-images', '2']) == 0
    printed = capsys.readouterr().out
    assert 'through ssd_postprocess (mmdet): ' in printed and 'numpy decoding + NMS' in printed
    meta = read_pte_metadata(out)
    assert meta['input_shape'] == [1, 3, 64, 64]
    assert meta['preprocess']['transforms'][0]['scale'] == [64, 64]
    names = [f'cls_score_{i}' for i in range(6)] + [f'bbox_pred_{i}' for i in range(6)]
    assert list(meta['outputs']) == names and len(meta['detection']['base_anchors']) == 6
    # again here, from the file and its JSON alone
    model = init_model(config, checkpoint)
    batches = fixed_size_batches(model, model.cfg, 'val', 2, (64, 64))
    reports = check_detector(model, PteRunner(out), batches, meta['detection'])
    assert reports['mmdet']['detections'] == reports['numpy']['detections'] > 0


def test_numpy_decoding_and_nms_equal_predict_and_can_fail():
    """On the raw outputs of the PyTorch model itself: numpy post-processing == predict."""
    from mobileone_dense.analysis.baselines import build_ours
    from mobileone_dense.models.reparameterize import reparameterize

    torch.manual_seed(0)
    model = reparameterize(build_ours('det', 's0').model).eval()
    model.bbox_head.test_cfg.update(score_thr=0.0, max_per_img=300)
    inputs = image_like(2, 96, 128, seed=5)
    from mmdet.structures import DetDataSample

    metas = [
        dict(img_shape=(96, 128), ori_shape=(300, 400), scale_factor=(128 / 400, 96 / 300))
    ] * 2
    samples = [DetDataSample(metainfo=m) for m in metas]
    with torch.no_grad():
        outputs = [o.numpy() for o in traced_graph(model)(inputs)]
    info = json.loads(json.dumps(detection_decoding(model)))  # as an app reads it
    found = ssd_detections(outputs, info, (96, 128), metas[0]['scale_factor'])
    report = dict(images=0, detections=0, at_cut=0, tied=0, max_box_diff=0.0, max_score_diff=0.0)
    check_detections(model, inputs, samples, padded_detections(found), report, 1e-3, 1e-5)
    assert report['detections'] == 600 and report['max_box_diff'] < 1e-3
    # a wrong NMS threshold is caught
    loose = dict(info, iou_threshold=0.7)
    found = ssd_detections(outputs, loose, (96, 128), metas[0]['scale_factor'])
    with pytest.raises(OnnxParityError, match='on one side'):
        check_detections(model, inputs, samples, padded_detections(found), dict(report), 1e-2, 1e-4)


def test_segmentor_program_gives_logits_at_the_input_size(runs):
    config, checkpoint = runs('seg')
    model = init_model(config, checkpoint)
    batches = fixed_size_batches(model, model.cfg, 'test', 1, (64, 64))
    program = export_program(model, (1, 3, 64, 64))
    runner = PteRunner(program)
    inputs = [batches[0][0], image_like(1, 64, 64, seed=1)]
    assert runner(inputs[0])[0].shape == (1, 21, 64, 64)
    assert check_pte(model, runner, inputs) <= TOLERANCE


def test_float_modules_stay_float_and_the_metric_callback(runs):
    config, checkpoint = runs('mu0')
    model = init_model(config, checkpoint)
    calibration = [x for x, _ in fixed_size_batches(model, model.cfg, 'train', 2, (32, 32))]
    example = calibration[0]

    def quantized_modules(float_modules):
        """Module paths of the convs / linears whose weight the INT8 graph dequantizes."""
        module = quantize_graph(traced_graph(model), example, calibration, float_modules)
        paths = set()
        for node in module.graph.nodes:
            if node.op != 'call_function' or not str(node.target).startswith(
                ('aten.conv2d', 'aten.linear')
            ):
                continue
            weight = node.args[1]
            if 'dequantize' in str(getattr(weight, 'target', '')):
                paths |= {path for path, _ in node.meta.get('nn_module_stack', {}).values()}
        return paths

    names = quantizable_modules(model)
    assert names[0].startswith('backbone.stem') and names[-1] == 'head.fc'
    kept = quantized_modules(['backbone.stem', 'head'])
    assert not any(p.startswith(('model.backbone.stem', 'model.head')) for p in kept)
    assert any(p.startswith('model.backbone.stages') for p in kept)
    with pytest.raises(ValueError, match='no module of the model'):
        quantize_graph(traced_graph(model), example, calibration, ['backbone.nothing'])
    # layer names in, metric out (the interface of an automatic float-fallback search)
    # with every layer left float, it is PyTorch's top-1 on the same images
    batches = fixed_size_batches(model, model.cfg, 'val', 0, (32, 32))
    with torch.no_grad():
        hits = [
            int(model(x, mode='tensor').argmax(1).item() == int(samples[0].gt_label))
            for x, samples in batches
        ]
    evaluate = int8_metric(model, model.cfg, calibration, batches, 'val', num_threads=1)
    assert evaluate(['backbone', 'head']) == pytest.approx(100.0 * sum(hits) / len(hits))


def test_fixed_size_pipeline():
    keep_ratio = [
        dict(type='LoadImageFromFile'),
        dict(type='Resize', scale=(2048, 512), keep_ratio=True),
    ]
    assert fixed_size_pipeline(keep_ratio, (64, 96))[1] == dict(
        type='Resize', scale=(96, 64), keep_ratio=False
    )
    crop = [
        dict(type='ResizeEdge', scale=256, edge='short'),
        dict(type='CenterCrop', crop_size=224),
    ]
    assert fixed_size_pipeline(crop, (112, 112)) == [
        dict(type='ResizeEdge', scale=128, edge='short'),
        dict(type='CenterCrop', crop_size=(112, 112)),
    ]
    with pytest.raises(ValueError, match='no Resize or CenterCrop'):
        fixed_size_pipeline([dict(type='LoadImageFromFile')], (64, 64))


def test_bad_input_is_refused_and_nothing_written(runs, tmp_path, capsys, monkeypatch):
    config, checkpoint = runs('mu0')
    out = tmp_path / 'x.pte'
    tool = load_tool()
    assert tool.main([config, checkpoint, '--out', str(out), '--exclude', 'backbone.nothing']) == 1
    assert "'backbone.nothing' is no module of the model" in capsys.readouterr().err
    # a check that fails (tolerance 0): nothing is written
    assert tool.main([config, checkpoint, '--out', str(out), '--tolerance', '0']) == 1
    assert 'differ from PyTorch' in capsys.readouterr().err and not os.listdir(tmp_path)
    # without executorch: the command that installs it
    real_import = builtins.__import__

    def no_executorch(name, *args, **kwargs):
        if name.startswith('executorch'):
            raise ImportError(f'No module named {name!r}')
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, '__import__', no_executorch)
    with pytest.raises(ImportError, match=r'pip install \.\[mobile\]'):
        executorch_export.require_executorch()
    assert tool.main([config, checkpoint, '--out', str(out)]) == 1
    assert 'pip install .[mobile]' in capsys.readouterr().err and not os.listdir(tmp_path)


def test_numpy_postprocess_imports_numpy_only():
    path = osp.join(REPO, 'mobileone_dense', 'deploy', 'numpy_postprocess.py')
    with open(path) as f:
        imports = [line.split()[1] for line in f if line.startswith(('import ', 'from '))]
    assert set(imports) == {'typing', 'numpy'}
    assert np  # numpy is what the module needs


def test_fallback_candidates_are_the_modules_coarse_first(runs):
    model = init_model(*runs('cls'))
    roots, children = module_groups(model)
    assert roots == ['backbone', 'head']
    assert children['backbone'] == ['backbone.stem', 'backbone.stages']
    assert children['backbone.stages'] == [f'backbone.stages.{i}' for i in range(4)]
    assert children['backbone.stages.0'][:2] == ['backbone.stages.0.0', 'backbone.stages.0.1']
    # every quantizable layer is under a root, and a group of one module is not split
    assert all(name.split('.')[0] in roots for name in quantizable_modules(model))
    assert all(len(subs) > 1 for subs in children.values())


class _TwoParts(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = torch.nn.Conv2d(3, 4, 3)
        self.head = torch.nn.Conv2d(4, 2, 1)


def test_a_program_xnnpack_refuses_counts_as_collapsed_in_the_fallback(monkeypatch):
    """XNNPACK refuses some INT8 programs at load time (``xnn_status_unsupported_parameter``):
    the search must go on (keeping float what makes it refuse), not crash."""
    from mobileone_dense.deploy import executorch_fallback

    def export(model, shape, int8, calibration, float_modules):
        return b'ok' if 'backbone' in float_modules else b'refused'

    class Runner:
        def __init__(self, program, threads=None):
            if program == b'refused':
                raise RuntimeError('Failed to load method forward, error: 0x:1')

    monkeypatch.setattr(executorch_fallback, 'export_program', export)
    monkeypatch.setattr(executorch_fallback, 'PteRunner', Runner)
    monkeypatch.setattr(executorch_fallback, 'exportable_task', lambda model: 'classification')
    monkeypatch.setattr(
        executorch_fallback, 'selection_metric', lambda *args: (lambda runner: 100.0, 100.0)
    )
    lines = []
    batch = (torch.zeros(1, 3, 8, 8), [])
    search = executorch_fallback.search_float_modules(
        _TwoParts(), None, b'float', [], [batch], None, log=lines.append
    )
    assert search.float_layers == ['backbone'] and search.within_budget
    assert search.quantized_metric == 0.0
    assert any('XNNPACK refused the program' in line for line in lines)


def test_the_int8_file_is_gated_on_the_budget_metric_and_reports_every_metric(
    runs, tmp_path, capsys, monkeypatch
):
    """Detection: the written INT8 program must hold mAP@0.5 (the metric the fallback's budget
    counts in); the report and the JSON carry mAP too. The evaluator's figures are planted:
    mAP falls 20 points, mAP@0.5 0.5: written."""
    config, checkpoint = runs('det')
    tool = load_tool()
    figures = iter(
        [
            {'coco/bbox_mAP': 0.5, 'coco/bbox_mAP_50': 0.9},
            {'coco/bbox_mAP': 0.3, 'coco/bbox_mAP_50': 0.895},
        ]
    )
    monkeypatch.setattr(tool, 'evaluate_program', lambda *a, **k: next(figures))
    out = str(tmp_path / 'det_int8.pte')
    args = ['--int8', '--no-fallback', '--calib-images', '1', '--check-images', '1']
    assert tool.main([config, checkpoint, '--out', out, *args, '--exclude', 'neck']) == 0
    assert 'mAP 50.00 -> 30.00, mAP@0.5 90.00 -> 89.50' in capsys.readouterr().out
    quantization = read_pte_metadata(out)['quantization']
    assert quantization['metric'] == 'mAP@0.5' and quantization['int8'] == 89.5
    assert quantization['metrics']['int8']['mAP'] == 30.0
    # 5 points of mAP@0.5 lost: refused (the tool writes nothing then)
    scores = dict(float32={'mAP': 50.0, 'mAP@0.5': 90.0}, int8={'mAP': 50.0, 'mAP@0.5': 85.0})
    with pytest.raises(OnnxParityError, match='INT8 loses 5.00 mAP@0.5 points > --max-drop 1'):
        tool.gated_metric(scores, 'detection', 1.0)
    assert tool.gated_metric(scores, 'detection', 5.0) == 'mAP@0.5'
