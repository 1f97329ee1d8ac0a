"""The training loop: `train_and_evaluate(config, workdir)`.

One loop over a repeating stream of batches with periodic actions, as the flax examples run: `setup` builds the
run once (checks, data, model and state, compiled steps for the device mesh, evaluators, logs), `train_loop` feeds
the steps (metrics reach the host one step late, so the device queue never drains) and `end_of_epoch` runs the
epoch's actions in order: BatchNorm recalibration, validation, the checkpoint (before any report that might fail),
the mAP report. The pure pieces (state, optimizer, steps) live in `steps.py`, the evaluators in `evaluation/`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers, periodic_actions

from yolo_jax import checkpointing, class_weights, lr_segments, run_config, steps
from yolo_jax.config_checks import check_train_config
from yolo_jax.errors import ConfigError, UserError
from yolo_jax.loss import COMPONENTS, check_loss_config, loss_kwargs
from yolo_jax.parallel import Parallel, check_batch_size, check_mode
from yolo_jax.progress import Progress, format_train_line
from yolo_jax.spec import DetectionSpec
from yolo_jax.steps import STEP_KEYS

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
    """Proves `workdir` writable now, not after the first epoch, without creating it: a start that fails on its
    config or data leaves no empty workdir behind (`setup` creates it once the data is checked)."""
    existing = workdir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(f'{existing} is not a directory')
        probe = existing / f'.write_test_{os.getpid()}'
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


@dataclasses.dataclass(frozen=True)
class Schedule:
    """When the loop acts, in global steps (one step = one batch through the train step)."""

    steps_per_epoch: int
    total_steps: int
    log_every_steps: int
    checkpoint_every_steps: int  # 0: at epoch ends only

    def logs(self, step: int) -> bool:
        return step % self.log_every_steps == 0 or step == self.total_steps

    def ends_epoch(self, step: int) -> bool:
        return step % self.steps_per_epoch == 0 or step == self.total_steps

    def due(self, every_epochs: int, epoch: int, step: int) -> bool:
        """At the end of `epoch` (ending at `step`): every `every_epochs` epochs (0: never), and at the last step."""
        return bool(every_epochs and (epoch + 1) % every_epochs == 0) or step == self.total_steps

    def checkpoints_mid_epoch(self, step: int) -> bool:
        return bool(self.checkpoint_every_steps and step % self.checkpoint_every_steps == 0
                    and step % self.steps_per_epoch and step != self.total_steps)


class Reporter:
    """Where a run's numbers go: the console (the reference's lines, a progress bar), TensorBoard and
    metrics.jsonl. Process 0 writes the files; the others log to the console only."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: Path, schedule: Schedule, start_step: int):
        is_main = jax.process_index() == 0
        self.schedule = schedule
        self.writer = metric_writers.AsyncWriter(
            metric_writers.SummaryWriter(str(workdir / 'tensorboard')) if is_main else metric_writers.MultiWriter([])
        )
        if start_step == 0:
            self.writer.write_hparams({k: v for k, v in _flatten(config).items()
                                       if isinstance(v, int | float | str | bool)})
        self.metrics_file = MetricsFile(workdir, is_main, start_step)
        self.diagnostics_dir = workdir / 'diagnostics' if is_main else None
        self.progress = Progress(schedule.total_steps, start_step)
        self.report_progress = periodic_actions.ReportProgress(num_train_steps=schedule.total_steps,
                                                               writer=self.writer, every_steps=None, every_secs=60.0)

    def train(self, step: int, epoch: int, metrics: dict[str, float]) -> None:
        """A finished step's host metrics: the progress bar, and every log_every_steps the line and records."""
        self.progress.update(step, f"loss {metrics['total']:.2f}")
        s = self.schedule
        if s.logs(step):
            self.progress.log(format_train_line(epoch, step - epoch * s.steps_per_epoch, s.steps_per_epoch,
                                                metrics['lr'], metrics))
            self.writer.write_scalars(step, {f'train/{k}': v for k, v in metrics.items() if k != 'finite'})
            self.metrics_file.write(kind='train', step=step, epoch=epoch, **metrics)

    def evaluation(self, step: int, epoch: int, result: Any) -> None:
        """An evaluator's `Result`: its console line (and, at the last step, its details), TensorBoard val/<name>
        scalars and images, one metrics.jsonl record of its kind; its diagnostics (if any) into WORKDIR/diagnostics/."""
        self.progress.log(result.summary)
        if 'diagnostics' in result.artifacts and self.diagnostics_dir is not None:
            from yolo_jax.evaluation.diagnostics import write_result  # noqa: PLC0415

            write_result(self.diagnostics_dir, result)
        if step == self.schedule.total_steps and result.details:
            self.progress.log('\n' + result.details)
        if result.images:
            self.writer.write_images(step, result.images)
        self.writer.write_scalars(step, {f'val/{k}': v for k, v in result.scalars.items()})
        self.metrics_file.write(kind=result.kind, step=step, epoch=epoch, **result.scalars)


@dataclasses.dataclass
class Run:
    """A training run's parts, built once by `setup`."""

    config: ml_collections.ConfigDict
    data: Any  # input_pipeline.Data
    parallel: Parallel
    manager: Any  # orbax CheckpointManager
    reporter: Reporter
    schedule: Schedule
    validation: Any  # evaluation.validation.ValidationLoss
    detection: Any  # evaluation.detection.DetectionMetrics
    local_batch: int  # this process's share of config.train.batch_size
    base_meta: dict  # what every checkpoint records besides its epoch and step


def check_settings(config: ml_collections.ConfigDict, workdir: Path) -> tuple[str, int, int]:
    """Every check that needs no data, before any is read or built → (parallel mode, this process's train batch,
    its eval batch)."""
    from yolo_jax.evaluation.detection import check_eval_config  # noqa: PLC0415  (TensorFlow)

    check_train_config(config)  # zero/negative counters: now, not after the first compile
    check_workdir(workdir)
    t = config.train
    mode = check_mode(t.parallel)
    steps.check_freeze(t.freeze)
    steps.check_ema(t)
    steps.check_grad_accum_steps(t.grad_accum_steps)
    lr_segments.check_extend_lr_fraction(t.extend_lr_fraction)
    check_loss_config(config.loss, config.model.num_classes)
    check_eval_config(config)  # the evaluators check it again when built; here before a data set is built
    local_batch = check_batch_size('config.train.batch_size', t.batch_size, jax.device_count(), jax.process_count())
    eval_batch = check_batch_size('config.train.eval_batch_size', t.eval_batch_size, jax.device_count(),
                                  jax.process_count())
    return mode, local_batch, eval_batch


def make_schedule(config: ml_collections.ConfigDict, data: Any) -> Schedule:
    t = config.train
    steps_per_epoch = data.steps_per_epoch(t.batch_size)
    if steps_per_epoch < 1:
        raise ConfigError(f'config.train.batch_size={t.batch_size} is larger than the training split '
                          f'({data.num_examples("train")} examples)')
    return Schedule(steps_per_epoch, int(t.epochs * steps_per_epoch), t.log_every_steps, t.checkpoint_every_steps)


def build_parallel(config: ml_collections.ConfigDict, spec: DetectionSpec, mode: str, lr_fn: Any,
                   loss_class_weights: tuple[float, ...] | None = None) -> Parallel:
    """The train, eval and BatchNorm-statistics steps with the run's settings bound, compiled for `mode`
    (`loss_class_weights`: config.loss.class_weights resolved, class_weights.resolve)."""
    kw = loss_kwargs(spec, config.loss, loss_class_weights)
    return Parallel(
        mode,
        functools.partial(steps.train_step, loss_kw=kw, lr_fn=lr_fn),
        functools.partial(steps.eval_step, loss_kw=kw),
        functools.partial(steps.batch_stats_step, momentum=config.model.bn_momentum, freeze=config.train.freeze),
    )


def build_evaluators(config: ml_collections.ConfigDict, spec: DetectionSpec, model: Any, parallel: Parallel,
                     data: Any, eval_batch: int) -> tuple[Any, Any]:
    """(validation loss, detection metrics) on the whole test split, each built (and checked) once."""
    from yolo_jax.evaluation.detection import DetectionMetrics  # noqa: PLC0415  (TensorFlow)
    from yolo_jax.evaluation.validation import ValidationLoss  # noqa: PLC0415

    def batches():
        return data.eval_batches(eval_batch)

    return ValidationLoss(parallel, batches), DetectionMetrics(config, spec, model, batches, draw_images=8)


def restore(manager: Any, config: ml_collections.ConfigDict, state: steps.TrainState) -> tuple[steps.TrainState, int]:
    """(state, step): the latest checkpoint's, after checking that it fits the config; else (state, 0)."""
    latest = manager.latest_step()
    if latest is None:
        return state, 0
    check_resumable(checkpointing.restore_meta(manager, latest), config, manager.directory)
    state, meta = checkpointing.restore(manager, latest, state)
    logging.info('Resumed from %s at step %d (epoch %d)', manager.directory, int(state.step), meta['epoch'])
    return state, int(state.step)


def plan_lr_segments(manager: Any, config: ml_collections.ConfigDict, schedule: Schedule) -> lr_segments.Plan:
    """The run's learning-rate segments from its latest checkpoint's meta (lr_segments.py: a finished run given
    more epochs trains them on a new cosine), logging an extension; ConfigError for epochs it cannot continue."""
    latest = manager.latest_step()
    meta = None if latest is None else checkpointing.restore_meta(manager, latest)
    if meta is not None:
        check_resumable(meta, config, manager.directory)  # a model mismatch is the first thing to say
    plan = lr_segments.plan(meta, config.train.epochs, manager.directory)
    if plan.extends:
        t = config.train
        added = schedule.total_steps - int(meta['step'])
        logging.info('Extending a finished run of %d epochs to %d: lr segment from %.3g to %.3g over %d steps',
                     plan.finished_epochs, t.epochs, lr_segments.extension_start_lr(t), t.lr_end, added)
    return plan


def setup(config: ml_collections.ConfigDict, workdir: Path) -> tuple[Run, steps.TrainState, int]:
    """Builds the run (see `check_settings` for the order of the checks) → (run, placed state, start step)."""
    t = config.train
    mode, local_batch, eval_batch = check_settings(config, workdir)
    data = open_data(config)
    spec = data.spec
    schedule = make_schedule(config, data)
    logging.info('Data: %d train / %d test examples, %d classes', data.num_examples('train'),
                 data.num_examples('test'), spec.num_classes)  # reads (and checks) both splits before any step
    if config.data.check_at_start:
        from yolo_jax.data import check  # noqa: PLC0415

        check.check_at_start(config, data)
    loss_class_weights = class_weights.resolve(config.loss.class_weights, data, data.class_names, logging.info)
    workdir.mkdir(parents=True, exist_ok=True)  # the config and data are checked: the run starts
    checkpointing.set_aside_damaged(workdir)  # a half-deleted newest step: resume from the newest complete one
    manager = checkpointing.create_manager(workdir, save_best_only=t.save_best_only)
    lr_plan = plan_lr_segments(manager, config, schedule)  # before config.py is replaced: a refused start keeps it
    if jax.process_index() == 0:  # eval, detect and export of this workdir read it: no training flag repeated
        run_config.write(config, workdir)
    model, lr_fn, state = steps.build_model_and_state(config, schedule.steps_per_epoch, mode, lr_plan.segments)
    parallel = build_parallel(config, spec, mode, lr_fn, loss_class_weights)
    validation, detection = build_evaluators(config, spec, model, parallel, data, eval_batch)
    state, start_step = restore(manager, config, state)
    state = parallel.place_state(state)
    reporter = Reporter(config, workdir, schedule, start_step)
    base_meta = {**checkpointing.run_meta(config, spec), 'lr_segments': lr_plan.segments,
                 'total_steps': schedule.total_steps}
    logging.info(
        'Training %s (%d params, %d classes) for %d epochs x %d steps, global batch %d on %d device(s) in %d '
        'process(es), mode %s', config.model.name, sum(x.size for x in jax.tree.leaves(state.params)),
        spec.num_classes, t.epochs, schedule.steps_per_epoch, t.batch_size, jax.device_count(), jax.process_count(),
        mode,
    )
    if t.multi_scale_sizes:
        logging.info('Multi-scale training: input sizes %s, a random one every %d steps (validation, BatchNorm '
                     'recalibration and mAP at %d); the train step compiles once per size',
                     tuple(t.multi_scale_sizes), t.multi_scale_every_steps, config.model.input_size)
    run = Run(config, data, parallel, manager, reporter, schedule, validation, detection, local_batch, base_meta)
    return run, state, start_step


def fetch(run: Run, pending: tuple[int, int, dict] | None) -> None:
    """Host side of a finished step (one step late): NaN guard, console, logs."""
    if pending is None:
        return
    step, epoch, metrics = pending
    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
    _check_finite(metrics, step, run.manager.latest_step() is not None)
    run.reporter.train(step, epoch, metrics)


def evaluate_and_report(run: Run, evaluator: Any, state: steps.TrainState, step: int, epoch: int,
                        **options: Any) -> Any:
    """Runs an evaluator on the weights the run evaluates (the EMA's when on), with `options` for its `run`,
    and reports its `Result`."""
    result = evaluator.run(steps.eval_state(state), **options)
    run.reporter.evaluation(step, epoch, result)
    return result


def end_of_epoch(run: Run, state: steps.TrainState, step: int, epoch: int, epoch_time: float,
                 steps_done: int) -> steps.TrainState:
    """The epoch's periodic actions, in order: BatchNorm recalibration, validation loss, the checkpoint, the
    epoch's timing, the mAP report."""
    t, s = run.config.train, run.schedule
    # With EMA on (config.train.ema_decay > 0) the EMA weights are the ones recalibrated, validated, ranked
    # for the best checkpoint and reported (mAP); eval/detect/export load them (checkpointing.load_model).
    if t.bn_recalibration_batches > 0:
        batches = run.data.recalibration_batches(epoch, run.local_batch, t.bn_recalibration_batches)
        recalibrated = recalibrate_batch_norm(run.parallel, steps.eval_state(state), batches, t.freeze)
        state = steps.with_eval_batch_stats(state, recalibrated.batch_stats)
    val = None
    if s.due(t.eval_every_epochs, epoch, step):
        val = evaluate_and_report(run, run.validation, state, step, epoch)
    ckpt_metrics = {checkpointing.BEST_METRIC: val.scalars['total']} if val else None
    # The checkpoint goes first: nothing after it (reports, drawings) can cost a finished epoch.
    checkpointing.save(run.manager, step, state, {**run.base_meta, 'epoch': epoch + 1, 'step': step,
                                                  'metrics': ckpt_metrics}, metrics=ckpt_metrics)
    logging.info('epoch %d done in %.1f s (%.2f img/s)', epoch, epoch_time,
                 steps_done * t.batch_size / max(epoch_time, 1e-9))
    if s.due(t.map_every_epochs, epoch, step):
        # The last one adds the diagnostics (evaluation/diagnostics.py) to TensorBoard and WORKDIR/diagnostics/.
        evaluate_and_report(run, run.detection, state, step, epoch, diagnostics=step == s.total_steps)
    run.reporter.writer.flush()
    return state


def train_loop(run: Run, state: steps.TrainState, start_step: int) -> tuple[steps.TrainState, int]:
    """Trains from `start_step` to the schedule's last step → (state, last step)."""
    s, multi_scale = run.schedule, bool(run.config.train.multi_scale_sizes)
    step, pending = start_step, None
    epoch_start, epoch_first_step = time.monotonic(), start_step
    batches = run.data.train_batches(start_step, s.steps_per_epoch, run.local_batch)
    try:
        while step < s.total_steps:
            epoch, batch = next(batches)
            state, metrics = run.parallel.train(state, {k: batch[k] for k in STEP_KEYS})
            if multi_scale:  # logged with the step's metrics (metrics.jsonl, TensorBoard)
                metrics = dict(metrics, input_size=batch['image'].shape[1])
            step += 1
            fetch(run, pending)  # the previous step's metrics: this step is already queued behind it
            pending = (step, epoch, metrics)
            run.reporter.report_progress(step)
            if s.checkpoints_mid_epoch(step):
                fetch(run, pending)  # never checkpoint a state the NaN guard has not seen
                pending = None
                checkpointing.save(run.manager, step, state, {**run.base_meta, 'epoch': epoch, 'step': step})
            if s.ends_epoch(step):
                fetch(run, pending)
                pending = None
                state = end_of_epoch(run, state, step, epoch, time.monotonic() - epoch_start, step - epoch_first_step)
                epoch_start, epoch_first_step = time.monotonic(), step
        fetch(run, pending)
    finally:
        batches.close()  # now, not when a traceback holding this frame is collected at interpreter exit
        run.manager.wait_until_finished()  # never leave an async save half done
        run.reporter.writer.flush()
    return state, step


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> steps.TrainState:
    """Trains `config` in `workdir`, resuming from its latest checkpoint if there is one."""
    run, state, start_step = setup(config, Path(workdir))
    state, step = train_loop(run, state, start_step)
    logging.info('Training done: %d steps; compiled train-step programs: %s', step,
                 run.parallel.compiled_train_steps())
    return state
