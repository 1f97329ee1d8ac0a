"""IoU / GIoU on hand-computed cases, broadcasting, zero-area safety, and conversions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from yolo_jax import boxes


def xyxy_to_xywh(b):
    """Corners → centre/size (the test's own conversion)."""
    b = jnp.asarray(b)
    return jnp.concatenate([(b[..., :2] + b[..., 2:]) * 0.5, b[..., 2:] - b[..., :2]], axis=-1)


def test_xywh_to_xyxy_hand_computed():
    xywh = np.array([[3.0, 6.0, 4.0, 8.0], [0.0, 0.0, 0.0, 0.0]], np.float32)
    np.testing.assert_allclose(boxes.xywh_to_xyxy(xywh), [[1.0, 2.0, 5.0, 10.0], [0.0, 0.0, 0.0, 0.0]])


@pytest.mark.parametrize(
    'a, b, iou, giou',
    [
        ([0, 0, 2, 2], [0, 0, 2, 2], 1.0, 1.0),  # identical
        ([0, 0, 4, 4], [1, 1, 3, 3], 4 / 16, 4 / 16),  # nested: enclosing box = union
        ([0, 0, 2, 2], [1, 1, 3, 3], 1 / 7, 1 / 7 - (9 - 7) / 9),  # partial overlap
        ([0, 0, 1, 1], [2, 0, 3, 1], 0.0, 0.0 - (3 - 2) / 3),  # disjoint
        ([0, 0, 1, 1], [1, 0, 2, 1], 0.0, 0.0),  # touching edge: enclosing = union
        ([0, 0, 0, 0], [0, 0, 0, 0], 0.0, 0.0),  # two zero-area boxes: defined as 0, not NaN
        ([1, 1, 1, 1], [0, 0, 2, 2], 0.0, 0.0),  # zero-area point inside a box
    ],
)
def test_hand_computed(a, b, iou, giou):
    a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    assert float(boxes.iou_xyxy(a, b)) == pytest.approx(iou, abs=1e-6)
    assert float(boxes.giou_xyxy(a, b)) == pytest.approx(giou, abs=1e-6)
    # Symmetric, and the xywh versions agree.
    assert float(boxes.giou_xyxy(b, a)) == pytest.approx(giou, abs=1e-6)
    assert float(boxes.giou_xywh(xyxy_to_xywh(a), xyxy_to_xywh(b))) == pytest.approx(giou, abs=1e-6)


def test_broadcasting_shapes():
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.uniform(0, 10, (2, 5, 1, 4)), jnp.float32)
    b = jnp.asarray(rng.uniform(0, 10, (1, 1, 7, 4)), jnp.float32)
    assert boxes.iou_xywh(a, b).shape == (2, 5, 7)
    assert boxes.giou_xywh(a, b).shape == (2, 5, 7)
    # Broadcast result equals the element-by-element computation.
    full = boxes.iou_xywh(a, b)
    assert float(full[1, 3, 4]) == pytest.approx(float(boxes.iou_xywh(a[1, 3, 0], b[0, 0, 4])), rel=1e-6)


def test_zero_area_gradients_finite():
    def f(x):
        z = jnp.zeros((3, 4))
        return jnp.sum(boxes.giou_xywh(x, z)) + jnp.sum(boxes.iou_xywh(x, z))

    for x in (jnp.zeros((3, 4)), jnp.array([[1.0, 1.0, 0.0, 2.0], [0.0, 0.0, 0.0, 0.0], [5.0, 5.0, 1.0, 1.0]])):
        g = jax.grad(f)(x)
        assert np.isfinite(np.asarray(g)).all()
        assert np.isfinite(float(f(x)))


def test_giou_bounds_random():
    rng = np.random.default_rng(1)
    a = rng.uniform(0, 50, (1000, 4)).astype(np.float32)
    b = rng.uniform(0, 50, (1000, 4)).astype(np.float32)
    g = np.asarray(boxes.giou_xywh(a, b))
    i = np.asarray(boxes.iou_xywh(a, b))
    assert (g <= i + 1e-6).all() and (g >= -1 - 1e-6).all() and (i >= 0).all() and (i <= 1 + 1e-6).all()
