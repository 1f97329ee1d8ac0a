"""Darknet building blocks in Flax linen (NHWC).

Every convolution of YOLOv3 is either a `ConvBN` (conv without bias → BatchNorm → LeakyReLU(0.1)) or a
plain output convolution with a bias. Darknet pads stride-2 convolutions on the top/left only: a 3x3
stride-2 conv here pads ((1, 0), (1, 0)) and runs VALID, which is what Darknet computes on even-sized
inputs. Flax's 'SAME' would pad bottom/right and shift every feature by one pixel: never use it there.
"""

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from yolo_jax.errors import ConfigError

Array = jnp.ndarray

# Keras' default for conv kernels in the TF2 reference (random_normal, stddev 0.01).
KERNEL_INIT = nn.initializers.normal(stddev=0.01)
# He (Kaiming) init: normal, variance 2 / fan_in (fan_in = kh * kw * in_channels), which keeps the activations'
# scale through ReLU-like layers. The exact gain for LeakyReLU(0.1) is 2 / (1 + 0.1^2) = 1.98, and Mish has no
# closed form; we use the plain ReLU gain 2 (PyTorch's kaiming_normal_ default): a 0.5% difference in stddev.
# Every conv here feeds a BatchNorm, so the scale barely changes the forward pass; it sets how large Adam's steps
# (~lr per weight, whatever its size) are relative to the weights: stddev 0.01 kernels move fast and BatchNorm's
# running averages lag them (see defaults._make_quick).
HE_INIT = nn.initializers.variance_scaling(2.0, 'fan_in', 'normal')
KERNEL_INITS = ('normal', 'he')  # config.model.kernel_init


def kernel_initializer(name: str) -> Callable:
    """The initialiser of the convs before BatchNorm for config.model.kernel_init (one of KERNEL_INITS).

    The linear output convs always use KERNEL_INIT (stddev 0.01): small initial logits and box offsets (exp(tw)
    of a He-initialised output would start far from the anchors), and the He argument is about keeping the scale
    through the next nonlinearity, which they do not have.
    """
    if name == 'normal':
        return KERNEL_INIT
    if name == 'he':
        return HE_INIT
    raise ConfigError(f'config.model.kernel_init: unknown initialiser {name!r}; expected one of {KERNEL_INITS}')


def conv_padding(kernel_size: int, stride: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Darknet's padding: symmetric k//2 at stride 1; top/left only (k//2, 0) at stride 2."""
    p = kernel_size // 2
    if stride == 1:
        return ((p, p), (p, p))
    return ((p, 0), (p, 0))


def scaled_channels(channels: int, width: float) -> int:
    """Channel count scaled by the width multiplier, rounded to a multiple of 8 (at least 8)."""
    if width == 1.0:
        return channels
    return max(8, int(round(channels * width / 8)) * 8)


def make_conv(
    features: int, kernel_size: int, stride: int, *, use_bias: bool, dtype: Any, name: str, kernel_init: str = 'normal'
) -> nn.Module:
    """A convolution with Darknet's padding (see `conv_padding`) and the kernel initialiser `kernel_init`
    ('normal': the reference's, for output convs; see `kernel_initializer`)."""
    k = kernel_size
    return nn.Conv(
        features,
        (k, k),
        strides=(stride, stride),
        padding=conv_padding(k, stride),
        use_bias=use_bias,
        kernel_init=kernel_initializer(kernel_init),
        dtype=dtype,
        name=name,
    )


def _batch_stats(x: Array, axis_name: str | None) -> tuple[Array, Array]:
    """Per-channel mean and (biased, two-pass) variance over all but the last axis, across devices if named.

    Two-pass: E[x^2] - E[x]^2 loses ~1e-3 relative in float32 when |mean| >> std, enough for single- and
    multi-device runs (different summation orders) to drift apart.
    """
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x, axes)
    mean = lax.pmean(mean, axis_name) if axis_name else mean
    var = jnp.mean(jnp.square(x - mean), axes)
    return mean, (lax.pmean(var, axis_name) if axis_name else var)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def batch_norm_train(x: Array, scale: Array, bias: Array, epsilon: float, axis_name: str | None):
    """Training-mode BatchNorm on float32 (..., C): (y, batch mean, batch variance).

    The hand-written backward pass (the textbook formula, three fused passes) replaces autodiff's, which XLA
    compiles into many more passes over the activation: BatchNorm's gradient was the largest cost of the CPU
    train step. The mean and variance outputs are for the running averages only: their cotangents are ignored.
    """
    return _bn_fwd(x, scale, bias, epsilon, axis_name)[0]


def _bn_fwd(x, scale, bias, epsilon, axis_name):
    mean, var = _batch_stats(x, axis_name)
    inv = lax.rsqrt(var + epsilon)
    y = (x - mean) * (inv * scale) + bias
    return (y, mean, var), (x, mean, inv, scale)


def _bn_bwd(epsilon, axis_name, residuals, cotangents):
    x, mean, inv, scale = residuals
    dy = cotangents[0]
    axes = tuple(range(x.ndim - 1))
    xhat = (x - mean) * inv
    dbias, dscale = jnp.sum(dy, axes), jnp.sum(dy * xhat, axes)  # this device's share: pmean'd with the grads
    n = x.size // x.shape[-1]
    total_bias, total_scale = dbias, dscale
    if axis_name:  # the statistics span every device's batch: so do the terms that flow back through them
        total_bias, total_scale = lax.psum((dbias, dscale), axis_name)
        n = n * lax.psum(1, axis_name)
    dx = (scale * inv) * (dy - total_bias / n - xhat * (total_scale / n))
    return dx, dscale, dbias


batch_norm_train.defvjp(_bn_fwd, _bn_bwd)


class BatchNorm(nn.Module):
    """BatchNorm over the last axis with Flax's variable layout ('scale', 'bias'; batch_stats 'mean', 'var').

    Same semantics as `nn.BatchNorm(use_fast_variance=False)`: biased two-pass batch variance, running averages
    `ra = momentum * ra + (1 - momentum) * batch_stat`, statistics in float32 whatever the compute dtype.
    """

    momentum: float = 0.99
    epsilon: float = 1e-3
    axis_name: str | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, use_running_average: bool) -> Array:
        c = x.shape[-1]
        scale = self.param('scale', nn.initializers.ones, (c,), jnp.float32)
        bias = self.param('bias', nn.initializers.zeros, (c,), jnp.float32)
        ra_mean = self.variable('batch_stats', 'mean', jnp.zeros, (c,), jnp.float32)
        ra_var = self.variable('batch_stats', 'var', jnp.ones, (c,), jnp.float32)
        x = x.astype(jnp.float32)
        if use_running_average:
            y = (x - ra_mean.value) * (lax.rsqrt(ra_var.value + self.epsilon) * scale) + bias
        else:
            y, mean, var = batch_norm_train(x, scale, bias, self.epsilon, self.axis_name)
            if not self.is_initializing():
                m = self.momentum
                ra_mean.value = m * ra_mean.value + (1 - m) * lax.stop_gradient(mean)
                ra_var.value = m * ra_var.value + (1 - m) * lax.stop_gradient(var)
        return y.astype(self.dtype)


def mish(x: Array) -> Array:
    """Mish (Misra 2019): x * tanh(softplus(x)), Darknet's `activation=mish` (YOLOv4's backbone)."""
    return x * jnp.tanh(jax.nn.softplus(x))


def activate(x: Array, activation: str) -> Array:
    """Darknet's `activation=leaky` (LeakyReLU(0.1)) or `activation=mish`."""
    if activation == 'leaky':
        return nn.leaky_relu(x, negative_slope=0.1)
    if activation == 'mish':
        return mish(x)
    raise ValueError(f"unknown activation {activation!r}; expected 'leaky' or 'mish'")


class ConvBN(nn.Module):
    """Conv (no bias) → BatchNorm → activation (LeakyReLU(0.1) or Mish); the `convolutional` block of Darknet.

    `folded=True` is the inference form after `fold_batchnorm`: a conv with bias and no BatchNorm.
    """

    features: int
    kernel_size: int = 3
    stride: int = 1
    bn_momentum: float = 0.99
    bn_epsilon: float = 1e-3
    bn_axis_name: str | None = None
    dtype: Any = jnp.float32
    folded: bool = False
    activation: str = 'leaky'  # or 'mish'
    kernel_init: str = 'normal'  # config.model.kernel_init: 'normal' or 'he'

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        conv = make_conv(
            self.features, self.kernel_size, self.stride, use_bias=self.folded, dtype=self.dtype, name='conv',
            kernel_init=self.kernel_init,
        )
        x = conv(x)
        if self.folded:
            if train:
                raise ValueError('a BatchNorm-folded model is for inference only (train=False)')
            return activate(x, self.activation)
        x = BatchNorm(
            momentum=self.bn_momentum,
            epsilon=self.bn_epsilon,
            axis_name=self.bn_axis_name if train else None,
            dtype=self.dtype,
            name='bn',
        )(x, use_running_average=not train)
        return activate(x, self.activation)


# config.train.freeze → the parts ('backbone', 'head') whose BatchNorm runs in inference mode while training.
FROZEN_PARTS = {'none': (), 'backbone': ('backbone',), 'all_but_heads': ('backbone', 'head')}


def bn_training(train: bool, part: str, freeze: str) -> bool:
    """Whether `part` runs BatchNorm in training mode: frozen parts keep their statistics exactly."""
    return train and part not in FROZEN_PARTS[freeze]


def maxpool2x2(x: Array, stride: int) -> Array:
    """Darknet's 2x2 max-pool: at stride 1 it pads bottom/right so the size is kept.

    Stride 2 (non-overlapping windows) is a reshape and a max: its gradient is a cheap select, where XLA's CPU
    select-and-scatter for `nn.max_pool` took ~4x as long. Same forward values.
    """
    if stride == 2:
        b, h, w, c = x.shape
        return x[:, : h // 2 * 2, : w // 2 * 2].reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))
    return nn.max_pool(x, (2, 2), strides=(1, 1), padding=((0, 1), (0, 1)))


def upsample2x(x: Array) -> Array:
    """Nearest-neighbour x2 upsampling of (B, H, W, C) → (B, 2H, 2W, C)."""
    b, h, w, c = x.shape
    x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c))
    return x.reshape(b, 2 * h, 2 * w, c)
