from .classification import set_imagenet_schedule
from .coco_data import use_coco_folder
from .model_building import build_model_from_config

# The deployment code (ONNX, quantization) lives one layer up in ``mobileone_dense.deploy``;
# ``apis`` cannot re-export it (imports run downward only).
__all__ = ['build_model_from_config', 'set_imagenet_schedule', 'use_coco_folder']
