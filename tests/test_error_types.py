"""Error types and their mAP costs (yolo_jax/evaluation/error_types.py): a case typed and costed by hand, and on
random data the invariants against voc_class_matches / voc_map (every false positive gets one type, every
non-difficult box is a TP or missed, removing false positives or uncounting missed boxes never lowers AP)."""

from __future__ import annotations

import numpy as np
import pytest

from yolo_jax.evaluation import error_types as E
from yolo_jax.evaluation.metrics import voc_class_matches, voc_map


def det(boxes, scores, classes) -> dict:
    return {'boxes': np.asarray(boxes, float).reshape(-1, 4), 'scores': np.asarray(scores, float),
            'classes': np.asarray(classes, int)}


def gt(boxes, classes, difficult=None) -> dict:
    g = {'boxes': np.asarray(boxes, float).reshape(-1, 4), 'classes': np.asarray(classes, int), 'height': 400,
         'width': 400}
    if difficult is not None:
        g['difficult'] = np.asarray(difficult, bool)
    return g


def hand_case() -> tuple[list[dict], list[dict]]:
    """2 classes, 2 images. Ground truth: image 0 a (class 0) [0,0,99,99], b (class 1) [200,0,299,99]; image 1
    c (class 0) [0,0,99,99], e (class 0) [200,200,299,299]. VOC IoUs ("+1" pixels, 100 x 100 boxes = 10000):
      p1 .90 cls 0 on a                  IoU 1                          TP
      p2 .80 cls 0 [2,0,101,99]          9800 / 10200 = .96 with a      duplicate (p1 took a)
      p3 .70 cls 0 on b                  1 with class-1 b               classification -> b
      p4 .85 cls 0 [0,50,99,149]         5000 / 15000 = .33 with c      localization -> c
      p5 .75 cls 0 [300,0,349,49]        0                              background
      p6 .60 cls 1 on e                  1 with class-0 e               classification -> e
      p7 .50 cls 0 [250,250,349,349]     2500 / 17500 = .14 with e      localization -> e
      p8 .30 cls 1 [0,40,99,139]         6000 / 14000 = .43 with c      both (no class-1 box in image 1)
    Missed: c, e (class 0), b (class 1)."""
    dets = [det([[0, 0, 99, 99], [2, 0, 101, 99], [200, 0, 299, 99]], [0.9, 0.8, 0.7], [0, 0, 0]),
            det([[0, 50, 99, 149], [300, 0, 349, 49], [200, 200, 299, 299], [250, 250, 349, 349], [0, 40, 99, 139]],
                [0.85, 0.75, 0.6, 0.5, 0.3], [0, 0, 1, 0, 1])]
    gts = [gt([[0, 0, 99, 99], [200, 0, 299, 99]], [0, 1]),
           gt([[0, 0, 99, 99], [200, 200, 299, 299]], [0, 0])]
    return dets, gts


def test_types_hand_counted():
    dets, gts = hand_case()
    typed = E.classify(dets, gts, 2)
    assert typed['outcome'] == [['tp', 'duplicate', 'classification'],
                                ['localization', 'background', 'classification', 'localization', 'both']]
    assert [t.tolist() for t in typed['target']] == [[-1, 0, 1], [0, -1, 1, 1, 0]]
    assert [m.tolist() for m in typed['matched']] == [[True, False], [False, False]]


def test_costs_hand_computed():
    """Class 0 ranks p1 TP, p4, p2, p5, p3, p7 (3 boxes): AP 1/3; class 1 ranks p6, p8 (1 box): AP 0; mAP 1/6.
    classification fixed: class 0 p1 TP, p4, p2, p5, p6 TP (on e), p7 → 1/3 + 1/3 * 2/5; class 1 p3 TP (on b), p8
      → 1; mAP (7/15 + 1) / 2.
    localization fixed: class 0 p1 TP, p4 TP (on c), p2, p5, p3, p7 TP (on e) → 1/3 (1 + 1 + 3/6) = 5/6; mAP 5/12.
    duplicate / both / background fixed: the removed detections rank after every TP: no gain.
    missed fixed: class 0 counts a only (p1 first) → 1; class 1 no box left → 1; mAP 1."""
    dets, gts = hand_case()
    out = E.compute(dets, gts, 2)
    assert out['map'] == pytest.approx(1 / 6)
    assert out['map'] == pytest.approx(voc_map(dets, gts, 2, use_difficult=True)['map'])
    expected = {'duplicate': 0.0, 'classification': (7 / 15 + 1) / 2 - 1 / 6, 'localization': 5 / 12 - 1 / 6,
                'both': 0.0, 'background': 0.0, 'missed': 1 - 1 / 6}
    assert out['delta_map'] == pytest.approx(expected)
    assert out['counts'] == {'duplicate': 1, 'classification': 2, 'localization': 2, 'both': 1, 'background': 1,
                             'missed': 3}
    c0, c1 = out['per_class']
    assert c0['counts'] == {'duplicate': 1, 'classification': 1, 'localization': 2, 'both': 0, 'background': 1,
                            'missed': 2}
    assert c1['counts'] == {'duplicate': 0, 'classification': 1, 'localization': 0, 'both': 1, 'background': 0,
                            'missed': 1}
    assert c0['delta_ap']['localization'] == pytest.approx(5 / 6 - 1 / 3)
    assert c1['delta_ap']['classification'] == pytest.approx(1.0)
    assert 'classification +0.567 (2)' in E.summary(out)
    assert E.summary(out).index('missed') < E.summary(out).index('classification')  # largest gain first


def test_a_retyped_detection_whose_box_is_taken_is_removed():
    """Image 0: p1 (.9) takes g; p2 (.8) is a localization error of g, which placed on g would be a duplicate, so the
    fix removes it. Image 1: p3 (.7) takes its g."""
    dets = [det([[0, 0, 99, 99], [0, 60, 99, 159]], [0.9, 0.8], [0, 0]), det([[0, 0, 99, 99]], [0.7], [0])]
    gts = [gt([[0, 0, 99, 99]], [0]), gt([[0, 0, 99, 99]], [0])]
    # Class 0: p1 TP, p2 FP (loc), p3 TP → AP 1/2 + 1/2 * 2/3; fixed (p2 removed): 1.
    out = E.compute(dets, gts, 1)
    assert out['map'] == pytest.approx(0.5 + 1 / 3)
    assert out['delta_map']['localization'] == pytest.approx(1 - (0.5 + 1 / 3))


def test_difficult_boxes_are_neither_typed_targets_nor_missed():
    dets = [det([[0, 0, 99, 99], [200, 200, 299, 299]], [0.9, 0.8], [0, 0])]
    gts = [gt([[0, 0, 99, 99], [200, 200, 299, 299], [300, 0, 399, 99]], [0, 0, 0], difficult=[False, True, True])]
    typed = E.classify(dets, gts, 1)
    assert typed['outcome'] == [['tp', 'ignored']]
    out = E.compute(dets, gts, 1)
    assert out['counts']['missed'] == 0 and out['map'] == pytest.approx(1.0)


def random_case(seed: int, num_classes: int = 3) -> tuple[list[dict], list[dict]]:
    """6 images of 0-5 boxes each, detections near them (some of another class, some far off), 10% difficult."""
    rng = np.random.default_rng(seed)
    dets, gts = [], []
    for _ in range(6):
        n, k = rng.integers(0, 6), rng.integers(0, 10)
        g_xy = rng.uniform(0, 300, (n, 2))
        g_boxes = np.concatenate([g_xy, g_xy + rng.uniform(20, 100, (n, 2))], 1)
        g_cls = rng.integers(0, num_classes, n)
        pick = rng.integers(0, max(n, 1), k)
        near = g_boxes[pick] + rng.normal(0, 15, (k, 4)) if n else rng.uniform(0, 300, (k, 4))
        boxes = np.concatenate([np.minimum(near[:, :2], near[:, 2:]), np.maximum(near[:, :2], near[:, 2:]) + 5], 1)
        cls = np.where(rng.random(k) < 0.8, g_cls[pick] if n else 0, rng.integers(0, num_classes, k))
        dets.append(det(boxes, rng.random(k), cls))
        gts.append(gt(g_boxes, g_cls, difficult=rng.random(n) < 0.1))
    return dets, gts


@pytest.mark.parametrize('seed', range(4))
def test_invariants_on_random_data(seed):
    num_classes = 3
    dets, gts = random_case(seed, num_classes)
    out = E.compute(dets, gts, num_classes)
    matches = [voc_class_matches(dets, gts, c) for c in range(num_classes)]
    for c, m in enumerate(matches):  # 'index' points each ranked detection back to its place in its image
        for i, j, score in zip(m['image'], m['index'], m['scores'], strict=True):
            assert dets[i]['classes'][j] == c and dets[i]['scores'][j] == score
    assert sum(out['counts'][k] for k in E.FP_TYPES) == sum(int(m['fp'].sum()) for m in matches)
    assert out['counts']['missed'] == sum(m['num_gt'] - int(m['tp'].sum()) for m in matches)
    ref = voc_map(dets, gts, num_classes, use_difficult=True)['map']
    assert out['map'] == pytest.approx(ref)
    for kind in ('duplicate', 'both', 'background', 'missed'):  # removing FPs / uncounting misses never hurts
        assert out['delta_map'][kind] >= -1e-12


def plain_types(dets: list[dict], gts: list[dict], num_classes: int) -> list[list[str]]:
    """An independent straightforward typing: voc_class_matches' verdicts, then each false positive's type from
    one box at a time against the image's boxes, in the module docstring's order."""
    from yolo_jax.evaluation.metrics import voc_iou  # noqa: PLC0415

    out = [['?'] * len(d['scores']) for d in dets]
    for c in range(num_classes):
        m = voc_class_matches(dets, gts, c)
        flat = [(float(d['scores'][j]), i, j) for i, d in enumerate(dets) for j in range(len(d['scores']))
                if d['classes'][j] == c]
        order = sorted(range(len(flat)), key=lambda k: -flat[k][0])  # Python's sort is stable
        for rank, k in enumerate(order):
            _, i, j = flat[k]
            if m['tp'][rank]:
                out[i][j] = 'tp'
                continue
            if not m['fp'][rank]:
                out[i][j] = 'ignored'
                continue
            g = gts[i]
            diff = g['difficult'] if 'difficult' in g else np.zeros(len(g['classes']), bool)
            best_same = best_other = -1.0
            for b, gc, dflag in zip(g['boxes'], g['classes'], diff, strict=True):
                if dflag:
                    continue
                iou = float(voc_iou(np.trunc(dets[i]['boxes'][j]), b[None])[0])
                if gc == c:
                    best_same = max(best_same, iou)
                else:
                    best_other = max(best_other, iou)
            out[i][j] = ('duplicate' if best_same >= 0.5 else 'classification' if best_other >= 0.5 else
                         'localization' if best_same >= 0.1 else 'both' if best_other >= 0.1 else 'background')
    return out


@pytest.mark.parametrize('seed', range(4))
def test_types_against_a_plain_implementation(seed):
    dets, gts = random_case(seed)
    assert E.classify(dets, gts, 3)['outcome'] == plain_types(dets, gts, 3)
