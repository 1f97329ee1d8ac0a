"""Running a model over evaluation batches, and gathering the results of every process.

`mean_losses` runs the compiled eval step (parallel.py) of a TrainState: its sums span the global batch, so every
process gets the losses of the whole split. `collect_detections` runs the jitted forward + post-processing
(inference.predict) over this process's batches and maps the ground truth back to original pixels;
`gather_across_processes` then hands every process the detections and ground truth of all of them.
The data structures are those of `metrics.py`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from yolo_jax import inference
from yolo_jax import postprocess as pp
from yolo_jax.data.letterbox import unletterbox_boxes
from yolo_jax.evaluation.metrics import box_flags
from yolo_jax.steps import STEP_KEYS


def mean_losses(parallel: Any, state: Any, batches: Iterable[dict]) -> dict[str, float]:
    """Mean losses {'giou', 'conf', 'prob', 'total'} per example over `batches` (padding examples excluded; all
    processes' shards), from `parallel.eval(state, batch)` (a `parallel.Parallel`). The sums stay on the device
    until the last batch: one host transfer per evaluation."""
    totals = None
    for batch in batches:
        sums = parallel.eval(state, {k: batch[k] for k in STEP_KEYS})
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = {k: float(v) for k, v in jax.device_get(totals or {}).items()}
    count = max(totals.pop('count', 0.0), 1.0)
    return {k: v / count for k, v in totals.items()}


def _snap(boxes: np.ndarray) -> np.ndarray:
    """Rounds coordinates within 1e-2 px of an integer to it: undoes the float32 round trip of the pipeline's
    letterbox for integer annotations (the reference compares against the integer annotation boxes)."""
    r = np.rint(boxes)
    return np.where(np.abs(boxes - r) < 1e-2, r, boxes)


def _image_id(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode('utf-8', 'replace')
    return value.item() if isinstance(value, np.generic) else value


def collect_detections(
    cfg: pp.PostprocessConfig, model: Any, variables: dict, batches: Iterable[dict]
) -> tuple[list[dict], list[dict]]:
    """Runs the model over evaluation batches → (detections, ground_truth), both in original pixels.

    Args:
      cfg: post-processing settings (`postprocess.map_postprocess_config` for mAP).
      model, variables: the Flax module and its variables ({'params', 'batch_stats'}, or folded {'params'}).
      batches: NumPy batches as `input_pipeline.Data.eval_batches` yields: 'image' (B, S, S, 3), 'boxes'
        (B, max_boxes, 4) xyxy in INPUT pixels (zero padded), 'classes' (B, max_boxes) (-1 padded), 'orig_size'
        (B, 2) (h, w), 'valid' (B,), optionally 'image_id'.

    Padding examples (valid = 0) are skipped; ground truth is mapped back with the inverse of the resize. An
    optional per-box 'difficult' (B, max_boxes) flag becomes the ground truth's 'difficult' and 'iscrowd' flags.
    """
    detections, ground_truth = [], []
    for batch in batches:
        sizes = np.asarray(batch['orig_size']).reshape(-1, 2)
        det = jax.device_get(inference.predict(model, variables, batch['image'], sizes, cfg))
        valid = np.asarray(batch['valid']) if 'valid' in batch else np.ones(len(sizes))
        ids = batch['image_id'] if 'image_id' in batch else None
        for b in range(len(sizes)):
            if valid[b] <= 0:
                continue
            h, w = (int(v) for v in sizes[b])
            image_id = _image_id(ids[b]) if ids is not None else len(ground_truth)
            keep = det.valid[b]
            detections.append({
                'image_id': image_id,
                'boxes': det.boxes[b][keep].astype(np.float64),
                'scores': det.scores[b][keep].astype(np.float64),
                'classes': det.classes[b][keep].astype(np.int64),
            })
            cls = np.asarray(batch['classes'][b]).reshape(-1)
            real = cls >= 0
            gt_boxes = unletterbox_boxes(np.asarray(batch['boxes'][b])[real], h, w, cfg.input_size, cfg.resize_mode)
            flagged = np.asarray(batch['difficult'][b]).reshape(-1)[real].astype(bool) if 'difficult' in batch else (
                np.zeros(int(real.sum()), bool))
            ground_truth.append({
                'image_id': image_id, 'boxes': _snap(gt_boxes), 'classes': cls[real].astype(np.int64),
                'height': h, 'width': w, 'difficult': flagged, 'iscrowd': flagged,
            })
    return detections, ground_truth


def _pad_rows(x: np.ndarray, n: int, value: float) -> np.ndarray:
    out = np.full((n, *x.shape[1:]), value, x.dtype)
    out[: len(x)] = x
    return out


def _stack(items: list[dict], key: str, n: int, rows: int, cols: tuple[int, ...], value: float, dtype) -> np.ndarray:
    """(n, rows, *cols) array of the items' `key` arrays, each padded with `value` to `rows` rows."""
    out = np.full((n, rows, *cols), value, dtype)
    for i, item in enumerate(items):
        out[i, : len(item[key])] = item[key]
    return out


def _unstack(every: dict) -> tuple[list[dict], list[dict]]:
    """The gathered padded arrays (each leaf (processes, ...)) → (detections, ground_truth) in process order,
    image ids '(process)/(index)'."""
    detections, ground_truth = [], []
    for p in range(len(every['count'])):
        for i in range(int(every['count'][p][0])):
            keep = every['det_classes'][p, i] >= 0
            real = every['gt_classes'][p, i] >= 0
            image_id = f'{p}/{i}'
            detections.append({'image_id': image_id, 'boxes': every['det_boxes'][p, i][keep],
                               'scores': every['det_scores'][p, i][keep], 'classes': every['det_classes'][p, i][keep]})
            h, w = (int(v) for v in every['size'][p, i])
            flags = every['gt_flags'][p, i][real].astype(bool)
            ground_truth.append({'image_id': image_id, 'boxes': every['gt_boxes'][p, i][real],
                                 'classes': every['gt_classes'][p, i][real], 'height': h, 'width': w,
                                 'difficult': flags, 'iscrowd': flags})
    return detections, ground_truth


def gather_across_processes(
    detections: list[dict], ground_truth: list[dict], max_detections: int
) -> tuple[list[dict], list[dict]]:
    """Every process's (detections, ground_truth) in process order, on every process; unchanged for one process.

    Variable-length lists travel as fixed-shape padded arrays (`multihost_utils.process_allgather`); image ids
    become (process, index) strings, unique across processes. Every process must call it (a collective).
    """
    if jax.process_count() == 1:
        return detections, ground_truth
    from jax.experimental import multihost_utils  # noqa: PLC0415

    n = np.array([len(ground_truth)])
    n_max = int(np.max(multihost_utils.process_allgather(n)))
    g_max = int(np.max(multihost_utils.process_allgather(np.array([max([len(g['classes']) for g in ground_truth],
                                                                         default=0)]))))
    k, g = max_detections, max(g_max, 1)
    flags = [{'f': box_flags(x, 'difficult', len(x['classes']))} for x in ground_truth]
    local = {
        'det_boxes': _stack(detections, 'boxes', n_max, k, (4,), 0.0, np.float64),
        'det_scores': _stack(detections, 'scores', n_max, k, (), 0.0, np.float64),
        'det_classes': _stack(detections, 'classes', n_max, k, (), -1, np.int64),
        'gt_boxes': _stack(ground_truth, 'boxes', n_max, g, (4,), 0.0, np.float64),
        'gt_classes': _stack(ground_truth, 'classes', n_max, g, (), -1, np.int64),
        'gt_flags': _stack(flags, 'f', n_max, g, (), 0, np.int64),
        'size': _pad_rows(np.array([[x['height'], x['width']] for x in ground_truth], np.int64).reshape(-1, 2),
                          n_max, 0),
        'count': n,
    }
    return _unstack(multihost_utils.process_allgather(local))  # each leaf: (processes, ...)
