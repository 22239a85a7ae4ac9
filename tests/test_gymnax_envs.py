"""gymnax envs through `GymnaxEnv`: the same transitions as gymnax's own `step_env`, our time limit and auto-reset
(terminal observations kept, truncation apart from termination), fresh per-copy randomness, names and lengths."""

import collections

import gymnax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from purempo import envs

CARTPOLE_X_LIMIT, CARTPOLE_THETA_LIMIT = 2.4, 12 * 2 * np.pi / 360  # gymnax's (and Gym's) termination bounds


@pytest.fixture(scope="module")
def cartpole():
    return envs.make("CartPole-v1")


@pytest.mark.parametrize("name", ["CartPole-v1", "Breakout-MinAtar", "Asterix-MinAtar"])  # Asterix's step is random
def test_steps_are_gymnax_step_env_with_the_same_keys(name):
    """From a reset, a fixed action sequence gives exactly the (obs, reward, done) of gymnax's `reset_env` and
    `step_env` called directly with gymnax's default params, keys split as `GymnaxEnv` documents."""
    env = envs.make(name)
    assert isinstance(env, envs.GymnaxEnv) and env.discrete and env.name == name
    num_steps = 40
    actions = jnp.asarray([(3 * t + t // 4) % env.num_actions for t in range(num_steps)], jnp.int32)
    if name == "CartPole-v1":
        actions = actions.at[10:].set(1)  # keep pushing right: the pole falls within the 40 steps

    def ours(key):
        def body(state, action):
            state = env.step(state, action)
            return state, (state.obs, state.reward, state.done)

        first = env.reset(key)
        return first.obs, jax.lax.scan(body, first, actions)[1]

    gym, params = gymnax.make(name)

    def reference(key):
        reset_key, rng = jax.random.split(key)
        obs, state = gym.reset_env(reset_key, params)

        def body(carry, action):
            state, rng = carry
            step_key, rng = jax.random.split(rng)
            obs, state, reward, done, _ = gym.step_env(step_key, state, action, params)
            return (state, rng), (jnp.ravel(obs).astype(jnp.float32), reward, done)

        return jnp.ravel(obs).astype(jnp.float32), jax.lax.scan(body, (state, rng), actions)[1]

    ours, reference = jax.jit(ours), jax.jit(reference)
    for seed in (0, 1):
        obs0, (obs, reward, done) = ours(jax.random.PRNGKey(seed))
        ref_obs0, (ref_obs, ref_reward, ref_done) = reference(jax.random.PRNGKey(seed))
        np.testing.assert_array_equal(obs0, ref_obs0)
        np.testing.assert_array_equal(obs, ref_obs)
        np.testing.assert_array_equal(reward, np.asarray(ref_reward, np.float32))
        np.testing.assert_array_equal(done, np.asarray(ref_done, np.float32))
        assert obs.dtype == jnp.float32 and obs.shape == (num_steps, int(np.prod(env.observation_shape)))
    if name == "CartPole-v1":
        assert 0 < done.sum() < num_steps  # the comparison covers a termination


@pytest.mark.parametrize("name", envs.gymnax_names())
def test_every_listed_env_builds_resets_and_steps_under_jit_and_vmap(name):
    env = envs.make(name)
    state = envs.reset(env, jax.random.PRNGKey(0), 2, pool_size=2)
    size = int(np.prod(env.observation_shape))
    assert envs.num_actions(env) == env.num_actions == env.action_size == gymnax.make(name)[0].num_actions
    assert envs.observation_size(env) == size and envs.observation_shape(env) == env.observation_shape
    state, result = jax.jit(lambda s, k: envs.step(env, s, jnp.array([0, env.num_actions - 1]), k, 1000))(
        state, jax.random.PRNGKey(1))
    assert result.final_obs.shape == (2, size) and result.final_obs.dtype == jnp.float32
    assert result.reward.dtype == jnp.float32 and not result.nonfinite.any()


def test_a_terminated_episode_keeps_its_true_final_observation(cartpole):
    """Always pushing left topples every pole: each episode terminates (not truncated) with the terminal observation
    (|x| > 2.4 or |θ| > 12°) as `final_obs`, and the next observation is a fresh start from the pool. gymnax's own
    `step` would have returned the fresh start only."""
    num_envs = 16
    step = jax.jit(lambda s, k: envs.step(cartpole, s, jnp.zeros((num_envs,), jnp.int32), k, 500))
    state = envs.reset(cartpole, jax.random.PRNGKey(0), num_envs, pool_size=32)
    ended = np.zeros(num_envs, bool)
    for key in jax.random.split(jax.random.PRNGKey(1), 60):
        state, result = step(state, key)
        done = np.asarray(result.terminated | result.truncated)
        if done.any():
            assert np.asarray(result.terminated)[done].all() and not np.asarray(result.truncated).any()
            final = np.asarray(result.final_obs)[done]
            assert ((np.abs(final[:, 0]) > CARTPOLE_X_LIMIT) | (np.abs(final[:, 2]) > CARTPOLE_THETA_LIMIT)).all()
            assert (np.abs(np.asarray(envs.observation(state))[done]) <= 0.05).all()
            assert (np.asarray(state.episode_step)[done] == 0).all()
        ended |= done
    assert ended.all()


def test_the_time_limit_truncates_with_the_rolled_out_final_observation(cartpole):
    """`episode_length=5` with alternating pushes: steps 1-4 go on, step 5 is truncated (not terminated) and its
    `final_obs` is what five `step_env` calls of gymnax itself give; the env then starts afresh."""
    num_envs = 4
    state = envs.reset(cartpole, jax.random.PRNGKey(3), num_envs)
    gym, params = gymnax.make("CartPole-v1")
    manual = state.sim_state.env_state
    step = jax.jit(lambda s, a, k: envs.step(cartpole, s, a, k, 5))
    for t, key in enumerate(jax.random.split(jax.random.PRNGKey(4), 5)):
        action = jnp.full((num_envs,), t % 2, jnp.int32)
        state, result = step(state, action, key)
        obs, manual, _, _, _ = jax.vmap(gym.step_env, in_axes=(0, 0, 0, None))(
            jax.random.split(key, num_envs), manual, action, params)
        assert not np.asarray(result.terminated).any()
        assert (np.asarray(result.truncated) == (t == 4)).all()
    np.testing.assert_allclose(result.final_obs, obs, rtol=1e-6, atol=1e-7)
    assert (np.asarray(state.episode_step) == 0).all() and (np.abs(np.asarray(envs.observation(state))) <= 0.05).all()


def test_copies_of_one_pool_state_get_their_own_randomness():
    """Asterix spawns enemies from each step's key: two envs copied from the same pool state diverge under the same
    actions (each copy gets a fresh `info["rng"]`), while the same key replays the same trajectory exactly."""
    env = envs.make("Asterix-MinAtar")
    pool = envs.reset(env, jax.random.PRNGKey(0), 1, pool_size=1).reset_pool

    @jax.jit
    def rollout(key):
        start = envs.initial_states(env, key, 2, pool)

        def body(state, action):
            state = jax.vmap(env.step)(state, jnp.full((2,), action, jnp.int32))
            return state, state.obs

        return start.obs, jax.lax.scan(body, start, jnp.arange(60) % env.num_actions)[1]

    start, obs = rollout(jax.random.PRNGKey(1))
    np.testing.assert_array_equal(start[0], start[1])  # the same pool state
    assert not np.array_equal(obs[:, 0], obs[:, 1])
    again_start, again = rollout(jax.random.PRNGKey(1))
    np.testing.assert_array_equal(again_start, start)
    np.testing.assert_array_equal(again, obs)


def test_episode_lengths_are_gymnax_defaults():
    for name, steps in (("CartPole-v1", 500), ("Breakout-MinAtar", 1000), ("Freeway-MinAtar", 2500),
                        ("MountainCar-v0", 200)):
        assert envs.episode_length(name) == steps == gymnax.make(name)[1].max_steps_in_episode
    env = envs.make("CartPole-v1")
    assert env.params.max_steps_in_episode >= 2**30  # gymnax's own limit never fires: the limit is ours


def test_names_families_and_errors():
    for name in envs.gymnax_names():
        assert envs.family(name) == envs.GYMNAX and name in envs.available()
    assert envs.resolve_name("breakout_minatar") == "Breakout-MinAtar"
    assert envs.resolve_name("cartpole-v1") == envs.resolve_name("CARTPOLE_V1") == "CartPole-v1"
    folded = collections.Counter(envs._folded(name) for name in envs.available())
    assert [name for name, count in folded.items() if count > 1] == []  # every name resolves to one env
    message = envs.unknown_env_message("Foo")
    assert "\n" not in message and all(part in message for part in ("Brax", "MuJoCo Playground", "gymnax"))
    assert "did you mean Breakout-MinAtar" in envs.unknown_env_message("breakout")
    rows = {family: names for family, names, _ in envs.catalogue()}
    assert rows["gymnax, classic control and MinAtar (discrete actions)"] == envs.gymnax_names()
    for kwargs in ({"backend": "generalized"}, {"impl": "jax"}):
        with pytest.raises(ValueError, match="gymnax envs take neither") as error:
            envs.make("CartPole-v1", **kwargs)
        assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="is a gymnax env"):
        envs.playground_env("CartPole-v1", "jax")


def test_action_and_observation_shapes_through_wrappers():
    breakout = envs.make("Breakout-MinAtar")
    assert envs.num_actions(envs._Wrapper(breakout)) == 3
    assert envs.observation_shape(envs._Wrapper(breakout)) == (10, 10, 4)
    assert envs.observation_shape(envs.make("CartPole-v1")) == (4,)

    class Continuous:  # the shape of a Brax env's interface
        action_size = 2

        def reset(self, key):
            return collections.namedtuple("State", "obs")(jnp.zeros(7))

    assert envs.num_actions(Continuous()) is None and envs.observation_shape(Continuous()) == (7,)


def test_evaluate_balances_with_a_pd_rule_and_falls_with_a_constant_push(cartpole):
    """Pushing towards θ + θ̇/2 balances CartPole to the 500-step limit; a constant push ends in under 100 steps.
    Reward is 1 per step, so returns equal lengths."""
    def pd(obs, key):
        return (obs[:, 2] + 0.5 * obs[:, 3] > 0).astype(jnp.int32)

    def left(obs, key):
        return jnp.zeros(obs.shape[0], jnp.int32)

    limit = envs.episode_length("CartPole-v1")
    for policy, balances in ((pd, True), (left, False)):
        episodes = jax.jit(lambda key: envs.evaluate(cartpole, policy, key, 8, limit))(jax.random.PRNGKey(5))
        lengths = np.asarray(episodes.lengths)
        assert (lengths == limit).all() if balances else (lengths < 100).all()
        np.testing.assert_array_equal(episodes.returns, lengths.astype(np.float32))
