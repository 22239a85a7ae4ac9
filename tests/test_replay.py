"""Tests for purempo.replay against a naive reference buffer that stores every field (next_obs included) in
full, fed the same stream of transitions with terminations and time-limit truncations, plus chi-square
uniformity tests, the side ring's slot invariant, reduced-precision storage, sizes, env axes and env slices."""

from __future__ import annotations

import collections
import math

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from scipy import stats

from purempo import replay
from purempo.types import Transition

NUM_ENVS = 4
OBS_DIM = 3
ACTION_DIM = 2
CAPACITY = 12
EPISODE_LENGTH = 5
LENGTH = 4
BATCH = 1024
# Shapes are kept to a few (U ∈ {1, 2, 5, CAPACITY}, one batch size) so that the jitted add/sample compile
# only a handful of times.

_add = jax.jit(replay.add)
_sample = jax.jit(replay.sample, static_argnums=(2, 3))
FIELDS = ("obs", "action", "reward", "terminated", "truncated", "next_obs", "behaviour_log_prob")


class Stream:
    """Transitions of `num_envs` envs stepped like `envs.step`: random observations, actions and rewards;
    terminations with probability `p_terminate`; a truncation when an episode reaches `episode_length` steps
    (and did not terminate), envs out of phase; after an episode end `next_obs` is the true final observation
    and the next row starts from a fresh (reset) observation. `behaviour_log_prob` is −(t · E + e), an id of
    the (step, env) that the tests decode."""

    def __init__(self, num_envs, episode_length, seed, p_terminate=0.05):
        self.rng = np.random.default_rng(seed)
        self.num_envs, self.episode_length, self.p_terminate = num_envs, episode_length, p_terminate
        self.t = 0
        self.episode_step = (np.arange(num_envs) * 2 + 1) % episode_length  # out of phase
        self.truncations = np.zeros(num_envs, np.int64)  # so far, per env
        self.obs = self.rng.normal(size=(num_envs, OBS_DIM)).astype(np.float32)

    def next(self, num_steps) -> Transition:
        rows = []
        for _ in range(num_steps):
            next_obs = self.rng.normal(size=(self.num_envs, OBS_DIM)).astype(np.float32)
            terminated = self.rng.random(self.num_envs) < self.p_terminate
            self.episode_step = self.episode_step + 1
            truncated = (self.episode_step >= self.episode_length) & ~terminated
            done = terminated | truncated
            self.truncations += truncated
            rows.append(Transition(
                obs=self.obs,
                action=self.rng.normal(size=(self.num_envs, ACTION_DIM)).astype(np.float32),
                reward=self.rng.normal(size=(self.num_envs,)).astype(np.float32),
                terminated=terminated,
                truncated=truncated,
                next_obs=next_obs,
                behaviour_log_prob=-(self.t * self.num_envs + np.arange(self.num_envs)).astype(np.float32),
            ))
            reset = self.rng.normal(size=(self.num_envs, OBS_DIM)).astype(np.float32)
            self.obs = np.where(done[:, None], reset, next_obs)
            self.episode_step = np.where(done, 0, self.episode_step)
            self.t += 1
        return Transition(*(np.stack(xs) for xs in zip(*rows)))


class NaiveReplay:
    """The reference: every field of step t of env e in row t % capacity, written one (step, env) at a time."""

    def __init__(self, capacity, num_envs):
        self.capacity, self.total = capacity, 0
        self.fields = None
        self.num_envs = num_envs

    def add(self, chunk: Transition):
        if self.fields is None:
            self.fields = {name: np.zeros((self.capacity,) + x.shape[1:], x.dtype)
                           for name, x in zip(FIELDS, chunk)}
        for s in range(chunk.obs.shape[0]):
            for e in range(self.num_envs):
                for name, x in zip(FIELDS, chunk):
                    self.fields[name][self.total % self.capacity, e] = x[s, e]
            self.total += 1

    def lookup(self, t, e):
        """Fields of steps t of envs e (arrays of the same shape); every step must still be held."""
        assert np.all(t >= self.total - self.capacity) and np.all(t < self.total)
        return {name: buf[t % self.capacity, e] for name, buf in self.fields.items()}


def _example(num_envs=NUM_ENVS):
    return Transition(obs=jnp.zeros((num_envs, OBS_DIM)), action=jnp.zeros((num_envs, ACTION_DIM)),
                      reward=jnp.zeros((num_envs,)), terminated=jnp.zeros((num_envs,), bool),
                      truncated=jnp.zeros((num_envs,), bool), next_obs=jnp.zeros((num_envs, OBS_DIM)),
                      behaviour_log_prob=jnp.zeros((num_envs,)))


def _decode(batch, num_envs=NUM_ENVS):
    ids = -np.asarray(batch.behaviour_log_prob).astype(np.int64)
    return ids // num_envs, ids % num_envs  # (step, env) of every sampled element


def _bf16(x):
    return np.asarray(x, np.float32).astype(ml_dtypes.bfloat16).astype(np.float32)


def _check_windows(batch, ref, length, num_envs=NUM_ENVS, round_obs=lambda x: x):
    """Windows are `length` consecutive steps of one env, whose L + 1 rows are all held and before the write
    head, and every field equals the reference's at the same (step, env): next_obs the true final observation
    at truncated rows, the following obs at ordinary ones, the row's own obs at terminated ones. Returns the
    numbers of truncated and of ordinary rows checked."""
    t, e = _decode(batch, num_envs)
    assert t.shape == (batch.obs.shape[0], length)
    assert batch.obs.shape[1:] == batch.next_obs.shape[1:] == (length, OBS_DIM)
    assert batch.obs.dtype == batch.next_obs.dtype == jnp.float32
    np.testing.assert_array_equal(np.diff(t, axis=1), 1)
    assert np.all(e == e[:, :1]), "a window mixes envs"
    size = min(ref.total, ref.capacity)
    assert t.min() >= ref.total - size
    assert t.max() + 1 <= ref.total - 1, "the row after a window is at or past the write head"
    want = ref.lookup(t, e)
    for name in ("action", "reward", "terminated", "truncated", "behaviour_log_prob"):
        got = np.asarray(getattr(batch, name))
        assert got.dtype == want[name].dtype, name
        np.testing.assert_array_equal(got, want[name], err_msg=name)
    np.testing.assert_array_equal(np.asarray(batch.obs), round_obs(want["obs"]))
    terminated, truncated = want["terminated"], want["truncated"]
    next_obs = np.asarray(batch.next_obs)
    np.testing.assert_array_equal(next_obs[~terminated], round_obs(want["next_obs"])[~terminated])
    np.testing.assert_array_equal(next_obs[terminated], np.asarray(batch.obs)[terminated])
    return int(truncated.sum()), int((~terminated & ~truncated).sum())


@pytest.mark.parametrize("obs_dtype", ["float32", "bfloat16"])
def test_samples_match_the_naive_reference_through_many_wraparounds(obs_dtype):
    """Fed the same stream (chunks of 1, 2, 5 or `capacity` steps, wrapping ~20 times), every sampled field
    equals the naive full buffer's, truncated rows included; write_index / size / can_sample are right.
    bfloat16 storage gives the float32 observations rounded to bfloat16, returned as float32."""
    dtype = jnp.dtype(obs_dtype)
    round_obs = _bf16 if dtype == jnp.bfloat16 else (lambda x: x)
    rng = np.random.default_rng(1)
    stream, ref = Stream(NUM_ENVS, EPISODE_LENGTH, seed=0), NaiveReplay(CAPACITY, NUM_ENVS)
    state = replay.init(_example(), CAPACITY, EPISODE_LENGTH, dtype)
    assert state.data.obs.dtype == state.final_obs.dtype == dtype
    truncated_rows = ordinary_rows = 0
    for i in range(70):
        u = int(rng.choice([1, 2, 5, CAPACITY]))
        chunk = stream.next(u)
        state = _add(state, jax.tree.map(jnp.asarray, chunk))
        ref.add(chunk)
        assert int(state.write_index) == ref.total % CAPACITY and int(state.size) == min(ref.total, CAPACITY)
        for length in (1, LENGTH, CAPACITY - 1, CAPACITY):
            assert bool(replay.can_sample(state, length)) == (min(ref.total, CAPACITY) >= length + 1)
        if replay.can_sample(state, LENGTH):
            batch = _sample(state, jax.random.key(i), BATCH, LENGTH)
            n_truncated, n_ordinary = _check_windows(batch, ref, LENGTH, round_obs=round_obs)
            truncated_rows, ordinary_rows = truncated_rows + n_truncated, ordinary_rows + n_ordinary
        # Stored observations, in ring order, are the stream's (rounded to the storage dtype).
        rows = np.arange(CAPACITY) if ref.total >= CAPACITY else np.arange(ref.total)
        np.testing.assert_array_equal(np.asarray(state.data.obs[rows].astype(jnp.float32)),
                                      round_obs(ref.fields["obs"][rows]))
    assert ref.total > 20 * CAPACITY
    assert truncated_rows > 1000 and ordinary_rows > 1000
    assert ref.fields["terminated"].any()


@pytest.mark.parametrize("capacity,episode_length", [(10, 3), (12, 12), (7, 20), (6, 1)],
                         ids=["K=5", "ep=capacity", "ep>capacity", "ep=1"])
def test_no_live_row_shares_or_loses_its_final_observation_slot(capacity, episode_length):
    """With truncations exactly every episode_length steps (no terminations, the densest case), after every
    add each env's truncated rows still in the buffer point at distinct slots of the K = capacity //
    episode_length + 2 slot side ring, and each slot holds that row's true final observation."""
    num_slots = capacity // episode_length + 2
    stream, ref = Stream(NUM_ENVS, episode_length, seed=2, p_terminate=0.0), NaiveReplay(capacity, NUM_ENVS)
    state = replay.init(_example(), capacity, episode_length)
    assert state.final_obs.shape == (num_slots, NUM_ENVS, OBS_DIM)
    assert state.data.final_slot.dtype == jnp.int8 and state.final_count.shape == (NUM_ENVS,)
    rng = np.random.default_rng(3)
    for _ in range(40):
        chunk = stream.next(int(rng.choice([1, 2, 5])))
        state, _ = _add(state, jax.tree.map(jnp.asarray, chunk)), ref.add(chunk)
        size = min(ref.total, capacity)
        rows = np.arange(ref.total - size, ref.total) % capacity
        slots, final_obs = np.asarray(state.data.final_slot), np.asarray(state.final_obs)
        for e in range(NUM_ENVS):
            live = rows[ref.fields["truncated"][rows, e]]
            assert len(set(slots[live, e].tolist())) == len(live)
            np.testing.assert_array_equal(final_obs[slots[live, e], e], ref.fields["next_obs"][live, e])
    # Truncations exactly every episode_length steps of each env, out of phase.
    np.testing.assert_array_equal(stream.truncations, (ref.total + (np.arange(NUM_ENVS) * 2 + 1) % episode_length)
                                  // episode_length)
    if episode_length > 1:
        assert len({tuple(np.flatnonzero(ref.fields["truncated"][:, e])) for e in range(NUM_ENVS)}) > 1


def _start_counts(state, total, capacity, length, draws):
    """Counts of sampled (env, start-step) pairs over `draws` windows, plus the list of valid pairs."""
    size = min(total, capacity)
    valid_starts = np.arange(total - size, total - length)  # the window and the row after it are written
    counts = collections.Counter()
    for i in range(draws // BATCH):
        t, e = _decode(_sample(state, jax.random.key(1000 + i), BATCH, length))
        counts.update(zip(e[:, 0].tolist(), t[:, 0].tolist()))
    return counts, [(e, s) for e in range(NUM_ENVS) for s in valid_starts.tolist()]


@pytest.mark.parametrize(
    "total,length",
    [(23, 4), (24, 4), (7, 3), (12, 1), (6, 5), (12, 11)],
    ids=["full-wrapped", "full-head-at-0", "partial", "full-L1", "partial-L=size-1", "full-L=capacity-1"],
)
def test_sampling_is_uniform_over_valid_env_start_pairs(total, length):
    """Chi-square over (env, start) pairs does not reject uniformity (p > 1e-3), every valid pair occurs,
    and no invalid start (one whose L + 1 rows are not all written) is ever drawn."""
    stream = Stream(NUM_ENVS, EPISODE_LENGTH, seed=4)
    state = replay.init(_example(), CAPACITY, EPISODE_LENGTH)
    for _ in range(total):
        state = _add(state, jax.tree.map(jnp.asarray, stream.next(1)))
    draws = 16 * BATCH
    counts, valid = _start_counts(state, total, CAPACITY, length, draws)
    invalid = set(counts) - set(valid)
    assert not invalid, f"invalid (env, start) pairs sampled: {sorted(invalid)[:5]}"
    observed = np.array([counts[p] for p in valid])
    assert observed.sum() == draws
    assert observed.min() > 0
    p_value = stats.chisquare(observed).pvalue
    assert p_value > 1e-3, (p_value, observed)


def _slice_envs(state, start, stop):
    axes = replay.env_axes(state)
    return jax.tree.map(lambda axis, x: x if axis is None else jax.lax.slice_in_dim(x, start, stop, axis=axis),
                        axes, state, is_leaf=lambda a: a is None)


def test_env_axes_name_each_leafs_env_axis():
    """env_axes has the state's structure: 1 for the ring and the side ring, 0 for the per-env counters, None
    for the shared write index and size; every indexed axis has num_envs entries."""
    state = replay.init(_example(), CAPACITY, EPISODE_LENGTH)
    axes = replay.env_axes(state)
    assert jax.tree.structure(axes, is_leaf=lambda a: a is None) == jax.tree.structure(
        jax.tree.map(lambda _: 0, state))
    assert axes.write_index is None and axes.size is None and axes.final_count == 0 and axes.final_obs == 1
    assert all(axis == 1 for axis in axes.data)
    leaves = jax.tree.leaves(state)
    axis_leaves = jax.tree.leaves(axes, is_leaf=lambda a: a is None)
    assert len(axis_leaves) == len(leaves) == 11  # 7 ring fields, side ring, counters, 2 scalars
    for axis, leaf in zip(axis_leaves, leaves):
        if axis is None:
            assert leaf.shape == ()
        else:
            assert leaf.shape[axis] == NUM_ENVS


def test_a_slice_of_the_envs_is_a_replay_of_those_envs():
    """Every function works on the state sliced to envs [2:4] (as a device of a sharded run holds it): its
    samples come from those envs only, both of them, and match the reference; adding to the slice keeps
    matching it."""
    num_envs = 6
    stream, ref = Stream(num_envs, EPISODE_LENGTH, seed=5), NaiveReplay(CAPACITY, num_envs)
    state = replay.init(_example(num_envs), CAPACITY, EPISODE_LENGTH)
    for _ in range(6):
        chunk = stream.next(5)
        state, _ = replay.add(state, jax.tree.map(jnp.asarray, chunk)), ref.add(chunk)
    part = _slice_envs(state, 2, 4)
    assert part.data.obs.shape[1] == part.final_obs.shape[1] == part.final_count.shape[0] == 2
    for i in range(3):
        if i:  # adding to the slice only
            chunk = stream.next(5)
            part, _ = replay.add(part, jax.tree.map(lambda x: jnp.asarray(x[:, 2:4]), chunk)), ref.add(chunk)
        batch = replay.sample(part, jax.random.key(i), BATCH, LENGTH)
        t, e = _decode(batch, num_envs)
        assert set(np.unique(e).tolist()) == {2, 3}
        _check_windows(batch, ref, LENGTH, num_envs)


def test_nbytes_per_transition_is_the_hand_count_and_about_half_the_two_obs_layout():
    """Bytes of the state (ring, side ring, counters, scalars) per (row, env), by hand; also from a
    `jax.eval_shape`. For a large observation the float32 layout is < 0.55× the old one that stored obs and
    next_obs in every row, and bfloat16 saves half the observation bytes again."""
    capacity, episode_length, num_envs = 4096, 1000, 8
    for obs_dim, action_dim in ((17, 6), (244, 17)):
        example = Transition(obs=jnp.zeros((num_envs, obs_dim)), action=jnp.zeros((num_envs, action_dim)),
                             reward=jnp.zeros((num_envs,)), terminated=jnp.zeros((num_envs,), bool),
                             truncated=jnp.zeros((num_envs,), bool), next_obs=jnp.zeros((num_envs, obs_dim)),
                             behaviour_log_prob=jnp.zeros((num_envs,)))
        num_slots = capacity // episode_length + 2  # 6
        scalars = 4 + 4  # write_index, size
        for dtype, obs_bytes in ((jnp.float32, 4), (jnp.bfloat16, 2)):
            abstract = jax.eval_shape(lambda: replay.init(example, capacity, episode_length, dtype))  # noqa: B023
            # obs, action, reward, terminated, truncated, behaviour_log_prob, final_slot (int8)
            row = obs_dim * obs_bytes + 4 * action_dim + 4 + 1 + 1 + 4 + 1
            total = capacity * num_envs * row + num_slots * num_envs * obs_dim * obs_bytes + 4 * num_envs + scalars
            assert replay.nbytes_per_transition(abstract) == pytest.approx(total / (capacity * num_envs), rel=1e-12)
            assert isinstance(replay.nbytes_per_transition(abstract), float)
        state = replay.init(example, capacity, episode_length)
        new = replay.nbytes_per_transition(state)
        old = 2 * 4 * obs_dim + 4 * action_dim + 4 + 1 + 1 + 4 + scalars / (capacity * num_envs)
        if obs_dim == 244:
            assert new < 0.55 * old, (new, old)
        assert math.isclose(new, replay.nbytes_per_transition(jax.eval_shape(lambda: state)))


def test_add_more_than_capacity_raises():
    """Adding U > capacity steps at once raises ValueError (U == capacity is fine); capacity < 1 and
    episode_length < 1 are rejected at init."""
    stream = Stream(NUM_ENVS, EPISODE_LENGTH, seed=6)
    state = replay.init(_example(), CAPACITY, EPISODE_LENGTH)
    too_many = jax.tree.map(jnp.asarray, stream.next(CAPACITY + 1))
    with pytest.raises(ValueError):
        replay.add(state, too_many)
    with pytest.raises(ValueError):
        _add(state, too_many)
    state = _add(state, jax.tree.map(jnp.asarray, stream.next(CAPACITY)))
    assert int(state.size) == CAPACITY and int(state.write_index) == 0
    with pytest.raises(ValueError):
        replay.init(_example(), 0, EPISODE_LENGTH)
    with pytest.raises(ValueError):
        replay.init(_example(), CAPACITY, 0)
