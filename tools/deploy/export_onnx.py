"""Export the deploy model of a config + checkpoint to ONNX, verified against PyTorch.

    python tools/deploy/export_onnx.py CONFIG CHECKPOINT [--out model.onnx] [--input-size H W]
        [--opset N] [--no-dynamic] [--tolerance 1e-4]
        [--end2end [--topk 5] [--check-split test] [--check-images 4]]

CHECKPOINT is a training checkpoint of CONFIG (loaded strictly, EMA weights when present, then
re-parameterized) or a deploy checkpoint with its deploy config (tools/reparameterize.py,
ReparameterizeHook).

The ONNX input ``input`` is float32 (N, 3, H, W): the image as the config's test pipeline resizes
it, then the model's data_preprocessor applied (BGR -> RGB when it says so, (x - mean) / std); the
tool prints those values. Outputs: classification ``logits`` (N, classes); detection the SSD
head's raw ``cls_score_<i>`` and ``bbox_pred_<i>`` per level, before decoding and NMS (turn them
into detections with mobileone_dense.apis.ssd_postprocess); segmentation ``seg_logits``
(N, classes, H, W) at the input's size. Batch, H and W are dynamic unless --no-dynamic.

The model is written to a temp file, run with onnxruntime (CPU) at the export size and, when
dynamic, at a second size with batch 2, and renamed to --out only when every output matches
PyTorch within --tolerance (max|onnx - torch| / max|torch|); otherwise nothing is written and
the exit status is 1.

--end2end writes the whole prediction instead (mobileone_dense/deploy/onnx_end2end.py):
detection ``input`` + ``scale_factor`` (N, 2) -> ``boxes`` (N, K, 4) in original-image pixels,
``scores``, ``labels`` (N, K), ``num_dets`` (N,) (anchors, decoding and ONNX NonMaxSuppression in
the graph); segmentation ``labels`` (N, H, W), the argmax at the input size; classification the
softmax ``scores`` and ``labels`` of the --topk best classes. It is checked on --check-images
images of the config's --check-split split (through its test pipeline) at the test size and at a
second size (0.75x height, 1.25x width for fixed-size resizing, 0.75x otherwise): detections must
equal model.predict's (same labels, boxes within 1e-3 px, scores within 1e-5), label maps and
top-k must equal PyTorch's except where its logits tie (within 1e-5 relative).
demo/onnx_demo.py runs the file with onnxruntime, OpenCV and numpy only (preprocessing and
classes: the file's metadata).
"""

import argparse
import os.path as osp
import sys

import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))  # a checkout
import mobileone_dense  # noqa: F401
from mobileone_dense.apis.inference import init_model
from mobileone_dense.datasets.wrappers import innermost_dataset
from mobileone_dense.deploy.onnx_data import (
    pipeline_at_scale,
    preprocessed_batches,
    split_dataset,
    spread_indices,
)
from mobileone_dense.deploy.onnx_end2end import export_end2end
from mobileone_dense.deploy.onnx_end2end_check import check_end2end
from mobileone_dense.deploy.onnx_export import (
    DEFAULT_OPSET,
    check_onnx_parity,
    export_onnx,
    exportable_task,
    require_onnx,
)
from mobileone_dense.deploy.onnx_metadata import preprocessing_info
from mobileone_dense.engine.deploy_checkpoints import write_atomically
from mobileone_dense.errors import InputError, OnnxParityError
from mobileone_dense.models.tasks import DEFAULT_INPUT_SIZE

# The end-to-end check's second size, as (height, width) factors of the test pipeline's size.
SECOND_SCALE = (0.75, 1.25)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n')[0],
        epilog=__doc__.split('\n\n', 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument('config', help='the config (training or deploy config)')
    parser.add_argument(
        'checkpoint', help='training checkpoint, or deploy checkpoint with its deploy config'
    )
    parser.add_argument(
        '--out', help='ONNX file to write (default: the checkpoint path with the .onnx suffix)'
    )
    parser.add_argument(
        '--input-size',
        type=int,
        nargs=2,
        metavar=('H', 'W'),
        help='export (and first check) size; default: classification 224x224, '
        'detection 320x320, segmentation 512x512 (our test pipelines)',
    )
    parser.add_argument('--opset', type=int, default=DEFAULT_OPSET, help='ONNX opset version')
    parser.add_argument(
        '--no-dynamic',
        action='store_true',
        help='fix batch, H and W to the export shape (default: dynamic axes)',
    )
    parser.add_argument(
        '--tolerance',
        type=float,
        default=1e-4,
        help='largest accepted relative difference onnxruntime vs PyTorch',
    )
    parser.add_argument(
        '--end2end',
        action='store_true',
        help='export the whole prediction (detections with NMS / label map / '
        'top-k) instead of the raw network outputs',
    )
    parser.add_argument(
        '--topk', type=int, default=5, help='--end2end classification: classes kept per image'
    )
    parser.add_argument(
        '--check-split',
        default='test',
        choices=('train', 'val', 'test'),
        help='--end2end: the data split whose images the check runs on',
    )
    parser.add_argument(
        '--check-images',
        type=int,
        default=4,
        help='--end2end: how many images of that split (spread over it)',
    )
    return parser.parse_args(argv)


def check_sizes(size, dynamic: bool) -> list:
    """(N, H, W) of the parity checks: the export shape, and with dynamic axes another one."""
    sizes = [(1,) + tuple(size)]
    if dynamic:
        # batch 2 and a non-square size of another aspect ratio, multiples of 8
        h, w = size
        sizes.append((2, max(32, (h - h // 4) // 8 * 8), max(32, (w + w // 4) // 8 * 8)))
    return sizes


def describe_preprocessing(model, cfg) -> list:
    """Lines saying how an image becomes the ONNX input (pipeline resize + data_preprocessor)."""
    info = preprocessing_info(model)
    dataset = cfg.get('test_dataloader', {}).get('dataset', {})
    while 'dataset' in dataset:
        dataset = dataset.dataset
    steps = [
        dict(t)
        for t in dataset.get('pipeline', [])
        if not any(k in str(t.get('type', '')) for k in ('Load', 'Pack'))
    ]
    lines = [
        "  1. read the image as BGR uint8 (cv2/mmcv), then the config's test transforms: "
        + (', '.join(str(s) for s in steps) or 'none')
    ]
    lines.append(
        '  2. '
        + (
            'reverse the channels (BGR -> RGB), '
            if info['bgr_to_rgb']
            else 'keep BGR channel order, '
        )
        + 'HWC -> CHW float32'
    )
    if info['mean'] is not None:
        lines.append(f'  3. (x - mean) / std per channel, mean={info["mean"]}, std={info["std"]}')
    else:
        lines.append('  3. no normalization (the model has none)')
    if info['test_padding']:
        lines.append(
            f'  (PyTorch testing also pads the batch {info["test_padding"]}; the ONNX '
            'model takes any size, padding is optional)'
        )
    return lines


def describe_outputs(path: str) -> list:
    """``name: [dims]`` per graph output, symbolic (dynamic) dims by name."""
    import onnx

    graph = onnx.load(path, load_external_data=False).graph
    lines = []
    for value in list(graph.input) + list(graph.output):
        dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        kind = 'input ' if value in graph.input else 'output'
        lines.append(f'  {kind} {value.name}: {dims}')
    return lines


POSTPROCESS_USAGE = """\
post-processing (decoding, score threshold, NMS, rescaling: mmdet's own code):
  from mobileone_dense.deploy import ssd_postprocess
  outs = session.run(None, {{'input': x}})          # x: (N, 3, H, W) as above
  n = len(outs) // 2
  metas = [dict(img_shape=(H, W), ori_shape=(h0, w0), scale_factor=(W / w0, H / h0))]
  samples = ssd_postprocess(outs[:n], outs[n:], {config!r}, metas)
  samples[0].pred_instances.bboxes / .scores / .labels   # boxes in original-image pixels"""


def end2end_batches(model, cfg, split: str, count: int) -> list:
    """Preprocessed batches of ``count`` images of ``split`` at the test size and the second
    size (the export check's inputs)."""
    pipeline = innermost_dataset(cfg.test_dataloader.dataset).pipeline
    batches = []
    for scale in ((1.0, 1.0), SECOND_SCALE):
        dataset = split_dataset(cfg, split, pipeline_at_scale(pipeline, *scale))
        if len(dataset) == 0:
            raise InputError(f"the config's {split} split has no images to check the export on")
        batches += preprocessed_batches(
            model, dataset, spread_indices(len(dataset), count), batch_size=2
        )
    return batches


def export_checked(model, args, out: str, size: tuple, dynamic: bool) -> list:
    """Export to a temp file beside ``out``, check it, rename it to ``out``; the report lines."""
    lines = []

    def write(tmp: str) -> None:
        if args.end2end:
            batches = end2end_batches(model, model.cfg, args.check_split, args.check_images)
            export_end2end(
                model, tmp, (1, 3) + size, dynamic=dynamic, opset=args.opset, topk=args.topk
            )
            report = check_end2end(model, tmp, batches)
            sizes = sorted(set(report['sizes']), key=report['sizes'].index)
            what = (
                f'{report["detections"]} detections equal to model.predict (largest box '
                f'difference {report["max_box_diff"]:.1e} px, score difference '
                f'{report["max_score_diff"]:.1e}; {report["at_cut"]} on one side only, '
                'with a score at the cut)'
                if exportable_task(model) == 'detection'
                else 'outputs equal to PyTorch'
            )
            lines.append(
                f'end-to-end check on {report["images"] // 2} images of the '
                f'{args.check_split} split, each at input sizes '
                f'{" and ".join(f"{h}x{w}" for h, w in sizes[:2])}: {what}'
            )
            return
        export_onnx(model, tmp, (1, 3) + size, dynamic=dynamic, opset=args.opset)
        generator = torch.Generator().manual_seed(0)
        results = []
        for n, h, w in check_sizes(size, dynamic):
            inputs = torch.randn(n, 3, h, w, generator=generator)
            results.append(((n, 3, h, w), check_onnx_parity(model, tmp, inputs)))
        for shape, error in results:
            lines.append(
                f'onnxruntime vs PyTorch, input {shape}: max relative difference {error:.2e}'
            )
        worst = max(error for _, error in results)
        if worst > args.tolerance:
            print('\n'.join(lines))
            raise OnnxParityError(
                f'onnxruntime outputs differ from PyTorch by {worst:.2e} '
                f'(relative) > tolerance {args.tolerance:g}'
            )

    write_atomically(out, write, '.onnx')
    return lines


def main(argv=None) -> int:
    args = parse_args(argv)
    out = args.out or osp.splitext(args.checkpoint)[0] + '.onnx'
    try:
        require_onnx()
        model = init_model(args.config, args.checkpoint)  # strict load + reparameterize + eval
        task = exportable_task(model)
    except (ImportError, FileNotFoundError, ValueError, TypeError, InputError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 1
    size = tuple(args.input_size or DEFAULT_INPUT_SIZE[task])
    dynamic = not args.no_dynamic
    try:
        print('\n'.join(export_checked(model, args, out, size, dynamic)))
    except (OnnxParityError, InputError, ValueError, TypeError) as error:
        print(f'error: {error}; no ONNX file written', file=sys.stderr)
        return 1
    print(
        f'\nwrote {out} ({task}{", end to end" if args.end2end else ""}, opset {args.opset}, '
        f'{"dynamic batch/H/W" if dynamic else f"static 1x3x{size[0]}x{size[1]}"}, '
        + (f'verified within {args.tolerance:g})' if not args.end2end else 'verified)')
    )
    print('\n'.join(describe_outputs(out)))
    print('input preprocessing (what model.data_preprocessor does in PyTorch):')
    print('\n'.join(describe_preprocessing(model, model.cfg)))
    if args.end2end:
        print(
            'run it without torch or OpenMMLab: python demo/onnx_demo.py IMAGE '
            + out
            + " --out-file out.png  (preprocessing and classes: the file's metadata)"
        )
    elif task == 'detection':
        print(POSTPROCESS_USAGE.format(config=args.config))
    elif task == 'segmentation':
        print(
            'labels: seg_logits.argmax(1) (N, H, W); resize the logits to the original image '
            'size first for full-resolution labels, as mmseg does'
        )
    else:
        print("outputs: logits before softmax; class names are the dataset's")
    return 0


if __name__ == '__main__':
    sys.exit(main())
