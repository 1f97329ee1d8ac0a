"""Process-level CPU settings that speed up JAX training here: jemalloc and XLA's YNN dot/reduce fusions.

Both must be in place before the process (allocator) or JAX's backend (XLA flags) starts, so `main.py` and
the benchmarks call these first. Measured on 2-core AMD EPYC machines (benchmarks/train_step.py, README).
"""

import os
import sys

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


def set_ynn_dot_flag(enabled: bool) -> None:
    """Adds (or, if not enabled, leaves out) XLA's YNN fusions; they help float32, but YNN's bfloat16 dots run at
    about half the speed of XLA's own (AVX512-BF16), so bfloat16 runs go without."""
    current = os.environ.get('XLA_FLAGS', '')
    if enabled and 'ynn_fusion_type' not in current:
        os.environ['XLA_FLAGS'] = f'{current} {YNN_DOT_FLAG}'.strip()
