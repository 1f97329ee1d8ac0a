"""`--mode=detect`: run a trained model (or Darknet weights) over image files and draw what it finds.

    python -m yolo_jax.main --config=configs/mnist.py --workdir=DIR --mode=detect --images='photos/*.jpg'

Images are decoded as training and evaluation decode them (data/decode.py) and resized exactly as the evaluation
pipeline does (the same TF letterbox /
stretch function), run through the jitted forward + post-processing in fixed-size batches (the last one padded,
so there is a single compile), drawn with visualize.draw_detections, and listed in detections.json. A file that
cannot be read as an image is skipped with a warning and listed under 'errors'; detections.json is written
atomically, also when a failure stops the run part-way ('complete': false, with the images done so far).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from PIL import Image

from yolo_jax import inference, tracking, video, visualize
from yolo_jax.data import decode, export_labels
from yolo_jax.data.annotations import write_text_atomic
from yolo_jax.errors import DataError, FlagError, summarize
from yolo_jax.image_files import IMAGE_EXTENSIONS, find_images  # noqa: F401  (re-exported as detect.*)
from yolo_jax.postprocess import postprocess_config


def load_image(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB, decoded in full by the decoder training and evaluation use (data/decode.py: the same
    pixels everywhere); raises DataError (a ValueError) naming the file when it cannot be read as an image."""
    return decode.decode_image(path)


def prepare_image(image: np.ndarray, size: int, mode: str = 'letterbox') -> np.ndarray:
    """(H, W, 3) uint8 → (S, S, 3) float32 in [0, 1] by the input pipeline's own resize (host side, TF eager)."""
    import tensorflow as tf  # noqa: PLC0415  (TF only here, outside any jit)

    from yolo_jax.data import letterbox  # noqa: PLC0415

    out, _ = letterbox.resize_image_and_boxes(tf.constant(image), tf.zeros((0, 4), tf.float32), size, mode)
    return out.numpy()


def _output_names(paths: list[Path]) -> list[str]:
    """'<stem>.png' per input, made unique when two inputs share a stem (e.g. a glob over several folders)."""
    seen: dict[str, int] = {}
    names = []
    for p in paths:
        n = seen.get(p.stem, 0)
        seen[p.stem] = n + 1
        names.append(f'{p.stem}.png' if n == 0 else f'{p.stem}_{n}.png')
    return names


def _detect_video(
    config: ml_collections.ConfigDict, workdir: str | Path | None, source: str | Path | int | list[Path],
    output: str | Path | None, weights: str | Path | None, batch_size: int | None,
    track: tracking.TrackParams | None = None,
) -> dict[str, Any]:
    """A video file, camera index or image sequence → video.detect_video (annotated video + JSON lines)."""
    if not isinstance(source, (list, tuple)):  # a bad video or camera fails now: before the model loads
        video.open_capture(source).release()
    model, variables, spec = inference.load_detector(config, workdir, weights, fold=True)
    out = inference.output_dir(output, workdir, 'detect')
    return video.detect_video(postprocess_config(config, spec), model, variables, source, out, spec.class_names,
                              batch_size or 8, track=track)


def detect_images(
    config: ml_collections.ConfigDict,
    workdir: str | Path | None,
    images: str | Path | Sequence[str | Path],
    output: str | Path | None = None,
    weights: str | Path | None = None,
    *,
    batch_size: int | None = None,
    track: tracking.TrackParams | None = None,
    save_format: str | None = None,
) -> list[dict[str, Any]]:
    """Detects objects in `images` (a file, a directory or a glob) and writes the drawn images + detections.json.

    The model and class names come from `inference.load_detector(config, workdir, weights)`; thresholds from
    config.eval.
    Output (default workdir/detect): one PNG per input with boxes, class names and scores drawn, and
    detections.json: {'images': one entry per image read, 'errors': one {'file', 'error'} per input skipped
    because it could not be read as an image, 'complete': false if a failure stopped the run part-way}, where
    an image entry is {'file', 'output', 'height', 'width', 'boxes' [[x1, y1, x2, y2] in original pixels],
    'scores', 'classes', 'class_names'}, best score first. The file is replaced atomically, so it is never
    half-written.

    With `track` (yolo_jax/tracking.py) the images are frames of one sequence, in name order: they go through
    video.detect_video (an annotated video, JSON lines with track ids, tracks.txt) as a video would.

    With `save_format` (one of export_labels.FORMATS; still images only: FlagError with a video or `track`), the
    detections are also written as a labelled set that labelling tools open, in OUTPUT/<save_format>
    (data/export_labels.py), which must not exist yet (OutputExistsError, before the model runs).

    Returns the image entries. Raises DataError (listing them) when no input could be read.
    """
    is_video = isinstance(images, (str, Path, int)) and video.is_video(images)  # a video file or camera index
    if save_format and (is_video or track is not None):
        raise FlagError(f'--save_format={save_format} writes label files for still images, not for a video, '
                        'camera or --track')
    if save_format:  # before the model runs: never replace a set that may hold corrections
        export_labels.check_free(inference.output_dir(output, workdir, 'detect'), save_format)
    if is_video:
        return [_detect_video(config, workdir, images, output, weights, batch_size, track)]
    paths = find_images(images)
    if track is not None:  # an image sequence
        return [_detect_video(config, workdir, paths, output, weights, batch_size, track)]
    model, variables, spec = inference.load_detector(config, workdir, weights, fold=config.eval.fold_batchnorm)
    names = spec.class_names
    cfg = postprocess_config(config, spec)
    output = inference.output_dir(output, workdir, 'detect')
    batch_size = int(batch_size or config.train.eval_batch_size)
    size = cfg.input_size
    out_names = _output_names(paths)

    results: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    complete = False
    try:
        for start in range(0, len(paths), batch_size):
            chunk, originals = [], []  # the readable images of this batch, with their index in `paths`
            inputs = np.zeros((batch_size, size, size, 3), np.float32)  # padding rows: blank images, ignored
            sizes = np.full((batch_size, 2), size, np.int32)
            for k in range(start, min(start + batch_size, len(paths))):
                try:
                    im = load_image(paths[k])
                except DataError as e:
                    logging.warning('skipped: %s', e)
                    skipped.append({'file': str(paths[k]), 'error': str(e)})
                    continue
                inputs[len(chunk)] = prepare_image(im, size, cfg.resize_mode)
                sizes[len(chunk)] = im.shape[:2]
                chunk.append(k)
                originals.append(im)
            if not chunk:
                continue
            det = jax.device_get(inference.predict(model, variables, inputs, sizes, cfg))
            for i, (k, im) in enumerate(zip(chunk, originals, strict=True)):
                keep = det.valid[i]
                boxes, scores, classes = det.boxes[i][keep], det.scores[i][keep], det.classes[i][keep]
                out_path = output / out_names[k]
                drawn = visualize.draw_detections(im, boxes, classes, scores, names)
                Image.fromarray(drawn).save(out_path)
                results.append(
                    {
                        'file': str(paths[k]),
                        'output': str(out_path),
                        'height': int(im.shape[0]),
                        'width': int(im.shape[1]),
                        'boxes': boxes.astype(float).tolist(),
                        'scores': scores.astype(float).tolist(),
                        'classes': classes.astype(int).tolist(),
                        'class_names': [names[c] for c in classes],
                    }
                )
                logging.info('%s: %d detections → %s', paths[k], len(scores), out_path)
        complete = True
    finally:  # also when a failure stops the run: keep what is done, marked incomplete
        record = {'images': results, 'errors': skipped, 'complete': complete}
        write_text_atomic(output / 'detections.json', json.dumps(record, indent=1) + '\n')
    if save_format and results:
        labelled = export_labels.write_label_set(save_format, results, names, output)
        print(f'labels ({save_format}) of {len(results)} image(s) → {labelled}')
    if not results:
        raise DataError(summarize([f"{e['error']}" for e in skipped], f'none of the {len(paths)} input(s) could be '
                                  f'read as an image (listed in {output / "detections.json"}):', limit=5))
    unread = f', {len(skipped)} unreadable input(s) skipped (listed in detections.json)' if skipped else ''
    print(f'{len(results)} image(s), {sum(len(r["scores"]) for r in results)} detection(s) → {output}{unread}')
    return results
