"""CPU process settings (yolo_jax/cpu_env.py): the XLA flag helper and what the flag does to results.

Oracle for the flag: the same train-step loss and gradients computed in a process without it.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from yolo_jax import cpu_env

REPO = Path(__file__).resolve().parents[1]

# One train-step loss and gradient norm of a small YOLOv3-tiny (BatchNorm statistics, convs, the loss's reductions).
_SCRIPT = """
import json, numpy as np, jax, optax
from test_loss import random_problem
from configs.mnist import get_config
from helpers import loss_kw
from yolo_jax import steps
c = get_config('tiny'); c.model.update(input_size=96, width_multiplier=0.25)
m = c.model
_, labels, bboxes = random_problem(np.random.default_rng(0), 2, 96, m.strides, m.anchors, m.num_classes, 4)
images = np.random.default_rng(1).uniform(size=(2, 96, 96, 3)).astype(np.float32)
batch = {'image': images, 'labels': tuple(labels), 'bboxes': tuple(bboxes)}
_, _, s = steps.build_model_and_state(c, 10)
f = lambda p: steps._losses(p, s.batch_stats, s.apply_fn, batch, loss_kw(c), train=True)[0]
loss, g = jax.jit(jax.value_and_grad(f))(s.params)
print(json.dumps({'loss': float(loss), 'grad_norm': float(optax.tree.norm(g))}))
"""


def _run(xla_flags: str) -> dict:
    env = dict(os.environ, XLA_FLAGS=xla_flags, JAX_PLATFORMS='cpu', PYTHONPATH=f'{REPO}:{REPO / "tests"}')
    out = subprocess.run([sys.executable, '-c', _SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_ynn_flag_is_added_once_and_keeps_other_flags(monkeypatch):
    monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=2')
    cpu_env.set_ynn_dot_flag(True)
    cpu_env.set_ynn_dot_flag(True)
    flags = os.environ['XLA_FLAGS'].split()
    assert flags == ['--xla_force_host_platform_device_count=2', cpu_env.YNN_DOT_FLAG]


def test_ynn_flag_disabled_or_user_set_is_left_alone(monkeypatch):
    monkeypatch.setenv('XLA_FLAGS', '--xla_cpu_experimental_ynn_fusion_type=dot')
    cpu_env.set_ynn_dot_flag(True)  # the user's own choice wins
    assert os.environ['XLA_FLAGS'] == '--xla_cpu_experimental_ynn_fusion_type=dot'
    monkeypatch.delenv('XLA_FLAGS')
    cpu_env.set_ynn_dot_flag(False)
    assert 'XLA_FLAGS' not in os.environ


def test_jemalloc_lookup_names_an_existing_library():
    path = cpu_env.find_jemalloc()
    assert path is None or (os.path.exists(path) and 'jemalloc' in path)


@pytest.mark.slow
def test_ynn_flag_is_accepted_and_keeps_the_loss_and_gradients():
    """XLA rejects an unknown fusion type at start-up; YNN only reorders float32 sums, so results agree closely."""
    want = _run('')
    got = _run(cpu_env.YNN_DOT_FLAG)
    assert got['loss'] == pytest.approx(want['loss'], rel=1e-4)
    assert got['grad_norm'] == pytest.approx(want['grad_norm'], rel=1e-3)


# mallinfo2 (glibc >= 2.33) reports the heap (arena) and the mmapped bytes (hblkhd): a 64 MiB block is mmapped
# by default and unmapped on free; tuned, it comes from the heap, which keeps it after the free.
_MALLOC_SCRIPT = """
import ctypes, json, sys
from yolo_jax import cpu_env
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ('arena', 'ordblks', 'smblks', 'hblks', 'hblkhd', 'usmblks',
                                                'fsmblks', 'uordblks', 'fordblks', 'keepcost')]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
tuned = cpu_env.tune_glibc_malloc() if sys.argv[1] == 'tuned' else False
before = libc.mallinfo2()
p = libc.malloc(64 << 20)
during = libc.mallinfo2()
libc.free(p)
after = libc.mallinfo2()
print(json.dumps({'tuned': tuned, 'mmapped': during.hblkhd - before.hblkhd,
                  'heap_growth_kept': after.arena - before.arena}))
"""


@pytest.mark.parametrize('mode', ['default', 'tuned'])
def test_glibc_malloc_tuning_keeps_large_blocks_on_the_heap(mode):
    if cpu_env.jemalloc_loaded():
        pytest.skip('this test process runs under jemalloc')
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for var in ('LD_PRELOAD', 'MALLOC_MMAP_MAX_', 'MALLOC_TRIM_THRESHOLD_', 'MALLOC_TOP_PAD_', 'GLIBC_TUNABLES'):
        env.pop(var, None)
    out = subprocess.run([sys.executable, '-c', _MALLOC_SCRIPT, mode], env=env, capture_output=True, text=True,
                         timeout=60)
    if 'mallinfo2' in out.stderr:
        pytest.skip('glibc without mallinfo2 (< 2.33)')
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    if mode == 'default':
        assert not got['tuned'] and got['mmapped'] >= 64 << 20 and got['heap_growth_kept'] == 0
    else:
        assert got['tuned'] and got['mmapped'] == 0 and got['heap_growth_kept'] >= 64 << 20


def test_tensorflow_and_clu_import_without_keras_and_tf_keras_still_loads_it(tmp_path):
    """cpu_env.import_tensorflow skips TF's eager import of Keras (~3 s of every command's start) and
    import_metric_writers the one of TensorBoard's hparams Keras callback under clu (~2.3 s of training and eval);
    yolo_jax.train imports without Keras, its writer still writes hyperparameters and scalars (read back from the
    event file), and nothing is left behind: a later `tf.keras` use imports Keras as usual."""
    script = f"""
import glob, sys
from yolo_jax import cpu_env
tf = cpu_env.import_tensorflow()
cpu_env.import_metric_writers()
from yolo_jax import train  # noqa: clu's writers and periodic actions, as a training run imports them
writer = train.metric_writers.SummaryWriter({str(tmp_path)!r})
writer.write_hparams({{'lr': 0.1}})
writer.write_scalars(3, {{'loss': 2.5}})
writer.flush()
before = sorted(m for m in sys.modules if m == 'keras' or m.startswith('keras.'))
tags = sorted(v.tag for r in tf.data.TFRecordDataset(glob.glob({str(tmp_path / '*')!r}))
              for v in tf.compat.v1.Event.FromString(r.numpy()).summary.value)
layer = tf.keras.layers.Dense(2)
print(before, 'keras.src.optimizers' in sys.modules, type(layer).__module__, ','.join(tags))
"""
    out = subprocess.run([sys.executable, '-c', script], env=dict(os.environ, PYTHONPATH=str(REPO)), cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ['[]', 'True', 'keras.src.layers.core.dense',
                                  '_hparams_/session_start_info,loss'], out.stdout
