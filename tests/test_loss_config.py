"""config.loss checked before any data is built (loss.check_loss_config, box_loss and class_weights): a bad
`box_loss` is one `error:` line and exit code 2 through `python -m yolo_jax.main`, with nothing written (it used to
fail at the first trace; class_weights through the command: test_class_weights)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from yolo_jax.defaults import default_config
from yolo_jax.errors import ConfigError
from yolo_jax.loss import BOX_LOSSES, check_loss_config

REPO = Path(__file__).resolve().parents[1]


def test_check_loss_config_names_the_field():
    config = default_config()
    for name in BOX_LOSSES:  # every known box term passes
        config.loss.box_loss = name
        check_loss_config(config.loss, 10)
    config.loss.class_weights = '1,2'
    with pytest.raises(ConfigError, match=r'config\.loss\.class_weights=.*2 weights for 10 classes'):
        check_loss_config(config.loss, 10)
    check_loss_config(config.loss, 2)
    config.loss.box_loss = 'eiou'
    with pytest.raises(ConfigError, match=r"config\.loss\.box_loss: unknown 'eiou'; expected one of \['ciou'"):
        check_loss_config(config.loss, 2)


def test_a_bad_box_loss_through_the_command_line(tmp_path):
    # The data dir does not exist: the check comes before any data is read or built.
    env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2')
    proc = subprocess.run([sys.executable, '-m', 'yolo_jax.main', '--nojemalloc',
                           '--config=configs/mnist.py:tiny,smoke', f'--workdir={tmp_path / "run"}',
                           '--config.loss.box_loss=eiou', f'--config.data.data_dir={tmp_path / "no_data"}'],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith('error:')]
    assert len(lines) == 1 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    assert re.match(r"error: config\.loss\.box_loss: unknown 'eiou'", lines[0]), lines[0]
    assert not (tmp_path / 'run').exists() and not (tmp_path / 'no_data').exists()
