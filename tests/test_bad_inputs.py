"""Bad inputs and faults, table-driven: each case builds its bad input in tmp_path, runs the CLI or the function,
and checks the exit code (2 for user errors), the one `error:` line naming the file, line or config field, a
sanity bound on the time, and that files already in the workdir are untouched."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from configs.mnist import get_config
from yolo_jax import darknet, detect, errors, inference, visualize
from yolo_jax.data import annotations as ann
from yolo_jax.spec import build_spec, check_num_classes

REPO = Path(__file__).resolve().parents[1]
SMOKE = 'configs/mnist.py:tiny,smoke'


# ----------------------------------------------------------------------------------------------------------------
# Helpers.


def snapshot(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under `folder`."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob('*') if p.is_file()
    }


def assert_untouched(before: dict[str, str], folder: Path) -> None:
    """Every file that was in `folder` is still there with the same bytes (new files are allowed)."""
    after = snapshot(folder)
    lost = sorted(k for k in before if k not in after)
    changed = sorted(k for k in before if k in after and after[k] != before[k])
    assert not lost and not changed, f'lost {lost}, changed {changed}'


def new_workdir(root: Path) -> Path:
    """A workdir holding a file that no failing run may touch."""
    workdir = root / 'workdir'
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / 'notes.txt').write_text('results of an earlier run\n')
    return workdir


def write_image(path: Path, size: tuple[int, int] = (48, 48), seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, **({'quality': 90} if path.suffix == '.jpg' else {}))
    return path


def truncate(path: Path, keep: float = 0.5) -> Path:
    """Cuts the file's body: the header still parses, the pixels do not decode."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def make_dataset(root: Path, *, train: list[str] | None = None, test: list[str] | None = None) -> dict[str, Path]:
    """Four 48x48 PNGs, 10 class names, train.txt and test.txt (default: one box per image in both)."""
    for i in range(4):
        write_image(root / 'images' / f'{i}.png', seed=i)
    default = [f'images/{i}.png 4,4,30,30,{i}' for i in range(4)]
    files = {'names': root / 'classes.txt', 'train': root / 'train.txt', 'test': root / 'test.txt'}
    files['names'].write_text(''.join(f'{i}\n' for i in range(10)))
    files['train'].write_text(''.join(f'{ln}\n' for ln in (default if train is None else train)))
    files['test'].write_text(''.join(f'{ln}\n' for ln in (default if test is None else test)))
    return files


def annotation_flags(files: dict[str, Path]) -> list[str]:
    return [
        '--config.data.dataset=annotations',
        f'--config.data.train_annotations={files["train"]}',
        f'--config.data.test_annotations={files["test"]}',
        f'--config.data.class_names={files["names"]}',
    ]


def annotation_config(files: dict[str, Path]):
    config = get_config('tiny,smoke')
    config.data.dataset = 'annotations'
    config.data.train_annotations = str(files['train'])
    config.data.test_annotations = str(files['test'])
    config.data.class_names = str(files['names'])
    return config


def small_config():
    config = get_config('tiny,smoke')
    config.eval.score_threshold = 0.05
    config.train.eval_batch_size = 2
    return config


def make_checkpoint(workdir: Path, config) -> Path:
    """A workdir with one checkpoint, saved as training saves it, of a model whose every value is 0.5 (the cases
    here need its shapes, not its predictions; no compile needed)."""
    import jax

    from yolo_jax import checkpointing, steps

    abstract = jax.eval_shape(lambda: steps.build_model_and_state(config, 1)[2])
    state = jax.tree.map(lambda s: np.full(s.shape, 0.5, s.dtype), abstract)
    manager = checkpointing.create_manager(workdir)
    metrics = {checkpointing.BEST_METRIC: 1.0}
    checkpointing.save(manager, 1, state, {'epoch': 1, 'step': 1, 'metrics': metrics}, metrics=metrics)
    manager.wait_until_finished()
    return workdir


@pytest.fixture(scope='module')
def tiny_workdir(tmp_path_factory) -> Path:
    """A YOLOv3-tiny (tiny,smoke) checkpoint."""
    return make_checkpoint(new_workdir(tmp_path_factory.mktemp('tiny')), small_config())


@pytest.fixture(scope='module')
def yolov3_workdir(tmp_path_factory) -> Path:
    """A YOLOv3 (smoke) checkpoint."""
    return make_checkpoint(new_workdir(tmp_path_factory.mktemp('yolov3')), get_config('smoke'))


# ----------------------------------------------------------------------------------------------------------------
# The command line: exit code 2, one `error:` line, no traceback (unless asked for).


@dataclasses.dataclass(frozen=True)
class Cli:
    """`build(tmp_path, workdir)` -> extra command-line arguments; `message` a regex for the `error:` line."""

    build: Callable[[Path, Path], list[str]]
    message: str
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    traceback: bool = False
    no_files_under: str | None = None  # a folder (relative to tmp_path) the failing run must not write into


def _smoke(*extra: str) -> Callable[[Path, Path], list[str]]:
    return lambda tmp, workdir: [f'--config={SMOKE}', f'--workdir={workdir}', *extra]


def _train_empty_test_split(tmp: Path, workdir: Path) -> list[str]:
    files = make_dataset(tmp / 'data', test=[])
    return [f'--config={SMOKE}', f'--workdir={workdir}', *annotation_flags(files)]


def _names_file_with_three_classes(tmp: Path, workdir: Path) -> list[str]:
    files = make_dataset(tmp / 'data')
    files['names'].write_text('a\nb\nc\n')
    return [f'--config={SMOKE}', f'--workdir={workdir}', *annotation_flags(files)]


def _mnist_with_three_classes(tmp: Path, workdir: Path) -> list[str]:
    return [f'--config={SMOKE}', f'--workdir={workdir}', '--config.model.num_classes=3',
            '--config.data.digit_source=sklearn', f'--config.data.data_dir={tmp / "tfds"}']


def _workdir_is_a_file(tmp: Path, workdir: Path) -> list[str]:
    blocker = tmp / 'a_file'
    blocker.write_text('')
    return [f'--config={SMOKE}', f'--workdir={blocker / "run"}']


def _resume_another_width(tmp: Path, workdir: Path) -> list[str]:
    """A checkpoint of the smoke model at width 0.25 in `workdir`; the command resumes it at the config's 0.125."""
    import json

    import jax

    from configs.mnist import get_config
    from yolo_jax import checkpointing, steps

    config = get_config('tiny,smoke')
    config.model.width_multiplier = 0.25
    abstract = jax.eval_shape(lambda: steps.build_model_and_state(config, 1)[2])
    state = jax.tree.map(lambda s: np.full(s.shape, 0.5, s.dtype), abstract)
    manager = checkpointing.create_manager(workdir)
    meta = {'model': json.loads(json.dumps(config.model.to_dict())), 'epoch': 0, 'step': 1}
    checkpointing.save(manager, 1, state, meta)
    manager.wait_until_finished()
    return [f'--config={SMOKE}', f'--workdir={workdir}', '--config.data.digit_source=sklearn',
            f'--config.data.data_dir={tmp / "tfds"}']


def _resume_with_ema(tmp: Path, workdir: Path) -> list[str]:
    """A checkpoint of the smoke model trained without an EMA; the command resumes it with one."""
    return [*_resume_another_width(tmp, workdir), '--config.model.width_multiplier=0.25',
            '--config.train.ema_decay=0.999']


CLI_CASES = {
    'config field typo': Cli(
        _smoke('--config.train.epoch=3'),
        r'^error: unknown config field config\.train\.epoch; did you mean config\.train\.epochs\?$',
    ),
    'config section typo': Cli(
        _smoke('--config.trian.epochs=3'), r'^error: unknown config field config\.trian; did you mean config\.train\?$'
    ),
    'config field typo, space-separated value': Cli(
        _smoke('--config.model.num_clases', '3'), r'unknown config field config\.model\.num_clases; did you mean '
        r'config\.model\.num_classes\?$'
    ),
    'config value of the wrong type': Cli(_smoke('--config.train.epochs=abc'), r'--config\.train\.epochs=abc: invalid'),
    'unknown flag': Cli(_smoke('--bogus'), r"^error: Unknown command line flag 'bogus'$"),
    'unknown config variant': Cli(
        lambda tmp, workdir: ['--config=configs/mnist.py:smok', f'--workdir={workdir}'], r"unknown variant 'smok'"
    ),
    'missing --workdir': Cli(lambda tmp, workdir: [f'--config={SMOKE}'], r'--workdir'),
    '--verbose shows the traceback': Cli(
        _smoke('--config.train.epoch=3', '--verbose'), r'unknown config field config\.train\.epoch', traceback=True
    ),
    'YOLO_JAX_TRACEBACK=1 shows the traceback': Cli(
        _smoke('--config.train.epoch=3'), r'unknown config field', env={errors.TRACEBACK_ENV: '1'}, traceback=True
    ),
    # (detect takes the checkpoint's input size: a config's plays no part there)
    'train with input_size 400': Cli(
        _smoke('--config.model.input_size=400'),
        r'^error: config\.model\.input_size=400: input_size must be a multiple of 32',
    ),
    'train with an empty test annotation file': Cli(_train_empty_test_split, r'^error: no images in .*test\.txt'),
    'names file with 3 names, num_classes 10': Cli(
        _names_file_with_three_classes,
        r"^error: config\.model\.num_classes=10 but config\.data\.class_names \(.*classes\.txt\) has 3 classes; "
        r'set --config\.model\.num_classes=3$',
    ),
    'MNIST with num_classes 3': Cli(
        _mnist_with_three_classes,
        r'^error: config\.model\.num_classes=3 but the MNIST detection set has 10 classes',
        no_files_under='tfds',  # the mismatch is found before the data set is generated
    ),
    'workdir that cannot be created': Cli(_workdir_is_a_file, r'^error: --workdir=.*a_file/run is not writable'),
    'resume a workdir with another model setting': Cli(
        _resume_another_width,
        r'^error: cannot resume from .*: the model differs \(config\.model\.width_multiplier: checkpoint 0\.25, '
        r'config 0\.125\)',
    ),
    'resume a workdir trained without EMA with EMA on': Cli(
        _resume_with_ema,
        r'^error: cannot resume from .*: its training state differs \(config\.train\.ema_decay: checkpoint without '
        r'EMA, config 0\.999\)',
    ),
}


def run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != errors.TRACEBACK_ENV}
    full_env.update({'JAX_PLATFORMS': 'cpu', 'TF_CPP_MIN_LOG_LEVEL': '2', 'PYTHONPATH': str(REPO), **env})
    return subprocess.run(
        [sys.executable, '-m', 'yolo_jax.main', '--nojemalloc', *args],
        cwd=REPO, env=full_env, capture_output=True, text=True, timeout=300, check=False,  # a hang guard
    )


@pytest.mark.parametrize('name', list(CLI_CASES))
def test_cli_user_errors(name, tmp_path):
    case = CLI_CASES[name]
    workdir = new_workdir(tmp_path)
    args = case.build(tmp_path, workdir)
    before = snapshot(workdir)
    proc = run_cli(args, case.env)
    stderr = proc.stderr
    assert proc.returncode == errors.EXIT_CODE, f'exit code {proc.returncode}\n{stderr[-3000:]}'
    error_lines = [ln for ln in stderr.splitlines() if ln.startswith('error: ')]
    assert len(error_lines) == 1, stderr[-3000:]
    assert re.search(case.message, error_lines[0]), error_lines[0]
    assert len(error_lines[0]) < 400, error_lines[0]
    assert ('Traceback (most recent call last)' in stderr) == case.traceback, stderr[-3000:]
    assert not re.search(r'epoch: *\d+ step:', stderr), stderr[-3000:]  # it failed before any training step
    if case.no_files_under:
        assert not [p for p in (tmp_path / case.no_files_under).rglob('*') if p.is_file()]
    assert_untouched(before, workdir)


# ----------------------------------------------------------------------------------------------------------------
# Functions: the error type (a UserError, so main.py prints it as one line) and its message.


@dataclasses.dataclass(frozen=True)
class Call:
    """`build(tmp_path, fixtures)` sets up the bad input and returns the call that must fail with `error`
    matching `message`; `fixtures` names module fixtures (workdirs) it needs."""

    build: Callable[[Path, dict[str, Any]], Callable[[], Any]]
    error: type[BaseException]
    message: str
    fixtures: tuple[str, ...] = ()


def _names_vs_classes(tmp: Path, fx: dict) -> Callable[[], Any]:
    names = tmp / 'names.txt'
    names.write_text('cat\ndog\nbird\n')
    return lambda: check_num_classes(10, ann.read_class_names(names), f'config.data.class_names ({names})')


def _empty_train_split(tmp: Path, fx: dict) -> Callable[[], Any]:
    from yolo_jax import input_pipeline

    config = annotation_config(make_dataset(tmp / 'data', train=[]))
    return lambda: input_pipeline.Data(config).steps_per_epoch(4)


def _no_boxes(tmp: Path, fx: dict) -> Callable[[], Any]:
    files = make_dataset(tmp / 'data', train=['images/0.png', 'images/1.png'])
    return lambda: ann.read_annotations(files['train'], 10)


def _truncated_jpeg(tmp: Path, fx: dict) -> Callable[[], Any]:
    files = make_dataset(tmp / 'data')
    truncate(write_image(tmp / 'data' / 'images' / 'cut.jpg', size=(64, 64)))
    files['train'].write_text('images/0.png 1,1,9,9,0\nimages/cut.jpg 1,1,9,9,0\n')
    return lambda: ann.read_annotations(files['train'], 10)


def _truncated_png(tmp: Path, fx: dict) -> Callable[[], Any]:
    files = make_dataset(tmp / 'data')
    truncate(tmp / 'data' / 'images' / '2.png', keep=0.9)
    return lambda: ann.read_annotations(files['train'], 10)


def _many_bad_lines(tmp: Path, fx: dict) -> Callable[[], Any]:
    files = make_dataset(tmp / 'data', train=[f'images/missing{i}.png 1,1,5,5,0' for i in range(25)])
    return lambda: ann.read_annotations(files['train'], 10)


def _input_size_factory(tmp: Path, fx: dict) -> Callable[[], Any]:
    config = get_config('tiny,smoke')
    config.model.input_size = 400
    return lambda: build_spec(config.model, [str(i) for i in range(10)], 'test')


def _tiny_weights(tmp: Path, corrupt: Callable[[np.ndarray, Any], None]) -> tuple[Path, Any]:
    """A valid Darknet file of tiny,smoke's model, its body values edited by `corrupt(values, mc)`."""
    mc = get_config('tiny,smoke').model
    path = tmp / 'model.weights'
    variables = jax_random_variables(mc)
    darknet.save_weights(path, variables, mc)
    header = darknet.read_header(path)
    values = np.fromfile(path, '<f4', offset=header.nbytes)
    corrupt(values, mc)
    path.write_bytes(header.to_bytes() + values.astype('<f4').tobytes())
    return path, mc


def jax_random_variables(mc) -> dict:
    import jax

    rng = np.random.default_rng(0)

    def value(path, s):
        x = rng.standard_normal(s.shape).astype(np.float32)
        return np.abs(x) if jax.tree_util.keystr(path).endswith("['var']") else x

    return jax.tree_util.tree_map_with_path(value, darknet.abstract_variables(mc))


def _random_bytes_weights(tmp: Path, fx: dict) -> Callable[[], Any]:
    def randomize(values: np.ndarray, mc) -> None:
        values[:] = np.random.default_rng(1).integers(0, 2**32, values.size, dtype=np.uint32).view(np.float32)

    path, mc = _tiny_weights(tmp, randomize)
    return lambda: darknet.load_weights(path, mc, epsilon_check='ignore')


def _negative_variance_weights(tmp: Path, fx: dict) -> Callable[[], Any]:
    def negative_var(values: np.ndarray, mc) -> None:
        c0 = darknet.abstract_variables(mc)['params']['backbone']['conv_000']['conv']['kernel'].shape[-1]
        values[3 * c0 + 1] = -0.5  # conv_000: beta, gamma, mean (c0 each), then var

    path, mc = _tiny_weights(tmp, negative_var)
    return lambda: darknet.load_weights(path, mc, epsilon_check='ignore')


def _nan_weights(tmp: Path, fx: dict) -> Callable[[], Any]:
    path, mc = _tiny_weights(tmp, lambda values, mc: values.__setitem__(-1, np.nan))  # the last kernel value
    return lambda: darknet.load_weights(path, mc, epsilon_check='ignore')


def _wrong_architecture(tmp: Path, fx: dict) -> Callable[[], Any]:
    return lambda: inference.load_variables(small_config(), fx['yolov3_workdir'], fold=False)


def _image_changed_after_checking(tmp: Path, fx: dict) -> Callable[[], Any]:
    from yolo_jax.data import sources

    files = make_dataset(tmp / 'data')
    records = ann.read_annotations(files['train'], 10)
    dataset = sources.annotation_records_dataset(records)
    truncate(Path(records[2].path))
    return lambda: list(dataset.as_numpy_iterator())


def _tf_error() -> type[BaseException]:
    import tensorflow as tf

    return tf.errors.InvalidArgumentError


CALL_CASES = {
    'names file with 3 names, num_classes 10': Call(
        _names_vs_classes, errors.ConfigError,
        r'config\.model\.num_classes=10 but config\.data\.class_names \(.*names\.txt\) has 3 classes',
    ),
    'empty train annotation file': Call(_empty_train_split, ann.AnnotationError, r'^no images in .*train\.txt'),
    'annotation file without boxes': Call(_no_boxes, ann.AnnotationError, r'^no images with boxes in .*train\.txt'),
    'JPEG with a valid header and a truncated body': Call(
        _truncated_jpeg, ann.AnnotationError, r'1 bad annotation line.*\n.*train\.txt:2: unreadable image .*cut\.jpg'
    ),
    'PNG with a truncated body': Call(_truncated_png, ann.AnnotationError, r'train\.txt:3: unreadable image .*2\.png'),
    '25 bad lines: 20 listed, then a count': Call(
        _many_bad_lines, ann.AnnotationError, r'^25 bad annotation line\(s\) in .*train\.txt:(\n  .*:\d+: .*){20}\n'
        r'  \.\.\. and 5 more$',
    ),
    'a spec with input_size 400': Call(
        _input_size_factory, errors.ConfigError, r'config\.model\.input_size=400: input_size must be a multiple of 32'
    ),
    'random bytes of the right size as .weights': Call(
        _random_bytes_weights, errors.DataError,
        r'model\.weights: not usable as weights .*\n  (backbone|head)/conv_\d+: .* (NaN or infinite|negative)',
    ),
    'negative BatchNorm variance in .weights': Call(
        _negative_variance_weights, errors.DataError,
        r'model\.weights: .* 1 problem\(s\)\n  backbone/conv_000: 1 of \d+ bn variance values are negative$',
    ),
    'NaN in .weights': Call(
        _nan_weights, errors.DataError,
        r'1 problem\(s\)\n  head/conv_\d+: 1 of [\d,]+ kernel values are NaN or infinite$',
    ),
    'eval a yolov3 workdir with the tiny config': Call(
        _wrong_architecture, errors.ConfigError,
        r'^checkpoint .* does not fit config\.model \(name=yolov3_tiny.*\):\n  \S+: checkpoint \(',
        fixtures=('yolov3_workdir',),
    ),
}


@pytest.mark.filterwarnings('ignore::yolo_jax.data.annotations.AnnotationWarning')
@pytest.mark.parametrize('name', list(CALL_CASES))
def test_function_user_errors(name, tmp_path, request):
    case = CALL_CASES[name]
    fixtures = {f: request.getfixturevalue(f) for f in case.fixtures}
    call = case.build(tmp_path, fixtures)
    watched = [tmp_path, *fixtures.values()]
    before = [snapshot(d) for d in watched]
    with pytest.raises(case.error) as info:
        call()
    message = str(info.value)
    assert isinstance(info.value, errors.UserError)
    assert re.search(case.message, message), message
    first = message.splitlines()[0]
    assert len(first) < 400 and len(message.splitlines()) <= 22, message[:2000]
    for d, b in zip(watched, before, strict=True):
        assert_untouched(b, d)


def test_pipeline_error_names_the_file(tmp_path):
    """An image that changes after checking fails inside tf.data with an error naming it."""
    call = _image_changed_after_checking(tmp_path, {})
    with pytest.raises(_tf_error()) as info:
        call()
    assert re.search(r'image file changed since the annotations were checked.*2\.png', str(info.value)), info.value


def test_pipeline_pil_decode_error_names_the_file(tmp_path):
    """Formats TF cannot decode go through PIL inside tf.data; its failure names the file too."""
    from yolo_jax.data import sources

    write_image(tmp_path / 'a.tiff', size=(32, 32))
    (tmp_path / 'ann.txt').write_text('a.tiff 1,1,9,9,0\n')
    records = ann.read_annotations(tmp_path / 'ann.txt', 1)
    assert records[0].image_format == 'TIFF'
    dataset = sources.annotation_records_dataset(records)
    truncate(tmp_path / 'a.tiff')
    with pytest.raises(_tf_error(), match=r'cannot read image .*a\.tiff'):
        list(dataset.as_numpy_iterator())


# ----------------------------------------------------------------------------------------------------------------
# detect: skips unreadable inputs, lists them, writes detections.json atomically (also when stopped part-way).


def _detect_inputs(folder: Path) -> list[Path]:
    good = [write_image(folder / 'a.png', (40, 60), 0), write_image(folder / 'c.jpg', (50, 30), 1)]
    (folder / 'b.png').write_text('this is not an image\n')
    truncate(write_image(folder / 'd.jpg', (64, 64), 2))
    return good


def test_detect_skips_unreadable_inputs(tiny_workdir, tmp_path):
    good = _detect_inputs(tmp_path / 'images')
    before = snapshot(tiny_workdir)
    out = tmp_path / 'out'
    results = detect.detect_images(small_config(), tiny_workdir, str(tmp_path / 'images'), output=out)
    assert [r['file'] for r in results] == [str(p) for p in good]
    saved = json.loads((out / 'detections.json').read_text())
    assert saved['complete'] is True and saved['images'] == results
    assert [Path(e['file']).name for e in saved['errors']] == ['b.png', 'd.jpg']
    assert all('cannot read image' in e['error'] and e['file'] in e['error'] for e in saved['errors'])
    assert sorted(p.name for p in out.iterdir()) == ['a.png', 'c.png', 'detections.json']
    assert_untouched(before, tiny_workdir)


def test_detect_with_no_readable_input_is_a_user_error(tiny_workdir, tmp_path):
    (tmp_path / 'x.png').write_bytes(b'\x89PNG\r\n\x1a\n garbage')
    out = tmp_path / 'out'
    expected = r'none of the 1 input\(s\) could be read.*\n  cannot read image .*x\.png'
    with pytest.raises(errors.DataError, match=expected):
        detect.detect_images(small_config(), tiny_workdir, tmp_path / 'x.png', output=out)
    saved = json.loads((out / 'detections.json').read_text())
    assert saved['images'] == [] and len(saved['errors']) == 1


def test_detect_writes_json_when_stopped_part_way(tiny_workdir, tmp_path, monkeypatch):
    good = _detect_inputs(tmp_path / 'images')
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'detections.json').write_text('{"from": "an earlier run"}\n')
    draw = visualize.draw_detections
    calls = []

    def failing_draw(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError('disk full')
        return draw(*args, **kwargs)

    monkeypatch.setattr(visualize, 'draw_detections', failing_draw)
    with pytest.raises(OSError, match='disk full'):
        detect.detect_images(small_config(), tiny_workdir, str(tmp_path / 'images'), output=out, batch_size=1)
    saved = json.loads((out / 'detections.json').read_text())
    assert saved['complete'] is False
    assert [r['file'] for r in saved['images']] == [str(good[0])]
    assert [Path(e['file']).name for e in saved['errors']] == ['b.png']  # read before the failure
    assert not [p for p in out.iterdir() if p.name.endswith('.tmp')]
