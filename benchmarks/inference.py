"""Images/s of inference: jitted forward pass + post-processing (decode, letterbox inversion, per-class NMS).

    python benchmarks/inference.py [--out benchmarks/results/inference.json] [--seconds 8]

YOLOv3 and YOLOv3-tiny at 416 with 80 classes (the COCO heads), randomly initialised, batch 1 and 16, float32,
default XLA flags and allocator. For each case: one warm-up call (compile), then timed calls until `--seconds`
have passed (at least `--min-repeats`); the median call time gives images/s. Post-processing is also timed alone
on the model's own outputs, twice: with the default settings (score > 0.3, NMS 0.45, K = 100) and in its worst
case (score threshold 0: every candidate enters NMS, which then runs all K = 100 iterations). The forward pass
alone is also timed with and without BatchNorm folded into the convs (alternating calls; eval/detect fold).
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

from yolo_jax import inference  # noqa: E402
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', default=str(REPO / 'benchmarks' / 'results' / 'inference.json'))
    parser.add_argument('--seconds', type=float, default=8.0, help='timed seconds per measurement (at least)')
    parser.add_argument('--min-repeats', type=int, default=2)
    parser.add_argument('--batches', default='1,16')
    parser.add_argument('--models', default='yolov3_tiny,yolov3')
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    rows = []
    for name in args.models.split(','):
        mc = model_config(name, num_classes=80, input_size=SIZE)
        model = create_model(mc)
        variables = init_variables(model, jax.random.key(0), SIZE)
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
