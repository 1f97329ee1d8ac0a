"""Data parallelism end to end through `python -m yolo_jax.main`, on simulated CPU devices and processes.

- mesh and pmap on 4 devices match a 1-device run on the same global batch: per-step losses, validation loss, mAP.
- Two processes x 2 devices on localhost (`jax.distributed`, explicit coordinator flags), mesh: identical losses in
  both, one checkpoint set, mAP over the whole test split equal to a single-process evaluation of the same weights:
  checked on the pair that resumes after a lost worker, test_reliability.py::test_lost_peer_is_one_error_line[1]
  (one two-process run serves both).
"""

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from yolo_jax.parallel import check_batch_size

REPO = Path(__file__).resolve().parents[1]
# Adam's early updates are ~lr * sign(g): gradients near 0 flip sign under another summation order. A large epsilon
# makes updates proportional to the gradients, so loss differences measure gradient differences.
COMMON = ('--config=configs/mnist.py:tiny,smoke', '--config.data.digit_source=sklearn', '--config.train.epochs=1',
          '--config.train.adam_eps=0.1', '--config.eval.score_threshold=0.05', '--nojemalloc')


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp('tfds')


def _env(devices: int) -> dict:
    return dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}', JAX_PLATFORMS='cpu',
                TF_CPP_MIN_LOG_LEVEL='2', PYTHONUNBUFFERED='1')


def _cmd(workdir: Path, data_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, '-m', 'yolo_jax.main', *COMMON, f'--workdir={workdir}',
            f'--config.data.data_dir={data_dir}', *extra]


def _run(workdir: Path, data_dir: Path, devices: int, *extra: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(_cmd(workdir, data_dir, *extra), cwd=REPO, env=_env(devices), capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _records(workdir: Path, kind: str) -> list[dict]:
    lines = (workdir / 'metrics.jsonl').read_text().splitlines()
    return [r for r in map(json.loads, lines) if r['kind'] == kind]


def _console_losses(stderr: str) -> list[float]:
    return [float(x) for x in re.findall(r'total_loss:\s*([-\d.]+)', stderr)]


@pytest.mark.slow
def test_mesh_and_pmap_match_one_device(tmp_path, data_dir):
    base = tmp_path / 'one'
    _run(base, data_dir, 1)
    want_train, want_val, want_map = (_records(base, k) for k in ('train', 'val', 'map'))
    assert len(want_train) == 4 and want_map[0]['num_detections'] > 0
    for mode in ('mesh', 'pmap'):
        workdir = tmp_path / mode
        proc = _run(workdir, data_dir, 4, f'--config.train.parallel={mode}')
        assert 'on 4 device(s) in 1 process(es), mode ' + mode in proc.stderr
        for got, want in zip(_records(workdir, 'train'), want_train, strict=True):
            assert got['total'] == pytest.approx(want['total'], rel=1e-4), (mode, got['step'])
        assert _records(workdir, 'val')[0]['total'] == pytest.approx(want_val[0]['total'], rel=1e-4), mode
        got_map = _records(workdir, 'map')[0]
        assert got_map['num_images'] == want_map[0]['num_images'] == 8
        assert got_map['map50'] == pytest.approx(want_map[0]['map50'], abs=1e-3), mode
        assert got_map['coco_map'] == pytest.approx(want_map[0]['coco_map'], abs=1e-3), mode


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _start_pair(workdir: Path, data_dir: Path, *extra: str) -> list[subprocess.Popen]:
    address = f'127.0.0.1:{_free_port()}'
    procs = []
    for pid in range(2):
        flags = (f'--coordinator_address={address}', '--num_processes=2', f'--process_id={pid}',
                 '--heartbeat_timeout_seconds=10', *extra)
        log = (workdir.parent / f'{workdir.name}_{pid}.log').open('w')
        procs.append(subprocess.Popen(_cmd(workdir, data_dir, *flags), cwd=REPO, env=_env(2), stdout=log,
                                      stderr=subprocess.STDOUT))
    return procs


def _log(workdir: Path, pid: int) -> str:
    return (workdir.parent / f'{workdir.name}_{pid}.log').read_text()


def _wait(procs: list[subprocess.Popen], timeout: float) -> list[int]:
    try:
        return [p.wait(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            p.kill()


def test_batch_must_divide_devices():
    assert check_batch_size('config.train.batch_size', 8, 4, 2) == 4
    with pytest.raises(ValueError, match=r'config.train.batch_size=6 must be divisible.*devices \(4\)'):
        check_batch_size('config.train.batch_size', 6, 4, 1)


@pytest.mark.slow  # three compilations of the train step: ~35 s of CPU
def test_multi_scale_pmap_step_compiles_once_per_size():
    """pmap's wrapper exposes no compile cache (compiled_train_steps() is None), so count XLA compilations
    instead: a new size compiles once, then steps at either size compile nothing. (Mesh mode's cache size is
    asserted by the multi-scale end-to-end run in test_train_loop.py: exactly 2.) Step 2 compiles nothing
    either: `place_state` lays the fresh state out as pmap returns it (without it, step 2 compiled again)."""
    import functools

    import jax
    import numpy as np
    from helpers import loss_kw
    from test_loss import random_problem

    from configs.mnist import get_config
    from yolo_jax import steps
    from yolo_jax.parallel import Parallel

    config = get_config('tiny,smoke')
    config.model.num_classes = 3
    _, lr_fn, state = steps.build_model_and_state(config, 10, 'pmap')
    parallel = Parallel('pmap', functools.partial(steps.train_step, loss_kw=loss_kw(config), lr_fn=lr_fn),
                        functools.partial(steps.eval_step, loss_kw=loss_kw(config)),
                        functools.partial(steps.batch_stats_step, momentum=config.model.bn_momentum, freeze='none'))
    rng = np.random.default_rng(0)
    batches = {}
    for size in (32, 64):
        _, labels, bboxes = random_problem(rng, 4, size, config.model.strides, config.model.anchors, 3, 4, max_bbox=8,
                                           p_respond=0.1)
        image = rng.uniform(size=(4, size, size, 3)).astype(np.float32)
        batches[size] = {'image': image, 'labels': tuple(labels), 'bboxes': tuple(bboxes),
                         'valid': np.ones(4, np.float32)}
    compiles = []

    def listener(name: str, *args, **kwargs) -> None:
        if name == '/jax/core/compile/backend_compile_duration':
            compiles.append(name)

    state = parallel.place_state(state)
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        counts = []
        for size in (32, 32, 64, 64, 32, 64, 32):
            state, metrics = parallel.train(state, batches[size])
            assert float(metrics['finite']) == 1.0
            counts.append(len(compiles))
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert counts[0] > 0 and counts[1] == counts[0], counts  # step 2 takes pmap's own output: nothing new
    assert counts[2] == counts[1] + 1 and counts[2:] == [counts[2]] * 5, counts  # 64 compiles once, then nothing
    assert parallel.compiled_train_steps() is None
