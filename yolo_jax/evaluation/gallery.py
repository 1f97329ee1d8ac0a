"""Pictures of the errors worth looking at, cropped from the evaluated photos: the highest-scored `background`
detections (error_types.py: nothing labelled within IoU 0.1; on real photos often an object nobody labelled, a
missing label rather than a detector error) and the `missed` boxes (labelled, found by no detection).

Each tile is a square crop around one box (twice its longer side, at least MIN_CROP pixels, grey outside the
photo) with the photo's labelled boxes drawn thin in white and the box itself in its class colour, captioned with
its class, score and file name. Only where the detections' image ids are image files (the own-photos, VOC XML,
COCO JSON and YOLO txt sets); the generated and TFDS sets have no files to crop from.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from yolo_jax.evaluation import error_types
from yolo_jax.evaluation.metrics import box_flags
from yolo_jax.visualize import _font, class_color, grid

TILE = 150  # pixels of a tile's picture (the caption below adds CAPTION)
CAPTION = 30
MIN_CROP = 64  # the crop's least side in original pixels, so a small box keeps some surroundings
COLUMNS = 8
LIMIT = 24  # tiles per picture
NAMES = ('top_background', 'missed')  # the pictures (PNG names)


def image_files(detections: Sequence[dict]) -> list[Path] | None:
    """The detections' image ids as paths when every one is an existing file, else None."""
    paths = []
    for d in detections:
        image_id = d['image_id'] if 'image_id' in d else None
        if not isinstance(image_id, str | os.PathLike) or not os.path.isfile(image_id):
            return None
        paths.append(Path(image_id))
    return paths


def picks(detections: Sequence[dict], ground_truth: Sequence[dict], num_classes: int,
          truncate_detections: bool = True, limit: int = LIMIT) -> dict[str, list[dict]]:
    """{'top_background': the `limit` highest-scored background detections, 'missed': up to `limit` missed boxes
    (by class, then image order)}, each entry {'image' (index), 'box' xyxy original pixels, 'class', 'score'
    (None for a missed box)}."""
    typed = error_types.classify(detections, ground_truth, num_classes, truncate_detections)
    background = []
    for i, d in enumerate(detections):
        boxes = np.asarray(d['boxes'], np.float64).reshape(-1, 4)
        for j, outcome in enumerate(typed['outcome'][i]):
            if outcome == 'background':
                background.append({'image': i, 'box': boxes[j], 'class': int(np.asarray(d['classes'])[j]),
                                   'score': float(np.asarray(d['scores'])[j])})
    background.sort(key=lambda e: -e['score'])
    missed = []
    for i, g in enumerate(ground_truth):
        classes = np.asarray(g['classes']).reshape(-1)
        boxes = np.asarray(g['boxes'], np.float64).reshape(-1, 4)
        for k in np.flatnonzero(~typed['matched'][i] & ~box_flags(g, 'difficult', len(classes))):
            missed.append({'image': i, 'box': boxes[k], 'class': int(classes[k]), 'score': None})
    missed.sort(key=lambda e: e['class'])  # stable: image order within a class
    return {'top_background': background[:limit], 'missed': missed[:limit]}


def tile(image: np.ndarray, entry: dict, ground_truth: dict, class_names: Sequence[str], name: str) -> np.ndarray:
    """One (TILE + CAPTION, TILE, 3) uint8 tile of `entry` (see `picks`) cropped from `image` (H, W, 3)."""
    x1, y1, x2, y2 = (float(v) for v in entry['box'])
    side = max(2.0 * max(x2 - x1, y2 - y1), MIN_CROP)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    left, top = cx - side / 2, cy - side / 2
    crop = Image.fromarray(image).crop((round(left), round(top), round(left + side), round(top + side)))
    crop = crop.resize((TILE, TILE), Image.BILINEAR)  # PIL fills outside the photo with black: grey it below
    canvas = Image.new('RGB', (TILE, TILE + CAPTION), (255, 255, 255))
    canvas.paste(crop, (0, 0))
    draw, scale = ImageDraw.Draw(canvas), TILE / side
    h, w = image.shape[:2]
    outside = [(0, 0, (0 - left) * scale, TILE), ((w - left) * scale, 0, TILE, TILE), (0, 0, TILE, (0 - top) * scale),
               (0, (h - top) * scale, TILE, TILE)]
    for bx0, by0, bx1, by1 in outside:
        if bx1 > bx0 and by1 > by0:
            draw.rectangle([max(bx0, 0), max(by0, 0), min(bx1, TILE), min(by1, TILE)], fill=(128, 128, 128))

    def px(box: Sequence[float]) -> list[float]:
        return [(box[0] - left) * scale, (box[1] - top) * scale, (box[2] - left) * scale, (box[3] - top) * scale]

    for g in np.asarray(ground_truth['boxes'], np.float64).reshape(-1, 4):
        draw.rectangle(px(g), outline=(255, 255, 255), width=1)
    draw.rectangle(px(entry['box']), outline=class_color(entry['class']), width=3)
    c = entry['class']
    label = class_names[c] if c < len(class_names) else str(c)
    if entry['score'] is not None:
        label += f" {entry['score']:.2f}"
    font = _font(11)
    draw.text((3, TILE + 2), label, fill=(0, 0, 0), font=font)
    draw.text((3, TILE + 15), name[-24:], fill=(110, 110, 110), font=font)
    return np.asarray(canvas)


def pictures(detections: Sequence[dict], ground_truth: Sequence[dict], class_names: Sequence[str], *,
             truncate_detections: bool = True, load: Callable[[Path], np.ndarray] | None = None,
             limit: int = LIMIT) -> dict[str, np.ndarray]:
    """{name in NAMES: (H, W, 3) uint8 grid of tiles} for the kinds with at least one box; {} when the image ids
    are not files. `load` decodes a path to (H, W, 3) uint8 (default: data/decode.py's decoder, the pixels the
    boxes were predicted on)."""
    paths = image_files(detections)
    if paths is None:
        return {}
    if load is None:
        from yolo_jax.data.decode import decode_image as load  # noqa: PLC0415  (TensorFlow for JPEG)
    cache: dict[int, np.ndarray] = {}
    out = {}
    for name, entries in picks(detections, ground_truth, len(class_names), truncate_detections, limit).items():
        if not entries:
            continue
        tiles = []
        for e in entries:
            i = e['image']
            if i not in cache:
                cache[i] = np.asarray(load(paths[i]), np.uint8)
            tiles.append(tile(cache[i], e, ground_truth[i], class_names, paths[i].name))
        out[name] = grid(tiles, ncols=COLUMNS)
    return out
