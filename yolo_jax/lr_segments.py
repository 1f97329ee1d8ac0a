"""Training longer after a run finished: the learning rate's segments, recorded in every checkpoint.

A run's schedule is a list of segments `[(first_epoch, end_epoch), ...]` (epochs, half-open), saved in each
checkpoint's meta as 'lr_segments' with the run's planned 'total_steps'. A fresh run has one segment,
`[(0, epochs)]`: the reference's warm-up + cosine (steps.create_learning_rate_fn). Raising config.train.epochs
from N to M on a workdir whose run FINISHED (its latest checkpoint's step == its planned total) appends the
segment (N, M): the extra epochs run a new cosine, without warm-up, from

    X = lr_end + config.train.extend_lr_fraction * (lr_init - lr_end)

down to lr_end. In optimizer updates (1-based k, as the reference counts; a = the update count at the segment's
start, b = at its end, both int(epoch * updates_per_epoch) as the first segment's total):

    lr(k) = lr_end + 0.5 (X - lr_end) (1 + cos(pi (k - a) / (b - a)))      for a < k <= b

so k = a (the finished run's last update) would be X and the segment's last update is exactly lr_end, as the
first segment reaches lr_init at the end of warm-up and lr_end at its last update. Adam's moments and the step
count continue (metrics.jsonl's steps keep rising). Extending an extension appends another segment. The schedule
is a pure function of (config, the recorded segments), so a run killed in the middle of an extension resumes
exactly.

Other cases: a checkpoint without a record (written before it existed) resumes as before, over the config's
epochs; a run that has not finished must resume with the epochs it planned (ConfigError otherwise: a changed
total would bend the cosine it is half way down); lowering epochs below a finished run's is a ConfigError.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import jax.numpy as jnp
import ml_collections

from yolo_jax.errors import ConfigError

Segment = tuple[int, int]  # (first epoch, end epoch), half-open


@dataclasses.dataclass(frozen=True)
class Plan:
    """The run's segments and whether this start extends a finished run (then `finished_epochs` is its N)."""

    segments: list[Segment]
    extends: bool = False
    finished_epochs: int = 0


def check_extend_lr_fraction(fraction: float) -> float:
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0.0 <= fraction <= 1.0:
        raise ConfigError(f'config.train.extend_lr_fraction={fraction!r}: expected a number in [0, 1] (the '
                          'extension starts at lr_end + fraction * (lr_init - lr_end))')
    return float(fraction)


def extension_start_lr(train_config: ml_collections.ConfigDict) -> float:
    """X = lr_end + extend_lr_fraction * (lr_init - lr_end): where an extension's cosine starts."""
    t = train_config
    return t.lr_end + check_extend_lr_fraction(t.extend_lr_fraction) * (t.lr_init - t.lr_end)


def plan(meta: dict | None, epochs: int, directory: str | Path = 'the workdir') -> Plan:
    """The segments of a run starting with config.train.epochs = `epochs` from the latest checkpoint's `meta`
    (None: a fresh run). Raises ConfigError for epochs a checkpoint cannot continue with (see the module doc)."""
    if meta is None or 'lr_segments' not in meta:
        return Plan([(0, epochs)])
    saved = [(int(a), int(b)) for a, b in meta['lr_segments']]
    planned, step, total = saved[-1][1], int(meta['step']), int(meta['total_steps'])
    if step < total:
        if epochs != planned:
            raise ConfigError(
                f'config.train.epochs={epochs}: the run in {directory} planned {planned} epochs and stopped at step '
                f'{step} of {total}. Resume it with config.train.epochs={planned}; once it has finished, a larger '
                'value trains longer (README: Train longer). Or use another --workdir')
        return Plan(saved)
    if epochs < planned:
        raise ConfigError(
            f'config.train.epochs={epochs}: the run in {directory} already finished {planned} epochs (step {step}); '
            f'training cannot be undone. Use config.train.epochs >= {planned} (more trains longer), another '
            '--workdir, or config.train.init_from=WORKDIR to fine-tune its weights')
    if epochs == planned:
        return Plan(saved)
    return Plan([*saved, (planned, epochs)], extends=True, finished_epochs=planned)


def cosine(k, a: int, b: int, start: float, end: float):
    """end + 0.5 (start - end)(1 + cos(pi (k - a) / (b - a))) for 1-based update k, progress clipped to [0, 1]."""
    progress = jnp.clip((k - a) / max(b - a, 1), 0.0, 1.0)
    return end + 0.5 * (start - end) * (1.0 + jnp.cos(math.pi * progress))


def segmented(first: Callable, bounds: Sequence[int], start: float, end: float) -> Callable:
    """The schedule over optax's 0-based update count: `first` (the reference's, taking the 1-based k) up to
    update bounds[0], then a `cosine` from `start` to `end` over each (bounds[i], bounds[i + 1]]."""

    def lr(count):
        k = count + 1
        out = first(k)
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            out = jnp.where(k > a, cosine(k, a, b, start, end), out)
        return out

    return lr
