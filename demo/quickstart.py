"""The quickstart: train, validate, reparameterize, test, demo SSDLite-MobileOne-S0, no dataset.

    python demo/quickstart.py [--work-dir work_dirs/quickstart] [--iters 400] [--seed 0]

Generates a small COCO-format set (JPEG files + instances_*.json of shapes on varied
backgrounds), trains the real S0 detection config on it on the CPU (shortened schedule, see
mobileone_dense.apis.quickstart_config), validates the deploy model with mmdet's CocoMetric,
and draws the deploy model's detections on a validation image.
"""

import argparse
import glob
import json
import logging
import os.path as osp
import sys
import time

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a checkout
from mmengine.config import Config

import mobileone_dense  # noqa: F401
from mobileone_dense.apis.inference import init_model, read_image
from mobileone_dense.apis.prediction import predict
from mobileone_dense.apis.quickstart import QUICKSTART_IMAGES, quickstart_config
from mobileone_dense.apis.visualization import draw_prediction
from mobileone_dense.datasets import make_coco_shapes
from mobileone_dense.engine import ReparameterizeHook, Runner
from mobileone_dense.engine.launch import build_runner


def generated_counts(data_root: str) -> dict:
    """How many images the generated set under ``data_root`` has (empty when there is none)."""
    counts = {}
    for key, split in (('num_train', 'train2017'), ('num_val', 'val2017')):
        path = osp.join(data_root, 'annotations', f'instances_{split}.json')
        if not osp.isfile(path):
            return {}
        with open(path) as f:
            counts[key] = len(json.load(f)['images'])
    return counts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[1])
    parser.add_argument('--work-dir', default='work_dirs/quickstart')
    parser.add_argument('--iters', type=int, default=400, help='training iterations')
    parser.add_argument('--batch-size', type=int, default=4)
    parser.add_argument(
        '--seed', type=int, default=0, help='training seed (the generated data stay the same)'
    )
    parser.add_argument(
        '--input-size',
        type=int,
        default=192,
        help='square input size for training, validation and test (pixels)',
    )
    args = parser.parse_args(argv)
    start = time.time()
    work_dir = osp.abspath(args.work_dir)
    data_root = osp.join(work_dir, 'data', 'coco')
    if generated_counts(data_root) != QUICKSTART_IMAGES:  # none yet, or an older quickstart's
        make_coco_shapes(data_root, **QUICKSTART_IMAGES)
    print(
        f'[quickstart] data: {data_root} ({QUICKSTART_IMAGES["num_train"]} train / '
        f'{QUICKSTART_IMAGES["num_val"]} val images, COCO format)',
        flush=True,
    )

    cfg = quickstart_config(
        data_root,
        work_dir,
        max_iters=args.iters,
        batch_size=args.batch_size,
        input_size=args.input_size,
        seed=args.seed,
    )
    runner = Runner.from_cfg(cfg)
    runner.logger.setLevel(logging.INFO)
    print(
        f'[quickstart] training SSDLite-MobileOne-S0 for {args.iters} iterations on the CPU '
        '(progress and ETA every 10 iterations)',
        flush=True,
    )
    runner.train()
    hook = next(h for h in runner.hooks if isinstance(h, ReparameterizeHook))
    # The metrics printed are those of the deploy files just written, tested as tools/test.py
    # tests them (a fresh runner from the deploy config). Not an in-process runner.test(): it
    # calls every hook's before_run again, and mmengine's EMAHook.before_run rebuilds the
    # averaged copy from the current weights, so it would test the last step's weights.
    deploy_cfg = Config.fromfile(hook.deploy_files['config'])
    deploy_cfg.work_dir = osp.join(work_dir, 'deploy_test')
    deploy_cfg.log_level = 'WARNING'
    metrics = build_runner(deploy_cfg, mode='test').test()

    image_path = sorted(glob.glob(osp.join(data_root, 'val2017', '*.jpg')))[0]
    model = init_model(hook.deploy_files['config'], hook.deploy_files['checkpoint'])
    image = read_image(image_path)
    out_file = osp.join(work_dir, 'demo_detections.png')
    summary = draw_prediction(model, image, predict(model, image), out_file, score_thr=0.3)

    print('\n[quickstart] done in {:.1f} min'.format((time.time() - start) / 60))
    if 'coco/bbox_mAP_50' in metrics:
        print(
            f'  deploy model, val2017 of the generated set: bbox mAP@0.5 = '
            f'{metrics["coco/bbox_mAP_50"]:.3f}, mAP@[.5:.95] = {metrics["coco/bbox_mAP"]:.3f}'
        )
    else:  # CocoMetric returns nothing when no box passes the score threshold
        print(
            '  deploy model, val2017 of the generated set: bbox mAP@0.5 = 0.000 (no detection '
            'above the score threshold yet: train longer with --iters)'
        )
    print(
        f'  deploy vs train-time outputs (relative): {hook.last_deploy_error_float64:.1e} in '
        f'float64 (exact), {hook.last_deploy_error:.1e} in float32 (rounding)'
    )
    print(f'  training checkpoint : {osp.join(work_dir, f"iter_{args.iters}.pth")}')
    print(f'  deploy checkpoint   : {hook.deploy_files["checkpoint"]}')
    print(f'  deploy config       : {hook.deploy_files["config"]}')
    print(f'  demo drawing        : {out_file} ({summary})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
