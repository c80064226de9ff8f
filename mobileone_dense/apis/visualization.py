"""Task-dispatching prediction and drawing for the demo (detection now; one entry point)."""
import os
import os.path as osp
from typing import Any

import numpy as np
import torch.nn as nn


def _is_detector(model: nn.Module) -> bool:
    from mmdet.models.detectors import BaseDetector
    return isinstance(model, BaseDetector)


def predict(model: nn.Module, image: np.ndarray) -> Any:
    """Run ``model`` on one BGR uint8 image with its config's test pipeline."""
    if _is_detector(model):
        from mmdet.apis import inference_detector
        return inference_detector(model, image)
    raise TypeError(f'no demo for {type(model).__name__} models yet (detectors are supported)')


def draw_prediction(model: nn.Module, image: np.ndarray, result: Any, out_file: str,
                    score_thr: float = 0.3) -> str:
    """Draw ``result`` on ``image`` into ``out_file`` (PNG); return a one-line summary."""
    folder = osp.dirname(osp.abspath(out_file))
    os.makedirs(folder, exist_ok=True)
    if _is_detector(model):
        from mmdet.visualization import DetLocalVisualizer
        visualizer = DetLocalVisualizer(name=f'mobileone_dense_demo_{id(result)}')
        visualizer.dataset_meta = model.dataset_meta
        visualizer.add_datasample('prediction', image[..., ::-1], result, draw_gt=False,
                                  pred_score_thr=score_thr, out_file=out_file)
        instances = result.pred_instances
        keep = instances.scores >= score_thr
        classes = model.dataset_meta.get('classes', ())
        labels = [classes[i] if i < len(classes) else str(i)
                  for i in instances.labels[keep].tolist()]
        return (f'{int(keep.sum())} detections with score >= {score_thr}'
                + (f': {", ".join(sorted(set(labels)))}' if labels else ''))
    raise TypeError(f'no demo for {type(model).__name__} models yet (detectors are supported)')
