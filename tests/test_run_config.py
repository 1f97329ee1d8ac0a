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
    assert loaded.to_dict() == json.loads(json.dumps(config.to_dict()))
    assert [p.name for p in tmp_path.iterdir()] == ['config.py']  # no temporary file left


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


def test_fields_a_saved_config_lacks_come_from_the_defaults(tmp_path):
    """A config.py written before a field existed (here: one removed by hand from the JSON) loads with that field
    at its default, and every field it has keeps its saved value."""
    config = get_config('quick')
    config.data.mosaic = 0.25  # saved value, not the default
    text = run_config.write(config, tmp_path).read_text()
    saved = json.loads(text.split("r'''", 1)[1].split("'''", 1)[0])
    del saved['data']['vertical_flip'], saved['loss']['class_weights']
    (tmp_path / 'config.py').write_text(text.replace(text.split("r'''", 1)[1].split("'''", 1)[0],
                                                     '\n' + json.dumps(saved, indent=1) + '\n'))
    loaded = _load(tmp_path / 'config.py')
    assert 'vertical_flip' not in loaded.data
    added = run_config.fill_missing(loaded, default_config())
    assert sorted(added) == ['data.vertical_flip', 'loss.class_weights']
    assert loaded.data.vertical_flip == default_config().data.vertical_flip
    assert loaded.loss.class_weights == default_config().loss.class_weights
    assert loaded.data.mosaic == 0.25
    assert loaded.to_dict() == json.loads(json.dumps(config.to_dict()))  # nothing else changed
