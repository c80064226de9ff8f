"""Convert public MobileOne ImageNet weights (Apple, timm, mmpretrain) to mobileone_dense.

    python tools/convert_checkpoint.py SRC OUT.pth [--source auto|apple|timm|mmpretrain]

OUT.pth holds ``state_dict`` in our classifier layout (``backbone.*``, ``head.fc.*``): use it
as ``init_cfg=dict(type='Pretrained', checkpoint='OUT.pth', prefix='backbone.')`` on the
backbone of a detection or segmentation config. The arch is recognised by loading the weights
strictly into each MobileOne variant; the file is written atomically.
"""

import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a checkout
import mobileone_dense  # noqa: F401
from mobileone_dense.converters import (
    SOURCES,
    backbone_state_dict,
    convert_state_dict,
    detect_source,
    is_deploy_state_dict,
    load_checkpoint_file,
    recognise_arch,
    state_dict_of,
)
from mobileone_dense.engine.deploy_checkpoints import atomic_save


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[1])
    parser.add_argument('src', help='source checkpoint (.pth / .pth.tar / .bin)')
    parser.add_argument('out', help='converted checkpoint to write')
    parser.add_argument('--source', default='auto', choices=('auto',) + SOURCES[:3])
    args = parser.parse_args(argv)
    state_dict = state_dict_of(load_checkpoint_file(args.src))
    source = detect_source(state_dict) if args.source == 'auto' else args.source
    converted = convert_state_dict(state_dict, source=source)
    arch = recognise_arch(backbone_state_dict(converted))
    deploy = is_deploy_state_dict(converted)
    meta = dict(source=source, arch=arch, deploy=deploy, converted_from=osp.basename(args.src))
    atomic_save(dict(meta=meta, state_dict=converted), args.out)
    form = 'deploy form' if deploy else 'train-time form'
    print(
        f'{source} MobileOne-{arch} ({form}) -> {args.out}: '
        f'{len(converted)} tensors; load it with MobileOne(arch={arch!r}, deploy={deploy}) and '
        "init_cfg=dict(type='Pretrained', checkpoint=..., prefix='backbone.')"
    )
    return 0


if __name__ == '__main__':
    sys.exit(main())
