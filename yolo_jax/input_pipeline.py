"""tf.data input pipeline: decoded examples → augmented, letterboxed, target-encoded batches (NumPy via TF).

TF is used only here and in `yolo_jax/data/{augment,letterbox,targets}.py`; the jitted model never touches it.
`Data` is created once per run: it prepares the data set (building the MNIST set is an explicit, logged step),
knows its classes (the `DetectionSpec`), decodes and caches each split once, and streams train batches for
(epoch, skip) and eval batches padded to the same count on every process.

Batch elements (`.as_numpy_iterator()`), B = batch size, S = config.model.input_size, C = num_classes:
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
(The shuffle is tf.data's: its op seed is fixed, but a process-wide `tf.random.set_seed` also feeds into it.)
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

import numpy as np
import tensorflow as tf

from yolo_jax.data import augment as augment_lib
from yolo_jax.data import letterbox as letterbox_lib
from yolo_jax.data import targets as targets_lib
from yolo_jax.errors import ConfigError, DataError
from yolo_jax.spec import build_spec

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


def _shuffle_seed(seed: int, epoch: int) -> int:
    """A well-mixed 63-bit op seed from (seed, epoch)."""
    return int(np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def _prepare_fn(config, *, augment_seed: tuple[int, int, int] | None, keep_difficult: bool = False):
    """Per-example map: (index, example) → image (S, S, 3) and variable-length boxes in input pixels.

    keep_difficult: keep boxes flagged 'difficult' (evaluation); otherwise they are dropped (training).
    """
    size = int(config.model.input_size)
    mode = config.data.resize
    if mode not in letterbox_lib.RESIZE_MODES:
        raise ConfigError(f'config.data.resize: unknown mode {mode!r}; expected one of {letterbox_lib.RESIZE_MODES}')

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
        if augment_seed is not None:
            seed, epoch, process_index = augment_seed
            key = tf.random.experimental.stateless_fold_in(tf.constant([seed, epoch], tf.int64), process_index)
            key = tf.random.experimental.stateless_fold_in(key, index)
            image, boxes = augment_lib.random_augment(image, boxes, key)
        image, boxes = letterbox_lib.resize_image_and_boxes(image, boxes, size, mode)
        return {
            'image': image,
            'gt_boxes': boxes,
            'gt_classes': classes,
            'gt_difficult': difficult,
            'orig_size': tf.cast(orig_size, tf.int32),
            'valid': tf.constant(1.0, tf.float32),
            'image_id': example['image_id'],
        }

    return prepare


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


def _finish_fn(config, *, batch_size: int, pad: bool):
    """Per-batch map: encodes targets for the whole batch and pads/truncates boxes to max_boxes.

    pad: pad a short batch to `batch_size` examples with valid = 0 (evaluation); otherwise batches are full.
    """
    params = targets_lib.TargetParams.from_config(config)
    max_boxes = int(config.data.max_boxes)
    size = int(config.model.input_size)
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

    return finish


def train_epoch_dataset(
    config, source: tf.data.Dataset, num_examples: int, *, epoch: int, batch_size: int, process_index: int = 0,
    skip_batches: int = 0,
) -> tf.data.Dataset:
    """One epoch of a process's shard `source` (decoded, cached), as batches of `batch_size` (this process's part
    of the global batch).

    Seeded shuffle of the whole shard by (config.train.seed, epoch) (config.data.shuffle_buffer > 0 caps the
    buffer to bound memory on big datasets), augmentation when config.data.augment, letterbox (or stretch),
    target encoding, drop_remainder batching. `skip_batches` drops the first batches exactly (for resume),
    before any augmentation work is spent on them.
    """
    buffer = max(1, num_examples if config.data.shuffle_buffer <= 0 else min(num_examples,
                                                                             int(config.data.shuffle_buffer)))
    seed = int(config.train.seed)
    ds = source.enumerate()  # the index in the shard seeds this example's augmentation
    ds = ds.shuffle(buffer, seed=_shuffle_seed(seed, epoch), reshuffle_each_iteration=False)
    if skip_batches:
        ds = ds.skip(int(skip_batches) * batch_size)  # same as skipping batches: augmentation is per example
    augment_seed = (seed, int(epoch), int(process_index)) if config.data.augment else None
    ds = ds.map(_prepare_fn(config, augment_seed=augment_seed), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = _padded_batch(ds, batch_size, drop_remainder=True)
    ds = ds.map(
        _finish_fn(config, batch_size=batch_size, pad=False), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
    return ds.prefetch(tf.data.AUTOTUNE).with_options(_options(config))


def eval_dataset(config, source: tf.data.Dataset, *, batch_size: int) -> tf.data.Dataset:
    """A whole shard `source` in order, without augmentation; the last partial batch is padded to `batch_size`
    with 'valid' = 0 (and no boxes)."""
    ds = source.enumerate()
    ds = ds.map(_prepare_fn(config, augment_seed=None, keep_difficult=True), num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True)
    ds = _padded_batch(ds, batch_size, drop_remainder=False)
    ds = ds.map(
        _finish_fn(config, batch_size=batch_size, pad=True), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
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
    thread is waited for), so nothing of it keeps running or holds memory.
    """
    holder = [iterable]
    del iterable  # the holder keeps the only reference of this frame
    try:
        yield from holder[0]
    finally:
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
        sources.prepare(config)
        self._splits: dict[str, tuple[tf.data.Dataset, Any]] = {}

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

    def train_epoch(self, epoch: int, batch_size: int, skip_batches: int = 0) -> tf.data.Dataset:
        """One epoch of this process's shard, as batches of `batch_size` (see `train_epoch_dataset`)."""
        source, _ = self.split('train')
        return train_epoch_dataset(self.config, source, self.shard_size('train'), epoch=epoch, batch_size=batch_size,
                                   process_index=self.process_index, skip_batches=skip_batches)

    def train_batches(self, start_step: int, steps_per_epoch: int, batch_size: int) -> Iterator[tuple[int, dict]]:
        """(epoch, host batch) from global step `start_step` on, epoch after epoch, forever; each epoch is
        `steps_per_epoch` batches."""
        epoch, skip = divmod(start_step, steps_per_epoch)
        while True:
            n = 0
            for batch in numpy_iterator(self.train_epoch(epoch, batch_size, skip).take(steps_per_epoch - skip)):
                n += 1
                yield epoch, batch
            if n < steps_per_epoch - skip:
                raise DataError(f'epoch {epoch} of the training split yielded {skip + n} batches of {batch_size}, '
                                f'fewer than the {steps_per_epoch} steps per epoch (config.train.steps_per_epoch?)')
            epoch, skip = epoch + 1, 0

    def eval_batches(self, batch_size: int, split: str = 'test') -> Iterator[dict]:
        """This process's shard of `split` in batches of `batch_size`, padded (valid = 0) to the same number of
        batches on every process, so that steps over a multi-process mesh stay in step."""
        source, _ = self.split(split)
        largest_shard = -(-self.num_examples(split) // self.process_count)
        num_batches = -(-largest_shard // batch_size)
        n, last = 0, None
        for batch in numpy_iterator(eval_dataset(self.config, source, batch_size=batch_size)):
            n, last = n + 1, batch
            yield batch
        if last is None and num_batches:
            raise DataError(f'process {self.process_index} holds no example of the {split} split: use fewer '
                            'processes than examples')
        for _ in range(num_batches - n):
            yield _blank_batch(last)
