"""Letterbox/stretch: boxes follow the pixels, and the NumPy inverse undoes the TF transform."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from yolo_jax.data import letterbox

RED = (255, 0, 0)


def rect_image(h: int, w: int, box) -> np.ndarray:
    """Black (h, w, 3) uint8 image with a filled red rectangle over pixels [x1, x2) x [y1, y2)."""
    image = np.zeros((h, w, 3), np.uint8)
    x1, y1, x2, y2 = box
    image[y1:y2, x1:x2] = RED
    return image


def check_box_covers_rect(image: np.ndarray, box: np.ndarray) -> None:
    """The red pixels lie inside the box (1 px tolerance) and the box interior is red."""
    red = (image[..., 0] > 0.75) & (image[..., 1] < 0.25)
    ys, xs = np.nonzero(red)
    x1, y1, x2, y2 = box
    assert xs.min() >= x1 - 1 and xs.max() + 1 <= x2 + 1
    assert ys.min() >= y1 - 1 and ys.max() + 1 <= y2 + 1
    inner = red[int(np.ceil(y1)) + 1 : int(y2) - 1, int(np.ceil(x1)) + 1 : int(x2) - 1]
    assert inner.size > 0 and inner.mean() > 0.99


@pytest.mark.parametrize(
    ('h', 'w', 'size', 'box'),
    [
        (60, 100, 64, (20, 10, 50, 40)),  # wide, downscaled: bands top/bottom
        (100, 60, 64, (5, 30, 55, 90)),  # tall: bands left/right
        (30, 50, 96, (0, 0, 20, 30)),  # upscaled, box at the corner
        (64, 64, 64, (10, 20, 64, 64)),  # already the right size: identity
    ],
)
@pytest.mark.parametrize('mode', ['letterbox', 'stretch'])
def test_boxes_follow_pixels_and_inverse(h, w, size, box, mode):
    image = rect_image(h, w, box)
    boxes = np.asarray([box], np.float32)
    out, out_boxes = letterbox.resize_image_and_boxes(tf.constant(image), tf.constant(boxes), size, mode)
    out, out_boxes = out.numpy(), out_boxes.numpy()
    assert out.shape == (size, size, 3) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    check_box_covers_rect(out, out_boxes[0])
    back = letterbox.unletterbox_boxes(out_boxes, h, w, size, mode)
    np.testing.assert_allclose(back, boxes, atol=1e-3)  # well within the 1 px asked for

    sx, sy, dw, dh = letterbox.resize_params(h, w, size, mode)
    np.testing.assert_allclose(out_boxes, boxes * [sx, sy, sx, sy] + [dw, dh, dw, dh], rtol=1e-6)
    if mode == 'letterbox':
        scale, dw2, dh2 = letterbox.letterbox_params(h, w, size)
        assert (scale, dw2, dh2) == (sx, dw, dh)
        new_w, new_h = int(scale * w), int(scale * h)
        assert max(new_w, new_h) == size
        # Grey 128 outside the pasted image, exactly where the NumPy parameters say.
        pad = np.ones((size, size), bool)
        pad[dh : dh + new_h, dw : dw + new_w] = False
        np.testing.assert_array_equal(out[pad], np.float32(128.0 / 255.0))
        assert not np.any(np.isclose(out[~pad], 128.0 / 255.0))


def test_identity_when_size_matches():
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    out, _ = letterbox.letterbox(tf.constant(image), tf.zeros([0, 4]), 32)
    np.testing.assert_array_equal(out.numpy(), image.astype(np.float32) / np.float32(255.0))


def test_params_reference_values():
    # 416 MNIST canvas at 320: scale 320/416, 320x320, no bands; a 375x500 VOC image at 416.
    assert letterbox.letterbox_params(416, 416, 320) == (320 / 416, 0, 0)
    scale, dw, dh = letterbox.letterbox_params(375, 500, 416)
    assert scale == 416 / 500 and dw == 0 and dh == (416 - int(scale * 375)) // 2
    with pytest.raises(ValueError):
        letterbox.resize_params(1, 1, 1, 'crop')


def test_numpy_forward_and_inverse_box_maps_round_trip():
    from yolo_jax.data.letterbox import letterbox_boxes, unletterbox_boxes

    boxes = np.array([[3.0, 7.0, 50.0, 91.0], [0.0, 0.0, 120.0, 60.0]])
    for mode in ('letterbox', 'stretch'):
        there = letterbox_boxes(boxes, 60, 120, 96, mode)
        np.testing.assert_allclose(unletterbox_boxes(there, 60, 120, 96, mode), boxes, atol=1e-9)
    # 120x60 into 96: scale 0.8, 96x48 pasted at dh = 24.
    np.testing.assert_allclose(letterbox_boxes(boxes[1], 60, 120, 96), [0.0, 24.0, 96.0, 72.0])
