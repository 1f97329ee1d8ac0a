"""Config files load through absl/ml_collections flags, and every override the README shows works."""

import re
import shlex
from pathlib import Path

import pytest
from absl import flags
from ml_collections import config_flags

REPO = Path(__file__).resolve().parents[1]


def _parse(*argv: str):
    fv = flags.FlagValues()
    # Overrides are discovered from the command line (sys.argv under absl's app.run; here given explicitly).
    config_flags.DEFINE_config_file('config', None, flag_values=fv, lock_config=True, sys_argv=['prog', *argv])
    fv(['prog', *argv])
    return fv.config


def _readme_overrides() -> list[tuple[str, str]]:
    """(config file with variant, override) pairs from every `--config...` command line in README.md."""
    text = REPO.joinpath('README.md').read_text().replace('\\\n', ' ')
    pairs = []
    for line in text.splitlines():
        if 'yolo_jax.main' not in line:
            continue
        args = shlex.split(line.split('yolo_jax.main', 1)[1].split('#')[0])
        config = next((a.split('=', 1)[1] for a in args if a.startswith('--config=')), None)
        if config is not None:  # eval/detect of a workdir read its own config (WORKDIR/config.py)
            pairs += [(config, a) for a in args if a.startswith('--config.')]
    return pairs


def test_variants_load():
    base = _parse('--config=configs/mnist.py')
    assert (base.model.name, base.model.input_size, base.model.num_classes) == ('yolov3', 416, 10)
    assert base.model.strides == (8, 16, 32) and base.model.anchors[2][2] == (373, 326)
    assert (base.train.batch_size, base.train.epochs, base.train.warmup_epochs) == (4, 100, 2)
    assert (base.train.lr_init, base.train.lr_end, base.loss.ignore_thresh) == (1e-4, 1e-6, 0.5)
    tiny = _parse('--config=configs/mnist.py:tiny,small')
    assert tiny.model.name == 'yolov3_tiny' and tiny.model.strides == (16, 32)
    assert tiny.model.anchors[0][0] == (10, 14) and tiny.model.input_size == 256
    with pytest.raises(Exception, match='unknown variant'):
        _parse('--config=configs/mnist.py:nope')


def test_readme_overrides_apply():
    pairs = _readme_overrides()
    assert len(pairs) >= 5, pairs
    for config_arg, override in pairs:
        path, value = override[len('--config.'):].split('=', 1)
        config = _parse(f'--config={config_arg}', override)
        got = config
        for key in path.split('.'):
            got = got[key]
        assert str(got) == value or got == type(got)(value), (override, got)


def test_unknown_field_is_an_error():
    with pytest.raises(Exception, match=re.escape('nonexistent')):
        _parse('--config=configs/mnist.py', '--config.train.nonexistent=1')


def test_default_config_is_the_mnist_reference_and_experiment_configs_build_on_it():
    default = _parse('--config=configs/default.py')
    mnist = _parse('--config=configs/mnist.py')
    assert default.to_dict() == mnist.to_dict()
    assert default.train.parallel == 'mesh' and default.eval.fold_batchnorm is True


def test_library_code_never_re_defaults_config_fields():
    """`.get(key, fallback)` on a config hides disagreements with configs/: every field is read directly."""
    offenders = []
    for path in sorted((REPO / 'yolo_jax').rglob('*.py')):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r'config\w*(\.\w+)*\.get\(', line):
                offenders.append(f'{path.relative_to(REPO)}:{n}: {line.strip()}')
    assert not offenders, offenders
