"""Run a mobileone_dense model on one image and save the drawing.

    python demo/image_demo.py IMAGE CONFIG CHECKPOINT --out-file out.png [--score-thr 0.3]

The model is re-parameterized (deploy form) before inference. Any image size, grayscale, RGBA and
16-bit images are accepted. Detection configs draw boxes, labels and scores; segmentation
configs a colour overlay with a legend of the classes present; classification configs the
top-5 classes and their scores (PNG). ``--device cuda:0`` runs on a GPU.
"""

import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a checkout
import mobileone_dense  # noqa: F401
from mobileone_dense.apis.inference import init_model, read_image
from mobileone_dense.apis.visualization import draw_prediction, predict
from mobileone_dense.errors import InputError


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[1])
    parser.add_argument('image', help='image file')
    parser.add_argument('config', help='config file (training or deploy config)')
    parser.add_argument('checkpoint', help='checkpoint file (training or deploy checkpoint)')
    parser.add_argument('--out-file', default='demo_out.png', help='where to save the drawing')
    parser.add_argument('--score-thr', type=float, default=0.3, help='box score threshold')
    parser.add_argument('--device', default='cpu', help='cpu or cuda:0')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        image = read_image(args.image)
        # a truncated/mismatched checkpoint or a config typo: one line that says what to fix
        model = init_model(args.config, args.checkpoint, device=args.device)
    except (FileNotFoundError, ValueError, InputError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    result = predict(model, image)
    summary = draw_prediction(model, image, result, args.out_file, score_thr=args.score_thr)
    print(f'{summary}; saved {args.out_file}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
