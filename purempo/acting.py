"""Acting: sample from the online policy, step all envs in lockstep, record transitions."""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

from purempo import envs, normalizer
from purempo.networks import distribution
from purempo.types import Transition

ACTION_LOW, ACTION_HIGH = -1.0, 1.0


def env_action(action: chex.Array) -> chex.Array:
    """The unsquashed Gaussian's sample clipped into the env's action box."""
    return jnp.clip(action, ACTION_LOW, ACTION_HIGH)


class EpisodeStats(NamedTuple):
    return_sum: chex.Array  # [] sum of returns of episodes that finished during the unroll
    count: chex.Array  # [] number of finished episodes


def sample_action(policy, policy_params, obs_stats, obs, key):
    """Samples a ~ π_θ(·|s) for raw observations `[E, O]`; returns (action `[E, A]`, log π_θ(a|s) `[E]`)."""
    mean, std = policy.apply(policy_params, normalizer.normalize(obs_stats, obs))
    return distribution(mean, std).sample_and_log_prob(seed=key)


def rollout(env, policy, policy_params, obs_stats, env_state, key, unroll_length: int, episode_length: int,
            reward_scale=1.0):
    """Runs `unroll_length` lockstep steps. Returns (env_state, Transition `[U, E, ...]`, EpisodeStats).

    Transitions hold rewards multiplied by `reward_scale` (a reward-scaling wrapper); EpisodeStats are unscaled.
    """

    def one_step(env_state, step_key):
        act_key, reset_key = jax.random.split(step_key)
        obs = envs.observation(env_state)
        action, log_prob = sample_action(policy, policy_params, obs_stats, obs, act_key)
        env_state, result = envs.step(env, env_state, env_action(action), reset_key, episode_length)
        transition = Transition(
            obs=obs,
            action=action,
            reward=result.reward * reward_scale,
            terminated=result.terminated,
            truncated=result.truncated,
            next_obs=result.final_obs,
            behaviour_log_prob=log_prob,
        )
        finished = jnp.logical_or(result.terminated, result.truncated)
        return env_state, (transition, result.finished_return, finished)

    env_state, (transitions, finished_return, finished) = jax.lax.scan(
        one_step, env_state, jax.random.split(key, unroll_length)
    )
    stats = EpisodeStats(return_sum=jnp.sum(finished_return), count=jnp.sum(finished).astype(jnp.float32))
    return env_state, transitions, stats
