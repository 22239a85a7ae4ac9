"""Retrace(λ) critic targets (Munos et al. 2016, "Safe and efficient off-policy RL").

For one sequence of T transitions (s_t, a_t, r_t, s_{t+1}):

    G_{T-1} = r_{T-1} + d_{T-1} · V(s_T)
    G_t     = r_t + d_t · ( V(s_{t+1}) + c_{t+1} · (G_{t+1} − Q(s_{t+1}, a_{t+1})) )
    c_t     = λ · min(1, π(a_t|s_t) / b(a_t|s_t))

with V(s) = E_{a~π} Q(s, a) and d_t = γ·(1 − terminated_t), where terminated_t says that transition t ended
in a terminal state s_{t+1} (`Transition.terminated`). Batch with `jax.vmap`.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp


def truncated_importance_weights(log_rhos: chex.Array, lambda_: chex.Numeric) -> chex.Array:
    """c_t = λ·min(1, exp(log ρ_t)). Any shape."""
    return lambda_ * jnp.minimum(1.0, jnp.exp(log_rhos))


def retrace_targets(
    q_t: chex.Array,
    v_tp1: chex.Array,
    r_t: chex.Array,
    discount_t: chex.Array,
    log_rhos: chex.Array,
    truncated_t: chex.Array,
    lambda_: chex.Numeric,
) -> chex.Array:
    """Retrace targets for ONE sequence. Every input is `[T]`; returns `G` `[T]`.

    Args:
      q_t: `Q'(s_t, a_t)` for the actions actually taken.
      v_tp1: `E_{a~π} Q'(s_{t+1}, a)`, the value of the next state (the true final state at a time limit).
        Ignored (may be NaN or inf) where `discount_t` is 0.
      r_t: reward of transition t.
      discount_t: `γ·(1 − terminated_t)`; zero stops bootstrapping and cuts the trace.
      log_rhos: `log π(a_t|s_t) − log b(a_t|s_t)`.
      truncated_t: bool, transition t ended its episode at a time limit: G_t still bootstraps from
        `v_tp1[t]` (the true final state), but the trace is cut, since step t+1 belongs to a new episode.
      lambda_: trace coefficient λ ∈ [0, 1].

    No gradient flows through the result.
    """
    chex.assert_rank([q_t, v_tp1, r_t, discount_t, log_rhos, truncated_t], 1)
    chex.assert_equal_shape([q_t, v_tp1, r_t, discount_t, log_rhos, truncated_t])
    q_t, v_tp1, r_t, discount_t, log_rhos = jax.tree.map(
        jax.lax.stop_gradient, (q_t, v_tp1, r_t, discount_t, log_rhos)
    )
    c_t = truncated_importance_weights(log_rhos, lambda_)
    # Shift so that step t sees (c_{t+1}, Q(s_{t+1}, a_{t+1})); the last step has no successor.
    zero = jnp.zeros((1,), q_t.dtype)
    c_tp1 = jnp.where(truncated_t, 0.0, jnp.concatenate([c_t[1:], zero]))
    q_tp1 = jnp.concatenate([q_t[1:], zero])

    def backward(g_tp1, xs):
        r, d, v, c_next, q_next = xs
        # Select rather than multiply: 0 · NaN (a terminal state's value, a cut trace) would still be NaN.
        trace = jnp.where(c_next > 0.0, c_next * (g_tp1 - q_next), 0.0)
        g = r + jnp.where(d > 0.0, d * (v + trace), 0.0)
        return g, g

    _, targets = jax.lax.scan(
        backward, jnp.zeros((), q_t.dtype), (r_t, discount_t, v_tp1, c_tp1, q_tp1), reverse=True
    )
    return jax.lax.stop_gradient(targets)


def batched_retrace_targets(q_t, v_tp1, r_t, discount_t, log_rhos, truncated_t, lambda_) -> chex.Array:
    """`retrace_targets` over a batch of sequences: inputs `[B, T]`, output `[B, T]`."""
    return jax.vmap(retrace_targets, in_axes=(0, 0, 0, 0, 0, 0, None))(
        q_t, v_tp1, r_t, discount_t, log_rhos, truncated_t, lambda_
    )
