"""Drawing detections on images and tiling images into a grid (PIL + NumPy; no TF, no JAX).

Used by `detect.py`, and for TensorBoard images and experiment figures.
"""

from __future__ import annotations

import colorsys
import functools
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

_GOLDEN = 0.618033988749895


def class_color(class_id: int) -> tuple[int, int, int]:
    """A distinct, saturated RGB colour per class (hues spaced by the golden ratio, so neighbours differ)."""
    hue = (0.1 + class_id * _GOLDEN) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


@functools.lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # scalable when Pillow has FreeType
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def to_uint8(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) or (H, W) image as uint8 RGB: floats are taken to be in [0, 1]; grey is repeated to RGB."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = np.clip(np.rint(np.asarray(image, np.float64) * 255.0), 0, 255).astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(f'expected an (H, W, 3) image, got shape {image.shape}')
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    return image[..., :3]


def draw_detections(
    image: np.ndarray,
    boxes: np.ndarray,
    classes: np.ndarray,
    scores: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
) -> np.ndarray:
    """Draws boxes with 'name score' labels, one colour per class.

    Args:
      image: (H, W, 3) uint8 RGB (floats in [0, 1] are accepted).
      boxes: (N, 4) x1, y1, x2, y2 in this image's pixels. classes: (N,) int. scores: (N,) or None (no score).
      class_names: names indexed by class id (default: the id).

    Returns:
      A new (H, W, 3) uint8 RGB array; the input is not modified.
    """
    pil = Image.fromarray(to_uint8(image))
    draw = ImageDraw.Draw(pil)
    h, w = pil.height, pil.width
    line = max(1, round(min(h, w) / 200))
    font = _font(max(10, round(min(h, w) / 30)))
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    classes = np.asarray(classes).reshape(-1)
    for i, (box, cls) in enumerate(zip(boxes, classes, strict=True)):
        cls = int(cls)
        color = class_color(cls)
        x1, y1, x2, y2 = (float(v) for v in box)
        draw.rectangle([x1, y1, max(x1, x2), max(y1, y2)], outline=color, width=line)
        name = class_names[cls] if class_names is not None and 0 <= cls < len(class_names) else str(cls)
        label = name if scores is None else f'{name} {float(np.asarray(scores).reshape(-1)[i]):.2f}'
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
        tw, th = right - left, bottom - top
        # Label above the box, or inside it when the box touches the top edge.
        ty = y1 - th - 2 * line if y1 - th - 2 * line >= 0 else y1
        draw.rectangle([x1, ty, x1 + tw + 2 * line, ty + th + 2 * line], fill=color)
        text_color = (0, 0, 0) if sum(color) > 380 else (255, 255, 255)
        draw.text((x1 + line - left, ty + line - top), label, fill=text_color, font=font)
    return np.asarray(pil)


def grid(images: Sequence[np.ndarray], ncols: int, pad: int = 2, pad_value: int = 255) -> np.ndarray:
    """Tiles images row by row into one uint8 (H, W, 3) array, `pad` pixels of `pad_value` around each tile.

    Images may differ in size (each is placed top-left in a cell of the largest size); floats in [0, 1] and
    greyscale are converted as `to_uint8` does.
    """
    tiles = [to_uint8(im) for im in images]
    if not tiles:
        raise ValueError('grid: no images')
    ncols = max(1, min(int(ncols), len(tiles)))
    nrows = -(-len(tiles) // ncols)
    ch = max(t.shape[0] for t in tiles) + pad
    cw = max(t.shape[1] for t in tiles) + pad
    out = np.full((nrows * ch + pad, ncols * cw + pad, 3), pad_value, np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, ncols)
        y, x = r * ch + pad, c * cw + pad
        out[y : y + t.shape[0], x : x + t.shape[1]] = t
    return out


def draw_tracks(
    image: np.ndarray,
    boxes: np.ndarray,
    track_ids: np.ndarray,
    classes: np.ndarray,
    class_names: Sequence[str] | None = None,
    trails: dict[int, Sequence[tuple[float, float]]] | None = None,
) -> np.ndarray:
    """Draws tracked boxes with 'name id' labels, one colour per track id, and each track's trail of centres.

    Args:
      image: (H, W, 3) uint8 RGB. boxes: (N, 4) xyxy in this image's pixels. track_ids, classes: (N,) int.
      class_names: names indexed by class id (default: the id).
      trails: {track id: [(x, y) centres in pixels, oldest first]} (default: none).

    Returns:
      A new (H, W, 3) uint8 RGB array.
    """
    pil = Image.fromarray(to_uint8(image))
    draw = ImageDraw.Draw(pil)
    line = max(1, round(min(pil.height, pil.width) / 200))
    font = _font(max(10, round(min(pil.height, pil.width) / 30)))
    for tid, points in (trails or {}).items():
        if len(points) > 1:
            draw.line([tuple(p) for p in points], fill=class_color(int(tid)), width=line)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    for box, tid, cls in zip(boxes, np.asarray(track_ids).reshape(-1), np.asarray(classes).reshape(-1), strict=True):
        color = class_color(int(tid))
        x1, y1, x2, y2 = (float(v) for v in box)
        draw.rectangle([x1, y1, max(x1, x2), max(y1, y2)], outline=color, width=line)
        cls = int(cls)
        name = class_names[cls] if class_names is not None and 0 <= cls < len(class_names) else str(cls)
        label = f'{name} #{int(tid)}'
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
        ty = y1 - (bottom - top) - 2 * line if y1 - (bottom - top) - 2 * line >= 0 else y1
        draw.rectangle([x1, ty, x1 + right - left + 2 * line, ty + bottom - top + 2 * line], fill=color)
        text_color = (0, 0, 0) if sum(color) > 380 else (255, 255, 255)
        draw.text((x1 + line - left, ty + line - top), label, fill=text_color, font=font)
    return np.asarray(pil)
