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
    variables = init_variables(model, jax.random.key(0), config.model.input_size)
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
