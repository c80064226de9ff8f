from .synthetic import SHAPE_CATEGORIES, make_coco_shapes

__all__ = ['SHAPE_CATEGORIES', 'make_coco_shapes']
