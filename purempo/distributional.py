"""Critics over a fixed support of values: the classification (HL-Gauss) loss.

A distributional critic outputs logits over Z atoms z_1 < … < z_Z evenly spaced over [v_min, v_max] (for HL-Gauss
with a margin of 4σ beyond each bound, `margin_bins`); its value is
the expectation Q(s, a) = Σ_i softmax(logits)_i z_i, which is what Retrace, the E-step and E_π' Q'(s', ·) read.

- HL-Gauss (Imani & White 2018; Farebrother et al. 2024, "Stop Regressing: Training Value Functions via
  Classification for Scalable Deep RL"): a scalar target y becomes the histogram of N(clip(y), σ²) over the
  atoms' bins, p_i = (Φ(e_{i+1}) − Φ(e_i)) / (Φ(e_{Z+1}) − Φ(e_1)) with e the bin edges (midway between atoms, the
  outer ones half a bin beyond the end atoms), and the critic minimises the cross-entropy to it.
"""

from __future__ import annotations

from typing import Tuple

import chex
import jax
import jax.numpy as jnp

SQRT2 = 1.4142135623730951


def value_bounds(reward_range: Tuple[float, float], reward_scale: chex.Numeric, reward_divisor: chex.Numeric,
                 discount: chex.Numeric) -> Tuple[chex.Array, chex.Array]:
    """[v_min, v_max] holding every discounted return of per-step rewards in `reward_range` (raw, as the env
    gives them), in the learner's units (rewards × reward_scale / reward_divisor):

        v_min = min(r_lo, 0) / (1 − γ),   v_max = max(r_hi, 0) / (1 − γ)

    (0 included: an episode that terminates early sums fewer rewards). Any return, and with it any Q, lies inside.
    """
    low, high = reward_range
    scale = reward_scale / (reward_divisor * (1.0 - discount))
    return jnp.minimum(low, 0.0) * scale, jnp.maximum(high, 0.0) * scale


def margin_bins(head: str, sigma_bins: chex.Numeric) -> chex.Numeric:
    """Bins of support beyond each value bound: 4σ for HL-Gauss, whose histograms drop the tails beyond the outer
    edges (with none, a target at a bound maps to a mean 0.37 bins inside it at σ 0.75 and Q differences near
    the bound shrink by ~0.6), and 0 for the categorical head, whose projection keeps the mean up to the end atoms."""
    return 4.0 * sigma_bins if head == "hl_gauss" else 0.0


def atoms(v_min: chex.Numeric, v_max: chex.Numeric, num_atoms: int, margin: chex.Numeric = 0.0) -> chex.Array:
    """`[Z]` evenly spaced atoms with [v_min, v_max] `margin` bins inside the end atoms (0: the ends themselves);
    the bin width is (v_max − v_min) / (Z − 1 − 2·margin)."""
    width = (v_max - v_min) / (num_atoms - 1 - 2 * margin)
    return jnp.linspace(v_min - margin * width, v_max + margin * width, num_atoms)


def bin_edges(support: chex.Array) -> chex.Array:
    """`[Z + 1]` edges of the atoms' bins: midway between neighbours, the outer ones half a bin beyond the ends."""
    chex.assert_rank(support, 1)
    half = 0.5 * (support[1] - support[0])
    return jnp.concatenate([support[:1] - half, 0.5 * (support[1:] + support[:-1]), support[-1:] + half])


def hl_gauss_probs(targets: chex.Array, support: chex.Array, sigma_bins: chex.Numeric) -> chex.Array:
    """The HL-Gauss histogram of scalar targets: `[...]` → `[..., Z]`, each summing to 1.

    Each target is clipped to [z_1, z_Z]; σ = `sigma_bins` × the bin width (0.75 in Farebrother et al. 2024);
    the mass of N(y, σ²) in each bin, renormalised over the bins (the tails beyond the outer edges dropped).
    """
    chex.assert_rank(support, 1)
    edges = bin_edges(support)
    sigma = sigma_bins * (support[1] - support[0])
    y = jnp.clip(targets, support[0], support[-1])[..., None]
    cdf = jax.scipy.special.erf((edges - y) / (SQRT2 * sigma))
    mass = cdf[..., 1:] - cdf[..., :-1]
    return mass / (cdf[..., -1:] - cdf[..., :1])


def initial_logits(reward_range: Tuple[float, float], num_atoms: int, sigma_bins: float,
                   margin: float = 0.0) -> jnp.ndarray:
    """`[Z]` logits whose distribution is the HL-Gauss histogram of 0 on the support `value_bounds` and `atoms`
    (with `margin`) build (floored at 1e-6): with them as the critic's last bias, and a small last kernel, it
    starts at Q ≈ 0 for every input, as a scalar critic does. 0's place among the atoms depends on `reward_range` alone (the support is
    `reward_range`'s ends with 0 included, scaled), so this is fixed before any reward is seen."""
    low, high = reward_range
    unit = atoms(min(low, 0.0), max(high, 0.0), num_atoms, margin)
    return jnp.log(jnp.maximum(hl_gauss_probs(jnp.zeros(()), unit, sigma_bins), 1e-6))


def expectation(logits: chex.Array, support: chex.Array) -> chex.Array:
    """Σ_i softmax(logits)_i z_i: `[..., Z]` → `[...]`."""
    return jnp.sum(jax.nn.softmax(logits, axis=-1) * support, axis=-1)


def cross_entropy(logits: chex.Array, probs: chex.Array) -> chex.Array:
    """−Σ_i p_i log softmax(logits)_i: `[..., Z]` → `[...]` (gradient flows into logits only)."""
    return -jnp.sum(jax.lax.stop_gradient(probs) * jax.nn.log_softmax(logits, axis=-1), axis=-1)


def entropy(logits: chex.Array) -> chex.Array:
    """Entropy of softmax(logits) in nats: `[..., Z]` → `[...]` (log Z: uniform; 0: one atom)."""
    log_p = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.sum(jnp.exp(log_p) * log_p, axis=-1)


def outside_fraction(values: chex.Array, support: chex.Array) -> chex.Array:
    """Fraction of `values` outside [z_1, z_Z]: the targets the HL-Gauss loss clips."""
    return jnp.mean(((values < support[0]) | (values > support[-1])).astype(jnp.float32))


def categorical_projection(values: chex.Array, masses: chex.Array, support: chex.Array) -> chex.Array:
    """C51's projection (Bellemare et al. 2017) of the distribution Σ_k masses_k δ(values_k) onto the atoms:
    `[K]`, `[K]` → `[Z]`. Each value is clipped to [z_1, z_Z] and its mass split between the atoms below and above
    it in proportion to its closeness to each, which keeps the mean of whatever lies inside the support. Linear in
    the masses, which may be negative (a signed mixture). O(K + Z): a scatter-add onto two neighbours per value,
    not the O(K·Z) matrix of the usual formulation. Batch with `jax.vmap`."""
    chex.assert_rank([values, masses, support], 1)
    chex.assert_equal_shape([values, masses])
    num_atoms = support.shape[0]
    position = (jnp.clip(values, support[0], support[-1]) - support[0]) / (support[1] - support[0])
    below = jnp.clip(jnp.floor(position), 0, num_atoms - 2)
    upper_share = jnp.clip(position - below, 0.0, 1.0)
    below = below.astype(jnp.int32)
    projected = jnp.zeros((num_atoms,), masses.dtype).at[below].add(masses * (1.0 - upper_share))
    return projected.at[below + 1].add(masses * upper_share)


def categorical_retrace_targets(
    p_taken: chex.Array,
    p_next: chex.Array,
    r_t: chex.Array,
    discount_t: chex.Array,
    log_rhos: chex.Array,
    truncated_t: chex.Array,
    lambda_: chex.Numeric,
    support: chex.Array,
) -> chex.Array:
    """Distributional Retrace (after "The Reactor", Gruslys et al. 2018) for ONE sequence, on a fixed support.

    The scalar recursion G_t = r_t + d_t (V(s_{t+1}) + c_{t+1} (G_{t+1} − Q(s_{t+1}, a_{t+1}))) with each value
    replaced by its distribution and each `r + d·X` by a projection onto the atoms:

        D_t = Π[r_t + d_t · z](M_{t+1} + c_{t+1} (D_{t+1} − P_{t+1}))      (δ_{r_t} projected where d_t = 0)

    M_{t+1}: the target policy's mixture at s_{t+1} (the mean of the sampled actions' pmfs: on one support a
    mixture is exact before one projection), P_{t+1}: the pmf of the action taken there. c_{t+1} is cut after a
    truncation and at the end of the sequence, as in `retrace.retrace_targets`. Each projection keeps the mean of
    mass inside the support, so while no value falls outside it E[D_t] is the scalar Retrace target of the pmfs'
    means. The mixture is signed (c (D − P) can be negative); `categorical_loss` clips negative masses. One
    projection per step: O(T·Z).

    Args:
      p_taken: `[T, Z]` target critic's pmf at (s_t, a_t).
      p_next: `[T, Z]` the mixture at s_{t+1} (ignored, may be non-finite, where `discount_t` is 0).
      r_t, discount_t, log_rhos, truncated_t: `[T]` as in `retrace.retrace_targets`.
      lambda_: trace coefficient λ.
      support: `[Z]` the atoms.

    Returns: `[T, Z]` target masses, each row summing to 1 (gradient stopped).
    """
    chex.assert_rank([p_taken, p_next, r_t, discount_t, log_rhos, truncated_t, support], [2, 2, 1, 1, 1, 1, 1])
    chex.assert_equal_shape([p_taken, p_next])
    p_taken, p_next, r_t, discount_t, log_rhos = jax.tree.map(
        jax.lax.stop_gradient, (p_taken, p_next, r_t, discount_t, log_rhos))
    c_t = lambda_ * jnp.minimum(1.0, jnp.exp(log_rhos))
    zero = jnp.zeros((1,), r_t.dtype)
    c_tp1 = jnp.where(truncated_t, 0.0, jnp.concatenate([c_t[1:], zero]))
    p_tp1 = jnp.concatenate([p_taken[1:], jnp.zeros_like(p_taken[:1])])
    one_atom = jnp.ones((1,), r_t.dtype)

    def backward(d_tp1, xs):
        r, d, mixture, c_next, p_next_taken = xs
        trace = jnp.where(c_next > 0.0, c_next * (d_tp1 - p_next_taken), 0.0)
        bootstrapped = categorical_projection(r + jnp.where(d > 0.0, d, 0.0) * support,
                                              jnp.where(d > 0.0, mixture + trace, 0.0), support)
        terminal = categorical_projection(jnp.reshape(r, (1,)), one_atom, support)
        d_t = jnp.where(d > 0.0, bootstrapped, terminal)
        return d_t, d_t

    _, targets = jax.lax.scan(backward, jnp.zeros_like(support), (r_t, discount_t, p_next, c_tp1, p_tp1),
                              reverse=True)
    return jax.lax.stop_gradient(targets)


def categorical_loss(logits: chex.Array, target_masses: chex.Array) -> chex.Array:
    """Cross-entropy to signed target masses with the negative ones clipped and the rest renormalised: `[..., Z]`
    → `[...]` (a negative mass would reward driving its atom's probability to 0 without bound)."""
    kept = jnp.maximum(jax.lax.stop_gradient(target_masses), 0.0)
    return cross_entropy(logits, kept / jnp.maximum(jnp.sum(kept, axis=-1, keepdims=True), 1e-12))
