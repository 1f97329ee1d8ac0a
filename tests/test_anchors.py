"""k-means anchors (yolo_jax/anchors.py): the 1 - IoU distance against hand-computed IoUs, recovery of known
clusters, empty clusters, seeds, rounding; box sizes read through the data layer against the letterbox formula and
the input pipeline's own boxes; the CLI on the smoke set (its printed override parsed back by ml_collections) and
its user errors; a split without boxes."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from absl import flags
from detection_fixtures import TEST, TRAIN, Spec, write_coco
from ml_collections import config_flags

from configs.mnist import get_config
from yolo_jax import anchors as anchors_lib
from yolo_jax import errors
from yolo_jax.defaults import YOLOV3_ANCHORS, YOLOV3_TINY_ANCHORS
from yolo_jax.spec import build_spec

REPO = Path(__file__).resolve().parents[1]
# Six well separated (w, h) shapes, in input pixels.
CENTRES = np.array([(8, 10), (24, 12), (14, 34), (48, 40), (100, 60), (70, 150)], np.float64)


def _clustered(rng: np.random.Generator, per_cluster: int = 150, noise: float = 0.03) -> np.ndarray:
    """(6 * per_cluster, 2) boxes: each centre times log-normal noise of `noise` (relative), per coordinate."""
    wh = np.repeat(CENTRES, per_cluster, axis=0)
    return wh * np.exp(rng.normal(0.0, noise, wh.shape))


def _iou_by_hand(a, b) -> float:
    """IoU of two boxes sharing a centre, from their corners (plain Python)."""
    (wa, ha), (wb, hb) = a, b
    ax1, ay1, ax2, ay2 = -wa / 2, -ha / 2, wa / 2, ha / 2
    bx1, by1, bx2, by2 = -wb / 2, -hb / 2, wb / 2, hb / 2
    inter = max(0.0, min(ax2, bx2) - max(ax1, bx1)) * max(0.0, min(ay2, by2) - max(ay1, by1))
    return inter / (wa * ha + wb * hb - inter)


def test_distance_is_one_minus_iou_of_aligned_boxes():
    a = np.array([(4, 6), (10, 10), (3, 3)], np.float64)
    b = np.array([(6, 3), (5, 5)], np.float64)
    # (4,6) vs (6,3): inter 4*3 = 12, union 24 + 18 - 12 = 30 → 0.4; (4,6) vs (5,5): 4*5 = 20 / (24 + 25 - 20);
    # (10,10) vs (6,3): 18 / 100 (one inside the other); (10,10) vs (5,5): 25 / 100; (3,3) vs (6,3): 9 / 18.
    expected = np.array([[0.4, 20 / 29], [0.18, 0.25], [0.5, 9 / 25]])
    np.testing.assert_allclose(anchors_lib.wh_iou(a, b), expected, rtol=1e-12)
    np.testing.assert_allclose(anchors_lib.iou_distance(a, b), 1 - expected, rtol=1e-12)
    assert anchors_lib.iou_distance(a[:1], a[:1])[0, 0] == 0.0
    rng = np.random.default_rng(0)
    x, y = rng.uniform(1, 50, (20, 2)), rng.uniform(1, 50, (7, 2))
    oracle = np.array([[_iou_by_hand(p, q) for q in y] for p in x])
    np.testing.assert_allclose(anchors_lib.wh_iou(x, y), oracle, rtol=1e-12)
    np.testing.assert_allclose(anchors_lib.mean_best_iou(x, y), oracle.max(axis=1).mean(), rtol=1e-12)


@pytest.mark.parametrize('update', ['median', 'mean'])
def test_recovers_known_clusters(update):
    wh = _clustered(np.random.default_rng(1))
    fit = anchors_lib.fit_anchors(wh, YOLOV3_TINY_ANCHORS, seed=0, update=update)
    assert [len(scale) for scale in fit.anchors] == [3, 3]  # shaped like the config's anchors: k = 6
    found = np.array(fit.anchors).reshape(-1, 2)
    expected = CENTRES[np.argsort(CENTRES.prod(axis=1))]
    np.testing.assert_allclose(found, expected, rtol=0.02)  # noise 3% per box, 150 boxes per cluster
    np.testing.assert_allclose(fit.mean_iou, anchors_lib.mean_best_iou(wh, found), rtol=1e-12)
    assert fit.mean_iou > 0.9
    oracle = np.mean([max(_iou_by_hand(b, a) for s in YOLOV3_TINY_ANCHORS for a in s) for b in wh])
    np.testing.assert_allclose(fit.current_mean_iou, oracle, rtol=1e-12)
    assert fit.num_boxes == len(wh) and fit.distinct_sizes == len(wh)


def test_converges_to_a_fixed_point_and_reseeds_empty_clusters():
    wh = _clustered(np.random.default_rng(2), per_cluster=40)
    # Two seeds far from every box and two equal ones: every box picks (5, 5) or (6, 6) first, so at least three
    # clusters start empty and must be moved onto boxes.
    init = np.array([(1000, 1000), (1000, 1000), (5, 5), (5, 5), (6, 6), (2000, 10)], np.float64)
    centres, iterations = anchors_lib.kmeans_wh(wh, init, update='median')
    assert 1 < iterations < 300
    # Oracle: the definition of a converged k-means with the median update, recomputed here.
    assign = np.array([np.argmax([_iou_by_hand(b, c) for c in centres]) for b in wh])
    assert sorted(set(assign)) == list(range(6))  # no empty cluster
    for j, c in enumerate(centres):
        np.testing.assert_allclose(c, np.median(wh[assign == j], axis=0), rtol=1e-12)
    np.testing.assert_allclose(centres[np.argsort(centres.prod(axis=1))], CENTRES[np.argsort(CENTRES.prod(axis=1))],
                               rtol=0.03)


def test_seeded_and_deterministic():
    wh = np.random.default_rng(3).lognormal(3.0, 0.7, (500, 2))  # no clusters: the seeding matters
    a = anchors_lib.fit_anchors(wh, YOLOV3_ANCHORS, seed=7, restarts=2)
    b = anchors_lib.fit_anchors(wh, YOLOV3_ANCHORS, seed=7, restarts=2)
    assert a == b
    flat = np.array(a.anchors).reshape(-1, 2)
    assert [len(s) for s in a.anchors] == [3, 3, 3] and len(np.unique(flat, axis=0)) == 9
    assert np.all(np.diff(flat.prod(axis=1)) >= 0)  # sorted by area across the scales
    # More restarts never do worse (the first restarts of the same seed are among them).
    assert anchors_lib.fit_anchors(wh, YOLOV3_ANCHORS, seed=7, restarts=4).mean_iou >= a.mean_iou
    assert a.mean_iou > a.current_mean_iou


def test_fewer_distinct_sizes_than_anchors():
    # 4 sizes (square and not), (12, 12) the most frequent, then (3, 30): k = 6 leaves 2 spare anchors.
    wh = np.array([(12, 12)] * 5 + [(3, 30)] * 3 + [(40, 20)] * 2 + [(7, 7)], np.float64)
    fit = anchors_lib.fit_anchors(wh, YOLOV3_TINY_ANCHORS)
    # Areas 49, 90, 90, 144, 144, 800.
    assert fit.anchors == (((7, 7), (3, 30), (3, 30)), ((12, 12), (12, 12), (40, 20)))
    assert fit.mean_iou == 1.0 and fit.distinct_sizes == 4


def test_rounding_keeps_anchors_distinct():
    np.testing.assert_array_equal(anchors_lib.round_significant(np.array([373.4, 2.1538, 0.012345, 1234.5]), 3),
                                  [373, 2.15, 0.0123, 1230])
    wh = np.array([(2.151, 2.1)] * 3 + [(2.154, 2.1)] * 3 + [(9.87654, 5.0)] * 2, np.float64)
    fit = anchors_lib.fit_anchors(wh, (((1, 1),), ((2, 2),), ((3, 3),)), digits=3)
    assert fit.anchors == (((2.151, 2.1),), ((2.154, 2.1),), ((9.877, 5.0),))  # 3 digits would merge two: 4
    flag = anchors_lib.override_flag(fit.anchors)
    assert flag == "--config.model.anchors='(((2.151,2.1),),((2.154,2.1),),((9.877,5),))'"  # one-element tuples
    assert _parse_config('--config=configs/mnist.py', *shlex.split(flag)).model.anchors == fit.anchors


def test_no_boxes_is_a_data_error():
    with pytest.raises(errors.DataError, match='no boxes'):
        anchors_lib.fit_anchors(np.zeros((0, 2)), YOLOV3_ANCHORS)


# ----------------------------------------------------------------------------------------------------------------
# Box sizes through the data layer.


def _coco_config(root: Path, specs, input_size: int = 64, resize: str = 'letterbox'):
    train_json, train_images = write_coco(root, specs, 'train')
    config = get_config('tiny,smoke')
    config.model.num_classes = 3
    config.model.input_size = input_size
    config.data.dataset = 'coco_json'
    config.data.train_annotations, config.data.train_images = str(train_json), str(train_images)
    config.data.resize = resize
    return config


@pytest.mark.parametrize('resize', ['letterbox', 'stretch'])
def test_box_sizes_are_input_pixels_without_crowd_boxes(tmp_path, resize):
    config = _coco_config(tmp_path, TRAIN, input_size=64, resize=resize)
    wh, num_images = anchors_lib.read_box_sizes(config, 'train')
    expected = []  # the letterbox / stretch scale by hand, per image of the fixture
    for s in TRAIN:
        sx, sy = (min(64 / s.width, 64 / s.height),) * 2 if resize == 'letterbox' else (64 / s.width, 64 / s.height)
        expected += [((x2 - x1) * sx, (y2 - y1) * sy)
                     for (x1, y1, x2, y2), crowd in zip(s.boxes, s.crowd_flags(), strict=True) if not crowd]
    assert num_images == len(TRAIN)
    np.testing.assert_allclose(wh, expected, rtol=1e-6)
    if resize == 'letterbox':  # and as the input pipeline itself maps them (its eval batches keep all boxes)
        from yolo_jax import input_pipeline

        seen = []
        for batch in input_pipeline.Data(config).eval_batches(4, split='train'):
            keep = (batch['classes'] >= 0) & ~batch['difficult']
            seen.append(batch['boxes'][keep][:, 2:] - batch['boxes'][keep][:, :2])
        np.testing.assert_allclose(wh, np.concatenate(seen), rtol=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# The command line.


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != errors.TRACEBACK_ENV}
    env.update(JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2', PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, '-m', 'yolo_jax.anchors', *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120, check=False)


def _parse_config(*args: str):
    """The config that `--config=... ARGS` gives, parsed by ml_collections' config flag as main.py defines it."""
    values = flags.FlagValues()
    # Overrides are discovered from the command line (sys.argv under absl's app.run; here given explicitly).
    config_flags.DEFINE_config_file('config', None, flag_values=values, lock_config=True, sys_argv=['prog', *args])
    values(['prog', *args])
    return values.config


def test_cli_on_the_smoke_set(tmp_path):
    out = tmp_path / 'anchors' / 'smoke.json'
    config_arg = '--config=configs/mnist.py:smoke'
    data_args = [f'--config.data.data_dir={tmp_path / "tfds"}', '--config.data.digit_source=sklearn']
    proc = _run_cli(config_arg, *data_args, f'--output={out}')
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(out.read_text())
    anchors = tuple(tuple(tuple(a) for a in scale) for scale in record['anchors'])
    assert [len(s) for s in anchors] == [3, 3, 3] and record['strides'] == [8, 16, 32]
    areas = np.array(anchors).prod(axis=-1)
    assert np.all(np.diff(areas.ravel()) >= 0)  # sorted within each scale and from scale to scale
    # The smoke set: MNIST digits of 7 square sizes (14..112 px at 416, here letterboxed to 64).
    sides = np.array([14, 22, 28, 42, 56, 84, 112]) * 64 / 416
    assert set(np.array(anchors)[..., 0].ravel()) == set(anchors_lib.round_significant(sides, 3))
    assert record['num_images'] == 16 and record['mean_iou'] > 0.99 > 0.5 > record['config_mean_iou']
    stdout = proc.stdout
    m = re.search(r'mean best IoU: ([\d.]+) with these anchors, ([\d.]+) with config.model.anchors', stdout)
    assert m and float(m[1]) == round(record['mean_iou'], 4) and float(m[2]) == round(record['config_mean_iou'], 4)
    [line] = [ln for ln in stdout.splitlines() if ln.startswith('--config.model.anchors=')]
    assert line == record['override']
    # The printed flag, as a shell splits it, read by ml_collections into the config: the same anchors.
    [arg] = shlex.split(line)
    config = _parse_config(config_arg, arg)
    assert config.model.anchors == anchors
    assert build_spec(config.model, [str(i) for i in range(10)], 'the test').anchors == anchors


def test_a_split_without_boxes_is_a_data_error(tmp_path):
    # One image without boxes and one whose only box is a crowd box (dropped, as training does).
    config = _coco_config(tmp_path, (TEST[2], Spec('c.png', 64, 64, ((8, 8, 40, 40),), (1,), (True,))))
    with pytest.raises(errors.DataError) as info:
        anchors_lib.read_box_sizes(config, 'train')
    assert str(info.value) == ("the train split of config.data.dataset='coco_json' has no boxes to fit anchors to "
                               '(2 images; difficult / crowd boxes do not count)')


def test_cli_user_error_is_one_line_and_exit_2(tmp_path):
    # Fails before any data is read (no TF start-up): the shared command-line front's error path (cli.py).
    proc = _run_cli('--config=configs/mnist.py:smoke', '--restarts=0', f'--output={tmp_path / "a.json"}')
    assert proc.returncode == errors.EXIT_CODE, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == 'error: --restarts=0: needs at least 1'
    assert 'Traceback' not in proc.stderr and not (tmp_path / 'a.json').exists()
    proc = _run_cli('--config=configs/mnist.py:smoke', '--config.model.anchorz=((1,2),)')
    assert proc.returncode == errors.EXIT_CODE, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == \
        'error: unknown config field config.model.anchorz; did you mean config.model.anchors?'  # as every program's
