"""Detection metrics as pure functions of host data: the reference's VOC mAP@0.5, COCO mAP@[.5:.95]
(pycocotools), their flattened summary (`compute_metrics`) and the per-class table. No config, no model, no JAX.

Data structures (host side, NumPy), one entry per image, in dataset order:
  detections:   {'image_id', 'boxes' (k, 4) float64 x1, y1, x2, y2 in ORIGINAL-image pixels, 'scores' (k,),
                 'classes' (k,) int}
  ground_truth: {'image_id', 'boxes' (g, 4) float64 x1, y1, x2, y2 in original pixels, 'classes' (g,) int,
                 'height', 'width', optionally 'difficult' (g,) bool (VOC) and 'iscrowd' (g,) bool (COCO)}
The i-th detections entry belongs to the i-th ground-truth entry (image identity is the list position).
The data sources carry one per-box flag ('difficult': VOC difficult, COCO iscrowd); `runner.collect_detections`
passes it as both keys, so a flagged box is ignored the way each protocol ignores boxes.

VOC mAP (`voc_map`) is the reference's `get_mAP` (pythonlessons evaluate_mAP.py), step for step:
  per class, the detections of all images sorted by confidence (stable: ties keep image order); each is matched
  to the same-class ground truth of maximum IoU in its image (first one on ties), IoU with the VOC "+1 pixel"
  convention (iw = min(x2) - max(x1) + 1, ...; only boxes with iw > 0 and ih > 0 overlap), detection corners
  truncated to int as the reference's text files do; TP if that IoU >= 0.5 and the ground truth is unused, else
  FP (no fallback to the second best); precision/recall from cumulative sums; AP by all-point interpolation
  (VOC2010+); mAP = mean over the classes present in the ground truth (classes without ground truth are left
  out, detections or not). One deliberate difference: the reference sorts on confidences rounded to 4 decimals
  (it writes them as '%.4f' strings); here the full float score orders them.
  PASCAL devkit protocol (VOCevaldet.m / py-faster-rcnn voc_eval), switched on by flags: `difficult` ground truth
  counts neither in the number of positives nor as a TP or FP (a detection whose best match is difficult is
  ignored; the difficult box is never marked used); `use_07_metric` = VOC2007's 11-point AP (mean over recall
  t in np.arange(0, 1.1, 0.1) of the max precision at recall >= t); `truncate_detections=False` keeps float
  corners as the devkit reads them (the reference truncates). A match needs IoU >= 0.5 as in the reference and
  the MATLAB devkit (py-faster-rcnn's voc_eval.py port writes `> 0.5`; they differ only at exactly 0.5).

COCO mAP (`coco_map`) hands the same detections and ground truth (boxes as x, y, w = x2 - x1, h = y2 - y1 in
original pixels, area = w * h, iscrowd from the ground truth's 'iscrowd' flags, else 0) to pycocotools' COCOeval
and reports its 12 summary numbers. Crowd boxes are ignore regions there: a detection matching one (IoU = overlap
over the detection's own area) is neither TP nor FP, and crowd boxes do not count as positives.

The protocol settings of config.eval (`voc_metric`, `voc_truncate_boxes`, the mAP score threshold and detection
cap) are read and checked by `detection.DetectionMetrics`, which hands them to these functions as arguments.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

VOC_IOU_THRESHOLD = 0.5  # MINOVERLAP of the PASCAL VOC challenge
COCO_STATS = (
    'AP', 'AP50', 'AP75', 'AP_small', 'AP_medium', 'AP_large', 'AR1', 'AR10', 'AR100', 'AR_small', 'AR_medium',
    'AR_large',
)


# ----------------------------------------------------------------------------------------------------------------
# VOC mAP@0.5, as the reference.


def voc_ap(rec: Sequence[float], prec: Sequence[float], use_07_metric: bool = False) -> float:
    """All-point interpolated AP (VOC2010+) of a precision/recall curve (the reference's `voc_ap`), or with
    `use_07_metric` VOC2007's 11-point AP: mean over t in {0, 0.1, ..., 1} of max(precision[recall >= t]) (0
    when no recall reaches t).

    rec, prec: cumulative recall and precision after each detection, in confidence order.
    """
    if use_07_metric:
        r, p = np.asarray(rec, np.float64), np.asarray(prec, np.float64)
        # The thresholds as voc_eval.py writes them (np.arange: 0.30000000000000004, 0.6000000000000001, ...), so
        # a recall of exactly 0.3 does not reach t = 0.3 there either.
        return float(sum((p[r >= t].max() if np.any(r >= t) else 0.0) for t in np.arange(0.0, 1.1, 0.1)) / 11)
    mrec = [0.0, *rec, 1.0]
    mpre = [0.0, *prec, 0.0]
    for i in range(len(mpre) - 2, -1, -1):  # precision envelope: max precision at any higher recall
        mpre[i] = max(mpre[i], mpre[i + 1])
    return float(sum((mrec[i] - mrec[i - 1]) * mpre[i] for i in range(1, len(mrec)) if mrec[i] != mrec[i - 1]))


def voc_iou(box: np.ndarray, gts: np.ndarray) -> np.ndarray:
    """IoU of one box (4,) with gts (g, 4), xyxy, VOC "+1 pixel" convention; -1 where they do not overlap
    (iw <= 0 or ih <= 0), so such boxes never become a match."""
    iw = np.minimum(box[2], gts[:, 2]) - np.maximum(box[0], gts[:, 0]) + 1
    ih = np.minimum(box[3], gts[:, 3]) - np.maximum(box[1], gts[:, 1]) + 1
    inter = iw * ih
    ua = (box[2] - box[0] + 1) * (box[3] - box[1] + 1) + (gts[:, 2] - gts[:, 0] + 1) * (gts[:, 3] - gts[:, 1] + 1)
    overlap = (iw > 0) & (ih > 0)
    with np.errstate(divide='ignore', invalid='ignore'):
        return np.where(overlap, inter / np.where(overlap, ua - inter, 1.0), -1.0)


def voc_map(
    detections: Sequence[dict],
    ground_truth: Sequence[dict],
    num_classes: int,
    iou_threshold: float = VOC_IOU_THRESHOLD,
    truncate_detections: bool = True,
    use_07_metric: bool = False,
    use_difficult: bool = True,
) -> dict[str, Any]:
    """The reference's VOC mAP (see the module docstring), with the devkit's difficult boxes and 11-point AP.

    use_07_metric: VOC2007 11-point AP instead of all-point.
    use_difficult: honour the ground truth's optional 'difficult' flags (ignored boxes); False treats every box
        as a normal positive.
    'num_gt' per class counts the non-difficult boxes (the devkit's npos); 'num_difficult' the others.

    Returns:
      {'map': mean AP over classes with ground truth (NaN if there is no ground truth at all),
       'per_class': [{'class', 'ap' (None without ground truth), 'num_gt', 'num_det', 'num_tp'}] for every
       class 0..num_classes-1, 'num_classes_with_gt'}.
    """
    if len(detections) != len(ground_truth):
        raise ValueError(f'{len(detections)} detection entries for {len(ground_truth)} ground-truth entries')
    per_class = []
    aps = []
    for c in range(num_classes):
        m = voc_class_matches(detections, ground_truth, c, iou_threshold, truncate_detections, use_difficult)
        tp, num_gt, num_difficult = m['tp'], m['num_gt'], m['num_difficult']
        entry = {'class': c, 'ap': None, 'num_gt': int(num_gt), 'num_det': int(len(tp)), 'num_tp': int(tp.sum()),
                 'num_difficult': num_difficult}
        if num_gt > 0:
            entry['ap'] = match_ap(m, use_07_metric)
            aps.append(entry['ap'])
        per_class.append(entry)
    return {
        'map': float(np.mean(aps)) if aps else math.nan,
        'per_class': per_class,
        'num_classes_with_gt': len(aps),
    }


def match_ap(match: dict, use_07_metric: bool = False) -> float | None:
    """voc_ap of one class's `voc_class_matches` (None without ground truth)."""
    if match['num_gt'] == 0:
        return None
    ctp, cfp = np.cumsum(match['tp']), np.cumsum(match['fp'])
    return voc_ap(list(ctp / match['num_gt']), list(ctp / np.maximum(ctp + cfp, 1e-12)), use_07_metric)


def voc_class_matches(
    detections: Sequence[dict],
    ground_truth: Sequence[dict],
    c: int,
    iou_threshold: float = VOC_IOU_THRESHOLD,
    truncate_detections: bool = True,
    use_difficult: bool = True,
) -> dict[str, Any]:
    """voc_map's matching of class `c` (see the module docstring): its detections of all images in confidence
    order (stable), each TP, FP or neither (matched a difficult box).

    Returns {'scores' (k,) descending, 'tp' (k,) and 'fp' (k,) 0/1 floats (both 0: ignored), 'image' (k,) int
    image positions, 'index' (k,) int positions in their image's detections, 'boxes' (k, 4) xyxy original pixels
    as matched (truncated when `truncate_detections`),
    'num_gt' (non-difficult boxes of c), 'num_difficult'}.
    """
    gts, diffs = [], []  # per image: that class's ground-truth boxes and difficult flags
    for g in ground_truth:
        cls = np.asarray(g['classes']).reshape(-1)
        gts.append(np.asarray(g['boxes'], np.float64).reshape(-1, 4)[cls == c])
        diffs.append(box_flags(g, 'difficult', len(cls))[cls == c] if use_difficult
                     else np.zeros(len(gts[-1]), bool))
    num_gt = sum(int((~d).sum()) for d in diffs)
    num_difficult = sum(int(d.sum()) for d in diffs)
    det_img, det_index, det_box, det_score = [], [], [], []
    for i, d in enumerate(detections):
        cls = np.asarray(d['classes']).reshape(-1)
        m = cls == c
        boxes = np.asarray(d['boxes'], np.float64).reshape(-1, 4)[m]
        det_img += [i] * int(m.sum())
        det_index.append(np.flatnonzero(m))
        det_box.append(np.trunc(boxes) if truncate_detections else boxes)  # upstream's np.int32 cast
        det_score.append(np.asarray(d['scores'], np.float64).reshape(-1)[m])
    scores = np.concatenate(det_score) if det_score else np.zeros(0)
    boxes = np.concatenate(det_box) if det_box else np.zeros((0, 4))
    order = np.argsort(-scores, kind='stable')
    used = [np.zeros(len(g), bool) for g in gts]
    tp = np.zeros(len(order))
    fp = np.ones(len(order))
    for rank, j in enumerate(order):
        img = det_img[j]
        if len(gts[img]) == 0:
            continue  # FP
        ov = voc_iou(boxes[j], gts[img])
        best = int(np.argmax(ov))  # first maximum, like upstream's strict `ov > ovmax` scan
        if ov[best] >= iou_threshold:
            if diffs[img][best]:
                fp[rank] = 0  # matched a difficult box: neither TP nor FP (the devkit)
            elif not used[img][best]:
                tp[rank], fp[rank] = 1, 0
                used[img][best] = True
    index = np.concatenate(det_index) if det_index else np.zeros(0, np.int64)
    return {'scores': scores[order], 'tp': tp, 'fp': fp, 'image': np.asarray(det_img, np.int64)[order],
            'index': index[order].astype(np.int64),
            'boxes': boxes[order], 'num_gt': num_gt, 'num_difficult': num_difficult}


def box_flags(g: dict, key: str, n: int) -> np.ndarray:
    """The ground-truth entry's optional per-box bool flags `key` (n,), all False when absent."""
    if key not in g or g[key] is None:
        return np.zeros(n, bool)
    flags = np.asarray(g[key]).astype(bool).reshape(-1)
    if len(flags) != n:
        raise ValueError(f"ground truth {key!r} has {len(flags)} flags for {n} boxes")
    return flags


# ----------------------------------------------------------------------------------------------------------------
# COCO mAP@[.5:.95] through pycocotools.


def _coco_xywh(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=-1)


def coco_map(
    detections: Sequence[dict], ground_truth: Sequence[dict], num_classes: int, verbose: bool = False
) -> dict[str, Any]:
    """COCO metrics of the same detections and ground truth with pycocotools' COCOeval ('bbox').

    Returns:
      {'AP' (mAP@[.5:.95]), 'AP50', 'AP75', ..., 'AR100', ... (COCO_STATS; NaN where COCOeval reports -1, i.e.
       no ground truth in that range), 'per_class_ap': [AP@[.5:.95] per class or None without ground truth]}.
      verbose: print pycocotools' own summary table.
    """
    try:
        from pycocotools.coco import COCO  # noqa: PLC0415
        from pycocotools.cocoeval import COCOeval  # noqa: PLC0415
    except ImportError as e:  # pragma: no cover
        raise ImportError('COCO mAP needs pycocotools: pip install pycocotools') from e
    if len(detections) != len(ground_truth):
        raise ValueError(f'{len(detections)} detection entries for {len(ground_truth)} ground-truth entries')

    images, annotations, results = [], [], []
    for i, g in enumerate(ground_truth):
        images.append({'id': i + 1, 'height': int(g['height']), 'width': int(g['width'])})
        classes = np.asarray(g['classes']).reshape(-1)
        crowd = box_flags(g, 'iscrowd', len(classes))
        for box, c, k in zip(_coco_xywh(g['boxes']), classes, crowd, strict=True):
            annotations.append({
                'id': len(annotations) + 1, 'image_id': i + 1, 'category_id': int(c) + 1, 'bbox': box.tolist(),
                'area': float(box[2] * box[3]), 'iscrowd': int(k),
            })
    for i, d in enumerate(detections):
        scores = np.asarray(d['scores'], np.float64).reshape(-1)
        classes = np.asarray(d['classes']).reshape(-1)
        for box, s, c in zip(_coco_xywh(d['boxes']), scores, classes, strict=True):
            results.append({'image_id': i + 1, 'category_id': int(c) + 1, 'bbox': box.tolist(), 'score': float(s)})

    nan_result = {k: math.nan for k in COCO_STATS}
    if not annotations:
        return {**nan_result, 'per_class_ap': [None] * num_classes}
    gt_classes = {a['category_id'] for a in annotations if not a['iscrowd']}
    if not gt_classes:  # only crowd regions: nothing to find (COCOeval reports -1 everywhere)
        return {**nan_result, 'per_class_ap': [None] * num_classes}
    if not results:  # pycocotools cannot load an empty result list; every AP and AR is 0 then
        return {**{k: 0.0 for k in COCO_STATS}, 'per_class_ap': [0.0 if c + 1 in gt_classes else None
                                                                  for c in range(num_classes)]}
    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with quiet:
        gt = COCO()
        gt.dataset = {
            'images': images, 'annotations': annotations,
            'categories': [{'id': c + 1, 'name': str(c)} for c in range(num_classes)],
        }
        gt.createIndex()
        dt = gt.loadRes(results)
        evaluator = COCOeval(gt, dt, 'bbox')
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    out = {k: (float(v) if v >= 0 else math.nan) for k, v in zip(COCO_STATS, evaluator.stats, strict=True)}
    precision = evaluator.eval['precision']  # (iou thresholds, recall points, classes, area ranges, max dets)
    per_class = []
    for k, cat in enumerate(evaluator.params.catIds):
        p = precision[:, :, k, 0, -1]  # all areas, 100 detections
        per_class.append(float(p[p > -1].mean()) if cat in gt_classes and np.any(p > -1) else None)
    out['per_class_ap'] = per_class
    return out


def compute_metrics(
    detections: Sequence[dict],
    ground_truth: Sequence[dict],
    num_classes: int,
    coco: bool = True,
    *,
    use_07_metric: bool = False,
    truncate_detections: bool = True,
) -> dict[str, Any]:
    """VOC mAP@0.5 and (when `coco`) COCO metrics of collected detections, flattened for logging.

    use_07_metric, truncate_detections: passed to voc_map (`detection.voc_options(config.eval)` reads them).
    Returns {'map50' (VOC), 'coco_map', 'coco_map50', 'coco_map75' (when coco), 'num_images', 'num_detections',
    'num_gt' (boxes not flagged difficult/crowd), 'num_ignored' (flagged boxes), 'per_class': [... VOC entries,
    + 'coco_ap' when coco]}.
    """
    voc = voc_map(detections, ground_truth, num_classes, use_07_metric=use_07_metric,
                  truncate_detections=truncate_detections)
    ignored = int(sum(box_flags(g, 'difficult', len(g['classes'])).sum() for g in ground_truth))
    out: dict[str, Any] = {
        'map50': voc['map'],
        'num_images': len(ground_truth),
        'num_detections': int(sum(len(d['scores']) for d in detections)),
        'num_gt': int(sum(len(g['classes']) for g in ground_truth)) - ignored,
        'num_ignored': ignored,
        'per_class': voc['per_class'],
    }
    if coco:
        c = coco_map(detections, ground_truth, num_classes)
        out.update(coco_map=c['AP'], coco_map50=c['AP50'], coco_map75=c['AP75'], coco=c)
        for entry, ap in zip(out['per_class'], c['per_class_ap'], strict=True):
            entry['coco_ap'] = ap
    return out


# ----------------------------------------------------------------------------------------------------------------
# The per-class table.


def _fmt(v: float | None, width: int = 7) -> str:
    return f'{"-":>{width}}' if v is None or (isinstance(v, float) and math.isnan(v)) else f'{100 * v:>{width}.2f}'


def format_table(metrics: dict[str, Any], class_names: Sequence[str]) -> str:
    """Per-class table: AP@0.5 (VOC), AP@[.5:.95] (COCO, when present), #GT, #det, #TP; then the means."""
    has_coco = 'coco_map' in metrics
    width = max([5, *(len(n) for n in class_names)])
    head = f'{"class":<{width}} {"AP50":>7}' + (f' {"AP":>7}' if has_coco else '')
    head += f' {"#GT":>6} {"#det":>6} {"#TP":>6}'
    lines = [head, '-' * len(head)]
    for e in metrics['per_class']:
        if e['num_gt'] == 0 and e['num_det'] == 0:
            continue
        name = class_names[e['class']] if e['class'] < len(class_names) else str(e['class'])
        row = f'{name:<{width}} {_fmt(e["ap"])}' + (f' {_fmt(e.get("coco_ap"))}' if has_coco else '')
        lines.append(row + f' {e["num_gt"]:>6} {e["num_det"]:>6} {e["num_tp"]:>6}')
    lines.append('-' * len(head))
    lines.append(f'{"mAP":<{width}} {_fmt(metrics["map50"])}' + (f' {_fmt(metrics["coco_map"])}' if has_coco else '')
                 + f' {metrics["num_gt"]:>6} {metrics["num_detections"]:>6}')
    lines.append('(AP in %; AP50 = VOC mAP@0.5 over classes with ground truth' +
                 ('; AP = COCO mAP@[.5:.95])' if has_coco else ')'))
    return '\n'.join(lines)
