"""Export deploy models of every task to ONNX and check onnxruntime against PyTorch.

What the ONNX graph computes, per task (input ``input``: float32 ``(N, 3, H, W)``, the image
*after* the model's ``data_preprocessor``, i.e. resized as the config's test pipeline, channels
in the order the preprocessor produces (RGB for our configs) and normalized ``(x - mean) / std``;
see :func:`preprocessing_info`):

- classification (mmpretrain ``ImageClassifier``): ``logits`` ``(N, num_classes)``, before softmax
  (``model(x, mode='tensor')``).
- detection (mmdet single-stage detectors, e.g. SSDLite): the dense head's raw outputs before
  decoding and NMS, ``cls_score_<i>`` ``(N, A_i * (C + 1), H_i, W_i)`` then ``bbox_pred_<i>``
  ``(N, A_i * 4, H_i, W_i)`` for every level ``i``; :func:`ssd_postprocess` turns them into the
  ``DetDataSample`` s of ``model.predict`` (mmdet's own decoding and NMS).
- segmentation (mmseg ``EncoderDecoder``, ``test_cfg.mode='whole'``): ``seg_logits``
  ``(N, num_classes, H, W)`` at the input's resolution (mmseg's ``encode_decode``); argmax over
  dim 1 gives the label map.

Batch, height and width are dynamic axes by default. Every file carries the metadata a consumer
without the config needs (``onnx_metadata``); ``onnx_end2end`` exports the whole prediction
(detections after NMS, label maps, top-k) instead of the raw outputs.
"""

import warnings
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..engine.deploy_checkpoints import max_relative_difference, write_atomically
from ..errors import OnnxParityError  # noqa: F401 (re-exported: raised here)
from ..models.tasks import DEFAULT_INPUT_SIZE, model_task
from .onnx_metadata import (
    export_metadata,
    output_descriptions,  # noqa: F401 (re-exported)
)

INSTALL_HINT = 'pip install .[deploy]  (or: pip install onnx onnxruntime onnxscript)'
DEFAULT_OPSET = 17


def require_onnx() -> None:
    """Import onnx and onnxruntime, or fail with the command that installs them."""
    missing = []
    for name in ('onnx', 'onnxruntime'):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ImportError(
            f'ONNX export needs {" and ".join(missing)}, which is not installed: {INSTALL_HINT}'
        )


def exportable_task(model: nn.Module) -> str:
    """:func:`~mobileone_dense.models.tasks.model_task`, for the models the export covers:
    mmpretrain ``ImageClassifier``, mmdet single-stage detectors (e.g. SSD) and mmseg
    ``EncoderDecoder`` with whole-image inference."""
    from mmdet.models.detectors import SingleStageDetector
    from mmpretrain.models.classifiers import ImageClassifier
    from mmseg.models.segmentors import EncoderDecoder

    if not isinstance(model, (ImageClassifier, SingleStageDetector, EncoderDecoder)):
        raise TypeError(
            f'cannot export a {type(model).__name__}: supported are mmpretrain '
            'ImageClassifier, mmdet single-stage detectors (e.g. SSD) and mmseg '
            'EncoderDecoder models'
        )
    task = model_task(model)
    mode = (getattr(model, 'test_cfg', None) or {}).get('mode', 'whole')
    if task == 'segmentation' and mode != 'whole':
        raise ValueError(
            f"the segmentor's test_cfg.mode is {mode!r}; ONNX export covers "
            "whole-image inference: set model.test_cfg.mode='whole'"
        )
    return task


class RawOutputs(nn.Module):
    """The raw network outputs as a flat tuple (see the module doc): what the ONNX export and
    the ExecuTorch export (``executorch_export``) trace."""

    def __init__(self, model: nn.Module, task: str) -> None:
        super().__init__()
        self.model = model
        self.task = task

    def forward(self, x: torch.Tensor) -> tuple:
        if self.task == 'classification':
            return (self.model(x, mode='tensor'),)
        if self.task == 'detection':
            cls_scores, bbox_preds = self.model(x, mode='tensor')
            return tuple(cls_scores) + tuple(bbox_preds)
        # mmseg's encode_decode with img_shape = pad_shape = the input's size (predict_by_feat's
        # resize), written out so that the size is the traced input's, not a constant from metas
        head = self.model.decode_head
        logits = head.forward(self.model.extract_feat(x))
        return (
            F.interpolate(
                logits, size=x.shape[2:], mode='bilinear', align_corners=head.align_corners
            ),
        )


def output_names(model: nn.Module) -> List[str]:
    """Names of the ONNX outputs of ``model``, in order."""
    task = exportable_task(model)
    if task == 'classification':
        return ['logits']
    if task == 'segmentation':
        return ['seg_logits']
    levels = model.bbox_head.prior_generator.num_levels
    return [f'cls_score_{i}' for i in range(levels)] + [f'bbox_pred_{i}' for i in range(levels)]


@torch.no_grad()
def reference_outputs(model: nn.Module, inputs: torch.Tensor) -> List[torch.Tensor]:
    """PyTorch outputs the ONNX graph must reproduce, computed by the libraries' own code paths."""
    task = exportable_task(model)
    if task == 'segmentation':
        shape = tuple(inputs.shape[2:])
        metas = [dict(img_shape=shape, pad_shape=shape, ori_shape=shape)] * inputs.shape[0]
        return [model.encode_decode(inputs, metas)]
    return list(RawOutputs(model, task).eval()(inputs))


def export_onnx(
    model: nn.Module,
    path: str,
    input_shape: Optional[Sequence[int]] = None,
    dynamic: bool = True,
    opset: int = DEFAULT_OPSET,
) -> List[str]:
    """Write ``model`` (deploy form, eval, as ``init_model`` returns it) to ``path`` as ONNX.

    Args:
        model: an mmpretrain ImageClassifier, mmdet single-stage detector or mmseg
            EncoderDecoder; the task is detected from its type.
        path: the .onnx file (written through a temp file and a rename).
        input_shape: ``(N, 3, H, W)`` of the tracing input; default ``(1, 3) +`` the task's
            ``DEFAULT_INPUT_SIZE``.
        dynamic: batch, height and width as dynamic axes (else the graph is fixed to the shape).
        opset: ONNX opset version.

    Returns:
        The output names (see the module doc for their meaning and shapes).
    """
    require_onnx()
    task = exportable_task(model)
    if input_shape is None:
        input_shape = (1, 3) + DEFAULT_INPUT_SIZE[task]
    if len(input_shape) != 4:
        raise ValueError(f'input_shape must be (N, C, H, W), got {tuple(input_shape)}')
    if model.training:
        raise ValueError('export an eval-mode model (model.eval()), as init_model returns it')
    names = output_names(model)
    dynamic_axes = None
    if dynamic:
        dynamic_axes = {'input': {0: 'batch', 2: 'height', 3: 'width'}}
        for name in names:
            if task == 'classification':
                dynamic_axes[name] = {0: 'batch'}
            elif task == 'segmentation':
                dynamic_axes[name] = {0: 'batch', 2: 'height', 3: 'width'}
            else:  # each level's feature map has its own size
                dynamic_axes[name] = {0: 'batch', 2: f'{name}_height', 3: f'{name}_width'}
    parameter = next(model.parameters())
    dummy = torch.randn(*input_shape, dtype=parameter.dtype, device=parameter.device)
    # The graph wrapper must be put in eval mode itself: torch 2.14's legacy exporter does not
    # switch a module that is still in training mode (a fresh wrapper is) to eval, which would
    # export BN layers in training mode.
    export_module(
        RawOutputs(model, task).eval(),
        (dummy,),
        path,
        ['input'],
        names,
        dynamic_axes,
        opset,
        metadata=export_metadata(model, task, 'raw', output_descriptions(names, task)),
    )
    return names


def export_module(
    graph: nn.Module,
    dummies: tuple,
    path: str,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: Optional[dict],
    opset: int,
    metadata: Optional[Dict[str, str]] = None,
) -> None:
    """Trace ``graph`` (eval mode) on ``dummies`` and write it to ``path`` as ONNX, atomically.

    Static output sizes are written into the graph (see :func:`_set_static_dims`) and
    ``metadata`` into its ``metadata_props``; the file is written by
    :func:`~mobileone_dense.engine.deploy_checkpoints.write_atomically`.
    """

    def write(tmp: str) -> None:
        with warnings.catch_warnings(), torch.no_grad():
            # MobileOne's input-channel check is a Python bool under tracing: constant by
            # design (channels are not a dynamic axis). The legacy exporter's deprecation notices
            # are about its future removal (see below) and its internals, not about this graph.
            warnings.filterwarnings('ignore', category=torch.jit.TracerWarning)
            warnings.filterwarnings('ignore', message='.*legacy TorchScript-based ONNX export.*')
            warnings.filterwarnings('ignore', category=DeprecationWarning, module=r'torch\.onnx')
            # The TorchScript (legacy, dynamo=False) exporter, not torch 2.14's default dynamo
            # one: these are plain conv nets (Conv, Relu/Clip, pooling, Resize, Gemm) that it
            # traces exactly with dynamic_axes, much faster than the dynamo exporter
            # (torch.export + onnxscript optimizer), which also needs explicit ranges for every
            # dynamic dimension. Both give the same outputs; the parity check guards either way.
            torch.onnx.export(
                graph,
                tuple(dummies),
                tmp,
                dynamo=False,
                input_names=list(input_names),
                output_names=list(output_names),
                dynamic_axes=dynamic_axes,
                opset_version=opset,
                do_constant_folding=True,
            )
            shapes = [o.shape for o in graph(*dummies)]
        _set_static_dims(tmp, shapes, dynamic_axes or {}, output_names, metadata or {})

    write_atomically(path, write, '.tmp')


def _set_static_dims(
    path: str,
    shapes: Sequence[torch.Size],
    dynamic_axes: dict,
    names: Sequence[str],
    metadata: Dict[str, str],
) -> None:
    """Write the static sizes of the outputs into the graph (e.g. the classes of seg_logits),
    and ``metadata`` into the model's ``metadata_props``.

    The legacy exporter leaves a dimension symbolic as soon as an op's output size is computed
    at run time (mmseg's Resize to the input size), even where it is a constant.
    """
    import onnx

    proto = onnx.load(path)
    outputs = {o.name: o for o in proto.graph.output}
    for name, shape in zip(names, shapes):
        dims = outputs[name].type.tensor_type.shape.dim
        for axis, size in enumerate(shape):
            if axis not in dynamic_axes.get(name, {}):
                dims[axis].Clear()
                dims[axis].dim_value = int(size)
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    onnx.save(proto, path)


def onnx_session(path: str, num_threads: Optional[int] = None, spin: bool = True):
    """An onnxruntime CPU session of ``path`` (``num_threads``: intra-op threads, default ORT's).

    ``spin=False`` stops the intra-op threads from busy-waiting after each run: ORT's default
    keeps them spinning, which takes the cores from whatever runs next (e.g. the next model of a
    side-by-side benchmark, measured 2x slower behind a spinning session on 2 cores).
    """
    require_onnx()
    import onnxruntime as ort

    options = ort.SessionOptions()
    if num_threads:
        options.intra_op_num_threads = num_threads
    if not spin:
        options.add_session_config_entry('session.intra_op.allow_spinning', '0')
    return ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])


def check_onnx_parity(
    model: nn.Module,
    path: str,
    inputs: Union[torch.Tensor, Sequence[torch.Tensor]],
    num_threads: Optional[int] = None,
) -> float:
    """Largest relative difference between onnxruntime (CPU) and PyTorch on ``inputs``.

    ``inputs``: one ``(N, 3, H, W)`` batch or several (e.g. two sizes, for dynamic axes). Per
    output, ``max|onnx - torch| / max|torch|``; the maximum over outputs and batches is returned.
    """
    session = onnx_session(path, num_threads)
    batches = [inputs] if isinstance(inputs, torch.Tensor) else list(inputs)
    errors = []
    for batch in batches:
        expected = reference_outputs(model, batch)
        got = session.run(None, {'input': batch.detach().cpu().float().numpy()})
        if len(got) != len(expected):
            raise OnnxParityError(f'the ONNX model has {len(got)} outputs, PyTorch {len(expected)}')
        for name, a, b in zip(output_names(model), got, expected):
            if tuple(a.shape) != tuple(b.shape):
                raise OnnxParityError(
                    f'output {name!r}: onnxruntime shape {tuple(a.shape)} != '
                    f'PyTorch {tuple(b.shape)} for input {tuple(batch.shape)}'
                )
        errors.append(
            max_relative_difference([torch.from_numpy(a) for a in got], [b.cpu() for b in expected])
        )
    return max(errors)


def ssd_postprocess(
    cls_scores: Sequence[Any],
    bbox_preds: Sequence[Any],
    model_or_cfg: Union[nn.Module, str, Any],
    img_metas: Sequence[Any],
    rescale: bool = True,
) -> list:
    """Detections from the ONNX outputs, as ``model.predict`` returns them (any mmdet dense head).

    Runs mmdet's own ``bbox_head.predict_by_feat`` (priors, box decoding, score threshold, NMS
    and rescaling from ``test_cfg``): nothing is re-implemented.

    Args:
        cls_scores: per level ``(N, A * (C + 1), H_i, W_i)`` arrays or tensors (the
            ``cls_score_<i>`` outputs, in order).
        bbox_preds: per level ``(N, A * 4, H_i, W_i)`` (the ``bbox_pred_<i>`` outputs).
        model_or_cfg: the detector (or its ``bbox_head``), or its config (object or path): then
            only the head is built, with the config's ``test_cfg``.
        img_metas: per image a dict (or ``DetDataSample``) with ``img_shape`` (H, W of the
            network input), and for ``rescale`` ``scale_factor`` (w, h) and ``ori_shape``: the
            metainfo mmdet's test pipeline produces.
        rescale: boxes in original-image pixels (divided by ``scale_factor``), as mmdet tests.

    Returns:
        ``DetDataSample`` per image with ``pred_instances`` (``bboxes`` (K, 4) x1y1x2y2,
        ``scores`` (K,), ``labels`` (K,)), and the metainfo given.
    """
    from mmdet.structures import DetDataSample

    head = _bbox_head(model_or_cfg)
    device = next(head.parameters()).device
    cls_scores = [torch.as_tensor(s, device=device) for s in cls_scores]
    bbox_preds = [torch.as_tensor(b, device=device) for b in bbox_preds]
    if len(cls_scores) != len(bbox_preds):
        raise ValueError(f'{len(cls_scores)} cls_scores levels but {len(bbox_preds)} bbox_preds')
    metas = [dict(m.metainfo) if hasattr(m, 'metainfo') else dict(m) for m in img_metas]
    if len(metas) != cls_scores[0].shape[0]:
        raise ValueError(f'{len(metas)} img_metas for a batch of {cls_scores[0].shape[0]} images')
    with torch.no_grad():
        results = head.predict_by_feat(
            cls_scores, bbox_preds, batch_img_metas=metas, rescale=rescale
        )
    samples = []
    for meta, result in zip(metas, results):
        sample = DetDataSample(metainfo=meta)
        sample.pred_instances = result
        samples.append(sample)
    return samples


def _bbox_head(model_or_cfg: Union[nn.Module, str, Any]) -> nn.Module:
    """The dense head of a detector, or one built from a detector config (eval mode)."""
    if isinstance(model_or_cfg, nn.Module):
        return getattr(model_or_cfg, 'bbox_head', model_or_cfg)
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope

    cfg = Config.fromfile(model_or_cfg) if isinstance(model_or_cfg, str) else model_or_cfg
    if 'bbox_head' not in cfg.get('model', {}):
        raise ValueError(
            'ssd_postprocess needs a detector, its bbox_head, or a detection config '
            '(with model.bbox_head)'
        )
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    head_cfg = cfg.model.bbox_head.copy()
    head_cfg.update(test_cfg=cfg.model.get('test_cfg'), train_cfg=None)
    return MODELS.build(head_cfg).eval()
