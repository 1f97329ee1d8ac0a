"""The detection-metrics evaluator: VOC mAP@0.5 and COCO mAP@[.5:.95] of a model's detections on the eval split.

Settings (config.eval, all checked when the evaluator is built): detections for mAP are post-processed with
`map_score_threshold` (0.005) and at most `map_max_detections` (100) per image after NMS (`nms_method`,
`nms_iou_threshold`, `soft_nms_sigma`), as the VOC/COCO protocols are run, not with the drawing threshold
`score_threshold` / `max_detections`, which only the TensorBoard grid of detections uses (and `score_threshold`
the diagnostics' confusion matrix, on the mAP detections); `voc_metric`
('all_point' | '11_point') and `voc_truncate_boxes` choose the VOC protocol (metrics.voc_map).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import jax
import ml_collections
import numpy as np

from yolo_jax import inference, visualize
from yolo_jax import postprocess as pp
from yolo_jax.data.letterbox import letterbox_boxes
from yolo_jax.errors import ConfigError
from yolo_jax.evaluation import diagnostics as diagnostics_lib
from yolo_jax.evaluation.evaluator import Result
from yolo_jax.evaluation.metrics import compute_metrics, format_table
from yolo_jax.evaluation.runner import collect_detections, gather_across_processes
from yolo_jax.spec import DetectionSpec

VOC_METRICS = ('all_point', '11_point')
# The metrics logged as scalars (TensorBoard val/<name>, metrics.jsonl 'map' records).
SCALARS = ('map50', 'coco_map', 'coco_map50', 'coco_map75', 'num_images', 'num_detections', 'num_gt')


def check_eval_config(config: ml_collections.ConfigDict) -> None:
    """ConfigError naming the first config.eval field that post-processing or the mAP protocol cannot use (the
    test-time sizes against config.model's input size and strides)."""
    e = config.eval
    if str(e.nms_method).replace('-', '_') not in pp.NMS_METHODS:
        raise ConfigError(f'config.eval.nms_method: unknown method {e.nms_method!r}; expected one of {pp.NMS_METHODS}')
    if str(e.voc_metric) not in VOC_METRICS:
        raise ConfigError(f'config.eval.voc_metric: unknown metric {e.voc_metric!r}; expected one of {VOC_METRICS}')
    for name in ('max_detections', 'map_max_detections'):
        if int(e[name]) < 1:
            raise ConfigError(f'config.eval.{name} must be >= 1, got {e[name]}')
    for name in ('score_threshold', 'map_score_threshold', 'nms_iou_threshold'):
        if not 0.0 <= float(e[name]) <= 1.0:  # also NaN
            raise ConfigError(f'config.eval.{name}={e[name]} must be in [0, 1]')
    if not float(e.soft_nms_sigma) > 0.0:
        raise ConfigError(f'config.eval.soft_nms_sigma={e.soft_nms_sigma} must be > 0')
    pp.tta_names(e.tta)
    pp.tta_sizes(e.tta_sizes, int(config.model.input_size), max(config.model.strides))
    pp.tta_vote_iou(e.tta_vote_iou)


def voc_options(eval_config: ml_collections.ConfigDict) -> dict[str, bool]:
    """metrics.voc_map keyword arguments from config.eval: voc_metric ('all_point' | '11_point') and
    voc_truncate_boxes."""
    metric = str(eval_config.voc_metric)
    if metric not in VOC_METRICS:
        raise ConfigError(f'config.eval.voc_metric: unknown metric {metric!r}; expected one of {VOC_METRICS}')
    return {'use_07_metric': metric == '11_point', 'truncate_detections': bool(eval_config.voc_truncate_boxes)}


class DetectionMetrics:
    """VOC and COCO mAP over the whole eval split (every process's shard, gathered), and optionally a grid of the
    first eval images with their detections.

    config: the run's config (config.eval as the module docstring says, config.data.resize); checked here.
    spec: the run's DetectionSpec (geometry, class names).
    model: the Flax module the variables belong to (the training model, or the BatchNorm-folded one).
    batches: () -> this process's eval batches (`input_pipeline.Data.eval_batches`), called once per run.
    draw_images: how many images the TensorBoard grid shows (0: no grid, no extra forward pass).
    """

    kind = 'map'

    def __init__(self, config: ml_collections.ConfigDict, spec: DetectionSpec, model: Any,
                 batches: Callable[[], Iterable[dict]], *, draw_images: int = 0):
        check_eval_config(config)
        self.spec, self.model, self.batches, self.draw_images = spec, model, batches, draw_images
        self.map_cfg = pp.map_postprocess_config(config, spec)
        self.draw_cfg = pp.postprocess_config(config, spec)  # the drawing threshold
        self.voc_options = voc_options(config.eval)
        self.score_threshold = float(config.eval.score_threshold)  # the diagnostics' confusion matrix

    def run(self, state: Any, diagnostics: bool = False) -> Result:
        """The metrics of a TrainState's {'params', 'batch_stats'} (and the diagnostics: see `evaluate`)."""
        return self.evaluate(jax.device_get(state.variables), diagnostics=diagnostics)

    def evaluate(self, variables: dict, diagnostics: bool = False) -> Result:
        """The metrics of `variables` (of `model`). Result: scalars SCALARS, metrics `compute_metrics`'s dict,
        details the per-class table, artifacts {'detections': per image, boxes xyxy in original pixels}.
        diagnostics: also `diagnostics_lib.add_to` (PR curves, confusion matrix at config.eval.score_threshold,
        F1 against the threshold, AP by size): their summary, scalars, images and artifact 'diagnostics'."""
        detections, ground_truth = collect_detections(self.map_cfg, self.model, variables, self.batches())
        detections, ground_truth = gather_across_processes(detections, ground_truth, self.map_cfg.max_detections)
        metrics = compute_metrics(detections, ground_truth, self.spec.num_classes, **self.voc_options)
        scalars = {k: float(metrics[k]) for k in SCALARS if k in metrics}
        summary = (f"mAP@0.5 (VOC): {scalars['map50']:.4f}, "
                   f"mAP@[.5:.95] (COCO): {scalars.get('coco_map', math.nan):.4f}")
        result = Result(self.kind, scalars, summary, details=format_table(metrics, self.spec.class_names),
                        metrics=metrics, images=self._draw(variables) if self.draw_images else {},
                        artifacts={'detections': detections})
        if not diagnostics:
            return result
        return diagnostics_lib.add_to(result, detections, ground_truth, self.spec.class_names,
                                      score_threshold=self.score_threshold, **self.voc_options)

    def _draw(self, variables: dict) -> dict[str, np.ndarray]:
        """{'detections': (1, H, W, 3)} a grid of the first eval batch's images (network inputs) with the boxes
        kept at the drawing threshold; {} when that batch holds no real image."""
        batch = next(iter(self.batches()))
        det = jax.device_get(inference.predict(self.model, variables, batch['image'], batch['orig_size'],
                                               self.draw_cfg))
        tiles = []
        for i in range(min(self.draw_images, int(np.sum(batch['valid'] > 0)))):
            keep, (h, w) = det.valid[i], batch['orig_size'][i]
            boxes = letterbox_boxes(det.boxes[i][keep], int(h), int(w), self.spec.input_size,
                                    self.draw_cfg.resize_mode)
            tiles.append(visualize.draw_detections(batch['image'][i], boxes, det.classes[i][keep],
                                                   det.scores[i][keep], self.spec.class_names))
        return {'detections': visualize.grid(tiles, ncols=4)[None]} if tiles else {}
