"""The YOLOv3 loss of the TF2 reference (`compute_loss`), as a pure JAX function.

Per scale, with `respond` = 1 on cells/anchors responsible for a ground-truth box (from the targets):
  giou = respond * (2 - w_gt*h_gt / input_size^2) * (1 - GIoU(pred_xywh, label_xywh))      (pixels)
         (the box term; `box_loss` 'diou' or 'ciou' puts DIoU or CIoU, YOLOv4's, in GIoU's place; the
         component keeps the name 'giou')
  bgd  = (1 - respond) * (max IoU of the predicted box with this scale's ground-truth list < ignore_thresh)
  conf = (respond - sigmoid(t_conf))^2 * (respond + bgd) * BCE_logits(respond, t_conf)
  prob = respond * sum_c BCE_logits(smoothed_onehot_c, t_prob_c)
Each term is summed over the grid, anchors (and classes), averaged over the batch, and summed over
scales; total = giou + conf + prob. As upstream, gradients flow through the focal factor too.
Predictions are decoded with Darknet's `scale_xy` per scale (1.0, the reference's decoding, for YOLOv3).
Class weights (config.loss.class_weights, class_weights.py; None = the reference's loss, untouched): a positive
cell's giou, its conf term and its prob term are multiplied by w_cell = sum_c p_c w_c / sum_c p_c, p the cell's
class vector (the smoothed one-hot: w_cell = (1 - d) w_class + d mean(w) for label smoothing d); negatives
(background conf) stay unweighted.
`loss_maps` exposes the per-cell terms for debugging; nothing here loops over boxes.
"""

from collections.abc import Sequence

import jax.numpy as jnp
import ml_collections

from yolo_jax import class_weights as class_weights_lib
from yolo_jax.boxes import ciou_xywh, diou_xywh, giou_xywh, iou_xywh
from yolo_jax.decode import decode, split_raw
from yolo_jax.errors import ConfigError
from yolo_jax.spec import DetectionSpec

Array = jnp.ndarray
COMPONENTS = ('giou', 'conf', 'prob')
# config.loss.box_loss → the overlap measure m of the box term (1 - m).
BOX_LOSSES = {'giou': giou_xywh, 'diou': diou_xywh, 'ciou': ciou_xywh}


def _box_measure(box_loss: str):
    if box_loss not in BOX_LOSSES:
        raise ConfigError(f'config.loss.box_loss: unknown {box_loss!r}; expected one of {sorted(BOX_LOSSES)}')
    return BOX_LOSSES[box_loss]


def check_loss_config(loss_config: ml_collections.ConfigDict, num_classes: int) -> None:
    """Every config.loss field a run reads, checked before any data is built: ConfigError naming the field."""
    _box_measure(loss_config.box_loss)
    class_weights_lib.parse(loss_config.class_weights, num_classes)


def bce_with_logits(labels: Array, logits: Array) -> Array:
    """tf.nn.sigmoid_cross_entropy_with_logits: max(x, 0) - x*z + log(1 + exp(-|x|))."""
    return jnp.maximum(logits, 0.0) - logits * labels + jnp.log1p(jnp.exp(-jnp.abs(logits)))


def scale_loss_maps(
    raw: Array,
    label: Array,
    bboxes: Array,
    *,
    anchors: Sequence[Sequence[float]],
    stride: int,
    ignore_thresh: float,
    scale_xy: float = 1.0,
    box_loss: str = 'giou',
    class_weights: Sequence[float] | None = None,
) -> dict[str, Array]:
    """Per-cell loss terms of one scale.

    Args:
      raw: (B, S, S, A*(5+C)) raw network output.
      label: (B, S, S, A, 5+C) targets: [x, y, w, h] in input pixels, responsibility (0/1), smoothed one-hot.
      bboxes: (B, M, 4) this scale's ground-truth boxes, xywh in input pixels, zero-padded.
      anchors: (A, 2) anchor sizes in input pixels. stride: input pixels per cell.
      ignore_thresh: background predictions overlapping a ground truth by at least this IoU are not penalised.
      scale_xy: Darknet's scale_x_y for decoding the predicted centres (decode.decode).
      box_loss: 'giou' (the reference), 'diou' or 'ciou': the box term is 1 - that measure.
      class_weights: (C,) per-class weights of the positive cells' terms (module doc); None = unweighted.

    Returns:
      {'giou', 'conf', 'prob': (B, S, S, A) loss per cell and anchor, 'ignored': (B, S, S, A) 1 where a
       background prediction is ignored by the threshold}.
    """
    raw = split_raw(raw.astype(jnp.float32), len(anchors))
    measure = _box_measure(box_loss)
    pred = decode(raw, anchors, stride, scale_xy)
    input_size = stride * raw.shape[1]
    pred_xywh, pred_conf = pred[..., :4], pred[..., 4]
    label_xywh, respond, label_prob = label[..., :4], label[..., 4], label[..., 5:]

    box_scale = 2.0 - label_xywh[..., 2] * label_xywh[..., 3] / float(input_size) ** 2
    giou = respond * box_scale * (1.0 - measure(pred_xywh, label_xywh))

    iou = iou_xywh(pred_xywh[..., None, :], bboxes[:, None, None, None, :, :])  # (B, S, S, A, M)
    below = (jnp.max(iou, axis=-1) < ignore_thresh).astype(jnp.float32)
    background = (1.0 - respond) * below
    focal = (respond - pred_conf) ** 2
    conf = focal * (respond + background) * bce_with_logits(respond, raw[..., 4])

    prob = respond * jnp.sum(bce_with_logits(label_prob, raw[..., 5:]), axis=-1)
    if class_weights is not None:
        # The cell's class distribution dotted with the weights; negatives' class vectors are zero (weight 0, and
        # their terms carry the factor respond anyway).
        cw = jnp.asarray(class_weights, jnp.float32)
        w = jnp.sum(label_prob * cw, axis=-1) / jnp.maximum(jnp.sum(label_prob, axis=-1), 1e-12)
        giou, prob = giou * w, prob * w
        conf = focal * (respond * w + background) * bce_with_logits(respond, raw[..., 4])
    return {'giou': giou, 'conf': conf, 'prob': prob, 'ignored': (1.0 - respond) * (1.0 - below)}


def loss_maps(
    outputs: Sequence[Array],
    labels: Sequence[Array],
    bboxes: Sequence[Array],
    *,
    anchors: Sequence[Sequence[Sequence[float]]],
    strides: Sequence[int],
    ignore_thresh: float,
    scale_xy: Sequence[float] | None = None,
    box_loss: str = 'giou',
    class_weights: Sequence[float] | None = None,
) -> list[dict[str, Array]]:
    """`scale_loss_maps` for every scale (strides ascending); scale_xy one per scale (None: 1.0 everywhere)."""
    scale_xy = (1.0,) * len(strides) if scale_xy is None else scale_xy
    return [
        scale_loss_maps(o, lab, bb, anchors=a, stride=s, ignore_thresh=ignore_thresh, scale_xy=k, box_loss=box_loss,
                        class_weights=class_weights)
        for o, lab, bb, a, s, k in zip(outputs, labels, bboxes, anchors, strides, scale_xy, strict=True)
    ]


def per_example_losses(maps: Sequence[dict[str, Array]]) -> dict[str, Array]:
    """Sums per-cell maps over cells, anchors and scales → {'giou', 'conf', 'prob', 'total': (B,)}."""
    out = {k: sum(jnp.sum(m[k], axis=(1, 2, 3)) for m in maps) for k in COMPONENTS}
    out['total'] = out['giou'] + out['conf'] + out['prob']
    return out


def yolo_loss(
    outputs: Sequence[Array],
    labels: Sequence[Array],
    bboxes: Sequence[Array],
    *,
    anchors: Sequence[Sequence[Sequence[float]]],
    strides: Sequence[int],
    ignore_thresh: float,
    weights: Array | None = None,
    scale_xy: Sequence[float] | None = None,
    box_loss: str = 'giou',
    class_weights: Sequence[float] | None = None,
) -> tuple[Array, dict[str, Array]]:
    """The reference loss: (total, {'giou', 'conf', 'prob', 'total'}) scalars, averaged over the batch.

    `weights` (B,) gives a weighted mean over examples instead (e.g. 0 for padding in a last eval batch).
    `scale_xy` (per scale), `box_loss` and `class_weights` as in `scale_loss_maps`; the defaults are the
    reference's loss.
    """
    maps = loss_maps(
        outputs, labels, bboxes, anchors=anchors, strides=strides, ignore_thresh=ignore_thresh, scale_xy=scale_xy,
        box_loss=box_loss, class_weights=class_weights,
    )
    per_example = per_example_losses(maps)
    if weights is None:
        metrics = {k: jnp.mean(v) for k, v in per_example.items()}
    else:
        denom = jnp.maximum(jnp.sum(weights), 1e-12)
        metrics = {k: jnp.sum(v * weights) / denom for k, v in per_example.items()}
    return metrics['total'], metrics


def loss_kwargs(spec: DetectionSpec, loss_config: ml_collections.ConfigDict,
                class_weights: Sequence[float] | None = None) -> dict:
    """The keyword arguments of `yolo_loss` / `loss_maps`: geometry from the spec, the rest from config.loss, the
    class weights resolved from config.loss.class_weights by the caller (class_weights.resolve; None = none)."""
    kw = {'anchors': spec.anchors, 'strides': spec.strides, 'scale_xy': spec.scale_xy,
          'ignore_thresh': float(loss_config.ignore_thresh), 'box_loss': str(loss_config.box_loss)}
    if class_weights is not None:
        kw['class_weights'] = tuple(float(w) for w in class_weights)
    return kw
