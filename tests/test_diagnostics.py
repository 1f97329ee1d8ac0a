"""Evaluation diagnostics (yolo_jax/evaluation/diagnostics.py): PR curves, the confusion matrix, F1 against the
score threshold and AP by size on hand-counted cases; the PR curve's AP, the matrix's diagonal and AP over the
whole size range against metrics.voc_map (the existing oracle) on random data; training and --mode=eval write the
JSON and PNGs (subprocesses)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from yolo_jax.evaluation import diagnostics as D
from yolo_jax.evaluation.metrics import voc_map

REPO = Path(__file__).resolve().parents[1]
BG = 3  # the background index of the 3-class cases


def det(boxes, scores, classes) -> dict:
    return {'boxes': np.asarray(boxes, float).reshape(-1, 4), 'scores': np.asarray(scores, float),
            'classes': np.asarray(classes, int)}


def gt(boxes, classes, difficult=None, h=200, w=200) -> dict:
    g = {'boxes': np.asarray(boxes, float).reshape(-1, 4), 'classes': np.asarray(classes, int), 'height': h,
         'width': w}
    if difficult is not None:
        g['difficult'] = np.asarray(difficult, bool)
    return g


def hand_case() -> tuple[list[dict], list[dict]]:
    """Three images, 3 classes; outcomes (voc_map's matching) in global score order:
    0.95 d7 class 2 on a difficult box (ignored), 0.9 d1 class 0 TP, 0.8 d2 class 0 on a class-1 box (FP; a
    confusion), 0.7 d3 class 1 TP, 0.6 d4 class 1 duplicate (FP), 0.5 d5 class 2 on nothing (FP), 0.4 d6 class 0
    TP, 0.2 d8 class 0 on nothing (FP). Ground truth: 2 + 2 + 1 boxes (+ 1 difficult); g4 (class 2) is missed."""
    dets = [
        det([[0, 0, 49, 49], [100, 100, 149, 149]], [0.9, 0.8], [0, 0]),  # d1, d2
        det([[10, 10, 59, 59], [12, 10, 61, 59], [150, 0, 199, 49]], [0.7, 0.6, 0.5], [1, 1, 2]),  # d3, d4, d5
        det([[120, 120, 159, 159], [0, 0, 99, 99], [150, 150, 199, 199]], [0.95, 0.4, 0.2], [2, 0, 0]),  # d7 d6 d8
    ]
    gts = [
        gt([[0, 0, 49, 49], [100, 100, 149, 149]], [0, 1]),  # g1, g2
        gt([[10, 10, 59, 59], [100, 100, 129, 129]], [1, 2]),  # g3, g4
        gt([[0, 0, 99, 99], [120, 120, 159, 159]], [0, 2], difficult=[False, True]),  # g5, g6 (difficult)
    ]
    return dets, gts


def test_pr_curves_hand_counted():
    dets, gts = hand_case()
    matches = D.class_matches(dets, gts, 3)
    # class 0: TP, FP, TP, FP of 2 boxes → (recall, precision) = (.5, 1), (.5, .5), (1, 2/3), (1, .5)
    rec, prec = D.pr_points(matches[0])
    np.testing.assert_allclose(rec, [0.5, 0.5, 1.0, 1.0])
    np.testing.assert_allclose(prec, [1.0, 0.5, 2 / 3, 0.5])
    pr = D.pr_curves(matches)
    c0, c1, c2 = pr['per_class']
    assert c0['ap'] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)  # the envelope: 1 up to recall .5, then 2/3
    assert c0['precision'][0] == c0['precision'][50] == 1.0
    assert c0['precision'][51] == c0['precision'][100] == pytest.approx(2 / 3)
    assert c1['ap'] == pytest.approx(0.5) and c1['precision'][51] == 0.0  # recall never passes .5
    assert c2['ap'] == 0.0 and (c2['num_gt'], c2['num_det'], c2['num_tp']) == (1, 2, 0)  # d7 ignored, d5 FP
    oracle = voc_map(dets, gts, 3)
    assert [e['ap'] for e in pr['per_class']] == pytest.approx([e['ap'] for e in oracle['per_class']])


def test_confusion_matrix_hand_counted():
    dets, gts = hand_case()
    cm = D.confusion_matrix(dets, gts, 3, score_threshold=0.3)
    expected = np.zeros((4, 4), int)
    expected[0, 0] = 2  # d1, d6
    expected[0, 1] = 1  # d2 (class 0) on g2 (class 1): a confusion
    expected[1, 1] = 1  # d3
    expected[1, BG] = 1  # d4: a duplicate of d3 (its best match is used; no fallback)
    expected[2, BG] = 1  # d5: on nothing
    expected[BG, 2] = 1  # g4: missed (the difficult g6 is never missed; d8 is below the threshold)
    np.testing.assert_array_equal(cm['counts'], expected)
    assert cm['ignored'] == [0, 0, 1]  # d7 on the difficult box
    # d2 confused only because no class-0 box took it; at a threshold above it nothing is confused.
    high = np.asarray(D.confusion_matrix(dets, gts, 3, score_threshold=0.85)['counts'])
    assert high[0, 0] == 1 and high[:BG, :BG].sum() == 1 and high[BG].tolist() == [1, 2, 1, 0]


def test_best_f1_threshold_hand_counted():
    dets, gts = hand_case()
    f1 = D.f1_curves(D.class_matches(dets, gts, 3))
    # Micro over 5 boxes, F1 = 2TP / (2TP + FP + FN) at each score: .95: 0, .9: 2/6, .8: 2/7, .7: 4/8, .6: 4/9,
    # .5: 4/10, .4: 6/11 (TP 3, FP 3), .2: 6/12 → best at 0.4.
    best = f1['overall']['best']
    assert best['threshold'] == 0.4 and best['f1'] == pytest.approx(6 / 11)
    assert (best['precision'], best['recall'], best['tp'], best['fp'], best['fn']) == (0.5, 0.6, 3, 3, 2)
    assert f1['overall']['f1'][30] == pytest.approx(6 / 11) and f1['overall']['f1'][85] == pytest.approx(2 / 6)
    assert f1['overall']['f1'][96] == 0.0  # only the ignored d7 is above 0.96
    c0, c1, c2 = (e['best'] for e in f1['per_class'])
    assert c0['threshold'] == 0.4 and c0['f1'] == pytest.approx(0.8)  # TP 2, FP 1, FN 0
    assert c1['threshold'] == 0.7 and c1['f1'] == pytest.approx(2 / 3)
    assert c2['threshold'] is None and c2['f1'] == 0.0 and c2['fp'] == 1


def test_best_f1_is_tried_at_every_score_and_ties_take_the_highest_threshold():
    dets = [det([[0, 0, 9, 9], [50, 50, 59, 59], [20, 20, 29, 29]], [0.9, 0.5, 0.4], [0, 0, 0])]
    gts = [gt([[0, 0, 9, 9], [20, 20, 29, 29], [80, 80, 89, 89]], [0, 0, 0])]
    # 0.9: TP1 → 2/(2+0+2) = .5; 0.5: TP1 FP1 → 2/(2+1+2) = .4; 0.4: TP2 FP1 → 4/(4+1+1) = 2/3.
    best = D.f1_curves(D.class_matches(dets, gts, 1))['overall']['best']
    assert best['threshold'] == 0.4 and best['f1'] == pytest.approx(2 / 3)
    dets = [det([[0, 0, 9, 9], [50, 50, 59, 59], [60, 60, 69, 69], [20, 20, 29, 29]], [0.9, 0.5, 0.4, 0.3],
                [0, 0, 0, 0])]
    gts = [gt([[0, 0, 9, 9], [20, 20, 29, 29]], [0, 0])]
    # 0.9: 2/(2+0+1) = 2/3; 0.5: 2/4; 0.4: 2/5. Then a TP at 0.3 makes 4/(4+2+0) = 2/3 again: a tie, 0.9 wins.
    best = D.f1_curves(D.class_matches(dets, gts, 1))['overall']['best']
    assert best['threshold'] == 0.9 and best['f1'] == pytest.approx(2 / 3)
    assert D.f1_curves(D.class_matches(dets, gts, 1))['overall']['f1'][30] == pytest.approx(2 / 3)


def test_ap_by_size_hand_counted():
    """One class in a 1000 x 1000 image: a small, a medium and a large box; the small and the medium found, a
    small FP above them all and a large FP."""
    gts = [gt([[0, 0, 20, 20], [100, 100, 150, 150], [300, 300, 500, 500]], [0, 0, 0], h=1000, w=1000)]
    dets = [det([[0, 0, 20, 20], [100, 100, 150, 150], [600, 600, 620, 620], [700, 700, 900, 900]],
                [0.9, 0.8, 0.95, 0.6], [0, 0, 0, 0])]
    small, medium, large = D.ap_by_size(dets, gts, 1)
    assert [b['name'] for b in (small, medium, large)] == ['small', 'medium', 'large']
    assert [b['num_gt'] for b in (small, medium, large)] == [1, 1, 1]
    # small: the small FP (0.95) first, then the TP (the medium TP matches an ignored box; the large FP is outside)
    assert small['map'] == pytest.approx(0.5) and small['per_class_ap'] == [pytest.approx(0.5)]
    assert medium['map'] == pytest.approx(1.0)  # the TP; the small TP and both FPs lie outside
    assert large['map'] == 0.0  # the large box is missed; the large FP counts
    (everything,) = D.ap_by_size(dets, gts, 1, buckets=(('all', 0.0, math.inf),))
    assert everything['map'] == pytest.approx(voc_map(dets, gts, 1)['map']) == pytest.approx(4 / 9)
    assert everything['max_area'] is None
    assert D.ap_by_size(dets, gts, 2)[0]['per_class_ap'][1] is None  # no ground truth of class 1


def random_case(rng: np.random.Generator, num_images: int = 12, num_classes: int = 4):
    """Random boxes with near-copies as detections (some with the wrong class), extra detections and difficult
    flags; integer corners in part, so truncation matters in part."""
    dets, gts = [], []
    for _ in range(num_images):
        n = int(rng.integers(0, 7))
        xy = rng.uniform(0, 400, (n, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(4, 200, (n, 2))], axis=1)
        classes = rng.integers(0, num_classes, n)
        gts.append(gt(boxes, classes, difficult=rng.uniform(size=n) < 0.15, h=640, w=640))
        keep = rng.uniform(size=n) < 0.8
        moved = boxes[keep] + rng.normal(0, 6, (int(keep.sum()), 4))
        wrong = rng.uniform(size=len(moved)) < 0.2
        d_classes = np.where(wrong, rng.integers(0, num_classes, len(moved)), classes[keep])
        extra = int(rng.integers(0, 4))
        exy = rng.uniform(0, 400, (extra, 2))
        d_boxes = np.concatenate([moved, np.concatenate([exy, exy + rng.uniform(4, 200, (extra, 2))], axis=1)])
        d_classes = np.concatenate([d_classes, rng.integers(0, num_classes, extra)])
        dets.append(det(d_boxes, np.round(rng.uniform(size=len(d_classes)), 2), d_classes))
    return dets, gts


@pytest.mark.parametrize('seed', range(6))
def test_figures_agree_with_voc_map(seed):
    rng = np.random.default_rng(seed)
    dets, gts = random_case(rng)
    truncate, use_07 = bool(seed % 2), seed % 3 == 0
    oracle = voc_map(dets, gts, 4, truncate_detections=truncate, use_07_metric=use_07)
    diag = D.compute(dets, gts, 4, score_threshold=0.3, truncate_detections=truncate, use_07_metric=use_07)
    assert [e['ap'] for e in diag['pr_curves']['per_class']] == pytest.approx(
        [e['ap'] for e in oracle['per_class']])
    (everything,) = D.ap_by_size(dets, gts, 4, buckets=(('all', 0.0, math.inf),), truncate_detections=truncate,
                                 use_07_metric=use_07)
    assert everything['map'] == pytest.approx(oracle['map'])
    # Every non-difficult box is in exactly one size bucket.
    assert sum(b['num_gt'] for b in diag['ap_by_size']) == sum(e['num_gt'] for e in oracle['per_class'])
    counts = np.asarray(diag['confusion_matrix']['counts'])
    ignored = np.asarray(diag['confusion_matrix']['ignored'])
    np.testing.assert_array_equal(counts[:, :4].sum(axis=0), [e['num_gt'] for e in oracle['per_class']])
    above = [int(sum(((d['classes'] == c) & (d['scores'] >= 0.3)).sum() for d in dets)) for c in range(4)]
    np.testing.assert_array_equal(counts[:4].sum(axis=1) + ignored, above)
    assert counts[4, 4] == 0
    # The diagonal is the F1 curve's TP count at the same threshold (the same matching).
    matches = D.class_matches(dets, gts, 4, truncate)
    tp = [int(D.counts_at(m, np.array([0.3]))[0][0]) for m in matches]
    np.testing.assert_array_equal(np.diag(counts)[:4], tp)
    f1 = diag['f1']['overall']
    best = f1['best']
    if best['threshold'] is not None:  # the best over every score is at least the grid's best
        assert best['f1'] >= max(f1['f1']) - 1e-12


def test_summary_images_and_files(tmp_path):
    dets, gts = hand_case()
    names = ('cat', 'dog', 'bird')
    diag = D.compute(dets, gts, 3, score_threshold=0.3, coco={'AP_small': math.nan, 'AP_medium': 0.2,
                                                              'AP_large': 0.4})
    text = D.summary(diag, names)
    assert 'best F1 0.545 at score >= 0.400 (precision 0.500, recall 0.600)' in text
    assert 'most missed bird (1 of 1)' in text and 'top confusion dog detected as cat (1)' in text
    pictures = D.images(diag, names)
    assert sorted(pictures) == sorted(D.PNG_NAMES)
    paths = D.write_files(tmp_path / 'out', diag, pictures)
    assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == sorted(
        ['diagnostics.json', *(f'{n}.png' for n in D.PNG_NAMES)])
    for p in paths[1:]:
        with Image.open(p) as image:
            assert image.format == 'PNG' and np.asarray(image).shape == pictures[p.stem].shape
    saved = json.loads(paths[0].read_text())
    assert saved['coco_ap_by_size'] == {'small': None, 'medium': 0.2, 'large': 0.4}
    assert saved['confusion_matrix']['counts'] == diag['confusion_matrix']['counts']


def _events(directory: Path) -> dict[str, set[int]]:
    """TensorBoard tag → steps, from the event files under `directory`."""
    import tensorflow as tf

    tags: dict[str, set[int]] = {}
    for path in directory.rglob('events.out.tfevents.*'):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                tags.setdefault(value.tag, set()).add(int(event.step))
    return tags


def _check_written(folder: Path, num_gt: int, num_detections_above: int) -> dict:
    diag = json.loads((folder / 'diagnostics.json').read_text())
    counts = np.asarray(diag['confusion_matrix']['counts'])
    n = len(counts) - 1
    assert counts[:, :n].sum() == num_gt
    assert counts[:n].sum() + sum(diag['confusion_matrix']['ignored']) == num_detections_above
    for name in D.PNG_NAMES:
        with Image.open(folder / f'{name}.png') as image:
            image.verify()
    return diag


@pytest.mark.slow
def test_training_and_eval_write_the_diagnostics(tmp_path):
    """A one-epoch smoke run writes WORKDIR/diagnostics/ and TensorBoard images at its last step; --mode=eval on
    it writes them beside metrics.json and prints the summary. The confusion matrix sums to the ground truth and
    to the detections at the threshold (detections.json)."""
    workdir, out = tmp_path / 'run', tmp_path / 'eval'
    common = [sys.executable, '-m', 'yolo_jax.main', '--nojemalloc', '--config=configs/mnist.py:tiny,smoke',
              f'--workdir={workdir}', f'--config.data.data_dir={tmp_path / "tfds"}',
              '--config.data.digit_source=sklearn', '--config.eval.score_threshold=0.05']
    env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'TF_CPP_MIN_LOG_LEVEL': '2', 'PYTHONPATH': str(REPO)}
    train = subprocess.run([*common, '--config.train.epochs=1'], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=900)
    assert train.returncode == 0, train.stderr[-3000:]
    trained = json.loads((workdir / 'diagnostics' / 'diagnostics.json').read_text())
    assert trained['settings']['score_threshold'] == 0.05 and trained['settings']['num_images'] == 8
    last = max(json.loads(ln)['step'] for ln in (workdir / 'metrics.jsonl').read_text().splitlines())
    tags = _events(workdir / 'tensorboard')
    for name in D.PNG_NAMES:
        assert tags[f'diagnostics/{name}'] == {last}
    assert tags['val/diagnostics/best_f1_f1'] == {last}

    proc = subprocess.run([*common, '--mode=eval', f'--output={out}'], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'diagnostics: ' in proc.stdout and 'at score >= 0.05: ' in proc.stdout, proc.stdout[-2000:]
    assert 'mAP@0.5 with one error type fixed (count): ' in proc.stdout
    metrics = json.loads((out / 'metrics.json').read_text())['metrics']
    detections = json.loads((out / 'detections.json').read_text())
    above = sum(int((np.asarray(d['scores']) >= 0.05).sum()) for d in detections)
    diag = _check_written(out, metrics['num_gt'], above)
    assert [e['ap'] for e in diag['pr_curves']['per_class']] == pytest.approx([e['ap'] for e in metrics['per_class']])
    assert diag['errors']['map'] == pytest.approx(metrics['map50'])
    assert not (out / 'missed.png').exists()  # generated MNIST images are no files: no error pictures

    # Test-time flips through the command: the same split, the setting recorded, the views' boxes pooled.
    tta = subprocess.run([*common, '--mode=eval', "--config.eval.tta=('hflip',)", f'--output={tmp_path / "tta"}'],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert tta.returncode == 0, tta.stderr[-3000:]
    written = json.loads((tmp_path / 'tta' / 'metrics.json').read_text())
    assert written['settings']['tta'] == ['hflip'] and json.loads((out / 'metrics.json').read_text())[
        'settings']['tta'] == []
    assert written['metrics']['num_gt'] == metrics['num_gt'] and 0 <= written['metrics']['map50'] <= 1
    flipped = json.loads((tmp_path / 'tta' / 'detections.json').read_text())
    assert [d['image_id'] for d in flipped] == [d['image_id'] for d in detections]
    assert [d['boxes'] for d in flipped] != [d['boxes'] for d in detections]

    # Test-time sizes with box voting through the command: recorded, and they change the boxes.
    views = subprocess.run([*common, '--mode=eval', "--config.eval.tta=('hflip',)", '--config.eval.tta_sizes=(96,)',
                            '--config.eval.tta_vote_iou=0.6', f'--output={tmp_path / "views"}'], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=600)
    assert views.returncode == 0, views.stderr[-3000:]
    written = json.loads((tmp_path / 'views' / 'metrics.json').read_text())
    assert (written['settings']['tta_sizes'], written['settings']['tta_vote_iou']) == ([96], 0.6)
    assert written['metrics']['num_gt'] == metrics['num_gt'] and 0 <= written['metrics']['map50'] <= 1
    voted = json.loads((tmp_path / 'views' / 'detections.json').read_text())
    assert [d['image_id'] for d in voted] == [d['image_id'] for d in detections]
    assert [d['boxes'] for d in voted] != [d['boxes'] for d in flipped]
