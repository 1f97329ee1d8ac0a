"""Training and evaluation loop: `train_and_evaluate(config, workdir)`.

Pure pieces (used by tests and notebooks): `create_learning_rate_fn`, `create_optimizer`,
`create_train_state`, `train_step`, `eval_step`. The loop around them handles data, parallelism
(parallel.py), checkpoints (checkpointing.py), logging and exact resume.
"""

import functools
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import metric_writers

from yolo_jax import checkpointing
from yolo_jax.loss import COMPONENTS, loss_kwargs, yolo_loss
from yolo_jax.models import create_model
from yolo_jax.parallel import PMAP_AXIS, Parallel, check_batch_size
from yolo_jax.progress import Progress, format_train_line, format_val_line

# The keys of a pipeline batch that the compiled steps consume (the rest stays on the host).
STEP_KEYS = ('image', 'labels', 'bboxes', 'valid')


class NonFiniteLossError(FloatingPointError):
    """Raised when a step's loss or gradient is NaN or inf."""


@flax.struct.dataclass
class TrainState:
    """Everything a training run needs to continue exactly: a pytree saved whole by orbax."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array  # raw uint32 key data, so the state stays a plain array pytree
    apply_fn: Callable = flax.struct.field(pytree_node=False)
    tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

    @property
    def variables(self) -> dict:
        return {'params': self.params, 'batch_stats': self.batch_stats}


def create_learning_rate_fn(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
    """The reference's warm-up + cosine schedule, indexed by optax's 0-based update count.

    The reference counts steps from 1: update k (1-based) uses lr(k) = k / warmup * lr_init during warm-up,
    then lr_end + 0.5 (lr_init - lr_end)(1 + cos(pi (k - warmup) / (total - warmup))). optax counts from 0,
    hence `count + 1`. (Upstream runs its very first update at Adam's default 1e-3 because it assigns the lr
    after the update; we use lr(1), the value its formula intends.)
    """
    t = config.train
    warmup = int(t.warmup_epochs * steps_per_epoch)
    total = max(int(t.epochs * steps_per_epoch), warmup + 1)
    sched = optax.warmup_cosine_decay_schedule(0.0, t.lr_init, warmup, decay_steps=total, end_value=t.lr_end)
    return lambda count: sched(count + 1)


def trainable_mask(params: Any, freeze: str, output_convs: tuple[str, ...]) -> Any:
    """True for parameters that train under `config.train.freeze` ('none', 'backbone', 'all_but_heads')."""
    if freeze not in ('none', 'backbone', 'all_but_heads'):
        raise ValueError(f"config.train.freeze: unknown policy {freeze!r}; use 'none', 'backbone' or 'all_but_heads'")

    def trainable(path, _):
        names = [getattr(k, 'key', str(k)) for k in path]
        if freeze == 'backbone':
            return names[0] != 'backbone'
        if freeze == 'all_but_heads':
            return names[0] == 'head' and names[1] in output_convs
        return True

    return jax.tree_util.tree_map_with_path(trainable, params)


def create_optimizer(
    config: ml_collections.ConfigDict, lr_fn: optax.Schedule, params: Any, output_convs: tuple[str, ...]
) -> optax.GradientTransformation:
    """Adam (epsilon config.train.adam_eps) with optional gradient clipping and freezing."""
    tx = optax.adam(lr_fn, eps=config.train.adam_eps)
    if config.train.grad_clip_norm > 0:
        tx = optax.chain(optax.clip_by_global_norm(config.train.grad_clip_norm), tx)
    if config.train.freeze != 'none':
        mask = trainable_mask(params, config.train.freeze, output_convs)
        labels = jax.tree.map(lambda m: 'train' if m else 'frozen', mask)
        tx = optax.multi_transform({'train': tx, 'frozen': optax.set_to_zero()}, labels)
    return tx


def create_train_state(
    config: ml_collections.ConfigDict, model: Any, rng: jax.Array, lr_fn: optax.Schedule, variables: dict | None = None
) -> TrainState:
    """A fresh state (or one around given `variables`, e.g. transferred Darknet weights)."""
    init_rng, state_rng = jax.random.split(rng)
    if variables is None:
        size = config.model.input_size
        x = jnp.zeros((1, size, size, 3), jnp.float32)
        variables = jax.jit(lambda r: model.init(r, x, train=False))(init_rng)
    tx = create_optimizer(config, lr_fn, variables['params'], model.output_convs)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=variables['params'],
        batch_stats=variables['batch_stats'],
        opt_state=tx.init(variables['params']),
        rng=jax.random.key_data(state_rng),
        apply_fn=model.apply,
        tx=tx,
    )


def _losses(params, batch_stats, apply_fn, batch, kw, train: bool, weights=None):
    variables = {'params': params, 'batch_stats': batch_stats}
    if train:
        outputs, updates = apply_fn(variables, batch['image'], train=True, mutable=['batch_stats'])
        new_stats = updates['batch_stats']
    else:
        outputs, new_stats = apply_fn(variables, batch['image'], train=False), batch_stats
    total, metrics = yolo_loss(outputs, batch['labels'], batch['bboxes'], weights=weights, **kw)
    return total, (metrics, new_stats)


def train_step(
    state: TrainState,
    batch: dict,
    *,
    loss_kw: dict,
    lr_fn: optax.Schedule,
    nan_at_step: int = -1,
    axis_name: str | None = None,
) -> tuple[TrainState, dict]:
    """One Adam update on a batch; returns (state, metrics).

    A non-finite loss or gradient leaves the state unchanged and sets metrics['finite'] = 0: the host stops
    the run on seeing it. `nan_at_step` >= 0 poisons the loss at that step (for testing the guard).
    """

    def loss_fn(params):
        total, aux = _losses(params, state.batch_stats, state.apply_fn, batch, loss_kw, train=True)
        total = jnp.where(state.step == nan_at_step, jnp.nan, total)
        return total, aux

    (total, (metrics, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    if axis_name is not None:
        grads = jax.lax.pmean(grads, axis_name)
        metrics = jax.lax.pmean(metrics, axis_name)
        total = jax.lax.pmean(total, axis_name)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(total) & jnp.isfinite(grad_norm)
    updates, new_opt = state.tx.update(grads, state.opt_state, state.params)
    new = state.replace(
        step=state.step + 1,
        params=optax.apply_updates(state.params, updates),
        batch_stats=new_stats,
        opt_state=new_opt,
    )
    # Select, don't branch: keeps the step a single straight-line program.
    new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, state)
    metrics = dict(metrics, total=total, grad_norm=grad_norm, lr=lr_fn(state.step), finite=finite.astype(jnp.float32))
    return new, metrics


def eval_step(state: TrainState, batch: dict, *, loss_kw: dict, axis_name: str | None = None) -> dict:
    """Validation (BatchNorm in inference mode): weighted loss sums and the example count."""
    _, (metrics, _) = _losses(state.params, state.batch_stats, state.apply_fn, batch, loss_kw, False, batch['valid'])
    n = jnp.sum(batch['valid'])
    sums = {k: v * n for k, v in metrics.items()}
    sums['count'] = n
    if axis_name is not None:
        sums = jax.lax.psum(sums, axis_name)
    return sums


def batch_stats_step(state: TrainState, batch: dict, *, momentum: float) -> Any:
    """This batch's BatchNorm statistics under the current params (per layer 'mean' and 'var').

    Runs BatchNorm in training mode from zero running statistics: one update leaves (1 - momentum) * batch stat.
    """
    zeros = jax.tree.map(jnp.zeros_like, state.batch_stats)
    _, updates = state.apply_fn({'params': state.params, 'batch_stats': zeros}, batch['image'], train=True,
                                mutable=['batch_stats'])
    return jax.tree.map(lambda x: x / (1.0 - momentum), updates['batch_stats'])


def recalibrate_batch_norm(parallel: Parallel, state: TrainState, dataset, num_batches: int) -> TrainState:
    """Replaces the running BatchNorm statistics by their average over `num_batches` training batches at the
    current weights ("precise BN", Wu & Johnson 2021). The exponential moving average lags weights that move
    fast (high learning rates, thin layers): in a quarter-width run its validation loss was 3-6x the loss with
    recalibrated statistics. Deterministic, so exact resume is unaffected."""
    total, n = None, 0
    for batch in dataset.take(num_batches).as_numpy_iterator():
        stats = parallel.stats(state, {k: batch[k] for k in STEP_KEYS})
        total = stats if total is None else jax.tree.map(jnp.add, total, stats)
        n += 1
    if n == 0:
        return state
    return state.replace(batch_stats=jax.tree.map(lambda x: x / n, total))


def evaluate(parallel: Parallel, state: TrainState, dataset) -> dict[str, float]:
    """Mean validation losses over a dataset (padding examples excluded)."""
    totals: dict[str, float] = {}
    for batch in dataset.as_numpy_iterator():
        sums = parallel.eval(state, {k: batch[k] for k in STEP_KEYS})
        for k, v in jax.device_get(sums).items():
            totals[k] = totals.get(k, 0.0) + float(v)
    count = max(totals.pop('count', 0.0), 1.0)
    return {k: v / count for k, v in totals.items()}


class MetricsFile:
    """Appends one JSON object per line to workdir/metrics.jsonl (easy to plot; survives restarts)."""

    def __init__(self, workdir: Path, enabled: bool):
        self.path, self.enabled = workdir / 'metrics.jsonl', enabled

    def write(self, **record) -> None:
        if self.enabled:
            with self.path.open('a') as f:
                f.write(json.dumps(record) + '\n')


def detection_report(config, model, state: TrainState, eval_ds, writer, step: int, num_images: int = 8) -> dict:
    """VOC/COCO mAP of the current weights on the eval split, and a grid of test images with predicted boxes
    (written to TensorBoard). Single process: evaluates this process's shard."""
    from yolo_jax import evaluation, inference, visualize  # noqa: PLC0415
    from yolo_jax.data.letterbox import letterbox_boxes  # noqa: PLC0415

    variables = jax.device_get(state.variables)
    result = evaluation.compute_map(config, variables, eval_ds, model=model)
    batch = next(eval_ds.take(1).as_numpy_iterator())
    det = jax.device_get(inference.predict(model, variables, batch['image'], batch['orig_size'], config))
    names = inference.class_names(config)
    tiles = []
    for i in range(min(num_images, len(batch['image']))):
        keep, (h, w) = det.valid[i], batch['orig_size'][i]
        boxes = letterbox_boxes(det.boxes[i][keep], int(h), int(w), config.model.input_size, config.data.resize)
        tiles.append(visualize.draw_detections(batch['image'][i], boxes, det.classes[i][keep], det.scores[i][keep],
                                               names))
    writer.write_images(step, {'detections': visualize.grid(tiles, ncols=4)[None]})
    return result


def _check_finite(metrics: dict, step: int) -> None:
    if metrics['finite'] > 0:
        return
    bad = [k for k in (*COMPONENTS, 'total', 'grad_norm') if not np.isfinite(metrics[k])]
    raise NonFiniteLossError(
        f'non-finite value at step {step} in {", ".join(bad) or "the loss"} '
        f'({", ".join(f"{k}={metrics[k]}" for k in (*COMPONENTS, "grad_norm"))}); the update was skipped and '
        'the run stopped. The last good checkpoint is kept in the workdir. Try a lower config.train.lr_init '
        'or config.train.grad_clip_norm > 0.'
    )


def setup_distributed(config: ml_collections.ConfigDict) -> None:
    """Multi-host: connect the processes before anything touches the devices."""
    if config.train.distributed:
        jax.distributed.initialize()


def build_model_and_state(config: ml_collections.ConfigDict, steps_per_epoch: int, parallel_mode: str):
    """Model (with BatchNorm synchronised under pmap), schedule and a fresh train state."""
    model = create_model(config.model, bn_axis_name=PMAP_AXIS if parallel_mode == 'pmap' else None)
    lr_fn = create_learning_rate_fn(config, steps_per_epoch)
    variables = None
    if config.train.init_from:
        from yolo_jax import transfer  # noqa: PLC0415  (optional feature, imported on demand)

        variables = transfer.initial_variables(config, model)
    state = create_train_state(config, model, jax.random.key(config.train.seed), lr_fn, variables)
    return model, lr_fn, state


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
    """Trains `config` in `workdir`, resuming from its latest checkpoint if there is one."""
    from yolo_jax import input_pipeline  # noqa: PLC0415  (TensorFlow: only when data is needed)

    setup_distributed(config)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    is_main = jax.process_index() == 0
    t = config.train
    num_devices = 1 if t.parallel == 'none' else jax.device_count()
    local_batch = check_batch_size('config.train.batch_size', t.batch_size, num_devices, jax.process_count())
    eval_batch = check_batch_size('config.train.eval_batch_size', t.eval_batch_size, num_devices, jax.process_count())
    steps_per_epoch = input_pipeline.steps_per_epoch(config, t.batch_size)
    total_steps = int(t.epochs * steps_per_epoch)
    if steps_per_epoch < 1:
        raise ValueError(f'config.train.batch_size={t.batch_size} is larger than the training split')

    model, lr_fn, state = build_model_and_state(config, steps_per_epoch, t.parallel)
    kw = loss_kwargs(config)
    parallel = Parallel(
        t.parallel,
        functools.partial(train_step, loss_kw=kw, lr_fn=lr_fn, nan_at_step=t.debug_nan_at_step),
        functools.partial(eval_step, loss_kw=kw),
        functools.partial(batch_stats_step, momentum=config.model.bn_momentum),
    )

    manager = checkpointing.create_manager(workdir, save_best_only=t.save_best_only)
    start_step = 0
    if manager.latest_step() is not None:
        state, meta = checkpointing.restore(manager, manager.latest_step(), state)
        start_step = int(state.step)
        logging.info('Resumed from %s at step %d (epoch %d)', manager.directory, start_step, meta['epoch'])
    state = parallel.place_state(state)

    # TensorBoard only (the console already gets the reference's lines); other processes write nothing.
    writer = metric_writers.AsyncWriter(
        metric_writers.SummaryWriter(str(workdir / 'tensorboard')) if is_main else metric_writers.MultiWriter([])
    )
    if start_step == 0:
        writer.write_hparams({k: v for k, v in _flatten(config).items() if isinstance(v, int | float | str | bool)})
    metrics_file = MetricsFile(workdir, is_main)
    progress = Progress(total_steps, start_step)
    eval_ds = input_pipeline.create_eval_dataset(
        config, batch_size=eval_batch, process_index=jax.process_index(), process_count=jax.process_count()
    )
    logging.info(
        'Training %s (%d params) for %d epochs x %d steps, global batch %d on %d device(s), mode %s',
        config.model.name, sum(x.size for x in jax.tree.leaves(state.params)), t.epochs, steps_per_epoch,
        t.batch_size, num_devices, t.parallel,
    )

    step = start_step
    ckpt_every = t.checkpoint_every_steps
    try:
        while step < total_steps:
            epoch, skip = divmod(step, steps_per_epoch)
            train_ds = input_pipeline.create_train_dataset(
                config, epoch=epoch, batch_size=local_batch, process_index=jax.process_index(),
                process_count=jax.process_count(), skip_batches=skip,
            )
            t_epoch, step_before = time.monotonic(), step
            for batch in train_ds.as_numpy_iterator():
                state, metrics = parallel.train(state, {k: batch[k] for k in STEP_KEYS})
                step += 1
                metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                _check_finite(metrics, step)
                progress.update(step, f"loss {metrics['total']:.2f}")
                if step % t.log_every_steps == 0 or step == total_steps:
                    progress.log(format_train_line(epoch, step - epoch * steps_per_epoch, steps_per_epoch,
                                                   metrics['lr'], metrics))
                    writer.write_scalars(step, {f'train/{k}': v for k, v in metrics.items() if k != 'finite'})
                    metrics_file.write(kind='train', step=step, epoch=epoch, **metrics)
                if ckpt_every and step % ckpt_every == 0 and step % steps_per_epoch:
                    checkpointing.save(manager, step, state, {'epoch': epoch, 'step': step})
                if step == t.debug_kill_at_step:
                    os.kill(os.getpid(), signal.SIGKILL)  # a hard crash: no cleanup, maybe mid-save
                if step % steps_per_epoch == 0:
                    break
            if step == step_before:
                raise ValueError(f'epoch {epoch} yielded no batch after skipping {skip}: is '
                                 f'config.train.steps_per_epoch={t.steps_per_epoch} larger than the training split?')
            epoch_time = time.monotonic() - t_epoch
            if t.bn_recalibration_batches > 0:
                recal_ds = input_pipeline.create_train_dataset(
                    config, epoch=epoch, batch_size=local_batch, process_index=jax.process_index(),
                    process_count=jax.process_count(),
                )
                state = recalibrate_batch_norm(parallel, state, recal_ds, t.bn_recalibration_batches)
            val = None
            if (epoch + 1) % t.eval_every_epochs == 0 or step == total_steps:
                val = evaluate(parallel, state, eval_ds)
                progress.log(format_val_line(val))
                writer.write_scalars(step, {f'val/{k}': v for k, v in val.items()})
                metrics_file.write(kind='val', step=step, epoch=epoch, **val)
            if (t.map_every_epochs and (epoch + 1) % t.map_every_epochs == 0) or step == total_steps:
                det = detection_report(config, model, state, eval_ds, writer, step)
                scalars = {k: float(det[k]) for k in ('map50', 'coco_map', 'coco_map50', 'coco_map75') if k in det}
                coco = scalars.get('coco_map', float('nan'))
                progress.log(f"mAP@0.5 (VOC): {scalars['map50']:.4f}, mAP@[.5:.95] (COCO): {coco:.4f}")
                if step == total_steps:
                    from yolo_jax import evaluation, inference  # noqa: PLC0415

                    progress.log('\n' + evaluation.format_table(det, inference.class_names(config)))
                writer.write_scalars(step, {f'val/{k}': v for k, v in scalars.items()})
                metrics_file.write(kind='map', step=step, epoch=epoch, **scalars)
            logging.info('epoch %d done in %.1f s (%.2f img/s)', epoch, epoch_time,
                         (steps_per_epoch - skip) * t.batch_size / max(epoch_time, 1e-9))
            ckpt_metrics = {checkpointing.BEST_METRIC: val['total']} if val else None
            meta = {'epoch': epoch + 1, 'step': step, 'metrics': ckpt_metrics}
            checkpointing.save(manager, step, state, meta, metrics=ckpt_metrics)
            writer.flush()
    finally:
        manager.wait_until_finished()  # never leave an async save half done
    logging.info('Training done: %d steps; compiled train-step variants: %d', step, parallel.cache_size())
    return state


def _flatten(config: ml_collections.ConfigDict, prefix: str = '') -> dict:
    out = {}
    for k, v in config.items():
        if isinstance(v, ml_collections.ConfigDict):
            out.update(_flatten(v, f'{prefix}{k}.'))
        else:
            out[f'{prefix}{k}'] = v
    return out
