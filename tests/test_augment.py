"""Flip/crop/translate: boxes stay on their objects, all four crop edges move, stateless determinism."""

from __future__ import annotations

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
