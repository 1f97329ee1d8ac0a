"""Reliability II, table-driven: every case runs the real command (`python -m yolo_jax.main`) on a bad input and
checks the one-line-error promise (exit code 2, exactly one `error:` line naming the file, field or flag, no
traceback, no training step) and that nothing is left that a later run would trip over. Then the kill tests: a
workdir whose newest checkpoint step was half deleted (eval, detect and resume use the newest complete one, with a
warning), a worker whose coordinator never comes, and a two-process run that loses a peer."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from test_bad_inputs import (
    SMOKE,
    assert_untouched,
    new_workdir,
    run_cli,
    small_config,
    snapshot,
    write_image,
)

from yolo_jax import checkpointing, config_checks, errors
from yolo_jax.data import coco_json, yolo_txt

MNIST = ('--config.data.digit_source=sklearn',)


@dataclasses.dataclass(frozen=True)
class Case:
    """`build(tmp_path, workdir)` -> the command's arguments; `message` a regex for its one `error:` line;
    `absent` paths (relative to tmp_path) the failing run must not create."""

    build: Callable[[Path, Path], list[str]]
    message: str
    absent: tuple[str, ...] = ()


def _train(*extra: str) -> Callable[[Path, Path], list[str]]:
    return lambda tmp, workdir: [f'--config={SMOKE}', f'--workdir={workdir}', *MNIST,
                                 f'--config.data.data_dir={tmp / "tfds"}', *extra]


def _jpeg_cut_20_bytes(path: Path) -> Path:
    write_image(path, size=(48, 48))
    data = path.read_bytes()
    path.write_bytes(data[:-20])  # the header still parses: only a full decode notices
    return path


def _coco_set(root: Path, name: str, *, cut: bool) -> tuple[Path, Path]:
    """A COCO JSON + image folder of two 48x48 JPEGs (the second 20 bytes short when `cut`)."""
    images = root / f'{name}_images'
    write_image(images / 'a.jpg', size=(48, 48), seed=1)
    (_jpeg_cut_20_bytes if cut else lambda p: write_image(p, size=(48, 48), seed=2))(images / 'b.jpg')
    data = {'images': [{'id': i + 1, 'file_name': f, 'width': 48, 'height': 48} for i, f in enumerate(('a.jpg',
                                                                                                        'b.jpg'))],
            'annotations': [{'id': i + 1, 'image_id': i + 1, 'category_id': 1, 'bbox': [4, 4, 20, 20], 'iscrowd': 0}
                            for i in range(2)],
            'categories': [{'id': k + 1, 'name': f'c{k}'} for k in range(10)]}
    path = root / f'{name}.json'
    path.write_text(json.dumps(data))
    return path, images


def _coco_truncated_jpeg(tmp: Path, workdir: Path) -> list[str]:
    train, train_images = _coco_set(tmp / 'coco', 'train', cut=True)
    test, test_images = _coco_set(tmp / 'coco', 'test', cut=False)
    return [f'--config={SMOKE}', f'--workdir={workdir}', '--config.data.dataset=coco_json',
            f'--config.data.train_annotations={train}', f'--config.data.train_images={train_images}',
            f'--config.data.test_annotations={test}', f'--config.data.test_images={test_images}']


def _coco_not_utf8(tmp: Path, workdir: Path) -> list[str]:
    args = _coco_truncated_jpeg(tmp, workdir)
    train = tmp / 'coco' / 'train.json'
    train.write_bytes(train.read_bytes().replace(b'"c0"', b'"\xe9t\xe9"'))  # Latin-1 'été'
    return args


def _yolo_set(root: Path, *, cut: bool) -> Path:
    """images/{a,b}.jpg with labels/{a,b}.txt (b 20 bytes short when `cut`); returns the image folder."""
    write_image(root / 'images' / 'a.jpg', seed=1)
    (_jpeg_cut_20_bytes if cut else lambda p: write_image(p, seed=2))(root / 'images' / 'b.jpg')
    for stem in 'ab':
        (root / 'labels').mkdir(parents=True, exist_ok=True)
        (root / 'labels' / f'{stem}.txt').write_text('0 0.5 0.5 0.4 0.4\n')
    return root / 'images'


def _names(path: Path, data: bytes | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if data is not None else ''.join(f'c{k}\n' for k in range(10)).encode())
    return path


def _yolo_truncated_jpeg(tmp: Path, workdir: Path) -> list[str]:
    return [f'--config={SMOKE}', f'--workdir={workdir}', '--config.data.dataset=yolo_txt',
            f'--config.data.train_images={_yolo_set(tmp / "train", cut=True)}',
            f'--config.data.test_images={_yolo_set(tmp / "test", cut=False)}',
            f'--config.data.class_names={_names(tmp / "names.txt")}']


def _annotation_files(tmp: Path) -> tuple[Path, Path]:
    write_image(tmp / 'ann' / 'a.png', seed=1)
    lines = tmp / 'ann' / 'train.txt'
    lines.write_text('a.png 4,4,30,30,0\n' * 4)  # a smoke batch of 4
    return lines, _names(tmp / 'ann' / 'names.txt')


def _names_not_utf8(tmp: Path, workdir: Path) -> list[str]:
    lines, names = _annotation_files(tmp)
    _names(names, b'caf\xe9\n' + b''.join(f'c{k}\n'.encode() for k in range(1, 10)))
    return [f'--config={SMOKE}', f'--workdir={workdir}', '--config.data.dataset=annotations',
            f'--config.data.train_annotations={lines}', f'--config.data.test_annotations={lines}',
            f'--config.data.class_names={names}']


def _annotations_without_test(tmp: Path, workdir: Path) -> list[str]:
    lines, names = _annotation_files(tmp)
    return [f'--config={SMOKE}', f'--workdir={workdir}', '--config.data.dataset=annotations',
            f'--config.data.train_annotations={lines}', f'--config.data.class_names={names}']


def _video(source: Callable[[Path], str]) -> Callable[[Path, Path], list[str]]:
    return lambda tmp, workdir: [f'--config={SMOKE}', f'--workdir={workdir}', '--mode=detect',
                                 f'--video={source(tmp)}', f'--output={tmp / "out"}']


def _text_named_mp4(tmp: Path) -> str:
    (tmp / 'clip.mp4').write_text('not a video\n')
    return str(tmp / 'clip.mp4')


CASES = {
    'log_every_steps=0': Case(_train('--config.train.log_every_steps=0'),
                              r'^error: config\.train\.log_every_steps=0: expected an integer >= 1', ('tfds',)),
    'eval_every_epochs=0': Case(_train('--config.train.eval_every_epochs=0'),
                                r'^error: config\.train\.eval_every_epochs=0: expected an integer >= 1', ('tfds',)),
    'epochs=0': Case(_train('--config.train.epochs=0'), r'^error: config\.train\.epochs=0: expected an integer >= 1',
                     ('tfds',)),
    'batch_size=0': Case(_train('--config.train.batch_size=0'),
                         r'^error: config\.train\.batch_size=0: expected an integer >= 1', ('tfds',)),
    'batch_size=-4': Case(_train('--config.train.batch_size=-4'),
                          r'^error: config\.train\.batch_size=-4: expected an integer >= 1', ('tfds',)),
    'eval_batch_size=0': Case(_train('--config.train.eval_batch_size=0'),
                              r'^error: config\.train\.eval_batch_size=0: expected an integer >= 1', ('tfds',)),
    'COCO JSON with a JPEG 20 bytes short': Case(
        _coco_truncated_jpeg, r'^error: 1 problem\(s\) in COCO annotations:'),  # the detail line names it, below
    'YOLO txt with a JPEG 20 bytes short': Case(
        _yolo_truncated_jpeg, r'^error: 1 bad YOLO label line\(s\) or image\(s\) in .*train/images:'),
    'class-names file not UTF-8': Case(_names_not_utf8, r'^error: .*ann/names\.txt: not a UTF-8 text file'),
    'COCO JSON not UTF-8': Case(_coco_not_utf8, r'^error: .*coco/train\.json: not a UTF-8 text file'),
    'dataset=annotations without test_annotations': Case(
        _annotations_without_test, r"^error: config\.data\.test_annotations: dataset='annotations' needs an "
        r'annotation file$'),
    '--video: missing file': Case(_video(lambda tmp: str(tmp / 'nope.mp4')),
                                  r'^error: --video: no such file .*nope\.mp4$', ('out',)),
    '--video: not a video': Case(_video(_text_named_mp4), r'^error: --video: OpenCV cannot open .*clip\.mp4 \(not a '
                                 r'video', ('out',)),
    '--video: no such camera': Case(_video(lambda tmp: '97'), r'^error: --video: OpenCV cannot open camera 97',
                                    ('out',)),
}
# The detail lines that must name the bad file (the first line names the data set).
DETAILS = {
    'COCO JSON with a JPEG 20 bytes short': r'train\.json: image id 2: unreadable image .*train_images/b\.jpg',
    'YOLO txt with a JPEG 20 bytes short': r'unreadable image .*train/images/b\.jpg',
}


@pytest.mark.parametrize('name', list(CASES))
def test_one_line_error(name, tmp_path):
    if name.startswith('--video'):
        pytest.importorskip('cv2', reason='video needs OpenCV (the video extra)')
    case = CASES[name]
    workdir = new_workdir(tmp_path)
    args = case.build(tmp_path, workdir)
    before = snapshot(workdir)
    proc = run_cli(args, {})
    stderr = proc.stderr
    assert proc.returncode == errors.EXIT_CODE, f'exit code {proc.returncode}\n{stderr[-3000:]}'
    error_lines = [ln for ln in stderr.splitlines() if ln.startswith('error: ')]
    assert len(error_lines) == 1, stderr[-3000:]
    assert re.search(case.message, error_lines[0]), error_lines[0]
    assert 'Traceback (most recent call last)' not in stderr, stderr[-3000:]
    assert not re.search(r'epoch: *\d+ step:', stderr), stderr[-3000:]  # before any training step
    if name in DETAILS:
        assert re.search(DETAILS[name], stderr.split('error: ', 1)[1]), stderr[-3000:]
    for path in case.absent:  # e.g. no generated data set, no empty detect output folder
        assert not (tmp_path / path).exists(), f'{tmp_path / path} was created'
    assert_untouched(before, workdir)
    assert sorted(p.name for p in workdir.iterdir()) == ['notes.txt']  # no checkpoints/, logs or probes left


# ----------------------------------------------------------------------------------------------------------------
# Every counter, in-process: min - 1 fails naming the field, min passes (the table in config_checks is the oracle
# only for which fields exist; the bounds are checked against what the defaults and docs say).

COUNTERS = {  # field: smallest valid value (0 = "off" / "auto" where the default config documents it)
    'train.batch_size': 1, 'train.eval_batch_size': 1, 'train.epochs': 1, 'train.warmup_epochs': 0,
    'train.log_every_steps': 1, 'train.eval_every_epochs': 1, 'train.map_every_epochs': 0,
    'train.checkpoint_every_steps': 0, 'train.bn_recalibration_batches': 0, 'train.multi_scale_every_steps': 1,
    'train.grad_accum_steps': 1, 'data.num_train': 1, 'data.num_test': 1, 'data.image_size': 1,
    'data.max_bbox_per_scale': 1, 'data.max_boxes': 1, 'data.num_threads': 0,
}


@pytest.mark.parametrize('field', list(COUNTERS))
def test_counter_bounds(field):
    section, key = field.split('.')
    config = small_config()
    config_checks.check_train_config(config)
    config[section][key] = COUNTERS[field]
    config_checks.check_train_config(config)  # the smallest valid value passes
    config[section][key] = COUNTERS[field] - 1
    with pytest.raises(errors.ConfigError, match=rf'^config\.{re.escape(field)}={COUNTERS[field] - 1}: expected'):
        config_checks.check_train_config(config)


def test_steps_per_epoch_is_minus_one_or_positive():
    config = small_config()
    for ok in (-1, 1, 7):
        config.train.steps_per_epoch = ok
        config_checks.check_train_config(config)
    for bad in (0, -2):
        config.train.steps_per_epoch = bad
        with pytest.raises(errors.ConfigError, match=rf'config\.train\.steps_per_epoch={bad}: expected -1'):
            config_checks.check_train_config(config)


def test_readers_decode_every_image_and_list_all_bad_ones(tmp_path):
    """The readers, not only the command: two cut JPEGs are both listed in one error."""
    train, images = _coco_set(tmp_path / 'coco', 'train', cut=True)
    _jpeg_cut_20_bytes(images / 'a.jpg')
    with pytest.raises(coco_json.CocoJsonError, match=r'^2 problem\(s\)(.|\n)*image id 1: unreadable image .*a\.jpg'
                       r'(.|\n)*image id 2: unreadable image .*b\.jpg'):
        coco_json.read_coco_json(train, images)
    folder = _yolo_set(tmp_path / 'yolo', cut=True)
    _jpeg_cut_20_bytes(folder / 'a.jpg')
    with pytest.raises(yolo_txt.YoloTxtError, match=r'^2 bad (.|\n)*a\.jpg(.|\n)*b\.jpg'):
        yolo_txt.read_yolo_txt(folder, 10)
    good = _yolo_set(tmp_path / 'fine', cut=False)  # the oracle: intact files read, with their sizes recorded
    records = yolo_txt.read_yolo_txt(good, 10)
    assert [r.num_bytes for r in records] == [p.stat().st_size for p in sorted(good.iterdir())]


# ----------------------------------------------------------------------------------------------------------------
# Half-deleted checkpoint steps: what a run killed while orbax cleaned up (or a hand `rm`) leaves.


def _two_steps(workdir: Path) -> Path:
    """Steps 1 (val 2.0) and 2 (val 1.0: the best and the latest) of the tiny,smoke model; step 2's `state` item
    deleted. Returns the damaged folder."""
    import jax
    import numpy as np

    from yolo_jax import steps

    config = small_config()
    abstract = jax.eval_shape(lambda: steps.build_model_and_state(config, 1)[2])
    manager = checkpointing.create_manager(workdir, save_best_only=False)
    for step, loss in ((1, 2.0), (2, 1.0)):
        # Floats 0.25 * step; integers (the step counter, Adam's count) the step itself.
        state = jax.tree.map(lambda s, v=step: np.full(s.shape, v if np.issubdtype(s.dtype, np.integer)
                                                       else 0.25 * v, s.dtype), abstract)
        metrics = {checkpointing.BEST_METRIC: loss}
        checkpointing.save(manager, step, state, {'epoch': step, 'step': step, 'metrics': metrics}, metrics=metrics)
    manager.wait_until_finished()
    manager.close()
    shutil.rmtree(workdir / 'checkpoints' / '2' / 'state')
    return workdir / 'checkpoints' / '2'


def test_load_model_skips_a_damaged_step(tmp_path):
    damaged = _two_steps(tmp_path)
    variables, step, meta = checkpointing.load_model(tmp_path)
    assert step == 1 and meta['step'] == 1  # the best (step 2) is damaged: the best complete one
    kernel = next(iter(jax_leaves(variables['params'])))
    assert float(kernel.flat[0]) == 0.25
    with pytest.raises(errors.DataError, match=r'checkpoint .*checkpoints/2 is damaged: state/_METADATA is missing'):
        checkpointing.load_model(damaged)
    shutil.rmtree(tmp_path / 'checkpoints' / '1' / 'meta')  # now no step is complete
    with pytest.raises(errors.MissingFileError, match='no complete checkpoint'):
        checkpointing.load_model(tmp_path)


def jax_leaves(tree):
    import jax

    return jax.tree.leaves(tree)


def test_resume_sets_a_damaged_step_aside(tmp_path):
    damaged = _two_steps(tmp_path)
    moved = checkpointing.set_aside_damaged(tmp_path)
    assert len(moved) == 1 and moved[0].parent == tmp_path / 'checkpoints_damaged' and not damaged.exists()
    manager = checkpointing.create_manager(tmp_path)
    assert manager.latest_step() == 1  # what train_and_evaluate then resumes from
    manager.close()


def test_detect_uses_the_newest_complete_step(tmp_path):
    workdir = tmp_path / 'workdir'
    _two_steps(workdir)
    image = write_image(tmp_path / 'a.png')
    before = snapshot(workdir)
    proc = run_cli([f'--config={SMOKE}', f'--workdir={workdir}', '--mode=detect', f'--images={image}',
                    f'--output={tmp_path / "out"}', '--config.train.eval_batch_size=2'], {})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r'skipping damaged checkpoint .*checkpoints/2: state/_METADATA is missing', proc.stderr)
    assert re.search(r'Loaded checkpoint .*checkpoints/1 \(step 1\)', proc.stderr), proc.stderr[-3000:]
    assert json.loads((tmp_path / 'out' / 'detections.json').read_text())['complete'] is True
    assert_untouched(before, workdir)  # eval and detect read; they never move or delete


@pytest.mark.slow  # builds the 8-image MNIST test split and evaluates it
def test_eval_uses_the_newest_complete_step(tmp_path):
    workdir = tmp_path / 'workdir'
    _two_steps(workdir)
    proc = run_cli([f'--config={SMOKE}', f'--workdir={workdir}', '--mode=eval', *MNIST,
                    f'--config.data.data_dir={tmp_path / "tfds"}', '--config.train.eval_batch_size=2'], {})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r'skipping damaged checkpoint .*checkpoints/2: state/_METADATA is missing', proc.stderr)
    assert re.search(r'Loaded checkpoint .*checkpoints/1 \(step 1\)', proc.stderr), proc.stderr[-3000:]
    assert json.loads((workdir / 'eval' / 'metrics.json').read_text())['metrics']['num_images'] == 8


@pytest.mark.slow  # trains 8 smoke steps
def test_resume_continues_from_the_newest_complete_step(tmp_path):
    workdir = tmp_path / 'workdir'
    _two_steps(workdir)
    proc = run_cli([f'--config={SMOKE}', f'--workdir={workdir}', *MNIST, f'--config.data.data_dir={tmp_path / "tfds"}',
                    '--config.train.checkpoint_every_steps=0'], {})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r'damaged checkpoint .*checkpoints/2 \(state/_METADATA is missing\) moved to '
                     r'.*checkpoints_damaged/2-', proc.stderr), proc.stderr[-3000:]
    assert re.search(r'Resumed from \S+ at step 1 ', proc.stderr), proc.stderr[-3000:]
    steps = [json.loads(ln)['step'] for ln in (workdir / 'metrics.jsonl').read_text().splitlines()
             if json.loads(ln)['kind'] == 'train']
    assert steps == list(range(2, 9))  # steps 2..8: nothing before the restored step 1 is replayed
    assert sorted(p.name for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit())[-1] == '8'


# ----------------------------------------------------------------------------------------------------------------
# Several processes: an unreachable coordinator and a lost peer end each survivor with one error line.


def _pair_cmd(workdir: Path, data_dir: Path, address: str, pid: int, *extra: str) -> list[str]:
    return [sys.executable, '-m', 'yolo_jax.main', '--nojemalloc', f'--config={SMOKE}', *MNIST,
            f'--workdir={workdir}', f'--config.data.data_dir={data_dir}', f'--coordinator_address={address}',
            '--num_processes=2', f'--process_id={pid}', '--heartbeat_timeout_seconds=10', *extra]


def _assert_one_clean_error(stderr: str, code: int, message: str) -> None:
    assert code == errors.EXIT_CODE, f'exit code {code}\n{stderr[-3000:]}'
    error_lines = [ln for ln in stderr.splitlines() if ln.startswith('error: ')]
    assert len(error_lines) == 1 and re.search(message, error_lines[0]), stderr[-3000:]
    for native in ('Traceback (most recent call last)', 'Fatal Python error', 'Check failure stack trace',
                   'Terminating process because'):
        assert native not in stderr, f'{native!r} in\n{stderr[-3000:]}'


def test_worker_without_coordinator_gives_up(tmp_path):
    from test_parallel import _env, _free_port

    address = f'127.0.0.1:{_free_port()}'
    t0 = time.monotonic()
    proc = subprocess.run(_pair_cmd(tmp_path / 'run', tmp_path / 'tfds', address, 1,
                                    '--coordinator_timeout_seconds=5'),
                          cwd=Path(__file__).resolve().parents[1], env=_env(1), capture_output=True, text=True,
                          timeout=300)
    _assert_one_clean_error(proc.stderr, proc.returncode, rf'^error: process 1 of 2: could not connect all '
                            rf'processes through the coordinator at {re.escape(address)} within 5 s '
                            r'\(--coordinator_timeout_seconds\)')
    print(f'gave up {time.monotonic() - t0:.1f} s after starting')


@pytest.mark.slow
@pytest.mark.parametrize('killed', [1, 0])
def test_lost_peer_is_one_error_line(tmp_path, killed):
    """A process is killed mid-run (a worker, or the coordinator): the survivor ends with one error line naming
    the lost process and the checkpoint to resume from, without a native abort's dump; started again (after the
    worker's loss), the pair (2 processes x 2 devices, mesh) resumes from that checkpoint and finishes the run as
    one: the same losses in both processes, one checkpoint set, mAP over the whole test split equal to a
    single-process evaluation of the same weights."""
    from test_parallel import _env, _free_port

    repo = Path(__file__).resolve().parents[1]
    workdir = tmp_path / 'run'

    def start(tag: str) -> tuple[list[subprocess.Popen], list[Path], str]:
        address, logs = f'127.0.0.1:{_free_port()}', [tmp_path / f'{tag}{pid}.log' for pid in range(2)]
        return [subprocess.Popen(_pair_cmd(workdir, tmp_path / 'tfds', address, pid, '--config.train.epochs=3',
                                           '--config.train.map_every_epochs=3'),
                                 cwd=repo, env=_env(2), stdout=subprocess.DEVNULL, stderr=logs[pid].open('w'))
                for pid in range(2)], logs, address

    procs, logs, address = start('first')
    try:
        deadline = time.monotonic() + 600
        while not re.search(r'epoch: *1 step', logs[0].read_text()) and time.monotonic() < deadline:
            assert procs[0].poll() is None and procs[1].poll() is None, logs[0].read_text()[-3000:]
            time.sleep(0.2)
        procs[killed].send_signal(signal.SIGKILL)
        code = procs[1 - killed].wait(timeout=300)  # the hang guard: the heartbeat timeout is 10 s
    finally:
        for p in procs:
            p.kill()
    stderr = logs[1 - killed].read_text()
    lost = (r'process 1 stopped answering \(killed, crashed or unreachable\)' if killed == 1 else
            rf'process 0 \(the coordinator at {re.escape(address)}\) is gone')
    _assert_one_clean_error(stderr, code, rf'^error: process {1 - killed} of 2: {lost}; this process stopped too\. '
                            'Start the same commands again to resume from the last checkpoint: '
                            rf'{re.escape(str(workdir))}/checkpoints/\d+$')
    if killed == 1:
        resumed = re.search(r'checkpoints/(\d+)$', stderr.strip()).group(1)
        procs, logs, _ = start('again')
        try:
            codes = [p.wait(timeout=900) for p in procs]
        finally:
            for p in procs:
                p.kill()
        assert codes == [0, 0], logs[0].read_text()[-3000:]
        assert re.search(rf'Resumed from \S+ at step {resumed}\b', logs[0].read_text()), logs[0].read_text()[-3000:]
        records = [json.loads(ln) for ln in (workdir / 'metrics.jsonl').read_text().splitlines()]
        steps = [r['step'] for r in records if r['kind'] == 'train']
        assert steps[-1] == 12 and 0 < int(resumed) < 12, (resumed, steps)
        _assert_pair_ran_as_one(workdir, [log.read_text() for log in logs], records, steps_run=12 - int(resumed))


def _assert_pair_ran_as_one(workdir: Path, logs: list[str], records: list[dict], steps_run: int) -> None:
    """Two processes x 2 devices trained one run: both saw the same global steps, wrote one checkpoint set, and
    their mAP over the whole test split equals a single-process evaluation of the checkpoint eval serves."""
    from test_parallel import _console_losses

    assert all('on 4 device(s) in 2 process(es), mode mesh' in text for text in logs), logs[0][-3000:]
    losses = [_console_losses(text) for text in logs]
    assert len(losses[0]) == steps_run and losses[0] == losses[1]  # both processes see the same global steps
    saved = [p.name for p in (workdir / 'checkpoints').iterdir()]
    assert all(n.isdigit() for n in saved) and '12' in saved, saved  # one set, no per-process copies or leftovers
    proc = run_cli([f'--workdir={workdir}', '--mode=eval', '--config.eval.fold_batchnorm=False'], {})
    assert proc.returncode == 0, proc.stderr[-3000:]
    step = int(re.search(r'Loaded checkpoint \S+ \(step (\d+)\)', proc.stderr).group(1))  # the best one
    train_map = [r for r in records if r['kind'] == 'map' and r['step'] == step]
    assert len(train_map) == 1 and train_map[0]['num_images'] == 8, (step, records)  # not one process's half
    metrics = json.loads((workdir / 'eval' / 'metrics.json').read_text())['metrics']
    assert metrics['num_images'] == 8 and metrics['num_detections'] == train_map[0]['num_detections']
    assert metrics['map50'] == pytest.approx(train_map[0]['map50'], abs=1e-6)
    assert metrics['coco_map'] == pytest.approx(train_map[0]['coco_map'], abs=1e-6)


# The coordination service's messages as this jaxlib printed them in the runs above (a worker killed; the
# coordinator killed; a worker that never reached its coordinator).
WORKER_LOST = ('E1204 coordination_service.cc:1549] Use error polling to propagate the following error to all tasks: '
               'UNAVAILABLE: The following tasks are unhealthy (stopped sending heartbeats):\n1\nThe tasks have '
               'crashed.\nF1204 client.h:80] Terminating process because the JAX distributed service detected fatal '
               'errors.\n')
COORDINATOR_LOST = ('F1204 client.h:80] Terminating process because the JAX distributed service detected fatal errors.'
                    '\nAdditional GRPC error information from remote target coordination_service while calling '
                    '/xla.coordination.CoordinationService/PollForError:\n:UNKNOWN:Error received from peer '
                    '{grpc_status:14, grpc_message:"Socket closed"}\n')
NEVER_CONNECTED = ('F1204 client.h:80] Terminating process because the JAX distributed service detected fatal errors. '
                   'absl::Status: DEADLINE_EXCEEDED: Deadline Exceeded\n\nRPC: /xla.coordination.CoordinationService/'
                   'RegisterTask\n')


def _orbax_commit_error(cause: BaseException) -> logging.LogRecord:
    """The record orbax's background commit thread logs (logging.error(msg, exc_info=True)) when `cause` ends its
    barrier wait: a TimeoutError raised from `cause`, as in CI's log of a worker killed mid-save."""
    try:
        try:
            raise cause
        except BaseException as e:
            raise TimeoutError('Timed out while waiting for async_commit_complete barrier.') from e
    except TimeoutError:
        exc_info = sys.exc_info()
    return logging.LogRecord('absl', logging.ERROR, '/site-packages/orbax/checkpoint/async_checkpointer.py', 264,
                             '[process=%s] Failed to run 4 Handler Commit operations', (0,), exc_info)


def test_a_lost_peer_mid_save_logs_one_line_and_other_errors_keep_their_traceback():
    from yolo_jax import supervise

    lost = _orbax_commit_error(RuntimeError('INTERNAL: Barrier failed because: task is set to ERROR: UNAVAILABLE: '
                                            'Task 1 heartbeat timeout. This indicates that\nthe remote task failed'))
    supervise.shorten_peer_failure(lost)
    text = logging.Formatter().format(lost)
    assert text == ('[process=0] Failed to run 4 Handler Commit operations (RuntimeError: INTERNAL: Barrier failed '
                    'because: task is set to ERROR: UNAVAILABLE: Task 1 heartbeat timeout. This indicates that)')
    disk = _orbax_commit_error(OSError(28, 'No space left on device'))
    supervise.shorten_peer_failure(disk)
    text = logging.Formatter().format(disk)
    assert 'Traceback (most recent call last)' in text and 'No space left on device' in text


def test_supervisor_names_the_lost_process(tmp_path):
    from yolo_jax import supervise

    kw = dict(num_processes=3, coordinator='h0:1234', timeout_s=7, workdir=str(tmp_path))
    assert re.match(r'process 0 of 3: process 1 stopped answering .* resume from the last checkpoint: none yet',
                    supervise.report(WORKER_LOST, process_id=0, **kw))
    assert re.match(r'process 2 of 3: process 1 stopped answering', supervise.report(WORKER_LOST, process_id=2, **kw))
    assert re.match(r'process 1 of 3: process 0 \(the coordinator at h0:1234\) is gone',
                    supervise.report(COORDINATOR_LOST, process_id=1, **kw))
    assert re.match(r'process 1 of 3: could not connect all processes through the coordinator at h0:1234 within 7 s',
                    supervise.report(NEVER_CONNECTED, process_id=1, **kw))
    _two_steps(tmp_path)  # step 2 damaged: the newest complete checkpoint is step 1
    assert supervise.newest_checkpoint(str(tmp_path)) == str(tmp_path.absolute() / 'checkpoints' / '1')


def test_a_failed_start_leaves_no_workdir_and_results_are_world_readable(tmp_path):
    """A start that fails on its data creates no empty workdir (issue: own photos I); atomically written results
    are 0644 like the pictures beside them, not mkstemp's 0600."""
    from yolo_jax.data.annotations import write_text_atomic

    workdir = tmp_path / 'runs' / 'never'
    proc = run_cli(_train('--config.data.dataset=foo')(tmp_path, workdir), {})
    assert proc.returncode == 2 and 'unknown data set' in proc.stderr
    assert not workdir.exists() and not (tmp_path / 'runs').exists()
    write_text_atomic(tmp_path / 'out' / 'detections.json', '{}\n')
    assert oct((tmp_path / 'out' / 'detections.json').stat().st_mode & 0o777) == '0o644'
