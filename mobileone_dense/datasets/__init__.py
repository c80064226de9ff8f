from .coco_voc import COCOVOCSegDataset, LoadCocoSemanticMask, render_semantic_mask
from .synthetic import SHAPE_CATEGORIES, make_coco_shapes
from .synthetic_imagenet import make_imagenet_folder
from .synthetic_segmentation import make_ade20k_shapes, make_voc_shapes
from .transforms import LoadImageFromFile, LoadSegAnnotations, ScaledAutoAugment

__all__ = [
    'COCOVOCSegDataset',
    'LoadCocoSemanticMask',
    'SHAPE_CATEGORIES',
    'make_ade20k_shapes',
    'make_coco_shapes',
    'make_voc_shapes',
    'render_semantic_mask',
    'make_imagenet_folder',
    'ScaledAutoAugment',
    'LoadImageFromFile',
    'LoadSegAnnotations',
]
