"""End-to-end ONNX graphs: from the preprocessed image batch to what ``model.predict`` returns.

Inputs: ``input`` float32 ``(N, 3, H, W)``, the image after the config's test transforms and the
data preprocessor (see ``onnx_metadata``); detection also ``scale_factor`` float32 ``(N, 2)``,
mmdet's ``(w_scale, h_scale)`` = input size / original image size (boxes come out in
original-image pixels, as ``predict(..., rescale=True)``). Outputs, per task:

- detection: ``boxes`` ``(N, K, 4)`` x1y1x2y2 float32, ``scores`` ``(N, K)``, ``labels``
  ``(N, K)`` int64 and ``num_dets`` ``(N,)`` int64, ``K = test_cfg.max_per_img``; the first
  ``num_dets[i]`` rows of image ``i`` are its detections, highest score first, the rest padding
  (boxes 0, scores 0, labels -1). Inside the graph: the anchors (mmdet's own prior generator),
  softmax, per-level top ``nms_pre``, ``DeltaXYWHBBoxCoder`` decoding and clipping, rescaling,
  the ``min_bbox_size`` filter, class-wise NMS with ONNX's standard ``NonMaxSuppression`` and the
  ``max_per_img`` best: mmdet's ``_predict_by_feat_single`` and our ``SSDHead._bbox_post_process``
  step for step. Class-wise NMS is done as mmcv's ``batched_nms`` does it (each class's boxes
  shifted by ``label * (max coordinate + 1)``, one NMS over all), so the IoUs are computed on the
  very coordinates PyTorch uses; ONNX's score threshold keeps ``score > score_thr`` and orders
  equal scores by index, as the PyTorch path does.
- segmentation: ``labels`` ``(N, H, W)`` int64, the argmax of the logits at the input size.
- classification: ``scores`` ``(N, k)`` softmax probabilities and ``labels`` ``(N, k)`` int64,
  the ``k`` best classes, highest first.

The export contract (the file's outputs equal PyTorch's ``predict`` on real images) is checked
by :func:`mobileone_dense.deploy.onnx_end2end_check.check_end2end`.
"""

import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
from torchvision.ops import nms as torchvision_nms

from ..models.tasks import DEFAULT_INPUT_SIZE
from .onnx_export import DEFAULT_OPSET, RawOutputs, export_module, exportable_task, require_onnx
from .onnx_metadata import export_metadata

END2END_OUTPUTS = dict(
    detection=['boxes', 'scores', 'labels', 'num_dets'],
    segmentation=['labels'],
    classification=['scores', 'labels'],
)


class _NonMaxSuppression(torch.autograd.Function):
    """ONNX ``NonMaxSuppression`` (one class, ``center_point_box=0``) with an eager twin.

    ``boxes`` ``(N, M, 4)``, ``scores`` ``(N, 1, M)``; returns ``(S, 3)`` int64 rows
    ``(image, 0, box index)``, per image in selection order (highest score first). Boxes with
    ``score <= score_threshold`` are never selected; a box is suppressed when its IoU with a
    selected one is above ``iou_threshold`` (float32).
    """

    @staticmethod
    def forward(
        ctx, boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, score_threshold: float
    ) -> torch.Tensor:
        iou = float(np.float32(iou_threshold))  # ONNX takes it as float32
        rows = [boxes.new_zeros((0, 3), dtype=torch.long)]
        for image in range(boxes.shape[0]):
            image_scores = scores[image, 0]
            candidates = (image_scores > score_threshold).nonzero().squeeze(1)
            # equal scores: lower index first, as onnxruntime orders them
            order = image_scores[candidates].sort(descending=True, stable=True).indices
            candidates = candidates[order]
            keep = candidates[
                torchvision_nms(boxes[image, candidates], image_scores[candidates], iou)
            ]
            rows.append(
                torch.stack([torch.full_like(keep, image), torch.zeros_like(keep), keep], dim=1)
            )
        return torch.cat(rows)

    @staticmethod
    def symbolic(g, boxes, scores, iou_threshold, score_threshold):
        max_boxes = g.op('Constant', value_t=torch.tensor([2**31 - 1], dtype=torch.long))
        iou = g.op('Constant', value_t=torch.tensor([iou_threshold], dtype=torch.float))
        threshold = g.op('Constant', value_t=torch.tensor([score_threshold], dtype=torch.float))
        return g.op(
            'NonMaxSuppression', boxes, scores, max_boxes, iou, threshold, center_point_box_i=0
        )


def _size(tensor: torch.Tensor, dim: int) -> torch.Tensor:
    """``tensor.shape[dim]`` as a 0-d tensor, so that tracing keeps it dynamic."""
    return torch._shape_as_tensor(tensor)[dim]


class DetectionEnd2End(nn.Module):
    """A deploy-form mmdet anchor-based dense detector (SSD) plus its whole ``predict``
    post-processing.

    ``forward(input (N, 3, H, W), scale_factor (N, 2))`` -> ``boxes, scores, labels, num_dets``
    (see the module doc). Supports heads with mmdet's ``AnchorGenerator`` family and
    ``DeltaXYWHBBoxCoder``, softmax or sigmoid scores, and ``test_cfg.nms.type='nms'``.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        head = model.bbox_head
        cfg = head.test_cfg
        coder = head.bbox_coder
        if type(coder).__name__ != 'DeltaXYWHBBoxCoder':
            raise TypeError(
                f'end-to-end export decodes DeltaXYWHBBoxCoder boxes; this head uses '
                f'{type(coder).__name__}: export without --end2end and post-process '
                'with mobileone_dense.apis.ssd_postprocess'
            )
        nms_cfg = dict(cfg.get('nms') or {})
        if nms_cfg.get('type', 'nms') != 'nms' or {'score_threshold', 'max_num'} & set(nms_cfg):
            raise ValueError(
                f'test_cfg.nms={nms_cfg}: end-to-end export implements plain '
                "NMS (type='nms' with iou_threshold, optional class_agnostic)"
            )
        self.max_per_img = int(cfg.get('max_per_img', 100))
        if self.max_per_img <= 0:
            raise ValueError(
                f'test_cfg.max_per_img={self.max_per_img}: set a positive number '
                'of detections per image for the padded (N, K) outputs'
            )
        self.nms_pre = int(cfg.get('nms_pre', -1))
        self.score_thr = float(cfg.get('score_thr', 0.0))
        self.min_bbox_size = float(cfg.get('min_bbox_size', -1))
        self.iou_threshold = float(nms_cfg.get('iou_threshold', 0.5))
        self.class_agnostic = bool(nms_cfg.get('class_agnostic', False))

    def forward(self, x: torch.Tensor, scale_factor: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        head = self.model.bbox_head
        cls_scores, bbox_preds = self.model(x, mode='tensor')
        priors = head.prior_generator.grid_priors(
            [c.shape[-2:] for c in cls_scores], dtype=x.dtype, device=x.device
        )
        num, classes = x.shape[0], head.num_classes
        scores, labels, deltas, anchors = [], [], [], []
        for cls_score, bbox_pred, level_priors in zip(cls_scores, bbox_preds, priors):
            logits = cls_score.permute(0, 2, 3, 1).reshape(num, -1, head.cls_out_channels)
            level = (
                logits.sigmoid() if head.use_sigmoid_cls else logits.softmax(-1)[..., :classes]
            ).reshape(num, -1)
            # mmdet: the nms_pre best (anchor, class) pairs above score_thr, per level; taking
            # the best first and thresholding afterwards selects the same pairs
            k = (
                _size(level, 1)
                if self.nms_pre <= 0
                else torch.clamp(_size(level, 1), max=self.nms_pre)
            )
            top, index = level.topk(k, dim=1)
            anchor = torch.div(index, classes, rounding_mode='floor')
            scores.append(top)
            labels.append(index - anchor * classes)
            level_deltas = bbox_pred.permute(0, 2, 3, 1).reshape(num, -1, 4)
            deltas.append(torch.gather(level_deltas, 1, anchor.unsqueeze(-1).expand(-1, -1, 4)))
            anchors.append(level_priors[anchor])
        scores, labels = torch.cat(scores, 1), torch.cat(labels, 1)
        boxes = self._decode(torch.cat(anchors, 1), torch.cat(deltas, 1), x)
        # predict(rescale=True): to original-image pixels, then the size filter and NMS
        boxes = boxes * scale_factor.reciprocal().repeat(1, 2).unsqueeze(1)
        valid = scores > self.score_thr
        if self.min_bbox_size >= 0:
            valid = (
                valid
                & (boxes[..., 2] - boxes[..., 0] > self.min_bbox_size)
                & (boxes[..., 3] - boxes[..., 1] > self.min_bbox_size)
            )
        nms_boxes = boxes
        if not self.class_agnostic:  # mmcv's batched_nms: classes shifted apart
            masked = torch.where(valid.unsqueeze(-1), boxes, torch.full_like(boxes, -math.inf))
            max_coordinate = masked.flatten(1).max(dim=1).values
            offsets = labels.to(boxes.dtype) * (max_coordinate.unsqueeze(1) + 1)
            nms_boxes = boxes + offsets.unsqueeze(-1)
        nms_scores = torch.where(valid, scores, torch.full_like(scores, self.score_thr - 1))
        selected = _NonMaxSuppression.apply(
            nms_boxes, nms_scores.unsqueeze(1), self.iou_threshold, self.score_thr
        )
        return self._best_kept(boxes, scores, labels, selected)

    def _decode(self, anchors: torch.Tensor, deltas: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """mmdet's ``delta2bbox`` on ``(N, M, 4)`` anchors and deltas, clipped to the input.

        Written out rather than called: mmdet 3.3.0's ``delta2bbox`` clips in place to Python
        ints (the traced graph would keep the export size), and its ``onnx_delta2bbox`` imports
        ``mmdet.core.export`` under export, a module mmdet 3.x no longer has.
        """
        coder = self.model.bbox_head.bbox_coder
        deltas = deltas * deltas.new_tensor(coder.stds) + deltas.new_tensor(coder.means)
        dxy, dwh = deltas[..., :2], deltas[..., 2:]
        pxy = (anchors[..., :2] + anchors[..., 2:]) * 0.5
        pwh = anchors[..., 2:] - anchors[..., :2]
        dxy_wh = pwh * dxy
        max_ratio = abs(np.log(16 / 1000))  # decode()'s default wh_ratio_clip
        if coder.add_ctr_clamp:
            dxy_wh = torch.clamp(dxy_wh, max=coder.ctr_clamp, min=-coder.ctr_clamp)
            dwh = torch.clamp(dwh, max=max_ratio)
        else:
            dwh = dwh.clamp(min=-max_ratio, max=max_ratio)
        gxy = pxy + dxy_wh
        gwh = pwh * dwh.exp()
        boxes = torch.cat([gxy - gwh * 0.5, gxy + gwh * 0.5], dim=-1)
        if coder.clip_border:
            height, width = _size(x, 2).to(x.dtype), _size(x, 3).to(x.dtype)
            limits = torch.stack([width, height, width, height])
            boxes = torch.minimum(boxes.clamp(min=0), limits)
        return boxes

    def _best_kept(
        self,
        boxes: torch.Tensor,
        scores: torch.Tensor,
        labels: torch.Tensor,
        selected: torch.Tensor,
    ) -> Tuple[torch.Tensor, ...]:
        """The ``max_per_img`` highest-scoring selected boxes per image, padded to ``K``."""
        k = self.max_per_img
        flat = selected[:, 0] * _size(scores, 1) + selected[:, 2]
        kept = (
            torch.full_like(scores, -1.0)
            .reshape(-1)
            .scatter(0, flat, scores.reshape(-1).gather(0, flat))
            .reshape(scores.shape)
        )
        # k padding candidates (score -1) so that top-k exists however few boxes there are
        kept = torch.cat([kept, torch.full_like(kept[:, :1], -1.0).expand(-1, k)], 1)
        boxes = torch.cat([boxes, torch.zeros_like(boxes[:, :1]).expand(-1, k, -1)], 1)
        labels = torch.cat([labels, torch.zeros_like(labels[:, :1]).expand(-1, k)], 1)
        top, index = kept.topk(k, dim=1)
        found = top > -0.5
        boxes = torch.gather(boxes, 1, index.unsqueeze(-1).expand(-1, -1, 4))
        boxes = boxes * found.unsqueeze(-1).to(boxes.dtype)
        labels = torch.where(found, torch.gather(labels, 1, index), torch.full_like(index, -1))
        return (boxes, torch.where(found, top, torch.zeros_like(top)), labels, found.sum(1))


class SegmentationEnd2End(nn.Module):
    """``input (N, 3, H, W)`` -> ``labels (N, H, W)`` int64: argmax of the logits at the input
    size (the raw export's ``seg_logits``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.logits = RawOutputs(model, 'segmentation')

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor]:
        return (self.logits(x)[0].argmax(1),)


class ClassificationEnd2End(nn.Module):
    """``input (N, 3, H, W)`` -> ``scores (N, k)`` softmax, ``labels (N, k)``: the top ``k``."""

    def __init__(self, model: nn.Module, topk: int = 5) -> None:
        super().__init__()
        self.model = model
        self.topk = min(topk, model.head.fc.out_features if hasattr(model.head, 'fc') else topk)
        if self.topk < 1:
            raise ValueError(f'topk must be >= 1, got {topk}')

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.model(x, mode='tensor').softmax(1).topk(self.topk, dim=1)


def end2end_graph(model: nn.Module, topk: int = 5) -> nn.Module:
    """The end-to-end module (eval mode) of a deploy-form, eval-mode ``model``."""
    task = exportable_task(model)
    if task == 'detection':
        graph = DetectionEnd2End(model)
    elif task == 'segmentation':
        graph = SegmentationEnd2End(model)
    else:
        graph = ClassificationEnd2End(model, topk)
    return graph.eval()


def _descriptions(graph: nn.Module, task: str) -> Tuple[Dict[str, str], Dict[str, str]]:
    """(inputs, outputs): name -> shape and meaning, for the metadata."""
    inputs = {'input': 'float32 (N, 3, H, W): the preprocessed image batch'}
    if task == 'detection':
        inputs['scale_factor'] = (
            'float32 (N, 2): (w_scale, h_scale) = input width / original '
            'width, input height / original height'
        )
        k = graph.max_per_img
        return inputs, {
            'boxes': f'float32 (N, {k}, 4): x1, y1, x2, y2 in original-image pixels',
            'scores': f'float32 (N, {k}): detection scores, highest first',
            'labels': f'int64 (N, {k}): class indices, -1 for padding',
            'num_dets': 'int64 (N,): detections per image (the first rows; the rest is padding)',
        }
    if task == 'segmentation':
        return inputs, {'labels': 'int64 (N, H, W): class index per pixel at the input size'}
    return inputs, {
        'scores': f'float32 (N, {graph.topk}): softmax probabilities, highest first',
        'labels': f'int64 (N, {graph.topk}): class indices',
    }


def export_end2end(
    model: nn.Module,
    path: str,
    input_shape: Optional[Sequence[int]] = None,
    dynamic: bool = True,
    opset: int = DEFAULT_OPSET,
    topk: int = 5,
) -> List[str]:
    """Write the end-to-end graph of ``model`` (deploy form, eval) to ``path``; returns output
    names.

    ``input_shape``: ``(N, 3, H, W)`` of the tracing input (default ``(1, 3)`` + the task's
    ``DEFAULT_INPUT_SIZE``); ``dynamic``: batch, height and width as dynamic axes; ``topk``:
    classes kept by a classifier. Written atomically, with the metadata a consumer needs.
    """
    require_onnx()
    if model.training:
        raise ValueError('export an eval-mode model (model.eval()), as init_model returns it')
    task = exportable_task(model)
    graph = end2end_graph(model, topk)
    if input_shape is None:
        input_shape = (1, 3) + DEFAULT_INPUT_SIZE[task]
    parameter = next(model.parameters())
    dummies = (torch.randn(*input_shape, dtype=parameter.dtype, device=parameter.device),)
    input_names = ['input']
    if task == 'detection':
        input_names.append('scale_factor')
        dummies += (torch.ones(input_shape[0], 2, dtype=parameter.dtype, device=parameter.device),)
    names = END2END_OUTPUTS[task]
    dynamic_axes = None
    if dynamic:
        dynamic_axes = {'input': {0: 'batch', 2: 'height', 3: 'width'}}
        dynamic_axes.update({name: {0: 'batch'} for name in input_names[1:] + names})
        if task == 'segmentation':
            dynamic_axes['labels'] = {0: 'batch', 1: 'height', 2: 'width'}
    inputs, outputs = _descriptions(graph, task)
    extra = {}
    if task == 'detection':
        extra = dict(score_thr=graph.score_thr, max_per_img=graph.max_per_img)
    metadata = export_metadata(model, task, 'end2end', outputs, inputs, extra)
    export_module(graph, dummies, path, input_names, names, dynamic_axes, opset, metadata)
    return names
