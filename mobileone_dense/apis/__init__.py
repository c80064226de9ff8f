from .classification import set_imagenet_schedule
from .coco_data import use_coco_folder
from .model_building import build_model_from_config
from .onnx_export import check_onnx_parity, export_onnx, ssd_postprocess

__all__ = [
    'build_model_from_config',
    'set_imagenet_schedule',
    'use_coco_folder',
    'export_onnx',
    'check_onnx_parity',
    'ssd_postprocess',
]
