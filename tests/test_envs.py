"""Vectorised Brax envs: time limit vs termination, final observations, fresh resets, evaluation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from purempo import envs

NUM_ENVS = 8
EPISODE_LENGTH = 5
NUM_STEPS = 12
# Constant per-env actions: ±1 topple the pole on the 2nd step, 0.5 on the 3rd, ±0.2 on the 5th (the step that
# also hits the time limit: terminated, not truncated), 0.1 and 0 outlast the time limit (truncated).
MIXED_ACTIONS = np.array([1.0, -1.0, 0.5, -0.3, 0.2, -0.2, 0.1, 0.0], np.float32)[:, None]


@pytest.fixture(scope="module")
def env():
    return envs.make("inverted_pendulum")


@pytest.fixture(scope="module")
def step_and_raw(env):
    """One jitted function: `envs.step` and, independently, the raw vmapped `env.step` on the same input."""

    def f(state, action, key):
        next_state, result = envs.step(env, state, action, key, EPISODE_LENGTH)
        raw = jax.vmap(env.step)(state.sim_state, action)
        return next_state, result, raw

    return jax.jit(f)


def _reset_obs_bounds(env):
    """Brax's inverted_pendulum resets q ~ init_q + U(-0.01, 0.01), qd ~ U(-0.01, 0.01); obs = [q, qd]."""
    centre = np.concatenate([np.asarray(env.sys.init_q), np.zeros(env.sys.qd_size())])
    return centre, 0.01 + 1e-6


def _trajectory(env, step_and_raw, actions, seed):
    """Runs NUM_STEPS lockstep steps with constant `actions` [E, A]; returns per-step records (numpy)."""
    state = envs.reset(env, jax.random.PRNGKey(seed), NUM_ENVS)
    actions = jnp.asarray(actions)
    records = []
    for key in jax.random.split(jax.random.PRNGKey(seed + 1), NUM_STEPS):
        prev_obs = np.asarray(envs.observation(state))
        next_state, result, raw = step_and_raw(state, actions, key)
        records.append(
            dict(
                prev_obs=prev_obs,
                prev_step=np.asarray(state.episode_step),
                result=jax.tree.map(np.asarray, result),
                raw_obs=np.asarray(raw.obs),
                raw_done=np.asarray(raw.done),
                raw_reward=np.asarray(raw.reward),
                next_obs=np.asarray(envs.observation(next_state)),
                next_step=np.asarray(next_state.episode_step),
            )
        )
        state = next_state
    return records


@pytest.fixture(scope="module")
def zero_action_run(env, step_and_raw):
    return _trajectory(env, step_and_raw, np.zeros((NUM_ENVS, env.action_size), np.float32), seed=0)


@pytest.fixture(scope="module")
def mixed_action_run(env, step_and_raw):
    return _trajectory(env, step_and_raw, MIXED_ACTIONS, seed=10)


def _check_flags_and_counters(records):
    """Checks terminated/truncated/episode_step against a naive per-env step counter and the raw env."""
    count = np.zeros(NUM_ENVS, np.int64)
    for rec in records:
        res = rec["result"]
        count = count + 1
        np.testing.assert_array_equal(rec["prev_step"], count - 1)
        np.testing.assert_array_equal(res.terminated, rec["raw_done"] == 1.0)
        np.testing.assert_array_equal(res.truncated, (count == EPISODE_LENGTH) & ~res.terminated)
        assert not np.any(res.terminated & res.truncated)
        done = res.terminated | res.truncated
        count = np.where(done, 0, count)
        np.testing.assert_array_equal(rec["next_step"], count)


def test_truncation_at_time_limit_with_zero_actions(zero_action_run):
    """Zero actions: every episode is truncated exactly at its 5th step; episode_step resets to 0."""
    _check_flags_and_counters(zero_action_run)
    for t, rec in enumerate(zero_action_run):
        res = rec["result"]
        assert not res.terminated.any()  # the pole needs ~20 steps to fall without force
        np.testing.assert_array_equal(res.truncated, np.full(NUM_ENVS, (t + 1) % EPISODE_LENGTH == 0))
        np.testing.assert_array_equal(rec["next_step"], np.full(NUM_ENVS, (t + 1) % EPISODE_LENGTH))


def test_final_obs_is_raw_step_obs_and_next_obs_is_a_reset(env, zero_action_run, mixed_action_run):
    """final_obs equals the raw env.step obs; after a done the next observation is a fresh reset obs."""
    centre, radius = _reset_obs_bounds(env)
    dones = 0
    for rec in zero_action_run + mixed_action_run:
        res = rec["result"]
        np.testing.assert_array_equal(res.final_obs, rec["raw_obs"])
        np.testing.assert_array_equal(res.reward, rec["raw_reward"])
        done = res.terminated | res.truncated
        # Envs that did not finish carry on from the raw stepped state.
        np.testing.assert_array_equal(rec["next_obs"][~done], rec["raw_obs"][~done])
        for i in np.flatnonzero(done):
            dones += 1
            assert np.all(np.abs(rec["next_obs"][i] - centre) <= radius), rec["next_obs"][i]
            assert not np.allclose(rec["next_obs"][i], res.final_obs[i])
    assert dones >= 2 * NUM_ENVS


def test_termination_matches_raw_done_and_finished_return_is_episode_sum(mixed_action_run):
    """Large actions terminate before the time limit; finished_return is the naive sum of the episode's rewards."""
    _check_flags_and_counters(mixed_action_run)
    running = np.zeros(NUM_ENVS)
    early_terminations = 0
    terminations_at_limit = 0
    for rec in mixed_action_run:
        res = rec["result"]
        running = running + rec["raw_reward"]
        done = res.terminated | res.truncated
        np.testing.assert_allclose(res.finished_return, np.where(done, running, 0.0), rtol=1e-6)
        early_terminations += int(np.sum(res.terminated & (rec["prev_step"] + 1 < EPISODE_LENGTH)))
        terminations_at_limit += int(np.sum(res.terminated & (rec["prev_step"] + 1 == EPISODE_LENGTH)))
        running = np.where(done, 0.0, running)
    first = mixed_action_run[1]["result"]
    assert first.terminated[0] and first.terminated[1]  # actions ±1 topple the pole on the 2nd step
    assert early_terminations >= 4
    assert terminations_at_limit >= 1  # the terminated-wins-over-truncated case was exercised
    assert any(rec["result"].truncated.any() for rec in mixed_action_run)


def test_resets_use_fresh_keys(env, zero_action_run):
    """Every episode of every env starts from a different initial observation (unlike AutoResetWrapper)."""
    centre, radius = _reset_obs_bounds(env)
    starts = [zero_action_run[0]["prev_obs"][i] for i in range(NUM_ENVS)]
    for rec in zero_action_run:
        done = rec["result"].terminated | rec["result"].truncated
        starts.extend(rec["next_obs"][i] for i in np.flatnonzero(done))
    starts = np.stack(starts)
    assert len(starts) == NUM_ENVS * (1 + NUM_STEPS // EPISODE_LENGTH)
    assert np.all(np.abs(starts - centre) <= radius)
    distances = np.abs(starts[:, None, :] - starts[None, :, :]).max(-1)
    off_diagonal = distances[~np.eye(len(starts), dtype=bool)]
    assert off_diagonal.min() > 1e-7


@pytest.fixture(scope="module")
def raw_single(env):
    return jax.jit(env.reset), jax.jit(env.step)


def _naive_episodes(env, raw_single, key, num_episodes, episode_length, action):
    """Independent oracle: a Python loop over the raw env, one episode at a time, stopping at done.

    Returns (returns, lengths, final observations). `evaluate` splits its key into (start key, policy key) and
    draws the episodes' starts as `env.reset` of `split(start key, num_episodes)` (pool=None).
    """
    reset, step = raw_single
    start_key, _ = jax.random.split(key)
    returns, lengths, final_obs = [], [], []
    for episode_key in jax.random.split(start_key, num_episodes):
        state, total, length = reset(episode_key), 0.0, 0
        for _ in range(episode_length):
            state = step(state, jnp.full((env.action_size,), action))
            total += float(state.reward)
            length += 1
            if float(state.done) == 1.0:
                break
        returns.append(total)
        lengths.append(length)
        final_obs.append(np.asarray(state.obs))  # after the last step: terminal, or at the time limit
    return np.array(returns), np.array(lengths), np.stack(final_obs)


def _constant_policy(env, action):
    return lambda obs, key: jnp.full((obs.shape[0], env.action_size), action)  # noqa: E731


@pytest.fixture(scope="module")
def evaluate_constant(env):
    """Jitted `envs.evaluate` of a constant action (a traced argument: one compilation per shape)."""

    def run(key, action, num_episodes, episode_length):
        return envs.evaluate(env, _constant_policy(env, action), key, num_episodes, episode_length)

    return jax.jit(run, static_argnums=(2, 3))


def _check_against_naive(episodes, expected, num_episodes, obs_size):
    returns, lengths, final_obs = expected
    assert isinstance(episodes, envs.Episodes)
    assert episodes.returns.shape == (num_episodes,)
    assert episodes.lengths.shape == (num_episodes,) and episodes.lengths.dtype == jnp.int32
    assert episodes.final_obs.shape == (num_episodes, obs_size)
    np.testing.assert_allclose(np.asarray(episodes.returns), returns, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(episodes.lengths), lengths)
    np.testing.assert_allclose(np.asarray(episodes.final_obs), final_obs, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("episode_length", [15, 30])
def test_evaluate_matches_naive_single_env_loop(env, raw_single, evaluate_constant, episode_length):
    """evaluate's returns, lengths and final observations equal a Python loop over the raw env, one episode at
    a time, stopping at done. At 30 steps the lockstep episodes end at different steps, some by termination
    and some at the time limit: each keeps its own return, length and final observation."""
    action = 0.0  # the pole falls after ~20-30 steps: truncated at 15, mostly terminated before 30
    num_episodes = 6
    key = jax.random.PRNGKey(7)
    episodes = evaluate_constant(key, action, num_episodes, episode_length)

    expected = _naive_episodes(env, raw_single, key, num_episodes, episode_length, action)
    _check_against_naive(episodes, expected, num_episodes, env.observation_size)
    lengths = expected[1]
    if episode_length == 15:
        np.testing.assert_array_equal(np.asarray(episodes.returns), 15.0)
        np.testing.assert_array_equal(lengths, 15)
    else:
        assert np.any(lengths < 30) and np.any(lengths == 30)  # both endings inside one lockstep rollout
        assert len(set(lengths.tolist())) >= 3


def test_evaluate_gives_the_policy_a_fresh_key_every_step(env):
    """policy_fn(obs, key) gets a different key at every step: a key-driven policy acts differently at every
    step and in every episode, and the same evaluation key reproduces the episodes exactly."""
    episode_length, num_episodes = 6, 4
    seen = []

    def policy_fn(obs, key):
        jax.debug.callback(lambda k: seen.append(np.asarray(k)), jax.random.key_data(key)
                           if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key, ordered=True)
        return 0.05 * jax.random.uniform(key, (obs.shape[0], env.action_size), minval=-1.0, maxval=1.0)

    evaluate = jax.jit(lambda k: envs.evaluate(env, policy_fn, k, num_episodes, episode_length))
    key = jax.random.PRNGKey(11)
    first = evaluate(key)
    jax.effects_barrier()
    keys = np.stack(seen)
    assert keys.shape[0] == episode_length  # one call per lockstep step
    assert len({k.tobytes() for k in keys}) == episode_length
    again = evaluate(key)
    jax.tree.map(np.testing.assert_array_equal, first, again)
    other = evaluate(jax.random.PRNGKey(12))
    assert not np.array_equal(np.asarray(other.final_obs), np.asarray(first.final_obs))


def test_evaluate_ignores_nan_rewards_after_an_episode_has_ended(env, raw_single):
    """Steps taken after termination (lockstep) may blow up to NaN; returns, lengths and final observations
    must stay those of the finished episodes."""
    from brax.envs.base import Wrapper

    class NanAfterDone(Wrapper):
        def step(self, state, action):
            next_state = self.env.step(state, action)
            nan_if_done = jnp.where(state.done > 0.0, jnp.nan, 0.0)
            return next_state.replace(reward=next_state.reward + nan_if_done, obs=next_state.obs + nan_if_done)

    episode_length, num_episodes, action = 60, 2, 0.0  # the pole falls after ~20-30 steps with no force
    key = jax.random.PRNGKey(7)
    episodes = envs.evaluate(NanAfterDone(env), _constant_policy(env, action), key, num_episodes, episode_length)

    expected = _naive_episodes(env, raw_single, key, num_episodes, episode_length, action)
    assert max(expected[1]) < episode_length  # every episode did end before the horizon, so NaNs were produced
    _check_against_naive(episodes, expected, num_episodes, env.observation_size)
    assert np.all(np.isfinite(np.asarray(episodes.final_obs)))


class NanAtStep(envs._Wrapper):
    """`env` whose simulation state (the state's field `physics`: Brax's `pipeline_state`, Playground's `data`)
    turns NaN just before the `at`-th step of every episode, as an unstable simulation's would (Brax's `done`, a
    comparison with NaN, stays 0), or with `poison="reward"` whose reward at that step is inf. `never_done`:
    the env's own terminations are dropped, so that episodes end only at the poisoned step."""

    def __init__(self, env, at, physics="pipeline_state", poison="state", never_done=False):
        super().__init__(env)
        self.at, self.physics, self.poison, self.never_done = at, physics, poison, never_done

    def reset(self, key):
        state = self.env.reset(key)
        return state.replace(info={**state.info, "t": jnp.zeros((), jnp.int32)})

    def step(self, state, action):
        t = state.info["t"] + 1
        bad = t == self.at
        if self.poison == "state":
            nan = lambda x: jnp.where(bad, jnp.nan, x) if jnp.issubdtype(x.dtype, jnp.floating) else x  # noqa: E731
            state = state.replace(**{self.physics: jax.tree.map(nan, getattr(state, self.physics))})
        stepped = self.env.step(state, action)
        if self.poison == "reward":
            stepped = stepped.replace(reward=jnp.where(bad, jnp.inf, stepped.reward))
        if self.never_done:
            stepped = stepped.replace(done=jnp.zeros_like(stepped.done))
        return stepped.replace(info={**stepped.info, "t": t})


def check_non_finite_steps_end_episodes(env, poisoned, at, num_steps, episode_length=50, pool_size=0):
    """Steps `poisoned` (a `NanAtStep` of `env`, every step of whose episodes before `at` is finite and not done)
    with zero actions through `envs.step`, comparing each step with the raw step of the same state: the poisoned
    step is terminated (not truncated) with reward 0, a zero final observation and a finite fresh start."""
    # One program for both, as rounding may differ between separately compiled ones.
    step = jax.jit(lambda s, a, k: (envs.step(poisoned, s, a, k, episode_length),
                                    jax.vmap(poisoned.step)(s.sim_state, a)))
    state = envs.reset(poisoned, jax.random.PRNGKey(4), NUM_ENVS, pool_size)
    action = jnp.zeros((NUM_ENVS, env.action_size))
    results = []
    for t, key in enumerate(jax.random.split(jax.random.PRNGKey(5), num_steps), start=1):
        (state, result), raw = jax.device_get(step(state, action, key))
        results.append(result)
        bad = t % at == 0
        np.testing.assert_array_equal(result.terminated, bad)
        assert not result.truncated.any()
        assert np.all(np.isfinite(result.final_obs)) and np.all(np.isfinite(result.reward))
        assert np.all(np.isfinite(envs.observation(state)))
        if bad:
            assert not (np.all(np.isfinite(raw.obs)) and np.all(np.isfinite(raw.reward)))  # the raw step was not
            np.testing.assert_array_equal(result.reward, 0.0)
            np.testing.assert_array_equal(result.final_obs, 0.0)
            np.testing.assert_array_equal(state.episode_step, 0)  # restarted
        else:
            np.testing.assert_array_equal(result.final_obs, raw.obs)
            np.testing.assert_array_equal(result.reward, raw.reward)
    for t, result in enumerate(results, start=1):
        np.testing.assert_array_equal(result.nonfinite, t % at == 0)
    return result


@pytest.mark.parametrize("poison", ["state", "reward"])
def test_a_non_finite_step_ends_the_episode_with_reward_zero_and_a_finite_observation(env, poison):
    """A NaN simulation state passes Brax's `done` check; a step whose observation or reward is not finite
    terminates all the same, with reward 0 and observation 0, and the env restarts from a fresh reset."""
    result = check_non_finite_steps_end_episodes(env, NanAtStep(env, at=3, poison=poison), at=3, num_steps=6)
    np.testing.assert_array_equal(result.finished_return, 2.0)  # inverted_pendulum: 1 per step, then the 0


def test_evaluation_ends_an_episode_at_a_non_finite_step(env):
    """Evaluation episodes end at a non-finite step too: its reward counts 0 and its observation is 0."""
    poisoned = NanAtStep(env, at=4)
    episodes = envs.evaluate(poisoned, _constant_policy(env, 0.0), jax.random.PRNGKey(6), 3, 20)
    np.testing.assert_array_equal(episodes.lengths, 4)
    np.testing.assert_array_equal(episodes.returns, 3.0)
    np.testing.assert_array_equal(episodes.final_obs, 0.0)


def test_make_unknown_env_suggests_valid_names():
    """An unknown name raises ValueError naming the closest valid environments and `purempo envs`."""
    with pytest.raises(ValueError) as info:
        envs.make("inverted_pendullum")
    message = str(info.value)
    assert "'inverted_pendullum'" in message and "did you mean inverted_pendulum" in message
    assert "purempo envs" in message
    assert set(envs.available()) >= {"inverted_pendulum", "ant"}
    names = {name for _, listed, _ in envs.catalogue() for name in listed}
    assert names == set(envs.available()) - envs.TEST_ENVS  # `purempo envs` lists every env but Brax's test env


def test_restarts_and_evaluation_starts_are_uniform_draws_from_the_reset_pool(env, step_and_raw):
    """With a pool, finished envs restart from pool states (which are distinct env.reset draws), different
    envs and episodes get different ones, and evaluation starts from pool states too."""
    pool_size = 32
    state = envs.reset(env, jax.random.PRNGKey(5), NUM_ENVS, pool_size)
    pool_obs = np.asarray(state.reset_pool.obs)
    assert pool_obs.shape == (pool_size, env.observation_size)
    assert len(np.unique(pool_obs, axis=0)) == pool_size
    centre, radius = _reset_obs_bounds(env)
    assert np.all(np.abs(pool_obs - centre) <= radius)
    restarts = []
    actions = jnp.zeros((NUM_ENVS, env.action_size))
    for key in jax.random.split(jax.random.PRNGKey(6), 3 * EPISODE_LENGTH):
        state, result, _ = step_and_raw(state, actions, key)
        done = np.asarray(result.terminated | result.truncated)
        restarts.extend(np.asarray(envs.observation(state))[done])
    restarts = np.stack(restarts)
    assert len(restarts) == 3 * NUM_ENVS
    matches = (np.abs(restarts[:, None, :] - pool_obs[None]).max(-1) == 0)
    assert np.all(matches.sum(1) == 1)  # every restart is exactly one pool state
    assert len(set(matches.argmax(1).tolist())) > len(restarts) // 2  # ... and they are spread over the pool

    key = jax.random.PRNGKey(8)
    starts = envs.initial_states(env, key, 4, state.reset_pool)
    assert np.all((np.abs(np.asarray(starts.obs)[:, None, :] - pool_obs[None]).max(-1) == 0).sum(1) == 1)
    # One zero-action evaluation step from each pool state: every evaluation episode's final observation and
    # return are those of exactly one pool state stepped once.
    zero_policy = lambda obs, key: jnp.zeros((obs.shape[0], env.action_size))  # noqa: E731
    episodes = jax.jit(lambda k, pool: envs.evaluate(env, zero_policy, k, 4, 1, pool=pool))(key, state.reset_pool)
    from_pool = jax.jit(jax.vmap(env.step))(state.reset_pool, jnp.zeros((pool_size, env.action_size)))
    same = np.abs(np.asarray(episodes.final_obs)[:, None, :] - np.asarray(from_pool.obs)[None]).max(-1) == 0
    assert np.all(same.sum(1) == 1)
    np.testing.assert_array_equal(np.asarray(episodes.returns), np.asarray(from_pool.reward)[same.argmax(1)])
    np.testing.assert_array_equal(np.asarray(episodes.lengths), 1)
