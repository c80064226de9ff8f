"""What a consumer without the config needs to run an exported model, stored in the ONNX file.

:func:`export_metadata` gives the ``metadata_props`` our exporters write (keys
``mobileone_dense.<name>``, values JSON), :func:`read_metadata` reads them back (onnx or
onnxruntime, no torch needed for the reading side: ``demo/onnx_demo.py`` parses the same keys
with ``json`` alone):

- ``task``: ``"classification"``, ``"detection"`` or ``"segmentation"``;
- ``layout``: ``"raw"`` (network outputs, see ``onnx_export``) or ``"end2end"``
  (detections / label map / top-k, see ``onnx_end2end``);
- ``inputs`` / ``outputs``: name -> shape and meaning, in graph order;
- ``preprocess``: the config's test transforms after image loading (``Resize``,
  ``ResizeEdge``, ``CenterCrop`` ... as dicts, scope prefixes removed), then ``bgr_to_rgb``,
  ``mean`` and ``std`` of the model's data preprocessor (applied in that order to a BGR uint8
  image, as OpenCV reads it);
- ``classes`` and ``palette`` (RGB) of the dataset; ``score_thr`` (detection: the head's
  ``test_cfg.score_thr``).
"""

import json
from typing import Any, Dict, List, Optional, Sequence

import torch.nn as nn

from ..datasets.wrappers import innermost_dataset

PREFIX = 'mobileone_dense.'
# Test-pipeline steps that are not image transforms (reading files, packing the sample).
_SKIPPED_STEPS = ('Load', 'Pack')


def preprocessing_info(model: nn.Module) -> Dict[str, Any]:
    """How to turn a BGR uint8 image (as OpenCV/mmcv read it) into the ONNX input.

    Read from the model's ``data_preprocessor``: ``bgr_to_rgb`` (reverse the channels first),
    ``mean`` / ``std`` per channel, applied after the conversion (``None``: no normalization),
    and ``test_padding``, how PyTorch testing pads a batch (``None``: not at all; the ONNX model
    takes any size, so padding is optional there).
    """
    pre = model.data_preprocessor
    convert = any(
        bool(getattr(pre, name, False))
        for name in ('_channel_conversion', 'channel_conversion', 'to_rgb')
    )
    normalize = getattr(pre, '_enable_normalize', False)
    padding = None
    if (getattr(pre, 'pad_size_divisor', None) or 1) > 1:  # mmengine/mmdet/mmpretrain
        padding = f'bottom/right to a multiple of {pre.pad_size_divisor}'
    test_cfg = getattr(pre, 'test_cfg', None) or {}  # mmseg pads at test time only with this
    if test_cfg.get('size') or test_cfg.get('size_divisor'):
        padding = (
            f'bottom/right to {tuple(test_cfg["size"])}'
            if test_cfg.get('size')
            else f'bottom/right to a multiple of {test_cfg["size_divisor"]}'
        )
    return dict(
        bgr_to_rgb=convert,
        mean=[round(v, 4) for v in pre.mean.flatten().tolist()] if normalize else None,
        std=[round(v, 4) for v in pre.std.flatten().tolist()] if normalize else None,
        test_padding=padding,
    )


def test_transforms(cfg: Any, task: Optional[str] = None) -> List[Dict[str, Any]]:
    """The image transforms of ``cfg``'s test pipeline as plain dicts (``type`` without scope).

    The pipeline the libraries' own single-image inference uses (``demo/image_demo.py``):
    mmseg's ``inference_model`` reads the config's ``test_pipeline`` variable, mmdet's and
    mmpretrain's inference the test dataloader's pipeline (the same in our configs). Loading
    and packing steps are left out: they read the file and build the sample, the consumer does
    both itself.
    """
    pipeline = innermost_dataset(cfg['test_dataloader']['dataset']).get('pipeline', [])
    if task == 'segmentation' and cfg.get('test_pipeline'):
        pipeline = cfg['test_pipeline']
    steps = []
    for step in pipeline:
        step = {k: v for k, v in _plain(dict(step)).items() if not k.startswith('_')}
        step['type'] = str(step['type']).split('.')[-1]
        if not any(word in step['type'] for word in _SKIPPED_STEPS):
            steps.append(step)
    return steps


def _plain(value: Any) -> Any:
    """Config values as JSON-able Python values (tuples -> lists, ConfigDict -> dict)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def export_metadata(
    model: nn.Module,
    task: str,
    layout: str,
    outputs: Dict[str, str],
    inputs: Optional[Dict[str, str]] = None,
    extra: Optional[Dict[str, Any]] = None,
) -> Dict[str, str]:
    """``metadata_props`` for an export of ``model`` (see the module doc), values JSON-encoded.

    Args:
        model: the exported model; its ``cfg`` (set by ``init_model``) gives the test
            transforms and ``dataset_meta`` the classes, when present.
        task: ``'classification'``, ``'detection'`` or ``'segmentation'``.
        layout: ``'raw'`` or ``'end2end'``.
        outputs / inputs: graph output / input name -> shape and meaning (in graph order).
        extra: more entries (e.g. ``score_thr``).
    """
    info = preprocessing_info(model)
    cfg = getattr(model, 'cfg', None)
    meta = getattr(model, 'dataset_meta', None) or {}
    entries = dict(
        task=task,
        layout=layout,
        inputs=inputs or {'input': 'float32 (N, 3, H, W): the preprocessed image batch'},
        outputs=outputs,
        preprocess=dict(
            transforms=test_transforms(cfg, task) if cfg is not None else None,
            bgr_to_rgb=info['bgr_to_rgb'],
            mean=info['mean'],
            std=info['std'],
        ),
        classes=list(meta.get('classes') or []),
        palette=[list(c) for c in (meta.get('palette') or [])],
    )
    entries.update(extra or {})
    return {PREFIX + key: json.dumps(_plain(value)) for key, value in entries.items()}


def read_metadata(path_or_session: Any) -> Dict[str, Any]:
    """The ``mobileone_dense.*`` entries of an ONNX file (path) or an onnxruntime session,
    decoded, keys without the prefix; ``{}`` for files written by other tools."""
    if isinstance(path_or_session, str):
        import onnx

        proto = onnx.load(path_or_session, load_external_data=False)
        props = {p.key: p.value for p in proto.metadata_props}
    else:
        props = dict(path_or_session.get_modelmeta().custom_metadata_map)
    return {
        key[len(PREFIX) :]: json.loads(value)
        for key, value in props.items()
        if key.startswith(PREFIX)
    }


def output_descriptions(names: Sequence[str], task: str) -> Dict[str, str]:
    """Shape and meaning of the raw (``layout='raw'``) outputs, for the metadata."""
    if task == 'classification':
        return {names[0]: 'float32 (N, num_classes): logits, before softmax'}
    if task == 'segmentation':
        return {names[0]: 'float32 (N, num_classes, H, W): logits at the input size'}
    levels = len(names) // 2
    described = {
        name: f'float32 (N, A * (num_classes + 1), H_{i}, W_{i}): level {i} class '
        'logits of the SSD head'
        for i, name in enumerate(names[:levels])
    }
    described.update(
        {
            name: f'float32 (N, A * 4, H_{i}, W_{i}): level {i} box deltas'
            for i, name in enumerate(names[levels:])
        }
    )
    return described


def detection_decoding(model: nn.Module) -> Dict[str, Any]:
    """What :func:`~mobileone_dense.deploy.numpy_postprocess.ssd_detections` needs to turn an
    SSD head's raw outputs into detections without the config (JSON-able).

    ``num_classes``, ``use_sigmoid``; the prior generator's ``base_anchors`` (per level
    ``(A, 4)``, input pixels) and ``strides`` (per level ``(w, h)``); the
    ``DeltaXYWHBBoxCoder``'s ``means``, ``stds``, ``clip_border``, ``add_ctr_clamp``,
    ``ctr_clamp``; the head's ``test_cfg``: ``nms_pre``, ``score_thr``, ``min_bbox_size``,
    ``iou_threshold``, ``class_agnostic``, ``max_per_img``. Raises ``TypeError`` for heads
    whose priors or coder are of another kind.
    """
    head = model.bbox_head
    prior_generator, coder = head.prior_generator, head.bbox_coder
    if not hasattr(prior_generator, 'base_anchors'):
        raise TypeError(f'{type(prior_generator).__name__} has no base anchors to record')
    if type(coder).__name__ != 'DeltaXYWHBBoxCoder':
        raise TypeError(f'numpy decoding covers DeltaXYWHBBoxCoder, not {type(coder).__name__}')
    cfg = head.test_cfg
    nms_cfg = dict(cfg.get('nms') or {})
    if nms_cfg.get('type', 'nms') != 'nms':
        raise TypeError(f"numpy decoding implements test_cfg.nms type 'nms', not {nms_cfg}")
    return dict(
        num_classes=int(head.num_classes),
        use_sigmoid=bool(head.use_sigmoid_cls),
        base_anchors=[a.tolist() for a in prior_generator.base_anchors],
        strides=[[float(v) for v in s] for s in prior_generator.strides],
        means=[float(v) for v in coder.means],
        stds=[float(v) for v in coder.stds],
        clip_border=bool(coder.clip_border),
        add_ctr_clamp=bool(coder.add_ctr_clamp),
        ctr_clamp=float(coder.ctr_clamp),
        nms_pre=int(cfg.get('nms_pre', -1)),
        score_thr=float(cfg.get('score_thr', 0.0)),
        min_bbox_size=float(cfg.get('min_bbox_size', -1)),
        iou_threshold=float(nms_cfg.get('iou_threshold', 0.5)),
        class_agnostic=bool(nms_cfg.get('class_agnostic', False)),
        max_per_img=int(cfg.get('max_per_img', 100)),
    )
