"""YOLOv3 (Darknet53 backbone + three-scale head) and YOLOv3-tiny, in Darknet's layer order.

Convolutions are named `conv_NNN` by their position among the convolutional layers of Darknet's
yolov3.cfg / yolov3-tiny.cfg (the order in which a `.weights` file stores them), split into the
`backbone` and `head` submodules. The class-dependent output convolutions are listed in
`OUTPUT_CONVS`. Outputs are the raw maps `(B, S, S, A*(5+C))`, one per scale, strides ascending,
as float32 whatever the compute dtype.
"""

import itertools
from collections.abc import Iterator
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from yolo_jax.models.layers import ConvBN, bn_training, make_conv, maxpool2x2, scaled_channels, upsample2x

Array = jnp.ndarray

# Names (in the `head` submodule) of the output convolutions, in Darknet order (large objects first).
YOLOV3_OUTPUT_CONVS = ('conv_058', 'conv_066', 'conv_074')
YOLOV3_TINY_OUTPUT_CONVS = ('conv_009', 'conv_012')


# Darknet53's five stages: (channels of the stride-2 conv, residual blocks), at width 1.
DARKNET53_STAGES = ((64, 1), (128, 2), (256, 8), (512, 8), (1024, 4))


class _Convs:
    """Creates the submodules of one parent with consecutive Darknet names `conv_NNN`."""

    def __init__(self, module: nn.Module, first_index: int, train: bool):
        self.m, self.idx, self.train = module, itertools.count(first_index), train

    def _name(self) -> str:
        return f'conv_{next(self.idx):03d}'

    def bn(self, x: Array, features: int, kernel_size: int = 3, stride: int = 1) -> Array:
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
            name=self._name(),
        )(x, self.train)

    def out(self, x: Array, features: int) -> Array:
        """The linear output convolution (1x1, with bias, no BN)."""
        m = self.m
        conv = make_conv(features, 1, 1, use_bias=True, dtype=m.dtype, name=self._name())
        return conv(x).astype(jnp.float32)


class _Base(nn.Module):
    num_classes: int = 80
    num_anchors: int = 3
    width: float = 1.0
    bn_momentum: float = 0.99
    bn_epsilon: float = 1e-3
    bn_axis_name: str | None = None
    dtype: Any = jnp.float32
    folded: bool = False  # BatchNorm folded into the convs (inference only; see models.fold_batchnorm)
    # config.train.freeze: frozen parts run BatchNorm in inference mode, so their statistics stay as loaded.
    freeze: str = 'none'
    # config.model.kernel_init for the convs before BatchNorm ('normal' or 'he'); output convs keep 'normal'.
    kernel_init: str = 'normal'

    @property
    def out_features(self) -> int:
        return self.num_anchors * (5 + self.num_classes)


class Darknet53(_Base):
    """Darknet53: returns the stride 8, 16 and 32 feature maps (256, 512, 1024 channels at width 1)."""

    @nn.compact
    def __call__(self, x: Array, train: bool) -> tuple[Array, Array, Array]:
        c = _Convs(self, 0, train)
        x = c.bn(x.astype(self.dtype), 32)
        routes = []
        for features, repeats in DARKNET53_STAGES:
            x = c.bn(x, features, 3, stride=2)
            for _ in range(repeats):
                shortcut = x
                x = c.bn(x, features // 2, 1)
                x = c.bn(x, features, 3)
                x = x + shortcut
            routes.append(x)
        return routes[2], routes[3], routes[4]


def _five(c: _Convs, x: Array, features: int) -> Array:
    """The 1x1/3x3/1x1/3x3/1x1 block of YOLOv3's head."""
    for i in range(5):
        x = c.bn(x, features, 1) if i % 2 == 0 else c.bn(x, 2 * features, 3)
    return x


class YOLOv3Head(_Base):
    """Neck and heads of YOLOv3, Darknet layers 52..74."""

    @nn.compact
    def __call__(self, routes: tuple[Array, Array, Array], train: bool) -> list[Array]:
        route_s8, route_s16, x = routes
        c = _Convs(self, 52, train)
        outputs = []
        for features, route in ((512, route_s16), (256, route_s8), (128, None)):
            x = _five(c, x, features)
            outputs.append(c.out(c.bn(x, 2 * features, 3), self.out_features))
            if route is not None:
                x = upsample2x(c.bn(x, features // 2, 1))
                x = jnp.concatenate([x, route], axis=-1)
        return outputs[::-1]


class YOLOv3(_Base):
    """YOLOv3: (B, H, W, 3) in [0, 1] → raw maps at strides 8, 16, 32, each (B, H/s, W/s, A*(5+C))."""

    output_convs: tuple[str, ...] = YOLOV3_OUTPUT_CONVS

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> list[Array]:
        kw = self._kwargs()
        routes = Darknet53(**kw, name='backbone')(x, bn_training(train, 'backbone', self.freeze))
        return YOLOv3Head(**kw, name='head')(routes, bn_training(train, 'head', self.freeze))

    def _kwargs(self) -> dict:
        names = (
            'num_classes', 'num_anchors', 'width', 'bn_momentum', 'bn_epsilon', 'bn_axis_name', 'dtype', 'folded',
            'kernel_init',
        )
        return {n: getattr(self, n) for n in names}


class TinyBackbone(_Base):
    """YOLOv3-tiny's seven conv/max-pool stages; returns the stride 16 route and the stride 32 map."""

    @nn.compact
    def __call__(self, x: Array, train: bool) -> tuple[Array, Array]:
        c = _Convs(self, 0, train)
        x = x.astype(self.dtype)
        for features in (16, 32, 64, 128):
            x = maxpool2x2(c.bn(x, features), 2)
        route = c.bn(x, 256)
        x = maxpool2x2(route, 2)
        x = maxpool2x2(c.bn(x, 512), 1)  # the size-2 stride-1 pool of yolov3-tiny.cfg
        return route, c.bn(x, 1024)


class TinyHead(_Base):
    """YOLOv3-tiny's two heads, Darknet conv layers 7..12."""

    @nn.compact
    def __call__(self, routes: tuple[Array, Array], train: bool) -> list[Array]:
        route, x = routes
        c = _Convs(self, 7, train)
        x = c.bn(x, 256, 1)
        large = c.out(c.bn(x, 512, 3), self.out_features)
        x = upsample2x(c.bn(x, 128, 1))
        x = jnp.concatenate([x, route], axis=-1)
        medium = c.out(c.bn(x, 256, 3), self.out_features)
        return [medium, large]


class YOLOv3Tiny(YOLOv3):
    """YOLOv3-tiny: (B, H, W, 3) → raw maps at strides 16 and 32."""

    output_convs: tuple[str, ...] = YOLOV3_TINY_OUTPUT_CONVS

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> list[Array]:
        kw = self._kwargs()
        routes = TinyBackbone(**kw, name='backbone')(x, bn_training(train, 'backbone', self.freeze))
        return TinyHead(**kw, name='head')(routes, bn_training(train, 'head', self.freeze))


def iter_darknet_layers(variables: dict) -> Iterator[tuple[str, dict, dict | None]]:
    """Yields (path, params, batch_stats or None) for every convolution in Darknet order."""
    params, stats = variables['params'], variables.get('batch_stats', {})
    for part in ('backbone', 'head'):
        for name in sorted(params[part]):
            yield f'{part}/{name}', params[part][name], stats.get(part, {}).get(name)

