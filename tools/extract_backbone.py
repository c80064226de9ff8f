"""Extract the ImageNet-pretrained MobileOne backbone from a classification training checkpoint.

    python tools/extract_backbone.py work_dirs/mobileone_s2_imagenet/epoch_300.pth s2_imagenet.pth
        [--weights ema|raw] [--keep-head]

OUT.pth holds ``state_dict`` with the backbone's (train-time) weights as ``backbone.*``: the EMA
weights by default (what the run validated), ``--weights raw`` the un-averaged ones;
``--keep-head`` also keeps the linear classifier (``head.fc.*``), the layout of
``tools/convert_checkpoint.py``'s output, which ``tools/test.py`` can evaluate. Unlike the training
checkpoint it has no optimizer state or log history, so it is small and loads with plain
``torch.load(weights_only=True)``. Fine-tune from it with the backbone's
``init_cfg=dict(type='Pretrained', checkpoint='s2_imagenet.pth', prefix='backbone.')``
(the training checkpoint itself works there too). Written atomically.
"""

import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a checkout
import mobileone_dense  # noqa: F401
from mobileone_dense.converters import (
    backbone_state_dict,
    is_deploy_state_dict,
    load_checkpoint_file,
    recognise_arch,
    training_weights,
)
from mobileone_dense.engine.deploy_checkpoints import atomic_save


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('checkpoint', help='a checkpoint of a mobileone_*_imagenet.py run')
    parser.add_argument('out', help='backbone checkpoint to write')
    parser.add_argument(
        '--weights',
        choices=['ema', 'raw'],
        default='ema',
        help='ema: the EMA-averaged weights (mmengine saves them as state_dict); '
        'raw: the un-averaged training weights',
    )
    parser.add_argument(
        '--keep-head',
        action='store_true',
        help='also keep head.fc.* (a whole classifier checkpoint)',
    )
    args = parser.parse_args(argv)
    checkpoint = load_checkpoint_file(args.checkpoint, run_checkpoint=True)
    if args.weights == 'ema' and 'ema_state_dict' not in checkpoint:
        print('note: the checkpoint has no EMA weights; extracting its state_dict')
    weights = training_weights(checkpoint, args.weights)
    backbone = backbone_state_dict(weights)
    if not backbone:
        raise SystemExit(f'{args.checkpoint} has no backbone.* weights (keys: {list(weights)[:5]})')
    arch = recognise_arch(backbone)  # also proves they are complete MobileOne weights
    kept = {
        k: v
        for k, v in weights.items()
        if k.startswith('backbone.') or (args.keep_head and k.startswith('head.fc.'))
    }
    meta = dict(
        source='mobileone_dense',
        arch=arch,
        deploy=is_deploy_state_dict(backbone),
        weights=args.weights,
        epoch=checkpoint.get('meta', {}).get('epoch'),
        converted_from=osp.basename(args.checkpoint),
    )
    atomic_save(dict(meta=meta, state_dict=kept), args.out)
    print(
        f'MobileOne-{arch} {args.weights} weights ({len(kept)} tensors'
        f'{", with the classifier head" if args.keep_head else ""}) -> {args.out}; load them '
        "with init_cfg=dict(type='Pretrained', checkpoint=..., prefix='backbone.')"
    )
    return 0


if __name__ == '__main__':
    sys.exit(main())
