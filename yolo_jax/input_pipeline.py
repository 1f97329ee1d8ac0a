"""tf.data input pipeline: decoded examples → augmented, letterboxed, target-encoded batches (NumPy via TF).

TF is used only here and in `yolo_jax/data/{augment,letterbox,targets}.py`; the jitted model never touches it.
`Data` is created once per run: it prepares the data set (building the MNIST set is an explicit, logged step),
knows its classes (the `DetectionSpec`), decodes and caches each split once, and streams the run's training
batches from one tf.data dataset over all epochs (from any resume step) and eval batches padded to the same count
on every process.

Batch elements (`.as_numpy_iterator()`), B = batch size, S = the spec's input_size (a multi-scale training
batch: its own size, below), C = num_classes:
  'image'     float32 (B, S, S, 3) RGB in [0, 1] (letterboxed on grey 128, or stretched).
  'labels'    tuple over scales (strides ascending) of float32 (B, S_l, S_l, A, 5 + C): [x, y, w, h in input
              pixels, objectness, smoothed one-hot] at responsible anchors (see data/targets.py).
  'bboxes'    tuple over scales of float32 (B, max_bbox_per_scale, 4): xywh input pixels of that scale's boxes.
  'boxes'     float32 (B, max_boxes, 4) x1, y1, x2, y2 in input pixels, zero padded (after augmentation).
  'classes'   int32 (B, max_boxes), -1 padded.
  'difficult' bool (B, max_boxes), False padded: boxes evaluation ignores (VOC difficult, COCO crowd). Only the
              eval dataset has flagged boxes (training drops them), and they are left out of 'labels' / 'bboxes'.
  'orig_size' int32 (B, 2): (h, w) of the original decoded image (before augmentation).
  'valid'     float32 (B,): 1 for real examples, 0 for padding (only the eval set's last batch has padding).
  'image_id'  (B,) whatever the source gives (int or string).

Determinism: the train order is a seeded shuffle of the whole shard (seed from (config.train.seed, epoch));
augmentation uses stateless random ops seeded by (config.train.seed, epoch, process index, example index in the
shard), and maps run with deterministic=True, so batches do not depend on parallelism, timing or `skip_batches`.
With config.data.mosaic > 0, each example's 3 partner tiles come from 3 more seeded shuffles of the shard (seeds
from (config.train.seed, epoch, 1..3)), zipped with the main stream before `skip_batches`, so they replay too
('orig_size' of a mosaic is its canvas, (S, S)). Without config.data.cache each stream decodes the images itself:
4x the decoding and shuffle-buffer memory.
(The shuffle is tf.data's: its op seed is fixed, but a process-wide `tf.random.set_seed` also feeds into it.)

Multi-scale training (config.train.multi_scale_sizes): training batch k of an epoch is global step
epoch * steps_per_epoch + k, and its side S is `train_input_size(spec, config.train, step)`, a pure function of
(config.train.seed, step // config.train.multi_scale_every_steps). One pipeline serves every size: examples are
decoded once (cached), shuffled, skipped and augmented exactly as at one size; each example's letterbox and each
batch's target encoding is a `tf.switch_case` over the sizes, selected by its batch's position in the epoch. So a
batch at size S equals the single-size pipeline's batch at S, and resuming mid-epoch replays the same sizes.
Their element_spec then leaves the side of 'image' and the grid sides of 'labels' unknown (None).
"""

from __future__ import annotations

import functools
import os
import sys
import threading
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

import numpy as np
import tensorflow as tf

from yolo_jax import spec as spec_lib
from yolo_jax.data import augment as augment_lib
from yolo_jax.data import letterbox as letterbox_lib
from yolo_jax.data import targets as targets_lib
from yolo_jax.errors import ConfigError, DataError
from yolo_jax.spec import DetectionSpec, build_spec

# The third seed word of `train_input_size`: any constant, fixed since it decides the sizes a resumed run replays.
_MULTI_SCALE_STREAM = 0x6D53
T = TypeVar('T')


def _num_threads(config) -> int:
    """config.data.num_threads, or (0 = auto) the CPUs this process may run on."""
    n = int(config.data.num_threads)
    if n > 0:
        return n
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def configure_tensorflow(num_threads: int) -> None:
    """Keeps TF off the GPUs (JAX owns them) and caps its global thread pools; best effort.

    Both settings only take effect before TF's runtime starts; later calls are silently ignored.
    """
    try:
        tf.config.set_visible_devices([], 'GPU')
    except (RuntimeError, ValueError):
        pass
    try:
        tf.config.threading.set_inter_op_parallelism_threads(num_threads)
        tf.config.threading.set_intra_op_parallelism_threads(num_threads)
    except RuntimeError:
        pass


def _options(config) -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    options.threading.private_threadpool_size = _num_threads(config)
    options.threading.max_intra_op_parallelism = 1  # parallelism comes from the maps, not inside each op
    options.autotune.enabled = True
    return options


def _shuffle_seed(seed: int, epoch: int, *stream: int) -> int:
    """A well-mixed 63-bit op seed from (seed, epoch) (and a stream number for the mosaic's partner shuffles)."""
    entropy = [int(seed), int(epoch), *map(int, stream)]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> np.uint64(1))


def _example_key(augment_seed: tuple[int, int | tf.Tensor, int], index: tf.Tensor) -> tf.Tensor:
    """(2,) int64 stateless seed of the example at `index` in the shard from (seed, epoch, process index); the
    epoch may be an int64 scalar tensor (an epoch of `train_stream_dataset`)."""
    seed, epoch, process_index = augment_seed
    key = tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch, tf.int64)])
    key = tf.random.experimental.stateless_fold_in(key, process_index)
    return tf.random.experimental.stateless_fold_in(key, index)


def _extra_augmentations(config) -> tuple[float, tuple[float, float, float]]:
    """(config.data.mosaic, config.data.hsv_gains), checked."""
    mosaic = float(config.data.mosaic)
    if not 0.0 <= mosaic <= 1.0:
        raise ConfigError(f'config.data.mosaic: a probability in [0, 1], got {config.data.mosaic!r}')
    gains = tuple(float(g) for g in config.data.hsv_gains)
    if len(gains) != 3 or not all(0.0 <= g <= 1.0 for g in gains):
        raise ConfigError(f'config.data.hsv_gains: 3 gains (hue, saturation, value) in [0, 1], '
                          f'got {config.data.hsv_gains!r}')
    return mosaic, gains


def _orientation(data_config) -> tuple[float, float]:
    """(config.data.vertical_flip, config.data.transpose): probabilities, checked."""
    probabilities = (data_config.vertical_flip, data_config.transpose)
    for name, p in zip(('vertical_flip', 'transpose'), probabilities, strict=True):
        if not isinstance(p, int | float) or isinstance(p, bool) or not 0.0 <= p <= 1.0:
            raise ConfigError(f'config.data.{name}: a probability in [0, 1], got {p!r}')
    return float(probabilities[0]), float(probabilities[1])


def check_multi_scale(spec: DetectionSpec, train_config) -> tuple[int, ...]:
    """config.train.multi_scale_sizes as ints (() = off); ConfigError naming the field for a side that is not a
    positive multiple of the network's downsampling (`spec_lib.size_multiple`), or a period below 1."""
    t = train_config
    sizes = tuple(t.multi_scale_sizes)
    if not sizes:
        return ()
    multiple = spec_lib.size_multiple(spec.strides)
    bad = [s for s in sizes if not isinstance(s, int | np.integer) or isinstance(s, bool) or s <= 0 or s % multiple]
    if bad:
        raise ConfigError(f'config.train.multi_scale_sizes={sizes}: every size must be a positive multiple of '
                          f'{multiple} (the largest stride, at least 32; config.model.strides={spec.strides}), '
                          f'not {bad}')
    if not isinstance(t.multi_scale_every_steps, int | np.integer) or t.multi_scale_every_steps < 1:
        raise ConfigError(f'config.train.multi_scale_every_steps={t.multi_scale_every_steps!r} must be an integer '
                          '>= 1 (optimizer steps between size changes)')
    return tuple(int(s) for s in sizes)


def train_input_size(spec: DetectionSpec, train_config, step: int) -> int:
    """The input side (pixels) of the batch of 0-based global training step `step` (the one that makes
    state.step = step + 1): spec.input_size, or with config.train.multi_scale_sizes a uniformly random one of
    them, drawn from (config.train.seed, step // config.train.multi_scale_every_steps) alone."""
    sizes = check_multi_scale(spec, train_config)
    if not sizes:
        return spec.input_size
    chunk = int(step) // int(train_config.multi_scale_every_steps)
    # A third word keeps this stream apart from the shuffle's SeedSequence([seed, epoch]).
    rng = np.random.default_rng([int(train_config.seed), chunk, _MULTI_SCALE_STREAM])
    return int(sizes[int(rng.integers(len(sizes)))])


def _no_autograph(fn):
    """`fn` for tf.data traced as written, without AutoGraph's source conversion: the pipeline branches on tensors
    only through tf.cond / tf.where / tf.switch_case, and converting its functions (and every function they call)
    took ~4 s of each run's start (a smoke training run: 26 -> 22 s)."""
    return tf.autograph.experimental.do_not_convert(fn)


def _prepare_fn(config, size: int, *, augment_seed: tuple[int, int, int] | None, keep_difficult: bool = False):
    """Per-example map: (index, example) → image (S, S, 3) and variable-length boxes in input pixels.

    size: S in pixels (the spec's input side, or a multi-scale batch's).
    augment_seed: (seed, epoch, process index) for training (config.data.augment, config.data.hsv_gains), None
      for evaluation (no augmentation).
    keep_difficult: keep boxes flagged 'difficult' (evaluation); otherwise they are dropped (training).
    """
    size = int(size)
    mode = config.data.resize
    if mode not in letterbox_lib.RESIZE_MODES:
        raise ConfigError(f'config.data.resize: unknown mode {mode!r}; expected one of {letterbox_lib.RESIZE_MODES}')
    _, hsv_gains = _extra_augmentations(config)
    orientation = _orientation(config.data)

    def prepare(index: tf.Tensor, example: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        image = example['image']
        boxes = tf.reshape(tf.cast(example['boxes'], tf.float32), [-1, 4])
        classes = tf.reshape(tf.cast(example['classes'], tf.int32), [-1])
        if 'difficult' in example:  # optional: sources without flags have none
            difficult = tf.reshape(tf.cast(example['difficult'], tf.bool), [-1])
        else:
            difficult = tf.zeros(tf.shape(classes), tf.bool)
        if not keep_difficult:
            keep = tf.logical_not(difficult)
            boxes, classes, difficult = (tf.boolean_mask(x, keep) for x in (boxes, classes, difficult))
        orig_size = tf.shape(image)[:2]
        if augment_seed is not None and any(orientation):
            key = augment_lib.sub_seed(_example_key(augment_seed, index), augment_lib.ORIENTATION_STREAM)
            image, boxes = augment_lib.random_orientation(image, boxes, key, *orientation)
        if augment_seed is not None and config.data.augment:
            image, boxes = augment_lib.random_augment(image, boxes, _example_key(augment_seed, index))
        image, boxes = letterbox_lib.resize_image_and_boxes(image, boxes, size, mode)
        if augment_seed is not None and any(hsv_gains):  # on the S x S input: fewer pixels than the decoded image
            hsv_seed = augment_lib.sub_seed(_example_key(augment_seed, index), augment_lib.HSV_STREAM)
            image = augment_lib.random_hsv(image, hsv_seed, hsv_gains)
        return {
            'image': image,
            'gt_boxes': boxes,
            'gt_classes': classes,
            'gt_difficult': difficult,
            'orig_size': tf.cast(orig_size, tf.int32),
            'valid': tf.constant(1.0, tf.float32),
            'image_id': example['image_id'],
        }

    return _no_autograph(prepare)


def _padded_batch(ds: tf.data.Dataset, batch_size: int, drop_remainder: bool) -> tf.data.Dataset:
    """Batches, padding the variable-length gt_boxes with 0 and gt_classes with -1 (= no box)."""

    def pad_value(key: str, spec: tf.TensorSpec) -> tf.Tensor:
        if spec.dtype == tf.string:
            return tf.constant('', tf.string)
        if spec.dtype == tf.bool:
            return tf.constant(False)
        return tf.constant(-1 if key == 'gt_classes' else 0, spec.dtype)

    values = {k: pad_value(k, s) for k, s in ds.element_spec.items()}
    return ds.padded_batch(batch_size, padding_values=values, drop_remainder=drop_remainder)


def _finish_fn(config, spec: DetectionSpec, *, batch_size: int, pad: bool):
    """Per-batch map: encodes targets for the whole batch and pads/truncates boxes to max_boxes.

    spec: the geometry at the batch's input side S in pixels (the grids are S / stride).
    pad: pad a short batch to `batch_size` examples with valid = 0 (evaluation); otherwise batches are full.
    """
    size = spec.input_size
    params = targets_lib.TargetParams.from_spec(spec, config.data)
    max_boxes = int(config.data.max_boxes)
    label_shapes = targets_lib.grid_shapes(params)

    def pad_rows(x: tf.Tensor, n: tf.Tensor, value) -> tf.Tensor:
        paddings = tf.concat([[[0, n]], tf.zeros([tf.rank(x) - 1, 2], tf.int32)], axis=0)
        return tf.pad(x, paddings, constant_values=value)

    def finish(batch: dict[str, tf.Tensor]) -> dict[str, Any]:
        if pad:
            n = batch_size - tf.shape(batch['image'])[0]
            id_pad = '' if batch['image_id'].dtype == tf.string else 0
            batch = {
                'image': pad_rows(batch['image'], n, 0.0),
                'gt_boxes': pad_rows(batch['gt_boxes'], n, 0.0),
                'gt_classes': pad_rows(batch['gt_classes'], n, -1),
                'gt_difficult': pad_rows(batch['gt_difficult'], n, False),
                'orig_size': pad_rows(batch['orig_size'], n, size),  # harmless (h, w) for post-processing
                'valid': pad_rows(batch['valid'], n, 0.0),
                'image_id': pad_rows(batch['image_id'], n, id_pad),
            }
        gt_boxes, gt_classes, gt_difficult = batch['gt_boxes'], batch['gt_classes'], batch['gt_difficult']
        # Flagged boxes are no training targets (the encoder skips class -1).
        labels, bboxes = targets_lib.encode_targets_batch(gt_boxes, tf.where(gt_difficult, -1, gt_classes), params)
        extra = tf.maximum(max_boxes - tf.shape(gt_boxes)[1], 0)
        boxes = pad_rows(tf.transpose(gt_boxes, [1, 0, 2]), extra, 0.0)[:max_boxes]
        classes = pad_rows(tf.transpose(gt_classes), extra, -1)[:max_boxes]
        difficult = pad_rows(tf.transpose(gt_difficult), extra, False)[:max_boxes]
        b = batch_size  # fully static shapes for the consumer
        return {
            'image': tf.ensure_shape(batch['image'], [b, size, size, 3]),
            'labels': tuple(tf.ensure_shape(x, [b, *shape]) for x, shape in zip(labels, label_shapes, strict=True)),
            'bboxes': tuple(tf.ensure_shape(x, [b, params.max_bbox_per_scale, 4]) for x in bboxes),
            'boxes': tf.ensure_shape(tf.transpose(boxes, [1, 0, 2]), [b, max_boxes, 4]),
            'classes': tf.ensure_shape(tf.transpose(classes), [b, max_boxes]),
            'difficult': tf.ensure_shape(tf.transpose(difficult), [b, max_boxes]),
            'orig_size': tf.ensure_shape(batch['orig_size'], [b, 2]),
            'valid': tf.ensure_shape(batch['valid'], [b]),
            'image_id': tf.ensure_shape(batch['image_id'], [b]),
        }

    return _no_autograph(finish)


def train_epoch_dataset(
    config, spec: DetectionSpec, source: tf.data.Dataset, num_examples: int, *, epoch: int, batch_size: int,
    process_index: int = 0, skip_batches: int = 0, first_step: int | None = None,
) -> tf.data.Dataset:
    """One epoch of a process's shard `source` (decoded, cached), as batches of `batch_size` (this process's part
    of the global batch).

    Seeded shuffle of the whole shard by (config.train.seed, epoch) (config.data.shuffle_buffer > 0 caps the
    buffer to bound memory on big datasets), mosaic when config.data.mosaic > 0, augmentation when
    config.data.augment, letterbox (or stretch), HSV jitter when config.data.hsv_gains,
    target encoding, drop_remainder batching. `skip_batches` drops the first batches exactly (for resume),
    before any augmentation work is spent on them.

    first_step: the global step of the epoch's batch 0 (epoch * steps_per_epoch). Given, and with
    config.train.multi_scale_sizes set, batch k (counted before skipping) has side `train_input_size(spec,
    config.train, first_step + k)`; None (BN recalibration) or multi-scale off: every batch at spec.input_size.
    """
    ds = _epoch_batches(config, spec, source, num_examples, epoch=epoch, batch_size=batch_size,
                        process_index=process_index, skip_batches=skip_batches, first_step=first_step)
    return ds.prefetch(tf.data.AUTOTUNE).with_options(_options(config))


def train_stream_dataset(
    config, spec: DetectionSpec, source: tf.data.Dataset, num_examples: int, *, start_step: int,
    steps_per_epoch: int, batch_size: int, process_index: int = 0,
) -> tf.data.Dataset:
    """(epoch, batch) pairs from global step `start_step` on, every epoch after it (unbounded): one dataset whose
    epoch e is `train_epoch_dataset(..., epoch=e, first_step=e * steps_per_epoch)` cut to `steps_per_epoch`
    batches, the first epoch from batch start_step % steps_per_epoch. One iterator serves the whole run, so no
    pipeline is built or torn down at epoch boundaries. `num_examples` (the shard) must give at least
    `steps_per_epoch` full batches."""
    first_epoch, first_skip = divmod(int(start_step), int(steps_per_epoch))

    def one_epoch(epoch: tf.Tensor) -> tf.data.Dataset:
        skip = tf.where(tf.equal(epoch, first_epoch), tf.constant(first_skip, tf.int64), tf.constant(0, tf.int64))
        ds = _epoch_batches(config, spec, source, num_examples, epoch=epoch, batch_size=batch_size,
                            process_index=process_index, skip_batches=skip, first_step=epoch * steps_per_epoch)
        return ds.take(steps_per_epoch - skip).map(_no_autograph(lambda batch: (epoch, batch)))

    ds = tf.data.Dataset.range(first_epoch, np.iinfo(np.int64).max).flat_map(_no_autograph(one_epoch))
    return ds.prefetch(tf.data.AUTOTUNE).with_options(_options(config))


def _seed_of(seed: int, epoch: int | tf.Tensor, *stream: int) -> int | tf.Tensor:
    """`_shuffle_seed(seed, epoch, *stream)`; for an int64 scalar tensor `epoch` (inside the all-epochs dataset)
    the same number, computed in Python when the epoch's pipeline is built."""
    if not isinstance(epoch, tf.Tensor):
        return _shuffle_seed(seed, epoch, *stream)
    value = tf.numpy_function(lambda e: np.int64(_shuffle_seed(seed, int(e), *stream)), [epoch], tf.int64,
                              stateful=False)
    return tf.ensure_shape(value, [])


def _epoch_batches(
    config, spec: DetectionSpec, source: tf.data.Dataset, num_examples: int, *, epoch: int | tf.Tensor, batch_size: int,
    process_index: int, skip_batches: int | tf.Tensor, first_step: int | tf.Tensor | None,
) -> tf.data.Dataset:
    """`train_epoch_dataset` without its prefetch and options; `epoch`, `skip_batches` and `first_step` are ints
    (one epoch's pipeline) or int64 scalar tensors (an epoch of `train_stream_dataset`)."""
    buffer = max(1, num_examples if config.data.shuffle_buffer <= 0 else min(num_examples,
                                                                             int(config.data.shuffle_buffer)))
    seed = int(config.train.seed)
    ds = source.enumerate()  # the index in the shard seeds this example's augmentation
    ds = ds.shuffle(buffer, seed=_seed_of(seed, epoch), reshuffle_each_iteration=False)
    mosaic, _ = _extra_augmentations(config)
    if mosaic > 0:  # each example's 3 partner tiles: the same position in 3 more shuffles of the shard
        partners = [source.shuffle(buffer, seed=_seed_of(seed, epoch, k), reshuffle_each_iteration=False)
                    for k in (1, 2, 3)]
        ds = tf.data.Dataset.zip((ds, *partners))
    ds = ds.skip(skip_batches * batch_size)  # same as skipping batches: augmentation is per example
    augment_seed = (seed, epoch, int(process_index))
    if mosaic > 0:
        size = spec.input_size

        def combine(main: tuple[tf.Tensor, dict], *partners: dict) -> tuple[tf.Tensor, dict]:
            index, example = main
            key = augment_lib.sub_seed(_example_key(augment_seed, index), augment_lib.MOSAIC_STREAM)
            return index, augment_lib.random_mosaic([example, *partners], key, size, mosaic)

        ds = ds.map(_no_autograph(combine), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if first_step is not None and check_multi_scale(spec, config.train):
        table = _size_table(spec, config.train, first_step + skip_batches, num_examples // batch_size - skip_batches)
        return _multi_scale_batches(config, spec, ds, table, batch_size=batch_size, augment_seed=augment_seed)
    ds = ds.map(_prepare_fn(config, spec.input_size, augment_seed=augment_seed), num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True)
    ds = _padded_batch(ds, batch_size, drop_remainder=True)
    return ds.map(
        _finish_fn(config, spec, batch_size=batch_size, pad=False), num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )


def _size_table(spec: DetectionSpec, train_config, start: int | tf.Tensor, count: int | tf.Tensor) -> tf.Tensor:
    """(count + 1,) int32: for the batches of global steps start, start + 1, ... the index of their side
    `train_input_size(spec, config.train, step)` in sorted(config.train.multi_scale_sizes), then one entry (0) for
    the remainder examples that drop_remainder discards."""
    branches = sorted(set(check_multi_scale(spec, train_config)))

    def table(first, n) -> np.ndarray:
        steps = range(int(first), int(first) + max(int(n), 0))
        return np.array([branches.index(train_input_size(spec, train_config, s)) for s in steps] + [0], np.int32)

    if not isinstance(start, tf.Tensor) and not isinstance(count, tf.Tensor):
        return tf.constant(table(start, count))
    values = tf.numpy_function(table, [tf.cast(start, tf.int64), tf.cast(count, tf.int64)], tf.int32, stateful=False)
    return tf.ensure_shape(values, [None])


def _multi_scale_batches(config, spec: DetectionSpec, ds: tf.data.Dataset, table: tf.Tensor, *, batch_size: int,
                         augment_seed: tuple[int, int | tf.Tensor, int] | None) -> tf.data.Dataset:
    """(index, example) stream → batches where batch k is letterboxed and target-encoded at side
    sorted(config.train.multi_scale_sizes)[table[k]] (pixels; `_size_table`). One pipeline: each example goes
    through the same augmentation as at one size, then a `tf.switch_case` over the sizes picks its batch's
    letterbox and, per batch, the encoder (each branch is the single-size code with a static size, so grids and
    shapes are exact per branch)."""
    branches = sorted(set(check_multi_scale(spec, config.train)))
    last = tf.size(table, out_type=tf.int64) - 1
    prepares = [_prepare_fn(config, s, augment_seed=augment_seed) for s in branches]
    finishes = [_finish_fn(config, spec.resized(s), batch_size=batch_size, pad=False) for s in branches]

    def prepare(position: tf.Tensor, item: tuple[tf.Tensor, dict]) -> dict[str, tf.Tensor]:
        which = table[tf.minimum(position // batch_size, last)]
        return tf.switch_case(which, [functools.partial(f, *item) for f in prepares])

    def finish(k: tf.Tensor, batch: dict[str, tf.Tensor]) -> dict[str, Any]:
        return tf.switch_case(table[k], [functools.partial(f, batch) for f in finishes])

    # Positions count from the first batch after skip_batches, like the table.
    ds = ds.enumerate().map(_no_autograph(prepare), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = _padded_batch(ds, batch_size, drop_remainder=True)  # a batch never mixes sizes: it is one position block
    return ds.enumerate().map(_no_autograph(finish), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def eval_dataset(config, spec: DetectionSpec, source: tf.data.Dataset, *, batch_size: int) -> tf.data.Dataset:
    """A whole shard `source` in order, without augmentation; the last partial batch is padded to `batch_size`
    with 'valid' = 0 (and no boxes)."""
    ds = source.enumerate()
    ds = ds.map(_prepare_fn(config, spec.input_size, augment_seed=None, keep_difficult=True),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = _padded_batch(ds, batch_size, drop_remainder=False)
    ds = ds.map(
        _finish_fn(config, spec, batch_size=batch_size, pad=True), num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    return ds.prefetch(tf.data.AUTOTUNE).with_options(_options(config))


def release_in_background(iterable: Iterable[T]) -> Iterator[T]:
    """Yields `iterable`'s items; once it is exhausted or abandoned (closed, garbage collected), its last reference
    is dropped on a short-lived background thread instead of the caller's.

    Why: destroying a tf.data iterator can block for up to 60 s. Its autotuning thread sleeps until the next
    optimization (the period doubles from 10 ms up to 60 s as the iterator ages) and is woken by a cancellation
    callback, but TF's CancellationManager runs the callbacks before it marks itself cancelled, so a woken thread
    that checks first goes back to sleep (a lost wakeup: seen with py-spy/gdb at ~1 in 2 epoch starts under load,
    each stalling the training loop 20-60 s in ~RootDataset::Iterator). The destructor releases the GIL, so on
    another thread it costs the loop nothing; by then the pipeline itself is already torn down (only the model
    thread is waited for), so nothing of it keeps running or holds memory. (Training batches come from one
    iterator per run; evaluation and BatchNorm recalibration still end an iterator every epoch.)
    """
    holder = [iterable]
    del iterable  # the holder keeps the only reference of this frame
    try:
        yield from holder[0]
    finally:
        # At interpreter exit (an abandoned generator collected during finalization) no new thread ever runs and
        # Thread.start() would wait for it forever: the reference then simply dies with this frame.
        if not sys.is_finalizing():
            threading.Thread(target=holder.clear, name='release_tf_data_iterator', daemon=True).start()


def numpy_iterator(ds: tf.data.Dataset) -> Iterator[Any]:
    """`ds.as_numpy_iterator()`, destroyed off the calling thread when done (`release_in_background`)."""
    return release_in_background(ds.as_numpy_iterator())


def _blank_batch(template: dict[str, Any]) -> dict[str, Any]:
    """A batch shaped like `template` holding only padding examples (valid = 0, no boxes)."""
    out = tf.nest.map_structure(np.zeros_like, template)
    out['classes'] = np.full_like(template['classes'], -1)
    out['orig_size'] = template['orig_size']  # any harmless (h, w)
    return out



class Data:
    """A run's data, created once: the data set's classes and spec, decoded splits, train and eval batches.

    Each process reads its own contiguous shard of every split (`process_index` of `process_count`).
    """

    def __init__(self, config, *, process_index: int = 0, process_count: int = 1):
        from yolo_jax.data import sources  # noqa: PLC0415  (heavy)

        self.config, self.process_index, self.process_count = config, process_index, process_count
        configure_tensorflow(_num_threads(config))  # before TF's first op
        self._sources_lib = sources
        self.class_names, where = sources.class_source(config)
        self.spec = build_spec(config.model, self.class_names, where)  # checked before any data is built or read
        check_multi_scale(self.spec, config.train)
        sources.prepare(config)
        self._splits: dict[str, tuple[tf.data.Dataset, Any]] = {}
        self._eval_datasets: dict[tuple[str, int], tf.data.Dataset] = {}  # built once, iterated per evaluation

    def split(self, name: str) -> tuple[tf.data.Dataset, Any]:
        """(this process's decoded shard of split `name`, cached when config.data.cache; its SplitInfo)."""
        if name not in self._splits:
            ds, info = self._sources_lib.load_split(self.config, name, process_index=self.process_index,
                                                    process_count=self.process_count)
            self._splits[name] = (ds.cache() if self.config.data.cache else ds, info)
        return self._splits[name]

    def num_examples(self, split: str) -> int:
        """Examples in the whole split (all processes)."""
        return int(self.split(split)[1].num_examples)

    def shard_size(self, split: str) -> int:
        start, end = self._sources_lib.shard_bounds(self.num_examples(split), self.process_index, self.process_count)
        return end - start

    def steps_per_epoch(self, global_batch_size: int) -> int:
        """floor(num_train / global_batch_size); config.train.steps_per_epoch > 0 overrides it."""
        override = int(self.config.train.steps_per_epoch)
        return override if override > 0 else self.num_examples('train') // int(global_batch_size)

    def train_epoch(self, epoch: int, batch_size: int, skip_batches: int = 0,
                    first_step: int | None = None) -> tf.data.Dataset:
        """One epoch of this process's shard, as batches of `batch_size` (see `train_epoch_dataset`; `first_step`
        = epoch * steps_per_epoch gives multi-scale batches, None all at spec.input_size)."""
        source, _ = self.split('train')
        return train_epoch_dataset(self.config, self.spec, source, self.shard_size('train'), epoch=epoch,
                                   batch_size=batch_size, process_index=self.process_index, skip_batches=skip_batches,
                                   first_step=first_step)

    def train_batches(self, start_step: int, steps_per_epoch: int, batch_size: int) -> Iterator[tuple[int, dict]]:
        """(epoch, host batch) from global step `start_step` on, epoch after epoch, forever, from one dataset
        (`train_stream_dataset`); each epoch is `steps_per_epoch` batches. With config.train.multi_scale_sizes,
        step s's batch has side `train_input_size(spec, config.train, s)`, whatever `start_step` the stream
        started from.
        DataError at once if this process's shard holds fewer than `steps_per_epoch` batches."""
        source, _ = self.split('train')
        shard = self.shard_size('train')
        if shard // batch_size < steps_per_epoch:
            raise DataError(f'the training split holds {shard // batch_size} batches of {batch_size} on process '
                            f'{self.process_index}, fewer than the {steps_per_epoch} steps per epoch '
                            '(config.train.steps_per_epoch?)')
        ds = train_stream_dataset(self.config, self.spec, source, shard, start_step=start_step,
                                  steps_per_epoch=steps_per_epoch, batch_size=batch_size,
                                  process_index=self.process_index)
        return ((int(epoch), batch) for epoch, batch in numpy_iterator(ds))

    def recalibration_batches(self, epoch: int, batch_size: int, count: int) -> Iterator[dict]:
        """The first `count` training batches of `epoch` (augmented, at spec.input_size), for BatchNorm
        recalibration."""
        return numpy_iterator(self.train_epoch(epoch, batch_size).take(count))

    def eval_batches(self, batch_size: int, split: str = 'test') -> Iterator[dict]:
        """This process's shard of `split` in batches of `batch_size`, padded (valid = 0) to the same number of
        batches on every process, so that steps over a multi-process mesh stay in step."""
        source, _ = self.split(split)
        largest_shard = -(-self.num_examples(split) // self.process_count)
        num_batches = -(-largest_shard // batch_size)
        key = (split, batch_size)
        if key not in self._eval_datasets:  # tracing its functions costs ~1 s: not again at every evaluation
            self._eval_datasets[key] = eval_dataset(self.config, self.spec, source, batch_size=batch_size)
        n, last = 0, None
        for batch in numpy_iterator(self._eval_datasets[key]):
            n, last = n + 1, batch
            yield batch
        if last is None and num_batches:
            raise DataError(f'process {self.process_index} holds no example of the {split} split: use fewer '
                            'processes than examples')
        for _ in range(num_batches - n):
            yield _blank_batch(last)
