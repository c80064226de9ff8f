"""Small generated segmentation sets in the real on-disk layouts (VOC 2012 + aug, ADE20K).

Shapes of a characteristic colour on muted backgrounds (as ``synthetic.make_coco_shapes``), with
label masks drawn from the same geometry, so a few minutes of CPU training can learn them.
"""

import os
import os.path as osp
from typing import Dict, List, Tuple

import cv2
import numpy as np
from PIL import Image

from .synthetic import background, draw_shape, random_shapes

# Each shape stands in for a class of the real label set, so the real configs run unchanged.
VOC_SHAPE_CLASSES = {'circle': 'cat', 'square': 'tvmonitor', 'triangle': 'aeroplane'}
ADE20K_SHAPE_CLASSES = {'circle': 'car', 'square': 'painting', 'triangle': 'tent'}
ADE20K_BACKGROUND_CLASS = 'wall'
IGNORE_INDEX = 255


def shape_scene(
    rng: np.random.Generator,
    height: int,
    width: int,
    labels: Dict[str, int],
    background_label: int,
    max_objects: int = 3,
) -> Tuple[np.ndarray, np.ndarray]:
    """One BGR uint8 image (height, width, 3) and its uint8 label mask (height, width)."""
    image = background(rng, height, width)
    mask = np.full((height, width), background_label, dtype=np.uint8)
    for shape, box, colour in random_shapes(
        rng, height, width, list(labels), max_objects, (0.25, 0.5)
    ):
        draw_shape(image, shape, box, colour)
        draw_shape(mask, shape, box, (labels[shape],), line_type=cv2.LINE_8)
    return image, mask


def voc_palette() -> List[int]:
    """Pascal VOC's colour map as a flat PIL palette (256 x RGB)."""
    from mmseg.datasets import PascalVOCDataset

    palette = [c for rgb in PascalVOCDataset.METAINFO['palette'] for c in rgb]
    palette += [0, 0, 0] * (256 - len(palette) // 3)
    palette[IGNORE_INDEX * 3 : IGNORE_INDEX * 3 + 3] = [224, 224, 192]  # VOC's void colour
    return palette


def _with_void_boundaries(mask: np.ndarray, width: int = 2) -> np.ndarray:
    """VOC's ``SegmentationClass`` marks object boundaries as void (255)."""
    kernel = np.ones((2 * width + 1, 2 * width + 1), np.uint8)
    edges = cv2.dilate(mask, kernel) != cv2.erode(mask, kernel)
    out = mask.copy()
    out[edges] = IGNORE_INDEX
    return out


def _size(rng: np.random.Generator, image_size: Tuple[int, int]) -> Tuple[int, int]:
    return (
        int(image_size[0] * rng.uniform(0.8, 1.25)),
        int(image_size[1] * rng.uniform(0.8, 1.25)),
    )


def make_voc_shapes(
    devkit: str,
    num_train: int = 8,
    num_aug: int = 8,
    num_val: int = 4,
    image_size: Tuple[int, int] = (160, 160),
    seed: int = 0,
) -> str:
    """Write ``devkit/VOC2012`` in the layout mmseg's ``pascal_voc12_aug`` configs read.

    ``JPEGImages/*.jpg``; ``SegmentationClass/*.png`` (palette PNGs with void boundaries, for the
    VOC 2012 train and val images); ``SegmentationClassAug/*.png`` (grayscale index PNGs, SBD
    style, for every image); ``ImageSets/Segmentation/{train,val,aug,trainaug}.txt`` (``aug`` =
    the SBD images not in VOC train/val, as mmseg's ``voc_aug.py`` writes). Returns the VOC2012
    folder.
    """
    from mmseg.datasets import PascalVOCDataset

    classes = PascalVOCDataset.METAINFO['classes']
    labels = {shape: classes.index(name) for shape, name in VOC_SHAPE_CLASSES.items()}
    rng = np.random.default_rng(seed)
    root = osp.join(devkit, 'VOC2012')
    for folder in (
        'JPEGImages',
        'SegmentationClass',
        'SegmentationClassAug',
        'ImageSets/Segmentation',
    ):
        os.makedirs(osp.join(root, folder), exist_ok=True)
    palette = voc_palette()
    splits: Dict[str, List[str]] = {'train': [], 'aug': [], 'val': []}
    index = 0
    for split, count in (('train', num_train), ('aug', num_aug), ('val', num_val)):
        for _ in range(count):
            name = f'2012_{index:06d}'
            index += 1
            image, mask = shape_scene(rng, *_size(rng, image_size), labels, background_label=0)
            cv2.imwrite(
                osp.join(root, 'JPEGImages', name + '.jpg'), image, [cv2.IMWRITE_JPEG_QUALITY, 92]
            )
            Image.fromarray(mask, mode='L').save(
                osp.join(root, 'SegmentationClassAug', name + '.png')
            )
            if split != 'aug':
                voc = Image.fromarray(_with_void_boundaries(mask), mode='P')
                voc.putpalette(palette)
                voc.save(osp.join(root, 'SegmentationClass', name + '.png'))
            splits[split].append(name)
    splits['trainaug'] = splits['train'] + splits['aug']
    for split, names in splits.items():
        with open(osp.join(root, 'ImageSets', 'Segmentation', f'{split}.txt'), 'w') as f:
            f.writelines(n + '\n' for n in names)
    return root


def make_ade20k_shapes(
    root: str,
    num_train: int = 8,
    num_val: int = 4,
    image_size: Tuple[int, int] = (160, 160),
    seed: int = 0,
) -> str:
    """Write ``root`` (an ``ADEChallengeData2016`` folder) in ADE20K's layout.

    ``images/{training,validation}/ADE_{train,val}_%08d.jpg`` and grayscale
    ``annotations/.../*.png`` with ADE's values: 0 = "other" (ignored by
    ``reduce_zero_label``), class i of mmseg's ``ADE20KDataset`` = i + 1. The background is
    ``wall``, with an "other" strip along the bottom. Returns ``root``.
    """
    from mmseg.datasets import ADE20KDataset

    classes = ADE20KDataset.METAINFO['classes']
    labels = {shape: classes.index(name) + 1 for shape, name in ADE20K_SHAPE_CLASSES.items()}
    wall = classes.index(ADE20K_BACKGROUND_CLASS) + 1
    rng = np.random.default_rng(seed)
    for split, prefix, count in (('training', 'train', num_train), ('validation', 'val', num_val)):
        os.makedirs(osp.join(root, 'images', split), exist_ok=True)
        os.makedirs(osp.join(root, 'annotations', split), exist_ok=True)
        for i in range(count):
            name = f'ADE_{prefix}_{i + 1:08d}'
            image, mask = shape_scene(rng, *_size(rng, image_size), labels, background_label=wall)
            mask[-max(2, mask.shape[0] // 20) :] = 0  # unlabelled ("other") pixels
            cv2.imwrite(
                osp.join(root, 'images', split, name + '.jpg'),
                image,
                [cv2.IMWRITE_JPEG_QUALITY, 92],
            )
            Image.fromarray(mask, mode='L').save(
                osp.join(root, 'annotations', split, name + '.png')
            )
    return root
