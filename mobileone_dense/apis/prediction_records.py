"""Predictions as files for other programs (the image demo's ``--out-json``).

- detection: COCO results format, what mmdet's ``CocoMetric`` writes and
  ``pycocotools``' ``COCO.loadRes`` reads: one record per box, ``bbox`` as [x, y, width,
  height] in original-image pixels, ``category_id`` the data set's own id of the class (not
  the model's label index), plus the input's ``file_name``;
- segmentation: one PNG label map per input (class index per pixel, the input's size) and a
  JSON index of them;
- classification: the ``k`` highest class scores of each input.
"""

import json
import os
import os.path as osp
from typing import Any, Dict, List, Optional, Sequence

import cv2
import numpy as np

from ..datasets.synthetic import COCO_CATEGORY_IDS
from ..errors import BadDataError, ConfigError


def _coco_classes() -> tuple:
    from mmdet.datasets import CocoDataset

    return tuple(CocoDataset.METAINFO['classes'])


def coco_category_ids(classes: Sequence[str], ann_file: Optional[str] = None) -> List[int]:
    """The category id of each label (index into ``classes``), as mmdet maps them.

    - with ``ann_file`` (a COCO annotation file): mmdet's ``CocoDataset``/``CocoMetric``
      mapping, ``COCO(ann_file).get_cat_ids(cat_names=classes)``; every class must be in it;
    - else, when ``classes`` are COCO's 80 (mmdet's ``CocoDataset`` names, in its order):
      COCO 2017's ids, 1 to 90 with gaps (what the COCO evaluation server expects);
    - else label + 1 (COCO files number categories from 1): give the annotation file to get
      the data set's own ids.
    """
    if ann_file is not None:
        from mmdet.datasets.api_wrappers import COCO

        ids = COCO(ann_file).get_cat_ids(cat_names=list(classes))
        if len(ids) != len(classes):
            names = {c['name'] for c in json.load(open(ann_file))['categories']}
            missing = [c for c in classes if c not in names]
            raise ConfigError(
                f"{ann_file!r} names {len(ids)} of the model's {len(classes)} classes; "
                f'it lacks {missing[:5]}: give the annotation file of the data set the model '
                'was trained on'
            )
        return list(ids)
    if tuple(classes) == _coco_classes():
        return list(COCO_CATEGORY_IDS)
    return list(range(1, len(classes) + 1))


def coco_image_ids(paths: Sequence[str], ann_file: str) -> List[int]:
    """The ``id`` of each input image in a COCO annotation file, found by file name (the
    annotation's ``file_name`` without its folders); raises ``BadDataError`` naming the
    images the file does not list."""
    with open(ann_file) as f:
        images = json.load(f).get('images', [])
    by_name = {osp.basename(image['file_name']): image['id'] for image in images}
    missing = [p for p in paths if osp.basename(p) not in by_name]
    if missing:
        raise BadDataError(
            f'{len(missing)} input image(s) are not in {ann_file!r} (by file name), e.g. '
            f'{missing[:3]}: give the annotation file that lists them, or no --ann-file '
            '(the image ids are then the positions in sorted file order)'
        )
    return [by_name[osp.basename(p)] for p in paths]


def detection_records(
    result: Any, image_id: int, file_name: str, category_ids: Sequence[int]
) -> List[dict]:
    """COCO results records of one image's ``DetDataSample`` (every box the model returned)."""
    instances = result.pred_instances
    boxes = instances.bboxes.cpu().numpy().astype(float)
    records = []
    for (x1, y1, x2, y2), score, label in zip(
        boxes, instances.scores.cpu().tolist(), instances.labels.cpu().tolist()
    ):
        records.append(
            dict(
                image_id=image_id,
                category_id=int(category_ids[label]),
                bbox=[x1, y1, x2 - x1, y2 - y1],
                score=float(score),
                file_name=file_name,
            )
        )
    return records


def classification_record(result: Any, classes: Sequence[str], k: int) -> dict:
    """``{'topk': [{'label', 'class', 'score'}, ...]}``: the ``k`` highest softmax scores."""
    scores = result.pred_score.cpu().numpy()
    order = np.argsort(-scores, kind='stable')[:k]
    return dict(
        topk=[
            dict(
                label=int(i),
                name=classes[i] if i < len(classes) else str(i),
                score=float(scores[i]),
            )
            for i in order
        ]
    )


def write_label_map(path: str, result: Any) -> Dict[str, Any]:
    """Write a ``SegDataSample``'s label map as a PNG (8-bit, 16-bit past 255 classes);
    returns its height and width."""
    labels = result.pred_sem_seg.data[0].cpu().numpy()
    dtype = np.uint8 if labels.max(initial=0) < 256 else np.uint16
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    if not cv2.imwrite(path, labels.astype(dtype)):
        raise OSError(f'could not write {path!r}')
    return dict(height=int(labels.shape[0]), width=int(labels.shape[1]))


def write_json(path: str, content: Any) -> None:
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    with open(path, 'w') as f:
        json.dump(content, f)
