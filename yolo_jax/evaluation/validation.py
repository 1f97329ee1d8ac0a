"""The validation-loss evaluator: the training loss (giou, conf, prob, total) per example on the eval split."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from yolo_jax.evaluation.evaluator import Result
from yolo_jax.evaluation.runner import mean_losses
from yolo_jax.progress import format_val_line


class ValidationLoss:
    """Mean validation losses of a TrainState over the eval batches, through the run's compiled eval step.

    parallel: the run's `parallel.Parallel` (its eval step, already bound to the loss settings).
    batches: () -> this process's eval batches (`input_pipeline.Data.eval_batches`), called once per run; the
      step's sums span every process's shard.
    It reads no config.eval field. Its result's scalars (and metrics) are {'giou', 'conf', 'prob', 'total'};
    'total' ranks the checkpoints.
    """

    kind = 'val'

    def __init__(self, parallel: Any, batches: Callable[[], Iterable[dict]]):
        self.parallel, self.batches = parallel, batches

    def run(self, state: Any) -> Result:
        losses = mean_losses(self.parallel, state, self.batches())
        return Result(self.kind, losses, format_val_line(losses), metrics=losses)
