from .classification import set_imagenet_schedule
from .coco_data import use_coco_folder
from .model_building import build_model_from_config

__all__ = ['build_model_from_config', 'set_imagenet_schedule', 'use_coco_folder']
