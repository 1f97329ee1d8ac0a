"""`--mode=eval`: the detection-metrics evaluator on a trained checkpoint (or Darknet weights).

    python -m yolo_jax.main --config=configs/mnist.py --workdir=DIR --mode=eval

Runs `detection.DetectionMetrics` (the evaluator the training loop reports mAP with) on the config.eval.split set,
prints the per-class table and the diagnostics' summary, and writes metrics.json, detections.json and the
diagnostics (diagnostics.json, pr_curves.png, confusion_matrix.png, f1_threshold.png, ap_by_size.png,
error_types.png, and top_background.png and missed.png where the images are files).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from yolo_jax import inference
from yolo_jax.data.annotations import write_text_atomic
from yolo_jax.evaluation import diagnostics
from yolo_jax.evaluation.detection import DetectionMetrics, check_eval_config

# The config.eval fields metrics.json records under 'settings'.
SETTINGS = ('score_threshold', 'nms_iou_threshold', 'nms_method', 'soft_nms_sigma', 'max_detections',
            'map_score_threshold', 'map_max_detections', 'voc_metric', 'voc_truncate_boxes', 'tta', 'tta_sizes',
            'tta_vote_iou')


def jsonable(x: Any) -> Any:
    """NaN → None and NumPy → Python, so the file is strict JSON."""
    if isinstance(x, dict):
        return {k: jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def evaluate_checkpoint(
    config: ml_collections.ConfigDict,
    workdir: str | Path | None,
    output: str | Path | None = None,
    weights: str | Path | None = None,
) -> dict[str, Any]:
    """`--mode=eval`: the best checkpoint in workdir (or Darknet `weights`) on the config.eval.split set.

    Prints the per-class table and the diagnostics' summary and writes output/metrics.json (metrics, settings,
    source), output/detections.json (per image: image_id, boxes xyxy original pixels, scores, classes) and the
    diagnostics (`diagnostics.write_files`); output defaults to workdir/eval. With several processes each
    evaluates its shard, the results are gathered and process 0 writes the files. Returns the metrics.
    """
    from yolo_jax.train import open_data  # noqa: PLC0415  (TensorFlow: only when data is needed)

    check_eval_config(config)  # DetectionMetrics checks it too; here before any loading
    model, variables, spec = inference.load_detector(config, workdir, weights, fold=config.eval.fold_batchnorm)
    split = config.eval.split
    data = open_data(config)
    batch_size = -(-int(config.train.eval_batch_size) // jax.process_count())  # per process
    evaluator = DetectionMetrics(config, spec, model, lambda: data.eval_batches(batch_size, split))
    result = evaluator.evaluate(variables, diagnostics=True)
    metrics = result.metrics
    print(result.details)
    logging.info('Evaluation on %s (%d images): VOC mAP@0.5 %.4f, COCO mAP@[.5:.95] %.4f', split,
                 metrics['num_images'], metrics['map50'], metrics['coco_map'])
    if jax.process_index() == 0:
        record = {
            'source': str(weights) if weights else str(Path(workdir) / 'checkpoints'),
            'split': split,
            'settings': {k: config.eval[k] for k in SETTINGS},
            'class_names': list(spec.class_names),
            'metrics': metrics,
        }
        out = inference.output_dir(output, workdir, 'eval')
        write_files(out, record, {k: v for k, v in result.artifacts.items() if k != 'diagnostics'})
        written = diagnostics.write_result(out, result)
        print(f'wrote the diagnostics ({", ".join(p.name for p in written)}) into {out}')
    return metrics


def write_files(output: Path, record: dict, artifacts: dict[str, Any]) -> None:
    """output/metrics.json (`record`, indented) and output/<name>.json for each artifact, written atomically."""
    write_text_atomic(output / 'metrics.json', json.dumps(jsonable(record), indent=1) + '\n')
    for name, value in artifacts.items():
        write_text_atomic(output / f'{name}.json', json.dumps(jsonable(value)) + '\n')
    names = ' and '.join(str(output / f'{n}.json') for n in ('metrics', *artifacts))
    print(f'wrote {names}')
