"""Anchors for a data set by k-means over its boxes' (w, h), with the distance 1 - IoU (YOLOv2's recipe).

    python -m yolo_jax.anchors --config=configs/mnist.py:quick [--split=train] [--output=FILE]

reads every box of the split through the data layer (difficult / crowd boxes left out, as training does; no
augmentation), maps it to input pixels by config.data.resize (letterbox or stretch) to config.model.input_size,
fits k = (scales x anchors per scale of config.model.anchors) anchors, and prints them, the mean best IoU of the
boxes with them and with config.model.anchors, and the `--config.model.anchors=...` flag that trains with them.
--output=FILE also writes all of it as JSON. Anchors are rounded to 3 significant digits (more where two would
become equal); the IoUs printed are those of the rounded anchors.

The k-means (`kmeans_wh`): k-means++ seeding (probability ~ distance^2), Lloyd iterations with each anchor moved
to the per-coordinate median of its boxes (or the mean, `update='mean'`), until no box changes anchor; an anchor
left without boxes moves to the box its anchors serve worst. `fit_anchors` keeps the best of several seeded
restarts (by mean best IoU) and splits the anchors, sorted by area, over the scales (strides ascending).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import time
from collections.abc import Sequence

import numpy as np
from absl import flags, logging

from yolo_jax import errors
from yolo_jax.errors import DataError, FlagError

Anchors = tuple[tuple[tuple[float, float], ...], ...]  # per scale (strides ascending): (w, h) in input pixels
UPDATES = ('median', 'mean')
DIGITS = 3  # significant digits of the printed / written anchors (more where two would become equal)


def wh_iou(wh_a: np.ndarray, wh_b: np.ndarray) -> np.ndarray:
    """IoU of boxes with aligned centres: wh_a (N, 2), wh_b (K, 2) widths and heights (one unit) → (N, K).

    Sizes must be > 0 (then the union is > 0)."""
    a, b = np.asarray(wh_a, np.float64), np.asarray(wh_b, np.float64)
    inter = np.minimum(a[:, None, 0], b[None, :, 0]) * np.minimum(a[:, None, 1], b[None, :, 1])
    union = (a[:, 0] * a[:, 1])[:, None] + (b[:, 0] * b[:, 1])[None, :] - inter
    return inter / union


def iou_distance(wh_a: np.ndarray, wh_b: np.ndarray) -> np.ndarray:
    """The k-means distance 1 - IoU (aligned centres), (N, 2) x (K, 2) → (N, K) in [0, 1)."""
    return 1.0 - wh_iou(wh_a, wh_b)


def mean_best_iou(wh: np.ndarray, anchors: np.ndarray) -> float:
    """Mean over boxes wh (N, 2) of the IoU with their best anchor among anchors (K, 2) (aligned centres)."""
    return float(wh_iou(wh, np.asarray(anchors, np.float64).reshape(-1, 2)).max(axis=1).mean())


def _kmeans_pp(wh: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeds (k, 2): the first box uniformly, each next one with probability ~ (1 - best IoU)^2."""
    centres = [wh[rng.integers(len(wh))]]
    dist = iou_distance(wh, centres[0][None])[:, 0]
    for _ in range(1, k):
        weights = dist**2
        # Sums to > 0 while fewer seeds than distinct sizes are chosen (fit_anchors runs this only for k < those).
        centres.append(wh[rng.choice(len(wh), p=weights / weights.sum())])
        dist = np.minimum(dist, iou_distance(wh, centres[-1][None])[:, 0])
    return np.stack(centres)


def kmeans_wh(
    wh: np.ndarray, centres: np.ndarray, *, update: str = 'median', max_iter: int = 300
) -> tuple[np.ndarray, int]:
    """Lloyd's k-means with the distance 1 - IoU from `centres` (K, 2); wh (N, 2) sizes > 0 (one unit).

    Each iteration assigns every box to its highest-IoU centre, then moves each centre to the per-coordinate
    median (or mean) of its boxes. A centre without boxes moves to the box worst served by the other centres
    (lowest best IoU), one empty centre after the other, so no anchor is wasted. Stops when no assignment changes
    (or after `max_iter`). Returns (centres (K, 2) float64, in the order given; iterations run).
    """
    if update not in UPDATES:
        raise ValueError(f'update: {update!r} is not one of {UPDATES}')
    reduce = np.median if update == 'median' else np.mean
    wh, centres = np.asarray(wh, np.float64), np.array(centres, np.float64)
    assign = None
    for iteration in range(1, max_iter + 1):
        iou = wh_iou(wh, centres)
        new_assign = iou.argmax(axis=1)
        counts = np.bincount(new_assign, minlength=len(centres))
        if assign is not None and np.array_equal(new_assign, assign) and counts.all():
            return centres, iteration - 1
        assign = new_assign
        for j in np.flatnonzero(counts):
            centres[j] = reduce(wh[assign == j], axis=0)
        empty = np.flatnonzero(counts == 0)
        if len(empty):
            # One at a time onto the box worst served so far (farthest-point), so that several empty centres do
            # not all land in the same badly served cluster; a chosen size is then served with IoU 1.
            served = wh_iou(wh, centres[counts > 0]).max(axis=1)
            for j in empty:
                centres[j] = wh[np.argmin(served)]
                served = np.maximum(served, wh_iou(wh, centres[j][None])[:, 0])
            assign = None  # the reseeded centres need another assignment before convergence can be declared
    return centres, max_iter


@dataclasses.dataclass(frozen=True)
class AnchorFit:
    """anchors: per scale (strides ascending), (w, h) sorted by area over all scales, in the boxes' unit.
    mean_iou / current_mean_iou: mean over boxes of the IoU with the best anchor, new / current anchors."""

    anchors: Anchors
    mean_iou: float
    current_mean_iou: float
    num_boxes: int
    distinct_sizes: int  # < the anchor count: every size is an anchor and the spare anchors repeat sizes
    iterations: int  # Lloyd iterations of the kept restart (0: no k-means needed)


def split_per_scale(anchors: np.ndarray, per_scale: int) -> Anchors:
    """(K, 2) → sorted by area (ties: by width), then `per_scale` per scale: the smallest for the first scale."""
    anchors = np.asarray(anchors, np.float64).reshape(-1, 2)
    order = np.lexsort((anchors[:, 0], anchors[:, 0] * anchors[:, 1]))
    rows = [(float(w), float(h)) for w, h in anchors[order]]
    return tuple(tuple(rows[i:i + per_scale]) for i in range(0, len(rows), per_scale))


def round_significant(x: np.ndarray, digits: int) -> np.ndarray:
    """x (> 0) rounded to `digits` significant digits: 373.4 → 373, 2.1538 → 2.15 (for digits=3)."""
    x = np.asarray(x, np.float64)
    # Through the decimal text: the nearest float to the rounded decimal, so it prints back as that decimal.
    return np.array([float(f'{v:.{digits}g}') for v in x.ravel()]).reshape(x.shape)


def _round_distinct(centres: np.ndarray, digits: int) -> np.ndarray:
    """centres (K, 2) rounded to `digits` significant digits, or to the fewest more that keep distinct centres
    distinct."""
    distinct = len(np.unique(centres, axis=0))
    for d in range(digits, 17):
        rounded = round_significant(centres, d)
        if len(np.unique(rounded, axis=0)) == distinct:
            return rounded
    return centres


def fit_anchors(
    wh: np.ndarray, current: Sequence[Sequence[Sequence[float]]], *, seed: int = 0, restarts: int = 5,
    update: str = 'median', digits: int | None = None,
) -> AnchorFit:
    """k-means anchors for boxes wh (N, 2) (w, h > 0, e.g. input pixels), shaped like `current` (the config's
    anchors: per scale, (w, h) pairs): k = scales x anchors per scale.

    `restarts` k-means++ seeded runs from np.random.default_rng(seed); the one with the highest mean best IoU is
    kept (the first on ties). With k or fewer distinct sizes (the MNIST set has 7 square ones) every size is an
    anchor (mean IoU 1) and the spare anchors repeat the sizes with the most boxes. `digits`: round the anchors to
    this many significant digits, or more where two would become equal; the IoUs are then those of the rounded
    anchors. Raises DataError for no boxes.
    """
    wh = np.asarray(wh, np.float64).reshape(-1, 2)
    current_arr = np.asarray(current, np.float64)
    if current_arr.ndim != 3 or current_arr.shape[-1] != 2 or not current_arr.size:
        raise ValueError(f'current anchors: expected per scale (w, h) pairs, got shape {current_arr.shape}')
    per_scale, k = current_arr.shape[1], current_arr.shape[0] * current_arr.shape[1]
    if restarts < 1:
        raise ValueError(f'restarts must be >= 1, got {restarts}')
    if not len(wh):
        raise DataError('no boxes to fit anchors to')
    if not (wh > 0).all():
        raise ValueError('box sizes must be > 0')
    sizes, counts = np.unique(wh, axis=0, return_counts=True)
    if len(sizes) <= k:  # k-means would only rediscover them
        spare = np.resize(np.argsort(-counts, kind='stable'), k - len(sizes))  # cycles when k > 2 x sizes
        centres, iterations = np.concatenate([sizes, sizes[spare]]), 0
    else:
        rng = np.random.default_rng(seed)
        best = None
        for _ in range(restarts):
            centres, iterations = kmeans_wh(wh, _kmeans_pp(wh, k, rng), update=update)
            score = mean_best_iou(wh, centres if digits is None else _round_distinct(centres, digits))
            if best is None or score > best[0]:
                best = (score, centres, iterations)
        _, centres, iterations = best
    if digits is not None:
        centres = _round_distinct(centres, digits)
    return AnchorFit(split_per_scale(centres, per_scale), mean_best_iou(wh, centres), mean_best_iou(wh, current_arr),
                     len(wh), len(sizes), iterations)


def _fmt(x: float) -> str:
    """13.0 → '13', 2.15385 → '2.15385': the shortest text that reads back as the same float."""
    text = repr(float(x))
    return text[:-2] if text.endswith('.0') else text


def override_flag(anchors: Anchors) -> str:
    """The shell argument that sets them: --config.model.anchors='(((w,h),...),...)' (ml_collections parses the
    quoted text with ast.literal_eval into the nested tuple)."""
    def tuple_text(items: list[str]) -> str:  # a trailing comma keeps a one-element tuple a tuple
        return '(' + ','.join(items) + (',' if len(items) == 1 else '') + ')'

    return "--config.model.anchors='" + tuple_text([tuple_text([f'({_fmt(w)},{_fmt(h)})' for w, h in scale])
                                                    for scale in anchors]) + "'"


# ----------------------------------------------------------------------------------------------------------------
# Reading a split's boxes (TF: the data layer).


def read_box_sizes(config, split: str, *, log_every_s: float = 10.0) -> tuple[np.ndarray, int]:
    """(wh (N, 2) float64 widths and heights in input pixels, number of images) of every box of `split`.

    Boxes are mapped as the pipeline maps them (config.data.resize to config.model.input_size), without
    augmentation; difficult / crowd boxes are left out (training drops them), and so are boxes of zero size.
    Raises DataError when no box is left.
    """
    import tensorflow as tf  # noqa: PLC0415  (TF only when data is read)

    from yolo_jax import input_pipeline  # noqa: PLC0415
    from yolo_jax.data import letterbox as letterbox_lib  # noqa: PLC0415

    config = copy.deepcopy(config)
    config.data.cache = False  # one pass: caching would hold every decoded image in memory
    size, mode = int(config.model.input_size), str(config.data.resize)
    if mode not in letterbox_lib.RESIZE_MODES:
        raise errors.ConfigError(f'config.data.resize: unknown mode {mode!r}; expected one of '
                                 f'{letterbox_lib.RESIZE_MODES}')
    data = input_pipeline.Data(config)
    try:
        source, info = data.split(split)
    except errors.UserError:
        raise
    except ValueError as e:  # a split name the data set does not have
        raise errors.UserError(f'--split={split}: {e}') from None
    where = f'the {split} split of config.data.dataset={config.data.dataset!r}'
    ds = source.map(lambda ex: {'hw': tf.shape(ex['image'])[:2], 'boxes': ex['boxes'], 'difficult': ex['difficult']},
                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE)
    sizes, num_images, skipped = [], 0, 0
    start = last_log = time.monotonic()
    for ex in ds.as_numpy_iterator():
        sx, sy, _, _ = letterbox_lib.resize_params(int(ex['hw'][0]), int(ex['hw'][1]), size, mode)
        boxes = np.asarray(ex['boxes'], np.float64).reshape(-1, 4)[~ex['difficult']]
        # Offsets cancel in the size: (x2 - x1) * scale, so equal boxes at equal scale give equal sizes exactly.
        wh = (boxes[:, 2:] - boxes[:, :2]) * np.array([sx, sy])
        ok = (wh > 0).all(axis=1)
        skipped += int((~ok).sum())
        sizes.append(wh[ok])
        num_images += 1
        if time.monotonic() - last_log >= log_every_s:
            last_log = time.monotonic()
            logging.info('read %d/%d images of %s (%d boxes, %.0f images/s)', num_images, info.num_examples, where,
                         sum(len(s) for s in sizes), num_images / (last_log - start))
    wh = np.concatenate(sizes + [np.zeros((0, 2))])
    if skipped:
        logging.warning('%d boxes of zero width or height in %s left out', skipped, where)
    logging.info('read %d images, %d boxes of %s in %.1f s', num_images, len(wh), where, time.monotonic() - start)
    if not len(wh):
        raise DataError(f'{where} has no boxes to fit anchors to ({num_images} images; difficult / crowd boxes '
                        'do not count)')
    return wh, num_images


# ----------------------------------------------------------------------------------------------------------------
# Command line.


def _define_flags() -> None:
    """anchors' own flags (cli.run adds --config and --verbose)."""
    flags.DEFINE_string('split', 'train', "The split whose boxes to fit: 'train', 'test' or a TFDS split name.")
    flags.DEFINE_string('output', None, 'Also write the anchors and IoUs to this JSON file (atomically).')
    flags.DEFINE_integer('seed', 0, 'Seed of the k-means++ initialisations.')
    flags.DEFINE_integer('restarts', 5, 'k-means runs from different seeds; the best by mean IoU is kept.')
    flags.DEFINE_enum('update', 'median', list(UPDATES), 'Move each anchor to the median or mean of its boxes.')


def main() -> None:
    """`python -m yolo_jax.anchors --config=... [--split=...] [--output=FILE]` (cli.run)."""
    f = flags.FLAGS
    if f.restarts < 1:
        raise FlagError(f'--restarts={f.restarts}: needs at least 1')
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # before TF's first import
    from yolo_jax import run_config  # noqa: PLC0415

    config = run_config.resolve(f.config, '')  # model.num_classes=0: from the data
    wh, num_images = read_box_sizes(config, f.split)
    fit = fit_anchors(wh, config.model.anchors, seed=f.seed, restarts=f.restarts, update=f.update, digits=DIGITS)
    override = override_flag(fit.anchors)
    strides = tuple(int(s) for s in config.model.strides)
    print(f'{fit.num_boxes} boxes of {num_images} images ({f.split} split), in input pixels '
          f'({config.data.resize} to {config.model.input_size}); k-means, 1 - IoU, {f.update} update:')
    for stride, scale in zip(strides, fit.anchors, strict=True):
        print(f'  stride {stride}: ' + '  '.join(f'{_fmt(w)}x{_fmt(h)}' for w, h in scale))
    k = sum(len(scale) for scale in fit.anchors)
    if fit.distinct_sizes < k:
        print(f'note: only {fit.distinct_sizes} distinct box sizes for {k} anchors: each size is an anchor, the spare '
              'anchors repeat the most frequent sizes')
    print(f'mean best IoU: {fit.mean_iou:.4f} with these anchors, {fit.current_mean_iou:.4f} with config.model.anchors')
    print('train with them:')
    print(override)
    if f.output:
        from yolo_jax.data.annotations import write_text_atomic  # noqa: PLC0415

        record = {
            'anchors': [[list(a) for a in scale] for scale in fit.anchors], 'strides': list(strides),
            'mean_iou': fit.mean_iou, 'config_mean_iou': fit.current_mean_iou,
            'config_anchors': [[list(a) for a in scale] for scale in config.model.anchors],
            'num_boxes': fit.num_boxes, 'num_images': num_images, 'split': f.split,
            'dataset': str(config.data.dataset), 'input_size': int(config.model.input_size),
            'resize': str(config.data.resize), 'update': f.update, 'seed': f.seed, 'restarts': f.restarts,
            'override': override,
        }
        write_text_atomic(f.output, json.dumps(record, indent=1) + '\n')
        print(f'wrote {f.output}')


if __name__ == '__main__':
    from yolo_jax import cli

    cli.run(main, _define_flags)
