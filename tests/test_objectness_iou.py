"""config.loss.objectness_iou (loss.py): a positive cell's objectness target (1 - r) + r * IoU(its decoded box, its
ground truth), against a hand-written decode + IoU + focal BCE in NumPy; r = 0 is the reference loss bit for bit;
no gradient reaches the box through the target; bad values through `python -m yolo_jax.main`."""

import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from yolo_jax.defaults import default_config
from yolo_jax.errors import ConfigError
from yolo_jax.loss import check_loss_config, loss_maps, yolo_loss

REPO = Path(__file__).resolve().parents[1]
ANCHOR = (10.0, 12.0)
GEOMETRY = {'anchors': ((ANCHOR,),), 'strides': (8,), 'ignore_thresh': 0.5}  # one scale, 4 x 4 cells at 32 px
CELL = (0, 1, 2, 0)  # batch, row, col, anchor of the one positive cell
BOX = np.array([21.0, 13.0, 9.0, 11.0], np.float32)  # xywh pixels, centre in cell (row 1, col 2)


def _problem():
    """Random raw outputs of one 4 x 4 scale with two classes; one ground-truth box of class 1 at CELL."""
    rng = np.random.default_rng(5)
    raw = rng.normal(0, 1.0, (1, 4, 4, 7)).astype(np.float32)
    label = np.zeros((1, 4, 4, 1, 7), np.float32)
    label[CELL] = np.concatenate([BOX, [1.0], [0.0, 1.0]])
    bboxes = np.zeros((1, 3, 4), np.float32)
    bboxes[0, 0] = BOX
    return [raw], [label], [bboxes]


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _hand_iou(a, b):
    """IoU of two xywh boxes, written out."""
    ax0, ay0, ax1, ay1 = a[0] - a[2] / 2, a[1] - a[3] / 2, a[0] + a[2] / 2, a[1] + a[3] / 2
    bx0, by0, bx1, by1 = b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2
    iw, ih = max(0.0, min(ax1, bx1) - max(ax0, bx0)), max(0.0, min(ay1, by1) - max(ay0, by0))
    inter = iw * ih
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def _expected_positive_conf(raw_cell, r):
    """The positive cell's conf term by hand: decode (YOLOv3), IoU with BOX, q = 1 - r + r IoU,
    (q - p)^2 * BCE(q, logit)."""
    t = raw_cell.astype(np.float64)
    row, col = CELL[1], CELL[2]
    pred = np.array([(_sigmoid(t[0]) + col) * 8, (_sigmoid(t[1]) + row) * 8,
                     np.exp(t[2]) * ANCHOR[0], np.exp(t[3]) * ANCHOR[1]])
    q = 1.0 - r + r * _hand_iou(pred, BOX.astype(np.float64))
    p = _sigmoid(t[4])
    bce = -(q * np.log(p) + (1 - q) * np.log(1 - p))
    return (q - p) ** 2 * bce, q


@pytest.mark.parametrize('r', [1.0, 0.5])
def test_the_positive_target_is_the_iou_of_the_decoded_box(r):
    outputs, labels, bboxes = _problem()
    plain = {k: np.asarray(v) for k, v in loss_maps(outputs, labels, bboxes, **GEOMETRY)[0].items()}
    aware = {k: np.asarray(v) for k, v in
             loss_maps(outputs, labels, bboxes, objectness_iou=r, **GEOMETRY)[0].items()}
    expected, q = _expected_positive_conf(outputs[0][0, 1, 2], r)
    assert 0.05 < q < 0.95  # a case where the target is neither 0 nor 1: the IoU matters
    assert aware['conf'][CELL] == pytest.approx(expected, rel=1e-5)
    assert aware['conf'][CELL] != pytest.approx(plain['conf'][CELL], rel=1e-2)
    positive = np.zeros((1, 4, 4, 1), bool)
    positive[CELL] = True
    np.testing.assert_array_equal(aware['conf'][~positive], plain['conf'][~positive])  # background: target 0
    for k in ('giou', 'prob', 'ignored'):
        np.testing.assert_array_equal(aware[k], plain[k])


def test_class_weights_scale_the_iou_aware_term():
    outputs, labels, bboxes = _problem()
    aware = loss_maps(outputs, labels, bboxes, objectness_iou=1.0, **GEOMETRY)[0]
    both = loss_maps(outputs, labels, bboxes, objectness_iou=1.0, class_weights=(1.0, 3.0), **GEOMETRY)[0]
    assert float(both['conf'][CELL]) == pytest.approx(3.0 * float(aware['conf'][CELL]), rel=1e-6)


def test_zero_is_the_reference_loss_bit_for_bit():
    outputs, labels, bboxes = _problem()
    _, plain = yolo_loss(outputs, labels, bboxes, **GEOMETRY)
    _, zero = yolo_loss(outputs, labels, bboxes, objectness_iou=0.0, **GEOMETRY)
    assert {k: float(v) for k, v in plain.items()} == {k: float(v) for k, v in zero.items()}


def test_no_gradient_reaches_the_box_through_the_target():
    # The objectness term must not move the box to raise its own target: d conf / d (t_x, t_y, t_w, t_h) = 0.
    outputs, labels, bboxes = _problem()

    def conf_sum(raw):
        return jnp.sum(loss_maps([raw], labels, bboxes, objectness_iou=1.0, **GEOMETRY)[0]['conf'])

    grad = np.asarray(jax.grad(conf_sum)(jnp.asarray(outputs[0])))
    np.testing.assert_array_equal(grad[..., :4], 0.0)
    assert abs(grad[0, 1, 2, 4]) > 0  # the objectness logit itself learns


@pytest.mark.parametrize('field,value,message', [
    ('objectness_iou', 1.5, r'config\.loss\.objectness_iou must be in \[0, 1\]'),
    ('objectness_iou', -0.1, r'config\.loss\.objectness_iou must be in \[0, 1\]'),
    ('box_loss', 'eiou', r"config\.loss\.box_loss: unknown 'eiou'"),
])
def test_check_loss_config_names_the_field(field, value, message):
    config = default_config()
    config.loss[field] = value
    with pytest.raises(ConfigError, match=message):
        check_loss_config(config.loss)
    check_loss_config(default_config().loss)  # the defaults pass


@pytest.mark.parametrize('flag,message', [
    ('--config.loss.objectness_iou=2', r'config\.loss\.objectness_iou must be in \[0, 1\]'),
    ('--config.loss.box_loss=eiou', r"config\.loss\.box_loss: unknown 'eiou'"),
])
def test_bad_loss_fields_through_the_command_line(tmp_path, flag, message):
    # The data dir does not exist: the check comes before any data is read or built.
    env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2')
    proc = subprocess.run([sys.executable, '-m', 'yolo_jax.main', '--nojemalloc',
                           '--config=configs/mnist.py:tiny,smoke', f'--workdir={tmp_path / "run"}', flag,
                           f'--config.data.data_dir={tmp_path / "no_data"}'],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith('error:')]
    assert len(lines) == 1 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    assert re.match(r'error: ' + message, lines[0]), lines[0]
    assert not (tmp_path / 'run').exists() and not (tmp_path / 'no_data').exists()
