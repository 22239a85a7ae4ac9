"""Categorical MPO: E-step, temperature dual and M-step for K discrete actions.

Abdolmaleki et al. 2018, "Maximum a Posteriori Policy Optimisation" (MPO) and "Relative Entropy Regularized
Policy Iteration"; the categorical loss follows Acme's `CategoricalMPO` (acme/agents/jax/mpo/categorical_mpo.py).

The critic gives Q(s, a) for every one of the K actions, so every expectation over actions is an exact sum
(no sampled actions, no log N correction as in `mpo.e_step`).

E-step (non-parametric improvement of the target policy π' under KL(q ‖ π') ≤ ε):
    q(a|s) = π'(a|s) exp(Q(s, a)/η) / Σ_b π'(b|s) exp(Q(s, b)/η),
    η ← argmin_η g(η) = η ε + η · mean_s log Σ_a π'(a|s) exp(Q(s, a)/η)               (convex dual)
At the dual's optimum η*, KL(q ‖ π') = ε for every batch whose constraint is active (`e_step_kl`).
M-step (weighted maximum likelihood with a trust region):
    max_θ mean_s Σ_a q(a|s) log π_θ(a|s)   s.t.  mean_s KL(π'(·|s) ‖ π_θ(·|s)) ≤ ε_π,
enforced by a Lagrange multiplier α with loss α·(ε_π − sg(KL)) and sg(α)·KL; optionally the policy's penalty
adds `mpo.proportional_alpha` for the current update. V(s') = Σ_a π'(a|s') Q'(s', a) (`expected_value`).

`floored_log_probs` mixes the softmax with a uniform floor so that every action keeps probability ≥ min_prob:
log π(a|s) stays finite and the M-step's KL(π' ‖ π_θ) cannot blow up on an action π_θ has given up.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import chex
import jax
import jax.numpy as jnp

from purempo.mpo import masked_mean, proportional_alpha


def floored_log_probs(logits: chex.Array, min_prob: chex.Numeric) -> chex.Array:
    """log of the mixture (1 − K·min_prob)·softmax(logits) + min_prob over the last axis: `[..., K] → [..., K]`.

    Every action gets probability ≥ min_prob, and the probabilities still sum to 1. Requires
    0 ≤ min_prob < 1/K (not checked, so that min_prob may be a traced, vmapped hyper-parameter). Computed as
    logaddexp(log(1 − K·min_prob) + log_softmax(logits), log min_prob): stable for any logits, and exactly
    log_softmax for min_prob = 0 (logaddexp(x, −inf) = x).
    """
    num_actions = logits.shape[-1]
    min_prob = jnp.asarray(min_prob, logits.dtype)
    log_softmax = jax.nn.log_softmax(logits, axis=-1)
    return jnp.logaddexp(jnp.log1p(-num_actions * min_prob) + log_softmax, jnp.log(min_prob))


def e_step(q_values: chex.Array, log_prior: chex.Array, temperature: chex.Numeric, epsilon: chex.Numeric,
           mask: Optional[chex.Array] = None):
    """Exact non-parametric E-step and temperature dual over K actions.

    Args:
      q_values: `[B, K]` Q'(s, a) of every action in each of B states (gradient stopped).
      log_prior: `[B, K]` log π'(a|s) of the target policy (gradient stopped).
      temperature: η > 0 (differentiable).
      epsilon: KL bound ε of the improved distribution q against π'.
      mask: optional bool `[B]`; states where it is false (e.g. terminal states, where the critic is never
        trained) do not enter the dual, and their Q and log π' are replaced by 0 first so that non-finite values
        cannot reach any sum or gradient. Their weights (uniform) are still returned; the M-step masks them too.

    Returns:
      weights `[B, K]`: q(a|s) = softmax over K of (log π' + Q/η), gradient stopped; each row sums to 1.
      temperature_loss: scalar `η·ε + η·mean_B logsumexp_K(log π' + Q/η)`, differentiable in η only.
    """
    chex.assert_rank([q_values, log_prior], 2)
    chex.assert_equal_shape([q_values, log_prior])
    q_values, log_prior = jax.lax.stop_gradient(q_values), jax.lax.stop_gradient(log_prior)
    if mask is not None:  # keep non-finite values of masked states out of every sum (and gradient)
        q_values = jnp.where(mask[:, None], q_values, 0.0)
        log_prior = jnp.where(mask[:, None], log_prior, 0.0)
    logits = log_prior + q_values / temperature
    weights = jax.lax.stop_gradient(jax.nn.softmax(logits, axis=-1))
    log_normalizer = jax.nn.logsumexp(logits, axis=-1)  # [B]: log Σ_a π'(a|s) exp(Q(s, a)/η)
    temperature_loss = temperature * epsilon + temperature * masked_mean(log_normalizer, mask)
    return weights, temperature_loss


def kl(log_p: chex.Array, log_q: chex.Array) -> chex.Array:
    """KL(p ‖ q) = Σ_K p (log p − log q) over the last axis: `[..., K] → [...]`, with p = exp(log_p).

    Actions with p = 0 contribute 0 even where log q = −inf; both logs are replaced there before the
    arithmetic, so neither the value nor its gradient sees inf − inf.
    """
    chex.assert_equal_shape([log_p, log_q])
    p = jnp.exp(log_p)
    support = p > 0
    safe_log_p = jnp.where(support, log_p, 0.0)
    safe_log_q = jnp.where(support, log_q, 0.0)
    return jnp.sum(jnp.where(support, p * (safe_log_p - safe_log_q), 0.0), axis=-1)


def expected_value(log_probs: chex.Array, q_values: chex.Array) -> chex.Array:
    """Σ_a π(a|s) Q(s, a) over the last axis: `[..., K] → [...]`, e.g. V(s') = Σ_a π'(a|s') Q'(s', a)."""
    chex.assert_equal_shape([log_probs, q_values])
    return jnp.sum(jnp.exp(log_probs) * q_values, axis=-1)


def e_step_kl(weights: chex.Array, log_prior: chex.Array) -> chex.Array:
    """KL(q ‖ π') per state for weights and log π' `[B, K]`; returns `[B]`. Diagnostic: ε at the dual's optimum."""
    chex.assert_rank([weights, log_prior], 2)
    return kl(jnp.log(weights), log_prior)


class MStepStats(NamedTuple):
    kl: chex.Array  # [1] KL(π' ‖ π_θ), mean over (unmasked) states
    violation: chex.Array  # [1] KL / ε_π (> 1: the constraint is violated)
    applied_alpha: chex.Array  # [1] the multiplier the policy's penalty used (learned + proportional)


def m_step(
    online_log_probs: chex.Array,
    target_log_probs: chex.Array,
    weights: chex.Array,
    alpha: chex.Array,
    epsilon_policy: chex.Numeric,
    mask: Optional[chex.Array] = None,
    proportional_gain: chex.Numeric = 0.0,
):
    """Weighted maximum likelihood over K actions with a KL(π' ‖ π_θ) trust region.

    Args:
      online_log_probs: `[B, K]` log π_θ(a|s) (differentiable).
      target_log_probs: `[B, K]` log π'(a|s) of the target policy (gradient stopped here).
      weights: `[B, K]` E-step weights q(a|s) (gradient stopped here).
      alpha: `[1]` positive multiplier (differentiable).
      epsilon_policy: bound ε_π on the mean KL(π' ‖ π_θ).
      mask: optional bool `[B]`: states that enter the losses (default: all).
      proportional_gain: the policy's penalty uses α + `proportional_alpha(KL/ε_π, proportional_gain)`
        (0: α alone); the multiplier's own loss is unchanged.

    Returns:
      policy_loss: scalar for θ (multiplier held fixed), `−mean_B Σ_a q log π_θ + Σ penalty·KL`.
      alpha_loss: scalar for the multiplier, `Σ α·(ε_π − sg(KL))`; d/dα = ε_π − KL.
      stats: `MStepStats`.
    """
    chex.assert_rank([online_log_probs, target_log_probs, weights, alpha], [2, 2, 2, 1])
    chex.assert_equal_shape([online_log_probs, target_log_probs, weights])
    target_log_probs, weights = jax.lax.stop_gradient((target_log_probs, weights))
    weighted_nll = -masked_mean(jnp.sum(weights * online_log_probs, axis=-1), mask)
    mean_kl = jnp.reshape(masked_mean(kl(target_log_probs, online_log_probs), mask), (1,))
    chex.assert_equal_shape([mean_kl, alpha])

    sg = jax.lax.stop_gradient
    violation = sg(mean_kl) / epsilon_policy
    penalty = sg(alpha) + proportional_alpha(violation, proportional_gain)
    policy_loss = weighted_nll + jnp.sum(penalty * mean_kl)
    alpha_loss = jnp.sum(alpha * (epsilon_policy - sg(mean_kl)))
    stats = MStepStats(kl=mean_kl, violation=violation, applied_alpha=penalty)
    return policy_loss, alpha_loss, stats
