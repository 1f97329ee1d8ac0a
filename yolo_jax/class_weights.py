"""Class weights of the loss for rare classes: config.loss.class_weights.

  'none'               the reference's loss, bit for bit (the default).
  'inverse_frequency'  w_c = N / (K n_c) from the train split's box counts: n_c boxes of class c (training targets:
                       'difficult' boxes excluded), N = sum_c n_c, K = the classes with n_c > 0. The weighted mean
                       over boxes is 1 (sum_c n_c w_c / N = 1), so the loss keeps its scale and a class with half
                       the average count weighs 2. A class without boxes gets 1 (it is never a target).
  'w0,w1,...'          C non-negative numbers, used as given (a string, as on the command line; a config file
                       may also set a tuple of C numbers where the field was created as one).

loss.py applies the weight of a positive cell's class (its class vector dotted with the weights) to that cell's
box, objectness and class terms; background terms stay unweighted. Validation uses the same loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from yolo_jax.errors import ConfigError

MODES = ('none', 'inverse_frequency')
FIELD = 'config.loss.class_weights'


def parse(value: Any, num_classes: int) -> str | tuple[float, ...]:
    """'none', 'inverse_frequency' or a tuple of `num_classes` floats >= 0; ConfigError naming the field
    otherwise. Needs no data: runs before any is read."""
    if isinstance(value, str):
        text = value.strip()
        if text in MODES:
            return text
        parts = [p.strip() for p in text.strip('()[]').split(',') if p.strip()]
        try:
            weights = tuple(float(p) for p in parts)
        except ValueError:
            raise ConfigError(f'{FIELD}={value!r}: expected one of {MODES} or {num_classes} comma-separated '
                              'weights, one per class') from None
    elif isinstance(value, Sequence):
        try:
            weights = tuple(float(w) for w in value)
        except (TypeError, ValueError):
            raise ConfigError(f'{FIELD}={value!r}: expected {num_classes} numbers, one per class') from None
    else:
        raise ConfigError(f'{FIELD}={value!r}: expected one of {MODES} or {num_classes} weights, one per class')
    if len(weights) != num_classes:
        raise ConfigError(f'{FIELD}={value!r}: {len(weights)} weights for {num_classes} classes (one per class)')
    if not all(np.isfinite(w) and w >= 0 for w in weights):
        raise ConfigError(f'{FIELD}={value!r}: weights must be finite and >= 0')
    return weights


def inverse_frequency(counts: Sequence[int]) -> tuple[float, ...]:
    """w_c = N / (K n_c) for the classes with boxes, 1 for the others (module doc)."""
    n = np.asarray(counts, np.float64)
    present = n > 0
    if not present.any():
        raise ConfigError(f"{FIELD}='inverse_frequency': the train split has no boxes to count")
    w = np.where(present, n.sum() / (present.sum() * np.maximum(n, 1)), 1.0)
    return tuple(float(x) for x in w)


def train_box_counts(data: Any, num_classes: int) -> np.ndarray:
    """(C,) boxes per class of the train split that training uses (not 'difficult'), over every process's shard
    (a pass over this process's shard; with config.data.cache it fills the cache the first epoch reads)."""
    import tensorflow as tf  # noqa: PLC0415  (the input pipeline's)
    import tensorflow_datasets as tfds  # noqa: PLC0415

    def kept(ex):
        classes = tf.reshape(tf.cast(ex['classes'], tf.int64), [-1])
        if 'difficult' in ex:
            classes = tf.boolean_mask(classes, tf.logical_not(tf.reshape(tf.cast(ex['difficult'], tf.bool), [-1])))
        return classes

    counts = np.zeros(num_classes, np.int64)
    for classes in tfds.as_numpy(data.split('train')[0].map(kept)):
        known = classes[(classes >= 0) & (classes < num_classes)]
        counts += np.bincount(known, minlength=num_classes)
    if data.process_count > 1:
        from jax.experimental import multihost_utils  # noqa: PLC0415

        counts = np.asarray(multihost_utils.process_allgather(counts)).sum(axis=0)
    return counts


def resolve(value: Any, data: Any, class_names: Sequence[str], log: Any) -> tuple[float, ...] | None:
    """The weight vector a run's loss uses (None for 'none'); counts the train split for 'inverse_frequency' and
    logs counts and weights through `log` (a printf-style logger)."""
    mode = parse(value, len(class_names))
    if mode == 'none':
        return None
    if mode == 'inverse_frequency':
        counts = train_box_counts(data, len(class_names))
        weights = inverse_frequency(counts)
        log('Class weights (inverse frequency of %d train boxes): %s', int(counts.sum()),
            ', '.join(f'{name} {int(n)} boxes x{w:.3g}' for name, n, w in zip(class_names, counts, weights,
                                                                            strict=True)))
        return weights
    log('Class weights (config.loss.class_weights): %s',
        ', '.join(f'{name} x{w:.3g}' for name, w in zip(class_names, mode, strict=True)))
    return mode
