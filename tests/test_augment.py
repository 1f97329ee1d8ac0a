"""Flip/crop/translate: boxes stay on their objects, all four crop edges move, stateless determinism.
HSV jitter against colorsys; mosaic: hand-computed placement and drop rule, boxes on their colour's pixels."""

from __future__ import annotations

import colorsys

import numpy as np
import tensorflow as tf

from yolo_jax.data import augment

H, W = 90, 120
# Distinct colours on a grey background, with room around the union box on all four sides.
RECTS = [((20, 15, 45, 40), (255, 0, 0)), ((60, 20, 90, 35), (0, 255, 0)), ((35, 50, 70, 75), (0, 0, 255))]
BACKGROUND = 90

_SIG = [tf.TensorSpec([None, None, 3], tf.uint8), tf.TensorSpec([None, 4], tf.float32), tf.TensorSpec([2], tf.int64)]
AUGMENT = tf.function(augment.random_augment, input_signature=_SIG)
CROP = tf.function(augment.random_crop, input_signature=_SIG)
TRANSLATE = tf.function(augment.random_translate, input_signature=_SIG)
FLIP = tf.function(augment.random_horizontal_flip, input_signature=_SIG)


def scene() -> tuple[np.ndarray, np.ndarray]:
    image = np.full((H, W, 3), BACKGROUND, np.uint8)
    for (x1, y1, x2, y2), colour in RECTS:
        image[y1:y2, x1:x2] = colour
    return image, np.asarray([r for r, _ in RECTS], np.float32)


def check_boxes_on_objects(image: np.ndarray, boxes: np.ndarray) -> None:
    h, w = image.shape[:2]
    assert boxes.shape == (len(RECTS), 4)
    assert np.all(boxes[:, :2] >= 0) and np.all(boxes[:, 2] <= w) and np.all(boxes[:, 3] <= h)
    for (x1, y1, x2, y2), (_, colour) in zip(boxes, RECTS, strict=True):
        region = image[int(round(y1)) : int(round(y2)), int(round(x1)) : int(round(x2))]
        assert region.size > 0
        assert np.all(region == colour, axis=-1).mean() > 0.95


def test_boxes_stay_on_objects():
    image, boxes = scene()
    shapes = set()
    for i in range(60):
        out, out_boxes = AUGMENT(image, boxes, tf.constant([7, i], tf.int64))
        out, out_boxes = out.numpy(), out_boxes.numpy()
        assert out.dtype == np.uint8
        check_boxes_on_objects(out, out_boxes)
        np.testing.assert_allclose(out_boxes[:, 2:] - out_boxes[:, :2], boxes[:, 2:] - boxes[:, :2])
        shapes.add(out.shape)
    assert len(shapes) > 10  # crops of many sizes happened


def test_each_op_alone():
    image, boxes = scene()
    flips = crops = shifts = 0
    cut = {'left': 0, 'top': 0, 'right': 0, 'bottom': 0}
    for i in range(40):
        seed = tf.constant([3, i], tf.int64)
        out, b = (x.numpy() for x in FLIP(image, boxes, seed))
        check_boxes_on_objects(out, b)
        flips += not np.array_equal(out, image)

        out, b = (x.numpy() for x in CROP(image, boxes, seed))
        check_boxes_on_objects(out, b)
        x0, y0 = boxes[0, :2] - b[0, :2]
        cut['left'] += x0 > 0
        cut['top'] += y0 > 0
        cut['right'] += x0 + out.shape[1] < W
        cut['bottom'] += y0 + out.shape[0] < H
        crops += out.shape != image.shape
        np.testing.assert_array_equal(out, image[int(y0) : int(y0) + out.shape[0], int(x0) : int(x0) + out.shape[1]])

        out, b = (x.numpy() for x in TRANSLATE(image, boxes, seed))
        assert out.shape == image.shape
        check_boxes_on_objects(out, b)
        tx, ty = (b[0, :2] - boxes[0, :2]).astype(int)
        shifts += (tx, ty) != (0, 0)
        # Uncovered border is 0; the rest is the shifted image.
        if tx > 0:
            assert np.all(out[:, :tx] == 0)
        if ty < 0:
            assert np.all(out[ty:] == 0)
        src = image[max(0, -ty) : H - max(0, ty), max(0, -tx) : W - max(0, tx)]
        np.testing.assert_array_equal(out[max(0, ty) : H - max(0, -ty), max(0, tx) : W - max(0, -tx)], src)
    # p = 0.5 each (loose bounds), and the crop cuts all four edges (upstream only cut left/top).
    assert 8 <= flips <= 32 and 8 <= crops <= 32 and 8 <= shifts <= 32
    assert all(v > 3 for v in cut.values()), cut


def test_zero_boxes_and_determinism():
    image, boxes = scene()
    empty = np.zeros((0, 4), np.float32)
    for i in range(10):
        out, b = AUGMENT(image, empty, tf.constant([1, i], tf.int64))
        assert b.shape == (0, 4)
        assert out.shape == image.shape  # no boxes: crop and translate keep the whole image
    seed = tf.constant([5, 11], tf.int64)
    a1, b1 = AUGMENT(image, boxes, seed)
    a2, b2 = AUGMENT(image, boxes, seed)
    np.testing.assert_array_equal(a1.numpy(), a2.numpy())
    np.testing.assert_array_equal(b1.numpy(), b2.numpy())
    outs = {AUGMENT(image, boxes, tf.constant([5, i], tf.int64))[1].numpy().tobytes() for i in range(10)}
    assert len(outs) > 5


def test_fractional_and_out_of_image_boxes():
    image, _ = scene()
    boxes = np.asarray([[-3.0, 10.5, 30.25, 40.75], [100.5, 60.0, 125.0, 89.5]], np.float32)
    for i in range(30):
        out, b = (x.numpy() for x in AUGMENT(image, boxes, tf.constant([9, i], tf.int64)))
        np.testing.assert_allclose(b[:, 2:] - b[:, :2], boxes[:, 2:] - boxes[:, :2], rtol=1e-6)
        # The clipped union stays inside the image.
        assert b[:, 1].min() >= 0 and b[:, 3].max() <= out.shape[0]


# ---------------------------------------------------------------------------------------------------------------
# HSV jitter


def hsv_oracle(image: np.ndarray, factors) -> np.ndarray:
    """Plain colorsys, pixel by pixel: hue * f wraps, saturation and value * f clip to [0, 1]."""
    out = np.empty(image.shape, np.float64)
    for idx in np.ndindex(image.shape[:2]):
        h, s, v = colorsys.rgb_to_hsv(*(image[idx].astype(np.float64) / 255.0))
        h, s, v = (h * factors[0]) % 1.0, min(max(s * factors[1], 0.0), 1.0), min(max(v * factors[2], 0.0), 1.0)
        out[idx] = np.asarray(colorsys.hsv_to_rgb(h, s, v)) * 255.0
    return out


ADJUST_HSV = tf.function(augment.adjust_hsv)


def test_hsv_matches_colorsys_oracle():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (12, 10, 3)).astype(np.uint8)
    image[0, :4] = [[255, 0, 0], [128, 128, 128], [0, 0, 0], [255, 255, 255]]  # hue 0, greys (no saturation)
    image[1, :2] = [[200, 40, 120], [230, 20, 60]]  # hues near the wrap (0.9, 0.97)
    for factors in [(1.0, 1.0, 1.0), (1.3, 0.6, 1.2), (0.9, 1.5, 0.7), (1.5, 1.0, 1.0), (0.985, 1.7, 1.4)]:
        got = ADJUST_HSV(tf.constant(image / 255.0, tf.float32), tf.constant(factors, tf.float32)).numpy()
        assert got.dtype == np.float32
        np.testing.assert_allclose(got * 255.0, hsv_oracle(image, factors), atol=0.01)
    # The wrap did something: hue 0.9 * 1.5 = 1.35 -> 0.35 (green-ish), not clipped at red.
    wrapped = ADJUST_HSV(tf.constant(image[1:2, :1] / 255.0, tf.float32), tf.constant([1.5, 1.0, 1.0])).numpy()
    assert np.argmax(wrapped[0, 0]) == 1


def test_hsv_factors_draw():
    gains = (0.015, 0.7, 0.4)
    draw = tf.function(lambda seed: augment.hsv_factors(seed, gains))
    f = np.stack([draw(tf.constant([2, i], tf.int64)).numpy() for i in range(300)])
    lo, hi = 1 - np.asarray(gains), 1 + np.asarray(gains)
    assert np.all(f >= lo) and np.all(f <= hi)
    # Spread over the whole range.
    assert np.all(f.min(0) - lo < 0.05 * np.asarray(gains)) and np.all(hi - f.max(0) < 0.05 * np.asarray(gains))
    assert abs(np.corrcoef(f[:, 1], f[:, 2])[0, 1]) < 0.2  # independent channels
    np.testing.assert_array_equal(draw(tf.constant([2, 5], tf.int64)).numpy(), f[5])  # stateless
    np.testing.assert_array_equal(augment.hsv_factors(tf.constant([2, 5], tf.int64), (0.0, 0.0, 0.0)), [1, 1, 1])


# ---------------------------------------------------------------------------------------------------------------
# Mosaic

MOSAIC = tf.function(augment.mosaic, reduce_retracing=True)


def test_mosaic_hand_computed_placement_and_drop_rule():
    """S = 64, four 64 x 64 tiles (no resize), centre (40, 24): every box worked out by hand."""
    rng = np.random.default_rng(1)
    tiles = [rng.integers(0, 256, (64, 64, 3)).astype(np.uint8) for _ in range(4)]
    boxes = [
        # top-left tile at (-24, -40): a -> (-4, -10, 16, 10) cut to (0, 0, 16, 10), 160 of 400 px kept;
        # b -> (0, 0, 2, 10), 2 px wide and 20 of 320 px: dropped; c -> (4, 4, 20, 20) whole.
        [[20, 30, 40, 50], [10, 30, 26, 50], [28, 44, 44, 60]],
        # top-right at (40, -40): d -> (42, 0, 64, 10), 220 of 560; e -> (50, 0, 64, 4), 56 of 880 < 25 %: dropped.
        [[2, 30, 30, 50], [10, 0, 30, 44]],
        # bottom-left at (-24, 24): f -> (0, 24, 10, 44), 50 %; g -> width 0: dropped; h -> (0, 34, 8, 54), exactly
        # 25 %: kept; i -> (0, 54, 6, 64), 60 of 300 = 20 %: dropped.
        [[14, 0, 34, 20], [4, 0, 24, 20], [0, 10, 32, 30], [0, 30, 30, 40]],
        # bottom-right at (40, 24): j -> (60, 54, 64, 64), 10 %: dropped; k -> (40, 24, 60, 44); l -> 3 px tall: kept;
        # m -> (45, 29, 47, 39), whole but 2 px wide (not > 2): dropped.
        [[20, 30, 40, 50], [0, 0, 20, 20], [1, 20, 24, 23], [5, 5, 7, 15]],
    ]
    canvas, out, keep = MOSAIC([tf.constant(t) for t in tiles], [tf.constant(b, tf.float32) for b in boxes],
                               tf.constant([40, 24]), 64)
    canvas = canvas.numpy()
    assert canvas.dtype == np.uint8 and canvas.shape == (64, 64, 3)
    np.testing.assert_array_equal(canvas[:24, :40], tiles[0][40:, 24:])
    np.testing.assert_array_equal(canvas[:24, 40:], tiles[1][40:, :24])
    np.testing.assert_array_equal(canvas[24:, :40], tiles[2][:40, 24:])
    np.testing.assert_array_equal(canvas[24:, 40:], tiles[3][:40, :24])
    np.testing.assert_array_equal(keep.numpy(), [1, 0, 1, 1, 0, 1, 0, 1, 0, 0, 1, 1, 0])
    want = [[0, 0, 16, 10], [4, 4, 20, 20], [42, 0, 64, 10], [0, 24, 10, 44], [0, 34, 8, 54], [40, 24, 60, 44],
            [41, 44, 64, 47]]
    np.testing.assert_allclose(out.numpy()[keep.numpy()], want)


# Corners of the RGB cube: a bilinear blend of one with the black background never comes within COLOUR_TOL of
# another, or of the grey fill.
COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255), (255, 255, 255)]
COLOUR_TOL = 60
MOSAIC_TILES = [  # (h, w), rectangles x1, y1, x2, y2 (separated by background), colour = index into COLOURS
    ((50, 80), [(5, 5, 30, 40), (40, 10, 75, 30)]),
    ((90, 60), [(10, 10, 50, 40), (5, 50, 30, 85)]),
    ((70, 70), [(20, 15, 60, 60), (2, 2, 12, 12)]),
    ((40, 100), [(10, 5, 90, 35)]),
]


def colour_tiles() -> tuple[list[np.ndarray], list[np.ndarray]]:
    images, boxes, c = [], [], 0
    for (h, w), rects in MOSAIC_TILES:
        image = np.zeros((h, w, 3), np.uint8)
        for x1, y1, x2, y2 in rects:
            image[y1:y2, x1:x2] = COLOURS[c]
            c += 1
        images.append(image)
        boxes.append(np.asarray(rects, np.float32))
    return images, boxes


def test_mosaic_boxes_follow_the_pixels():
    """Random centres: each kept box is the bounding box of its colour's pixels (within 1 px after the resize),
    and a colour still plainly visible was not dropped."""
    size = 96
    images, boxes = colour_tiles()
    areas = np.concatenate([(b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) * (size / max(i.shape[:2])) ** 2
                            for i, b in zip(images, boxes, strict=True)])
    examples = [dict(image=tf.constant(i), boxes=tf.constant(b), classes=tf.constant(
        np.arange(len(b), dtype=np.int32) + sum(len(x) for x in boxes[:k])), image_id=tf.constant(k))
        for k, (i, b) in enumerate(zip(images, boxes, strict=True))]
    random_mosaic = tf.function(lambda seed: augment.random_mosaic(examples, seed, size, 1.0))
    kept_counts, fill_seen = set(), 0
    for s in range(25):
        out = random_mosaic(tf.constant([4, s], tf.int64))
        canvas, out_boxes, classes = out['image'].numpy(), out['boxes'].numpy(), out['classes'].numpy()
        assert canvas.shape == (size, size, 3) and out['image_id'].numpy() == 0
        assert not out['difficult'].numpy().any()
        kept_counts.add(len(classes))
        fill_seen += np.all(canvas == 128, axis=-1).any()
        for c, colour in enumerate(COLOURS):
            mask = np.abs(canvas.astype(int) - colour).max(-1) <= COLOUR_TOL
            if c in classes:
                x1, y1, x2, y2 = out_boxes[list(classes).index(c)]
                ys, xs = np.nonzero(mask)
                np.testing.assert_allclose([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], [x1, y1, x2, y2],
                                           atol=1.0)
                inner = mask[int(np.ceil(y1)) + 1 : int(y2) - 1, int(np.ceil(x1)) + 1 : int(x2) - 1]
                assert inner.all()  # the box's inside is its colour
            else:
                # Dropped (or gone): its visible pixels are few, or a sliver <= 2 px (+1 px of blur) wide.
                ys, xs = np.nonzero(mask)
                thin = mask.sum() == 0 or min(np.ptp(xs) + 1, np.ptp(ys) + 1) <= augment.MOSAIC_MIN_SIDE + 1
                perimeter = 2 * (np.ptp(xs) + np.ptp(ys) + 2) if mask.any() else 0
                assert thin or mask.sum() < augment.MOSAIC_MIN_VISIBLE * areas[c] + perimeter, (s, c)
    assert len(kept_counts) >= 3 and fill_seen >= 5  # varied cuts; tiles smaller than their quadrant show the fill


def test_random_mosaic_probability_and_determinism():
    images, boxes = colour_tiles()
    examples = [dict(image=tf.constant(i), boxes=tf.constant(b), classes=tf.zeros(len(b), tf.int32),
                     image_id=tf.constant(k)) for k, (i, b) in enumerate(zip(images, boxes, strict=True))]
    fn = tf.function(lambda seed, p: augment.random_mosaic(examples, seed, 96, p))  # p a tensor: traced once
    shapes = [fn(tf.constant([6, s], tf.int64), tf.constant(0.5))['image'].shape for s in range(40)]
    assert 8 <= shapes.count((96, 96, 3)) <= 32
    for s in range(5):
        out = fn(tf.constant([6, s], tf.int64), tf.constant(0.0))  # off: the first example as it was
        np.testing.assert_array_equal(out['image'], images[0])
        np.testing.assert_array_equal(out['boxes'], boxes[0])
        a, b = (fn(tf.constant([7, s], tf.int64), tf.constant(1.0)) for _ in range(2))
        np.testing.assert_array_equal(a['image'], b['image'])
        np.testing.assert_array_equal(a['boxes'], b['boxes'])


def test_orientation_boxes_follow_the_pixels_in_all_eight_orientations():
    """vertical flip x transpose (with the left-right flip of random_augment: the 8 orientations of a square):
    the image is one of NumPy's four candidates, the boxes lie on their coloured rectangles, p=0 is the identity."""
    image, boxes = scene()
    candidates = {(f, t): (np.flipud(image) if f else image).transpose(*((1, 0, 2) if t else (0, 1, 2)))
                  for f in (False, True) for t in (False, True)}
    orient = tf.function(augment.random_orientation)
    seen = set()
    for i in range(40):
        seed = tf.constant([5, i], tf.int64)
        out, out_boxes = (x.numpy() for x in orient(image, boxes, seed, 0.5, 0.5))
        which = [k for k, c in candidates.items() if c.shape == out.shape and np.array_equal(c, out)]
        assert len(which) == 1
        seen.add(which[0])
        check_boxes_on_objects(out, out_boxes)
        again, again_boxes = (x.numpy() for x in orient(image, boxes, seed, 0.5, 0.5))  # stateless: same draw
        np.testing.assert_array_equal(again, out)
        np.testing.assert_array_equal(again_boxes, out_boxes)
    assert seen == set(candidates)
    same, same_boxes = (x.numpy() for x in orient(image, boxes, tf.constant([5, 0], tf.int64), 0.0, 0.0))
    np.testing.assert_array_equal(same, image)
    np.testing.assert_array_equal(same_boxes, boxes)
    # By hand, both applied to the 90 x 120 image: (20, 15, 45, 40) → y mirrored (20, 50, 45, 75) → (50, 20, 75, 45).
    _, hand = orient(image, boxes[:1], tf.constant([5, 0], tf.int64), 1.0, 1.0)
    np.testing.assert_array_equal(hand.numpy(), [[50, 20, 75, 45]])
