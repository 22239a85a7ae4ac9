"""Tests for purempo.replay against a per-env Python deque model and chi-square uniformity tests."""

from __future__ import annotations

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from purempo import replay

NUM_ENVS = 3
CAPACITY = 10
BATCH = 2048
# Shapes are kept to a few (U ∈ {1, 3, CAPACITY}, one batch size) so that the jitted add/sample compile
# only a handful of times.

_add = jax.jit(replay.add)
_sample = jax.jit(replay.sample, static_argnums=(2, 3))


def _step_items(t0: int, num_steps: int, num_envs: int = NUM_ENVS):
    """Time-major items `[U, E, ...]` for global steps t0..t0+U-1; every field is a function of (t, env)."""
    t = np.arange(t0, t0 + num_steps, dtype=np.int64)[:, None] * np.ones((1, num_envs), np.int64)
    e = np.arange(num_envs)[None, :] * np.ones((num_steps, 1), np.int64)
    return {
        "counter": t.astype(np.int32),
        "env": e.astype(np.int32),
        "extras": (
            (t[..., None] + 1000.0 * e[..., None] + np.array([0.0, 0.25, 0.5])).astype(np.float32),  # obs [3]
            (t % 3 == 0),  # bool
            ((t % 100) + e / 4.0).astype(np.float16),
            ((7 * t + e) % 256).astype(np.uint8),
        ),
    }


def _example(num_envs: int = NUM_ENVS):
    return jax.tree.map(lambda x: x[0], _step_items(0, 1, num_envs))


def _fill(total: int, capacity: int = CAPACITY):
    """Writes steps 0..total-1 in chunks of 3 (then single steps)."""
    state = replay.init(_example(), capacity)
    t = 0
    while t < total:
        u = 3 if total - t >= 3 else 1
        state = _add(state, _step_items(t, u))
        t += u
    return state


def _check_fields_consistent(windows):
    """Every field of every sampled element equals the generator applied to its (counter, env)."""
    t, e = np.asarray(windows["counter"]), np.asarray(windows["env"])
    expected = _step_items(0, 1)  # only for dtypes
    ref = {
        "obs": (t[..., None] + 1000.0 * e[..., None] + np.array([0.0, 0.25, 0.5])).astype(np.float32),
        "done": (t % 3 == 0),
        "half": ((t % 100) + e / 4.0).astype(np.float16),
        "byte": ((7 * t + e) % 256).astype(np.uint8),
    }
    for got, name, exp_dtype in zip(windows["extras"], ("obs", "done", "half", "byte"), expected["extras"]):
        assert np.asarray(got).dtype == exp_dtype.dtype, name
        np.testing.assert_array_equal(np.asarray(got), ref[name], err_msg=name)


def test_wraparound_matches_deque_model():
    """After every add (chunks of 1, 3 or `capacity` steps, wrapping many times) the buffer holds exactly the last
    `capacity` steps per env in ring order, and write_index / size / can_sample are right."""
    capacity = CAPACITY
    rng = np.random.default_rng(0)
    state = replay.init(_example(), capacity)
    model = [collections.deque(maxlen=capacity) for _ in range(NUM_ENVS)]
    total = 0
    for _ in range(25):
        u = int(rng.choice([1, 3, capacity]))
        items = _step_items(total, u)
        state = _add(state, items)
        for s in range(u):
            for e in range(NUM_ENVS):
                model[e].append(jax.tree.map(lambda x: x[s, e], items))
        total += u

        assert int(state.write_index) == total % capacity
        assert int(state.size) == min(total, capacity)
        for length in (1, 3, capacity, capacity + 1):
            assert bool(replay.can_sample(state, length)) == (min(total, capacity) >= length)
        size = int(state.size)
        rows = (int(state.write_index) - size + np.arange(size)) % capacity  # oldest → newest
        for e in range(NUM_ENVS):
            stored = jax.tree.map(lambda buf: np.asarray(buf)[rows, e], state.data)
            expected = jax.tree.map(lambda *xs: np.stack(xs), *model[e])
            jax.tree.map(np.testing.assert_array_equal, stored, expected)
    assert total > 5 * capacity
    # Ring layout: step t lives in row t % capacity.
    counters = np.asarray(state.data["counter"])
    np.testing.assert_array_equal(counters % capacity, np.arange(capacity)[:, None] * np.ones((1, NUM_ENVS)))


@pytest.mark.parametrize("total", [4, 9, 10, 13, 27, 30])
def test_windows_are_contiguous_valid_and_single_env(total):
    """Sampled windows are L consecutive steps (+1 each) of one env, all within the last `capacity` steps,
    never straddling the write head, and every field is gathered from the same (step, env)."""
    capacity, length, batch = CAPACITY, 4, BATCH
    state = _fill(total)
    assert bool(replay.can_sample(state, length))
    windows = _sample(state, jax.random.key(total), batch, length)
    t, e = np.asarray(windows["counter"]), np.asarray(windows["env"])
    assert t.shape == (batch, length) and windows["extras"][0].shape == (batch, length, 3)
    np.testing.assert_array_equal(np.diff(t, axis=1), 1)
    assert np.all(e == e[:, :1]), "a window mixes envs"
    assert t.min() >= max(0, total - capacity) and t.max() <= total - 1
    _check_fields_consistent(windows)


def test_dtypes_preserved():
    """float32, int32, bool, float16 and uint8 fields keep their dtype and exact values in storage and samples."""
    state = _fill(13)
    example = _example()
    for buf, ex in zip(jax.tree.leaves(state.data), jax.tree.leaves(example)):
        assert buf.dtype == ex.dtype and buf.shape == (CAPACITY,) + ex.shape
    windows = _sample(state, jax.random.key(1), BATCH, 3)
    for got, ex in zip(jax.tree.leaves(windows), jax.tree.leaves(example)):
        assert got.dtype == ex.dtype and got.shape == (BATCH, 3) + ex.shape[1:]
    _check_fields_consistent(windows)
    assert state.write_index.dtype == jnp.int32 and state.size.dtype == jnp.int32


def _start_counts(state, total, length, draws, batch=BATCH):
    """Counts of sampled (env, start-step) pairs over `draws` windows, plus the set of valid pairs."""
    capacity = replay.capacity(state)
    size = min(total, capacity)
    valid_starts = np.arange(total - size, total - length + 1)
    counts = collections.Counter()
    for i in range(draws // batch):
        w = _sample(state, jax.random.key(1000 + i), batch, length)
        starts, envs = np.asarray(w["counter"])[:, 0], np.asarray(w["env"])[:, 0]
        counts.update(zip(envs.tolist(), starts.tolist()))
    valid = [(e, s) for e in range(NUM_ENVS) for s in valid_starts.tolist()]
    return counts, valid


@pytest.mark.parametrize(
    "total,length",
    [(23, 4), (30, 4), (6, 3), (10, 1), (5, 5)],
    ids=["full-wrapped", "full-head-at-0", "partial", "full-L1", "partial-L=size"],
)
def test_sampling_is_uniform_over_valid_env_start_pairs(total, length):
    """Chi-square over (env, start) pairs does not reject uniformity (p > 1e-3), every valid pair occurs,
    and no invalid start is ever drawn; full and partially filled buffers."""
    state = _fill(total)
    counts, valid = _start_counts(state, total, length, draws=16 * BATCH)
    invalid = set(counts) - set(valid)
    assert not invalid, f"invalid (env, start) pairs sampled: {sorted(invalid)[:5]}"
    observed = np.array([counts[p] for p in valid])
    assert observed.sum() == 16 * BATCH
    if len(valid) > 1:
        assert observed.min() > 0
        p_value = stats.chisquare(observed).pvalue
        assert p_value > 1e-3, (p_value, observed)


def test_add_more_than_capacity_raises():
    """Adding U > capacity steps at once raises ValueError; capacity < 1 is rejected at init."""
    state = replay.init(_example(), CAPACITY)
    with pytest.raises(ValueError):
        replay.add(state, _step_items(0, CAPACITY + 1))
    with pytest.raises(ValueError):
        _add(state, _step_items(0, CAPACITY + 1))
    state = _add(state, _step_items(0, CAPACITY))  # U == capacity is fine
    assert int(state.size) == CAPACITY and int(state.write_index) == 0
    with pytest.raises(ValueError):
        replay.init(_example(), 0)
