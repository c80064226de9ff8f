"""SSD decoding and NMS in numpy alone: detections from the raw head outputs, for apps.

The ExecuTorch file (``executorch_export``) and the raw ONNX export stop at the SSD head's
outputs (NMS has no ExecuTorch kernel); an app without torch or OpenMMLab turns them into
detections with :func:`ssd_detections`, given the ``detection`` entry of the JSON written beside
the file (:func:`~mobileone_dense.deploy.onnx_metadata.detection_decoding`). This module imports
numpy only, so an app may copy it as it is.

The steps are mmdet 3.3.0's ``BaseDenseHead._predict_by_feat_single`` and our
``SSDHead._bbox_post_process`` (what ``model.predict`` runs), in float32 as there:

1. per level, the priors: ``base_anchors`` shifted by ``(x * stride_w, y * stride_h)`` over the
   feature map, ordered (y, x, anchor) as the head's outputs are;
2. per level, softmax scores without the background column (sigmoid for sigmoid heads), the
   (anchor, class) pairs above ``score_thr``, the ``nms_pre`` best of them;
3. ``DeltaXYWHBBoxCoder`` decoding (``means``/``stds``, ``wh_ratio_clip`` 16/1000, optional
   centre clamp) and clipping to the network input;
4. rescaling to the original image (divided by ``scale_factor``), the ``min_bbox_size`` filter;
5. class-wise greedy NMS as mmcv's ``batched_nms`` does it (each class's boxes shifted by
   ``label * (max coordinate + 1)``, one NMS, a box suppressed when its IoU with a kept one is
   above ``iou_threshold``), highest score first, the ``max_per_img`` best.

Equal scores are taken in index order (numpy's stable sort); torch's sort may order exact ties
otherwise, so comparisons with ``predict`` use the tie rule of ``onnx_end2end_check``.
"""

from typing import Any, Dict, List, Optional, Sequence

import numpy as np

# DeltaXYWHBBoxCoder.decode's default ratio clip (mmdet 3.3.0)
WH_RATIO_CLIP = 16 / 1000


def level_priors(base_anchors: np.ndarray, stride: Sequence[float], size: Sequence[int]):
    """Anchors ``(H * W * A, 4)`` x1y1x2y2 of one level: mmdet's ``single_level_grid_priors``.

    Args:
        base_anchors: ``(A, 4)`` anchors of the cell at (0, 0), input pixels.
        stride: ``(stride_w, stride_h)`` in input pixels.
        size: the level's feature-map ``(H, W)``.
    """
    base = np.asarray(base_anchors, np.float32)
    shift_x = np.arange(size[1], dtype=np.float32) * np.float32(stride[0])
    shift_y = np.arange(size[0], dtype=np.float32) * np.float32(stride[1])
    xx, yy = np.meshgrid(shift_x, shift_y)  # (H, W): x varies along rows' columns
    shifts = np.stack([xx, yy, xx, yy], -1).reshape(-1, 4)
    return (base[None] + shifts[:, None]).reshape(-1, 4)


def decode_boxes(priors: np.ndarray, deltas: np.ndarray, coder: Dict[str, Any], img_shape):
    """``DeltaXYWHBBoxCoder.decode`` of ``(M, 4)`` deltas on ``(M, 4)`` priors, clipped to
    ``img_shape`` (H, W) when ``coder['clip_border']``; float32."""
    deltas = deltas * np.asarray(coder['stds'], np.float32) + np.asarray(coder['means'], np.float32)
    dxy, dwh = deltas[:, :2], deltas[:, 2:]
    pxy = (priors[:, :2] + priors[:, 2:]) * np.float32(0.5)
    pwh = priors[:, 2:] - priors[:, :2]
    dxy_wh = pwh * dxy
    max_ratio = np.float32(abs(np.log(WH_RATIO_CLIP)))
    if coder.get('add_ctr_clamp'):
        clamp = np.float32(coder['ctr_clamp'])
        dxy_wh = np.clip(dxy_wh, -clamp, clamp)
        dwh = np.minimum(dwh, max_ratio)
    else:
        dwh = np.clip(dwh, -max_ratio, max_ratio)
    gxy = pxy + dxy_wh
    gwh = pwh * np.exp(dwh)
    boxes = np.concatenate([gxy - gwh * np.float32(0.5), gxy + gwh * np.float32(0.5)], 1)
    if coder.get('clip_border', True):
        height, width = np.float32(img_shape[0]), np.float32(img_shape[1])
        boxes = np.clip(boxes, 0, np.array([width, height, width, height], np.float32))
    return boxes.astype(np.float32)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS (torchvision's / mmcv's kernel): indices of the kept boxes, highest score
    first; a box is suppressed when its IoU with a kept one is above ``iou_threshold``."""
    order = np.argsort(-scores, kind='stable')
    x1, y1, x2, y2 = (boxes[:, i] for i in range(4))
    areas = (x2 - x1) * (y2 - y1)
    threshold = np.float32(iou_threshold)
    suppressed = np.zeros(len(boxes), bool)
    keep = []
    for position, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(i)
        rest = order[position + 1 :]
        w = np.maximum(np.float32(0), np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(np.float32(0), np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        iou = inter / (areas[i] + areas[rest] - inter)
        suppressed[rest[iou > threshold]] = True
    return np.asarray(keep, np.int64)


def _level_candidates(cls_score: np.ndarray, info: Dict[str, Any]):
    """Scores ``(K,)``, labels ``(K,)`` and anchor indices ``(K,)`` of one image and level: the
    ``nms_pre`` best (anchor, class) pairs above ``score_thr``."""
    classes = info['num_classes']
    channels = classes if info['use_sigmoid'] else classes + 1
    logits = cls_score.transpose(1, 2, 0).reshape(-1, channels).astype(np.float32)
    if info['use_sigmoid']:
        scores = np.float32(1) / (np.float32(1) + np.exp(-logits))
    else:
        shifted = np.exp(logits - logits.max(1, keepdims=True))
        scores = (shifted / shifted.sum(1, keepdims=True))[:, :classes]
    anchors, labels = np.nonzero(scores > np.float32(info['score_thr']))
    values = scores[anchors, labels]
    order = np.argsort(-values, kind='stable')
    if info['nms_pre'] > 0:
        order = order[: info['nms_pre']]
    return values[order], labels[order], anchors[order]


def ssd_detections(
    outputs: Sequence[np.ndarray],
    info: Dict[str, Any],
    img_shape: Sequence[int],
    scale_factor: Optional[Sequence[float]] = None,
) -> List[Dict[str, np.ndarray]]:
    """Detections of every image from the raw outputs, as ``model.predict`` gives them.

    Args:
        outputs: ``cls_score_<i>`` ``(N, A_i * (C + 1), H_i, W_i)`` for every level, then
            ``bbox_pred_<i>`` ``(N, A_i * 4, H_i, W_i)``, in the file's output order.
        info: the ``detection`` entry of the JSON beside the file (anchors, coder, test_cfg).
        img_shape: ``(H, W)`` of the network input, pixels.
        scale_factor: ``(w_scale, h_scale)`` = input size / original image size, for every
            image; boxes are divided by it (``None``: boxes in input pixels).

    Returns:
        Per image a dict of ``boxes`` ``(K, 4)`` float32 x1y1x2y2, ``scores`` ``(K,)`` float32
        and ``labels`` ``(K,)`` int64, highest score first.
    """
    levels = len(outputs) // 2
    if len(outputs) != 2 * levels or levels != len(info['base_anchors']):
        raise ValueError(
            f'{len(outputs)} outputs for {len(info["base_anchors"])} levels: expected the '
            'cls_score_<i> then the bbox_pred_<i> of every level'
        )
    priors = [
        level_priors(base, stride, out.shape[2:])
        for base, stride, out in zip(info['base_anchors'], info['strides'], outputs[:levels])
    ]
    results = []
    for image in range(outputs[0].shape[0]):
        scores, labels, boxes = [], [], []
        for cls_score, bbox_pred, level in zip(outputs[:levels], outputs[levels:], priors):
            value, label, anchor = _level_candidates(cls_score[image], info)
            deltas = bbox_pred[image].transpose(1, 2, 0).reshape(-1, 4)[anchor]
            scores.append(value)
            labels.append(label)
            boxes.append(decode_boxes(level[anchor], deltas.astype(np.float32), info, img_shape))
        result = dict(
            boxes=np.concatenate(boxes),
            scores=np.concatenate(scores),
            labels=np.concatenate(labels),
        )
        results.append(_post_process(result, info, scale_factor))
    return results


def _post_process(result: Dict[str, np.ndarray], info: Dict[str, Any], scale_factor):
    """Rescale, size filter, class-wise NMS and the ``max_per_img`` best (one image)."""
    boxes = result['boxes']
    if scale_factor is not None:
        w_scale, h_scale = (np.float32(1 / s) for s in scale_factor)
        boxes = boxes * np.array([w_scale, h_scale, w_scale, h_scale], np.float32)
    valid = np.ones(len(boxes), bool)
    if info['min_bbox_size'] >= 0:
        valid = (boxes[:, 2] - boxes[:, 0] > info['min_bbox_size']) & (
            boxes[:, 3] - boxes[:, 1] > info['min_bbox_size']
        )
    boxes, scores, labels = boxes[valid], result['scores'][valid], result['labels'][valid]
    if len(boxes):
        shifted = boxes
        if not info['class_agnostic']:  # mmcv's batched_nms: classes shifted apart
            offsets = labels.astype(np.float32) * (boxes.max() + np.float32(1))
            shifted = boxes + offsets[:, None]
        keep = nms(shifted, scores, info['iou_threshold'])[: info['max_per_img']]
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    return dict(
        boxes=boxes.astype(np.float32),
        scores=scores.astype(np.float32),
        labels=labels.astype(np.int64),
    )
