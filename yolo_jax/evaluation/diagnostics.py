"""Evaluation diagnostics beside the mAP table ("why is my mAP low?"): per-class precision-recall curves, a
confusion matrix with a background row and column, F1 against the score threshold, and AP by object size.
Pure NumPy functions of the detections and ground truth of `metrics.py` (one entry per image, boxes xyxy in
ORIGINAL-image pixels); `plots.py` draws them, `write_files` saves them.

Every figure uses voc_map's matching (`metrics.voc_class_matches`: per class, detections in confidence order, each
matched to the same-class ground truth of maximum IoU, VOC "+1 pixel" IoU >= 0.5, a used box makes it a FP with no
fallback, a detection whose best match is a difficult/crowd box is ignored, difficult boxes are no positives),
with the same protocol options (`truncate_detections`, `use_07_metric`), so the PR curve's AP is the AP of the
mAP table and the confusion matrix's diagonal is the TP count the F1 curve counts at its threshold.

  pr_curves         per class: AP, and the interpolated precision (max precision at recall >= r) at 101 recall
                    points r = 0, 0.01, ..., 1 (COCO's sampling; the plot).
  f1_curves         per class and overall (micro: TP, FP and FN summed over classes) F1 = 2 TP / (2 TP + FP + FN)
                    of the detections with score >= t, at t = 0, 0.01, ..., 1 (the plot) and at its best threshold:
                    the F1 only changes at detection scores, so every distinct score is tried; ties go to the
                    highest threshold (fewest detections).
  confusion_matrix  (C + 1, C + 1) counts at one score threshold, rows the PREDICTED class, columns the TRUE class,
                    index C = background; the rule is in its docstring.
  ap_by_size        VOC AP@0.5 per COCO area range (small < 32^2, medium < 96^2, large, in original pixels^2):
                    ground truth outside the range is ignored (as difficult), and so is an unmatched detection
                    whose own area lies outside it (COCO's area-range rule, with VOC matching).
  errors            TIDE's error types (duplicate, classification, localization, both, background, missed): how
                    many of each and the mAP@0.5 gained by fixing each alone (`error_types.py`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from yolo_jax.evaluation import error_types
from yolo_jax.evaluation.metrics import VOC_IOU_THRESHOLD, box_flags, voc_ap, voc_class_matches, voc_iou

GRID = np.round(np.linspace(0.0, 1.0, 101), 2)  # recall points of the PR plot; score thresholds of the F1 plot
SIZE_BUCKETS = (('small', 0.0, 32.0 ** 2), ('medium', 32.0 ** 2, 96.0 ** 2), ('large', 96.0 ** 2, math.inf))
PNG_NAMES = ('pr_curves', 'confusion_matrix', 'f1_threshold', 'ap_by_size', 'error_types')
IMAGE_PREFIX = 'diagnostics/'  # of the Result's images (TensorBoard tags) holding the plots


def class_matches(detections: Sequence[dict], ground_truth: Sequence[dict], num_classes: int,
                  truncate_detections: bool = True) -> list[dict]:
    """`metrics.voc_class_matches` of every class 0..num_classes-1 (computed once, shared by the figures)."""
    if len(detections) != len(ground_truth):
        raise ValueError(f'{len(detections)} detection entries for {len(ground_truth)} ground-truth entries')
    return [voc_class_matches(detections, ground_truth, c, VOC_IOU_THRESHOLD, truncate_detections)
            for c in range(num_classes)]


# ----------------------------------------------------------------------------------------------------------------
# Precision-recall curves.


def pr_points(match: dict) -> tuple[np.ndarray, np.ndarray]:
    """(recall (k,), precision (k,)) after each of a class's detections in confidence order, as voc_map computes
    them (ignored detections repeat the previous point). Empty without ground truth."""
    if match['num_gt'] == 0:
        return np.zeros(0), np.zeros(0)
    ctp, cfp = np.cumsum(match['tp']), np.cumsum(match['fp'])
    return ctp / match['num_gt'], ctp / np.maximum(ctp + cfp, 1e-12)


def pr_curves(matches: Sequence[dict], use_07_metric: bool = False) -> dict[str, Any]:
    """{'recall': GRID, 'per_class': [{'class', 'ap' (None without ground truth: voc_map's AP), 'num_gt',
    'num_det', 'num_tp', 'precision' (101,) max precision at recall >= r (0 where not reached; [] without
    ground truth)}]}."""
    per_class = []
    for c, m in enumerate(matches):
        rec, prec = pr_points(m)
        entry = {'class': c, 'ap': None, 'num_gt': int(m['num_gt']), 'num_det': len(m['tp']),
                 'num_tp': int(m['tp'].sum()), 'precision': []}
        if m['num_gt'] > 0:
            entry['ap'] = voc_ap(list(rec), list(prec), use_07_metric)
            envelope = np.maximum.accumulate(prec[::-1])[::-1] if len(prec) else prec  # max at higher recall
            at = np.searchsorted(rec, GRID, side='left')  # the first point with recall >= r
            entry['precision'] = [float(envelope[i]) if i < len(rec) else 0.0 for i in at]
        per_class.append(entry)
    return {'recall': GRID.tolist(), 'per_class': per_class}


# ----------------------------------------------------------------------------------------------------------------
# F1 against the score threshold.


def counts_at(match: dict, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(TP (t,), FP (t,)) of one class's detections with score >= each threshold. Greedy matching in score order
    makes the detections above a threshold a prefix of the matched list, with the same outcomes."""
    kept = np.searchsorted(-match['scores'], -np.asarray(thresholds, np.float64), side='right')
    ctp = np.concatenate([[0.0], np.cumsum(match['tp'])])
    cfp = np.concatenate([[0.0], np.cumsum(match['fp'])])
    return ctp[kept], cfp[kept]


def f1_scores(tp: np.ndarray, fp: np.ndarray, num_gt: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(F1, precision, recall), each (t,): F1 = 2 TP / (2 TP + FP + FN), 0 where nothing is counted."""
    fn = num_gt - tp
    with np.errstate(divide='ignore', invalid='ignore'):
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        recall = np.where(num_gt > 0, tp / max(num_gt, 1), 0.0)
    return f1, precision, recall


def best_threshold(matches: Sequence[dict]) -> dict[str, Any]:
    """The score threshold of maximum F1 over `matches` pooled (micro), tried at every distinct detection score;
    ties go to the highest threshold. {'threshold' (None when no detection is a TP), 'f1', 'precision',
    'recall', 'tp', 'fp', 'fn'}."""
    scores = np.concatenate([m['scores'] for m in matches]) if matches else np.zeros(0)
    num_gt = int(sum(m['num_gt'] for m in matches))
    candidates = np.unique(scores)[::-1]  # descending: argmax picks the first (highest) of equal maxima
    tp, fp = np.zeros(len(candidates)), np.zeros(len(candidates))
    for m in matches:
        t, f = counts_at(m, candidates)
        tp, fp = tp + t, fp + f
    f1, precision, recall = f1_scores(tp, fp, num_gt)
    if len(candidates) == 0 or f1.max() <= 0:
        return {'threshold': None, 'f1': 0.0, 'precision': 0.0, 'recall': 0.0, 'tp': 0,
                'fp': int(sum(m['fp'].sum() for m in matches)), 'fn': num_gt}
    k = int(np.argmax(f1))
    return {'threshold': float(candidates[k]), 'f1': float(f1[k]), 'precision': float(precision[k]),
            'recall': float(recall[k]), 'tp': int(tp[k]), 'fp': int(fp[k]), 'fn': int(num_gt - tp[k])}


def f1_curves(matches: Sequence[dict]) -> dict[str, Any]:
    """{'thresholds': GRID, 'overall': {'f1', 'precision', 'recall' (101,) micro over classes, 'best'},
    'per_class': [{'class', 'num_gt', 'f1' (101,), 'best'}]} ('best': `best_threshold`)."""

    def curve(ms: Sequence[dict]) -> dict[str, Any]:
        tp, fp = np.zeros(len(GRID)), np.zeros(len(GRID))
        for m in ms:
            t, f = counts_at(m, GRID)
            tp, fp = tp + t, fp + f
        f1, precision, recall = f1_scores(tp, fp, int(sum(m['num_gt'] for m in ms)))
        return {'f1': f1.tolist(), 'precision': precision.tolist(), 'recall': recall.tolist(),
                'best': best_threshold(ms)}

    per_class = [{'class': c, 'num_gt': int(m['num_gt']), **{k: v for k, v in curve([m]).items()
                                                           if k in ('f1', 'best')}}
                 for c, m in enumerate(matches)]
    return {'thresholds': GRID.tolist(), 'overall': curve(matches), 'per_class': per_class}


# ----------------------------------------------------------------------------------------------------------------
# Confusion matrix.


def _image_arrays(d: dict, g: dict, truncate: bool) -> tuple[np.ndarray, ...]:
    """One image's detections (boxes (k, 4), scores (k,), classes (k,)) and ground truth (boxes (g, 4), classes
    (g,), difficult (g,)) as NumPy arrays, detection corners truncated as voc_map matches them."""
    boxes = np.asarray(d['boxes'], np.float64).reshape(-1, 4)
    g_classes = np.asarray(g['classes']).reshape(-1).astype(np.int64)
    return (np.trunc(boxes) if truncate else boxes, np.asarray(d['scores'], np.float64).reshape(-1),
            np.asarray(d['classes']).reshape(-1).astype(np.int64),
            np.asarray(g['boxes'], np.float64).reshape(-1, 4), g_classes, box_flags(g, 'difficult', len(g_classes)))


def _same_class_pass(boxes, classes, g_boxes, g_classes, difficult, used) -> np.ndarray:
    """voc_map's matching inside one image, detections in confidence order → outcome per detection: the matched
    ground-truth index, -1 unmatched, -2 ignored (best match difficult). Marks `used`."""
    outcome = np.full(len(boxes), -1)
    for j in range(len(boxes)):
        same = np.flatnonzero(g_classes == classes[j])
        if len(same) == 0:
            continue
        ov = voc_iou(boxes[j], g_boxes[same])
        best = int(np.argmax(ov))  # first maximum, as voc_map
        if ov[best] >= VOC_IOU_THRESHOLD:
            k = same[best]
            if difficult[k]:
                outcome[j] = -2
            elif not used[k]:
                outcome[j], used[k] = k, True
    return outcome


def confusion_matrix(detections: Sequence[dict], ground_truth: Sequence[dict], num_classes: int,
                     score_threshold: float, truncate_detections: bool = True) -> dict[str, Any]:
    """Counts (C + 1, C + 1): rows the predicted class, columns the true class, index C = background.

    Rule, per image, for the detections with score >= score_threshold (taken in confidence order, stable):
      1. correct: voc_map's matching (same class, the ground truth of maximum IoU, IoU >= 0.5, unused, no fallback
         to the second best) → [c, c]. A detection whose best same-class match is difficult is ignored (counted
         in 'ignored', nowhere in the matrix), as voc_map ignores it.
      2. confused: each detection left over takes the unused non-difficult ground truth of ANOTHER class with the
         maximum IoU >= 0.5 → [predicted, true].
      3. spurious: a detection still left (background, a duplicate, a poor box) → [predicted, C] (background
         column).
      4. missed: each non-difficult ground-truth box no detection took → [C, true] (background row).
    So column j < C sums to class j's non-difficult boxes, row i < C to class i's detections at the threshold
    minus the ignored ones; [c, c] is the TP count of the F1 curve at this threshold; [C, C] = 0.
    Returns {'score_threshold', 'counts' (C + 1, C + 1) list of int lists, 'ignored' (C,) int}.
    """
    if len(detections) != len(ground_truth):
        raise ValueError(f'{len(detections)} detection entries for {len(ground_truth)} ground-truth entries')
    counts = np.zeros((num_classes + 1, num_classes + 1), np.int64)
    ignored = np.zeros(num_classes, np.int64)
    for d, g in zip(detections, ground_truth, strict=True):
        boxes, scores, classes, g_boxes, g_classes, difficult = _image_arrays(d, g, truncate_detections)
        order = np.argsort(-scores, kind='stable')
        order = order[scores[order] >= score_threshold]
        boxes, classes = boxes[order], classes[order]
        used = np.zeros(len(g_classes), bool)
        outcome = _same_class_pass(boxes, classes, g_boxes, g_classes, difficult, used)
        for j in range(len(boxes)):
            if outcome[j] == -2:
                ignored[classes[j]] += 1
                continue
            if outcome[j] >= 0:
                counts[classes[j], classes[j]] += 1
                continue
            free = np.flatnonzero(~used & ~difficult & (g_classes != classes[j]))
            ov = voc_iou(boxes[j], g_boxes[free]) if len(free) else np.zeros(0)
            if len(free) and ov.max() >= VOC_IOU_THRESHOLD:
                k = free[int(np.argmax(ov))]
                used[k] = True
                counts[classes[j], g_classes[k]] += 1
            else:
                counts[classes[j], num_classes] += 1
        for k in np.flatnonzero(~used & ~difficult):
            counts[num_classes, g_classes[k]] += 1
    return {'score_threshold': float(score_threshold), 'counts': counts.tolist(), 'ignored': ignored.tolist()}


# ----------------------------------------------------------------------------------------------------------------
# AP by object size.


def box_areas(boxes: np.ndarray) -> np.ndarray:
    """Areas (n,) of xyxy boxes (n, 4) in pixels^2, w * h without VOC's +1 (COCO's area); 0 for a degenerate box."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.maximum(boxes[:, 2] - boxes[:, 0], 0.0) * np.maximum(boxes[:, 3] - boxes[:, 1], 0.0)


def ap_by_size(detections: Sequence[dict], ground_truth: Sequence[dict], num_classes: int,
               buckets: Sequence[tuple[str, float, float]] = SIZE_BUCKETS, truncate_detections: bool = True,
               use_07_metric: bool = False) -> list[dict[str, Any]]:
    """VOC AP@0.5 per area range [lo, hi) (pixels^2, original image): ground truth outside it is ignored like a
    difficult box (matching it is neither TP nor FP, it counts no positive), and a FP whose own area lies outside
    it is dropped. With the single range [0, inf) this is voc_map.

    Returns per bucket {'name', 'min_area', 'max_area' (None: no bound), 'map' (mean over classes with ground
    truth in the range; None without any), 'num_gt', 'per_class_ap' (C,) (None without ground truth there)}.
    """
    out = []
    for name, lo, hi in buckets:
        restricted = []
        for g in ground_truth:
            area = box_areas(g['boxes'])
            outside = (area < lo) | (area >= hi)
            restricted.append({**g, 'difficult': box_flags(g, 'difficult', len(area)) | outside})
        aps, num_gt = [], 0
        for c in range(num_classes):
            m = voc_class_matches(detections, restricted, c, VOC_IOU_THRESHOLD, truncate_detections)
            area = box_areas(m['boxes'])
            fp = np.where((area < lo) | (area >= hi), 0.0, m['fp'])
            num_gt += m['num_gt']
            if m['num_gt'] == 0:
                aps.append(None)
                continue
            ctp, cfp = np.cumsum(m['tp']), np.cumsum(fp)
            aps.append(voc_ap(list(ctp / m['num_gt']), list(ctp / np.maximum(ctp + cfp, 1e-12)), use_07_metric))
        present = [a for a in aps if a is not None]
        out.append({'name': name, 'min_area': lo, 'max_area': hi if math.isfinite(hi) else None,
                    'map': float(np.mean(present)) if present else None, 'num_gt': int(num_gt),
                    'per_class_ap': aps})
    return out


# ----------------------------------------------------------------------------------------------------------------
# Everything, its summary and its files.


def compute(detections: Sequence[dict], ground_truth: Sequence[dict], num_classes: int, *, score_threshold: float,
            truncate_detections: bool = True, use_07_metric: bool = False,
            coco: dict | None = None) -> dict[str, Any]:
    """All diagnostics as one JSON-able dict (see the module docstring):
    {'settings', 'pr_curves', 'f1', 'confusion_matrix', 'ap_by_size', 'errors' (+ 'coco_ap_by_size': pycocotools'
    AP@[.5:.95] small / medium / large when `coco`, compute_metrics' 'coco' dict, is given)}.
    score_threshold: the confusion matrix's (the caller passes config.eval.score_threshold, the one detect draws).
    """
    matches = class_matches(detections, ground_truth, num_classes, truncate_detections)
    out = {
        'settings': {'iou_threshold': VOC_IOU_THRESHOLD, 'score_threshold': float(score_threshold),
                     'truncate_detections': truncate_detections, 'use_07_metric': use_07_metric,
                     'num_classes': num_classes, 'num_images': len(ground_truth)},
        'pr_curves': pr_curves(matches, use_07_metric),
        'f1': f1_curves(matches),
        'confusion_matrix': confusion_matrix(detections, ground_truth, num_classes, score_threshold,
                                             truncate_detections),
        'ap_by_size': ap_by_size(detections, ground_truth, num_classes, truncate_detections=truncate_detections,
                                 use_07_metric=use_07_metric),
        'errors': error_types.compute(detections, ground_truth, num_classes,
                                      truncate_detections=truncate_detections, use_07_metric=use_07_metric),
    }
    if coco is not None:
        out['coco_ap_by_size'] = {k: coco[f'AP_{k}'] for k in ('small', 'medium', 'large')}
    return out


def _name(class_names: Sequence[str], c: int) -> str:
    return class_names[c] if c < len(class_names) else str(c)


def summary(diag: dict[str, Any], class_names: Sequence[str]) -> str:
    """Three short lines: the best-F1 threshold, the biggest missed / spurious / confusion counts, and what fixing
    each error type would gain."""
    best = diag['f1']['overall']['best']
    line = ('diagnostics: no detection is a true positive' if best['threshold'] is None else
            f"diagnostics: best F1 {best['f1']:.3f} at score >= {best['threshold']:.3f} "
            f"(precision {best['precision']:.3f}, recall {best['recall']:.3f})")
    cm = np.asarray(diag['confusion_matrix']['counts'])
    n = len(cm) - 1
    parts = []
    if n > 0:
        missed, spurious = cm[n, :n], cm[:n, n]
        off = cm[:n, :n] - np.diag(np.diag(cm[:n, :n]))
        if missed.max() > 0:
            c = int(np.argmax(missed))
            parts.append(f'most missed {_name(class_names, c)} ({missed[c]} of {cm[:, c].sum()})')
        if spurious.max() > 0:
            c = int(np.argmax(spurious))
            parts.append(f'most spurious {_name(class_names, c)} ({spurious[c]})')
        if off.max() > 0:
            p, t = np.unravel_index(int(np.argmax(off)), off.shape)
            parts.append(f'top confusion {_name(class_names, int(t))} detected as {_name(class_names, int(p))} '
                         f'({off[p, t]})')
    where = f"at score >= {diag['confusion_matrix']['score_threshold']:g}: "
    counts = where + ('; '.join(parts) if parts else 'nothing missed, spurious or confused')
    return f"{line}\n{counts}\n{error_types.summary(diag['errors'])}"


def scalars(diag: dict[str, Any]) -> dict[str, float]:
    """TensorBoard scalars: the best F1 and its threshold, precision, recall; mAP@0.5 per size bucket; the mAP@0.5
    gained by fixing each error type."""
    best = diag['f1']['overall']['best']
    out = {f'diagnostics/best_f1_{k}': float(best[k]) for k in ('f1', 'precision', 'recall')}
    if best['threshold'] is not None:
        out['diagnostics/best_f1_threshold'] = float(best['threshold'])
    for b in diag['ap_by_size']:
        if b['map'] is not None:
            out[f"diagnostics/map50_{b['name']}"] = float(b['map'])
    if diag['errors']['map'] is not None:
        out.update({f'diagnostics/map50_gain_{k}': float(v) for k, v in diag['errors']['delta_map'].items()})
    return out


def images(diag: dict[str, Any], class_names: Sequence[str]) -> dict[str, np.ndarray]:
    """{PNG name: (H, W, 3) uint8} the five plots (plots.py, PIL)."""
    from yolo_jax.evaluation import plots  # noqa: PLC0415

    return {'pr_curves': plots.pr_curves(diag['pr_curves'], class_names),
            'confusion_matrix': plots.confusion_matrix(diag['confusion_matrix'], class_names),
            'f1_threshold': plots.f1_threshold(diag['f1'], class_names),
            'ap_by_size': plots.ap_by_size(diag['ap_by_size'],
                                           diag['coco_ap_by_size'] if 'coco_ap_by_size' in diag else None),
            'error_types': plots.error_types(diag['errors'], class_names)}


def add_to(result: Any, detections: Sequence[dict], ground_truth: Sequence[dict], class_names: Sequence[str], *,
           score_threshold: float, truncate_detections: bool = True, use_07_metric: bool = False) -> Any:
    """An `evaluator.Result` of the detection metrics with the diagnostics added: artifact 'diagnostics' (`compute`),
    images 'diagnostics/<png name>' (1, H, W, 3) (the plots, and `gallery.pictures` where the image ids are image
    files), `scalars`, and `summary` after the per-class table."""
    from yolo_jax.evaluation import gallery  # noqa: PLC0415  (PIL and the image decoder)

    metrics = result.metrics
    diag = compute(detections, ground_truth, len(class_names), score_threshold=score_threshold,
                   truncate_detections=truncate_detections, use_07_metric=use_07_metric,
                   coco=metrics['coco'] if 'coco' in metrics else None)
    pictures = {**images(diag, class_names),
                **gallery.pictures(detections, ground_truth, class_names, truncate_detections=truncate_detections)}
    pictures = {f'{IMAGE_PREFIX}{k}': v[None] for k, v in pictures.items()}
    return dataclasses.replace(result, scalars={**result.scalars, **scalars(diag)},
                               details=f'{result.details}\n{summary(diag, class_names)}'.lstrip('\n'),
                               images={**result.images, **pictures},
                               artifacts={**result.artifacts, 'diagnostics': diag})


def write_result(directory: str | Path, result: Any) -> list[Path]:
    """`write_files` of a Result that `add_to` completed: its 'diagnostics' artifact and 'diagnostics/' images."""
    pictures = {k[len(IMAGE_PREFIX):]: v[0] for k, v in result.images.items() if k.startswith(IMAGE_PREFIX)}
    return write_files(directory, result.artifacts['diagnostics'], pictures)


def _finite(x: Any) -> Any:
    """NaN / inf → None, so the file is strict JSON (the values are Python numbers, lists and dicts)."""
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    return None if isinstance(x, float) and not math.isfinite(x) else x


def write_files(directory: str | Path, diag: dict[str, Any], pictures: dict[str, np.ndarray]) -> list[Path]:
    """directory/diagnostics.json (indented, NaN → null) and directory/<name>.png per picture, each written to a
    temporary file and renamed (atomic). Returns the paths."""
    from PIL import Image  # noqa: PLC0415

    from yolo_jax.data.annotations import write_text_atomic  # noqa: PLC0415

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / 'diagnostics.json']
    write_text_atomic(paths[0], json.dumps(_finite(diag), indent=1) + '\n')
    for name, picture in pictures.items():
        path = directory / f'{name}.png'
        tmp = directory / f'.{name}.png.tmp'
        Image.fromarray(np.asarray(picture, np.uint8)).save(tmp, format='PNG')
        tmp.replace(path)
        paths.append(path)
    return paths
