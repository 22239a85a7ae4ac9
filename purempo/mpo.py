"""MPO policy improvement: E-step, decoupled M-step and their dual variables.

Abdolmaleki et al. 2018, "Maximum a Posteriori Policy Optimisation" (MPO) and "Relative Entropy
Regularized Policy Iteration"; action penalisation from Abdolmaleki et al. 2020 (MO-MPO).

E-step (non-parametric improvement), for N actions a_ij ~ π'(·|s_i) per state s_i:
    q_ij = softmax_j(Q(s_i, a_ij) / η),
    η ← argmin_η g(η) = η ε + η · mean_i log mean_j exp(Q(s_i, a_ij) / η)          (convex dual)
M-step (weighted maximum likelihood, decoupled trust regions, Eq. 4 of the 2018 paper):
    max_θ Σ_ij q_ij [log N(a_ij; μ_θ, σ') + log N(a_ij; μ', σ_θ)]
    s.t.  KL(π'_μ ‖ π_μ) ≤ ε_μ and KL(π'_σ ‖ π_σ) ≤ ε_σ  (optionally per action dimension),
enforced by Lagrange multipliers α_μ, α_σ with loss α·(ε − sg(KL)) and sg(α)·KL; optionally the policy's
penalty adds a proportional term to each learned α for the current update (`proportional_alpha`).

Dual variables are stored as logs, projected onto a fixed interval after every step and mapped through
exp, so they are positive and finite whatever the gradients do.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import chex
import jax
import jax.numpy as jnp

# Duals live in log space: an Adam step then changes them by a bounded *factor*, so η can follow Q
# through any reward scale. Projection onto [LOG_MIN, LOG_MAX] keeps every dual positive and finite.
LOG_MIN, LOG_MAX = -18.0, 18.0


def positive(raw: chex.Array) -> chex.Array:
    """Maps an unconstrained dual parameter to its positive value exp(clip(raw)) ∈ [1.5e-8, 6.6e7]."""
    return jnp.exp(jnp.clip(raw, LOG_MIN, LOG_MAX))


def inverse_positive(value: chex.Numeric) -> chex.Array:
    """Inverse of `positive` inside its range."""
    return jnp.log(jnp.asarray(value, jnp.float32))


def project_dual_params(params: "DualParams", min_alpha: chex.Numeric = 0.0) -> "DualParams":
    """Projects raw duals back into [LOG_MIN, LOG_MAX] after an optimiser step, and the KL multipliers α_μ, α_σ
    onto [min_alpha, ·]: a floor keeps the trust region on while its constraint is slack, so it does not have
    to climb back from ~0 (thousands of updates at a bounded Adam step) when the policy starts to move."""
    params = jax.tree.map(lambda x: jnp.clip(x, LOG_MIN, LOG_MAX), params)
    log_floor = jnp.log(jnp.maximum(min_alpha, jnp.exp(LOG_MIN)))
    return params._replace(alpha_mean=jnp.maximum(params.alpha_mean, log_floor),
                           alpha_std=jnp.maximum(params.alpha_std, log_floor))


class DualParams(NamedTuple):
    """Unconstrained dual parameters. `alpha_*` have shape `[D]` (per-dimension) or `[1]`."""

    temperature: chex.Array  # []
    penalty_temperature: chex.Array  # []
    alpha_mean: chex.Array
    alpha_std: chex.Array


def init_dual_params(
    action_dim: int,
    per_dim_constraining: bool,
    init_temperature: chex.Numeric,
    init_alpha_mean: chex.Numeric,
    init_alpha_std: chex.Numeric,
) -> DualParams:
    shape = (action_dim,) if per_dim_constraining else (1,)
    return DualParams(
        temperature=inverse_positive(init_temperature),
        penalty_temperature=inverse_positive(init_temperature),
        alpha_mean=jnp.full(shape, inverse_positive(init_alpha_mean)),
        alpha_std=jnp.full(shape, inverse_positive(init_alpha_std)),
    )


def init_categorical_dual_params(init_temperature: chex.Numeric, init_alpha: chex.Numeric) -> DualParams:
    """Duals of a categorical policy (`purempo.discrete`): η, and its one trust region's multiplier as
    `alpha_mean` `[1]`; `alpha_std` is empty `[0]` (no std to constrain) and `penalty_temperature` is unread."""
    return DualParams(
        temperature=inverse_positive(init_temperature),
        penalty_temperature=inverse_positive(init_temperature),
        alpha_mean=jnp.full((1,), inverse_positive(init_alpha)),
        alpha_std=jnp.zeros((0,), jnp.float32),
    )


def masked_mean(x: chex.Array, mask: Optional[chex.Array], axis=None) -> chex.Array:
    """Mean of x over `axis` counting only entries where `mask` (broadcast to x) is true; plain mean if None."""
    if mask is None:
        return jnp.mean(x, axis=axis)
    mask = jnp.broadcast_to(mask, x.shape)
    total = jnp.sum(jnp.where(mask, x, 0.0), axis=axis)
    return total / jnp.maximum(jnp.sum(mask, axis=axis), 1)


def e_step(q_values: chex.Array, temperature: chex.Numeric, epsilon: chex.Numeric,
           mask: Optional[chex.Array] = None):
    """Non-parametric E-step and temperature dual.

    Args:
      q_values: `[N, B]` values of N sampled actions for each of B states.
      temperature: η > 0 (differentiable).
      epsilon: KL bound ε of the improved distribution against the sampling policy.
      mask: optional bool `[B]`; states where it is false (e.g. terminal states, where the critic is never
        trained) do not enter the dual. Their weights are still returned; the M-step masks them too.

    Returns:
      weights `[N, B]`: softmax over N of Q/η, gradient stopped; each column sums to 1.
      temperature_loss: scalar `η·ε + η·mean_B(logsumexp_N(Q/η) − log N)`, differentiable in η.
    """
    chex.assert_rank(q_values, 2)
    q_values = jax.lax.stop_gradient(q_values)
    if mask is not None:  # keep non-finite values of masked states out of every sum (and gradient)
        q_values = jnp.where(mask[None, :], q_values, 0.0)
    tempered = q_values / temperature
    weights = jax.lax.stop_gradient(jax.nn.softmax(tempered, axis=0))
    log_num_actions = jnp.log(q_values.shape[0])
    log_mean_exp = jax.nn.logsumexp(tempered, axis=0) - log_num_actions
    temperature_loss = temperature * epsilon + temperature * masked_mean(log_mean_exp, mask)
    return weights, temperature_loss


def kl_weights_vs_uniform(weights: chex.Array) -> chex.Array:
    """KL(q ‖ uniform) per state for weights `[N, B]`; returns `[B]`. Diagnostic for the E-step ε."""
    n = weights.shape[0]
    return jnp.sum(weights * (jnp.log(jnp.maximum(weights, 1e-30)) + jnp.log(n)), axis=0)


def sample_gaussian(key: chex.PRNGKey, mean: chex.Array, std: chex.Array, num_samples: int,
                    antithetic: bool = False) -> chex.Array:
    """`[N, ...]` actions a = μ + σ·ξ for mean and std `[..., A]`, ξ ~ N(0, I).

    `antithetic`: ξ comes in mirrored pairs (ξ_j, −ξ_j), j < N/2 (antithetic variates, Hammersley & Morton
    1956): the sample mean of the actions is μ exactly, and a sample mean of Q(s, a) has no error from Q's
    part linear in a. Where Q is close to linear over the policy's spread, N mirrored actions estimate E_π Q
    better than N independent ones; where its curvature dominates, worse (each pair repeats (a − μ)²).
    """
    chex.assert_equal_shape([mean, std])
    if not antithetic:
        return mean + std * jax.random.normal(key, (num_samples,) + mean.shape)
    if num_samples % 2:
        raise ValueError(f"antithetic sampling needs an even number of samples, got {num_samples}")
    half = jax.random.normal(key, (num_samples // 2,) + mean.shape)
    return mean + std * jnp.concatenate([half, -half])


def gaussian_log_prob(x: chex.Array, mean: chex.Array, std: chex.Array) -> chex.Array:
    """Per-dimension log density of a diagonal Gaussian; broadcasts, returns the shape of x."""
    z = (x - mean) / std
    return -0.5 * z * z - jnp.log(std) - 0.5 * jnp.log(2.0 * jnp.pi)


def gaussian_kl(mean_p, std_p, mean_q, std_q) -> chex.Array:
    """Per-dimension KL(N(mean_p, std_p) ‖ N(mean_q, std_q)) (closed form)."""
    var_ratio = (std_p / std_q) ** 2
    return 0.5 * (var_ratio + ((mean_p - mean_q) / std_q) ** 2 - 1.0 - jnp.log(var_ratio))


class MStepStats(NamedTuple):
    kl_mean: chex.Array  # [D] per-dimension KL(π'_μ ‖ π_μ), mean over (unmasked) states
    kl_std: chex.Array  # [D]
    violation_mean: chex.Array  # shape of α_μ: constrained KL / its bound (> 1: the constraint is violated)
    violation_std: chex.Array  # shape of α_σ
    applied_alpha_mean: chex.Array  # shape of α_μ: the multiplier the policy's penalty used (learned + proportional)


def m_step(
    online_mean: chex.Array,
    online_std: chex.Array,
    target_mean: chex.Array,
    target_std: chex.Array,
    actions: chex.Array,
    weights: chex.Array,
    alpha_mean: chex.Array,
    alpha_std: chex.Array,
    epsilon_mean: chex.Numeric,
    epsilon_std: chex.Numeric,
    per_dim_constraining: bool,
    mask: Optional[chex.Array] = None,
    proportional_gain: chex.Numeric = 0.0,
    epsilon_per_dimension: bool = False,
    normalize_penalty: bool = False,
):
    """Decoupled weighted maximum likelihood with KL trust regions on mean and std.

    Args:
      online_mean, online_std: `[B, D]` parameters of π_θ (differentiable).
      target_mean, target_std: `[B, D]` parameters of the target policy π' (gradient stopped here).
      actions: `[N, B, D]` actions sampled from π'.
      weights: `[N, B]` E-step weights (sum over objectives allowed: each objective's column sums to 1).
      alpha_mean, alpha_std: positive multipliers, `[D]` if per-dimension else `[1]` (differentiable).
      epsilon_mean, epsilon_std: bounds on the KL summed over the D action dimensions. With
        `per_dim_constraining` each dimension gets its own multiplier and the bound ε/D, so the total KL
        allowed per update does not grow with the action dimension.
      mask: optional bool `[B]`: states that enter the losses (default: all).
      proportional_gain: the policy's penalty uses α + `proportional_alpha(KL/ε, proportional_gain)` per
        constraint (0: α alone); the multipliers' own loss is unchanged.
      epsilon_per_dimension: read ε as each dimension's bound instead (the summed KL may reach D·ε), so one
        setting moves every action dimension by as much whatever D is.
      normalize_penalty: divide the policy's loss by `1 + Σ penalties` (gradient stopped; see
        `normalized_policy_loss`).

    Returns:
      policy_loss: scalar for θ (multipliers held fixed).
      alpha_loss: scalar for the multipliers, `Σ α·(ε − sg(KL))`; d/dα = ε − KL.
      stats: `MStepStats` with per-dimension KLs.
    """
    chex.assert_rank([online_mean, online_std, target_mean, target_std], 2)
    chex.assert_rank([actions, weights], [3, 2])
    actions, weights, target_mean, target_std = jax.tree.map(
        jax.lax.stop_gradient, (actions, weights, target_mean, target_std)
    )
    # π_μ = N(μ_θ, σ') learns the mean; π_σ = N(μ', σ_θ) learns the std.
    log_prob_mean = jnp.sum(gaussian_log_prob(actions, online_mean, target_std), axis=-1)  # [N, B]
    log_prob_std = jnp.sum(gaussian_log_prob(actions, target_mean, online_std), axis=-1)
    weighted_nll = -masked_mean(jnp.sum(weights * (log_prob_mean + log_prob_std), axis=0), mask)

    state_mask = None if mask is None else mask[:, None]
    kl_mean = masked_mean(gaussian_kl(target_mean, target_std, online_mean, target_std), state_mask, axis=0)  # [D]
    kl_std = masked_mean(gaussian_kl(target_mean, target_std, target_mean, online_std), state_mask, axis=0)
    num_dims = online_mean.shape[-1]
    if per_dim_constraining:
        constrained_mean, constrained_std = kl_mean, kl_std
        if not epsilon_per_dimension:
            epsilon_mean, epsilon_std = epsilon_mean / num_dims, epsilon_std / num_dims
    else:
        constrained_mean, constrained_std = jnp.sum(kl_mean, keepdims=True), jnp.sum(kl_std, keepdims=True)
        if epsilon_per_dimension:
            epsilon_mean, epsilon_std = epsilon_mean * num_dims, epsilon_std * num_dims
    chex.assert_equal_shape([constrained_mean, alpha_mean])
    chex.assert_equal_shape([constrained_std, alpha_std])

    sg = jax.lax.stop_gradient
    violation_mean, violation_std = sg(constrained_mean) / epsilon_mean, sg(constrained_std) / epsilon_std
    penalty_mean = sg(alpha_mean) + proportional_alpha(violation_mean, proportional_gain)
    penalty_std = sg(alpha_std) + proportional_alpha(violation_std, proportional_gain)
    policy_loss = weighted_nll + jnp.sum(penalty_mean * constrained_mean) + jnp.sum(penalty_std * constrained_std)
    if normalize_penalty:
        policy_loss = normalized_policy_loss(policy_loss, penalty_mean, penalty_std)
    alpha_loss = jnp.sum(alpha_mean * (epsilon_mean - sg(constrained_mean))) + jnp.sum(
        alpha_std * (epsilon_std - sg(constrained_std))
    )
    stats = MStepStats(kl_mean=kl_mean, kl_std=kl_std, violation_mean=violation_mean, violation_std=violation_std,
                       applied_alpha_mean=penalty_mean)
    return policy_loss, alpha_loss, stats


def normalized_policy_loss(policy_loss: chex.Array, penalty_mean: chex.Array, penalty_std: chex.Array) -> chex.Array:
    """`policy_loss / (1 + Σ penalty_mean + Σ penalty_std)`, the divisor's gradient stopped.

    The M-step loss `NLL + Σ α·KL` has the same minimiser after division by a positive constant, but not the
    same Adam steps. Adam divides by a running RMS of the gradient with a ~1/(1 − β₂) = 1,000-update memory, so
    while a multiplier climbs by orders of magnitude (Adam on log α after a violation) the gradient outgrows that
    RMS and the steps grow past the learning rate; the suspected feedback (not isolated, docs/journal.md §7):
    the larger the penalty, the further the policy moves, the further the KL overshoots, the faster α climbs.
    Dividing by the penalties keeps the gradient's scale that of one weighted NLL or KL term whatever α is; the
    weighting between likelihood and trust region is unchanged.
    """
    sg = jax.lax.stop_gradient
    return policy_loss / (1.0 + jnp.sum(sg(penalty_mean)) + jnp.sum(sg(penalty_std)))


MAX_VIOLATION = 10.0


def proportional_alpha(violation: chex.Array, gain: chex.Numeric) -> chex.Array:
    """Proportional part of a KL multiplier: gain · clip(KL/ε − 1, 0, MAX_VIOLATION) (0 while the bound holds).

    The learned α (Adam on log α) is the integral part of the controller: it moves by about `dual_lr` per
    update whatever the violation, so after a quiet period it needs hundreds of updates to reach a value that
    holds a suddenly violated bound, and the policy moves unconstrained meanwhile. Added to it for the current
    update only, this term answers a violation at once, in proportion to its size, and vanishes when the KL is
    back within its bound, so nothing accumulates (a PI-controlled Lagrange multiplier: Stooke, Achiam and Abbeel
    2020, "Responsive Safety in Reinforcement Learning by PID Lagrangian Methods"). Gradient stopped.
    """
    return gain * jnp.clip(jax.lax.stop_gradient(violation) - 1.0, 0.0, MAX_VIOLATION)


def action_penalty_cost(actions: chex.Array, low: float = -1.0, high: float = 1.0) -> chex.Array:
    """MO-MPO action penalty −‖a − clip(a)‖₂ over the last axis: `[..., D] → [...]`."""
    return -jnp.linalg.norm(actions - jnp.clip(actions, low, high), axis=-1)
