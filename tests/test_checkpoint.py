"""Checkpoints: exact round trip of the whole TrainState, continuation, replay-less resume, keep-k, bad files."""

import functools

import jax
import numpy as np
import pytest

from purempo import Config, checkpoint, make_trainer
from purempo.train import run_chunk

TINY = Config(
    env="inverted_pendulum",
    episode_length=50,
    total_steps=2_000,
    num_envs=8,
    unroll_length=2,
    updates_per_iteration=2,
    prefill_steps=64,
    num_evals=2,
    eval_episodes=2,
    replay_size=2_048,
    batch_size=8,
    sequence_length=4,
    num_action_samples=4,
    policy_hidden=(16, 16),
    critic_hidden=(16, 16),
)
KEYS = jax.random.split(jax.random.PRNGKey(0), 2)


@pytest.fixture(scope="module")
def pieces():
    trainer = make_trainer(TINY)
    init = jax.jit(jax.vmap(trainer.init))
    chunk = jax.jit(jax.vmap(functools.partial(run_chunk, trainer)))
    abstract = jax.eval_shape(jax.vmap(trainer.init), KEYS)
    return init, chunk, abstract


@pytest.fixture(scope="module")
def after_one_chunk(pieces):
    init, chunk, _ = pieces
    state, _ = chunk(init(KEYS))
    return jax.device_get(state)


def _assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_is_exact_and_continues_identically(tmp_path, pieces, after_one_chunk):
    """Every leaf (params, optimiser, duals, normalisers, replay, env states, keys, counters) comes back
    bit-exact, and the next chunk from the restored state equals the next chunk from the original."""
    init, chunk, abstract = pieces
    saver = checkpoint.Saver(tmp_path, keep=3, with_replay=True)
    saver.save(1, after_one_chunk, dict(wall_time_s=12.5))
    restored = checkpoint.restore(tmp_path, abstract)
    assert restored.step == 1 and restored.has_replay and restored.meta["wall_time_s"] == 12.5
    _assert_trees_equal(restored.state, after_one_chunk)
    assert int(np.asarray(restored.state.replay.size)[0]) > 0
    expected = chunk(after_one_chunk)
    continued = chunk(restored.state)
    _assert_trees_equal(jax.device_get(continued), jax.device_get(expected))


def test_empty_arrays_round_trip(tmp_path, after_one_chunk):
    """Zero-size leaves (MuJoCo Playground env states have some; orbax cannot store them) come back with their
    shape and dtype, and the other leaves exactly."""
    state = after_one_chunk._replace(exploration_noise=np.zeros((2, 0, 3), np.float32))
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), state)
    checkpoint.Saver(tmp_path, keep=1, with_replay=True).save(1, state, {})
    _assert_trees_equal(checkpoint.restore(tmp_path, abstract).state, state)


def test_keeps_the_newest_k(tmp_path, after_one_chunk):
    saver = checkpoint.Saver(tmp_path, keep=2, with_replay=False)
    for step in range(5):
        saver.save(step, after_one_chunk, dict(wall_time_s=float(step)))
    assert checkpoint.steps(tmp_path) == [3, 4]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["3", "4"]


def test_without_replay_the_resumed_run_refills_before_learning(tmp_path, pieces, after_one_chunk):
    """A checkpoint without replay restores everything else; the run then collects as much as its prefill
    did ((P + 1) unrolls) before it updates again, instead of sampling from an empty buffer."""
    init, chunk, abstract = pieces
    checkpoint.Saver(tmp_path, keep=1, with_replay=False).save(1, after_one_chunk, {})
    fresh = jax.device_get(init(KEYS)).replay
    restored = checkpoint.restore(tmp_path, abstract, fresh_replay=fresh)
    assert not restored.has_replay
    _assert_trees_equal(restored.state.replay, fresh)
    _assert_trees_equal(restored.state._replace(replay=None), after_one_chunk._replace(replay=None))

    state, metrics = jax.device_get(chunk(restored.state))
    updates = metrics["updates"]  # [S, I]
    waiting = TINY.prefill_iterations  # the (P + 1)-th collect reaches the prefill's fill level
    assert np.all(updates[:, :waiting] == 0) and np.all(updates[:, waiting:] == TINY.updates_per_iteration)
    assert np.all(np.isfinite(metrics["critic_loss"][:, waiting:]))
    learned = (TINY.iterations_per_eval - waiting) * TINY.updates_per_iteration
    np.testing.assert_array_equal(state.learner.num_updates - after_one_chunk.learner.num_updates, learned)


def test_a_checkpoint_of_another_config_is_refused_before_reading_arrays(tmp_path, after_one_chunk):
    checkpoint.Saver(tmp_path, keep=1, with_replay=True).save(1, after_one_chunk, {})
    for other in (TINY.replace(policy_hidden=(32, 32)), TINY.replace(env="reacher")):
        abstract = jax.eval_shape(jax.vmap(make_trainer(other).init), KEYS)
        with pytest.raises(checkpoint.CheckpointError, match="does not match the run's config") as info:
            checkpoint.restore(tmp_path, abstract)
        assert "\n" not in str(info.value)


def test_missing_and_damaged_checkpoints_are_one_line_errors(tmp_path, pieces, after_one_chunk):
    _, _, abstract = pieces
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint"):
        checkpoint.restore(tmp_path / "nowhere", abstract)
    checkpoint.Saver(tmp_path, keep=1, with_replay=True).save(1, after_one_chunk, {})
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint 7 .*available: \\[1\\]"):
        checkpoint.restore(tmp_path, abstract, step=7)
    # Overwrite every stored byte of the arrays with garbage of the same length.
    damaged = [p for p in (tmp_path / "checkpoints" / "1" / "state").rglob("*") if p.is_file()]
    assert damaged
    for path in damaged:
        path.write_bytes(b"\x00garbage" * max(1, path.stat().st_size // 8))
    with pytest.raises(checkpoint.CheckpointError, match="cannot read checkpoint 1") as info:
        checkpoint.restore(tmp_path, abstract)
    assert "\n" not in str(info.value)
