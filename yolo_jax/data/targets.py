"""Vectorised YOLOv3 target encoding (the reference's `preprocess_true_boxes`) in TF ops.

Everything here is TF and runs inside the tf.data input pipeline; nothing in the jitted model touches it.

Semantics, per ground-truth box, in input order (what the reference's per-box loop does):
  * xywh = (centre, size) in input pixels; for scale l it is divided by the stride to grid units.
  * The scale's A anchors (pixels / stride = grid units) are centred at floor(xy / stride) + 0.5, the centre of
    the cell holding the box centre, and compared with the box by IoU in grid units (a centre-aware IoU, not
    a width/height-only IoU).
  * Anchors with IoU > positive_iou, at any scale, are positive: label[l][row, col, a] = [x, y, w, h (pixels),
    1, smoothed one-hot], with (row, col) = floor(centre / stride) CLIPPED to [0, S-1] (upstream indexes one
    past the grid and crashes when a centre lies exactly on the right/bottom border).
  * A box positive somewhere at scale l is appended once to that scale's ground-truth list at index
    count_l % max_bbox_per_scale (count_l = boxes appended to scale l so far).
  * A box with no positive anchor anywhere takes the best of all L*A anchors (argmax over the scale-major
    flattened IoUs, first maximum on ties) and is written to that one scale's label and list.
  * Later boxes win: a later box claiming the same (cell, anchor) replaces the whole slot, and when the list
    index wraps modulo max_bbox_per_scale the later box replaces the earlier one.

Darknet's (YOLOv4) assignment, when `iou_thresh` < 1 (Darknet's own default 1 means off): anchors are compared
with the box by width/height only (both centred at one point: IoU = min(w)min(h) / union); the best anchor of all
L*A is always positive, and so is every anchor whose IoU > iou_thresh (yolov4.cfg: 0.213); positive_iou and the
fallback are not used. Anchors of equal size on several scales (YOLOv4-tiny's 81x82) tie, and every tied best
is positive: Darknet's best anchor index appears in both scales' masks there. Cells and slots as above.

Duplicate slots are resolved explicitly (a segment max of the box index per slot, and "the last M list entries"
for the lists) because `tf.tensor_scatter_nd_update`/`tf.scatter_nd` do not define which duplicate wins.
Assignment is computed in float64 like the NumPy reference, so the IoU > threshold decisions agree with it
bit for bit; outputs are float32.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from yolo_jax.spec import DetectionSpec


@dataclasses.dataclass(frozen=True)
class TargetParams:
    """Static parameters of the encoder: the detector's geometry (`spec`: input size, strides, anchors in input
    pixels, classes; checked there) and config.data's assignment settings."""

    spec: DetectionSpec
    label_smoothing: float = 0.01
    positive_iou: float = 0.3
    max_bbox_per_scale: int = 100
    iou_thresh: float = 1.0  # < 1: Darknet's width/height-IoU multi-anchor assignment (module docstring)

    @classmethod
    def from_spec(cls, spec: DetectionSpec, data_config) -> TargetParams:
        """`spec` with config.data.{label_smoothing,positive_iou,max_bbox_per_scale,iou_thresh}."""
        d = data_config
        return cls(spec, label_smoothing=float(d.label_smoothing), positive_iou=float(d.positive_iou),
                   max_bbox_per_scale=int(d.max_bbox_per_scale), iou_thresh=float(d.iou_thresh))

    @property
    def input_size(self) -> int:
        return self.spec.input_size

    @property
    def strides(self) -> tuple[int, ...]:
        return self.spec.strides

    @property
    def anchors(self) -> tuple[tuple[tuple[float, float], ...], ...]:
        return self.spec.anchors

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    @property
    def num_anchors(self) -> int:
        """Anchors per scale (A)."""
        return self.spec.num_anchors

    @property
    def grid_sizes(self) -> tuple[int, ...]:
        """Per-scale grid side S_l = input_size // stride_l."""
        return self.spec.grid_sizes


def _iou_xywh(b1: tf.Tensor, b2: tf.Tensor) -> tf.Tensor:
    """IoU of (centre, size) boxes, broadcasting over leading dims; same operation order as the reference."""
    area1 = b1[..., 2] * b1[..., 3]
    area2 = b2[..., 2] * b2[..., 3]
    c1 = tf.concat([b1[..., :2] - b1[..., 2:] * 0.5, b1[..., :2] + b1[..., 2:] * 0.5], axis=-1)
    c2 = tf.concat([b2[..., :2] - b2[..., 2:] * 0.5, b2[..., :2] + b2[..., 2:] * 0.5], axis=-1)
    left_up = tf.maximum(c1[..., :2], c2[..., :2])
    right_down = tf.minimum(c1[..., 2:], c2[..., 2:])
    inter = tf.maximum(right_down - left_up, 0.0)
    inter_area = inter[..., 0] * inter[..., 1]
    union = area1 + area2 - inter_area
    return inter_area / union  # union >= anchor area > 0


def _wh_iou(box_wh: tf.Tensor, anchor_wh: tf.Tensor) -> tf.Tensor:
    """Width/height-only IoU (boxes centred on one point), broadcasting; Darknet's anchor matching."""
    inter = tf.minimum(box_wh[..., 0], anchor_wh[..., 0]) * tf.minimum(box_wh[..., 1], anchor_wh[..., 1])
    union = box_wh[..., 0] * box_wh[..., 1] + anchor_wh[..., 0] * anchor_wh[..., 1] - inter
    return inter / union  # union >= anchor area > 0


def _darknet_assignment(xywh: tf.Tensor, valid: tf.Tensor, params: TargetParams) -> tf.Tensor:
    """(B, N, L, A) bool: every best anchor by width/height IoU (ties included) and every anchor with IoU >
    params.iou_thresh, for valid boxes. xywh (B, N, 4) in pixels."""
    anchors = tf.constant(np.asarray(params.anchors, np.float64))  # (L, A, 2) pixels
    iou = _wh_iou(xywh[:, :, None, None, 2:], anchors)  # (B, N, L, A)
    best = iou >= tf.reduce_max(iou, axis=[2, 3], keepdims=True)
    return (best | (iou > params.iou_thresh)) & valid[:, :, None, None]


def encode_targets_batch(
    boxes: tf.Tensor, classes: tf.Tensor, params: TargetParams
) -> tuple[tuple[tf.Tensor, ...], tuple[tf.Tensor, ...]]:
    """Encodes a batch of padded box sets; vectorised over images and boxes (a Python loop over scales only).

    Args:
      boxes: (B, N, 4) float, x1, y1, x2, y2 in input pixels. Rows whose class is < 0 are padding.
      classes: (B, N) int, class ids in [0, C), or -1 for padding rows (padding may sit anywhere).
      params: the encoder's static parameters.

    Returns:
      labels: per scale (strides ascending) float32 (B, S_l, S_l, A, 5 + C) holding [x, y, w, h (pixels),
        objectness 1, smoothed one-hot] at responsible (row, col, anchor) slots and 0 elsewhere.
      bboxes: per scale float32 (B, max_bbox_per_scale, 4), the xywh (pixels) of the boxes assigned to that scale.
    """
    num_scales, num_anchors, num_classes = len(params.strides), params.num_anchors, params.num_classes
    max_list = params.max_bbox_per_scale
    boxes = tf.cast(boxes, tf.float64)
    classes = tf.cast(classes, tf.int32)
    batch, n = tf.shape(boxes)[0], tf.shape(boxes)[1]
    valid = classes >= 0  # (B, N)

    xywh = tf.concat([(boxes[..., 2:] + boxes[..., :2]) * 0.5, boxes[..., 2:] - boxes[..., :2]], axis=-1)
    delta = params.label_smoothing
    onehot = tf.one_hot(tf.maximum(classes, 0), num_classes, dtype=tf.float64)
    smooth = onehot * (1.0 - delta) + delta * (1.0 / num_classes)
    rows = tf.cast(tf.concat([xywh, tf.ones_like(xywh[..., :1]), smooth], axis=-1), tf.float32)  # (B, N, 5+C)
    rows = tf.reshape(rows, [-1, 5 + num_classes])
    xywh32 = tf.reshape(tf.cast(xywh, tf.float32), [-1, 4])

    # IoU of each box with each anchor of each scale, in that scale's grid units: (B, N, L, A).
    ious, cells = [], []
    for stride, anchors in zip(params.strides, params.anchors, strict=True):
        scaled = xywh / float(stride)  # (B, N, 4) grid units
        cell = tf.floor(scaled[..., :2])  # (B, N, 2): col, row
        anchor_wh = tf.constant(np.asarray(anchors, np.float64) / stride)  # (A, 2) grid units
        anchor_xy = tf.broadcast_to(cell[:, :, None, :] + 0.5, tf.stack([batch, n, num_anchors, 2]))
        anchor_sz = tf.broadcast_to(anchor_wh, tf.stack([batch, n, num_anchors, 2]))
        ious.append(_iou_xywh(scaled[:, :, None, :], tf.concat([anchor_xy, anchor_sz], axis=-1)))
        cells.append(cell)
    iou = tf.stack(ious, axis=2)  # (B, N, L, A)

    positive = (iou > params.positive_iou) & valid[:, :, None, None]
    has_positive = tf.reduce_any(positive, axis=[2, 3])  # (B, N)
    # Fallback: first maximum of the scale-major flattened IoUs (tf.argmax leaves ties unspecified).
    flat = tf.reshape(iou, [batch, n, num_scales * num_anchors])
    is_max = flat >= tf.reduce_max(flat, axis=-1, keepdims=True)
    best = tf.reduce_min(tf.where(is_max, tf.range(num_scales * num_anchors), num_scales * num_anchors), axis=-1)
    fallback = tf.one_hot(best, num_scales * num_anchors, on_value=True, off_value=False, dtype=tf.bool)
    fallback = tf.reshape(fallback, [batch, n, num_scales, num_anchors])
    fallback &= (valid & ~has_positive)[:, :, None, None]
    assigned = positive | fallback  # (B, N, L, A)
    if params.iou_thresh < 1.0:
        assigned = _darknet_assignment(xywh, valid, params)

    # Global box index (b * N + i) orders boxes within an image and keeps images apart.
    box_index = tf.reshape(tf.range(batch * n), [batch, n])
    labels, bboxes = [], []
    for level, size in enumerate(params.grid_sizes):
        cell = tf.clip_by_value(tf.cast(cells[level], tf.int32), 0, size - 1)
        slot = (tf.range(batch)[:, None] * size + cell[..., 1]) * size + cell[..., 0]  # (B, N) b, row, col
        slot = slot[:, :, None] * num_anchors + tf.range(num_anchors)  # (B, N, A)
        mask = assigned[:, :, level]
        slot_ids = tf.boolean_mask(slot, mask)
        owners = tf.boolean_mask(tf.broadcast_to(box_index[:, :, None], tf.shape(slot)), mask)
        num_slots = batch * size * size * num_anchors
        winner = tf.math.unsorted_segment_max(owners, slot_ids, num_slots)  # the latest box per slot
        keep = tf.gather(winner, slot_ids) == owners  # now one entry per slot
        label = tf.scatter_nd(
            tf.boolean_mask(slot_ids, keep)[:, None],
            tf.gather(rows, tf.boolean_mask(owners, keep)),
            tf.stack([num_slots, 5 + num_classes]),
        )  # indices are unique, so the scatter's sum is a plain write
        labels.append(tf.reshape(label, tf.stack([batch, size, size, num_anchors, 5 + num_classes])))

        # Ground-truth list: k-th box at this scale goes to k % M; only the last M written survive.
        hit = tf.reduce_any(mask, axis=-1)  # (B, N)
        count = tf.cumsum(tf.cast(hit, tf.int32), axis=1, exclusive=True)
        total = tf.reduce_sum(tf.cast(hit, tf.int32), axis=1, keepdims=True)
        survives = hit & (count >= total - max_list)
        list_index = tf.range(batch)[:, None] * max_list + count % max_list
        bbox = tf.scatter_nd(
            tf.boolean_mask(list_index, survives)[:, None],
            tf.gather(xywh32, tf.boolean_mask(box_index, survives)),
            tf.stack([batch * max_list, 4]),
        )
        bboxes.append(tf.reshape(bbox, tf.stack([batch, max_list, 4])))
    return tuple(labels), tuple(bboxes)


def encode_targets(
    boxes: tf.Tensor, classes: tf.Tensor, params: TargetParams
) -> tuple[tuple[tf.Tensor, ...], tuple[tf.Tensor, ...]]:
    """One image: boxes (N, 4) xyxy input pixels, classes (N,) int.

    Returns per-scale labels (S_l, S_l, A, 5 + C) and ground-truth lists (max_bbox_per_scale, 4) xywh pixels,
    as `encode_targets_batch` does for a batch of one.
    """
    labels, bboxes = encode_targets_batch(tf.reshape(boxes, [1, -1, 4]), tf.reshape(classes, [1, -1]), params)
    return tuple(x[0] for x in labels), tuple(x[0] for x in bboxes)


def make_encoder(params: TargetParams, *, batched: bool = True):
    """A `tf.function` wrapping the encoder with a shape-polymorphic input signature (traced once)."""
    if batched:
        sig = [tf.TensorSpec([None, None, 4], tf.float32), tf.TensorSpec([None, None], tf.int32)]
        return tf.function(lambda b, c: encode_targets_batch(b, c, params), input_signature=sig, autograph=False)
    sig = [tf.TensorSpec([None, 4], tf.float32), tf.TensorSpec([None], tf.int32)]
    return tf.function(lambda b, c: encode_targets(b, c, params), input_signature=sig, autograph=False)


def grid_shapes(params: TargetParams) -> Sequence[tuple[int, int, int, int]]:
    """Per-scale label shapes (S_l, S_l, A, 5 + C), strides ascending."""
    return [(s, s, params.num_anchors, 5 + params.num_classes) for s in params.grid_sizes]
