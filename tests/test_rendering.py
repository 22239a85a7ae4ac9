"""Rendering: the scanned deterministic episode against a naive Python loop over raw Brax calls, and the HTML."""

import base64
import json
import re
import zlib

import jax
import numpy as np
import pytest

from purempo import Config, make_trainer, normalizer, rendering
from purempo.envs import make
from purempo.train import make_networks

TINY = Config(
    env="inverted_pendulum",
    episode_length=50,
    total_steps=3_000,
    num_envs=8,
    unroll_length=2,
    updates_per_iteration=2,
    prefill_steps=64,
    num_evals=2,
    eval_episodes=2,
    replay_size=4_096,
    batch_size=8,
    sequence_length=4,
    num_action_samples=4,
    policy_hidden=(16, 16),
    critic_hidden=(16, 16),
)


@pytest.fixture(scope="module")
def train_state():
    return jax.jit(make_trainer(TINY).init)(jax.random.PRNGKey(0))


@pytest.fixture(scope="module")
def raw():
    """The raw env's jitted reset/step and the jitted policy network (its mean only)."""
    env = make(TINY.env)
    policy = make_networks(TINY, env.action_size).policy
    return env, jax.jit(env.reset), jax.jit(env.step), jax.jit(lambda p, x: policy.apply(p, x)[0])


def _obs_stats(kind, obs_dim):
    if kind == "initial":  # count 0: normalisation is the identity
        return normalizer.init(obs_dim)
    rng = np.random.default_rng(3)
    return normalizer.RunningStats(count=np.float32(100.0), mean=rng.normal(0.0, 0.05, obs_dim).astype(np.float32),
                                   sum_sq_dev=rng.uniform(0.01, 1.0, obs_dim).astype(np.float32))


def _naive_episode(raw, policy_params, obs_stats, key, max_steps):
    """Python loop: reset, then (numpy-normalised obs → policy mean → clip → step) until done or max_steps."""
    env, reset, step, mean_fn = raw
    count, mean, sum_sq_dev = (np.asarray(x, np.float64) for x in obs_stats)
    std = np.sqrt(np.maximum(sum_sq_dev / max(count, 1.0), 1e-6)) if count > 0 else np.ones_like(mean)
    state = reset(key)
    positions, rewards = [np.asarray(state.pipeline_state.x.pos)], []
    for _ in range(max_steps):
        obs = np.clip((np.asarray(state.obs, np.float64) - mean) / std, -10.0, 10.0).astype(np.float32)
        action = np.clip(np.asarray(mean_fn(policy_params, obs)), -1.0, 1.0)
        state = step(state, action)
        positions.append(np.asarray(state.pipeline_state.x.pos))
        rewards.append(float(state.reward))
        if float(state.done) > 0.5:
            break
    return positions, rewards


@pytest.mark.parametrize("stats_kind,max_steps", [("initial", 50), ("fitted", 50), ("initial", 10)])
def test_rollout_matches_a_naive_loop_and_stops_at_the_first_done(train_state, raw, stats_kind, max_steps):
    obs_stats = _obs_stats(stats_kind, train_state.obs_stats.mean.shape[0])
    policy_params = train_state.learner.policy_params
    key = jax.random.PRNGKey(7)
    states, episode_return = rendering.rollout_states(TINY, policy_params, obs_stats, key, max_steps=max_steps)
    positions, rewards = _naive_episode(raw, policy_params, obs_stats, key, max_steps)

    assert isinstance(episode_return, float)
    np.testing.assert_allclose(episode_return, sum(rewards), rtol=1e-6)
    assert len(states) == len(rewards) + 1 == len(positions)
    for state, pos in zip(states, positions):
        np.testing.assert_allclose(np.asarray(state.x.pos), pos, atol=1e-5)
        assert state.x.pos.ndim == 2  # unstacked: [links, 3], as brax.io.json.dumps requires
    # The untrained policy (mean ≈ 0) drops the pole before step 50 but not within 10 steps.
    if max_steps == 10:
        assert len(states) == max_steps + 1
    else:
        assert 3 < len(states) < max_steps + 1


def test_rollout_defaults_to_the_episode_length_and_cuts_at_done(train_state, raw):
    """With a policy that pushes the cart at +1 every step the pole falls within a few steps."""
    params = jax.tree.map(lambda x: x, train_state.learner.policy_params)  # a copy of the nested dicts
    head = params["params"]["Dense_0"]  # the mean head (Dense_1 is the std head)
    params["params"]["Dense_0"] = dict(head, bias=np.ones_like(head["bias"]))
    key = jax.random.PRNGKey(1)
    states, episode_return = rendering.rollout_states(TINY, params, train_state.obs_stats, key)
    _, rewards = _naive_episode(raw, params, train_state.obs_stats, key, TINY.episode_length)
    assert len(rewards) < 10  # done early
    assert len(states) == len(rewards) + 1
    np.testing.assert_allclose(episode_return, sum(rewards), rtol=1e-6)


def _system_json(html):
    match = re.search(r'var system = "([A-Za-z0-9+/=]+)";', html)
    assert match, "no encoded system in the page"
    return json.loads(zlib.decompress(base64.b64decode(match.group(1))))


def test_render_html_embeds_the_trajectory_and_is_deterministic(train_state):
    policy_params, obs_stats = train_state.learner.policy_params, train_state.obs_stats
    key = jax.random.PRNGKey(5)
    html, episode_return = rendering.render_html(TINY, policy_params, obs_stats, key, height=300, max_steps=50)
    again, again_return = rendering.render_html(TINY, policy_params, obs_stats, key, height=300, max_steps=50)
    other, _ = rendering.render_html(TINY, policy_params, obs_stats, jax.random.PRNGKey(6), height=300, max_steps=50)
    states, states_return = rendering.rollout_states(TINY, policy_params, obs_stats, key, max_steps=50)

    assert html == again and episode_return == again_return == states_return
    assert html != other
    assert 'id="brax-viewer"' in html and "viewer.js" in html and "height: 300px" in html
    system = _system_json(html)
    assert len(system["states"]["x"]) == len(states)
    for frame, state in zip(system["states"]["x"], states):
        np.testing.assert_allclose(np.asarray(frame["pos"]), np.asarray(state.x.pos), atol=1e-6)
    assert system["geoms"]  # the pendulum's bodies


def test_max_steps_must_be_positive(train_state):
    with pytest.raises(ValueError, match="max_steps"):
        rendering.rollout_states(TINY, train_state.learner.policy_params, train_state.obs_stats,
                                 jax.random.PRNGKey(0), max_steps=0)
