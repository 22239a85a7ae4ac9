"""Tests for purempo.retrace against independent float64 numpy oracles."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from purempo import retrace

GAMMA = 0.97

_retrace = jax.jit(retrace.retrace_targets)
_batched = jax.jit(retrace.batched_retrace_targets)


def _mask(T, steps):
    """Hand-written bool mask `[T]`, true exactly at `steps`."""
    m = np.zeros(T, bool)
    m[list(steps)] = True
    return m


def _naive_retrace(q, v, r, d, log_rhos, trunc, lam):
    """Reference: reversed Python loop over the defining recursion, in float64; c_{t+1} := 0 after a
    truncated transition t."""
    q, v, r, d, log_rhos = (np.asarray(x, np.float64) for x in (q, v, r, d, log_rhos))
    T = len(q)
    g = np.zeros(T)
    for t in reversed(range(T)):
        if t == T - 1:
            g[t] = r[t] + d[t] * v[t]
        else:
            c_next = 0.0 if trunc[t] else lam * min(1.0, np.exp(log_rhos[t + 1]))
            g[t] = r[t] + d[t] * (v[t] + c_next * (g[t + 1] - q[t + 1]))
    return g


def _forward_retrace(q, v, r, d, log_rhos, trunc, lam):
    """Reference: non-recursive forward view G_t = q_t + Σ_{k≥t} (Π_{j=t}^{k-1} d_j c_{j+1}) δ_k,
    δ_k = r_k + d_k v_k − q_k, with c_{j+1} = 0 after a truncated transition j."""
    q, v, r, d, log_rhos = (np.asarray(x, np.float64) for x in (q, v, r, d, log_rhos))
    c = lam * np.minimum(1.0, np.exp(log_rhos))
    T = len(q)
    delta = r + d * v - q
    g = np.empty(T)
    for t in range(T):
        total, coef = 0.0, 1.0
        for k in range(t, T):
            total += coef * delta[k]
            if k + 1 < T:
                coef *= d[k] * (0.0 if trunc[k] else c[k + 1])
        g[t] = q[t] + total
    return g


def _lambda_return_forward(v, r, d, lam):
    """Reference: textbook forward-view λ-return as a weighted sum of n-step returns,
    G^λ_t = (1−λ) Σ_{n=1}^{T−t−1} λ^{n−1} G^{(n)}_t + λ^{T−t−1} G^{(T−t)}_t,
    G^{(n)}_t = Σ_{i<n} (Π_{j<i} d_{t+j}) r_{t+i} + (Π_{j<n} d_{t+j}) v_{t+n−1}."""
    v, r, d = (np.asarray(x, np.float64) for x in (v, r, d))
    T = len(r)

    def n_step(t, n):
        ret, disc = 0.0, 1.0
        for i in range(n):
            ret += disc * r[t + i]
            disc *= d[t + i]
        return ret + disc * v[t + n - 1]

    out = np.empty(T)
    for t in range(T):
        horizon = T - t
        out[t] = sum((1 - lam) * lam ** (n - 1) * n_step(t, n) for n in range(1, horizon)) + lam ** (
            horizon - 1
        ) * n_step(t, horizon)
    return out


def _random_sequence(rng, T):
    q = rng.normal(size=T).astype(np.float32)
    v = rng.normal(size=T).astype(np.float32)
    r = rng.normal(size=T).astype(np.float32)
    d = np.full(T, GAMMA, np.float32)
    log_rhos = rng.normal(scale=1.0, size=T).astype(np.float32)
    return q, v, r, d, log_rhos


NO_TRUNC = np.zeros(64, bool)  # sliced to length T where nothing is truncated


def test_truncated_importance_weights_match_numpy():
    """c = λ·min(1, exp(log ρ)) equals the float64 numpy formula, incl. exp(−inf) = 0 and saturation at λ."""
    log_rhos = np.array([-np.inf, -3.0, -0.1, 0.0, 0.2, 5.0, 80.0], np.float32)
    c = np.asarray(retrace.truncated_importance_weights(jnp.asarray(log_rhos), 0.9))
    expected = 0.9 * np.minimum(1.0, np.exp(log_rhos.astype(np.float64)))
    np.testing.assert_allclose(c, expected, rtol=1e-6)
    assert c[0] == 0.0 and c[-1] == np.float32(0.9)


@pytest.mark.parametrize("lam", [0.0, 0.5, 0.95, 1.0])
def test_matches_naive_loop_with_terminations_and_truncations(lam):
    """Random data with terminations and a hand-written truncation mask matches the reversed Python loop and
    the forward-sum form; terminal targets are r, truncated ones r + γ·v, and targets up to a truncation do
    not depend on anything after it."""
    rng = np.random.default_rng(0)
    T = 16
    q, v, r, d, log_rhos = _random_sequence(rng, T)
    terminal_steps = [4, 11]  # transition t ends the episode: discount 0
    truncated_steps = [7, 13]  # time limit after transition t: keep bootstrap, cut the trace
    d[terminal_steps] = 0.0
    trunc = _mask(T, truncated_steps)

    g = np.asarray(_retrace(q, v, r, d, log_rhos, trunc, lam))
    np.testing.assert_allclose(g, _naive_retrace(q, v, r, d, log_rhos, trunc, lam), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(g, _forward_retrace(q, v, r, d, log_rhos, trunc, lam), rtol=1e-5, atol=1e-5)

    for t in terminal_steps:
        assert g[t] == r[t], "a terminal transition's target must be exactly its reward"
    for t in truncated_steps:
        np.testing.assert_allclose(g[t], np.float64(r[t]) + GAMMA * np.float64(v[t]), rtol=1e-6, atol=1e-7)

    # A cut trace makes G[t] independent of everything after a truncation: perturb the future and
    # require bit-identical targets up to (and including) the first truncated transition.
    cut = truncated_steps[0]
    q2, v2, r2, lr2 = q.copy(), v.copy(), r.copy(), log_rhos.copy()
    q2[cut + 1 :] += 100.0
    v2[cut + 1 :] -= 50.0
    r2[cut + 1 :] *= -3.0
    lr2[cut + 1 :] = 0.0
    g2 = np.asarray(_retrace(q2, v2, r2, d, lr2, trunc, lam))
    np.testing.assert_array_equal(g2[: cut + 1], g[: cut + 1])


@pytest.mark.parametrize(
    "truncated_steps", [[0], [5], [11], [2, 3], [0, 6, 10], [1, 3, 5, 7, 9], list(range(12))]
)
def test_truncation_mask_cuts_the_trace_at_each_position(truncated_steps):
    """For several truncation positions, targets equal the hand-written-mask oracle, differ from the
    untruncated oracle wherever a cut removes a nonzero trace, and equal r + γ·v at each truncated step."""
    rng = np.random.default_rng(7)
    T, lam = 12, 1.0
    q, v, r, d, _ = _random_sequence(rng, T)
    log_rhos = np.zeros(T, np.float32)  # c ≡ λ: every trace nonzero unless cut
    trunc = _mask(T, truncated_steps)

    g = np.asarray(_retrace(q, v, r, d, log_rhos, trunc, lam))
    expected = _naive_retrace(q, v, r, d, log_rhos, trunc, lam)
    np.testing.assert_allclose(g, expected, rtol=1e-5, atol=1e-5)
    uncut = _naive_retrace(q, v, r, d, log_rhos, NO_TRUNC[:T], lam)
    for t in truncated_steps:
        np.testing.assert_allclose(g[t], np.float64(r[t]) + GAMMA * np.float64(v[t]), rtol=1e-6, atol=1e-6)
        if t < T - 1:  # the last step has no successor: truncating it changes nothing
            assert abs(uncut[t] - expected[t]) > 1e-3  # the mask is what made the difference
    if truncated_steps == [11]:
        np.testing.assert_allclose(g, uncut, rtol=1e-5, atol=1e-5)


def test_truncated_step_ignores_the_next_position_q():
    """After a truncated transition t, changing (or NaN-ing) q_t[t+1] or v_tp1[t+1] leaves G_0..G_t
    bit-identical and finite, equal to the oracle with the original finite values."""
    rng = np.random.default_rng(8)
    T, lam, t = 10, 0.9, 4
    q, v, r, d, log_rhos = _random_sequence(rng, T)
    log_rhos[:] = 0.0
    trunc = _mask(T, [t])
    g = np.asarray(_retrace(q, v, r, d, log_rhos, trunc, lam))
    np.testing.assert_allclose(g, _naive_retrace(q, v, r, d, log_rhos, trunc, lam), rtol=1e-5, atol=1e-5)
    for field, value in itertools.product(("q", "v"), (1e6, np.nan, np.inf)):
        q2, v2 = q.copy(), v.copy()
        (q2 if field == "q" else v2)[t + 1] = value
        g2 = np.asarray(_retrace(q2, v2, r, d, log_rhos, trunc, lam))
        np.testing.assert_array_equal(g2[: t + 1], g[: t + 1])
        assert np.all(np.isfinite(g2[: t + 1]))
    # Without the cut, the same change does reach G_t (the test above is not vacuous).
    q2 = q.copy()
    q2[t + 1] += 1.0
    g_uncut = np.asarray(_retrace(q, v, r, d, log_rhos, NO_TRUNC[:T], lam))
    g_uncut2 = np.asarray(_retrace(q2, v, r, d, log_rhos, NO_TRUNC[:T], lam))
    assert abs(g_uncut2[t] - g_uncut[t]) > 0.5


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("lam", [0.0, 0.8, 1.0])
def test_non_finite_value_at_terminal_step_is_ignored(bad, lam):
    """A NaN/±inf v_tp1 where discount is 0 gives finite targets equal to the oracle with that v replaced by a
    finite number (two different ones give the same oracle)."""
    rng = np.random.default_rng(9)
    T = 9
    q, v, r, d, log_rhos = _random_sequence(rng, T)
    terminal = [2, 6, T - 1]
    d[terminal] = 0.0
    trunc = _mask(T, [4])
    v_bad = v.copy()
    v_bad[terminal] = bad
    g = np.asarray(_retrace(q, v_bad, r, d, log_rhos, trunc, lam))
    assert np.all(np.isfinite(g))
    for filler in (0.0, 123.0):
        v_ok = v.copy()
        v_ok[terminal] = filler
        np.testing.assert_allclose(g, _naive_retrace(q, v_ok, r, d, log_rhos, trunc, lam), rtol=1e-5, atol=1e-5)
    # Batched, with the non-finite value in one row only.
    q2, r2, d2, lr2, trunc2 = (np.stack([x, x]) for x in (q, r, d, log_rhos, trunc))
    gb = np.asarray(_batched(q2, np.stack([v, v_bad]), r2, d2, lr2, trunc2, lam))
    assert np.all(np.isfinite(gb))
    np.testing.assert_allclose(gb[1], g, rtol=1e-6, atol=1e-6)


def test_truncation_last_step_of_sequence():
    """Single-step and final-step targets are r + d·v (no successor exists), truncated or not."""
    q, v, r = (np.array([x], np.float32) for x in (0.3, 2.0, -1.0))
    for trunc in (np.array([False]), np.array([True])):
        g = _retrace(q, v, r, np.array([GAMMA], np.float32), np.zeros(1, np.float32), trunc, 1.0)
        np.testing.assert_allclose(np.asarray(g), [-1.0 + GAMMA * 2.0], rtol=1e-6)


def test_lambda_zero_is_one_step_expected_sarsa():
    """λ = 0 gives r_t + d_t·v_{t+1} whatever the ratios and the truncation mask."""
    rng = np.random.default_rng(1)
    q, v, r, d, log_rhos = _random_sequence(rng, 20)
    d[[3, 9]] = 0.0
    for trunc in (NO_TRUNC[:20], _mask(20, [5, 14])):
        g = np.asarray(_retrace(q, v, r, d, log_rhos, trunc, 0.0))
        np.testing.assert_allclose(g, r.astype(np.float64) + d.astype(np.float64) * v, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("lam", [0.3, 0.9, 1.0])
def test_on_policy_consistent_critic_is_forward_lambda_return(lam):
    """On-policy (log ρ = 0, c ≡ λ) with a consistent critic (q_{t+1} = v_{t+1} estimate used for
    bootstrapping) equals the forward-view λ-return built from weighted n-step returns."""
    rng = np.random.default_rng(2)
    T = 12
    v = rng.normal(size=T).astype(np.float32)
    r = rng.normal(size=T).astype(np.float32)
    d = np.full(T, GAMMA, np.float32)
    d[5] = 0.0  # a termination inside the window
    q = np.concatenate([rng.normal(size=1), v[:-1]]).astype(np.float32)  # q_t[t+1] == v_tp1[t]
    g = np.asarray(_retrace(q, v, r, d, np.zeros(T, np.float32), NO_TRUNC[:T], lam))
    np.testing.assert_allclose(g, _lambda_return_forward(v, r, d, lam), rtol=1e-5, atol=1e-5)


def test_on_policy_general_critic_matches_forward_td_error_sum():
    """On-policy with an arbitrary critic: G_t = q_t + Σ_k (γλ)^{k−t} δ_k (constant discount)."""
    rng = np.random.default_rng(3)
    T, lam = 10, 0.8
    q, v, r, d, _ = _random_sequence(rng, T)
    g = np.asarray(_retrace(q, v, r, d, np.zeros(T, np.float32), NO_TRUNC[:T], lam))
    delta = r.astype(np.float64) + GAMMA * v - q
    powers = np.triu((GAMMA * lam) ** (np.arange(T)[None, :] - np.arange(T)[:, None]))
    np.testing.assert_allclose(g, q + powers @ delta, rtol=1e-5, atol=1e-5)


def test_ratios_above_one_are_truncated():
    """Importance ratios > 1 behave exactly like ratio 1 (c = λ·min(1, ρ))."""
    rng = np.random.default_rng(4)
    q, v, r, d, _ = _random_sequence(rng, 9)
    big = np.abs(rng.normal(size=9)).astype(np.float32) + 0.5
    trunc = _mask(9, [3])
    g_big = np.asarray(_retrace(q, v, r, d, big, trunc, 0.9))
    g_one = np.asarray(_retrace(q, v, r, d, np.zeros(9, np.float32), trunc, 0.9))
    np.testing.assert_allclose(g_big, g_one, rtol=1e-6, atol=1e-6)


def test_no_gradient_flows_into_inputs():
    """grad of Σ G w.r.t. every float input (and λ) is exactly zero."""
    rng = np.random.default_rng(5)
    args = tuple(jnp.asarray(x) for x in _random_sequence(rng, 8))
    trunc = jnp.asarray(_mask(8, [2]))

    def total(q, v, r, d, lr, lam):
        return jnp.sum(retrace.retrace_targets(q, v, r, d, lr, trunc, lam))

    grads = jax.grad(total, argnums=(0, 1, 2, 3, 4, 5))(*args, jnp.float32(0.9))
    for gr in grads:
        np.testing.assert_array_equal(np.asarray(gr), 0.0)


def test_batched_matches_per_row():
    """batched_retrace_targets equals the naive loop applied row by row, each row with its own mask."""
    rng = np.random.default_rng(6)
    B, T, lam = 5, 11, 0.7
    rows = [_random_sequence(rng, T) for _ in range(B)]
    q, v, r, d, lr = (np.stack(x) for x in zip(*rows))
    d[1, 3] = 0.0
    trunc = np.zeros((B, T), bool)
    trunc[2, 6] = trunc[4, 0] = trunc[4, 9] = True
    g = np.asarray(_batched(q, v, r, d, lr, trunc, lam))
    assert g.shape == (B, T)
    for b in range(B):
        np.testing.assert_allclose(g[b], _naive_retrace(q[b], v[b], r[b], d[b], lr[b], trunc[b], lam),
                                   rtol=1e-5, atol=1e-5)


def test_shape_errors_raise():
    """Wrong rank or mismatched lengths, the truncation mask included, are rejected (single and batched)."""
    ok, okt = jnp.zeros(5), jnp.zeros(5, bool)
    bad_inputs = [
        (jnp.zeros((5, 1)), ok, ok, ok, ok, okt),
        (ok, ok, jnp.zeros(4), ok, ok, okt),
        (ok, ok, ok, ok, jnp.zeros(6), okt),
        (ok, ok, ok, ok, ok, jnp.zeros(4, bool)),
        (ok, ok, ok, ok, ok, jnp.zeros((5, 1), bool)),
    ]
    for args in bad_inputs:
        with pytest.raises((AssertionError, ValueError, TypeError)):
            retrace.retrace_targets(*args, 0.9)
    okb, okbt = jnp.zeros((3, 5)), jnp.zeros((3, 5), bool)
    bad_batched = [
        (okb, okb, okb, okb, jnp.zeros((3, 5, 1)), okbt),
        (okb, okb, jnp.zeros((3, 4)), okb, okb, okbt),
        (okb, okb, okb, jnp.zeros((2, 5)), okb, okbt),
        (okb, okb, okb, okb, okb, jnp.zeros((3, 4), bool)),
    ]
    for args in bad_batched:
        with pytest.raises((AssertionError, ValueError, TypeError)):
            retrace.batched_retrace_targets(*args, 0.9)
