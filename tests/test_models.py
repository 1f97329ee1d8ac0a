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
    variables = init_variables(model, jax.random.key(0))
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


# sha256 over every param (sorted paths) of a fresh eager init (key 0, width 0.125, 3 classes), recorded at commit
# 85a95d1, before config.model.kernel_init existed (jax 0.10.2, flax 0.12.8, CPU): 'normal' must reproduce the
# reference's init bit for bit. The tiny models cover both layer builders (yolov3.py's and yolov4.py's).
NORMAL_INIT_SHA256 = {
    'yolov3_tiny': 'a3ab7a1cd59059e2185ec8f329691dfaca207c86ea723a145ccaae5ea7a2b585',
    'yolov4_tiny': '83bfd80b685af79deb20008701f0f94e4d2cc54577ef454591c3728224df735e',
}


def _fresh_params(name: str, width: float, kernel_init: str) -> tuple[dict, tuple[str, ...]]:
    mc = model_config(name, num_classes=3, input_size=64)
    mc.width_multiplier, mc.kernel_init = width, kernel_init
    model = create_model(mc)
    return model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)['params'], model.output_convs


@pytest.mark.parametrize('name', sorted(NORMAL_INIT_SHA256))
def test_normal_kernel_init_is_the_reference_bit_for_bit(name):
    import hashlib

    params, _ = _fresh_params(name, 0.125, 'normal')
    h = hashlib.sha256()
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    for path, x in sorted(leaves, key=lambda t: jax.tree_util.keystr(t[0])):
        h.update(jax.tree_util.keystr(path).encode())
        h.update(np.asarray(x, np.float32).tobytes())
    assert h.hexdigest() == NORMAL_INIT_SHA256[name]


@pytest.mark.parametrize('name', ['yolov3_tiny', 'yolov4_tiny'])
def test_he_kernel_init_stddev_is_sqrt_2_over_fan_in(name):
    """Half-width kernels: empirical stddev of each conv before BatchNorm = sqrt(2 / (kh kw c_in)) within 3% for
    the large ones (>= 10^4 values: sampling error < 0.7%), 20% for the rest; output convs keep stddev 0.01."""
    params, outputs = _fresh_params(name, 0.5, 'he')
    checked = 0
    for part in ('backbone', 'head'):
        for conv, p in params[part].items():
            k = np.asarray(p['kernel'] if conv in outputs else p['conv']['kernel'], np.float64)
            want = 0.01 if conv in outputs else np.sqrt(2.0 / np.prod(k.shape[:3]))
            tol = 0.03 if k.size >= 10_000 else 0.2
            assert k.std() == pytest.approx(want, rel=tol), (part, conv, k.shape)
            assert abs(k.mean()) < 6 * want / np.sqrt(k.size), (part, conv)
            checked += k.size >= 10_000
    assert checked >= 6  # yolov3_tiny at half width: 7 kernels of >= 10^4 values


def test_kernel_init_reaches_every_conv_of_every_model():
    """Every conv of v3, v3-tiny, v4 and v4-tiny is built with config.model.kernel_init's initialiser, except the
    output convs (stddev 0.01 always). Traced with eval_shape (no values): the tests above check the values."""
    import flax.linen as nn

    from yolo_jax.defaults import MODEL_NAMES
    from yolo_jax.models.layers import HE_INIT, KERNEL_INIT

    for name in MODEL_NAMES:
        for kernel_init, init_fn in (('he', HE_INIT), ('normal', KERNEL_INIT)):
            mc = model_config(name, num_classes=3, input_size=64)
            mc.kernel_init = kernel_init
            model = create_model(mc)
            seen = {}

            def record(next_fun, args, kwargs, context, seen=seen):
                if isinstance(context.module, nn.Conv):
                    seen['/'.join(context.module.scope.path)] = context.module.kernel_init
                return next_fun(*args, **kwargs)

            with nn.intercept_methods(record):
                jax.eval_shape(lambda m=model: m.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
            outputs = {f'head/{c}' for c in model.output_convs}
            assert len(seen) == {'yolov3': 75, 'yolov3_tiny': 13, 'yolov4': 110, 'yolov4_tiny': 21}[name]
            for path, fn in seen.items():
                expect = KERNEL_INIT if path in outputs else init_fn
                assert fn is expect, (name, kernel_init, path)
    mc = model_config('yolov3_tiny')
    mc.kernel_init = 'xavier'
    with pytest.raises(ValueError, match=r"config.model.kernel_init: unknown initialiser 'xavier'"):
        create_model(mc)
