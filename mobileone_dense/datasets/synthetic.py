"""Small generated datasets in the real on-disk formats, for the quickstart and the tests."""

import json
import os
import os.path as osp
from typing import Dict, Iterator, List, Sequence, Tuple

import cv2
import numpy as np

# The category ids of COCO 2017, in the order of mmdet's CocoDataset class names.
COCO_CATEGORY_IDS = (
    1,
    2,
    3,
    4,
    5,
    6,
    7,
    8,
    9,
    10,
    11,
    13,
    14,
    15,
    16,
    17,
    18,
    19,
    20,
    21,
    22,
    23,
    24,
    25,
    27,
    28,
    31,
    32,
    33,
    34,
    35,
    36,
    37,
    38,
    39,
    40,
    41,
    42,
    43,
    44,
    46,
    47,
    48,
    49,
    50,
    51,
    52,
    53,
    54,
    55,
    56,
    57,
    58,
    59,
    60,
    61,
    62,
    63,
    64,
    65,
    67,
    70,
    72,
    73,
    74,
    75,
    76,
    77,
    78,
    79,
    80,
    81,
    82,
    84,
    85,
    86,
    87,
    88,
    89,
    90,
)
# Each shape stands in for a COCO category, and the files list all 80 categories with their
# real ids, so the real 80-class COCO configs run on the generated data unchanged and label
# indices and names are COCO's.
SHAPE_CATEGORIES: Dict[str, Tuple[int, str]] = {
    'circle': (37, 'sports ball'),
    'square': (72, 'tv'),
    'triangle': (38, 'kite'),
}


def coco_categories() -> List[dict]:
    """The 80 COCO categories (id, name) as in ``instances_*2017.json``."""
    from mmdet.datasets import CocoDataset

    names = CocoDataset.METAINFO['classes']
    return [dict(id=i, name=n, supercategory='') for i, n in zip(COCO_CATEGORY_IDS, names)]


# A characteristic colour per class (BGR, jittered per object) keeps the set learnable in a few
# minutes of CPU training; the backgrounds are muted so the objects stand out.
SHAPE_COLOURS = {'circle': (40, 40, 210), 'square': (40, 190, 40), 'triangle': (210, 90, 30)}


def background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth, muted random colour gradient with noise (BGR uint8)."""
    corners = rng.uniform(70, 190, (2, 2, 3)).astype(np.float32)
    corners = 0.4 * corners + 0.6 * corners.mean(axis=2, keepdims=True)
    background = cv2.resize(corners, (width, height), interpolation=cv2.INTER_LINEAR)
    background += rng.normal(0, 12, (height, width, 3))
    return np.clip(background, 0, 255).astype(np.uint8)


def draw_shape(
    image: np.ndarray,
    shape: str,
    box: Tuple[int, int, int, int],
    colour: Tuple[int, ...],
    line_type: int = cv2.LINE_AA,
) -> List[float]:
    """Draw a filled shape inside ``box`` (x0, y0, x1, y1); return its polygon (x, y, ...).

    ``line_type=cv2.LINE_8`` draws hard edges (for label masks, where blending is wrong).
    """
    x0, y0, x1, y1 = box
    if shape == 'circle':
        centre, radius = ((x0 + x1) // 2, (y0 + y1) // 2), (x1 - x0) // 2
        cv2.circle(image, centre, radius, colour, -1, lineType=line_type)
        angles = np.linspace(0, 2 * np.pi, 16, endpoint=False)
        points = np.stack(
            [centre[0] + radius * np.cos(angles), centre[1] + radius * np.sin(angles)], 1
        )
    elif shape == 'square':
        points = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)
        cv2.rectangle(image, (x0, y0), (x1, y1), colour, -1)
    else:
        points = np.array([[(x0 + x1) / 2, y0], [x1, y1], [x0, y1]], dtype=np.float64)
        cv2.fillPoly(image, [points.round().astype(np.int32)], colour, lineType=line_type)
    return points.reshape(-1).round(1).tolist()


def overlaps(box: Sequence[int], boxes: Sequence[Sequence[int]]) -> bool:
    return any(
        not (box[2] <= b[0] or b[2] <= box[0] or box[3] <= b[1] or b[3] <= box[1]) for b in boxes
    )


def random_shapes(
    rng: np.random.Generator,
    height: int,
    width: int,
    shapes: Sequence[str],
    max_objects: int,
    side_range: Tuple[float, float],
) -> Iterator[Tuple[str, Tuple[int, int, int, int], Tuple[int, int, int]]]:
    """1 to ``max_objects`` non-overlapping square boxes of an image, each with a shape and its
    class colour (jittered): ``(shape, (x0, y0, x1, y1), BGR colour)``; sides are
    ``side_range`` fractions of the image's shorter side."""
    boxes: List[Sequence[int]] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _attempt in range(20):
            side = int(rng.uniform(*side_range) * min(height, width))
            x0 = int(rng.integers(0, width - side))
            y0 = int(rng.integers(0, height - side))
            box = (x0, y0, x0 + side, y0 + side)
            if not overlaps(box, boxes):
                break
        else:
            continue
        boxes.append(box)
        shape = shapes[int(rng.integers(len(shapes)))]
        colour = tuple(
            int(np.clip(c + rng.integers(-30, 31), 0, 255)) for c in SHAPE_COLOURS[shape]
        )
        yield shape, box, colour


def make_coco_shapes(
    root: str,
    num_train: int = 32,
    num_val: int = 8,
    image_size: Tuple[int, int] = (320, 320),
    max_objects: int = 3,
    seed: int = 0,
) -> Dict[str, str]:
    """Write a COCO-format detection set of shapes on varied backgrounds under ``root``.

    Layout (as COCO 2017): ``train2017/*.jpg``, ``val2017/*.jpg`` and
    ``annotations/instances_{train,val}2017.json``. Image sizes vary around ``image_size``
    (height, width); 1 to ``max_objects`` non-overlapping objects per image.
    Returns the paths of the two annotation files.
    """
    rng = np.random.default_rng(seed)
    categories = coco_categories()
    by_id = {c['id']: c['name'] for c in categories}
    assert all(by_id[i] == name for i, name in SHAPE_CATEGORIES.values())
    os.makedirs(osp.join(root, 'annotations'), exist_ok=True)
    paths, annotation_id = {}, 1
    for split, count in (('train2017', num_train), ('val2017', num_val)):
        os.makedirs(osp.join(root, split), exist_ok=True)
        images, annotations = [], []
        for index in range(count):
            height = int(image_size[0] * rng.uniform(0.8, 1.25))
            width = int(image_size[1] * rng.uniform(0.8, 1.25))
            image = background(rng, height, width)
            image_id = len(images) + 1
            for shape, box, colour in random_shapes(
                rng, height, width, list(SHAPE_CATEGORIES), max_objects, (0.2, 0.45)
            ):
                polygon = draw_shape(image, shape, box, colour)
                side = box[2] - box[0]
                annotations.append(
                    dict(
                        id=annotation_id,
                        image_id=image_id,
                        category_id=SHAPE_CATEGORIES[shape][0],
                        bbox=[float(box[0]), float(box[1]), float(side), float(side)],
                        area=float(side * side),
                        iscrowd=0,
                        segmentation=[polygon],
                    )
                )
                annotation_id += 1
            file_name = f'{index:012d}.jpg'
            cv2.imwrite(osp.join(root, split, file_name), image, [cv2.IMWRITE_JPEG_QUALITY, 92])
            images.append(dict(id=image_id, file_name=file_name, height=height, width=width))
        path = osp.join(root, 'annotations', f'instances_{split}.json')
        with open(path, 'w') as f:
            json.dump(dict(images=images, annotations=annotations, categories=categories), f)
        paths[split] = path
    return paths
