"""Video detection (yolo_jax.video): generated clips in, annotated video + per-frame JSON lines out.

Mechanics on a random checkpoint through `detect.detect_images` (a video path dispatches to video.py); tracking
with the official YOLOv3-tiny weights (../shared/data) on a clip in which a photo moves by a known offset per
frame: the boxes found in frame 0 reappear in every frame shifted by exactly that offset.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from helpers import spec_of

from configs.coco import get_config as coco_config
from yolo_jax import detect, export, inference, video
from yolo_jax import postprocess as pp

cv2 = pytest.importorskip('cv2', reason='video needs OpenCV (the video extra)')


def write_video(path: Path, frames: list[np.ndarray], fps: float = 10.0) -> Path:
    """RGB uint8 frames → an MJPG .avi (near-lossless at quality 100; mp4v would blur small shapes)."""
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'MJPG'), fps, (w, h))
    writer.set(cv2.VIDEOWRITER_PROP_QUALITY, 100)
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def read_video(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    cap.release()
    return frames


def moving_squares(n: int, h: int = 72, w: int = 96) -> list[np.ndarray]:
    """Grey frames with a white and a black square moving right and down by 3 px per frame."""
    frames = []
    for t in range(n):
        f = np.full((h, w, 3), 100, np.uint8)
        f[10 + t : 30 + t, 5 + 3 * t : 25 + 3 * t] = 255
        f[40:60, 60 - 3 * t : 80 - 3 * t] = 0
        frames.append(f)
    return frames


def test_video_mechanics(tmp_path):
    """Every frame is detected once and in order, the output video has the input's frames and size, and each
    frame's detections are those of the same model on that decoded frame alone (batching and padding do not
    matter)."""
    from test_detect import make_workdir, small_config

    config = small_config(score_threshold=0.05)
    workdir = make_workdir(tmp_path / 'workdir', config)
    # The checkpoint's spec is the geometry: anchors in the config used now must play no part.
    config.model.anchors = tuple(tuple((2 * w, 3 * h) for w, h in scale) for scale in config.model.anchors)
    clip = write_video(tmp_path / 'clip.avi', moving_squares(7))
    out = tmp_path / 'out'
    summary = detect.detect_images(config, workdir, str(clip), output=out, batch_size=3)[0]
    assert summary['frames'] == 7 and summary['frames_per_s'] > 0
    records = [json.loads(line) for line in (out / 'detections.jsonl').read_text().splitlines()]
    assert [r['frame'] for r in records] == list(range(7))
    assert sum(len(r['scores']) for r in records) > 0  # the low threshold lets a random model find boxes
    written = read_video(out / 'detections.mp4')
    assert len(written) == 7 and written[0].shape == (72, 96, 3)

    model, variables, spec = inference.load_detector(config, workdir, fold=True)
    assert spec.anchors != config.model.anchors
    fn = jax.jit(export.serving_fn(model, pp.PostprocessConfig.from_spec(spec, config.eval, config.data.resize)))
    for frame, rec in zip(read_video(clip), records, strict=True):
        det = jax.device_get(fn(variables, frame[None]))
        k = int(det['count'][0])
        assert rec['classes'] == det['classes'][0, :k].tolist()
        assert rec['class_names'] == [str(c) for c in rec['classes']]
        np.testing.assert_allclose(np.reshape(rec['boxes'], (-1, 4)), det['boxes'][0, :k], atol=1e-3)
        np.testing.assert_allclose(rec['scores'], det['scores'][0, :k], atol=1e-4)


def test_video_errors(tmp_path):
    assert video.is_video('clip.MP4') and video.is_video('0') and video.is_video(1)
    assert not video.is_video('photo.jpg')
    with pytest.raises(FileNotFoundError, match='no such file'):
        video.open_capture(tmp_path / 'missing.mp4')


@pytest.mark.shared_data
def test_boxes_track_a_moving_photo(shared_data, tmp_path):
    """street.jpg (half size) slides over a grey canvas by (12, 6) px per frame: each confident box of frame 0
    (score > 0.8: a car and buses), shifted by the known offset, is found again in every frame (same class,
    IoU > 0.5: YOLOv3-tiny's boxes jitter by a few pixels as objects cross its 16/32 px grid); by the last frame
    the boxes have left their first position and moved, on average, by the offset."""
    photo = detect.load_image(shared_data / 'images' / 'street.jpg')[::2, ::2]
    ph, pw = photo.shape[:2]
    n, step = 6, np.array([12, 6])
    frames = []
    for t in range(n):
        f = np.full((ph + step[1] * (n - 1), pw + step[0] * (n - 1), 3), 128, np.uint8)
        x, y = step * t
        f[y : y + ph, x : x + pw] = photo
        frames.append(f)
    clip = write_video(tmp_path / 'street.avi', frames)

    config = coco_config('tiny')  # YOLOv3-tiny, 80 classes, Darknet's BatchNorm epsilon
    model, variables = inference.load_variables(config, None, shared_data / 'darknet' / 'yolov3-tiny.weights',
                                                fold=True)
    names = (shared_data / 'darknet' / 'coco.names').read_text().split('\n')[:80]
    cfg = pp.PostprocessConfig.from_spec(spec_of(config), config.eval, config.data.resize)
    summary = video.detect_video(cfg, model, variables, clip, tmp_path / 'out', names, batch_size=4)
    assert summary['frames'] == n
    records = [json.loads(line) for line in (tmp_path / 'out' / 'detections.jsonl').read_text().splitlines()]
    first = [(c, np.asarray(b)) for c, b, s in zip(records[0]['classes'], records[0]['boxes'], records[0]['scores'],
                                                     strict=True) if s > 0.8]
    assert len(first) >= 2 and {'bus', 'car'} & {names[c] for c, _ in first}
    centre = lambda b: (b[..., :2] + b[..., 2:]) / 2
    for t, rec in enumerate(records[1:], start=1):
        boxes, classes = np.reshape(rec['boxes'], (-1, 4)), np.asarray(rec['classes'])
        moves = []
        for c, box in first:
            same = boxes[classes == c]
            assert len(same), f'frame {t}: lost {names[c]}'
            iou = _iou(box + np.tile(step * t, 2), same)
            assert iou.max() > 0.5, f'frame {t}: {names[c]} did not move with the photo (IoU {iou.max():.2f})'
            if t == n - 1:
                assert iou.max() > _iou(box, same).max() + 0.3, f'{names[c]} stayed where it was'
            moves.append(centre(same[iou.argmax()]) - centre(box))
        if t == n - 1:
            np.testing.assert_allclose(np.mean(moves, axis=0), step * t, rtol=0.25)


def _iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    lo, hi = np.maximum(box[:2], others[:, :2]), np.minimum(box[2:], others[:, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
    area = lambda b: np.prod(b[..., 2:] - b[..., :2], axis=-1)
    return inter / (area(box) + area(others) - inter)
