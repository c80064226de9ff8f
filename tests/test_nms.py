"""Detection post-processing without mmcv's kernels equals mmcv's, box for box."""

import os.path as osp

import pytest
import torch
from mmcv.ops import batched_nms as mmcv_batched_nms
from mmcv.ops import nms as mmcv_nms
from mmcv_kernel_guard import mmcv_kernels_disabled
from mmengine.config import ConfigDict
from mmengine.structures import InstanceData

from mobileone_dense.models.dense_heads.nms import batched_nms, nms
from mobileone_dense.models.dense_heads.ssd_head import SSDHead

# what our SSDLite configs pass (mmdet's ssdlite_mobilenetv2 test_cfg)
CONFIG_NMS = dict(type='nms', iou_threshold=0.45)


def random_boxes(n, num_classes=5, seed=0, ties=False, size=320.0):
    """(n, 4) boxes in clusters (so that many overlap), scores, labels. ``ties``: scores from a
    handful of values and some exact duplicate boxes, as a saturated softmax gives."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(max(n // 8, 1), 2, generator=g) * size
    pick = torch.randint(0, len(centres), (n,), generator=g)
    xy = centres[pick] + torch.randn(n, 2, generator=g) * 6
    wh = 20 + torch.rand(n, 2, generator=g) * 60
    boxes = torch.cat([xy - wh / 2, xy + wh / 2], 1).clamp(0, size)
    scores = torch.rand(n, generator=g)
    labels = torch.randint(0, num_classes, (n,), generator=g)
    if ties:
        scores = torch.randint(0, 4, (n,), generator=g).float() / 4 + 0.25
        boxes[1::7] = boxes[0::7][: len(boxes[1::7])]  # exact duplicates, same score often
    return boxes, scores, labels


def assert_same(ours, theirs):
    (dets, keep), (ref_dets, ref_keep) = ours, theirs
    assert torch.equal(keep, ref_keep)
    assert torch.equal(dets, ref_dets)


@pytest.mark.parametrize('ties', [False, True])
@pytest.mark.parametrize('n', [1, 7, 300, 3000])
def test_batched_nms_equals_mmcv(n, ties):
    boxes, scores, labels = random_boxes(n, seed=n, ties=ties)
    assert_same(
        batched_nms(boxes, scores, labels, CONFIG_NMS),
        mmcv_batched_nms(boxes, scores, labels, CONFIG_NMS),
    )


@pytest.mark.parametrize('ties', [False, True])
def test_more_boxes_than_split_thr_equals_mmcv(ties):
    """mmcv suppresses class by class from split_thr (10000) boxes: the same kept set and order."""
    boxes, scores, labels = random_boxes(12000, num_classes=8, seed=3, ties=ties)
    ours = batched_nms(boxes, scores, labels, CONFIG_NMS)
    assert_same(ours, mmcv_batched_nms(boxes, scores, labels, CONFIG_NMS))
    # the same configuration with max_num also truncates like mmcv's
    cfg = dict(CONFIG_NMS, max_num=100)
    assert_same(
        batched_nms(boxes, scores, labels, cfg), mmcv_batched_nms(boxes, scores, labels, cfg)
    )
    assert len(batched_nms(boxes, scores, labels, cfg)[1]) == 100


@pytest.mark.parametrize(
    'cfg',
    [
        dict(CONFIG_NMS, class_agnostic=True),
        dict(CONFIG_NMS, score_threshold=0.5),
        dict(CONFIG_NMS, max_num=10),
        dict(type='nms', iou_threshold=0.7),  # float32 rounds 0.7 up: the threshold's rounding
        dict(CONFIG_NMS, split_thr=50),
    ],
)
def test_nms_options_equal_mmcv(cfg):
    boxes, scores, labels = random_boxes(400, seed=1, ties=True)
    assert_same(
        batched_nms(boxes, scores, labels, cfg), mmcv_batched_nms(boxes, scores, labels, cfg)
    )


def test_iou_exactly_at_the_threshold():
    """IoU 30 / 100 computes to float32(0.3), which is above 0.3: mmcv's kernel compares with the
    threshold as a C float (not above: both kept), as ours must."""
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 3.0], [0.0, 0.0, 10.0, 7.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    for threshold in (0.3, 0.7, 0.45, 0.29):
        assert torch.equal(
            nms(boxes, scores, threshold)[1], mmcv_nms(boxes, scores, threshold)[1]
        ), threshold
    assert nms(boxes, scores, 0.3)[1].tolist() == [0, 1]  # IoU 0.7 > 0.3: the third goes


def test_no_suppression_config_and_empty_input():
    boxes, scores, labels = random_boxes(50, seed=2, ties=True)
    assert_same(
        batched_nms(boxes, scores, labels, None), mmcv_batched_nms(boxes, scores, labels, None)
    )
    dets, keep = batched_nms(boxes[:0], scores[:0], labels[:0], CONFIG_NMS)
    assert dets.shape == (0, 5) and keep.shape == (0,)


def test_unsupported_settings_name_the_fix():
    boxes, scores, labels = random_boxes(10)
    with pytest.raises(ValueError, match="type='nms'"):
        batched_nms(boxes, scores, labels, dict(type='soft_nms', iou_threshold=0.5))
    with pytest.raises(ValueError, match='offset=0'):
        batched_nms(boxes, scores, labels, dict(CONFIG_NMS, offset=1))


def head_results(n, seed):
    boxes, scores, labels = random_boxes(n, num_classes=80, seed=seed, ties=seed % 2 == 1)
    boxes[::11, 2:] = boxes[::11, :2] + 0.005  # tiny boxes, dropped by min_bbox_size
    return InstanceData(bboxes=boxes, scores=scores, labels=labels)


@pytest.mark.parametrize('seed', [0, 1])
def test_ssd_head_post_processing_equals_mmdets_without_mmcv_kernels(tmp_path, seed):
    """Our SSDHead's post-processing with mmcv's kernels disabled == mmdet's with them."""
    from mmdet.models.dense_heads.base_dense_head import BaseDenseHead

    cfg = ConfigDict(nms=CONFIG_NMS, min_bbox_size=0.01, score_thr=0.02, max_per_img=200)
    meta = dict(scale_factor=(320 / 640, 320 / 480))
    head = SSDHead.__new__(SSDHead)  # the post-processing uses no module state
    expected = BaseDenseHead._bbox_post_process(
        head, head_results(2000, seed), cfg, rescale=True, img_meta=meta
    )
    log = tmp_path / 'kernels.log'
    with mmcv_kernels_disabled(str(log)):
        with pytest.raises(RuntimeError, match='nms_impl: implementation for device cuda:0'):
            mmcv_batched_nms(*random_boxes(20), CONFIG_NMS)  # the guard works ...
        log.unlink()  # ... and records; now our path must not reach any kernel
        ours = SSDHead._bbox_post_process(
            head, head_results(2000, seed), cfg, rescale=True, img_meta=meta
        )
    assert not osp.exists(log), f'mmcv kernels reached: {log.read_text()}'
    assert len(ours) == len(expected) == 200
    for key in ('bboxes', 'scores', 'labels'):
        assert torch.equal(ours[key], expected[key]), key
