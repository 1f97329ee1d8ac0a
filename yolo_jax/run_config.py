"""A run's config saved in its workdir as a config file: `--config=WORKDIR/config.py` repeats no training flag.

Training writes `WORKDIR/config.py` at its start (atomically): a config file like those in `configs/`, whose
`get_config()` returns the run's whole config, overrides included (tuples as tuples again: JSON has only lists),
plus the fields yolo_jax gained since (at their defaults, so that a later version's new options can be overridden on
an older run). Eval, detect and export given `--workdir` and no `--config` read it (the command-line front inserts
`--config=WORKDIR/config.py`), and `--config.x.y=...` overrides still apply on top of it. The checkpoint's own spec
and model settings stay the authority for the network (inference.load_detector); this file brings the rest (data
set, thresholds, resize mode).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import ml_collections
from absl import logging

FILE_NAME = 'config.py'

_TEMPLATE = '''"""The config of the run in this workdir, written by yolo_jax when training started.

Use it as any config file: python -m yolo_jax.main --config={path} --workdir={workdir} --mode=eval
"""

import json

import ml_collections

_CONFIG = json.loads(r\'\'\'
{json}
\'\'\')


def _tuples(value):
    # JSON has no tuples: the config's tuples were written as lists (a list field could not be overridden).
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {{k: _tuples(v) for k, v in value.items()}}
    return value


def get_config() -> ml_collections.ConfigDict:
    # Fields yolo_jax gained after this run started take their defaults (off), so they can be overridden too.
    from yolo_jax.defaults import default_config
    from yolo_jax.run_config import fill_missing

    config = ml_collections.ConfigDict(_tuples(_CONFIG))
    fill_missing(config, default_config())
    return config
'''


def is_run_config(config_file: str | os.PathLike) -> bool:
    """Whether `config_file` is a WORKDIR/config.py that training wrote (of any yolo_jax version)."""
    config_file = Path(config_file)
    return (config_file.name == FILE_NAME and config_file.is_file()
            and config_file.read_text().startswith(_TEMPLATE.split('\n', 1)[0]))


def path(workdir: str | os.PathLike) -> Path:
    """WORKDIR/config.py."""
    return Path(workdir) / FILE_NAME


def _jsonable(config: ml_collections.ConfigDict) -> dict:
    return json.loads(json.dumps(config.to_dict()))  # tuples → lists; fails loudly on anything not JSON


def write(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> Path:
    """Writes `config` as WORKDIR/config.py (replaced atomically: never half written) and returns the path."""
    target = path(workdir)
    text = _TEMPLATE.format(path=target, workdir=Path(workdir), json=json.dumps(_jsonable(config), indent=1))
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f'.{FILE_NAME}.', suffix='.tmp')
    try:
        with os.fdopen(fd, 'w') as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def default_config_flag(argv: list[str], training_modes: tuple[str, ...] = ('train',)) -> list[str]:
    """`argv` with `--config=WORKDIR/config.py` added when it names no config, names a workdir that holds one,
    and does not train (eval, detect, export read a run; training starts from a config file the user chose), or
    trains in a workdir that already has checkpoints/ (a resume, e.g. a finished run trained longer with
    `--config.train.epochs=M`: README, Train longer)."""
    if any(a == '--config' or a.startswith('--config=') for a in argv[1:]):
        return argv
    mode = next((a.split('=', 1)[1] for a in argv[1:] if a.startswith('--mode=')), 'train')
    workdir = next((a.split('=', 1)[1] for a in argv[1:] if a.startswith('--workdir=')), None)
    if workdir is None or not path(workdir).is_file():
        return argv
    if mode in training_modes and not (Path(workdir) / 'checkpoints').is_dir():
        return argv
    return [argv[0], f'--config={path(workdir)}', *argv[1:]]


def fill_missing(config: ml_collections.ConfigDict, defaults: ml_collections.ConfigDict, prefix: str = '') -> list[str]:
    """Adds to `config` (in place) every field of `defaults` it lacks, recursively → the dotted names added."""
    added = []
    with config.unlocked():
        for key, value in defaults.items():
            if key not in config:
                config[key] = value
                added.append(prefix + key)
            elif isinstance(value, ml_collections.ConfigDict) and isinstance(config[key], ml_collections.ConfigDict):
                added += fill_missing(config[key], value, f'{prefix}{key}.')
    return added


def complete(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config` (in place) with the fields it lacks (a WORKDIR/config.py written before they existed) from
    defaults.default_config(), logged; cheap (no TensorFlow), so a command can check fields before its imports."""
    from yolo_jax.defaults import default_config  # noqa: PLC0415

    added = fill_missing(config, default_config())
    if added:  # a workdir's config.py written by an older yolo_jax: its run had none of these (new fields are off)
        logging.warning('the config has no %s (written before they existed): their defaults are used',
                        ', '.join(f'config.{k}' for k in added))
    return config


def resolve(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> ml_collections.ConfigDict:
    """What the commands (main, anchors, export) fill in before a run, once, logged: config.data.split_file =
    WORKDIR/split.json for a user's own folder (data/own_data.py) when '' (and `workdir` is given),
    config.model.num_classes = the data set's class count when 0 ("from the data"), and the fields a config lacks
    (a WORKDIR/config.py written before they existed) from defaults.default_config(), logged. Returns `config`
    (changed in place: the one place a config is completed after loading; `complete` is its first part)."""
    from yolo_jax.data import own_data, sources  # noqa: PLC0415  (TensorFlow: only when a command runs)

    complete(config)
    if workdir and str(config.data.dataset) in own_data.DATASETS and not config.data.split_file:
        config.data.split_file = str(Path(workdir) / 'split.json')
    if int(config.model.num_classes) == 0:
        names, where = sources.class_source(config)
        config.model.num_classes = len(names)
        logging.info('config.model.num_classes=0: %d classes from %s', len(names), where)
    return config
