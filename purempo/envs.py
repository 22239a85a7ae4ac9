"""Brax environments, vectorised, with a time limit and an auto-reset of our own.

Brax's `EpisodeWrapper` + `AutoResetWrapper` lose the final observation of a truncated episode (it is
replaced by a cached first observation) and restart every episode of an env from the same state. Here:
- `terminated` (the task says the episode ended) and `truncated` (the time limit was hit) are kept apart;
- `final_obs` is always the true observation after the step, used to bootstrap at a time limit;
- a finished env restarts from a fresh initial state: one drawn uniformly (fresh key each time) from a pool
  of `env.reset` states drawn once at `reset`, or, with no pool, from `env.reset` itself. The pool avoids
  running (and compiling) Brax's reset inside every training step; with thousands of pool states the starts
  are as varied as fresh resets for practical purposes, while Brax's wrapper reuses one state per env.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from typing import Any, NamedTuple, Optional, Tuple

import chex
import jax
import jax.numpy as jnp

with contextlib.redirect_stdout(io.StringIO()):  # mujoco's optional-backend probe prints to stdout
    from brax import envs as brax_envs


def available() -> Tuple[str, ...]:
    """Names accepted by `brax.envs.get_environment` (Brax keeps its registry in `envs._envs`)."""
    return tuple(sorted(brax_envs._envs))


def make(name: str, backend: Optional[str] = None) -> brax_envs.Env:
    """The raw (unwrapped) Brax environment `name`."""
    if name not in available():
        raise ValueError(f"unknown env {name!r}; valid names: {', '.join(available())}")
    kwargs = {} if backend is None else {"backend": backend}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Brax System, piplines and environments")
        return brax_envs.get_environment(name, **kwargs)


def observation_size(env: brax_envs.Env) -> int:
    """Observation width, found by tracing `env.reset` (Brax's `env.observation_size` runs it eagerly, op by op,
    which costs seconds of compilation)."""
    return jax.eval_shape(env.reset, jax.random.PRNGKey(0)).obs.shape[-1]


class EnvState(NamedTuple):
    """Batched state of `num_envs` environments (leading axis E)."""

    brax_state: Any  # brax.envs.State with leaves [E, ...]
    episode_step: chex.Array  # int32 [E]: steps taken in the current episode
    episode_return: chex.Array  # float32 [E]: unscaled return so far in the current episode
    reset_pool: Any = None  # brax.envs.State with leaves [P, ...] that finished envs restart from; None: env.reset


class StepResult(NamedTuple):
    final_obs: chex.Array  # [E, O] observation after the step (before any reset)
    reward: chex.Array  # [E]
    terminated: chex.Array  # bool [E]
    truncated: chex.Array  # bool [E]: time limit reached and not terminated
    finished_return: chex.Array  # [E] return of the episode that ended at this step (0 where none ended)


def reset(env: brax_envs.Env, key: chex.PRNGKey, num_envs: int, pool_size: int = 0) -> EnvState:
    """`num_envs` fresh envs and, if `pool_size` > 0, a pool of `pool_size` more initial states for restarts."""
    states = jax.vmap(env.reset)(jax.random.split(key, num_envs + pool_size))
    brax_state = jax.tree.map(lambda x: x[:num_envs], states)
    pool = jax.tree.map(lambda x: x[num_envs:], states) if pool_size > 0 else None
    return EnvState(
        brax_state=brax_state,
        episode_step=jnp.zeros((num_envs,), jnp.int32),
        episode_return=jnp.zeros((num_envs,), jnp.float32),
        reset_pool=pool,
    )


def initial_states(env: brax_envs.Env, key: chex.PRNGKey, num: int, pool=None):
    """`num` initial states: drawn uniformly from `pool` (leaves `[P, ...]`) if given, else from `env.reset`."""
    if pool is None:
        return jax.vmap(env.reset)(jax.random.split(key, num))
    size = jax.tree.leaves(pool)[0].shape[0]
    index = jax.random.randint(key, (num,), 0, size)
    return jax.tree.map(lambda x: x[index], pool)


def observation(state: EnvState) -> chex.Array:
    """Current observations `[E, O]` (the first observation of a new episode after a reset)."""
    return state.brax_state.obs


def step(
    env: brax_envs.Env, state: EnvState, action: chex.Array, key: chex.PRNGKey, episode_length: int
) -> tuple[EnvState, StepResult]:
    """Steps every env with `action` `[E, A]` (already inside the action bounds), resetting finished ones."""
    num_envs = state.episode_step.shape[0]
    stepped = jax.vmap(env.step)(state.brax_state, action)
    episode_step = state.episode_step + 1
    terminated = stepped.done > 0.5
    truncated = jnp.logical_and(episode_step >= episode_length, jnp.logical_not(terminated))
    done = jnp.logical_or(terminated, truncated)
    episode_return = state.episode_return + stepped.reward

    fresh = initial_states(env, key, num_envs, state.reset_pool)

    def pick(new, old):
        mask = done.reshape(done.shape + (1,) * (old.ndim - 1))
        return jnp.where(mask, new, old)

    next_brax_state = jax.tree.map(pick, fresh, stepped)
    next_state = EnvState(
        brax_state=next_brax_state,
        episode_step=jnp.where(done, 0, episode_step),
        episode_return=jnp.where(done, 0.0, episode_return),
        reset_pool=state.reset_pool,
    )
    result = StepResult(
        final_obs=stepped.obs,
        reward=stepped.reward,
        terminated=terminated,
        truncated=truncated,
        finished_return=jnp.where(done, episode_return, 0.0),
    )
    return next_state, result


class Episodes(NamedTuple):
    """Outcome of evaluation episodes run in parallel (leading axis E)."""

    returns: chex.Array  # [E] undiscounted return
    lengths: chex.Array  # int32 [E] steps until termination or the time limit
    final_obs: chex.Array  # [E, O] observation at the episode's last step (the terminal one if it terminated)


def evaluate(
    env: brax_envs.Env, policy_fn, key: chex.PRNGKey, num_episodes: int, episode_length: int, pool=None
) -> Episodes:
    """Runs `num_episodes` full episodes in parallel and returns their `Episodes`.

    `policy_fn(obs [E, O], key) -> action [E, A]` must return actions inside the bounds; it gets a fresh key
    every step (a deterministic policy ignores it). Episodes start from `initial_states(env, k, num_episodes,
    pool)` with `k` the first half of `jax.random.split(key)`, and end at termination or after `episode_length` steps; rewards after the end are ignored.
    """
    start_key, policy_key = jax.random.split(key)
    brax_state = initial_states(env, start_key, num_episodes, pool)

    def body(carry, step_key):
        brax_state, alive, total, length, final_obs = carry
        next_state = jax.vmap(env.step)(brax_state, policy_fn(brax_state.obs, step_key))
        # Finished episodes keep stepping (lockstep) from their terminal state, where Brax's physics can
        # produce NaN (e.g. a fallen walker2d): select, since 0 * NaN would still poison the return.
        total = total + jnp.where(alive, next_state.reward, 0.0)
        length = length + alive.astype(jnp.int32)
        final_obs = jnp.where(alive[:, None], next_state.obs, final_obs)
        alive = alive & (next_state.done < 0.5)
        return (next_state, alive, total, length, final_obs), None

    init = (brax_state, jnp.ones((num_episodes,), bool), jnp.zeros((num_episodes,)),
            jnp.zeros((num_episodes,), jnp.int32), brax_state.obs)
    (_, _, total, length, final_obs), _ = jax.lax.scan(
        body, init, jax.random.split(policy_key, episode_length))
    return Episodes(returns=total, lengths=length, final_obs=final_obs)
