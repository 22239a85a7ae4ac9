"""Running statistics kept in the train state: observation mean / variance (parallel Welford merge), and the
reward scale (root mean square of the rewards seen while it is being estimated)."""

from __future__ import annotations

from typing import NamedTuple, Optional

import chex
import jax
import jax.numpy as jnp


class RunningStats(NamedTuple):
    count: chex.Array  # float32 []
    mean: chex.Array  # [O]
    sum_sq_dev: chex.Array  # [O] Σ (x − mean)²


def init(size: int) -> RunningStats:
    return RunningStats(jnp.zeros(()), jnp.zeros((size,)), jnp.zeros((size,)))


def update(stats: RunningStats, batch: chex.Array, axis_name: Optional[str] = None) -> RunningStats:
    """Merges a batch `[..., O]` into the statistics (Chan et al. parallel algorithm). With `axis_name` (inside
    `shard_map`) the batch is every device's part together: the devices' moments are merged with the same
    formula, three O-vectors each instead of gathering the observations."""
    batch = batch.reshape(-1, stats.mean.shape[0]).astype(jnp.float32)
    n_b = jnp.asarray(batch.shape[0], jnp.float32)
    mean_b = jnp.mean(batch, axis=0)
    sum_sq_b = jnp.sum((batch - mean_b) ** 2, axis=0)
    if axis_name is not None:
        total = jax.lax.psum(n_b, axis_name)
        mean_all = jax.lax.psum(n_b * mean_b, axis_name) / total
        sum_sq_b = jax.lax.psum(sum_sq_b + n_b * (mean_b - mean_all) ** 2, axis_name)
        n_b, mean_b = total, mean_all
    count = stats.count + n_b
    delta = mean_b - stats.mean
    mean = stats.mean + delta * n_b / count
    sum_sq_dev = stats.sum_sq_dev + sum_sq_b + delta**2 * stats.count * n_b / count
    return RunningStats(count, mean, sum_sq_dev)


def std(stats: RunningStats) -> chex.Array:
    """Standard deviation `[O]` used by `normalize`: floored at 1e-3, and 1 before any data."""
    var = stats.sum_sq_dev / jnp.maximum(stats.count, 1.0)
    return jnp.where(stats.count > 0, jnp.sqrt(jnp.maximum(var, 1e-6)), 1.0)


def normalize(stats: RunningStats, obs: chex.Array, clip: float = 10.0) -> chex.Array:
    """(obs − mean) / std, clipped to ±clip; identity-like before any data (std floored at 1e-3)."""
    return jnp.clip((obs - stats.mean) / std(stats), -clip, clip)


def preserve_first_layer(kernel: chex.Array, bias: chex.Array, old: RunningStats, new: RunningStats):
    """Re-parametrises a first linear layer so that it computes the same function of the raw observation
    under the `new` statistics as it did under the `old` ones (exact wherever `normalize` does not clip).

    With z = (x − μ)/σ and z' = (x − μ')/σ': z·W + b = z'·W' + b' for W' = diag(σ'/σ)·W and
    b' = b + ((μ' − μ)/σ)·W. Only the first O rows of `kernel` `[I, H]` (I ≥ O) see the observation; any
    further inputs (the critic's action) are left alone. Returns (kernel, bias).
    """
    obs_dim = old.mean.shape[0]
    old_std, new_std = std(old), std(new)
    obs_rows = kernel[:obs_dim]
    bias = bias + ((new.mean - old.mean) / old_std) @ obs_rows
    kernel = kernel.at[:obs_dim].set(obs_rows * (new_std / old_std)[:, None])
    return kernel, bias


class RewardScale(NamedTuple):
    """Σ r² and the count of rewards r merged so far; their root mean square divides the learner's rewards."""

    sum_sq: chex.Array  # float32 []
    count: chex.Array  # float32 []


def init_reward_scale() -> RewardScale:
    return RewardScale(jnp.zeros(()), jnp.zeros(()))


def update_reward_scale(stats: RewardScale, rewards: chex.Array, axis_name: Optional[str] = None) -> RewardScale:
    """Adds the rewards' squares and count (summed over the devices along `axis_name`, if given)."""
    rewards = rewards.astype(jnp.float32)
    sum_sq, count = jnp.sum(rewards**2), jnp.asarray(rewards.size, jnp.float32)
    if axis_name is not None:
        sum_sq, count = jax.lax.psum(sum_sq, axis_name), jax.lax.psum(count, axis_name)
    return RewardScale(stats.sum_sq + sum_sq, stats.count + count)


def reward_divisor(stats: RewardScale) -> chex.Array:
    """sqrt(mean r²); 1 before any reward or when every reward so far was 0 (nothing to normalise by)."""
    rms = jnp.sqrt(stats.sum_sq / jnp.maximum(stats.count, 1.0))
    return jnp.where(rms > 0, rms, 1.0)
