"""Vectorised target encoding vs a plain per-box NumPy loop (the reference's preprocess_true_boxes)."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import tensorflow as tf
from helpers import target_params

from yolo_jax.data import targets
from yolo_jax.defaults import YOLOV3_ANCHORS, YOLOV3_TINY_ANCHORS


def loop_iou(box, anchors):
    """IoU of one xywh box (4,) with anchors (A, 4), both (centre, size); the reference's bbox_iou."""
    area1 = box[2] * box[3]
    area2 = anchors[:, 2] * anchors[:, 3]
    b1 = np.concatenate([box[:2] - box[2:] * 0.5, box[:2] + box[2:] * 0.5])
    b2 = np.concatenate([anchors[:, :2] - anchors[:, 2:] * 0.5, anchors[:, :2] + anchors[:, 2:] * 0.5], axis=-1)
    left_up = np.maximum(b1[:2], b2[:, :2])
    right_down = np.minimum(b1[2:], b2[:, 2:])
    inter = np.maximum(right_down - left_up, 0.0)
    inter_area = inter[:, 0] * inter[:, 1]
    return inter_area / (area1 + area2 - inter_area)


def loop_encode(
    boxes,
    classes,
    *,
    input_size,
    strides,
    anchors,
    num_classes,
    label_smoothing=0.01,
    positive_iou=0.3,
    max_bbox_per_scale=100,
):
    """The reference's loop, box by box, in float64; the cell index is clipped to the grid (upstream crashes).

    boxes (N, 4) x1y1x2y2 pixels, classes (N,). Returns per-scale float32 labels (S, S, A, 5+C) and lists
    (max_bbox_per_scale, 4) xywh pixels.
    """
    num_scales = len(strides)
    num_anchors = len(anchors[0])
    sizes = [input_size // s for s in strides]
    label = [np.zeros((s, s, num_anchors, 5 + num_classes)) for s in sizes]
    lists = [np.zeros((max_bbox_per_scale, 4)) for _ in range(num_scales)]
    count = np.zeros(num_scales, np.int64)
    for coords, cls in zip(np.asarray(boxes, np.float64), classes, strict=True):
        onehot = np.zeros(num_classes)
        onehot[cls] = 1.0
        smooth = onehot * (1 - label_smoothing) + label_smoothing * np.full(num_classes, 1.0 / num_classes)
        xywh = np.concatenate([(coords[2:] + coords[:2]) * 0.5, coords[2:] - coords[:2]])
        scaled = xywh[None, :] / np.asarray(strides, np.float64)[:, None]
        ious = []
        found = False
        for i in range(num_scales):
            anchor_boxes = np.zeros((num_anchors, 4))
            anchor_boxes[:, 0:2] = np.floor(scaled[i, 0:2]) + 0.5
            anchor_boxes[:, 2:4] = np.asarray(anchors[i], np.float64) / strides[i]
            iou = loop_iou(scaled[i], anchor_boxes)
            ious.append(iou)
            mask = iou > positive_iou
            if mask.any():
                col, row = np.clip(np.floor(scaled[i, :2]).astype(np.int64), 0, sizes[i] - 1)
                label[i][row, col, mask, :] = 0
                label[i][row, col, mask, 0:4] = xywh
                label[i][row, col, mask, 4] = 1.0
                label[i][row, col, mask, 5:] = smooth
                lists[i][count[i] % max_bbox_per_scale] = xywh
                count[i] += 1
                found = True
        if not found:
            best = int(np.argmax(np.array(ious).reshape(-1)))
            i, a = best // num_anchors, best % num_anchors
            col, row = np.clip(np.floor(scaled[i, :2]).astype(np.int64), 0, sizes[i] - 1)
            label[i][row, col, a, :] = 0
            label[i][row, col, a, 0:4] = xywh
            label[i][row, col, a, 4] = 1.0
            label[i][row, col, a, 5:] = smooth
            lists[i][count[i] % max_bbox_per_scale] = xywh
            count[i] += 1
    return [x.astype(np.float32) for x in label], [x.astype(np.float32) for x in lists]


CASES = {
    'yolov3_96': dict(input_size=96, strides=(8, 16, 32), anchors=YOLOV3_ANCHORS, num_classes=10),
    'yolov3_416': dict(input_size=416, strides=(8, 16, 32), anchors=YOLOV3_ANCHORS, num_classes=3),
    'tiny_128': dict(input_size=128, strides=(16, 32), anchors=YOLOV3_TINY_ANCHORS, num_classes=7),
}


def random_boxes(rng: np.random.Generator, size: int, num_classes: int):
    """Box sets that mix the regimes the encoder must get right."""
    kind = rng.integers(8)
    n = int(rng.integers(0, 16))
    if kind == 0:  # many boxes around one point (same cells, overwrites)
        c = rng.uniform(0, size, 2)
        wh = rng.uniform(2, size / 2, (n, 2))
        xy = c + rng.uniform(-3, 3, (n, 2))
        b = np.concatenate([xy - wh / 2, xy + wh / 2], -1)
    elif kind == 1:  # exact duplicates with different classes
        b = np.repeat(rng.uniform(0, size / 2, (1, 2)) + np.array([[0, 0]]), n, 0)
        b = np.concatenate([b, b + rng.uniform(1, size / 2, (1, 2))], -1)
    elif kind == 2:  # centres exactly on the right/bottom border or the last pixel
        w = rng.integers(1, size // 2, (n, 1)).astype(np.float64) * 2
        cx = rng.choice([size, size - 1, size - 0.5, 0, 0.5], (n, 2))
        b = np.concatenate([cx - w / 2, cx + w / 2], -1)
    elif kind == 3:  # tiny (down to zero size) boxes
        xy = rng.uniform(0, size, (n, 2))
        wh = rng.choice([0.0, 0.5, 1.0, 2.0, 3.0], (n, 2))
        b = np.concatenate([xy, xy + wh], -1)
    elif kind == 4:  # huge boxes up to the whole image
        x1 = rng.uniform(0, size / 4, (n, 2))
        b = np.concatenate([x1, rng.uniform(size * 0.75, size, (n, 2))], -1)
        if n:
            b[0] = [0, 0, size, size]
    elif kind == 5:  # integer pixel corners, MNIST-like
        x1 = rng.integers(0, size - 14, (n, 2))
        side = rng.choice([14, 22, 28, 42, 56, 84, 112], (n, 1))
        b = np.concatenate([x1, np.minimum(x1 + side, size)], -1).astype(np.float64)
    else:  # anything inside the image
        p = np.sort(rng.uniform(0, size, (n, 2, 2)), axis=1)
        b = np.concatenate([p[:, 0], p[:, 1]], -1)
    b = b.astype(np.float32).reshape(-1, 4)
    return b, rng.integers(0, num_classes, len(b)).astype(np.int32)


def assert_same(got, want):
    labels, lists = got
    want_labels, want_lists = want
    assert len(labels) == len(want_labels)
    for g, w in zip(labels, want_labels, strict=True):
        g = np.asarray(g)
        assert g.dtype == np.float32 and g.shape == w.shape
        assert np.array_equal(g, w), np.argwhere(g != w)[:5]
    for g, w in zip(lists, want_lists, strict=True):
        assert np.array_equal(np.asarray(g), w)


@pytest.mark.parametrize('name', list(CASES))
@pytest.mark.parametrize('max_list', [5, 100])
def test_matches_loop_oracle(name, max_list):
    case = CASES[name]
    params = target_params(max_bbox_per_scale=max_list, **case)
    encode = targets.make_encoder(params, batched=False)
    rng = np.random.default_rng(zlib.crc32(f'{name}{max_list}'.encode()))
    for _ in range(120):
        boxes, classes = random_boxes(rng, case['input_size'], case['num_classes'])
        got = encode(tf.constant(boxes), tf.constant(classes))
        assert_same(got, loop_encode(boxes, classes, max_bbox_per_scale=max_list, **case))


@pytest.mark.parametrize('name', ['yolov3_96', 'tiny_128'])
def test_hand_picked_edge_cases(name):
    case = CASES[name]
    s = case['input_size']
    params = target_params(max_bbox_per_scale=5, **case)
    encode = targets.make_encoder(params, batched=False)
    sets = [
        np.zeros((0, 4)),  # no boxes
        [[s - 20, s - 20, s, s]],  # touches the bottom-right corner
        [[s - 10, s - 10, s + 10, s + 10]],  # centre exactly on the border (upstream IndexError)
        [[s - 2, s - 2, s, s], [0, 0, 1, 1]],  # centre on the last pixel; a 1-pixel box
        [[0, 0, s, s]],  # the whole image
        [[5, 5, 5, 5]],  # zero size: no anchor overlaps, fallback to anchor 0 of scale 0
        [[10, 10, 30, 40]] * 12,  # many identical boxes in one cell, more than the list holds
        [[10 + i, 10, 30 + i, 40] for i in range(12)],  # near-identical boxes, same cells
    ]
    for b in sets:
        boxes = np.asarray(b, np.float32).reshape(-1, 4)
        classes = (np.arange(len(boxes)) % case['num_classes']).astype(np.int32)
        got = encode(tf.constant(boxes), tf.constant(classes))
        assert_same(got, loop_encode(boxes, classes, max_bbox_per_scale=5, **case))
    # The later of two boxes in the same slot owns the whole slot.
    labels, _ = got
    assert np.asarray(labels[0]).shape == (s // case['strides'][0],) * 2 + (3, 5 + case['num_classes'])


def test_batched_with_padding_matches_per_image():
    case = CASES['yolov3_96']
    params = target_params(max_bbox_per_scale=5, **case)
    encode = targets.make_encoder(params, batched=True)
    rng = np.random.default_rng(0)
    sets = [random_boxes(rng, 96, 10) for _ in range(6)]
    sets[2] = (np.zeros((0, 4), np.float32), np.zeros((0,), np.int32))
    n = max(len(b) for b, _ in sets) + 2
    boxes = np.zeros((len(sets), n, 4), np.float32)
    classes = np.full((len(sets), n), -1, np.int32)
    for i, (b, c) in enumerate(sets):
        # Padding at the front and in the middle must be ignored too.
        idx = np.sort(rng.choice(np.arange(1, n), len(b), replace=False)) if len(b) else np.zeros(0, int)
        boxes[i, idx], classes[i, idx] = b, c
        boxes[i, 0] = [1, 2, 50, 60]  # junk coordinates on a padding row
    labels, lists = encode(tf.constant(boxes), tf.constant(classes))
    for i, (b, c) in enumerate(sets):
        want = loop_encode(b, c, max_bbox_per_scale=5, **case)
        assert_same(([x[i] for x in labels], [x[i] for x in lists]), want)


def test_smoothing_and_rows():
    case = CASES['yolov3_96']
    params = target_params(max_bbox_per_scale=4, label_smoothing=0.1, **case)
    labels, lists = targets.encode_targets(tf.constant([[10.0, 20.0, 30.0, 44.0]]), tf.constant([3]), params)
    pos = np.argwhere(np.asarray(labels[0])[..., 4] == 1)
    assert len(pos) >= 1
    row = np.asarray(labels[0])[tuple(pos[0])]
    np.testing.assert_allclose(row[:4], [20, 32, 20, 24])
    np.testing.assert_allclose(row[5:], np.where(np.arange(10) == 3, 0.9 + 0.01, 0.01), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(lists[0])[0], [20, 32, 20, 24])
