"""VOC mAP (hand-computed cases and a line-by-line transcription of the reference), COCO mAP (hand-computed
cases through pycocotools), collecting detections over a dataset, and --mode=eval."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import tensorflow as tf
from test_detect import make_workdir, small_config

from yolo_jax import inference
from yolo_jax.data import letterbox
from yolo_jax.evaluation.command import evaluate_checkpoint
from yolo_jax.evaluation.metrics import coco_map, compute_metrics, voc_ap, voc_map
from yolo_jax.evaluation.runner import collect_detections
from yolo_jax.postprocess import postprocess_config


def det(boxes, scores, classes) -> dict:
    return {'boxes': np.asarray(boxes, float).reshape(-1, 4), 'scores': np.asarray(scores, float),
            'classes': np.asarray(classes, int)}


def gt(boxes, classes, h=300, w=300) -> dict:
    return {'boxes': np.asarray(boxes, float).reshape(-1, 4), 'classes': np.asarray(classes, int), 'height': h,
            'width': w}


def reference_get_map(detections, ground_truth, num_classes, min_overlap=0.5):
    """The reference's get_mAP bookkeeping transcribed literally: per-image lists of {'class_name', 'bbox',
    'used'}, per-class prediction lists sorted by confidence, the +1-pixel overlap loop, cumulative sums, voc_ap."""
    gt_counter, gt_files = {}, []
    for g in ground_truth:
        objs = []
        for box, c in zip(g['boxes'], g['classes']):
            objs.append({'class_name': int(c), 'bbox': [float(v) for v in box], 'used': False})
            gt_counter[int(c)] = gt_counter.get(int(c), 0) + 1
        gt_files.append(objs)
    gt_classes = sorted(gt_counter)
    preds = {c: [] for c in gt_classes}
    for i, d in enumerate(detections):
        for box, s, c in zip(d['boxes'], d['scores'], d['classes']):
            if int(c) in preds:
                preds[int(c)].append({'confidence': s, 'file_id': i, 'bbox': list(np.array(box, dtype=np.int32))})
    sum_ap = 0.0
    for c in gt_classes:
        data = sorted(preds[c], key=lambda x: float(x['confidence']), reverse=True)
        tp, fp = [0] * len(data), [0] * len(data)
        for idx, p in enumerate(data):
            ovmax, gt_match = -1, -1
            bb = [float(x) for x in p['bbox']]
            for obj in gt_files[p['file_id']]:
                if obj['class_name'] == c:
                    bbgt = obj['bbox']
                    bi = [max(bb[0], bbgt[0]), max(bb[1], bbgt[1]), min(bb[2], bbgt[2]), min(bb[3], bbgt[3])]
                    iw, ih = bi[2] - bi[0] + 1, bi[3] - bi[1] + 1
                    if iw > 0 and ih > 0:
                        ua = (bb[2] - bb[0] + 1) * (bb[3] - bb[1] + 1) + (bbgt[2] - bbgt[0] + 1) * (
                            bbgt[3] - bbgt[1] + 1) - iw * ih
                        ov = iw * ih / ua
                        if ov > ovmax:
                            ovmax, gt_match = ov, obj
            if ovmax >= min_overlap and not gt_match['used']:
                tp[idx], gt_match['used'] = 1, True
            else:
                fp[idx] = 1
        tp, fp = list(np.cumsum(tp)), list(np.cumsum(fp))
        rec = [t / gt_counter[c] for t in tp]
        prec = [t / (t + f) for t, f in zip(tp, fp)]
        rec, prec = [0.0, *rec, 1.0], [0.0, *prec, 0.0]
        for i in range(len(prec) - 2, -1, -1):
            prec[i] = max(prec[i], prec[i + 1])
        sum_ap += sum((rec[i] - rec[i - 1]) * prec[i] for i in range(1, len(rec)) if rec[i] != rec[i - 1])
    return sum_ap / len(gt_classes)


A, B, C = [10, 10, 50, 50], [60, 60, 100, 100], [0, 0, 30, 30]


def test_voc_perfect_is_one():
    gts = [gt([A, B], [0, 1]), gt([C], [0]), gt(np.zeros((0, 4)), [])]
    dets = [det(np.add([A, B], 0.7), [0.9, 0.8], [0, 1]), det([C], [0.5], [0]), det(np.zeros((0, 4)), [], [])]
    result = voc_map(dets, gts, 3)
    assert result['map'] == 1.0 and result['num_classes_with_gt'] == 2
    assert result['per_class'][2] == {'class': 2, 'ap': None, 'num_gt': 0, 'num_det': 0, 'num_tp': 0,
                                      'num_difficult': 0}


def test_voc_hand_computed_mix_duplicates_no_fallback_and_excluded_class():
    gts = [gt([A, B, [0, 0, 40, 40], [10, 0, 50, 40], C], [0, 0, 1, 1, 3]), gt([C], [0])]
    dets = [
        det(
            [A, B[:2] + [102, 102], [11, 11, 51, 51], [0, 0, 40, 40], [2, 0, 42, 40], [5, 5, 25, 25]],
            [0.9, 0.7, 0.6, 0.9, 0.8, 0.95],
            [0, 0, 0, 1, 1, 2],
        ),
        det([[200, 200, 240, 240], C], [0.8, 0.5], [0, 0]),
    ]
    result = voc_map(dets, gts, 4)
    ap = {e['class']: e['ap'] for e in result['per_class']}
    # Class 0, in score order: A TP (0.9), far box FP (0.8), shifted B TP (IoU 0.91, 0.7), duplicate of A FP
    # (0.6: A already used), C TP (0.5) → recall 1/3, 1/3, 2/3, 2/3, 1; precision 1, 1/2, 2/3, 1/2, 3/5.
    assert ap[0] == pytest.approx(1 / 3 * 1 + 1 / 3 * 2 / 3 + 1 / 3 * 3 / 5)
    # Class 1: the second detection's best match (IoU 0.91) is the used box, so it is a FP even though its
    # IoU with the other, free box is 0.67 >= 0.5 (no fallback) → AP 0.5, not 1.
    assert ap[1] == pytest.approx(0.5)
    assert ap[2] is None  # detections but no ground truth: excluded
    assert ap[3] == 0.0  # ground truth but no detections: AP 0, included
    assert result['map'] == pytest.approx((ap[0] + 0.5 + 0.0) / 3)
    assert [e['num_tp'] for e in result['per_class']] == [3, 1, 0, 0]
    assert result['map'] == pytest.approx(reference_get_map(dets, gts, 4))


def test_voc_equals_reference_transcription_on_random_data():
    rng = np.random.default_rng(0)
    for trial in range(5):
        gts, dets = [], []
        for _ in range(6):
            n = rng.integers(0, 6)
            xy = rng.integers(0, 200, (n, 2))
            boxes = np.concatenate([xy, xy + rng.integers(10, 80, (n, 2))], 1)
            classes = rng.integers(0, 4, n)
            gts.append(gt(boxes, classes))
            # Detections: jittered copies (some twice), plus random boxes, with float corners.
            k = rng.integers(0, 2 * n + 1) if n else 0
            src = boxes[rng.integers(0, n, k)] if n else np.zeros((0, 4))
            jit = src + rng.normal(0, 6, src.shape)
            extra = rng.uniform(0, 250, (rng.integers(0, 4), 2))
            extra = np.concatenate([extra, extra + rng.uniform(10, 60, extra.shape)], 1)
            boxes_d = np.maximum(np.concatenate([jit, extra]), 0)
            cls_d = np.concatenate([classes[rng.integers(0, n, k)] if n else np.zeros(0, int),
                                    rng.integers(0, 4, len(extra))])
            dets.append(det(boxes_d, rng.uniform(0.3, 1, len(boxes_d)), cls_d))
        assert voc_map(dets, gts, 4)['map'] == pytest.approx(reference_get_map(dets, gts, 4)), trial


def test_voc_ap_all_point_interpolation():
    assert voc_ap([0.5, 1.0], [1.0, 0.5]) == pytest.approx(0.75)
    assert voc_ap([], []) == 0.0
    assert voc_ap([0.25, 0.25, 0.5], [1.0, 0.5, 2 / 3]) == pytest.approx(0.25 + 0.25 * 2 / 3)


def test_coco_hand_computed():
    gts = [gt([[0, 0, 100, 100]], [0]), gt([[10, 10, 60, 60]], [1])]
    perfect = coco_map([det([[0, 0, 100, 100]], [0.9], [0]), det([[10, 10, 60, 60]], [0.8], [1])], gts, 3)
    assert perfect['AP'] == pytest.approx(1.0) and perfect['AP50'] == pytest.approx(1.0)
    assert perfect['per_class_ap'] == [pytest.approx(1.0), pytest.approx(1.0), None]
    assert math.isnan(perfect['AP_small'])  # no small ground truth
    # One image, one box shifted to IoU 0.72: a TP at IoU thresholds .50, .55, .60, .65, .70 → AP 5/10.
    shifted = coco_map([det([[0, 0, 100, 72]], [0.9], [0])], [gts[0]], 1)
    assert shifted['AP'] == pytest.approx(0.5) and shifted['AP50'] == pytest.approx(1.0) and shifted['AP75'] == 0.0
    # A higher-scored false positive first: precision 1/2 at full recall, at every threshold → AP 0.5.
    fp_first = coco_map([det([[200, 200, 250, 250], [0, 0, 100, 100]], [0.9, 0.8], [0, 0])], [gts[0]], 1)
    assert fp_first['AP'] == pytest.approx(0.5)
    none = coco_map([det(np.zeros((0, 4)), [], [])], [gts[0]], 1)
    assert none['AP'] == 0.0
    assert math.isnan(coco_map([det(np.zeros((0, 4)), [], [])], [gt(np.zeros((0, 4)), [])], 1)['AP'])


def make_batches(config, specs, batch_size=2):
    """Eval-pipeline-like NumPy batches: images of given (h, w) with integer GT boxes, letterboxed by the
    pipeline's own TF function; the last batch padded with valid = 0 (as create_eval_dataset does)."""
    size, max_boxes = config.model.input_size, 5
    rows = []
    for i, ((h, w), boxes, classes) in enumerate(specs):
        image = np.random.default_rng(i).integers(0, 255, (h, w, 3), dtype=np.uint8)
        inp, inp_boxes = letterbox.letterbox(tf.constant(image), tf.constant(boxes, tf.float32), size)
        b = np.zeros((max_boxes, 4), np.float32)
        c = np.full(max_boxes, -1, np.int32)
        b[: len(boxes)], c[: len(boxes)] = inp_boxes.numpy(), classes
        rows.append({'image': inp.numpy(), 'boxes': b, 'classes': c, 'orig_size': np.array([h, w], np.int32),
                     'valid': np.float32(1), 'image_id': np.int64(100 + i)})
    while len(rows) % batch_size:
        pad = {k: np.zeros_like(v) for k, v in rows[0].items()}
        pad['classes'] = np.full(max_boxes, -1, np.int32)
        pad['orig_size'] = np.array([size, size], np.int32)
        rows.append(pad)
    return [{k: np.stack([r[k] for r in rows[i : i + batch_size]]) for k in rows[0]}
            for i in range(0, len(rows), batch_size)]


SPECS = [
    ((40, 90), [[5, 3, 30, 25], [50, 10, 89, 39]], [1, 4]),
    ((100, 50), [[0, 0, 20, 70]], [7]),
    ((64, 64), [[10, 10, 40, 50], [12, 8, 42, 52], [0, 30, 63, 63]], [2, 2, 9]),
]


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
    return make_workdir(tmp_path_factory.mktemp('workdir'), small_config())


def test_collect_detections_maps_ground_truth_back_and_matches_predict(workdir):
    config = small_config()
    model, variables, spec = inference.load_detector(config, workdir, fold=False)
    cfg = postprocess_config(config, spec)
    batches = make_batches(config, SPECS)
    dataset = tf.data.Dataset.from_tensor_slices({k: np.concatenate([b[k] for b in batches]) for k in batches[0]})
    dets, gts = collect_detections(cfg, model, variables, dataset.batch(2).as_numpy_iterator())
    assert len(dets) == len(gts) == 3  # the padding example is skipped
    for (hw, boxes, classes), g, i in zip(SPECS, gts, range(3)):
        assert g['image_id'] == 100 + i and (g['height'], g['width']) == hw
        np.testing.assert_array_equal(g['boxes'], boxes)  # exact: integer annotations snap back
        np.testing.assert_array_equal(g['classes'], classes)
    first = inference.predict(model, variables, batches[0]['image'], batches[0]['orig_size'], cfg)
    keep = np.asarray(first.valid[1])
    assert keep.sum() > 0 and len(dets[1]['scores']) == keep.sum()
    np.testing.assert_allclose(dets[1]['boxes'], np.asarray(first.boxes[1])[keep], rtol=1e-6)
    metrics = compute_metrics(*collect_detections(cfg, model, variables, batches), 10)
    assert metrics['num_images'] == 3 and metrics['num_gt'] == 6
    assert 0.0 <= metrics['map50'] <= 1.0 and 0.0 <= metrics['coco_map'] <= 1.0
    assert sum(e['ap'] is not None for e in metrics['per_class']) == 5  # classes 1, 2, 4, 7, 9


def test_evaluate_checkpoint_writes_table_and_json(workdir, tmp_path, monkeypatch, capsys):
    from yolo_jax import input_pipeline

    config = small_config()
    batches = make_batches(config, SPECS)
    monkeypatch.setattr(input_pipeline.Data, 'eval_batches', lambda *a, **k: iter(batches))
    metrics = evaluate_checkpoint(config, workdir, output=tmp_path / 'eval')
    table = capsys.readouterr().out
    assert 'AP50' in table and 'mAP' in table and '#GT' in table
    saved = json.loads((tmp_path / 'eval' / 'metrics.json').read_text())
    assert saved['metrics']['num_gt'] == 6 and saved['settings']['score_threshold'] == 0.05
    assert saved['metrics']['map50'] == pytest.approx(metrics['map50'])
    dets = json.loads((tmp_path / 'eval' / 'detections.json').read_text())
    assert [d['image_id'] for d in dets] == [100, 101, 102]
    with pytest.raises(FileNotFoundError, match='no checkpoint'):
        evaluate_checkpoint(config, tmp_path)
