"""Runs exported detectors as a deployment loads them: numpy and the file's own runtime, never yolo_jax.

    python -P yolo_jax/parity_runner.py MANIFEST.json

(run by path with -P, so neither the yolo_jax package nor its folder is on sys.path; yolo_jax.parity starts it in
a fresh process). MANIFEST: {"images": "in.npz", "output": "out.npz", "jobs": [{"name": N, "format":
"savedmodel"|"onnx"|"stablehlo", "path": P, "inputs": [keys of in.npz]}]}; each input is uint8 (B, H, W, 3).
Writes out.npz with '{name}/{input}/{boxes|scores|classes|count}' and out.npz.json {"errors": {name: message}}
for jobs whose file did not load or run (the others still run). Loaders:

* savedmodel: tf.saved_model.load(P).signatures['serving_default'](images=...) (TF's CPU, GPUs hidden);
* onnx: onnxruntime.InferenceSession(P, providers=['CPUExecutionProvider']);
* stablehlo: jax.export.deserialize(bytes).call(images) (jax on the CPU: JAX_PLATFORMS=cpu from the caller).
"""

import json
import sys

import numpy as np

OUTPUTS = ('boxes', 'scores', 'classes', 'count')


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


LOADERS = {'savedmodel': load_savedmodel, 'onnx': load_onnx, 'stablehlo': load_stablehlo}


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
            run = LOADERS[job['format']](job['path'])
            for key in job['inputs']:
                res = run(images[key])
                for k in OUTPUTS:
                    out[f'{name}/{key}/{k}'] = np.asarray(res[k])
        except Exception as e:  # noqa: BLE001 - a file that does not load or run is reported, not fatal
            errors[name] = _one_line(e)
    leaked = sorted(m for m in sys.modules if m == 'yolo_jax' or m.startswith('yolo_jax.'))
    np.savez(manifest['output'], **out)
    with open(manifest['output'] + '.json', 'w') as f:
        json.dump({'errors': errors, 'yolo_jax_modules': leaked}, f)


if __name__ == '__main__':
    main(sys.argv[1])
