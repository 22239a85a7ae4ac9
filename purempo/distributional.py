"""Critics over a fixed support of values: the classification (HL-Gauss) loss.

A distributional critic outputs logits over Z atoms z_1 < … < z_Z evenly spaced on [v_min, v_max]; its value is
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


def atoms(v_min: chex.Numeric, v_max: chex.Numeric, num_atoms: int) -> chex.Array:
    """`[Z]` atoms evenly spaced from v_min to v_max (both included)."""
    return jnp.linspace(v_min, v_max, num_atoms)


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


def initial_logits(reward_range: Tuple[float, float], num_atoms: int, sigma_bins: float) -> jnp.ndarray:
    """`[Z]` logits whose distribution is the HL-Gauss histogram of 0 on the support `value_bounds` builds
    (floored at 1e-6): with them as the critic's last bias, and a small last kernel, it starts at Q ≈ 0 for every
    input, as a scalar critic does. 0's place among the atoms depends on `reward_range` alone (the support is
    `reward_range`'s ends with 0 included, scaled), so this is fixed before any reward is seen."""
    low, high = reward_range
    unit = atoms(min(low, 0.0), max(high, 0.0), num_atoms)
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
