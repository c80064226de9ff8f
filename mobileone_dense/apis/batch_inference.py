"""The image demo's run: a model on an image, a folder or glob of images, or a video, in
batches, with a progress bar, drawings and prediction files (``demo/image_demo.py`` is its
command line).

Inputs are read, predicted, drawn and written batch by batch, so a long video or a large folder
never sits in memory. A folder's (or glob's) image that cannot be read is reported and skipped;
one image named alone is an error (``InputError``), as before.
"""

import os
import os.path as osp
import sys
from typing import IO, Any, Iterator, List, NamedTuple, Optional, Tuple

import cv2
import numpy as np
import torch.nn as nn
from mmengine.utils import ProgressBar

from ..errors import InputError
from ..models.tasks import CLASSIFICATION, DETECTION
from .inference import read_image
from .inference_inputs import Inputs, open_video, output_names, relative_names, video_frames
from .prediction import Predictor
from .prediction_records import (
    classification_record,
    coco_category_ids,
    coco_image_ids,
    detection_records,
    write_json,
    write_label_map,
)
from .visualization import Drawer, write_image

# OpenCV's codec per video container (both in the opencv-python wheels' FFmpeg)
FOURCC = {'.avi': 'MJPG'}
DEFAULT_FOURCC = 'mp4v'


class Report(NamedTuple):
    """What a run did: inputs (images or frames) predicted, (path, reason) of each skipped
    input, the summary line of the last drawing, and the files written."""

    processed: int
    skipped: List[Tuple[str, str]]
    summary: str
    written: List[str]


class _VideoOut:
    """An annotated video: frames of the first drawing's size (later drawings of another
    size, e.g. a taller legend, are cut or padded with white to it)."""

    def __init__(self, path: str, fps: float):
        self.path, self.fps, self.writer, self.size = path, fps or 25.0, None, None

    def write(self, drawing: np.ndarray) -> None:
        if self.writer is None:
            self.size = drawing.shape[:2]
            os.makedirs(osp.dirname(osp.abspath(self.path)), exist_ok=True)
            fourcc = FOURCC.get(osp.splitext(self.path)[1].lower(), DEFAULT_FOURCC)
            self.writer = cv2.VideoWriter(
                self.path, cv2.VideoWriter_fourcc(*fourcc), self.fps, self.size[::-1]
            )
            if not self.writer.isOpened():
                raise OSError(f'could not write the video {self.path!r} (give a .mp4 or .avi path)')
        h, w = self.size
        if drawing.shape[:2] != (h, w):
            fitted = np.full((h, w, 3), 255, np.uint8)
            fitted[: min(h, drawing.shape[0]), : min(w, drawing.shape[1])] = drawing[:h, :w]
            drawing = fitted
        self.writer.write(drawing)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()


class _Records:
    """The ``--out-json`` content (``prediction_records``), gathered input by input."""

    def __init__(self, model: nn.Module, task: str, inputs: Inputs, path: str, ann_file, topk):
        self.task, self.path, self.topk = task, path, topk
        self.classes = tuple((model.dataset_meta or {}).get('classes', ()))
        self.video = inputs.kind == 'video'
        self.items: List[Any] = []
        if task == DETECTION:
            self.category_ids = coco_category_ids(self.classes, ann_file)
            if ann_file is not None and not self.video:
                self.image_ids = coco_image_ids(inputs.paths, ann_file)
            else:
                self.image_ids = list(range(len(inputs.paths)))
        self.maps = osp.splitext(path)[0] + '_label_maps'

    def add(self, index: int, name: str, map_name: str, result: Any) -> None:
        """``index``: the input's position (the frame index of a video)."""
        key = dict(frame=index) if self.video else dict(index=index)
        if self.task == DETECTION:
            image_id = index if self.video else self.image_ids[index]
            records = detection_records(result, image_id, name, self.category_ids)
            if self.video:  # one record list per frame index
                self.items.append(records)
            else:  # one COCO results list
                self.items.extend(records)
        elif self.task == CLASSIFICATION:
            record = classification_record(result, self.classes, self.topk)
            self.items.append(dict(file_name=name, **key, **record))
        else:
            label_map = osp.join(self.maps, map_name)
            shape = write_label_map(label_map, result)
            relative = osp.relpath(label_map, osp.dirname(osp.abspath(self.path)))
            self.items.append(dict(file_name=name, **key, label_map=relative, **shape))

    def write(self) -> None:
        if self.task in (DETECTION, CLASSIFICATION):
            write_json(self.path, self.items)
        else:
            write_json(
                self.path, dict(task='segmentation', classes=self.classes, label_maps=self.items)
            )


def _images(inputs: Inputs, skip, strict: bool) -> Iterator[Tuple[int, str, np.ndarray]]:
    for index, path in enumerate(inputs.paths):
        try:
            image = read_image(path)
        except InputError as error:
            if strict:
                raise
            skip(path, str(error))
            continue
        yield index, path, image


def _chunks(items: Iterator, size: int) -> Iterator[list]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def run_inference(
    model: nn.Module,
    inputs: Inputs,
    batch_size: int = 1,
    out_file: Optional[str] = None,
    out_dir: Optional[str] = None,
    out_json: Optional[str] = None,
    ann_file: Optional[str] = None,
    score_thr: float = 0.3,
    topk: int = 5,
    err: Optional[IO[str]] = None,
) -> Report:
    """Predict ``inputs`` (:func:`~.inference_inputs.expand_inputs`) with ``model``
    (``init_model``'s), ``batch_size`` images at a time, and write:

    - drawings (:class:`~.visualization.Drawer`, boxes of score >= ``score_thr``): one image to
      ``out_file``; the images of a folder or glob to ``out_dir``, named by
      :func:`~.inference_inputs.output_names`; a video as an annotated video to ``out_file``
      or ``out_dir/<its name>.mp4``; nothing where no destination is given;
    - ``out_json`` (:mod:`~.prediction_records`): detection as COCO results (category ids from
      ``ann_file`` or COCO's, see ``coco_category_ids``; ``image_id`` from ``ann_file`` by file
      name, else the position in sorted file order; a video: one list per frame index, the frame
      index as ``image_id``), segmentation label maps in ``<out_json stem>_label_maps/`` and their
      index, classification the ``topk`` classes.

    Progress (mmengine's ``ProgressBar``: count, rate, ETA) and skipped inputs go to ``err``
    (stderr) when there is more than one input. Returns the :class:`Report`.
    """
    err = err or sys.stderr
    predictor, drawer = Predictor(model, batch_size), Drawer(model, score_thr)
    records = (
        _Records(model, predictor.task, inputs, out_json, ann_file, topk) if out_json else None
    )
    skipped: List[Tuple[str, str]] = []
    written: List[str] = []
    video: Optional[_VideoOut] = None
    if inputs.kind == 'video':
        reader = open_video(inputs.paths[0])
        total = reader.frame_cnt
        name = osp.basename(inputs.paths[0])
        items = ((i, name, frame) for i, frame in video_frames(reader))
        target = out_file or (
            osp.join(out_dir, osp.splitext(name)[0] + '.mp4') if out_dir else None
        )
        video = _VideoOut(target, reader.fps) if target else None
        stem = osp.splitext(name)[0]
        map_names = [f'{stem}_{i:06d}.png' for i in range(total)]  # grown if the count is low
        names = [name] * total
    else:
        total = len(inputs.paths)
        names, map_names = relative_names(inputs.paths), output_names(inputs.paths)
    progress = ProgressBar(total, file=err) if total > 1 else None

    def skip(path: str, reason: str) -> None:
        skipped.append((path, reason))
        err.write(f'{chr(10) if progress else ""}skipped {path}: {reason}\n')
        if progress:
            progress.update()

    if inputs.kind != 'video':
        items = _images(inputs, skip, strict=inputs.kind == 'image')
    processed, summary = 0, ''
    try:
        for chunk in _chunks(items, batch_size):
            results = predictor([image for _, _, image in chunk])
            for (index, _, image), result in zip(chunk, results):
                if index >= len(names):  # a video longer than its declared frame count
                    names.append(name)
                    map_names.append(f'{stem}_{index:06d}.png')
                if video is not None or out_file or out_dir:
                    drawing, summary = drawer(image, result)
                    if video is not None:
                        video.write(drawing)
                    else:
                        destination = osp.join(out_dir, map_names[index]) if out_dir else out_file
                        write_image(destination, drawing)
                        written.append(destination)
                if records is not None:
                    records.add(index, names[index], map_names[index], result)
                processed += 1
                if progress:
                    progress.task_num = max(progress.task_num, processed + len(skipped))
                    progress.update()
    finally:
        if video is not None:
            video.close()
            if video.writer is not None:
                written.append(video.path)
        if progress:
            err.write('\n')
    if records is not None and processed:
        records.write()
        written.append(out_json)
    return Report(processed, skipped, summary, written)
