"""The reference's train-time augmentations as TF ops: flip, crop, translate (each with p=0.5, in that order).

Boxes are (N, 4) float32 x1, y1, x2, y2 in pixels of the image they come with, and move with the pixels.
Randomness is stateless: every function takes a `seed` tensor of shape (2,) (int32/int64) and is a pure function
of (image, boxes, seed), so the pipeline gives the same result whatever its parallelism or element order.
Images with zero boxes work: the union box is then taken to be the whole image, so crop and translate are
identities for them (the reference would crash on np.min of an empty array); flip still applies.

Differences from the reference, on purpose:
  * Crop: upstream computes the right/bottom crop edge with `max(w, ...)` instead of `min`, so only the
    left/top edges are ever cut. Here all four edges may be cut, each by up to its distance to the union box.
  * Crop edges are whole pixels chosen so the union box stays entirely inside (upstream truncates the
    right/bottom edge with int(), which can clip a fractional box edge).
  * Translate: shifts are whole pixels (upstream shifts by a float with cv2.warpAffine's bilinear
    interpolation), drawn so that the union box stays inside the image; the uncovered border is filled with 0.
"""

from __future__ import annotations

import tensorflow as tf

PROBABILITY = 0.5


def _uniform(seed: tf.Tensor, n: int) -> tf.Tensor:
    """n float64 uniforms in [0, 1) from a (2,) stateless seed."""
    return tf.random.stateless_uniform([n], seed=seed, dtype=tf.float64)


def union_box(boxes: tf.Tensor, height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
    """The smallest (4,) float64 x1, y1, x2, y2 covering all boxes, clipped to the image; the image if none."""
    boxes = tf.cast(boxes, tf.float64)
    h, w = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
    has_boxes = tf.shape(boxes)[0] > 0
    lo = tf.where(has_boxes, tf.reduce_min(boxes[:, :2], axis=0), 0.0)  # reduce_min of nothing is +inf
    hi = tf.where(has_boxes, tf.reduce_max(boxes[:, 2:], axis=0), tf.stack([w, h]))
    lo = tf.clip_by_value(lo, 0.0, tf.stack([w, h]))
    hi = tf.clip_by_value(hi, lo, tf.stack([w, h]))
    return tf.concat([lo, hi], axis=0)


def random_horizontal_flip(image: tf.Tensor, boxes: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """With p=0.5 mirrors image (H, W, C) left-right; boxes become x1' = W - x2, x2' = W - x1."""
    apply = _uniform(seed, 1)[0] < PROBABILITY
    width = tf.cast(tf.shape(image)[1], boxes.dtype)
    flipped = tf.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], axis=1)
    image = tf.cond(apply, lambda: tf.reverse(image, axis=[1]), lambda: image)
    return image, tf.where(apply, flipped, boxes)


def random_crop(image: tf.Tensor, boxes: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """With p=0.5 crops image (H, W, C) to a random window (whole pixels) that contains the union of all boxes.

    Each of the four edges moves inwards by a uniform fraction of its distance to the union box, so all four
    edges can be cut (the upstream bug cut only left/top). Returns the (H', W', C) crop and boxes in its pixels.
    """
    shape = tf.shape(image)
    h, w = tf.cast(shape[0], tf.float64), tf.cast(shape[1], tf.float64)
    u = _uniform(seed, 5)
    ux1, uy1, ux2, uy2 = tf.unstack(union_box(boxes, shape[0], shape[1]))
    x0 = tf.floor(ux1 - u[1] * ux1)
    y0 = tf.floor(uy1 - u[2] * uy1)
    x1 = tf.minimum(w, tf.math.ceil(ux2 + u[3] * (w - ux2)))
    y1 = tf.minimum(h, tf.math.ceil(uy2 + u[4] * (h - uy2)))
    apply = u[0] < PROBABILITY
    window = tf.cast(tf.where(apply, tf.stack([x0, y0, x1, y1]), tf.stack([0.0, 0.0, w, h])), tf.int32)
    image = image[window[1] : window[3], window[0] : window[2]]
    offset = tf.cast(tf.stack([window[0], window[1], window[0], window[1]]), boxes.dtype)
    return image, boxes - offset


def random_translate(image: tf.Tensor, boxes: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """With p=0.5 shifts image (H, W, C) by whole pixels (tx, ty) keeping the union box inside; border = 0.

    tx is uniform over the integers in [-union_x1, W - union_x2] (likewise ty); boxes move by (tx, ty).
    """
    shape = tf.shape(image)
    h, w = tf.cast(shape[0], tf.float64), tf.cast(shape[1], tf.float64)
    u = _uniform(seed, 3)
    ux1, uy1, ux2, uy2 = tf.unstack(union_box(boxes, shape[0], shape[1]))

    def draw(v: tf.Tensor, lo: tf.Tensor, hi: tf.Tensor) -> tf.Tensor:
        lo, hi = tf.math.ceil(lo), tf.floor(hi)  # 0 is always in [lo, hi]
        return tf.minimum(hi, lo + tf.floor(v * (hi - lo + 1.0)))

    apply = u[0] < PROBABILITY
    tx = tf.cast(tf.where(apply, draw(u[1], -ux1, w - ux2), 0.0), tf.int32)
    ty = tf.cast(tf.where(apply, draw(u[2], -uy1, h - uy2), 0.0), tf.int32)
    # out[y, x] = in[y - ty, x - tx]: pad by |t| on the side the content moves to, then cut the other side.
    padded = tf.pad(image, [[tf.maximum(ty, 0), tf.maximum(-ty, 0)], [tf.maximum(tx, 0), tf.maximum(-tx, 0)], [0, 0]])
    top, left = tf.maximum(-ty, 0), tf.maximum(-tx, 0)
    image = padded[top : top + shape[0], left : left + shape[1]]
    shift = tf.cast(tf.stack([tx, ty, tx, ty]), boxes.dtype)
    return image, boxes + shift


def random_augment(image: tf.Tensor, boxes: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Flip, crop, translate (each p=0.5, independent sub-seeds of `seed`).

    Args:
      image: (H, W, C) any dtype (uint8 in the pipeline).
      boxes: (N, 4) float32 x1, y1, x2, y2 pixels; N may be 0.
      seed: (2,) int32/int64 stateless seed.

    Returns:
      image (H', W', C) of the same dtype (the crop changes the size) and boxes (N, 4) in its pixels.
    """
    seeds = tf.random.experimental.stateless_split(seed, 3)
    image, boxes = random_horizontal_flip(image, boxes, seeds[0])
    image, boxes = random_crop(image, boxes, seeds[1])
    image, boxes = random_translate(image, boxes, seeds[2])
    return image, boxes
