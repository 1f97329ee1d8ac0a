"""Decoding raw YOLO output maps into boxes, objectness and class probabilities."""

from collections.abc import Sequence

import jax
import jax.numpy as jnp

Array = jnp.ndarray

# exp(10) * the largest anchor is ~8e6 px: far beyond any image, yet finite in float32 (also when squared
# for areas). Clamping keeps an untrained or diverging model from producing inf, and thus NaN losses.
MAX_LOG_WH = 10.0


def split_raw(raw: Array, num_anchors: int) -> Array:
    """(B, S, S, A*(5+C)) → (B, S, S, A, 5+C)."""
    b, h, w, c = raw.shape
    return raw.reshape(b, h, w, num_anchors, c // num_anchors)


def decode(raw: Array, anchors: Sequence[Sequence[float]], stride: int, scale_xy: float = 1.0) -> Array:
    """Decodes one scale's raw map.

    Args:
      raw: (B, S, S, A*(5+C)) or (B, S, S, A, 5+C) raw network output.
      anchors: (A, 2) anchor widths and heights in input pixels.
      stride: input pixels per grid cell.
      scale_xy: Darknet's `scale_x_y` (YOLOv4): the centre offset sigmoid(t) is stretched to
        sigmoid(t) * s - (s - 1) / 2, so it can reach the cell borders. 1.0 is YOLOv3's decoding (same numbers).

    Returns:
      (B, S, S, A, 5+C): [x, y, w, h] in input pixels (box centre and size), then the objectness and the
      C class probabilities, each an independent sigmoid. x = (sigmoid(t_x) * s - (s - 1) / 2 + column) * stride,
      w = exp(min(t_w, MAX_LOG_WH)) * anchor_w.
    """
    anchors = jnp.asarray(anchors, jnp.float32)
    if raw.ndim == 4:
        raw = split_raw(raw, anchors.shape[0])
    raw = raw.astype(jnp.float32)
    h, w = raw.shape[1:3]
    col, row = jnp.meshgrid(jnp.arange(w, dtype=jnp.float32), jnp.arange(h, dtype=jnp.float32))
    cell = jnp.stack([col, row], axis=-1)[None, :, :, None, :]  # (1, S, S, 1, 2) as (x, y)
    offset = jax.nn.sigmoid(raw[..., 0:2])
    if scale_xy != 1.0:  # Python branch: v3's graph and numbers are untouched
        offset = offset * scale_xy - 0.5 * (scale_xy - 1.0)
    xy = (offset + cell) * stride
    wh = jnp.exp(jnp.minimum(raw[..., 2:4], MAX_LOG_WH)) * anchors
    return jnp.concatenate([xy, wh, jax.nn.sigmoid(raw[..., 4:])], axis=-1)


def decode_all(
    outputs: Sequence[Array],
    anchors: Sequence[Sequence[Sequence[float]]],
    strides: Sequence[int],
    scale_xy: Sequence[float] | None = None,
) -> list[Array]:
    """`decode` over all scales; anchors (num_scales, A, 2) in pixels, strides ascending; scale_xy one per scale
    (None: 1.0 everywhere)."""
    scale_xy = (1.0,) * len(strides) if scale_xy is None else scale_xy
    return [decode(raw, a, s, k) for raw, a, s, k in zip(outputs, anchors, strides, scale_xy, strict=True)]
