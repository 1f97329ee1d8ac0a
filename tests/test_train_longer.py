"""Training longer after a run finished (yolo_jax/lr_segments.py): the extension's learning-rate rule on hand
computed cases, the segment plan for every kind of checkpoint, and the whole path through `python -m yolo_jax.main`
(a finished 1-epoch smoke run trained to 2 epochs with `--workdir` alone, then refused when lowered)."""

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from configs.mnist import get_config
from yolo_jax import lr_segments, steps
from yolo_jax.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def _train_config(**overrides):
    t = get_config('tiny,smoke').train
    t.lr_init, t.lr_end, t.warmup_epochs, t.extend_lr_fraction = 1e-3, 1e-5, 1, 0.5
    for k, v in overrides.items():
        t[k] = v
    return t


def _plain_cosine(k: int, a: int, b: int, start: float, end: float) -> float:
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * (k - a) / (b - a)))


@pytest.mark.parametrize('accum', [1, 2])
def test_extension_segments_follow_the_documented_cosine(accum):
    # 10 steps per epoch (10 / accum updates); 3 epochs, extended to 5, then to 6.
    t = _train_config(epochs=6, grad_accum_steps=accum)
    upe = 10 // accum
    fn = steps.create_learning_rate_fn(t, 10, [(0, 3), (3, 5), (5, 6)])
    first = steps.create_learning_rate_fn(_train_config(epochs=3, grad_accum_steps=accum), 10)
    for count in range(3 * upe):  # the finished run's updates: its own schedule, bit for bit
        assert float(fn(count)) == float(first(count)), count
    start = 1e-5 + 0.5 * (1e-3 - 1e-5)  # lr_end + fraction * (lr_init - lr_end)
    for a, b in ((3 * upe, 5 * upe), (5 * upe, 6 * upe)):
        for count in range(a, b):  # optax's 0-based count: 1-based update k = count + 1
            assert float(fn(count)) == pytest.approx(_plain_cosine(count + 1, a, b, start, 1e-5), rel=1e-5), count
    assert float(fn(6 * upe - 1)) == pytest.approx(1e-5, rel=1e-6)  # the last update reaches lr_end


def test_one_segment_is_the_reference_schedule_bit_for_bit():
    t = _train_config(epochs=4)
    plain, one = steps.create_learning_rate_fn(t, 10), steps.create_learning_rate_fn(t, 10, [(0, 4)])
    assert [float(plain(c)) for c in range(45)] == [float(one(c)) for c in range(45)]


def _meta(segments, step, total_steps):
    return {'lr_segments': [list(s) for s in segments], 'step': step, 'total_steps': total_steps, 'epoch': 0}


def test_plan_for_each_kind_of_checkpoint():
    assert lr_segments.plan(None, 3).segments == [(0, 3)]  # a fresh run
    assert lr_segments.plan({'step': 40, 'epoch': 4}, 7).segments == [(0, 7)]  # no record: as before
    finished = _meta([(0, 3)], 30, 30)
    assert lr_segments.plan(finished, 3) == lr_segments.Plan([(0, 3)])  # nothing to add
    extended = lr_segments.plan(finished, 5)
    assert extended == lr_segments.Plan([(0, 3), (3, 5)], extends=True, finished_epochs=3)
    # Killed in the middle of the extension: the same segments, so the resume is exact.
    assert lr_segments.plan(_meta(extended.segments, 42, 50), 5) == lr_segments.Plan([(0, 3), (3, 5)])
    again = lr_segments.plan(_meta(extended.segments, 50, 50), 6)  # an extension of the extension
    assert again.segments == [(0, 3), (3, 5), (5, 6)] and again.finished_epochs == 5
    with pytest.raises(ConfigError, match=r'config\.train\.epochs=2: the run in W already finished 3 epochs'):
        lr_segments.plan(finished, 2, 'W')
    with pytest.raises(ConfigError, match=r'config\.train\.epochs=4: the run in W planned 3 epochs and stopped at '
                                          r'step 12 of 30\. Resume it with config\.train\.epochs=3'):
        lr_segments.plan(_meta([(0, 3)], 12, 30), 4, 'W')


@pytest.mark.parametrize('bad', [-0.1, 1.5, 'half', True])
def test_extend_lr_fraction_is_checked(bad):
    with pytest.raises(ConfigError, match=r'config\.train\.extend_lr_fraction='):
        lr_segments.check_extend_lr_fraction(bad)


def _run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2')
    return subprocess.run([sys.executable, '-m', 'yolo_jax.main', '--nojemalloc', *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.mark.slow  # three smoke runs: 4 + 8 + 4 steps
def test_a_finished_run_trains_longer_on_a_new_cosine_resumes_exactly_and_refuses_fewer_epochs(tmp_path):
    workdir = tmp_path / 'run'
    first = _run('--config=configs/mnist.py:tiny,smoke', f'--workdir={workdir}', '--config.train.epochs=1',
                 '--config.data.digit_source=sklearn', f'--config.data.data_dir={tmp_path / "tfds"}',
                 '--config.train.checkpoint_every_steps=0', '--config.train.save_best_only=False')
    assert first.returncode == 0, first.stderr[-3000:]
    # The workdir alone: its config.py (epochs=1) with the new epochs on top.
    longer = _run(f'--workdir={workdir}', '--config.train.epochs=3')
    assert longer.returncode == 0, longer.stderr[-3000:]
    lr_init, lr_end, spe = 1e-3, 1e-6, 4  # the smoke config: 16 images, batch 4
    start, end = lr_end + 0.5 * (lr_init - lr_end), 3 * spe
    assert re.search(rf'Extending a finished run of 1 epochs to 3: lr segment from {start:.3g} to {lr_end:.3g} '
                     rf'over {end - spe} steps', longer.stderr), longer.stderr[-3000:]
    records = [json.loads(ln) for ln in (workdir / 'metrics.jsonl').read_text().splitlines()]
    train = {r['step']: r for r in records if r['kind'] == 'train'}
    assert [r['step'] for r in records if r['kind'] == 'train'] == list(range(1, end + 1))  # no gap, no repeat
    assert train[spe]['lr'] == pytest.approx(lr_init, rel=1e-5)  # the first run ended its warm-up at lr_init
    for step in range(spe + 1, end + 1):  # update k = step: the cosine over (spe, 3 spe]
        assert train[step]['lr'] == pytest.approx(_plain_cosine(step, spe, end, start, lr_end), rel=1e-5), step
    assert [r['step'] for r in records if r['kind'] == 'val'] == [spe, 2 * spe, end]
    meta = json.loads((workdir / 'checkpoints' / str(end) / 'meta' / 'metadata').read_text())
    assert meta['lr_segments'] == [[0, 1], [1, 3]] and meta['total_steps'] == meta['step'] == end

    # A crash after step 8, in the middle of the extension: the same command resumes there, exactly.
    shutil.rmtree(workdir / 'checkpoints' / str(end))
    resumed = _run(f'--workdir={workdir}', '--config.train.epochs=3')
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert re.search(rf'Resumed from \S+ at step {2 * spe} ', resumed.stderr), resumed.stderr[-3000:]
    assert 'Extending' not in resumed.stderr
    again = [json.loads(ln) for ln in (workdir / 'metrics.jsonl').read_text().splitlines()]
    again_train = {r['step']: r for r in again if r['kind'] == 'train'}
    assert [r['step'] for r in again if r['kind'] == 'train'] == list(range(1, end + 1))
    for step in range(2 * spe + 1, end + 1):
        assert again_train[step]['lr'] == pytest.approx(train[step]['lr'], rel=1e-6), step
        assert again_train[step]['total'] == pytest.approx(train[step]['total'], rel=1e-6), step

    fewer = _run(f'--workdir={workdir}', '--config.train.epochs=2')
    assert fewer.returncode == 2
    errors = [ln for ln in fewer.stderr.splitlines() if ln.startswith('error:')]
    assert len(errors) == 1 and 'Traceback' not in fewer.stderr, fewer.stderr[-3000:]
    assert re.match(rf'error: config\.train\.epochs=2: the run in \S+ already finished 3 epochs \(step {end}\)',
                    errors[0]), errors[0]
    saved = (workdir / 'config.py').read_text()  # the refused start left the run's config as it was
    assert json.loads(saved.split("r'''", 1)[1].split("'''", 1)[0])['train']['epochs'] == 3
