"""Box conversions, IoU, GIoU, DIoU and CIoU in JAX.

Boxes are `(..., 4)` arrays in one unit throughout a call (pixels or grid cells; it does not matter):
  xywh = (centre x, centre y, width, height); xyxy = (x1, y1, x2, y2) with x1 <= x2 and y1 <= y2.
All functions broadcast over leading dimensions and are safe for zero-area boxes: a ratio whose
denominator is 0 is defined as 0, with finite gradients (no NaN, no inf).
"""

import jax
import jax.numpy as jnp

Array = jnp.ndarray


def xywh_to_xyxy(boxes: Array) -> Array:
    """(..., 4) centre/size → corners."""
    xy, wh = boxes[..., :2], boxes[..., 2:]
    return jnp.concatenate([xy - wh * 0.5, xy + wh * 0.5], axis=-1)


def _safe_div(num: Array, den: Array) -> Array:
    """num / den where den > 0, else 0; the where-twice trick keeps gradients finite."""
    ok = den > 0
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)


def _area(lo: Array, hi: Array) -> Array:
    wh = jnp.maximum(hi - lo, 0.0)
    return wh[..., 0] * wh[..., 1]


def _iou_parts(a: Array, b: Array) -> tuple[Array, Array, Array, Array]:
    """Corners of a and b (xyxy), broadcast → (iou, union, enclosing area, inter area)."""
    a_lo, a_hi = a[..., :2], a[..., 2:]
    b_lo, b_hi = b[..., :2], b[..., 2:]
    inter = _area(jnp.maximum(a_lo, b_lo), jnp.minimum(a_hi, b_hi))
    union = _area(a_lo, a_hi) + _area(b_lo, b_hi) - inter
    enclose = _area(jnp.minimum(a_lo, b_lo), jnp.maximum(a_hi, b_hi))
    return _safe_div(inter, union), union, enclose, inter


def iou_xyxy(a: Array, b: Array) -> Array:
    """IoU of corner boxes a (..., 4) and b (..., 4), broadcast over leading dims → (...)."""
    return _iou_parts(a, b)[0]


def giou_xyxy(a: Array, b: Array) -> Array:
    """Generalised IoU (Rezatofighi et al. 2019) of corner boxes, broadcast → (...), in [-1, 1]."""
    iou, union, enclose, _ = _iou_parts(a, b)
    return iou - _safe_div(enclose - union, enclose)


def iou_xywh(a: Array, b: Array) -> Array:
    """IoU of centre/size boxes, as the reference's `bbox_iou`."""
    return iou_xyxy(xywh_to_xyxy(a), xywh_to_xyxy(b))


def giou_xywh(a: Array, b: Array) -> Array:
    """GIoU of centre/size boxes, as the reference's `bbox_giou`.

    Like the reference, corners are re-ordered (min/max) first, so a box with a negative size behaves
    as its mirror image rather than producing a negative area.
    """
    a, b = xywh_to_xyxy(a), xywh_to_xyxy(b)
    a = jnp.concatenate([jnp.minimum(a[..., :2], a[..., 2:]), jnp.maximum(a[..., :2], a[..., 2:])], axis=-1)
    b = jnp.concatenate([jnp.minimum(b[..., :2], b[..., 2:]), jnp.maximum(b[..., :2], b[..., 2:])], axis=-1)
    return giou_xyxy(a, b)


def _ordered_xyxy(boxes: Array) -> Array:
    """Centre/size → corners with x1 <= x2, y1 <= y2 (a negative size behaves as its mirror image)."""
    c = xywh_to_xyxy(boxes)
    return jnp.concatenate([jnp.minimum(c[..., :2], c[..., 2:]), jnp.maximum(c[..., :2], c[..., 2:])], axis=-1)


def _centre_penalty(a: Array, b: Array) -> Array:
    """DIoU's rho^2 / c^2: squared centre distance over the squared diagonal of the enclosing box (corners)."""
    centre = lambda x: (x[..., :2] + x[..., 2:]) * 0.5
    rho2 = jnp.sum(jnp.square(centre(a) - centre(b)), axis=-1)
    diag = jnp.maximum(a[..., 2:], b[..., 2:]) - jnp.minimum(a[..., :2], b[..., :2])
    return _safe_div(rho2, jnp.sum(jnp.square(diag), axis=-1))


def diou_xywh(a: Array, b: Array) -> Array:
    """Distance-IoU (Zheng et al. 2020) of centre/size boxes, broadcast → (...), in (-1, 1]:
    IoU - rho^2 / c^2 (rho: centre distance, c: diagonal of the smallest enclosing box)."""
    a, b = _ordered_xyxy(a), _ordered_xyxy(b)
    return iou_xyxy(a, b) - _centre_penalty(a, b)


def ciou_xywh(a: Array, b: Array) -> Array:
    """Complete-IoU (Zheng et al. 2020) of centre/size boxes, broadcast → (...): DIoU - alpha * v with
    v = 4 / pi^2 * (atan(w_b / h_b) - atan(w_a / h_a))^2 and alpha = v / (1 - IoU + v).

    alpha is a constant for the gradient (stop_gradient), as in the paper and Darknet. Use `b` for the
    ground truth; the expression is symmetric anyway.
    """
    a, b = _ordered_xyxy(a), _ordered_xyxy(b)
    iou = iou_xyxy(a, b)
    aspect = lambda x: jnp.arctan(_safe_div(x[..., 2] - x[..., 0], x[..., 3] - x[..., 1]))
    v = (4.0 / jnp.pi**2) * jnp.square(aspect(b) - aspect(a))
    alpha = jax.lax.stop_gradient(_safe_div(v, 1.0 - iou + v))
    return iou - _centre_penalty(a, b) - alpha * v
