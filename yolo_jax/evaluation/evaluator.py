"""What every evaluator returns and offers: `Result` and the `Evaluator` protocol.

An evaluator is built once per run from the config (its constructor checks every field it reads, so a bad one
fails before the first training step) and then run on the weights as often as the run asks: by the training
loop's periodic actions (`train.py`) and by `--mode=eval` (`command.py`), through the same `run` code. It returns a
`Result`; the caller decides where each part goes (console, TensorBoard, metrics.jsonl, JSON files).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import numpy as np


@dataclasses.dataclass(frozen=True)
class Result:
    """One evaluation's outcome.

    kind: the record's 'kind' in metrics.jsonl ('val', 'map').
    scalars: {name: float} logged as TensorBoard val/<name> and in the metrics.jsonl record.
    summary: one console line.
    details: longer text (e.g. the per-class table), shown with the final report and by --mode=eval; '' if none.
    metrics: everything computed (nested, JSON-able after NaN → None), e.g. for metrics.json.
    images: {tag: (N, H, W, 3) uint8} for TensorBoard.
    artifacts: {name: JSON-able value} larger outputs (e.g. 'detections'), written by --mode=eval as name.json.
    """

    kind: str
    scalars: dict[str, float]
    summary: str
    details: str = ''
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    images: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    artifacts: dict[str, Any] = dataclasses.field(default_factory=dict)


class Evaluator(Protocol):
    """Built once from the config; `run(state)` evaluates a TrainState's weights (the EMA's when the run keeps
    one: pass `steps.eval_state(state)`). Every process calls `run` (results span all processes' shards)."""

    kind: str

    def run(self, state: Any) -> Result: ...
