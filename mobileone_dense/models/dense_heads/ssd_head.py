"""mmdet's SSDHead with inference fixed."""
from mmdet.models.dense_heads import SSDHead as MMDetSSDHead

from ...registry import MODELS


@MODELS.register_module()
class SSDHead(MMDetSSDHead):
    """``mmdet.SSDHead`` whose ``predict`` works (type ``mobileone_dense.SSDHead``).

    mmdet 3.3.0's ``SSDHead`` computes its softmax loss itself and never sets ``loss_cls``, but
    ``BaseDenseHead._predict_by_feat_single`` reads ``self.loss_cls`` (to ask for
    ``custom_cls_channels``), so validating or testing any SSD model raises ``AttributeError``.
    ``None`` answers that question correctly (plain softmax scores) and changes nothing else.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.loss_cls = None
