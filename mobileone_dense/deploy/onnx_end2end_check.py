"""The end-to-end export contract: the ONNX file's outputs equal PyTorch's ``predict``.

:func:`check_end2end` runs an end-to-end file (``onnx_end2end``) and the model it was exported
from on the same real, preprocessed batches: detections are matched one to one (same label, box
within ``box_tol`` pixels, score within ``score_tol``); a detection on one side only is accepted
where rounding can decide it (:func:`unexplained_detections`). Label maps and top-k must be equal
except where PyTorch's own logits tie within ``tie_tol``. The rule is in docs/deployment.md.
"""

import copy
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
from torchvision.ops import box_iou

from ..errors import OnnxParityError
from .onnx_export import exportable_task, onnx_session


def match_detections(
    want: Dict[str, np.ndarray],
    have: Dict[str, np.ndarray],
    box_tol: float = 1e-3,
    score_tol: float = 1e-5,
) -> List[Tuple[int, int]]:
    """Pairs ``(i, j)``: detection ``i`` of ``want`` and its partner ``j`` in ``have``, one to
    one: same label, score within ``score_tol``, every coordinate within ``box_tol`` (dicts of
    ``boxes`` (K, 4), ``scores`` (K,), ``labels`` (K,) arrays)."""
    free = np.ones(len(have['scores']), bool)
    pairs = []
    for i, (box, score, label) in enumerate(zip(want['boxes'], want['scores'], want['labels'])):
        ok = (
            free
            & (have['labels'] == label)
            & (np.abs(have['scores'] - score) <= score_tol)
            & (np.abs(have['boxes'] - box).max(1, initial=0) <= box_tol)
        )
        if ok.any():
            j = int(np.flatnonzero(ok)[0])
            free[j] = False
            pairs.append((i, j))
    return pairs


def unexplained_detections(
    lone: Dict[str, np.ndarray],
    other: Dict[str, np.ndarray],
    cut: float,
    iou_threshold: float,
    score_tol: float = 1e-5,
) -> np.ndarray:
    """Which detections of ``lone`` (found on one side only) rounding cannot explain (bool mask).

    Two runtimes agree on scores to about ``score_tol``, so where scores are that close the two
    may decide differently, and such a detection is accepted when:

    - ``other`` (all detections of the other side) has one of the same label overlapping it by
      IoU >= ``iou_threshold`` (the NMS threshold) with a score within ``score_tol``: two
      near-tied boxes that suppress each other, kept the other way round; or
    - its score is within ``score_tol`` of ``cut`` (``score_thr``, or the lowest kept score when
      ``max_per_img`` were kept): in on one side, out on the other.

    Everything else is a real difference. Arrays as in :func:`match_detections`.
    """
    at_cut = np.abs(lone['scores'] - cut) <= score_tol
    if not len(other['scores']) or not len(lone['scores']):
        return ~at_cut
    iou = box_iou(
        torch.from_numpy(np.asarray(lone['boxes'], np.float64)),
        torch.from_numpy(np.asarray(other['boxes'], np.float64)),
    ).numpy()
    tied = (
        (lone['labels'][:, None] == other['labels'][None])
        & (np.abs(lone['scores'][:, None] - other['scores'][None]) <= score_tol)
        & (iou >= iou_threshold)
    )
    return ~(at_cut | tied.any(1))


def _tied(values: np.ndarray, expected: np.ndarray, got: np.ndarray, tie_tol: float) -> np.ndarray:
    """Where ``got`` equals ``expected`` (class indices along axis 1 of ``values``) or differs
    only between classes whose ``values`` differ by at most ``tie_tol`` x the largest magnitude
    (a choice decided by rounding). ``expected`` / ``got``: ``values``' shape without axis 1
    (label maps) or with ``k`` entries on it (top-k)."""
    if expected.ndim < values.ndim:
        expected, got = expected[:, None], got[:, None]
    a = np.take_along_axis(values, expected, 1)
    b = np.take_along_axis(values, np.clip(got, 0, values.shape[1] - 1), 1)
    return ((expected == got) | (np.abs(a - b) <= tie_tol * np.abs(values).max())).squeeze()


@torch.no_grad()
def check_end2end(
    model: nn.Module,
    path: str,
    batches: Sequence[Tuple[torch.Tensor, list]],
    num_threads: Optional[int] = None,
    box_tol: float = 1e-3,
    score_tol: float = 1e-5,
    tie_tol: float = 1e-5,
) -> Dict[str, Any]:
    """Compare the end-to-end file with PyTorch's ``predict`` on ``batches``; raise if they differ.

    Args:
        model: the deploy-form eval-mode model the file was exported from.
        path: the ONNX file.
        batches: ``(inputs (N, 3, H, W), data_samples)`` pairs as the model's data preprocessor
            returns them (detection: ``scale_factor`` and ``ori_shape`` in the metainfo).
        box_tol: largest accepted box coordinate difference, pixels.
        score_tol: largest accepted score difference.
        tie_tol: label differences are accepted where PyTorch's logits of the two classes
            differ by at most this x their largest magnitude.

    Returns:
        ``{'images': n, 'detections': n, 'at_cut': n, 'tied': n, 'max_box_diff',
        'max_score_diff', 'sizes': [(H, W), ...]}`` (detection counts; ``at_cut`` and ``tied``:
        detections on one side only that rounding explains, :func:`unexplained_detections`).
        Raises ``OnnxParityError`` naming the image and the mismatch.
    """
    task = exportable_task(model)
    session = onnx_session(path, num_threads)
    report = dict(
        images=0, detections=0, at_cut=0, tied=0, max_box_diff=0.0, max_score_diff=0.0, sizes=[]
    )
    for inputs, samples in batches:
        feed = {'input': inputs.cpu().float().numpy()}
        report['sizes'].append(tuple(inputs.shape[2:]))
        if task == 'detection':
            feed['scale_factor'] = np.array(
                [s.metainfo['scale_factor'] for s in samples], np.float32
            )
        outputs = session.run(None, feed)
        if task == 'detection':
            check_detections(model, inputs, samples, outputs, report, box_tol, score_tol)
        elif task == 'segmentation':
            logits = reference_logits(model, inputs)
            ok = _tied(logits, logits.argmax(1), outputs[0], tie_tol)
            if not ok.all():
                raise OnnxParityError(
                    f'label map differs from PyTorch at {int((~ok).sum())} '
                    f'pixels of input {tuple(inputs.shape)} (not ties)'
                )
        else:
            probs = model(inputs, mode='tensor').softmax(1).cpu().numpy()
            expected = np.argsort(-probs, 1, kind='stable')[:, : outputs[1].shape[1]]
            ok = _tied(probs, expected, outputs[1], tie_tol)
            score_diff = np.abs(np.take_along_axis(probs, outputs[1], 1) - outputs[0]).max()
            report['max_score_diff'] = max(report['max_score_diff'], float(score_diff))
            if not ok.all() or score_diff > score_tol:
                raise OnnxParityError(
                    f'top-k differs from PyTorch for input '
                    f'{tuple(inputs.shape)}: labels ok {ok.all()}, largest '
                    f'score difference {score_diff:.2e}'
                )
        report['images'] += inputs.shape[0]
    return report


def reference_logits(model: nn.Module, inputs: torch.Tensor) -> np.ndarray:
    """A segmentor's logits ``(N, C, H, W)`` at the input size, by mmseg's ``encode_decode``."""
    shape = tuple(inputs.shape[2:])
    metas = [dict(img_shape=shape, pad_shape=shape, ori_shape=shape)] * inputs.shape[0]
    return model.encode_decode(inputs, metas).cpu().numpy()


def check_detections(
    model: nn.Module,
    inputs: torch.Tensor,
    samples: list,
    outputs: list,
    report: dict,
    box_tol: float,
    score_tol: float,
) -> None:
    """Match the detections in ``outputs`` (``boxes`` (N, K, 4), ``scores`` (N, K), ``labels``
    (N, K), ``num_dets`` (N,): the end-to-end layout, see :func:`padded_detections`) with
    ``model.predict`` on ``inputs``; add the counts to ``report``; raise ``OnnxParityError``
    for a detection on one side only that rounding cannot explain."""
    expected = model.predict(inputs, copy.deepcopy(samples), rescale=True)
    head_cfg = model.bbox_head.test_cfg
    boxes, scores, labels, counts = outputs
    for i, sample in enumerate(expected):
        want = {
            k: getattr(sample.pred_instances, name).cpu().numpy()
            for k, name in (('boxes', 'bboxes'), ('scores', 'scores'), ('labels', 'labels'))
        }
        n = int(counts[i])
        have = dict(boxes=boxes[i, :n], scores=scores[i, :n], labels=labels[i, :n])
        pairs = match_detections(want, have, box_tol, score_tol)
        cut = float(head_cfg.get('score_thr', 0.0))
        if len(want['scores']) >= head_cfg.get('max_per_img', np.inf) and n:
            cut = max(cut, float(want['scores'].min()))
        iou_threshold = float(head_cfg.get('nms', {}).get('iou_threshold', 1.0))
        unexplained = []
        for side, other, matched in (
            (want, have, [p[0] for p in pairs]),
            (have, want, [p[1] for p in pairs]),
        ):
            lone = {k: np.delete(v, matched, axis=0) for k, v in side.items()}
            bad = unexplained_detections(lone, other, cut, iou_threshold, score_tol)
            unexplained.append(lone['scores'][bad])
            at_cut = int((np.abs(lone['scores'] - cut) <= score_tol).sum())
            report['at_cut'] += at_cut
            report['tied'] += len(lone['scores']) - at_cut - int(bad.sum())
        unexplained = np.concatenate(unexplained)
        if len(unexplained):
            where = sample.metainfo.get('img_path', f'image {report["images"] + i}')
            raise OnnxParityError(
                f'{where} at input {tuple(inputs.shape[2:])}: PyTorch predict has '
                f'{len(want["scores"])} detections, the exported model {n}, {len(pairs)} of them '
                f'equal '
                f'(label, box within {box_tol:g} px, score within {score_tol:g}); the detections '
                f'with scores {np.sort(unexplained)[::-1][:5].round(6).tolist()} are on one side '
                f'only, neither at the score cut {cut:.6f} nor tied with an overlapping box of '
                f'their label on the other side (IoU >= {iou_threshold:g})'
            )
        report['detections'] += n
        for a, b in pairs:
            report['max_box_diff'] = max(
                report['max_box_diff'], float(np.abs(want['boxes'][a] - have['boxes'][b]).max())
            )
            report['max_score_diff'] = max(
                report['max_score_diff'], float(abs(want['scores'][a] - have['scores'][b]))
            )


def padded_detections(results: Sequence[Dict[str, np.ndarray]]) -> list:
    """Per-image detections (dicts of ``boxes``, ``scores``, ``labels``) in the end-to-end
    layout :func:`check_detections` reads: ``[boxes (N, K, 4), scores (N, K), labels (N, K),
    num_dets (N,)]``, K the largest count, padded with zeros (labels -1)."""
    k = max([len(r['scores']) for r in results] + [1])
    boxes = np.zeros((len(results), k, 4), np.float32)
    scores = np.zeros((len(results), k), np.float32)
    labels = np.full((len(results), k), -1, np.int64)
    for i, result in enumerate(results):
        n = len(result['scores'])
        boxes[i, :n], scores[i, :n], labels[i, :n] = (
            result['boxes'],
            result['scores'],
            result['labels'],
        )
    counts = np.array([len(r['scores']) for r in results], np.int64)
    return [boxes, scores, labels, counts]
