"""Why the quickstart's gradient norm grows ~10-100x in its first iterations: a measurement.

    python tools/analysis/gradient_growth.py [--iters 20] [--work-dir work_dirs/gradient_growth]
        [--variants as_is lr_zero frozen_backbone frozen_neck_head]

Trains the quickstart's configuration (``quickstart_config``, on its generated set) for
``--iters`` iterations once per variant and prints, per iteration, the total gradient norm
before clipping (what the ``grad_norm`` of the log shows) and, at the first and last iteration,
the backbone's backward gain. The variants:

- ``as_is``: the quickstart's schedule;
- ``lr_zero``: learning rate 0 (no weight moves: is the growth in the data?);
- ``frozen_backbone``: only the neck and head learn (``lr_mult=0`` for the backbone);
- ``frozen_neck_head``: only the backbone learns.

The backward gain of a block ``y = block(x)`` is the scale-free ratio
``||dL/dx|| rms(x) / (||dL/dy|| rms(y))`` (invariant to the scale of x and y, which BN makes
arbitrary); its product over the blocks is how much the gradient's relative size grows from the
last stage down to the stem. Blocks whose input is also a feature returned to the neck are
left out (their input gradient has a second source). docs/get_started.md has the output and
what it shows.
"""

import argparse
import math
import os.path as osp
import sys
from typing import Dict, List

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
from mmengine.hooks import Hook

import mobileone_dense  # noqa: F401
from mobileone_dense.apis.quickstart import QUICKSTART_IMAGES, quickstart_config
from mobileone_dense.datasets import make_coco_shapes
from mobileone_dense.engine import Runner
from mobileone_dense.models.blocks import MobileOneBlock

FROZEN = dict(lr_mult=0.0, decay_mult=0.0)
VARIANTS = {
    'as_is': {},
    'lr_zero': dict(lr=0.0),
    'frozen_backbone': dict(custom_keys=dict(backbone=FROZEN)),
    'frozen_neck_head': dict(custom_keys=dict(neck=FROZEN, bbox_head=FROZEN)),
}


class GradientProbe(Hook):
    """Records the total gradient norm of each iteration (before clipping) and the backbone
    blocks' backward gains at the iterations in ``gain_iters``."""

    priority = 'VERY_HIGH'

    def __init__(self, gain_iters) -> None:
        self.gain_iters = set(gain_iters)
        self.norms: List[float] = []
        self.gains: Dict[int, List[float]] = {}
        self._handles, self._records = [], []

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        if runner.iter not in self.gain_iters:
            return
        backbone = runner.model.backbone
        skipped = {f'stages.{i + 1}.0' for i in backbone.out_indices}
        self._records = []
        for name, block in backbone.named_modules():
            if isinstance(block, MobileOneBlock) and name != 'stem' and name not in skipped:
                self._handles.append(block.register_forward_hook(self._watch))

    def _watch(self, block, inputs, output) -> None:
        record = dict(x=float(inputs[0].detach().pow(2).mean().sqrt()))
        record['y'] = float(output.detach().pow(2).mean().sqrt())
        inputs[0].register_hook(lambda g: record.__setitem__('dx', float(g.norm())))
        output.register_hook(lambda g: record.__setitem__('dy', float(g.norm())))
        self._records.append(record)

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        # the total norm before clipping, as mmengine's OptimWrapper records it when it clips
        self.norms.append(runner.message_hub.get_scalar('train/grad_norm').current())
        for handle in self._handles:
            handle.remove()
        if self._handles:
            self.gains[runner.iter] = [r['dx'] * r['x'] / (r['dy'] * r['y']) for r in self._records]
        self._handles = []


def run_variant(name: str, data_root: str, work_dir: str, iters: int) -> GradientProbe:
    """Trains the quickstart configuration ``iters`` iterations with variant ``name``."""
    variant = dict(VARIANTS[name])
    cfg = quickstart_config(data_root, osp.join(work_dir, name), max_iters=iters)
    if 'lr' in variant:
        cfg.optim_wrapper.optimizer.lr = variant['lr']
    if 'custom_keys' in variant:
        cfg.optim_wrapper.paramwise_cfg = dict(custom_keys=variant['custom_keys'])
    cfg.custom_hooks = [h for h in cfg.custom_hooks if 'EMAHook' not in str(h['type'])]
    cfg.custom_hooks = [h for h in cfg.custom_hooks if 'Reparameterize' not in str(h['type'])]
    for key in ('val_cfg', 'val_dataloader', 'val_evaluator'):
        cfg[key] = None
    cfg.default_hooks.checkpoint = None
    cfg.log_level = 'WARNING'
    probe = GradientProbe(gain_iters=(0, iters - 1))
    runner = Runner.from_cfg(cfg)
    runner.register_hook(probe)
    runner.train()
    return probe


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--iters', type=int, default=20)
    parser.add_argument('--work-dir', default='work_dirs/gradient_growth')
    parser.add_argument('--variants', nargs='+', choices=list(VARIANTS), default=list(VARIANTS))
    args = parser.parse_args(argv)
    data_root = osp.join(osp.abspath(args.work_dir), 'data', 'coco')
    if not osp.isfile(osp.join(data_root, 'annotations', 'instances_val2017.json')):
        make_coco_shapes(data_root, **QUICKSTART_IMAGES)
    clip = quickstart_config(data_root, args.work_dir).optim_wrapper.clip_grad.max_norm
    print(f'gradient norm before clipping (the quickstart clips at {clip:g}), per iteration')
    for name in args.variants:
        probe = run_variant(name, data_root, args.work_dir, args.iters)
        print(f'{name:17s} ' + ' '.join(f'{n:.0f}' for n in probe.norms), flush=True)
        for it, gains in sorted(probe.gains.items()):
            print(
                f'{"":17s} iteration {it}: backbone backward gain x{math.prod(gains):.3g} '
                f'over {len(gains)} blocks (per block: median {sorted(gains)[len(gains) // 2]:.2f},'
                f' max {max(gains):.2f})'
            )
    return 0


if __name__ == '__main__':
    sys.exit(main())
