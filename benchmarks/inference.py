"""Images/s of inference: jitted forward pass + post-processing (decode, letterbox inversion, per-class NMS).

    python benchmarks/inference.py [--out benchmarks/results/inference.json] [--seconds 8]

YOLOv3 and YOLOv3-tiny at 416 with 80 classes (the COCO heads), randomly initialised, batch 1 and 16, float32,
default XLA flags and allocator. For each case: one warm-up call (compile), then timed calls until `--seconds`
have passed (at least `--min-repeats`); the median call time gives images/s. Post-processing is also timed alone
on the model's own outputs, twice: with the default settings (score > 0.3, NMS 0.45, K = 100) and in its worst
case (score threshold 0: every candidate enters NMS, which then runs all K = 100 iterations). The forward pass
alone is also timed with and without BatchNorm folded into the convs (alternating calls; eval/detect fold).

Side by side (`--mode=runtimes`, or `all`): the whole detector on uint8 RGB 416x416 images (letterbox, network
with BatchNorm folded, decode, per-class NMS) in each runtime, calls interleaved round by round in one process:
  jax          jit(export.serving_fn), the function every export contains;
  savedmodel   the jax2tf SavedModel (export.export_savedmodel) through TF's serving signature;
  onnxruntime  the ONNX export (onnx_export.build_onnx) in an ONNX Runtime CPU session; onnxruntime_int8: that
               file with its convolutions quantised to int8 (runtimes.export_onnx, QDQ), calibrated on the timed
               images (a speed figure only; accuracy: benchmarks/quantization.py);
  openvino     the OpenVINO IR converted from that ONNX graph (runtimes.export_openvino), OpenVINO's CPU plugin
               with its defaults (bfloat16 on CPUs with AMX / AVX512-BF16); openvino_f32: float32 forced;
               openvino_int8: the onnxruntime_int8 file in OpenVINO;
  tflite       the network as a float32 .tflite file at a fixed batch in ai-edge-litert's interpreter, plus the
               host decode + NMS (runtimes.tflite_detections, jitted); tflite_int8: that file quantised to
               int8, calibrated on the timed images (a speed figure only; accuracy: benchmarks/quantization.py);
  opencv-dnn   OpenCV's DNN module on the Darknet .cfg + .weights (blobFromImages, forward, NMSBoxesBatched):
               an outside anchor, only where the .cfg is available (--darknet-dir; YOLOv3-tiny in shared/data).
With --darknet-dir holding yolov3-tiny.cfg/.weights all four run the official COCO weights; YOLOv3 runs with
random weights (saved as a .weights file with a generated yolov3.cfg for OpenCV) unless yolov3.cfg/.weights are
there too. Results in
benchmarks/results/inference_runtimes.json, with ratios to OpenCV DNN measured in the same run.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a checkout without `pip install -e .`

import jax  # noqa: E402
import numpy as np  # noqa: E402

from yolo_jax import cpu_env, darknet, export, inference  # noqa: E402
from yolo_jax import postprocess as pp  # noqa: E402
from yolo_jax.defaults import model_config  # noqa: E402
from yolo_jax.models import create_model, fold_variables, init_variables  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SIZE = 416


def median_seconds(fn, seconds: float, min_repeats: int) -> tuple[float, int]:
    """(median wall time of fn(), number of timed calls) after one warm-up call."""
    jax.block_until_ready(fn())
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_repeats or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return statistics.median(times), len(times)


def bench_case(model, variables: dict, cfg: pp.PostprocessConfig, images: np.ndarray, args) -> dict:
    """Times forward + post-processing, and post-processing alone (default settings and worst case)."""
    batch = images.shape[0]
    sizes = np.tile(np.array([[480, 640]], np.int32), (batch, 1))  # a 4:3 photo: letterbox bands
    resize = pp.resize_params_batch(sizes, SIZE)
    fsizes = sizes.astype(np.float32)
    predict = inference.make_predict_fn(model, cfg)
    t_total, calls = median_seconds(lambda: predict(variables, images, resize, fsizes), args.seconds, args.min_repeats)
    outputs = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images)
    post = jax.jit(functools.partial(pp.postprocess, cfg=cfg))
    worst = jax.jit(functools.partial(pp.postprocess, cfg=dataclasses.replace(cfg, score_threshold=0.0)))
    t_post, _ = median_seconds(lambda: post(outputs, resize, fsizes), 2.0, 5)
    t_worst, _ = median_seconds(lambda: worst(outputs, resize, fsizes), 2.0, 5)
    dets = jax.device_get(post(outputs, resize, fsizes))
    return dict(
        images_s=batch / t_total, ms_per_image=1e3 * t_total / batch, timed_calls=calls,
        postprocess_ms_per_batch=1e3 * t_post, postprocess_worst_ms_per_batch=1e3 * t_worst,
        detections_per_image=float(dets.valid.sum() / batch),
    )


def folding_speedup(model, variables: dict, mc, images: np.ndarray, rounds: int = 5) -> dict:
    """Forward pass with and without BatchNorm folded (models.fold_variables), timed alternately."""
    folded_model, folded = fold_variables(mc, variables)
    fns = [jax.jit(lambda v, x, m=m: m.apply(v, x, train=False)) for m in (model, folded_model)]
    args = [(variables, images), (folded, images)]
    for fn, a in zip(fns, args):
        jax.block_until_ready(fn(*a))
    times = [[], []]
    for _ in range(rounds):
        for i, (fn, a) in enumerate(zip(fns, args)):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*a))
            times[i].append(time.perf_counter() - t0)
    bn, fold = (statistics.median(t) for t in times)
    return dict(forward_ms_bn=1e3 * bn, forward_ms_folded=1e3 * fold, folding_speedup=bn / fold)


def _street_images(batch: int, darknet_dir: Path) -> np.ndarray:
    """(batch, 416, 416, 3) uint8 RGB: shared/data's street.jpg resized to 416 (random pixels without it)."""
    photo = darknet_dir.parent / 'images' / 'street.jpg'
    if photo.is_file():
        from PIL import Image  # noqa: PLC0415

        with Image.open(photo) as im:
            x = np.asarray(im.convert('RGB').resize((SIZE, SIZE), Image.BILINEAR))
    else:
        x = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    return np.ascontiguousarray(np.broadcast_to(x, (batch, SIZE, SIZE, 3)))


def yolov3_cfg(num_classes: int = 80, size: int = SIZE) -> str:
    """Darknet's yolov3.cfg (inference fields only): Darknet53 + three YOLO heads, the order our conv names follow,
    so a file written by darknet.save_weights loads into OpenCV's Darknet importer."""
    out = [f'[net]\nbatch=1\nwidth={size}\nheight={size}\nchannels=3\n']

    def conv(filters: int, size_: int, stride: int = 1, linear: bool = False) -> None:
        if linear:
            out.append(f'[convolutional]\nsize={size_}\nstride={stride}\npad=1\nfilters={filters}\n'
                       'activation=linear\n')
        else:
            out.append(f'[convolutional]\nbatch_normalize=1\nfilters={filters}\nsize={size_}\nstride={stride}\n'
                       'pad=1\nactivation=leaky\n')

    conv(32, 3)
    for filters, repeats in ((64, 1), (128, 2), (256, 8), (512, 8), (1024, 4)):
        conv(filters, 3, 2)
        for _ in range(repeats):
            conv(filters // 2, 1)
            conv(filters, 3)
            out.append('[shortcut]\nfrom=-3\nactivation=linear\n')
    anchors = '10,13, 16,30, 33,23, 30,61, 62,45, 59,119, 116,90, 156,198, 373,326'
    for i, (filters, mask, route) in enumerate(((512, '6,7,8', None), (256, '3,4,5', 61), (128, '0,1,2', 36))):
        if route is not None:
            out.append('[route]\nlayers=-4\n')
            conv(filters, 1)
            out.append(f'[upsample]\nstride=2\n[route]\nlayers=-1, {route}\n')
        for _ in range(3):
            conv(filters, 1)
            conv(filters * 2, 3)
        conv(3 * (5 + num_classes), 1, linear=True)
        out.append(f'[yolo]\nmask={mask}\nanchors={anchors}\nclasses={num_classes}\nnum=9\n')
        del i
    return '\n'.join(out)


def _opencv_runner(cfg_path: Path, weights_path: Path, score_threshold: float, iou_threshold: float):
    """fn(images uint8 RGB (B, 416, 416, 3)) → per-image kept indices: OpenCV's Darknet pipeline."""
    import cv2  # noqa: PLC0415

    net = cv2.dnn.readNetFromDarknet(str(cfg_path), str(weights_path))
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    names = net.getUnconnectedOutLayersNames()

    def run(images: np.ndarray):
        blob = cv2.dnn.blobFromImages(list(images), 1 / 255.0, (SIZE, SIZE), swapRB=False, crop=False)
        net.setInput(blob)
        outs = net.forward(names)  # per YOLO layer: (B, rows, 5 + C) or (rows, 5 + C) for B = 1
        kept = []
        for b in range(len(images)):
            rows = np.concatenate([o[b] if o.ndim == 3 else o for o in outs])
            cls = rows[:, 5:].argmax(axis=1)
            score = rows[np.arange(len(rows)), 5 + cls]  # OpenCV's region layer already multiplies by objectness
            keep = score > score_threshold
            xywh = rows[keep, :4] * SIZE
            xywh[:, :2] -= xywh[:, 2:] / 2
            kept.append(cv2.dnn.NMSBoxesBatched(xywh.tolist(), score[keep].tolist(), cls[keep].tolist(),
                                                score_threshold, iou_threshold))
        return kept

    return run


def _openvino_runners(model, folded: dict, cfg: pp.PostprocessConfig, tmp: Path, names: list[str],
                      int8_onnx=None) -> dict:
    """OpenVINO's CPU plugin on the IR of runtimes.export_openvino (the ONNX graph: letterbox, network, NMS):
      openvino       compiled with OpenVINO's defaults (latency hint); on CPUs with AMX or AVX512-BF16 its default
                     inference precision is bfloat16 (INFERENCE_PRECISION_HINT), float32 elsewhere;
      openvino_f32   the same IR with INFERENCE_PRECISION_HINT f32 (what the parity check runs);
      openvino_int8  the int8 ONNX file (`int8_onnx()`, the onnxruntime_int8 row's QDQ file) read by OpenVINO."""
    import openvino as ov  # noqa: PLC0415

    from yolo_jax import runtimes  # noqa: PLC0415

    core = ov.Core()
    runners = {}
    if {'openvino', 'openvino_f32'} & set(names):
        xml = str(runtimes.export_openvino(model, folded, cfg, tmp / 'model.xml'))
    if 'openvino' in names:
        runners['openvino'] = core.compile_model(xml, 'CPU')
    if 'openvino_f32' in names:
        runners['openvino_f32'] = core.compile_model(xml, 'CPU', runtimes.OPENVINO_COMPILE)
    if 'openvino_int8' in names:
        runners['openvino_int8'] = core.compile_model(str(int8_onnx()), 'CPU')
    for name, compiled in runners.items():
        print(f'{name}: inference precision {compiled.get_property("INFERENCE_PRECISION_HINT")}', flush=True)
    return {name: (lambda x, c=compiled: c({'images': x})) for name, compiled in runners.items()}


def ort_session(model: str | bytes):
    """An ONNX Runtime CPU session whose worker threads sleep between runs instead of spinning (its default): a
    spinning pool takes the cores from the runtimes interleaved with it, OpenCV DNN included (measured: OpenCV's
    YOLOv3-tiny rate fell from ~22 to ~14-16 img/s beside a spinning session), which flattered ONNX Runtime's ratios."""
    import onnxruntime as ort  # noqa: PLC0415

    options = ort.SessionOptions()
    options.add_session_config_entry('session.intra_op.allow_spinning', '0')
    return ort.InferenceSession(model, options, providers=['CPUExecutionProvider'])


def _onnx_int8_file(model, folded: dict, cfg: pp.PostprocessConfig, tmp: Path, images: np.ndarray) -> Path:
    """The int8 ONNX file of the export command (runtimes.export_onnx(quantize='int8')), calibrated on `images`
    (uint8 (B, 416, 416, 3), the timed ones: a speed figure only). It takes any batch: built once per model."""

    from yolo_jax import runtimes  # noqa: PLC0415

    def calibration():  # float32 canvases in [0, 1]: 416x416 images letterbox to themselves
        return iter([images.astype(np.float32) / 255.0] * 4)

    return runtimes.export_onnx(model, folded, cfg, tmp / 'int8.onnx', quantize='int8', calibration=calibration)


def _tflite_runner(model, folded: dict, cfg: pp.PostprocessConfig, tmp: Path, batch: int, quantize: str,
                   images: np.ndarray):
    """TFLite (`--extra-runtimes` tflite, tflite_int8) at a fixed batch: uint8 → float canvas on the host (the images
    are already 416x416, so the letterbox is the identity), the network in ai-edge-litert's interpreter (all CPU
    threads), then the host decode + NMS that a deployment of the file runs (runtimes.tflite_detections,
    jitted). int8: full-integer post-training quantisation calibrated on the timed images themselves (a speed
    figure only; its accuracy is measured by benchmarks/quantization.py)."""
    from ai_edge_litert.interpreter import Interpreter  # noqa: PLC0415

    from yolo_jax import runtimes  # noqa: PLC0415

    calibration = (lambda: iter([images.astype(np.float32) / 255.0] * 4)) if quantize == 'int8' else None
    path = runtimes.export_tflite(model, folded, cfg, tmp / f'b{batch}_{quantize}.tflite', quantize=quantize,
                                  batch_size=batch, calibration=calibration)
    it = Interpreter(model_path=str(path), num_threads=os.cpu_count())
    it.allocate_tensors()
    inp, out = it.get_input_details()[0]['index'], it.get_output_details()[0]['index']
    sizes = np.full((batch, 2), SIZE, np.int32)

    def run(images: np.ndarray):
        it.set_tensor(inp, images.astype(np.float32) / 255.0)
        it.invoke()
        return runtimes.tflite_detections(it.get_tensor(out), cfg, sizes)

    return run


def side_by_side(args) -> list[dict]:
    """Interleaved timing of the runtimes (module docstring) for each model and batch size."""
    import tempfile  # noqa: PLC0415

    import tensorflow as tf  # noqa: PLC0415

    from yolo_jax import onnx_export  # noqa: PLC0415

    tf.config.set_visible_devices([], 'GPU')
    darknet_dir = Path(args.darknet_dir)

    extra = args.extra_runtimes.split(',')

    def wanted(runtime: str) -> bool:  # --only: these runtimes (and OpenCV DNN, the anchor) in this process
        return not args.only or runtime in args.only.split(',')

    rows = []
    for name in args.models.split(','):
        tmp = tempfile.mkdtemp(prefix='yolo_export_bench_')
        stem = {'yolov3_tiny': 'yolov3-tiny', 'yolov3': 'yolov3'}[name]
        cfg_path, weights_path = darknet_dir / f'{stem}.cfg', darknet_dir / f'{stem}.weights'
        mc = darknet.darknet_model_config(name, num_classes=80, input_size=SIZE)
        if weights_path.is_file():
            variables = darknet.load_weights(str(weights_path), mc)
            source = f'Darknet weights {weights_path.name}'
        else:
            variables = init_variables(create_model(mc), jax.random.key(0))
            source = 'random weights'
            if name == 'yolov3' and not cfg_path.is_file():  # the same random weights as a Darknet cfg + file
                cfg_path, weights_path = Path(tmp) / 'yolov3.cfg', Path(tmp) / 'yolov3.weights'
                cfg_path.write_text(yolov3_cfg())
                darknet.save_weights(weights_path, variables, mc)
        model, folded = fold_variables(mc, {'params': variables['params'], 'batch_stats': variables['batch_stats']})
        cfg = pp.PostprocessConfig(input_size=SIZE, strides=tuple(mc.strides), anchors=tuple(
            tuple(tuple(float(v) for v in a) for a in s) for s in mc.anchors))
        runners = {}
        if wanted('jax'):
            runners['jax'] = functools.partial(jax.jit(export.serving_fn(model, cfg)), folded)
        if wanted('savedmodel'):
            saved = tf.saved_model.load(str(export.export_savedmodel(model, folded, cfg, Path(tmp) / 'sm')))
            signature = saved.signatures['serving_default']
            runners['savedmodel'] = lambda x, f=signature: {k: v.numpy()
                                                            for k, v in f(images=tf.constant(x)).items()}
        if wanted('onnxruntime'):
            session = ort_session(onnx_export.build_onnx(model, folded, cfg).SerializeToString())
            runners['onnxruntime'] = lambda x, s=session: s.run(None, {'images': x})
        int8_onnx = functools.cache(functools.partial(_onnx_int8_file, model, folded, cfg, Path(tmp),
                                                      _street_images(1, darknet_dir)))
        if 'onnxruntime_int8' in extra and wanted('onnxruntime_int8'):
            session = ort_session(str(int8_onnx()))
            runners['onnxruntime_int8'] = lambda x, s=session: s.run(None, {'images': x})
        openvino = [r for r in ('openvino', 'openvino_f32', 'openvino_int8') if r in extra and wanted(r)]
        if openvino:
            runners.update(_openvino_runners(model, folded, cfg, Path(tmp), openvino, int8_onnx))
        if cfg_path.is_file() and weights_path.is_file():
            runners['opencv-dnn'] = _opencv_runner(cfg_path, weights_path, cfg.score_threshold, cfg.iou_threshold)
        for batch in (int(b) for b in args.runtime_batches.split(',')):
            images = _street_images(batch, darknet_dir)
            for quantize in ('none', 'int8'):  # the files have a fixed batch
                runtime = 'tflite' if quantize == 'none' else f'tflite_{quantize}'
                if runtime in extra and wanted(runtime):
                    runners[runtime] = _tflite_runner(model, folded, cfg, Path(tmp), batch, quantize, images)
            for fn in runners.values():  # warm-up: compile / first-call allocations
                jax.block_until_ready(fn(images))
            times = {k: [] for k in runners}
            start = time.perf_counter()
            while (min(len(v) for v in times.values()) < args.min_repeats
                   or time.perf_counter() - start < args.seconds * len(runners)):
                for k, fn in runners.items():
                    t = time.perf_counter()
                    jax.block_until_ready(fn(images))
                    times[k].append(time.perf_counter() - t)
            med = {k: statistics.median(v) for k, v in times.items()}
            for k, t in med.items():
                row = dict(model=name, weights=source, batch=batch, runtime=k, images_s=batch / t,
                           ms_per_image=1e3 * t / batch, timed_calls=len(times[k]))
                if 'opencv-dnn' in med:
                    row['vs_opencv_dnn'] = med['opencv-dnn'] / t
                rows.append(row)
                ratio = f', {row["vs_opencv_dnn"]:.2f}x OpenCV DNN' if 'vs_opencv_dnn' in row else ''
                print(f'{name:<12} batch {batch:>2} {k:<12} {row["images_s"]:7.2f} img/s '
                      f'({row["ms_per_image"]:.1f} ms/img, {len(times[k])} calls){ratio}', flush=True)
    return rows


def cpu_model() -> str:
    """The CPU's model name, family / model numbers and the instruction sets that decide the int8 and bfloat16
    paths (/proc/cpuinfo; ratios against OpenCV differ between AMD and Intel machines, and a VM's name may be as
    plain as 'Intel(R) Xeon(R) Processor')."""
    try:
        lines = Path('/proc/cpuinfo').read_text().splitlines()
    except OSError:
        return platform.processor()
    field = {}
    for ln in lines:
        if ':' in ln:
            key, value = (part.strip() for part in ln.split(':', 1))
            field.setdefault(key, value)
    isa = [f for f in ('avx2', 'avx512f', 'avx512_vnni', 'avx_vnni', 'avx512_bf16', 'amx_bf16', 'amx_int8')
           if f in field.get('flags', '').split()]
    return (f'{field.get("model name", platform.processor())} (family {field.get("cpu family", "?")} model '
            f'{field.get("model", "?")}; {" ".join(isa)})')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', default=str(REPO / 'benchmarks' / 'results' / 'inference.json'))
    parser.add_argument('--seconds', type=float, default=8.0, help='timed seconds per measurement (at least)')
    parser.add_argument('--min-repeats', type=int, default=2)
    parser.add_argument('--batches', default='1,16')
    parser.add_argument('--models', default='yolov3_tiny,yolov3')
    parser.add_argument('--mode', choices=('all', 'jax', 'runtimes'), default='all',
                        help='jax: our forward/post-processing rows; runtimes: JAX vs exports vs OpenCV DNN')
    parser.add_argument('--runtime-batches', default='1,8')
    parser.add_argument('--darknet-dir', default=str(REPO.parent / 'shared' / 'data' / 'darknet'),
                        help='folder with <model>.cfg/.weights (yolov3-tiny, yolov3) for the OpenCV DNN rows')
    parser.add_argument('--extra-runtimes',
                        default='openvino,openvino_f32,openvino_int8,tflite,tflite_int8,onnxruntime_int8',
                        help='also time these in --mode=runtimes (installed separately: pip install -e .[openvino], '
                        '.[tflite]); empty for none')
    parser.add_argument('--only', default='',
                        help='--mode=runtimes: time only these runtimes (comma list) beside OpenCV DNN, e.g. one per '
                        'process: in one process the runtimes\' thread pools may slow each other')
    parser.add_argument('--runtimes-out', default=str(REPO / 'benchmarks' / 'results' / 'inference_runtimes.json'))
    parser.add_argument('--ynn', action='store_true',
                        help=f'set {cpu_env.YNN_DOT_FLAG} (as main.py does for float32) for JAX and TF XLA alike')
    args = parser.parse_args()
    if args.ynn:
        cpu_env.set_ynn_dot_flag(True)  # before the first computation initialises the XLA backend
    if args.mode in ('all', 'runtimes'):
        import cv2  # noqa: PLC0415
        import onnxruntime as ort  # noqa: PLC0415

        rows = side_by_side(args)
        meta = dict(input_size=SIZE, num_classes=80, dtype='float32', cpus=os.cpu_count(), jax=jax.__version__,
                    onnxruntime=ort.__version__, opencv=cv2.__version__, opencv_threads=cv2.getNumThreads(),
                    machine=platform.processor() or platform.machine(), cpu_model=cpu_model(),
                    xla_flags=os.environ.get('XLA_FLAGS', ''), seconds=args.seconds, interleaved=True,
                    command=' '.join(sys.argv))
        out = Path(args.runtimes_out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(dict(meta=meta, results=rows), indent=2) + '\n')
        print(f'wrote {out}')
        if args.mode == 'runtimes':
            return

    rng = np.random.default_rng(0)
    rows = []
    for name in args.models.split(','):
        mc = model_config(name, num_classes=80, input_size=SIZE)
        model = create_model(mc)
        variables = init_variables(model, jax.random.key(0))
        cfg = pp.PostprocessConfig(input_size=SIZE, strides=tuple(mc.strides), anchors=tuple(
            tuple(tuple(float(v) for v in a) for a in s) for s in mc.anchors))
        for batch in (int(b) for b in args.batches.split(',')):
            images = rng.uniform(size=(batch, SIZE, SIZE, 3)).astype(np.float32)
            rows.append(dict(model=name, batch=batch, **bench_case(model, variables, cfg, images, args),
                             **folding_speedup(model, variables, mc, images)))
            r = rows[-1]
            print(f'{name:<12} batch {batch:>2}: {r["images_s"]:7.2f} img/s ({r["ms_per_image"]:.1f} ms/img, '
                  f'{r["timed_calls"]} calls); post-processing {r["postprocess_ms_per_batch"]:.1f} ms/batch, '
                  f'worst case {r["postprocess_worst_ms_per_batch"]:.1f} ms/batch; forward with BN folded '
                  f'{r["folding_speedup"]:.2f}x', flush=True)

    print(f'\nInference at {SIZE}x{SIZE}, 80 classes, float32, {os.cpu_count()} CPUs, {jax.devices()[0].platform}')
    print(f'{"model":<12} {"batch":>5} {"img/s":>8} {"ms/img":>8} {"post ms/batch":>14} {"post worst":>11} '
          f'{"dets/img":>9} {"BN folded":>9}')
    for r in rows:
        print(f'{r["model"]:<12} {r["batch"]:>5} {r["images_s"]:>8.2f} {r["ms_per_image"]:>8.1f} '
              f'{r["postprocess_ms_per_batch"]:>14.2f} {r["postprocess_worst_ms_per_batch"]:>11.2f} '
              f'{r["detections_per_image"]:>9.1f} {r["folding_speedup"]:>8.2f}x')
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(
        input_size=SIZE, num_classes=80, dtype='float32', cpus=os.cpu_count(), jax=jax.__version__,
        backend=jax.devices()[0].platform, device=jax.devices()[0].device_kind,
        machine=platform.processor() or platform.machine(), xla_flags=os.environ.get('XLA_FLAGS', ''),
        seconds=args.seconds,
    )
    out.write_text(json.dumps(dict(meta=meta, results=rows), indent=2) + '\n')
    print(f'wrote {out}')


if __name__ == '__main__':
    main()
