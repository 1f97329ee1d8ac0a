"""Detections written as a labelled data set that labelling tools open (`--mode=detect --save_format=FORMAT`).

Pre-labelling: run a trained model over new photos, correct its boxes in LabelImg / CVAT / Label Studio instead of
drawing every box, and train on the result. Each format is written as a self-contained folder OUTPUT/<format>/
holding the images (hard links where the file system allows, else copies) and the labels, in a layout this
project's own readers detect (`configs/photos.py --config.data.root=OUTPUT/<format>`, data/own_data.py):

    voc_xml    Annotations/NAME.xml (Pascal VOC, one per image), JPEGImages/NAME.ext, classes.txt
               (a VOC devkit without ImageSets: split by own_data's hash; CVAT imports Annotations/ zipped).
    yolo_txt   images/NAME.ext, labels/NAME.txt (`cls cx cy w h` normalised), classes.txt (and a copy in
               labels/, where LabelImg's YOLO mode looks for it).
    coco_json  annotations.json (images, annotations with bbox [x, y, w, h] pixels and the detection's `score`
               as an extra field, categories with ids 1..K in class order), images/NAME.ext.

classes.txt lists the model's class names in id order (one per line): VOC reads classes from the XML names
(sorted) unless it is given as config.data.class_names, which keeps the model's ids.

NAME is the stem of the drawn image (detect.py: unique when two inputs share a stem) with the input's extension.
Every image detect read gets a label file, also one without detections (an empty label file / no <object>): it was
looked at, and has nothing. Boxes are clipped to the image; a box with no area inside it is left out.

Rounding: VOC corners are integers in VOC's 1-based pixel convention as LabelImg writes them (xmin, ymin >= 1,
xmax <= width, ymax <= height; at least 1 px wide and high). voc_xml.py keeps the numbers as written (no -1, as
TFDS), so they are written without +1: the rounded pixel coordinates, and a box comes back within 0.5 px (1 px at
the left / top border, where 0 is written as 1; up to 1.5 px for a box under 1 px, widened). YOLO values have 8
decimals (yolo_txt.format_label; 1e-5 px at 1000 px), COCO values are full-precision floats.

The folder is written under a temporary name and renamed when complete, so it is never half-written; an existing
OUTPUT/<format> is never replaced (it may hold corrections): `check_free` raises OutputExistsError.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from yolo_jax.data import coco_json, yolo_txt
from yolo_jax.data.annotations import AnnotationRecord, write_text_atomic
from yolo_jax.errors import OutputExistsError

FORMATS = ('voc_xml', 'yolo_txt', 'coco_json')
CLASSES_FILE = 'classes.txt'
COCO_FILE = 'annotations.json'


@dataclasses.dataclass(frozen=True)
class ImageDetections:
    """One image's detections.

    image: the image file. name: its file name in the set (unique). width, height: pixels.
    boxes: (N, 4) float64 x1, y1, x2, y2 in the image's pixels (continuous: 0..width). classes: (N,) int.
    scores: (N,) float.
    """

    image: Path
    name: str
    width: int
    height: int
    boxes: np.ndarray
    classes: np.ndarray
    scores: np.ndarray


def from_entry(entry: Mapping[str, Any]) -> ImageDetections:
    """An image entry of detect.py's detections.json ('file', 'output', 'width', 'height', 'boxes', 'classes',
    'scores') → ImageDetections, boxes clipped to the image and those with no area left out."""
    image = Path(entry['file'])
    width, height = int(entry['width']), int(entry['height'])
    boxes = np.asarray(entry['boxes'], np.float64).reshape(-1, 4)
    boxes = np.clip(boxes, 0.0, [width, height, width, height])
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return ImageDetections(
        image=image, name=Path(entry['output']).stem + image.suffix, width=width, height=height, boxes=boxes[keep],
        classes=np.asarray(entry['classes'], np.int64).reshape(-1)[keep],
        scores=np.asarray(entry['scores'], np.float64).reshape(-1)[keep])


# ----------------------------------------------------------------------------------------------------------------
# One file's text.


def voc_corners(box: Sequence[float], width: int, height: int) -> tuple[int, int, int, int]:
    """x1, y1, x2, y2 pixels (continuous) → integer VOC corners (module docstring: rounded half up, xmin, ymin
    >= 1, xmax <= width, ymax <= height, at least 1 px wide and high where the image allows)."""

    def axis(lo: float, hi: float, size: int) -> tuple[int, int]:
        a, b = max(math.floor(lo + 0.5), 1), min(math.floor(hi + 0.5), size)
        if b <= a:  # a box under 1 px: widened to 1 px, inside the image
            a, b = (a, a + 1) if a < size else (max(size - 1, 1), size)
        return a, b

    x1, x2 = axis(float(box[0]), float(box[2]), width)
    y1, y2 = axis(float(box[1]), float(box[3]), height)
    return x1, y1, x2, y2


def image_depth(path: Path) -> int:
    """VOC's <depth>: 1 for a greyscale image file, else 3 (from the header; colour palettes count as 3)."""
    with Image.open(path) as im:
        return 1 if im.mode in ('1', 'L', 'LA', 'I', 'I;16', 'F') else 3


def voc_xml_text(det: ImageDetections, class_names: Sequence[str], folder: str = 'JPEGImages') -> str:
    """One Pascal VOC XML file (as LabelImg writes it): folder, filename, size with depth, one <object> per box
    with name, pose Unspecified, truncated 0, difficult 0 and integer bndbox corners (voc_corners)."""
    root = ET.Element('annotation')
    ET.SubElement(root, 'folder').text = folder
    ET.SubElement(root, 'filename').text = det.name
    ET.SubElement(ET.SubElement(root, 'source'), 'database').text = 'yolo_jax detections'
    size = ET.SubElement(root, 'size')
    for tag, value in (('width', det.width), ('height', det.height), ('depth', image_depth(det.image))):
        ET.SubElement(size, tag).text = str(value)
    ET.SubElement(root, 'segmented').text = '0'
    for box, cls in zip(det.boxes, det.classes, strict=True):
        obj = ET.SubElement(root, 'object')
        for tag, value in (('name', class_names[int(cls)]), ('pose', 'Unspecified'), ('truncated', '0'),
                           ('difficult', '0')):
            ET.SubElement(obj, tag).text = value
        bndbox = ET.SubElement(obj, 'bndbox')
        for tag, value in zip(('xmin', 'ymin', 'xmax', 'ymax'), voc_corners(box, det.width, det.height), strict=True):
            ET.SubElement(bndbox, tag).text = str(value)
    ET.indent(root)
    return ET.tostring(root, encoding='unicode') + '\n'


def coco_dict(dets: Sequence[ImageDetections], class_names: Sequence[str]) -> dict[str, Any]:
    """The COCO dict of the set (coco_json.to_coco_dict: image ids 1.., category ids 1..K in class order, bbox
    [x, y, w, h] pixels), each annotation with the detection's `score`."""
    records = [AnnotationRecord(path=d.name, boxes=d.boxes, classes=d.classes, width=d.width, height=d.height,
                                line=i, image_format='') for i, d in enumerate(dets)]
    out = coco_json.to_coco_dict(records, class_names, [d.name for d in dets])
    scores = [float(s) for d in dets for s in d.scores]
    for annotation, score in zip(out['annotations'], scores, strict=True):  # both in image, then box order
        annotation['score'] = score
    return out


# ----------------------------------------------------------------------------------------------------------------
# Whole sets.


def names_text(class_names: Sequence[str]) -> str:
    """A class-names file: one name per line, in class-id order."""
    return ''.join(f'{n}\n' for n in class_names)


def link_or_copy(source: Path, target: Path) -> None:
    """`target` = the file `source`: a hard link where the file system allows (no extra space), else a copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def write_voc(dets: Sequence[ImageDetections], class_names: Sequence[str], folder: Path) -> None:
    """folder/Annotations/NAME-stem.xml, folder/JPEGImages/NAME, folder/classes.txt."""
    for d in dets:
        link_or_copy(d.image, folder / 'JPEGImages' / d.name)
        write_text_atomic(folder / 'Annotations' / f'{Path(d.name).stem}.xml', voc_xml_text(d, class_names))
    write_text_atomic(folder / CLASSES_FILE, names_text(class_names))


def write_yolo(dets: Sequence[ImageDetections], class_names: Sequence[str], folder: Path) -> None:
    """folder/images/NAME, folder/labels/NAME-stem.txt, folder/classes.txt and folder/labels/classes.txt."""
    for d in dets:
        link_or_copy(d.image, folder / 'images' / d.name)
        write_text_atomic(folder / 'labels' / f'{Path(d.name).stem}.txt',
                          yolo_txt.format_label(d.boxes, d.classes, d.width, d.height))
    for names_file in (folder / CLASSES_FILE, folder / 'labels' / CLASSES_FILE):
        write_text_atomic(names_file, names_text(class_names))


def write_coco(dets: Sequence[ImageDetections], class_names: Sequence[str], folder: Path) -> None:
    """folder/annotations.json and folder/images/NAME."""
    for d in dets:
        link_or_copy(d.image, folder / 'images' / d.name)
    write_text_atomic(folder / COCO_FILE, json.dumps(coco_dict(dets, class_names), indent=1) + '\n')


WRITERS: dict[str, Callable[[Sequence[ImageDetections], Sequence[str], Path], None]] = {
    'voc_xml': write_voc, 'yolo_txt': write_yolo, 'coco_json': write_coco}


def set_folder(output: str | os.PathLike, fmt: str) -> Path:
    """Where format `fmt` is written: OUTPUT/<fmt>."""
    return Path(output) / fmt


def check_free(output: str | os.PathLike, fmt: str) -> Path:
    """OUTPUT/<fmt>, which must not exist yet (it may hold corrections); raises OutputExistsError naming it."""
    folder = set_folder(output, fmt)
    if folder.exists():
        raise OutputExistsError(f'--save_format={fmt}: {folder} already exists (it may hold your corrections); '
                                'choose another --output or delete it')
    return folder


def write_label_set(fmt: str, entries: Sequence[Mapping[str, Any]], class_names: Sequence[str],
                    output: str | os.PathLike) -> Path:
    """Writes detect.py's image entries as a labelled set in format `fmt` (one of FORMATS) to OUTPUT/<fmt>, under a
    temporary name renamed when complete; returns the folder. Raises OutputExistsError when it exists."""
    folder = check_free(output, fmt)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{fmt}.', suffix='.tmp', dir=output))
    try:
        WRITERS[fmt]([from_entry(e) for e in entries], class_names, tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private; the set is an ordinary folder
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder
