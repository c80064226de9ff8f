"""Run a mobileone_dense model on images or a video; save drawings and predictions.

    python demo/image_demo.py IMAGE CONFIG CHECKPOINT --out-file out.png [--score-thr 0.3]
    python demo/image_demo.py FOLDER_OR_GLOB CONFIG CHECKPOINT --out-dir drawn/ \\
        [--out-json predictions.json] [--ann-file instances_val2017.json] [--batch-size 8]
    python demo/image_demo.py VIDEO.mp4 CONFIG CHECKPOINT --out-dir drawn/ [--out-json ...]

The model is re-parameterized (deploy form) before inference. Any image size, grayscale, RGBA and
16-bit images are accepted. Detection configs draw boxes, labels and scores; segmentation
configs a colour overlay with a legend of the classes present; classification configs the
top-5 classes and their scores. A folder or glob (quote it) gives its image files in sorted
order; a video (.mp4, .avi, .mov, .mkv, .m4v, .webm) its frames, drawn into an annotated video.
``--out-json``: detection as COCO results (the data set's category ids, xywh boxes), segmentation
as PNG label maps plus a JSON index, classification as top-k JSON (details:
mobileone_dense/apis/batch_inference.py). An unreadable image in a folder is reported and
skipped; the exit status is 0 when at least one input was processed, 2 when none was.
``--device cuda:0`` runs on a GPU.
"""

import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a checkout
import mobileone_dense  # noqa: F401
from mobileone_dense.apis.batch_inference import run_inference
from mobileone_dense.apis.inference import init_model, read_image
from mobileone_dense.apis.inference_inputs import expand_inputs
from mobileone_dense.errors import InputError

DEFAULT_OUT_FILE = 'demo_out.png'


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('inputs', help='an image file, a folder, a glob pattern or a video file')
    parser.add_argument('config', help='config file (training or deploy config)')
    parser.add_argument('checkpoint', help='checkpoint file (training or deploy checkpoint)')
    parser.add_argument(
        '--out-file',
        help=f'the drawing of one image (default {DEFAULT_OUT_FILE}), or the annotated video',
    )
    parser.add_argument('--out-dir', help='folder for the drawings of many images or a video')
    parser.add_argument('--out-json', help='write the predictions (see above) to this file')
    parser.add_argument(
        '--ann-file', help='COCO annotation file: category and image ids for --out-json'
    )
    parser.add_argument('--batch-size', type=int, default=1, help='images per forward pass')
    parser.add_argument('--score-thr', type=float, default=0.3, help='box score threshold')
    parser.add_argument('--topk', type=int, default=5, help='classes per image in --out-json')
    parser.add_argument('--device', default='cpu', help='cpu or cuda:0')
    return parser.parse_args(argv)


def check_outputs(args: argparse.Namespace, kind: str) -> None:
    """Where the drawings go, per kind of input; ``InputError`` for a combination that would
    write nothing or overwrite one file with many drawings."""
    if args.batch_size < 1:
        raise InputError(f'--batch-size must be >= 1, got {args.batch_size}')
    if kind == 'image' and not args.out_dir:
        args.out_file = args.out_file or DEFAULT_OUT_FILE
    if kind == 'images' and args.out_file:
        raise InputError('--out-file takes the drawing of one image: give --out-dir for many')
    if kind != 'image' and not (args.out_file or args.out_dir or args.out_json):
        raise InputError('nothing to write: give --out-dir (drawings) and/or --out-json')


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        inputs = expand_inputs(args.inputs)
        check_outputs(args, inputs.kind)
        if inputs.kind == 'image':  # one unreadable image: say so before building the model
            read_image(inputs.paths[0])
        # a truncated/mismatched checkpoint or a config typo: one line that says what to fix
        model = init_model(args.config, args.checkpoint, device=args.device)
        report = run_inference(
            model,
            inputs,
            batch_size=args.batch_size,
            out_file=args.out_file,
            out_dir=args.out_dir,
            out_json=args.out_json,
            ann_file=args.ann_file,
            score_thr=args.score_thr,
            topk=args.topk,
        )
    except (FileNotFoundError, ValueError, InputError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    if inputs.kind == 'image':
        print(f'{report.summary}; saved {", ".join(report.written)}')
        return 0
    unit = 'frames' if inputs.kind == 'video' else 'inputs'
    total = report.processed + len(report.skipped)
    saved = [f'drawings in {args.out_dir}'] if args.out_dir and inputs.kind == 'images' else []
    saved += [
        f'saved {path}'
        for path in report.written
        if inputs.kind == 'video' or path == args.out_json
    ]
    print('; '.join([f'processed {report.processed} of {total} {unit}', *saved]))
    if report.skipped:
        print(f'skipped {len(report.skipped)}:', file=sys.stderr)
        for path, reason in report.skipped:
            print(f'  {path}: {reason}', file=sys.stderr)
    if not report.processed:
        print(f'error: none of the {total} {unit} could be processed', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
