"""The pure pieces of training: schedule, optimizer, `TrainState`, the train / eval / BatchNorm-statistics steps,
and `build_model_and_state` (a run's model and fresh state).

Nothing here touches data or devices (only `initial_state` reads `config.train.init_from` weights, through
transfer.py): `parallel.py` compiles these functions for one device, a device mesh or pmap, and `train.py` runs
the loop around them. Tests and benchmarks use them directly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from yolo_jax import lr_segments
from yolo_jax.errors import ConfigError
from yolo_jax.loss import yolo_loss
from yolo_jax.models import create_model
from yolo_jax.models.layers import FROZEN_PARTS

FREEZE_POLICIES = ('none', 'backbone', 'all_but_heads')
PMAP_AXIS = 'batch'  # the pmap axis name (parallel.py): BatchNorm statistics are synchronised over it
# The keys of a pipeline batch that the compiled steps consume (the rest stays on the host).
STEP_KEYS = ('image', 'labels', 'bboxes', 'valid')


@flax.struct.dataclass
class TrainState:
    """Everything a training run needs to continue exactly: a pytree saved whole by orbax."""

    step: jax.Array  # train steps (forward/backward passes) done; optimizer updates differ under accumulation
    params: Any
    batch_stats: Any
    opt_state: Any
    # The exponential moving average {'params', 'batch_stats'} of the model (config.train.ema_decay > 0), or None.
    ema: Any
    apply_fn: Callable = flax.struct.field(pytree_node=False)
    tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)
    ema_decay: float = flax.struct.field(pytree_node=False)  # config.train.ema_decay (0 = no EMA)
    ema_tau: float = flax.struct.field(pytree_node=False)  # config.train.ema_tau, in optimizer updates

    @property
    def variables(self) -> dict:
        return {'params': self.params, 'batch_stats': self.batch_stats}


def eval_state(state: TrainState) -> TrainState:
    """`state` with params and batch_stats replaced by the EMA's (config.train.ema_decay > 0); else `state`.

    Validation loss, mAP and BatchNorm recalibration run on it: the compiled steps read only params and
    batch_stats, so the same programs serve both (no recompilation)."""
    if state.ema is None:
        return state
    return state.replace(params=state.ema['params'], batch_stats=state.ema['batch_stats'])


def with_eval_batch_stats(state: TrainState, batch_stats: Any) -> TrainState:
    """`state` with the evaluated BatchNorm statistics (the EMA's when on, else the model's) replaced."""
    if state.ema is None:
        return state.replace(batch_stats=batch_stats)
    return state.replace(ema={**state.ema, 'batch_stats': batch_stats})


def ema_decay_at(decay: float, tau: float, updates: jax.Array) -> jax.Array:
    """YOLOv5's ModelEMA decay after `updates` (>= 1) optimizer updates: decay * (1 - exp(-updates / tau)).

    The ramp lets the average forget the random initial weights fast (decay ~ updates / tau early on); tau = 0
    is a constant decay."""
    if tau == 0:
        return jnp.asarray(decay, jnp.float32)
    return decay * (1.0 - jnp.exp(-jnp.asarray(updates, jnp.float32) / tau))


def update_ema(ema: Any, variables: Any, decay: jax.Array) -> Any:
    """ema + (1 - decay) (variables - ema) leaf by leaf, i.e. decay * ema + (1 - decay) * variables.

    This form leaves a leaf bit-identical when it equals its average (frozen weights and statistics stay exact)."""
    return jax.tree.map(lambda e, v: e + (1.0 - decay) * (v - e), ema, variables)


def optimizer_updates(state: TrainState) -> jax.Array:
    """Optimizer updates applied so far: `state.step` without accumulation, fewer with (optax.MultiSteps)."""
    if isinstance(state.opt_state, optax.MultiStepsState):
        return state.opt_state.gradient_step
    return state.step


def create_learning_rate_fn(train_config: ml_collections.ConfigDict, steps_per_epoch: int,
                            segments: list[tuple[int, int]] | None = None) -> optax.Schedule:
    """The reference's warm-up + cosine schedule, indexed by optax's 0-based update count.

    The reference counts steps from 1: update k (1-based) uses lr(k) = k / warmup * lr_init during warm-up,
    then lr_end + 0.5 (lr_init - lr_end)(1 + cos(pi (k - warmup) / (total - warmup))). optax counts from 0,
    hence `count + 1`. (Upstream runs its very first update at Adam's default 1e-3 because it assigns the lr
    after the update; we use lr(1), the value its formula intends.)

    `steps_per_epoch` counts batches (forward passes); with config.train.grad_accum_steps = k the schedule
    counts optimizer updates, steps_per_epoch / k per epoch, so warm-up and cosine keep their lengths in epochs.

    `segments` (epochs, lr_segments.py; None = [(0, config.train.epochs)]): the first is this schedule over its
    epochs, each later one (a finished run trained longer) a cosine from `lr_segments.extension_start_lr`.
    """
    t = train_config
    updates_per_epoch = steps_per_epoch / check_grad_accum_steps(t.grad_accum_steps)
    warmup = int(t.warmup_epochs * updates_per_epoch)
    first_epochs = t.epochs if segments is None else segments[0][1]
    total = max(int(first_epochs * updates_per_epoch), warmup + 1)
    sched = optax.warmup_cosine_decay_schedule(0.0, t.lr_init, warmup, decay_steps=total, end_value=t.lr_end)
    if segments is None or len(segments) == 1:
        return lambda count: sched(count + 1)
    bounds = [int(end * updates_per_epoch) for _, end in segments]
    return lr_segments.segmented(sched, bounds, lr_segments.extension_start_lr(t), t.lr_end)


def check_grad_accum_steps(k: int) -> int:
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ConfigError(f'config.train.grad_accum_steps={k!r}: expected an integer >= 1 (1 = no accumulation)')
    return k


def check_ema(train_config: ml_collections.ConfigDict) -> None:
    t = train_config
    if not 0.0 <= t.ema_decay < 1.0:
        raise ConfigError(f'config.train.ema_decay={t.ema_decay!r}: expected 0 <= decay < 1 (0 = no EMA)')
    if not t.ema_tau >= 0.0:
        raise ConfigError(f'config.train.ema_tau={t.ema_tau!r}: expected >= 0 optimizer updates (0 = no ramp)')


def check_freeze(freeze: str) -> str:
    if freeze not in FREEZE_POLICIES:
        raise ConfigError(f'config.train.freeze: unknown policy {freeze!r}; expected one of {FREEZE_POLICIES}')
    return freeze


def trainable_mask(params: Any, freeze: str, output_convs: tuple[str, ...]) -> Any:
    """True for parameters that train under `config.train.freeze` ('none', 'backbone', 'all_but_heads')."""
    check_freeze(freeze)

    def trainable(path, _):
        names = [getattr(k, 'key', str(k)) for k in path]
        if freeze == 'backbone':
            return names[0] != 'backbone'
        if freeze == 'all_but_heads':
            return names[0] == 'head' and names[1] in output_convs
        return True

    return jax.tree_util.tree_map_with_path(trainable, params)


def create_optimizer(
    train_config: ml_collections.ConfigDict, lr_fn: optax.Schedule, params: Any, output_convs: tuple[str, ...]
) -> optax.GradientTransformation:
    """Adam (epsilon config.train.adam_eps) with optional global-norm clipping and freezing.

    config.train.grad_accum_steps = k > 1 wraps it in `optax.MultiSteps`: the mean gradient of k consecutive
    batches makes one update (clipped as a whole), the k - 1 steps before it leave the params unchanged.
    """
    t = train_config
    k = check_grad_accum_steps(t.grad_accum_steps)
    tx = optax.adam(lr_fn, eps=t.adam_eps)
    if t.grad_clip_norm > 0:
        tx = optax.chain(optax.clip_by_global_norm(t.grad_clip_norm), tx)
    if check_freeze(t.freeze) != 'none':
        mask = trainable_mask(params, t.freeze, output_convs)
        labels = jax.tree.map(lambda m: 'train' if m else 'frozen', mask)
        tx = optax.multi_transform({'train': tx, 'frozen': optax.set_to_zero()}, labels)
    if k > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=k).gradient_transformation()
    return tx


def create_train_state(
    train_config: ml_collections.ConfigDict, model: Any, variables: dict, lr_fn: optax.Schedule
) -> TrainState:
    """A state around `variables` ({'params', 'batch_stats'}: fresh, transferred or restored).

    With config.train.ema_decay > 0 the EMA starts as a copy of `variables` (own buffers: the mesh train step
    donates the state, and a buffer cannot be donated twice)."""
    check_ema(train_config)
    tx = create_optimizer(train_config, lr_fn, variables['params'], model.output_convs)
    model_vars = {'params': variables['params'], 'batch_stats': variables['batch_stats']}
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=variables['params'],
        batch_stats=variables['batch_stats'],
        opt_state=tx.init(variables['params']),
        ema=jax.tree.map(jnp.array, model_vars) if train_config.ema_decay > 0 else None,
        apply_fn=model.apply,
        tx=tx,
        ema_decay=float(train_config.ema_decay),
        ema_tau=float(train_config.ema_tau),
    )


def _losses(params, batch_stats, apply_fn, batch, loss_kw, train: bool, weights=None):
    variables = {'params': params, 'batch_stats': batch_stats}
    if train:
        outputs, updates = apply_fn(variables, batch['image'], train=True, mutable=['batch_stats'])
        new_stats = updates['batch_stats']
    else:
        outputs, new_stats = apply_fn(variables, batch['image'], train=False), batch_stats
    total, metrics = yolo_loss(outputs, batch['labels'], batch['bboxes'], weights=weights, **loss_kw)
    return total, (metrics, new_stats)


def train_step(
    state: TrainState, batch: dict, *, loss_kw: dict, lr_fn: optax.Schedule, axis_name: str | None = None
) -> tuple[TrainState, dict]:
    """One Adam update on a batch; returns (state, metrics): scalars giou, conf, prob, total, grad_norm, lr, finite.

    A non-finite loss or gradient leaves the state unchanged and sets metrics['finite'] = 0: the host stops the
    run on seeing it. `axis_name` is set under pmap only (gradients and metrics averaged over it).

    Under gradient accumulation (optax.MultiSteps) a step accumulates this batch's gradient and every k-th step
    applies the update; grad_norm is this batch's, lr the one of the update it contributes to. BatchNorm
    statistics move at every step. The EMA (when on) follows each applied update, with the decay ramped by the
    number of updates (`ema_decay_at`).
    """

    def loss_fn(params):
        return _losses(params, state.batch_stats, state.apply_fn, batch, loss_kw, train=True)

    (total, (metrics, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    if axis_name is not None:
        grads, metrics, total = jax.lax.pmean((grads, metrics, total), axis_name)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(total) & jnp.isfinite(grad_norm)
    updates, new_opt = state.tx.update(grads, state.opt_state, state.params)
    new = state.replace(
        step=state.step + 1,
        params=optax.apply_updates(state.params, updates),
        batch_stats=new_stats,
        opt_state=new_opt,
    )
    done = optimizer_updates(state)
    if state.ema is not None:
        applied = optimizer_updates(new) > done  # always, unless accumulating
        decay = ema_decay_at(state.ema_decay, state.ema_tau, optimizer_updates(new))
        ema = update_ema(state.ema, new.variables, decay)
        new = new.replace(ema=jax.tree.map(lambda n, o: jnp.where(applied, n, o), ema, state.ema))
    # Select, don't branch: keeps the step a single straight-line program.
    new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, state)
    metrics = dict(metrics, total=total, grad_norm=grad_norm, lr=lr_fn(done), finite=finite.astype(jnp.float32))
    return new, metrics


def eval_step(state: TrainState, batch: dict, *, loss_kw: dict, axis_name: str | None = None) -> dict:
    """Validation (BatchNorm in inference mode): loss sums weighted by batch['valid'] and the example count."""
    _, (metrics, _) = _losses(state.params, state.batch_stats, state.apply_fn, batch, loss_kw, False, batch['valid'])
    n = jnp.sum(batch['valid'])
    sums = {k: v * n for k, v in metrics.items()}
    sums['count'] = n
    if axis_name is not None:
        sums = jax.lax.psum(sums, axis_name)
    return sums


def frozen_stats_mask(batch_stats: Any, freeze: str) -> Any:
    """True for BatchNorm statistics that the freeze policy keeps fixed (frozen parts run BN in inference mode)."""
    frozen = FROZEN_PARTS[freeze]
    return jax.tree_util.tree_map_with_path(lambda path, _: getattr(path[0], 'key', None) in frozen, batch_stats)


def batch_stats_step(state: TrainState, batch: dict, *, momentum: float, freeze: str) -> Any:
    """This batch's BatchNorm statistics under the current params (per layer 'mean' and 'var').

    Runs BatchNorm in training mode from zero running statistics: one update leaves (1 - momentum) * batch stat.
    Layers that the freeze policy runs in inference mode normalise with their own statistics (not zeros, which
    would feed the trainable layers garbage) and return them unchanged.
    """
    frozen = frozen_stats_mask(state.batch_stats, freeze)
    start = jax.tree.map(lambda f, x: x if f else jnp.zeros_like(x), frozen, state.batch_stats)
    _, updates = state.apply_fn({'params': state.params, 'batch_stats': start}, batch['image'], train=True,
                                mutable=['batch_stats'])
    return jax.tree.map(lambda f, x: x if f else x / (1.0 - momentum), frozen, updates['batch_stats'])


def initial_state(config: ml_collections.ConfigDict, model: Any, steps_per_epoch: int,
                  segments: list[tuple[int, int]] | None = None):
    """(learning-rate schedule over `segments`, fresh train state): transferred weights when
    config.train.init_from is set."""
    from yolo_jax import transfer  # noqa: PLC0415

    lr_fn = create_learning_rate_fn(config.train, steps_per_epoch, segments)
    if config.train.init_from:
        variables = transfer.initial_variables(config, model)
    else:
        variables = transfer.fresh_variables(config, model)
    return lr_fn, create_train_state(config.train, model, variables, lr_fn)


def build_model_and_state(config: ml_collections.ConfigDict, steps_per_epoch: int, parallel_mode: str = 'mesh',
                          segments: list[tuple[int, int]] | None = None):
    """(model, learning-rate schedule, fresh train state) as a run builds them: BatchNorm synchronised under pmap,
    frozen parts' BatchNorm in inference mode, transferred weights when config.train.init_from is set; the
    schedule over the run's lr `segments` (lr_segments.plan; None: one over config.train.epochs)."""
    model = create_model(config.model, bn_axis_name=PMAP_AXIS if parallel_mode == 'pmap' else None,
                         freeze=config.train.freeze)
    lr_fn, state = initial_state(config, model, steps_per_epoch, segments)
    return model, lr_fn, state
