"""Acting: sample from the online policy, step all envs in lockstep, record transitions."""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

from purempo import envs, normalizer
from purempo.discrete import floored_log_probs
from purempo.networks import distribution
from purempo.types import Transition

ACTION_LOW, ACTION_HIGH = -1.0, 1.0


def env_action(action: chex.Array) -> chex.Array:
    """The unsquashed Gaussian's sample clipped into the env's action box."""
    return jnp.clip(action, ACTION_LOW, ACTION_HIGH)


class EpisodeStats(NamedTuple):
    return_sum: chex.Array  # [] sum of returns of whole episodes that finished during the unroll
    count: chex.Array  # [] number of whole episodes finished (a staggered first episode is not one)
    nonfinite: chex.Array  # [] steps whose observation or reward was not finite (each ended its episode)


def correlated_noise(previous: chex.Array, key: chex.PRNGKey, correlation: chex.Numeric) -> chex.Array:
    """One step of unit-variance AR(1) noise: `ρ·previous + sqrt(1 − ρ²)·ξ`, ξ ~ N(0, I).

    If `previous` ~ N(0, I), so is the result, and consecutive steps correlate by ρ: an Ornstein–Uhlenbeck
    process sampled at unit time steps (DDPG's exploration, Lillicrap et al. 2016; temporally correlated
    exploration for MPO and SAC: Eberhard et al. 2023, "Pink noise is all you need"). ρ = 0 is white noise.
    Shapes: previous `[E, A]` → `[E, A]`.
    """
    return correlation * previous + jnp.sqrt(1.0 - correlation**2) * jax.random.normal(key, previous.shape)


def rollout(env, policy, policy_params, obs_stats, env_state, key, unroll_length: int, episode_length: int,
            reward_scale=1.0, noise=None, correlation=0.0, discrete: bool = False, min_action_prob=0.0):
    """Runs `unroll_length` lockstep steps. Returns (env_state, Transition `[U, E, ...]`, EpisodeStats, noise).

    `discrete`: `policy` gives logits over the env's actions and each action is a sample of the categorical
    policy with every probability floored at `min_action_prob` (`discrete.floored_log_probs`), stored as an int32
    index with its log-probability; `noise` and `correlation` play no part (the noise returned is empty). Otherwise:

    Actions are `mean + std · n_t` with exploration noise n_t `[E, A]` that follows `correlated_noise` within
    an episode (`correlation` ρ; 0: independent steps, i.e. samples of π_θ) and restarts from a fresh N(0, I)
    draw when an episode ends; `noise` is n_{t−1} of the first step (None: zeros, for ρ = 0). Each step's
    action is marginally distributed as π_θ(·|s), and its density under π_θ is the behaviour log-prob stored
    for Retrace (for ρ > 0 the true behaviour also depends on the episode's past noise: an approximation that
    the importance weights do not correct). Transitions hold rewards multiplied by `reward_scale` (a
    reward-scaling wrapper); EpisodeStats are unscaled.
    """
    if noise is None:
        noise = jnp.zeros((envs.observation(env_state).shape[0], 0 if discrete else env.action_size))

    def one_step(carry, step_key):
        env_state, noise = carry
        act_key, reset_key = jax.random.split(step_key)
        obs = envs.observation(env_state)
        out = policy.apply(policy_params, normalizer.normalize(obs_stats, obs))
        if discrete:
            log_probs = floored_log_probs(out, min_action_prob)  # [E, K]
            action = jax.random.categorical(act_key, log_probs).astype(jnp.int32)
            log_prob = jnp.take_along_axis(log_probs, action[:, None], axis=-1)[:, 0]
            stepped_action = action
        else:
            mean, std = out
            noise = correlated_noise(noise, act_key, correlation)
            action = mean + std * noise
            log_prob = distribution(mean, std).log_prob(action)
            stepped_action = env_action(action)
        env_state, result = envs.step(env, env_state, stepped_action, reset_key, episode_length)
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
        # A new episode's noise is independent of the last one's (and stationary: N(0, I)).
        fresh = jax.random.normal(jax.random.fold_in(act_key, 1), noise.shape)
        noise = jnp.where(finished[:, None], fresh, noise)
        return (env_state, noise), (transition, result.finished_return, finished, result.nonfinite)

    (env_state, noise), (transitions, finished_return, finished, nonfinite) = jax.lax.scan(
        one_step, (env_state, noise), jax.random.split(key, unroll_length)
    )
    # A staggered first episode (NaN return, `envs.reset`) ended but is not a whole episode: not counted.
    counted = finished & jnp.isfinite(finished_return)
    stats = EpisodeStats(return_sum=jnp.sum(jnp.where(counted, finished_return, 0.0)),
                         count=jnp.sum(counted).astype(jnp.float32),
                         nonfinite=jnp.sum(nonfinite).astype(jnp.float32))
    return env_state, transitions, stats, noise
