"""WORKDIR/config.py: the run's config, written atomically, loadable as a config file, inserted as --config."""

from __future__ import annotations

import importlib.util
import json

from configs.mnist import get_config
from yolo_jax import run_config
from yolo_jax.defaults import default_config


def _load(path):
    spec = importlib.util.spec_from_file_location('saved_config', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def test_round_trip_keeps_every_field_and_override(tmp_path):
    config = get_config('tiny,smoke')
    config.data.train_annotations = "/data/it's \"quoted\"\\path.txt"  # quotes and a backslash survive
    config.model.anchors = ((1.5, 2.0), (3.0, 4.0)), ((5.0, 6.0), (7.0, 8.0))
    path = run_config.write(config, tmp_path)
    assert path == tmp_path / 'config.py' and oct(path.stat().st_mode & 0o777) == '0o644'
    loaded = _load(path)
    assert loaded.to_dict() == config.to_dict()  # tuples come back as tuples (JSON writes lists)
    assert isinstance(loaded.model.anchors, tuple) and isinstance(loaded.eval.tta, tuple)
    assert [p.name for p in tmp_path.iterdir()] == ['config.py']  # no temporary file left
    assert run_config.is_run_config(path) and not run_config.is_run_config('configs/mnist.py')


def test_config_flag_is_added_only_for_a_run_that_reads_a_workdir(tmp_path):
    run_config.write(get_config('tiny,smoke'), tmp_path)
    wd = f'--workdir={tmp_path}'
    assert run_config.default_config_flag(['m', wd, '--mode=eval']) == ['m', f'--config={tmp_path}/config.py', wd,
                                                                        '--mode=eval']
    assert run_config.default_config_flag(['m', wd]) == ['m', wd]  # training: the user's config file
    (tmp_path / 'checkpoints').mkdir()  # ... unless it resumes the workdir's run (README: Train longer)
    assert run_config.default_config_flag(['m', wd, '--config.train.epochs=3']) == [
        'm', f'--config={tmp_path}/config.py', wd, '--config.train.epochs=3']
    (tmp_path / 'checkpoints').rmdir()
    assert run_config.default_config_flag(['m', wd, '--mode=detect', '--config=c.py']) == [
        'm', wd, '--mode=detect', '--config=c.py']
    empty = tmp_path / 'other'
    assert run_config.default_config_flag(['m', f'--workdir={empty}', '--mode=eval']) == [
        'm', f'--workdir={empty}', '--mode=eval']
    assert run_config.default_config_flag(['e', wd], training_modes=())[1] == f'--config={tmp_path}/config.py'


def _without(config, tmp_path, *fields: str, old_template: bool = False):
    """WORKDIR/config.py of `config` with `fields` ('section.name') removed from its JSON by hand (a run started
    before they existed); with old_template, its get_config() as yolo_jax wrote it before it filled such fields."""
    text = run_config.write(config, tmp_path).read_text()
    body = text.split("r'''", 1)[1].split("'''", 1)[0]
    saved = json.loads(body)
    for field in fields:
        section, name = field.split('.')
        del saved[section][name]
    text = text.replace(body, '\n' + json.dumps(saved, indent=1) + '\n')
    if old_template:
        text = text[: text.index('def get_config()')] + (
            'def get_config() -> ml_collections.ConfigDict:\n    return ml_collections.ConfigDict(_CONFIG)\n')
    (tmp_path / 'config.py').write_text(text)
    return tmp_path / 'config.py'


def test_fields_a_saved_config_lacks_come_from_the_defaults(tmp_path):
    """A config.py written before a field existed (here: removed by hand from the JSON) loads with that field at
    its default (the file's get_config fills it), and every field it has keeps its saved value."""
    config = get_config('quick')
    config.data.mosaic = 0.25  # saved value, not the default
    loaded = _load(_without(config, tmp_path, 'data.vertical_flip', 'loss.class_weights'))
    assert loaded.data.vertical_flip == default_config().data.vertical_flip
    assert loaded.loss.class_weights == default_config().loss.class_weights
    assert loaded.data.mosaic == 0.25
    assert loaded.to_dict() == config.to_dict()  # nothing else changed
    assert run_config.fill_missing(loaded, default_config()) == []
    old = _load(_without(config, tmp_path, 'data.vertical_flip', old_template=True))
    assert 'vertical_flip' not in old.data
    assert run_config.fill_missing(old, default_config()) == ['data.vertical_flip']
    assert old.to_dict() == json.loads(json.dumps(config.to_dict()))


def test_a_field_newer_than_the_run_can_be_overridden_on_its_workdir(tmp_path):
    """Through `python -m yolo_jax.main --workdir=W --mode=eval`: W/config.py without config.eval.tta, or with it
    (a tuple, saved as a JSON list), takes `--config.eval.tta=...` (the command goes on to its next check, the
    missing checkpoint); a config.py of the older template, which cannot (a list field; a missing field), is one
    error line that says why and what to do."""
    from test_cli import error_lines, run

    from yolo_jax import errors

    args = [f'--workdir={tmp_path}', '--mode=eval', "--config.eval.tta=('hflip',)"]
    for without in (('eval.tta',), ()):  # a run older than the field; a current one (the tuple saved as a list)
        _without(get_config('tiny,smoke'), tmp_path, *without)
        proc = run('main', args)
        assert proc.returncode == errors.EXIT_CODE and error_lines(proc.stderr) == [
            f'error: --workdir={tmp_path}: no checkpoint in {tmp_path} (train first, or pass --weights)'
        ], proc.stderr[-3000:]
    _without(get_config('tiny,smoke'), tmp_path, old_template=True)  # it has the field, as a list
    proc = run('main', args)
    assert proc.returncode == errors.EXIT_CODE and error_lines(proc.stderr) == [
        f'error: cannot override config.eval.tta: {tmp_path}/config.py was written by an older yolo_jax, which saved '
        "tuples as lists (write the field as a tuple in that file, or pass --config=configs/FILE.py with the run's "
        'flags)'
    ], proc.stderr[-3000:]
    _without(get_config('tiny,smoke'), tmp_path, 'eval.tta', old_template=True)
    proc = run('main', args)
    others = [k for k in get_config('tiny,smoke').eval if k != 'tta']  # the message lists the first 12
    assert len(others) > 12
    assert proc.returncode == errors.EXIT_CODE and error_lines(proc.stderr) == [
        'error: unknown config field config.eval.tta (config.eval has ' + ', '.join(others[:12]) + ', ...) '
        f'({tmp_path}/config.py was written by an older yolo_jax, before this field existed: add the field to the '
        'JSON in that file to override it)'
    ], proc.stderr[-3000:]
    # The same file under another name is a user's own config file: no advice about older versions.
    mine = tmp_path / 'mine.py'
    (tmp_path / 'config.py').rename(mine)
    proc = run('main', [f'--config={mine}', *args])
    assert proc.returncode == errors.EXIT_CODE and len(error_lines(proc.stderr)) == 1, proc.stderr[-3000:]
    assert error_lines(proc.stderr)[0].startswith('error: unknown config field config.eval.tta (config.eval has ')
    assert 'older yolo_jax' not in proc.stderr
