"""Darknet building blocks in Flax linen (NHWC).

Every convolution of YOLOv3 is either a `ConvBN` (conv without bias → BatchNorm → LeakyReLU(0.1)) or a
plain output convolution with a bias. Darknet pads stride-2 convolutions on the top/left only: a 3x3
stride-2 conv here pads ((1, 0), (1, 0)) and runs VALID, which is what Darknet computes on even-sized
inputs. Flax's 'SAME' would pad bottom/right and shift every feature by one pixel: never use it there.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

Array = jnp.ndarray

# Keras' default for conv kernels in the TF2 reference (random_normal, stddev 0.01).
KERNEL_INIT = nn.initializers.normal(stddev=0.01)


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


class ConvBN(nn.Module):
    """Conv (no bias) → BatchNorm → LeakyReLU(0.1); the `convolutional` block of Darknet."""

    features: int
    kernel_size: int = 3
    stride: int = 1
    bn_momentum: float = 0.99
    bn_epsilon: float = 1e-3
    bn_axis_name: str | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        k = self.kernel_size
        x = nn.Conv(
            self.features,
            (k, k),
            strides=(self.stride, self.stride),
            padding=conv_padding(k, self.stride),
            use_bias=False,
            kernel_init=KERNEL_INIT,
            dtype=self.dtype,
            name='conv',
        )(x)
        x = nn.BatchNorm(
            use_running_average=not train,
            momentum=self.bn_momentum,
            epsilon=self.bn_epsilon,
            axis_name=self.bn_axis_name if train else None,
            # Two-pass variance: E[x^2] - E[x]^2 loses ~1e-3 relative in float32 when |mean| >> std, enough
            # for single- and multi-device runs (different summation orders) to drift apart.
            use_fast_variance=False,
            dtype=self.dtype,
            name='bn',
        )(x)
        return nn.leaky_relu(x, negative_slope=0.1)


def upsample2x(x: Array) -> Array:
    """Nearest-neighbour x2 upsampling of (B, H, W, C) → (B, 2H, 2W, C)."""
    b, h, w, c = x.shape
    x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c))
    return x.reshape(b, 2 * h, 2 * w, c)
