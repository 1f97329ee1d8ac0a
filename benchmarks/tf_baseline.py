"""A TensorFlow 2 / Keras baseline of our YOLOv3 train step: same network, same loss, same optimizer settings.

Timed side by side with our step by benchmarks/train_step.py (one process, alternating rounds).

`build_model` is a Keras functional model layer for layer equal to `yolo_jax.models.create_model` (Darknet
padding, width multiplier, BatchNorm settings, output order); `compute_loss` is `yolo_jax.loss.yolo_loss` in TF
ops; `make_train_step` is a `tf.function` (forward in training mode, loss, gradients, Keras Adam).
`copy_flax_params` loads our Flax variables into the Keras model so both can be compared
(tests/test_tf_baseline.py). The step is graph-mode without XLA: `jit_compile=True` fails on the gradient of
nearest-neighbour resizing. Float32, NHWC.
"""

import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / 'tests')]
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from yolo_jax.decode import MAX_LOG_WH  # noqa: E402
from yolo_jax.models import iter_darknet_layers  # noqa: E402
from yolo_jax.models.layers import scaled_channels  # noqa: E402
from yolo_jax.models.yolov3 import DARKNET53_STAGES  # noqa: E402

keras = tf.keras
Tensor = tf.Tensor


# ----------------------------------------------------------------------------------------------------- model


class _Convs:
    """Adds Keras layers named after our Flax modules (`backbone_conv_000_conv`, `..._bn`, `head_conv_058`), so
    `copy_flax_params` can find them; numbering follows Darknet's order of convolutional layers."""

    def __init__(self, mc: ml_collections.ConfigDict, part: str, first_index: int):
        self.mc, self.part, self.idx = mc, part, first_index

    def _name(self) -> str:
        name = f'{self.part}_conv_{self.idx:03d}'
        self.idx += 1
        return name

    def bn(self, x: Tensor, features: int, kernel_size: int = 3, stride: int = 1) -> Tensor:
        """Conv (no bias) → BatchNorm → LeakyReLU(0.1); stride 2 pads top/left only, as Darknet."""
        name = self._name()
        if stride == 2:
            p = kernel_size // 2
            x = keras.layers.ZeroPadding2D(((p, 0), (p, 0)), name=f'{name}_pad')(x)
        x = keras.layers.Conv2D(
            scaled_channels(features, self.mc.width_multiplier),
            kernel_size,
            strides=stride,
            padding='same' if stride == 1 else 'valid',
            use_bias=False,
            kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
            name=f'{name}_conv',
        )(x)
        x = keras.layers.BatchNormalization(
            momentum=self.mc.bn_momentum, epsilon=self.mc.bn_epsilon, name=f'{name}_bn'
        )(x)
        return keras.layers.LeakyReLU(negative_slope=0.1, name=f'{name}_leaky')(x)

    def out(self, x: Tensor) -> Tensor:
        """The linear 1x1 output convolution with bias → (B, S, S, A*(5+C))."""
        num_anchors = len(self.mc.anchors[0])
        return keras.layers.Conv2D(
            num_anchors * (5 + self.mc.num_classes),
            1,
            kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
            name=self._name(),
        )(x)


def _upsample(x: Tensor, name: str) -> Tensor:
    return keras.layers.UpSampling2D(2, interpolation='nearest', name=name)(x)


def _yolov3(mc: ml_collections.ConfigDict, x: Tensor) -> list[Tensor]:
    c = _Convs(mc, 'backbone', 0)
    x = c.bn(x, 32)
    routes = []
    for features, repeats in DARKNET53_STAGES:
        x = c.bn(x, features, 3, stride=2)
        for _ in range(repeats):
            shortcut = x
            x = c.bn(x, features // 2, 1)
            x = c.bn(x, features, 3)
            x = keras.layers.Add()([x, shortcut])
        routes.append(x)
    route_s8, route_s16, x = routes[2:]

    c = _Convs(mc, 'head', 52)
    outputs = []
    for features, route in ((512, route_s16), (256, route_s8), (128, None)):
        for i in range(5):
            x = c.bn(x, features, 1) if i % 2 == 0 else c.bn(x, 2 * features, 3)
        outputs.append(c.out(c.bn(x, 2 * features, 3)))
        if route is not None:
            x = _upsample(c.bn(x, features // 2, 1), f'upsample_{features}')
            x = keras.layers.Concatenate()([x, route])
    return outputs[::-1]


def _yolov3_tiny(mc: ml_collections.ConfigDict, x: Tensor) -> list[Tensor]:
    c = _Convs(mc, 'backbone', 0)
    for features in (16, 32, 64, 128):
        x = keras.layers.MaxPooling2D(2, 2, 'valid')(c.bn(x, features))
    route = c.bn(x, 256)
    x = keras.layers.MaxPooling2D(2, 2, 'valid')(route)
    # Darknet's size-2 stride-1 pool pads bottom/right; TF's 'same' pads the same side and ignores the padding.
    x = keras.layers.MaxPooling2D(2, 1, 'same')(c.bn(x, 512))
    x = c.bn(x, 1024)

    c = _Convs(mc, 'head', 7)
    x = c.bn(x, 256, 1)
    large = c.out(c.bn(x, 512, 3))
    x = _upsample(c.bn(x, 128, 1), 'upsample_128')
    x = keras.layers.Concatenate()([x, route])
    medium = c.out(c.bn(x, 256, 3))
    return [medium, large]


def build_model(model_config: ml_collections.ConfigDict, input_size: int | None = None) -> keras.Model:
    """Keras twin of `create_model(model_config)`: (B, H, W, 3) float32 → raw maps (B, H/s, W/s, A*(5+C)),
    one per stride, ascending. `input_size` (pixels) defaults to model_config.input_size; None keeps it."""
    if model_config.dtype != 'float32':
        raise ValueError(f'tf_baseline: float32 only, got config.model.dtype={model_config.dtype!r}')
    builders = {'yolov3': _yolov3, 'yolov3_tiny': _yolov3_tiny}
    if model_config.name not in builders:
        raise ValueError(f'tf_baseline: unknown model {model_config.name!r}; expected one of {sorted(builders)}')
    size = model_config.input_size if input_size is None else input_size
    inputs = keras.Input((size, size, 3), name='image')
    return keras.Model(inputs, builders[model_config.name](model_config, inputs), name=model_config.name)


def copy_flax_params(model: keras.Model, variables: dict) -> None:
    """Loads Flax {'params', 'batch_stats'} of the same architecture into `model` (in place).

    Flax and Keras share the kernel layout (kh, kw, in, out); BN is [gamma, beta, moving mean, moving var]."""
    for path, params, stats in iter_darknet_layers(variables):
        name = path.replace('/', '_')
        if stats is None:  # an output conv
            model.get_layer(name).set_weights([np.asarray(params['kernel']), np.asarray(params['bias'])])
            continue
        model.get_layer(f'{name}_conv').set_weights([np.asarray(params['conv']['kernel'])])
        bn, st = params['bn'], stats['bn']
        values = (bn['scale'], bn['bias'], st['mean'], st['var'])
        model.get_layer(f'{name}_bn').set_weights([np.asarray(a) for a in values])


# ------------------------------------------------------------------------------------------------------ loss


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    """num / den where den > 0, else 0, with finite gradients (as yolo_jax.boxes)."""
    ok = den > 0
    return tf.where(ok, num / tf.where(ok, den, tf.ones_like(den)), tf.zeros_like(num))


def _corners(xywh: Tensor) -> tuple[Tensor, Tensor]:
    return xywh[..., :2] - xywh[..., 2:] * 0.5, xywh[..., :2] + xywh[..., 2:] * 0.5


def _area(lo: Tensor, hi: Tensor) -> Tensor:
    wh = tf.maximum(hi - lo, 0.0)
    return wh[..., 0] * wh[..., 1]


def _iou_parts(a_lo: Tensor, a_hi: Tensor, b_lo: Tensor, b_hi: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Broadcast corner boxes → (iou, union, enclosing area)."""
    inter = _area(tf.maximum(a_lo, b_lo), tf.minimum(a_hi, b_hi))
    union = _area(a_lo, a_hi) + _area(b_lo, b_hi) - inter
    enclose = _area(tf.minimum(a_lo, b_lo), tf.maximum(a_hi, b_hi))
    return _safe_div(inter, union), union, enclose


def iou_xywh(a: Tensor, b: Tensor) -> Tensor:
    """IoU of centre/size boxes (..., 4), broadcast → (...)."""
    return _iou_parts(*_corners(a), *_corners(b))[0]


def giou_xywh(a: Tensor, b: Tensor) -> Tensor:
    """GIoU of centre/size boxes, corners re-ordered first (a negative size acts as its mirror image)."""
    a_lo, a_hi = _corners(a)
    b_lo, b_hi = _corners(b)
    a_lo, a_hi = tf.minimum(a_lo, a_hi), tf.maximum(a_lo, a_hi)
    b_lo, b_hi = tf.minimum(b_lo, b_hi), tf.maximum(b_lo, b_hi)
    iou, union, enclose = _iou_parts(a_lo, a_hi, b_lo, b_hi)
    return iou - _safe_div(enclose - union, enclose)


def scale_losses(
    raw: Tensor, label: Tensor, bboxes: Tensor, anchors: Sequence[Sequence[float]], stride: int, ignore_thresh: float
) -> dict[str, Tensor]:
    """One scale of `yolo_jax.loss.scale_loss_maps`, summed per example.

    raw (B, S, S, A*(5+C)); label (B, S, S, A, 5+C) with xywh in input pixels, responsibility, smoothed one-hot;
    bboxes (B, M, 4) xywh in pixels, zero-padded. Returns {'giou', 'conf', 'prob': (B,)}.
    """
    num_anchors = len(anchors)
    s = raw.shape[1]
    raw = tf.reshape(raw, [-1, s, s, num_anchors, raw.shape[-1] // num_anchors])
    label = tf.cast(label, tf.float32)
    bboxes = tf.cast(bboxes, tf.float32)
    col, row = tf.meshgrid(tf.range(s, dtype=tf.float32), tf.range(s, dtype=tf.float32))
    cell = tf.stack([col, row], axis=-1)[None, :, :, None, :]  # (1, S, S, 1, 2) as (x, y)
    pred_xy = (tf.sigmoid(raw[..., 0:2]) + cell) * float(stride)
    pred_wh = tf.exp(tf.minimum(raw[..., 2:4], MAX_LOG_WH)) * tf.constant(anchors, tf.float32)
    pred_xywh = tf.concat([pred_xy, pred_wh], axis=-1)
    raw_conf, pred_conf = raw[..., 4], tf.sigmoid(raw[..., 4])
    label_xywh, respond, label_prob = label[..., :4], label[..., 4], label[..., 5:]
    input_size = float(stride * s)

    box_scale = 2.0 - label_xywh[..., 2] * label_xywh[..., 3] / input_size**2
    giou = respond * box_scale * (1.0 - giou_xywh(pred_xywh, label_xywh))

    iou = iou_xywh(pred_xywh[..., None, :], bboxes[:, None, None, None, :, :])  # (B, S, S, A, M)
    below = tf.cast(tf.reduce_max(iou, axis=-1) < ignore_thresh, tf.float32)
    background = (1.0 - respond) * below
    focal = (respond - pred_conf) ** 2  # not stopped: gradients flow through it, as upstream and ours
    conf = focal * (respond + background) * tf.nn.sigmoid_cross_entropy_with_logits(respond, raw_conf)
    bce = tf.nn.sigmoid_cross_entropy_with_logits(label_prob, raw[..., 5:])
    prob = respond * tf.reduce_sum(bce, axis=-1)
    return {k: tf.reduce_sum(v, axis=[1, 2, 3]) for k, v in (('giou', giou), ('conf', conf), ('prob', prob))}


def loss_components(
    outputs: Sequence[Tensor], labels: Sequence[Tensor], bboxes: Sequence[Tensor], loss_kw: dict
) -> dict[str, Tensor]:
    """{'giou', 'conf', 'prob', 'total'} scalars: summed over scales, mean over the batch (as `yolo_loss` with
    weights=None, which is how `steps.train_step` calls it).

    `loss_kw`: `yolo_jax.loss.loss_kwargs(spec, config.loss)`.
    """
    scales = zip(outputs, labels, bboxes, loss_kw['anchors'], loss_kw['strides'], strict=True)
    per_scale = [scale_losses(o, lab, bb, a, s, loss_kw['ignore_thresh']) for o, lab, bb, a, s in scales]
    out = {k: tf.reduce_mean(tf.add_n([p[k] for p in per_scale])) for k in ('giou', 'conf', 'prob')}
    out['total'] = out['giou'] + out['conf'] + out['prob']
    return out


def compute_loss(
    outputs: Sequence[Tensor], labels: Sequence[Tensor], bboxes: Sequence[Tensor], loss_kw: dict
) -> Tensor:
    """The total YOLOv3 loss (scalar), equal to `yolo_jax.loss.yolo_loss(...)[0]`; shapes as `scale_losses`."""
    return loss_components(outputs, labels, bboxes, loss_kw)['total']


# ------------------------------------------------------------------------------------------------- optimizer


class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """`steps.create_learning_rate_fn`: linear warm-up from 0 then cosine to lr_end, at (0-based) update k+1."""

    def __init__(self, lr_init: float, lr_end: float, warmup_steps: int, total_steps: int):
        self.lr_init, self.lr_end = float(lr_init), float(lr_end)
        self.warmup, self.total = int(warmup_steps), max(int(total_steps), int(warmup_steps) + 1)

    def __call__(self, step: Tensor) -> Tensor:
        k = tf.cast(step, tf.float32) + 1.0
        warm = self.lr_init * k / max(self.warmup, 1)
        t = tf.clip_by_value((k - self.warmup) / (self.total - self.warmup), 0.0, 1.0)
        cosine = self.lr_end + 0.5 * (self.lr_init - self.lr_end) * (1.0 + tf.cos(math.pi * t))
        return tf.where(k < self.warmup, warm, cosine)

    def get_config(self) -> dict:
        return {'lr_init': self.lr_init, 'lr_end': self.lr_end, 'warmup_steps': self.warmup, 'total_steps': self.total}


def make_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int) -> keras.optimizers.Adam:
    """Keras Adam with our schedule and config.train.adam_eps.

    Keras adds epsilon to sqrt(v) before bias correction, optax after it: the same number weighs differently
    (Keras' 1e-7 acts as optax's 1e-7 / sqrt(1 - beta2^t)). Gradient clipping and freezing are not mirrored.
    """
    t = config.train
    warmup, total = int(t.warmup_epochs * steps_per_epoch), int(t.epochs * steps_per_epoch)
    schedule = WarmupCosine(t.lr_init, t.lr_end, warmup, total)
    return keras.optimizers.Adam(learning_rate=schedule, epsilon=t.adam_eps)


def make_train_step(
    model: keras.Model, optimizer: keras.optimizers.Optimizer, loss_kw: dict
) -> Callable[[Tensor, tuple, tuple], Tensor]:
    """A `tf.function` (images (B, H, W, 3), labels, bboxes) → loss before the update; one Adam step on the
    trainable variables; BatchNorm in training mode (batch statistics, moving averages updated)."""
    optimizer.build(model.trainable_variables)  # create slots eagerly: tf.function must not create variables

    @tf.function
    def step(images: Tensor, labels: tuple, bboxes: tuple) -> Tensor:
        with tf.GradientTape() as tape:
            outputs = model(images, training=True)
            loss = compute_loss(outputs, labels, bboxes, loss_kw)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    return step


def count_values(model: keras.Model) -> int:
    """Trainable + non-trainable values (kernels, biases, BN gamma/beta/moving mean/var)."""
    return int(sum(np.prod(w.shape) for w in model.trainable_weights + model.non_trainable_weights))
