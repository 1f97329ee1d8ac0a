"""Our compiled train step against a TF2 `tf.function` baseline of the same network and loss, side by side.

    python benchmarks/train_step.py                                   # YOLOv3 + tiny at 160 and 416, batch 4
    python benchmarks/train_step.py --models=yolov3 --sizes=416 --repeats=7
    python benchmarks/train_step.py --ynn=off --variants=float32,bfloat16   # bf16 wants YNN off
    python benchmarks/train_step.py --allocator=system                # glibc malloc instead of jemalloc

For each model and size, every implementation (TF first, then our `--variants`: config.model.dtype values)
is compiled, warmed up, then timed in rounds: one step of each per round, so drifting machine load hits them
alike. Reports images/s min/median/max, compile time, the ratio ours/TF (median over rounds of TF's step time
over ours in the same round), forward GFLOPs per image (XLA's cost analysis of the float32 forward pass) and
achieved GFLOP/s (3x forward FLOPs per image: forward, input and weight gradients), and that as a fraction of a
peak: on GPUs the vendor's dense peak for the compute dtype (MFU; `--peak_tflops` overrides), on CPUs the rate
of a 2048^3 matmul measured in the same process. Prints a table and saves JSON (default
benchmarks/results/train_step.json). On a GPU: `--no_tf --sizes=416 --batch=16` (TF here is the CPU build).
The allocator is process-wide (it applies to TF and JAX alike); the XLA flags apply to our side only (TF runs
without XLA). A run with other settings is another invocation (see --allocator, --ynn).
"""

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / 'tests'), str(REPO / 'benchmarks')]

from yolo_jax import cpu_env  # noqa: E402  (no JAX yet: flags must be set before its backend starts)


def _parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--models', default='yolov3_tiny,yolov3')
    p.add_argument('--sizes', default='160,416')
    p.add_argument('--batch', type=int, default=4)
    p.add_argument('--variants', default='float32', help='ours: compute dtypes, comma-separated')
    p.add_argument('--repeats', type=int, default=5, help='timed rounds after one warm-up step each')
    p.add_argument('--no_tf', action='store_true', help='ours only (ratios are then omitted)')
    p.add_argument('--allocator', choices=('jemalloc', 'system'), default='jemalloc')
    p.add_argument('--ynn', choices=('on', 'off'), default='on', help=f'XLA flag {cpu_env.YNN_DOT_FLAG}')
    p.add_argument('--peak_tflops', type=float, default=None, help='peak TFLOP/s for the MFU column')
    p.add_argument('--output', default=str(REPO / 'benchmarks' / 'results' / 'train_step.json'))
    return p.parse_args()


def _ours(model_name: str, size: int, batch: int, variant: str, data: dict):
    """(step fn, compile s) for our train step in compute dtype `variant` (config.model.dtype)."""
    import jax  # noqa: PLC0415
    from helpers import loss_kw  # noqa: PLC0415

    from configs.mnist import get_config  # noqa: PLC0415
    from yolo_jax import steps  # noqa: PLC0415

    config = get_config('tiny' if model_name == 'yolov3_tiny' else '')
    config.model.update(input_size=size, dtype=variant)
    config.train.batch_size = batch
    _, lr_fn, state = steps.build_model_and_state(config, 100)
    step = jax.jit(functools.partial(steps.train_step, loss_kw=loss_kw(config), lr_fn=lr_fn), donate_argnums=0)
    t0 = time.perf_counter()
    compiled = step.lower(state, data).compile()
    compile_s = time.perf_counter() - t0
    holder = {'state': state}

    def run() -> None:
        holder['state'], metrics = compiled(holder['state'], data)
        jax.block_until_ready(metrics)

    return run, compile_s


def _forward_gflops(model_name: str, size: int) -> float:
    """Forward GFLOPs per image of the float32 network (XLA cost analysis, batch 1, inference mode).

    Counted on a CPU lowering whatever the backend: on GPUs the convolutions are cuDNN custom calls, which XLA's
    cost analysis does not count (it reported 0.25 instead of 62.9 GFLOPs for YOLOv3 at 416 on an H200).
    """
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415

    from configs.mnist import get_config  # noqa: PLC0415
    from yolo_jax.models import create_model  # noqa: PLC0415

    config = get_config('tiny' if model_name == 'yolov3_tiny' else '')
    model = create_model(config.model)
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False))
    traced = jax.jit(lambda v, x: model.apply(v, x, train=False)).trace(variables, x)
    cost = traced.lower(lowering_platforms=('cpu',)).cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost['flops']) / 1e9


# Dense peak TFLOP/s by device kind (substring) and compute dtype; float32 matmuls on these GPUs run as TF32
# under JAX's default precision, so TF32 tensor-core peaks. SXM parts; from NVIDIA's data sheets.
GPU_PEAK_TFLOPS = {
    'H200': {'float32': 494.7, 'bfloat16': 989.4},
    'H100': {'float32': 494.7, 'bfloat16': 989.4},
    'A100': {'float32': 156.0, 'bfloat16': 312.0},
}


@functools.cache
def _peak_tflops(dtype: str, override: float | None) -> tuple[float, str]:
    """(peak TFLOP/s, where it comes from) for the MFU column."""
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415

    if override:
        return override, '--peak_tflops'
    kind = jax.devices()[0].device_kind
    for name, peaks in GPU_PEAK_TFLOPS.items():
        if name in kind and dtype in peaks:
            return peaks[dtype], f'{name} data sheet, {dtype}'
    n = 2048
    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda a: jnp.dot(a, a, preferred_element_type=jnp.float32))
    jax.block_until_ready(f(a))
    ts = []
    for _ in range(5):
        t0 = time.perf_counter()
        jax.block_until_ready(f(a))
        ts.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(ts) / 1e12, f'measured {n}^3 {dtype} matmul, this process'


def _tf(model_name: str, size: int, batch: int, problem: tuple):
    """(step fn, trace + first step s) for the TF/Keras baseline (benchmarks/tf_baseline.py)."""
    import keras  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415
    import tf_baseline  # noqa: PLC0415
    from helpers import loss_kw  # noqa: PLC0415

    from configs.mnist import get_config  # noqa: PLC0415

    config = get_config('tiny' if model_name == 'yolov3_tiny' else '')
    config.model.input_size = size
    keras.utils.set_random_seed(config.train.seed)
    model = tf_baseline.build_model(config.model)
    step = tf_baseline.make_train_step(model, tf_baseline.make_optimizer(config, 100), loss_kw(config))
    images, labels, bboxes = problem
    images = tf.constant(images)
    labels, bboxes = tuple(tf.constant(x) for x in labels), tuple(tf.constant(x) for x in bboxes)
    run = lambda: step(images, labels, bboxes).numpy()  # noqa: E731
    t0 = time.perf_counter()
    run()  # traces the graph and runs it once
    return run, time.perf_counter() - t0


def measure(
    model_name: str, size: int, batch: int, variants: list[str], repeats: int, with_tf: bool, peak: float | None
) -> list[dict]:
    import jax  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415
    from test_loss import random_problem  # noqa: PLC0415

    from configs.mnist import get_config  # noqa: PLC0415

    m = get_config('tiny' if model_name == 'yolov3_tiny' else '').model
    rng = np.random.default_rng(0)
    _, labels, bboxes = random_problem(rng, batch, size, m.strides, m.anchors, m.num_classes, 6, max_bbox=100)
    images = rng.uniform(size=(batch, size, size, 3)).astype(np.float32)
    data = jax.device_put({'image': images, 'labels': tuple(labels), 'bboxes': tuple(bboxes),
                           'valid': np.ones(batch, np.float32)})
    runners, compile_s = {}, {}
    if with_tf:
        runners['tf'], compile_s['tf'] = _tf(model_name, size, batch, (images, labels, bboxes))
    for v in variants:
        runners[v], compile_s[v] = _ours(model_name, size, batch, v, data)
        runners[v]()  # warm-up
    times = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            t0 = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t0)
    gflops = _forward_gflops(model_name, size)
    rows = []
    for name, ts in times.items():
        rates = [batch / t for t in ts]
        row = {
            'model': model_name, 'input_size': size, 'batch': batch, 'impl': 'tf.function' if name == 'tf' else name,
            'compile_s': compile_s[name], 'step_s_median': statistics.median(ts), 'images_s_min': min(rates),
            'images_s_median': statistics.median(rates), 'images_s_max': max(rates), 'repeats': repeats,
            'forward_gflops_per_image': gflops,
            'achieved_gflops_s': 3 * gflops * batch / statistics.median(ts),
        }
        if name != 'tf':
            row['peak_tflops'], row['peak_source'] = _peak_tflops(name, peak)
            row['mfu'] = row['achieved_gflops_s'] / (1e3 * row['peak_tflops'])
            if with_tf:
                row['ratio_vs_tf'] = statistics.median(t_tf / t for t_tf, t in zip(times['tf'], ts))
        rows.append(row)
    return rows


def main() -> None:
    args = _parse_args()
    if args.allocator == 'jemalloc':
        if cpu_env.find_jemalloc() is None:
            sys.exit('--allocator=jemalloc: libjemalloc.so.2 not found (apt-get install libjemalloc2)')
        cpu_env.exec_with_jemalloc(sys.argv)
    cpu_env.set_ynn_dot_flag(args.ynn == 'on')
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
    import jax  # noqa: PLC0415

    header = f"{'model':<12} {'size':>5} {'impl':<16} {'compile s':>9} {'step s':>7} {'img/s min/med/max':>18} " \
             f"{'GFLOP/s':>8} {'of peak':>7} {'ours/TF':>7}"
    print(header)
    meta = {
        'backend': jax.default_backend(), 'device': str(jax.devices()[0].device_kind), 'jax': jax.__version__,
        'cpus': os.cpu_count(), 'machine': platform.machine(), 'processor': platform.processor(),
        'xla_flags': os.environ.get('XLA_FLAGS', ''),
        'allocator': 'jemalloc' if cpu_env.jemalloc_loaded() else 'system',
        'malloc_conf': os.environ.get('MALLOC_CONF', ''), 'date': time.strftime('%Y-%m-%d %H:%M'),
        'command': ' '.join(sys.argv),
    }
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for model_name in args.models.split(','):
        for size in (int(s) for s in args.sizes.split(',')):
            for r in measure(model_name, size, args.batch, args.variants.split(','), args.repeats, not args.no_tf,
                             args.peak_tflops):
                rows.append(r)
                rates = f"{r['images_s_min']:.2f}/{r['images_s_median']:.2f}/{r['images_s_max']:.2f}"
                ratio = f"{r['ratio_vs_tf']:.2f}x" if 'ratio_vs_tf' in r else ''
                mfu = f"{r['mfu']:.0%}" if 'mfu' in r else ''
                print(f"{model_name:<12} {size:>5} {r['impl']:<16} {r['compile_s']:>9.1f} {r['step_s_median']:>7.3f} "
                      f"{rates:>18} {r['achieved_gflops_s']:>8.1f} {mfu:>7} {ratio:>7}", flush=True)
            # Saved after every case (atomically): a later case that runs out of memory keeps the earlier ones.
            tmp = out.with_suffix('.json.tmp')
            tmp.write_text(json.dumps({'meta': meta, 'results': rows}, indent=2))
            tmp.replace(out)
    print(f'saved {out}')


if __name__ == '__main__':
    main()
