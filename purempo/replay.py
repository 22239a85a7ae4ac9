"""On-device, time-major ring replay of `Transition`s that stores each observation once.

The ring's leaves are `[capacity, num_envs, ...]`. All envs write in lockstep, so a single write position and
fill level (device scalars) describe the whole buffer: no host counters, no rolls, and an insert writes only
the `[U, num_envs, ...]` rows it replaces. Keys are passed in, never stored.

Observations are stored once. Row t of env e keeps `obs` s_t but not `next_obs` s_{t+1}, which is:
- the `obs` of row t + 1 of the same env while the episode goes on;
- nothing where the episode terminated at t: discount 0, and the learner masks that next observation
  (`train.mpo_loss` replaces it by `obs`); `sample` returns the row's own `obs` there;
- the true final observation where the time limit truncated the episode at t (row t + 1 starts the next
  episode). These are kept in a small side ring per env, `final_obs` `[K, num_envs, O]`, written in turn
  (`final_count[e]` is env e's next slot); row t records the slot it wrote in `final_slot` (a small int).

Why K = capacity // episode_length + 2 slots suffice: a truncation needs `episode_step >= episode_length`
(`envs.step`) and every episode end resets that counter, so two truncations of one env are at least
episode_length steps apart. Say the truncation at step t of env e wrote slot s; the next write to s is that
env's K-th truncation after it, at a step t' >= t + K * episode_length > t + capacity (as K * episode_length >
(capacity // episode_length + 1) * episode_length > capacity). Once rows up to t' are written the ring holds
steps (t' - capacity, t'] of that env only, and t <= t' - capacity lies outside: row t has been overwritten
before (or, within one `add` of U <= capacity rows, at the same time as) its slot. So every row in the buffer
points at its own final observation, and the slots written by one `add` are distinct.

`sample` serves windows of L consecutive rows of one env with their next observations rebuilt, so it reads
L + 1 rows, all written and before the write head: it never mixes old and new data.

Every function works unchanged on a slice of the envs (`env_axes`): nothing depends on the global env count,
so a replay sharded over devices along the env axis is used one device's envs at a time.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from purempo.types import Transition


class Stored(NamedTuple):
    """The ring: one row per env step, leaves `[capacity, num_envs, ...]`; `Transition` without `next_obs`."""

    obs: chex.Array  # [C, E, O] in the replay's observation dtype
    action: chex.Array  # [C, E, A]
    reward: chex.Array  # [C, E]
    terminated: chex.Array  # bool [C, E]
    truncated: chex.Array  # bool [C, E]
    behaviour_log_prob: chex.Array  # [C, E]
    final_slot: chex.Array  # small int [C, E]: the final_obs slot of a truncated row (0 elsewhere, unread)


class ReplayState(NamedTuple):
    data: Stored  # leaves [capacity, num_envs, ...]
    final_obs: chex.Array  # [K, num_envs, O]: true final observations of truncated rows, in the obs dtype
    final_count: chex.Array  # int32 [num_envs]: each env's next final_obs slot (its truncations so far, mod K)
    write_index: chex.Array  # int32 []: next row to write
    size: chex.Array  # int32 []: number of valid rows (≤ capacity)


def capacity(state: ReplayState) -> int:
    return state.data.obs.shape[0]


def num_final_slots(capacity: int, episode_length: int) -> int:
    """K, the side ring's slots per env (see the module docstring for why it suffices)."""
    return capacity // episode_length + 2


def _slot_dtype(num_slots: int):
    for dtype in (jnp.int8, jnp.int16):
        if num_slots <= jnp.iinfo(dtype).max:
            return dtype
    return jnp.int32


def init(example: Transition, capacity: int, episode_length: int, obs_dtype=jnp.float32) -> ReplayState:
    """Empty buffer for transitions shaped like `example` (leaves `[num_envs, ...]`).

    `episode_length` is the env's time limit (it sizes the side ring of final observations); observations
    (`obs` and the final ones) are stored as `obs_dtype`, the other fields in their own dtypes.
    """
    if capacity < 1:
        raise ValueError(f"replay capacity must be >= 1, got {capacity}")
    if episode_length < 1:
        raise ValueError(f"replay episode_length must be >= 1, got {episode_length}")
    obs_dtype = jnp.dtype(obs_dtype)
    num_slots = num_final_slots(capacity, episode_length)

    def ring(x, dtype=None):
        return jnp.zeros((capacity,) + x.shape, x.dtype if dtype is None else dtype)

    num_envs, obs_dim = example.obs.shape
    data = Stored(
        obs=ring(example.obs, obs_dtype),
        action=ring(example.action),
        reward=ring(example.reward),
        terminated=ring(example.terminated),
        truncated=ring(example.truncated),
        behaviour_log_prob=ring(example.behaviour_log_prob),
        final_slot=ring(example.truncated, _slot_dtype(num_slots)),
    )
    return ReplayState(
        data=data,
        final_obs=jnp.zeros((num_slots, num_envs, obs_dim), obs_dtype),
        final_count=jnp.zeros((num_envs,), jnp.int32),
        write_index=jnp.zeros((), jnp.int32),
        size=jnp.zeros((), jnp.int32),
    )


def add(state: ReplayState, transitions: Transition) -> ReplayState:
    """Writes a time-major unroll (leaves `[U, num_envs, ...]`, U ≤ capacity) at the write head, wrapping.

    The unroll's truncated rows also write their `next_obs` to the side ring; its other `next_obs` are dropped.
    """
    cap = capacity(state)
    num_steps = transitions.obs.shape[0]
    if num_steps > cap:
        raise ValueError(f"cannot add {num_steps} steps to a replay of capacity {cap}")
    num_slots, num_envs = state.final_obs.shape[:2]
    truncated = transitions.truncated.astype(bool)  # [U, E]
    # Each truncated row takes its env's next slot, in time order.
    earlier = jnp.cumsum(truncated, axis=0, dtype=jnp.int32) - truncated  # truncations before it in this unroll
    slot = (state.final_count[None, :] + earlier) % num_slots  # [U, E]
    env = jnp.broadcast_to(jnp.arange(num_envs)[None, :], slot.shape)
    final_obs = state.final_obs.at[jnp.where(truncated, slot, num_slots), env].set(  # non-truncated: dropped
        transitions.next_obs.astype(state.final_obs.dtype), mode="drop")
    rows = (state.write_index + jnp.arange(num_steps, dtype=jnp.int32)) % cap
    new = Stored(
        obs=transitions.obs,
        action=transitions.action,
        reward=transitions.reward,
        terminated=transitions.terminated,
        truncated=transitions.truncated,
        behaviour_log_prob=transitions.behaviour_log_prob,
        final_slot=jnp.where(truncated, slot, 0),
    )
    data = jax.tree.map(lambda buf, x: buf.at[rows].set(x.astype(buf.dtype)), state.data, new)
    return ReplayState(
        data=data,
        final_obs=final_obs,
        final_count=(state.final_count + jnp.sum(truncated, axis=0, dtype=jnp.int32)) % num_slots,
        write_index=(state.write_index + num_steps) % cap,
        size=jnp.minimum(state.size + num_steps, cap),
    )


def can_sample(state: ReplayState, sequence_length: int) -> chex.Array:
    """Whether windows of `sequence_length` can be served: they read sequence_length + 1 rows."""
    return state.size >= sequence_length + 1


def sample(state: ReplayState, key: chex.PRNGKey, batch_size: int, sequence_length: int) -> Transition:
    """Uniformly samples `batch_size` windows of `sequence_length` consecutive steps of one env each.

    Every (env, start) pair whose window and the row after it are written (before the write head) is equally
    likely. Returns a `Transition` with leaves `[batch_size, sequence_length, ...]`: `obs` and `next_obs` in
    float32, `next_obs` rebuilt as the module docstring says (the row's own `obs` where it terminated), the
    other fields as stored. The caller must ensure `can_sample` (inside jit an empty buffer yields windows of
    zeros rather than an error).
    """
    cap, length = capacity(state), sequence_length
    num_envs = state.data.obs.shape[1]
    env_key, start_key = jax.random.split(key)
    oldest = (state.write_index - state.size) % cap
    num_starts = jnp.maximum(state.size - length, 1)
    env_idx = jax.random.randint(env_key, (batch_size,), 0, num_envs)[:, None]  # [B, 1]
    offset = jax.random.randint(start_key, (batch_size,), 0, num_starts)
    rows = (oldest + offset[:, None] + jnp.arange(length + 1)[None, :]) % cap  # [B, L + 1]
    window = state.data.obs[rows, env_idx].astype(jnp.float32)  # [B, L + 1, O]
    here = rows[:, :length]
    data = jax.tree.map(lambda buf: buf[here, env_idx], state.data)
    obs, following = window[:, :length], window[:, 1:]
    final = state.final_obs[data.final_slot.astype(jnp.int32), env_idx].astype(jnp.float32)  # [B, L, O]
    next_obs = jnp.where(data.truncated[..., None], final,
                         jnp.where(data.terminated[..., None], obs, following))
    return Transition(obs=obs, action=data.action, reward=data.reward, terminated=data.terminated,
                      truncated=data.truncated, next_obs=next_obs, behaviour_log_prob=data.behaviour_log_prob)


def env_axes(state: ReplayState) -> ReplayState:
    """The state's structure with, per leaf, the index of its env axis, or None for the shared scalars.

    Slicing every leaf along its env axis gives the replay of those envs, which every function here accepts.
    """
    return ReplayState(data=jax.tree.map(lambda _: 1, state.data), final_obs=1, final_count=0,
                       write_index=None, size=None)


def nbytes_per_transition(state: ReplayState) -> float:
    """Bytes of the whole replay state per stored transition (capacity × num_envs), from static shapes only
    (so also of a `jax.eval_shape` result)."""
    total = sum(math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize for leaf in jax.tree.leaves(state))
    num_envs = state.data.obs.shape[1]
    return float(total) / (capacity(state) * num_envs)
