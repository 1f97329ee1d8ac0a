"""What each kind of detection error costs in mAP@0.5 (TIDE's error types, Bolya et al. 2020, on VOC matching).

Every false positive of voc_map's matching (`metrics.voc_class_matches`) gets one type from its VOC IoU with the
image's non-difficult ground truth, checked in this order (TIDE's; foreground IoU 0.5, background IoU 0.1):

  duplicate       IoU >= 0.5 with a box of its class that a higher-scored detection already took
  classification  IoU >= 0.5 with a box of another class
  localization    0.1 <= IoU < 0.5 with a box of its class (the best such box is its target)
  both            0.1 <= IoU < 0.5 with a box of another class only (wrong class and poorly placed)
  background      IoU < 0.1 with every box: nothing labelled there (on real photos often an object nobody
                  labelled: look at the highest-scored ones before blaming the detector)

and a ground-truth box no detection took is `missed`. A type's cost is the mAP@0.5 gained when only that type is
fixed (TIDE's "oracle"), every other detection as it was:

  duplicate, both, background  those detections are removed
  classification               each gets its box's class; if it is then still no TP (the box was taken), removed
  localization                 each gets its target's box; if it is then still no TP, removed
  missed                       the missed boxes are no longer counted (as if difficult); a class left
                               with none counts AP 1 (nothing of it is left to find)

The costs overlap (fixing two types may gain more or less than their sum) and are not a partition of 1 - mAP.
Detections and ground truth as `metrics.py`'s (one entry per image; boxes xyxy in ORIGINAL-image pixels); the
protocol options (`truncate_detections`, `use_07_metric`) as voc_map's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from yolo_jax.evaluation.metrics import VOC_IOU_THRESHOLD, box_flags, match_ap, voc_class_matches, voc_iou

BACKGROUND_IOU = 0.1  # TIDE's background threshold: below it a detection overlaps nothing
FP_TYPES = ('duplicate', 'classification', 'localization', 'both', 'background')
TYPES = (*FP_TYPES, 'missed')


def _iou_matrix(boxes: np.ndarray, gts: np.ndarray) -> np.ndarray:
    """voc_iou of each box (k, 4) with each ground-truth box (g, 4) → (k, g); -1 where they do not overlap."""
    return voc_iou(boxes.T[..., None], gts) if len(boxes) and len(gts) else np.zeros((len(boxes), len(gts)))


def _masked_best(iou: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of iou (k, g): the largest value where mask (k, g) holds (-1 where it holds nowhere) and its column
    (the first maximum; -1 where it holds nowhere)."""
    if iou.shape[1] == 0:
        return np.full(len(iou), -1.0), np.full(len(iou), -1)
    masked = np.where(mask, iou, -np.inf)
    col = np.argmax(masked, axis=1)
    some = mask.any(axis=1)
    return np.where(some, masked[np.arange(len(iou)), col], -1.0), np.where(some, col, -1)


def _matches(detections: Sequence[dict], ground_truth: Sequence[dict], num_classes: int,
             truncate: bool) -> list[dict]:
    return [voc_class_matches(detections, ground_truth, c, VOC_IOU_THRESHOLD, truncate) for c in range(num_classes)]


def _aps(matches: Sequence[dict], use_07_metric: bool) -> list[float | None]:
    return [match_ap(m, use_07_metric) for m in matches]


def classify(detections: Sequence[dict], ground_truth: Sequence[dict], num_classes: int,
             truncate_detections: bool = True) -> dict[str, Any]:
    """Each detection's outcome under voc_map's matching.

    Returns {'outcome': per image a list of str per detection ('tp', 'ignored' (its best match is difficult) or a
    FP_TYPES name), 'target': per image an int array per detection (the ground-truth index a duplicate /
    classification / localization / both refers to; -1 otherwise), 'matched': per image a bool array per
    ground-truth box (a TP took it), 'matches': voc_class_matches per class}.
    """
    if len(detections) != len(ground_truth):
        raise ValueError(f'{len(detections)} detection entries for {len(ground_truth)} ground-truth entries')
    matches = _matches(detections, ground_truth, num_classes, truncate_detections)
    sizes = [len(np.asarray(d['scores']).reshape(-1)) for d in detections]
    start = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    flat = np.full(start[-1], 'fp', dtype=object)  # voc_map's verdicts, back in each image's detection order
    for m in matches:
        at = start[m['image']] + m['index']
        flat[at[m['tp'] > 0]] = 'tp'
        flat[at[(m['tp'] == 0) & (m['fp'] == 0)]] = 'ignored'
    status = [flat[start[i]:start[i + 1]] for i in range(len(detections))]
    outcome, target, matched = [], [], []
    for d, g, st in zip(detections, ground_truth, status, strict=True):
        boxes = np.asarray(d['boxes'], np.float64).reshape(-1, 4)
        classes = np.asarray(d['classes']).reshape(-1).astype(np.int64)
        g_classes = np.asarray(g['classes']).reshape(-1).astype(np.int64)
        counted = ~box_flags(g, 'difficult', len(g_classes))
        iou = _iou_matrix(np.trunc(boxes) if truncate_detections else boxes,
                          np.asarray(g['boxes'], np.float64).reshape(-1, 4))
        same = classes[:, None] == g_classes[None, :]
        _, took = _masked_best(iou, same)  # a TP's box: its best same-class match (voc_map's)
        hit = np.zeros(len(g_classes), bool)
        hit[took[st == 'tp']] = True
        same_iou, same_k = _masked_best(iou, same & counted)
        other_iou, other_k = _masked_best(iou, ~same & counted)
        kinds = np.select([same_iou >= VOC_IOU_THRESHOLD, other_iou >= VOC_IOU_THRESHOLD,
                           same_iou >= BACKGROUND_IOU, other_iou >= BACKGROUND_IOU], list(FP_TYPES[:4]),
                          FP_TYPES[4]).astype(object)
        tk = np.select([same_iou >= VOC_IOU_THRESHOLD, other_iou >= VOC_IOU_THRESHOLD, same_iou >= BACKGROUND_IOU,
                        other_iou >= BACKGROUND_IOU], [same_k, other_k, same_k, other_k], -1)
        fp = st == 'fp'
        outcome.append([str(k) if f else str(s) for k, f, s in zip(kinds, fp, st, strict=True)])
        target.append(np.where(fp, tk, -1))
        matched.append(hit)
    return {'outcome': outcome, 'target': target, 'matched': matched, 'matches': matches}


def _fixed(detections: Sequence[dict], ground_truth: Sequence[dict], kind: str, typed: dict) -> list[dict]:
    """The detections with `kind`'s false positives fixed (module docstring); other kinds untouched."""
    out = []
    for i, d in enumerate(detections):
        boxes = np.asarray(d['boxes'], np.float64).reshape(-1, 4).copy()
        scores = np.asarray(d['scores'], np.float64).reshape(-1)
        classes = np.asarray(d['classes']).reshape(-1).astype(np.int64).copy()
        keep = np.ones(len(scores), bool)
        g_boxes = np.asarray(ground_truth[i]['boxes'], np.float64).reshape(-1, 4)
        g_classes = np.asarray(ground_truth[i]['classes']).reshape(-1).astype(np.int64)
        for j, (o, t) in enumerate(zip(typed['outcome'][i], typed['target'][i], strict=True)):
            if o != kind:
                continue
            if kind == 'classification':
                classes[j] = g_classes[t]
            elif kind == 'localization':
                boxes[j] = g_boxes[t]
            else:
                keep[j] = False
        out.append({**d, 'boxes': boxes[keep], 'scores': scores[keep], 'classes': classes[keep]})
    return out


def _still_false(fixed: Sequence[dict], ground_truth: Sequence[dict], num_classes: int, kind: str,
                 typed: dict, truncate: bool) -> list[dict]:
    """Removes the re-classed / re-placed detections that are still no TP (their box was taken)."""
    again = classify(fixed, ground_truth, num_classes, truncate)
    out = []
    for i, d in enumerate(fixed):
        was = np.asarray([o == kind for o in typed['outcome'][i]], bool)
        drop = was & np.asarray([o not in ('tp', 'ignored') for o in again['outcome'][i]], bool)
        out.append({**d, 'boxes': np.asarray(d['boxes'])[~drop], 'scores': np.asarray(d['scores'])[~drop],
                    'classes': np.asarray(d['classes'])[~drop]})
    return out


def _without_missed(ground_truth: Sequence[dict], typed: dict) -> list[dict]:
    """The ground truth with the boxes no TP took marked difficult (no longer counted)."""
    out = []
    for g, matched in zip(ground_truth, typed['matched'], strict=True):
        difficult = box_flags(g, 'difficult', len(matched))
        out.append({**g, 'difficult': difficult | ~matched})
    return out


def _mean(aps: Sequence[float | None]) -> float | None:
    present = [a for a in aps if a is not None]
    return float(np.mean(present)) if present else None


def compute(detections: Sequence[dict], ground_truth: Sequence[dict], num_classes: int, *,
            truncate_detections: bool = True, use_07_metric: bool = False) -> dict[str, Any]:
    """The error types' counts and costs.

    Returns {'types': TYPES, 'map' (voc_map's mAP@0.5; None without ground truth), 'delta_map' {type: mAP with
    that type fixed - mAP}, 'counts' {type: number over all classes}, 'per_class': [{'class', 'ap', 'counts'
    {type: n} (a FP counts in its predicted class, a missed box in its own), 'delta_ap' {type: gain} (None
    without ground truth)}]}.
    """
    typed = classify(detections, ground_truth, num_classes, truncate_detections)
    aps = _aps(typed['matches'], use_07_metric)
    counts = np.zeros((num_classes, len(TYPES)), np.int64)
    for i, d in enumerate(detections):
        classes = np.asarray(d['classes']).reshape(-1)
        for j, o in enumerate(typed['outcome'][i]):
            if o in FP_TYPES:
                counts[classes[j], FP_TYPES.index(o)] += 1
        g = ground_truth[i]
        g_classes = np.asarray(g['classes']).reshape(-1).astype(np.int64)
        missed = ~typed['matched'][i] & ~box_flags(g, 'difficult', len(g_classes))
        np.add.at(counts[:, TYPES.index('missed')], g_classes[missed], 1)
    fixed_aps = {}
    for kind in TYPES:
        dets, gts = detections, ground_truth
        if kind == 'missed':
            gts = _without_missed(ground_truth, typed)
        else:
            dets = _fixed(detections, ground_truth, kind, typed)
            if kind in ('classification', 'localization'):
                dets = _still_false(dets, ground_truth, num_classes, kind, typed, truncate_detections)
        fixed = _aps(_matches(dets, gts, num_classes, truncate_detections), use_07_metric)
        fixed_aps[kind] = [1.0 if f is None and a is not None else f for f, a in zip(fixed, aps, strict=True)]
    base = _mean(aps)
    per_class = [{'class': c, 'ap': aps[c], 'counts': {k: int(counts[c, t]) for t, k in enumerate(TYPES)},
                  'delta_ap': {k: (None if aps[c] is None else float(fixed_aps[k][c] - aps[c])) for k in TYPES}}
                 for c in range(num_classes)]
    return {'types': list(TYPES), 'map': base,
            'delta_map': {k: (None if base is None else float(_mean(fixed_aps[k]) - base)) for k in TYPES},
            'counts': {k: int(counts[:, t].sum()) for t, k in enumerate(TYPES)}, 'per_class': per_class}


def summary(errors: dict[str, Any]) -> str:
    """One line: the types by what fixing them would gain in mAP@0.5, largest first."""
    if errors['map'] is None:
        return 'errors: no ground truth'
    ranked = sorted(TYPES, key=lambda k: -errors['delta_map'][k])
    # Signed: a re-classed or moved detection can displace a true positive.
    parts = [f"{k} {errors['delta_map'][k]:+.3f} ({errors['counts'][k]})" for k in ranked]
    return 'mAP@0.5 with one error type fixed (count): ' + ', '.join(parts)
