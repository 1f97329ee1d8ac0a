"""The shared command-line front (yolo_jax/cli.py), table-driven: every program (main, export, anchors,
data.convert) answers a user mistake (bad flag, bad config file or field, missing input, a workdir without a
checkpoint) with exactly one `error:` line on stderr naming the flag, field or file, exit code 2 and no traceback.
Each case runs the real command in a subprocess from the repository root."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from yolo_jax import errors

REPO = Path(__file__).resolve().parents[1]
SMOKE = 'configs/mnist.py:tiny,smoke'
PREFIX = {'main': ['--nojemalloc']}  # main restarts itself under jemalloc otherwise


@dataclasses.dataclass(frozen=True)
class Case:
    """`program` (yolo_jax.<program>) run with `args(tmp_path)`; its one `error:` line must contain `expect`."""

    program: str
    args: Callable[[Path], list[str]]
    expect: str


def _image(tmp: Path) -> Path:
    path = tmp / 'images' / 'a.png'
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new('RGB', (40, 30), (200, 10, 10)).save(path)
    return path


def _empty_workdir(tmp: Path) -> Path:
    """A workdir that exists but holds no checkpoint (a run never trained, or a typo'd sibling)."""
    workdir = tmp / 'run'
    workdir.mkdir(exist_ok=True)
    return workdir


def _annotations(tmp: Path) -> tuple[Path, Path]:
    """(annotation file, class-names file) in the reference's text format: one image, one box of class 0."""
    image = _image(tmp)
    names = tmp / 'classes.txt'
    names.write_text('a\nb\n')
    lines = tmp / 'train.txt'
    lines.write_text(f'{image} 2,2,20,20,0\n')
    return lines, names


def _config_without_variants(tmp: Path) -> Path:
    path = tmp / 'plain.py'
    path.write_text('from yolo_jax.defaults import default_config\n\n\n'
                    'def get_config():\n    return default_config()\n')
    return path


def _config_that_does_not_load(tmp: Path) -> Path:
    path = tmp / 'broken.py'
    path.write_text('def get_config(:\n')
    return path


def _main(*extra: str) -> Callable[[Path], list[str]]:
    return lambda tmp: [f'--config={SMOKE}', f'--workdir={_empty_workdir(tmp)}', *extra]


def _export(*extra: str) -> Callable[[Path], list[str]]:
    return lambda tmp: [f'--config={SMOKE}', f'--workdir={_empty_workdir(tmp)}', '--format=onnx',
                        f'--output={tmp / "out" / "model.onnx"}', *extra]


def _anchors(*extra: str) -> Callable[[Path], list[str]]:
    return lambda tmp: [f'--config={SMOKE}', f'--output={tmp / "anchors.json"}', *extra]


def _convert(*extra: str) -> Callable[[Path], list[str]]:
    def args(tmp: Path) -> list[str]:
        lines, names = _annotations(tmp)
        return ['--from=annotations', f'--input={lines}', f'--class_names={names}', '--to=yolo_txt',
                f'--output={tmp / "converted"}', *extra]

    return args


CASES = {
    # Every program: an unknown flag, an unknown config field (data.convert has no config: an unknown flag too).
    'main: unknown flag': Case('main', _main('--bogus'), "Unknown command line flag 'bogus'"),
    'main: config field typo': Case('main', _main('--config.train.epoch=3'),
                                    'unknown config field config.train.epoch; did you mean config.train.epochs?'),
    'main: anchors not (w, h) pairs': Case('main', _main('--config.model.anchors=abc'),
                                           "config.model.anchors=('abc',): expected (w, h) pixel pairs per scale"),
    'export: unknown flag': Case('export', _export('--bogus'), "Unknown command line flag 'bogus'"),
    'export: config field typo': Case('export', _export('--config.eval.score_treshold=0.1'),
                                      'unknown config field config.eval.score_treshold; did you mean '
                                      'config.eval.score_threshold?'),
    'anchors: unknown flag': Case('anchors', _anchors('--bogus'), "Unknown command line flag 'bogus'"),
    'anchors: config field typo': Case('anchors', _anchors('--config.model.anchor=1'),
                                       'unknown config field config.model.anchor; did you mean config.model.anchors?'),
    'convert: unknown flag': Case('data.convert', _convert('--bogus'), "Unknown command line flag 'bogus'"),
    'convert: config field (it has no config)': Case('data.convert', _convert('--config.data.dataset=x'),
                                                     "Unknown command line flag 'config.data.dataset'"),
    # The config file.
    'main: config file missing': Case('main', lambda tmp: ['--config=configs/nope.py', f'--workdir={tmp}'],
                                      '--config=configs/nope.py: no such file configs/nope.py'),
    'main: unknown variant': Case('main', lambda tmp: ['--config=configs/mnist.py:nope', f'--workdir={tmp}'],
                                  "configs/mnist.py: unknown variant 'nope'"),
    'main: unknown variant of default.py': Case(
        'main', lambda tmp: ['--config=configs/default.py:nope', f'--workdir={tmp}'],
        "configs/default.py: unknown variant 'nope'"),
    'main: variant of a config without variants': Case(
        'main', lambda tmp: [f'--config={_config_without_variants(tmp)}:tiny', f'--workdir={tmp}'],
        'plain.py has no variants'),
    'main: config file that does not load': Case(
        'main', lambda tmp: [f'--config={_config_that_does_not_load(tmp)}', f'--workdir={tmp}'],
        'broken.py does not load'),
    'anchors: config file missing': Case('anchors', lambda tmp: ['--config=configs/nope.py'],
                                         '--config=configs/nope.py: no such file'),
    'export: unknown variant': Case('export', lambda tmp: ['--config=configs/mnist.py:nope', f'--workdir={tmp}',
                                                           f'--output={tmp / "m.onnx"}'],
                                    "configs/mnist.py: unknown variant 'nope'"),
    # Flags: missing, bad values, bad combinations.
    'main: --config missing': Case('main', lambda tmp: [f'--workdir={tmp}'], '--config'),
    'main: --workdir missing': Case('main', lambda tmp: [f'--config={SMOKE}'], '--workdir'),
    'main: bad --mode': Case('main', _main('--mode=predict'), '--mode=predict'),
    'main: detect without --images': Case('main', _main('--mode=detect'), '--mode=detect needs --images'),
    'main: positional argument': Case('main', _main('train'), "unexpected arguments 'train'"),
    'export: bad --format': Case('export', _export('--format=coreml'), '--format=coreml'),
    'export: float16 onnx': Case('export', _export('--quantize=float16'),
                                 '--quantize=float16 does not apply to --format=onnx'),
    'export: int8 savedmodel': Case('export', _export('--format=savedmodel', '--quantize=int8'),
                                    '--quantize=int8 does not apply to --format=savedmodel'),
    'export: --output missing': Case('export', lambda tmp: [f'--config={SMOKE}', f'--workdir={tmp}'], '--output'),
    'export: neither --workdir nor --weights': Case(
        'export', lambda tmp: [f'--config={SMOKE}', f'--output={tmp / "m.onnx"}'], '--workdir=DIR'),
    'export: --weights file missing': Case(
        'export', lambda tmp: [f'--config={SMOKE}', f'--weights={tmp / "nope.weights"}', f'--output={tmp / "m"}'],
        'nope.weights'),
    'anchors: bad --update': Case('anchors', _anchors('--update=mode'), '--update=mode'),
    'anchors: --restarts=0': Case('anchors', _anchors('--restarts=0'), '--restarts=0'),
    'convert: bad --from': Case('data.convert', _convert('--from=voc'), '--from=voc'),
    'convert: --input missing': Case('data.convert', lambda tmp: ['--from=coco_json', '--to=yolo_txt',
                                                                  f'--output={tmp / "o"}'], '--input'),
    # Files.
    'main eval: workdir without a checkpoint': Case('main', _main('--mode=eval'), 'no checkpoint in'),
    'main detect: workdir without a checkpoint': Case(
        'main', lambda tmp: [*_main('--mode=detect')(tmp), f'--images={_image(tmp)}'], 'no checkpoint in'),
    'export: workdir without a checkpoint': Case('export', _export(), 'no checkpoint in'),
    'anchors: annotation file missing': Case(
        'anchors', lambda tmp: _anchors('--config.data.dataset=annotations', '--config.model.num_classes=2',
                                        f'--config.data.class_names={_annotations(tmp)[1]}',
                                        f'--config.data.train_annotations={tmp / "nope.txt"}',
                                        f'--config.data.test_annotations={tmp / "nope.txt"}')(tmp),
        'nope.txt'),
    'convert: input file missing': Case(
        'data.convert', lambda tmp: ['--from=coco_json', f'--input={tmp / "nope.json"}', '--to=yolo_txt',
                                     f'--output={tmp / "o"}'], 'nope.json'),
    'convert: class names missing': Case(
        'data.convert', lambda tmp: ['--from=annotations', f'--input={_annotations(tmp)[0]}', '--to=yolo_txt',
                                     f'--output={tmp / "o"}'], '--class_names'),
    'convert: output exists': Case(
        'data.convert', lambda tmp: [*_convert()(tmp)[:-1], f'--output={_empty_workdir(tmp)}'], '--overwrite'),
}


def run(program: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != errors.TRACEBACK_ENV}
    full_env.update({'JAX_PLATFORMS': 'cpu', 'TF_CPP_MIN_LOG_LEVEL': '2', 'PYTHONPATH': str(REPO), **(env or {})})
    return subprocess.run([sys.executable, '-m', f'yolo_jax.{program}', *PREFIX.get(program, []), *args],
                          cwd=REPO, env=full_env, capture_output=True, text=True, timeout=300, check=False)


def error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith('error:')]


@pytest.mark.parametrize('name', list(CASES))
def test_user_mistake_is_one_error_line(name, tmp_path):
    case = CASES[name]
    args = case.args(tmp_path)
    proc = run(case.program, args)
    stderr = proc.stderr
    assert proc.returncode == errors.EXIT_CODE, f'exit code {proc.returncode}\n{stderr[-3000:]}'
    lines = error_lines(stderr)
    assert len(lines) == 1, stderr[-3000:]
    assert 'Traceback' not in stderr, stderr[-3000:]
    assert case.expect in lines[0], lines[0]
    assert not re.match(r'error: \w*(Error|Exception)\b', lines[0]), lines[0]  # no exception class names
    assert len(lines[0]) < 400, lines[0]


@pytest.mark.parametrize('program', ['export', 'data.convert'])
def test_verbose_adds_the_traceback(program, tmp_path):
    """--verbose (and YOLO_JAX_TRACEBACK=1) print the traceback before the same one `error:` line, for a flag
    error (parsing) and an error raised by the program."""
    args = (_export('--format=tflite') if program == 'export' else _convert())(tmp_path)
    if program == 'data.convert':
        (tmp_path / 'converted').mkdir()  # output exists: raised by the program, not the parser
    plain = run(program, args)
    for extra, env in ((['--verbose'], None), ([], {errors.TRACEBACK_ENV: '1'})):
        proc = run(program, [*args, *extra], env)
        assert proc.returncode == errors.EXIT_CODE, proc.stderr[-3000:]
        assert 'Traceback (most recent call last)' in proc.stderr
        assert error_lines(proc.stderr) == error_lines(plain.stderr) and len(error_lines(plain.stderr)) == 1


def test_default_config_takes_the_variants(tmp_path):
    """configs/default.py accepts mnist.py's variants: `default.py:tiny,smoke` runs (here up to detect's missing
    checkpoint, after the config is loaded and checked)."""
    from configs import default, mnist

    assert default.get_config('tiny,smoke').to_dict() == mnist.get_config('tiny,smoke').to_dict()
    assert default.get_config('tiny').model.name == 'yolov3_tiny'
    proc = run('main', ['--config=configs/default.py:tiny,smoke', f'--workdir={_empty_workdir(tmp_path)}',
                        '--mode=eval'])
    assert proc.returncode == errors.EXIT_CODE and error_lines(proc.stderr) == [
        f'error: --workdir={tmp_path / "run"}: no checkpoint in {tmp_path / "run"} (train first, or pass --weights)'
    ], proc.stderr[-3000:]


_EXIT_SCRIPT = """
import atexit, os, sys, threading, time
from concurrent.futures import ThreadPoolExecutor
from yolo_jax import cli
from yolo_jax.errors import FlagError

def main():
    out = os.environ['EXIT_TEST_FILE']
    atexit.register(lambda: print('atexit ran', flush=False))
    def late():
        time.sleep(0.3)
        open(out, 'w').write('thread finished')
    threading.Thread(target=late).start()  # non-daemon: the exit waits for it
    ThreadPoolExecutor(1).submit(lambda: None)  # an idle pool must not hang the exit
    sys.stdout.write('buffered, no newline')
    if 'fail' in out:
        raise FlagError('a user mistake')

cli.run(main, config=False)
"""


@pytest.mark.parametrize('fail', [False, True])
def test_exit_now_finishes_threads_atexit_and_output_first(tmp_path, fail):
    """cli.exit_now skips the interpreter's teardown only: a non-daemon thread still finishes, atexit handlers run,
    buffered output is written, an idle thread pool does not hang it, and the exit code is kept."""
    out = tmp_path / ('fail.txt' if fail else 'ok.txt')
    proc = subprocess.run([sys.executable, '-c', _EXIT_SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={**os.environ, 'PYTHONPATH': str(REPO), 'EXIT_TEST_FILE': str(out)})
    assert proc.returncode == (errors.EXIT_CODE if fail else 0), proc.stderr[-3000:]
    assert out.read_text() == 'thread finished'
    assert proc.stdout.startswith('buffered, no newline') and 'atexit ran' in proc.stdout, proc.stdout
    assert error_lines(proc.stderr) == (['error: a user mistake'] if fail else []), proc.stderr
