"""Darknet .weights I/O and transfer initialisation on synthetic models (fast; no shared data needed).

Variables are random NumPy values shaped like the models (not model.init: BatchNorm's ones/zeros would hide a
swapped beta/gamma/mean/var), so every test checks where each value lands.
"""

from pathlib import Path

import jax
import numpy as np
import pytest

from configs.mnist import get_config
from yolo_jax import checkpointing, darknet, steps, transfer
from yolo_jax.models import create_model


def _mc(name: str, num_classes: int, width: float = 1.0):
    mc = darknet.darknet_model_config(name, num_classes=num_classes)
    mc.width_multiplier = width
    return mc


def _random_variables(mc, seed: int = 0) -> dict:
    """Normal random values; BatchNorm variances |normal| (load_weights rejects negative ones)."""
    rng = np.random.default_rng(seed)

    def value(path, s):
        x = rng.standard_normal(s.shape).astype(np.float32)
        return np.abs(x) if jax.tree_util.keystr(path).endswith("['var']") else x

    return jax.tree_util.tree_map_with_path(value, darknet.abstract_variables(mc))


def _count(variables) -> int:
    return sum(x.size for x in jax.tree.leaves(variables))


def _assert_trees_equal(a, b) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))


def _reference_file_values(variables: dict) -> np.ndarray:
    """The body of a .weights file written independently of darknet.py: convs by their Darknet index NNN,
    BN convs as beta, gamma, mean, var, kernel (out, in, h, w); output convs as bias, kernel (out, in, h, w)."""
    params, stats = variables['params'], variables['batch_stats']
    layers = {name: (part, p) for part in params for name, p in params[part].items()}
    chunks = []
    for i in range(len(layers)):
        part, p = layers[f'conv_{i:03d}']
        if 'kernel' in p:
            chunks += [p['bias'], p['kernel'].transpose(3, 2, 0, 1)]
        else:
            s = stats[part][f'conv_{i:03d}']['bn']
            kernel = p['conv']['kernel'].transpose(3, 2, 0, 1)
            chunks += [p['bn']['bias'], p['bn']['scale'], s['mean'], s['var'], kernel]
    return np.concatenate([c.ravel() for c in chunks]).astype('<f4')


@pytest.mark.parametrize(
    'name, classes, width, n_convs',
    [('yolov3_tiny', 3, 1.0, 13), ('yolov3', 2, 0.25, 75)],
)
def test_round_trip_and_layout(tmp_path, name, classes, width, n_convs):
    """save → file laid out as Darknet's (independent reference) → load gives identical variables."""
    mc = _mc(name, classes, width)
    variables = _random_variables(mc)
    path = tmp_path / 'model.weights'
    darknet.save_weights(path, variables, mc, header=(0, 2, 5, 123456789012))
    raw = path.read_bytes()
    assert raw[:20] == np.array([0, 2, 5], '<i4').tobytes() + np.array(123456789012, '<i8').tobytes()
    np.testing.assert_array_equal(np.frombuffer(raw[20:], '<f4'), _reference_file_values(variables))
    assert darknet.read_header(path) == (0, 2, 5, 123456789012)
    loaded = darknet.load_weights(path, mc)
    _assert_trees_equal(loaded, variables)
    assert sum(1 for p in loaded['params'].values() for _ in p) == n_convs
    assert darknet.value_count(mc) == _count(variables) == (len(raw) - 20) // 4


def test_published_value_counts():
    assert darknet.value_count(darknet.darknet_model_config('yolov3')) == 62_001_757
    assert darknet.value_count(darknet.darknet_model_config('yolov3_tiny')) == 8_858_734
    assert darknet.darknet_model_config('yolov3').bn_epsilon == darknet.DARKNET_BN_EPSILON == 1e-5


@pytest.fixture(scope='module')
def tiny_file(tmp_path_factory):
    """A 3-class YOLOv3-tiny .weights file, its config and variables."""
    mc = _mc('yolov3_tiny', 3)
    variables = _random_variables(mc, seed=1)
    path = tmp_path_factory.mktemp('tiny') / 'tiny3.weights'
    darknet.save_weights(path, variables, mc)
    return path, mc, variables


@pytest.mark.parametrize(
    'extra_bytes, found_delta, what',
    [
        (-4, -1, 'truncated: 1 values missing'),
        (-4000, -1000, 'truncated'),
        (4, 1, 'extra data: 1 values too many'),
        (2, 0, '2 stray bytes'),
    ],
)
def test_count_mismatch_is_a_clear_error(tmp_path, tiny_file, extra_bytes, found_delta, what):
    src, mc, _ = tiny_file
    data = src.read_bytes()
    bad = tmp_path / 'bad.weights'
    bad.write_bytes(data[:extra_bytes] if extra_bytes < 0 else data + b'\0' * extra_bytes)
    expected = darknet.value_count(mc)
    with pytest.raises(ValueError) as e:
        darknet.load_weights(bad, mc)
    msg = str(e.value)
    assert str(bad) in msg and f'expected {expected:,}' in msg and f'found {expected + found_delta:,}' in msg, msg
    assert what in msg


def test_wrong_model_is_a_clear_error(tiny_file):
    path, _, _ = tiny_file
    with pytest.raises(ValueError, match=r'for yolov3 with 3 classes.*fits yolov3_tiny with 3 classes'):
        darknet.load_weights(path, _mc('yolov3', 3))
    with pytest.raises(ValueError, match=r'expected .* for yolov3_tiny with 80 classes.*fits yolov3_tiny with 3'):
        darknet.load_weights(path, _mc('yolov3_tiny', 80))
    assert darknet.infer_num_classes(path, 'yolov3_tiny') == 3
    assert darknet.infer_num_classes(path, 'yolov3') is None
    with pytest.raises(FileNotFoundError):
        darknet.load_weights(path.with_name('missing.weights'), _mc('yolov3_tiny', 3))


@pytest.mark.parametrize(
    'header, nbytes',
    [((0, 1, 0, 77), 16), ((0, 2, 0, 2**40), 20), ((1, 0, 3, 5), 20), ((0, 1000, 0, 7), 16)],
)
def test_header_versions(tmp_path, tiny_file, header, nbytes):
    """`seen` is int64 when major*10+minor >= 2 (and both < 1000, Darknet's guard), else int32."""
    _, mc, variables = tiny_file
    path = tmp_path / 'v.weights'
    darknet.save_weights(path, variables, mc, header=header)
    assert darknet.read_header(path) == header and darknet.read_header(path).nbytes == nbytes
    assert path.stat().st_size == nbytes + 4 * _count(variables)
    _assert_trees_equal(darknet.load_weights(path, mc), variables)


def test_epsilon_check(tiny_file):
    path, mc, _ = tiny_file
    keras = mc.copy_and_resolve_references()
    keras.bn_epsilon = 1e-3
    with pytest.warns(UserWarning, match='bn_epsilon=0.001'):
        darknet.load_weights(path, keras)
    with pytest.raises(ValueError, match='bn_epsilon'):
        darknet.load_weights(path, keras, epsilon_check='error')


def test_save_checks_shapes_and_is_atomic(tmp_path, tiny_file, monkeypatch):
    src, mc, variables = tiny_file
    with pytest.raises(ValueError, match=r'do not match yolov3_tiny with 4 classes.*conv_009/bias: \(24,\) vs \(27,\)'):
        darknet.save_weights(tmp_path / 'x.weights', variables, _mc('yolov3_tiny', 4))
    target = tmp_path / 'keep.weights'
    target.write_bytes(b'old')

    def fail(*args):
        raise OSError('disk full')

    monkeypatch.setattr(darknet.os, 'replace', fail)
    with pytest.raises(OSError, match='disk full'):
        darknet.save_weights(target, variables, mc)
    assert target.read_bytes() == b'old' and [p.name for p in tmp_path.iterdir()] == ['keep.weights']


# ----------------------------------------------------------------------------------------------- transfer


def _smoke_config(num_classes: int = 10, name: str = 'yolov3_tiny'):
    config = get_config('tiny,smoke' if name == 'yolov3_tiny' else 'smoke')
    config.model.num_classes = num_classes
    return config


def _leaf(tree, path):
    for k in path:
        tree = tree[k.key]
    return tree


def _check_transfer(variables, source, fresh, output_convs) -> None:
    """Every tensor equals the source's, except the output convs', which equal the fresh init."""
    for part in ('params', 'batch_stats'):
        for path, x in jax.tree_util.tree_flatten_with_path(variables[part])[0]:
            name = jax.tree_util.keystr(path)
            is_output = any(f"'{n}'" in name for n in output_convs)
            want = _leaf(fresh[part] if is_output else source[part], path)
            np.testing.assert_array_equal(np.asarray(x), np.asarray(want), err_msg=name)


def test_transfer_from_darknet_80_to_10_classes(tmp_path, caplog):
    """An 80-class tiny file into a 10-class tiny: every backbone/neck tensor copied, output convs fresh."""
    config = _smoke_config(10)
    src_mc = _mc('yolov3_tiny', 80, config.model.width_multiplier)
    source = _random_variables(src_mc, seed=2)
    path = tmp_path / 'coco.weights'
    darknet.save_weights(path, source, src_mc)
    config.train.init_from = str(path)
    model = create_model(config.model)
    with caplog.at_level('INFO'):
        variables = transfer.initial_variables(config, model)
    fresh = transfer.fresh_variables(config, model)
    _check_transfer(variables, source, fresh, model.output_convs)
    assert jax.tree.map(np.shape, variables) == jax.tree.map(np.shape, fresh)
    log = caplog.text
    assert 'Initialised 11 of 13 convolutions' in log
    assert 'skipped head/conv_009: output conv shape mismatch' in log and '(255,) vs (45,)' in log
    assert 'Fine-tuning Darknet weights with config.model.bn_epsilon=0.001' in log
    # The result is what training starts from.
    _, _, state = steps.build_model_and_state(config, steps_per_epoch=2)
    _assert_trees_equal(state.variables, variables)


def _save_checkpoint(workdir: Path, config, variables: dict, step: int = 3) -> None:
    model = create_model(config.model)
    lr_fn = steps.create_learning_rate_fn(config.train, 2)
    state = steps.create_train_state(config.train, model, variables, lr_fn)
    manager = checkpointing.create_manager(workdir)
    checkpointing.save(manager, step, state, {'epoch': 1, 'step': step}, metrics={checkpointing.BEST_METRIC: 1.0})
    manager.wait_until_finished()
    manager.close()


def test_transfer_from_orbax_checkpoint(tmp_path):
    src_config = _smoke_config(3)
    source = _random_variables(src_config.model, seed=3)
    _save_checkpoint(tmp_path / 'run', src_config, source)

    config = _smoke_config(10)
    model = create_model(config.model)
    fresh = transfer.fresh_variables(config, model)
    for init_from in ('run', 'run/checkpoints', 'run/checkpoints/3'):
        config.train.init_from = str(tmp_path / init_from)
        variables = transfer.initial_variables(config, model)
        _check_transfer(variables, source, fresh, model.output_convs)

    # Same class count: the output convs are copied too (a resumed fine-tune keeps its detector).
    config = _smoke_config(3)
    config.train.init_from = str(tmp_path / 'run')
    _assert_trees_equal(transfer.initial_variables(config, create_model(config.model)), source)


def test_missing_init_from_falls_back_to_scratch_only_when_asked(tmp_path, caplog):
    config = _smoke_config(10)
    model = create_model(config.model)
    config.train.init_from = str(tmp_path / 'weights' / 'yolov3-tiny.weights')
    config.train.init_from_missing = 'scratch'
    with caplog.at_level('WARNING'):
        variables = transfer.initial_variables(config, model)
    assert 'training from scratch' in caplog.text and 'yolov3-tiny.weights' in caplog.text
    _assert_trees_equal(variables, transfer.fresh_variables(config, model))
    config.train.init_from_missing = 'error'
    with pytest.raises(FileNotFoundError, match='does not exist'):
        transfer.initial_variables(config, model)
    config.train.init_from_missing = 'ignore'
    with pytest.raises(ValueError, match=r"init_from_missing: expected 'error' or 'scratch', got 'ignore'"):
        transfer.initial_variables(config, model)


def test_transfer_variant_names_the_darknet_file_of_the_network():
    for variant, name in (('transfer', 'yolov3'), ('tiny,transfer', 'yolov3-tiny'), ('quick', 'yolov3-tiny'),
                          ('yolov4,transfer', 'yolov4'), ('yolov4_tiny,transfer', 'yolov4-tiny')):
        config = get_config(variant)
        assert config.train.init_from == f'weights/{name}.weights', variant
        assert (config.model.width_multiplier, config.train.init_from_missing) == (1.0, 'scratch')
        assert config.model.bn_epsilon == darknet.DARKNET_BN_EPSILON


def test_transfer_errors(tmp_path):
    config = _smoke_config(10)
    model = create_model(config.model)
    config.train.init_from = str(tmp_path / 'nothing.weights')
    with pytest.raises(FileNotFoundError, match='does not exist'):
        transfer.initial_variables(config, model)
    (tmp_path / 'empty').mkdir()
    config.train.init_from = str(tmp_path / 'empty')
    with pytest.raises(FileNotFoundError, match='no checkpoint'):
        transfer.initial_variables(config, model)

    # YOLOv3 weights into YOLOv3-tiny: a Darknet file and a checkpoint.
    v3 = _smoke_config(80, name='yolov3')
    path = tmp_path / 'v3.weights'
    darknet.save_weights(path, _random_variables(v3.model), v3.model)
    config.train.init_from = str(path)
    with pytest.raises(ValueError, match=r'init_from: .*expected .* for yolov3_tiny .*fits yolov3 with 80 classes'):
        transfer.initial_variables(config, model)
    _save_checkpoint(tmp_path / 'v3run', v3, _random_variables(v3.model))
    config.train.init_from = str(tmp_path / 'v3run')
    with pytest.raises(ValueError, match=r"holds yolov3 but config.model.name is 'yolov3_tiny'"):
        transfer.initial_variables(config, model)

    # Another width: nothing matches.
    wide = _smoke_config(10)
    wide.model.width_multiplier = 0.25
    _save_checkpoint(tmp_path / 'tinyrun', config, _random_variables(config.model))
    wide.train.init_from = str(tmp_path / 'tinyrun')
    with pytest.raises(ValueError, match=r'9 of 13 convolutions .* do not match config.model \(width_multiplier 0.25'):
        transfer.initial_variables(wide, create_model(wide.model))
