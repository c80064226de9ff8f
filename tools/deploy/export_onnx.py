"""Export the fused model of a config + checkpoint to ONNX, verified against PyTorch.

    python tools/deploy/export_onnx.py CONFIG CHECKPOINT [--out model.onnx] [--input-size H W]
        [--opset N] [--no-dynamic] [--tolerance 1e-4]

CHECKPOINT is a training checkpoint of CONFIG (loaded strictly, EMA weights when present, then
fused) or a deploy checkpoint with its deploy config (tools/reparameterize.py, ReparameterizeHook).

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
"""
import argparse
import os
import os.path as osp
import sys
import tempfile

import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))  # a checkout
import mobileone_dense  # noqa: E402,F401

from mobileone_dense.apis.inference import init_model  # noqa: E402
from mobileone_dense.apis.onnx_export import (DEFAULT_INPUT_SIZE, DEFAULT_OPSET,  # noqa: E402
                                              OnnxParityError, check_onnx_parity, export_onnx,
                                              model_task, preprocessing_info, require_onnx)
from mobileone_dense.errors import InputError  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                     epilog=__doc__.split('\n\n', 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='the config (training or deploy config)')
    parser.add_argument('checkpoint', help='training checkpoint, or deploy checkpoint with its '
                        'deploy config')
    parser.add_argument('--out', help='ONNX file to write (default: the checkpoint path with '
                        'the .onnx suffix)')
    parser.add_argument('--input-size', type=int, nargs=2, metavar=('H', 'W'),
                        help='export (and first check) size; default: classification 224x224, '
                        'detection 320x320, segmentation 512x512 (our test pipelines)')
    parser.add_argument('--opset', type=int, default=DEFAULT_OPSET, help='ONNX opset version')
    parser.add_argument('--no-dynamic', action='store_true',
                        help='fix batch, H and W to the export shape (default: dynamic axes)')
    parser.add_argument('--tolerance', type=float, default=1e-4,
                        help='largest accepted relative difference onnxruntime vs PyTorch')
    return parser.parse_args(argv)


def check_sizes(size, dynamic: bool) -> list:
    """(N, H, W) of the parity checks: the export shape, and with dynamic axes another one."""
    sizes = [(1, ) + tuple(size)]
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
    steps = [dict(t) for t in dataset.get('pipeline', [])
             if not any(k in str(t.get('type', '')) for k in ('Load', 'Pack'))]
    lines = ['  1. read the image as BGR uint8 (cv2/mmcv), then the config\'s test transforms: '
             + (', '.join(str(s) for s in steps) or 'none')]
    lines.append('  2. ' + ('reverse the channels (BGR -> RGB), ' if info['bgr_to_rgb'] else
                            'keep BGR channel order, ') + 'HWC -> CHW float32')
    if info['mean'] is not None:
        lines.append(f'  3. (x - mean) / std per channel, mean={info["mean"]}, std={info["std"]}')
    else:
        lines.append('  3. no normalization (the model has none)')
    if info['test_padding']:
        lines.append(f'  (PyTorch testing also pads the batch {info["test_padding"]}; the ONNX '
                     'model takes any size, padding is optional)')
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


POSTPROCESS_USAGE = '''\
post-processing (decoding, score threshold, NMS, rescaling: mmdet's own code):
  from mobileone_dense.apis import ssd_postprocess
  outs = session.run(None, {{'input': x}})          # x: (N, 3, H, W) as above
  n = len(outs) // 2
  metas = [dict(img_shape=(H, W), ori_shape=(h0, w0), scale_factor=(W / w0, H / h0))]
  samples = ssd_postprocess(outs[:n], outs[n:], {config!r}, metas)
  samples[0].pred_instances.bboxes / .scores / .labels   # boxes in original-image pixels'''


def main(argv=None) -> int:
    args = parse_args(argv)
    out = args.out or osp.splitext(args.checkpoint)[0] + '.onnx'
    try:
        require_onnx()
        model = init_model(args.config, args.checkpoint)  # strict load + fuse + eval
        task = model_task(model)
    except (ImportError, FileNotFoundError, ValueError, TypeError, InputError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 1
    size = tuple(args.input_size or DEFAULT_INPUT_SIZE[task])
    dynamic = not args.no_dynamic
    folder = osp.dirname(osp.abspath(out))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.' + osp.basename(out) + '.', suffix='.onnx', dir=folder)
    os.close(fd)
    try:
        names = export_onnx(model, tmp, (1, 3) + size, dynamic=dynamic, opset=args.opset)
        generator = torch.Generator().manual_seed(0)
        results = []
        for n, h, w in check_sizes(size, dynamic):
            inputs = torch.randn(n, 3, h, w, generator=generator)
            results.append(((n, 3, h, w), check_onnx_parity(model, tmp, inputs)))
        for shape, error in results:
            print(f'onnxruntime vs PyTorch, input {shape}: max relative difference {error:.2e}')
        worst = max(error for _, error in results)
        if worst > args.tolerance:
            raise OnnxParityError(f'onnxruntime outputs differ from PyTorch by {worst:.2e} '
                                  f'(relative) > tolerance {args.tolerance:g}')
        os.replace(tmp, out)
    except OnnxParityError as error:
        print(f'error: {error}; no ONNX file written', file=sys.stderr)
        return 1
    finally:
        if osp.exists(tmp):
            os.remove(tmp)
    print(f'\nwrote {out} ({task}, opset {args.opset}, '
          f'{"dynamic batch/H/W" if dynamic else f"static 1x3x{size[0]}x{size[1]}"}, '
          f'verified within {args.tolerance:g})')
    print('\n'.join(describe_outputs(out)))
    print('input preprocessing (what model.data_preprocessor does in PyTorch):')
    print('\n'.join(describe_preprocessing(model, model.cfg)))
    if task == 'detection':
        print(POSTPROCESS_USAGE.format(config=args.config))
    elif task == 'segmentation':
        print('labels: seg_logits.argmax(1) (N, H, W); resize the logits to the original image '
              'size first for full-resolution labels, as mmseg does')
    else:
        print(f'outputs: {names[0]} before softmax; class names are the dataset\'s')
    return 0


if __name__ == '__main__':
    sys.exit(main())
