"""mAP@0.5 of a checkpoint's TFLite exports: float32, float16 weights, int8 post-training quantisation.

    python benchmarks/quantization.py --config=configs/mnist.py:quick --workdir=/tmp/track_quick \
        --out=benchmarks/results/quantization_mnist_quick.json [--calibration_images=1000] [--batch_size=8]

Each TFLite file (yolo_jax.runtimes.export_tflite: network + decoding) runs with ai-edge-litert (TF's
interpreter without it) on the test split's letterboxed images; its output goes through the same host
post-processing (`runtimes.tflite_detections` with the mAP settings, postprocess.map_postprocess_config) and the
same VOC mAP@0.5 as `--mode=eval` (evaluation/runner.collect_detections gives the JAX reference and the ground
truth). int8 is calibrated on the first --calibration_images training images. Prints and writes JSON; no timings.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from yolo_jax import inference, input_pipeline, run_config, runtimes  # noqa: E402
from yolo_jax import postprocess as pp  # noqa: E402
from yolo_jax.evaluation import metrics, runner  # noqa: E402

config_flags.DEFINE_config_file('config', 'configs/mnist.py:quick', 'Config of the checkpoint.')
flags.DEFINE_string('workdir', '/tmp/track_quick', 'Training directory (read only).')
flags.DEFINE_string('out', 'benchmarks/results/quantization_mnist_quick.json', 'JSON output.')
flags.DEFINE_integer('calibration_images', 1000, 'int8: training images that calibrate the quantisation.')
flags.DEFINE_integer('batch_size', 8, 'Batch of the TFLite files and of evaluation.')


def _interpreter(path: Path):
    try:
        from ai_edge_litert.interpreter import Interpreter  # noqa: PLC0415
    except ImportError:
        import tensorflow as tf  # noqa: PLC0415

        Interpreter = tf.lite.Interpreter  # noqa: N806
    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    return it


def _tflite_detections(path: Path, batches: list[dict], cfg: pp.PostprocessConfig) -> list[dict]:
    """Detections (original pixels) of a TFLite file over eval batches, in runner.collect_detections' order."""
    it = _interpreter(path)
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    detections = []
    for batch in batches:
        it.set_tensor(inp['index'], batch['image'].astype(np.float32))
        it.invoke()
        sizes = np.asarray(batch['orig_size']).reshape(-1, 2)
        det = runtimes.tflite_detections(it.get_tensor(out['index']), cfg, sizes)
        for b in range(len(sizes)):
            if batch['valid'][b] > 0:
                keep = np.arange(det['boxes'].shape[1]) < det['count'][b]
                detections.append({'boxes': det['boxes'][b][keep].astype(np.float64),
                                   'scores': det['scores'][b][keep].astype(np.float64),
                                   'classes': det['classes'][b][keep].astype(np.int64)})
    return detections


def main(_) -> None:
    f = flags.FLAGS
    config = run_config.resolve(f.config, f.workdir)
    model, variables, spec = inference.load_detector(config, f.workdir, fold=True)
    cfg = pp.map_postprocess_config(config, spec)
    data = input_pipeline.Data(config)
    batches = list(data.eval_batches(f.batch_size, split='test'))
    reference, ground_truth = runner.collect_detections(cfg, model, variables, batches)
    results = {'jax_float32': metrics.voc_map(reference, ground_truth, spec.num_classes)['map']}
    calibration = runtimes.calibration_canvases(config, f.calibration_images, f.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        for quantize in runtimes.QUANTIZE:
            path = runtimes.export_tflite(model, variables, cfg, Path(tmp) / f'{quantize}.tflite', quantize=quantize,
                                          batch_size=f.batch_size, calibration=calibration)
            dets = _tflite_detections(path, batches, cfg)
            for d, r in zip(dets, reference, strict=True):
                d['image_id'] = r['image_id']
            name = {'none': 'tflite_float32'}.get(quantize, f'tflite_{quantize}')
            results[name] = metrics.voc_map(dets, ground_truth, spec.num_classes)['map']
            results[f'{name}_file_bytes'] = path.stat().st_size
            print(f'{name}: mAP@0.5 {results[name]:.4f} ({path.stat().st_size / 1e6:.2f} MB)', flush=True)
    report = {'config': sys.argv[1:], 'workdir': f.workdir, 'test_images': len(ground_truth),
              'calibration_images': f.calibration_images, 'map50': results,
              'int8_minus_float32': results['tflite_int8'] - results['tflite_float32'],
              'float16_minus_float32': results['tflite_float16'] - results['tflite_float32']}
    print(json.dumps(report, indent=1))
    Path(f.out).parent.mkdir(parents=True, exist_ok=True)
    Path(f.out).write_text(json.dumps(report, indent=1) + '\n')


if __name__ == '__main__':
    app.run(main)
