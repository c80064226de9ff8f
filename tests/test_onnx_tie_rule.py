"""The end-to-end detection check's rule for detections on one side only: near-tied
overlapping boxes kept the other way round are rounding; other differences fail (issue 23)."""

import numpy as np
import pytest
import torch
from mmengine.config import Config

from mobileone_dense.errors import OnnxParityError


class _FixedDetector:
    """Stands in for a detector in ``check_detections``: ``predict`` returns fixed detections."""

    def __init__(self, boxes, scores, labels, **test_cfg):
        from mmdet.structures import DetDataSample
        from mmengine.structures import InstanceData

        sample = DetDataSample(metainfo=dict(img_path='image.jpg'))
        sample.pred_instances = InstanceData(
            bboxes=torch.tensor(boxes, dtype=torch.float32),
            scores=torch.tensor(scores, dtype=torch.float32),
            labels=torch.tensor(labels),
        )
        self.samples = [sample]
        self.bbox_head = type('Head', (), dict(test_cfg=Config(test_cfg)))()

    def predict(self, inputs, samples, rescale=True):
        return self.samples


# PyTorch keeps box A (score 0.117767), which suppresses B; the other runtime scores B 3e-6
# higher and keeps B, which suppresses A: a near-tie decided the other way round
_TIE = dict(
    boxes=[[10.0, 10.0, 50.0, 50.0], [100.0, 100.0, 140.0, 140.0]],
    scores=[0.117767, 0.5],
    labels=[3, 1],
    score_thr=0.02,
    max_per_img=100,
    nms=dict(type='nms', iou_threshold=0.45),
)


def _graph_outputs(boxes, scores, labels):
    n = len(scores)
    return [
        np.array([boxes], np.float32).reshape(1, n, 4),
        np.array([scores], np.float32),
        np.array([labels], np.int64),
        np.array([n]),
    ]


def test_detection_check_accepts_near_tied_boxes_kept_the_other_way_round():
    """Regression: the parity check refused a correct export where two overlapping boxes of one
    label with scores 3e-6 apart came out the other way round (issue 23)."""
    from mobileone_dense.deploy.onnx_end2end_check import check_detections

    model = _FixedDetector(**_TIE)
    report = dict(images=0, detections=0, at_cut=0, tied=0, max_box_diff=0.0, max_score_diff=0.0)
    swapped = _graph_outputs([[12.0, 11.0, 52.0, 51.0], _TIE['boxes'][1]], [0.117770, 0.5], [3, 1])
    check_detections(model, torch.zeros(1, 3, 8, 8), [None], swapped, report, 1e-3, 1e-5)
    assert report['tied'] == 2 and report['at_cut'] == 0 and report['detections'] == 2

    # real differences still fail: a score gap beyond the tolerance, a box that does not
    # overlap, another label, a detection with no partner at all
    for boxes, scores, labels in [
        ([[12.0, 11.0, 52.0, 51.0], _TIE['boxes'][1]], [0.1178, 0.5], [3, 1]),
        ([[60.0, 60.0, 95.0, 95.0], _TIE['boxes'][1]], [0.117770, 0.5], [3, 1]),
        ([[12.0, 11.0, 52.0, 51.0], _TIE['boxes'][1]], [0.117770, 0.5], [4, 1]),
        ([_TIE['boxes'][1]], [0.5], [1]),
    ]:
        with pytest.raises(OnnxParityError, match='on one side only'):
            check_detections(
                model,
                torch.zeros(1, 3, 8, 8),
                [None],
                _graph_outputs(boxes, scores, labels),
                dict(report),
                1e-3,
                1e-5,
            )
