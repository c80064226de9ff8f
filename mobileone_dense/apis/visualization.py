"""Drawing of predictions for the demo: one entry point for every task (prediction itself:
``prediction.py``)."""

import os
import os.path as osp
from typing import Any, List, Sequence, Tuple

import cv2
import numpy as np
import torch.nn as nn

from ..models.tasks import model_task


class Drawer:
    """Draws a model's predictions on its input images, the same way for every caller (the
    image demo, its batches and videos, the quickstart; ``demo/onnx_demo.py`` redraws the same
    pictures without torch).

    ``drawer(image, result)`` -> (BGR drawing, one-line summary) for a BGR uint8 ``image`` and
    the data sample predicted for it. Detection: mmdet's ``DetLocalVisualizer`` (boxes with
    score >= ``score_thr``, the dataset palette, ``"class: score"`` labels), one instance per
    drawer (mmengine keeps every visualizer instance by name); the drawing has the image's size.
    Segmentation and classification: our overlay with a legend and our top-5 panel (see
    :func:`draw_segmentation`), right of the image: the drawing is wider.
    """

    def __init__(self, model: nn.Module, score_thr: float = 0.3):
        self.task = model_task(model)
        self.meta = model.dataset_meta or {}
        self.score_thr = score_thr
        self._visualizer = None

    def __call__(self, image: np.ndarray, result: Any) -> Tuple[np.ndarray, str]:
        if self.task == 'detection':
            return self._detections(image, result)
        classes = self.meta.get('classes', ())
        if self.task == 'classification':
            drawing, top = draw_classification(image, result.pred_score.cpu().numpy(), classes)
            return drawing, 'top-{}: '.format(len(top)) + ', '.join(f'{n} {s:.2f}' for n, s in top)
        labels = result.pred_sem_seg.data[0].cpu().numpy()
        palette = self.meta.get('palette') or _default_palette(len(classes))
        drawing, present = draw_segmentation(image, labels, classes, palette)
        return drawing, f'{len(present)} classes: ' + ', '.join(
            f'{name} {share:.0%}' for name, share in present
        )

    def _detections(self, image: np.ndarray, result: Any) -> Tuple[np.ndarray, str]:
        if self._visualizer is None:
            from mmdet.visualization import DetLocalVisualizer

            self._visualizer = DetLocalVisualizer(name=f'mobileone_dense_demo_{id(self)}')
            self._visualizer.dataset_meta = self.meta
        self._visualizer.add_datasample(
            'prediction', image[..., ::-1], result, draw_gt=False, pred_score_thr=self.score_thr
        )
        drawing = np.ascontiguousarray(self._visualizer.get_image()[..., ::-1])  # RGB -> BGR
        instances = result.pred_instances
        keep = instances.scores >= self.score_thr
        classes = self.meta.get('classes', ())
        labels = instances.labels[keep].tolist()
        names = [classes[i] if i < len(classes) else str(i) for i in labels]
        return drawing, f'{int(keep.sum())} detections with score >= {self.score_thr}' + (
            f': {", ".join(sorted(set(names)))}' if names else ''
        )


def draw_prediction(
    model: nn.Module, image: np.ndarray, result: Any, out_file: str, score_thr: float = 0.3
) -> str:
    """Draw ``result`` on ``image`` (as :class:`Drawer`) into ``out_file``; return the one-line
    summary."""
    drawing, summary = Drawer(model, score_thr)(image, result)
    write_image(out_file, drawing)
    return summary


def write_image(out_file: str, drawing: np.ndarray) -> None:
    """Write a BGR drawing (its folder made); an error that names the file if it fails."""
    os.makedirs(osp.dirname(osp.abspath(out_file)), exist_ok=True)
    if not cv2.imwrite(out_file, drawing):
        raise OSError(f'could not write {out_file!r} (give a .png path in a writable folder)')


def draw_classification(
    image: np.ndarray, scores: np.ndarray, classes: Sequence[str], k: int = 5
) -> Tuple[np.ndarray, List[Tuple[str, float]]]:
    """The BGR ``image`` with a panel right of it listing the ``k`` highest ``scores`` (softmax
    probabilities, one per class) as class name, score and a bar; returns the drawing and the
    (class name, score) pairs, highest first."""
    order = np.argsort(-scores)[:k]
    top = [(classes[i] if i < len(classes) else str(i), float(scores[i])) for i in order]
    row, width = 22, 260
    panel = np.full((max(image.shape[0], row * (len(top) + 1)), width, 3), 255, np.uint8)
    for j, (name, score) in enumerate(top):
        y = 6 + j * row
        cv2.rectangle(panel, (8, y), (8 + int(80 * score), y + 16), (80, 160, 80), -1)
        cv2.putText(
            panel,
            f'{score:.2f} {name}'[:34],
            (94, y + 13),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.45,
            (0, 0, 0),
            1,
            cv2.LINE_AA,
        )
    canvas = np.full((panel.shape[0], image.shape[1] + width, 3), 255, np.uint8)
    canvas[: image.shape[0], : image.shape[1]] = image
    canvas[:, image.shape[1] :] = panel
    return canvas, top


def _default_palette(num_classes: int) -> List[Tuple[int, int, int]]:
    rng = np.random.default_rng(0)
    return [tuple(int(c) for c in rng.integers(0, 256, 3)) for _ in range(num_classes)]


def draw_segmentation(
    image: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    palette: Sequence[Sequence[int]],
    opacity: float = 0.5,
) -> Tuple[np.ndarray, List[Tuple[str, float]]]:
    """Colour overlay of ``labels`` (H, W class indices) on a BGR ``image``, plus a legend.

    The legend (a panel right of the image) lists the classes present, largest first, with their
    colour and share of the pixels. ``palette`` is RGB, as in mmseg's dataset metainfo. (mmseg's
    ``SegLocalVisualizer`` writes class names onto the regions instead, unreadable on small ones,
    and has no legend.)
    Returns the BGR drawing and the (class name, share) pairs.
    """
    colours = np.array([tuple(c)[::-1] for c in palette], dtype=np.uint8)  # RGB -> BGR
    valid = labels < len(colours)
    overlay = image.copy()
    overlay[valid] = (image[valid] * (1 - opacity) + colours[labels[valid]] * opacity).astype(
        np.uint8
    )
    ids, counts = np.unique(labels[valid], return_counts=True)
    order = np.argsort(-counts)
    present = [
        (classes[i] if i < len(classes) else str(i), c / labels.size)
        for i, c in zip(ids[order].tolist(), counts[order].tolist())
    ]
    row, swatch, width = 22, 16, 220
    legend = np.full((max(image.shape[0], row * (len(present) + 1)), width, 3), 255, np.uint8)
    for k, ((name, share), i) in enumerate(zip(present, ids[order].tolist())):
        y = 6 + k * row
        cv2.rectangle(legend, (8, y), (8 + swatch, y + swatch), colours[i].tolist(), -1)
        cv2.rectangle(legend, (8, y), (8 + swatch, y + swatch), (0, 0, 0), 1)
        cv2.putText(
            legend,
            f'{name} {share:.0%}',
            (8 + swatch + 8, y + swatch - 3),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.45,
            (0, 0, 0),
            1,
            cv2.LINE_AA,
        )
    canvas = np.full((legend.shape[0], image.shape[1] + width, 3), 255, np.uint8)
    canvas[: image.shape[0], : image.shape[1]] = overlay
    canvas[:, image.shape[1] :] = legend
    return canvas, present
