"""MOT metrics of a tracker's output against ground truth, through the `motmetrics` package.

    python -m yolo_jax.track_eval --gt=gt.txt --pred=tracks.txt [--iou=0.5] [--output=metrics.json]

Both files in MOTChallenge's text format (yolo_jax.tracking.read_mot: `frame,id,x,y,w,h,score,...`, frames
1-based). Per frame, ground-truth and predicted boxes are matched by motmetrics (`MOTAccumulator`, distance
1 - IoU, pairs with IoU < `iou` never match; the Hungarian matching keeps last frame's pairs when they still
match, CLEAR-MOT's rule). Printed and (with --output) written as JSON: MOTA, MOTP (mean 1 - IoU of the matches,
motmetrics' convention), IDF1, ID switches, fragmentations, mostly tracked / partially tracked / mostly lost
ground-truth tracks, precision, recall, false positives, misses. Needs `pip install 'yolo_jax[track]'`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from absl import flags

from yolo_jax import errors, tracking

METRICS = ('mota', 'motp', 'idf1', 'idp', 'idr', 'num_switches', 'num_fragmentations', 'mostly_tracked',
           'partially_tracked', 'mostly_lost', 'num_unique_objects', 'precision', 'recall', 'num_false_positives',
           'num_misses', 'num_detections', 'num_frames')


def motmetrics_module() -> Any:
    """motmetrics, or an ImportError naming the extra that provides it."""
    try:
        import motmetrics  # noqa: PLC0415
    except ImportError as e:
        raise ImportError("track_eval needs motmetrics: pip install 'yolo_jax[track]' (motmetrics)") from e
    return motmetrics


def accumulate(gt: tracking.MotRows, pred: tracking.MotRows, iou: float = 0.5) -> Any:
    """A motmetrics MOTAccumulator over every frame in either file (frames absent from both are skipped)."""
    mm = motmetrics_module()
    acc = mm.MOTAccumulator(auto_id=False)
    for f in sorted(set(gt.frames.tolist()) | set(pred.frames.tolist())):
        gid, gbox = gt.frame(f)
        pid, pbox = pred.frame(f)
        dist = 1.0 - tracking.iou_matrix(gbox, pbox)
        dist[dist > 1.0 - iou] = np.nan  # motmetrics: NaN = may not match
        acc.update(gid.tolist(), pid.tolist(), dist, frameid=int(f))
    return acc


def mot_metrics(gt: tracking.MotRows, pred: tracking.MotRows, iou: float = 0.5) -> dict[str, float]:
    """{metric: value} for METRICS (counts as ints, rates as floats)."""
    mm = motmetrics_module()
    summary = mm.metrics.create().compute(accumulate(gt, pred, iou), metrics=list(METRICS), name='seq')
    rates = ('mota', 'motp', 'idf1', 'idp', 'idr', 'precision', 'recall')
    return {k: float(summary[k].iloc[0]) if k in rates else int(summary[k].iloc[0]) for k in METRICS}


def evaluate_files(gt_path: str | Path, pred_path: str | Path, iou: float = 0.5) -> dict[str, float]:
    """mot_metrics of two MOT files (MissingFileError / DataError for a missing or malformed one)."""
    return mot_metrics(tracking.read_mot(gt_path), tracking.read_mot(pred_path), iou)


def format_metrics(m: dict[str, float]) -> str:
    """A short table of the headline numbers."""
    return '\n'.join([
        f"MOTA {m['mota']:.4f}  IDF1 {m['idf1']:.4f}  MOTP(1-IoU) {m['motp']:.4f}  precision {m['precision']:.4f}  "
        f"recall {m['recall']:.4f}",
        f"ID switches {m['num_switches']}  fragmentations {m['num_fragmentations']}  "
        f"MT {m['mostly_tracked']} / PT {m['partially_tracked']} / ML {m['mostly_lost']} of "
        f"{m['num_unique_objects']} objects  FP {m['num_false_positives']}  misses {m['num_misses']}",
    ])


def main() -> None:
    """`python -m yolo_jax.track_eval --gt=gt.txt --pred=tracks.txt [--iou=0.5] [--output=FILE]` (cli.run)."""
    f = flags.FLAGS
    if not 0 < f.iou <= 1:
        raise errors.FlagError(f'--iou must be in (0, 1], got {f.iou}')
    m = evaluate_files(f.gt, f.pred, f.iou)
    print(format_metrics(m))
    if f.output:
        Path(f.output).write_text(json.dumps({'gt': f.gt, 'pred': f.pred, 'iou': f.iou, **m}, indent=1) + '\n')
        print(f'wrote {f.output}')


def _define_flags() -> None:
    """track_eval's own flags (cli.run adds --verbose; there is no config)."""
    flags.DEFINE_string('gt', None, 'Ground truth, MOTChallenge text (frame,id,x,y,w,h,...).', required=True)
    flags.DEFINE_string('pred', None, 'Tracker output, MOTChallenge text (e.g. detect --track\'s tracks.txt).',
                        required=True)
    flags.DEFINE_float('iou', 0.5, 'Least IoU of a match.')
    flags.DEFINE_string('output', '', 'Also write the metrics as JSON here.')


if __name__ == '__main__':
    from yolo_jax import cli  # noqa: PLC0415

    cli.run(main, _define_flags, config=False)
