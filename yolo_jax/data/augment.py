"""Train-time augmentations as TF ops: the reference's flip, crop, translate (each with p=0.5, in that order), and
YOLOv5's HSV jitter (`random_hsv`) and mosaic (`random_mosaic`), each off unless configured.

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


# Sub-seed streams folded into an example's key, so that HSV jitter, mosaic and orientation draw independently of
# `random_augment` (which splits the key itself) and of each other.
HSV_STREAM = 1
MOSAIC_STREAM = 2
ORIENTATION_STREAM = 3


def random_orientation(image: tf.Tensor, boxes: tf.Tensor, seed: tf.Tensor, vertical_flip: float,
                       transpose: float) -> tuple[tf.Tensor, tf.Tensor]:
    """For pictures without an "up" (microscope slides, aerial and top-down views): with probability
    `vertical_flip` mirrors image (H, W, C) top-bottom (y1' = H - y2, y2' = H - y1), then with probability
    `transpose` swaps its axes (W, H, C: x and y of every box swapped). With random_augment's left-right flip and
    both at 0.5 every one of the 8 rotations and mirror images of a square is equally likely.
    boxes: (N, 4) float32 x1, y1, x2, y2 pixels → the same in the returned image's pixels."""
    u = _uniform(seed, 2)
    height = tf.cast(tf.shape(image)[0], boxes.dtype)
    flip = u[0] < vertical_flip
    image = tf.cond(flip, lambda: tf.reverse(image, axis=[0]), lambda: image)
    boxes = tf.where(flip, tf.stack([boxes[:, 0], height - boxes[:, 3], boxes[:, 2], height - boxes[:, 1]], axis=1),
                     boxes)
    swap = u[1] < transpose
    image = tf.cond(swap, lambda: tf.transpose(image, [1, 0, 2]), lambda: image)
    return image, tf.where(swap, tf.gather(boxes, [1, 0, 3, 2], axis=1), boxes)


def sub_seed(seed: tf.Tensor, stream: int) -> tf.Tensor:
    """A (2,) int64 stateless seed for `stream` (HSV_STREAM, MOSAIC_STREAM) derived from an example's seed."""
    return tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64), tf.constant(stream, tf.int64))


def _to_dtype(image: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
    """float32 pixels 0..255 to `dtype` (rounded and saturated for integer types)."""
    if dtype.is_integer:
        return tf.dtypes.saturate_cast(tf.round(image), dtype)
    return tf.cast(image, dtype)


# ---------------------------------------------------------------------------------------------------------------
# HSV jitter (YOLOv5's augment_hsv): hue, saturation and value multiplied by per-image gains.


def hsv_factors(seed: tf.Tensor, gains: tuple[float, float, float]) -> tf.Tensor:
    """(3,) float32 multiplicative factors 1 + U(-g, g) for hue, saturation, value (gains = YOLOv5's hsv_h/s/v)."""
    g = tf.constant(gains, tf.float32)
    return 1.0 + g * tf.random.stateless_uniform([3], seed=seed, minval=-1.0, maxval=1.0, dtype=tf.float32)


def adjust_hsv(image: tf.Tensor, factors: tf.Tensor) -> tf.Tensor:
    """Multiplies an RGB image's hue (wrapping around the colour circle), saturation and value by `factors`.

    Args:
      image: (H, W, 3) float32 RGB in [0, 1] (the letterboxed network input: jittering S x S pixels is cheaper
        than the decoded image, and YOLOv5 too jitters its final input, padding included).
      factors: (3,) float32 (hue, saturation, value) factors; saturation and value are clipped to [0, 1] after.

    Returns:
      (H, W, 3) float32 RGB in [0, 1]. Boxes are unaffected.
    """
    hsv = tf.image.rgb_to_hsv(image)  # each channel in [0, 1]
    f = tf.cast(factors, image.dtype)
    hue = tf.math.floormod(hsv[..., 0] * f[0], 1.0)
    sat = tf.clip_by_value(hsv[..., 1] * f[1], 0.0, 1.0)
    val = tf.clip_by_value(hsv[..., 2] * f[2], 0.0, 1.0)
    return tf.image.hsv_to_rgb(tf.stack([hue, sat, val], axis=-1))


def random_hsv(image: tf.Tensor, seed: tf.Tensor, gains: tuple[float, float, float]) -> tf.Tensor:
    """`adjust_hsv` with factors drawn by `hsv_factors(seed, gains)`: (H, W, 3) float RGB in [0, 1] in and out."""
    return adjust_hsv(image, hsv_factors(seed, gains))


# ---------------------------------------------------------------------------------------------------------------
# Mosaic (YOLOv5's load_mosaic, without its random_perspective): four images around a random centre.

MOSAIC_FILL = 128.0  # canvas not covered by a tile: the letterbox's grey
MOSAIC_MIN_SIDE = 2.0  # canvas pixels: a box must keep width and height > this (YOLOv5's wh_thr) ...
MOSAIC_MIN_VISIBLE = 0.25  # ... and at least this fraction of its area (in the resized tile) after the cut


def mosaic(
    images: list[tf.Tensor], boxes: list[tf.Tensor], centre: tf.Tensor, size: int
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Places 4 images in the quadrants around `centre` on an S x S canvas (S = `size`, the model input side).

    Each image is first resized bilinearly, aspect kept, so that its long side is S (its letterbox scale:
    objects keep the size they would have without mosaic); then image 0 goes top-left with its bottom-right
    corner at the centre, 1 top-right (bottom-left corner at the centre), 2 bottom-left, 3 bottom-right, each
    cut at the canvas edge; uncovered canvas is MOSAIC_FILL. This is YOLOv5's 2S x 2S mosaic seen through the
    S x S window its random_perspective cuts out at scale 1 without translation. The canvas then goes through
    the usual per-image augmentations and letterbox (an identity for S x S unless the random crop cut it).

    Boxes move with their pixels and are clipped to their tile's visible part. Drop rule (`keep`): a box
    survives if its clipped width and height are > MOSAIC_MIN_SIDE canvas pixels and its clipped area is
    >= MOSAIC_MIN_VISIBLE of its area in the resized tile.

    Args:
      images: 4 (H_k, W_k, C) images of one dtype (uint8 or float 0..255).
      boxes: 4 (N_k, 4) float32 x1, y1, x2, y2 in pixels of their image.
      centre: (2,) int32 (xc, yc) canvas pixels, each in [0, S].
      size: S.

    Returns:
      canvas (S, S, C) of the images' dtype; boxes (N_0 + ... + N_3, 4) float32 x1, y1, x2, y2 canvas pixels
      (tile order, clipped); keep (N_0 + ... + N_3,) bool.
    """
    xc, yc = centre[0], centre[1]
    pieces, all_boxes, keeps = [], [], []
    for k, (image, b) in enumerate(zip(images, boxes, strict=True)):  # 4 tiles, unrolled at graph-build time
        left, top = k in (0, 2), k in (0, 1)
        shape = tf.shape(image)
        h, w = tf.cast(shape[0], tf.float64), tf.cast(shape[1], tf.float64)
        scale = size / tf.maximum(h, w)
        nh, nw = tf.cast(tf.floor(scale * h), tf.int32), tf.cast(tf.floor(scale * w), tf.int32)
        resized = tf.cond(  # exact copy when no resize is needed
            tf.logical_and(shape[0] == nh, shape[1] == nw),
            lambda image=image: tf.cast(image, tf.float32),
            lambda image=image, nh=nh, nw=nw: tf.image.resize(image, tf.stack([nh, nw]), method='bilinear'),
        )
        # The tile's top-left corner (ox, oy) and its quadrant [qx0, qx1) x [qy0, qy1) on the canvas.
        ox, qx0, qx1 = (xc - nw, 0, xc) if left else (xc, xc, size)
        oy, qy0, qy1 = (yc - nh, 0, yc) if top else (yc, yc, size)
        # The visible window [dx0, dx1) x [dy0, dy1): the tile cut at the canvas edge (inner edges sit on the centre).
        dx0, dx1 = tf.maximum(ox, qx0), tf.minimum(ox + nw, qx1)
        dy0, dy1 = tf.maximum(oy, qy0), tf.minimum(oy + nh, qy1)
        crop = resized[dy0 - oy : dy1 - oy, dx0 - ox : dx1 - ox]
        pieces.append(tf.pad(crop, [[dy0 - qy0, qy1 - dy1], [dx0 - qx0, qx1 - dx1], [0, 0]],
                             constant_values=MOSAIC_FILL))
        moved = tf.cast(b, tf.float64) * scale + tf.cast(tf.stack([ox, oy, ox, oy]), tf.float64)
        lo = tf.cast(tf.stack([dx0, dy0]), tf.float64)
        hi = tf.cast(tf.stack([dx1, dy1]), tf.float64)
        clipped = tf.concat([tf.clip_by_value(moved[:, :2], lo, hi), tf.clip_by_value(moved[:, 2:], lo, hi)], axis=1)
        wh = clipped[:, 2:] - clipped[:, :2]
        area = tf.reduce_prod(tf.maximum(moved[:, 2:] - moved[:, :2], 0.0), axis=1)
        keeps.append(tf.reduce_all(wh > MOSAIC_MIN_SIDE, axis=1)
                     & (tf.reduce_prod(wh, axis=1) >= MOSAIC_MIN_VISIBLE * area))
        all_boxes.append(tf.cast(clipped, tf.float32))
    canvas = tf.concat([tf.concat(pieces[:2], axis=1), tf.concat(pieces[2:], axis=1)], axis=0)
    canvas = tf.ensure_shape(canvas, [size, size, None])
    return _to_dtype(canvas, images[0].dtype), tf.concat(all_boxes, axis=0), tf.concat(keeps, axis=0)


def mosaic_centre(seed: tf.Tensor, size: int) -> tf.Tensor:
    """(2,) int32 (xc, yc), each uniform over the integers 0..S (YOLOv5's centre range seen in its S x S window)."""
    u = _uniform(seed, 2)
    return tf.cast(tf.minimum(tf.floor(u * (size + 1.0)), float(size)), tf.int32)


def random_mosaic(examples: list[dict[str, tf.Tensor]], seed: tf.Tensor, size: int,
                  probability: float | tf.Tensor) -> dict[str, tf.Tensor]:
    """With `probability`, replaces examples[0] by the `mosaic` of all 4 examples at a `mosaic_centre`.

    Args:
      examples: 4 decoded examples: 'image' (H, W, C), 'boxes' (N, 4) x1, y1, x2, y2 pixels, 'classes' (N,),
        optional 'difficult' (N,) (False when absent).
      seed: (2,) stateless seed of examples[0].
      size: S, the canvas side (config.model.input_size).
      probability: scalar chance of a mosaic (config.data.mosaic).

    Returns:
      examples[0] with 'image' (the S x S canvas, or its own image), and 'boxes' (M, 4) float32, 'classes' (M,)
      int32, 'difficult' (M,) bool of the boxes kept (see `mosaic`); its other fields (image_id) unchanged.
    """
    def fields(ex: dict[str, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
        boxes = tf.reshape(tf.cast(ex['boxes'], tf.float32), [-1, 4])
        classes = tf.reshape(tf.cast(ex['classes'], tf.int32), [-1])
        if 'difficult' in ex:
            difficult = tf.reshape(tf.cast(ex['difficult'], tf.bool), [-1])
        else:
            difficult = tf.zeros(tf.shape(classes), tf.bool)
        return ex['image'], boxes, classes, difficult

    tiles = [fields(ex) for ex in examples]
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 2)

    def combine() -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
        canvas, boxes, keep = mosaic([t[0] for t in tiles], [t[1] for t in tiles], mosaic_centre(seeds[1], size), size)
        classes = tf.concat([t[2] for t in tiles], axis=0)
        difficult = tf.concat([t[3] for t in tiles], axis=0)
        return canvas, tf.boolean_mask(boxes, keep), tf.boolean_mask(classes, keep), tf.boolean_mask(difficult, keep)

    apply = _uniform(seeds[0], 1)[0] < tf.cast(probability, tf.float64)
    image, boxes, classes, difficult = tf.cond(apply, combine, lambda: tiles[0])
    return {**examples[0], 'image': image, 'boxes': boxes, 'classes': classes, 'difficult': difficult}
