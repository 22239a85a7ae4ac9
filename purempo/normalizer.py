"""Running statistics kept in the train state: observation mean / variance (parallel Welford merge), and the
reward scale (root mean square of the rewards seen while it is being estimated)."""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax.numpy as jnp


class RunningStats(NamedTuple):
    count: chex.Array  # float32 []
    mean: chex.Array  # [O]
    sum_sq_dev: chex.Array  # [O] Σ (x − mean)²


def init(size: int) -> RunningStats:
    return RunningStats(jnp.zeros(()), jnp.zeros((size,)), jnp.zeros((size,)))


def update(stats: RunningStats, batch: chex.Array) -> RunningStats:
    """Merges a batch `[..., O]` into the statistics (Chan et al. parallel algorithm)."""
    batch = batch.reshape(-1, stats.mean.shape[0]).astype(jnp.float32)
    n_b = jnp.asarray(batch.shape[0], jnp.float32)
    mean_b = jnp.mean(batch, axis=0)
    sum_sq_b = jnp.sum((batch - mean_b) ** 2, axis=0)
    count = stats.count + n_b
    delta = mean_b - stats.mean
    mean = stats.mean + delta * n_b / count
    sum_sq_dev = stats.sum_sq_dev + sum_sq_b + delta**2 * stats.count * n_b / count
    return RunningStats(count, mean, sum_sq_dev)


def normalize(stats: RunningStats, obs: chex.Array, clip: float = 10.0) -> chex.Array:
    """(obs − mean) / std, clipped to ±clip; identity-like before any data (std floored at 1e-3)."""
    var = stats.sum_sq_dev / jnp.maximum(stats.count, 1.0)
    std = jnp.sqrt(jnp.maximum(var, 1e-6))
    std = jnp.where(stats.count > 0, std, 1.0)
    return jnp.clip((obs - stats.mean) / std, -clip, clip)


class RewardScale(NamedTuple):
    """Σ r² and the count of rewards r merged so far; their root mean square divides the learner's rewards."""

    sum_sq: chex.Array  # float32 []
    count: chex.Array  # float32 []


def init_reward_scale() -> RewardScale:
    return RewardScale(jnp.zeros(()), jnp.zeros(()))


def update_reward_scale(stats: RewardScale, rewards: chex.Array) -> RewardScale:
    rewards = rewards.astype(jnp.float32)
    return RewardScale(stats.sum_sq + jnp.sum(rewards**2), stats.count + rewards.size)


def reward_divisor(stats: RewardScale) -> chex.Array:
    """sqrt(mean r²); 1 before any reward or when every reward so far was 0 (nothing to normalise by)."""
    rms = jnp.sqrt(stats.sum_sq / jnp.maximum(stats.count, 1.0))
    return jnp.where(rms > 0, rms, 1.0)
