"""Exports for the runtimes users deploy to beyond SavedModel / ONNX / StableHLO: TFLite (LiteRT), OpenVINO, TensorRT,
and int8 ONNX (ONNX Runtime's post-training quantisation).

    python -m yolo_jax.export ... --format=tflite --quantize=none|float16|int8 [--batch_size=1]
    python -m yolo_jax.export ... --format=onnx --quantize=int8 [--calibration_images=200]
    python -m yolo_jax.export ... --format=openvino --output=model.xml
    python -m yolo_jax.export ... --format=tensorrt --output=model.engine   (on a machine with an NVIDIA GPU)

* tflite: the network only. TFLite's converter legalises the StableHLO of `jax2tf` to builtin ops; with symbolic
  shapes (the SavedModel's serving function) it cannot ("failed to legalize operation 'mhlo.reduce'" for the
  post-processing's argmax, `dynamic_gather` for a symbolic batch), so the file has a fixed batch and input size;
  with static shapes decoding and NMS would convert, but int8 ruins a calibrated decoding (see `raw_fn`). So the
  file maps a letterboxed float32 canvas (B, S, S, 3) in [0, 1] (data/letterbox.py, or `export.letterbox_images`)
  to 'raw' (B, N, 5 + C), the raw maps flattened (N = sum over scales of cells x anchors); the host runs
  `tflite_detections` (decode, undo the letterbox, threshold, per-class NMS: the JAX path's own code) or its own.
  --quantize=float16 stores float16 weights (computes in float32); int8 is full-integer post-training quantisation
  (float input and output) calibrated on letterboxed training images (--calibration_images).
* onnx --quantize=int8: the ONNX file of yolo_jax/onnx_export.py (same input and outputs: uint8 images of any
  size → detections in original pixels) with its Conv nodes quantised by `onnxruntime.quantization` in QDQ form
  (`quantize_onnx_int8`): 7-bit int8 weights per output channel, uint8 activations calibrated (min/max) on
  letterboxed training images (--calibration_images); letterbox, decoding and NMS stay float32. Made for ONNX
  Runtime's CPU provider (Conv is ~91% of its time for YOLOv3-tiny).
* openvino: the ONNX graph of yolo_jax/onnx_export.py (letterbox, network, NMS) converted by
  `openvino.convert_model` and saved as model.xml + model.bin with float32 weights (OpenVINO's default would
  compress them to float16). Compile it with `OPENVINO_COMPILE` (recorded in its metadata JSON as
  `compile_options`; the parity check does): on CPUs with AMX or AVX512-BF16 OpenVINO's CPU plugin otherwise runs
  float32 models in bfloat16 (measured on an Intel Xeon with AMX: boxes 0.2 px, scores 1.4e-3 from JAX's in
  tests/test_parity.py's check), and an IR's rt_info cannot carry the precision (the CPU plugin ignores it there).
* tensorrt: an engine serialised by TensorRT's ONNX parser from the same ONNX graph, for the local GPU (an engine
  only runs on the GPU model it was built for). Without an NVIDIA GPU the command stops with one error line.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from yolo_jax import decode as decode_lib
from yolo_jax import postprocess as pp
from yolo_jax.errors import FlagError

QUANTIZE = ('none', 'float16', 'int8')
QUANTIZE_BY_FORMAT = {'tflite': QUANTIZE, 'onnx': ('none', 'int8')}  # every other format: 'none' only
# --calibration_images' default per format, measured on MNIST quick (benchmarks/README.md): TFLite int8 lost less
# with 1000 images than 300; ONNX int8 (min/max ranges, which only widen with more images) lost 0.0018 / 0.0063 /
# 0.0100 / 0.0121 mAP@0.5 with 100 / 200 / 500 / 1000.
CALIBRATION_IMAGES = {'tflite': 1000, 'onnx': 200}
ONNX_CALIBRATION_BATCH = 1  # the ONNX graph takes any batch; 1 needs no padding images (eval_batches pads)
TFLITE_OUTPUT = 'raw'


def raw_fn(model: Any) -> Callable[[dict, jax.Array], jax.Array]:
    """fn(variables, canvas (B, S, S, 3) float32 in [0, 1]) → (B, N, 5 + C) the network's raw maps, each scale's
    (B, s, s, A*(5+C)) flattened to (B, s*s*A, 5+C), scales in stride order: t_x, t_y, t_w, t_h, objectness logit,
    C class logits (`split_raw`'s layout). The TFLite file computes this.

    Why raw and not decoded: int8 quantises each tensor with one scale. Decoded, the concatenated box coordinates
    (pixels) and probabilities (0..1) share it, and calibrated decoding collapsed to one or two levels (MNIST quick:
    mAP@0.5 0.91 → 0.00); raw logits share one range (about -15..10) and lose ~0.08 on average.
    """

    def fn(variables: dict, canvas: jax.Array) -> jax.Array:
        outputs = model.apply(variables, canvas, train=False)
        return jnp.concatenate([o.reshape(o.shape[0], -1, o.shape[-1] // _anchors(o, model)) for o in outputs], 1)

    return fn


def _anchors(output: jax.Array, model: Any) -> int:
    """Anchors per cell of a raw map: its channels are A*(5 + num_classes)."""
    return output.shape[-1] // (5 + int(model.num_classes))


def decode_raw(raw: np.ndarray, cfg: pp.PostprocessConfig) -> jax.Array:
    """raw (B, N, 5 + C) of `raw_fn` → (B, N, 5 + C) decoded (x, y, w, h input pixels, objectness, class
    probabilities), the input of `postprocess.postprocess_decoded`: split back into scales (s = S / stride) and
    decoded by decode.decode_all."""
    raw = jnp.asarray(raw, jnp.float32)
    b, _, c = raw.shape
    maps, start = [], 0
    for anchors, stride in zip(cfg.anchors, cfg.strides, strict=True):
        s, a = cfg.input_size // stride, len(anchors)
        maps.append(raw[:, start:start + s * s * a].reshape(b, s, s, a, c))
        start += s * s * a
    return pp.flatten_decoded(decode_lib.decode_all(maps, cfg.anchors, cfg.strides, cfg.scale_xy or None))


def _unsupported_op(message: str) -> str:
    """The first op TFLite's converter could not legalise and where the model's code emits it, from its error
    text (MLIR diagnostics: "file.py:LINE:COL: error: failed to legalize operation 'mhlo.reduce'")."""
    op = re.search(r"operation '([\w.]+)'|'([\w.]+)' op is not", message)
    where = re.search(r'(yolo_jax/[\w/]+\.py):(\d+)', message)
    name = next((g for g in op.groups() if g), '?') if op else 'an op'
    return f'{name}' + (f' (emitted at {where.group(1)}:{where.group(2)})' if where else '')


def export_tflite(
    model: Any, variables: dict, cfg: pp.PostprocessConfig, output: str | Path, *, quantize: str = 'none',
    batch_size: int = 1, calibration: Callable[[], Iterator[np.ndarray]] | None = None,
) -> Path:
    """Writes the network (`raw_fn`) as a .tflite file with a fixed batch.

    calibration (int8 only): a callable yielding float32 canvases (batch_size, S, S, 3) in [0, 1].
    Raises FlagError naming the op when the converter cannot express the graph.
    """
    import tensorflow as tf  # noqa: PLC0415
    from jax.experimental import jax2tf  # noqa: PLC0415

    if quantize not in QUANTIZE:
        raise FlagError(f'--quantize={quantize!r}: expected one of {", ".join(QUANTIZE)}')
    if quantize == 'int8' and calibration is None:
        raise FlagError('--quantize=int8 needs calibration images (--calibration_images > 0)')
    try:  # JAX owns the accelerators; TF only traces and converts
        tf.config.set_visible_devices([], 'GPU')
    except RuntimeError:
        pass
    variables = jax.device_get(variables)
    fn = raw_fn(model)
    size = cfg.input_size
    tf_fn = jax2tf.convert(lambda x: fn(variables, x), with_gradient=False, native_serialization_platforms=('cpu',))
    spec = tf.TensorSpec((batch_size, size, size, 3), tf.float32, name='images')
    concrete = tf.function(tf_fn, autograph=False, input_signature=[spec]).get_concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete])
    if quantize == 'float16':
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == 'int8':
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([np.asarray(x, np.float32)] for x in calibration())
    try:
        flat = converter.convert()
    except Exception as e:  # ConverterError: MLIR diagnostics, pages long
        raise FlagError(f'--format=tflite cannot express {_unsupported_op(str(e))} of this network') from e
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(flat)
    return output


def calibration_canvases(config: Any, count: int, batch_size: int) -> Callable[[], Iterator[np.ndarray]]:
    """A callable yielding the first `count` training images (rounded up to whole batches), letterboxed to the
    network input exactly as evaluation does (input_pipeline.eval_dataset), as float32 (batch_size, S, S, 3)."""
    from yolo_jax import input_pipeline  # noqa: PLC0415  (TF data; only for int8)

    def batches() -> Iterator[np.ndarray]:
        data = input_pipeline.Data(config)
        n = 0
        for batch in data.eval_batches(batch_size, split='train'):
            if n >= count:
                break
            n += batch_size
            yield batch['image'].astype(np.float32)

    return batches


def _onnx_file(model: Any, variables: dict, cfg: pp.PostprocessConfig, folder: Path) -> Path:
    """yolo_jax/onnx_export.py's graph written to folder/model.onnx (the input of OpenVINO and TensorRT)."""
    from yolo_jax import onnx_export  # noqa: PLC0415

    return onnx_export.export_onnx(model, variables, cfg, folder / 'model.onnx')


OPENVINO_COMPILE = {'INFERENCE_PRECISION_HINT': 'f32'}  # core.compile_model(xml, 'CPU', OPENVINO_COMPILE)


def export_openvino(model: Any, variables: dict, cfg: pp.PostprocessConfig, output: str | Path) -> Path:
    """OpenVINO IR: output (…/model.xml) + the .bin beside it, float32 weights; same inputs and outputs as the
    ONNX file (images uint8 (B, H, W, 3) → boxes, scores, classes, count)."""
    try:
        import openvino as ov  # noqa: PLC0415
    except ImportError as e:
        raise FlagError("--format=openvino needs OpenVINO: pip install -e '.[openvino]'") from e
    output = Path(output)
    if output.suffix != '.xml':
        raise FlagError(f'--output={output}: an OpenVINO model is a .xml file (its weights go beside it in .bin)')
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = _onnx_file(model, variables, cfg, Path(tmp))
        ov.save_model(ov.convert_model(str(onnx_path)), str(output), compress_to_fp16=False)
    return output


def has_nvidia_gpu() -> bool:
    """Whether this machine shows an NVIDIA GPU (its driver's device files or nvidia-smi)."""
    return Path('/dev/nvidiactl').exists() or shutil.which('nvidia-smi') is not None


def export_tensorrt(
    model: Any, variables: dict, cfg: pp.PostprocessConfig, output: str | Path, *, max_batch: int = 8,
    max_side: int = 1920,
) -> Path:
    """A TensorRT engine built from the ONNX graph for the local GPU; dynamic input (1..max_batch, 32..max_side,
    32..max_side, 3), optimised for (1, S, S, 3). FlagError (one line) without a GPU or without `tensorrt`."""
    if not has_nvidia_gpu():
        raise FlagError('--format=tensorrt builds an engine for the local NVIDIA GPU, and this machine has none: '
                        'run the export on the machine (GPU model) that will run the engine')
    try:
        import tensorrt as trt  # noqa: PLC0415
    except ImportError as e:
        raise FlagError("--format=tensorrt needs TensorRT: pip install -e '.[tensorrt]'") from e
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = _onnx_file(model, variables, cfg, Path(tmp))
        if not parser.parse(onnx_path.read_bytes()):
            errors = '; '.join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise FlagError(f'--format=tensorrt: TensorRT cannot parse the ONNX graph: {errors}'.replace('\n', ' '))
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    s = cfg.input_size
    profile.set_shape('images', (1, 32, 32, 3), (1, s, s, 3), (max_batch, max_side, max_side, 3))
    config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise FlagError('--format=tensorrt: TensorRT could not build an engine from the ONNX graph (see its log '
                        'above)')
    output.write_bytes(bytes(engine))
    return output


def tflite_detections(raw: np.ndarray, cfg: pp.PostprocessConfig, orig_sizes: np.ndarray) -> dict[str, np.ndarray]:
    """Host post-processing of a TFLite file's output: raw (B, N, 5 + C) (`raw_fn`) for images of original (h, w)
    `orig_sizes` (B, 2) → {'boxes' (B, K, 4) xyxy original pixels, 'scores', 'classes', 'count'}: decoding,
    undoing the letterbox, threshold and NMS exactly as the JAX path (postprocess.postprocess_decoded)."""
    resize = pp.resize_params_batch(np.asarray(orig_sizes), cfg.input_size, cfg.resize_mode)
    det = jax.device_get(_decode_and_nms(raw, resize, np.asarray(orig_sizes), cfg))
    return {'boxes': det.boxes, 'scores': det.scores, 'classes': det.classes, 'count': det.valid.sum(axis=1)}


@functools.partial(jax.jit, static_argnames='cfg')
def _decode_and_nms(raw: jax.Array, resize: jax.Array, orig_sizes: jax.Array, cfg: pp.PostprocessConfig):
    """tflite_detections' device part, compiled once per config and shape (eagerly, NMS ran op by op)."""
    return pp.postprocess_decoded(decode_raw(raw, cfg), resize, orig_sizes, cfg)


def check_quantize(fmt: str, quantize: str) -> None:
    """FlagError (one line) unless --format=`fmt` can be written with --quantize=`quantize`
    (QUANTIZE_BY_FORMAT); checked before the checkpoint loads."""
    allowed = QUANTIZE_BY_FORMAT.get(fmt, ('none',))
    if quantize not in allowed:
        takes = '; '.join(f'{f} takes {", ".join(q)}' for f, q in QUANTIZE_BY_FORMAT.items())
        raise FlagError(f'--quantize={quantize} does not apply to --format={fmt} ({takes}; the other formats '
                        'none)')


def canvas_images(canvas: np.ndarray) -> np.ndarray:
    """float32 canvases (B, S, S, 3) in [0, 1] → uint8 images (B, S, S, 3): the ONNX graph letterboxes an S x S
    image to itself (scale 1, no bands), so these reach its network as the canvases, up to the uint8 rounding."""
    return np.round(np.clip(np.asarray(canvas, np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


def quantize_onnx_int8(
    float_model: str | Path, output: str | Path, calibration: Callable[[], Iterator[np.ndarray]], *,
    method: str = 'minmax', average_ranges: bool = False, per_channel: bool = True, reduce_range: bool = True,
    weights: str = 'int8',
) -> Path:
    """Writes `float_model` (an onnx_export.build_onnx file: 'images' uint8 (B, H, W, 3) → boxes, scores, classes,
    count, unchanged) as `output` with its Conv nodes quantised by ONNX Runtime in QDQ format (QuantizeLinear /
    DequantizeLinear pairs around each Conv, which ONNX Runtime's CPU provider fuses into integer convolutions).

    Weights int8 per output channel (`per_channel`; `weights`='uint8' for uint8), activations uint8 with ranges
    calibrated on `calibration` (a callable yielding float32 canvases (B, S, S, 3) in [0, 1], fed as uint8 S x S
    images) by `method` ('minmax', 'entropy', 'percentile': onnxruntime.quantization.CalibrationMethod; min/max
    keeps two numbers per tensor and batch, the histogram methods every activation of every batch in memory);
    `average_ranges` (minmax): the mean of the batches' minima and maxima instead of the extremes.
    Choices, measured on MNIST quick (benchmarks/README.md):
      * Conv only: Conv is ~91% of ONNX Runtime's CPU time for YOLOv3-tiny, and quantising every op type (the
        resize, the decoding's elementwise math) was not faster;
      * `reduce_range` (7-bit int8 weights): ONNX Runtime's uint8 x int8 kernels on x86 CPUs without VNNI (AVX2,
        AVX-512 without VNNI) add pairs of products in int16, which saturates with full 8-bit weights (mAP@0.5
        0.91 → 0.38); 7-bit weights cannot saturate and ran as fast in a short check, uint8 weights no faster
        than float32 (benchmarks/README.md).
    Written atomically (a temporary file in output's folder, then renamed).
    """
    from onnxruntime import quantization as q  # noqa: PLC0415

    methods = {'minmax': q.CalibrationMethod.MinMax, 'entropy': q.CalibrationMethod.Entropy,
               'percentile': q.CalibrationMethod.Percentile}

    class Canvases(q.CalibrationDataReader):
        """calibration()'s canvases as the graph's uint8 'images' feeds."""

        def __init__(self):
            self.batches = iter(calibration())

        def get_next(self) -> dict[str, np.ndarray] | None:
            canvas = next(self.batches, None)
            return None if canvas is None else {'images': canvas_images(canvas)}

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / 'prepared.onnx'
        # ONNX shape inference and constant folding; symbolic shape inference cannot follow the letterbox's
        # data-dependent sizes (skipped: ranges do not need shapes)
        q.quant_pre_process(str(float_model), str(prepared), skip_symbolic_shape=True)
        fd, partial = tempfile.mkstemp(prefix=f'.{output.name}.', suffix='.tmp', dir=output.parent)
        os.close(fd)
        try:
            q.quantize_static(str(prepared), partial, Canvases(), quant_format=q.QuantFormat.QDQ,
                              op_types_to_quantize=['Conv'],
                              activation_type=q.QuantType.QUInt8, reduce_range=reduce_range,
                              weight_type={'int8': q.QuantType.QInt8, 'uint8': q.QuantType.QUInt8}[weights],
                              per_channel=per_channel,
                              calibrate_method=methods[method],
                              extra_options={'CalibMovingAverage': average_ranges})
            os.chmod(partial, 0o644)  # mkstemp creates 0600; a model file is an ordinary file
            os.replace(partial, output)
        except BaseException:
            Path(partial).unlink(missing_ok=True)
            raise
    return output


def export_onnx(
    model: Any, variables: dict, cfg: pp.PostprocessConfig, output: str | Path, *, quantize: str = 'none',
    calibration: Callable[[], Iterator[np.ndarray]] | None = None, **_: Any,
) -> Path:
    """The ONNX file of onnx_export.export_onnx, or (quantize='int8') that file quantised by quantize_onnx_int8
    with `calibration` (float32 canvases (B, S, S, 3) in [0, 1]). Returns the model path."""
    from yolo_jax import onnx_export  # noqa: PLC0415

    check_quantize('onnx', quantize)
    if quantize == 'none':
        return onnx_export.export_onnx(model, variables, cfg, output)
    if calibration is None:
        raise FlagError('--quantize=int8 needs calibration images (--calibration_images > 0)')
    with tempfile.TemporaryDirectory() as tmp:
        return quantize_onnx_int8(_onnx_file(model, variables, cfg, Path(tmp)), output, calibration)


FORMATS = ('tflite', 'openvino', 'tensorrt')


def export_runtime(
    model: Any, variables: dict, cfg: pp.PostprocessConfig, fmt: str, output: str | Path, *,
    quantize: str = 'none', batch_size: int = 1, calibration: Callable[[], Iterator[np.ndarray]] | None = None,
) -> Path:
    """Dispatch of export.export_model for this module's formats; returns the model path."""
    check_quantize(fmt, quantize)
    if fmt == 'tflite':
        return export_tflite(model, variables, cfg, output, quantize=quantize, batch_size=batch_size,
                             calibration=calibration)
    if fmt == 'openvino':
        return export_openvino(model, variables, cfg, output)
    return export_tensorrt(model, variables, cfg, output)


def metadata_changes(fmt: str, cfg: pp.PostprocessConfig, *, quantize: str = 'none', batch_size: int = 1,
                     **_: Any) -> dict[str, Any]:
    """How a file of `fmt` departs from export.metadata's description (TFLite: its input and output; ONNX: how it
    was quantised; OpenVINO: the options to compile it with)."""
    if fmt == 'onnx':
        return {'quantize': quantize} if quantize == 'none' else {
            'quantize': quantize, 'quantization': 'ONNX Runtime QDQ: Conv weights int8 (7-bit range) per output '
                                                  'channel, Conv activations uint8 calibrated (min/max) on training '
                                                  'images; letterbox, decoding and NMS float32'}
    if fmt == 'openvino':
        return {'compile_options': OPENVINO_COMPILE,
                'compile_note': "openvino.Core().compile_model(xml, 'CPU', compile_options): float32 as exported; "
                                "OpenVINO's default on CPUs with AMX or AVX512-BF16 is bfloat16 (faster, boxes "
                                "~0.2 px and scores ~1e-3 off)"}
    if fmt != 'tflite':
        return {}
    s = cfg.input_size
    return {
        'input': f'images: float32 ({batch_size}, {s}, {s}, 3) RGB in [0, 1], letterboxed (data/letterbox.py)',
        'outputs': {TFLITE_OUTPUT: '(batch, N, 5 + C) float32: the raw maps (t_x, t_y, t_w, t_h, objectness '
                                   'logit, class logits) flattened scale by scale (strides ascending, then rows, '
                                   'columns, anchors); then runtimes.tflite_detections'},
        'quantize': quantize, 'batch_size': batch_size, 'anchors': [list(map(list, a)) for a in cfg.anchors],
        'strides': list(cfg.strides),
    }


def define_flags() -> None:
    """The export command's flags for these formats."""
    from absl import flags  # noqa: PLC0415

    flags.DEFINE_enum('quantize', 'none', list(QUANTIZE), 'tflite: weights as stored (none), float16 weights, or '
                      'int8 post-training quantisation calibrated on training images; onnx: none or int8 (its Conv '
                      'nodes, for ONNX Runtime).')
    flags.DEFINE_integer('batch_size', 1, 'tflite: the fixed batch of the file.')
    flags.DEFINE_integer('calibration_images', None, 'int8: training images that calibrate the quantisation; '
                         'default 1000 for tflite, 200 for onnx (runtimes.CALIBRATION_IMAGES: measured on MNIST '
                         'quick, benchmarks/README.md).')


def options_from_flags(flags_: Any, config: Any) -> dict[str, Any]:
    """export_runtime's (and export_onnx's) keyword options from the command's flags (int8: calibration on the
    run's training split, in batches of the TFLite file's batch, or ONNX_CALIBRATION_BATCH)."""
    if flags_.batch_size < 1:
        raise FlagError(f'--batch_size={flags_.batch_size}: must be at least 1')
    options: dict[str, Any] = {'quantize': flags_.quantize, 'batch_size': flags_.batch_size}
    if flags_.quantize == 'int8':
        count = flags_.calibration_images
        count = CALIBRATION_IMAGES[flags_.format] if count is None else count
        if count < 1:
            raise FlagError(f'--calibration_images={count}: int8 needs at least 1')
        batch = flags_.batch_size if flags_.format == 'tflite' else ONNX_CALIBRATION_BATCH
        options['calibration'] = calibration_canvases(config, count, batch)
    return options
