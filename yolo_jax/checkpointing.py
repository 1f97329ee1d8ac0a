"""Orbax checkpoints: the latest (for exact resume) and the best by validation loss, in one manager.

Layout: `workdir/checkpoints/<step>/{state, meta}`. `state` is the whole TrainState (params, batch_stats,
optimizer state, step, RNG); `meta` is JSON (epoch, data position, validation metrics, config). Orbax writes
each checkpoint to a temporary directory and renames it when complete, so a run killed mid-save leaves no
broken checkpoint behind (the half-written temporary is ignored and cleaned up by the next run).
"""

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

BEST_METRIC = 'val_total'


class _EveryEpoch(policies.PreservationPolicy):
    """Preserves every checkpoint saved with validation metrics (the end-of-epoch ones)."""

    def should_preserve(self, checkpoints, *, context) -> list[bool]:
        return [c.metrics is not None for c in checkpoints]


def create_manager(workdir: str | Path, *, save_best_only: bool = True) -> ocp.CheckpointManager:
    """Keeps the latest checkpoint and the best one (lowest `val_total`), or every epoch's when
    `save_best_only` is False. Checkpoints saved without metrics (mid-epoch) survive only while latest."""
    if save_best_only:
        best = policies.BestN(
            get_metric_fn=lambda m: m[BEST_METRIC],
            reverse=True,  # BestN keeps the last n after sorting: descending order keeps the lowest loss
            n=1,
            keep_checkpoints_without_metrics=False,
        )
    else:
        best = _EveryEpoch()
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policies.AnyPreservationPolicy([policies.LatestN(n=1), best]),
        cleanup_tmp_directories=True,
        create=True,
    )
    directory = Path(workdir).absolute() / 'checkpoints'
    return ocp.CheckpointManager(directory, options=options, item_names=('state', 'meta'))


def save(manager: ocp.CheckpointManager, step: int, state: Any, meta: dict, metrics: dict | None = None) -> None:
    """Saves asynchronously; call `manager.wait_until_finished()` before exiting."""
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    manager.save(step, args=args, metrics=metrics, force=True)


def best_step(manager: ocp.CheckpointManager) -> int | None:
    """The step of the checkpoint with the lowest validation loss (None if none has metrics)."""
    scored = []
    for step in manager.all_steps():
        meta = restore_meta(manager, step)
        if meta.get('metrics') and BEST_METRIC in meta['metrics']:
            scored.append((meta['metrics'][BEST_METRIC], step))
    return min(scored)[1] if scored else None


def restore_meta(manager: ocp.CheckpointManager, step: int) -> dict:
    return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']


def restore(manager: ocp.CheckpointManager, step: int, target: Any) -> tuple[Any, dict]:
    """Restores (state, meta) at `step` into the structure (and shardings) of `target`."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    out = manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
    )
    return out['state'], out['meta']
