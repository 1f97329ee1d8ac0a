"""Checkpoint manager: best-by-validation plus latest, round trips, and a half-written save."""

import jax
import jax.numpy as jnp
import numpy as np

from yolo_jax import checkpointing


def _state(v: float) -> dict:
    return {'w': jnp.full((3, 2), v), 'step': jnp.asarray(int(v), jnp.int32)}


def test_keeps_lowest_validation_loss_and_latest(tmp_path):
    mgr = checkpointing.create_manager(tmp_path, save_best_only=True)
    for step, loss in ((1, 3.0), (2, 1.0), (3, 2.0), (4, 2.5)):
        checkpointing.save(mgr, step, _state(step), {'epoch': step, 'metrics': {'val_total': loss}},
                           metrics={'val_total': loss})
    checkpointing.save(mgr, 5, _state(5), {'epoch': 4, 'step': 5})  # mid-epoch, no metrics
    mgr.wait_until_finished()
    assert sorted(mgr.all_steps()) == [2, 5]  # the best (loss 1.0) and the latest
    assert checkpointing.best_step(mgr) == 2
    state, meta = checkpointing.restore(mgr, 2, _state(0))
    np.testing.assert_array_equal(state['w'], np.full((3, 2), 2.0))
    assert meta['metrics'] == {'val_total': 1.0}


def test_save_every_epoch_when_not_best_only(tmp_path):
    mgr = checkpointing.create_manager(tmp_path, save_best_only=False)
    for step, loss in ((1, 3.0), (2, 1.0), (3, 2.0)):
        checkpointing.save(mgr, step, _state(step), {'metrics': {'val_total': loss}}, metrics={'val_total': loss})
    checkpointing.save(mgr, 4, _state(4), {})
    checkpointing.save(mgr, 5, _state(5), {})  # replaces mid-epoch 4 as the latest
    mgr.wait_until_finished()
    assert sorted(mgr.all_steps()) == [1, 2, 3, 5]


def test_half_written_checkpoint_is_ignored(tmp_path):
    mgr = checkpointing.create_manager(tmp_path)
    checkpointing.save(mgr, 1, _state(1), {'epoch': 1}, metrics={'val_total': 1.0})
    mgr.wait_until_finished()
    # What a run killed mid-save leaves: an unfinished temporary directory.
    tmp = tmp_path / 'checkpoints' / '2.orbax-checkpoint-tmp-123'
    (tmp / 'state').mkdir(parents=True)
    (tmp / 'state' / 'garbage').write_bytes(b'\x00' * 10)
    mgr2 = checkpointing.create_manager(tmp_path)
    assert mgr2.latest_step() == 1
    state, _ = checkpointing.restore(mgr2, 1, _state(0))
    assert float(jax.device_get(state['w'])[0, 0]) == 1.0


def test_state_without_a_field_restores_into_one_left_none(tmp_path):
    """A checkpoint written before TrainState had a field (`ema`) resumes into a state that leaves it None (EMA
    off), and the manager then saves and restores as usual."""
    import flax

    @flax.struct.dataclass
    class Before:
        step: jax.Array
        params: dict

    @flax.struct.dataclass
    class After:
        step: jax.Array
        params: dict
        ema: dict | None

    mgr = checkpointing.create_manager(tmp_path)
    checkpointing.save(mgr, 1, Before(jnp.asarray(1), {'w': jnp.arange(3.0)}), {'epoch': 1})
    mgr.wait_until_finished()
    target = After(jnp.asarray(0), {'w': jnp.zeros(3)}, None)
    state, meta = checkpointing.restore(checkpointing.create_manager(tmp_path), 1, target)
    assert isinstance(state, After) and state.ema is None and meta == {'epoch': 1}
    np.testing.assert_array_equal(state.params['w'], [0.0, 1.0, 2.0])
    checkpointing.save(mgr, 2, state.replace(step=jnp.asarray(2)), {'epoch': 2})
    mgr.wait_until_finished()
    assert int(checkpointing.restore(mgr, 2, target)[0].step) == 2


def test_load_model_serves_the_ema_when_the_state_has_one(tmp_path):
    """load_model (eval, detect, export, init_from) reads the EMA's params and batch_stats, not the raw ones."""

    def variables(v: float) -> dict:
        return {'params': {'conv': {'kernel': jnp.full((1, 1, 3, 2), v)}},
                'batch_stats': {'bn': {'mean': jnp.full(2, v)}}}

    mgr = checkpointing.create_manager(tmp_path)
    for step, ema in ((1, None), (2, variables(7.0))):
        state = {'step': jnp.asarray(step), **variables(float(step)), 'ema': ema}
        checkpointing.save(mgr, step, state, {'epoch': step}, metrics={'val_total': float(step)})  # both kept
    mgr.wait_until_finished()
    for step, want in ((1, 1.0), (2, 7.0)):
        got, got_step, meta = checkpointing.load_model(tmp_path / 'checkpoints' / str(step))
        assert got_step == step and meta == {'epoch': step}
        assert jax.tree.structure(got) == jax.tree.structure(variables(0.0))
        for leaf in jax.tree.leaves(got):
            np.testing.assert_array_equal(leaf, want)


def test_model_source_check_raises_what_the_loader_raises(tmp_path):
    """model_source.check (paths only, run by export before TensorFlow loads) against the loader's
    own verdict (checkpointing.load_model through orbax) on each layout: an empty workdir, an empty checkpoints/,
    only a half-written save's temporary folder, a real checkpoint given as workdir, checkpoints/ or its step."""
    import pytest

    from yolo_jax import model_source
    from yolo_jax.errors import MissingFileError

    empty = tmp_path / 'empty'
    empty.mkdir()
    bare = tmp_path / 'bare'
    (bare / 'checkpoints').mkdir(parents=True)
    half = tmp_path / 'half'
    (half / 'checkpoints' / '3.orbax-checkpoint-tmp-1').mkdir(parents=True)
    for workdir in (empty, bare, half):
        with pytest.raises(MissingFileError) as loader:
            checkpointing.load_model(workdir, f'--workdir={workdir}')
        with pytest.raises(MissingFileError) as check:
            model_source.check(workdir, None)
        assert str(check.value) == str(loader.value) and 'no checkpoint in' in str(check.value)
    trained = tmp_path / 'trained'
    mgr = checkpointing.create_manager(trained)
    state = {'params': {'w': jnp.ones(2)}, 'batch_stats': {}}
    checkpointing.save(mgr, 7, state, {'epoch': 1})
    mgr.wait_until_finished()
    for path in (trained, trained / 'checkpoints', trained / 'checkpoints' / '7'):
        model_source.check(path, None)  # no error
        assert checkpointing.load_model(path)[1] == 7
    with pytest.raises(MissingFileError, match='does not exist: train first'):
        model_source.check(tmp_path / 'nope', None)
    with pytest.raises(MissingFileError, match='--weights: no such file'):
        model_source.check(trained, tmp_path / 'nope.weights')
