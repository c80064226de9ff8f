"""Run a script (or code) as a GPU user with our CPU-ops mmcv would: mmcv's kernels unavailable.

    python tests/mmcv_kernel_guard.py --log FILE [--upstream-nms] SCRIPT [ARGS ...]

``disable_mmcv_kernels(log)`` replaces every function of mmcv's compiled extension
(``mmcv._ext``, which every ``mmcv.ops`` module calls through) by one that appends its name to
``log`` and raises ``RuntimeError('<name>_impl: implementation for device cuda:0 not found')``,
the error mmcv's CPU-ops build gives for CUDA tensors. A path that still reaches an mmcv kernel
then fails, and the log names the kernel even if the caller swallowed the error.

``--upstream-nms`` instead runs mmdet's own post-processing (``mmcv.ops.batched_nms``, kernels
on) in our ``SSDHead``: the reference our torchvision path must equal.
"""

import argparse
import contextlib
import os
import runpy
import sys
from typing import Callable, Iterator

MESSAGE = '{name}_impl: implementation for device cuda:0 not found'


def disable_mmcv_kernels(log: str) -> Callable[[], None]:
    """Make every function of ``mmcv._ext`` record its call in ``log`` and raise; returns the
    function that restores them."""
    import mmcv.ops  # noqa: F401  (loads mmcv._ext, as the ops modules do)

    ext = sys.modules['mmcv._ext']
    names = [name for name in dir(ext) if not name.startswith('_') and callable(getattr(ext, name))]
    if not names:
        raise RuntimeError('mmcv._ext exposes no functions: cannot guard it')

    def unavailable(name):
        def kernel(*args, **kwargs):
            with open(log, 'a') as f:
                f.write(name + '\n')
            raise RuntimeError(MESSAGE.format(name=name))

        return kernel

    originals = {name: getattr(ext, name) for name in names}
    for name in names:
        setattr(ext, name, unavailable(name))
    return lambda: [setattr(ext, name, kernel) for name, kernel in originals.items()]


@contextlib.contextmanager
def mmcv_kernels_disabled(log: str) -> Iterator[None]:
    """:func:`disable_mmcv_kernels` for the ``with`` block only (in-process tests)."""
    restore = disable_mmcv_kernels(log)
    try:
        yield
    finally:
        restore()


def use_upstream_nms() -> None:
    """Let our SSDHead post-process with mmdet's ``_bbox_post_process`` (mmcv's batched_nms)."""
    from mobileone_dense.models.dense_heads.ssd_head import SSDHead

    del SSDHead._bbox_post_process  # the class attribute lookup then finds mmdet's


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--log', help='file that records the mmcv kernels called')
    parser.add_argument('--upstream-nms', action='store_true')
    parser.add_argument('script')
    parser.add_argument('args', nargs=argparse.REMAINDER)
    args = parser.parse_args()
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, repo)
    if args.log:
        disable_mmcv_kernels(args.log)
    if args.upstream_nms:
        use_upstream_nms()
    sys.argv = [args.script, *args.args]
    runpy.run_path(args.script, run_name='__main__')


if __name__ == '__main__':
    main()
