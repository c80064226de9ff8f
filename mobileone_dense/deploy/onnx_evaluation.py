"""Accuracy, size and latency of exported models (float or INT8) under onnxruntime, measured with
the config's own data, pipeline and evaluator, so that an ONNX file's metric is the one
``tools/test.py`` would give the PyTorch model.

Predictions are written into the data samples in the fields the mm* evaluators read; the
evaluation runs the config's ``val_evaluator`` on preprocessed batches (prepared once, reused for
every model compared on them).
"""

import copy
import os.path as osp
import statistics
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.evaluator import Evaluator
from mmengine.structures import InstanceData, PixelData

from .onnx_data import preprocessed_batches, split_dataset, spread_indices
from .onnx_export import onnx_session, ssd_postprocess
from .onnx_metadata import read_metadata
from .quantization import feeds_of, run_session

# What the comparison reports per task: (metric key of the evaluator, printed name, x100)
TASK_METRICS = dict(
    detection=[('coco/bbox_mAP', 'mAP', 100.0), ('coco/bbox_mAP_50', 'mAP@0.5', 100.0)],
    segmentation=[('mIoU', 'mIoU', 1.0)],
    classification=[('accuracy/top1', 'top-1', 1.0)],
)


def task_metrics(task: str, metrics: Dict[str, float]) -> Dict[str, float]:
    """The reports' figures of ``task`` from an evaluator's ``metrics`` (name -> percent, in the
    order of :data:`TASK_METRICS`): detection mAP and mAP@0.5, segmentation mIoU,
    classification top-1; 0 for a metric the evaluator did not return."""
    return {label: float(metrics.get(key, 0.0)) * scale for key, label, scale in TASK_METRICS[task]}


@torch.no_grad()
def onnx_predictions(
    session: Any, meta: Dict[str, Any], model: nn.Module, inputs: torch.Tensor, samples: list
) -> list:
    """``samples`` with the ONNX model's predictions in the fields mm* evaluators read
    (``pred_instances`` / ``pred_sem_seg`` / ``pred_score`` + ``pred_label``), like
    ``model.predict`` (``model``: its data preprocessor and heads' post-processing only)."""
    task, layout = meta['task'], meta['layout']
    outputs = run_session(session, feeds_of([(inputs, samples)], task)[0])
    if task == 'detection':
        if layout == 'raw':
            n = len(outputs) // 2
            return ssd_postprocess(outputs[:n], outputs[n:], model, samples)
        boxes, scores, labels, counts = (torch.from_numpy(o) for o in outputs)
        for i, sample in enumerate(samples):
            k = int(counts[i])
            sample.pred_instances = InstanceData(
                bboxes=boxes[i, :k], scores=scores[i, :k], labels=labels[i, :k]
            )
        return samples
    if task == 'segmentation':
        if layout == 'raw':  # mmseg's own post-processing: resize to the image, argmax
            return model.postprocess_result(torch.from_numpy(outputs[0]), samples)
        for labels, sample in zip(torch.from_numpy(outputs[0]), samples):
            size = sample.metainfo['ori_shape']
            resized = F.interpolate(labels[None, None].float(), size=size, mode='nearest')
            sample.pred_sem_seg = PixelData(data=resized[0].long())
        return samples
    if layout == 'raw':
        probs = torch.from_numpy(outputs[0]).softmax(1)
    else:  # top-k: the other classes' scores are unknown, 0 keeps the ranking
        probs = torch.zeros(
            len(samples), max(len(meta.get('classes') or []), int(outputs[1].max()) + 1)
        )
        probs.scatter_(1, torch.from_numpy(outputs[1]), torch.from_numpy(outputs[0]))
    for prob, sample in zip(probs, samples):
        sample.set_pred_score(prob).set_pred_label(prob.argmax(keepdim=True))
    return samples


def evaluate_batches(
    session: Any, meta: Dict[str, Any], model: nn.Module, cfg: Any, batches: list, dataset: Any
) -> Dict[str, float]:
    """The config's ``val_evaluator`` metrics of an onnxruntime ``session`` on preprocessed
    ``(inputs, data_samples)`` batches of ``dataset`` (the samples are copied, not changed)."""
    evaluator = Evaluator(cfg.val_evaluator)
    evaluator.dataset_meta = dataset.metainfo
    # mmdet's CocoMetric scores every image of its annotation file unless told which: a subset
    # of the split would count the other images' objects as missed
    image_ids = [s.metainfo['img_id'] for _, samples in batches for s in samples if 'img_id' in s]
    for metric in evaluator.metrics:
        if hasattr(metric, 'img_ids') and image_ids:
            metric.img_ids = image_ids
    count = 0
    for inputs, samples in batches:
        samples = copy.deepcopy(samples)
        evaluator.process(onnx_predictions(session, meta, model, inputs, samples))
        count += len(samples)
    return evaluator.evaluate(count)


def evaluate_onnx(
    path: str,
    model: nn.Module,
    cfg: Any,
    split: str = 'val',
    max_images: int = 0,
    num_threads: Optional[int] = None,
) -> Dict[str, float]:
    """The config's ``val_evaluator`` metrics of the ONNX model on ``split`` (all images, or
    ``max_images`` spread over it)."""
    dataset = split_dataset(cfg, split)
    batches = preprocessed_batches(model, dataset, spread_indices(len(dataset), max_images))
    session = onnx_session(path, num_threads, spin=False)
    return evaluate_batches(session, read_metadata(path), model, cfg, batches, dataset)


def top1_labels(
    session: Any, meta: Dict[str, Any], feeds: List[Dict[str, np.ndarray]]
) -> np.ndarray:
    """A classifier's top-1 class per image of ``feeds`` (raw logits or end-to-end top-k),
    shape ``(num_images,)``."""
    labels = []
    for feed in feeds:
        outputs = run_session(session, feed)
        labels.append(outputs[0].argmax(1) if meta['layout'] == 'raw' else outputs[1][:, 0])
    return np.concatenate(labels)


def agreement(labels: np.ndarray, reference: np.ndarray) -> float:
    """Percentage of images whose top-1 equals the reference model's."""
    return 100.0 * float(np.mean(np.asarray(labels) == np.asarray(reference)))


def interleaved_latency(
    paths: Sequence[str],
    feed: Dict[str, np.ndarray],
    repeats: int = 30,
    warmup: int = 3,
    num_threads: Optional[int] = None,
) -> List[float]:
    """Median milliseconds of one ``session.run`` per model on ``feed`` (batch 1), the models
    timed in turns (round-robin) so that load changes on the machine hit them alike."""
    sessions = [onnx_session(path, num_threads, spin=False) for path in paths]
    for _ in range(warmup):
        for session in sessions:
            run_session(session, feed)
    times: List[List[float]] = [[] for _ in sessions]
    for _ in range(repeats):
        for session, record in zip(sessions, times):
            start = time.perf_counter()
            run_session(session, feed)
            record.append((time.perf_counter() - start) * 1000)
    return [statistics.median(record) for record in times]


def compare_models(
    paths: Dict[str, str],
    model: nn.Module,
    cfg: Any,
    batches: list,
    dataset: Any,
    repeats: int = 30,
    num_threads: Optional[int] = None,
) -> List[Dict[str, Any]]:
    """One row per model (``paths``: name -> ONNX file, the float model first): the task's
    metrics on preprocessed ``batches`` of ``dataset``, file size (MB) and batch-1 latency (ms,
    median, the models timed in turns); classifiers also get ``agreement``, the percentage of
    images whose top-1 equals the first model's."""
    task = read_metadata(next(iter(paths.values())))['task']
    feeds = feeds_of(batches, task)
    rows, reference = [], None
    for name, path in paths.items():
        session = onnx_session(path, num_threads, spin=False)
        meta = read_metadata(path)
        metrics = evaluate_batches(session, meta, model, cfg, batches, dataset)
        row = dict(model=name, path=path, size_mb=osp.getsize(path) / 2**20, images=len(feeds))
        row.update(task_metrics(task, metrics))
        if task == 'classification':
            labels = top1_labels(session, meta, feeds)
            reference = labels if reference is None else reference
            row['agreement'] = agreement(labels, reference)
        rows.append(row)
    latencies = interleaved_latency(
        list(paths.values()), feeds[0], repeats, num_threads=num_threads
    )
    for row, ms in zip(rows, latencies):
        row['latency_ms'] = ms
    return rows
