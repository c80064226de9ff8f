"""Export the deploy model of a config + checkpoint to an ExecuTorch program (XNNPACK), checked.

    python tools/deploy/export_executorch.py CONFIG CHECKPOINT [--out model.pte]
        [--input-size H W] [--check-split test] [--check-images 4] [--tolerance 1e-3]
        [--int8 [--calib-images 32] [--max-drop 1.0] [--no-fallback] [--selection-images 100]
                [--eval-images 0] [--exclude MODULE ...]]
        [--threads N] [--cfg-options KEY=VALUE ...]

CHECKPOINT is a training checkpoint of CONFIG (re-parameterized after loading) or a deploy
checkpoint with its deploy config. The program (mobileone_dense/deploy/executorch_export.py)
takes one fixed input, float32 (1, 3, H, W): the image through the config's test transforms
(resized to H x W) and the model's data preprocessor; it returns the raw outputs of the ONNX
export: classification logits, segmentation logits at the input size, detection the SSD head's
cls_score_<i> and bbox_pred_<i> per level (decoding and NMS run outside the program: ExecuTorch
has no NMS kernel). A JSON file beside the .pte (model.pte -> model.json) records the input
size, the preprocessing, the outputs, the classes, for detection the anchors, box coder and
NMS settings that mobileone_dense/deploy/numpy_postprocess.py needs, and what was checked.

Before anything is written, the program runs in executorch.runtime on --check-images images of
the --check-split split: float32 outputs must be within --tolerance (relative) of PyTorch's;
detection outputs, post-processed by mmdet's own code (ssd_postprocess) and by the numpy
decoding + NMS, must give model.predict's detections (the tie rule of docs/deployment.md).

--int8: PT2E quantization with XNNPACK's quantizer (per-channel INT8 weights, INT8 activations
calibrated on --calib-images images of the training split through the test pipeline). Float
fallback (unless --no-fallback), as tools/deploy/quantize_onnx.py does it: when the fully
quantized program loses more than --max-drop points of the budget metric (mAP@0.5, mIoU, or the
top-1 agreement with the float program) on --selection-images val images, the modules whose
quantization costs the most stay float (mobileone_dense/deploy/executorch_fallback.py: the
model's modules, coarse first). The float and the INT8 program are then evaluated with the
config's evaluator on the other val images (--eval-images of them, 0: all; detection reports
mAP and mAP@0.5), and the INT8 file is written only if its mAP@0.5, mIoU or top-1 is at most
--max-drop points below the float program's. --exclude keeps modules float in any case (the
model's module names, e.g. backbone.stem backbone.stages.0).
"""

import argparse
import os.path as osp
import sys
import time

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))  # a checkout
from mmengine.config import Config, DictAction

import mobileone_dense  # noqa: F401
from mobileone_dense.apis.inference import init_model
from mobileone_dense.datasets.wrappers import innermost_dataset
from mobileone_dense.deploy.executorch_check import (
    check_detector,
    default_input_size,
    evaluate_program,
    fixed_size_batches,
    fixed_size_dataset,
    fixed_size_pipeline,
)
from mobileone_dense.deploy.executorch_export import (
    PteRunner,
    check_module_names,
    check_pte,
    export_program,
    pte_metadata,
    require_executorch,
    write_pte,
)
from mobileone_dense.deploy.executorch_fallback import search_float_modules
from mobileone_dense.deploy.onnx_data import disjoint_indices
from mobileone_dense.deploy.onnx_evaluation import task_metrics
from mobileone_dense.deploy.onnx_export import exportable_task
from mobileone_dense.deploy.onnx_metadata import detection_decoding, test_transforms
from mobileone_dense.deploy.quantization_fallback import BUDGET_METRIC, add_fallback_arguments
from mobileone_dense.errors import InputError, MissingDataError, OnnxParityError

# The metric of the report that must stay within --max-drop of float's before the INT8 file is
# written: the task metric the fallback's budget counts in (top-1 itself for classification: the
# report has labels, the selection images' agreement is the fallback's concern).
GATED_METRIC = dict(detection='mAP@0.5', segmentation='mIoU', classification='top-1')


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n')[0],
        epilog=__doc__.split('\n\n', 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument('config', help='the config (training or deploy config)')
    parser.add_argument('checkpoint', help='training checkpoint, or deploy checkpoint')
    parser.add_argument('--out', help='.pte file (default: the checkpoint path with .pte)')
    parser.add_argument(
        '--input-size',
        type=int,
        nargs=2,
        metavar=('H', 'W'),
        help="the program's input size (default: what the test pipeline gives, e.g. 320x320 "
        'for SSDLite, 224x224 for ImageNet; else 512x512 for segmentation)',
    )
    parser.add_argument('--check-split', default='test', choices=('train', 'val', 'test'))
    parser.add_argument('--check-images', type=int, default=4)
    parser.add_argument(
        '--tolerance',
        type=float,
        default=1e-3,
        help='float32: relative difference vs PyTorch (rounding; a wrong graph is far above)',
    )
    parser.add_argument('--int8', action='store_true', help='PT2E INT8 (XNNPACK quantizer)')
    parser.add_argument('--calib-images', type=int, default=32)
    add_fallback_arguments(parser)  # --int8: --max-drop, --no-fallback, --selection-images
    parser.add_argument(
        '--eval-images',
        type=int,
        default=0,
        help='INT8: val images, not used for selection, that the result is reported on (0: all)',
    )
    parser.add_argument('--exclude', nargs='+', default=[], metavar='MODULE')
    parser.add_argument('--threads', type=int, default=None, help='XNNPACK threads')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override settings of CONFIG, e.g. val_dataloader.dataset.data_root=DIR',
    )
    args = parser.parse_args(argv)
    for name in ('check_images', 'calib_images'):
        if getattr(args, name) < 1:
            parser.error(f'--{name.replace("_", "-")} must be >= 1')
    return args


def load(program: bytes, threads, form: str) -> PteRunner:
    """The program in ``executorch.runtime``; XNNPACK's refusal to build it becomes an error
    that says what to do."""
    try:
        return PteRunner(program, threads)
    except RuntimeError as error:
        raise OnnxParityError(
            f'executorch.runtime cannot load the {form} program ({error}; XNNPACK printed why '
            'above, e.g. xnn_status_unsupported_parameter)'
            + ('; keep the modules it refuses float with --exclude' if form == 'int8' else '')
        ) from error


def float_checks(model, runner, batches, task: str, tolerance: float) -> tuple:
    """Compare the float program with PyTorch on the check batches; (report lines, JSON)."""
    error = check_pte(model, runner, [inputs for inputs, _ in batches])
    check = dict(images=len(batches), max_relative_difference=error, tolerance=tolerance)
    lines = [
        f'executorch.runtime vs PyTorch on {len(batches)} images: '
        f'max relative difference {error:.2e}'
    ]
    if error > tolerance:
        raise OnnxParityError(f'outputs differ from PyTorch by {error:.2e} > {tolerance:g}')
    if task == 'detection':
        reports = check_detector(model, runner, batches, detection_decoding(model))
        for path, report in reports.items():
            how = 'ssd_postprocess (mmdet)' if path == 'mmdet' else 'numpy decoding + NMS'
            lines.append(
                f'  through {how}: {report["detections"]} detections equal to model.predict '
                f'(largest box difference {report["max_box_diff"]:.1e} px, score difference '
                f'{report["max_score_diff"]:.1e}; {report["at_cut"]} at the score cut, '
                f'{report["tied"]} tied, on one side only)'
            )
        check['detections'] = reports
    return lines, check


def gated_metric(scores: dict, task: str, max_drop: float) -> str:
    """The name of the metric the INT8 program must hold (:data:`GATED_METRIC`); raises when
    ``scores['int8']`` is more than ``max_drop`` points below ``scores['float32']`` in it."""
    metric = GATED_METRIC[task]
    drop = scores['float32'][metric] - scores['int8'][metric]
    if drop > max_drop:
        raise OnnxParityError(
            f'INT8 loses {drop:.2f} {metric} points > --max-drop {max_drop:g} on the '
            'evaluation images; keep more modules float with --exclude, or choose the fallback '
            'on more images (--selection-images; see docs/deployment.md)'
        )
    return metric


def int8_program(model, cfg, args, shape, float_program) -> tuple:
    """Calibrate, keep the modules that break INT8 float (unless --no-fallback), quantize,
    evaluate against the float program on val images the choice did not see; (program,
    lines, JSON)."""
    size = shape[2:]
    calibration = [x for x, _ in fixed_size_batches(model, cfg, 'train', args.calib_images, size)]
    dataset = fixed_size_dataset(cfg, 'val', size)
    selection, evaluation = disjoint_indices(
        len(dataset), 0 if args.no_fallback else args.selection_images, args.eval_images
    )
    if not args.no_fallback and not selection:
        raise InputError(
            f'the val split has {len(dataset)} image(s): the float fallback needs 2 or more '
            '(or give --no-fallback)'
        )
    float_modules, search, lines = list(args.exclude), None, []
    start = time.perf_counter()
    if not args.no_fallback:
        task = exportable_task(model)
        print(
            f'float fallback on {len(selection)} val images, budget {args.max_drop} '
            f'{BUDGET_METRIC[task]} points:',
            flush=True,
        )
        search = search_float_modules(
            model,
            cfg,
            float_program,
            calibration,
            fixed_size_batches(model, cfg, 'val', 0, size, indices=selection),
            dataset,
            args.max_drop,
            args.exclude,
            args.threads,
            lambda line: print(line, flush=True),
        )
        float_modules += search.float_layers
        lines.append(
            f'float fallback ({search.evaluations} programs tried, '
            f'{time.perf_counter() - start:.0f} s): {BUDGET_METRIC[task]} on the selection '
            f'images float {search.float_metric:.2f}, all INT8 {search.quantized_metric:.2f}, '
            f'written {search.metric:.2f}; kept float: {search.float_layers or "nothing"}'
        )
    program = export_program(model, shape, True, calibration, float_modules)
    batches = fixed_size_batches(model, cfg, 'val', 0, size, indices=evaluation)
    scores = {}
    for name, data in (('float32', float_program), ('int8', program)):
        metrics = evaluate_program(load(data, args.threads, name), model, batches, cfg, 'val')
        scores[name] = task_metrics(exportable_task(model), metrics)
    metric = gated_metric(scores, exportable_task(model), args.max_drop)
    shown = ', '.join(
        f'{name} {scores["float32"][name]:.2f} -> {scores["int8"][name]:.2f}'
        for name in scores['float32']
    )
    lines.append(
        f'INT8 (calibrated on {len(calibration)} training images), {len(batches)} other val '
        f'images, float32 -> INT8: {shown}; float modules: {float_modules or "none"}'
    )
    info = dict(
        scheme='PT2E, XNNPACKQuantizer symmetric INT8, per-channel weights, static activations',
        calibration_images=len(calibration),
        calibration_split='train',
        float_modules=float_modules,
        fallback=None
        if search is None
        else dict(
            metric=BUDGET_METRIC[exportable_task(model)],
            max_drop=args.max_drop,
            selection_images=len(selection),
            float_metric=search.float_metric,
            quantized_metric=search.quantized_metric,
            metric_with_fallback=search.metric,
            within_budget=search.within_budget,
            evaluations=search.evaluations,
        ),
        metric=metric,
        float32=scores['float32'][metric],
        int8=scores['int8'][metric],
        metrics=scores,
        eval_images=len(batches),
    )
    return program, lines, info


def export(args) -> list:
    """Build, check and write; the report lines. Raises on any failed check."""
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    model = init_model(cfg, args.checkpoint)  # strict load + reparameterize + eval
    task = exportable_task(model)
    check_module_names(model, args.exclude)
    size = tuple(args.input_size or default_input_size(cfg, task))
    shape = (1, 3) + size
    pipeline = fixed_size_pipeline(innermost_dataset(cfg.test_dataloader.dataset).pipeline, size)
    batches = fixed_size_batches(model, cfg, args.check_split, args.check_images, size)
    start = time.perf_counter()
    program = export_program(model, shape)
    lines = [f'exported {task} at {size[0]}x{size[1]} in {time.perf_counter() - start:.0f} s']
    check_lines, check = float_checks(
        model, load(program, args.threads, 'float32'), batches, task, args.tolerance
    )
    lines += check_lines
    quantization = None
    if args.int8:
        program, int8_lines, quantization = int8_program(model, cfg, args, shape, program)
        lines += int8_lines
    transforms = test_transforms(dict(test_dataloader=dict(dataset=dict(pipeline=pipeline))))
    meta = pte_metadata(model, shape, transforms, quantization, check)
    write_pte(args.out, program, meta)
    return lines


def main(argv=None) -> int:
    args = parse_args(argv)
    args.out = (
        args.out or osp.splitext(args.checkpoint)[0] + ('_int8' if args.int8 else '') + '.pte'
    )
    try:
        require_executorch()
        lines = export(args)
    except (
        ImportError,
        FileNotFoundError,
        ValueError,
        TypeError,
        InputError,
        MissingDataError,
        OnnxParityError,
    ) as error:
        print(f'error: {error}; no .pte file written', file=sys.stderr)
        return 1
    print('\n'.join(lines))
    print(f'wrote {args.out} and {osp.splitext(args.out)[0]}.json')
    return 0


if __name__ == '__main__':
    sys.exit(main())
