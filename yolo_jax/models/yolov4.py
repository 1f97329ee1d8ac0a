"""YOLOv4 (CSPDarknet53 + SPP + PANet, three heads) and YOLOv4-tiny, in Darknet's layer order.

As in yolov3.py, convolutions are named `conv_NNN` by their position among the convolutional layers of
Darknet's yolov4.cfg / yolov4-tiny.cfg (the order of a `.weights` file), split into the `backbone` (every
conv before the first neck conv) and `head` submodules; `output_convs` names the class-dependent output
convolutions. Outputs are the raw maps `(B, S, S, A*(5+C))`, one per scale, strides ascending, float32.

Activations follow the cfg: Mish in CSPDarknet53 (convs 0..71), LeakyReLU(0.1) elsewhere; YOLOv4-tiny is all
leaky. Concatenations keep the cfg's `[route] layers=` order (PANet: [lateral conv, upsampled]; downsampling
path: [stride-2 conv, earlier map]; tiny: [upsampled, backbone route]). The convolutions are always `nn.Conv`
(XLA).
"""

import itertools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from yolo_jax.models.layers import KERNEL_INIT, ConvBN, bn_training, maxpool2x2, scaled_channels, upsample2x

Array = jnp.ndarray

# Names (in `head`) of the output convolutions, large objects (stride 32) first as YOLOv3's (yolov4.cfg itself
# stores the stride-8 head first).
YOLOV4_OUTPUT_CONVS = ('conv_109', 'conv_101', 'conv_093')
YOLOV4_TINY_OUTPUT_CONVS = ('conv_017', 'conv_020')

# CSPDarknet53's five stages: (channels of the stride-2 conv, residual blocks), at width 1.
CSPDARKNET53_STAGES = ((64, 1), (128, 2), (256, 8), (512, 8), (1024, 4))
# Convolutions in CSPDarknet53 (yolov4.cfg layers 0..104): the first conv of the neck is conv_072.
CSPDARKNET53_CONVS = 72
# YOLOv4's SPP max-pool sizes (stride 1, 'same' padding), concatenated as [13, 9, 5, input] like the cfg's route.
SPP_SIZES = (5, 9, 13)
# Convolutions in YOLOv4-tiny's backbone (yolov4-tiny.cfg layers 0..26).
TINY_BACKBONE_CONVS = 15


class _V4Base(nn.Module):
    num_classes: int = 80
    num_anchors: int = 3
    width: float = 1.0
    bn_momentum: float = 0.99
    bn_epsilon: float = 1e-3
    bn_axis_name: str | None = None
    dtype: Any = jnp.float32
    folded: bool = False  # BatchNorm folded into the convs (inference only; see models.fold_batchnorm)
    freeze: str = 'none'  # config.train.freeze: frozen parts run BatchNorm in inference mode (see yolov3.py)
    # config.model.kernel_init for the convs before BatchNorm ('normal' or 'he'); output convs keep 'normal'.
    kernel_init: str = 'normal'

    @property
    def out_features(self) -> int:
        return self.num_anchors * (5 + self.num_classes)

    def _kwargs(self) -> dict:
        names = ('num_classes', 'num_anchors', 'width', 'bn_momentum', 'bn_epsilon', 'bn_axis_name', 'dtype', 'folded',
                 'kernel_init')
        return {n: getattr(self, n) for n in names}


class _Layers:
    """Creates the convolutions of one parent module with consecutive Darknet names `conv_NNN`."""

    def __init__(self, module: _V4Base, first_index: int, train: bool):
        self.m, self.idx, self.train = module, itertools.count(first_index), train

    def _name(self) -> str:
        return f'conv_{next(self.idx):03d}'

    def bn(self, x: Array, features: int, kernel_size: int = 1, stride: int = 1, activation: str = 'leaky') -> Array:
        """A Darknet `convolutional` block with batch_normalize=1: `features` at width 1, scaled by the width."""
        m = self.m
        return ConvBN(
            scaled_channels(features, m.width),
            kernel_size,
            stride,
            bn_momentum=m.bn_momentum,
            bn_epsilon=m.bn_epsilon,
            bn_axis_name=m.bn_axis_name,
            dtype=m.dtype,
            folded=m.folded,
            kernel_init=m.kernel_init,
            activation=activation,
            name=self._name(),
        )(x, self.train)

    def out(self, x: Array, features: int) -> Array:
        """The linear output convolution (1x1, with bias, no BN) → float32."""
        conv = nn.Conv(features, (1, 1), use_bias=True, kernel_init=KERNEL_INIT, dtype=self.m.dtype, name=self._name())
        return conv(x).astype(jnp.float32)


def _csp_stage(c: _Layers, x: Array, features: int, blocks: int, first: bool) -> Array:
    """One CSPDarknet53 stage (Mish): stride-2 conv, a 1x1 bypass, residual blocks on a 1x1 branch, concat, 1x1.

    The first stage keeps the full width in both branches (64, 64; residual 32 → 64); the others halve it.
    `(B, H, W, C)` → `(B, H/2, W/2, features * width)`.
    """
    x = c.bn(x, features, 3, 2, 'mish')
    half = features if first else features // 2
    bypass = c.bn(x, half, 1, 1, 'mish')  # the cfg's `[route] layers=-2` branch, stored first
    x = c.bn(x, half, 1, 1, 'mish')
    for _ in range(blocks):
        shortcut = x
        x = c.bn(x, features // 2, 1, 1, 'mish')
        x = c.bn(x, half, 3, 1, 'mish') + shortcut
    x = c.bn(x, half, 1, 1, 'mish')
    x = jnp.concatenate([x, bypass], axis=-1)
    return c.bn(x, features, 1, 1, 'mish')


class CSPDarknet53(_V4Base):
    """CSPDarknet53: returns the stride 8, 16 and 32 maps (256, 512, 1024 channels at width 1; cfg layers 54,
    85, 104)."""

    @nn.compact
    def __call__(self, x: Array, train: bool) -> tuple[Array, Array, Array]:
        c = _Layers(self, 0, train)
        x = c.bn(x.astype(self.dtype), 32, 3, 1, 'mish')
        routes = []
        for i, (features, blocks) in enumerate(CSPDARKNET53_STAGES):
            x = _csp_stage(c, x, features, blocks, first=i == 0)
            routes.append(x)
        return routes[2], routes[3], routes[4]


def _five(c: _Layers, x: Array, features: int) -> Array:
    """The 1x1/3x3/1x1/3x3/1x1 leaky block of the neck."""
    for i in range(5):
        x = c.bn(x, features, 1) if i % 2 == 0 else c.bn(x, 2 * features, 3)
    return x


def spp(x: Array, sizes: tuple[int, ...] = SPP_SIZES) -> Array:
    """Spatial pyramid pooling: stride-1 max-pools, padded so the size is kept (Darknet pads with -inf in effect).

    `(B, H, W, C)` → `(B, H, W, (len(sizes) + 1) * C)`, ordered [largest pool, ..., smallest pool, x].
    """
    pools = [nn.max_pool(x, (k, k), strides=(1, 1), padding=((k // 2, k // 2), (k // 2, k // 2))) for k in sizes]
    return jnp.concatenate([*pools[::-1], x], axis=-1)


class YOLOv4Head(_V4Base):
    """SPP, PANet and the three heads of YOLOv4: Darknet conv layers 72..109 (leaky)."""

    @nn.compact
    def __call__(self, routes: tuple[Array, Array, Array], train: bool) -> list[Array]:
        s8, s16, x = routes
        c = _Layers(self, CSPDARKNET53_CONVS, train)
        x = c.bn(c.bn(c.bn(x, 512, 1), 1024, 3), 512, 1)
        x = spp(x)
        p5 = c.bn(c.bn(c.bn(x, 512, 1), 1024, 3), 512, 1)
        up = upsample2x(c.bn(p5, 256, 1))
        p4 = _five(c, jnp.concatenate([c.bn(s16, 256, 1), up], axis=-1), 256)
        up = upsample2x(c.bn(p4, 128, 1))
        x = _five(c, jnp.concatenate([c.bn(s8, 128, 1), up], axis=-1), 128)
        outputs = [c.out(c.bn(x, 256, 3), self.out_features)]
        for features, lateral in ((256, p4), (512, p5)):
            x = jnp.concatenate([c.bn(x, features, 3, 2), lateral], axis=-1)
            x = _five(c, x, features)
            outputs.append(c.out(c.bn(x, 2 * features, 3), self.out_features))
        return outputs


class YOLOv4(_V4Base):
    """YOLOv4: (B, H, W, 3) in [0, 1] → raw maps at strides 8, 16, 32, each (B, H/s, W/s, A*(5+C))."""

    output_convs: tuple[str, ...] = YOLOV4_OUTPUT_CONVS

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> list[Array]:
        kw = self._kwargs()
        routes = CSPDarknet53(**kw, name='backbone')(x, bn_training(train, 'backbone', self.freeze))
        return YOLOv4Head(**kw, name='head')(routes, bn_training(train, 'head', self.freeze))


def _csp_tiny_block(c: _Layers, x: Array, features: int) -> tuple[Array, Array]:
    """One CSP-tiny block: 3x3 conv, `route groups=2 group_id=1` (the second half of the channels), two 3x3
    convs, concat, 1x1, concat with the block's first conv, 2x2 max-pool.

    Returns (pooled output (B, H/2, W/2, 2 * features * width), the 1x1 conv's map (B, H, W, features * width)).
    """
    x = c.bn(x, features, 3)
    half = x[..., x.shape[-1] // 2 :]
    a = c.bn(half, features // 2, 3)
    b = c.bn(a, features // 2, 3)
    feat = c.bn(jnp.concatenate([b, a], axis=-1), features, 1)
    return maxpool2x2(jnp.concatenate([x, feat], axis=-1), 2), feat


class CSPTinyBackbone(_V4Base):
    """YOLOv4-tiny's backbone (conv layers 0..14): returns the stride 16 route (cfg layer 23) and the stride 32
    map (layer 26)."""

    @nn.compact
    def __call__(self, x: Array, train: bool) -> tuple[Array, Array]:
        c = _Layers(self, 0, train)
        x = c.bn(x.astype(self.dtype), 32, 3, 2)
        x = c.bn(x, 64, 3, 2)
        for features in (64, 128, 256):
            x, feat = _csp_tiny_block(c, x, features)
        return feat, c.bn(x, 512, 3)


class CSPTinyHead(_V4Base):
    """YOLOv4-tiny's two heads, Darknet conv layers 15..20."""

    @nn.compact
    def __call__(self, routes: tuple[Array, Array], train: bool) -> list[Array]:
        route, x = routes
        c = _Layers(self, TINY_BACKBONE_CONVS, train)
        x = c.bn(x, 256, 1)
        large = c.out(c.bn(x, 512, 3), self.out_features)
        x = jnp.concatenate([upsample2x(c.bn(x, 128, 1)), route], axis=-1)
        medium = c.out(c.bn(x, 256, 3), self.out_features)
        return [medium, large]


class YOLOv4Tiny(YOLOv4):
    """YOLOv4-tiny: (B, H, W, 3) → raw maps at strides 16 and 32."""

    output_convs: tuple[str, ...] = YOLOV4_TINY_OUTPUT_CONVS

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> list[Array]:
        kw = self._kwargs()
        routes = CSPTinyBackbone(**kw, name='backbone')(x, bn_training(train, 'backbone', self.freeze))
        return CSPTinyHead(**kw, name='head')(routes, bn_training(train, 'head', self.freeze))
