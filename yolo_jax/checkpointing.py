"""Orbax checkpoints: the latest (for exact resume) and the best by validation loss, in one manager.

Layout: `workdir/checkpoints/<step>/{state, meta}`. `state` is the whole TrainState (step, params, batch_stats,
optimizer state, the EMA of the weights when config.train.ema_decay > 0); `meta` is JSON (epoch, step, validation
metrics, the model config, the detection spec, whether the state has an EMA). Inference restores only params and
batch_stats (`load_model`, an orbax partial restore; the EMA's when the checkpoint has one), so evaluating a
checkpoint never depends on training-only settings such as the optimizer or the freeze policy. Orbax writes
each checkpoint to a temporary directory and renames it when complete, so a run killed mid-save leaves no
broken checkpoint behind (the half-written temporary is ignored and cleaned up by the next run). A step folder
damaged otherwise (an item deleted, e.g. by a cleanup killed part-way) is skipped with a warning by eval,
detect, export and init_from, and set aside by a resumed run, which restores the newest complete step.
"""

import json
import time
from pathlib import Path
from typing import Any

import flax
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint import checkpoint_managers as policies

from yolo_jax.errors import DataError, MissingFileError
from yolo_jax.model_source import checkpoint_location, no_checkpoint, no_checkpoint_directory

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


def run_meta(config: Any, spec: Any) -> dict:
    """What every checkpoint of a run records beside its state: config.model and the DetectionSpec (so eval,
    detect, export and init_from need no training flags), and the training settings that shape the saved state
    (an EMA, gradient accumulation's optimizer state), which resume checks."""
    return {'model': json.loads(json.dumps(config.model.to_dict())), 'spec': spec.to_json(),
            'ema': config.train.ema_decay > 0, 'grad_accum_steps': config.train.grad_accum_steps}


def save(manager: ocp.CheckpointManager, step: int, state: Any, meta: dict, metrics: dict | None = None) -> None:
    """Saves asynchronously; call `manager.wait_until_finished()` before exiting."""
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    manager.save(step, args=args, metrics=metrics, force=True)


def damage(directory: str | Path, step: int) -> str | None:
    """None when `directory/<step>` holds both items complete, else what is missing or unreadable: what a run
    killed mid-cleanup, a partial copy or a hand-deleted item leaves (orbax's own temporaries are never steps)."""
    folder = Path(directory) / str(step)
    for item, marker in (('state', '_METADATA'), ('meta', 'metadata')):
        if not (folder / item / marker).is_file():
            return f'{item}/{marker} is missing'
    try:
        json.loads((folder / 'meta' / 'metadata').read_text())
    except (OSError, ValueError) as e:
        return f'meta/metadata is unreadable ({e})'
    return None


def complete_steps(manager: ocp.CheckpointManager) -> list[int]:
    """manager.all_steps() ascending, without damaged ones (see `damage`), each skipped with a warning."""
    steps = []
    for step in sorted(manager.all_steps()):
        why = damage(manager.directory, step)
        if why:
            logging.warning('skipping damaged checkpoint %s: %s', Path(manager.directory) / str(step), why)
        else:
            steps.append(step)
    return steps


def set_aside_damaged(workdir: str | Path) -> list[Path]:
    """Moves damaged step folders of workdir/checkpoints to workdir/checkpoints_damaged/ (with a warning), so a
    resumed run restores the newest complete step and can save those steps again. Returns the new paths. With
    several processes process 0 moves them while the others wait (the workdir is shared)."""
    directory = Path(workdir).absolute() / 'checkpoints'
    moved = []
    folders = sorted(directory.iterdir()) if directory.is_dir() and jax.process_index() == 0 else []
    for folder in folders:
        why = damage(directory, int(folder.name)) if folder.name.isdigit() and folder.is_dir() else None
        if why:
            target = directory.parent / 'checkpoints_damaged' / f'{folder.name}-{time.strftime("%Y%m%d-%H%M%S")}'
            target.parent.mkdir(exist_ok=True)
            folder.rename(target)
            logging.warning('damaged checkpoint %s (%s) moved to %s: resuming from the newest complete one (delete '
                            'it when done)', folder, why, target)
            moved.append(target)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils  # noqa: PLC0415

        multihost_utils.sync_global_devices('damaged checkpoints set aside')
    return moved


def best_step(manager: ocp.CheckpointManager, steps: list[int] | None = None) -> int | None:
    """The step of the complete checkpoint (of `steps`, default `complete_steps`) with the lowest validation loss
    (None if none has metrics)."""
    scored = []
    for step in complete_steps(manager) if steps is None else steps:
        meta = restore_meta(manager, step)
        if meta.get('metrics') and BEST_METRIC in meta['metrics']:
            scored.append((meta['metrics'][BEST_METRIC], step))
    return min(scored)[1] if scored else None


def restore_meta(manager: ocp.CheckpointManager, step: int) -> dict:
    return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']


def inference_step(manager: ocp.CheckpointManager) -> int | None:
    """The checkpoint to run inference from: the best by validation loss, else the latest complete one (None if
    none); damaged steps are skipped with a warning."""
    complete = complete_steps(manager)
    step = best_step(manager, complete)
    return complete[-1] if step is None and complete else step


def load_model(path: str | Path, what: str = 'checkpoint') -> tuple[dict, int, dict]:
    """({'params', 'batch_stats'} as NumPy arrays, step, meta) of a yolo_jax checkpoint, for inference or transfer.

    `path` is a workdir (its best checkpoint by validation loss, else the latest), its checkpoints/ directory or
    one checkpoints/<step>. Restores only params and batch_stats (orbax partial restore) in the shapes the
    checkpoint's own metadata records: no optimizer, no training settings, no target model needed. A run trained
    with config.train.ema_decay > 0 serves its EMA weights (those it validated and chose the best checkpoint by),
    so eval, detect, export and init_from all read those. `what` names the setting the path came from in errors
    (e.g. 'config.train.init_from').
    """
    directory, step = checkpoint_location(path)
    if not directory.is_dir():
        raise no_checkpoint_directory(what, directory)
    options = ocp.CheckpointManagerOptions(read_only=True, create=False)
    handlers = {'state': ocp.PyTreeCheckpointHandler(), 'meta': ocp.JsonCheckpointHandler()}
    with ocp.CheckpointManager(directory, options=options, item_handlers=handlers) as manager:
        steps = manager.all_steps()
        if not steps:
            raise no_checkpoint(what, directory)
        if step is None:
            step = inference_step(manager)
            if step is None:
                raise MissingFileError(f'{what}: no complete checkpoint in {directory} (every step is damaged: '
                                       'train again, or pass --weights)')
        elif step not in steps:
            raise MissingFileError(f'{what}: no checkpoint at step {step} in {directory}')
        elif why := damage(directory, step):
            raise DataError(f'{what}: checkpoint {directory / str(step)} is damaged: {why}')
        metadata = manager.item_metadata(step)['state']
        tree = getattr(metadata, 'tree', metadata)
        ema = tree.get('ema') is not None  # None (EMA off) or absent (older checkpoints)
        source = tree['ema'] if ema else tree
        sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        abstract = {k: jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), source[k])
                    for k in ('params', 'batch_stats')}
        abstract = {'ema': abstract} if ema else abstract
        restore_args = ocp.checkpoint_utils.construct_restore_args(abstract)
        args = ocp.args.PyTreeRestore(abstract, restore_args=restore_args, partial_restore=True)
        restored = manager.restore(step, args=ocp.args.Composite(state=args, meta=ocp.args.JsonRestore()))
    state = restored['state']['ema'] if ema else restored['state']
    variables = jax.tree.map(np.asarray, {k: state[k] for k in ('params', 'batch_stats')})
    return variables, step, restored['meta']


def restore(manager: ocp.CheckpointManager, step: int, target: Any) -> tuple[Any, dict]:
    """Restores (state, meta) at `step` into the structure (and shardings) of `target`.

    A field `target` leaves None (e.g. TrainState.ema with the EMA off) may be missing on disk, so checkpoints
    written before the field existed restore too; a field `target` holds must be on disk.
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    path = Path(manager.directory) / str(step) / 'state'
    metadata = ocp.PyTreeCheckpointHandler().metadata(path)
    saved = set(getattr(metadata, 'tree', metadata))
    if any(v is None and k not in saved for k, v in flax.serialization.to_state_dict(target).items()):
        # A partial restore, by a checkpointer of its own: the manager keeps its handler for StandardSave.
        restore_args = ocp.checkpoint_utils.construct_restore_args(abstract)
        with ocp.PyTreeCheckpointer() as checkpointer:
            state = checkpointer.restore(path, args=ocp.args.PyTreeRestore(abstract, restore_args=restore_args,
                                                                              partial_restore=True))
        return state, restore_meta(manager, step)
    out = manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
    )
    return out['state'], out['meta']
