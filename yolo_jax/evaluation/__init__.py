"""Evaluation, in layers (import the module you need; this package imports nothing itself):

  metrics.py     pure metric functions of host data: voc_ap, voc_iou, voc_map, coco_map, compute_metrics,
                 format_table (no config, no model, no JAX).
  runner.py      running a model over batches: the validation loss sums of the compiled eval step, the detections
                 and ground truth in original pixels, and their gathering across processes.
  evaluator.py   `Result` and the `Evaluator` protocol: built once from the config (every field checked), run on
                 the weights by the training loop's periodic actions and by --mode=eval alike.
  validation.py  `ValidationLoss`: giou / conf / prob / total loss on the eval split.
  detection.py   `DetectionMetrics`: VOC mAP@0.5 and COCO mAP@[.5:.95] with config.eval's protocol settings.
  diagnostics.py pure functions of the same host data: per-class PR curves, a confusion matrix with background,
                 F1 against the score threshold, AP by object size; `DetectionMetrics` adds them on request (the
                 last training evaluation, --mode=eval). plots.py draws them (PIL).
  command.py     --mode=eval: DetectionMetrics on a checkpoint, the per-class table, metrics.json, detections.json,
                 the diagnostics' JSON and PNGs.

A further evaluator is one more module beside validation.py and detection.py returning a `Result`.
"""
