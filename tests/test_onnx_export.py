"""ONNX export of deploy models (classification, SSDLite detection, DeepLabV3 segmentation).

Every check compares onnxruntime (CPU) with the PyTorch model, including mmdet's ``predict``
(through :func:`ssd_postprocess`) and mmseg's ``predict``. Checkpoints are random weights with
calibrated BN statistics, small inputs keep it fast.
"""

import importlib.util
import os
import os.path as osp
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.config import Config
from torch.nn.modules.batchnorm import _BatchNorm

from mobileone_dense.apis import build_model_from_config
from mobileone_dense.apis.inference import init_model
from mobileone_dense.deploy import check_onnx_parity, export_onnx, onnx_export, ssd_postprocess
from mobileone_dense.engine.deploy_checkpoints import atomic_dump_config, deploy_checkpoint
from mobileone_dense.engine.deploy_files import deploy_config
from mobileone_dense.models.blocks import MobileOneBlock

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOOL = osp.join(REPO, 'tools', 'deploy', 'export_onnx.py')
CLS_CFG = osp.join(REPO, 'configs', 'mobileone_s0_imagenet.py')
DET_CFG = osp.join(REPO, 'configs', 'ssdlite_mobileone_s0_coco.py')
SEG_CFG = osp.join(REPO, 'configs', 'deeplabv3_mobileone_s0_voc.py')
TOLERANCE = 1e-4


def image_like(n: int, h: int, w: int, seed: int) -> torch.Tensor:
    """Normalized-image-like batch: smooth random structure plus noise.

    (Pure i.i.d. noise would not do: deep features average it out, every image then gives the
    same outputs and a parity check would compare near-constants.)
    """
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(n, 3, max(1, h // 8), max(1, w // 8), generator=g)
    return F.interpolate(coarse, size=(h, w), mode='bilinear') + 0.3 * torch.randn(
        n, 3, h, w, generator=g
    )


def make_checkpoint(config: str, path: str, size: int) -> str:
    """A training checkpoint (train-time form) with non-trivial BN: random affine, calibrated stats.

    Blocks with an identity branch get their other branches' BN scaled by 0.3, as a trained
    block whose branches refine what the identity carries: random deep nets are otherwise
    either collapsed (every input gives the same output) or chaotic (float32 rounding grows to
    ~1e-3 relative in PyTorch alone, measured); this keeps outputs input-dependent and float32
    PyTorch within ~1e-5 of float64.
    """
    torch.manual_seed(0)
    model = build_model_from_config(config)
    gains = {}
    for block in model.modules():
        if isinstance(block, MobileOneBlock) and block.identity_branch is not None:
            gains.update(
                {
                    id(m): 0.3
                    for m in block.modules()
                    if isinstance(m, _BatchNorm) and m is not block.identity_branch
                }
            )
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, _BatchNorm)):
            bn.weight.uniform_(0.75, 1.25).mul_(gains.get(id(bn), 1.0))
            bn.bias.normal_(0, 0.1).mul_(gains.get(id(bn), 1.0))
            bn.momentum = None  # running stats = averages over the calibration passes
        model.train()
        for seed in range(2):
            model(image_like(4, size, size, seed))
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, path)
    return path


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp('onnx_ckpt')
    made = {}

    def get(config: str, size: int) -> str:
        if config not in made:
            made[config] = make_checkpoint(
                config, str(root / (osp.basename(config) + '.pth')), size
            )
        return made[config]

    return get


def load_tool():
    spec = importlib.util.spec_from_file_location('export_onnx_tool', TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_onnx(path: str, inputs: torch.Tensor) -> list:
    session = onnx_export.onnx_session(path, num_threads=torch.get_num_threads())
    return session.run(None, {'input': inputs.numpy()})


def relative(a, b) -> float:
    a, b = torch.as_tensor(np.asarray(a)), torch.as_tensor(b)
    return ((a - b).abs().max() / b.abs().max()).item()


def test_classifier_tool_exports_deploy_model_with_dynamic_axes(checkpoints, tmp_path):
    checkpoint = checkpoints(CLS_CFG, 64)
    out = tmp_path / 'export' / 'cls.onnx'
    result = subprocess.run(
        [sys.executable, TOOL, CLS_CFG, checkpoint, '--out', str(out), '--input-size', '96', '96'],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads())),
    )
    assert result.returncode == 0, result.stderr
    # parity printed at the export size and at a second size with batch 2, within tolerance
    lines = [line for line in result.stdout.splitlines() if 'max relative difference' in line]
    assert len(lines) == 2 and '(1, 3, 96, 96)' in lines[0] and '(2, 3, 72, 120)' in lines[1]
    assert all(float(line.split()[-1]) <= TOLERANCE for line in lines)
    # the preprocessing the ONNX input expects is documented from the config
    assert 'BGR -> RGB' in result.stdout and 'mean=[123.675, 116.28, 103.53]' in result.stdout
    assert os.listdir(out.parent) == ['cls.onnx']  # no temp file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(out).st_mode & 0o777 == 0o666 & ~umask  # not the temp file's 0600

    model = init_model(CLS_CFG, checkpoint)
    graph = onnx.load(str(out)).graph
    dims = [d.dim_param or d.dim_value for d in graph.output[0].type.tensor_type.shape.dim]
    assert [o.name for o in graph.output] == ['logits'] and dims == ['batch', 1000]
    # the deploy network was exported: one ONNX Conv per conv of the deploy model (the train-time
    # one has several branches per block)
    convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    assert sum(node.op_type == 'Conv' for node in graph.node) == convs
    assert convs < sum(isinstance(m, nn.Conv2d) for m in build_model_from_config(CLS_CFG).modules())
    # a third size and batch, checked here independently of the tool
    inputs = image_like(3, 80, 112, seed=7)
    logits = run_onnx(str(out), inputs)[0]
    with torch.no_grad():
        expected = model(inputs, mode='tensor')
    assert logits.shape == (3, 1000)
    assert relative(logits, expected) <= TOLERANCE
    assert (logits.argmax(1) == expected.argmax(1).numpy()).all()


def test_detector_onnx_outputs_and_postprocess_match_predict(checkpoints, tmp_path):
    model = init_model(DET_CFG, checkpoints(DET_CFG, 128))
    path = str(tmp_path / 'det.onnx')
    names = export_onnx(model, path, (1, 3, 128, 128))
    assert names == [f'cls_score_{i}' for i in range(6)] + [f'bbox_pred_{i}' for i in range(6)]
    sizes = [image_like(1, 128, 128, 0), image_like(2, 96, 160, 1)]
    assert check_onnx_parity(model, path, sizes, num_threads=torch.get_num_threads()) <= TOLERANCE

    # detections: ONNX outputs + mmdet's post-processing == model.predict
    inputs = image_like(2, 96, 160, 2)
    metas = [
        dict(img_shape=(96, 160), ori_shape=(300, 400), scale_factor=(160 / 400, 96 / 300)),
        dict(img_shape=(96, 160), ori_shape=(96, 160), scale_factor=(1.0, 1.0)),
    ]
    with torch.no_grad():
        cls_scores, _ = model(inputs, mode='tensor')
    # A random head is unsure (scores spread around 1/81). Keep at least 15 boxes per image
    # with a threshold in the widest gap between nearby scores, so that no score is near it, and
    # let nms_pre and max_per_img cut nothing: then any difference in the detections is real.
    scores = torch.stack(
        [torch.cat([s[i].permute(1, 2, 0).reshape(-1, 81) for s in cls_scores]) for i in range(2)]
    ).softmax(-1)[..., :80]
    upper = scores.flatten(1).sort(1, descending=True).values[:, 14].min()
    ranked = scores[scores < upper].sort(descending=True).values[:300]
    gap, r = (ranked[:-1] - ranked[1:]).max(0)
    assert gap > 1e-5
    test_cfg = dict(
        score_thr=((ranked[r] + ranked[r + 1]) / 2).item(), nms_pre=100000, max_per_img=100000
    )
    model.bbox_head.test_cfg.update(test_cfg)
    from mmdet.structures import DetDataSample

    with torch.no_grad():
        expected = model.predict(inputs, [DetDataSample(metainfo=m) for m in metas], rescale=True)
    outputs = run_onnx(path, inputs)
    cfg = Config.fromfile(DET_CFG)
    cfg.model.test_cfg.update(test_cfg)
    for source in (model, cfg):  # the detector itself, or only its config
        got = ssd_postprocess(outputs[:6], outputs[6:], source, metas)
        for want, have, meta in zip(expected, got, metas):
            want, have = want.pred_instances, have.pred_instances
            assert 15 <= len(want) == len(have)
            # order by (label, box): near-equal scores may swap places between the runtimes
            a, b = (
                np.lexsort(np.c_[i.bboxes.numpy().round(1), i.labels.numpy()].T[::-1])
                for i in (want, have)
            )
            assert (want.labels[a] == have.labels[b]).all()
            assert torch.allclose(
                want.bboxes[a], have.bboxes[b], atol=1e-3 * max(meta['ori_shape'])
            )
            assert torch.allclose(want.scores[a], have.scores[b], atol=1e-5)
    with pytest.raises(ValueError, match='img_metas'):
        ssd_postprocess(outputs[:6], outputs[6:], model, metas[:1])


def test_segmentor_deploy_checkpoint_through_the_tool(checkpoints, tmp_path, capsys):
    # deploy checkpoint + deploy config, as ReparameterizeHook / tools/reparameterize.py write them
    deploy = init_model(SEG_CFG, checkpoints(SEG_CFG, 64))
    deploy_path = str(tmp_path / 'seg_deploy.pth')
    torch.save(deploy_checkpoint(deploy, {}), deploy_path)
    deploy_cfg_path = str(tmp_path / 'seg_deploy.py')
    atomic_dump_config(deploy_config(Config.fromfile(SEG_CFG), deploy_path), deploy_cfg_path)
    out = str(tmp_path / 'seg.onnx')
    tool = load_tool()
    assert tool.main([deploy_cfg_path, deploy_path, '--out', out, '--input-size', '64', '64']) == 0
    printed = capsys.readouterr().out
    assert '(1, 3, 64, 64)' in printed and '(2, 3, 48, 80)' in printed
    assert "output seg_logits: ['batch', 21, 'height', 'width']" in printed

    # against mmseg's own predict (same weights) at a size the tool did not check
    model = deploy
    inputs = image_like(2, 72, 56, seed=3)
    from mmseg.structures import SegDataSample

    meta = dict(img_shape=(72, 56), ori_shape=(72, 56), pad_shape=(72, 56))
    with torch.no_grad():
        expected = model.predict(inputs, [SegDataSample(metainfo=meta) for _ in range(2)])
    logits = run_onnx(out, inputs)[0]
    assert logits.shape == (2, 21, 72, 56)
    want = torch.stack([s.seg_logits.data for s in expected])
    assert relative(logits, want) <= TOLERANCE
    labels = torch.stack([s.pred_sem_seg.data[0] for s in expected]).numpy()
    assert (logits.argmax(1) == labels).mean() > 0.999


def test_failed_parity_check_exits_nonzero_and_writes_nothing(
    checkpoints, tmp_path, capsys, monkeypatch
):
    checkpoint = checkpoints(CLS_CFG, 64)
    real = onnx_export.reference_outputs
    # PyTorch's side now differs from what was exported, by 1 % of its scale
    monkeypatch.setattr(
        onnx_export,
        'reference_outputs',
        lambda model, x: [t + 0.01 * t.abs().max() for t in real(model, x)],
    )
    out_dir = tmp_path / 'out'
    tool = load_tool()
    code = tool.main(
        [
            CLS_CFG,
            checkpoint,
            '--out',
            str(out_dir / 'cls.onnx'),
            '--input-size',
            '64',
            '64',
            '--no-dynamic',
        ]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert 'differ from PyTorch' in err and 'no ONNX file written' in err
    assert os.listdir(out_dir) == []  # neither the model nor a temp file


def test_missing_checkpoint_and_missing_onnxruntime_are_explained(
    checkpoints, tmp_path, capsys, monkeypatch
):
    tool = load_tool()
    missing = str(tmp_path / 'missing.pth')
    assert tool.main([CLS_CFG, missing, '--out', str(tmp_path / 'x.onnx')]) == 1
    err = capsys.readouterr().err
    assert 'missing.pth' in err and 'does not exist' in err
    assert os.listdir(tmp_path) == []

    with pytest.raises(TypeError, match='cannot export a Conv2d'):
        export_onnx(nn.Conv2d(3, 3, 1).eval(), str(tmp_path / 'x.onnx'))

    monkeypatch.setitem(sys.modules, 'onnxruntime', None)  # import onnxruntime -> ImportError
    with pytest.raises(ImportError, match=r'pip install \.\[deploy\]'):
        check_onnx_parity(nn.Identity(), 'x.onnx', torch.zeros(1, 3, 8, 8))
    assert tool.main([CLS_CFG, checkpoints(CLS_CFG, 64)]) == 1
    assert 'onnxruntime' in capsys.readouterr().err
    assert os.listdir(tmp_path) == []
