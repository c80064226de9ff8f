"""Deployment outside PyTorch: ONNX export (model and end to end), its metadata, the parity
checks between runtimes, and INT8 quantization. Sits above ``apis`` and below ``analysis``."""

from .onnx_export import check_onnx_parity, export_onnx, ssd_postprocess

__all__ = ['export_onnx', 'check_onnx_parity', 'ssd_postprocess']
