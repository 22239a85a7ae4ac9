"""benchmarks/final_policies.py's pieces: the Monte-Carlo returns its critic check compares against, and the
rollout that records each step's observation, action and reward terms (the script itself is a long benchmark)."""

import sys
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import final_policies  # noqa: E402


def test_discounted_returns_match_the_closed_form_and_a_direct_sum():
    gamma, length = 0.9, 12
    constant = np.ones((length, 2), np.float64)
    expected = (1 - gamma ** (length - np.arange(length))) / (1 - gamma)
    np.testing.assert_allclose(final_policies.discounted_returns(constant, gamma)[:, 0], expected)
    rewards = np.random.default_rng(0).normal(size=(length, 3))
    direct = np.array([[sum(gamma ** (k - t) * rewards[k, e] for k in range(t, length)) for e in range(3)]
                       for t in range(length)])
    np.testing.assert_allclose(final_policies.discounted_returns(rewards, gamma), direct)


class _State(NamedTuple):
    obs: Any
    reward: Any
    metrics: Any


class _DriftEnv:
    """x_{t+1} = x_t + a_t; reward −|x_{t+1}|; a `reward/*` term and a metric that is not one."""

    def step(self, state, action):
        obs = state.obs + action
        reward = -jnp.sum(jnp.abs(obs))
        metrics = {"reward/distance": jnp.sum(jnp.abs(obs)), "steps": state.metrics["steps"] + 1}
        return _State(obs=obs, reward=reward, metrics=metrics)


@pytest.mark.parametrize("length", [1, 5])
def test_rollout_records_the_observation_before_each_step_and_the_reward_terms(length):
    starts = _State(obs=jnp.array([[1.0, -2.0], [0.5, 0.0]]), reward=jnp.zeros(2),
                             metrics={"reward/distance": jnp.zeros(2), "steps": jnp.zeros(2, jnp.int32)})

    def act(obs, key):  # halves the distance each step; the extra is the key's last word
        return -0.5 * obs, key[-1]

    traj = final_policies.rollout(_DriftEnv(), act, starts, jax.random.PRNGKey(0), length)
    assert set(traj) == {"obs", "action", "extra", "reward", "reward/distance"}
    x = np.array([[1.0, -2.0], [0.5, 0.0]])
    for t in range(length):  # a naive loop
        np.testing.assert_allclose(traj["obs"][t], x)
        np.testing.assert_allclose(traj["action"][t], -0.5 * x)
        x = 0.5 * x
        np.testing.assert_allclose(traj["reward"][t], -np.abs(x).sum(axis=1))
        np.testing.assert_allclose(traj["reward/distance"][t], np.abs(x).sum(axis=1))
    assert traj["obs"].shape == (length, 2, 2) and traj["reward"].shape == (length, 2)
    assert len(np.unique(np.asarray(traj["extra"]))) == 2 * length  # a fresh key per env and step
