"""Run an exported mobileone_dense ONNX model on one image with onnxruntime, OpenCV and numpy only.

    python demo/onnx_demo.py IMAGE MODEL.onnx --out-file out.png [--score-thr 0.3]
        [--out-json result.json] [--threads N]

No torch and no OpenMMLab package is imported: everything the model needs (the test
transforms, mean/std, channel order, class names and palette, the output layout) is read from
the file's metadata, written by ``tools/deploy/export_onnx.py``. This file is standalone: copy it
next to the .onnx file on a machine with ``pip install onnxruntime opencv-python numpy``.

- detection (``export_onnx.py --end2end``): boxes, scores and labels in original-image pixels,
  drawn as ``demo/image_demo.py`` draws them (the same boxes, palette colours and
  ``"class: score%"`` labels; OpenCV fonts instead of matplotlib's);
- segmentation: the label map with the colour overlay and legend of ``demo/image_demo.py``;
  from the default export (logits) the logits are resized to the image bilinearly before the
  argmax, as mmseg does, so the label map is mmseg's; from ``--end2end`` (label map at the
  input size) the labels are resized with nearest neighbours, which differs from mmseg along
  class borders;
- classification: the top-5 panel of ``demo/image_demo.py`` (softmax scores).

Pillow-backend resizing (the classification configs' ``ResizeEdge``) is Pillow's fixed-point
resampling redone in numpy: each pass is exact; when both sides change, Pillow 13 sometimes runs
the vertical pass first, which moves some pixels by a grey level or two (a resize of one side
only, as ``ResizeEdge`` of a square image, is identical).
"""

import argparse
import json
import os
import os.path as osp
import sys

import cv2
import numpy as np
import onnxruntime as ort

PREFIX = 'mobileone_dense.'
CV2_INTERPOLATION = dict(
    nearest=cv2.INTER_NEAREST,
    bilinear=cv2.INTER_LINEAR,
    bicubic=cv2.INTER_CUBIC,
    area=cv2.INTER_AREA,
    lanczos=cv2.INTER_LANCZOS4,
)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('image', help='image file')
    parser.add_argument('model', help='ONNX file written by tools/deploy/export_onnx.py')
    parser.add_argument('--out-file', default='onnx_demo_out.png', help='where to save the drawing')
    parser.add_argument('--score-thr', type=float, default=0.3, help='box score threshold')
    parser.add_argument('--out-json', help='also write the predictions as JSON')
    parser.add_argument('--threads', type=int, default=0, help='onnxruntime intra-op threads')
    return parser.parse_args(argv)


def read_metadata(session: ort.InferenceSession) -> dict:
    """The file's ``mobileone_dense.*`` metadata, decoded (written by
    mobileone_dense/deploy/onnx_metadata.py)."""
    props = session.get_modelmeta().custom_metadata_map
    meta = {k[len(PREFIX) :]: json.loads(v) for k, v in props.items() if k.startswith(PREFIX)}
    if not meta:
        raise ValueError(
            'the ONNX file has no mobileone_dense metadata: export it with '
            'tools/deploy/export_onnx.py'
        )
    return meta


# -- preprocessing: the config's test transforms, as mmcv / mmdet / mmseg / mmpretrain do them ----
def _pil_filter(name: str):
    """Pillow's resampling filter (support, function) for ``name``."""
    if name == 'bilinear':
        return 1.0, lambda x: np.where(np.abs(x) < 1.0, 1.0 - np.abs(x), 0.0)
    if name == 'bicubic':
        a = -0.5

        def cubic(x):
            x = np.abs(x)
            return np.where(
                x < 1.0,
                ((a + 2.0) * x - (a + 3.0)) * x * x + 1,
                np.where(x < 2.0, (((x - 5) * x + 8) * x - 4) * a, 0.0),
            )

        return 2.0, cubic
    raise ValueError(f'pillow {name!r} resizing is not reproduced here; use bilinear or bicubic')


def _pil_pass(image: np.ndarray, out_size: int, axis: int, filt) -> np.ndarray:
    """One pass of Pillow's ``ImagingResample`` on uint8 ``image`` along ``axis`` (0: rows)."""
    support, function = filt
    in_size = image.shape[axis]
    scale = in_size / out_size
    filter_scale = max(scale, 1.0)
    support *= filter_scale
    precision = 22  # Pillow's PRECISION_BITS for 8-bit images: 32 - 8 - 2
    columns = []
    for i in range(out_size):
        center = (i + 0.5) * scale
        start = max(int(center - support + 0.5), 0)
        count = min(int(center + support + 0.5), in_size) - start
        weights = function((np.arange(count) + start - center + 0.5) * (1.0 / filter_scale))
        total = np.cumsum(weights)[-1] if count else 0.0  # summed in order, as Pillow does
        if total != 0.0:
            weights = weights / total
        fixed = np.trunc(np.where(weights < 0, -0.5, 0.5) + weights * (1 << precision))
        taken = np.take(image, np.arange(start, start + count), axis=axis).astype(np.int64)
        value = np.tensordot(fixed.astype(np.int64), taken, axes=([0], [axis]))
        columns.append(np.clip((value + (1 << (precision - 1))) >> precision, 0, 255))
    return np.stack(columns, axis=axis).astype(np.uint8)


def resize(
    image: np.ndarray,
    width: int,
    height: int,
    interpolation: str = 'bilinear',
    backend: str = 'cv2',
) -> np.ndarray:
    """``mmcv.imresize``: OpenCV, or Pillow's two-pass ``ImagingResample`` in numpy (horizontal
    pass first, as Pillow up to 12 always did)."""
    if backend != 'pillow':
        return cv2.resize(image, (width, height), interpolation=CV2_INTERPOLATION[interpolation])
    filt = _pil_filter(interpolation)
    if image.shape[1] != width:
        image = _pil_pass(image, width, 1, filt)
    if image.shape[0] != height:
        image = _pil_pass(image, height, 0, filt)
    return image


def apply_transform(image: np.ndarray, step: dict, info: dict) -> np.ndarray:
    """One test transform (mmcv/mmdet/mmseg ``Resize``, mmpretrain ``ResizeEdge``,
    ``CenterCrop``) on a BGR uint8 image; updates ``info['scale_factor']`` (w, h) like mmdet."""
    kind, (h, w) = step['type'], image.shape[:2]
    interpolation = step.get('interpolation', 'bilinear')
    backend = step.get('backend', 'cv2')
    if kind == 'Resize':
        if step.get('scale') is None:
            raise ValueError('Resize without a fixed scale (scale_factor=...) is not supported')
        scale_w, scale_h = step['scale'] if isinstance(step['scale'], list) else [step['scale']] * 2
        if step.get('keep_ratio', False):  # mmcv.rescale_size: as large as fits in the scale
            factor = min(max(scale_w, scale_h) / max(h, w), min(scale_w, scale_h) / min(h, w))
            new_w, new_h = int(w * float(factor) + 0.5), int(h * float(factor) + 0.5)
        else:
            new_w, new_h = scale_w, scale_h
        image = resize(image, new_w, new_h, interpolation, backend)
    elif kind == 'ResizeEdge':
        edge, size = step.get('edge', 'short'), step['scale']
        if (edge == 'short' and w < h) or (edge == 'long' and w > h) or edge == 'width':
            new_w, new_h = size, int(size * h / w)
        else:
            new_w, new_h = int(size * w / h), size
        image = resize(image, new_w, new_h, interpolation, backend)
    elif kind == 'CenterCrop':
        crop = step['crop_size']
        crop_w, crop_h = (crop, crop) if isinstance(crop, int) else crop
        crop_w, crop_h = min(crop_w, w), min(crop_h, h)
        y1, x1 = max(0, int(round((h - crop_h) / 2.0))), max(0, int(round((w - crop_w) / 2.0)))
        image = image[y1 : y1 + crop_h, x1 : x1 + crop_w]
    else:
        raise ValueError(
            f'the test pipeline step {kind!r} has no numpy version in this demo '
            '(supported: Resize, ResizeEdge, CenterCrop); preprocess in Python '
            'with the config instead'
        )
    new_h, new_w = image.shape[:2]
    if kind != 'CenterCrop':
        sw, sh = info['scale_factor']
        info['scale_factor'] = (sw * new_w / w, sh * new_h / h)
    return image


def preprocess(image: np.ndarray, meta: dict):
    """BGR uint8 (H, W, 3) -> the ONNX ``input`` (1, 3, h, w) float32 and the mmdet-style
    ``info`` (``scale_factor`` (w, h), ``ori_shape``)."""
    pre = meta['preprocess']
    if pre.get('transforms') is None:
        raise ValueError(
            'the file does not record the test transforms (exported from a model '
            'without its config): export it with tools/deploy/export_onnx.py'
        )
    info = dict(scale_factor=(1.0, 1.0), ori_shape=image.shape[:2])
    for step in pre['transforms']:
        image = apply_transform(image, step, info)
    if pre['bgr_to_rgb']:
        image = image[..., ::-1]
    x = image.astype(np.float32)
    if pre.get('mean') is not None:
        x = (x - np.array(pre['mean'], np.float32)) / np.array(pre['std'], np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None]), info


# -- prediction ---------------------------------------------------------------------------
def predict(session: ort.InferenceSession, meta: dict, image: np.ndarray) -> dict:
    """The model's prediction for one BGR image: ``detections`` (boxes, scores, labels),
    ``labels`` (H, W) or ``scores`` (one per class, softmax) depending on the task."""
    x, info = preprocess(image, meta)
    task, layout = meta['task'], meta['layout']
    names = [o.name for o in session.get_outputs()]
    if task == 'detection':
        if layout != 'end2end':
            raise ValueError(
                'this detection model gives raw head outputs; export it with '
                'tools/deploy/export_onnx.py --end2end for this demo'
            )
        feed = {'input': x, 'scale_factor': np.array([info['scale_factor']], np.float32)}
        out = dict(zip(names, session.run(None, feed)))
        n = int(out['num_dets'][0])
        return dict(
            boxes=out['boxes'][0, :n], scores=out['scores'][0, :n], labels=out['labels'][0, :n]
        )
    out = session.run(None, {'input': x})
    if task == 'segmentation':
        h, w = info['ori_shape']
        if layout == 'end2end':  # label map at the input size
            labels = cv2.resize(out[0][0].astype(np.int32), (w, h), interpolation=cv2.INTER_NEAREST)
        else:  # mmseg: logits resized bilinearly (half-pixel centres), then argmax
            logits = out[0][0].transpose(1, 2, 0)
            resized = np.stack(
                [
                    cv2.resize(logits[..., c], (w, h), interpolation=cv2.INTER_LINEAR)
                    for c in range(logits.shape[-1])
                ],
                -1,
            )
            labels = resized.argmax(-1)
        return dict(labels=labels.astype(np.int64))
    if layout == 'end2end':
        scores = np.zeros(max(len(meta['classes']), int(out[1].max()) + 1), np.float32)
        scores[out[1][0]] = out[0][0]
    else:
        logits = out[0][0].astype(np.float64)
        scores = np.exp(logits - logits.max())
        scores = (scores / scores.sum()).astype(np.float32)
    return dict(scores=scores)


# -- drawing (as mobileone_dense/apis/visualization.py draws for demo/image_demo.py) --------------
def draw_detections(image: np.ndarray, result: dict, classes, palette, score_thr: float):
    """Boxes with score > ``score_thr`` in their class colour (3 px, 0.8 opaque) and
    ``"name: score%"`` in light grey on a dark box at their top-left corner: mmdet's
    ``DetLocalVisualizer`` defaults, which demo/image_demo.py uses. Returns the BGR drawing."""
    canvas = image.copy()
    keep = result['scores'] > score_thr
    font, text_colour = cv2.FONT_HERSHEY_SIMPLEX, (200, 200, 200)
    for box, score, label in zip(
        result['boxes'][keep], result['scores'][keep], result['labels'][keep]
    ):
        colour = tuple(int(c) for c in (palette[label] if label < len(palette) else (255, 0, 0)))[
            ::-1
        ]  # RGB -> BGR
        x1, y1, x2, y2 = (int(round(float(v))) for v in box)
        overlay = canvas.copy()
        cv2.rectangle(overlay, (x1, y1), (x2, y2), colour, 3)
        canvas = cv2.addWeighted(overlay, 0.8, canvas, 0.2, 0)
        name = classes[label] if label < len(classes) else f'class {label}'
        text = f'{name}: {round(float(score) * 100, 1)}'
        (width, height), base = cv2.getTextSize(text, font, 0.33, 1)
        x, y = x1 + 3, y1 + 3
        patch = canvas[y : y + height + base + 2, x : x + width + 4]
        patch[:] = (patch * 0.2).astype(np.uint8)
        cv2.putText(canvas, text, (x + 2, y + height + 1), font, 0.33, text_colour, 1, cv2.LINE_AA)
    return canvas


def _default_palette(num_classes: int):
    rng = np.random.default_rng(0)
    return [tuple(int(c) for c in rng.integers(0, 256, 3)) for _ in range(num_classes)]


def draw_segmentation(image, labels, classes, palette, opacity: float = 0.5):
    """Colour overlay of ``labels`` on ``image`` with a legend of the classes present (largest
    first, with their share of the pixels); returns the drawing and the (name, share) pairs."""
    colours = np.array([tuple(c)[::-1] for c in palette], dtype=np.uint8)  # RGB -> BGR
    valid = labels < len(colours)
    overlay = image.copy()
    overlay[valid] = (image[valid] * (1 - opacity) + colours[labels[valid]] * opacity).astype(
        np.uint8
    )
    ids, counts = np.unique(labels[valid], return_counts=True)
    order = np.argsort(-counts)
    present = [
        (classes[i] if i < len(classes) else str(i), c / labels.size)
        for i, c in zip(ids[order].tolist(), counts[order].tolist())
    ]
    row, swatch, width = 22, 16, 220
    legend = np.full((max(image.shape[0], row * (len(present) + 1)), width, 3), 255, np.uint8)
    for k, ((name, share), i) in enumerate(zip(present, ids[order].tolist())):
        y = 6 + k * row
        cv2.rectangle(legend, (8, y), (8 + swatch, y + swatch), colours[i].tolist(), -1)
        cv2.rectangle(legend, (8, y), (8 + swatch, y + swatch), (0, 0, 0), 1)
        cv2.putText(
            legend,
            f'{name} {share:.0%}',
            (8 + swatch + 8, y + swatch - 3),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.45,
            (0, 0, 0),
            1,
            cv2.LINE_AA,
        )
    canvas = np.full((legend.shape[0], image.shape[1] + width, 3), 255, np.uint8)
    canvas[: image.shape[0], : image.shape[1]] = overlay
    canvas[:, image.shape[1] :] = legend
    return canvas, present


def draw_classification(image, scores, classes, k: int = 5):
    """``image`` with a panel listing the ``k`` highest ``scores``: name, score and a bar."""
    order = np.argsort(-scores)[:k]
    top = [(classes[i] if i < len(classes) else str(i), float(scores[i])) for i in order]
    row, width = 22, 260
    panel = np.full((max(image.shape[0], row * (len(top) + 1)), width, 3), 255, np.uint8)
    for j, (name, score) in enumerate(top):
        y = 6 + j * row
        cv2.rectangle(panel, (8, y), (8 + int(80 * score), y + 16), (80, 160, 80), -1)
        cv2.putText(
            panel,
            f'{score:.2f} {name}'[:34],
            (94, y + 13),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.45,
            (0, 0, 0),
            1,
            cv2.LINE_AA,
        )
    canvas = np.full((panel.shape[0], image.shape[1] + width, 3), 255, np.uint8)
    canvas[: image.shape[0], : image.shape[1]] = image
    canvas[:, image.shape[1] :] = panel
    return canvas, top


def draw(image: np.ndarray, meta: dict, result: dict, score_thr: float):
    """(drawing, one-line summary) in the words of demo/image_demo.py."""
    classes, palette = meta.get('classes') or [], meta.get('palette') or []
    if meta['task'] == 'detection':
        palette = palette or _default_palette(max(len(classes), 1))
        drawing = draw_detections(image, result, classes, palette, score_thr)
        keep = result['scores'] >= score_thr
        names = [classes[i] if i < len(classes) else str(i) for i in result['labels'][keep]]
        return drawing, (
            f'{int(keep.sum())} detections with score >= {score_thr}'
            + (f': {", ".join(sorted(set(names)))}' if names else '')
        )
    if meta['task'] == 'segmentation':
        drawing, present = draw_segmentation(
            image, result['labels'], classes, palette or _default_palette(len(classes))
        )
        return drawing, f'{len(present)} classes: ' + ', '.join(
            f'{name} {share:.0%}' for name, share in present
        )
    drawing, top = draw_classification(image, result['scores'], classes)
    return drawing, f'top-{len(top)}: ' + ', '.join(f'{n} {s:.2f}' for n, s in top)


def to_json(meta: dict, result: dict) -> dict:
    classes = meta.get('classes') or []
    if meta['task'] == 'detection':
        return dict(
            task='detection',
            detections=[
                dict(
                    box=[float(v) for v in box],
                    score=float(score),
                    label=int(label),
                    name=classes[label] if label < len(classes) else str(label),
                )
                for box, score, label in zip(result['boxes'], result['scores'], result['labels'])
            ],
        )
    if meta['task'] == 'segmentation':
        ids, counts = np.unique(result['labels'], return_counts=True)
        return dict(
            task='segmentation',
            shape=list(result['labels'].shape),
            pixels={int(i): int(c) for i, c in zip(ids, counts)},
        )
    order = np.argsort(-result['scores'])[:5]
    return dict(
        task='classification',
        top=[dict(label=int(i), score=float(result['scores'][i])) for i in order],
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    if not osp.isfile(args.image):
        print(f'error: image {args.image!r} does not exist', file=sys.stderr)
        return 2
    image = cv2.imread(args.image, cv2.IMREAD_COLOR)  # BGR uint8, as mmcv.imread(flag='color')
    if image is None:
        print(f'error: {args.image!r} is not a readable image', file=sys.stderr)
        return 2
    if not osp.isfile(args.model):
        print(f'error: model {args.model!r} does not exist', file=sys.stderr)
        return 2
    options = ort.SessionOptions()
    if args.threads:
        options.intra_op_num_threads = args.threads
    session = ort.InferenceSession(args.model, options, providers=['CPUExecutionProvider'])
    try:
        meta = read_metadata(session)
        result = predict(session, meta, image)
    except ValueError as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    drawing, summary = draw(image, meta, result, args.score_thr)
    os.makedirs(osp.dirname(osp.abspath(args.out_file)), exist_ok=True)
    if not cv2.imwrite(args.out_file, drawing):
        print(f'error: could not write {args.out_file!r} (give a .png path)', file=sys.stderr)
        return 2
    if args.out_json:
        with open(args.out_json, 'w') as f:
            json.dump(to_json(meta, result), f, indent=1)
    print(f'{summary}; saved {args.out_file}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
