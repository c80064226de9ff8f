"""INT8 post-training quantization of an exported model, compared with the float model.

    python tools/deploy/quantize_onnx.py CONFIG FLOAT.onnx [--out INT8.onnx]
        [--method MinMax|Entropy|Percentile] [--percentile 99.999] [--calib-images 32]
        [--per-tensor] [--exclude-first-last] [--exclude NODE ...] [--activation-type QUInt8]
        [--eval-images 0] [--repeats 30] [--threads N] [--out-json results.json]

FLOAT.onnx is a file of tools/deploy/export_onnx.py (raw outputs or --end2end) for CONFIG's
model. onnxruntime static quantization, QDQ format, INT8 weights per output channel (unless
--per-tensor), activation ranges calibrated on --calib-images images of CONFIG's **training**
split read through CONFIG's test pipeline (never the split it is evaluated on). Then both models
are evaluated on the val split with the config's val_evaluator (mAP for detection, mIoU for
segmentation, top-1 for classification), and their file sizes and onnxruntime latencies at batch
1 (timed in turns, median) printed side by side. The INT8 file is written only when quantization
succeeds (temp file + rename). No checkpoint is needed: CONFIG only provides the data, the
preprocessing and the post-processing of raw outputs.
"""

import argparse
import json
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))  # a checkout
from mmengine.config import Config

import mobileone_dense  # noqa: F401
from mobileone_dense.apis.model_building import build_model_from_config
from mobileone_dense.deploy.onnx_export import require_onnx
from mobileone_dense.deploy.onnx_metadata import read_metadata
from mobileone_dense.deploy.quantization import (
    METHODS,
    TASK_METRICS,
    calibration_feeds,
    compare_float_int8,
    quantize_onnx,
)
from mobileone_dense.engine.deploy_checkpoints import write_atomically
from mobileone_dense.errors import InputError


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n')[0],
        epilog=__doc__.split('\n\n', 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument('config', help="the model's config (training or deploy config)")
    parser.add_argument('model', help='float ONNX file written by tools/deploy/export_onnx.py')
    parser.add_argument('--out', help='INT8 file (default: FLOAT_int8.onnx)')
    parser.add_argument(
        '--method', default='MinMax', choices=METHODS, help='activation range calibration'
    )
    parser.add_argument(
        '--percentile',
        type=float,
        default=99.999,
        help='--method Percentile: the percentile of |activation| kept',
    )
    parser.add_argument(
        '--calib-images', type=int, default=32, help='calibration images from the training split'
    )
    parser.add_argument(
        '--per-tensor',
        action='store_true',
        help='one weight scale per tensor instead of per output channel',
    )
    parser.add_argument(
        '--exclude-first-last',
        action='store_true',
        help='keep the first conv and the output convs in float',
    )
    parser.add_argument(
        '--exclude',
        nargs='*',
        default=[],
        metavar='NODE',
        help='more ONNX nodes to keep in float: names, or prefixes ending in "/" '
        '(e.g. /model/backbone/stem/ /model/backbone/stages.0/)',
    )
    parser.add_argument('--activation-type', default='QUInt8', choices=('QUInt8', 'QInt8'))
    parser.add_argument(
        '--eval-images',
        type=int,
        default=0,
        help='evaluate on this many val images spread over the split (0: all)',
    )
    parser.add_argument('--repeats', type=int, default=30, help='timed runs per model')
    parser.add_argument(
        '--threads',
        type=int,
        default=0,
        help='onnxruntime intra-op threads (0: onnxruntime default)',
    )
    parser.add_argument('--out-json', help='also write the comparison as JSON')
    return parser.parse_args(argv)


def format_table(rows: list, task: str) -> str:
    """The float / INT8 rows as a Markdown table, and the accuracy difference."""
    labels = [label for _, label, _ in TASK_METRICS[task]]
    lines = [
        '| model | ' + ' | '.join(labels) + ' | size (MB) | latency (ms, batch 1) |',
        '|---' * (len(labels) + 3) + '|',
    ]
    for row in rows:
        lines.append(
            f'| {row["model"]} | '
            + ' | '.join(f'{row[k]:.1f}' for k in labels)
            + f' | {row["size_mb"]:.2f} | {row["latency_ms"]:.2f} |'
        )
    first = labels[0]
    lines.append(
        f'INT8 - float32: {rows[1][first] - rows[0][first]:+.1f} {first} points, size '
        f'x{rows[1]["size_mb"] / rows[0]["size_mb"]:.2f}, latency '
        f'x{rows[1]["latency_ms"] / rows[0]["latency_ms"]:.2f}'
    )
    return '\n'.join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = args.out or osp.splitext(args.model)[0] + '_int8.onnx'
    try:
        require_onnx()
        if not osp.isfile(args.model):
            raise InputError(
                f'ONNX file {args.model!r} does not exist: export it with '
                'tools/deploy/export_onnx.py'
            )
        meta = read_metadata(args.model)
        if not meta:
            raise InputError(
                f'{args.model!r} has no mobileone_dense metadata: export it with '
                'tools/deploy/export_onnx.py'
            )
        cfg = Config.fromfile(args.config)
        model = build_model_from_config(cfg).eval()  # preprocessing and post-processing only
        feeds = calibration_feeds(model, cfg, args.calib_images, meta['task'])
        print(
            f'calibrating on {len(feeds)} images of the train split ({args.method}'
            f'{f" {args.percentile}" if args.method == "Percentile" else ""}, weights '
            f'{"per tensor" if args.per_tensor else "per channel"})',
            flush=True,
        )
        kept = quantize_onnx(
            args.model,
            out,
            feeds,
            args.method,
            not args.per_tensor,
            args.exclude,
            args.exclude_first_last,
            args.percentile,
            args.activation_type,
        )
    except (ImportError, FileNotFoundError, ValueError, TypeError, InputError) as error:
        print(f'error: {error}; no INT8 file written', file=sys.stderr)
        return 1
    print(f'wrote {out}' + (f' (kept in float: {", ".join(kept)})' if kept else ''))
    rows = compare_float_int8(
        args.model, out, model, cfg, 'val', args.eval_images, args.repeats, args.threads or None
    )
    print(f'\n{meta["task"]}, val split, onnxruntime CPU:')
    print(format_table(rows, meta['task']))
    if args.out_json:
        result = dict(
            settings={k: v for k, v in vars(args).items() if k != 'out_json'},
            kept_float=kept,
            rows=rows,
        )

        def write(tmp: str) -> None:
            with open(tmp, 'w') as f:
                json.dump(result, f, indent=1)

        write_atomically(args.out_json, write, '.json')
    return 0


if __name__ == '__main__':
    sys.exit(main())
