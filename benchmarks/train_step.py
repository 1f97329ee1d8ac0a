"""Images/s of the compiled train step for YOLOv3 and YOLOv3-tiny at several input sizes and batch sizes.

    python benchmarks/train_step.py                       # the default grid (see --models/--sizes/--batches)
    python benchmarks/train_step.py --models=yolov3_tiny --sizes=416 --batches=4 --repeats=5

Compile time is reported separately from the step time; each timed step blocks on its result. Targets are
random but realistic (responsible cells hold boxes near their cell, 6 boxes per image). Prints a table and
saves JSON (default benchmarks/results/train_step.json). Figures are machine- and load-dependent: compare
rows measured in the same run.
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
sys.path[:0] = [str(REPO), str(REPO / 'tests')]

import jax  # noqa: E402
import numpy as np  # noqa: E402
from test_loss import random_problem  # noqa: E402

from configs.mnist import get_config  # noqa: E402
from yolo_jax import train  # noqa: E402
from yolo_jax.loss import loss_kwargs  # noqa: E402


def measure(model_name: str, size: int, batch: int, repeats: int) -> dict:
    config = get_config('tiny' if model_name == 'yolov3_tiny' else '')
    config.model.input_size = size
    config.train.batch_size = batch
    _, lr_fn, state = train.build_model_and_state(config, 100, 'none')
    rng = np.random.default_rng(0)
    m = config.model
    _, labels, bboxes = random_problem(rng, batch, size, m.strides, m.anchors, m.num_classes, 6, max_bbox=100)
    data = {
        'image': rng.uniform(size=(batch, size, size, 3)).astype(np.float32),
        'labels': tuple(labels),
        'bboxes': tuple(bboxes),
        'valid': np.ones(batch, np.float32),
    }
    step = jax.jit(functools.partial(train.train_step, loss_kw=loss_kwargs(config), lr_fn=lr_fn), donate_argnums=0)
    data = jax.device_put(data)
    t0 = time.perf_counter()
    compiled = step.lower(state, data).compile()
    compile_s = time.perf_counter() - t0
    state, metrics = compiled(state, data)  # warm-up
    jax.block_until_ready(metrics)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        state, metrics = compiled(state, data)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    rates = [batch / t for t in times]
    return {
        'model': model_name, 'input_size': size, 'batch': batch, 'compile_s': compile_s,
        'step_s_median': statistics.median(times), 'images_s_min': min(rates),
        'images_s_median': statistics.median(rates), 'images_s_max': max(rates), 'repeats': repeats,
        'params': int(sum(x.size for x in jax.tree.leaves(state.params))),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--models', default='yolov3_tiny,yolov3')
    p.add_argument('--sizes', default='160,320,416')
    p.add_argument('--batches', default='4,16')
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--output', default=str(REPO / 'benchmarks' / 'results' / 'train_step.json'))
    args = p.parse_args()
    rows = []
    print(f"{'model':<12} {'size':>5} {'batch':>5} {'compile s':>10} {'step s':>8} {'img/s min/med/max':>22}")
    for model_name in args.models.split(','):
        for size in (int(s) for s in args.sizes.split(',')):
            for batch in (int(b) for b in args.batches.split(',')):
                r = measure(model_name, size, batch, args.repeats)
                rows.append(r)
                rates = f"{r['images_s_min']:.2f}/{r['images_s_median']:.2f}/{r['images_s_max']:.2f}"
                print(f"{model_name:<12} {size:>5} {batch:>5} {r['compile_s']:>10.1f} {r['step_s_median']:>8.3f} "
                      f'{rates:>22}', flush=True)
    meta = {
        'backend': jax.default_backend(), 'device': str(jax.devices()[0].device_kind), 'jax': jax.__version__,
        'cpus': os.cpu_count(), 'machine': platform.machine(), 'xla_flags': os.environ.get('XLA_FLAGS', ''),
    }
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({'meta': meta, 'results': rows}, indent=2))
    print(f'saved {out}')


if __name__ == '__main__':
    main()
