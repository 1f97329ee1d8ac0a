"""Runs exported detectors as a deployment loads them: numpy and the file's own runtime, never yolo_jax.

    python -P yolo_jax/parity_runner.py MANIFEST.json

(run by path with -P, so neither the yolo_jax package nor its folder is on sys.path; yolo_jax.parity starts it in
a fresh process). MANIFEST: {"images": "in.npz", "output": "out.npz", "jobs": [{"name": N, "format":
"savedmodel"|"onnx"|"stablehlo"|"openvino"|"tflite", "path": P, "inputs": [keys of in.npz], "options": {...}
(optional: the runtime's compile options, openvino only)}]}; each input is uint8
(B, H, W, 3), for tflite float32 letterboxed canvases (B, S, S, 3) in [0, 1]. Writes out.npz with
'{name}/{input}/{output}' for each output the file gives (boxes, scores, classes, count; tflite: raw) and
out.npz.json {"errors": {name: message}} for jobs whose file did not load or run (the others still run). Loaders:

* savedmodel: tf.saved_model.load(P).signatures['serving_default'](images=...) (TF's CPU, GPUs hidden);
* onnx: onnxruntime.InferenceSession(P, providers=['CPUExecutionProvider']);
* stablehlo: jax.export.deserialize(bytes).call(images) (jax on the CPU: JAX_PLATFORMS=cpu from the caller);
* openvino: openvino.Core().compile_model(P, 'CPU', options) (the .xml, its .bin beside it; options: the
  metadata's compile_options, {'INFERENCE_PRECISION_HINT': 'f32'});
* tflite: ai_edge_litert's Interpreter (TF's tf.lite.Interpreter when it is absent); the file's batch is fixed,
  so the canvases run in chunks of that batch, the last one padded with copies of its first image (dropped after).
"""

import json
import sys

import numpy as np


def load_savedmodel(path):
    """fn(uint8 images) → {output: array} of a SavedModel's serving_default signature."""
    import tensorflow as tf

    try:
        tf.config.set_visible_devices([], 'GPU')
    except RuntimeError:  # already initialised by an earlier job
        pass
    signature = tf.saved_model.load(path).signatures['serving_default']
    return lambda x: {k: v.numpy() for k, v in signature(images=tf.constant(x)).items()}


def load_onnx(path):
    """fn(uint8 images) → {output: array} of an ONNX file in ONNX Runtime (CPU)."""
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    names = [o.name for o in session.get_outputs()]
    return lambda x: dict(zip(names, session.run(None, {'images': x})))


def load_stablehlo(path):
    """fn(uint8 images) → {output: array} of a serialised jax.export.Exported."""
    import jax

    with open(path, 'rb') as f:
        exported = jax.export.deserialize(bytearray(f.read()))
    return lambda x: {k: np.asarray(v) for k, v in exported.call(x).items()}


def load_openvino(path, options):
    """fn(uint8 images) → {output: array} of an OpenVINO IR compiled for the CPU plugin with `options`."""
    import openvino as ov

    compiled = ov.Core().compile_model(path, 'CPU', options)

    def run(x):  # every name of each output port: get_any_name() may give a converter-made one ('pad_316')
        res = compiled(x)
        return {name: np.asarray(res[port]) for port in compiled.outputs for name in port.get_names()}

    return run


def load_tflite(path):
    """fn(float32 canvases (n, S, S, 3)) → {'raw': (n, N, 5 + C)} of a TFLite file with a fixed batch b: chunks
    of b, the last padded with its first canvas."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    it = Interpreter(model_path=path)
    it.allocate_tensors()
    (inp,), (res,) = it.get_input_details(), it.get_output_details()
    b = int(inp['shape'][0])

    def run(x):
        outs = []
        for start in range(0, len(x), b):
            chunk = x[start:start + b]
            pad = np.repeat(chunk[:1], b - len(chunk), axis=0)
            it.set_tensor(inp['index'], np.concatenate([chunk, pad]).astype(np.float32))
            it.invoke()
            outs.append(it.get_tensor(res['index'])[:len(chunk)].copy())
        return {'raw': np.concatenate(outs)}

    return run


LOADERS = {'savedmodel': load_savedmodel, 'onnx': load_onnx, 'stablehlo': load_stablehlo,
           'openvino': load_openvino, 'tflite': load_tflite}


def _one_line(error):
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    return f'{type(error).__name__}: {lines[-1] if lines else ""}'.strip()


def main(manifest_path):
    with open(manifest_path) as f:
        manifest = json.load(f)
    images = dict(np.load(manifest['images']))
    out, errors = {}, {}
    for job in manifest['jobs']:
        name = job['name']
        try:
            options = job.get('options')
            run = LOADERS[job['format']](job['path'], *([options] if options is not None else []))
            for key in job['inputs']:
                res = run(images[key])
                for k, v in res.items():
                    out[f'{name}/{key}/{k}'] = np.asarray(v)
        except Exception as e:  # noqa: BLE001 - a file that does not load or run is reported, not fatal
            errors[name] = _one_line(e)
    leaked = sorted(m for m in sys.modules if m == 'yolo_jax' or m.startswith('yolo_jax.'))
    np.savez(manifest['output'], **out)
    with open(manifest['output'] + '.json', 'w') as f:
        json.dump({'errors': errors, 'yolo_jax_modules': leaked}, f)


if __name__ == '__main__':
    main(sys.argv[1])
