"""INT8 ONNX models that keep their accuracy: the layers whose quantization costs the most stay
float, chosen by measuring on a selection set (``fallback.select_float_layers``).

The candidates are groups of our exports' node names (prefixes ending in ``/``, as ``--exclude``
takes them): first the modules under ``/model/`` (backbone, neck, head), then, inside those that
must stay float, their sub-modules (the backbone's stem and stages, the head's convs), then
theirs (the re-parameterized blocks of a stage). The metric is the task's (see
:data:`BUDGET_METRIC`): what the quantized model would lose on the selection set.
"""

import os.path as osp
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .fallback import FallbackResult, candidate_hierarchy, select_float_layers
from .onnx_evaluation import TASK_METRICS, agreement, evaluate_batches, top1_labels
from .onnx_export import onnx_session
from .quantization import NETWORK_OPS, NETWORK_SCOPE, Calibration, feeds_of

# The metric the budget (--max-drop) counts in, per task: detection and segmentation the
# evaluator's (points), classification the top-1 agreement with the float model (points of
# %, a bound on the top-1 drop that does not need many labelled images to be fine-grained).
BUDGET_METRIC = dict(
    detection='mAP@0.5', segmentation='mIoU', classification='top-1 agreement with float'
)


def candidate_groups(path: str, depth: int = 3) -> Tuple[List[str], Dict[str, List[str]]]:
    """The candidate groups of the graph at ``path``: the top-level modules under ``/model/``
    that hold a node which may be quantized (in graph order), and each group's sub-modules one
    level further, down to ``depth`` levels (a group with a single sub-module is not split).
    Every node that may be quantized is under a group (a node directly under ``/model/`` is its
    own), pooling too: an INT8 pooled feature can break a model as an INT8 conv can."""
    import onnx

    def prefixes(node) -> List[str]:
        modules = node.name[len(NETWORK_SCOPE) :].split('/')[:-1]  # the last part: the op
        return [
            NETWORK_SCOPE + '/'.join(modules[:level]) + '/'
            for level in range(1, min(depth, len(modules)) + 1)
        ] or [node.name]

    return candidate_hierarchy(
        prefixes(node)
        for node in onnx.load(path, load_external_data=False).graph.node
        if node.op_type in NETWORK_OPS and node.name.startswith(NETWORK_SCOPE)
    )


def search_float_layers(
    calibration: Calibration,
    metric_of: Callable[[object], float],
    float_metric: float,
    max_drop: float = 1.0,
    exclude: Sequence[str] = (),
    num_threads: Optional[int] = None,
    log: Optional[Callable[[str], None]] = None,
) -> FallbackResult:
    """The node-name prefixes to keep float so that the INT8 model's ``metric_of(session)`` on
    the selection set stays within ``max_drop`` of ``float_metric`` (the float model's on the
    same set); ``exclude`` stays float in every candidate model."""
    coarse, finer = candidate_groups(calibration.prepared)
    candidate = osp.join(calibration.work, 'candidate.onnx')

    def evaluate(float_layers) -> float:
        calibration.write(candidate, list(exclude) + sorted(float_layers))
        return metric_of(onnx_session(candidate, num_threads, spin=False))

    return select_float_layers(
        coarse, evaluate, float_metric, max_drop, children=lambda g: finer.get(g, []), log=log
    )


def selection_metric(task, float_session, meta, model, cfg, batches, dataset):
    """``metric_of(session)`` on the selection ``batches`` (preprocessed images of ``dataset``)
    in the budget's units (:data:`BUDGET_METRIC`), and the float model's value.

    ``session`` is anything that answers onnxruntime's ``run(None, feed)``: an ONNX session or
    an ExecuTorch program (``executorch_export.PteRunner``); ``meta`` says the task and the
    output layout (``read_metadata``)."""
    if task == 'classification':
        feeds = feeds_of(batches, task)
        reference = top1_labels(float_session, meta, feeds)
        return (lambda session: agreement(top1_labels(session, meta, feeds), reference)), 100.0
    key, _, scale = next(m for m in TASK_METRICS[task] if m[1] == BUDGET_METRIC[task])

    def metric_of(session):
        return float(evaluate_batches(session, meta, model, cfg, batches, dataset)[key]) * scale

    return metric_of, metric_of(float_session)


def add_fallback_arguments(parser) -> None:
    """The float-fallback options both INT8 tools take (``quantize_onnx.py``,
    ``export_executorch.py --int8``): ``--max-drop``, ``--no-fallback``, ``--selection-images``."""
    parser.add_argument(
        '--max-drop',
        type=float,
        default=1.0,
        help='accuracy budget of the float fallback, in points of the budget metric',
    )
    parser.add_argument(
        '--no-fallback', action='store_true', help='quantize every layer (no float fallback)'
    )
    parser.add_argument(
        '--selection-images',
        type=int,
        default=100,
        help='val images the fallback is chosen on (at most half of the split; the report '
        'uses the others)',
    )
