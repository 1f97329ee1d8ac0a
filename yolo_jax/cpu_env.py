"""Process-level CPU settings that speed up JAX training here: the allocator and XLA's YNN dot/reduce fusions; and
TensorFlow's and clu's imports without loading Keras (`import_tensorflow`, `import_metric_writers`), ~3 s and
~2.3 s of a command's start.

The allocator is jemalloc when installed (a restart with LD_PRELOAD), else glibc malloc tuned by `mallopt` to
keep freed memory. Both must be in place before JAX's backend starts (the XLA flags too), so `main.py` and
the benchmarks call these first. Measured on 2-core AMD EPYC machines (benchmarks/train_step.py, README).
"""

import ctypes
import os
import sys
from types import ModuleType

from absl import logging

# jemalloc keeping freed pages: glibc malloc returns and re-faults ~0.5 M pages per YOLOv3 step.
JEMALLOC_CONF = 'oversize_threshold:0,dirty_decay_ms:-1,muzzy_decay_ms:-1'
JEMALLOC_PATHS = (
    '/usr/lib/x86_64-linux-gnu/libjemalloc.so.2',
    '/usr/lib/aarch64-linux-gnu/libjemalloc.so.2',
    '/usr/lib64/libjemalloc.so.2',
    '/usr/local/lib/libjemalloc.so.2',
)
# YNNPACK for dots (convolutions included) and reductions (BatchNorm statistics and their gradients): each
# measured faster in the whole train step (tiny 416: ~25% for dot; +10-14% more for reduce on tiny 416 and
# YOLOv3 160). Adding 'eltwise' made it slower.
YNN_DOT_FLAG = '--xla_cpu_experimental_ynn_fusion_type=dot,reduce'
_REEXEC_MARK = 'YOLO_JAX_REEXEC'
# glibc's mallopt parameters (malloc.h) and values that keep freed memory in the process, as jemalloc does above:
# no mmap for large blocks (each would be unmapped on free and page-faulted in again on the next step), and
# neither trimming the heap's top (threshold: C int max, ~2 GiB) nor growing it by less than 1 GiB at a time.
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4
# What TensorFlow's __init__ imports eagerly (inside `try: ... except ImportError: pass`) so that Keras 3 registers
# its optimizers for loading Keras SavedModels: all of Keras, ~3 of the ~8 s of CPU of `import tensorflow` here.
_KERAS_EAGER_IMPORT = 'keras.src.optimizers'
GLIBC_MALLOC_TUNING = ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1), (M_TOP_PAD, 1 << 30))
# TensorBoard's hparams API (imported by clu's SummaryWriter) imports this module, whose Keras callback class
# subclasses tf.keras.callbacks.Callback at import: all of Keras again, ~2.3 s of every training or eval command.
_HPARAMS_KERAS = 'tensorboard.plugins.hparams._keras'


def find_jemalloc() -> str | None:
    """Path of an installed libjemalloc.so.2 (Debian/Ubuntu: `apt-get install libjemalloc2`), or None."""
    return next((p for p in JEMALLOC_PATHS if os.path.exists(p)), None)


def jemalloc_loaded() -> bool:
    try:
        with open('/proc/self/maps') as f:
            return 'libjemalloc' in f.read()
    except OSError:
        return False


def exec_with_jemalloc(argv: list[str]) -> None:
    """Restarts this process as `python argv...` with jemalloc preloaded, if it is installed and not loaded.

    Returns (doing nothing) when jemalloc is missing, already loaded, or a restart was already tried.
    """
    path = find_jemalloc()
    if path is None or jemalloc_loaded() or os.environ.get(_REEXEC_MARK):
        if path is None and not os.environ.get(_REEXEC_MARK):
            logging.info('jemalloc not found (apt-get install libjemalloc2 for ~15-30%% faster CPU steps)')
        return
    env = dict(os.environ)
    env['LD_PRELOAD'] = f"{path} {env.get('LD_PRELOAD', '')}".strip()
    env.setdefault('MALLOC_CONF', JEMALLOC_CONF)
    env[_REEXEC_MARK] = '1'
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *argv], env)


def tune_glibc_malloc() -> bool:
    """Applies GLIBC_MALLOC_TUNING with `mallopt` when the process runs on glibc malloc (jemalloc not loaded).

    The same as starting with MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=... MALLOC_TOP_PAD_=..., but needs no
    restart. Memory that is freed stays mapped for reuse, so the peak resident size of a run is kept, not returned.
    Returns whether it was applied (False under jemalloc or without glibc).
    """
    if jemalloc_loaded():
        return False
    libc = ctypes.CDLL(None)
    if not hasattr(libc, 'gnu_get_libc_version') or not hasattr(libc, 'mallopt'):
        return False
    return all(libc.mallopt(param, value) == 1 for param, value in GLIBC_MALLOC_TUNING)


def set_ynn_dot_flag(enabled: bool) -> None:
    """Adds (or, if not enabled, leaves out) XLA's YNN fusions; they help float32, but YNN's bfloat16 dots run at
    about half the speed of XLA's own (AVX512-BF16), so bfloat16 runs go without."""
    current = os.environ.get('XLA_FLAGS', '')
    if enabled and 'ynn_fusion_type' not in current:
        os.environ['XLA_FLAGS'] = f'{current} {YNN_DOT_FLAG}'.strip()


def import_tensorflow() -> ModuleType:
    """`import tensorflow` without its eager import of Keras (nothing here loads Keras models; TF only feeds the
    input pipeline and exports). A None entry in sys.modules makes that one import raise ImportError, which TF's
    __init__ catches; the entry is removed at once, so `tf.keras` still loads Keras on first use. A no-op when
    TensorFlow is already imported."""
    if 'tensorflow' not in sys.modules and _KERAS_EAGER_IMPORT not in sys.modules:
        sys.modules[_KERAS_EAGER_IMPORT] = None  # type: ignore[assignment]
        try:
            import tensorflow  # noqa: F401, PLC0415
        finally:
            del sys.modules[_KERAS_EAGER_IMPORT]
    import tensorflow as tf  # noqa: PLC0415

    return tf


class _SkippedKerasCallback:
    """Stands in for TensorBoard's `hparams_api.KerasCallback` in a process that imported clu through
    `import_metric_writers` (nothing here trains Keras models)."""

    def __init__(self, *args, **kwargs):
        raise RuntimeError('TensorBoard\'s hparams KerasCallback was skipped by yolo_jax.cpu_env.import_metric_writers')


def import_metric_writers() -> ModuleType:
    """`clu.metric_writers` without the Keras import of TensorBoard's hparams Keras callback: a stand-in module
    holds that one import (its `Callback` raises when used) and is removed from sys.modules at once, so a later
    `tf.keras` use still loads Keras. Call after `import_tensorflow`; a no-op when clu's writers are imported."""
    if 'clu.metric_writers' not in sys.modules and _HPARAMS_KERAS not in sys.modules:
        stand_in = ModuleType(_HPARAMS_KERAS)
        stand_in.Callback = _SkippedKerasCallback  # type: ignore[attr-defined]
        sys.modules[_HPARAMS_KERAS] = stand_in
        try:
            import clu.metric_writers  # noqa: F401, PLC0415
        finally:
            del sys.modules[_HPARAMS_KERAS]
    from clu import metric_writers  # noqa: PLC0415

    return metric_writers
