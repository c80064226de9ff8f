"""Cross-layer equalization (CLE) of conv -> ReLU -> conv pairs before INT8 calibration.

Nagel et al. 2019, "Data-Free Quantization Through Weight Equalization and Bias Correction",
section 4.1. For a producer conv (weights ``W1`` of shape ``(C, ...)``, bias ``b1`` of shape
``(C,)``) whose output channel ``c`` feeds, through a ReLU, only input channel ``c`` of a
consumer conv (a plain conv: ``W2[:, c]``; a depthwise conv with groups == channels: ``W2[c]``),
with ``r1_c = max|W1[c]|`` and ``r2_c`` the largest magnitude of ``W2``'s input channel ``c``,
the scale ``s_c = sqrt(r1_c / r2_c)`` (1 where either range is 0) gives

    W1[c] /= s_c,  b1[c] /= s_c,  W2's input channel c *= s_c,

after which both ranges are ``sqrt(r1_c * r2_c)``. The float function is unchanged because
``relu(x / s) = relu(x) / s`` for ``s > 0`` (and zero padding scales to zero padding); it is
not through ReLU6 (clipping at 6 does not commute with the scale), through an ``Add`` or a
squeeze-excite ``Mul``, nor where the ReLU's output is read elsewhere, so those are left out.
In a chain a conv is the consumer of one pair and the producer of the next, so the pairs are
swept in order until the scales converge.

:func:`equalize_convs` is the scale math (numpy, on weight arrays); :func:`equalize_onnx` finds
the pairs of an ONNX graph and writes an equalized copy (``tools/deploy/quantize_onnx.py
--equalize``).
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

# A sweep whose scales all lie within this of 1 (|log s|) ends the iteration: a 1 % imbalance
# is about one INT8 step (1/127 of a channel's range). Along a long chain (a backbone's 40-odd
# convs) a change at one end reaches the other only over many sweeps, so the balance is
# approached slowly; hence the cap on the sweeps.
TOLERANCE = 1e-2
MAX_SWEEPS = 100


@dataclass
class ConvWeights:
    """The arrays of one conv: ``weight`` ``(out channels, in channels / groups, *kernel)``,
    ``bias`` ``(out channels,)`` or ``None``; ``depthwise``: groups == in == out channels."""

    weight: np.ndarray
    bias: Optional[np.ndarray] = None
    depthwise: bool = False


@dataclass
class EqualizationReport:
    """What :func:`equalize_convs` did: ``pairs`` (producer, consumer) equalized, the sweeps it
    took, and the largest |weight| of the convs involved before and after."""

    pairs: List[Tuple[str, str]] = field(default_factory=list)
    sweeps: int = 0
    converged: bool = True
    max_weight_before: float = 0.0
    max_weight_after: float = 0.0

    def summary(self) -> str:
        if not self.pairs:
            return 'cross-layer equalization: no conv -> ReLU -> conv pair found'
        return (
            f'cross-layer equalization: {len(self.pairs)} conv -> ReLU -> conv pairs, '
            f'{self.sweeps} sweeps{"" if self.converged else " (not converged)"}; largest '
            f'|weight| of their convs {self.max_weight_before:.4g} -> {self.max_weight_after:.4g}'
        )


def input_channel_ranges(conv: ConvWeights) -> np.ndarray:
    """``(in channels,)``: the largest |weight| that reads each input channel."""
    magnitude = np.abs(conv.weight).reshape(conv.weight.shape[0], conv.weight.shape[1], -1)
    return magnitude.max(axis=(1, 2)) if conv.depthwise else magnitude.max(axis=(0, 2))


def output_channel_ranges(conv: ConvWeights) -> np.ndarray:
    """``(out channels,)``: the largest |weight| of each output channel."""
    return np.abs(conv.weight).reshape(conv.weight.shape[0], -1).max(axis=1)


def pair_scales(producer: ConvWeights, consumer: ConvWeights) -> np.ndarray:
    """``(C,)`` float64 scales ``sqrt(r1 / r2)`` of one pair, 1 where either range is 0."""
    r1 = output_channel_ranges(producer).astype(np.float64)
    r2 = input_channel_ranges(consumer).astype(np.float64)
    scales = np.ones_like(r1)
    live = (r1 > 0) & (r2 > 0)
    scales[live] = np.sqrt(r1[live] / r2[live])
    return scales


def apply_scales(producer: ConvWeights, consumer: ConvWeights, scales: np.ndarray) -> None:
    """Divide the producer's output channels (weights and bias) by ``scales`` and multiply the
    consumer's input channels by them, in place."""
    shape = (-1,) + (1,) * (producer.weight.ndim - 1)
    producer.weight[...] = producer.weight / scales.reshape(shape)
    if producer.bias is not None:
        producer.bias[...] = producer.bias / scales
    axis_shape = [1] * consumer.weight.ndim
    axis_shape[0 if consumer.depthwise else 1] = -1
    consumer.weight[...] = consumer.weight * scales.reshape(axis_shape)


def equalize_convs(
    convs: Dict[str, ConvWeights],
    pairs: Sequence[Tuple[str, str]],
    max_sweeps: int = MAX_SWEEPS,
    tolerance: float = TOLERANCE,
) -> EqualizationReport:
    """Equalize ``pairs`` (names of ``convs``: producer, consumer; in graph order) in place,
    sweeping over them until every scale of a sweep is within ``tolerance`` of 1 (|log s|) or
    ``max_sweeps`` sweeps are done. The arrays must be writable; they keep their dtype."""
    names = sorted({name for pair in pairs for name in pair})
    report = EqualizationReport(pairs=list(pairs))
    if not pairs:
        return report
    # sweeps in float64, one rounding to the arrays' dtype at the end (not one per sweep)
    work = {
        n: ConvWeights(
            convs[n].weight.astype(np.float64),
            None if convs[n].bias is None else convs[n].bias.astype(np.float64),
            convs[n].depthwise,
        )
        for n in names
    }
    report.max_weight_before = max(float(np.abs(work[n].weight).max()) for n in names)
    report.converged = False
    for sweep in range(1, max_sweeps + 1):
        largest_change = 0.0
        for producer, consumer in pairs:
            scales = pair_scales(work[producer], work[consumer])
            apply_scales(work[producer], work[consumer], scales)
            largest_change = max(largest_change, float(np.abs(np.log(scales)).max()))
        report.sweeps = sweep
        if largest_change <= tolerance:
            report.converged = True
            break
    for n in names:
        convs[n].weight[...] = work[n].weight
        if convs[n].bias is not None:
            convs[n].bias[...] = work[n].bias
    report.max_weight_after = max(float(np.abs(work[n].weight).max()) for n in names)
    return report


# --- the ONNX adapter --------------------------------------------------------------------------


def _constants(graph) -> Dict[str, np.ndarray]:
    """Tensor name -> value of the graph's constants: initializers, ``Constant`` nodes and
    ``Identity`` nodes of an initializer (the TorchScript exporter shares equal tensors so)."""
    from onnx import numpy_helper

    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == 'Constant' and node.attribute and node.attribute[0].name == 'value':
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        elif node.op_type == 'Identity' and node.input[0] in values:
            values[node.output[0]] = values[node.input[0]]
    return values


def _label(node) -> str:
    """A node's name, or its first output's where it has none (names are optional in ONNX)."""
    return node.name or node.output[0]


def _group(node) -> int:
    return next((a.i for a in node.attribute if a.name == 'group'), 1)


def _is_depthwise(node, weight: np.ndarray) -> bool:
    """Whether Conv ``node`` with ``weight`` has groups == in channels == out channels."""
    return weight.shape[1] == 1 and _group(node) == weight.shape[0] > 1


def find_pairs(graph) -> List[Tuple[object, object]]:
    """The (producer Conv, consumer Conv) nodes of ``graph`` joined by a ``Relu`` that is the
    producer's only reader and whose output only the consumer reads (neither is a graph
    output), with constant weights and bias, the consumer a plain conv (group 1) or depthwise
    (group == its in and out channels == the producer's out channels). In graph order."""
    constants = _constants(graph)
    outputs = {o.name for o in graph.output}
    readers: Dict[str, list] = {}
    for node in graph.node:
        for name in set(_reads(node)):
            readers.setdefault(name, []).append(node)
    producer_of = {out: node for node in graph.node for out in node.output}
    pairs = []
    for relu in graph.node:
        if relu.op_type != 'Relu':
            continue
        producer = producer_of.get(relu.input[0])
        consumers = readers.get(relu.output[0], [])
        if (
            producer is None
            or producer.op_type != 'Conv'
            or len(consumers) != 1
            or consumers[0].op_type != 'Conv'
            or list(consumers[0].input[:1]) != [relu.output[0]]
            or readers.get(relu.input[0]) != [relu]
            or {relu.input[0], relu.output[0]} & outputs
        ):
            continue
        consumer = consumers[0]
        weights = [n for n in producer.input[1:] if n] + list(consumer.input[1:2])
        if not all(name in constants for name in weights):
            continue
        channels = constants[producer.input[1]].shape[0]
        weight = constants[consumer.input[1]]
        if (_group(consumer) == 1 and weight.shape[1] == channels) or (
            _is_depthwise(consumer, weight) and weight.shape[0] == channels
        ):
            pairs.append((producer, consumer))
    return pairs


def equalize_onnx(
    path: str, out_path: str, max_sweeps: int = MAX_SWEEPS, tolerance: float = TOLERANCE
) -> EqualizationReport:
    """Write a copy of the ONNX model at ``path`` to ``out_path`` with the conv -> ReLU -> conv
    pairs of :func:`find_pairs` equalized (:func:`equalize_convs`; pairs named by their node
    names). The weights keep their dtype; each changed tensor becomes an initializer of its own
    (a tensor the exporter shared with other nodes is not changed for them)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(path)
    graph = model.graph
    constants = _constants(graph)
    found = find_pairs(graph)
    nodes = {_label(node): node for pair in found for node in pair}
    convs = {
        name: ConvWeights(
            np.array(constants[node.input[1]]),
            np.array(constants[node.input[2]]) if len(node.input) > 2 and node.input[2] else None,
            _is_depthwise(node, constants[node.input[1]]),
        )
        for name, node in nodes.items()
    }
    report = equalize_convs(
        convs,
        [(_label(p), _label(c)) for p, c in found],
        max_sweeps=max_sweeps,
        tolerance=tolerance,
    )
    taken = {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output}
    replaced = set()
    for name, node in nodes.items():
        for index, array in ((1, convs[name].weight), (2, convs[name].bias)):
            if array is None:
                continue
            new_name = f'{node.input[index]}.equalized'
            while new_name in taken:
                new_name += '_'
            taken.add(new_name)
            replaced.add(node.input[index])
            graph.initializer.append(numpy_helper.from_array(array, new_name))
            node.input[index] = new_name
    _drop_unread(graph, replaced)
    onnx.save(model, out_path)
    return report


def _reads(node) -> List[str]:
    """The names ``node`` reads: its inputs, and what its subgraphs (If, Loop) read."""
    names = list(node.input)
    for attribute in node.attribute:
        for body in list(attribute.graphs) + ([attribute.g] if attribute.HasField('g') else []):
            names += [o.name for o in body.output]
            names += [name for inner in body.node for name in _reads(inner)]
    return names


def _read_names(graph) -> set:
    """Names read by the graph's nodes (outer-scope reads of subgraphs too) and outputs."""
    return {o.name for o in graph.output} | {n for node in graph.node for n in _reads(node)}


def _drop_unread(graph, names: set) -> None:
    """Remove the tensors ``names`` that nothing reads any more (the originals of the tensors
    :func:`equalize_onnx` replaced): initializers, and ``Identity``/``Constant`` nodes with
    whatever they alone read."""
    producer_of = {out: node for node in graph.node for out in node.output}
    initializers = {t.name: t for t in graph.initializer}
    names = set(names)
    while names:
        read = _read_names(graph) | {i.name for i in graph.input}  # an initializer's default
        name = names.pop()
        if name in read:
            continue
        node = producer_of.get(name)
        if node is not None and node.op_type in ('Identity', 'Constant'):
            graph.node.remove(node)
            names.update(node.input)
        elif name in initializers and node is None:
            graph.initializer.remove(initializers.pop(name))
