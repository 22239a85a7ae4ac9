"""MuJoCo Playground envs behind `purempo.envs`: names, errors, action repeat, the shared step semantics, presets."""

import base64
import json
import re
import subprocess
import sys
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from purempo import envs, presets


def test_names_resolve_to_their_family_and_an_unknown_name_suggests_the_closest():
    assert envs.family("halfcheetah") == envs.BRAX
    assert envs.family("CheetahRun") == envs.PLAYGROUND
    assert {"CartpoleSwingup", "CheetahRun", "WalkerWalk", "FingerSpin"} <= set(envs.dm_control_names())
    assert set(envs.available()) >= {"inverted_pendulum", "CheetahRun"}
    for typed in ("cheetahrun", "cheetah_run", "CHEETAH-RUN", "Cheetahrun"):
        assert envs.resolve_name(typed) == "CheetahRun"
    assert envs.resolve_name("HalfCheetah") == "halfcheetah"
    with pytest.raises(ValueError) as error:
        envs.family("Cheetahrun")  # the trainer takes exact names; the CLI resolves them first
    message = str(error.value)
    assert "\n" not in message and "'Cheetahrun'" in message and "did you mean CheetahRun" in message
    assert len(message) < 200 and "purempo envs" in message
    with pytest.raises(ValueError, match="did you mean walker2d or WalkerRun or WalkerWalk"):
        envs.resolve_name("walker")
    with pytest.raises(ValueError) as error:
        envs.resolve_name("fst")
    assert "fast" not in str(error.value)  # Brax's test env is never suggested


def test_an_env_needing_menagerie_fails_with_one_line_and_runs_no_git(monkeypatch, tmp_path):
    from mujoco_playground._src import mjx_env

    monkeypatch.setattr(mjx_env, "MENAGERIE_PATH", tmp_path / "absent")

    def no_clone(*args, **kwargs):
        raise AssertionError("tried to clone MuJoCo Menagerie")

    monkeypatch.setattr(mjx_env, "_clone_with_progress", no_clone)
    locomotion = [name for name in envs.playground_names() if name not in envs.dm_control_names()]
    assert locomotion
    with pytest.raises(ValueError) as error:
        envs.make(locomotion[0])
    message = str(error.value)
    assert "\n" not in message and "Menagerie" in message and str(tmp_path / "absent") in message
    assert envs.menagerie_missing("CheetahRun") is None  # DM Control ships its assets


@pytest.mark.parametrize("name, kwargs, field", [
    ("CheetahRun", dict(backend="generalized"), "backend"),
    ("halfcheetah", dict(impl="jax"), "impl"),
    ("CheetahRun", dict(impl="cuda"), "impl"),
])
def test_family_specific_settings_are_rejected_on_the_other_family(name, kwargs, field):
    with pytest.raises(ValueError, match=f"invalid {field}="):
        envs.make(name, **kwargs)


def test_mujoco_warp_restarts_and_seeds_follow_mjx():
    """MuJoCo Warp's batched state shares its contact arrays across envs; restarts from the reset pool must keep
    them and still give, env by env and seed by seed (an outer vmap, as for seeds), MJX's trajectories."""

    def rollout(impl):
        env = envs.make("CartpoleBalance", impl=impl)

        def run(key):
            state = envs.reset(env, key, 3, pool_size=2)

            def body(state, k):
                state, result = envs.step(env, state, jnp.full((3, env.action_size), 0.3), k, episode_length=3)
                return state, (envs.observation(state), result.final_obs, result.reward, result.truncated)

            state, out = jax.lax.scan(body, state, jax.random.split(key, 5))
            return out, state.reset_pool.obs

        return env, jax.jit(jax.vmap(run))(jax.random.split(jax.random.PRNGKey(1), 2))

    _, ((obs, final_obs, reward, truncated), pool) = rollout("jax")
    env, ((w_obs, w_final_obs, w_reward, w_truncated), w_pool) = rollout("warp")
    assert not all(jax.tree.leaves(envs.per_env_leaves(env)))  # Warp does share some leaves
    assert all(jax.tree.leaves(envs.per_env_leaves(envs.make("CartpoleBalance", impl="jax"))))
    np.testing.assert_array_equal(w_truncated, truncated)
    assert truncated[:, 2].all() and not truncated[:, 1].any()  # every env restarted after its 3rd step
    for ours, mjx in [(w_obs, obs), (w_final_obs, final_obs), (w_reward, reward), (w_pool, pool)]:
        np.testing.assert_allclose(ours, mjx, atol=1e-5)
    restarted = np.asarray(w_obs[:, 2])  # [seeds, envs, O]: the observation right after the restart
    assert all(any(np.allclose(o, p) for p in np.asarray(w_pool[s])) for s in range(2) for o in restarted[s])


@pytest.mark.parametrize("platform, impl", [("cpu", "jax"), ("cuda", "warp"), ("rocm", "jax"), ("tpu", "jax")])
def test_the_default_physics_is_warp_on_an_nvidia_gpu_and_mjx_elsewhere(platform, impl):
    assert envs.default_impl(platform) == impl
    assert envs.default_impl() == envs.default_impl(envs.platform())
    if jax.default_backend() != "gpu":  # a GPU is named by its vendor's stack instead
        assert envs.platform() == jax.default_backend()


def test_an_nvidia_gpu_without_warp_gets_mjx(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "warp" else real(name, *a))
    assert envs.default_impl("cuda") == "jax"
    assert envs.default_impl("cpu") == "jax"


def test_constructing_a_config_imports_no_simulator():
    code = ("import sys; from purempo import Config; from purempo.presets import PRESETS, preset; "
            "Config(env='CheetahRun', impl='jax'); preset('halfcheetah'); "
            "loaded = [m for m in ('brax', 'mujoco', 'mujoco_playground') if m in sys.modules]; "
            "assert not loaded, loaded")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@struct.dataclass
class _CountingState:
    obs: jax.Array
    reward: jax.Array
    done: jax.Array


class _CountingEnv:
    """obs counts steps; reward = action + steps; done once obs reaches `end`."""

    action_size = 1

    def __init__(self, end):
        self.end = end

    def reset(self, key):
        return _CountingState(obs=jnp.zeros(()), reward=jnp.zeros(()), done=jnp.zeros(()))

    def step(self, state, action):
        obs = state.obs + 1.0
        return _CountingState(obs=obs, reward=action[0] + obs, done=(obs >= self.end).astype(jnp.float32))


def test_action_repeat_sums_the_rewards_of_repeated_steps_and_stops_at_termination():
    action = jnp.array([0.5])
    repeated = envs.ActionRepeat(_CountingEnv(end=100.0), 3)
    state = repeated.step(repeated.reset(None), action)
    assert float(state.obs) == 3.0 and float(state.reward) == (0.5 + 1) + (0.5 + 2) + (0.5 + 3)
    state = repeated.step(state, action)
    assert float(state.obs) == 6.0 and float(state.reward) == (0.5 + 4) + (0.5 + 5) + (0.5 + 6)
    # Terminating at the 2nd sub-step: the state stays terminal and the 3rd sub-step adds nothing.
    ending = envs.ActionRepeat(_CountingEnv(end=2.0), 3)
    state = ending.step(ending.reset(None), action)
    assert float(state.obs) == 2.0 and float(state.done) == 1.0 and float(state.reward) == (0.5 + 1) + (0.5 + 2)


def test_playground_envs_get_the_shared_playground_preset_with_their_own_episode_length():
    config = presets.preset("CartpoleSwingup")
    assert config.num_envs == presets._PLAYGROUND["num_envs"] != presets.preset("inverted_pendulum").num_envs
    assert config.critic_lr == presets._PLAYGROUND["critic_lr"]
    for name in envs.dm_control_names():
        assert envs.time_limit(presets.preset(name)) == envs.episode_length(name), name
    assert presets.preset("nope").env == "nope"  # unknown names are reported when the trainer is built
    # A per-task override changes only its own fields of its own task; the other tasks keep the shared values.
    walker, cheetah = presets.preset("WalkerWalk"), presets.preset("CheetahRun")
    assert walker.normalize_penalty and walker.epsilon_mean == 1.5e-2
    assert not cheetah.normalize_penalty and cheetah.epsilon_mean == presets._PLAYGROUND["epsilon_mean"]
    assert walker.replace(normalize_penalty=False, epsilon_mean=cheetah.epsilon_mean, env="CheetahRun") == cheetah
    swingup = presets.preset("CartpoleSwingup")  # Polyak-averaged targets; the others copy every 50 updates
    assert swingup.target_update_period == 0 and cheetah.target_update_period == walker.target_update_period == 50
    assert swingup.replace(target_update_period=50, env="CheetahRun") == cheetah


TINY = dict(total_steps=256, num_envs=4, unroll_length=2, updates_per_iteration=1, prefill_steps=32, num_evals=2,
            eval_episodes=2, episode_length=20, replay_size=256, batch_size=4, sequence_length=4,
            num_action_samples=4, policy_hidden=(8,), critic_hidden=(8,), impl="jax")


@pytest.fixture(scope="module")
def trained():
    """A tiny run on CartpoleBalance through the whole trainer: 2 chunks of acting, learning and evaluation."""
    from purempo import make_train

    config = presets.preset("CartpoleBalance", **TINY)
    state, metrics = jax.device_get(jax.jit(make_train(config))(jax.random.PRNGKey(0)))
    return config, state, metrics


def _short_cartpole(monkeypatch, episode_length=40, action_repeat=2):
    """CartpoleBalance with a time limit of `episode_length` physics steps and an action repeat in its Playground
    config (every DM Control env has 1000 and 1; PandaPickCube's 150 needs Menagerie's assets, absent here)."""
    registry = envs._playground()[0]
    real = registry.get_default_config

    def patched(name):
        config = real(name)
        if name == "CartpoleBalance":
            config.episode_length, config.action_repeat = episode_length, action_repeat
        return config

    monkeypatch.setattr(registry, "get_default_config", patched)


def test_a_non_finite_playground_step_ends_the_episode_too():
    """Playground's DM Control envs flag a NaN state as done but still return its NaN observation and reward:
    through the action repeat (a NaN at the 3rd physics step is in the 2nd agent step of 2 × 2) and the reset
    pool, the step ends with reward 0 and a finite observation, and the env restarts."""
    from test_envs import NanAtStep, check_non_finite_steps_end_episodes

    env = envs.make("CartpoleBalance", impl="jax")
    poisoned = envs.ActionRepeat(NanAtStep(env, at=3, physics="data"), 2)
    check_non_finite_steps_end_episodes(env, poisoned, at=2, num_steps=4, pool_size=4)


def _restarts_from_one_pool_state(env, num_steps=2):
    """The pool (of one state) and the state of 2 envs after each of `num_steps` steps with a time limit of 1 step:
    every step restarts every env from that one pool state."""
    state = envs.reset(env, jax.random.PRNGKey(3), 2, pool_size=1)
    step = jax.jit(lambda s, k: envs.step(env, s, jnp.zeros((2, env.action_size)), k, episode_length=1)[0])
    restarted = []
    for key in jax.random.split(jax.random.PRNGKey(4), num_steps):
        state = step(state, key)
        restarted.append(jax.tree.map(np.asarray, state.sim_state))
    return jax.tree.map(lambda x: np.asarray(x[0]), state.reset_pool), restarted


def test_restarts_from_the_pool_draw_a_fresh_info_rng_and_copy_the_rest():
    """A Playground env draws an episode's randomness (velocity commands, pushes) from `info["rng"]`: each restart
    from the same pool state gets its own, and every other leaf is the pool state's. A Brax state (no
    `info["rng"]`) is copied as it is."""
    pool, restarted = _restarts_from_one_pool_state(envs.make("CartpoleBalance", impl="jax"))
    keys = [bytes(pool.info["rng"])] + [bytes(k) for state in restarted for k in state.info["rng"]]
    assert len(set(keys)) == len(keys) == 1 + 2 * 2
    for state in restarted:
        for env_index in range(2):
            copy = jax.tree.map(lambda x: x[env_index], state)
            jax.tree.map(np.testing.assert_array_equal, copy.replace(info={**copy.info, "rng": pool.info["rng"]}), pool)
    pool, restarted = _restarts_from_one_pool_state(envs.make("inverted_pendulum"))
    for state in restarted:
        for env_index in range(2):
            jax.tree.map(np.testing.assert_array_equal, jax.tree.map(lambda x: x[env_index], state), pool)


def test_the_time_limit_is_the_envs_own_in_agent_steps_and_an_explicit_one_wins(monkeypatch):
    """A 40-physics-step limit with action repeat 2: acting truncates every 20 agent steps, evaluation and
    rendering run 20 (DM Control never terminates); an explicit episode_length overrides it."""
    from purempo import make_train, make_trainer, rendering

    _short_cartpole(monkeypatch)
    tiny = {key: value for key, value in TINY.items() if key != "episode_length"}
    config = presets.preset("CartpoleBalance", **tiny)
    state, metrics = jax.device_get(jax.jit(make_train(config))(jax.random.PRNGKey(0)))
    np.testing.assert_array_equal(metrics["eval_episode_length"], 20.0)
    data = state.replay.data
    assert int(state.replay.write_index) == 0  # exactly full: rows in time order
    np.testing.assert_array_equal(data.truncated, _truncations(state, 20))
    params, stats = state.learner.policy_params, state.obs_stats
    states, _ = rendering.rollout_states(config, params, stats, jax.random.PRNGKey(1))
    assert len(states) == 20 + 1
    episodes = jax.jit(make_trainer(config.replace(episode_length=7)).evaluate)(params, stats, jax.random.PRNGKey(2))
    np.testing.assert_array_equal(episodes.lengths, 7)
    assert envs.time_limit(config) == 20 and envs.time_limit(config.replace(episode_length=7)) == 7


def _truncations(state, limit):
    """bool `[rows, E]`: where a naive per-env counter hits `limit` in a full replay (rows in time order) of envs
    that never terminate, each counter starting at its staggered value, found from where it ended: (rows +
    start) mod limit."""
    rows = state.replay.data.obs.shape[0]
    start = (np.asarray(state.env_state.episode_step) - rows) % limit
    return (np.arange(rows)[:, None] + 1 + start[None, :]) % limit == 0


def test_gpu_presets_size_the_replay_by_the_envs_own_time_limit(monkeypatch):
    """4 episodes of 20 agent steps per env, rounded up to 1,024 steps (the DM Control default: 4 × 1,000 → 4,096)."""
    assert presets.preset("CartpoleBalance", scale="gpu").capacity_per_env == 4096
    _short_cartpole(monkeypatch)
    config = presets.preset("CartpoleBalance", scale="gpu")
    assert config.episode_length is None and config.capacity_per_env == 1024


def test_the_trainer_runs_a_playground_env(trained):
    """Learning happens on finite losses; the replay holds the env's observations; no DM Control episode
    terminates, so every evaluation episode lasts the time limit and returns at most one reward per step."""
    config, state, metrics = trained
    learned = metrics["updates"] > 0
    assert learned.any() and np.all(np.isfinite(metrics["critic_loss"][learned]))
    assert state.replay.data.obs.shape[-1] == 5 and not np.any(state.replay.data.terminated)
    assert np.any(state.replay.data.truncated)
    assert np.all(metrics["eval_episode_length"] == config.episode_length)
    assert np.all((metrics["eval_return"] > 0) & (metrics["eval_return"] <= config.episode_length))


def test_a_playground_env_gets_the_shared_step_semantics(trained):
    """The replay of the tiny run, read in time order: DM Control never terminates; the time limit truncates
    every env at each multiple of episode_length; after a truncation the replay's side ring holds the true final
    observation (not the next row's obs, which is a reset-pool state). Within an episode the replay's next_obs
    is the next row's obs by construction (the rollout's agree, tests/test_acting.py)."""
    config, state, _ = trained
    data = state.replay.data
    rows = data.obs.shape[0]
    assert int(state.replay.size) == rows and int(state.replay.write_index) == 0  # exactly full: rows in time order
    assert not np.any(data.terminated)
    ends = _truncations(state, config.episode_length)
    assert len({tuple(column) for column in ends.T}) > 1  # staggered: the envs do not all truncate together
    np.testing.assert_array_equal(data.truncated, ends)
    pool = np.asarray(state.env_state.reset_pool.obs)
    for t, e in zip(*np.nonzero(ends[:-1])):
        final_obs = state.replay.final_obs[data.final_slot[t, e], e]
        assert np.all(np.isfinite(final_obs)) and not np.allclose(final_obs, data.obs[t + 1, e])
        assert np.any(np.all(data.obs[t + 1, e] == pool, axis=1)), data.obs[t + 1, e]


def test_a_playground_episode_renders_with_its_bodies_poses(trained):
    """The rendered frames are the raw env's body poses (MJX xpos/xquat, world body dropped) along the mean-action
    episode, and the page is Brax's viewer."""
    from purempo import acting, normalizer, rendering
    from purempo.train import make_networks

    config, state, _ = trained
    key = jax.random.PRNGKey(3)
    frames, episode_return = rendering.rollout_states(config, state.learner.policy_params, state.obs_stats, key,
                                                      max_steps=3)
    assert len(frames) == 4
    env = envs.make("CartpoleBalance", impl="jax")
    policy = make_networks(config, env.action_size).policy
    step = jax.jit(env.step)
    raw, total = env.reset(key), 0.0
    for t, frame in enumerate(frames):
        np.testing.assert_allclose(frame.x.pos, np.asarray(raw.data.xpos)[1:], atol=1e-5)
        np.testing.assert_allclose(frame.x.rot, np.asarray(raw.data.xquat)[1:], atol=1e-5)
        if t < 3:
            mean, _ = policy.apply(state.learner.policy_params, normalizer.normalize(state.obs_stats, raw.obs))
            raw = step(raw, acting.env_action(mean))
            total += float(raw.reward)
    assert episode_return == pytest.approx(total, rel=1e-5)
    html, _ = rendering.render_html(config, state.learner.policy_params, state.obs_stats, key, max_steps=3)
    assert 'id="brax-viewer"' in html
    match = re.search(r'var system = "([A-Za-z0-9+/=]+)";', html)
    system = json.loads(zlib.decompress(base64.b64decode(match.group(1))))
    assert {"cart", "pole_1"} <= set(system["geoms"])
    assert len(system["states"]["x"]) == 4
    np.testing.assert_allclose(system["states"]["x"][-1]["pos"], frames[-1].x.pos, atol=1e-6)


@struct.dataclass
class _DictState:
    pos: jax.Array
    obs: dict
    reward: jax.Array
    done: jax.Array
    info: dict


class _DictPointMass:
    """A 2-D point mass with Playground's observation dict: `state` = position (the actor's view),
    `privileged_state` = position, velocity and the hidden goal. Its step reads the previous observation back
    (as envs with observation histories do), so a wrapper must hand it the dict it produced."""

    action_size = 2

    def _obs(self, pos, vel, goal):
        return {"state": pos, "privileged_state": jnp.concatenate([pos, vel, goal]), "pixels": jnp.zeros((2, 2))}

    def reset(self, key):
        goal = jax.random.uniform(key, (2,), minval=-1.0, maxval=1.0)
        zero = jnp.zeros(2)
        return _DictState(pos=zero, obs=self._obs(zero, zero, goal), reward=jnp.zeros(()), done=jnp.zeros(()),
                          info={"goal": goal, "steps": jnp.zeros(())})

    def step(self, state, action):
        vel = state.obs["privileged_state"][2:4] + 0.1 * action
        pos = state.pos + 0.1 * vel
        goal = state.info["goal"]
        return _DictState(pos=pos, obs=self._obs(pos, vel, goal), reward=-jnp.linalg.norm(pos - goal),
                          done=jnp.zeros(()), info={**state.info, "steps": state.info["steps"] + 1})


def test_dict_observations_flatten_the_actor_and_critic_parts_and_round_trip_the_wrapped_state():
    raw, env = _DictPointMass(), envs.DictObservations(_DictPointMass())
    assert envs.views(env) == envs.Views(policy=(0, 2), critic=(2, 8)) and envs.observation_size(env) == 8
    assert envs.views(raw) == envs.Views()
    key, action = jax.random.PRNGKey(0), jnp.array([0.5, -1.0])
    raw_state, state = raw.reset(key), env.reset(key)
    for _ in range(3):
        raw_state, state = raw.step(raw_state, action), env.step(state, action)
        np.testing.assert_array_equal(state.obs, np.concatenate([raw_state.obs["state"],
                                                                 raw_state.obs["privileged_state"]]))
        assert float(state.reward) == float(raw_state.reward)
    with pytest.raises(ValueError, match="no 'policy' entry"):
        envs.DictObservations(raw, policy_key="policy")


def test_networks_read_only_their_view_and_keep_outputs_when_the_statistics_move():
    from purempo import networks, normalizer
    from purempo.train import make_networks

    config = presets.preset("CartpoleBalance", policy_hidden=(8,), critic_hidden=(8,))
    nets = make_networks(config, 2, envs.Views(policy=(0, 2), critic=(2, 8)))
    obs = jax.random.normal(jax.random.PRNGKey(1), (5, 8))
    action = jnp.zeros((5, 2))
    policy_params = nets.policy.init(jax.random.PRNGKey(2), obs[0])
    critic_params = nets.critic.init(jax.random.PRNGKey(3), obs[0], action[0])
    assert policy_params["params"]["LayerNormMLP_0"]["Dense_0"]["kernel"].shape == (2, 8)
    assert critic_params["params"]["LayerNormMLP_0"]["Dense_0"]["kernel"].shape == (6 + 2, 8)
    privileged_changed, state_changed = obs.at[:, 2:].add(1.0), obs.at[:, :2].add(1.0)
    for a, b in zip(nets.policy.apply(policy_params, obs), nets.policy.apply(policy_params, privileged_changed)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(nets.critic.apply(critic_params, obs, action),
                                  nets.critic.apply(critic_params, state_changed, action))
    assert not np.allclose(nets.critic.apply(critic_params, obs, action),
                           nets.critic.apply(critic_params, privileged_changed, action))
    # Output preservation on each view: same outputs for raw observations after the statistics move.
    old = normalizer.update(normalizer.init(8), obs)
    new = normalizer.update(old, 3.0 * obs + 2.0)
    kept = networks.preserve_outputs(policy_params, old, new, (0, 2))
    for a, b in zip(nets.policy.apply(policy_params, normalizer.normalize(old, obs)),
                    nets.policy.apply(kept, normalizer.normalize(new, obs))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    kept = networks.preserve_outputs(critic_params, old, new, (2, 8))
    np.testing.assert_allclose(nets.critic.apply(critic_params, normalizer.normalize(old, obs), action),
                               nets.critic.apply(kept, normalizer.normalize(new, obs), action), rtol=1e-4, atol=1e-4)


def test_the_trainer_gives_the_policy_the_state_and_the_critic_the_privileged_state(monkeypatch):
    from purempo import train

    monkeypatch.setattr(train.envs, "make", lambda *args, **kwargs: envs.DictObservations(_DictPointMass()))
    config = presets.preset("CartpoleBalance", **dict(TINY, total_steps=512))
    state, metrics = jax.device_get(jax.jit(train.make_train(config))(jax.random.PRNGKey(0)))
    assert state.learner.policy_params["params"]["LayerNormMLP_0"]["Dense_0"]["kernel"].shape == (2, 8)
    assert state.learner.critic_params["params"]["LayerNormMLP_0"]["Dense_0"]["kernel"].shape == (6 + 2, 8)
    assert state.replay.data.obs.shape[-1] == 8
    learned = metrics["updates"] > 0
    assert learned.any() and np.all(np.isfinite(metrics["critic_loss"][learned]))
    assert np.all(np.isfinite(metrics["eval_return"]))
