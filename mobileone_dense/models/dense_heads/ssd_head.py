"""mmdet's SSDHead with inference fixed and NMS that runs on any device."""

from typing import Optional

from mmdet.models.dense_heads import SSDHead as MMDetSSDHead
from mmdet.structures.bbox import get_box_tensor, get_box_wh, scale_boxes
from mmengine.config import ConfigDict
from mmengine.structures import InstanceData

from ...registry import MODELS
from .nms import batched_nms


@MODELS.register_module()
class SSDHead(MMDetSSDHead):
    """``mmdet.SSDHead`` (mmdet 3.3.0) whose ``predict`` works on CPU and GPU alike.

    Type ``mobileone_dense.SSDHead``; the same arguments, weights and outputs as mmdet's.

    - mmdet 3.3.0's ``SSDHead`` computes its softmax loss itself and never sets ``loss_cls``,
      but ``BaseDenseHead._predict_by_feat_single`` reads ``self.loss_cls`` (to ask for
      ``custom_cls_channels``), so validating or testing any SSD model raises
      ``AttributeError``. ``None`` answers that question correctly (plain softmax scores) and
      changes nothing else.
    - NMS goes through torchvision's kernels (:func:`.nms.batched_nms`, same kept boxes as
      mmcv's ``batched_nms``) instead of mmcv's compiled ops, which our CPU-ops mmcv build
      lacks for CUDA tensors.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.loss_cls = None

    def _bbox_post_process(
        self,
        results: InstanceData,
        cfg: ConfigDict,
        rescale: bool = False,
        with_nms: bool = True,
        img_meta: Optional[dict] = None,
    ) -> InstanceData:
        """``BaseDenseHead._bbox_post_process`` (mmdet 3.3.0), with :func:`.nms.batched_nms`.

        Rescales the boxes to the original image, drops boxes not wider and taller than
        ``cfg.min_bbox_size``, suppresses per class (``cfg.nms``) and keeps the
        ``cfg.max_per_img`` highest scores.
        """
        if rescale:
            assert img_meta.get('scale_factor') is not None
            scale_factor = [1 / s for s in img_meta['scale_factor']]
            results.bboxes = scale_boxes(results.bboxes, scale_factor)
        if hasattr(results, 'score_factors'):
            results.scores = results.scores * results.pop('score_factors')
        if cfg.get('min_bbox_size', -1) >= 0:
            w, h = get_box_wh(results.bboxes)
            valid_mask = (w > cfg.min_bbox_size) & (h > cfg.min_bbox_size)
            if not valid_mask.all():
                results = results[valid_mask]
        if with_nms and results.bboxes.numel() > 0:
            bboxes = get_box_tensor(results.bboxes)
            det_bboxes, keep_idxs = batched_nms(bboxes, results.scores, results.labels, cfg.nms)
            results = results[keep_idxs]
            results.scores = det_bboxes[:, -1]
            results = results[: cfg.max_per_img]
        return results
