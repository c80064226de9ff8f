"""INT8 ONNX models that keep their accuracy: the layers whose quantization costs the most stay
float, chosen by measuring on a selection set (``fallback.select_float_layers``).

The candidates are groups of our exports' node names (prefixes ending in ``/``, as ``--exclude``
takes them): first the modules two levels under ``/model/`` (the backbone's stem and stages, the
neck, the heads' convs), then, inside those that must stay float, the modules one level further
(the backbone's re-parameterized blocks). The metric is the task's (see :data:`BUDGET_METRIC`):
what the quantized model would lose on the selection set.
"""

import os.path as osp
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .fallback import FallbackResult, select_float_layers
from .onnx_export import onnx_session
from .quantization import NETWORK_OPS, NETWORK_SCOPE, Calibration

# The metric the budget (--max-drop) counts in, per task: detection and segmentation the
# evaluator's (points), classification the top-1 agreement with the float model (points of
# %, a bound on the top-1 drop that does not need many labelled images to be fine-grained).
BUDGET_METRIC = dict(
    detection='mAP@0.5', segmentation='mIoU', classification='top-1 agreement with float'
)


def candidate_groups(path: str) -> Tuple[List[str], Dict[str, List[str]]]:
    """The coarse candidates of the graph at ``path`` (module prefixes two levels under
    ``/model/`` that hold a quantized node, in graph order) and their finer groups (one level
    further; absent when a group has only one). Every node that may be quantized is under a
    candidate (a node directly under ``/model/`` is its own), pooling too: an INT8 pooled
    feature can break a model as an INT8 conv can."""
    import onnx

    coarse: List[str] = []
    finer: Dict[str, List[str]] = {}
    for node in onnx.load(path, load_external_data=False).graph.node:
        if node.op_type not in NETWORK_OPS or not node.name.startswith(NETWORK_SCOPE):
            continue
        modules = node.name[len(NETWORK_SCOPE) :].split('/')[:-1]  # the last part: the op
        if modules:
            group = NETWORK_SCOPE + '/'.join(modules[:2]) + '/'
            child = NETWORK_SCOPE + '/'.join(modules[:3]) + '/'
        else:
            group = child = node.name
        if group not in finer:
            coarse.append(group)
            finer[group] = []
        if child not in finer[group]:
            finer[group].append(child)
    # a group under another one (``/model/neck/gap/`` under ``/model/neck/``) goes with it
    coarse = [g for g in coarse if not any(g != o and g.startswith(o) for o in coarse)]
    return coarse, {g: finer[g] for g in coarse if len(finer[g]) > 1}


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
