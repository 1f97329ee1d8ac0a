"""Schedule, train/eval steps and freezing (no input pipeline needed)."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import loss_kw
from test_loss import random_problem

from configs.mnist import get_config
from yolo_jax import steps, train
from yolo_jax.models import create_model, init_variables


def reference_lr(global_step, warmup, total, lr_init, lr_end):
    """The reference's formula (1-based global step)."""
    if global_step < warmup:
        return global_step / warmup * lr_init
    return lr_end + 0.5 * (lr_init - lr_end) * (1 + math.cos((global_step - warmup) / (total - warmup) * math.pi))


def test_schedule_matches_reference_formula():
    config = get_config()
    spe = 250
    fn = steps.create_learning_rate_fn(config.train, spe)
    warmup, total = 2 * spe, 100 * spe
    for k in (1, 2, 250, warmup - 1, warmup, warmup + 1, (warmup + total) // 2, total - 1, total):
        expect = reference_lr(k, warmup, total, 1e-4, 1e-6)
        # optax count = k - 1; optax's float32 polynomial warm-up rounds to ~3e-5 relative.
        assert float(fn(k - 1)) == pytest.approx(expect, rel=1e-4, abs=1e-12), k
    assert float(fn(0)) == pytest.approx(1e-4 / warmup, rel=1e-4)  # first update: lr(1), not upstream's 1e-3 quirk


def _setup(variant='tiny,smoke', **train_overrides):
    config = get_config(variant)
    config.model.num_classes = 3
    for k, v in train_overrides.items():
        config.train[k] = v
    model = create_model(config.model, freeze=config.train.freeze)
    lr_fn = steps.create_learning_rate_fn(config.train, 10)
    variables = init_variables(model, jax.random.key(0))
    state = steps.create_train_state(config.train, model, variables, lr_fn)
    rng = np.random.default_rng(0)
    outputs, labels, bboxes = random_problem(
        rng, 4, config.model.input_size, config.model.strides, config.model.anchors, 3, 4, max_bbox=8, p_respond=0.1
    )
    batch = {
        'image': rng.uniform(size=(4, config.model.input_size, config.model.input_size, 3)).astype(np.float32),
        'labels': tuple(labels),
        'bboxes': tuple(bboxes),
        'valid': np.ones(4, np.float32),
    }
    step = jax.jit(functools.partial(steps.train_step, loss_kw=loss_kw(config), lr_fn=lr_fn))
    return config, state, batch, step


def test_train_steps_reduce_loss_and_update_batch_stats():
    _, state, batch, step = _setup(lr_init=3e-3, warmup_epochs=0)
    losses = []
    first_stats = state.batch_stats
    for _ in range(15):
        state, metrics = step(state, batch)
        losses.append(float(metrics['total']))
        assert float(metrics['finite']) == 1.0
    assert losses[-1] < 0.7 * losses[0], losses
    assert int(state.step) == 15
    moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), first_stats, state.batch_stats)
    assert max(jax.tree.leaves(moved)) > 0
    assert step._cache_size() == 1  # no recompilation across steps


def test_nan_guard_skips_update():
    config, state, batch, step = _setup()
    batch = dict(batch, image=np.full_like(batch['image'], np.nan))  # a NaN input poisons loss and gradients
    new, metrics = step(state, batch)
    assert float(metrics['finite']) == 0.0
    assert int(new.step) == 0  # unchanged state
    for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(state.params)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(train.NonFiniteLossError, match='step 1'):
        train._check_finite({k: float(v) for k, v in metrics.items()}, 1, has_checkpoint=False)


def test_eval_step_weights_padding():
    config, state, batch, _ = _setup()
    ev = jax.jit(functools.partial(steps.eval_step, loss_kw=loss_kw(config)))
    full = ev(state, batch)
    half = dict(batch, valid=np.array([1, 1, 0, 0], np.float32))
    part = ev(state, half)
    first2 = ev(state, jax.tree.map(lambda x: x[:2], batch))
    assert float(full['count']) == 4 and float(part['count']) == 2
    assert float(part['total']) == pytest.approx(float(first2['total']), rel=1e-5)


@pytest.mark.parametrize('freeze', ['backbone', 'all_but_heads'])
def test_freeze_policies(freeze):
    _, state, batch, step = _setup(freeze=freeze, warmup_epochs=0)
    new, _ = step(state, batch)
    # Frozen parts run BatchNorm in inference mode: their statistics stay bit-identical, the rest move.
    frozen = steps.frozen_stats_mask(state.batch_stats, freeze)
    for f, a, b in zip(jax.tree.leaves(frozen), jax.tree.leaves(state.batch_stats), jax.tree.leaves(new.batch_stats)):
        assert f == bool(np.all(np.asarray(a) == np.asarray(b)))
    changed = jax.tree_util.tree_map_with_path(
        lambda p, a, b: (jax.tree_util.keystr(p), bool(np.any(np.asarray(a) != np.asarray(b)))),
        state.params,
        new.params,
    )
    for path, did_change in jax.tree.leaves(changed, is_leaf=lambda x: isinstance(x, tuple)):
        is_output = any(f"'{n}'" in path for n in ('conv_009', 'conv_012'))
        if freeze == 'backbone':
            assert did_change == ("'backbone'" not in path), path
        else:
            assert did_change == is_output, path


@pytest.mark.parametrize('freeze', ['none', 'backbone', 'all_but_heads'])
def test_recalibrated_inference_equals_training_mode_on_the_batch(freeze):
    """Recalibrated on one batch, inference mode on that batch computes what training mode does: every trainable
    BN normalises with that batch's statistics either way, and frozen parts use their own statistics both ways."""
    from yolo_jax.parallel import Parallel

    config, state, batch, _ = _setup(freeze=freeze)
    par = Parallel('mesh', steps.train_step, steps.eval_step,
                   functools.partial(steps.batch_stats_step, momentum=config.model.bn_momentum, freeze=freeze))
    new = train.recalibrate_batch_norm(par, state, [batch], freeze)
    trained, _ = state.apply_fn(state.variables, batch['image'], train=True, mutable=['batch_stats'])
    inferred = new.apply_fn(new.variables, batch['image'], train=False)
    for a, b in zip(jax.tree.leaves(trained), jax.tree.leaves(inferred), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=2e-3, atol=2e-3)


def test_recalibrate_batch_norm_averages_batch_statistics():
    """The first BN layer's recalibrated mean/var equal the average of per-batch moments of its input, computed
    independently (the first conv's output via lax.conv with the model's kernel)."""
    from yolo_jax.models.layers import conv_padding
    from yolo_jax.parallel import Parallel

    config, state, batch, _ = _setup()
    par = Parallel('mesh', steps.train_step, steps.eval_step,
                   functools.partial(steps.batch_stats_step, momentum=config.model.bn_momentum, freeze='none'))
    rng = np.random.default_rng(3)
    batches = [dict(batch, image=rng.uniform(size=batch['image'].shape).astype(np.float32)) for _ in range(3)]

    new = train.recalibrate_batch_norm(par, state, batches, 'none')
    kernel = state.params['backbone']['conv_000']['conv']['kernel']
    means, variances = [], []
    for b in batches:
        y = np.asarray(jax.lax.conv_general_dilated(b['image'], kernel, (1, 1), conv_padding(3, 1),
                                                    dimension_numbers=('NHWC', 'HWIO', 'NHWC')), np.float64)
        means.append(y.mean(axis=(0, 1, 2)))
        variances.append(y.var(axis=(0, 1, 2)))
    got = new.batch_stats['backbone']['conv_000']['bn']
    np.testing.assert_allclose(got['mean'], np.mean(means, 0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got['var'], np.mean(variances, 0), rtol=1e-3, atol=1e-7)
    for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(state.params)):  # weights untouched
        np.testing.assert_array_equal(a, b)


def _bn_inference(apply_fn):
    """`apply_fn` with BatchNorm always in inference mode: images no longer interact through batch statistics."""

    def apply(variables, x, train=False, mutable=()):
        out = apply_fn(variables, x, train=False)
        return (out, {'batch_stats': variables['batch_stats']}) if mutable else out

    return apply


@pytest.mark.parametrize('accum', [1, 2])
def test_ema_follows_numpy_recurrence(accum):
    """EMA of params and BatchNorm statistics against YOLOv5's recurrence in NumPy over the raw weights after each
    optimizer update u = 1, 2, ...: ema = d ema + (1 - d) raw, d = decay (1 - exp(-u / tau)), starting from the
    initial weights. With accumulation (k = 2) the EMA moves only on the steps that apply an update, the params
    stay bit-identical in between, and the lr metric (the schedule) advances once per k steps."""
    decay, tau, k = 0.9, 3.0, accum
    _, state, batch, step = _setup(lr_init=3e-3, warmup_epochs=1, ema_decay=decay, ema_tau=tau, grad_accum_steps=k)
    as_np = functools.partial(jax.tree.map, lambda x: np.asarray(x, np.float64))
    expect = as_np(steps.eval_state(state).variables)  # the EMA starts at the initial weights
    lrs, updates = [], 0
    for i in range(1, 3 * k + 1):
        before = state
        state, metrics = step(state, batch)
        lrs.append(float(metrics['lr']))
        if i % k:  # accumulating: nothing applied, the EMA holds
            for a, b in zip(jax.tree.leaves((before.params, before.ema)), jax.tree.leaves((state.params, state.ema))):
                np.testing.assert_array_equal(a, b)
            continue
        updates += 1
        d = decay * (1 - math.exp(-updates / tau))
        expect = jax.tree.map(lambda e, v, d=d: d * e + (1 - d) * v, expect, as_np(state.variables))
    assert int(steps.optimizer_updates(state)) == updates == 3
    got = as_np(steps.eval_state(state).variables)
    for (path, e), g in zip(jax.tree_util.tree_flatten_with_path(expect)[0], jax.tree.leaves(got), strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-7, err_msg=jax.tree_util.keystr(path))
    raw = jax.tree.leaves(state.params)
    assert max(float(np.abs(a - b).max()) for a, b in zip(raw, jax.tree.leaves(got['params']))) > 1e-4
    # The schedule counts optimizer updates: each of update u's k steps reports lr(u) (warm-up: 10 / k updates).
    assert lrs == pytest.approx([reference_lr(i // k + 1, 10 // k, 20 // k, 3e-3, 1e-6) for i in range(3 * k)],
                                rel=1e-4)


def test_accumulated_micro_batches_equal_one_big_batch():
    """k = 2 micro-batches of 2 images give the update of one step on the 4 images, with BatchNorm in inference
    mode. Equal up to float rounding: Adam's moments (from the mean gradient: the loss is a mean over images, so
    the mean of the micro-batches' gradients is the big batch's) and the params after the update. Not equal in
    general: with BatchNorm in training mode each micro-batch is normalised by its own statistics (other
    activations, other gradients), and the running averages take k momentum updates instead of one."""
    # A constant learning rate: an epoch of the big batch has half the steps, so schedules indexed by steps per
    # epoch (10 here for both) would differ.
    kw = dict(lr_init=1e-3, lr_end=1e-3, warmup_epochs=0)
    _, big, batch, step_big = _setup(**kw)
    _, acc, _, step_acc = _setup(**kw, grad_accum_steps=2)
    big = big.replace(apply_fn=_bn_inference(big.apply_fn))
    acc = acc.replace(apply_fn=_bn_inference(acc.apply_fn))
    halves = [jax.tree.map(lambda x, s=s: x[s], batch) for s in (slice(0, 2), slice(2, 4))]

    mid, m1 = step_acc(acc, halves[0])
    for a, b in zip(jax.tree.leaves(acc.params), jax.tree.leaves(mid.params), strict=True):
        np.testing.assert_array_equal(a, b)  # the first micro-batch only accumulates
    acc, m2 = step_acc(mid, halves[1])
    big, m = step_big(big, batch)
    assert int(acc.step) == 2 and int(steps.optimizer_updates(acc)) == 1 and int(big.step) == 1
    assert (float(m1['total']) + float(m2['total'])) / 2 == pytest.approx(float(m['total']), rel=1e-5)
    adam_acc, adam_big = acc.opt_state.inner_opt_state[0], big.opt_state[0]  # optax.adam: (ScaleByAdamState, ...)
    for moment in ('mu', 'nu'):
        for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(getattr(adam_acc, moment))[0],
                                jax.tree.leaves(getattr(adam_big, moment)), strict=True):
            scale = float(np.abs(b).max())
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * scale, err_msg=f'{moment} {path}')
    moved = 0
    for (path, a), b, p0 in zip(jax.tree_util.tree_flatten_with_path(acc.params)[0], jax.tree.leaves(big.params),
                                jax.tree.leaves(mid.params), strict=True):
        a, b, p0 = (np.asarray(x, np.float64) for x in (a, b, p0))
        # Adam's first update is lr * g / (|g| + eps): at most lr = 1e-3 per weight. Equal to 1e-3 of it.
        np.testing.assert_allclose(a - p0, b - p0, atol=1e-6, err_msg=jax.tree_util.keystr(path))
        moved += int(np.sum(np.abs(b - p0) > 1e-4))
    assert moved > 1000


def test_training_option_errors_name_the_field():
    config = get_config('tiny,smoke')
    for field, value, match in (('ema_decay', 1.0, r'config.train.ema_decay=1.0'),
                                ('ema_tau', -1.0, r'config.train.ema_tau=-1.0'),
                                ('grad_accum_steps', 0, r'config.train.grad_accum_steps=0')):
        bad = get_config('tiny,smoke')
        bad.train[field] = value
        with pytest.raises(ValueError, match=match):
            steps.check_ema(bad.train)
            steps.create_learning_rate_fn(bad.train, 10)
    assert steps.check_grad_accum_steps(config.train.grad_accum_steps) == 1
