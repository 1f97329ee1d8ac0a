"""The real YOLOv3-tiny COCO weights (../shared/data): byte-exact round trip, detections on real photos, and
parity of the raw output maps with an independent Darknet implementation (OpenCV's DNN module).

Skipped with a reason when ../shared/data is absent (or, for the parity test, when OpenCV is not installed).
Post-processing here is a minimal NumPy decode + score + greedy per-class NMS (the reference's semantics), so
these tests do not depend on yolo_jax.postprocess.
"""

import functools
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from configs.mnist import get_config
from yolo_jax import darknet, transfer
from yolo_jax.data.letterbox import letterbox, unletterbox_boxes
from yolo_jax.decode import decode, decode_all
from yolo_jax.models import create_model

pytestmark = pytest.mark.shared_data

WEIGHTS = 'darknet/yolov3-tiny.weights'
SCORE_THRESHOLD, NMS_IOU = 0.3, 0.45
# OpenCV's Darknet importer builds BatchNorm with eps 1e-6, sqrt(var + 1e-6) (measured: 1e-6 agrees ~10x
# better than 1e-5); Darknet's CUDA path, which trained the weights, uses 1e-5 (darknet.DARKNET_BN_EPSILON).
OPENCV_BN_EPSILON = 1e-6


@functools.cache
def _network(weights: Path, bn_epsilon: float = darknet.DARKNET_BN_EPSILON):
    """(model config, jitted apply of images (B, 416, 416, 3) RGB in [0, 1] → raw maps, variables)."""
    mc = darknet.darknet_model_config('yolov3_tiny')
    mc.bn_epsilon = bn_epsilon
    variables = darknet.load_weights(weights, mc, epsilon_check='ignore')
    model = create_model(mc)
    return mc, jax.jit(lambda x: model.apply(variables, x)), variables


def _class_names(shared: Path) -> list[str]:
    return (shared / 'darknet' / 'coco.names').read_text().split('\n')[:80]


def _iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    lo, hi = np.maximum(box[:2], others[:, :2]), np.minimum(box[2:], others[:, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
    area = lambda b: np.prod(b[..., 2:] - b[..., :2], axis=-1)
    return inter / (area(box) + area(others) - inter)


def _detect(shared: Path, image_name: str) -> list[tuple[str, float, np.ndarray]]:
    """(class name, score, x1y1x2y2 in image pixels) after letterbox → network → decode → NMS."""
    mc, apply, _ = _network(shared / WEIGHTS)
    rgb = np.asarray(Image.open(shared / 'images' / image_name).convert('RGB'))
    h, w = rgb.shape[:2]
    x, _ = letterbox(rgb, np.zeros((0, 4), np.float32), mc.input_size)
    decoded = decode_all(apply(np.asarray(x)[None]), mc.anchors, mc.strides)
    pred = np.concatenate([np.asarray(d).reshape(-1, d.shape[-1]) for d in decoded])
    xyxy = np.concatenate([pred[:, :2] - pred[:, 2:4] / 2, pred[:, :2] + pred[:, 2:4] / 2], axis=1)
    xyxy = unletterbox_boxes(xyxy, h, w, mc.input_size)
    xyxy = np.clip(xyxy, 0, [w - 1, h - 1, w - 1, h - 1])
    cls = np.argmax(pred[:, 5:], axis=1)
    score = pred[:, 4] * pred[np.arange(len(pred)), 5 + cls]
    keep = (score > SCORE_THRESHOLD) & np.all(xyxy[:, 2:] > xyxy[:, :2], axis=1)
    xyxy, cls, score = xyxy[keep], cls[keep], score[keep]
    names, out = _class_names(shared), []
    for c in np.unique(cls):
        idx = np.flatnonzero(cls == c)
        idx = idx[np.argsort(-score[idx])]
        while idx.size:
            best, idx = idx[0], idx[1:]
            out.append((names[c], float(score[best]), xyxy[best]))
            idx = idx[_iou(xyxy[best], xyxy[idx]) <= NMS_IOU]
    return out


def test_read_save_is_byte_identical(shared_data, tmp_path):
    path = shared_data / WEIGHTS
    header = darknet.read_header(path)
    assert header == (0, 2, 0, header.seen) and header.nbytes == 20  # int64 `seen` from version 0.2
    mc = darknet.darknet_model_config('yolov3_tiny')
    variables = darknet.load_weights(path, mc)
    out = tmp_path / 'copy.weights'
    darknet.save_weights(out, variables, mc, header)
    assert out.read_bytes() == path.read_bytes()


def test_wrong_architecture_is_a_clear_error(shared_data):
    with pytest.raises(ValueError, match=r'expected 62,001,757 .* found 8,858,734 .* fits yolov3_tiny with 80'):
        darknet.load_weights(shared_data / WEIGHTS, darknet.darknet_model_config('yolov3'))


@pytest.mark.parametrize(
    'image, expected', [('street.jpg', {'bus', 'car', 'person'}), ('kite.jpg', {'person', 'kite'})]
)
def test_detects_coco_objects(shared_data, image, expected):
    detections = _detect(shared_data, image)
    found = {name for name, _, _ in detections}
    assert expected <= found, f'{image}: missing {expected - found}; detections {[d[:2] for d in detections]}'


def _opencv_outputs(shared: Path, image_name: str):
    """OpenCV's Darknet network on its own stretched blob: (blob NHWC, raw maps NHWC strides 16/32, YOLO rows)."""
    cv2 = pytest.importorskip('cv2', reason='OpenCV (opencv-python-headless) is the independent Darknet reference')
    d = shared / 'darknet'
    net = cv2.dnn.readNetFromDarknet(str(d / 'yolov3-tiny.cfg'), str(d / 'yolov3-tiny.weights'))
    bgr = cv2.imread(str(shared / 'images' / image_name))
    blob = cv2.dnn.blobFromImage(bgr, 1 / 255.0, (416, 416), swapRB=True, crop=False)  # stretch, RGB, NCHW
    net.setInput(blob)
    # OpenCV names layers <type>_<cfg index>: conv_22 / conv_15 are the output convs (strides 16 / 32), and
    # yolo_23 / yolo_16 their decoded YOLO layers.
    outs = net.forward(['conv_22', 'conv_15', 'yolo_23', 'yolo_16'])
    return blob.transpose(0, 2, 3, 1), [o.transpose(0, 2, 3, 1) for o in outs[:2]], outs[2:]


def _as_opencv_rows(raw: np.ndarray, anchors, stride: int, size: int) -> np.ndarray:
    """Our raw map (1, S, S, A*(5+C)) in OpenCV's YOLO-layer format: rows (S*S*A, 5+C) ordered (y, x, anchor):
    [cx, cy, w, h] / input size, objectness, objectness * class probability (before OpenCV's threshold)."""
    d = np.asarray(decode(raw, anchors, stride))
    rows = d.reshape(-1, d.shape[-1]).copy()
    rows[:, :4] /= size
    rows[:, 5:] *= rows[:, 4:5]
    return rows


@pytest.mark.parametrize('image', ['street.jpg', 'kite.jpg'])
def test_outputs_match_opencv_darknet(shared_data, image):
    """Same stretched 416x416 RGB input (OpenCV's blob) → same raw maps and the same decoded YOLO rows."""
    x, cv_raw, cv_rows = _opencv_outputs(shared_data, image)
    mc, apply, _ = _network(shared_data / WEIGHTS, OPENCV_BN_EPSILON)
    ours = [np.asarray(o) for o in apply(x)]
    for a, b in zip(ours, cv_raw, strict=True):
        assert a.shape == b.shape
        # Logits reach |20|; measured max |diff| ~1.1e-4 (float32 summation order).
        np.testing.assert_allclose(a, b, atol=1e-3, rtol=0)
    # With Darknet's GPU epsilon 1e-5 the maps move by a few 1e-3 at most (measured 1.1e-3 street, 2.5e-3 kite).
    _, apply_dn, _ = _network(shared_data / WEIGHTS)
    for a, b in zip(apply_dn(x), cv_raw, strict=True):
        np.testing.assert_allclose(np.asarray(a), b, atol=5e-3, rtol=0)

    # OpenCV's YOLO layer zeroes class scores not above its threshold (0.2 by default): compare everything
    # except scores within 1e-3 of it, where float noise may put them on either side.
    threshold, detected = 0.2, 0
    for raw, rows, anchors, stride in zip(ours, cv_rows, mc.anchors, mc.strides, strict=True):
        mine = _as_opencv_rows(raw, anchors, stride, mc.input_size)
        assert mine.shape == rows.shape
        np.testing.assert_allclose(mine[:, :5], rows[:, :5], atol=1e-4, rtol=1e-4)
        scores = np.where(mine[:, 5:] > threshold, mine[:, 5:], 0.0)
        near = np.abs(mine[:, 5:] - threshold) < 1e-3
        np.testing.assert_allclose(np.where(near, 0, scores), np.where(near, 0, rows[:, 5:]), atol=1e-4, rtol=0)
        detected += np.count_nonzero(rows[:, 5:])
    assert detected > 0  # the comparison covers real detections


def test_stretch_input_matches_opencv_blob(shared_data):
    """yolo_jax's stretch resize (config.data.resize='stretch') is the input tools like OpenCV feed."""
    pytest.importorskip('cv2', reason='OpenCV (opencv-python-headless) is the independent Darknet reference')
    from yolo_jax.data.letterbox import stretch  # noqa: PLC0415

    blob, _, _ = _opencv_outputs(shared_data, 'street.jpg')
    rgb = np.asarray(Image.open(shared_data / 'images' / 'street.jpg').convert('RGB'))
    ours, _ = stretch(rgb, np.zeros((0, 4), np.float32), 416)
    # Same bilinear sampling (half-pixel centres, no antialiasing); cv2 rounds to uint8 with fixed-point weights,
    # ours stays float: measured max 0.75 grey levels apart, mean 0.25.
    assert np.abs(np.asarray(ours) - blob[0]).max() <= 1 / 255


def test_transfer_real_weights_to_ten_classes(shared_data):
    """init_from=yolov3-tiny.weights into a 10-class tiny: every conv but the two output convs is Darknet's."""
    config = get_config('tiny')
    config.train.init_from = str(shared_data / WEIGHTS)
    config.model.bn_epsilon = darknet.DARKNET_BN_EPSILON
    model = create_model(config.model)
    variables = transfer.initial_variables(config, model)
    _, _, coco = _network(shared_data / WEIGHTS)
    fresh = transfer.fresh_variables(config, model)
    for part in ('params', 'batch_stats'):
        for (path, a), (_, b), (_, f) in zip(
            *(jax.tree_util.tree_flatten_with_path(v[part])[0] for v in (variables, coco, fresh)), strict=True
        ):
            name = jax.tree_util.keystr(path)
            if any(f"'{n}'" in name for n in model.output_convs):
                np.testing.assert_array_equal(a, f, err_msg=name)
            else:
                np.testing.assert_array_equal(a, b, err_msg=name)


def test_coco_config_detects_with_the_official_weights_from_the_command_line(shared_data, tmp_path):
    """The README's command: configs/coco.py:tiny + --weights, no other override; named COCO classes come out."""
    import json
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, '-m', 'yolo_jax.main', '--config=configs/coco.py:tiny', '--mode=detect',
           f'--weights={shared_data / WEIGHTS}', f'--images={shared_data / "images" / "street.jpg"}',
           f'--workdir={tmp_path}', '--nojemalloc']
    env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2')
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads((tmp_path / 'detect' / 'detections.json').read_text())['images'][0]['class_names']
    assert {'bus', 'person'} <= set(found), found
