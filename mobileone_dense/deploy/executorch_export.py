"""ExecuTorch export of deploy models: a ``.pte`` file for the XNNPACK delegate, float32 or INT8.

The program computes the raw outputs of the ONNX export (:class:`.onnx_export.RawOutputs`, the
same module traced by ``torch.export``): classification ``logits`` ``(1, classes)``, detection
the SSD head's ``cls_score_<i>`` then ``bbox_pred_<i>`` per level (decoding and NMS run outside
the program: mmdet's own through :func:`.onnx_export.ssd_postprocess`, or numpy alone through
:func:`.numpy_postprocess.ssd_detections`; ExecuTorch has no NMS kernel), segmentation
``seg_logits`` ``(1, classes, H, W)`` at the input size. The input is fixed: ``(1, 3, H, W)``
float32, the image after the config's test transforms and data preprocessor, recorded with
everything else a consumer needs in a JSON file beside the ``.pte`` (:func:`metadata_path`).

INT8 (:func:`quantize_graph`): PT2E post-training quantization with XNNPACK's quantizer
(symmetric INT8, per-channel weights, static activation ranges from histogram observers run
on calibration batches); ``float_modules`` names modules of the model (``backbone.stem``,
``backbone.stages.0``: a module and everything in it) left float.
"""

import json
import os.path as osp
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

import torch
import torch.nn as nn

from ..engine.deploy_checkpoints import max_relative_difference, write_atomically
from .onnx_export import RawOutputs, exportable_task, output_names, reference_outputs
from .onnx_metadata import PREFIX, detection_decoding, export_metadata, output_descriptions

INSTALL_HINT = 'pip install .[mobile]  (or: pip install executorch==1.5.1)'
# The ExecuTorch version the export was written and checked with (setup.py's `mobile` extra).
EXECUTORCH_VERSION = '1.5.1'


def require_executorch() -> None:
    """Import executorch (with its runtime and the XNNPACK backend) and torchao, or fail with
    the command that installs them."""
    try:
        import executorch.runtime  # noqa: F401
        import torchao  # noqa: F401
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import (  # noqa: F401
            XnnpackPartitioner,
        )
    except ImportError as error:
        raise ImportError(
            f'ExecuTorch export needs executorch {EXECUTORCH_VERSION}, which is not installed '
            f'({error}): {INSTALL_HINT}'
        ) from error


def traced_graph(model: nn.Module) -> RawOutputs:
    """The module ``torch.export`` traces: ``model``'s raw outputs as a flat tuple (eval)."""
    if model.training:
        raise ValueError('export an eval-mode model (model.eval()), as init_model returns it')
    return RawOutputs(model, exportable_task(model)).eval()


def check_module_names(model: nn.Module, names: Iterable[str]) -> List[str]:
    """``names`` as given, after checking that each is a submodule of ``model`` (``ValueError``
    naming the first that is not, with examples of valid names)."""
    known = dict(model.named_modules())
    names = list(names)
    for name in names:
        if name not in known:
            examples = [n for n in known if n.count('.') <= 1 and n][:6]
            raise ValueError(
                f'{name!r} is no module of the model; module names look like {examples}'
            )
    return names


def quantize_graph(
    graph: RawOutputs,
    example: torch.Tensor,
    calibration: Sequence[torch.Tensor],
    float_modules: Sequence[str] = (),
) -> nn.Module:
    """PT2E INT8 version of ``graph`` (a ``torch.fx.GraphModule``), calibrated on
    ``calibration`` (``(1, 3, H, W)`` batches shaped as ``example``).

    ``float_modules``: module names of ``graph.model`` (e.g. ``backbone.stages.0``) whose
    operations stay float: XNNPACK's quantizer annotates every other node.
    """
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer.utils import get_module_name_filter

    if not calibration:
        raise ValueError('no calibration batches: INT8 needs at least one')
    names = check_module_names(graph.model, float_modules)
    captured = torch.export.export(graph, (example,), strict=False).module()
    quantizer = XNNPACKQuantizer().set_global(
        get_symmetric_quantization_config(is_per_channel=True)
    )
    if names:
        # set_module_name(name, None) is refused by this quantizer ("not supported yet"); a
        # filter that skips the nodes traced inside those modules leaves them float instead
        filters = [get_module_name_filter(f'model.{name}') for name in names]
        quantizer.set_filter_function(lambda node: not any(f(node) for f in filters))
    prepared = prepare_pt2e(captured, quantizer)
    with torch.no_grad():
        for batch in calibration:
            prepared(batch)
    return convert_pt2e(prepared)


def lower_to_pte(module: nn.Module, example: torch.Tensor) -> bytes:
    """``torch.export`` of ``module`` on ``example``, lowered to the XNNPACK delegate: the bytes
    of the ``.pte`` program."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    with torch.no_grad():
        exported = torch.export.export(module, (example,), strict=False)
        edge = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()])
        return edge.to_executorch().buffer


def export_program(
    model: nn.Module,
    input_shape: Sequence[int],
    int8: bool = False,
    calibration: Sequence[torch.Tensor] = (),
    float_modules: Sequence[str] = (),
) -> bytes:
    """The ``.pte`` bytes of ``model`` (deploy form, eval) for a fixed ``(1, 3, H, W)`` input:
    float32, or with ``int8`` quantized as :func:`quantize_graph` says."""
    require_executorch()
    if len(input_shape) != 4 or input_shape[0] != 1:
        raise ValueError(f'input_shape must be (1, 3, H, W), got {tuple(input_shape)}')
    graph = traced_graph(model)
    example = torch.zeros(tuple(input_shape))
    module = quantize_graph(graph, example, calibration, float_modules) if int8 else graph
    return lower_to_pte(module, example)


def set_threads(num_threads: Optional[int]) -> None:
    """Threads of ExecuTorch's XNNPACK thread pool (process-wide; ``None``: leave it)."""
    if num_threads:
        from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

        _unsafe_reset_threadpool(int(num_threads))


class PteRunner:
    """A ``.pte`` program (path or bytes) loaded by ``executorch.runtime``; ``runner(x)`` runs
    its ``forward`` on ``x`` ``(1, 3, H, W)`` and returns the outputs as float32 tensors.

    It also answers onnxruntime's session calls (``get_inputs()``, ``run(None, {'input': x})``
    with numpy arrays), so that the INT8 evaluation of ``quantization`` runs it unchanged.
    """

    def __init__(self, program: Union[str, bytes], num_threads: Optional[int] = None) -> None:
        require_executorch()
        from executorch.runtime import Runtime

        set_threads(num_threads)
        self.program = Runtime.get().load_program(program)
        self.method = self.program.load_method('forward')

    def __call__(self, inputs: torch.Tensor) -> List[torch.Tensor]:
        return list(self.method.execute([inputs.detach().float().contiguous()]))

    def get_inputs(self) -> list:
        return [type('Input', (), {'name': 'input'})()]

    def run(self, _names: Any, feed: Dict[str, Any]) -> list:
        return [o.numpy() for o in self(torch.from_numpy(feed['input']))]


def check_pte(model: nn.Module, runner: PteRunner, batches: Sequence[torch.Tensor]) -> float:
    """Largest relative difference (``max|pte - torch| / max|torch|`` per output) between the
    program and the PyTorch model's raw outputs on ``batches`` (``(1, 3, H, W)`` each)."""
    errors = []
    for batch in batches:
        expected = reference_outputs(model, batch)
        got = runner(batch)
        shapes = [tuple(o.shape) for o in got], [tuple(o.shape) for o in expected]
        if shapes[0] != shapes[1]:
            raise ValueError(f'output shapes differ: ExecuTorch {shapes[0]}, PyTorch {shapes[1]}')
        errors.append(max_relative_difference(got, [e.cpu() for e in expected]))
    return max(errors)


def metadata_path(pte_path: str) -> str:
    """The JSON beside a ``.pte`` file: ``model.pte`` -> ``model.json``."""
    return osp.splitext(pte_path)[0] + '.json'


def pte_metadata(
    model: nn.Module,
    input_shape: Sequence[int],
    transforms: Optional[List[dict]] = None,
    quantization: Optional[Dict[str, Any]] = None,
    check: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """The JSON written beside the ``.pte``: ``format``, ``task``, ``layout`` ``"raw"``,
    ``inputs`` / ``outputs`` (name -> shape and meaning, in program order), ``input_shape``,
    ``preprocess`` (the ONNX metadata's; ``transforms`` replace the config's test transforms
    when the export size needed other ones), ``classes``, ``palette``, ``quantization`` (None
    for float), ``check`` (what was compared before writing) and, for detection,
    ``detection`` (:func:`~.onnx_metadata.detection_decoding`)."""
    task = exportable_task(model)
    names = output_names(model)
    shape = 'x'.join(str(v) for v in input_shape)
    encoded = export_metadata(
        model,
        task,
        'raw',
        output_descriptions(names, task),
        inputs={'input': f'float32 ({shape}): the preprocessed image, fixed size'},
    )
    meta = {key[len(PREFIX) :]: json.loads(value) for key, value in encoded.items()}
    if transforms is not None:
        meta['preprocess']['transforms'] = transforms
    meta = dict(
        format=f'ExecuTorch {EXECUTORCH_VERSION} program, XNNPACK delegate',
        **meta,
        input_shape=[int(v) for v in input_shape],
        quantization=quantization,
        check=check,
    )
    if task == 'detection':
        meta['detection'] = detection_decoding(model)
    return meta


def write_pte(path: str, program: bytes, metadata: Dict[str, Any]) -> None:
    """Write ``program`` to ``path`` and ``metadata`` to :func:`metadata_path`, each atomically
    (the JSON first, so that a ``.pte`` never exists without it)."""

    def write_json(tmp: str) -> None:
        with open(tmp, 'w') as f:
            json.dump(metadata, f, indent=1)

    def write_program(tmp: str) -> None:
        with open(tmp, 'wb') as f:
            f.write(program)

    write_atomically(metadata_path(path), write_json, '.json')
    write_atomically(path, write_program, '.pte')


def read_pte_metadata(path: str) -> Dict[str, Any]:
    """The JSON beside the ``.pte`` ``path`` (:func:`pte_metadata`)."""
    with open(metadata_path(path)) as f:
        return json.load(f)
