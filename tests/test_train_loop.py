"""End-to-end training through `python -m yolo_jax.main`: exact resume after a kill, the NaN guard, freezing.

Uses the `tiny,smoke` config variant (YOLOv3-tiny, 64 px input, 16 train / 8 test images of the bundled
offline digits), built once into a temporary TFDS data dir shared by the tests of this module.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
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


def _train_losses(workdir: Path, kind: str = 'train') -> dict[int, float]:
    """step → total loss from metrics.jsonl (a resumed run appends; the last record of a step wins)."""
    out = {}
    for line in (workdir / 'metrics.jsonl').read_text().splitlines():
        rec = json.loads(line)
        if rec['kind'] == kind:
            out[rec['step']] = rec['total']
    return out


def _wait_for_step(proc: subprocess.Popen, workdir: Path, step: int, timeout: float = 600) -> None:
    """Returns once metrics.jsonl logs `step` (the process runs on), or fails if the process ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        path = workdir / 'metrics.jsonl'
        if path.exists() and any(json.loads(ln).get('step', 0) >= step for ln in path.read_text().splitlines()
                                 if ln.strip().endswith('}')):
            return
        assert proc.poll() is None, 'the run ended before it could be killed'
        time.sleep(0.02)
    raise TimeoutError(f'step {step} not reached in {timeout} s')


@pytest.mark.slow
def test_kill_and_resume_matches_uninterrupted_run(tmp_path, data_dir):
    # 16 steps: the kill lands mid-run. With an EMA of the weights (validated each epoch): it resumes exactly too.
    epochs = ('--config.train.epochs=4', '--config.train.ema_decay=0.9', '--config.train.ema_tau=4')
    full = tmp_path / 'full'
    proc = subprocess.run(_cmd(full, data_dir, *epochs), cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    expected = _train_losses(full)
    assert sorted(expected) == list(range(1, 17))  # 4 epochs x 4 steps, logged every step
    assert 'total_val_loss' in proc.stderr and 'epoch: 3 step:    4/4' in proc.stderr

    # SIGKILL from outside once step 7 is logged: wherever the run is then (a step, an async save, an eval).
    resumed = tmp_path / 'resumed'
    proc = subprocess.Popen(_cmd(resumed, data_dir, *epochs), cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        _wait_for_step(proc, resumed, 7)
    finally:
        proc.kill()
    assert proc.wait(timeout=60) == -signal.SIGKILL

    # Rerun the same command: it resumes from the last complete checkpoint.
    proc = subprocess.run(_cmd(resumed, data_dir, *epochs), cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    match = re.search(r'Resumed from \S+ at step (\d+)', proc.stderr)
    assert match and int(match.group(1)) >= 4, proc.stderr[-4000:]
    assert not list((resumed / 'checkpoints').glob('*tmp*'))  # no half-written checkpoint left behind
    records = [json.loads(ln) for ln in (resumed / 'metrics.jsonl').read_text().splitlines()]
    steps = [r['step'] for r in records if r['kind'] == 'train']
    assert steps == list(range(1, 17))  # each step once: the replayed steps replaced, not appended
    got = _train_losses(resumed)
    for step in range(1, 17):  # before the kill and after the resume, the losses equal the uninterrupted run's
        assert got[step] == pytest.approx(expected[step], rel=1e-6), step
    expected_val, got_val = _train_losses(full, 'val'), _train_losses(resumed, 'val')  # the EMA's
    assert sorted(got_val) == sorted(expected_val) == [4, 8, 12, 16]
    for step, loss in expected_val.items():
        assert got_val[step] == pytest.approx(loss, rel=1e-6), step


@pytest.mark.slow
def test_divergence_stops_run_and_says_what_was_kept(tmp_path, data_dir):
    workdir = tmp_path / 'nan'
    # A fresh run that diverges at once: no checkpoint exists, and the message says so.
    proc = subprocess.run(_cmd(workdir, data_dir, '--config.train.lr_init=1e30'), cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode != 0
    assert re.search(r'non-finite value at step [1-4] ', proc.stderr), proc.stderr[-3000:]
    assert 'No checkpoint had been written yet' in proc.stderr
    # One good epoch, then the same run continued with an exploding learning rate: epoch 0's checkpoint stays.
    proc = subprocess.run(_cmd(workdir, data_dir, '--config.train.epochs=1'), cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = subprocess.run(_cmd(workdir, data_dir, '--config.train.lr_init=1e30'), cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode != 0
    assert re.search(r'non-finite value at step [5-8] ', proc.stderr), proc.stderr[-3000:]
    assert 'The last good checkpoint is kept' in proc.stderr
    from yolo_jax import checkpointing

    mgr = checkpointing.create_manager(workdir)
    assert mgr.latest_step() == 4
    meta = checkpointing.restore_meta(mgr, 4)
    assert meta['epoch'] == 1 and meta['metrics']['val_total'] > 0


@pytest.mark.slow
def test_freeze_backbone_keeps_params_and_statistics_and_eval_ignores_training_flags(tmp_path, data_dir):
    """freeze=backbone: backbone params AND BatchNorm statistics bit-identical to the transferred start; then eval
    and detect of that checkpoint run without the training-only flags (freeze, grad clipping)."""
    import numpy as np
    from test_detect import make_workdir

    from configs.mnist import get_config
    from yolo_jax import checkpointing

    start = make_workdir(tmp_path / 'start', get_config('tiny,smoke'))  # a checkpoint as training writes it
    frozen = tmp_path / 'frozen'
    flags = ('--config.train.freeze=backbone', '--config.train.grad_clip_norm=10', f'--config.train.init_from={start}',
             '--config.train.bn_recalibration_batches=2')
    proc = subprocess.run(_cmd(frozen, data_dir, *flags), cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    before, _, _ = checkpointing.load_model(start)
    after, step, _ = checkpointing.load_model(frozen / 'checkpoints' / '8')
    for part in ('params', 'batch_stats'):
        for a, b in zip(jax_leaves(before[part]['backbone']), jax_leaves(after[part]['backbone']), strict=True):
            np.testing.assert_array_equal(a, b)
        moved = [np.any(a != b) for a, b in zip(jax_leaves(before[part]['head']), jax_leaves(after[part]['head']),
                                                 strict=True)]
        assert any(moved), part

    proc = subprocess.run(_cmd(frozen, data_dir, '--mode=eval'), cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((frozen / 'eval' / 'metrics.json').read_text())['metrics']['num_images'] == 8
    image = tmp_path / 'digit.png'
    from PIL import Image

    Image.fromarray(np.full((50, 70, 3), 255, np.uint8)).save(image)
    proc = subprocess.run(_cmd(frozen, data_dir, '--mode=detect', f'--images={image}'), cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(json.loads((frozen / 'detect' / 'detections.json').read_text())['images']) == 1


@pytest.mark.slow
def test_ema_run_validates_and_serves_the_ema_weights(tmp_path, data_dir):
    """config.train.ema_decay > 0 end to end: the checkpoint holds the EMA, and what eval/detect/export load
    (inference.load_detector → checkpointing.load_model) is that EMA, bit for bit, not the raw params; --mode=eval
    then reproduces the mAP the run reported for its final (EMA) weights."""
    import numpy as np
    import orbax.checkpoint as ocp

    from configs.mnist import get_config
    from yolo_jax import inference

    workdir = tmp_path / 'ema'
    # One epoch: its end-of-epoch checkpoint is both the best and the final weights. tau = 4 updates: after 4
    # the average still weighs the earlier weights (decay 0.9 (1 - e^-1) = 0.57).
    flags = ('--config.train.epochs=1', '--config.train.ema_decay=0.9', '--config.train.ema_tau=4',
             '--config.train.bn_recalibration_batches=2', '--config.eval.fold_batchnorm=False')
    proc = subprocess.run(_cmd(workdir, data_dir, *flags), cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with ocp.PyTreeCheckpointer() as checkpointer:
        saved = checkpointer.restore(workdir / 'checkpoints' / '4' / 'state')  # the whole TrainState
    config = get_config('tiny,smoke')
    _, served, _ = inference.load_detector(config, workdir, fold=False)
    for part in ('params', 'batch_stats'):
        for a, b in zip(jax_leaves(served[part]), jax_leaves(saved['ema'][part]), strict=True):
            np.testing.assert_array_equal(a, b)
    diffs = [float(np.abs(a - b).max()) for a, b in zip(jax_leaves(served['params']), jax_leaves(saved['params']))]
    assert max(diffs) > 1e-4, diffs  # the raw params are not what is served

    proc = subprocess.run(_cmd(workdir, data_dir, '--mode=eval', *flags[-1:]), cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    evaluated = json.loads((workdir / 'eval' / 'metrics.json').read_text())['metrics']
    reported = [json.loads(ln) for ln in (workdir / 'metrics.jsonl').read_text().splitlines()]
    reported = [r for r in reported if r['kind'] == 'map'][-1]
    assert evaluated['num_detections'] == reported['num_detections']
    assert evaluated['map50'] == pytest.approx(reported['map50'], abs=1e-6)


def jax_leaves(tree) -> list:
    import jax

    return jax.tree.leaves(tree)


@pytest.mark.slow
def test_multi_scale_run_trains_at_each_steps_size_and_compiles_once_per_size(tmp_path, data_dir):
    """Mesh mode, sizes (32, 64) switching every 2 steps: each logged step was fed its `train_input_size`, both
    sizes occur, and after 8 steps the jitted train step's cache holds exactly 2 programs."""
    from helpers import spec_of

    from configs.mnist import get_config
    from yolo_jax.input_pipeline import train_input_size

    workdir = tmp_path / 'multi_scale'
    flags = ('--config.train.multi_scale_sizes=(32, 64)', '--config.train.multi_scale_every_steps=2')
    proc = subprocess.run(_cmd(workdir, data_dir, *flags), cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert 'Training done: 8 steps; compiled train-step programs: 2' in proc.stderr, proc.stderr[-4000:]
    config = get_config('tiny,smoke')
    config.train.multi_scale_sizes, config.train.multi_scale_every_steps = (32, 64), 2
    records = [json.loads(ln) for ln in (workdir / 'metrics.jsonl').read_text().splitlines()]
    fed = {r['step']: r['input_size'] for r in records if r['kind'] == 'train'}
    # metrics' step s = the s-th update
    assert fed == {s: train_input_size(spec_of(config), config.train, s - 1) for s in range(1, 9)}
    assert set(fed.values()) == {32, 64}
    assert [r['kind'] for r in records if r['kind'] != 'train'] == ['val', 'val', 'map']  # at 64 (input_size)
