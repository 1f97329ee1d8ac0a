"""BatchNorm folding, bfloat16 compute, the hand-written BatchNorm backward and the reshape max-pool.

Oracles: the unfolded network in inference mode, the float32 loss, Flax's autodiff BatchNorm and max_pool.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import loss_kw
from test_loss import random_problem

from configs.mnist import get_config
from yolo_jax import steps
from yolo_jax.models import create_model, fold_batchnorm, fold_variables, init_variables


def _small(variant: str, **model):
    config = get_config(variant)
    config.model.num_classes = 3
    config.model.width_multiplier = 0.125
    config.model.input_size = 64
    config.model.update(model)
    return config


@pytest.mark.parametrize('variant', ['', 'tiny'])
def test_fold_batchnorm_equals_the_unfolded_network(variant):
    config = _small(variant)
    model = create_model(config.model)
    variables = init_variables(model, jax.random.key(0))
    # Non-trivial BN: random scale/bias/statistics, as after training (NumPy draws: no per-shape compilation).
    rng = np.random.default_rng(1)
    perturb = lambda a: np.asarray(a) + 0.5 * rng.uniform(size=a.shape).astype(np.float32)  # noqa: E731
    variables = {'params': jax.tree.map(perturb, variables['params']),
                 'batch_stats': jax.tree.map(perturb, variables['batch_stats'])}
    x = jax.random.uniform(jax.random.key(2), (2, 64, 64, 3))
    folded_model, folded = fold_variables(config.model, variables)
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(folded)]
    assert 'batch_stats' not in folded and not any("'bn'" in p for p in paths)
    want = model.apply(variables, x, train=False)
    got = folded_model.apply(folded, x, train=False)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(jnp.abs(b).max()))
    n_folded = sum(x.size for x in jax.tree.leaves(folded))
    n_convs = sum(1 for p, _ in jax.tree_util.tree_leaves_with_path(variables['params']) if 'scale' in str(p[-1]))
    # Each BN conv trades gamma, beta, mean, var (4 x C) for a bias (C).
    n_bn = sum(x.size for x in jax.tree.leaves(variables['batch_stats']))
    assert n_folded == sum(x.size for x in jax.tree.leaves(variables)) - 3 * n_bn // 2 and n_convs > 0
    with pytest.raises(ValueError, match='inference only'):
        folded_model.apply(folded, x, train=True)


def test_fold_batchnorm_hand_computed_and_missing_stats():
    params = {'c': {'conv': {'kernel': jnp.full((1, 1, 1, 2), 2.0)}, 'bn': {'scale': jnp.array([1.0, 3.0]),
                                                                          'bias': jnp.array([0.5, -1.0])}}}
    stats = {'c': {'bn': {'mean': jnp.array([1.0, 2.0]), 'var': jnp.array([3.0, 8.0])}}}
    out = fold_batchnorm(params, stats, epsilon=1.0)['c']['conv']
    s = np.array([1 / 2, 3 / 3])  # gamma / sqrt(var + eps)
    np.testing.assert_allclose(out['kernel'][0, 0, 0], 2.0 * s)
    np.testing.assert_allclose(out['bias'], np.array([0.5, -1.0]) - np.array([1.0, 2.0]) * s)
    with pytest.raises(ValueError, match='c/bn'):
        fold_batchnorm(params, {}, epsilon=1e-3)


def test_bfloat16_loss_within_tolerance_of_float32():
    """Same params, bfloat16 compute: params and loss stay float32; the loss moves < 2% (stated tolerance)."""
    cfgs = [_small('tiny', dtype=d) for d in ('float32', 'bfloat16')]
    states = [steps.build_model_and_state(c, 10)[2] for c in cfgs]
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(states[1].params))
    rng = np.random.default_rng(3)
    m = cfgs[0].model
    _, labels, bboxes = random_problem(rng, 2, 64, m.strides, m.anchors, 3, 3, max_bbox=6, p_respond=0.1)
    batch = {'image': rng.uniform(size=(2, 64, 64, 3)).astype(np.float32), 'labels': tuple(labels),
             'bboxes': tuple(bboxes), 'valid': np.ones(2, np.float32)}
    results = []
    for c, s in zip(cfgs, states):
        fn = jax.jit(lambda p, s=s, c=c: steps._losses(p, s.batch_stats, s.apply_fn, batch, loss_kw(c), True))
        (total, (metrics, _)), grads = jax.value_and_grad(fn, has_aux=True)(s.params)
        results.append((total, metrics, jnp.concatenate([g.ravel() for g in jax.tree.leaves(grads)])))
    (t32, m32, g32), (t16, m16, g16) = results
    assert t16.dtype == jnp.float32 and t32 != t16  # bfloat16 really was used
    np.testing.assert_allclose(t16, t32, rtol=2e-2)
    for k in ('giou', 'conf', 'prob'):
        np.testing.assert_allclose(m16[k], m32[k], rtol=2e-2, atol=1e-3 * float(t32))
    cosine = float(g16 @ g32 / (jnp.linalg.norm(g16) * jnp.linalg.norm(g32)))
    assert cosine > 0.85, cosine  # the gradient points the same way (measured 0.91 on this problem)


def test_training_converges_in_bfloat16():
    """The same 15-step descent as test_train.py's float32 check: the loss falls below 0.7x its start."""
    config = get_config('tiny,smoke')
    config.model.update(num_classes=3, dtype='bfloat16')
    config.train.update(lr_init=3e-3, warmup_epochs=0)
    _, lr_fn, state = steps.build_model_and_state(config, 10)
    size = config.model.input_size
    rng = np.random.default_rng(0)
    _, labels, bboxes = random_problem(rng, 4, size, config.model.strides, config.model.anchors, 3, 4, max_bbox=8,
                                       p_respond=0.1)
    batch = {'image': rng.uniform(size=(4, size, size, 3)).astype(np.float32), 'labels': tuple(labels),
             'bboxes': tuple(bboxes), 'valid': np.ones(4, np.float32)}
    step = jax.jit(functools.partial(steps.train_step, loss_kw=loss_kw(config), lr_fn=lr_fn))
    losses = []
    for _ in range(15):
        state, metrics = step(state, batch)
        losses.append(float(metrics['total']))
    assert np.isfinite(losses).all() and losses[-1] < 0.7 * losses[0], losses
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))
    assert step._cache_size() == 1  # no recompilation across steps


def test_batchnorm_custom_backward_equals_flax_autodiff():
    """models.layers.BatchNorm (hand-written backward) against nn.BatchNorm(use_fast_variance=False)."""
    from yolo_jax.models.layers import BatchNorm

    x = 3.0 * jax.random.normal(jax.random.key(0), (2, 5, 7, 6)) + 1.5
    ref = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-3, use_fast_variance=False)
    ours = BatchNorm(momentum=0.9, epsilon=1e-3)
    variables = ref.init(jax.random.key(1), x)
    assert jax.tree.map(jnp.shape, ours.init(jax.random.key(1), x, use_running_average=False)) == jax.tree.map(
        jnp.shape, variables)
    params = {'scale': jnp.linspace(0.5, 2.0, 6), 'bias': jnp.linspace(-1.0, 1.0, 6)}
    stats = {'mean': jnp.full(6, 0.3), 'var': jnp.full(6, 2.0)}

    def run(module, kw):
        def f(p, x):
            y, new = module.apply({'params': p, 'batch_stats': stats}, x, mutable=['batch_stats'], **kw)
            return jnp.sum(jnp.sin(y) * jnp.arange(y.size).reshape(y.shape) / y.size), (y, new)
        (_, (y, new)), grads = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(params, x)
        return y, new, grads

    want = run(ref, {})
    got = run(ours, {'use_running_average': False})
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6), got, want)
    y_eval = ours.apply({'params': params, 'batch_stats': stats}, x, use_running_average=True)
    ref_eval = nn.BatchNorm(use_running_average=True, epsilon=1e-3).apply({'params': params, 'batch_stats': stats}, x)
    np.testing.assert_allclose(y_eval, ref_eval, rtol=1e-5, atol=1e-6)


def test_stride2_maxpool_equals_flax_max_pool_on_odd_sizes():
    from yolo_jax.models.layers import maxpool2x2

    for size in (6, 7):
        x = jax.random.normal(jax.random.key(size), (2, size, size, 3))
        np.testing.assert_array_equal(maxpool2x2(x, 2), nn.max_pool(x, (2, 2), strides=(2, 2), padding='VALID'))
