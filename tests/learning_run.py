"""One of the suite's learning runs with a given seed, run as a script; prints its asserted figure.

    python tests/learning_run.py {classifier,segmentor} --seed N --work-dir DIR

The runs are the session fixtures' (``trained_runs.prepare_classifier`` / ``prepare_segmentor``),
so the figure is the one ``test_s0_learns_and_the_untrained_model_does_not`` (the deploy EMA
classifier's last top-1, %) or ``test_deeplabv3_s0_learns_the_generated_shapes`` (the deploy
segmentor's mIoU in ``tools/test.py``, %) asserts. ``tools/analysis/learning_robustness.py
--job classifier|segmentor`` runs it over seeds and kernel sets.
"""

import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
import trained_runs  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('job', choices=['classifier', 'segmentor'])
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--work-dir', required=True)
    parser.add_argument(
        '--tool-timeout',
        type=float,
        default=trained_runs.TOOL_TIMEOUT,
        help='seconds each tool run may take (raise it when the run shares the CPU)',
    )
    args = parser.parse_args(argv)
    trained_runs.TOOL_TIMEOUT = args.tool_timeout
    if args.job == 'classifier':
        result = trained_runs.prepare_classifier(args.work_dir, seed=args.seed)()
        top1 = [r['metrics']['accuracy/top1'] for r in result['records'] if r['event'] == 'val']
        print(f'[learning run] classifier top-1 = {top1[-1]:.2f} (per epoch {top1})')
    else:
        result = trained_runs.prepare_segmentor(args.work_dir, seed=args.seed)()
        miou = trained_runs.miou_printed_by(result['tests']['deploy'])
        print(f'[learning run] segmentor mIoU = {miou:.2f}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
