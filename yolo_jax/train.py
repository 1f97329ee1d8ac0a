"""The training loop: `train_and_evaluate(config, workdir)`.

One loop over a repeating stream of batches with periodic actions (clu's), as the flax examples run: the data set
is built once (`input_pipeline.Data`), the steps are compiled once for the device mesh (`parallel.py`), metrics
reach the host one step late (so the device queue never drains), and at each epoch's end the checkpoint is
written before any report that might fail. The pure pieces (state, optimizer, steps) live in `steps.py`.
"""

from __future__ import annotations

import functools
import json
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers, periodic_actions

from yolo_jax import checkpointing, steps
from yolo_jax.config_checks import check_train_config
from yolo_jax.errors import ConfigError, UserError
from yolo_jax.loss import COMPONENTS, loss_kwargs
from yolo_jax.parallel import Parallel, check_batch_size, check_mode
from yolo_jax.progress import Progress, format_train_line, format_val_line
from yolo_jax.spec import DetectionSpec

# The keys of a pipeline batch that the compiled steps consume (the rest stays on the host).
STEP_KEYS = ('image', 'labels', 'bboxes', 'valid')
# config.model fields a checkpoint must agree on to be resumed.
_MODEL_FIELDS = ('name', 'num_classes', 'input_size', 'strides', 'anchors', 'width_multiplier')


class NonFiniteLossError(UserError, FloatingPointError):
    """Raised when a step's loss or gradient is NaN or inf."""


def open_data(config: ml_collections.ConfigDict):
    """The run's `input_pipeline.Data`. With several processes, process 0 prepares the data set (e.g. builds the
    MNIST set into a shared data dir) while the others wait, so they never build it concurrently."""
    from yolo_jax.input_pipeline import Data  # noqa: PLC0415  (TensorFlow: only when data is needed)

    def make():
        return Data(config, process_index=jax.process_index(), process_count=jax.process_count())

    if jax.process_count() == 1:
        return make()
    from jax.experimental import multihost_utils  # noqa: PLC0415

    data = make() if jax.process_index() == 0 else None
    multihost_utils.sync_global_devices('data prepared')
    return data or make()


def check_workdir(workdir: Path) -> None:
    """Creates `workdir` and proves it writable now, not after the first epoch."""
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        probe = workdir / f'.write_test_{os.getpid()}'
        probe.write_text('')
        probe.unlink()
    except OSError as e:
        raise ConfigError(f'--workdir={workdir} is not writable: {e.strerror or e}') from None


def check_resumable(meta: dict, config: ml_collections.ConfigDict, directory: Path) -> None:
    """ConfigError naming every config.model setting that differs from the checkpoint's, and the training settings
    that shape the saved state (an EMA, gradient accumulation's optimizer state)."""
    saved = meta.get('model')
    diffs = []
    if saved is not None:  # else written before checkpoints recorded their model
        ours = json.loads(json.dumps(config.model.to_dict()))  # tuples → lists, as stored
        diffs = [f'config.model.{k}: checkpoint {saved.get(k)!r}, config {ours[k]!r}'
                 for k in _MODEL_FIELDS if saved.get(k) != ours[k]]
    if diffs:
        raise ConfigError(f'cannot resume from {directory}: the model differs ({"; ".join(diffs)}). Use another '
                          '--workdir, or the checkpoint\'s settings (config.train.init_from=WORKDIR fine-tunes it)')
    t = config.train
    saved_ema, saved_k = bool(meta.get('ema', False)), meta.get('grad_accum_steps', 1)  # older checkpoints: neither
    if saved_ema != (t.ema_decay > 0):
        diffs.append(f'config.train.ema_decay: checkpoint {"with" if saved_ema else "without"} EMA, '
                     f'config {t.ema_decay}')
    if saved_k != t.grad_accum_steps:
        diffs.append(f'config.train.grad_accum_steps: checkpoint {saved_k}, config {t.grad_accum_steps}')
    if diffs:
        raise ConfigError(f'cannot resume from {directory}: its training state differs ({"; ".join(diffs)}). Use '
                          'another --workdir, the checkpoint\'s settings, or config.train.init_from=WORKDIR')


def evaluate(parallel: Parallel, state: steps.TrainState, batches) -> dict[str, float]:
    """Mean validation losses over eval batches (padding examples excluded; all processes' shards). The sums stay
    on the device until the last batch: one host transfer per evaluation."""
    totals = None
    for batch in batches:
        sums = parallel.eval(state, {k: batch[k] for k in STEP_KEYS})
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = {k: float(v) for k, v in jax.device_get(totals or {}).items()}
    count = max(totals.pop('count', 0.0), 1.0)
    return {k: v / count for k, v in totals.items()}


def recalibrate_batch_norm(parallel: Parallel, state: steps.TrainState, batches, freeze: str) -> steps.TrainState:
    """Replaces the running BatchNorm statistics by their average over `batches` at the current weights ("precise
    BN", Wu & Johnson 2021). The exponential moving average lags weights that move fast (high learning rates, thin
    layers): in a quarter-width run its validation loss was 3-6x the loss with recalibrated statistics.
    Deterministic, so exact resume is unaffected. Frozen layers keep their statistics."""
    total, n = None, 0
    for batch in batches:
        stats = parallel.stats(state, {k: batch[k] for k in STEP_KEYS})
        total = stats if total is None else jax.tree.map(jnp.add, total, stats)
        n += 1
    if n == 0:
        return state
    mask = steps.frozen_stats_mask(state.batch_stats, freeze)
    new = jax.tree.map(lambda frozen, old, t: old if frozen else t / n, mask, state.batch_stats, total)
    return state.replace(batch_stats=new)


class MetricsFile:
    """workdir/metrics.jsonl: one JSON object per line (easy to plot). On resume the records after the restored
    step are dropped (atomically), so a replayed step appears once."""

    def __init__(self, workdir: Path, enabled: bool, resume_step: int):
        self.path, self.enabled = workdir / 'metrics.jsonl', enabled
        if enabled and self.path.exists():
            kept = [ln for ln in self.path.read_text().splitlines() if ln.strip() and self._step(ln) <= resume_step]
            tmp = self.path.with_suffix('.jsonl.tmp')
            tmp.write_text(''.join(ln + '\n' for ln in kept))
            os.replace(tmp, self.path)

    @staticmethod
    def _step(line: str) -> int:
        try:
            return int(json.loads(line)['step'])
        except (ValueError, KeyError, TypeError):
            return 1 << 62  # an unreadable (half-written) line is dropped

    def write(self, **record) -> None:
        """Appends `record` with its wall-clock `time` (Unix seconds: time-to-accuracy curves read it)."""
        if self.enabled:
            with self.path.open('a') as f:
                f.write(json.dumps({**record, 'time': round(time.time(), 3)}) + '\n')


def detection_report(config, spec: DetectionSpec, model, state, data, eval_batch: int, writer, step: int,
                     num_images: int = 8) -> dict:
    """VOC/COCO mAP of the current weights over the whole eval split (every process's shard, gathered), and a
    grid of test images with predicted boxes (TensorBoard)."""
    from yolo_jax import evaluation, inference, visualize  # noqa: PLC0415
    from yolo_jax.data.letterbox import letterbox_boxes  # noqa: PLC0415

    variables = jax.device_get(state.variables)
    map_cfg = evaluation.map_postprocess_config(config, spec)
    detections, ground_truth = evaluation.collect_detections(map_cfg, model, variables, data.eval_batches(eval_batch))
    detections, ground_truth = evaluation.gather_across_processes(detections, ground_truth, map_cfg.max_detections)
    result = evaluation.compute_metrics(detections, ground_truth, spec.num_classes, **evaluation.voc_options(config))
    cfg = evaluation.postprocess_config(config, spec)  # the drawing threshold
    batch = next(iter(data.eval_batches(eval_batch)))
    det = jax.device_get(inference.predict(model, variables, batch['image'], batch['orig_size'], cfg))
    tiles = []
    for i in range(min(num_images, int(np.sum(batch['valid'] > 0)))):
        keep, (h, w) = det.valid[i], batch['orig_size'][i]
        boxes = letterbox_boxes(det.boxes[i][keep], int(h), int(w), spec.input_size, config.data.resize)
        tiles.append(visualize.draw_detections(batch['image'][i], boxes, det.classes[i][keep], det.scores[i][keep],
                                               spec.class_names))
    if tiles:
        writer.write_images(step, {'detections': visualize.grid(tiles, ncols=4)[None]})
    return result


def _check_finite(metrics: dict, step: int, has_checkpoint: bool) -> None:
    if metrics['finite'] > 0:
        return
    bad = [k for k in (*COMPONENTS, 'total', 'grad_norm') if not np.isfinite(metrics[k])]
    kept = ('The last good checkpoint is kept in the workdir.' if has_checkpoint
            else 'No checkpoint had been written yet.')
    raise NonFiniteLossError(
        f'non-finite value at step {step} in {", ".join(bad) or "the loss"} '
        f'({", ".join(f"{k}={metrics[k]}" for k in (*COMPONENTS, "grad_norm"))}); the update was skipped and '
        f'the run stopped. {kept} Try a lower config.train.lr_init or config.train.grad_clip_norm > 0.'
    )


def _flatten(config: ml_collections.ConfigDict, prefix: str = '') -> dict:
    out = {}
    for k, v in config.items():
        if isinstance(v, ml_collections.ConfigDict):
            out.update(_flatten(v, f'{prefix}{k}.'))
        else:
            out[f'{prefix}{k}'] = v
    return out


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> steps.TrainState:
    """Trains `config` in `workdir`, resuming from its latest checkpoint if there is one."""
    check_train_config(config)  # zero/negative counters: now, not after the first compile
    workdir = Path(workdir)
    check_workdir(workdir)
    t = config.train
    mode = check_mode(t.parallel)
    steps.check_freeze(t.freeze)
    steps.check_ema(t)
    steps.check_grad_accum_steps(t.grad_accum_steps)
    local_batch = check_batch_size('config.train.batch_size', t.batch_size, jax.device_count(), jax.process_count())
    eval_batch = check_batch_size('config.train.eval_batch_size', t.eval_batch_size, jax.device_count(),
                                  jax.process_count())
    data = open_data(config)
    spec = data.spec
    steps_per_epoch = data.steps_per_epoch(t.batch_size)
    if steps_per_epoch < 1:
        raise ConfigError(f'config.train.batch_size={t.batch_size} is larger than the training split '
                          f'({data.num_examples("train")} examples)')
    total_steps = int(t.epochs * steps_per_epoch)
    logging.info('Data: %d train / %d test examples, %d classes', data.num_examples('train'),
                 data.num_examples('test'), spec.num_classes)  # reads (and checks) both splits before any step

    model, lr_fn, state = steps.build_model_and_state(config, steps_per_epoch, mode)
    kw = loss_kwargs(spec, config.loss)
    parallel = Parallel(
        mode,
        functools.partial(steps.train_step, loss_kw=kw, lr_fn=lr_fn),
        functools.partial(steps.eval_step, loss_kw=kw),
        functools.partial(steps.batch_stats_step, momentum=config.model.bn_momentum, freeze=t.freeze),
    )

    checkpointing.set_aside_damaged(workdir)  # a half-deleted newest step: resume from the newest complete one
    manager = checkpointing.create_manager(workdir, save_best_only=t.save_best_only)
    start_step = 0
    if manager.latest_step() is not None:
        meta = checkpointing.restore_meta(manager, manager.latest_step())
        check_resumable(meta, config, manager.directory)
        state, meta = checkpointing.restore(manager, manager.latest_step(), state)
        start_step = int(state.step)
        logging.info('Resumed from %s at step %d (epoch %d)', manager.directory, start_step, meta['epoch'])
    state = parallel.place_state(state)

    is_main = jax.process_index() == 0
    writer = metric_writers.AsyncWriter(
        metric_writers.SummaryWriter(str(workdir / 'tensorboard')) if is_main else metric_writers.MultiWriter([])
    )
    if start_step == 0:
        writer.write_hparams({k: v for k, v in _flatten(config).items() if isinstance(v, int | float | str | bool)})
    metrics_file = MetricsFile(workdir, is_main, start_step)
    progress = Progress(total_steps, start_step)
    report_progress = periodic_actions.ReportProgress(num_train_steps=total_steps, writer=writer, every_steps=None,
                                                      every_secs=60.0)
    base_meta = {'model': json.loads(json.dumps(config.model.to_dict())), 'spec': spec.to_json(),
                 'ema': t.ema_decay > 0, 'grad_accum_steps': t.grad_accum_steps}
    logging.info(
        'Training %s (%d params, %d classes) for %d epochs x %d steps, global batch %d on %d device(s) in %d '
        'process(es), mode %s', config.model.name, sum(x.size for x in jax.tree.leaves(state.params)),
        spec.num_classes, t.epochs, steps_per_epoch, t.batch_size, jax.device_count(), jax.process_count(), mode,
    )
    multi_scale = bool(t.multi_scale_sizes)
    if multi_scale:
        logging.info('Multi-scale training: input sizes %s, a random one every %d steps (validation, BatchNorm '
                     'recalibration and mAP at %d); the train step compiles once per size',
                     tuple(t.multi_scale_sizes), t.multi_scale_every_steps, config.model.input_size)

    def log_train(step: int, epoch: int, metrics: dict) -> None:
        progress.update(step, f"loss {metrics['total']:.2f}")
        if step % t.log_every_steps == 0 or step == total_steps:
            progress.log(format_train_line(epoch, step - epoch * steps_per_epoch, steps_per_epoch, metrics['lr'],
                                           metrics))
            writer.write_scalars(step, {f'train/{k}': v for k, v in metrics.items() if k != 'finite'})
            metrics_file.write(kind='train', step=step, epoch=epoch, **metrics)

    def fetch(pending: tuple[int, int, dict] | None) -> None:
        """Host side of a finished step (one step late): NaN guard, console, logs."""
        if pending is None:
            return
        step, epoch, metrics = pending
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        _check_finite(metrics, step, manager.latest_step() is not None)
        log_train(step, epoch, metrics)

    def end_of_epoch(state, step: int, epoch: int, epoch_time: float, steps_done: int):
        # With EMA on (config.train.ema_decay > 0) the EMA weights are the ones recalibrated, validated, ranked
        # for the best checkpoint and reported (mAP); eval/detect/export load them (checkpointing.load_model).
        if t.bn_recalibration_batches > 0:
            batches = data.recalibration_batches(epoch, local_batch, t.bn_recalibration_batches)
            recalibrated = recalibrate_batch_norm(parallel, steps.eval_state(state), batches, t.freeze)
            state = steps.with_eval_batch_stats(state, recalibrated.batch_stats)
        val = None
        if (epoch + 1) % t.eval_every_epochs == 0 or step == total_steps:
            val = evaluate(parallel, steps.eval_state(state), data.eval_batches(eval_batch))
            progress.log(format_val_line(val))
            writer.write_scalars(step, {f'val/{k}': v for k, v in val.items()})
            metrics_file.write(kind='val', step=step, epoch=epoch, **val)
        ckpt_metrics = {checkpointing.BEST_METRIC: val['total']} if val else None
        # The checkpoint goes first: nothing after it (reports, drawings) can cost a finished epoch.
        checkpointing.save(manager, step, state, {**base_meta, 'epoch': epoch + 1, 'step': step,
                                                  'metrics': ckpt_metrics}, metrics=ckpt_metrics)
        logging.info('epoch %d done in %.1f s (%.2f img/s)', epoch, epoch_time,
                     steps_done * t.batch_size / max(epoch_time, 1e-9))
        if (t.map_every_epochs and (epoch + 1) % t.map_every_epochs == 0) or step == total_steps:
            report_map(state, step, epoch)
        writer.flush()
        return state

    def report_map(state, step: int, epoch: int) -> None:
        from yolo_jax import evaluation  # noqa: PLC0415

        det = detection_report(config, spec, model, steps.eval_state(state), data, eval_batch, writer, step)
        scalars = {k: float(det[k]) for k in ('map50', 'coco_map', 'coco_map50', 'coco_map75', 'num_images',
                                              'num_detections', 'num_gt') if k in det}
        progress.log(f"mAP@0.5 (VOC): {scalars['map50']:.4f}, "
                     f"mAP@[.5:.95] (COCO): {scalars.get('coco_map', float('nan')):.4f}")
        if step == total_steps:
            progress.log('\n' + evaluation.format_table(det, spec.class_names))
        writer.write_scalars(step, {f'val/{k}': v for k, v in scalars.items()})
        metrics_file.write(kind='map', step=step, epoch=epoch, **scalars)

    step, pending = start_step, None
    epoch_start, epoch_first_step = time.monotonic(), start_step
    batches = data.train_batches(start_step, steps_per_epoch, local_batch)
    try:
        while step < total_steps:
            epoch, batch = next(batches)
            state, metrics = parallel.train(state, {k: batch[k] for k in STEP_KEYS})
            if multi_scale:  # logged with the step's metrics (metrics.jsonl, TensorBoard)
                metrics = dict(metrics, input_size=batch['image'].shape[1])
            step += 1
            fetch(pending)  # the previous step's metrics: this step is already queued behind it
            pending = (step, epoch, metrics)
            report_progress(step)
            if (t.checkpoint_every_steps and step % t.checkpoint_every_steps == 0 and step % steps_per_epoch
                    and step != total_steps):
                fetch(pending)  # never checkpoint a state the NaN guard has not seen
                pending = None
                checkpointing.save(manager, step, state, {**base_meta, 'epoch': epoch, 'step': step})
            if step % steps_per_epoch == 0 or step == total_steps:
                fetch(pending)
                pending = None
                state = end_of_epoch(state, step, epoch, time.monotonic() - epoch_start, step - epoch_first_step)
                epoch_start, epoch_first_step = time.monotonic(), step
        fetch(pending)
    finally:
        batches.close()  # now, not when a traceback holding this frame is collected at interpreter exit
        manager.wait_until_finished()  # never leave an async save half done
        writer.flush()
    logging.info('Training done: %d steps; compiled train-step programs: %s', step, parallel.compiled_train_steps())
    return state
