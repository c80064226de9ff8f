"""Non-maximum suppression on any device, without mmcv's compiled kernels.

mmdet's dense heads call ``mmcv.ops.batched_nms``, whose kernel comes from mmcv's C++/CUDA
extension. The mmcv 2.1.0 that ``tools/setup_env.sh`` builds has CPU kernels only (a CUDA build
takes far longer and no wheel exists for our torch), so on a GPU the first validation would stop
with ``nms_impl: implementation for device cuda:0 not found``. torchvision's wheels carry NMS
kernels for CPU and CUDA: :func:`batched_nms` is mmcv's ``batched_nms`` (mmcv 2.1.0,
``mmcv/ops/nms.py``) step for step, with torchvision's kernel doing the suppression, so that it
keeps the same boxes, in the same order, with the same scores (``tests/test_nms.py`` compares
the two, ties and the per-class path above ``split_thr`` included).
"""

from typing import Dict, Optional, Tuple

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import nms as torchvision_nms

# mmcv's default number of boxes from which each class is suppressed on its own
DEFAULT_SPLIT_THR = 10000


def nms(
    boxes: Tensor,
    scores: Tensor,
    iou_threshold: float,
    offset: int = 0,
    score_threshold: float = 0,
    max_num: int = -1,
) -> Tuple[Tensor, Tensor]:
    """Greedy NMS of ``boxes`` (N, 4) x1y1x2y2 with ``scores`` (N,); mmcv's ``nms`` contract.

    Returns ``dets`` (K, 5): the kept boxes with their score as the last column, and ``keep``
    (K,): their indices into ``boxes``, highest score first.

    mmcv's kernel visits the boxes in the order of ``scores.sort(descending=True)`` (which also
    decides ties) and suppresses a box when its IoU with a kept one is above the threshold taken
    as a C float. Here the boxes are handed to torchvision already in that order (its stable
    sort keeps it) with the threshold rounded to float32 the same way: both suppress the same
    boxes.
    """
    if offset != 0:
        raise ValueError(
            f'nms offset={offset} (legacy "+1" box widths) is not supported by the '
            'torchvision kernel; use offset=0 (the mmdet 3.x default)'
        )
    candidates, candidate_scores, valid_inds = boxes, scores, None
    if score_threshold > 0:
        valid_mask = scores > score_threshold
        candidates, candidate_scores = boxes[valid_mask], scores[valid_mask]
        valid_inds = torch.nonzero(valid_mask, as_tuple=False).squeeze(dim=1)
    order = candidate_scores.sort(0, descending=True)[1]
    threshold = float(np.float32(iou_threshold))
    keep = order[torchvision_nms(candidates[order], candidate_scores[order], threshold)]
    if max_num > 0:
        keep = keep[:max_num]
    if valid_inds is not None:
        keep = valid_inds[keep]
    return torch.cat((boxes[keep], scores[keep].reshape(-1, 1)), dim=1), keep


def batched_nms(
    boxes: Tensor,
    scores: Tensor,
    idxs: Tensor,
    nms_cfg: Optional[Dict],
    class_agnostic: bool = False,
) -> Tuple[Tensor, Tensor]:
    """NMS within each group of ``idxs`` (class labels); mmcv's ``batched_nms`` contract.

    Args:
        boxes: (N, 4) x1y1x2y2.
        scores: (N,).
        idxs: (N,) group (class) of each box; boxes of different groups never suppress each
            other (unless ``class_agnostic``).
        nms_cfg: ``dict(type='nms', iou_threshold=..., [split_thr], [class_agnostic],
            [score_threshold], [max_num])`` as in mmdet's ``test_cfg.nms``; None: no
            suppression, only sorting.
        class_agnostic: suppress across groups (``nms_cfg['class_agnostic']`` overrides it).

    Returns:
        ``dets`` (K, 5): kept boxes and their scores, highest score first; ``keep`` (K,): their
        indices into ``boxes``.
    """
    if nms_cfg is None:
        scores, inds = scores.sort(descending=True)
        return torch.cat([boxes[inds], scores[:, None]], -1), inds
    nms_cfg = dict(nms_cfg)
    nms_type = nms_cfg.pop('type', 'nms')
    if nms_type not in ('nms', nms):
        raise ValueError(
            f'test_cfg.nms.type={nms_type!r}: mobileone_dense runs plain NMS '
            "through torchvision on every device; use type='nms' (soft-NMS and "
            "other mmcv variants need mmcv's compiled ops on the device)"
        )
    if boxes.size(-1) != 4:
        raise ValueError(f'batched_nms takes (N, 4) x1y1x2y2 boxes, got {tuple(boxes.shape)}')
    if boxes.numel() == 0:
        return boxes.new_zeros((0, 5)), idxs.new_zeros((0,), dtype=torch.long)
    if nms_cfg.pop('class_agnostic', class_agnostic):
        boxes_for_nms = boxes
    else:  # shift each class by a multiple of the largest coordinate: classes never overlap
        max_coordinate = boxes.max()
        offsets = idxs.to(boxes) * (max_coordinate + torch.tensor(1).to(boxes))
        boxes_for_nms = boxes + offsets[:, None]

    split_thr = nms_cfg.pop('split_thr', DEFAULT_SPLIT_THR)
    if boxes_for_nms.shape[0] < split_thr:
        dets, keep = nms(boxes_for_nms, scores, **nms_cfg)
        return torch.cat([boxes[keep], dets[:, -1:]], -1), keep
    # many boxes: one class at a time (bounded memory), then all kept boxes sorted by score
    max_num = nms_cfg.pop('max_num', -1)
    total_mask = scores.new_zeros(scores.size(), dtype=torch.bool)
    scores_after_nms = scores.new_zeros(scores.size())
    for group in torch.unique(idxs):
        mask = (idxs == group).nonzero(as_tuple=False).view(-1)
        dets, keep = nms(boxes_for_nms[mask], scores[mask], **nms_cfg)
        total_mask[mask[keep]] = True
        scores_after_nms[mask[keep]] = dets[:, -1]
    keep = total_mask.nonzero(as_tuple=False).view(-1)
    kept_scores, inds = scores_after_nms[keep].sort(descending=True)
    keep = keep[inds]
    if max_num > 0:
        keep, kept_scores = keep[:max_num], kept_scores[:max_num]
    return torch.cat([boxes[keep], kept_scores[:, None]], -1), keep
