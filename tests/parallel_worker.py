"""Run in a subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=4 by test_parallel.py.

Trains 2 steps on the same global batch with parallel mode 'none', 'pmap' and 'mesh', and prints the
largest relative parameter / batch-stat difference of each mode against 'none' as JSON.
"""

import functools
import json
import sys
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_loss import random_problem  # noqa: E402

from configs.mnist import get_config  # noqa: E402
from yolo_jax import train  # noqa: E402
from yolo_jax.loss import loss_kwargs  # noqa: E402
from yolo_jax.parallel import PMAP_AXIS, Parallel  # noqa: E402


def run(mode: str, config, batches):
    model, lr_fn, state = train.build_model_and_state(config, 10, mode)
    kw = loss_kwargs(config)
    par = Parallel(mode, functools.partial(train.train_step, loss_kw=kw, lr_fn=lr_fn),
                   functools.partial(train.eval_step, loss_kw=kw))
    init = jax.device_get(state.params)
    state = par.place_state(state)
    for b in batches:
        state, metrics = par.train(state, b)
    ev = par.eval(state, batches[0])
    state = jax.device_get(state)
    moved = max(jax.tree.leaves(jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), init, state.params)))
    return state, {'moved': moved, **{k: float(v) for k, v in jax.device_get(ev).items()}}


def main():
    assert jax.device_count() == 4, jax.devices()
    config = get_config('tiny,smoke')
    config.model.num_classes = 3
    config.train.warmup_epochs = 0
    # Adam's early updates are ~lr * sign(g): gradients near 0 flip sign under another summation order. A large
    # epsilon makes updates proportional to the gradients, so parameter differences measure gradient differences.
    config.train.adam_eps = float(sys.argv[1]) if len(sys.argv) > 1 else 1e-7
    rng = np.random.default_rng(0)
    size = config.model.input_size
    batches = []
    for _ in range(2):
        _, labels, bboxes = random_problem(rng, 8, size, config.model.strides, config.model.anchors, 3, 4, max_bbox=8,
                                           p_respond=0.1)
        batches.append({'image': rng.uniform(size=(8, size, size, 3)).astype(np.float32), 'labels': tuple(labels),
                        'bboxes': tuple(bboxes), 'valid': np.ones(8, np.float32)})
    base, base_eval = run('none', config, batches)
    out = {}
    for mode in ('pmap', 'mesh'):
        state, ev = run(mode, config, batches)
        # Relative L2 over the whole tree: Adam's first updates are ~lr * sign(g), so an element whose gradient is
        # ~0 may flip sign under a different summation order; a per-element max would flag that harmless noise.
        sq = lambda t: sum(float(np.sum(np.square(x, dtype=np.float64))) for x in jax.tree.leaves(t))
        diff = jax.tree.map(lambda a, b: a - b, (state.params, state.batch_stats), (base.params, base.batch_stats))
        rel = (sq(diff) / sq((base.params, base.batch_stats))) ** 0.5
        frac = sum(int(np.sum(np.abs(x) > 1e-6)) for x in jax.tree.leaves(diff)) / sum(
            x.size for x in jax.tree.leaves(diff))
        out[mode] = {'rel_l2_diff': rel, 'frac_elements_off': frac, 'moved': ev['moved'],
                     'eval_total': ev['total'], 'base_eval_total': base_eval['total']}
    assert PMAP_AXIS
    print('RESULT ' + json.dumps(out))


if __name__ == '__main__':
    main()
