from .coco_data import use_coco_folder
from .model_building import build_model_from_config

__all__ = ['build_model_from_config', 'use_coco_folder']
