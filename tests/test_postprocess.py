"""Post-processing: the batched, jitted JAX path equals the reference's NumPy algorithm; the letterbox is undone."""

from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np
import pytest
import reference_numpy as ref
import tensorflow as tf

from yolo_jax import postprocess as pp
from yolo_jax.data import letterbox
from yolo_jax.defaults import YOLOV3_TINY_ANCHORS

SIZE = 64


def random_candidates(rng: np.random.Generator, n: int, num_classes: int, clusters: int = 4) -> np.ndarray:
    """(n, 5+C) float32 decoded candidates in input pixels, clustered so that many boxes overlap."""
    centres = rng.uniform(5, SIZE - 5, (clusters, 2))
    xy = centres[rng.integers(0, clusters, n)] + rng.normal(0, 3, (n, 2))
    wh = rng.uniform(4, 30, (n, 2)) * rng.uniform(0.8, 1.2, (n, 1))
    conf = rng.uniform(0, 1, (n, 1))
    prob = rng.uniform(0, 1, (n, num_classes))
    return np.concatenate([xy, wh, conf, prob], -1).astype(np.float32)


def oracle(pred, orig_hw, cfg: pp.PostprocessConfig) -> np.ndarray:
    """Reference postprocess + NMS for one image, rows sorted by score descending (stable)."""
    cand = pp.postprocess_boxes_numpy(pred, orig_hw, cfg.input_size, cfg.score_threshold, cfg.resize_mode)
    kept = pp.nms_numpy(cand, cfg.iou_threshold, cfg.sigma, cfg.method)
    return kept[np.argsort(-kept[:, 4], kind='stable')]


def run_jax(preds, sizes, cfg: pp.PostprocessConfig) -> pp.Detections:
    resize = pp.resize_params_batch(sizes, cfg.input_size, cfg.resize_mode)
    fn = jax.jit(functools.partial(pp.postprocess_decoded, cfg=cfg))
    return jax.device_get(fn(preds, resize, np.asarray(sizes, np.float32)))


def assert_same(det: pp.Detections, b: int, expect: np.ndarray, score_rtol: float = 1e-5) -> None:
    valid = det.valid[b]
    assert valid.sum() == len(expect)
    assert np.all(valid[: len(expect)]) and not np.any(valid[len(expect) :])  # valid slots come first
    np.testing.assert_allclose(det.boxes[b][valid], expect[:, :4], atol=2e-3)
    np.testing.assert_allclose(det.scores[b][valid], expect[:, 4], rtol=score_rtol, atol=1e-7)
    np.testing.assert_array_equal(det.classes[b][valid], expect[:, 5].astype(np.int32))
    assert np.all(det.boxes[b][~valid] == 0) and np.all(det.classes[b][~valid] == -1)


def cfg_for(method: str, k: int, mode: str = 'letterbox', **kw) -> pp.PostprocessConfig:
    return pp.PostprocessConfig(
        input_size=SIZE, strides=(16, 32), anchors=YOLOV3_TINY_ANCHORS, resize_mode=mode, method=method,
        max_detections=k, **kw,
    )


@pytest.mark.parametrize('method', ['nms', 'soft_nms'])
@pytest.mark.parametrize('mode', ['letterbox', 'stretch'])
def test_matches_numpy_reference_batched_and_unbatched(method, mode):
    rng = np.random.default_rng(0 if method == 'nms' else 1)
    sizes = np.array([[48, 80], [100, 37], [64, 64], [30, 200]], np.int32)  # (h, w): wide, tall, square
    preds = np.stack([random_candidates(rng, 120, 3) for _ in sizes])
    cfg = cfg_for(method, k=120, mode=mode)
    det = run_jax(preds, sizes, cfg)
    total = num_candidates = 0
    for b, hw in enumerate(sizes):
        expect = oracle(preds[b], hw, cfg)
        total += len(expect)
        num_candidates += len(pp.postprocess_boxes_numpy(preds[b], hw, SIZE, cfg.score_threshold, mode))
        assert_same(det, b, expect, score_rtol=1e-5 if method == 'nms' else 1e-4)
        single = run_jax(preds[b : b + 1], sizes[b : b + 1], cfg)  # unbatched: the same answer
        assert_same(single, 0, expect, score_rtol=1e-5 if method == 'nms' else 1e-4)
    assert total > 8  # the case is not trivial
    if method == 'nms':
        assert total < 0.8 * num_candidates  # NMS really suppressed boxes


def test_max_detections_keeps_the_best():
    rng = np.random.default_rng(2)
    preds = random_candidates(rng, 200, 2, clusters=40)[None]
    sizes = np.array([[64, 64]])
    full = oracle(preds[0], sizes[0], cfg_for('nms', 200))
    assert len(full) > 10
    det = run_jax(preds, sizes, cfg_for('nms', 10))
    assert_same(det, 0, full[:10])


@pytest.mark.parametrize('method', ['nms', 'soft_nms'])
def test_empty_and_all_suppressed(method):
    rng = np.random.default_rng(3)
    low = random_candidates(rng, 50, 3)
    low[:, 4] = 0.1  # every score <= 0.1 < threshold: nothing survives
    # 20 identical boxes (soft-NMS decays the n-th by exp(-1/sigma)^n: more would underflow float32 to 0 and
    # die earlier than in the float64 oracle)
    same = np.tile(np.array([[30, 30, 20, 20, 0.9, 0.95, 0.1, 0.1]], np.float32), (20, 1))
    two = same.copy()
    two[10:, 5:] = [0.1, 0.95, 0.1]  # the same box, half of them class 1
    low = low[:20]
    sizes = np.array([[64, 64]] * 3)
    cfg = cfg_for(method, 60)
    det = run_jax(np.stack([low, same, two]), sizes, cfg)
    for b, pred in enumerate((low, same, two)):
        assert_same(det, b, oracle(pred, sizes[b], cfg), score_rtol=1e-4)
    assert det.valid[0].sum() == 0
    if method == 'nms':
        assert det.valid[1].sum() == 1 and det.valid[2].sum() == 2  # one per class
    else:  # soft-NMS only re-weights: identical boxes decay by exp(-1/sigma) each round
        assert det.valid[1].sum() == 20
        np.testing.assert_allclose(det.scores[1][:3], 0.9 * 0.95 * np.exp(-1 / 0.3) ** np.arange(3), rtol=1e-5)
    # No candidate at all (N = 0) also works.
    empty = pp.nms(np.zeros((2, 0, 4)), np.zeros((2, 0)), np.zeros((2, 0), np.int32), np.zeros((2, 0), bool))
    assert empty.valid.shape == (2, 100) and not np.any(empty.valid)


def test_raw_maps_end_to_end_against_numpy_decode():
    """Raw maps → Detections equals the independent NumPy decode + flatten + reference post-processing."""
    rng = np.random.default_rng(4)
    num_classes = 3
    cfg = cfg_for('nms', 100, score_threshold=0.2)
    channels = 3 * (5 + num_classes)
    raws = [rng.normal(0, 1.5, (2, SIZE // s, SIZE // s, channels)).astype(np.float32) for s in cfg.strides]
    sizes = np.array([[50, 90], [90, 50]], np.int32)
    resize = pp.resize_params_batch(sizes, SIZE)
    fn = jax.jit(functools.partial(pp.postprocess, cfg=cfg))
    det = jax.device_get(fn(raws, resize, sizes.astype(np.float32)))
    flat = np.concatenate(
        [ref.decode(r, a, s).reshape(2, -1, 5 + num_classes) for r, a, s in zip(raws, cfg.anchors, cfg.strides)], 1
    )
    for b in range(2):
        expect = oracle(flat[b], sizes[b], cfg)
        assert len(expect) > 3
        assert_same(det, b, expect)


def _red_box(image: np.ndarray) -> np.ndarray:
    """xyxy pixel-edge box of the red pixels of an (S, S, 3) image in [0, 1]."""
    red = (image[..., 0] > 0.75) & (image[..., 1] < 0.25)
    ys, xs = np.nonzero(red)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float64)


@pytest.mark.parametrize('mode', ['letterbox', 'stretch'])
@pytest.mark.parametrize(
    ('h', 'w', 'box'),
    [(60, 100, (20, 10, 70, 40)), (120, 50, (5, 30, 45, 110)), (40, 40, (8, 8, 30, 20)), (30, 160, (100, 3, 158, 28))],
)
def test_letterbox_inversion_recovers_drawn_boxes(mode, h, w, box):
    """A rectangle drawn on the original, found in the resized input, comes back to the original pixels."""
    size = 96
    image = np.zeros((h, w, 3), np.uint8)
    x1, y1, x2, y2 = box
    image[y1:y2, x1:x2] = (255, 0, 0)
    resized, _ = letterbox.resize_image_and_boxes(tf.constant(image), tf.zeros((0, 4)), size, mode)
    found = _red_box(resized.numpy())
    xywh = np.concatenate([(found[:2] + found[2:]) / 2, found[2:] - found[:2]])
    pred = np.concatenate([xywh, [1.0, 1.0, 0.0]]).astype(np.float32)[None, None]  # conf 1, class 0
    cfg = pp.PostprocessConfig(input_size=size, strides=(32,), anchors=(((10.0, 10.0),),), resize_mode=mode,
                               max_detections=5)
    det = run_jax(pred, np.array([[h, w]]), cfg)
    assert det.valid[0].sum() == 1
    # The box comes back in pixel edges [x1, x2); post-processing clips x2 to w - 1 (the reference's rule).
    expect = np.minimum(np.array(box, np.float64), [w - 1, h - 1, w - 1, h - 1])
    np.testing.assert_allclose(det.boxes[0, 0], expect, atol=1.0)


def test_clipping_and_invalid_boxes_follow_the_reference():
    """Boxes partly outside are clipped; boxes fully outside (inverted after clipping) and NaNs are dropped."""
    cfg = cfg_for('nms', 10)
    preds = np.array(
        [
            [-5, -5, 20, 20, 0.9, 0.9, 0, 0],  # partly outside top-left: clipped at 0
            [70, 30, 20, 10, 0.9, 0, 0.9, 0],  # partly outside on the right: x2 clipped at w - 1
            [200, 30, 10, 10, 0.9, 0, 0, 0.9],  # entirely outside: inverted after clipping, dropped
            [30, 30, np.nan, 10, 0.9, 0.9, 0, 0],  # NaN: dropped
            [30, 30, 0, 10, 0.9, 0.9, 0, 0],  # zero width: dropped
        ],
        np.float32,
    )[None]
    det = run_jax(preds, np.array([[64, 64]]), cfg)
    assert det.valid[0].sum() == 2
    expect = oracle(preds[0], (64, 64), cfg)
    assert_same(det, 0, expect)
    np.testing.assert_allclose(det.boxes[0, :2], [[0, 0, 5, 5], [60, 25, 63, 35]], atol=1e-5)


def test_config_validation():
    with pytest.raises(ValueError, match='nms_method'):
        cfg_for('greedy', 10)
    assert cfg_for('soft-nms', 10).method == 'soft_nms'
    with pytest.raises(ValueError, match='resize'):
        cfg_for('nms', 10, mode='crop')
    for bad in (('turn',), ('hflip', 'hflip')):
        with pytest.raises(ValueError, match=r'config\.eval\.tta: expected distinct names'):
            cfg_for('nms', 10, tta=bad)
    assert cfg_for('nms', 10, tta='hflip').tta == ('hflip',) and cfg_for('nms', 10, tta=['vflip']).tta == ('vflip',)


def test_flips_pool_each_views_candidates_mapped_back_before_the_nms():
    """config.eval.tta: the flipped copies of the batch come after it, and postprocess of the stacked raw maps
    equals the NumPy oracle on the union of the original's decoded candidates and each copy's, mapped back by
    hand (left-right: x → S - x; up-down: y → S - y)."""
    rng = np.random.default_rng(7)
    names = ('hflip', 'vflip', 'hvflip')
    cfg = cfg_for('nms', 500, score_threshold=0.3, tta=names)
    images = rng.uniform(0, 1, (2, SIZE, SIZE, 3)).astype(np.float32)
    stacked = np.asarray(pp.tta_images(images, cfg))
    assert stacked.shape == (8, SIZE, SIZE, 3)
    np.testing.assert_array_equal(stacked[:2], images)
    np.testing.assert_array_equal(stacked[2:4], images[:, :, ::-1])
    np.testing.assert_array_equal(stacked[4:6], images[:, ::-1])
    np.testing.assert_array_equal(stacked[6:8], images[:, ::-1, ::-1])

    num_classes = 3
    channels = 3 * (5 + num_classes)
    raws = [rng.normal(0, 1.5, (8, SIZE // s, SIZE // s, channels)).astype(np.float32) for s in cfg.strides]
    sizes = np.array([[50, 90], [64, 64]], np.int32)
    det = jax.device_get(jax.jit(functools.partial(pp.postprocess, cfg=cfg))(
        raws, pp.resize_params_batch(sizes, SIZE), sizes.astype(np.float32)))
    flat = np.concatenate(
        [ref.decode(r, a, s).reshape(8, -1, 5 + num_classes) for r, a, s in zip(raws, cfg.anchors, cfg.strides)], 1
    )
    for b in range(2):
        views = [flat[b]]
        for k, name in enumerate(names, start=1):
            view = flat[2 * k + b].copy()
            if name != 'vflip':
                view[:, 0] = SIZE - view[:, 0]
            if name != 'hflip':
                view[:, 1] = SIZE - view[:, 1]
            views.append(view)
        expect = oracle(np.concatenate(views), sizes[b], cfg)
        single = oracle(flat[b], sizes[b], cfg)
        assert len(expect) > len(single) > 3  # the other views add boxes that survive the NMS
        assert_same(det, b, expect)


def vote_oracle(rows: np.ndarray, iou_threshold: float, vote_iou: float, method: str = 'nms',
                sigma: float = 0.3) -> np.ndarray:
    """The reference's per-class NMS (`nms_numpy`), where each kept row's box becomes the mean of the boxes still
    in play with IoU > vote_iou with it (itself included), weighted by their current scores; sorted by score."""
    out = []
    for cls in dict.fromkeys(rows[:, 5]):
        left = rows[rows[:, 5] == cls].copy()
        while len(left):
            m = int(np.argmax(left[:, 4]))
            best = left[m].copy()
            voters = pp.bboxes_iou_numpy(best[None, :4], left[:, :4]) > vote_iou
            voters[m] = True
            box = (left[voters, 4:5] * left[voters, :4]).sum(0) / left[voters, 4].sum()
            out.append([*box, best[4], cls])
            left = np.delete(left, m, axis=0)
            iou = pp.bboxes_iou_numpy(best[None, :4], left[:, :4])
            weight = np.exp(-(iou**2) / sigma) if method == 'soft_nms' else np.where(iou > iou_threshold, 0.0, 1.0)
            left[:, 4] *= weight
            left = left[left[:, 4] > 0]
    out = np.asarray(out, np.float64).reshape(-1, 6)
    return out[np.argsort(-out[:, 4], kind='stable')]


@pytest.mark.parametrize('method', ['nms', 'soft_nms'])
def test_box_voting_equals_a_plain_oracle(method):
    """nms(vote_iou=0.6): the picks and scores of plain NMS, each box the score-weighted mean of its voters."""
    rng = np.random.default_rng(11)
    cfg = cfg_for(method, 500, score_threshold=0.2)
    pred = random_candidates(rng, 300, 3)
    rows = pp.postprocess_boxes_numpy(pred, (64, 64), SIZE, cfg.score_threshold)
    boxes, scores, classes = rows[None, :, :4], rows[None, :, 4], rows[None, :, 5].astype(np.int32)
    mask = np.ones_like(scores, bool)
    det = jax.device_get(jax.jit(functools.partial(pp.nms, method=method, max_detections=500, vote_iou=0.6))(
        boxes, scores, classes, mask))
    expect = vote_oracle(rows, 0.45, 0.6, method)
    plain = oracle(pred, (64, 64), cfg)
    np.testing.assert_allclose(expect[:, 4], plain[:, 4])  # voting moves boxes only
    assert np.abs(expect[:, :4] - plain[:, :4]).max() > 0.5  # and it does move them
    assert_same(det, 0, expect)


def test_fuse_views_votes_over_each_views_own_detections():
    """config.eval.tta_vote_iou > 0: each view is post-processed alone (the reference's steps), then one NMS with
    box voting over the views' detections; 0: the views' candidates pooled before one NMS."""
    rng = np.random.default_rng(5)
    cfg = cfg_for('nms', 400, score_threshold=0.25, tta_vote_iou=0.55)
    views = [random_candidates(rng, 150, 2)[None] for _ in range(3)]
    sizes = np.array([[50, 90]], np.int32)
    resize = pp.resize_params_batch(sizes, SIZE)
    det = jax.device_get(jax.jit(functools.partial(pp.fuse_views, cfg=cfg))(views, resize, sizes.astype(np.float32)))
    each = np.concatenate([oracle(v[0], sizes[0], cfg) for v in views])
    assert_same(det, 0, vote_oracle(each, cfg.iou_threshold, cfg.tta_vote_iou))
    pooled = dataclasses.replace(cfg, tta_vote_iou=0.0)
    det = jax.device_get(jax.jit(functools.partial(pp.fuse_views, cfg=pooled))(views, resize,
                                                                                sizes.astype(np.float32)))
    assert_same(det, 0, oracle(np.concatenate([v[0] for v in views]), sizes[0], pooled))


def fake_network(x, num_classes: int = 2, strides=(16, 32)):
    """Raw maps (B, s/stride, s/stride, 3 * (5+C)) per stride from a (B, s, s, 3) batch: average-pooled pixels
    through a fixed linear map, plus a fixed bias per grid cell and a term of the image's left-right tilt (so a
    flipped view's maps are not the mirror image of the original's, which would tie their scores)."""
    w = np.random.default_rng(3).normal(0, 2, (3, 3 * (5 + num_classes))).astype(np.float32)
    tilt = (x * np.linspace(-4, 4, x.shape[2], dtype=np.float32)[:, None]).mean(axis=(1, 2, 3))[:, None, None, None]
    out = []
    for stride in strides:
        b, g = x.shape[0], x.shape[1] // stride
        pooled = x.reshape(b, g, stride, g, stride, 3).mean(axis=(2, 4))
        bias = np.random.default_rng(g).normal(0, 1, (g, g, w.shape[1])).astype(np.float32)
        out.append(pooled @ w + bias + tilt - 0.5)
    return out


def test_predict_views_runs_each_size_and_flip_and_maps_the_boxes_back():
    """config.eval.tta_sizes + tta: the network also runs on the batch resized to each size (with its flips);
    each view's decoded boxes are mapped back (flips) and scaled by S / s before the NMS, against the oracle
    fed by hand."""
    rng = np.random.default_rng(9)
    cfg = cfg_for('nms', 500, score_threshold=0.2, tta=('hflip',), tta_sizes=(96, 32))
    images = rng.uniform(0, 1, (2, SIZE, SIZE, 3)).astype(np.float32)
    sizes = np.array([[50, 90], [64, 64]], np.int32)
    resize = pp.resize_params_batch(sizes, SIZE)
    det = jax.device_get(jax.jit(lambda im, r, o: pp.predict_views(fake_network, im, r, o, cfg))(
        images, resize, sizes.astype(np.float32)))
    for b in range(2):
        views = []
        for s in (SIZE, 96, 32):
            x = images[b:b + 1]
            x = x if s == SIZE else np.asarray(jax.image.resize(x, (1, s, s, 3), 'bilinear'))
            for flip in (False, True):
                raws = fake_network(x[:, :, ::-1] if flip else x)
                flat = np.concatenate([ref.decode(r, a, st).reshape(-1, 7) for r, a, st in
                                       zip(raws, cfg.anchors, cfg.strides)])
                if flip:
                    flat[:, 0] = s - flat[:, 0]
                flat[:, :4] *= SIZE / s
                views.append(flat)
        expect = oracle(np.concatenate(views), sizes[b], cfg)
        assert len(expect) > len(oracle(views[0], sizes[b], cfg)) > 3
        assert_same(det, b, expect)


def test_tta_sizes_and_vote_validation():
    for bad in ((100,), (64,), (96, 96), (0,), ('96',)):
        with pytest.raises(ValueError, match=r'config\.eval\.tta_sizes: expected distinct multiples of 32 other '
                                             r'than the input size 64 \(e\.g\. \(128,\)\), got'):
            cfg_for('nms', 10, tta_sizes=bad)
    assert cfg_for('nms', 10, tta_sizes=96).tta_sizes == (96,)
    assert cfg_for('nms', 10, tta_sizes=[128, 32]).tta_sizes == (128, 32)
    for bad in (-0.1, 1.0, float('nan')):
        with pytest.raises(ValueError, match=r'config\.eval\.tta_vote_iou=.* must be in \[0, 1\) \(0: off\)'):
            cfg_for('nms', 10, tta_vote_iou=bad)
