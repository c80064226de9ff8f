"""INT8 post-training static quantization of exported models (onnxruntime, QDQ format), and the
side-by-side comparison with the float model: accuracy on the evaluation split, size, latency.

Calibration reads ``N`` images of the config's **training** split through the config's own test
pipeline (so they are prepared exactly as evaluation images, but are never the images the
accuracy is measured on); evaluation runs the config's ``val_evaluator`` on the ``val`` split
(mAP for detection, mIoU for segmentation, top-1 for classification). Any of our exports
works: raw network outputs (post-processed with the libraries' own code) or ``--end2end``
graphs. Only the network is quantized (the nodes our exporters name ``/model/...``: convs,
their activations, pooling; weights per output channel by default): the end-to-end graphs'
anchors, decoding, NMS, argmax and softmax stay float. Quantizing the activations between the
convs too (not only the convs) lets onnxruntime chain INT8 convs without converting back to
float between them.
"""

import os
import os.path as osp
import statistics
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.evaluator import Evaluator
from mmengine.structures import InstanceData, PixelData

from ..engine.deploy_checkpoints import write_atomically
from .onnx_data import preprocessed_batches, split_dataset, spread_indices
from .onnx_export import onnx_session, ssd_postprocess
from .onnx_metadata import read_metadata

METHODS = ('MinMax', 'Entropy', 'Percentile')
# Weighted ops; ``first/last`` exclusion looks for these.
QUANTIZED_OPS = ('Conv', 'Gemm', 'MatMul')
# Quantized inside the network, so that INT8 tensors flow from conv to conv.
NETWORK_OPS = QUANTIZED_OPS + (
    'Relu',
    'Clip',
    'Add',
    'Mul',
    'Concat',
    'GlobalAveragePool',
    'AveragePool',
    'MaxPool',
    'Resize',
    'Sigmoid',
)
# Histogram sizes: 2048 bins for 128 quantized levels (TensorRT's entropy calibration), the
# percentile calibrator's default for percentiles.
ENTROPY_BINS = PERCENTILE_BINS = 2048
# Our exporters trace the model as the attribute ``model`` of their wrapper.
NETWORK_SCOPE = '/model/'
# What the comparison reports per task: (metric key of the evaluator, printed name, x100)
TASK_METRICS = dict(
    detection=[('coco/bbox_mAP', 'mAP', 100.0), ('coco/bbox_mAP_50', 'mAP@0.5', 100.0)],
    segmentation=[('mIoU', 'mIoU', 1.0)],
    classification=[('accuracy/top1', 'top-1', 1.0)],
)


def feeds_of(batches: Sequence[tuple], task: str) -> List[Dict[str, np.ndarray]]:
    """onnxruntime inputs of preprocessed ``(inputs, data_samples)`` batches (detection graphs
    also get ``scale_factor``; raw graphs ignore it, see :func:`run_session`)."""
    feeds = []
    for inputs, samples in batches:
        feed = {'input': inputs.cpu().float().numpy()}
        if task == 'detection':
            feed['scale_factor'] = np.array(
                [s.metainfo['scale_factor'] for s in samples], np.float32
            )
        feeds.append(feed)
    return feeds


def run_session(session: Any, feed: Dict[str, np.ndarray]) -> list:
    """``session.run`` with only the inputs the graph has."""
    names = {i.name for i in session.get_inputs()}
    return session.run(None, {k: v for k, v in feed.items() if k in names})


def calibration_feeds(
    model: nn.Module, cfg: Any, num_images: int, task: str, split: str = 'train'
) -> List[Dict[str, np.ndarray]]:
    """``num_images`` images of ``split`` (spread over it), through the test pipeline and the
    model's data preprocessor, as onnxruntime feeds of batch 1."""
    dataset = split_dataset(cfg, split)
    if len(dataset) == 0:
        raise ValueError(f"the config's {split} split is empty: no calibration images")
    batches = preprocessed_batches(model, dataset, spread_indices(len(dataset), num_images))
    return feeds_of(batches, task)


class _Reader:
    """onnxruntime's ``CalibrationDataReader`` protocol over a list of feeds."""

    def __init__(self, feeds: List[Dict[str, np.ndarray]], input_names: Sequence[str]) -> None:
        self.feeds = [{k: v for k, v in feed.items() if k in input_names} for feed in feeds]
        self.position = 0

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        if self.position >= len(self.feeds):
            return None
        self.position += 1
        return self.feeds[self.position - 1]

    def rewind(self) -> None:
        self.position = 0


def boundary_convs(path: str) -> List[str]:
    """Names of the first Conv (reading the input) and of the last Conv/Gemm node(s) (whose
    outputs no other Conv/Gemm reads), in graph order."""
    import onnx

    graph = onnx.load(path, load_external_data=False).graph
    producer = {out: node for node in graph.node for out in node.output}
    weighted = [n for n in graph.node if n.op_type in QUANTIZED_OPS]
    first = [
        n.name for n in weighted if any(_reaches_input(i, producer, graph) for i in n.input[:1])
    ]
    consumers: Dict[str, List[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    last = [n.name for n in weighted if not _feeds_weighted(n, consumers)]
    return first[:1] + last


def expand_exclusions(path: str, exclude: Sequence[str]) -> List[str]:
    """``exclude`` with each entry that ends in ``/`` replaced by the names of the graph's nodes
    that start with it. Raises ``ValueError`` for an entry that names no node."""
    import onnx

    names = [node.name for node in onnx.load(path, load_external_data=False).graph.node]
    expanded = []
    for entry in exclude:
        matches = (
            [name for name in names if name.startswith(entry)]
            if entry.endswith('/')
            else [entry]
            if entry in names
            else []
        )
        if not matches:
            raise ValueError(
                f'--exclude {entry!r} names no node of the model (node names look '
                f'like {names[0]!r}; end a prefix with "/")'
            )
        expanded += [name for name in matches if name not in expanded]
    return expanded


def network_nodes(path: str) -> List[str]:
    """Names of the network's nodes (``/model/...``, as our exporters trace it); ``[]`` for
    graphs named otherwise."""
    import onnx

    graph = onnx.load(path, load_external_data=False).graph
    return [node.name for node in graph.node if NETWORK_SCOPE in node.name]


def _reaches_input(name: str, producer: dict, graph: Any) -> bool:
    """Whether tensor ``name`` comes from the graph input through non-weighted nodes only."""
    inputs = {i.name for i in graph.input}
    seen, stack = set(), [name]
    while stack:
        tensor = stack.pop()
        if tensor in inputs:
            return True
        node = producer.get(tensor)
        if node is None or node.op_type in QUANTIZED_OPS or tensor in seen:
            continue
        seen.add(tensor)
        stack.extend(node.input)
    return False


def _feeds_weighted(node: Any, consumers: dict) -> bool:
    """Whether any Conv/Gemm/MatMul node reads ``node``'s outputs (through other nodes)."""
    seen, stack = set(), list(node.output)
    while stack:
        tensor = stack.pop()
        for consumer in consumers.get(tensor, []):
            if consumer.op_type in QUANTIZED_OPS:
                return True
            if consumer.name not in seen:
                seen.add(consumer.name)
                stack.extend(consumer.output)
    return False


def quantize_onnx(
    float_path: str,
    out_path: str,
    feeds: List[Dict[str, np.ndarray]],
    method: str = 'MinMax',
    per_channel: bool = True,
    exclude: Sequence[str] = (),
    exclude_first_last: bool = False,
    percentile: float = 99.999,
    activation_type: str = 'QUInt8',
) -> List[str]:
    """Write the INT8 (QDQ) model of ``float_path`` to ``out_path`` (atomically).

    Args:
        feeds: calibration inputs (see :func:`calibration_feeds`).
        method: ``'MinMax'``, ``'Entropy'`` or ``'Percentile'`` activation ranges.
        per_channel: one weight scale per output channel (else per tensor).
        exclude: node names kept in float; an entry ending in ``/`` keeps every node whose
            name starts with it (e.g. ``/model/backbone/stages.0/``, a whole stage).
        exclude_first_last: also keep the first conv and the output convs in float.
        percentile: the percentile of ``'Percentile'`` calibration.
        activation_type: ``'QUInt8'`` or ``'QInt8'`` activations (weights are QInt8).

    Returns:
        The names of the nodes kept in float.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in METHODS:
        raise ValueError(f'calibration method must be one of {METHODS}, got {method!r}')
    if not feeds:
        raise ValueError('no calibration images: give --calib-images >= 1')
    folder = osp.dirname(osp.abspath(out_path))
    os.makedirs(folder, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix='.quantize.') as work:
        prepared = osp.join(work, 'prepared.onnx')
        # shape inference + graph optimizations before quantizing (onnxruntime's advice);
        # symbolic shapes are skipped: the end-to-end graphs' NMS has data-dependent sizes
        quant_pre_process(float_path, prepared, skip_symbolic_shape=True)
        network = network_nodes(prepared)
        excluded = expand_exclusions(prepared, exclude) + (
            boundary_convs(prepared) if exclude_first_last else []
        )
        op_types = list(NETWORK_OPS if network else QUANTIZED_OPS)
        calibration = getattr(CalibrationMethod, method)
        # Calibrated here rather than inside quantize_static, which cannot set the histogram
        # size: its Entropy calibration uses 128 bins for 128 quantized levels, which leaves a
        # single candidate threshold, the full range, i.e. MinMax.
        calibrator = create_calibrator(
            prepared,
            op_types,
            augmented_model_path=osp.join(work, 'augmented.onnx'),
            calibrate_method=calibration,
            extra_options=dict(
                num_bins=ENTROPY_BINS if method == 'Entropy' else PERCENTILE_BINS,
                num_quantized_bins=128,
                percentile=percentile,
            ),
        )
        session = onnx_session(prepared)
        calibrator.collect_data(_Reader(feeds, [i.name for i in session.get_inputs()]))
        cache = osp.join(work, 'ranges.json')
        save_tensors_data(calibrator.compute_data(), cache)
        del calibrator

        def write(tmp: str) -> None:
            quantize_static(
                prepared,
                tmp,
                None,
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=op_types,
                nodes_to_quantize=network or None,
                per_channel=per_channel,
                activation_type=getattr(QuantType, activation_type),
                weight_type=QuantType.QInt8,
                nodes_to_exclude=excluded,
                calibrate_method=calibration,
                calibration_cache_path=cache,
            )

        write_atomically(out_path, write, '.onnx')
    return excluded


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
    session = onnx_session(path, num_threads, spin=False)
    meta = read_metadata(path)
    dataset = split_dataset(cfg, split)
    evaluator = Evaluator(cfg.val_evaluator)
    evaluator.dataset_meta = dataset.metainfo
    indices = spread_indices(len(dataset), max_images)
    for inputs, samples in preprocessed_batches(model, dataset, indices):
        evaluator.process(onnx_predictions(session, meta, model, inputs, samples))
    return evaluator.evaluate(len(indices))


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


def compare_float_int8(
    float_path: str,
    int8_path: str,
    model: nn.Module,
    cfg: Any,
    split: str = 'val',
    max_images: int = 0,
    repeats: int = 30,
    num_threads: Optional[int] = None,
) -> List[Dict[str, Any]]:
    """One row per model (float, INT8): accuracy metrics on ``split``, file size (MB) and
    batch-1 latency (ms, median, interleaved)."""
    task = read_metadata(float_path)['task']
    rows = []
    for name, path in (('float32', float_path), ('int8', int8_path)):
        metrics = evaluate_onnx(path, model, cfg, split, max_images, num_threads)
        row = dict(model=name, path=path, size_mb=osp.getsize(path) / 2**20)
        for key, label, scale in TASK_METRICS[task]:
            row[label] = float(metrics.get(key, 0.0)) * scale
        rows.append(row)
    dataset = split_dataset(cfg, split)
    feed = feeds_of(preprocessed_batches(model, dataset, [0]), task)[0]
    for row, ms in zip(
        rows, interleaved_latency([float_path, int8_path], feed, repeats, num_threads=num_threads)
    ):
        row['latency_ms'] = ms
    return rows
