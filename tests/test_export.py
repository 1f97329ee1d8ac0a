"""yolo_jax.export: SavedModel, ONNX and StableHLO exports detect exactly what the JAX model detects.

Each exported file is run in a fresh Python process that imports only numpy, tensorflow, onnxruntime and jax
(never yolo_jax), on uint8 images of the original sizes; the reference is the detect path (data/letterbox.py's
TF letterbox on the host + inference.predict). Models: a briefly trained MNIST checkpoint (tiny,smoke, trained
by `python -m yolo_jax.main` in a subprocess) and, with ../shared/data, the official YOLOv3-tiny COCO weights on
the shared photos. Tolerances: boxes 1e-3 px, scores 1e-4, classes and counts exact.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest
from helpers import spec_of

from configs.coco import get_config as coco_config
from configs.mnist import get_config
from yolo_jax import detect, export, inference
from yolo_jax import postprocess as pp

# ONNX needs the export extra; SavedModel and StableHLO are tested without it.
HAS_ONNX = all(importlib.util.find_spec(m) is not None for m in ('onnx', 'onnxruntime'))
needs_onnx = pytest.mark.skipif(not HAS_ONNX, reason='the export extra (onnx, onnxruntime) is not installed')

REPO = Path(__file__).resolve().parents[1]
BOX_ATOL, SCORE_ATOL = 1e-3, 1e-4
MNIST_EPOCHS = 8  # enough training that candidate scores are distinct (an untrained net ties them to ~1e-7)

# Runs each exported model without yolo_jax: argv = model dir, images .npz, output .npz.
RUNNER = textwrap.dedent('''
    import sys
    import numpy as np
    model_dir, images_path, out_path = sys.argv[1:]
    import jax
    try:
        import onnxruntime as ort
    except ImportError:  # without the export extra: SavedModel and StableHLO only
        ort = None
    import tensorflow as tf
    tf.config.set_visible_devices([], 'GPU')
    assert not any(m == 'yolo_jax' or m.startswith('yolo_jax.') for m in sys.modules), 'yolo_jax was imported'
    images = dict(np.load(images_path))
    saved = tf.saved_model.load(model_dir + '/savedmodel').signatures['serving_default']
    onnx = ort and ort.InferenceSession(model_dir + '/model.onnx', providers=['CPUExecutionProvider'])
    with open(model_dir + '/model.stablehlo', 'rb') as f:
        shlo = jax.export.deserialize(bytearray(f.read()))
    names = [o.name for o in onnx.get_outputs()] if onnx else []
    out = {}
    for key, x in images.items():
        runs = {
            'savedmodel': {k: v.numpy() for k, v in saved(images=tf.constant(x)).items()},
            'stablehlo': {k: np.asarray(v) for k, v in shlo.call(x).items()},
        }
        if onnx:
            runs['onnx'] = dict(zip(names, onnx.run(None, {'images': x})))
        for fmt, res in runs.items():
            for k, v in res.items():
                out[f'{key}/{fmt}/{k}'] = v
    np.savez(out_path, **out)
''')


def _env() -> dict:
    return dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2', PYTHONUNBUFFERED='1')


def _reference(model, variables, cfg: pp.PostprocessConfig, images: np.ndarray) -> dict[str, np.ndarray]:
    """The JAX model's detections for uint8 images (B, H, W, 3): host TF letterbox + inference.predict."""
    inputs = np.stack([detect.prepare_image(im, cfg.input_size, cfg.resize_mode) for im in images])
    sizes = np.tile(np.asarray(images.shape[1:3]), (len(images), 1))
    det = jax.device_get(inference.predict(model, variables, inputs, sizes, cfg))
    return {'boxes': det.boxes, 'scores': det.scores, 'classes': det.classes, 'count': det.valid.sum(axis=1)}


def _check_equal(got: dict, ref: dict, what: str) -> None:
    np.testing.assert_array_equal(got['count'], ref['count'], err_msg=f'{what}: count')
    np.testing.assert_array_equal(got['classes'], ref['classes'], err_msg=f'{what}: classes')
    np.testing.assert_allclose(got['boxes'], ref['boxes'], rtol=0, atol=BOX_ATOL, err_msg=f'{what}: boxes')
    np.testing.assert_allclose(got['scores'], ref['scores'], rtol=0, atol=SCORE_ATOL, err_msg=f'{what}: scores')


def _export_all(model, variables, cfg, out: Path, names: list[str], skip: tuple[str, ...] = ()) -> None:
    paths = {'savedmodel': out / 'savedmodel', 'onnx': out / 'model.onnx', 'stablehlo': out / 'model.stablehlo'}
    for fmt, path in paths.items():
        if fmt not in skip and (fmt != 'onnx' or HAS_ONNX):
            export.export_model(model, variables, cfg, fmt, path, names)


def _run_fresh(model_dir: Path, images: dict[str, np.ndarray], tmp: Path) -> dict[str, np.ndarray]:
    np.savez(tmp / 'images.npz', **images)
    script = tmp / 'runner.py'
    script.write_text(RUNNER)
    proc = subprocess.run([sys.executable, str(script), str(model_dir), str(tmp / 'images.npz'), str(tmp / 'out.npz')],
                          cwd=tmp, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return dict(np.load(tmp / 'out.npz'))


def _check_all(results: dict, key: str, ref: dict) -> None:
    for fmt in export.FORMATS if HAS_ONNX else [f for f in export.FORMATS if f != 'onnx']:
        got = {k: results[f'{key}/{fmt}/{k}'] for k in export.OUTPUT_NAMES}
        _check_equal(got, ref, f'{key} {fmt}')


def _train_mnist(folder: Path) -> None:
    cmd = [sys.executable, '-m', 'yolo_jax.main', '--config=configs/mnist.py:tiny,smoke', f'--workdir={folder / "run"}',
           f'--config.data.data_dir={folder / "tfds"}', '--config.data.digit_source=sklearn',
           f'--config.train.epochs={MNIST_EPOCHS}', '--jemalloc=false']
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.fixture(scope='module')
def mnist_workdir(build_once) -> Path:
    """A tiny,smoke MNIST checkpoint trained by the real command line (~30 s on 2 cores), once per session."""
    return build_once('export_mnist', _train_mnist) / 'run'


def mnist_config(score_threshold: float = 0.1):
    """tiny,smoke with a threshold that a briefly trained model passes."""
    config = get_config('tiny,smoke')
    config.eval.score_threshold = score_threshold
    config.eval.max_detections = 20
    return config


@pytest.mark.slow
def test_mnist_checkpoint_exports_match_jax(mnist_workdir, tmp_path):
    config = mnist_config()
    model, variables, spec = inference.load_detector(config, mnist_workdir, fold=True)
    cfg = pp.PostprocessConfig.from_spec(spec, config.eval, config.data.resize)
    out = tmp_path / 'export'
    _export_all(model, variables, cfg, out, [str(i) for i in range(10)], skip=('stablehlo',))
    # StableHLO through the command line (config overrides as for training).
    cmd = [sys.executable, '-m', 'yolo_jax.export', '--config=configs/mnist.py:tiny,smoke',
           f'--workdir={mnist_workdir}', '--config.eval.score_threshold=0.1', '--config.eval.max_detections=20',
           '--format=stablehlo', f'--output={out / "model.stablehlo"}']
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    meta = json.loads((out / 'model.stablehlo.json').read_text())
    assert meta['class_names'] == [str(i) for i in range(10)] and meta['input_size'] == 64
    assert json.loads((out / 'savedmodel' / 'export.json').read_text())['format'] == 'savedmodel'

    rng = np.random.default_rng(0)
    images = {'one': rng.integers(0, 256, (1, 50, 90, 3), dtype=np.uint8),  # wide: letterbox bands top/bottom
              'three': rng.integers(0, 256, (3, 97, 41, 3), dtype=np.uint8)}  # tall, odd sizes
    results = _run_fresh(out, images, tmp_path)
    total = 0
    for key, x in images.items():
        ref = _reference(model, variables, cfg, x)
        total += int(ref['count'].sum())
        _check_all(results, key, ref)
    assert total > 0, 'the comparison needs detections'


@pytest.mark.shared_data
def test_yolov3_tiny_exports_match_jax_on_photos(shared_data, tmp_path):
    config = coco_config('tiny')  # YOLOv3-tiny, 80 classes, Darknet's BatchNorm epsilon
    model, variables = inference.load_variables(config, None, shared_data / 'darknet' / 'yolov3-tiny.weights',
                                                fold=True)
    cfg = pp.PostprocessConfig.from_spec(spec_of(config), config.eval, config.data.resize)
    names = (shared_data / 'darknet' / 'coco.names').read_text().split('\n')[:80]
    _export_all(model, variables, cfg, tmp_path / 'export', names)
    street = detect.load_image(shared_data / 'images' / 'street.jpg')
    kite = detect.load_image(shared_data / 'images' / 'kite.jpg')
    images = {'street': street[None], 'kite': kite[None], 'street2': np.stack([street, street[:, ::-1]])}
    results = _run_fresh(tmp_path / 'export', images, tmp_path)
    for key, x in images.items():
        ref = _reference(model, variables, cfg, x)
        _check_all(results, key, ref)
    classes = {names[c] for c in results['street/stablehlo/classes'][0] if c >= 0}
    assert {'bus', 'car', 'person'} <= classes


@pytest.mark.parametrize('hw', [(49, 49), (480, 640), (97, 41), (64, 64), (13, 200)])
@pytest.mark.parametrize('mode', ['letterbox', 'stretch'])
def test_in_graph_letterbox_matches_pipeline(hw, mode):
    """export.letterbox_images (traced, symbolic sizes) = data/letterbox.py: same geometry (float64 sizes, e.g.
    w = 49 gives 63 px at 64, not 64) and the same pixels up to XLA's fused multiply-adds (~1e-5)."""
    import tensorflow as tf

    from yolo_jax.data import letterbox

    images = np.random.default_rng(0).integers(0, 256, (2, *hw, 3), dtype=np.uint8)
    for size in (64, 416):
        got, resize = jax.jit(lambda x, s=size: export.letterbox_images(x, s, mode))(images)
        want = np.stack([letterbox.resize_image_and_boxes(tf.constant(im), tf.zeros((0, 4)), size, mode)[0].numpy()
                         for im in images])
        np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=1e-4)
        np.testing.assert_array_equal(np.asarray(resize), pp.resize_params_batch(np.array([hw]), size, mode)[0])


@needs_onnx
def test_onnx_rejects_soft_nms(mnist_workdir):
    from yolo_jax import onnx_export

    config = mnist_config()
    config.eval.nms_method = 'soft_nms'
    model, variables, spec = inference.load_detector(config, mnist_workdir, fold=True)
    with pytest.raises(ValueError, match='hard NMS only'):
        onnx_export.build_onnx(model, variables, pp.PostprocessConfig.from_spec(spec, config.eval, config.data.resize))


def test_test_time_flips_are_in_the_traced_function_and_refused_by_onnx(mnist_workdir, tmp_path):
    """config.eval.tta: the traced serving function (SavedModel/StableHLO) flips as inference.predict does; the
    ONNX graph has no flips and says so."""
    config = mnist_config()
    config.eval.tta = ('hflip', 'vflip')
    model, variables, spec = inference.load_detector(config, mnist_workdir, fold=True)
    cfg = pp.PostprocessConfig.from_spec(spec, config.eval, config.data.resize)
    images = np.random.default_rng(2).integers(0, 256, (2, 80, 120, 3), dtype=np.uint8)
    ref = _reference(model, variables, cfg, images)
    plain = _reference(model, variables, dataclasses.replace(cfg, tta=()), images)
    assert plain['count'].sum() > 0 and not np.allclose(ref['boxes'], plain['boxes'])  # the flips count
    _check_equal(jax.device_get(jax.jit(export.serving_fn(model, cfg))(variables, images)), ref, 'jax flips')
    # config.eval.tta_sizes and tta_vote_iou: the traced function runs the other sizes and votes as predict does.
    views = dataclasses.replace(cfg, tta_sizes=(96,), tta_vote_iou=0.6)
    ref_views = _reference(model, variables, views, images)
    assert ref_views['count'].sum() > 0 and not np.allclose(ref_views['boxes'], ref['boxes'])
    _check_equal(jax.device_get(jax.jit(export.serving_fn(model, views))(variables, images)), ref_views, 'jax sizes')
    if HAS_ONNX:
        from yolo_jax import onnx_export

        with pytest.raises(ValueError, match=r"config\.eval\.tta=\('hflip', 'vflip'\): the ONNX graph has no"):
            onnx_export.build_onnx(model, variables, cfg)
        with pytest.raises(ValueError, match=r"config\.eval\.tta_sizes=\(96,\): the ONNX graph has no test-time"):
            onnx_export.build_onnx(model, variables, dataclasses.replace(views, tta=()))
    # Through the command: the views are recorded beside the StableHLO file; ONNX is one error line, exit 2.
    base = [sys.executable, '-m', 'yolo_jax.export', '--config=configs/mnist.py:tiny,smoke',
            f'--workdir={mnist_workdir}', "--config.eval.tta=('hflip',)"]
    out = tmp_path / 'model.stablehlo'
    proc = subprocess.run([*base, '--format=stablehlo', f'--output={out}', '--config.eval.tta_sizes=(96,)',
                           '--config.eval.tta_vote_iou=0.6'], cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    meta = json.loads((tmp_path / 'model.stablehlo.json').read_text())
    assert (meta['test_time_flips'], meta['test_time_sizes'], meta['test_time_vote_iou']) == (['hflip'], [96], 0.6)
    proc = subprocess.run([*base, '--format=onnx', f'--output={tmp_path / "model.onnx"}'], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=600)
    errors_ = [ln for ln in proc.stderr.splitlines() if ln.startswith('error: ')]
    assert proc.returncode == 2 and errors_ == [
        "error: config.eval.tta=('hflip',): the ONNX graph has no test-time flips; export it with "
        '--config.eval.tta=() (the other formats keep them)'], proc.stderr[-3000:]
    assert not (tmp_path / 'model.onnx').exists()


@needs_onnx
def test_stretch_resize_exports(mnist_workdir):
    """config.data.resize='stretch' (no bands) in the ONNX graph and the traced function (SavedModel/StableHLO)."""
    import onnxruntime as ort

    from yolo_jax import onnx_export

    config = mnist_config()
    config.data.resize = 'stretch'
    model, variables, spec = inference.load_detector(config, mnist_workdir, fold=True)
    cfg = pp.PostprocessConfig.from_spec(spec, config.eval, config.data.resize)
    images = np.random.default_rng(1).integers(0, 256, (2, 97, 41, 3), dtype=np.uint8)
    ref = _reference(model, variables, cfg, images)
    assert ref['count'].sum() > 0
    session = ort.InferenceSession(onnx_export.build_onnx(model, variables, cfg).SerializeToString(),
                                   providers=['CPUExecutionProvider'])
    _check_equal(dict(zip(export.OUTPUT_NAMES, session.run(None, {'images': images}))), ref, 'onnx stretch')
    _check_equal(jax.device_get(jax.jit(export.serving_fn(model, cfg))(variables, images)), ref, 'jax stretch')


@pytest.mark.slow
@needs_onnx
def test_yolov4_onnx_matches_jax():
    """YOLOv4's mish (x * tanh(softplus(x)), softplus traced as logaddexp: ne, abs, neg, exp, log1p, select)
    converts to ONNX: on random He-initialised weights (output convs scaled to maps of order 1) the network's raw
    maps equal JAX's, and the whole exported detector's detections equal the detect path's. The images are
    input-sized, so the letterbox is exact in both."""
    import onnxruntime as ort

    from yolo_jax import onnx_export
    from yolo_jax.models import create_model, fold_variables

    config = mnist_config(score_threshold=0.3)
    config.model.update(get_config('yolov4,smoke').model)
    config.model.kernel_init = 'he'
    size = config.model.input_size
    model = create_model(config.model)
    variables = model.init(jax.random.key(0), np.zeros((1, size, size, 3), np.float32), train=False)
    model, variables = fold_variables(config.model, variables)
    # Output convs at a fifth of He's scale: raw maps of order 1, as a trained net's (exp(t_wh) amplifies the
    # float rounding of larger ones to tenths of pixels).
    head = {name: jax.tree.map(lambda a: a * 0.2, conv) if name in model.output_convs else conv
            for name, conv in variables['params']['head'].items()}
    variables = {'params': {**variables['params'], 'head': head}}
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (2, size, size, 3)).astype(np.float32)
    network = ort.InferenceSession(onnx_export.build_network_onnx(model, variables, size).SerializeToString(),
                                   providers=['CPUExecutionProvider'])
    got = network.run(None, {'x': x})
    want = [np.asarray(r) for r in jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)]
    assert [g.shape for g in got] == [w.shape for w in want]
    assert min(np.abs(w).max() for w in want) > 0.5  # the comparison is not of near-zero maps
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4, err_msg=f'raw map {i}')

    cfg = pp.PostprocessConfig.from_spec(spec_of(config), config.eval, config.data.resize)
    images = rng.integers(0, 256, (2, size, size, 3), dtype=np.uint8)
    ref = _reference(model, variables, cfg, images)
    assert ref['count'].sum() > 0
    session = ort.InferenceSession(onnx_export.build_onnx(model, variables, cfg).SerializeToString(),
                                   providers=['CPUExecutionProvider'])
    _check_equal(dict(zip(export.OUTPUT_NAMES, session.run(None, {'images': images}))), ref, 'yolov4 onnx')
