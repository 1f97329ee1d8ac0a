"""Counters of config.train and config.data checked before anything is built or compiled.

A zero or negative count, interval or size would otherwise surface late: `log_every_steps=0` and
`eval_every_epochs=0` as a ZeroDivisionError after the step compiled, `batch_size=0` as one inside the data
set's split, `epochs=0` as a run that exits 0 having done nothing. `check_train_config` raises one ConfigError
naming the field, its value and what it must be, in the run's first second.
"""

from __future__ import annotations

import ml_collections

from yolo_jax.errors import ConfigError

# (section, field, smallest valid value, what the field counts): 0 is valid only where it means "off" or "auto".
_AT_LEAST = (
    ('train', 'batch_size', 1, 'examples per global batch'),
    ('train', 'eval_batch_size', 1, 'examples per global eval batch'),
    ('train', 'epochs', 1, 'epochs to train (a finished run resumes and stops at once)'),
    ('train', 'warmup_epochs', 0, 'warm-up epochs (0 = none)'),
    ('train', 'log_every_steps', 1, 'steps between log lines'),
    ('train', 'eval_every_epochs', 1, 'epochs between validations (the last epoch always validates)'),
    ('train', 'map_every_epochs', 0, 'epochs between mAP reports (0 = at the end only)'),
    ('train', 'checkpoint_every_steps', 0, 'steps between mid-epoch checkpoints (0 = epoch ends only)'),
    ('train', 'bn_recalibration_batches', 0, 'BatchNorm recalibration batches (0 = off)'),
    ('train', 'multi_scale_every_steps', 1, 'steps between multi-scale size changes'),
    ('train', 'grad_accum_steps', 1, 'batches per optimizer update (1 = no accumulation)'),
    ('data', 'num_train', 1, 'generated MNIST train images'),
    ('data', 'num_test', 1, 'generated MNIST test images'),
    ('data', 'image_size', 1, 'side of the generated MNIST canvas in pixels'),
    ('data', 'max_bbox_per_scale', 1, "rows of each scale's ground-truth list"),
    ('data', 'max_boxes', 1, 'ground-truth boxes kept per image'),
    ('data', 'num_threads', 0, 'tf.data threads (0 = every CPU)'),
)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_train_config(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError for the first counter of config.train / config.data that is not an integer in its range
    (see _AT_LEAST); `config.train.steps_per_epoch` must be -1 (one pass over the split) or >= 1."""
    for section, field, minimum, meaning in _AT_LEAST:
        value = config[section][field]
        if not _is_int(value) or value < minimum:
            raise ConfigError(f'config.{section}.{field}={value!r}: expected an integer >= {minimum} ({meaning})')
    spe = config.train.steps_per_epoch
    if not _is_int(spe) or (spe < 1 and spe != -1):
        raise ConfigError(f'config.train.steps_per_epoch={spe!r}: expected -1 (one pass over the training split) '
                          'or an integer >= 1')
