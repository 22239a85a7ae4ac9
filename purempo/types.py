"""Data containers shared by acting, replay and learning."""

from __future__ import annotations

from typing import NamedTuple

import chex


class Transition(NamedTuple):
    """One env step. Stored time-major in replay as `[capacity, num_envs, ...]` without `next_obs` (rebuilt from
    the next row's `obs`, or kept aside where truncated: `purempo.replay`), sampled whole as `[B, L, ...]`."""

    obs: chex.Array  # [O] raw (unnormalised) observation s_t
    action: chex.Array  # [A] unclipped sample from the behaviour policy, the env received clip(a, -1, 1); or, for a
    #                     discrete env, the int32 [] index of the action taken
    reward: chex.Array  # [] reward r_t times Config.reward_scale (as acting stores it; evaluation is unscaled)
    terminated: chex.Array  # bool []: s_{t+1} is terminal (no bootstrap)
    truncated: chex.Array  # bool []: the time limit ended the episode at s_{t+1} (bootstrap, cut the trace)
    next_obs: chex.Array  # [O] s_{t+1}: the true final observation when the episode ended here
    behaviour_log_prob: chex.Array  # [] log b(a_t|s_t) of the policy that acted
