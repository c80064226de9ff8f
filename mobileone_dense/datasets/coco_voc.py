"""COCO instance annotations as Pascal VOC semantic masks (the paper's joint COCO + VOC training).

The paper trains its VOC models on COCO and VOC together, following MobileViT (cvnets), which
follows torchvision's segmentation reference: only the 20 VOC categories of COCO are kept, crowd
annotations are dropped, images whose kept objects cover 1000 pixels or less are skipped, every
instance is painted with its VOC class index, and pixels covered by more than one instance are
ignored (255).
"""

from typing import Dict, List

import numpy as np
from mmcv.transforms import BaseTransform
from mmseg.datasets import BaseSegDataset, PascalVOCDataset

from ..registry import DATASETS, TRANSFORMS

# COCO category name -> VOC class name (the VOC names missing here are spelled the same).
COCO_TO_VOC_NAMES: Dict[str, str] = {
    'airplane': 'aeroplane',
    'dining table': 'diningtable',
    'motorcycle': 'motorbike',
    'potted plant': 'pottedplant',
    'couch': 'sofa',
    'tv': 'tvmonitor',
}
IGNORE_INDEX = 255


@DATASETS.register_module()
class COCOVOCSegDataset(BaseSegDataset):
    """COCO images with VOC-indexed semantic masks rendered from ``instances_*.json``.

    Args:
        ann_file: COCO instances json (relative to ``data_root``), e.g.
            ``annotations/instances_train2017.json``.
        data_prefix: ``dict(img_path='train2017')``: the image folder.
        min_area: images whose kept (VOC, non-crowd) objects cover ``<= min_area`` pixels in
            total are skipped, as in torchvision's reference (1000).
        pipeline: must contain ``mobileone_dense.LoadCocoSemanticMask`` where a VOC pipeline has
            ``LoadAnnotations``: the masks are rendered there, not read from files.

    Classes, palette and label indices are ``PascalVOCDataset``'s (0 = background), so this set
    concatenates with VOC-aug (``ConcatDataset``) and shares its metric.
    """

    METAINFO = PascalVOCDataset.METAINFO

    def __init__(
        self,
        ann_file: str,
        data_prefix: dict = dict(img_path='train2017'),
        min_area: float = 1000,
        **kwargs,
    ) -> None:
        self.min_area = min_area
        super().__init__(ann_file=ann_file, data_prefix=data_prefix, **kwargs)

    def load_data_list(self) -> List[dict]:
        """One entry per kept image: its path and the polygons/RLEs and labels to paint."""
        from pycocotools.coco import COCO

        coco = COCO(self.ann_file)
        classes = list(self.metainfo['classes'])
        label_of = {}
        for category in coco.loadCats(coco.getCatIds()):
            voc_name = COCO_TO_VOC_NAMES.get(category['name'], category['name'])
            if voc_name in classes and voc_name != 'background':
                label_of[category['id']] = classes.index(voc_name)
        if not label_of:
            raise ValueError(
                f'{self.ann_file!r} has none of the 20 Pascal VOC categories under '
                f'their COCO names (e.g. {sorted(COCO_TO_VOC_NAMES)}): is it a COCO '
                'instances_*.json file?'
            )
        img_dir = self.data_prefix.get('img_path', '')
        data_list = []
        for image_id in sorted(coco.getImgIds()):
            image = coco.loadImgs(image_id)[0]
            annotations = [
                a
                for a in coco.loadAnns(coco.getAnnIds(imgIds=image_id))
                if not a.get('iscrowd', 0)
                and a['category_id'] in label_of
                and a.get('segmentation')
            ]
            if sum(a['area'] for a in annotations) <= self.min_area:
                continue
            data_list.append(
                dict(
                    img_path=f'{img_dir.rstrip("/")}/{image["file_name"]}'
                    if img_dir
                    else image['file_name'],
                    coco_segmentations=[a['segmentation'] for a in annotations],
                    coco_labels=[label_of[a['category_id']] for a in annotations],
                    height=image['height'],
                    width=image['width'],
                    label_map=self.label_map,
                    reduce_zero_label=self.reduce_zero_label,
                    seg_fields=[],
                )
            )
        return data_list


def render_semantic_mask(
    segmentations: list, labels: List[int], height: int, width: int
) -> np.ndarray:
    """(height, width) uint8 mask: 0 background, each instance its label, overlaps 255."""
    from pycocotools import mask as mask_utils

    target = np.zeros((height, width), dtype=np.uint8)
    coverage = np.zeros((height, width), dtype=np.uint8)
    for segmentation, label in zip(segmentations, labels):
        if isinstance(segmentation, list):  # polygons
            rles = mask_utils.frPyObjects(segmentation, height, width)
            rle = mask_utils.merge(rles)
        elif isinstance(segmentation['counts'], list):  # uncompressed RLE
            rle = mask_utils.frPyObjects(segmentation, height, width)
        else:
            rle = segmentation
        instance = mask_utils.decode(rle).astype(bool)
        target[instance] = np.maximum(target[instance], label)
        coverage += instance
    target[coverage > 1] = IGNORE_INDEX
    return target


@TRANSFORMS.register_module()
class LoadCocoSemanticMask(BaseTransform):
    """Render ``gt_seg_map`` from the COCO annotations ``COCOVOCSegDataset`` puts in the results.

    Takes the place of mmseg's ``LoadAnnotations`` in a ``COCOVOCSegDataset`` pipeline.
    """

    def transform(self, results: dict) -> dict:
        if 'coco_segmentations' not in results:
            raise KeyError(
                'LoadCocoSemanticMask needs the COCO annotations that '
                'mobileone_dense.COCOVOCSegDataset provides; for VOC/ADE20K datasets use '
                "mmseg's LoadAnnotations instead"
            )
        height, width = results['height'], results['width']
        image = results.get('img')
        if image is not None and image.shape[:2] != (height, width):
            raise ValueError(
                f'{results.get("img_path")}: the image is {image.shape[0]}x'
                f'{image.shape[1]} but its COCO annotation says {height}x{width}; '
                'the annotation file does not belong to these images'
            )
        results['gt_seg_map'] = render_semantic_mask(
            results['coco_segmentations'], results['coco_labels'], height, width
        )
        results['seg_fields'].append('gt_seg_map')
        return results
