"""Darknet weights fetched when missing (yolo_jax/weights.py): file:// URLs only, never the real network."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import jax
import numpy as np
import pytest

from configs.mnist import get_config
from yolo_jax import darknet, transfer, weights
from yolo_jax.models import create_model

TINY = 'yolov3-tiny.weights'


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_published_table_and_variants():
    # The README's sizes; the one checksum computed from a copy of the published file (tests/.. shared data).
    assert {k: v.size for k, v in weights.PUBLISHED.items()} == {
        'yolov3.weights': 248_007_048, 'yolov3-tiny.weights': 35_434_956, 'yolov4.weights': 257_717_640,
        'yolov4-tiny.weights': 24_251_276}
    for variant, name in (('transfer', 'yolov3'), ('quick', 'yolov3-tiny'), ('yolov4_tiny,transfer', 'yolov4-tiny')):
        config = get_config(variant)
        assert config.train.init_from_url.endswith(f'/{name}.weights'), variant
    assert get_config().train.init_from_url == ''  # never downloads unless asked


def test_good_file_is_fetched_atomically(tmp_path):
    source = tmp_path / 'src' / 'custom.weights'
    source.parent.mkdir()
    source.write_bytes(np.random.default_rng(0).bytes(3 * 2**20 + 17))  # > one chunk
    target = tmp_path / 'weights' / 'custom.weights'
    assert weights.fetch_if_missing(target, source.as_uri()) is None
    assert target.read_bytes() == source.read_bytes()
    assert _leftovers(target.parent) == ['custom.weights']
    source.write_bytes(b'changed')  # an existing file is never fetched again
    assert weights.fetch_if_missing(target, source.as_uri()) is None
    assert target.stat().st_size == 3 * 2**20 + 17


def test_real_tiny_weights_pass_the_checksum(shared_data, tmp_path):
    source = shared_data / 'darknet' / TINY
    target = tmp_path / 'weights' / TINY
    assert weights.fetch_if_missing(target, source.as_uri()) is None
    assert hashlib.sha256(target.read_bytes()).hexdigest() == weights.PUBLISHED[TINY].sha256


@pytest.mark.parametrize('content, message', [
    (b'\0' * 1000, 'got 1,000 bytes, expected 35,434,956'),
    (None, 'sha256 '),  # the right size, other bytes
])
def test_corrupt_download_leaves_nothing(tmp_path, content, message):
    source = tmp_path / 'src' / TINY
    source.parent.mkdir()
    if content is None:
        with open(source, 'wb') as f:  # sparse: 35 MB of zeros
            f.truncate(weights.PUBLISHED[TINY].size)
    else:
        source.write_bytes(content)
    target = tmp_path / 'weights' / TINY
    why = weights.fetch_if_missing(target, source.as_uri())
    assert why is not None and message in why and source.as_uri() in why
    assert not target.exists() and _leftovers(target.parent) == []


def test_unreachable_or_missing_url(tmp_path):
    target = tmp_path / 'weights' / TINY
    why = weights.fetch_if_missing(target, 'http://127.0.0.1:1/yolov3-tiny.weights')  # refused at once
    assert why == 'offline: http://127.0.0.1:1/yolov3-tiny.weights is not reachable'
    why = weights.fetch_if_missing(target, (tmp_path / 'nowhere' / TINY).as_uri())
    assert why is not None and why.startswith('downloading file://') and 'failed' in why
    assert not target.exists() and _leftovers(target.parent) == []
    # A URL of another file (the transfer variant's, after init_from was pointed elsewhere) is never fetched.
    source = tmp_path / 'yolov3.weights'
    source.write_bytes(b'x')
    why = weights.fetch_if_missing(tmp_path / 'mine.weights', source.as_uri())
    assert why == f'config.train.init_from_url {source.as_uri()} names another file than mine.weights'
    assert not (tmp_path / 'mine.weights').exists()


def _tiny_config(tmp_path: Path, url: str):
    config = get_config('tiny,smoke')
    config.train.init_from = str(tmp_path / 'weights' / 'smoke.weights')
    config.train.init_from_url = url
    config.train.init_from_missing = 'scratch'
    return config


def test_initial_variables_use_a_fetched_file_or_fall_back(tmp_path, caplog):
    """The transfer start: a fetched file is loaded; a failed fetch warns with the reason and trains from scratch
    ('scratch'), or names the reason in the error ('error')."""
    config = _tiny_config(tmp_path, '')
    model = create_model(config.model)
    # A Darknet file of this very network (80 classes, as published) to serve.
    mc = darknet.darknet_model_config('yolov3_tiny', num_classes=80)
    mc.width_multiplier = config.model.width_multiplier
    rng = np.random.default_rng(0)
    source_vars = jax.tree_util.tree_map_with_path(
        lambda p, s: np.abs(rng.standard_normal(s.shape)).astype(np.float32), darknet.abstract_variables(mc))
    served = tmp_path / 'served' / 'smoke.weights'
    served.parent.mkdir()
    darknet.save_weights(served, source_vars, mc)

    config.train.init_from_url = served.as_uri()
    with caplog.at_level(logging.INFO, logger='absl'):
        variables = transfer.initial_variables(config, model)
    assert 'downloading it from file://' in caplog.text and 'Initialised 11 of 13 convolutions' in caplog.text
    assert Path(config.train.init_from).read_bytes() == served.read_bytes()
    kernel = variables['params']['backbone']['conv_000']['conv']['kernel']
    np.testing.assert_array_equal(kernel, source_vars['params']['backbone']['conv_000']['conv']['kernel'])

    caplog.clear()
    config = _tiny_config(tmp_path / 'b', (tmp_path / 'absent' / 'smoke.weights').as_uri())
    with caplog.at_level(logging.WARNING, logger='absl'):
        fresh = transfer.initial_variables(config, model)
    assert 'training from scratch' in caplog.text and 'absent/smoke.weights failed' in caplog.text
    np.testing.assert_array_equal(fresh['params']['backbone']['conv_000']['conv']['kernel'],
                                  transfer.fresh_variables(config, model)['params']['backbone']['conv_000']['conv'][
                                      'kernel'])
    config.train.init_from_missing = 'error'
    with pytest.raises(FileNotFoundError, match=r'does not exist .*absent/smoke.weights failed'):
        transfer.initial_variables(config, model)
