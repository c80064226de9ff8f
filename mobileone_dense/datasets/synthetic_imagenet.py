"""A small generated dataset in mmpretrain's ImageNet layout, to try the classification configs.

    python -m mobileone_dense.datasets.synthetic_imagenet data/imagenet_toy [--classes 4]

writes::

    <root>/train/<wnid>/<wnid>_<i>.JPEG       one folder per class (synset ids n00000000, ...)
    <root>/val/ILSVRC2012_val_<8 digits>.JPEG
    <root>/meta/train.txt                       "<wnid>/<file> <label>" per line
    <root>/meta/val.txt                         "<file> <label>" per line

the layout mmpretrain's ``ImageNet`` dataset reads (``split='train'``/``'val'``; with the
``meta/*.txt`` lists it does not require 1000 class folders). Each class is a colour (evenly spaced
hues) with noise, brightness jitter and a small grey clutter disc, so a classifier
separates them in a few epochs even through random resized crops.
"""

import argparse
import colorsys
import os
import os.path as osp
from typing import Dict

import cv2
import numpy as np


def _class_colour(label: int, num_classes: int) -> np.ndarray:
    r, g, b = colorsys.hsv_to_rgb(label / num_classes, 0.85, 0.9)
    return np.array([b, g, r]) * 255.0  # BGR, as cv2 writes


def _image(rng: np.random.Generator, label: int, num_classes: int, size: int) -> np.ndarray:
    colour = _class_colour(label, num_classes) * rng.uniform(0.8, 1.1)
    image = np.clip(colour + rng.normal(0, 18, (size, size, 3)), 0, 255)
    other = np.full(3, rng.uniform(0, 255))  # grey: clutter that carries no class colour
    centre = tuple(int(c) for c in rng.integers(size // 4, 3 * size // 4, 2))
    radius = int(rng.integers(max(2, size // 12), max(3, size // 6)))
    cv2.circle(image, centre, radius, tuple(float(c) for c in other), -1)
    return image.astype(np.uint8)


def make_imagenet_folder(
    root: str,
    num_classes: int = 4,
    train_per_class: int = 16,
    val_per_class: int = 4,
    size: int = 64,
    seed: int = 0,
) -> Dict[str, str]:
    """Write the dataset under ``root`` (see the module docstring); returns its main paths."""
    if num_classes < 2:
        raise ValueError(f'num_classes must be >= 2, got {num_classes}')
    rng = np.random.default_rng(seed)
    wnids = [f'n{label:08d}' for label in range(num_classes)]  # sorted order = label order
    for sub in ['meta', 'val'] + [osp.join('train', w) for w in wnids]:
        os.makedirs(osp.join(root, sub), exist_ok=True)
    train_lines, val_lines = [], []
    for label, wnid in enumerate(wnids):
        for i in range(train_per_class):
            name = f'{wnid}/{wnid}_{i}.JPEG'
            cv2.imwrite(osp.join(root, 'train', name), _image(rng, label, num_classes, size))
            train_lines.append(f'{name} {label}')
    for index in range(num_classes * val_per_class):
        label = index % num_classes
        name = f'ILSVRC2012_val_{index + 1:08d}.JPEG'
        cv2.imwrite(osp.join(root, 'val', name), _image(rng, label, num_classes, size))
        val_lines.append(f'{name} {label}')
    for split, lines in (('train', train_lines), ('val', val_lines)):
        with open(osp.join(root, 'meta', f'{split}.txt'), 'w') as f:
            f.write('\n'.join(lines) + '\n')
    return dict(
        root=root,
        train=osp.join(root, 'train'),
        val=osp.join(root, 'val'),
        train_list=osp.join(root, 'meta', 'train.txt'),
        val_list=osp.join(root, 'meta', 'val.txt'),
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('root', help='output folder (use it as data_root)')
    parser.add_argument('--classes', type=int, default=4)
    parser.add_argument('--train-per-class', type=int, default=16)
    parser.add_argument('--val-per-class', type=int, default=4)
    parser.add_argument('--size', type=int, default=64, help='image side in pixels')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    paths = make_imagenet_folder(
        args.root, args.classes, args.train_per_class, args.val_per_class, args.size, args.seed
    )
    print(
        f'wrote {args.classes * args.train_per_class} training and '
        f'{args.classes * args.val_per_class} validation images under {paths["root"]}'
    )
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
