"""INT8 post-training static quantization of exported models (onnxruntime, QDQ format).

Calibration reads ``N`` images of the config's **training** split through the config's own test
pipeline (so they are prepared exactly as evaluation images, but are never the images the
accuracy is measured on). The comparison with the float model is ``onnx_evaluation.py``, the
choice of the layers kept float ``quantization_fallback.py``. Any of our exports works: raw
network outputs (post-processed with the libraries' own code) or ``--end2end`` graphs. Only the
network is quantized (the nodes our exporters name ``/model/...``: convs, their activations,
pooling; weights per output channel by default): the end-to-end graphs' anchors, decoding, NMS,
argmax and softmax stay float. Quantizing the activations between the convs too (not only the
convs) lets onnxruntime chain INT8 convs without converting back to float between them.
"""

import os
import os.path as osp
import shutil
import tempfile
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch.nn as nn

from ..engine.deploy_checkpoints import write_atomically
from .equalization import equalize_onnx
from .onnx_data import preprocessed_batches, split_dataset, spread_indices
from .onnx_export import onnx_session

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


class Calibration:
    """A float ONNX model prepared for quantization and its calibrated activation ranges, from
    which INT8 files with different layers kept float are written without calibrating again.

    Use as a context manager (the prepared model and the ranges live in a temporary folder next
    to ``out_dir``), or call :meth:`close`.

    Args:
        float_path: the float model (one of our exports).
        feeds: calibration inputs (see :func:`calibration_feeds`).
        out_dir: where the INT8 files will go (the work folder is made there).
        method: ``'MinMax'``, ``'Entropy'`` or ``'Percentile'`` activation ranges.
        per_channel: one weight scale per output channel (else per tensor).
        percentile: the percentile of ``'Percentile'`` calibration.
        activation_type: ``'QUInt8'`` or ``'QInt8'`` activations (weights are QInt8).
        equalize: cross-layer equalization of the conv -> ReLU -> conv pairs first
            (``equalization.equalize_onnx``; its report is ``self.equalization``, else None).
    """

    def __init__(
        self,
        float_path: str,
        feeds: List[Dict[str, np.ndarray]],
        out_dir: str,
        method: str = 'MinMax',
        per_channel: bool = True,
        percentile: float = 99.999,
        activation_type: str = 'QUInt8',
        equalize: bool = False,
    ) -> None:
        from onnxruntime.quantization import CalibrationMethod
        from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data
        from onnxruntime.quantization.shape_inference import quant_pre_process

        if method not in METHODS:
            raise ValueError(f'calibration method must be one of {METHODS}, got {method!r}')
        if not feeds:
            raise ValueError('no calibration images: give --calib-images >= 1')
        self.per_channel, self.activation_type = per_channel, activation_type
        self.calibration = getattr(CalibrationMethod, method)
        os.makedirs(out_dir, exist_ok=True)
        self.work = tempfile.mkdtemp(dir=out_dir, prefix='.quantize.')
        self.equalization = None
        try:
            if equalize:
                equalized = osp.join(self.work, 'equalized.onnx')
                self.equalization = equalize_onnx(float_path, equalized)
                float_path = equalized
            self.prepared = osp.join(self.work, 'prepared.onnx')
            # shape inference + graph optimizations before quantizing (onnxruntime's advice);
            # symbolic shapes are skipped: the end-to-end graphs' NMS has data-dependent sizes
            quant_pre_process(float_path, self.prepared, skip_symbolic_shape=True)
            self.network = network_nodes(self.prepared)
            self.op_types = list(NETWORK_OPS if self.network else QUANTIZED_OPS)
            # Calibrated here rather than inside quantize_static, which cannot set the
            # histogram size: its Entropy calibration uses 128 bins for 128 quantized levels,
            # which leaves a single candidate threshold, the full range, i.e. MinMax.
            calibrator = create_calibrator(
                self.prepared,
                self.op_types,
                augmented_model_path=osp.join(self.work, 'augmented.onnx'),
                calibrate_method=self.calibration,
                extra_options=dict(
                    num_bins=ENTROPY_BINS if method == 'Entropy' else PERCENTILE_BINS,
                    num_quantized_bins=128,
                    percentile=percentile,
                ),
            )
            session = onnx_session(self.prepared)
            calibrator.collect_data(_Reader(feeds, [i.name for i in session.get_inputs()]))
            self.ranges = osp.join(self.work, 'ranges.json')
            save_tensors_data(calibrator.compute_data(), self.ranges)
            del calibrator, session
        except BaseException:
            self.close()
            raise

    def write(self, out_path: str, exclude: Sequence[str] = ()) -> List[str]:
        """Write the INT8 model to ``out_path`` (atomically) with the nodes of ``exclude``
        (names, or prefixes ending in ``/``) kept float; returns the names of those nodes."""
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

        excluded = expand_exclusions(self.prepared, exclude)

        def write(tmp: str) -> None:
            quantize_static(
                self.prepared,
                tmp,
                None,
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=self.op_types,
                nodes_to_quantize=self.network or None,
                per_channel=self.per_channel,
                activation_type=getattr(QuantType, self.activation_type),
                weight_type=QuantType.QInt8,
                nodes_to_exclude=excluded,
                calibrate_method=self.calibration,
                calibration_cache_path=self.ranges,
            )

        write_atomically(out_path, write, '.onnx')
        return excluded

    def close(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)

    def __enter__(self) -> 'Calibration':
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


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
    equalize: bool = False,
) -> List[str]:
    """Write the INT8 (QDQ) model of ``float_path`` to ``out_path`` (atomically), with the nodes
    of ``exclude`` (names, or prefixes ending in ``/`` such as ``/model/backbone/stages.0/``)
    kept float, and with ``exclude_first_last`` the first conv and the output convs too (other
    arguments: :class:`Calibration`). Returns the names of the nodes kept in float."""
    if method not in METHODS:
        raise ValueError(f'calibration method must be one of {METHODS}, got {method!r}')
    out_dir = osp.dirname(osp.abspath(out_path))
    with Calibration(
        float_path, feeds, out_dir, method, per_channel, percentile, activation_type, equalize
    ) as calibration:
        boundary = boundary_convs(calibration.prepared) if exclude_first_last else []
        return calibration.write(out_path, list(exclude) + boundary)
