"""On-device, time-major ring replay that serves fixed-length sequences.

Storage is a pytree whose leaves are `[capacity, num_envs, ...]`. All envs write in lockstep, so a single
write position and fill level (device scalars) describe the whole buffer: no host counters, no rolls, and
an insert writes only the `[U, num_envs, ...]` rows it replaces. A sampled window `[start, start + L)` of one
env always lies inside the valid region and ends before the write head, so it never mixes old and new data.
Each field keeps its dtype. Keys are passed in, never stored.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp


class ReplayState(NamedTuple):
    data: Any  # pytree, leaves [capacity, num_envs, ...]
    write_index: chex.Array  # int32 []: next row to write
    size: chex.Array  # int32 []: number of valid rows (≤ capacity)


def capacity(state: ReplayState) -> int:
    return jax.tree.leaves(state.data)[0].shape[0]


def init(example: Any, capacity: int) -> ReplayState:
    """Empty buffer for items shaped like `example` (leaves `[num_envs, ...]`)."""
    if capacity < 1:
        raise ValueError(f"replay capacity must be >= 1, got {capacity}")
    data = jax.tree.map(lambda x: jnp.zeros((capacity,) + x.shape, x.dtype), example)
    return ReplayState(data=data, write_index=jnp.zeros((), jnp.int32), size=jnp.zeros((), jnp.int32))


def add(state: ReplayState, batch: Any) -> ReplayState:
    """Writes a time-major slice (leaves `[U, num_envs, ...]`, U ≤ capacity) at the write head, wrapping."""
    cap = capacity(state)
    num_steps = jax.tree.leaves(batch)[0].shape[0]
    if num_steps > cap:
        raise ValueError(f"cannot add {num_steps} steps to a replay of capacity {cap}")
    rows = (state.write_index + jnp.arange(num_steps, dtype=jnp.int32)) % cap
    data = jax.tree.map(lambda buf, x: buf.at[rows].set(x.astype(buf.dtype)), state.data, batch)
    return ReplayState(
        data=data,
        write_index=(state.write_index + num_steps) % cap,
        size=jnp.minimum(state.size + num_steps, cap),
    )


def can_sample(state: ReplayState, sequence_length: int) -> chex.Array:
    return state.size >= sequence_length


def sample(state: ReplayState, key: chex.PRNGKey, batch_size: int, sequence_length: int) -> Any:
    """Uniformly samples `batch_size` windows of `sequence_length` consecutive steps of one env each.

    Every (env, start) pair whose window is fully written is equally likely. Returns leaves
    `[batch_size, sequence_length, ...]`. The caller must ensure `can_sample` (inside jit an empty
    buffer yields windows of zeros rather than an error).
    """
    cap = capacity(state)
    num_envs = jax.tree.leaves(state.data)[0].shape[1]
    env_key, start_key = jax.random.split(key)
    oldest = (state.write_index - state.size) % cap
    num_starts = jnp.maximum(state.size - sequence_length + 1, 1)
    env_idx = jax.random.randint(env_key, (batch_size,), 0, num_envs)
    offset = jax.random.randint(start_key, (batch_size,), 0, num_starts)
    rows = (oldest + offset[:, None] + jnp.arange(sequence_length)[None, :]) % cap  # [B, L]
    return jax.tree.map(lambda buf: buf[rows, env_idx[:, None]], state.data)
