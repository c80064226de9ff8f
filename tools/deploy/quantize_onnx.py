"""INT8 post-training quantization of an exported model, its accuracy held by a float fallback.

    python tools/deploy/quantize_onnx.py CONFIG FLOAT.onnx [--out INT8.onnx]
        [--max-drop 1] [--no-fallback] [--selection-images 100] [--eval-images 0]
        [--method MinMax|Entropy|Percentile] [--percentile 99.999] [--calib-images 32]
        [--equalize] [--per-tensor] [--exclude-first-last] [--exclude NODE ...]
        [--activation-type QUInt8] [--repeats 30] [--threads N] [--cfg-options KEY=VALUE ...]
        [--out-json results.json]

FLOAT.onnx is a file of tools/deploy/export_onnx.py (raw outputs or --end2end) for CONFIG's
model. onnxruntime static quantization, QDQ format, INT8 weights per output channel (unless
--per-tensor), activation ranges calibrated on --calib-images images of CONFIG's **training**
split read through CONFIG's test pipeline. --equalize: cross-layer equalization of the
conv -> ReLU -> conv pairs first (mobileone_dense/deploy/equalization.py; the same float
function, balanced per-channel weight ranges); the fallback then works on the equalized model.
Off by default: on our models it did not reduce what must stay float without losing accuracy
(docs/deployment.md, section 2).

Float fallback (unless --no-fallback): when the fully quantized model loses more than
--max-drop points of the budget metric (mAP@0.5 for detection, mIoU for segmentation, top-1
agreement with the float model for classification) on --selection-images images of the val
split, the layer groups whose quantization costs the most (stem, stages, then their blocks;
neck, head convs) stay float until the budget holds. The report then evaluates float32, the
fully quantized model and the written one on the **other** val images (disjoint from the
selection images; --eval-images of them, 0: all), with the config's val_evaluator, file sizes and
onnxruntime latencies at batch 1 (timed in turns, median). The INT8 file is written only when
quantization succeeds (temp file + rename). No checkpoint is needed: CONFIG only provides the
data, the preprocessing and the post-processing of raw outputs.
"""

import argparse
import json
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))  # a checkout
from mmengine.config import Config, DictAction

import mobileone_dense  # noqa: F401
from mobileone_dense.apis.model_building import build_model_from_config
from mobileone_dense.deploy.onnx_data import disjoint_indices, preprocessed_batches, split_dataset
from mobileone_dense.deploy.onnx_evaluation import (
    TASK_METRICS,
    compare_models,
)
from mobileone_dense.deploy.onnx_export import onnx_session, require_onnx
from mobileone_dense.deploy.onnx_metadata import read_metadata
from mobileone_dense.deploy.quantization import (
    METHODS,
    Calibration,
    boundary_convs,
    calibration_feeds,
)
from mobileone_dense.deploy.quantization_fallback import (
    BUDGET_METRIC,
    add_fallback_arguments,
    search_float_layers,
    selection_metric,
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
    add_fallback_arguments(parser)
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
        '--equalize',
        action='store_true',
        help='cross-layer equalization of the conv -> ReLU -> conv pairs before calibration',
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
        help='evaluate on this many of the val images not used for selection (0: all)',
    )
    parser.add_argument('--repeats', type=int, default=30, help='timed runs per model')
    parser.add_argument(
        '--threads',
        type=int,
        default=0,
        help='onnxruntime intra-op threads (0: onnxruntime default)',
    )
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override settings of CONFIG, e.g. val_dataloader.dataset.data_root=DIR',
    )
    parser.add_argument('--out-json', help='also write the comparison as JSON')
    return parser.parse_args(argv)


def format_table(rows: list, task: str) -> str:
    """The rows (float32 first) as a Markdown table, and the differences to float32."""
    labels = [label for _, label, _ in TASK_METRICS[task]]
    labels += ['agreement'] if task == 'classification' else []
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
    for row in rows[1:]:
        lines.append(
            f'{row["model"]} - float32: {row[first] - rows[0][first]:+.1f} {first} points, size '
            f'x{row["size_mb"] / rows[0]["size_mb"]:.2f}, latency '
            f'x{row["latency_ms"] / rows[0]["latency_ms"]:.2f}'
        )
    return '\n'.join(lines)


def quantize(args, cfg, model, meta, out):
    """Calibrate, choose the float layers, write ``out``, compare: the JSON result."""
    task = meta['task']
    feeds = calibration_feeds(model, cfg, args.calib_images, task)
    dataset = split_dataset(cfg, 'val')
    selection, evaluation = disjoint_indices(
        len(dataset), 0 if args.no_fallback else args.selection_images, args.eval_images
    )
    if not args.no_fallback and not selection:
        raise InputError(
            f'the val split has {len(dataset)} image(s): the float fallback needs 2 or more '
            '(or give --no-fallback)'
        )
    print(
        f'calibrating on {len(feeds)} images of the train split ({args.method}'
        f'{f" {args.percentile}" if args.method == "Percentile" else ""}, weights '
        f'{"per tensor" if args.per_tensor else "per channel"}); val split: '
        f'{len(selection)} images to choose the float fallback, {len(evaluation)} others for '
        'the report',
        flush=True,
    )
    threads = args.threads or None
    with Calibration(
        args.model,
        feeds,
        osp.dirname(osp.abspath(out)),
        args.method,
        not args.per_tensor,
        args.percentile,
        args.activation_type,
        args.equalize,
    ) as calibration:
        if calibration.equalization is not None:
            print(calibration.equalization.summary(), flush=True)
        exclude = list(args.exclude)
        exclude += boundary_convs(calibration.prepared) if args.exclude_first_last else []
        search = None
        if not args.no_fallback:
            batches = preprocessed_batches(model, dataset, selection)
            metric_of, float_metric = selection_metric(
                task,
                onnx_session(args.model, threads, spin=False),
                meta,
                model,
                cfg,
                batches,
                dataset,
            )
            print(f'float fallback, budget {args.max_drop} {BUDGET_METRIC[task]} points:')
            search = search_float_layers(
                calibration, metric_of, float_metric, args.max_drop, exclude, threads, print
            )
            exclude += search.float_layers
        kept = calibration.write(out, exclude)
        paths = dict(float32=args.model)
        if search is not None and search.float_layers:
            plain = osp.join(calibration.work, 'all_int8.onnx')
            calibration.write(plain, list(args.exclude))
            paths['int8, all layers'] = plain
        paths['int8'] = out
        batches = preprocessed_batches(model, dataset, evaluation)
        rows = compare_models(paths, model, cfg, batches, dataset, args.repeats, threads)
    for row in rows:
        row['path'] = None if row['model'] == 'int8, all layers' else row['path']
    fallback = None
    if search is not None:
        fallback = dict(
            metric=BUDGET_METRIC[task],
            max_drop=args.max_drop,
            selection_images=len(selection),
            float_groups=search.float_layers,
            float_metric=search.float_metric,
            quantized_metric=search.quantized_metric,
            metric_with_fallback=search.metric,
            within_budget=search.within_budget,
            sensitivity=search.sensitivity,
            evaluations=search.evaluations,
        )
    equalization = calibration.equalization
    if equalization is not None:  # the number of pairs (their names are the graph's)
        equalization = dict(vars(equalization), pairs=len(equalization.pairs))
    return dict(
        kept_float=kept,
        fallback=fallback,
        equalization=equalization,
        rows=rows,
        eval_images=len(evaluation),
    )


def report(result, task, out) -> None:
    """What stayed float and why, and the comparison table."""
    fallback, rows = result['fallback'], result['rows']
    if fallback:
        groups = fallback['float_groups']
        print(
            f'on the {fallback["selection_images"]} selection images, {fallback["metric"]}: '
            f'float {fallback["float_metric"]:.2f}, all INT8 {fallback["quantized_metric"]:.2f}, '
            f'written {fallback["metric_with_fallback"]:.2f} ({fallback["evaluations"]} models '
            'tried)'
        )
        if not fallback['within_budget']:
            print('warning: the budget is not met even with every candidate float')
        if groups:
            plain, final = rows[1], rows[-1]
            print(
                f'kept float: {", ".join(groups)} ({len(result["kept_float"])} nodes); cost '
                f'against all INT8: size {plain["size_mb"]:.2f} -> {final["size_mb"]:.2f} MB, '
                f'latency {plain["latency_ms"]:.2f} -> {final["latency_ms"]:.2f} ms'
            )
        else:
            print('kept float: nothing (all INT8 is within the budget)')
    print(f'wrote {out}')
    print(f'\n{task}, the other {result["eval_images"]} val images, onnxruntime CPU:')
    print(format_table(rows, task))


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
        if args.cfg_options:
            cfg.merge_from_dict(args.cfg_options)
        model = build_model_from_config(cfg).eval()  # preprocessing and post-processing only
        result = quantize(args, cfg, model, meta, out)
    except (ImportError, FileNotFoundError, ValueError, TypeError, InputError) as error:
        print(f'error: {error}; no INT8 file written', file=sys.stderr)
        return 1
    report(result, meta['task'], out)
    if args.out_json:
        result['settings'] = {k: v for k, v in vars(args).items() if k != 'out_json'}

        def write(tmp: str) -> None:
            with open(tmp, 'w') as f:
                json.dump(result, f, indent=1)

        write_atomically(args.out_json, write, '.json')
    return 0


if __name__ == '__main__':
    sys.exit(main())
