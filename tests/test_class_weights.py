"""config.loss.class_weights (yolo_jax/class_weights.py, loss.py): a positive cell's terms scale by its class's
weight against the unweighted loss, inverse frequency on hand-counted boxes, the box count of a split, the
config errors (directly and through `python -m yolo_jax.main`), and a smoke run with inverse-frequency weights."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from yolo_jax import class_weights
from yolo_jax.errors import ConfigError
from yolo_jax.loss import loss_maps, yolo_loss

REPO = Path(__file__).resolve().parents[1]
GEOMETRY = {'anchors': (((10.0, 12.0),),), 'strides': (8,), 'ignore_thresh': 0.5}  # one scale, 4 x 4 cells at 32 px
CELL = (0, 1, 2, 0)  # batch, row, col, anchor of the one positive cell


def _problem(cls: int, smoothing: float = 0.0):
    """Random raw outputs of one 4 x 4 scale, two classes; one box of class `cls` at CELL."""
    rng = np.random.default_rng(3)
    raw = rng.normal(0, 1.5, (1, 4, 4, 7)).astype(np.float32)
    label = np.zeros((1, 4, 4, 1, 7), np.float32)
    box = np.array([21.0, 13.0, 9.0, 11.0], np.float32)  # xywh pixels, centre in cell (row 1, col 2)
    onehot = np.eye(2)[cls] * (1 - smoothing) + smoothing / 2
    label[CELL] = np.concatenate([box, [1.0], onehot])
    bboxes = np.zeros((1, 3, 4), np.float32)
    bboxes[0, 0] = box
    return [raw], [label], [bboxes]


@pytest.mark.parametrize('cls,weight', [(1, 3.0), (0, 1.0)])
def test_a_positive_cells_terms_scale_by_its_class_weight(cls, weight):
    outputs, labels, bboxes = _problem(cls)
    plain = {k: np.asarray(v) for k, v in loss_maps(outputs, labels, bboxes, **GEOMETRY)[0].items()}
    weighted = {k: np.asarray(v) for k, v in
                loss_maps(outputs, labels, bboxes, class_weights=(1.0, 3.0), **GEOMETRY)[0].items()}
    positive = np.zeros((1, 4, 4, 1), bool)
    positive[CELL] = True
    assert plain['giou'][CELL] > 0 and plain['prob'][CELL] > 0 and plain['conf'][CELL] > 0
    for k in ('giou', 'conf', 'prob'):  # oracle: the unweighted term times the class's weight, at the cell only
        assert weighted[k][CELL] == pytest.approx(weight * plain[k][CELL], rel=1e-6), k
        np.testing.assert_array_equal(weighted[k][~positive], plain[k][~positive])  # background unweighted
    total, _ = yolo_loss(outputs, labels, bboxes, **GEOMETRY)
    weighted_total, _ = yolo_loss(outputs, labels, bboxes, class_weights=(1.0, 3.0), **GEOMETRY)
    cell_sum = sum(plain[k][CELL] for k in ('giou', 'conf', 'prob'))
    assert float(weighted_total) == pytest.approx(float(total) + (weight - 1.0) * cell_sum, rel=1e-6)


def test_smoothed_labels_weigh_by_the_class_distribution():
    # One-hot smoothed by d = 0.1 over 2 classes: p = (0.05, 0.95) → w = 0.05 * 1 + 0.95 * 3 = (1 - d) 3 + d * 2.
    outputs, labels, bboxes = _problem(1, smoothing=0.1)
    plain = loss_maps(outputs, labels, bboxes, **GEOMETRY)[0]
    weighted = loss_maps(outputs, labels, bboxes, class_weights=(1.0, 3.0), **GEOMETRY)[0]
    for k in ('giou', 'conf', 'prob'):
        assert float(weighted[k][CELL]) == pytest.approx(2.9 * float(plain[k][CELL]), rel=1e-6), k


def test_unit_weights_and_none_are_the_reference_loss_bit_for_bit():
    outputs, labels, bboxes = _problem(1)
    _, plain = yolo_loss(outputs, labels, bboxes, **GEOMETRY)
    _, ones = yolo_loss(outputs, labels, bboxes, class_weights=(1.0, 1.0), **GEOMETRY)
    assert {k: float(v) for k, v in plain.items()} == {k: float(v) for k, v in ones.items()}
    assert class_weights.resolve('none', None, ['a', 'b'], print) is None  # 'none': the loss gets no weights


def test_inverse_frequency_on_hand_counted_boxes():
    # 6, 2, 0, 4 boxes: N = 12 over K = 3 classes with boxes → 12 / (3 n_c); the empty class gets 1.
    weights = class_weights.inverse_frequency([6, 2, 0, 4])
    assert weights == pytest.approx((12 / 18, 12 / 6, 1.0, 12 / 12))
    assert (6 * weights[0] + 2 * weights[1] + 4 * weights[3]) / 12 == pytest.approx(1.0)  # mean over boxes
    with pytest.raises(ConfigError, match='no boxes'):
        class_weights.inverse_frequency([0, 0])


class _Data:
    """The two things train_box_counts reads of an input_pipeline.Data: split('train') and process_count."""

    process_count = 1

    def __init__(self, examples):
        import tensorflow as tf

        self.ds = tf.data.Dataset.from_generator(
            lambda: iter(examples), output_signature={
                'classes': tf.TensorSpec([None], tf.int64), 'difficult': tf.TensorSpec([None], tf.bool)})

    def split(self, name):
        assert name == 'train'
        return self.ds, None


def test_train_box_counts_skip_difficult_boxes():
    examples = [{'classes': np.array([0, 2, 2]), 'difficult': np.array([False, False, True])},
                {'classes': np.array([], np.int64), 'difficult': np.array([], bool)},
                {'classes': np.array([2, 1, 0, 0]), 'difficult': np.array([False, False, False, True])}]
    counts = class_weights.train_box_counts(_Data(examples), 3)
    assert counts.tolist() == [2, 1, 2]  # by hand: class 0 twice (one difficult dropped), 1 once, 2 twice


@pytest.mark.parametrize('value,message', [
    ('none', None), ('inverse_frequency', None), ('1,3', None), ('(1, 3.5)', None),
    ('1,2,3', r'3 weights for 2 classes'), ('1,-3', r'must be finite and >= 0'),
    ('inverse_freq', r"expected one of \('none', 'inverse_frequency'\)"), ('1,nan', r'finite'),
])
def test_parse_checks_every_value(value, message):
    if message is None:
        assert class_weights.parse(value, 2) in ('none', 'inverse_frequency', (1.0, 3.0), (1.0, 3.5))
    else:
        with pytest.raises(ConfigError, match=r'^config\.loss\.class_weights=.*' + message):
            class_weights.parse(value, 2)


def _main(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2')
    return subprocess.run([sys.executable, '-m', 'yolo_jax.main', '--nojemalloc',
                           '--config=configs/mnist.py:tiny,smoke', *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900)


@pytest.mark.parametrize('value,message', [('1,2', r'2 weights for 10 classes'),
                                           ('rare', r"expected one of \('none', 'inverse_frequency'\)")])
def test_bad_class_weights_through_the_command_line(tmp_path, value, message):
    # The data dir does not exist: the check comes before any data is read or built.
    proc = _main(f'--workdir={tmp_path / "run"}', f'--config.loss.class_weights={value}',
                 f'--config.data.data_dir={tmp_path / "no_data"}')
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith('error:')]
    assert len(lines) == 1 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    assert re.match(r'error: config\.loss\.class_weights=.*' + message, lines[0]), lines[0]
    assert not (tmp_path / 'run').exists() and not (tmp_path / 'no_data').exists()


@pytest.mark.slow  # a 4-step smoke run
def test_a_run_with_inverse_frequency_weights_logs_counts_and_trains(tmp_path):
    proc = _main(f'--workdir={tmp_path / "run"}', '--config.loss.class_weights=inverse_frequency',
                 '--config.train.epochs=1', '--config.data.digit_source=sklearn',
                 f'--config.data.data_dir={tmp_path / "tfds"}')
    assert proc.returncode == 0, proc.stderr[-3000:]
    match = re.search(r'Class weights \(inverse frequency of (\d+) train boxes\): (.*)', proc.stderr)
    assert match, proc.stderr[-3000:]
    pairs = re.findall(r'(\d+) boxes x([0-9.e+-]+)', match.group(2))
    assert len(pairs) == 10 and sum(int(n) for n, _ in pairs) == int(match.group(1)) > 0
    # The logged weights (3 significant digits) average to 1 over the boxes.
    mean = sum(int(n) * float(w) for n, w in pairs) / int(match.group(1))
    assert mean == pytest.approx(1.0, rel=5e-3)
    records = [json.loads(ln) for ln in (tmp_path / 'run' / 'metrics.jsonl').read_text().splitlines()]
    assert [r['step'] for r in records if r['kind'] == 'train'] == [1, 2, 3, 4]
    assert all(np.isfinite(r['total']) for r in records if r['kind'] == 'train')
