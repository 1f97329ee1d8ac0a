"""Model shapes, Darknet weight counts, Darknet padding/pooling semantics and the factory."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from yolo_jax.defaults import model_config
from yolo_jax.models import create_model, init_variables, iter_darknet_layers
from yolo_jax.models.layers import ConvBN, maxpool2x2


def _shapes(name, num_classes, size, width=1.0):
    mc = model_config(name, num_classes=num_classes, input_size=size)
    mc.width_multiplier = width
    model = create_model(mc)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False))
    outputs = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2, size, size, 3))), variables)
    return model, variables, outputs


@pytest.mark.parametrize(
    'name, grids, count',
    [('yolov3', (52, 26, 13), 62_001_757), ('yolov3_tiny', (26, 13), 8_858_734)],
)
def test_416_shapes_and_darknet_weight_count(name, grids, count):
    """With 80 classes the Flax variables hold exactly as many values as Darknet's .weights file."""
    _, variables, outputs = _shapes(name, 80, 416)
    assert [o.shape for o in outputs] == [(2, g, g, 255) for g in grids]
    assert all(o.dtype == jnp.float32 for o in outputs)
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables))
    assert n == count
    layers = list(iter_darknet_layers(variables))
    assert len(layers) == (75 if name == 'yolov3' else 13)
    # Output convs: bias + kernel, no batch stats; every other conv has BN.
    outs = [path for path, p, s in layers if s is None]
    assert outs == [f'head/{n}' for n in create_model(model_config(name)).output_convs]


def test_other_sizes_and_width_multiplier():
    _, _, outputs = _shapes('yolov3', 10, 320, width=0.25)
    assert [o.shape for o in outputs] == [(2, 40, 40, 45), (2, 20, 20, 45), (2, 10, 10, 45)]
    _, _, outputs = _shapes('yolov3_tiny', 3, 160)
    assert [o.shape for o in outputs] == [(2, 10, 10, 24), (2, 5, 5, 24)]


def _leaky(x):
    return np.where(x > 0, x, 0.1 * x)


def test_stride2_conv_pads_top_left_like_darknet():
    """A 3x3 stride-2 ConvBN equals a NumPy loop that reads x[2i+dy-1, 2j+dx-1] (zero outside)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 8, 8, 2)).astype(np.float32)
    layer = ConvBN(3, 3, 2, bn_epsilon=1e-3)
    variables = layer.init(jax.random.key(1), x, train=False)
    y = np.asarray(layer.apply(variables, x, train=False))
    k = np.asarray(variables['params']['conv']['kernel'])  # (3, 3, in, out)
    expect = np.zeros((1, 4, 4, 3))
    for i in range(4):
        for j in range(4):
            for dy in range(3):
                for dx in range(3):
                    r, c = 2 * i + dy - 1, 2 * j + dx - 1
                    if 0 <= r < 8 and 0 <= c < 8:
                        expect[0, i, j] += x[0, r, c] @ k[dy, dx]
    expect = _leaky(expect / np.sqrt(1 + 1e-3))  # fresh BN: mean 0, var 1, scale 1, bias 0
    np.testing.assert_allclose(y, expect, rtol=1e-5, atol=1e-5)


def test_tiny_stride1_maxpool_keeps_size():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 5, 5, 1)), jnp.float32)
    y = np.asarray(maxpool2x2(x, 1))
    xp = np.pad(np.asarray(x)[0, :, :, 0], ((0, 1), (0, 1)), constant_values=-np.inf)
    expect = np.array([[xp[i : i + 2, j : j + 2].max() for j in range(5)] for i in range(5)])
    np.testing.assert_array_equal(y[0, :, :, 0], expect)


def test_forward_runs_and_batchnorm_fields():
    mc = model_config('yolov3_tiny', num_classes=2, input_size=64)
    mc.bn_momentum, mc.bn_epsilon = 0.5, 1e-5
    model = create_model(mc)
    assert (model.bn_momentum, model.bn_epsilon) == (0.5, 1e-5)
    variables = init_variables(model, jax.random.key(0), 64)
    x = jnp.ones((2, 64, 64, 3)) * 0.5
    outputs, updates = model.apply(variables, x, train=True, mutable=['batch_stats'])
    assert [o.shape for o in outputs] == [(2, 4, 4, 21), (2, 2, 2, 21)]
    # One training step moves the running mean by (1 - momentum) of the batch mean.
    old = variables['batch_stats']['backbone']['conv_000']['bn']['mean']
    new = updates['batch_stats']['backbone']['conv_000']['bn']['mean']
    assert not np.allclose(old, new)


def test_factory_errors():
    mc = model_config('yolov3')
    mc.name = 'resnet'
    with pytest.raises(ValueError, match='config.model.name'):
        create_model(mc)
    mc = model_config('yolov3')
    mc.dtype = 'int8'
    with pytest.raises(ValueError, match='config.model.dtype'):
        create_model(mc)
    with pytest.raises(ValueError, match='config.model.name'):
        model_config('yolov5')
