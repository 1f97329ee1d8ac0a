"""The TensorFlow baseline (benchmarks/tf_baseline.py) computes what our JAX model and loss compute."""

import functools
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

tf = pytest.importorskip('tensorflow', reason='tensorflow is needed for the TF baseline')

from helpers import loss_kw  # noqa: E402
from test_loss import CASES, random_problem  # noqa: E402

from configs.mnist import get_config  # noqa: E402
from yolo_jax.defaults import model_config  # noqa: E402
from yolo_jax.loss import yolo_loss  # noqa: E402
from yolo_jax.models import create_model, iter_darknet_layers  # noqa: E402
from yolo_jax.steps import create_learning_rate_fn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'benchmarks'))
import tf_baseline as tb  # noqa: E402

SIZE, BATCH, CLASSES, WIDTH = 64, 2, 3, 0.125


def _config(name: str):
    config = get_config('tiny' if name == 'yolov3_tiny' else '')
    config.model.num_classes, config.model.input_size, config.model.width_multiplier = CLASSES, SIZE, WIDTH
    return config


def _random_variables(model, images: np.ndarray, seed: int) -> dict:
    """Flax variables with He-scaled kernels and random BN affine params, so activations neither vanish nor explode
    (stddev-0.01 kernels give outputs ~ the biases); running statistics are one batch's, so inference is normalised."""
    rng = np.random.default_rng(seed)
    # Shapes only: a jitted init of YOLOv3 takes longer to compile than this whole file should run.
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), images[:1], train=False))

    def draw(path, x):
        names = [getattr(k, 'key', str(k)) for k in path]
        if names[-1] == 'kernel':
            return rng.normal(0, np.sqrt(2.0 / np.prod(x.shape[:-1])), x.shape)
        if names[-1] == 'scale':
            return rng.uniform(0.5, 1.5, x.shape)
        return rng.normal(0, 0.2, x.shape)  # BN offsets and output-conv biases

    params = jax.tree_util.tree_map_with_path(lambda p, x: jnp.asarray(draw(p, x), jnp.float32), shapes['params'])
    # A momentum-0 twin: one training-mode pass leaves exactly this batch's statistics as the running ones.
    twin = model.clone(bn_momentum=0.0)
    zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes['batch_stats'])
    _, updates = twin.apply({'params': params, 'batch_stats': zeros}, images, train=True, mutable=['batch_stats'])
    return {'params': params, 'batch_stats': updates['batch_stats']}


@pytest.fixture(scope='module', params=['yolov3', 'yolov3_tiny'])
def pair(request):
    """(config, Flax model, randomized Flax variables, Keras model holding the same weights, images)."""
    config = _config(request.param)
    model = create_model(config.model)
    images = np.random.default_rng(7).uniform(size=(BATCH, SIZE, SIZE, 3)).astype(np.float32)
    variables = _random_variables(model, images, seed=1)
    keras_model = tb.build_model(config.model)
    tb.copy_flax_params(keras_model, variables)
    return config, model, variables, keras_model, images


def _jax_loss(kw: dict):
    """Jitted `yolo_loss`: op-by-op it first compiles every primitive, ~10x slower on a cold cache."""
    return jax.jit(functools.partial(yolo_loss, **kw))


def _flax_count(mc) -> int:
    model = create_model(mc)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False))
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))


@pytest.mark.parametrize(
    'name, classes, width, expect',
    [('yolov3', 80, 1.0, 62_001_757), ('yolov3_tiny', 80, 1.0, 8_858_734), ('yolov3', 3, 0.125, None),
     ('yolov3_tiny', 3, 0.25, None)],
)
def test_value_count_matches_flax(name, classes, width, expect):
    """Kernels, biases and BN gamma/beta/mean/var: as many values as our variables (and Darknet's file at 80)."""
    mc = model_config(name, num_classes=classes, input_size=64)
    mc.width_multiplier = width
    n = tb.count_values(tb.build_model(mc))
    assert n == _flax_count(mc)
    if expect is not None:
        assert n == expect


def test_inference_outputs_match_flax(pair):
    config, model, variables, keras_model, images = pair
    want = [np.asarray(o) for o in model.apply(variables, images, train=False)]
    got = [o.numpy() for o in keras_model(images, training=False)]
    assert [g.shape for g in got] == [w.shape for w in want]
    for g, w in zip(got, want, strict=True):
        # 75 float32 convs summed in another order by oneDNN and XLA: ~1e-4 of the map's range (3.7e-4 / 3.5
        # seen with the current jax/TF wheels), so the bound is 3e-4 of it; a wrong layer is off by O(1).
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=3e-4 * np.abs(w).max())


@pytest.mark.parametrize('name, size, strides, anchors, c, n, b', CASES, ids=[c[0] for c in CASES])
def test_loss_matches_yolo_loss(name, size, strides, anchors, c, n, b):
    outputs, labels, bboxes = random_problem(np.random.default_rng(5), b, size, strides, anchors, c, n)
    kw = {'anchors': anchors, 'strides': strides, 'ignore_thresh': 0.5}
    total, want = _jax_loss(kw)(outputs, labels, bboxes)
    got = tb.loss_components(outputs, labels, bboxes, kw)
    for k in ('giou', 'conf', 'prob', 'total'):
        assert float(got[k]) == pytest.approx(float(want[k]), rel=1e-5, abs=1e-6), k
    assert float(tb.compute_loss(outputs, labels, bboxes, kw)) == pytest.approx(float(total), rel=1e-5)


def test_train_step_loss_and_batch_stats_match_flax(pair):
    """The TF step's loss (taken before its update) is our training-mode loss; its BN moving averages are ours."""
    config, model, variables, _, images = pair
    keras_model = tb.build_model(config.model)  # a fresh copy: the step changes the weights
    tb.copy_flax_params(keras_model, variables)
    m, kw = config.model, loss_kw(config)
    _, labels, bboxes = random_problem(np.random.default_rng(2), BATCH, SIZE, m.strides, m.anchors, CLASSES, 4)
    outputs, updates = model.apply(variables, images, train=True, mutable=['batch_stats'])
    want, _ = _jax_loss(kw)(outputs, labels, bboxes)

    step = tb.make_train_step(keras_model, tb.make_optimizer(config, steps_per_epoch=10), kw)
    loss = float(step(tf.constant(images), tuple(labels), tuple(bboxes)))
    assert np.isfinite(loss)
    assert loss == pytest.approx(float(want), rel=1e-4)
    for path, params, stats in iter_darknet_layers({**variables, 'batch_stats': updates['batch_stats']}):
        name = path.replace('/', '_')
        if stats is None:
            continue
        moving_mean, moving_var = keras_model.get_layer(f'{name}_bn').get_weights()[2:]
        np.testing.assert_allclose(moving_mean, stats['bn']['mean'], rtol=1e-4, atol=1e-5, err_msg=path)
        np.testing.assert_allclose(moving_var, stats['bn']['var'], rtol=1e-4, atol=1e-5, err_msg=path)
        # Adam moved every kernel: the optimizer saw every gradient.
        assert not np.allclose(keras_model.get_layer(f'{name}_conv').get_weights()[0], params['conv']['kernel'])
    assert np.isfinite(float(step(tf.constant(images), tuple(labels), tuple(bboxes))))


def test_learning_rate_schedule_matches_ours():
    config = _config('yolov3')
    config.train.epochs, config.train.warmup_epochs = 5, 2
    lr_fn = create_learning_rate_fn(config.train, steps_per_epoch=10)
    opt = tb.make_optimizer(config, steps_per_epoch=10)
    for k in (0, 1, 10, 19, 20, 21, 35, 49, 60):
        opt.iterations.assign(k)  # Keras evaluates the schedule at its 0-based update count, as optax
        assert float(opt.learning_rate) == pytest.approx(float(lr_fn(k)), rel=1e-5), k
    assert opt.epsilon == config.train.adam_eps
