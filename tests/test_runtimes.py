"""yolo_jax.export --format=tflite|openvino|tensorrt: the runtimes users deploy to give JAX's detections.

Model: a random-weights YOLOv3-tiny (10 classes) at 96 px, He-initialised with the output convs at half He's
scale. Each file is run in a fresh Python process that never imports yolo_jax: TFLite with ai-edge-litert (TF's
tf.lite.Interpreter when it is absent), OpenVINO with `openvino`. References: inference.predict on the host
letterbox (detect.prepare_image) for detections, and the network in JAX (runtimes.raw_fn) for TFLite's raw maps.

Tolerances:
  * TFLite float32: raw maps (logits of order 1) 1e-4; detections after the host decoding + NMS
    (runtimes.tflite_detections): boxes 1e-3 px, scores 1e-4, classes and counts exact.
  * OpenVINO float32: detections boxes 1e-2 px (its CPU plugin fuses and reorders ops; the ONNX file itself is
    held to 1e-3 px by test_export.py), scores 1e-4, classes and counts exact.
  * TFLite float16 weights: raw maps 2e-2, and they must differ from float32's (no detection equality: a
    different rank among near-equal scores is not an error of the file).
  * int8: the file runs and gives (B, N, 5 + C) finite maps; its accuracy (mAP@0.5 change on MNIST quick) is in
    benchmarks/README.md.
"""

from __future__ import annotations

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

from configs.mnist import get_config
from yolo_jax import darknet, detect, export, inference, runtimes
from yolo_jax import postprocess as pp
from yolo_jax.models import create_model, fold_variables

REPO = Path(__file__).resolve().parents[1]
SIZE = 96
RAW_ATOL, RAW_ATOL_FLOAT16 = 1e-4, 2e-2  # raw logits (order 1)
HAS_TFLITE_RUNTIME = importlib.util.find_spec('ai_edge_litert') is not None
HAS_OPENVINO = importlib.util.find_spec('openvino') is not None
HAS_ONNX = all(importlib.util.find_spec(m) is not None for m in ('onnx', 'onnxruntime'))
needs_openvino = pytest.mark.skipif(not (HAS_OPENVINO and HAS_ONNX),
                                    reason="the openvino extra is not installed (pip install -e '.[openvino]')")

# argv: job .json ({'kind': 'tflite'|'openvino', 'model': path, 'inputs': .npz, 'output': .npz}).
RUNNER = textwrap.dedent('''
    import json, sys
    import numpy as np
    job = json.load(open(sys.argv[1]))
    inputs = dict(np.load(job['inputs']))
    out = {}
    if job['kind'] == 'tflite':
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            import tensorflow as tf
            Interpreter = tf.lite.Interpreter
        it = Interpreter(model_path=job['model'])
        it.allocate_tensors()
        inp, res = it.get_input_details()[0], it.get_output_details()[0]
        for key, x in inputs.items():
            it.set_tensor(inp['index'], x)
            it.invoke()
            out[key] = it.get_tensor(res['index'])
    else:
        import openvino as ov
        options = json.load(open(job['model'] + '.json'))['compile_options']  # as the metadata tells a deployment
        compiled = ov.Core().compile_model(job['model'], 'CPU', options)
        for key, x in inputs.items():
            res = compiled(x)
            for port in compiled.outputs:
                out[key + '/' + port.get_any_name()] = res[port]
    assert not any(m == 'yolo_jax' or m.startswith('yolo_jax.') for m in sys.modules), 'yolo_jax was imported'
    np.savez(job['output'], **out)
''')


def _env() -> dict:
    return dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2', PYTHONUNBUFFERED='1')


def _run_fresh(kind: str, model: Path, inputs: dict[str, np.ndarray], tmp: Path) -> dict[str, np.ndarray]:
    np.savez(tmp / f'{kind}_in.npz', **inputs)
    (tmp / 'runner.py').write_text(RUNNER)
    job = {'kind': kind, 'model': str(model), 'inputs': str(tmp / f'{kind}_in.npz'),
           'output': str(tmp / f'{kind}_out.npz')}
    (tmp / f'{kind}.json').write_text(json.dumps(job))
    proc = subprocess.run([sys.executable, str(tmp / 'runner.py'), str(tmp / f'{kind}.json')], cwd=tmp, env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return dict(np.load(job['output']))


@pytest.fixture(scope='module')
def tiny():
    """(model, folded variables, PostprocessConfig) of a random-weights YOLOv3-tiny at 96 px."""
    config = get_config('tiny,smoke')
    config.model.input_size = SIZE
    config.model.kernel_init = 'he'
    config.eval.score_threshold = 0.257  # random weights: the best ~10 scores per image exceed it
    config.eval.max_detections = 20
    model = create_model(config.model)
    variables = model.init(jax.random.key(0), np.zeros((1, SIZE, SIZE, 3), np.float32), train=False)
    model, variables = fold_variables(config.model, variables)
    head = {name: jax.tree.map(lambda a: a * 0.5, conv) if name in model.output_convs else conv
            for name, conv in variables['params']['head'].items()}
    variables = {'params': {**variables['params'], 'head': head}}
    return model, variables, pp.PostprocessConfig.from_spec(spec_of(config), config.eval, config.data.resize)


def _images(batch: int, seed: int) -> np.ndarray:
    """uint8 images of an odd wide size (letterbox bands top and bottom)."""
    return np.random.default_rng(seed).integers(0, 256, (batch, 70, 121, 3), dtype=np.uint8)


def _reference(model, variables, cfg, images: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(letterboxed canvases (B, S, S, 3), JAX's detections {'boxes', 'scores', 'classes', 'count'})."""
    canvas = np.stack([detect.prepare_image(im, cfg.input_size, cfg.resize_mode) for im in images])
    sizes = np.tile(np.asarray(images.shape[1:3]), (len(images), 1))
    det = jax.device_get(inference.predict(model, variables, canvas, sizes, cfg))
    return canvas, {'boxes': det.boxes, 'scores': det.scores, 'classes': det.classes,
                    'count': det.valid.sum(axis=1)}


def _check_detections(got: dict, ref: dict, box_atol: float, what: str) -> None:
    np.testing.assert_array_equal(got['count'], ref['count'], err_msg=f'{what}: count')
    np.testing.assert_array_equal(got['classes'], ref['classes'], err_msg=f'{what}: classes')
    np.testing.assert_allclose(got['boxes'], ref['boxes'], rtol=0, atol=box_atol, err_msg=f'{what}: boxes')
    np.testing.assert_allclose(got['scores'], ref['scores'], rtol=0, atol=1e-4, err_msg=f'{what}: scores')


def _check_raw(got: np.ndarray, want: np.ndarray, atol: float, what: str) -> None:
    """TFLite's raw maps (B, N, 5 + C) against JAX's (logits: t_x .. class logits)."""
    assert got.shape == want.shape, (got.shape, want.shape)
    np.testing.assert_allclose(got, want, rtol=0, atol=atol, err_msg=f'{what}: raw maps')


@pytest.mark.parametrize('batch', [1, 2])
def test_tflite_float32_and_float16_match_jax(tiny, tmp_path, batch):
    model, variables, cfg = tiny
    images = _images(batch, seed=batch)
    canvas, ref = _reference(model, variables, cfg, images)
    assert ref['count'].sum() > 0, 'the comparison needs detections'
    want = np.asarray(jax.jit(runtimes.raw_fn(model))(variables, canvas))
    for quantize in ('none', 'float16'):
        path = export.export_model(model, variables, cfg, 'tflite', tmp_path / f'{quantize}.tflite', ['x'] * 10,
                                   quantize=quantize, batch_size=batch)
        meta = json.loads(Path(f'{path}.json').read_text())
        assert meta['format'] == 'tflite' and meta['quantize'] == quantize and meta['batch_size'] == batch
        got = _run_fresh('tflite', path, {'x': canvas}, tmp_path)['x']
        if quantize == 'none':
            _check_raw(got, want, RAW_ATOL, 'tflite float32')
            det = runtimes.tflite_detections(got, cfg, np.tile(images.shape[1:3], (batch, 1)))
            _check_detections(det, ref, 1e-3, 'tflite float32')
        else:
            _check_raw(got, want, RAW_ATOL_FLOAT16, 'tflite float16')
            assert np.abs(got - want).max() > 0, 'float16 weights should change the numbers a little'
    assert (tmp_path / 'float16.tflite').stat().st_size < 0.6 * (tmp_path / 'none.tflite').stat().st_size


def test_command_tflite_int8_calibrates_on_training_images(tmp_path):
    """--quantize=int8 through the command: calibrated on the run's training split (MNIST smoke, built from the
    bundled digits), a file a quarter of float32's that runs and gives finite maps of the network's shape."""
    weights = _random_weights(tmp_path / 'random.weights')
    data = [f'--config.data.data_dir={tmp_path / "tfds"}', '--config.data.digit_source=sklearn']
    proc = _export_cmd(weights, 'tflite', tmp_path / 'int8.tflite', '--quantize=int8', '--calibration_images=4',
                       *data)
    assert proc.returncode == 0, proc.stderr[-4000:]
    meta = json.loads((tmp_path / 'int8.tflite.json').read_text())
    assert meta['quantize'] == 'int8' and meta['batch_size'] == 1
    values = darknet.value_count(get_config('tiny,smoke').model)
    assert (tmp_path / 'int8.tflite').stat().st_size < 0.4 * 4 * values  # int8 weights, not float32
    canvas = np.random.default_rng(3).uniform(0, 1, (1, SIZE, SIZE, 3)).astype(np.float32)
    got = _run_fresh('tflite', tmp_path / 'int8.tflite', {'x': canvas}, tmp_path)['x']
    cells = sum((SIZE // s) ** 2 for s in (16, 32)) * 3  # YOLOv3-tiny: strides 16 and 32, 3 anchors each
    assert got.shape == (1, cells, 15) and np.isfinite(got).all()


@needs_openvino
def test_openvino_matches_jax(tiny, tmp_path):
    model, variables, cfg = tiny
    path = export.export_model(model, variables, cfg, 'openvino', tmp_path / 'model.xml', ['x'] * 10)
    assert path.with_suffix('.bin').exists()
    inputs = {'one': _images(1, seed=1), 'two': _images(2, seed=2)}
    results = _run_fresh('openvino', path, inputs, tmp_path)
    for key, images in inputs.items():
        _, ref = _reference(model, variables, cfg, images)
        assert ref['count'].sum() > 0
        _check_detections({k: results[f'{key}/{k}'] for k in export.OUTPUT_NAMES}, ref, 1e-2, f'openvino {key}')


def _random_weights(path: Path, seed: int = 0) -> Path:
    """A Darknet .weights file for the MNIST tiny network (10 classes) with small random values (variances > 0)."""
    mc = get_config('tiny,smoke').model
    values = np.random.default_rng(seed).uniform(0.0, 0.02, darknet.value_count(mc)).astype('<f4')
    path.write_bytes(darknet.DarknetHeader(0, 2, 0, 0).to_bytes() + values.tobytes())
    return path


def _export_cmd(weights: Path, fmt: str, output: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, '-m', 'yolo_jax.export', '--config=configs/mnist.py:tiny,smoke', f'--weights={weights}',
           f'--config.model.input_size={SIZE}', f'--format={fmt}', f'--output={output}', *extra]
    return subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)


def test_command_tflite_and_tensorrt(tmp_path):
    """The real command: a float32 TFLite file equal to JAX on the same weights; TensorRT without a GPU is one
    error line (exit 2)."""
    weights = _random_weights(tmp_path / 'random.weights')
    proc = _export_cmd(weights, 'tflite', tmp_path / 'out' / 'model.tflite', '--batch_size=2')
    assert proc.returncode == 0, proc.stderr[-4000:]
    config = get_config('tiny,smoke')
    config.model.input_size = SIZE
    model, variables = inference.load_variables(config, None, weights, fold=True)
    canvas = np.random.default_rng(0).uniform(0, 1, (2, SIZE, SIZE, 3)).astype(np.float32)
    got = _run_fresh('tflite', tmp_path / 'out' / 'model.tflite', {'x': canvas}, tmp_path)['x']
    want = np.asarray(jax.jit(runtimes.raw_fn(model))(variables, canvas))
    _check_raw(got, want, RAW_ATOL, 'command tflite')

    if not runtimes.has_nvidia_gpu():
        proc = _export_cmd(weights, 'tensorrt', tmp_path / 'model.engine')
        assert proc.returncode == 2, proc.stderr[-4000:]
        lines = proc.stderr.strip().splitlines()
        assert lines[-1].startswith('error: --format=tensorrt') and 'GPU' in lines[-1], proc.stderr[-2000:]
        assert 'Traceback' not in proc.stderr and not (tmp_path / 'model.engine').exists()


@pytest.mark.slow
@needs_openvino
def test_command_openvino(tmp_path):
    weights = _random_weights(tmp_path / 'random.weights')
    proc = _export_cmd(weights, 'openvino', tmp_path / 'model.xml')
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (tmp_path / 'model.bin').exists()
    meta = json.loads((tmp_path / 'model.xml.json').read_text())
    assert meta['format'] == 'openvino' and meta['compile_options'] == {'INFERENCE_PRECISION_HINT': 'f32'}
    bad = _export_cmd(weights, 'openvino', tmp_path / 'model.onnx', '--quantize=int8')
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith('error: --quantize=int8')


def test_unconvertible_op_is_named():
    """The converter's MLIR diagnostics reduce to the op and the line of yolo_jax that emits it."""
    text = ('/x/yolo_jax/postprocess.py:169:14: error: failed to legalize operation \'mhlo.reduce\' that was '
            'explicitly marked illegal\n    classes = jnp.argmax(probs, axis=-1)\n')
    assert runtimes._unsupported_op(text) == 'mhlo.reduce (emitted at yolo_jax/postprocess.py:169)'
