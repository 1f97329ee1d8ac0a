"""Detection on video files and cameras: frames decoded with OpenCV, detected in batches, written back annotated.

    python -m yolo_jax.main --config=... --workdir=DIR --mode=detect --images=clip.mp4   # or --video=clip.mp4
    python -m yolo_jax.main --config=... --workdir=DIR --mode=detect --video=0           # camera 0

Frames are letterboxed on the device by the same traced function as the exported models (export.serving_fn:
TF's bilinear resize, grey bands, BatchNorm-folded network, postprocess.postprocess), in fixed-size batches (the
last one padded, so there is one compile). Output in OUTPUT_DIR: `detections.mp4` (annotated, the source's frame
rate and size) and `detections.jsonl`, one JSON object per frame:
  {'frame', 'time_s', 'boxes' [[x1, y1, x2, y2] in frame pixels], 'scores', 'classes', 'class_names'}.
With tracking (`track=`, yolo_jax/tracking.py) the detector keeps boxes down to track.low_score, each record gains
'track_id' (per box: its track's id, -1 for none), the video shows the tracked boxes with one colour and id per
track and a trail, and the folder gains `tracks.txt` (MOTChallenge: frame,id,x,y,w,h,score,-1,-1,-1, frames
1-based) and `track_counts.json` (distinct tracks per class). `source` may also be a list of image files (a
sequence, in that order, at IMAGE_SEQUENCE_FPS).
OpenCV is the optional `video` extra (opencv-python-headless), imported only here.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from absl import logging

from yolo_jax import export, tracking, visualize
from yolo_jax import postprocess as pp
from yolo_jax.data import decode
from yolo_jax.errors import DataError, MissingFileError
from yolo_jax.progress import Progress

IMAGE_SEQUENCE_FPS = 25.0  # frame rate written for an image-sequence source (images carry none)
VIDEO_EXTENSIONS = ('.mp4', '.avi', '.mov', '.mkv', '.webm', '.m4v', '.mpg', '.mpeg', '.wmv', '.mjpeg')


def cv2_module() -> Any:
    """OpenCV, or an ImportError naming the extra that provides it."""
    try:
        import cv2  # noqa: PLC0415
    except ImportError as e:
        raise ImportError("video detection needs OpenCV: pip install 'yolo_jax[video]' "
                          '(opencv-python-headless)') from e
    return cv2


def is_video(source: str | Path | int) -> bool:
    """True for a camera index (int or digit string) or a path with a video extension."""
    if is_camera(source):
        return True
    return Path(str(source)).suffix.lower() in VIDEO_EXTENSIONS


def open_capture(source: str | Path | int) -> Any:
    """cv2.VideoCapture of a file or a camera index; raises MissingFileError (a FileNotFoundError) for a missing
    file and DataError (a ValueError) for a file or camera OpenCV cannot open, each naming the source."""
    cv2 = cv2_module()
    if is_camera(source):
        cap = cv2.VideoCapture(int(source))
        what = f'camera {int(source)} (no such camera, or it is busy)'
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise MissingFileError(f'--video: no such file {path}')
        cap = cv2.VideoCapture(str(path))
        what = f'{path} (not a video, or a format this OpenCV build cannot decode)'
    if not cap.isOpened():
        cap.release()
        raise DataError(f'--video: OpenCV cannot open {what}')
    return cap


def read_batches(cap: Any, batch_size: int, max_frames: int | None = None) -> Iterator[list[np.ndarray]]:
    """Lists of up to `batch_size` (H, W, 3) uint8 RGB frames until the source ends (or max_frames)."""
    cv2 = cv2_module()
    batch: list[np.ndarray] = []
    n = 0
    while max_frames is None or n < max_frames:
        ok, bgr = cap.read()
        if not ok:
            break
        batch.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        n += 1
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def read_image_batches(paths: Sequence[str | Path], batch_size: int,
                       max_frames: int | None = None) -> Iterator[list[np.ndarray]]:
    """As read_batches, from image files in the given order (data/decode.py: RGB, DataError if unreadable)."""
    paths = list(paths)[:max_frames]
    for start in range(0, len(paths), batch_size):
        yield [decode.decode_image(p) for p in paths[start : start + batch_size]]


def detect_video(
    cfg: pp.PostprocessConfig,
    model: Any,
    variables: dict,
    source: str | Path | int | Sequence[str | Path],
    output_dir: str | Path,
    class_names: Sequence[str],
    batch_size: int = 8,
    *,
    max_frames: int | None = None,
    track: tracking.TrackParams | None = None,
) -> dict[str, Any]:
    """Detects objects in every frame of `source` (a video file or a camera index).

    Args:
      cfg: post-processing settings: the detector's spec (its geometry; a checkpoint's own) and config.eval.
      model, variables: from inference.load_variables (BatchNorm folded or not).
      source: video path, camera index (int or digit string), or a list of image files (a sequence).
      output_dir: receives detections.mp4 and detections.jsonl (created if missing).
      class_names: names indexed by class id (drawn and written).
      batch_size: frames per network call.
      max_frames: stop after this many frames (cameras never end).
      track: track objects across frames with these settings (None: detection only).

    Returns:
      {'frames', 'fps' (source frame rate), 'frames_per_s' (processing rate), 'video', 'jsonl'}; with `track`
      also 'track_s' (seconds spent in the tracker), 'tracks' (tracks.txt) and 'track_counts' ({class: tracks}).
    """
    cv2 = cv2_module()
    if track is not None:  # ByteTrack's second stage needs the low-score boxes too
        cfg = dataclasses.replace(cfg, score_threshold=min(cfg.score_threshold, track.low_score))
    predict = jax.jit(export.serving_fn(model, cfg))
    if isinstance(source, (list, tuple)):  # an image sequence
        cap, fps, total = None, IMAGE_SEQUENCE_FPS, len(source)
        batches = read_image_batches(source, batch_size, max_frames)
    else:
        cap = open_capture(source)  # first: a bad source leaves no output folder behind
        fps = float(cap.get(cv2.CAP_PROP_FPS)) or 25.0
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if not is_camera(source) else 0
        batches = read_batches(cap, batch_size, max_frames)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if max_frames is not None:
        total = min(total, max_frames) if total > 0 else max_frames
    video_path, jsonl_path = output_dir / 'detections.mp4', output_dir / 'detections.jsonl'
    writer = None
    progress = Progress(max(total, 1))
    frames = 0
    tracker = tracking.TrackRecorder(track) if track is not None else None
    t0 = time.monotonic()
    try:
        with jsonl_path.open('w') as jsonl:
            for batch in batches:
                n = len(batch)
                x = np.stack(batch + [np.zeros_like(batch[0])] * (batch_size - n))  # pad: one compile
                det = jax.device_get(predict(variables, x))
                if writer is None:
                    h, w = batch[0].shape[:2]
                    writer = cv2.VideoWriter(str(video_path), cv2.VideoWriter_fourcc(*'mp4v'), fps, (w, h))
                for i, frame in enumerate(batch):
                    k = int(det['count'][i])
                    boxes, scores, classes = det['boxes'][i, :k], det['scores'][i, :k], det['classes'][i, :k]
                    record = {
                        'frame': frames + i, 'time_s': (frames + i) / fps,
                        'boxes': boxes.astype(float).tolist(), 'scores': scores.astype(float).tolist(),
                        'classes': classes.astype(int).tolist(), 'class_names': [class_names[c] for c in classes],
                    }
                    if tracker is None:
                        drawn = visualize.draw_detections(frame, boxes, classes, scores, class_names)
                    else:
                        ids = tracker.step(frames + i, boxes, scores, classes)
                        record['track_id'] = ids.tolist()
                        drawn = tracker.draw(frame, boxes, ids, class_names)
                    writer.write(cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
                    jsonl.write(json.dumps(record) + '\n')
                frames += n
                rate = frames / max(time.monotonic() - t0, 1e-9)
                progress.update(frames, f'{rate:.1f} frames/s')
    finally:
        if cap is not None:
            cap.release()
        if writer is not None:
            writer.release()
    rate = frames / max(time.monotonic() - t0, 1e-9)
    if progress.interactive:
        progress.stream.write('\n')
    logging.info('%s: %d frames at %.1f frames/s → %s', source, frames, rate, output_dir)
    print(f'{frames} frame(s) at {rate:.1f} frames/s → {video_path}, {jsonl_path}')
    summary = {'frames': frames, 'fps': fps, 'frames_per_s': rate, 'video': str(video_path), 'jsonl': str(jsonl_path)}
    if tracker is not None:
        summary.update(tracker.finish(output_dir, class_names))
    return summary


def is_camera(source: str | Path | int) -> bool:
    """A camera index: an int or a string of digits."""
    return isinstance(source, int) or (isinstance(source, str) and source.isdigit())
