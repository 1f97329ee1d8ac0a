"""Parity of exported files with the JAX model: `python -m yolo_jax.export ... --check=IMAGES`.

The written file is run in its own runtime in a fresh Python process that never imports yolo_jax
(`parity_runner.py`: numpy + TensorFlow / ONNX Runtime / jax.export / OpenVINO / LiteRT, as a deployment loads it)
on uint8 images of their original sizes, and its detections are compared with the JAX model's on the same images:
the detect path (data/letterbox.py's TF resize on the host + inference.predict with the same PostprocessConfig),
both on the CPU.

TFLite files hold the network only (runtimes.py: a fixed batch, a letterboxed float32 canvas in, the raw maps
(B, N, 5 + C) out), so for them the fresh process runs the file on the canvases this process letterboxes (the very
inputs of the JAX reference) and returns the raw maps; this process then applies `runtimes.tflite_detections` (the
project's host decoding, un-letterboxing and NMS, which a deployment of the file calls too) with the same
PostprocessConfig and compares those detections. What the check covers there is the file and its runtime; the host
code is the JAX path's own (tests/test_runtimes.py holds it equal to inference.predict). int8 files (TFLite, ONNX)
are not checked for parity (quantisation changes scores by far more than any tolerance that would still catch a
broken file): their accuracy is an mAP change on a labelled split, benchmarks/quantization.py.

Detections are matched per image, not by slot: each JAX detection (best score first) takes the unmatched exported
detection of the same class with the highest IoU >= MATCH_IOU. Equal-score candidates may come out in either order
in two runtimes, so slot-by-slot comparison would flag a correct file. The check passes when every detection on
both sides is matched (classes therefore exact) and the matched boxes differ by at most BOX_TOL pixels (any
coordinate, original-image pixels) and their scores by at most SCORE_TOL. An unmatched detection whose score is
within SCORE_TOL of the score threshold (or of the last kept score when all max_detections slots are full) is
counted as `borderline` and tolerated: rounding may legitimately keep it on one side and drop it on the other.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from yolo_jax import postprocess as pp

BOX_TOL = 1e-3  # pixels of the original image
SCORE_TOL = 1e-4
# TFLite with float16 weights (computing in float32): weights rounded to 11 significant bits move every layer's
# output by ~1e-3 relative, so detections differ from JAX's by far more than float32's tolerances. Measured with
# --check: MNIST quick (trained, 256 px, 8 test images) 0.0168 px and 2.15e-3 in score; the random 64 px tiny
# network of tests/test_parity.py 0.0266 px and 1.6e-4; that network's file written with one output conv's kernel
# x 1.05 (the tampered file of the tests) differs by 1.18e-2 in score. The score tolerance sits between (2.3x the
# noise, 1/2.4 of the tamper): float16 parity catches a few-percent error in a layer, not a subtler one. Boxes:
# ~20x the noise, as boxes in original pixels grow with the image.
BOX_TOL_FLOAT16 = 0.5  # pixels of the original image
SCORE_TOL_FLOAT16 = 5e-3
MATCH_IOU = 0.5
MAX_BATCH = 8  # images of one size are checked together, up to this many per call
RUNNER = Path(__file__).with_name('parity_runner.py')
RUNTIME_MODULES = {'savedmodel': 'tensorflow', 'onnx': 'onnxruntime', 'stablehlo': 'jax', 'openvino': 'openvino',
                   'tflite': 'tensorflow'}  # tflite: ai_edge_litert when installed, else TF's own interpreter
OUTPUTS = ('boxes', 'scores', 'classes', 'count')


@dataclasses.dataclass
class Comparison:
    """Detections of an exported file against JAX's over a set of images (counts summed over images)."""

    images: int = 0
    jax_detections: int = 0
    file_detections: int = 0
    matched: int = 0
    borderline: int = 0  # unmatched but within SCORE_TOL of the threshold / last slot: tolerated
    max_box_diff: float = 0.0  # pixels, over matched pairs
    max_score_diff: float = 0.0

    @property
    def unmatched(self) -> int:
        """Detections on either side without a partner, borderline ones excluded."""
        return self.jax_detections + self.file_detections - 2 * self.matched - self.borderline

    def failures(self, box_tol: float = BOX_TOL, score_tol: float = SCORE_TOL) -> list[str]:
        """Why the file is not equal to JAX (empty when it is)."""
        out = []
        if self.unmatched:
            out.append(f'{self.jax_detections - self.matched} JAX and {self.file_detections - self.matched} file '
                       'detections have no partner of the same class')
        if self.max_box_diff > box_tol:
            out.append(f'max box difference {self.max_box_diff:.3g} px > {box_tol:g}')
        if self.max_score_diff > score_tol:
            out.append(f'max score difference {self.max_score_diff:.3g} > {score_tol:g}')
        return out

    def merge(self, other: Comparison) -> Comparison:
        """The comparison over both sets of images."""
        return Comparison(
            self.images + other.images, self.jax_detections + other.jax_detections,
            self.file_detections + other.file_detections, self.matched + other.matched,
            self.borderline + other.borderline, max(self.max_box_diff, other.max_box_diff),
            max(self.max_score_diff, other.max_score_diff))

    def summary(self) -> str:
        """One line: counts and the largest differences."""
        return (f'{self.images} images, {self.matched} of {self.jax_detections} JAX detections matched '
                f'({self.file_detections} in the file, {self.borderline} borderline), max box difference '
                f'{self.max_box_diff:.3g} px, max score difference {self.max_score_diff:.3g}')


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box (4,) with (N, 4) boxes, pixels."""
    lo, hi = np.maximum(box[:2], boxes[:, :2]), np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
    area = lambda b: np.prod(np.clip(b[..., 2:] - b[..., :2], 0, None), axis=-1)
    union = area(box) + area(boxes) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _borderline(score: float, scores: np.ndarray, cfg: pp.PostprocessConfig, score_tol: float) -> bool:
    """A detection that rounding may keep in one runtime and drop in another: near the threshold, or near the last
    kept score when all max_detections slots are full (`scores`: that side's valid scores)."""
    if score <= cfg.score_threshold + score_tol:
        return True
    return len(scores) >= cfg.max_detections and score <= scores.min() + score_tol


def compare_image(ref: dict[str, np.ndarray], got: dict[str, np.ndarray], cfg: pp.PostprocessConfig,
                  score_tol: float = SCORE_TOL) -> Comparison:
    """One image's detections: `ref` (JAX) and `got` (the file), each {'boxes' (K, 4) xyxy px, 'scores' (K,),
    'classes' (K,), 'count' ()} with the first `count` slots valid."""
    rn, gn = int(ref['count']), int(got['count'])
    rb, rs, rc = ref['boxes'][:rn], ref['scores'][:rn], ref['classes'][:rn]
    gb, gs, gc = got['boxes'][:gn], got['scores'][:gn], got['classes'][:gn]
    taken = np.zeros(gn, bool)
    out = Comparison(images=1, jax_detections=rn, file_detections=gn)
    lonely_ref = []
    for i in np.argsort(-rs, kind='stable'):
        ious = np.where((gc == rc[i]) & ~taken, _iou(rb[i], gb), -1.0) if gn else np.zeros(0)
        j = int(np.argmax(ious)) if gn else -1
        if j < 0 or ious[j] < MATCH_IOU:
            lonely_ref.append(i)
            continue
        taken[j] = True
        out.matched += 1
        out.max_box_diff = max(out.max_box_diff, float(np.abs(rb[i] - gb[j]).max()))
        out.max_score_diff = max(out.max_score_diff, float(abs(rs[i] - gs[j])))
    out.borderline = (sum(_borderline(float(rs[i]), rs, cfg, score_tol) for i in lonely_ref)
                      + sum(_borderline(float(gs[j]), gs, cfg, score_tol) for j in np.flatnonzero(~taken)))
    return out


def compare(ref: dict[str, np.ndarray], got: dict[str, np.ndarray], cfg: pp.PostprocessConfig,
            score_tol: float = SCORE_TOL) -> Comparison:
    """compare_image over a batch: outputs with a leading batch axis (B, ...)."""
    total = Comparison()
    for b in range(len(ref['count'])):
        total = total.merge(compare_image({k: v[b] for k, v in ref.items()}, {k: v[b] for k, v in got.items()},
                                          cfg, score_tol))
    return total


def letterboxed(images: np.ndarray, cfg: pp.PostprocessConfig) -> np.ndarray:
    """uint8 images (B, H, W, 3) → float32 canvases (B, S, S, 3) in [0, 1]: the input pipeline's letterbox on the
    host (data/letterbox.py, as detect.prepare_image)."""
    import tensorflow as tf  # noqa: PLC0415  (the host letterbox)

    from yolo_jax.data import letterbox  # noqa: PLC0415

    no_boxes = tf.zeros((0, 4), tf.float32)
    return np.stack([letterbox.resize_image_and_boxes(tf.constant(im), no_boxes, cfg.input_size,
                                                      cfg.resize_mode)[0].numpy() for im in images])


def reference(model: Any, variables: dict, cfg: pp.PostprocessConfig, images: np.ndarray,
              canvases: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """JAX's detections of uint8 images (B, H, W, 3) on the CPU: the detect path, i.e. the input pipeline's
    letterbox on the host (`letterboxed`, or the given `canvases` of these images) + inference.predict;
    {'boxes' (B, K, 4) xyxy original px, 'scores', 'classes', 'count' (B,)}."""
    from yolo_jax import inference  # noqa: PLC0415

    cpu = jax.devices('cpu')[0]
    inputs = letterboxed(images, cfg) if canvases is None else canvases
    sizes = np.tile(np.asarray(images.shape[1:3]), (len(images), 1))
    with jax.default_device(cpu):
        det = jax.device_get(inference.predict(model, jax.device_put(variables, cpu), inputs, sizes, cfg))
    return {'boxes': det.boxes, 'scores': det.scores, 'classes': det.classes,
            'count': det.valid.sum(axis=1).astype(np.int32)}


def tolerances(fmt: str, quantize: str = 'none') -> tuple[float, float]:
    """(box px, score) tolerances of a file: BOX_TOL, SCORE_TOL, or the float16 ones for float16 TFLite weights."""
    if fmt == 'tflite' and quantize == 'float16':
        return BOX_TOL_FLOAT16, SCORE_TOL_FLOAT16
    return BOX_TOL, SCORE_TOL


def runner_env() -> dict[str, str]:
    """The fresh process's environment: CPU only (JAX and TF), quiet TF."""
    return dict(os.environ, JAX_PLATFORMS='cpu', CUDA_VISIBLE_DEVICES='', TF_CPP_MIN_LOG_LEVEL='2',
                PYTHONUNBUFFERED='1')


def run_exported(jobs: Sequence[dict[str, Any]], images: dict[str, np.ndarray], workdir: str | Path,
                 timeout: float = 1800) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Runs `jobs` ({'name', 'format', 'path', 'inputs': keys of `images`, optional 'options': openvino's compile
    options}) in ONE fresh process
    (parity_runner.py, without yolo_jax); returns ({'{name}/{input}/{output}': array}, {name: error line}).

    Raises RuntimeError when the process itself fails or imported yolo_jax.
    """
    workdir = Path(workdir)
    np.savez(workdir / 'parity_images.npz', **images)
    manifest = {'images': str(workdir / 'parity_images.npz'), 'output': str(workdir / 'parity_out.npz'),
                'jobs': [{**j, 'path': str(j['path'])} for j in jobs]}
    (workdir / 'parity_manifest.json').write_text(json.dumps(manifest))
    proc = subprocess.run([sys.executable, '-P', str(RUNNER), str(workdir / 'parity_manifest.json')],
                          cwd=workdir, env=runner_env(), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        raise RuntimeError(f'the parity runner failed (exit {proc.returncode}): {lines[-1] if lines else ""}')
    status = json.loads((workdir / 'parity_out.npz.json').read_text())
    if status['yolo_jax_modules']:
        raise RuntimeError(f'the parity runner imported {status["yolo_jax_modules"]}')
    return dict(np.load(workdir / 'parity_out.npz')), status['errors']


def batches(images: Sequence[np.ndarray], max_batch: int = MAX_BATCH) -> list[np.ndarray]:
    """Images (H, W, 3) grouped by size, in first-seen order, into arrays (B <= max_batch, H, W, 3)."""
    groups: dict[tuple[int, ...], list[np.ndarray]] = {}
    for im in images:
        groups.setdefault(im.shape, []).append(im)
    return [np.stack(g[i:i + max_batch]) for g in groups.values() for i in range(0, len(g), max_batch)]


def load_images(spec: str) -> list[np.ndarray]:
    """--check's images: a file, a directory or a glob as --mode=detect --images takes them → (H, W, 3) uint8,
    decoded as detect.load_image does (data/decode.py: the decoder of training and evaluation)."""
    from yolo_jax.data import decode  # noqa: PLC0415
    from yolo_jax.image_files import find_images  # noqa: PLC0415

    return [decode.decode_image(p) for p in find_images(spec)]


def check_file(model: Any, variables: dict, cfg: pp.PostprocessConfig, fmt: str, path: str | Path,
               images: Sequence[np.ndarray], score_tol: float = SCORE_TOL) -> tuple[Comparison, str | None]:
    """(comparison, None) of the exported `path` (format `fmt`) against JAX on `images`, or (empty comparison,
    the runtime's one-line error) when the file does not load or run in its runtime. TFLite: the runner gets the
    letterboxed canvases and returns the raw maps, decoded here by runtimes.tflite_detections (module docstring).
    `score_tol`: the borderline margin of `compare`."""
    from yolo_jax import runtimes  # noqa: PLC0415

    grouped = batches(images)
    keys = [f'batch_{i:03d}' for i in range(len(grouped))]
    canvases = [letterboxed(x, cfg) for x in grouped]  # JAX's inputs, and a TFLite file's
    inputs = canvases if fmt == 'tflite' else grouped
    with tempfile.TemporaryDirectory(prefix='yolo_jax_parity_') as tmp:
        job = {'name': fmt, 'format': fmt, 'path': str(Path(path).resolve()), 'inputs': keys}
        if fmt == 'openvino':  # as a deployment compiles it (the metadata's compile_options)
            job['options'] = runtimes.OPENVINO_COMPILE
        results, errors = run_exported([job], dict(zip(keys, inputs, strict=True)), tmp)
    if fmt in errors:
        return Comparison(), errors[fmt]
    total = Comparison()
    for key, x, canvas in zip(keys, grouped, canvases, strict=True):
        if fmt == 'tflite':
            sizes = np.tile(np.asarray(x.shape[1:3]), (len(x), 1))
            got = runtimes.tflite_detections(results[f'{fmt}/{key}/{runtimes.TFLITE_OUTPUT}'], cfg, sizes)
        else:
            got = {k: results[f'{fmt}/{key}/{k}'] for k in OUTPUTS}
        total = total.merge(compare(reference(model, variables, cfg, x, canvas), got, cfg, score_tol))
    return total, None


def prepare_check(spec: str, fmt: str, platforms: Sequence[str], quantize: str = 'none') -> list[np.ndarray]:
    """--check=IMAGES validated before the export starts: the images (MissingFileError / DataError name the file),
    the runtime installed, a CPU lowering to run on, and a file that parity can judge (not int8). Raises FlagError
    otherwise."""
    import importlib.util  # noqa: PLC0415

    from yolo_jax.errors import FlagError  # noqa: PLC0415

    module = RUNTIME_MODULES.get(fmt)
    if module is None:
        raise FlagError(f'--check: no parity runner for --format={fmt} (it checks {", ".join(RUNTIME_MODULES)})')
    if quantize == 'int8':
        raise FlagError(f'--check: an int8 {fmt} file is not equal to JAX by design; its accuracy is an mAP change '
                        'on a labelled split: python benchmarks/quantization.py --config=... --workdir=...')
    if importlib.util.find_spec(module) is None:
        extra = {'openvino': 'openvino'}.get(fmt, 'export')
        raise FlagError(f'--check: running a {fmt} file needs {module}: pip install \'yolo_jax[{extra}]\'')
    if fmt in ('savedmodel', 'stablehlo') and 'cpu' not in platforms:
        raise FlagError(f'--check runs the file on the CPU: add cpu to --platforms={",".join(platforms)}')
    return load_images(spec)


def report_check(model: Any, variables: dict, cfg: pp.PostprocessConfig, fmt: str, path: str | Path,
                 images: Sequence[np.ndarray], quantize: str = 'none') -> bool:
    """Runs check_file and prints the result: one `parity ...: ok` line on stdout, or one `parity check failed:`
    line on stderr (the caller exits 1: a failed check is not a user mistake). Returns whether it passed.
    `quantize`: the TFLite file's (`tolerances`)."""
    box_tol, score_tol = tolerances(fmt, quantize)
    result, error = check_file(model, variables, cfg, fmt, path, images, score_tol)
    if error is not None:
        print(f'parity check failed: {fmt} file {path} does not run in its runtime: {error}', file=sys.stderr)
        return False
    problems = result.failures(box_tol, score_tol)
    if problems:
        print(f'parity check failed: {fmt} vs JAX: {"; ".join(problems)} ({result.summary()})', file=sys.stderr)
        return False
    print(f'parity {fmt} vs JAX: ok, {result.summary()} (tolerances {box_tol:g} px, {score_tol:g})')
    if result.jax_detections == 0:
        print('warning: no detections on these images, so only their absence was compared; lower '
              '--config.eval.score_threshold or pass other images', file=sys.stderr)
    return True
