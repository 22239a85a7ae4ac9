"""Tests for purempo.discrete: floored log-probabilities, exact E-step and dual, KL, expected value, M-step."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import optimize, special

from purempo import discrete

# Jitted entry points shared by the tests (one compile per shape instead of one per eager primitive).
_e_step = jax.jit(discrete.e_step)
_temperature_grad = jax.jit(jax.grad(lambda eta, q, logp, eps, mask=None: discrete.e_step(q, logp, eta, eps, mask)[1]))
_e_step_kl = jax.jit(discrete.e_step_kl)
_kl = jax.jit(discrete.kl)
_m_step = jax.jit(discrete.m_step)


def _np_log_softmax(x):
    x = np.asarray(x, np.float64)
    return x - special.logsumexp(x, axis=-1, keepdims=True)


def _np_dual(eta, q, logp, eps):
    """Temperature dual g(η) = η ε + η mean_B log Σ_K π' exp(Q/η), float64, by explicit sums."""
    q, p = np.asarray(q, np.float64), np.exp(np.asarray(logp, np.float64))
    shift = (q / eta).max(axis=-1, keepdims=True)  # for overflow only; added back below
    return eta * eps + eta * np.mean(np.log(np.sum(p * np.exp(q / eta - shift), axis=-1)) + shift[:, 0])


def _np_weights(eta, q, logp):
    """q(a|s) = π'(a|s) e^{Q(s,a)/η} / Σ_b π'(b|s) e^{Q(s,b)/η} by a loop over states, float64."""
    q, logp = np.asarray(q, np.float64), np.asarray(logp, np.float64)
    out = np.zeros_like(q)
    for b in range(q.shape[0]):
        unnormalised = np.exp(logp[b] + (q[b] - q[b].max()) / eta)
        out[b] = unnormalised / unnormalised.sum()
    return out


def _np_kl_loop(log_p, log_q):
    """KL(p ‖ q) per row by a double Python loop; 0·log 0 = 0."""
    log_p, log_q = np.asarray(log_p, np.float64), np.asarray(log_q, np.float64)
    out = np.zeros(log_p.shape[0])
    for b in range(log_p.shape[0]):
        for a in range(log_p.shape[1]):
            p = np.exp(log_p[b, a])
            if p > 0:
                out[b] += p * (log_p[b, a] - log_q[b, a])
    return out


def _solve_dual(q, logp, eps):
    """Scipy's minimiser η* of the float64 dual (over log η, so one bracket serves every Q scale)."""
    res = optimize.minimize_scalar(lambda log_e: _np_dual(np.exp(log_e), q, logp, eps), bounds=(-15.0, 15.0),
                                   method="bounded", options={"xatol": 1e-12})
    return float(np.exp(res.x))


def _random_problem(seed, batch=8, num_actions=6, q_scale=2.0):
    rng = np.random.default_rng(seed)
    q = (rng.normal(size=(batch, num_actions)) * q_scale).astype(np.float32)
    logp = _np_log_softmax(rng.normal(size=(batch, num_actions))).astype(np.float32)
    return q, logp


# ---------------------------------------------------------------------------------------------------
# floored_log_probs
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("min_prob", [0.0, 0.01, 0.05])
def test_floored_log_probs_matches_numpy_mixture(min_prob):
    """exp(floored_log_probs) = (1 − K p)·softmax + p in float64 numpy; every probability ≥ p; rows sum to 1."""
    rng = np.random.default_rng(0)
    logits = (rng.normal(size=(5, 7)) * 3.0).astype(np.float32)
    num_actions = logits.shape[-1]
    expected = (1 - num_actions * min_prob) * np.exp(_np_log_softmax(logits)) + min_prob
    log_probs = np.asarray(jax.jit(discrete.floored_log_probs)(jnp.asarray(logits), min_prob))
    assert log_probs.shape == logits.shape
    np.testing.assert_allclose(log_probs, np.log(expected), rtol=1e-5, atol=1e-5)
    assert np.all(np.exp(log_probs) >= min_prob * (1 - 1e-5))
    np.testing.assert_allclose(np.exp(log_probs).sum(-1), 1.0, rtol=1e-5)


def test_floored_log_probs_zero_floor_is_log_softmax_with_finite_gradient():
    """min_prob = 0 gives jax.nn.log_softmax bit for bit, and a finite gradient w.r.t. the logits."""
    rng = np.random.default_rng(1)
    logits = jnp.asarray(rng.normal(size=(4, 5)) * 5.0, jnp.float32)
    np.testing.assert_array_equal(np.asarray(discrete.floored_log_probs(logits, 0.0)),
                                  np.asarray(jax.nn.log_softmax(logits)))
    c = jnp.asarray(rng.normal(size=(4, 5)), jnp.float32)
    grad = jax.grad(lambda x: jnp.sum(c * discrete.floored_log_probs(x, 0.0)))(logits)
    grad_ref = jax.grad(lambda x: jnp.sum(c * jax.nn.log_softmax(x)))(logits)
    np.testing.assert_allclose(np.asarray(grad), np.asarray(grad_ref), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("min_prob", [0.0, 0.01])
def test_floored_log_probs_finite_for_very_negative_logits(min_prob):
    """Logits of −1e4 give finite log-probabilities (log p where floored) and finite gradients."""
    logits = jnp.asarray([[0.0, -1e4, -1e4, 3.0], [-1e4, -1e4, -1e4, -1e4]], jnp.float32)
    log_probs = np.asarray(discrete.floored_log_probs(logits, min_prob))
    assert np.all(np.isfinite(log_probs))
    np.testing.assert_allclose(np.exp(log_probs).sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(log_probs[1], np.log(0.25), rtol=1e-6)
    if min_prob > 0:
        np.testing.assert_allclose(log_probs[0, 1:3], np.log(min_prob), rtol=1e-6)
    grad = jax.grad(lambda x: jnp.sum(discrete.floored_log_probs(x, min_prob)[:, 0]))(logits)
    assert np.all(np.isfinite(np.asarray(grad)))


def test_floored_log_probs_vmaps_over_a_traced_floor():
    """min_prob may be a vmapped (traced) hyper-parameter: each lane equals its own eager computation."""
    logits = jnp.asarray(np.random.default_rng(2).normal(size=(3, 4)), jnp.float32)
    floors = jnp.asarray([0.0, 0.02, 0.2], jnp.float32)
    batched = jax.jit(jax.vmap(discrete.floored_log_probs, in_axes=(None, 0)))(logits, floors)
    for i, p in enumerate([0.0, 0.02, 0.2]):
        np.testing.assert_allclose(np.asarray(batched[i]), np.asarray(discrete.floored_log_probs(logits, p)),
                                   rtol=1e-6, atol=1e-6)
    assert np.exp(np.asarray(batched[2])).min() >= 0.2 * (1 - 1e-6)


# ---------------------------------------------------------------------------------------------------
# E-step and temperature dual
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("eta", [0.05, 1.0, 30.0])
def test_e_step_weights_and_dual_match_numpy(eta):
    """Weights equal π' e^{Q/η} / Σ from a numpy loop and sum to 1; the loss equals the numpy dual."""
    q, logp = _random_problem(3)
    weights, loss = _e_step(jnp.asarray(q), jnp.asarray(logp), eta, 0.1)
    assert weights.shape == q.shape
    np.testing.assert_allclose(np.asarray(weights), _np_weights(eta, q, logp), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(np.asarray(weights).sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(float(loss), _np_dual(eta, q, logp, 0.1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("eta", [0.1, 0.8, 5.0])
def test_temperature_gradient_is_analytic_and_finite_difference(eta):
    """dg/dη = ε + mean log Σ π' e^{Q/η} − mean E_q[Q]/η (= ε − mean KL(q ‖ π')), and a central difference."""
    q, logp = _random_problem(4, batch=16)
    eps = 0.05
    grad = float(_temperature_grad(jnp.float32(eta), jnp.asarray(q), jnp.asarray(logp), eps))
    q64, logp64 = q.astype(np.float64), logp.astype(np.float64)
    w = _np_weights(eta, q, logp)
    analytic = eps + np.mean(special.logsumexp(logp64 + q64 / eta, axis=-1)) - np.mean(np.sum(w * q64, -1)) / eta
    np.testing.assert_allclose(grad, analytic, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(analytic, eps - np.mean(_np_kl_loop(np.log(w), logp64)), rtol=1e-8, atol=1e-10)
    h = 1e-5 * eta
    fd = (_np_dual(eta + h, q, logp, eps) - _np_dual(eta - h, q, logp, eps)) / (2 * h)
    np.testing.assert_allclose(grad, fd, rtol=1e-4, atol=1e-5)


def test_e_step_weights_and_dual_carry_no_gradient_to_q_or_prior():
    """The weights are constants, and the dual is differentiable in η only."""
    q, logp = (jnp.asarray(x) for x in _random_problem(5))
    c = jnp.asarray(np.random.default_rng(5).normal(size=q.shape), jnp.float32)
    g_w = jax.grad(lambda q, lp, eta: jnp.sum(c * discrete.e_step(q, lp, eta, 0.1)[0]), argnums=(0, 1, 2))(
        q, logp, 0.7)
    g_loss = jax.grad(lambda q, lp: discrete.e_step(q, lp, 0.7, 0.1)[1], argnums=(0, 1))(q, logp)
    for g in (*g_w, *g_loss):
        np.testing.assert_array_equal(np.asarray(g), 0.0)


@pytest.mark.parametrize("seed,eps", [(6, 0.01), (7, 0.1), (8, 0.3)])
def test_dual_minimiser_matches_scipy_and_makes_the_constraint_active(seed, eps):
    """(a) Adam on log η with the jax loss reaches scipy's η* of the numpy dual within 3%; (b) at η*, the mean
    KL(q ‖ π') from `e_step_kl` equals ε (the constraint is active: dg/dη = ε − mean KL = 0)."""
    q, logp = _random_problem(seed, batch=4, num_actions=5, q_scale=3.0)
    eta_star = _solve_dual(q, logp, eps)
    assert 1e-4 < eta_star < 1e4  # an interior minimiser
    weights, _ = _e_step(jnp.asarray(q), jnp.asarray(logp), jnp.float32(eta_star), eps)
    kl_star = np.asarray(_e_step_kl(weights, jnp.asarray(logp)))
    assert kl_star.shape == (4,)
    np.testing.assert_allclose(kl_star.mean(), eps, rtol=1e-3)
    np.testing.assert_allclose(kl_star, _np_kl_loop(np.log(_np_weights(eta_star, q, logp)), logp), rtol=1e-3,
                               atol=1e-6)

    opt = optax.adam(optax.exponential_decay(0.1, 100, 0.3))
    qj, lpj = jnp.asarray(q), jnp.asarray(logp)

    @jax.jit
    def run(log_eta):
        def step(carry, _):
            log_eta, state = carry
            g = jax.grad(lambda x: discrete.e_step(qj, lpj, jnp.exp(x), eps)[1])(log_eta)
            update, state = opt.update(g, state)
            return (optax.apply_updates(log_eta, update), state), None

        (log_eta, _), _ = jax.lax.scan(step, (log_eta, opt.init(log_eta)), None, length=400)
        return jnp.exp(log_eta)

    eta = float(run(jnp.log(jnp.float32(3.0))))
    np.testing.assert_allclose(eta, eta_star, rtol=3e-2)


def test_single_state_kl_at_optimum_equals_epsilon():
    """With one state, KL(q ‖ π') at scipy's η* equals ε for that state (rtol 1e-3)."""
    q, logp = _random_problem(9, batch=1, num_actions=7)
    eps = 0.2
    eta_star = _solve_dual(q, logp, eps)
    weights, _ = _e_step(jnp.asarray(q), jnp.asarray(logp), jnp.float32(eta_star), eps)
    np.testing.assert_allclose(np.asarray(_e_step_kl(weights, jnp.asarray(logp))), [eps], rtol=1e-3)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_masked_state_with_non_finite_q_changes_nothing(bad):
    """A masked state with NaN/±inf Q (and prior) leaves the other states' weights, the loss and its η
    gradient equal to those of the batch without it, and nothing is NaN."""
    q, logp = _random_problem(10, batch=5)
    mask = np.array([True, True, False, True, True])
    q_bad, logp_bad = q.copy(), logp.copy()
    q_bad[2], logp_bad[2, :2] = bad, np.nan
    eta, eps = jnp.float32(0.6), 0.1
    weights, loss = _e_step(jnp.asarray(q_bad), jnp.asarray(logp_bad), eta, eps, jnp.asarray(mask))
    weights_ref, loss_ref = _e_step(jnp.asarray(q[mask]), jnp.asarray(logp[mask]), eta, eps)
    assert np.all(np.isfinite(np.asarray(weights)))
    np.testing.assert_allclose(np.asarray(weights)[mask], np.asarray(weights_ref), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(float(loss), float(loss_ref), rtol=1e-6)
    grad = float(_temperature_grad(eta, jnp.asarray(q_bad), jnp.asarray(logp_bad), eps, jnp.asarray(mask)))
    grad_ref = float(_temperature_grad(eta, jnp.asarray(q[mask]), jnp.asarray(logp[mask]), eps))
    assert np.isfinite(grad)
    np.testing.assert_allclose(grad, grad_ref, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------------
# kl and expected_value
# ---------------------------------------------------------------------------------------------------


def test_kl_matches_double_loop_and_vanishes_on_itself():
    """kl equals a Python double loop on random distributions, and kl(p, p) = 0."""
    rng = np.random.default_rng(11)
    log_p = _np_log_softmax(rng.normal(size=(6, 5)) * 2.0).astype(np.float32)
    log_q = _np_log_softmax(rng.normal(size=(6, 5)) * 2.0).astype(np.float32)
    np.testing.assert_allclose(np.asarray(_kl(jnp.asarray(log_p), jnp.asarray(log_q))), _np_kl_loop(log_p, log_q),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(_kl(jnp.asarray(log_p), jnp.asarray(log_p))), 0.0, atol=1e-7)


def test_kl_zero_probability_entries_contribute_nothing():
    """Entries with p = 0 add 0 even where log q = −inf; values and gradients are finite; q = 0 under p > 0
    gives inf."""
    log_p = jnp.asarray([[0.0, -jnp.inf, -jnp.inf], [np.log(0.5), np.log(0.5), -jnp.inf]], jnp.float32)
    log_q = jnp.asarray([[np.log(0.5), -jnp.inf, np.log(0.5)], [np.log(0.25), np.log(0.75), -jnp.inf]], jnp.float32)
    value = np.asarray(_kl(log_p, log_q))
    np.testing.assert_allclose(value, _np_kl_loop(log_p, log_q), rtol=1e-6)
    np.testing.assert_allclose(value, [np.log(2.0), 0.5 * np.log(2.0) + 0.5 * np.log(0.5 / 0.75)], rtol=1e-6)
    g_p, g_q = jax.grad(lambda a, b: jnp.sum(discrete.kl(a, b)), argnums=(0, 1))(log_p, log_q)
    assert np.all(np.isfinite(np.asarray(g_p))) and np.all(np.isfinite(np.asarray(g_q)))
    assert float(discrete.kl(jnp.asarray([0.0, -jnp.inf]), jnp.asarray([-jnp.inf, 0.0]))) == np.inf


def test_expected_value_matches_loop():
    """Σ_a π(a|s) Q(s, a) over the last axis equals a Python loop, for a `[T, B, K]` input."""
    rng = np.random.default_rng(12)
    log_probs = _np_log_softmax(rng.normal(size=(2, 3, 4))).astype(np.float32)
    q = rng.normal(size=(2, 3, 4)).astype(np.float32) * 5.0
    value = np.asarray(discrete.expected_value(jnp.asarray(log_probs), jnp.asarray(q)))
    assert value.shape == (2, 3)
    expected = np.zeros((2, 3))
    for t in range(2):
        for b in range(3):
            for a in range(4):
                expected[t, b] += np.exp(float(log_probs[t, b, a])) * float(q[t, b, a])
    np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------------
# M-step
# ---------------------------------------------------------------------------------------------------


def _m_step_problem(seed, batch=4, num_actions=5):
    rng = np.random.default_rng(seed)
    online_logits = rng.normal(size=(batch, num_actions)).astype(np.float32)
    target_log_probs = _np_log_softmax(rng.normal(size=(batch, num_actions))).astype(np.float32)
    weights = np.exp(_np_log_softmax(rng.normal(size=(batch, num_actions)) * 2.0)).astype(np.float32)
    return online_logits, target_log_probs, weights


@jax.jit
def _policy_grad_wrt_logits(logits, target_log_probs, weights, alpha, eps, mask=None, gain=0.0):
    return jax.grad(lambda x: discrete.m_step(jax.nn.log_softmax(x), target_log_probs, weights, alpha, eps, mask,
                                              gain)[0])(logits)


@pytest.mark.parametrize("alpha,gain", [(0.0, 0.0), (2.5, 0.0), (0.5, 3.0)])
def test_policy_gradient_wrt_logits_is_analytic(alpha, gain):
    """Through log_softmax, d policy_loss / d logits = [(π_θ − q) + penalty·(π_θ − π')] / B per state."""
    logits, target, weights = _m_step_problem(13)
    eps = 0.01  # small, so that a gain > 0 acts (the KL exceeds it)
    alpha_arr = jnp.full((1,), alpha, jnp.float32)
    grad = np.asarray(_policy_grad_wrt_logits(jnp.asarray(logits), jnp.asarray(target), jnp.asarray(weights),
                                              alpha_arr, eps, None, gain))
    online = np.exp(_np_log_softmax(logits))
    mean_kl = np.mean(_np_kl_loop(target, np.log(online)))
    penalty = alpha + gain * np.clip(mean_kl / eps - 1.0, 0.0, 10.0)
    if gain:
        assert penalty > alpha
    expected = ((online - weights) + penalty * (online - np.exp(target.astype(np.float64)))) / logits.shape[0]
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("alpha", [0.0, 1.0, 100.0])
def test_policy_minimiser_is_the_mixture_and_large_alpha_keeps_kl_small(alpha):
    """The minimiser of −Σ q log π + α KL(π' ‖ π) is π = (q + α π')/(1 + α): gradient descent on the logits
    reaches it, and its KL to π' shrinks as α grows (≤ 1e-4 at α = 100, vs the KL to q at α = 0)."""
    logits, target, weights = _m_step_problem(14, batch=3)
    alpha_arr = jnp.full((1,), alpha, jnp.float32)
    target_j, weights_j = jnp.asarray(target), jnp.asarray(weights)
    lr = logits.shape[0] / (1.0 + alpha)  # the loss's curvature in the logits is ≤ (1 + α)/(2B)

    @jax.jit
    def descend(x):
        def step(x, _):
            return x - lr * _policy_grad_wrt_logits(x, target_j, weights_j, alpha_arr, 0.1), None

        return jax.lax.scan(step, x, None, length=2000)[0]

    final = np.exp(_np_log_softmax(np.asarray(descend(jnp.asarray(logits)))))
    mixture = (weights + alpha * np.exp(target.astype(np.float64))) / (1.0 + alpha)
    np.testing.assert_allclose(final, mixture, atol=2e-4)
    kl_final = np.mean(_np_kl_loop(target, np.log(final)))
    kl_unconstrained = np.mean(_np_kl_loop(target, np.log(weights)))
    assert kl_unconstrained > 0.1
    if alpha == 100.0:
        assert kl_final < 1e-4
    elif alpha == 1.0:
        assert kl_final < 0.5 * kl_unconstrained


def test_alpha_loss_gradient_is_epsilon_minus_kl_and_stats():
    """d alpha_loss / dα = ε − KL; stats.kl is the mean KL(π' ‖ π_θ) of a numpy loop, violation = KL/ε, the
    applied multiplier is α (gain 0); alpha_loss carries no gradient to the policy and policy_loss none to α."""
    logits, target, weights = _m_step_problem(15)
    online = jax.nn.log_softmax(jnp.asarray(logits))
    alpha, eps = jnp.asarray([0.7], jnp.float32), 0.05
    policy_loss, alpha_loss, stats = _m_step(online, jnp.asarray(target), jnp.asarray(weights), alpha, eps)
    kl_np = np.mean(_np_kl_loop(target, np.asarray(online)))
    assert stats.kl.shape == stats.violation.shape == stats.applied_alpha.shape == (1,)
    np.testing.assert_allclose(np.asarray(stats.kl), [kl_np], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(stats.violation), [kl_np / eps], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(stats.applied_alpha), [0.7], rtol=1e-7)
    nll = -np.mean(np.sum(weights * np.asarray(online, np.float64), -1))
    np.testing.assert_allclose(float(policy_loss), nll + 0.7 * kl_np, rtol=1e-5)
    np.testing.assert_allclose(float(alpha_loss), 0.7 * (eps - kl_np), rtol=1e-4)

    def loss(i):
        return lambda o, a: discrete.m_step(o, jnp.asarray(target), jnp.asarray(weights), a, eps)[i]

    g_alpha_online, g_alpha = jax.grad(loss(1), argnums=(0, 1))(online, alpha)
    np.testing.assert_allclose(np.asarray(g_alpha), [eps - kl_np], rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(g_alpha_online), 0.0)
    np.testing.assert_array_equal(np.asarray(jax.grad(loss(0), argnums=1)(online, alpha)), 0.0)


def test_m_step_masked_states_have_no_effect():
    """Masked states (NaN online and target log-probabilities) change neither the losses, the stats nor the
    gradients w.r.t. the unmasked states; their own gradient is 0."""
    logits, target, weights = _m_step_problem(16, batch=5)
    mask = np.array([True, False, True, True, False])
    online = np.asarray(jax.nn.log_softmax(jnp.asarray(logits)))
    online_bad, target_bad = online.copy(), target.copy()
    online_bad[~mask], target_bad[~mask] = np.nan, np.nan
    alpha, eps, gain = jnp.asarray([1.3], jnp.float32), 0.01, 2.0

    def run(o, t, w, m):
        def f(i):
            return lambda o: discrete.m_step(o, t, w, alpha, eps, m, gain)[i]

        return _m_step(o, t, w, alpha, eps, m, gain), jax.grad(f(0))(o)

    (pl, al, st), g = run(jnp.asarray(online_bad), jnp.asarray(target_bad), jnp.asarray(weights), jnp.asarray(mask))
    (pl_r, al_r, st_r), g_r = run(jnp.asarray(online[mask]), jnp.asarray(target[mask]), jnp.asarray(weights[mask]),
                                  None)
    np.testing.assert_allclose(float(pl), float(pl_r), rtol=1e-6)
    np.testing.assert_allclose(float(al), float(al_r), rtol=1e-6)
    for a, b in zip(st, st_r):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(g)[mask], np.asarray(g_r), rtol=1e-6, atol=1e-8)
    np.testing.assert_array_equal(np.asarray(g)[~mask], 0.0)


@pytest.mark.parametrize("eps,expected_violation_term", [(10.0, 0.0), (None, "interior"), (1e-5, 10.0)])
def test_proportional_gain_adds_clipped_violation(eps, expected_violation_term):
    """With gain g the applied multiplier is α + g·clip(KL/ε − 1, 0, 10), the policy loss grows by exactly
    that extra times KL, and the multiplier's loss is unchanged."""
    logits, target, weights = _m_step_problem(17)
    online = jax.nn.log_softmax(jnp.asarray(logits))
    kl_np = np.mean(_np_kl_loop(target, np.asarray(online)))
    if eps is None:
        eps = kl_np / 4.0  # violation 4: inside the clip range
    alpha, gain = jnp.asarray([0.3], jnp.float32), 2.0
    args = (online, jnp.asarray(target), jnp.asarray(weights), alpha, eps)
    pl0, al0, st0 = _m_step(*args, None, 0.0)
    pl, al, st = _m_step(*args, None, gain)
    extra = gain * np.clip(kl_np / eps - 1.0, 0.0, 10.0)
    if expected_violation_term == "interior":
        np.testing.assert_allclose(extra, gain * 3.0, rtol=1e-6)
    else:
        assert extra == gain * expected_violation_term
    np.testing.assert_allclose(np.asarray(st.applied_alpha), [0.3 + extra], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(st0.applied_alpha), [0.3], rtol=1e-7)
    np.testing.assert_allclose(float(pl) - float(pl0), extra * kl_np, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(float(al), float(al0), rtol=1e-7)


# ---------------------------------------------------------------------------------------------------
# Exact policy improvement
# ---------------------------------------------------------------------------------------------------


def test_iterated_exact_improvement_is_monotone_within_the_trust_region():
    """For one state with fixed Q, iterating (E-step at scipy's η* → π' := q) raises E_π'[Q] at every step until
    it reaches max_a Q, each step's KL(q ‖ π') stays ≤ ε + 1e-6, and π' ends greedy. Once the other actions'
    probabilities underflow to 0 (log π' = −inf), the E-step and its KL stay finite."""
    rng = np.random.default_rng(18)
    q = (rng.normal(size=(1, 6)) * 2.0).astype(np.float32)
    log_prior = _np_log_softmax(rng.normal(size=(1, 6))).astype(np.float32)
    eps = 0.1
    values = [float(discrete.expected_value(jnp.asarray(log_prior), jnp.asarray(q))[0])]
    for _ in range(12):
        eta_star = _solve_dual(q, log_prior, eps)
        weights, _ = _e_step(jnp.asarray(q), jnp.asarray(log_prior), jnp.float32(eta_star), eps)
        step_kl = float(_e_step_kl(weights, jnp.asarray(log_prior))[0])
        assert step_kl <= eps + 1e-6
        assert np.all(np.isfinite(np.asarray(weights)))
        with np.errstate(divide="ignore"):  # probabilities that underflowed to 0
            log_prior = np.log(np.asarray(weights, np.float64)).astype(np.float32)
        values.append(float(discrete.expected_value(jnp.asarray(log_prior), jnp.asarray(q))[0]))
    values = np.asarray(values)
    gaps = q.max() - values
    improving = gaps[:-1] > 1e-5
    assert improving[:6].all(), values  # the greedy action is still some KL budget away
    assert np.all(np.diff(values)[improving] > 0), values
    assert np.all(np.diff(values) >= -1e-6), values
    np.testing.assert_allclose(values[-1], q.max(), rtol=1e-6)
