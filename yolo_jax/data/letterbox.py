"""Resizing an image and its boxes to the square network input: letterbox (the reference) or stretch.

The TF functions run inside the tf.data pipeline; the NumPy helpers (`letterbox_params`, `resize_params`,
`unletterbox_boxes`) map detections back to original-image pixels in post-processing and use exactly the same
arithmetic, so the inverse is exact up to float rounding.

Letterbox (the reference's `image_preporcess`): scale = min(S / w, S / h); the image is resized bilinearly to
(int(scale * w), int(scale * h)) and pasted at ((S - nw) // 2, (S - nh) // 2) on an S x S canvas of grey 128;
pixels are divided by 255. Boxes: x * scale + dw, y * scale + dh.
Stretch: the image is resized to S x S ignoring the aspect ratio; boxes: x * S / w, y * S / h.
The reference's cv2 resize rounds to uint8; here the bilinear output stays float (no quantisation).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # TF is imported by the pipeline's functions only: post-processing imports the NumPy helpers
    import tensorflow as tf

RESIZE_MODES = ('letterbox', 'stretch')
PAD_VALUE = 128.0


def letterbox_params(orig_h: int, orig_w: int, size: int) -> tuple[float, int, int]:
    """(scale, dw, dh) of the letterbox: resized side = int(scale * side), offsets in input pixels."""
    scale = min(size / orig_w, size / orig_h)
    new_w, new_h = int(scale * orig_w), int(scale * orig_h)
    return scale, (size - new_w) // 2, (size - new_h) // 2


def resize_params(orig_h: int, orig_w: int, size: int, mode: str = 'letterbox') -> tuple[float, float, int, int]:
    """(scale_x, scale_y, dw, dh) such that input = original * scale + offset, for either resize mode."""
    if mode == 'letterbox':
        scale, dw, dh = letterbox_params(orig_h, orig_w, size)
        return scale, scale, dw, dh
    if mode == 'stretch':
        return size / orig_w, size / orig_h, 0, 0
    raise ValueError(f'unknown resize mode {mode!r}; expected one of {RESIZE_MODES}')


def letterbox_boxes(boxes: np.ndarray, orig_h: int, orig_w: int, size: int, mode: str = 'letterbox') -> np.ndarray:
    """Maps boxes (..., 4) x1, y1, x2, y2 from original-image pixels to input pixels (NumPy; e.g. to draw
    detections on the network input). The inverse of `unletterbox_boxes`."""
    sx, sy, dw, dh = resize_params(orig_h, orig_w, size, mode)
    return np.asarray(boxes, np.float64) * np.array([sx, sy, sx, sy]) + np.array([dw, dh, dw, dh])


def unletterbox_boxes(boxes: np.ndarray, orig_h: int, orig_w: int, size: int, mode: str = 'letterbox') -> np.ndarray:
    """Maps boxes (..., 4) x1, y1, x2, y2 from input pixels back to original-image pixels (no clipping).

    The exact inverse of the box transform applied by `letterbox` (or `stretch` with mode='stretch').
    """
    sx, sy, dw, dh = resize_params(orig_h, orig_w, size, mode)
    boxes = np.asarray(boxes, np.float64)
    out = np.empty_like(boxes)
    out[..., 0::2] = (boxes[..., 0::2] - dw) / sx
    out[..., 1::2] = (boxes[..., 1::2] - dh) / sy
    return out


def _resize(image: tf.Tensor, new_h: tf.Tensor, new_w: tf.Tensor) -> tf.Tensor:
    """Bilinear resize to (new_h, new_w) as float32 pixels 0..255; skipped when the size already matches."""
    import tensorflow as tf  # noqa: PLC0415

    shape = tf.shape(image)
    return tf.cond(
        tf.logical_and(shape[0] == new_h, shape[1] == new_w),
        lambda: tf.cast(image, tf.float32),
        lambda: tf.image.resize(image, tf.stack([new_h, new_w]), method='bilinear'),
    )


def letterbox(image: tf.Tensor, boxes: tf.Tensor, size: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Letterboxes one image.

    Args:
      image: (H, W, 3) uint8 (or float 0..255) RGB.
      boxes: (N, 4) float32 x1, y1, x2, y2 in original-image pixels.
      size: side S of the square network input.

    Returns:
      image (S, S, 3) float32 in [0, 1]; boxes (N, 4) float32 x1, y1, x2, y2 in input pixels.
    """
    import tensorflow as tf  # noqa: PLC0415

    shape = tf.shape(image)
    h, w = tf.cast(shape[0], tf.float64), tf.cast(shape[1], tf.float64)
    scale = tf.minimum(size / w, size / h)  # float64, like the NumPy helper
    new_w = tf.cast(tf.floor(scale * w), tf.int32)
    new_h = tf.cast(tf.floor(scale * h), tf.int32)
    dw, dh = (size - new_w) // 2, (size - new_h) // 2
    resized = _resize(image, new_h, new_w)
    canvas = tf.pad(resized, [[dh, size - new_h - dh], [dw, size - new_w - dw], [0, 0]], constant_values=PAD_VALUE)
    canvas = tf.ensure_shape(canvas / 255.0, [size, size, 3])
    offset = tf.cast(tf.stack([dw, dh, dw, dh]), tf.float64)
    boxes = tf.cast(tf.cast(boxes, tf.float64) * scale + offset, tf.float32)
    return canvas, boxes


def stretch(image: tf.Tensor, boxes: tf.Tensor, size: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Resizes one image to (S, S) ignoring its aspect ratio; same argument/return conventions as `letterbox`."""
    import tensorflow as tf  # noqa: PLC0415

    shape = tf.shape(image)
    h, w = tf.cast(shape[0], tf.float64), tf.cast(shape[1], tf.float64)
    resized = _resize(image, tf.constant(size), tf.constant(size))
    canvas = tf.ensure_shape(resized / 255.0, [size, size, 3])
    scale = tf.stack([size / w, size / h, size / w, size / h])
    boxes = tf.cast(tf.cast(boxes, tf.float64) * scale, tf.float32)
    return canvas, boxes


def resize_image_and_boxes(
    image: tf.Tensor, boxes: tf.Tensor, size: int, mode: str = 'letterbox'
) -> tuple[tf.Tensor, tf.Tensor]:
    """`letterbox` or `stretch` by name (config.data.resize)."""
    if mode == 'letterbox':
        return letterbox(image, boxes, size)
    if mode == 'stretch':
        return stretch(image, boxes, size)
    raise ValueError(f'unknown resize mode {mode!r}; expected one of {RESIZE_MODES}')
