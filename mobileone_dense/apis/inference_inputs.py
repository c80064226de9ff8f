"""What the image demo reads: one image file, a folder or glob of them, or a video file.

mmengine's ``BaseInferencer._inputs_to_list`` (and mmdet's, which keeps image extensions)
lists a folder; here a glob and a video are inputs too, and the listing is sorted, so the
position of an image (its ``image_id`` without an annotation file) does not depend on the
file system.
"""

import glob
import os
import os.path as osp
from typing import Iterator, List, NamedTuple, Tuple

import mmcv
import numpy as np

from ..errors import BadDataError, MissingDataError

# mmdet's DetInferencer's list (lower case; names are compared case-insensitively)
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif', '.tiff', '.webp')
VIDEO_EXTENSIONS = ('.mp4', '.avi', '.mov', '.mkv', '.m4v', '.webm')
GLOB_CHARACTERS = '*?['


class Inputs(NamedTuple):
    """``kind``: ``'image'`` (one file), ``'images'`` (a folder or glob; ``paths`` sorted) or
    ``'video'``; ``paths``: the files."""

    kind: str
    paths: List[str]


def is_video(path: str) -> bool:
    return osp.splitext(path)[1].lower() in VIDEO_EXTENSIONS


def _is_image_name(path: str) -> bool:
    return osp.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def expand_inputs(source: str) -> Inputs:
    """The inputs ``source`` names: an image file, a video file (by extension), a folder (its
    files with an image extension, not its subfolders) or a glob pattern (the matching files
    with an image extension). Raises ``MissingDataError`` when it names nothing to read."""
    if osp.isfile(source):
        return Inputs('video' if is_video(source) else 'image', [source])
    if osp.isdir(source):
        names = sorted(n for n in os.listdir(source) if _is_image_name(n))
        paths = [osp.join(source, n) for n in names if osp.isfile(osp.join(source, n))]
        if not paths:
            raise MissingDataError(
                f'the folder {source!r} has no image files (names ending in '
                f'{", ".join(IMAGE_EXTENSIONS)})'
            )
        return Inputs('images', paths)
    if any(c in source for c in GLOB_CHARACTERS):
        paths = sorted(p for p in glob.glob(source) if osp.isfile(p) and _is_image_name(p))
        if not paths:
            raise MissingDataError(f'no image file matches {source!r}')
        return Inputs('images', paths)
    raise MissingDataError(f'image {source!r} does not exist')


def open_video(path: str) -> mmcv.VideoReader:
    """mmcv's ``VideoReader`` (OpenCV underneath) on ``path``; an error that names the file when
    OpenCV cannot open it or it has no frame."""
    reader = mmcv.VideoReader(path)
    if not reader.opened or reader.frame_cnt == 0:
        raise BadDataError(f'{path!r} is not a readable video (OpenCV cannot decode it)')
    return reader


def video_frames(reader: mmcv.VideoReader) -> Iterator[Tuple[int, np.ndarray]]:
    """(frame index, BGR uint8 frame) for every frame, read in order (the frame count a
    container declares can be wrong: reading stops at the first frame OpenCV cannot read)."""
    index = 0
    while True:
        frame = reader.read()
        if frame is None:
            return
        yield index, frame
        index += 1


def relative_names(paths: List[str]) -> List[str]:
    """Each path relative to the common folder of ``paths`` (the file name, for a folder's
    images)."""
    if not paths:
        return []
    root = osp.commonpath([osp.dirname(osp.abspath(p)) for p in paths])
    return [osp.relpath(osp.abspath(p), root) for p in paths]


def output_names(paths: List[str], extension: str = '.png') -> List[str]:
    """For each input path, a file name for its output: its :func:`relative_names` name with
    ``extension``; where two inputs would get one name (``a.jpg`` and ``a.png``), their own
    extension stays in the name (``a.jpg.png``)."""
    relative = relative_names(paths)
    stems = [osp.splitext(r)[0] for r in relative]
    counts = {s: stems.count(s) for s in stems}
    return [(stem if counts[stem] == 1 else rel) + extension for stem, rel in zip(stems, relative)]
