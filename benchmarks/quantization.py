"""mAP@0.5 of a checkpoint's quantised exports: TFLite float32 / float16 weights / int8, ONNX float32 / int8, and
the OpenVINO IR at float32 and at OpenVINO's default precision (bfloat16 on CPUs with AMX or AVX512-BF16).

    python benchmarks/quantization.py --config=configs/mnist.py:quick --workdir=/tmp/track_quick \
        --out=benchmarks/results/quantization_mnist_quick.json [--calibration_images=N] [--batch_size=8] \
        [--formats=tflite,onnx,openvino] [--onnx_variants=minmax+full_range,entropy,...]

Each TFLite file (yolo_jax.runtimes.export_tflite: network + decoding) runs with ai-edge-litert (TF's
interpreter without it) on the test split's letterboxed images; its output goes through the same host
post-processing (`runtimes.tflite_detections` with the mAP settings, postprocess.map_postprocess_config) and the
same VOC mAP@0.5 as `--mode=eval` (evaluation/runner.collect_detections gives the JAX reference and the ground
truth). int8 is calibrated on the first --calibration_images training images (default: the export command's,
runtimes.CALIBRATION_IMAGES: 1000 for TFLite, 200 for ONNX).

The ONNX files (export.export_model: letterbox + network + decode + NMS in the graph; int8: runtimes.export_onnx,
Conv quantised by ONNX Runtime) are exported with the mAP settings as their thresholds (the command would take
them as --config.eval.score_threshold / max_detections; checked against the file's JSON) and run in ONNX
Runtime on the same letterboxed canvases, as uint8 S x S images (`onnx_detections`). --onnx_variants adds int8
files calibrated otherwise (runtimes.quantize_onnx_int8's method, per-tensor weights). The OpenVINO IR
(runtimes.export_openvino, same graph) runs on the same uint8 canvases, and with onnx the int8 ONNX file runs in
OpenVINO too. Prints and writes JSON; no timings.
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

from yolo_jax import export, inference, input_pipeline, parity_runner, run_config, runtimes  # noqa: E402
from yolo_jax import postprocess as pp  # noqa: E402
from yolo_jax.data import letterbox  # noqa: E402
from yolo_jax.evaluation import metrics, runner  # noqa: E402

config_flags.DEFINE_config_file('config', 'configs/mnist.py:quick', 'Config of the checkpoint.')
flags.DEFINE_string('workdir', '/tmp/track_quick', 'Training directory (read only).')
flags.DEFINE_string('out', 'benchmarks/results/quantization_mnist_quick.json', 'JSON output.')
flags.DEFINE_integer('calibration_images', None, 'int8: training images that calibrate the quantisation (default: '
                     'runtimes.CALIBRATION_IMAGES of each format).')
flags.DEFINE_integer('batch_size', 8, 'Batch of the TFLite files and of evaluation.')
flags.DEFINE_list('formats', ['tflite', 'onnx'], 'Which files to measure: tflite, onnx, openvino.')
flags.DEFINE_list('onnx_variants', [], 'Extra ONNX int8 files: a calibration method (minmax, entropy, percentile; '
                  'entropy / percentile hold every calibration activation in memory) with options joined by +: '
                  'average (minmax: mean of the images\' ranges, not their extremes), per_tensor (one weight scale '
                  'per tensor, not per output channel), full_range (8-bit, not 7-bit int8 weights), u8_weights '
                  '(uint8 weights), e.g. minmax+full_range.')


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
        detections += [_detections(det, b) for b in range(len(sizes)) if batch['valid'][b] > 0]
    return detections


def _detections(det: dict, b: int) -> dict:
    """Image b's valid detections of a {'boxes', 'scores', 'classes', 'count'} batch, in collect_detections' form."""
    keep = np.arange(det['boxes'].shape[1]) < det['count'][b]
    return {'boxes': det['boxes'][b][keep].astype(np.float64), 'scores': det['scores'][b][keep].astype(np.float64),
            'classes': det['classes'][b][keep].astype(np.int64)}


def onnx_detections(path: Path, batches: list[dict], cfg: pp.PostprocessConfig) -> list[dict]:
    """Detections (original pixels) of an ONNX file in ONNX Runtime over eval batches (graph_detections); the file
    runs as the parity check runs it (parity_runner.load_onnx)."""
    return graph_detections(parity_runner.load_onnx(str(path)), batches, cfg)


def openvino_detections(path: Path, batches: list[dict], cfg: pp.PostprocessConfig, options: dict) -> tuple[
        list[dict], str]:
    """(detections as graph_detections gives them, the inference precision) of an OpenVINO IR compiled for the
    CPU with `options` (parity_runner.load_openvino; {} = OpenVINO's defaults: bfloat16 on CPUs with AMX or
    AVX512-BF16)."""
    import openvino as ov  # noqa: PLC0415

    precision = options.get('INFERENCE_PRECISION_HINT') or ov.Core().get_property('CPU', 'INFERENCE_PRECISION_HINT')
    return (graph_detections(parity_runner.load_openvino(str(path), options), batches, cfg),
            precision if isinstance(precision, str) else precision.get_type_name())


def graph_detections(run, batches: list[dict], cfg: pp.PostprocessConfig) -> list[dict]:
    """Detections (original pixels) of a file holding onnx_export's graph (`run`: uint8 images → {'boxes',
    'scores', 'classes', 'count'}) over eval batches, in runner.collect_detections' order.

    The file gets each letterboxed canvas (B, S, S, 3) as a uint8 S x S image (round(x * 255): the canvases'
    bilinear values rounded to the file's input type): its letterbox of an S x S image is the identity, so its
    boxes are xyxy canvas (input) pixels, mapped here to the original image by data/letterbox.unletterbox_boxes
    (the geometry of orig_size the JAX path uses) and clipped to the image. Thresholds and NMS ran
    in canvas pixels: the same sets as in original pixels for the letterbox (one scale for x and y)."""
    detections = []
    for batch in batches:
        det = run(runtimes.canvas_images(batch['image']))
        sizes = np.asarray(batch['orig_size']).reshape(-1, 2)
        det['boxes'] = np.stack([np.clip(letterbox.unletterbox_boxes(boxes, h, w, cfg.input_size, cfg.resize_mode),
                                         0, [w, h, w, h]) for boxes, (h, w) in zip(det['boxes'], sizes, strict=True)])
        detections += [_detections(det, b) for b in range(len(sizes)) if batch['valid'][b] > 0]
    return detections


def _onnx_files(model, variables, cfg, spec, config, folder: Path, calibration_images: int) -> dict[str, Path]:
    """{row name: ONNX file}: float32 and int8 as the export command writes them (export.export_model with the
    mAP thresholds, checked in the written JSON), then the --onnx_variants calibrations of the float32 file."""
    calibration = runtimes.calibration_canvases(config, calibration_images, runtimes.ONNX_CALIBRATION_BATCH)
    files = {}
    for quantize in ('none', 'int8'):
        name = {'none': 'onnx_float32'}.get(quantize, f'onnx_{quantize}')
        files[name] = export.export_model(model, variables, cfg, 'onnx', folder / f'{name}.onnx', spec.class_names,
                                          quantize=quantize, calibration=calibration)
        meta = json.loads(Path(f'{files[name]}.json').read_text())
        written = (meta['score_threshold'], meta['max_detections'], meta['iou_threshold'], meta['input_size'])
        assert written == (cfg.score_threshold, cfg.max_detections, cfg.iou_threshold, cfg.input_size), written
    for variant in flags.FLAGS.onnx_variants:
        method, *options = variant.split('+')
        files[f'onnx_int8_{variant}'] = runtimes.quantize_onnx_int8(
            files['onnx_float32'], folder / f'{variant}.onnx', calibration, method=method,
            average_ranges='average' in options,
            per_channel='per_tensor' not in options, reduce_range='full_range' not in options,
            weights='uint8' if 'u8_weights' in options else 'int8')
    return files


def main(_) -> None:
    f = flags.FLAGS
    config = run_config.resolve(f.config, f.workdir)
    model, variables, spec = inference.load_detector(config, f.workdir, fold=True)
    cfg = pp.map_postprocess_config(config, spec)
    data = input_pipeline.Data(config)
    batches = list(data.eval_batches(f.batch_size, split='test'))
    reference, ground_truth = runner.collect_detections(cfg, model, variables, batches)
    results = {'jax_float32': metrics.voc_map(reference, ground_truth, spec.num_classes)['map']}
    images = {fmt: runtimes.CALIBRATION_IMAGES[fmt] if f.calibration_images is None else f.calibration_images
              for fmt in f.formats if fmt in runtimes.CALIBRATION_IMAGES}  # openvino: no quantised file
    report = {'config': sys.argv[1:], 'workdir': f.workdir, 'test_images': len(ground_truth),
              'calibration_images': images, 'map50': results}

    def record(name: str, dets: list[dict], path: Path) -> None:
        for d, r in zip(dets, reference, strict=True):
            d['image_id'] = r['image_id']
        results[name] = metrics.voc_map(dets, ground_truth, spec.num_classes)['map']
        results[f'{name}_file_bytes'] = path.stat().st_size
        print(f'{name}: mAP@0.5 {results[name]:.4f} ({path.stat().st_size / 1e6:.2f} MB)', flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        if 'tflite' in f.formats:
            calibration = runtimes.calibration_canvases(config, images['tflite'], f.batch_size)
            for quantize in runtimes.QUANTIZE:
                path = runtimes.export_tflite(model, variables, cfg, Path(tmp) / f'{quantize}.tflite',
                                              quantize=quantize, batch_size=f.batch_size, calibration=calibration)
                record({'none': 'tflite_float32'}.get(quantize, f'tflite_{quantize}'),
                       _tflite_detections(path, batches, cfg), path)
            report['int8_minus_float32'] = results['tflite_int8'] - results['tflite_float32']
            report['float16_minus_float32'] = results['tflite_float16'] - results['tflite_float32']
        onnx_files = {}
        if 'onnx' in f.formats:
            onnx_files = _onnx_files(model, variables, cfg, spec, config, Path(tmp), images['onnx'])
            for name, path in onnx_files.items():
                record(name, onnx_detections(path, batches, cfg), path)
            report['onnx_int8_minus_float32'] = {
                name: results[name] - results['onnx_float32'] for name in results
                if name.startswith('onnx_int8') and not name.endswith('_file_bytes')}
        if 'openvino' in f.formats:  # the IR as exported (float32 weights), at float32 and at OpenVINO's default
            path = runtimes.export_openvino(model, variables, cfg, Path(tmp) / 'model.xml')
            precision = {}
            for name, options in (('openvino_float32', runtimes.OPENVINO_COMPILE), ('openvino_default', {})):
                dets, precision[name] = openvino_detections(path, batches, cfg, options)
                record(name, dets, path.with_suffix('.bin'))
            if 'onnx_int8' in onnx_files:  # the int8 ONNX file in OpenVINO (its other ops at the default precision)
                dets, precision['openvino_onnx_int8'] = openvino_detections(onnx_files['onnx_int8'], batches, cfg, {})
                record('openvino_onnx_int8', dets, onnx_files['onnx_int8'])
            report['openvino_precision'] = precision
            report['openvino_default_minus_float32'] = results['openvino_default'] - results['openvino_float32']
    print(json.dumps(report, indent=1))
    Path(f.out).parent.mkdir(parents=True, exist_ok=True)
    Path(f.out).write_text(json.dumps(report, indent=1) + '\n')


if __name__ == '__main__':
    app.run(main)
