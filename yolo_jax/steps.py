"""The pure pieces of training: schedule, optimizer, `TrainState`, the train / eval / BatchNorm-statistics steps,
and `build_model_and_state` (a run's model and fresh state).

Nothing here touches data, files or devices: `parallel.py` compiles these functions for one device, a device mesh
or pmap, and `train.py` runs the loop around them. Tests, benchmarks and notebooks use them directly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from yolo_jax.errors import ConfigError
from yolo_jax.loss import yolo_loss
from yolo_jax.models import create_model
from yolo_jax.models.layers import FROZEN_PARTS

FREEZE_POLICIES = ('none', 'backbone', 'all_but_heads')
PMAP_AXIS = 'batch'  # the pmap axis name (parallel.py): BatchNorm statistics are synchronised over it


@flax.struct.dataclass
class TrainState:
    """Everything a training run needs to continue exactly: a pytree saved whole by orbax."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    apply_fn: Callable = flax.struct.field(pytree_node=False)
    tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

    @property
    def variables(self) -> dict:
        return {'params': self.params, 'batch_stats': self.batch_stats}


def create_learning_rate_fn(train_config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
    """The reference's warm-up + cosine schedule, indexed by optax's 0-based update count.

    The reference counts steps from 1: update k (1-based) uses lr(k) = k / warmup * lr_init during warm-up,
    then lr_end + 0.5 (lr_init - lr_end)(1 + cos(pi (k - warmup) / (total - warmup))). optax counts from 0,
    hence `count + 1`. (Upstream runs its very first update at Adam's default 1e-3 because it assigns the lr
    after the update; we use lr(1), the value its formula intends.)
    """
    t = train_config
    warmup = int(t.warmup_epochs * steps_per_epoch)
    total = max(int(t.epochs * steps_per_epoch), warmup + 1)
    sched = optax.warmup_cosine_decay_schedule(0.0, t.lr_init, warmup, decay_steps=total, end_value=t.lr_end)
    return lambda count: sched(count + 1)


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
    """Adam (epsilon config.train.adam_eps) with optional global-norm clipping and freezing."""
    t = train_config
    tx = optax.adam(lr_fn, eps=t.adam_eps)
    if t.grad_clip_norm > 0:
        tx = optax.chain(optax.clip_by_global_norm(t.grad_clip_norm), tx)
    if check_freeze(t.freeze) != 'none':
        mask = trainable_mask(params, t.freeze, output_convs)
        labels = jax.tree.map(lambda m: 'train' if m else 'frozen', mask)
        tx = optax.multi_transform({'train': tx, 'frozen': optax.set_to_zero()}, labels)
    return tx


def create_train_state(
    train_config: ml_collections.ConfigDict, model: Any, variables: dict, lr_fn: optax.Schedule
) -> TrainState:
    """A state around `variables` ({'params', 'batch_stats'}: fresh, transferred or restored)."""
    tx = create_optimizer(train_config, lr_fn, variables['params'], model.output_convs)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=variables['params'],
        batch_stats=variables['batch_stats'],
        opt_state=tx.init(variables['params']),
        apply_fn=model.apply,
        tx=tx,
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
    # Select, don't branch: keeps the step a single straight-line program.
    new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, state)
    metrics = dict(metrics, total=total, grad_norm=grad_norm, lr=lr_fn(state.step), finite=finite.astype(jnp.float32))
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


def initial_state(config: ml_collections.ConfigDict, model: Any, steps_per_epoch: int):
    """(learning-rate schedule, fresh train state): transferred weights when config.train.init_from is set."""
    from yolo_jax import transfer  # noqa: PLC0415

    lr_fn = create_learning_rate_fn(config.train, steps_per_epoch)
    if config.train.init_from:
        variables = transfer.initial_variables(config, model)
    else:
        variables = transfer.fresh_variables(config, model)
    return lr_fn, create_train_state(config.train, model, variables, lr_fn)


def build_model_and_state(config: ml_collections.ConfigDict, steps_per_epoch: int, parallel_mode: str = 'mesh'):
    """(model, learning-rate schedule, fresh train state) as a run builds them: BatchNorm synchronised under pmap,
    frozen parts' BatchNorm in inference mode, transferred weights when config.train.init_from is set."""
    model = create_model(config.model, bn_axis_name=PMAP_AXIS if parallel_mode == 'pmap' else None,
                         freeze=config.train.freeze)
    lr_fn, state = initial_state(config, model, steps_per_epoch)
    return model, lr_fn, state
