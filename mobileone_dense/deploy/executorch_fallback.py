"""INT8 ExecuTorch programs that keep their accuracy: the modules whose quantization costs the
most stay float, chosen on a selection set by the search the ONNX path uses
(``fallback.select_float_layers``, metric as ``quantization_fallback.selection_metric``).

The candidates are the model's module names, coarse first: the top-level modules that hold a
conv or linear layer (backbone, neck, head), then, inside those that must stay float, their
sub-modules (the backbone's stem and stages), down to the blocks of a stage. A module left float
covers every layer under it (``executorch_export.quantize_graph``'s node filter).
"""

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .executorch_check import Batch, quantizable_modules
from .executorch_export import PteRunner, export_program
from .fallback import FallbackResult, candidate_hierarchy, select_float_layers
from .onnx_export import exportable_task
from .quantization_fallback import selection_metric


def module_groups(model: nn.Module, depth: int = 4) -> Tuple[List[str], Dict[str, List[str]]]:
    """The candidate groups of ``model``: the top-level modules holding a layer INT8 quantizes
    (definition order), and each group's sub-modules one level further, down to ``depth`` levels
    of the module path (a group with a single sub-module is not split)."""

    def prefixes(name: str) -> List[str]:
        parts = name.split('.')
        # the layer's parent modules, then the layer itself when it sits above ``depth``
        return ['.'.join(parts[:level]) for level in range(1, min(depth, len(parts)) + 1)]

    return candidate_hierarchy(prefixes(name) for name in quantizable_modules(model))


def search_float_modules(
    model: nn.Module,
    cfg,
    float_program: bytes,
    calibration: Sequence[torch.Tensor],
    selection: Sequence[Batch],
    dataset,
    max_drop: float = 1.0,
    exclude: Sequence[str] = (),
    num_threads: Optional[int] = None,
    log: Optional[Callable[[str], None]] = None,
) -> FallbackResult:
    """The modules to keep float so that the INT8 program's budget metric on the ``selection``
    batches (fixed-size images of ``dataset``) stays within ``max_drop`` of the float program's;
    ``exclude`` stays float in every candidate program. Each candidate is a full PT2E
    quantization + lowering, run in ``executorch.runtime``."""
    meta = dict(task=exportable_task(model), layout='raw')
    shape = tuple(selection[0][0].shape)
    metric_of, float_metric = selection_metric(
        meta['task'],
        PteRunner(float_program, num_threads),
        meta,
        model,
        cfg,
        list(selection),
        dataset,
    )

    def evaluate(float_modules) -> float:
        modules = list(exclude) + sorted(float_modules)
        program = export_program(model, shape, True, calibration, modules)
        try:
            runner = PteRunner(program, num_threads)
        except RuntimeError as error:
            # XNNPACK refuses some INT8 layers (xnn_status_unsupported_parameter, e.g. a
            # degenerate output range): a program that does not load is as bad as a collapsed one
            if log:
                log(f'  XNNPACK refused the program with {modules or "nothing"} float: {error}')
            return 0.0
        return metric_of(runner)

    roots, finer = module_groups(model)
    return select_float_layers(
        roots, evaluate, float_metric, max_drop, children=lambda g: finer.get(g, []), log=log
    )
