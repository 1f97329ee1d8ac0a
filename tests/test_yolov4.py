"""YOLOv4 and YOLOv4-tiny: Darknet value counts and layer order, .weights round trips, scale_x_y decoding, the
DIoU/CIoU box losses and Darknet's iou_thresh anchor assignment.

The layer order is checked against a transcription of Darknet's published yolov4.cfg / yolov4-tiny.cfg (below):
a small NumPy interpreter walks the cfg's layers, reads a `.weights` body in that order (without darknet.py) and
runs the network; the Flax model loading the same file must give the same outputs. Everything that computes runs
at width 0.125 and 64 px; the real 416 shapes and the 80-class value counts use jax.eval_shape only.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import loss_kw

from configs.mnist import get_config
from yolo_jax import boxes, darknet, decode, loss, steps, transfer
from yolo_jax.defaults import YOLOV4_ANCHORS, YOLOV4_TINY_ANCHORS, model_config
from yolo_jax.models import create_model, fold_variables, iter_darknet_layers
from yolo_jax.models.layers import scaled_channels

REPO = Path(__file__).resolve().parents[1]

# ------------------------------------------------------------------------------------------------------------
# Darknet's cfgs, one layer per entry, in file order: 'conv FILTERS SIZE STRIDE ACTIVATION' (batch_normalize=1),
# 'out' (the 1x1 linear conv with bias before each yolo layer), 'route LAYERS[ half]' (half: groups=2 group_id=1),
# 'shortcut -3', 'maxpool SIZE STRIDE', 'upsample', 'yolo'.


def _res(c: int) -> list[str]:
    return [f'conv {c} 1 1 mish', f'conv {c} 3 1 mish', 'shortcut -3']


def _leaky(*filters_sizes: tuple[int, int]) -> list[str]:
    return [f'conv {f} {k} 1 leaky' for f, k in filters_sizes]


def _yolov4_cfg() -> list[str]:
    cfg = ['conv 32 3 1 mish']
    cfg += ['conv 64 3 2 mish', 'conv 64 1 1 mish', 'route -2', 'conv 64 1 1 mish', 'conv 32 1 1 mish',
            'conv 64 3 1 mish', 'shortcut -3', 'conv 64 1 1 mish', 'route -1,-7', 'conv 64 1 1 mish']
    cfg += ['conv 128 3 2 mish', 'conv 64 1 1 mish', 'route -2', 'conv 64 1 1 mish', *_res(64) * 2,
            'conv 64 1 1 mish', 'route -1,-10', 'conv 128 1 1 mish']
    cfg += ['conv 256 3 2 mish', 'conv 128 1 1 mish', 'route -2', 'conv 128 1 1 mish', *_res(128) * 8,
            'conv 128 1 1 mish', 'route -1,-28', 'conv 256 1 1 mish']  # layer 54
    cfg += ['conv 512 3 2 mish', 'conv 256 1 1 mish', 'route -2', 'conv 256 1 1 mish', *_res(256) * 8,
            'conv 256 1 1 mish', 'route -1,-28', 'conv 512 1 1 mish']  # layer 85
    cfg += ['conv 1024 3 2 mish', 'conv 512 1 1 mish', 'route -2', 'conv 512 1 1 mish', *_res(512) * 4,
            'conv 512 1 1 mish', 'route -1,-16', 'conv 1024 1 1 mish']  # layer 104
    cfg += _leaky((512, 1), (1024, 3), (512, 1))
    cfg += ['maxpool 5 1', 'route -2', 'maxpool 9 1', 'route -4', 'maxpool 13 1', 'route -1,-3,-5,-6']
    cfg += _leaky((512, 1), (1024, 3), (512, 1), (256, 1))
    cfg += ['upsample', 'route 85', *_leaky((256, 1)), 'route -1,-3']
    cfg += _leaky((256, 1), (512, 3), (256, 1), (512, 3), (256, 1), (128, 1))
    cfg += ['upsample', 'route 54', *_leaky((128, 1)), 'route -1,-3']
    cfg += _leaky((128, 1), (256, 3), (128, 1), (256, 3), (128, 1))
    cfg += [*_leaky((256, 3)), 'out', 'yolo', 'route -4', 'conv 256 3 2 leaky', 'route -1,-16']
    cfg += _leaky((256, 1), (512, 3), (256, 1), (512, 3), (256, 1))
    cfg += [*_leaky((512, 3)), 'out', 'yolo', 'route -4', 'conv 512 3 2 leaky', 'route -1,-37']
    cfg += _leaky((512, 1), (1024, 3), (512, 1), (1024, 3), (512, 1))
    cfg += [*_leaky((1024, 3)), 'out', 'yolo']
    return cfg


def _yolov4_tiny_cfg() -> list[str]:
    cfg = ['conv 32 3 2 leaky', 'conv 64 3 2 leaky']
    for c in (64, 128, 256):
        cfg += [f'conv {c} 3 1 leaky', 'route -1 half', f'conv {c // 2} 3 1 leaky', f'conv {c // 2} 3 1 leaky',
                'route -1,-2', f'conv {c} 1 1 leaky', 'route -6,-1', 'maxpool 2 2']
    cfg += ['conv 512 3 1 leaky', 'conv 256 1 1 leaky', 'conv 512 3 1 leaky', 'out', 'yolo']
    cfg += ['route -4', 'conv 128 1 1 leaky', 'upsample', 'route -1,23', 'conv 256 3 1 leaky', 'out', 'yolo']
    return cfg


CFGS = {'yolov4': _yolov4_cfg, 'yolov4_tiny': _yolov4_tiny_cfg}


class _Body:
    """Sequential reader of a .weights body (float32 values after the header)."""

    def __init__(self, values: np.ndarray):
        self.values, self.pos = values.astype(np.float64), 0

    def take(self, *shape: int) -> np.ndarray:
        n = math.prod(shape)
        out = self.values[self.pos : self.pos + n].reshape(shape)
        self.pos += n
        return out


def _np_conv(x: np.ndarray, kernel: np.ndarray, stride: int) -> np.ndarray:
    """Darknet's convolution (pad=1: size//2 on every side) of (B, H, W, C) with a (out, in, k, k) kernel."""
    k = kernel.shape[-1]
    p = k // 2
    xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    ho, wo = (xp.shape[1] - k) // stride + 1, (xp.shape[2] - k) // stride + 1
    win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(1, 2))[:, ::stride, ::stride][:, :ho, :wo]
    return np.einsum('bhwcij,ocij->bhwo', win, kernel)


def _np_maxpool(x: np.ndarray, size: int, stride: int) -> np.ndarray:
    """Darknet's maxpool: padding size-1, offset -(size-1)//2, padded cells never win."""
    pad = size - 1
    xp = np.pad(x, ((0, 0), (pad // 2, pad - pad // 2), (pad // 2, pad - pad // 2), (0, 0)), constant_values=-np.inf)
    ho, wo = (x.shape[1] + pad - size) // stride + 1, (x.shape[2] + pad - size) // stride + 1
    win = np.lib.stride_tricks.sliding_window_view(xp, (size, size), axis=(1, 2))[:, ::stride, ::stride]
    return win[:, :ho, :wo].max(axis=(-2, -1))


def _act(x: np.ndarray, kind: str) -> np.ndarray:
    return x * np.tanh(np.log1p(np.exp(x))) if kind == 'mish' else np.where(x > 0, x, 0.1 * x)


def run_cfg(cfg: list[str], body: _Body, image: np.ndarray, width: float, out_channels: int) -> list[np.ndarray]:
    """Runs Darknet's layer list on (B, H, W, 3) with the weights read from `body` (BN epsilon 1e-5, inference):
    the raw maps feeding each yolo layer, in cfg order."""
    layers, outputs, x = [], [], image.astype(np.float64)
    for i, line in enumerate(cfg):
        kind, *args = line.split()
        if kind == 'conv':
            filters, size, stride, act = scaled_channels(int(args[0]), width), int(args[1]), int(args[2]), args[3]
            beta, gamma, mean, var = (body.take(filters) for _ in range(4))
            kernel = body.take(filters, x.shape[-1], size, size)
            x = _act((_np_conv(x, kernel, stride) - mean) / np.sqrt(var + 1e-5) * gamma + beta, act)
        elif kind == 'out':
            bias = body.take(out_channels)
            x = _np_conv(x, body.take(out_channels, x.shape[-1], 1, 1), 1) + bias
        elif kind == 'route':
            srcs = [layers[int(r) if int(r) >= 0 else i + int(r)] for r in args[0].split(',')]
            x = srcs[0][..., srcs[0].shape[-1] // 2 :] if args[1:] == ['half'] else np.concatenate(srcs, axis=-1)
        elif kind == 'shortcut':
            x = x + layers[i + int(args[0])]
        elif kind == 'maxpool':
            x = _np_maxpool(x, int(args[0]), int(args[1]))
        elif kind == 'upsample':
            x = x.repeat(2, axis=1).repeat(2, axis=2)
        elif kind == 'yolo':
            outputs.append(layers[-1])
        layers.append(x)
    return outputs


# ------------------------------------------------------------------------------------------------------------


def _mc(name: str, num_classes: int, width: float = 1.0):
    mc = darknet.darknet_model_config(name, num_classes=num_classes)
    mc.width_multiplier = width
    return mc


def _random_variables(mc, seed: int = 0) -> dict:
    """Random variables that keep activations O(1) through 110 layers: kernels ~ N(0, 1/fan_in), BN scale and
    variance in [0.5, 1.5], biases and means ~ N(0, 0.1). Distinct values everywhere, so a swap shows."""
    rng = np.random.default_rng(seed)

    def draw(path, s):
        name = jax.tree_util.keystr(path)
        if 'kernel' in name:
            return (rng.standard_normal(s.shape) / math.sqrt(math.prod(s.shape[:3]))).astype(np.float32)
        if 'scale' in name or 'var' in name:
            return rng.uniform(0.5, 1.5, s.shape).astype(np.float32)
        return (0.1 * rng.standard_normal(s.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, darknet.abstract_variables(mc))


def _conv_count(cfg: list[str]) -> int:
    return sum(line.split()[0] in ('conv', 'out') for line in cfg)


@pytest.mark.parametrize(
    'name, values, nbytes, convs',
    [('yolov4', 64_429_405, 257_717_640, 110), ('yolov4_tiny', 6_062_814, 24_251_276, 21)],
)
def test_published_value_counts_and_416_shapes(name, values, nbytes, convs):
    """80 classes at width 1: exactly Darknet's value counts, its conv count, and the 416 output shapes."""
    mc = darknet.darknet_model_config(name)
    assert darknet.value_count(mc) == values and 20 + 4 * values == nbytes
    abstract = darknet.abstract_variables(mc)
    assert sum(1 for _ in iter_darknet_layers(abstract)) == convs == _conv_count(CFGS[name]())
    model = create_model(mc)
    x = jax.ShapeDtypeStruct((1, 416, 416, 3), jnp.float32)
    out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), abstract, x)
    assert [o.shape for o in out] == [(1, 416 // s, 416 // s, 255) for s in mc.strides]
    head = abstract['params']['head']
    assert set(model.output_convs) == {n for n in head if 'bias' in head[n]}  # the linear convs


def test_count_error_names_v4(tmp_path):
    """A YOLOv4-tiny file read as YOLOv3-tiny: the error names the architecture the count fits."""
    mc = _mc('yolov4_tiny', 3, 0.125)
    path = tmp_path / 'tiny.weights'
    darknet.save_weights(path, _random_variables(mc), mc)
    assert darknet.infer_num_classes(path, 'yolov4_tiny', 0.125) == 3
    with pytest.raises(ValueError, match='yolov4_tiny with 3 classes'):
        darknet.load_weights(path, _mc('yolov3_tiny', 3, 0.125))


@pytest.mark.parametrize('name', ['yolov4', 'yolov4_tiny'])
def test_weights_follow_cfg_layer_order(tmp_path, name):
    """save → a file the cfg interpreter reads to the last value → same outputs as the Flax model (and its
    BatchNorm-folded form) loading that file; load gives back the saved variables exactly."""
    classes, width = 2, 0.125
    mc = _mc(name, classes, width)
    variables = _random_variables(mc)
    path = tmp_path / f'{name}.weights'
    darknet.save_weights(path, variables, mc, header=(0, 2, 5, 42))
    loaded = darknet.load_weights(path, mc)
    for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(loaded), strict=True):
        np.testing.assert_array_equal(a, b)

    image = np.random.default_rng(1).uniform(0, 1, (1, 64, 64, 3)).astype(np.float32)
    body = _Body(np.fromfile(path, '<f4', offset=20))
    want = run_cfg(CFGS[name](), body, image, width, 3 * (5 + classes))
    assert body.pos == body.values.size == darknet.value_count(mc)
    want = sorted(want, key=lambda o: -o.shape[1])  # cfg order → strides ascending (tiny lists stride 32 first)
    got = create_model(mc).apply(loaded, image, train=False)
    folded_model, folded = fold_variables(mc, loaded)
    got_folded = folded_model.apply(folded, image, train=False)
    for w, g, f in zip(want, got, got_folded, strict=True):
        assert w.shape == g.shape
        np.testing.assert_allclose(g, w, rtol=2e-3, atol=2e-3 * np.abs(w).max())
        np.testing.assert_allclose(f, w, rtol=2e-3, atol=2e-3 * np.abs(w).max())


def test_train_mode_and_freeze_and_transfer():
    """Small v4 models train (BN statistics update), freeze to the output convs, and take a COCO-shaped source
    with another class count (all but the output convs copied)."""
    for name in ('yolov4', 'yolov4_tiny'):
        mc = model_config(name, num_classes=3, input_size=64)
        mc.width_multiplier = 0.125
        model = create_model(mc)
        variables = model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False)
        out, updates = model.apply(variables, jnp.ones((2, 64, 64, 3)), train=True, mutable=['batch_stats'])
        assert [o.shape[1] for o in out] == [64 // s for s in mc.strides]
        assert all(bool(jnp.all(jnp.isfinite(o))) for o in out)
        mask = steps.trainable_mask(variables['params'], 'all_but_heads', model.output_convs)
        trainable = {p for p, m in jax.tree_util.tree_flatten_with_path(mask)[0] if m}
        assert {jax.tree_util.keystr(p[:2]) for p in trainable} == {f"['head']['{n}']" for n in model.output_convs}
        source_mc = _mc(name, 80, 0.125)
        source = jax.tree.map(np.asarray, _random_variables(source_mc))
        merged, report = transfer.transfer_variables(source, variables, tuple(model.output_convs))
        skipped = [r for r in report if r[1] != 'copied']
        assert len(skipped) == len(model.output_convs), skipped
        np.testing.assert_array_equal(merged['params']['backbone']['conv_000']['conv']['kernel'],
                                      source['params']['backbone']['conv_000']['conv']['kernel'])


# ------------------------------------------------------------------------------------------------------------
# Decoding with scale_x_y.


def _plain_decode(raw: np.ndarray, anchors, stride: int, s: float) -> np.ndarray:
    """Darknet's yolo layer, cell by cell: x = (sigmoid(t_x) * s - (s - 1) / 2 + col) * stride."""
    sig = lambda v: 1.0 / (1.0 + math.exp(-v))
    b, h, w, a, n = raw.shape
    out = np.zeros(raw.shape)
    for i, row, col, k in np.ndindex(b, h, w, a):
        t = raw[i, row, col, k]
        out[i, row, col, k, 0] = (sig(t[0]) * s - (s - 1) / 2 + col) * stride
        out[i, row, col, k, 1] = (sig(t[1]) * s - (s - 1) / 2 + row) * stride
        out[i, row, col, k, 2] = math.exp(t[2]) * anchors[k][0]
        out[i, row, col, k, 3] = math.exp(t[3]) * anchors[k][1]
        out[i, row, col, k, 4:] = [sig(v) for v in t[4:]]
    return out


@pytest.mark.parametrize('s', [1.0, 1.05, 1.2])
def test_decode_scale_xy_matches_plain_implementation(s):
    raw = np.random.default_rng(0).normal(0, 2, (2, 3, 4, 3, 7)).astype(np.float32)
    got = decode.decode(raw, YOLOV4_ANCHORS[1], 16, scale_xy=s)
    np.testing.assert_allclose(got, _plain_decode(raw, YOLOV4_ANCHORS[1], 16, s), rtol=1e-5, atol=1e-3)
    if s == 1.0:  # v3's decoding, bit for bit
        np.testing.assert_array_equal(got, decode.decode(raw, YOLOV4_ANCHORS[1], 16))


def test_config_defaults():
    v3 = get_config()
    assert v3.model.scale_xy == (1.0, 1.0, 1.0) and v3.loss.box_loss == 'giou' and v3.data.iou_thresh == 1.0
    assert get_config('tiny').model.scale_xy == (1.0, 1.0)
    v4 = get_config('yolov4')
    assert (v4.model.name, v4.model.strides, v4.model.anchors) == ('yolov4', (8, 16, 32), YOLOV4_ANCHORS)
    assert v4.model.scale_xy == (1.2, 1.1, 1.05) and v4.loss.box_loss == 'ciou' and v4.data.iou_thresh == 0.213
    tiny = get_config('yolov4_tiny,smoke')
    assert (tiny.model.name, tiny.model.strides, tiny.model.anchors) == ('yolov4_tiny', (16, 32), YOLOV4_TINY_ANCHORS)
    assert tiny.model.scale_xy == (1.05, 1.05) and tiny.model.input_size == 64
    assert tiny.loss.box_loss == 'ciou' and tiny.data.iou_thresh == 1.0  # yolov4-tiny.cfg sets no iou_thresh
    kw = loss_kw(v4)
    assert kw['scale_xy'] == (1.2, 1.1, 1.05) and kw['box_loss'] == 'ciou'


# ------------------------------------------------------------------------------------------------------------
# DIoU / CIoU.


def test_diou_ciou_hand_computed():
    a, b = jnp.array([0.0, 0.0, 2.0, 2.0]), jnp.array([1.0, 0.0, 2.0, 2.0])
    # IoU 2/6; enclosing box 3 x 2 → c^2 = 13; centre distance^2 = 1; same aspect → v = 0.
    assert float(boxes.diou_xywh(a, b)) == pytest.approx(1 / 3 - 1 / 13, rel=1e-6)
    assert float(boxes.ciou_xywh(a, b)) == pytest.approx(1 / 3 - 1 / 13, rel=1e-6)
    c = jnp.array([0.0, 0.0, 4.0, 2.0])  # same centre, IoU 4/8, aspect 2 vs 1
    v = 4 / math.pi**2 * (math.atan(2.0) - math.atan(1.0)) ** 2
    assert float(boxes.diou_xywh(a, c)) == pytest.approx(0.5, rel=1e-6)
    assert float(boxes.ciou_xywh(a, c)) == pytest.approx(0.5 - v / (0.5 + v) * v, rel=1e-6)
    assert float(boxes.ciou_xywh(c, c)) == pytest.approx(1.0) and float(boxes.diou_xywh(c, c)) == pytest.approx(1.0)
    far = jnp.array([10.0, 0.0, 2.0, 2.0])  # disjoint: IoU 0, enclosing 12 x 2, distance 10
    assert float(boxes.diou_xywh(a, far)) == pytest.approx(-100 / 148, rel=1e-6)


def test_ciou_gradients_finite_for_degenerate_boxes():
    a = jnp.array([[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 3.0], [0.0, 0.0, 2.0, 2.0]])
    b = jnp.array([[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 2.0, 3.0], [0.0, 0.0, 2.0, 2.0]])
    for fn in (boxes.ciou_xywh, boxes.diou_xywh):
        g = jax.grad(lambda x, fn=fn: jnp.sum(fn(x, b)))(a)
        assert bool(jnp.all(jnp.isfinite(g))), fn


def test_loss_box_term_and_v3_default():
    """One responsible anchor: the box term is (2 - wh/size^2) * (1 - CIoU(decoded with scale_xy, label)); the
    v3 defaults (scale_xy 1, giou) give exactly the loss without the new arguments."""
    rng = np.random.default_rng(0)
    size, stride, classes = 64, 16, 2
    raw = rng.normal(0, 1, (1, 4, 4, 3 * (5 + classes))).astype(np.float32)
    label = np.zeros((1, 4, 4, 3, 5 + classes), np.float32)
    label[0, 1, 2, 1] = [40, 24, 20, 30, 1, 0.995, 0.005]
    bboxes = np.zeros((1, 5, 4), np.float32)
    bboxes[0, 0] = label[0, 1, 2, 1, :4]
    anchors = YOLOV4_ANCHORS[0]
    maps = loss.scale_loss_maps(raw, label, bboxes, anchors=anchors, stride=stride, ignore_thresh=0.5, scale_xy=1.2,
                                box_loss='ciou')
    pred = _plain_decode(raw.reshape(1, 4, 4, 3, -1), anchors, stride, 1.2)[0, 1, 2, 1, :4]
    want = (2 - 20 * 30 / size**2) * (1 - float(boxes.ciou_xywh(jnp.asarray(pred, jnp.float32), label[0, 1, 2, 1, :4])))
    assert float(maps['giou'][0, 1, 2, 1]) == pytest.approx(want, rel=1e-5)
    assert float(jnp.sum(maps['giou'])) == pytest.approx(want, rel=1e-5)
    kw = dict(anchors=(anchors,), strides=(stride,), ignore_thresh=0.5)
    plain = loss.yolo_loss([raw], [label], [bboxes], **kw)[1]
    explicit = loss.yolo_loss([raw], [label], [bboxes], scale_xy=(1.0,), box_loss='giou', **kw)[1]
    for k in plain:
        assert float(plain[k]) == float(explicit[k]), k
    with pytest.raises(ValueError, match='box_loss'):
        loss.yolo_loss([raw], [label], [bboxes], box_loss='eiou', **kw)


# ------------------------------------------------------------------------------------------------------------
# Darknet's iou_thresh assignment.


def _responsible(name: str, box_xyxy, iou_thresh: float) -> set[tuple[int, int]]:
    """{(scale, anchor)} responsible for one box in a 416 input."""
    import tensorflow as tf  # noqa: PLC0415  (TF only for the input-pipeline encoder)
    from helpers import target_params  # noqa: PLC0415

    from yolo_jax.data.targets import encode_targets  # noqa: PLC0415

    mc = model_config(name, num_classes=3, input_size=416)
    params = target_params(416, mc.strides, mc.anchors, 3, iou_thresh=iou_thresh)
    labels, _ = encode_targets(tf.constant([box_xyxy], tf.float32), tf.constant([1], tf.int32), params)
    return {(lvl, int(a)) for lvl, lab in enumerate(labels) for a in np.nonzero(lab.numpy()[..., 4])[2]}


def test_iou_thresh_assignment_hand_computed():
    # A 30 x 60 box; width/height IoUs with the v4 anchors: 12x16 .107, 19x36 .380, 40x28 .404, 36x75 .667 (best),
    # 76x55 .381, 72x146 .171, the rest smaller. iou_thresh .213: the best and the three above it.
    box = [85.0, 70.0, 115.0, 130.0]
    assert _responsible('yolov4', box, 0.213) == {(0, 1), (0, 2), (1, 0), (1, 1)}
    assert _responsible('yolov4', box, 0.5) == {(1, 0)}  # the best anchor only
    # v4-tiny's 81x82 anchor is in both masks (1,2,3 at stride 16, 3,4,5 at stride 32): both are best.
    assert _responsible('yolov4_tiny', [100.0, 100.0, 181.0, 182.0], 0.5) == {(0, 2), (1, 0)}
    # 37x58 (.323) and 135x169 (.291) pass .213; 23x27 (.093) and 344x319 do not.
    assert _responsible('yolov4_tiny', [100.0, 100.0, 181.0, 182.0], 0.213) == {(0, 1), (0, 2), (1, 0), (1, 1)}


# ------------------------------------------------------------------------------------------------------------
# End to end through `python -m yolo_jax.main`.


def _main(workdir: Path, data_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable, '-m', 'yolo_jax.main', '--config=configs/mnist.py:yolov4_tiny,smoke', f'--workdir={workdir}',
        f'--config.data.data_dir={data_dir}', '--config.data.digit_source=sklearn', *extra,
    ]
    env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2', PYTHONUNBUFFERED='1')
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_yolov4_tiny_trains_evaluates_and_detects(tmp_path):
    """:yolov4_tiny,smoke trains (checkpoint written, finite losses), evaluates the checkpoint, and detects with a
    Darknet .weights file of the same network."""
    workdir, data_dir = tmp_path / 'run', tmp_path / 'tfds'
    proc = _main(workdir, data_dir)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert any(p.name.isdigit() for p in (workdir / 'checkpoints').iterdir())
    records = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
    losses = [r['total'] for r in records if r['kind'] == 'train']
    assert losses and all(math.isfinite(v) for v in losses)

    proc = _main(workdir, data_dir, '--mode=eval')
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (workdir / 'eval' / 'metrics.json').is_file()

    from PIL import Image  # noqa: PLC0415

    image = tmp_path / 'digits.png'
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (70, 90, 3), dtype=np.uint8)).save(image)
    mc = get_config('yolov4_tiny,smoke').model
    weights = tmp_path / 'tiny.weights'
    darknet.save_weights(weights, _random_variables(mc), mc)
    out = tmp_path / 'detect'
    proc = _main(workdir, data_dir, '--mode=detect', f'--images={image}', f'--weights={weights}', f'--output={out}')
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (out / 'detections.json').is_file() and (out / 'digits.png').is_file()
