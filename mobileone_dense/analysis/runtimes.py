"""The deployment runtimes the latency benchmark times beside PyTorch.

- ``--onnx``: our deploy models exported by ``deploy.onnx_export.export_onnx`` (for segmentation
  the graph also upsamples the logits to the input size), in onnxruntime (:func:`onnx_runner`).
- ``--runtimes``: our deploy model *and* the task's MobileNetV2 baseline (BN folded), each as
  the very module PyTorch times (:class:`FlatOutputs`: the same forward, outputs flattened), in
  four runtimes (:func:`runtime_runners`): onnxruntime float32 and INT8
  (``deploy.quantization.quantize_onnx``, QDQ, per-channel weights) and ExecuTorch with the
  XNNPACK delegate, float32 and INT8 (``deploy.executorch_export``: PT2E, XNNPACK's quantizer).
  INT8 ranges are calibrated on the benchmark's random input and a few more random tensors:
  what is measured is speed, not accuracy.

Every runtime runs with the benchmark's thread count: ``torch.set_num_threads``, onnxruntime's
``intra_op_num_threads`` (no spinning between calls) and ExecuTorch's XNNPACK thread pool.
"""

import copy
import os.path as osp
import tempfile
from typing import Callable, List, Optional, Tuple

import torch
import torch.nn as nn

from ..deploy.executorch_export import (
    PteRunner,
    lower_to_pte,
    quantize_graph,
    require_executorch,
)
from ..deploy.onnx_export import export_module, export_onnx, onnx_session, require_onnx
from ..deploy.quantization import quantize_onnx
from .baselines import TensorMode

RUNTIME_FORMS = ('onnxruntime', 'onnxruntime INT8', 'ExecuTorch', 'ExecuTorch INT8')
# Extra random calibration inputs for the INT8 rows (besides the timed input).
CALIBRATION_INPUTS = 3


def flat_outputs(outputs) -> tuple:
    """A model's outputs (tensor, or nested tuples / lists of tensors) as a flat tuple."""
    if isinstance(outputs, torch.Tensor):
        return (outputs,)
    return tuple(t for item in outputs for t in flat_outputs(item))


class FlatOutputs(nn.Module):
    """``module(x)`` with its outputs flattened (the form exporters take); the timed module is
    its ``model`` attribute, so that exported node names start with ``/model/``."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.model = module

    def forward(self, x: torch.Tensor) -> tuple:
        return flat_outputs(self.model(x))


def onnx_runner(
    module: nn.Module, inputs: torch.Tensor, settings, label: str
) -> Optional[Callable[[], object]]:
    """``session.run`` of ``module`` exported by ``mobileone_dense.deploy.onnx_export.export_onnx``
    in an onnxruntime CPU session (``intra_op_num_threads = threads``), fed a numpy copy of
    ``inputs`` made beforehand; None (and a note) if onnx/onnxruntime/the exporter is missing."""
    try:
        require_onnx()
    except ImportError as error:
        settings.notes.append(f'--onnx skipped for {label}: {error}')
        return None
    model = module.model if isinstance(module, TensorMode) else module
    with tempfile.TemporaryDirectory() as tmp:
        path = osp.join(tmp, 'model.onnx')
        try:
            export_onnx(
                copy.deepcopy(model).cpu().to(memory_format=torch.contiguous_format),
                path,
                tuple(inputs.shape),
            )
        except TypeError as error:  # e.g. a bare backbone: export_onnx takes whole models
            settings.notes.append(f'--onnx skipped for {label}: {error}')
            return None
        # no busy-wait between models; the session holds the file's contents, so the file
        # may be deleted afterwards
        session = onnx_session(path, settings.threads, spin=False)
    feed = {session.get_inputs()[0].name: inputs.contiguous().cpu().numpy()}
    return lambda: session.run(None, feed)


def _calibration(inputs: torch.Tensor) -> List[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    extra = [torch.randn(inputs.shape, generator=generator) for _ in range(CALIBRATION_INPUTS)]
    return [inputs] + extra


def _onnx_runners(
    graph: FlatOutputs, inputs: torch.Tensor, threads: int, notes: List[str], label: str
) -> list:
    """(form, call) for onnxruntime float32 and INT8 of ``graph``."""
    names = [f'output_{i}' for i in range(len(graph(inputs)))]
    runners = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = [osp.join(tmp, 'float.onnx'), osp.join(tmp, 'int8.onnx')]
        export_module(graph, (inputs,), paths[0], ['input'], names, None, 17)
        feeds = [{'input': x.numpy()} for x in _calibration(inputs)]
        quantize_onnx(paths[0], paths[1], feeds)
        feed = {'input': inputs.numpy()}
        for form, path in zip(RUNTIME_FORMS[:2], paths):
            session = onnx_session(path, threads, spin=False)
            runners.append((form, lambda s=session: s.run(None, feed)))
    return runners


def _executorch_runners(
    graph: FlatOutputs, inputs: torch.Tensor, threads: int, notes: List[str], label: str
) -> list:
    """(form, call) for ExecuTorch XNNPACK float32 and INT8 of ``graph``; a program that
    XNNPACK refuses to load (``xnn_status_unsupported_parameter``, e.g. an INT8 layer of a
    random-weight model whose output range is degenerate) is left out with a line in ``notes``."""
    int8 = quantize_graph(graph, inputs, _calibration(inputs))
    runners = []
    for form, module in zip(RUNTIME_FORMS[2:], (graph, int8)):
        try:
            runner = PteRunner(lower_to_pte(module, inputs), threads)
        except RuntimeError as error:  # XNNPACK refuses to build the program (see the note)
            notes.append(f'--runtimes: {form} of {label} not timed: XNNPACK refused it ({error})')
            continue
        runners.append((form, lambda r=runner: r(inputs)))
    return runners


def runtime_runners(
    module: nn.Module, inputs: torch.Tensor, settings, label: str
) -> List[Tuple[str, Callable[[], object]]]:
    """``(form, call)`` for each runtime of :data:`RUNTIME_FORMS` that is installed, running
    ``module`` (eval, CPU) on a copy of ``inputs`` (batch as given); a note for each one
    skipped."""
    graph = FlatOutputs(copy.deepcopy(module).cpu().to(memory_format=torch.contiguous_format))
    graph.eval()
    inputs = inputs.detach().cpu().contiguous()
    runners = []
    for name, require, build in (
        ('onnxruntime', require_onnx, _onnx_runners),
        ('ExecuTorch', require_executorch, _executorch_runners),
    ):
        try:
            require()
        except ImportError as error:
            settings.notes.append(f'--runtimes: {name} skipped for {label}: {error}')
            continue
        with torch.no_grad():
            runners += build(graph, inputs, settings.threads, settings.notes, label)
    return runners
