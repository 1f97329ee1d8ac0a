"""Exporting a trained detector for deployment: TF SavedModel, ONNX, or serialised StableHLO.

    python -m yolo_jax.export --config=configs/mnist.py --workdir=DIR --format=savedmodel --output=PATH
    python -m yolo_jax.export --config=configs/mnist.py:tiny --weights=yolov3-tiny.weights \
        --config.model.num_classes=80 --format=onnx --output=model.onnx

Every format computes one function, `serving_fn`: uint8 RGB images (B, H, W, 3) of any size (one size per call)
→ {'boxes' (B, K, 4) float32 x1, y1, x2, y2 in ORIGINAL-image pixels, 'scores' (B, K) float32, 'classes' (B, K)
int32 (-1 in empty slots), 'count' (B,) int32}, best score first, K = config.eval.max_detections. Inside it:

1. the letterbox (or stretch) resize of data/letterbox.py, numerically: TF's half-pixel bilinear resize
   (`tf.image.resize`, no antialias) written as gathers and lerps in TF's order, the integer new size and
   offsets computed in float64 as letterbox.py does (float32 would round a different size for e.g. w = 49);
2. the network with BatchNorm folded into the convs (`inference.load_variables(..., fold=True)`);
3. postprocess.postprocess: decode, undo the letterbox, clip, threshold, per-class NMS.

Formats:
  * savedmodel: `jax2tf.convert` (native serialisation: one XlaCallModule op holding the StableHLO of
    serving_fn, lowered for CPU and CUDA by default), polymorphic in batch, height and width; weights are
    tf.Variables. Signature `serving_default`
    takes `images` uint8 (None, None, None, 3).
  * stablehlo: `jax.export` of serving_fn with the weights as constants, symbolic (b, h, w), serialised to one
    file; `jax.export.deserialize(open(f, 'rb').read()).call(images)` runs it without this package.
  * onnx: see yolo_jax/onnx_export.py (ONNX built from the network's jaxpr plus standard ONNX pre- and
    post-processing ops); hard NMS only. --quantize=int8: the same graph with its convolutions quantised for ONNX
    Runtime (runtimes.quantize_onnx_int8, calibrated on --calibration_images training images); same input and
    outputs, not parity-checked (--check refuses it: its accuracy is an mAP change, benchmarks/quantization.py).
  * tflite (float32, --quantize=float16|int8), openvino, tensorrt: see yolo_jax/runtimes.py (TFLite holds the
    network + decoding only: NMS runs on the host).

Beside each model: `<output>.json` (or PATH/export.json for a SavedModel directory) with the class names,
input size, thresholds and output names (ONNX, TFLite: also `quantize`).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from yolo_jax import postprocess as pp
from yolo_jax import runtimes as runtimes_lib

FORMATS = ('savedmodel', 'onnx', 'stablehlo')  # the serving function's own files (runtimes.FORMATS: the others)
OUTPUT_NAMES = ('boxes', 'scores', 'classes', 'count')
PAD_VALUE = 128.0  # data/letterbox.py's grey
PLATFORMS = ('cpu', 'cuda')  # SavedModel / StableHLO run on CPU or NVIDIA GPUs, wherever they were exported


def resize_geometry(h: Any, w: Any, size: int, mode: str) -> tuple[jax.Array, ...]:
    """Letterbox geometry of an (h, w) image, computed in float64 exactly as data/letterbox.py does.

    h, w: ints or symbolic dimensions. Returns int32 (new_h, new_w, dh, dw) in input pixels and float32
    (scale_x, scale_y) with input = original * scale + offset (the float32 rounding of the float64 scale, as
    postprocess.resize_params_batch).
    """
    with jax.enable_x64(True):
        hf = jnp.asarray(h, jnp.int64).astype(jnp.float64)
        wf = jnp.asarray(w, jnp.int64).astype(jnp.float64)
        if mode == 'letterbox':
            scale = jnp.minimum(size / wf, size / hf)
            new_w = jnp.floor(scale * wf).astype(jnp.int32)
            new_h = jnp.floor(scale * hf).astype(jnp.int32)
            sx = sy = scale.astype(jnp.float32)
        elif mode == 'stretch':
            new_w = new_h = jnp.int32(size)
            sx, sy = (size / wf).astype(jnp.float32), (size / hf).astype(jnp.float32)
        else:
            raise ValueError(f'unknown resize mode {mode!r}; expected one of {pp.RESIZE_MODES}')
    return new_h, new_w, (size - new_h) // 2, (size - new_w) // 2, sx, sy


def _axis_taps(out_size: int, in_size: Any, new: jax.Array, offset: jax.Array) -> tuple[jax.Array, ...]:
    """TF's half-pixel bilinear taps along one axis of the S-pixel canvas (resize_bilinear_op.cc).

    Canvas pixel i shows resized pixel r = i - offset (inside when 0 <= r < new); its source coordinate is
    (r + 0.5) * (in / new) - 0.5 in float32; lower = max(floor, 0), upper = min(ceil, in - 1), lerp = frac.
    XLA's CPU code may fuse these multiply-adds (FMA: one rounding where TF's kernel rounds twice), so pixels can
    differ from tf.image.resize by ~1e-5 of their 0..1 range (measured <= 3e-5; detections agree to 1e-6).
    Returns int32 (lower, upper) (S,), float32 lerp (S,), bool inside (S,).
    """
    n = jnp.asarray(in_size, jnp.int32)
    r = jnp.arange(out_size, dtype=jnp.int32) - offset
    inside = (r >= 0) & (r < new)
    scale = n.astype(jnp.float32) / new.astype(jnp.float32)
    src = (r.astype(jnp.float32) + 0.5) * scale - 0.5
    floor = jnp.floor(src)
    lower = jnp.maximum(floor.astype(jnp.int32), 0)
    upper = jnp.minimum(jnp.ceil(src).astype(jnp.int32), n - 1)
    return jnp.clip(lower, 0, n - 1), jnp.clip(upper, 0, n - 1), src - floor, inside


def letterbox_images(images: jax.Array, size: int, mode: str = 'letterbox') -> tuple[jax.Array, jax.Array]:
    """data/letterbox.py's resize of a batch inside a traced function.

    Args:
      images: (B, H, W, 3) uint8 (or float 0..255) RGB; H and W may be symbolic.
      size: side S of the square network input.
      mode: 'letterbox' or 'stretch' (config.data.resize).

    Returns:
      (B, S, S, 3) float32 in [0, 1] (grey 128/255 bands), and (4,) float32 (scale_x, scale_y, dw, dh).
    """
    _, h, w, _ = images.shape
    new_h, new_w, dh, dw, sx, sy = resize_geometry(h, w, size, mode)
    y0, y1, ylerp, yin = _axis_taps(size, h, new_h, dh)
    x0, x1, xlerp, xin = _axis_taps(size, w, new_w, dw)
    x = images.astype(jnp.float32)
    top, bottom = jnp.take(x, y0, axis=1), jnp.take(x, y1, axis=1)  # (B, S, W, 3)
    xl = xlerp[None, None, :, None]
    top_left, top_right = jnp.take(top, x0, axis=2), jnp.take(top, x1, axis=2)  # (B, S, S, 3)
    bottom_left, bottom_right = jnp.take(bottom, x0, axis=2), jnp.take(bottom, x1, axis=2)
    top = top_left + (top_right - top_left) * xl  # TF's compute_lerp, in its order
    bottom = bottom_left + (bottom_right - bottom_left) * xl
    value = top + (bottom - top) * ylerp[None, :, None, None]
    inside = (yin[:, None] & xin[None, :])[None, :, :, None]
    canvas = jnp.where(inside, value, PAD_VALUE) / 255.0
    resize = jnp.stack([sx, sy, dw.astype(jnp.float32), dh.astype(jnp.float32)])
    return canvas, resize


def serving_fn(model: Any, cfg: pp.PostprocessConfig) -> Callable[[dict, jax.Array], dict[str, jax.Array]]:
    """fn(variables, images uint8 (B, H, W, 3)) → {'boxes' (B, K, 4) xyxy original pixels, 'scores' (B, K),
    'classes' (B, K) int32, 'count' (B,) int32}: letterbox + network + postprocess.postprocess, traceable with
    symbolic B, H, W (jax.export / jax2tf)."""

    def fn(variables: dict, images: jax.Array) -> dict[str, jax.Array]:
        b, h, w, _ = images.shape
        canvas, resize = letterbox_images(images, cfg.input_size, cfg.resize_mode)
        sizes = jnp.stack([jnp.asarray(h, jnp.int32), jnp.asarray(w, jnp.int32)]).astype(jnp.float32)
        det = pp.predict_views(lambda x: model.apply(variables, x, train=False), canvas,
                               jnp.broadcast_to(resize, (b, 4)), jnp.broadcast_to(sizes, (b, 2)), cfg)
        count = det.valid.astype(jnp.int32).sum(axis=1)
        return {'boxes': det.boxes, 'scores': det.scores, 'classes': det.classes, 'count': count}

    return fn


def metadata(cfg: pp.PostprocessConfig, class_names: Sequence[str], fmt: str) -> dict[str, Any]:
    """What a deployment needs besides the model file: class names, thresholds, I/O conventions."""
    return {
        'format': fmt, 'input': 'images: uint8 (batch, height, width, 3) RGB, any size',
        'outputs': {'boxes': '(batch, K, 4) float32 x1, y1, x2, y2 in original-image pixels',
                    'scores': '(batch, K) float32', 'classes': '(batch, K) int32, -1 in empty slots',
                    'count': '(batch,) int32 valid slots (the first count of K)'},
        'class_names': list(class_names), 'input_size': cfg.input_size, 'resize': cfg.resize_mode,
        'score_threshold': cfg.score_threshold, 'iou_threshold': cfg.iou_threshold, 'nms_method': cfg.method,
        'max_detections': cfg.max_detections, 'test_time_flips': list(cfg.tta),
        'test_time_sizes': list(cfg.tta_sizes), 'test_time_vote_iou': cfg.tta_vote_iou,
    }


def export_savedmodel(
    model: Any, variables: dict, cfg: pp.PostprocessConfig, output: str | Path, platforms: Sequence[str] = PLATFORMS,
) -> Path:
    """TF SavedModel (directory) with signature `serving_default`: images uint8 (None, None, None, 3) → outputs;
    lowered for each of `platforms` (XLA platform names: 'cpu', 'cuda', 'rocm', 'tpu')."""
    import tensorflow as tf  # noqa: PLC0415
    from jax.experimental import jax2tf  # noqa: PLC0415

    try:  # JAX owns the accelerators; TF only traces and saves
        tf.config.set_visible_devices([], 'GPU')
    except RuntimeError:  # TF already initialised its devices: keep them
        pass
    fn = jax2tf.convert(
        serving_fn(model, cfg), polymorphic_shapes=[None, '(b, h, w, 3)'], with_gradient=False,
        native_serialization_platforms=tuple(platforms),
    )
    module = tf.Module()
    module.variables_tree = tf.nest.map_structure(
        lambda a: tf.Variable(np.asarray(a), trainable=False), jax.device_get(variables)
    )

    @tf.function(autograph=False, input_signature=[tf.TensorSpec((None, None, None, 3), tf.uint8, name='images')])
    def serve(images):
        return fn(module.variables_tree, images)

    module.serve = serve
    output = Path(output)
    tf.saved_model.save(module, str(output), signatures={'serving_default': serve})
    return output


def export_stablehlo(
    model: Any, variables: dict, cfg: pp.PostprocessConfig, output: str | Path, platforms: Sequence[str] = PLATFORMS,
) -> Path:
    """Serialised jax.export.Exported (weights inlined as constants), symbolic in batch, height and width, lowered
    for each of `platforms`."""
    variables = jax.device_get(variables)
    fn = serving_fn(model, cfg)
    spec = jax.ShapeDtypeStruct(jax.export.symbolic_shape('b, h, w, 3'), jnp.uint8)
    exported = jax.export.export(jax.jit(lambda images: fn(variables, images)), platforms=tuple(platforms))(spec)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(exported.serialize())
    return output


def export_model(
    model: Any, variables: dict, cfg: pp.PostprocessConfig, fmt: str, output: str | Path,
    class_names: Sequence[str], platforms: Sequence[str] = PLATFORMS, **runtime_options: Any,
) -> Path:
    """Writes `model` (+ folded `variables`) in `fmt` to `output` and its metadata JSON; returns the model path.

    SavedModel: a directory, metadata in PATH/export.json; ONNX / StableHLO: a file, metadata in PATH.json.
    `platforms`: what the SavedModel / StableHLO are lowered for (ONNX is platform-neutral).
    `runtime_options`: tflite's quantize, batch_size, calibration (runtimes.export_tflite); onnx's quantize and
    calibration (runtimes.export_onnx).
    """
    meta = metadata(cfg, class_names, fmt)
    if fmt == 'savedmodel':
        path = export_savedmodel(model, variables, cfg, output, platforms)
        meta_path = path / 'export.json'
    elif fmt == 'stablehlo':
        path = export_stablehlo(model, variables, cfg, output, platforms)
        meta_path = Path(f'{path}.json')
    elif fmt == 'onnx':
        path = runtimes_lib.export_onnx(model, variables, cfg, output, **runtime_options)
        meta_path = Path(f'{path}.json')
        meta.update(runtimes_lib.metadata_changes(fmt, cfg, **runtime_options))
    elif fmt in runtimes_lib.FORMATS:
        path = runtimes_lib.export_runtime(model, variables, cfg, fmt, output, **runtime_options)
        meta_path = Path(f'{path}.json')
        meta.update(runtimes_lib.metadata_changes(fmt, cfg, **runtime_options))
    else:
        raise ValueError(f'--format: unknown format {fmt!r}; expected one of {FORMATS + runtimes_lib.FORMATS}')
    meta_path.write_text(json.dumps(meta, indent=1) + '\n')
    return path


def main() -> None:
    """`python -m yolo_jax.export --config=... --workdir=DIR|--weights=F --format=... --output=P` (cli.run)."""
    from absl import flags  # noqa: PLC0415

    from yolo_jax import cpu_env, model_source  # noqa: PLC0415
    from yolo_jax.errors import FlagError  # noqa: PLC0415

    flags_ = flags.FLAGS
    # The flags alone, in the first second: before TensorFlow loads and the (long) load and export.
    if not flags_.workdir and not flags_.weights:
        raise FlagError('pass --workdir=DIR (a trained checkpoint) or --weights=FILE.weights')
    platforms = [p.strip() for p in flags_.platforms.split(',') if p.strip()]
    if not platforms:
        raise FlagError(f'--platforms={flags_.platforms!r}: name at least one XLA platform, e.g. cpu,cuda')
    runtimes_lib.check_quantize(flags_.format, flags_.quantize)
    model_source.check(flags_.workdir, flags_.weights)
    cpu_env.import_tensorflow()  # before anything else imports it, so that no import pulls in Keras with it
    from yolo_jax import inference, run_config  # noqa: PLC0415

    config = run_config.resolve(flags_.config, flags_.workdir or '')  # model.num_classes=0: from the data
    check_images = None
    if flags_.check:  # images and runtime checked before the (long) export
        from yolo_jax import parity  # noqa: PLC0415

        check_images = parity.prepare_check(flags_.check, flags_.format, platforms, flags_.quantize)
    model, variables, spec = inference.load_detector(config, flags_.workdir, flags_.weights, fold=True)
    cfg = pp.PostprocessConfig.from_spec(spec, config.eval, config.data.resize)
    options = runtimes_lib.options_from_flags(flags_, config)  # savedmodel and stablehlo take none of them
    path = export_model(model, variables, cfg, flags_.format, flags_.output, spec.class_names, platforms=platforms,
                        **options)
    print(f'exported {flags_.format} → {path}')
    if check_images is not None and not parity.report_check(model, variables, cfg, flags_.format, path,
                                                            check_images, flags_.quantize):
        sys.exit(1)  # a file that differs from JAX: not a user mistake (those exit 2)


def _define_flags() -> None:
    """export's own flags (cli.run adds --config and --verbose)."""
    from absl import flags  # noqa: PLC0415

    flags.DEFINE_string('workdir', None, 'Training directory whose best checkpoint is exported.')
    flags.DEFINE_string('weights', None, 'A Darknet .weights file to export instead of a checkpoint.')
    flags.DEFINE_enum('format', 'savedmodel', list(FORMATS + runtimes_lib.FORMATS), 'Export format.')
    flags.DEFINE_string('output', None, 'Output path (SavedModel: a directory; onnx/stablehlo: a file).')
    flags.DEFINE_string('platforms', ','.join(PLATFORMS), 'savedmodel/stablehlo: XLA platforms to lower for.')
    flags.DEFINE_string('check', None, 'Images (a file, directory or glob) to run the written file on, in its own '
                        'runtime in a fresh process, against JAX; exit 1 when they differ (yolo_jax/parity.py).')
    runtimes_lib.define_flags()
    flags.mark_flags_as_required(['output'])


if __name__ == '__main__':
    from yolo_jax import cli

    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
    cli.run(main, _define_flags, training_modes=())  # --workdir without --config: WORKDIR/config.py
