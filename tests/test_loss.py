"""The JAX loss and decode against the NumPy oracle of the reference (tests/reference_numpy.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference_numpy as ref

from yolo_jax.decode import decode
from yolo_jax.defaults import YOLOV3_ANCHORS, YOLOV3_TINY_ANCHORS
from yolo_jax.loss import loss_maps, yolo_loss


def random_problem(rng, batch, input_size, strides, anchors, num_classes, num_boxes, max_bbox=20, p_respond=0.05):
    """Random raw outputs and consistent-looking targets (responsible cells hold boxes near that cell)."""
    outputs, labels, bboxes = [], [], []
    a = len(anchors[0])
    for stride, anc in zip(strides, anchors):
        s = input_size // stride
        outputs.append(rng.normal(0, 1.5, (batch, s, s, a * (5 + num_classes))).astype(np.float32))
        label = np.zeros((batch, s, s, a, 5 + num_classes), np.float32)
        respond = rng.uniform(size=(batch, s, s, a)) < p_respond
        if num_boxes == 0:
            respond[:] = False
        rows, cols = np.meshgrid(np.arange(s), np.arange(s), indexing='ij')
        cx = (cols[None, :, :, None] + rng.uniform(size=(batch, s, s, a))) * stride
        cy = (rows[None, :, :, None] + rng.uniform(size=(batch, s, s, a))) * stride
        wh = np.asarray(anc, np.float32)[None, None, None] * rng.uniform(0.5, 2.0, (batch, s, s, a, 2))
        onehot = np.eye(num_classes)[rng.integers(0, num_classes, (batch, s, s, a))]
        smooth = onehot * 0.99 + 0.01 / num_classes
        full = np.concatenate([cx[..., None], cy[..., None], wh, np.ones((batch, s, s, a, 1)), smooth], -1)
        label[respond] = full[respond]
        labels.append(label)
        bb = np.zeros((batch, max_bbox, 4), np.float32)
        for i in range(batch):
            picked = label[i][respond[i]][:max_bbox, :4]
            bb[i, : len(picked)] = picked
        bboxes.append(bb)
    return outputs, labels, bboxes


CASES = [
    # (name, input_size, strides, anchors, num_classes, num_boxes, batch)
    ('yolov3-3scales', 128, (8, 16, 32), YOLOV3_ANCHORS, 10, 6, 3),
    ('tiny-2scales', 96, (16, 32), YOLOV3_TINY_ANCHORS, 3, 4, 2),
    ('one-class', 64, (8, 16, 32), YOLOV3_ANCHORS, 1, 12, 2),
    ('no-boxes', 64, (8, 16, 32), YOLOV3_ANCHORS, 5, 0, 2),
]


@pytest.mark.parametrize('name, size, strides, anchors, c, n, b', CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize('seed', [0, 1])
def test_loss_matches_numpy_reference(name, size, strides, anchors, c, n, b, seed):
    rng = np.random.default_rng(seed)
    outputs, labels, bboxes = random_problem(rng, b, size, strides, anchors, c, n)
    for thresh in (0.5, 0.3):
        expect = ref.total_loss(outputs, labels, bboxes, anchors, strides, thresh)
        kw = dict(anchors=anchors, strides=strides, ignore_thresh=thresh)
        fn = jax.jit(lambda o, lab, bb, kw=kw: yolo_loss(o, lab, bb, **kw))
        total, metrics = fn(outputs, labels, bboxes)
        got = [metrics['giou'], metrics['conf'], metrics['prob'], total]
        for g, e, what in zip(got, expect, ('giou', 'conf', 'prob', 'total')):
            assert float(g) == pytest.approx(e, rel=1e-5, abs=1e-6), (what, thresh)


def test_decode_matches_numpy_reference():
    rng = np.random.default_rng(3)
    raw = rng.normal(0, 2, (2, 13, 13, 3 * 15)).astype(np.float32)
    got = np.asarray(decode(raw, YOLOV3_ANCHORS[2], 32))
    np.testing.assert_allclose(got, ref.decode(raw, YOLOV3_ANCHORS[2], 32), rtol=1e-5, atol=1e-4)
    assert got.shape == (2, 13, 13, 3, 15)


def test_decode_clamps_exp():
    raw = np.zeros((1, 2, 2, 3 * 6), np.float32)
    raw[..., 2] = 1e4  # t_w of anchor 0: exp would overflow to inf
    out = np.asarray(decode(raw, YOLOV3_ANCHORS[0], 8))
    assert np.isfinite(out).all()


def test_loss_weights_mask_padding():
    rng = np.random.default_rng(5)
    outputs, labels, bboxes = random_problem(rng, 3, 64, (8, 16, 32), YOLOV3_ANCHORS, 4, 5)
    kw = dict(anchors=YOLOV3_ANCHORS, strides=(8, 16, 32), ignore_thresh=0.5)
    _, full = yolo_loss([o[:2] for o in outputs], [x[:2] for x in labels], [x[:2] for x in bboxes], **kw)
    _, masked = yolo_loss(outputs, labels, bboxes, weights=jnp.array([1.0, 1.0, 0.0]), **kw)
    for k in full:
        assert float(masked[k]) == pytest.approx(float(full[k]), rel=1e-6)


@pytest.mark.parametrize('num_boxes', [6, 0])
def test_gradients_finite(num_boxes):
    rng = np.random.default_rng(7)
    outputs, labels, bboxes = random_problem(rng, 2, 64, (8, 16, 32), YOLOV3_ANCHORS, 3, num_boxes)
    outputs[0][0, 0, 0, 2] = 500.0  # a diverging t_w: the clamp must keep everything finite
    kw = dict(anchors=YOLOV3_ANCHORS, strides=(8, 16, 32), ignore_thresh=0.5)
    grads = jax.grad(lambda o: yolo_loss(o, labels, bboxes, **kw)[0])(outputs)
    for g in grads:
        assert np.isfinite(np.asarray(g)).all()
    if num_boxes == 0:  # all-zero targets still train objectness (background everywhere)
        assert any(np.abs(np.asarray(g)).sum() > 0 for g in grads)


def test_loss_maps_sum_to_loss_and_flag_ignored():
    rng = np.random.default_rng(11)
    outputs, labels, bboxes = random_problem(rng, 2, 64, (8, 16, 32), YOLOV3_ANCHORS, 3, 6)
    kw = dict(anchors=YOLOV3_ANCHORS, strides=(8, 16, 32), ignore_thresh=0.5)
    maps = loss_maps(outputs, labels, bboxes, **kw)
    _, metrics = yolo_loss(outputs, labels, bboxes, **kw)
    for comp in ('giou', 'conf', 'prob'):
        summed = sum(float(jnp.sum(m[comp])) for m in maps) / 2
        assert summed == pytest.approx(float(metrics[comp]), rel=1e-5)
    # Ignored cells contribute no conf loss and are never responsible cells.
    for m, lab in zip(maps, labels):
        ignored = np.asarray(m['ignored']) > 0
        assert (np.asarray(m['conf'])[ignored] == 0).all()
        assert (lab[..., 4][ignored] == 0).all()
