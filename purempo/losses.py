"""MPO's two losses on network outputs: policy evaluation (critic) and policy improvement (policy and duals).

Both are pure functions of arrays, so they can be tested against closed forms without networks; `train.py`
applies the networks and sums them (their parameters do not interact).
"""

from __future__ import annotations

from typing import Dict, NamedTuple, Optional

import chex
import jax
import jax.numpy as jnp

from purempo import distributional, mpo
from purempo.retrace import batched_retrace_targets


def pessimistic_value(q_members: chex.Array, pessimism: chex.Numeric) -> chex.Array:
    """Ensemble estimate `mean_k Q_k − pessimism · std_k Q_k` (population std over the K members).

    With K = 2 and pessimism 1 this is min(Q_1, Q_2), the clipped double-Q of TD3 (Fujimoto et al. 2018); larger
    K gives the lower-confidence-bound form of ensemble methods (e.g. Lee et al. 2021, SUNRISE). Members agree
    where the replay is dense and disagree where it is thin, so the E-step and the bootstrapped targets value
    rarely visited states (a cart near its rail) below the well-known ones.

    Args:
      q_members: `[K, ...]` the members' values.
      pessimism: β ≥ 0 (0: the ensemble mean).

    Returns: `[...]`.
    """
    chex.assert_rank(pessimism, 0)
    mean = jnp.mean(q_members, axis=0)
    if q_members.shape[0] == 1:
        return mean
    return mean - pessimism * jnp.std(q_members, axis=0)


def critic_loss(
    q_online: chex.Array,
    q_target_taken: chex.Array,
    v_tp1: chex.Array,
    rewards: chex.Array,
    discounts: chex.Array,
    log_rhos: chex.Array,
    truncated: chex.Array,
    lambda_: chex.Numeric,
):
    """Squared error of the online critic against Retrace targets built from the target networks.

    Args (all `[B, L]`, except `q_online`):
      q_online: Q_φ(s_t, a_t), differentiable: `[B, L]`, or `[K, B, L]` for an ensemble whose members all
        regress on the same targets (the loss sums the members' losses, so each gets a single critic's gradient).
      q_target_taken: Q_φ'(s_t, a_t).
      v_tp1: E_{a~π'} Q_φ'(s_{t+1}, a) (at a time limit, of the true final state; ignored at a termination).
      rewards: the learner's rewards r_t.
      discounts: γ·(1 − terminated_t).
      log_rhos: log π'(a_t|s_t) − log b(a_t|s_t).
      truncated: bool, transition t hit the time limit (bootstrap, cut the trace).
      lambda_: Retrace λ.

    Returns: (loss `0.5·mean (Q_φ − G)²` summed over members, targets G `[B, L]`).
    """
    chex.assert_rank([q_target_taken, v_tp1, rewards, discounts, log_rhos, truncated], 2)
    chex.assert_rank(q_online, {2, 3})
    targets = batched_retrace_targets(q_target_taken, v_tp1, rewards, discounts, log_rhos, truncated, lambda_)
    return 0.5 * jnp.sum(jnp.mean((q_online - targets) ** 2, axis=(-2, -1))), targets


def hl_gauss_loss(logits_online: chex.Array, targets: chex.Array, support: chex.Array, sigma_bins: chex.Numeric):
    """Cross-entropy of the online critic's distribution against the HL-Gauss histograms of scalar targets
    (`distributional.hl_gauss_probs`; Farebrother et al. 2024), e.g. the Retrace targets of `critic_loss`.

    Args:
      logits_online: `[B, L, Z]`, or `[K, B, L, Z]` for an ensemble (the loss sums the members' losses).
      targets: `[B, L]` (gradient stopped).
      support: `[Z]` the atoms.
      sigma_bins: the histograms' σ in bin widths.

    Returns: (loss `mean cross-entropy` summed over members, the fraction of targets outside the support, which
    the histograms clip).
    """
    chex.assert_rank([logits_online, targets, support], [{3, 4}, 2, 1])
    chex.assert_axis_dimension(logits_online, -1, support.shape[0])
    probs = distributional.hl_gauss_probs(jax.lax.stop_gradient(targets), support, sigma_bins)  # [B, L, Z]
    loss = jnp.sum(jnp.mean(distributional.cross_entropy(logits_online, probs), axis=(-2, -1)))
    return loss, distributional.outside_fraction(targets, support)


def categorical_critic_loss(
    logits_online: chex.Array,
    p_taken: chex.Array,
    p_next: chex.Array,
    rewards: chex.Array,
    discounts: chex.Array,
    log_rhos: chex.Array,
    truncated: chex.Array,
    lambda_: chex.Numeric,
    support: chex.Array,
):
    """Cross-entropy of the online critic's distribution against distributional Retrace targets
    (`distributional.categorical_retrace_targets`, per sequence, negative masses clipped).

    Args:
      logits_online: `[B, L, Z]`, or `[K, B, L, Z]` for an ensemble (the loss sums the members' losses).
      p_taken: `[B, L, Z]` the target critic's pmf at (s_t, a_t).
      p_next: `[B, L, Z]` the target policy's mixture at s_{t+1}: the sampled actions' pmfs averaged.
      rewards, discounts, log_rhos, truncated, lambda_: as in `critic_loss`.
      support: `[Z]` the atoms.

    Returns: (loss summed over members, the targets' means `[B, L]`, the fraction of the scalar Retrace targets of
    the pmfs' means outside the support: what the support cannot hold).
    """
    chex.assert_rank([logits_online, p_taken, p_next, rewards], [{3, 4}, 3, 3, 2])
    chex.assert_axis_dimension(logits_online, -1, support.shape[0])
    masses = jax.vmap(distributional.categorical_retrace_targets, in_axes=(0,) * 6 + (None, None))(
        p_taken, p_next, rewards, discounts, log_rhos, truncated, lambda_, support)  # [B, L, Z]
    loss = jnp.sum(jnp.mean(distributional.categorical_loss(logits_online, masses), axis=(-2, -1)))
    scalar = batched_retrace_targets(jnp.sum(p_taken * support, -1), jnp.sum(p_next * support, -1), rewards,
                                     discounts, log_rhos, truncated, lambda_)
    return loss, jnp.sum(masses * support, axis=-1), distributional.outside_fraction(scalar, support)


class PolicyLossConfig(NamedTuple):
    """Static choices of the policy loss (floats come from `HParams`)."""

    per_dim_constraining: bool
    action_penalization: bool
    epsilon_per_dimension: bool = False
    normalize_penalty: bool = False


def policy_loss(
    sampled_q: chex.Array,
    sampled_actions: chex.Array,
    online_mean: chex.Array,
    online_std: chex.Array,
    target_mean: chex.Array,
    target_std: chex.Array,
    mask: Optional[chex.Array],
    duals: mpo.DualParams,
    epsilon: chex.Numeric,
    epsilon_penalty: chex.Numeric,
    epsilon_mean: chex.Numeric,
    epsilon_std: chex.Numeric,
    static: PolicyLossConfig,
    alpha_gain: chex.Numeric = 0.0,
):
    """E-step (+ MO-MPO action penalty), decoupled M-step and the losses of every dual variable.

    Args:
      sampled_q: `[N, M]` Q_φ'(s_i, a_ij) of N actions a_ij ~ π'(·|s_i) for M states.
      sampled_actions: `[N, M, A]` those actions (unclipped Gaussian samples).
      online_mean, online_std: `[M, A]` π_θ at the states (differentiable).
      target_mean, target_std: `[M, A]` π' at the states.
      mask: bool `[M]` states that enter the losses, or None for all (terminal states are masked: the critic
        is never trained on them).
      duals: unconstrained dual parameters (differentiable).
      alpha_gain: proportional gain of the KL multipliers (`mpo.proportional_alpha`).

    Returns: (loss for θ and the duals, metrics dict of scalars).
    """
    chex.assert_rank([sampled_q, sampled_actions, online_mean], [2, 3, 2])
    temperature = mpo.positive(duals.temperature)
    weights, temperature_loss = mpo.e_step(sampled_q, temperature, epsilon, mask)
    e_step_kl = mpo.masked_mean(mpo.kl_weights_vs_uniform(weights), mask)
    penalty_temperature = mpo.positive(duals.penalty_temperature)
    if static.action_penalization:
        penalty_weights, penalty_loss = mpo.e_step(
            mpo.action_penalty_cost(sampled_actions), penalty_temperature, epsilon_penalty, mask)
        weights = weights + penalty_weights
    else:
        penalty_loss = 0.0

    alpha_mean, alpha_std = mpo.positive(duals.alpha_mean), mpo.positive(duals.alpha_std)
    m_loss, alpha_loss, kl = mpo.m_step(
        online_mean, online_std, target_mean, target_std, sampled_actions, weights, alpha_mean, alpha_std,
        epsilon_mean, epsilon_std, static.per_dim_constraining, mask, alpha_gain, static.epsilon_per_dimension,
        static.normalize_penalty)
    metrics: Dict[str, chex.Array] = dict(
        policy_loss=m_loss,
        temperature=temperature,
        penalty_temperature=penalty_temperature,
        alpha_mean=jnp.mean(alpha_mean),
        alpha_std=jnp.mean(alpha_std),
        alpha_mean_min=jnp.min(alpha_mean),
        # The multiplier the policy's penalty used this update (learned + proportional), averaged over dims.
        alpha_mean_applied=jnp.mean(kl.applied_alpha_mean),
        # Summed over action dimensions: directly comparable with ε_μ and ε_σ (which bound the sum).
        kl_mean=jnp.sum(kl.kl_mean),
        kl_std=jnp.sum(kl.kl_std),
        e_step_kl=e_step_kl,
        policy_std=mpo.masked_mean(online_std, None if mask is None else mask[:, None]),
        # Smallest σ' of the batch: a mean move costs KL_μ ∝ 1/σ'², so this tells a batch-wide move from a few
        # narrow states.
        target_std_min=jnp.min(target_std if mask is None else jnp.where(mask[:, None], target_std, jnp.inf)),
    )
    return m_loss + temperature_loss + penalty_loss + alpha_loss, metrics
