"""End-to-end training through `python -m yolo_jax.main`: exact resume after a kill, and the NaN guard.

Uses the `tiny,smoke` config variant (YOLOv3-tiny, 64 px input, 16 train / 8 test images of the bundled
offline digits), built once into a temporary TFDS data dir shared by the tests of this module.
"""

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp('tfds')


def _cmd(workdir: Path, data_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable, '-m', 'yolo_jax.main', '--config=configs/mnist.py:tiny,smoke', f'--workdir={workdir}',
        f'--config.data.data_dir={data_dir}', '--config.data.digit_source=sklearn', *extra,
    ]


def _env() -> dict:
    return dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2', PYTHONUNBUFFERED='1')


def _train_losses(workdir: Path) -> dict[int, float]:
    """step → total loss from metrics.jsonl (a resumed run appends; the last record of a step wins)."""
    out = {}
    for line in (workdir / 'metrics.jsonl').read_text().splitlines():
        rec = json.loads(line)
        if rec['kind'] == 'train':
            out[rec['step']] = rec['total']
    return out


def test_kill_and_resume_matches_uninterrupted_run(tmp_path, data_dir):
    full = tmp_path / 'full'
    proc = subprocess.run(_cmd(full, data_dir), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    expected = _train_losses(full)
    assert sorted(expected) == list(range(1, 9))  # 2 epochs x 4 steps, logged every step
    assert 'total_val_loss' in proc.stderr and 'epoch: 1 step:    4/4' in proc.stderr

    # The same run SIGKILLs itself after step 7 (epoch 1, step 3 of 4), right after the asynchronous save of the
    # mid-epoch checkpoint of step 6 started: the save may or may not have completed.
    resumed = tmp_path / 'resumed'
    proc = subprocess.run(_cmd(resumed, data_dir, '--config.train.debug_kill_at_step=7'), cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-4000:]
    assert max(_train_losses(resumed)) == 7

    # Rerun the same command: it resumes from the last complete checkpoint (6, or the epoch's end at 4).
    proc = subprocess.run(_cmd(resumed, data_dir), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    match = re.search(r'Resumed from \S+ at step (\d+)', proc.stderr)
    assert match and int(match.group(1)) in (4, 6), proc.stderr[-4000:]
    resume_step = int(match.group(1))
    assert not list((resumed / 'checkpoints').glob('*tmp*'))  # no half-written checkpoint left behind
    got = _train_losses(resumed)
    for step in range(resume_step + 1, 9):  # the steps after the resume point equal the uninterrupted run's
        assert got[step] == pytest.approx(expected[step], rel=1e-6), step


def test_nan_stops_run_and_keeps_last_good_checkpoint(tmp_path, data_dir):
    workdir = tmp_path / 'nan'
    # Step index 5 is the 6th update (epoch 1): epoch 0's checkpoint (step 4) is the last good one.
    proc = subprocess.run(_cmd(workdir, data_dir, '--config.train.debug_nan_at_step=5'), cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode != 0
    assert 'non-finite value at step 6' in proc.stderr and 'total' in proc.stderr
    from yolo_jax import checkpointing

    mgr = checkpointing.create_manager(workdir)
    assert mgr.latest_step() == 4
    meta = checkpointing.restore_meta(mgr, 4)
    assert meta['epoch'] == 1 and meta['metrics']['val_total'] > 0
