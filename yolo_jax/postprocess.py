"""Post-processing: raw YOLO maps → per-image detections in ORIGINAL-image pixels, batched and jit-compilable.

The semantics are the TF2 reference's `postprocess_boxes` + `nms` (see shared/notes/reference.md):

1. decode every scale (yolo_jax/decode.py) and flatten to N candidates per image, scale by scale, in row-major
   (row, column, anchor) order, as the reference's reshape(-1, 5+C) + concat;
2. xywh → xyxy, undo the letterbox (x_orig = (x_input - dw) / scale) or the stretch resize;
3. clip to [0, w-1] x [0, h-1] (x1, y1 from below, x2, y2 from above, as the reference does);
4. drop boxes with x1 > x2 or y1 > y2 or zero area (and NaNs);
5. class = argmax(prob), score = conf * prob[class], keep score > score_threshold;
6. per-class greedy NMS (drop same-class boxes with IoU > iou_threshold) or gaussian soft-NMS
   (multiply same-class scores by exp(-IoU^2 / sigma)), keeping boxes whose (re-weighted) score is > 0.

Deliberate differences from the reference, each the right thing to do:
  * The letterbox is undone with the offsets the letterbox really used, dw = (S - int(scale * w)) // 2
    (yolo_jax/data/letterbox.py), not the reference's float (S - scale * w) / 2, which is off by up to ~1 px.
  * At most `max_detections` boxes per image are returned (the best by score); the reference has no cap.
  * Output is sorted by (re-weighted) score over all classes; the reference lists them class by class.
  * Scores are float32: after ~25 soft-NMS rounds over near-identical boxes a score underflows to 0 and the
    box dies, where the reference's float64 keeps it (with a score below 1e-38).

The JAX path is `postprocess` (raw maps) / `postprocess_decoded` (decoded, flattened candidates) → `Detections`
with a fixed K = max_detections and a valid mask. NMS is one `lax.while_loop` per image (vmapped over the
batch) that picks the best remaining candidate, records it and re-weights/suppresses the others: at most K
iterations of O(N) vector work, no Python loop over boxes and no N x N IoU matrix.

Test-time views (off by default; not in the reference): config.eval.tta's flips (`tta_images` puts flipped copies
of the batch behind it and the network runs once on the whole stack; a left-right flip of the S x S input maps
x to S - x, exactly) and config.eval.tta_sizes (the batch resized to s x s; boxes scale back by S / s, as the
letterbox maps uniformly). `predict_views` runs them all, `view_list` maps each view's decoded candidates back and
`fuse_views` fuses them: pooled before the NMS, which keeps the best-scored box of each object over all views, or
with config.eval.tta_vote_iou > 0 by box voting (each view's own NMS first; each box the NMS over the views keeps
becomes the score-weighted mean of the same-class boxes around it).

`postprocess_boxes_numpy` and `nms_numpy` are the reference's straightforward algorithms in NumPy float64: the
test oracle, also handy for one-off checks.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from yolo_jax import boxes as boxes_lib
from yolo_jax import decode as decode_lib
from yolo_jax.data.letterbox import RESIZE_MODES, resize_params
from yolo_jax.errors import ConfigError

Array = jnp.ndarray

NMS_METHODS = ('nms', 'soft_nms')
TTA_FLIPS = ('hflip', 'vflip', 'hvflip')  # left-right, up-down, both (a 180-degree turn)


def _method(name: str) -> str:
    """'nms' or 'soft_nms' ('soft-nms', the reference's spelling, is accepted too)."""
    name = name.replace('-', '_')
    if name not in NMS_METHODS:
        raise ConfigError(f'config.eval.nms_method: unknown method {name!r}; expected one of {NMS_METHODS}')
    return name


def tta_names(names: Any) -> tuple[str, ...]:
    """config.eval.tta as a tuple of names from TTA_FLIPS (one name alone is accepted too); ConfigError otherwise."""
    names = (names,) if isinstance(names, str) else tuple(names)
    bad = [n for n in names if n not in TTA_FLIPS]
    if bad or len(set(names)) != len(names):
        raise ConfigError(f'config.eval.tta: expected distinct names from {TTA_FLIPS} (e.g. (\'hflip\',)), got '
                          f'{names!r}')
    return names


def tta_sizes(sizes: Any, input_size: int, stride: int) -> tuple[int, ...]:
    """config.eval.tta_sizes as a tuple of distinct ints, each a multiple of the largest stride other than the
    input size (one int alone is accepted too); ConfigError otherwise."""
    sizes = (sizes,) if isinstance(sizes, (int, np.integer)) else tuple(sizes)
    ok = all(isinstance(s, (int, np.integer)) and s > 0 and s % stride == 0 and s != input_size for s in sizes)
    if not ok or len(set(sizes)) != len(sizes):
        raise ConfigError(f'config.eval.tta_sizes: expected distinct multiples of {stride} other than the input size '
                          f'{input_size} (e.g. ({input_size + 2 * stride},)), got {sizes!r}')
    return tuple(int(s) for s in sizes)


def tta_vote_iou(value: Any) -> float:
    """config.eval.tta_vote_iou as a float in [0, 1) (0: off); ConfigError otherwise (NaN too)."""
    value = float(value)
    if not 0.0 <= value < 1.0:
        raise ConfigError(f'config.eval.tta_vote_iou={value} must be in [0, 1) (0: off)')
    return value


@dataclasses.dataclass(frozen=True)
class PostprocessConfig:
    """Everything post-processing needs; frozen and hashable, so it can be a static argument of jit.

    input_size: side S of the square network input (input pixels); strides ascending, anchors (scales, A, 2) in
    input pixels, scale_xy (Darknet's scale_x_y per scale; empty: 1.0 everywhere), as config.model;
    resize_mode: config.data.resize ('letterbox' or 'stretch'); the rest as config.eval.
    """

    input_size: int
    strides: tuple[int, ...]
    anchors: tuple[tuple[tuple[float, float], ...], ...]
    resize_mode: str = 'letterbox'
    score_threshold: float = 0.3
    iou_threshold: float = 0.45
    method: str = 'nms'
    sigma: float = 0.3
    max_detections: int = 100
    scale_xy: tuple[float, ...] = ()
    tta: tuple[str, ...] = ()
    tta_sizes: tuple[int, ...] = ()
    tta_vote_iou: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, 'method', _method(self.method))
        object.__setattr__(self, 'tta', tta_names(self.tta))
        object.__setattr__(self, 'tta_sizes', tta_sizes(self.tta_sizes, self.input_size, max(self.strides)))
        object.__setattr__(self, 'tta_vote_iou', tta_vote_iou(self.tta_vote_iou))
        if self.resize_mode not in RESIZE_MODES:
            raise ConfigError(f'config.data.resize: unknown mode {self.resize_mode!r}; expected one of {RESIZE_MODES}')
        if self.max_detections < 1:
            raise ConfigError(f'config.eval.max_detections must be >= 1, got {self.max_detections}')

    @classmethod
    def from_spec(cls, spec: Any, eval_config: Any, resize_mode: str, **overrides) -> PostprocessConfig:
        """From a DetectionSpec (the only source of geometry), config.eval and config.data.resize; keyword
        overrides win."""
        e = eval_config
        kw = dict(
            input_size=spec.input_size, strides=spec.strides, anchors=spec.anchors, scale_xy=spec.scale_xy,
            resize_mode=resize_mode,
            score_threshold=float(e.score_threshold),
            iou_threshold=float(e.nms_iou_threshold),
            method=str(e.nms_method),
            sigma=float(e.soft_nms_sigma),
            max_detections=int(e.max_detections),
            tta=e.tta,
            tta_sizes=e.tta_sizes,
            tta_vote_iou=e.tta_vote_iou,
        )
        kw.update(overrides)
        return cls(**kw)


class Detections(NamedTuple):
    """Per-image detections, K = max_detections slots, best first; slots with valid = False are zero (class -1).

    boxes: (B, K, 4) float32 x1, y1, x2, y2 in original-image pixels (clipped to the image).
    scores: (B, K) float32 conf * prob[class] (after soft-NMS: the re-weighted score).
    classes: (B, K) int32.
    valid: (B, K) bool.
    """

    boxes: Array
    scores: Array
    classes: Array
    valid: Array


def resize_params_batch(orig_sizes: np.ndarray, input_size: int, mode: str = 'letterbox') -> np.ndarray:
    """(B, 2) original (h, w) → (B, 4) float32 (scale_x, scale_y, dw, dh): input = original * scale + offset.

    Computed on the host in float64 by `data.letterbox.resize_params`, the function the pipeline's inverse uses,
    so the integer letterbox offsets are exactly those of the resize (float32 on device could round
    int(scale * w) differently).
    """
    sizes = np.asarray(orig_sizes).reshape(-1, 2)
    rows = [resize_params(int(h), int(w), int(input_size), mode) for h, w in sizes]
    return np.asarray(rows, np.float64).reshape(-1, 4).astype(np.float32)


def flatten_decoded(decoded: Sequence[Array]) -> Array:
    """Decoded maps, each (B, S, S, A, 5+C) → (B, N, 5+C), N = sum of S*S*A, scales in the given order."""
    return jnp.concatenate([d.reshape(d.shape[0], -1, d.shape[-1]) for d in decoded], axis=1)


def candidates(
    pred: Array, resize: Array, orig_sizes: Array, score_threshold: float
) -> tuple[Array, Array, Array, Array]:
    """Steps 2-5: decoded candidates → boxes in original pixels, scores, classes and a keep mask.

    Args:
      pred: (B, N, 5+C) decoded predictions: x, y, w, h in input pixels, then conf and C class probabilities.
      resize: (B, 4) (scale_x, scale_y, dw, dh) of each image's resize (`resize_params_batch`).
      orig_sizes: (B, 2) original (h, w) in pixels.
      score_threshold: keep score > this.

    Returns:
      boxes (B, N, 4) float32 xyxy original pixels, clipped (zero where x1 > x2 or y1 > y2, as upstream);
      scores (B, N) float32; classes (B, N) int32; mask (B, N) bool: valid, positive-area and above threshold.
    """
    pred = pred.astype(jnp.float32)
    resize = jnp.asarray(resize, jnp.float32)
    sizes = jnp.asarray(orig_sizes, jnp.float32)
    xyxy = boxes_lib.xywh_to_xyxy(pred[..., :4])
    scale = jnp.stack([resize[:, 0], resize[:, 1]] * 2, axis=-1)[:, None, :]  # (B, 1, 4) as sx, sy, sx, sy
    offset = jnp.stack([resize[:, 2], resize[:, 3]] * 2, axis=-1)[:, None, :]
    xyxy = (xyxy - offset) / scale
    h, w = sizes[:, None, 0], sizes[:, None, 1]
    x1, y1 = jnp.maximum(xyxy[..., 0], 0.0), jnp.maximum(xyxy[..., 1], 0.0)
    x2, y2 = jnp.minimum(xyxy[..., 2], w - 1.0), jnp.minimum(xyxy[..., 3], h - 1.0)
    # Upstream zeroes inverted boxes before its area test: (x1 > x2) and (y1 > y2) together would give a
    # positive area. NaN coordinates fail every comparison below and are dropped too.
    inverted = (x1 > x2) | (y1 > y2)
    xyxy = jnp.where(inverted[..., None], 0.0, jnp.stack([x1, y1, x2, y2], axis=-1))
    area = (xyxy[..., 2] - xyxy[..., 0]) * (xyxy[..., 3] - xyxy[..., 1])
    positive = (area > 0) & jnp.isfinite(area)
    probs = pred[..., 5:]
    classes = jnp.argmax(probs, axis=-1).astype(jnp.int32)
    scores = pred[..., 4] * jnp.take_along_axis(probs, classes[..., None], axis=-1)[..., 0]
    return xyxy, scores, classes, positive & (scores > score_threshold)


def _nms_single(
    boxes: Array,
    scores: Array,
    classes: Array,
    mask: Array,
    *,
    iou_threshold: float,
    max_detections: int,
    soft: bool,
    sigma: float,
    vote_iou: float = 0.0,
) -> tuple[Array, Array, Array, Array]:
    """Per-class (soft-)NMS of one image's N candidates → K = max_detections (boxes, scores, classes, valid).

    Each iteration takes the best alive candidate (the reference's argmax: first index among ties), records it
    with its current score, and multiplies the scores of the other same-class candidates by the weight
    (hard: 0 where IoU > threshold, else 1; soft: exp(-IoU^2 / sigma)); candidates whose score is no longer > 0
    die, as upstream's `score_mask`. Classes never interact, so running all classes in one loop by global
    score gives each class exactly the reference's sequence, merged in score order.

    vote_iou > 0 (box voting; not in the reference): the recorded box is the mean of the picked candidate and
    the alive same-class candidates with IoU > vote_iou, weighted by their current scores (its score and class
    stay the picked candidate's).
    """
    k = max_detections
    cur = jnp.where(mask, scores, 0.0)

    def cond(state):
        n, alive, *_ = state
        return (n < k) & jnp.any(alive)

    def body(state):
        n, alive, cur, picked, picked_scores, picked_boxes = state
        i = jnp.argmax(jnp.where(alive, cur, -jnp.inf))
        picked = picked.at[n].set(i)
        picked_scores = picked_scores.at[n].set(cur[i])
        iou = boxes_lib.iou_xyxy(boxes[i], boxes)  # (N,)
        box = boxes[i]
        if vote_iou > 0:
            voters = alive & (classes == classes[i]) & (iou > vote_iou)
            weight = jnp.where(voters, cur, 0.0).at[i].set(cur[i])  # the pick votes even if IoU(i, i) rounds < 1
            box = (weight[:, None] * boxes).sum(axis=0) / weight.sum()
        picked_boxes = picked_boxes.at[n].set(box)
        if soft:
            weight = jnp.exp(-(iou * iou) / sigma)
        else:
            weight = jnp.where(iou > iou_threshold, 0.0, 1.0)
        cur = cur * jnp.where(classes == classes[i], weight, 1.0)
        alive = alive & (cur > 0)
        alive = alive.at[i].set(False)
        return n + 1, alive, cur, picked, picked_scores, picked_boxes

    init = (jnp.int32(0), mask, cur, jnp.zeros((k,), jnp.int32), jnp.zeros((k,), jnp.float32),
            jnp.zeros((k, 4), jnp.float32))
    n, _, _, picked, picked_scores, picked_boxes = jax.lax.while_loop(cond, body, init)
    valid = jnp.arange(k) < n
    out_boxes = jnp.where(valid[:, None], picked_boxes, 0.0)
    out_scores = jnp.where(valid, picked_scores, 0.0)
    out_classes = jnp.where(valid, classes[picked], -1)
    return out_boxes, out_scores, out_classes, valid


def nms(
    boxes: Array,
    scores: Array,
    classes: Array,
    mask: Array,
    *,
    iou_threshold: float = 0.45,
    max_detections: int = 100,
    method: str = 'nms',
    sigma: float = 0.3,
    vote_iou: float = 0.0,
) -> Detections:
    """Batched per-class NMS / soft-NMS (see `_nms_single`).

    Args:
      boxes: (B, N, 4) xyxy (any unit; IoU is scale-free). scores: (B, N). classes: (B, N) int.
      mask: (B, N) bool, the candidates to consider.
      method: 'nms' (greedy, suppress IoU > iou_threshold) or 'soft_nms' (gaussian, sigma).
      vote_iou: > 0: box voting (each kept box is the score-weighted mean of the same-class boxes with IoU >
        vote_iou among the alive ones); 0: off.

    Returns:
      Detections with K = max_detections slots per image, best score first.
    """
    b, n = jnp.shape(scores)[:2]
    k = int(max_detections)
    if n == 0:  # nothing to select from (argmax of an empty array would not trace)
        return Detections(
            jnp.zeros((b, k, 4), jnp.float32), jnp.zeros((b, k), jnp.float32), jnp.full((b, k), -1, jnp.int32),
            jnp.zeros((b, k), bool),
        )
    fn = functools.partial(
        _nms_single,
        iou_threshold=float(iou_threshold),
        max_detections=k,
        soft=_method(method) == 'soft_nms',
        sigma=float(sigma),
        vote_iou=float(vote_iou),
    )
    out = jax.vmap(fn)(
        jnp.asarray(boxes, jnp.float32), jnp.asarray(scores, jnp.float32), jnp.asarray(classes, jnp.int32),
        jnp.asarray(mask, bool),
    )
    return Detections(*out)


def postprocess_decoded(pred: Array, resize: Array, orig_sizes: Array, cfg: PostprocessConfig) -> Detections:
    """(B, N, 5+C) decoded candidates (input pixels) → Detections in original pixels (steps 2-6)."""
    boxes, scores, classes, mask = candidates(pred, resize, orig_sizes, cfg.score_threshold)
    return nms(
        boxes, scores, classes, mask, iou_threshold=cfg.iou_threshold, max_detections=cfg.max_detections,
        method=cfg.method, sigma=cfg.sigma,
    )


def _flip_axes(name: str) -> tuple[int, ...]:
    """The (B, S, S, ...) axes a flip reverses: 1 (rows) up-down, 2 (columns) left-right."""
    return {'hflip': (2,), 'vflip': (1,), 'hvflip': (1, 2)}[name]


def tta_images(images: Array, cfg: PostprocessConfig) -> Array:
    """(B, S, S, 3) network inputs → ((1 + len(cfg.tta)) * B, S, S, 3): the batch, then each flipped copy."""
    return jnp.concatenate([images, *(jnp.flip(images, _flip_axes(name)) for name in cfg.tta)], axis=0)


def unflip_candidates(pred: Array, name: str, input_size: int) -> Array:
    """(B, N, 5+C) decoded candidates of a flipped input (x, y, w, h in input pixels) → those of the input itself
    (x → S - x for a left-right flip, y → S - y for an up-down one; sizes and scores unchanged)."""
    axes = _flip_axes(name)
    x = input_size - pred[..., 0] if 2 in axes else pred[..., 0]
    y = input_size - pred[..., 1] if 1 in axes else pred[..., 1]
    return jnp.concatenate([x[..., None], y[..., None], pred[..., 2:]], axis=-1)


def postprocess(outputs: Sequence[Array], resize: Array, orig_sizes: Array, cfg: PostprocessConfig) -> Detections:
    """Raw model outputs (one (B', S, S, A*(5+C)) map per scale, strides ascending) → Detections (B images).

    B' = B, or (1 + len(cfg.tta)) * B when the network ran on `tta_images`: each view's candidates are mapped back
    and fused per image (`fuse_views`). resize: (B, 4) from `resize_params_batch(orig_sizes, cfg.input_size,
    cfg.resize_mode)` (host side); orig_sizes: (B, 2) original (h, w). Jit-compilable with `cfg` static.
    cfg.tta_sizes are not run here (the network's outputs are given): `predict_views` runs them.
    """
    return fuse_views(view_list(outputs, cfg), resize, orig_sizes, cfg)


def predict_views(apply_fn: Any, images: Array, resize: Array, orig_sizes: Array, cfg: PostprocessConfig) -> Detections:
    """Network + post-processing with every test-time view: `apply_fn(x)` (the model's raw outputs for a
    (B', s, s, 3) batch) runs on the (B, S, S, 3) input batch and on it resized (bilinear) to each of
    cfg.tta_sizes, each with cfg.tta's flipped copies; the views' candidates are mapped back to the input's
    frame and pixels and fused (`fuse_views`). resize, orig_sizes: as `postprocess`. Jit-compilable."""
    views = []
    for size in (cfg.input_size, *cfg.tta_sizes):
        x = images if size == cfg.input_size else jax.image.resize(
            images, (images.shape[0], size, size, images.shape[-1]), 'bilinear')
        views += view_list(apply_fn(tta_images(x, cfg)), cfg, size)
    return fuse_views(views, resize, orig_sizes, cfg)


def fuse_views(views: Sequence[Array], resize: Array, orig_sizes: Array, cfg: PostprocessConfig) -> Detections:
    """Each view's (B, N_v, 5+C) decoded candidates (input pixels, the input's frame) → Detections.

    cfg.tta_vote_iou = 0: the views' candidates are pooled before one NMS, which keeps the best-scored box of each
    object over all views. > 0 (box voting): each view is post-processed alone, then one NMS over all views'
    detections keeps the best-scored one of each object with, as its box, the score-weighted mean of the
    same-class detections with IoU > tta_vote_iou (one per view, mostly): better-placed boxes (BCCD: COCO AP
    +0.015 over pooling with 8 views; experiments/bccd/README.md).
    """
    if cfg.tta_vote_iou > 0 and len(views) > 1:
        each = [postprocess_decoded(v, resize, orig_sizes, cfg) for v in views]
        return nms(jnp.concatenate([d.boxes for d in each], axis=1), jnp.concatenate([d.scores for d in each], axis=1),
                   jnp.concatenate([d.classes for d in each], axis=1), jnp.concatenate([d.valid for d in each], axis=1),
                   iou_threshold=cfg.iou_threshold, max_detections=cfg.max_detections, method=cfg.method,
                   sigma=cfg.sigma, vote_iou=cfg.tta_vote_iou)
    return postprocess_decoded(jnp.concatenate(views, axis=1), resize, orig_sizes, cfg)


def view_list(outputs: Sequence[Array], cfg: PostprocessConfig, size: int | None = None) -> list[Array]:
    """Raw outputs of the network on `tta_images` of a (B, size, size, 3) batch → one (B, N, 5+C) array of decoded
    candidates per view (the batch's own, then cfg.tta's), x, y, w, h mapped back to the batch's frame and scaled
    to cfg.input_size pixels. `size` defaults to cfg.input_size (another: the network ran on a resized batch; the
    letterbox maps uniformly, so x S / size is exact)."""
    decoded = decode_lib.decode_all(outputs, cfg.anchors, cfg.strides, cfg.scale_xy or None)
    views = jnp.split(flatten_decoded(decoded), 1 + len(cfg.tta), axis=0)
    size = cfg.input_size if size is None else size
    views = [views[0], *(unflip_candidates(v, name, size) for v, name in zip(views[1:], cfg.tta, strict=True))]
    if size == cfg.input_size:
        return views
    return [v.at[..., :4].multiply(cfg.input_size / size) for v in views]


def postprocess_config(config: Any, spec: Any, **overrides) -> PostprocessConfig:
    """Post-processing settings of a run: the DetectionSpec `spec`'s geometry, config.eval's thresholds and NMS,
    config.data.resize; keyword overrides win. Raises ConfigError naming a bad config.eval field."""
    return PostprocessConfig.from_spec(spec, config.eval, config.data.resize, **overrides)


def map_postprocess_config(config: Any, spec: Any) -> PostprocessConfig:
    """Post-processing for mAP: as `postprocess_config`, with score_threshold = config.eval.map_score_threshold
    (VOC/COCO practice: 0.001-0.005, not the drawing threshold) and at most config.eval.map_max_detections boxes
    per image after NMS (COCO's maxDets = 100)."""
    return postprocess_config(config, spec, score_threshold=float(config.eval.map_score_threshold),
                              max_detections=int(config.eval.map_max_detections))


# ----------------------------------------------------------------------------------------------------------------
# NumPy oracle: the reference's algorithms, written straightforwardly (float64).


def bboxes_iou_numpy(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """The reference's `bboxes_iou`: xyxy IoU (no +1), floored at float32 eps."""
    boxes1, boxes2 = np.asarray(boxes1, np.float64), np.asarray(boxes2, np.float64)
    area1 = (boxes1[..., 2] - boxes1[..., 0]) * (boxes1[..., 3] - boxes1[..., 1])
    area2 = (boxes2[..., 2] - boxes2[..., 0]) * (boxes2[..., 3] - boxes2[..., 1])
    left_up = np.maximum(boxes1[..., :2], boxes2[..., :2])
    right_down = np.minimum(boxes1[..., 2:], boxes2[..., 2:])
    inter = np.maximum(right_down - left_up, 0.0)
    inter_area = inter[..., 0] * inter[..., 1]
    union = area1 + area2 - inter_area
    return np.maximum(inter_area / union, np.finfo(np.float32).eps)


def postprocess_boxes_numpy(
    pred: np.ndarray, orig_hw: tuple[int, int], input_size: int, score_threshold: float, resize_mode: str = 'letterbox'
) -> np.ndarray:
    """The reference's `postprocess_boxes` for one image.

    Args:
      pred: (N, 5+C) decoded candidates: xywh in input pixels, conf, class probabilities.
      orig_hw: original (h, w).

    Returns:
      (M, 6) float64 rows [x1, y1, x2, y2 (original pixels), score, class], in candidate order.
    """
    pred = np.asarray(pred, np.float64)
    xywh, conf, prob = pred[:, 0:4], pred[:, 4], pred[:, 5:]
    coor = np.concatenate([xywh[:, :2] - xywh[:, 2:] * 0.5, xywh[:, :2] + xywh[:, 2:] * 0.5], axis=-1)
    org_h, org_w = orig_hw
    sx, sy, dw, dh = resize_params(int(org_h), int(org_w), int(input_size), resize_mode)
    coor[:, 0::2] = (coor[:, 0::2] - dw) / sx
    coor[:, 1::2] = (coor[:, 1::2] - dh) / sy
    coor = np.concatenate([np.maximum(coor[:, :2], [0, 0]), np.minimum(coor[:, 2:], [org_w - 1, org_h - 1])], -1)
    invalid = np.logical_or(coor[:, 0] > coor[:, 2], coor[:, 1] > coor[:, 3])
    coor[invalid] = 0
    with np.errstate(invalid='ignore'):
        scale = np.sqrt(np.multiply.reduce(coor[:, 2:4] - coor[:, 0:2], axis=-1))
    scale_mask = np.logical_and(scale > 0, scale < np.inf)
    classes = np.argmax(prob, axis=-1)
    scores = conf * prob[np.arange(len(coor)), classes]
    mask = np.logical_and(scale_mask, scores > score_threshold)
    return np.concatenate([coor[mask], scores[mask, None], classes[mask, None].astype(np.float64)], axis=-1)


def nms_numpy(bboxes: np.ndarray, iou_threshold: float, sigma: float = 0.3, method: str = 'nms') -> np.ndarray:
    """The reference's `nms`: per class, repeatedly take the best box and re-weight the rest.

    Args:
      bboxes: (M, 6) rows [x1, y1, x2, y2, score, class].

    Returns:
      (K, 6) kept rows (scores re-weighted by soft-NMS), class by class in order of first appearance.
    """
    soft = _method(method) == 'soft_nms'
    bboxes = np.asarray(bboxes, np.float64).reshape(-1, 6)
    best = []
    for cls in dict.fromkeys(bboxes[:, 5]):  # deterministic order (upstream iterates a set)
        cls_bboxes = bboxes[bboxes[:, 5] == cls]
        while len(cls_bboxes) > 0:
            max_ind = np.argmax(cls_bboxes[:, 4])
            best_bbox = cls_bboxes[max_ind]
            best.append(best_bbox)
            cls_bboxes = np.concatenate([cls_bboxes[:max_ind], cls_bboxes[max_ind + 1 :]])
            iou = bboxes_iou_numpy(best_bbox[np.newaxis, :4], cls_bboxes[:, :4])
            weight = np.ones((len(iou),), dtype=np.float64)
            if soft:
                weight = np.exp(-(1.0 * iou**2 / sigma))
            else:
                weight[iou > iou_threshold] = 0.0
            cls_bboxes[:, 4] = cls_bboxes[:, 4] * weight
            cls_bboxes = cls_bboxes[cls_bboxes[:, 4] > 0.0]
    return np.asarray(best, np.float64).reshape(-1, 6)
