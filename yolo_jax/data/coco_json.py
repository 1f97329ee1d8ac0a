"""COCO-format detection data: a JSON file (`images`, `annotations`, `categories`) plus an image folder.

Reading (`read_coco_json`) validates everything and reports problems with the file and the image or annotation
id: errors (missing keys, duplicate ids, unknown image or category, malformed bbox, missing or unreadable image,
a width/height in the JSON that differs from the image file, an image that does not decode in full, a file
that is not UTF-8, iscrowd not 0/1) raise one `CocoJsonError` listing
every problem; boxes reaching outside the image are clipped with an `AnnotationWarning`, and boxes with no area
(after clipping) are dropped with one.

Conventions: `bbox` = [x, y, w, h] in pixels of the image (top-left corner, float); here boxes become float32
x1, y1, x2, y2 = x, y, x + w, y + h. Class k (0-based) is the k-th category in ascending id order, so COCO's 80
categories (ids 1..90 with gaps) map to the order of Darknet's coco.names. `iscrowd` boxes are kept and flagged
`difficult` (evaluation ignores them as COCOeval does; training drops them). Images are ordered by id; images
without annotations are kept (COCO's evaluation counts detections on them).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np
from absl import logging

from yolo_jax.data import decode
from yolo_jax.data.annotations import AnnotationError, AnnotationRecord, AnnotationWarning, _decode_problems
from yolo_jax.data.source_base import FileSource
from yolo_jax.errors import ConfigError

_MAX_LISTED_ERRORS = 20


class CocoJsonError(AnnotationError):
    """A malformed COCO-format file; the message names the file and the image / annotation / category id."""


def _load(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CocoJsonError(f'{path}: COCO annotation file not found')
    try:
        data = json.loads(path.read_text(encoding='utf-8'))
    except json.JSONDecodeError as e:
        raise CocoJsonError(f'{path}:{e.lineno}: not valid JSON: {e.msg}') from None
    except UnicodeDecodeError as e:
        raise CocoJsonError(f'{path}: not a UTF-8 text file ({e.reason} at byte {e.start})') from None
    if not isinstance(data, dict):
        raise CocoJsonError(f'{path}: expected a JSON object with images, annotations and categories')
    missing = [k for k in ('images', 'annotations', 'categories') if not isinstance(data.get(k), list)]
    if missing:
        raise CocoJsonError(f'{path}: missing or non-list key(s) {", ".join(missing)}')
    return data


def _categories(data: dict[str, Any], path: Path) -> tuple[list[int], tuple[str, ...]]:
    """(category ids ascending, names in that order); raises on malformed or duplicate categories."""
    by_id: dict[int, str] = {}
    errors = []
    for k, cat in enumerate(data['categories']):
        cid = cat.get('id') if isinstance(cat, dict) else None
        name = cat.get('name') if isinstance(cat, dict) else None
        if not isinstance(cid, int) or isinstance(cid, bool) or not isinstance(name, str) or not name.strip():
            errors.append(f'{path}: categories[{k}]: needs an integer id and a non-empty name, got {cat!r}')
        elif cid in by_id:
            errors.append(f'{path}: category id {cid}: duplicate id')
        elif name in by_id.values():
            errors.append(f'{path}: category id {cid}: duplicate name {name!r}')
        else:
            by_id[cid] = name
    if not by_id and not errors:
        errors.append(f'{path}: no categories')
    _raise(errors)
    ids = sorted(by_id)
    return ids, tuple(by_id[i] for i in ids)


def read_categories(path: str | os.PathLike) -> tuple[str, ...]:
    """Class names of a COCO-format file: its categories' names in ascending id order."""
    path = Path(path)
    return _categories(_load(path), path)[1]


def _raise(errors: list[str]) -> None:
    if errors:
        shown = '\n'.join(errors[:_MAX_LISTED_ERRORS])
        more = f'\n... and {len(errors) - _MAX_LISTED_ERRORS} more' if len(errors) > _MAX_LISTED_ERRORS else ''
        raise CocoJsonError(f'{len(errors)} problem(s) in COCO annotations:\n{shown}{more}')


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def read_coco_json(
    path: str | os.PathLike, image_dir: str | os.PathLike | None = None, *, check_images: bool = True
) -> tuple[list[AnnotationRecord], tuple[str, ...]]:
    """Reads and validates a COCO-format file (see the module docstring).

    Args:
        path: the JSON file.
        image_dir: folder that `file_name`s are relative to (default: the JSON's folder).
        check_images: open every image (existence, size) and decode it in full, with the input pipeline's
            decoder, so a truncated or corrupt image is reported here. Without it, width/height come from the
            JSON and the format is guessed from the extension.

    Returns:
        (records ordered by image id, with float32 (N, 4) x1, y1, x2, y2 pixel boxes, int32 classes, the crowd
        flags in `difficult` and the image id in `line`; class names).

    Raises:
        CocoJsonError: naming the file and every bad image / annotation id.
    """
    path = Path(path)
    data = _load(path)
    cat_ids, names = _categories(data, path)
    class_of = {cid: k for k, cid in enumerate(cat_ids)}
    root = Path(image_dir).expanduser() if image_dir else path.resolve().parent
    errors: list[str] = []

    images: dict[int, dict[str, Any]] = {}
    for k, im in enumerate(data['images']):
        iid = im.get('id') if isinstance(im, dict) else None
        if not isinstance(iid, int) or isinstance(iid, bool):
            errors.append(f'{path}: images[{k}]: needs an integer id, got {im!r}'[:300])
            continue
        where = f'{path}: image id {iid}'
        if iid in images:
            errors.append(f'{where}: duplicate id')
            continue
        file_name = im.get('file_name')
        if not isinstance(file_name, str) or not file_name:
            errors.append(f'{where}: needs a file_name')
            continue
        width, height = im.get('width'), im.get('height')
        image_path = root / file_name
        image_format = {'.png': 'PNG', '.bmp': 'BMP', '.gif': 'GIF'}.get(image_path.suffix.lower(), 'JPEG')
        if check_images:
            if not image_path.is_file():
                errors.append(f'{where}: image not found: {image_path}')
                continue
            try:
                real_w, real_h, image_format = decode.header(image_path)
            except Exception as e:  # noqa: BLE001 - any PIL failure means unreadable
                errors.append(f'{where}: unreadable image {image_path}: {e}')
                continue
            if (width, height) != (real_w, real_h) and width is not None:
                errors.append(f'{where}: the JSON says {width}x{height} but {image_path} is {real_w}x{real_h}')
                continue
            width, height = real_w, real_h
        elif not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
            errors.append(f'{where}: needs positive integer width and height')
            continue
        images[iid] = {'path': str(image_path), 'width': int(width), 'height': int(height), 'format': image_format,
                       'boxes': [], 'classes': [], 'crowd': [],
                       'num_bytes': image_path.stat().st_size if check_images else -1}

    seen: set[int] = set()
    for k, ann in enumerate(data['annotations']):
        aid = ann.get('id') if isinstance(ann, dict) else None
        if not isinstance(aid, int) or isinstance(aid, bool):
            errors.append(f'{path}: annotations[{k}]: needs an integer id, got {ann!r}'[:300])
            continue
        where = f'{path}: annotation id {aid}'
        if aid in seen:
            errors.append(f'{where}: duplicate id')
            continue
        seen.add(aid)
        iid, cid, bbox, crowd = ann.get('image_id'), ann.get('category_id'), ann.get('bbox'), ann.get('iscrowd', 0)
        if iid not in images:
            errors.append(f'{where}: unknown or invalid image_id {iid!r}')
            continue
        if cid not in class_of:
            errors.append(f'{where}: unknown category_id {cid!r} (categories: {cat_ids[:10]}...)')
            continue
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_number(v) for v in bbox)):
            errors.append(f'{where}: bbox must be [x, y, w, h] (4 finite numbers), got {bbox!r}')
            continue
        if crowd not in (0, 1) or isinstance(crowd, float):
            errors.append(f'{where}: iscrowd must be 0 or 1, got {crowd!r}')
            continue
        im = images[iid]
        x, y, w, h = (float(v) for v in bbox)
        x1, y1, x2, y2 = x, y, x + w, y + h
        cx1, cy1, cx2, cy2 = max(x1, 0.0), max(y1, 0.0), min(x2, float(im['width'])), min(y2, float(im['height']))
        if cx2 <= cx1 or cy2 <= cy1:
            warnings.warn(f'{where} (image id {iid}): bbox {bbox} has no area inside the {im["width"]}x'
                          f'{im["height"]} image; dropped', AnnotationWarning, stacklevel=2)
            continue
        if (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2):
            warnings.warn(f'{where} (image id {iid}): bbox {bbox} reaches outside the {im["width"]}x{im["height"]} '
                          f'image; clipped', AnnotationWarning, stacklevel=2)
        im['boxes'].append((cx1, cy1, cx2, cy2))
        im['classes'].append(class_of[cid])
        im['crowd'].append(bool(crowd))
    _raise(errors)

    records = [
        AnnotationRecord(
            path=im['path'],
            boxes=np.asarray(im['boxes'], np.float64).reshape(-1, 4).astype(np.float32),
            classes=np.asarray(im['classes'], np.int32),
            width=im['width'],
            height=im['height'],
            line=iid,
            image_format=im['format'],
            difficult=np.asarray(im['crowd'], bool),
            num_bytes=im['num_bytes'],
        )
        for iid, im in sorted(images.items())
    ]
    if check_images:  # every image decoded in full now, as the input pipeline will, not in the first batch
        _raise([f'{path}: image id {r.line}: {problem}'
                for r, problem in zip(records, _decode_problems(records), strict=True) if problem])
    logging.info('Read %d images, %d boxes, %d classes from %s', len(records), sum(len(r.classes) for r in records),
                 len(names), path)
    return records, names


class CocoJsonSource(FileSource):
    """config.data.dataset='coco_json': config.data.<split>_annotations are COCO-format JSON files,
    config.data.<split>_images their image folders ('' = the JSON's folder). The class names are the train JSON's
    categories (the test JSON's when there is no train JSON); a test JSON with other categories is an error."""

    name = 'coco_json'
    field, field_help = 'annotations', 'a COCO-format JSON file'

    def class_names(self, config: ml_collections.ConfigDict) -> tuple[tuple[str, ...], str]:
        split = 'train' if config.data.train_annotations else 'test'
        return read_categories(self.split_path(config, split)), 'the COCO JSON categories'

    def records(self, config: ml_collections.ConfigDict, split: str) -> tuple[list[AnnotationRecord], tuple[str, ...]]:
        path = self.split_path(config, split)
        records, names = read_coco_json(path, str(config.data[f'{split}_images']) or None)
        if split != 'train' and config.data.train_annotations and names != self.class_names(config)[0]:
            raise ConfigError(f'config.data.{split}_annotations: {path} has other categories than '
                              f'config.data.train_annotations {config.data.train_annotations}')
        return records, names


SOURCE = CocoJsonSource()


def to_coco_dict(
    records: Sequence[AnnotationRecord], class_names: Sequence[str], file_names: Sequence[str] | None = None
) -> dict[str, Any]:
    """COCO-format dict of records: image ids 1.., category ids 1..K in class order, bbox [x, y, w, h] pixels,
    area = w * h, iscrowd = the records' difficult flags. file_names default to the records' paths."""
    file_names = [r.path for r in records] if file_names is None else list(file_names)
    out: dict[str, Any] = {
        'images': [],
        'annotations': [],
        'categories': [{'id': k + 1, 'name': n} for k, n in enumerate(class_names)],
    }
    for i, (r, name) in enumerate(zip(records, file_names, strict=True), start=1):
        out['images'].append({'id': i, 'file_name': name, 'width': int(r.width), 'height': int(r.height)})
        boxes = np.asarray(r.boxes, np.float64).reshape(-1, 4)
        for box, c, crowd in zip(boxes, np.asarray(r.classes).reshape(-1), r.difficult_flags(), strict=True):
            w, h = box[2] - box[0], box[3] - box[1]
            out['annotations'].append({
                'id': len(out['annotations']) + 1, 'image_id': i, 'category_id': int(c) + 1,
                'bbox': [float(box[0]), float(box[1]), float(w), float(h)], 'area': float(w * h),
                'iscrowd': int(crowd),
            })
    return out
