"""The evaluation protocols, each detail on hand-computed cases and against an independent oracle:

* VOC: the devkit's voc_eval (py-faster-rcnn's Python port of VOCevaldet.m) written out plainly below, with the
  MATLAB devkit's `>=` at the IoU threshold (the port writes `>`): difficult boxes are neither TP nor FP and not
  counted as positives, VOC07 11-point AP and all-point AP.
* COCO: pycocotools' COCOeval run directly on COCO-format dictionaries written here (non-contiguous category ids,
  crowd annotations), which must give exactly the numbers of `coco_map`.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
from helpers import spec_of

from configs.mnist import get_config
from yolo_jax.evaluation.detection import voc_options
from yolo_jax.evaluation.metrics import COCO_STATS, coco_map, compute_metrics, voc_ap, voc_map
from yolo_jax.postprocess import map_postprocess_config

# ----------------------------------------------------------------------------------------------------------------
# Oracle: the devkit's voc_eval, plainly.


def devkit_voc_ap(rec, prec, use_07_metric):
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            p = 0 if np.sum(rec >= t) == 0 else np.max(prec[rec >= t])
            ap = ap + p / 11.0
        return ap
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])


def devkit_voc_eval(detections, ground_truth, classname, ovthresh=0.5, use_07_metric=False):
    """voc_eval(detpath, annopath, imagesetfile, classname): recs = per-image objects {'name', 'bbox',
    'difficult'}; detections = lines (image_id, confidence, x1, y1, x2, y2)."""
    class_recs = {}
    npos = 0
    for image_id, g in enumerate(ground_truth):
        R = [(box, diff) for box, c, diff in zip(g['boxes'], g['classes'], g['difficult']) if c == classname]
        bbox = np.array([x[0] for x in R]).reshape(-1, 4)
        difficult = np.array([x[1] for x in R]).astype(bool)
        det = [False] * len(R)
        npos = npos + sum(~difficult)
        class_recs[image_id] = {'bbox': bbox, 'difficult': difficult, 'det': det}
    image_ids, confidence, BB = [], [], []
    for image_id, d in enumerate(detections):
        for box, s, c in zip(d['boxes'], d['scores'], d['classes']):
            if c == classname:
                image_ids.append(image_id)
                confidence.append(s)
                BB.append(box)
    confidence = np.array(confidence)
    BB = np.array(BB, float).reshape(-1, 4)
    sorted_ind = np.argsort(-confidence, kind='stable')
    BB = BB[sorted_ind, :]
    image_ids = [image_ids[x] for x in sorted_ind]
    nd = len(image_ids)
    tp = np.zeros(nd)
    fp = np.zeros(nd)
    for d in range(nd):
        R = class_recs[image_ids[d]]
        bb = BB[d, :].astype(float)
        ovmax = -np.inf
        BBGT = R['bbox'].astype(float)
        if BBGT.size > 0:
            ixmin = np.maximum(BBGT[:, 0], bb[0])
            iymin = np.maximum(BBGT[:, 1], bb[1])
            ixmax = np.minimum(BBGT[:, 2], bb[2])
            iymax = np.minimum(BBGT[:, 3], bb[3])
            iw = np.maximum(ixmax - ixmin + 1.0, 0.0)
            ih = np.maximum(iymax - iymin + 1.0, 0.0)
            inters = iw * ih
            uni = ((bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0) + (BBGT[:, 2] - BBGT[:, 0] + 1.0) * (
                BBGT[:, 3] - BBGT[:, 1] + 1.0) - inters)
            overlaps = inters / uni
            ovmax = np.max(overlaps)
            jmax = np.argmax(overlaps)
        if ovmax >= ovthresh:  # VOCevaldet.m: ovmax>=VOCopts.minoverlap
            if not R['difficult'][jmax]:
                if not R['det'][jmax]:
                    tp[d] = 1.0
                    R['det'][jmax] = 1
                else:
                    fp[d] = 1.0
        else:
            fp[d] = 1.0
    fp = np.cumsum(fp)
    tp = np.cumsum(tp)
    rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return devkit_voc_ap(rec, prec, use_07_metric)


def det(boxes, scores, classes) -> dict:
    return {'boxes': np.asarray(boxes, float).reshape(-1, 4), 'scores': np.asarray(scores, float),
            'classes': np.asarray(classes, int)}


def gt(boxes, classes, difficult=None, iscrowd=None, h=300, w=300) -> dict:
    n = len(classes)
    return {'boxes': np.asarray(boxes, float).reshape(-1, 4), 'classes': np.asarray(classes, int), 'height': h,
            'width': w, 'difficult': np.zeros(n, bool) if difficult is None else np.asarray(difficult, bool),
            'iscrowd': np.zeros(n, bool) if iscrowd is None else np.asarray(iscrowd, bool)}


A, B, FAR = [10, 10, 50, 50], [100, 100, 160, 150], [200, 200, 240, 240]


def voc(dets, gts, n=1, **kw):
    return voc_map(dets, gts, n, truncate_detections=False, **kw)


# ----------------------------------------------------------------------------------------------------------------
# VOC.


def test_difficult_match_is_neither_tp_nor_fp():
    gts = [gt([A, B], [0, 0], difficult=[False, True])]
    # In score order: a detection on the difficult box (ignored), one on A (TP), a far one (FP).
    dets = [det([B, A, FAR], [0.9, 0.8, 0.7], [0, 0, 0])]
    result = voc(dets, gts)
    # npos = 1; cumulative tp 0, 1, 1 and fp 0, 0, 1 → recall 0, 1, 1, precision 0, 1, 1/2 → all-point AP 1.
    assert result['map'] == pytest.approx(1.0) == devkit_voc_eval(dets, gts, 0)
    entry = result['per_class'][0]
    assert (entry['num_gt'], entry['num_difficult'], entry['num_tp']) == (1, 1, 1)
    # Dropping the difficult box instead (what the pipeline did before) makes the first detection a FP: AP 1/2.
    assert voc(dets, [gt([A], [0])])['map'] == pytest.approx(0.5)
    # Treating it as a normal box: both found before the FP → AP 1, but with 2 positives and 2 TPs.
    plain = voc(dets, gts, use_difficult=False)['per_class'][0]
    assert (plain['ap'], plain['num_gt'], plain['num_tp']) == (1.0, 2, 2)
    # A second detection on the difficult box is ignored too (difficult boxes are never marked used).
    dets2 = [det([B, B, A], [0.9, 0.85, 0.8], [0, 0, 0])]
    assert voc(dets2, gts)['map'] == pytest.approx(1.0) == devkit_voc_eval(dets2, gts, 0)
    # A detection whose best overlap is a difficult box is ignored even though it overlaps a normal box too.
    near_b = [110, 100, 160, 150]
    gts3 = [gt([A, [100, 100, 150, 150], B], [0, 0, 0], difficult=[False, False, True])]
    dets3 = [det([near_b], [0.9], [0])]
    assert voc(dets3, gts3)['per_class'][0]['num_tp'] == 0
    assert voc(dets3, gts3)['map'] == pytest.approx(0.0) == devkit_voc_eval(dets3, gts3, 0)
    # Only difficult ground truth for a class: the class is left out of the mean (npos = 0).
    only = voc([det([B], [0.9], [1])], [gt([A, B], [0, 1], difficult=[False, True])], n=2)
    assert only['num_classes_with_gt'] == 1 and only['per_class'][1]['ap'] is None


def test_voc07_eleven_point_hand_computed():
    # 4 ground truths in 4 images; in score order TP, FP, TP, FP, TP (one missed):
    # recall .25 .25 .5 .5 .75, precision 1 1/2 2/3 1/2 3/5.
    gts = [gt([A], [0]) for _ in range(4)]
    dets = [det([A, FAR], [0.9, 0.8], [0, 0]), det([A, FAR], [0.7, 0.6], [0, 0]), det([A], [0.5], [0]),
            det(np.zeros((0, 4)), [], [])]
    eleven = voc(dets, gts, use_07_metric=True)['map']
    # t = 0, .1, .2: 1; t = .3, .4, .5: 2/3; t = .6, .7: 3/5; t = .8, .9, 1: 0.
    assert eleven == pytest.approx((3 * 1 + 3 * 2 / 3 + 2 * 0.6) / 11)
    assert eleven == pytest.approx(devkit_voc_eval(dets, gts, 0, use_07_metric=True), abs=1e-15)
    all_point = voc(dets, gts)['map']
    assert all_point == pytest.approx(0.25 * 1 + 0.25 * 2 / 3 + 0.25 * 0.6)
    assert all_point == pytest.approx(devkit_voc_eval(dets, gts, 0), abs=1e-15)


def test_voc07_thresholds_are_voc_evals_arange():
    # 10 ground truths, 3 perfect detections: recall reaches exactly 0.3, which is below voc_eval's
    # np.arange threshold 0.30000000000000004 → AP = 3/11, not 4/11.
    gts = [gt([A], [0]) for _ in range(10)]
    dets = [det([A], [0.9 - 0.1 * i], [0]) if i < 3 else det(np.zeros((0, 4)), [], []) for i in range(10)]
    assert voc(dets, gts, use_07_metric=True)['map'] == pytest.approx(3 / 11)
    assert devkit_voc_eval(dets, gts, 0, use_07_metric=True) == pytest.approx(3 / 11)
    assert voc_ap([0.1, 0.2, 0.3], [1.0, 1.0, 1.0], use_07_metric=True) == pytest.approx(3 / 11)


def test_iou_threshold_is_inclusive():
    # +1-pixel IoU of [0, 0, 9, 9] (100 px) and [0, 0, 9, 19] (200 px): exactly 0.5 → a TP (MATLAB devkit `>=`).
    gts = [gt([[0, 0, 9, 19]], [0])]
    assert voc([det([[0, 0, 9, 9]], [0.9], [0])], gts)['map'] == 1.0


def _random_case(rng, num_images=8, num_classes=3, crowd=False):
    gts, dets = [], []
    for _ in range(num_images):
        n = int(rng.integers(0, 6))
        xy = rng.uniform(0, 200, (n, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(8, 90, (n, 2))], 1)
        classes = rng.integers(0, num_classes, n)
        flags = rng.random(n) < 0.25
        gts.append(gt(boxes, classes, difficult=flags, iscrowd=flags if crowd else None))
        k = int(rng.integers(0, 2 * n + 1)) if n else 0
        src = boxes[rng.integers(0, n, k)] if n else np.zeros((0, 4))
        noisy = src + rng.normal(0, 5, src.shape)
        extra = rng.uniform(0, 250, (int(rng.integers(0, 4)), 2))
        extra = np.concatenate([extra, extra + rng.uniform(10, 60, extra.shape)], 1)
        boxes_d = np.clip(np.concatenate([noisy, extra]), 0, 299)
        boxes_d[:, 2:] = np.maximum(boxes_d[:, 2:], boxes_d[:, :2] + 1)
        cls_d = np.concatenate([classes[rng.integers(0, n, k)] if n else np.zeros(0, int),
                                rng.integers(0, num_classes, len(extra))])
        dets.append(det(boxes_d, rng.uniform(0.01, 1, len(boxes_d)), cls_d))
    return dets, gts


@pytest.mark.parametrize('use_07_metric', [False, True])
def test_voc_equals_devkit_on_random_data_with_difficult_boxes(use_07_metric):
    rng = np.random.default_rng(1)
    for trial in range(6):
        dets, gts = _random_case(rng)
        result = voc(dets, gts, n=3, use_07_metric=use_07_metric)
        for entry in result['per_class']:
            if entry['ap'] is None:
                continue
            want = devkit_voc_eval(dets, gts, entry['class'], use_07_metric=use_07_metric)
            assert entry['ap'] == pytest.approx(want, abs=1e-12), (trial, entry)


# ----------------------------------------------------------------------------------------------------------------
# COCO: the oracle is pycocotools on COCO-format data written here.


COCO_CAT_IDS = (1, 18, 90)  # non-contiguous, as COCO's own ids; our class k is COCO_CAT_IDS[k]


def coco_oracle(dets, gts):
    """COCOeval on a COCO-format dataset and result list built directly from the per-image dicts."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    dataset = {'images': [], 'annotations': [], 'categories': [{'id': c, 'name': f'c{c}'} for c in COCO_CAT_IDS]}
    results = []
    for i, (d, g) in enumerate(zip(dets, gts)):
        image_id = 1000 + 7 * i
        dataset['images'].append({'id': image_id, 'width': g['width'], 'height': g['height'],
                                  'file_name': f'{image_id}.jpg'})
        for (x1, y1, x2, y2), c, crowd in zip(g['boxes'], g['classes'], g['iscrowd']):
            dataset['annotations'].append({'id': len(dataset['annotations']) + 1, 'image_id': image_id,
                                           'category_id': COCO_CAT_IDS[c], 'bbox': [x1, y1, x2 - x1, y2 - y1],
                                           'area': (x2 - x1) * (y2 - y1), 'iscrowd': int(crowd)})
        for (x1, y1, x2, y2), s, c in zip(d['boxes'], d['scores'], d['classes']):
            results.append({'image_id': image_id, 'category_id': COCO_CAT_IDS[c], 'bbox': [x1, y1, x2 - x1, y2 - y1],
                            'score': s})
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(dataset)
        coco_gt.createIndex()
        ev = COCOeval(coco_gt, coco_gt.loadRes(results), 'bbox')
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [float(v) for v in ev.stats]


def _ours(dets, gts, n=3):
    out = coco_map(dets, gts, n)
    return [out[k] if not math.isnan(out[k]) else -1.0 for k in COCO_STATS]


def test_coco_crowd_region_is_ignored():
    big = [0, 0, 200, 200]
    person = [220, 220, 280, 290]
    gts = [gt([person, big], [0, 0], iscrowd=[False, True])]
    # A detection inside the crowd region first (IoU with a crowd box = overlap / detection area = 1), then the
    # person: with the crowd region ignored the inside detection is neither TP nor FP → AP 1.
    dets = [det([[20, 30, 60, 90], person], [0.9, 0.8], [0, 0])]
    ours = coco_map(dets, gts, 1)
    assert ours['AP'] == pytest.approx(1.0)
    assert _ours(dets, gts, 1) == coco_oracle(dets, gts)
    # Without the flag the crowd box is a normal ground truth: the inside detection is a FP, the crowd box missed.
    plain = coco_map(dets, [gt([person, big], [0, 0])], 1)
    assert plain['AP'] < 0.6
    # Several detections inside one crowd region are all ignored (a crowd box matches many).
    many = [det([[20, 30, 60, 90], [100, 100, 150, 140], person], [0.95, 0.9, 0.8], [0, 0, 0])]
    assert coco_map(many, gts, 1)['AP'] == pytest.approx(1.0)
    assert _ours(many, gts, 1) == coco_oracle(many, gts)
    # Crowd boxes are not positives: an image with only a crowd box and no detections has nothing to find.
    only = coco_map([det(np.zeros((0, 4)), [], [])], [gt([big], [0], iscrowd=[True])], 1)
    assert math.isnan(only['AP']) and only['per_class_ap'] == [None]


def test_coco_hand_computed_against_pycocotools():
    gts = [gt([[0, 0, 100, 100], [150, 150, 170, 170]], [0, 2]), gt([[10, 10, 60, 60]], [1])]
    dets = [det([[0, 0, 100, 72], [150, 150, 170, 170], [0, 0, 30, 30]], [0.9, 0.7, 0.6], [0, 2, 0]),
            det([[10, 10, 60, 60]], [0.8], [1])]
    ours = _ours(dets, gts)
    assert ours == coco_oracle(dets, gts)
    # Class 0: IoU 0.72 → TP for thresholds .50-.70 (5 of 10), the second detection is a FP after it → AP 0.5;
    # classes 1 and 2 perfect → mean (0.5 + 1 + 1) / 3.
    assert ours[0] == pytest.approx((0.5 + 1 + 1) / 3)


def test_coco_equals_pycocotools_on_random_data_with_crowds():
    rng = np.random.default_rng(2)
    for trial in range(5):
        dets, gts = _random_case(rng, crowd=True)
        assert _ours(dets, gts) == coco_oracle(dets, gts), trial


# ----------------------------------------------------------------------------------------------------------------
# Settings.


def test_protocol_settings_come_from_config():
    config = get_config()
    assert (config.eval.map_score_threshold, config.eval.map_max_detections) == (0.005, 100)
    assert config.eval.score_threshold == 0.3 and config.eval.split == 'test'
    cfg = map_postprocess_config(config, spec_of(config))
    assert (cfg.score_threshold, cfg.max_detections) == (0.005, 100)
    assert voc_options(config.eval) == {'use_07_metric': False, 'truncate_detections': True}
    config.eval.voc_metric = '11_point'
    config.eval.voc_truncate_boxes = False
    assert voc_options(config.eval) == {'use_07_metric': True, 'truncate_detections': False}
    config.eval.voc_metric = '12_point'
    with pytest.raises(ValueError, match='voc_metric'):
        voc_options(config.eval)
    # compute_metrics: flagged boxes are counted apart.
    gts = [gt([A, B], [0, 0], difficult=[False, True], iscrowd=[False, True])]
    m = compute_metrics([det([A], [0.9], [0])], gts, 1, use_07_metric=True)
    assert (m['num_gt'], m['num_ignored'], m['map50'], m['coco_map']) == (1, 1, 1.0, pytest.approx(1.0))
