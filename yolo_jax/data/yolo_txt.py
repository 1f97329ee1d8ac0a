"""YOLO-format (Darknet / Ultralytics) detection data: one label text file per image.

Images: a folder (its image files, recursively, sorted) or a list file (`.txt`, one image path per line; relative
paths are taken relative to the list file's folder, as Darknet's train.txt). Label of an image: the same path with
the last `images` folder replaced by `labels` and the extension by `.txt` (Ultralytics:
`data/images/train/a.jpg` -> `data/labels/train/a.txt`), or, when the path has no `images` folder or that file does
not exist, `a.txt` beside the image (Darknet). A missing or empty label file means an image without objects (kept).

Label line: `cls cx cy w h`: cls a 0-based integer index into the class-names file, the box centre and size
normalised by the image width and height (in [0, 1]). Blank lines are skipped. Problems are reported as
`<label file>:<line>`: errors (wrong field count, non-integer class, unknown class, non-finite or non-positive size,
values outside [0, 1], i.e. pixel coordinates, a label file that is not UTF-8, an image that does not decode in full
with the input pipeline's decoder) raise one `YoloTxtError` listing every bad line and image; boxes reaching
outside the image are clipped with an `AnnotationWarning`.

Records hold float32 x1, y1, x2, y2 pixel boxes: x1 = (cx - w / 2) * width, ... (no rounding).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import ml_collections
import numpy as np
from absl import logging

from yolo_jax.data import decode
from yolo_jax.data.annotations import (
    AnnotationError,
    AnnotationRecord,
    AnnotationWarning,
    _decode_problems,
    config_class_names,
)
from yolo_jax.data.source_base import FileSource

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.tif', '.tiff', '.webp', '.ppm', '.pgm')
_MAX_LISTED_ERRORS = 20
_TOLERANCE = 1e-3  # normalised values this far outside [0, 1] are clipped, not errors (rounding in exporters)


class YoloTxtError(AnnotationError):
    """A malformed YOLO label or image list; the message names the file and line."""


def list_images(images: str | os.PathLike) -> list[Path]:
    """A folder (image files, recursive, sorted) or a list file of image paths -> image paths."""
    p = Path(images).expanduser()
    if p.is_dir():
        found = sorted(f for f in p.rglob('*') if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
        if not found:
            raise YoloTxtError(f'{p}: no image files ({", ".join(IMAGE_EXTENSIONS)})')
        return found
    if not p.is_file():
        raise YoloTxtError(f'{p}: no such image folder or list file')
    out = []
    for number, raw in enumerate(_read_text(p).splitlines(), start=1):
        text = raw.strip()
        if not text or text.startswith('#'):
            continue
        image = Path(text).expanduser()
        if not image.is_absolute():
            image = p.resolve().parent / image
        if not image.is_file():
            raise YoloTxtError(f'{p}:{number}: image not found: {text}')
        out.append(image)
    if not out:
        raise YoloTxtError(f'{p}: no image paths')
    return out


def _read_text(path: Path) -> str:
    """The file's UTF-8 text; YoloTxtError naming it when it is not UTF-8."""
    try:
        return path.read_text(encoding='utf-8')
    except UnicodeDecodeError as e:
        raise YoloTxtError(f'{path}: not a UTF-8 text file ({e.reason} at byte {e.start})') from None


def label_path(image: str | os.PathLike) -> Path:
    """The label file of an image (see the module docstring)."""
    image = Path(image)
    parts = list(image.parts)
    if 'images' in parts[:-1]:
        k = len(parts) - 2 - parts[:-1][::-1].index('images')
        candidate = Path(*parts[:k], 'labels', *parts[k + 1:]).with_suffix('.txt')
        if candidate.is_file():
            return candidate
    return image.with_suffix('.txt')


def read_yolo_txt(images: str | os.PathLike, class_names: Sequence[str] | int) -> list[AnnotationRecord]:
    """Reads and validates the labels of every image (see the module docstring).

    Args:
        images: image folder or list file.
        class_names: the class names, or their number; class ids must lie in [0, len).

    Returns:
        One record per image, in listing order: float32 (N, 4) x1, y1, x2, y2 pixel boxes, int32 classes,
        `line` = the image's index in the listing.

    Raises:
        YoloTxtError: listing every bad line as `<label file>:<line>: <problem>`.
    """
    num_classes = class_names if isinstance(class_names, int) else len(class_names)
    records: list[AnnotationRecord] = []
    errors: list[str] = []
    missing = 0
    for index, image in enumerate(list_images(images)):
        try:
            width, height, image_format = decode.header(image)
        except Exception as e:  # noqa: BLE001 - any PIL failure means unreadable
            errors.append(f'{image}: unreadable image: {e}')
            continue
        label = label_path(image)
        boxes, classes = [], []
        if label.is_file():
            try:
                text = _read_text(label)
            except YoloTxtError as e:
                errors.append(str(e))
                continue
            for number, raw in enumerate(text.splitlines(), start=1):
                if not raw.strip():
                    continue
                try:
                    box = _parse_line(raw, f'{label}:{number}', num_classes, width, height)
                except YoloTxtError as e:
                    errors.append(str(e))
                    continue
                if box is not None:
                    boxes.append(box[:4])
                    classes.append(box[4])
        else:
            missing += 1
        records.append(AnnotationRecord(
            path=str(image),
            boxes=np.asarray(boxes, np.float64).reshape(-1, 4).astype(np.float32),
            classes=np.asarray(classes, np.int32),
            width=width,
            height=height,
            line=index,
            image_format=image_format,
            num_bytes=image.stat().st_size,
        ))
    # Every image decoded in full now, as the input pipeline will, not in the first batch.
    errors += [problem for problem in _decode_problems(records) if problem]
    if errors:
        shown = '\n'.join(errors[:_MAX_LISTED_ERRORS])
        more = f'\n... and {len(errors) - _MAX_LISTED_ERRORS} more' if len(errors) > _MAX_LISTED_ERRORS else ''
        raise YoloTxtError(f'{len(errors)} bad YOLO label line(s) or image(s) in {images}:\n{shown}{more}')
    logging.info('Read %d images (%d without a label file), %d boxes from %s', len(records), missing,
                 sum(len(r.classes) for r in records), images)
    return records


def _parse_line(
    text: str, where: str, num_classes: int, width: int, height: int
) -> tuple[float, float, float, float, int] | None:
    """(x1, y1, x2, y2 pixels, cls) of one label line; None when clipping leaves nothing (warned)."""
    fields = text.split()
    if len(fields) != 5:
        raise YoloTxtError(f'{where}: {len(fields)} fields, expected `cls cx cy w h` (segments/keypoints are not '
                           'supported)')
    try:
        cls = int(fields[0])
    except ValueError:
        raise YoloTxtError(f'{where}: class {fields[0]!r} is not an integer') from None
    if not 0 <= cls < num_classes:
        raise YoloTxtError(f'{where}: class id {cls} not in [0, {num_classes})')
    try:
        cx, cy, w, h = (float(f) for f in fields[1:])
    except ValueError:
        raise YoloTxtError(f'{where}: non-numeric field in {text.strip()!r}') from None
    if not all(math.isfinite(v) for v in (cx, cy, w, h)):
        raise YoloTxtError(f'{where}: non-finite value in {text.strip()!r}')
    if w <= 0 or h <= 0:
        raise YoloTxtError(f'{where}: empty box (w and h must be > 0) in {text.strip()!r}')
    if not all(-_TOLERANCE <= v <= 1 + _TOLERANCE for v in (cx, cy, w, h)):
        raise YoloTxtError(f'{where}: values must be normalised to [0, 1] (pixel coordinates?) in {text.strip()!r}')
    x1, y1, x2, y2 = (cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height
    cx1, cy1, cx2, cy2 = max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height))
    if (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2):
        # Sub-pixel overshoot is rounding in whatever wrote the file: clip silently.
        if max(-x1, -y1, x2 - width, y2 - height) > 0.5:
            warnings.warn(f'{where}: box reaches outside the {width}x{height} image; clipped', AnnotationWarning,
                          stacklevel=3)
        if cx2 <= cx1 or cy2 <= cy1:
            return None
    return cx1, cy1, cx2, cy2, cls


class YoloTxtSource(FileSource):
    """config.data.dataset='yolo_txt': config.data.<split>_images (an image folder or list file), one label file
    per image, and config.data.class_names."""

    name = 'yolo_txt'
    field, field_help = 'images', 'an image folder or list file'

    def class_names(self, config: ml_collections.ConfigDict) -> tuple[tuple[str, ...], str]:
        return config_class_names(config, self.name)

    def records(self, config: ml_collections.ConfigDict, split: str) -> tuple[list[AnnotationRecord], tuple[str, ...]]:
        names = self.class_names(config)[0]
        return read_yolo_txt(self.split_path(config, split), names), names


SOURCE = YoloTxtSource()


def format_label(boxes: np.ndarray, classes: np.ndarray, width: int, height: int) -> str:
    """Label file text for pixel boxes (N, 4) x1, y1, x2, y2 in a width x height image: `cls cx cy w h` lines
    (normalised, 8 decimals: ~1e-5 px at 1000 px)."""
    lines = []
    for (x1, y1, x2, y2), c in zip(np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(classes).reshape(-1),
                                   strict=True):
        cx, cy, w, h = (x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height
        lines.append(f'{int(c)} {cx:.8f} {cy:.8f} {w:.8f} {h:.8f}\n')
    return ''.join(lines)
