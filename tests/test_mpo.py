"""Tests for purempo.mpo: E-step, temperature dual, masks, Gaussian helpers, decoupled M-step, duals, toy MPO."""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import integrate, optimize, special, stats

from purempo import mpo

# Projection of raw duals after an optimiser step (log-space duals, no α floor).
_project = mpo.project_dual_params

# Jitted entry points shared by the tests (one compile per shape instead of one per eager primitive).
_e_step = jax.jit(mpo.e_step)
_temperature_grad = jax.jit(jax.grad(lambda eta, q, eps: mpo.e_step(q, eta, eps)[1]))


@jax.jit
def _e_step_weight_grads(q, eta, c):
    """Gradients of Σ c·weights w.r.t. (Q, η) and of the temperature loss w.r.t. Q."""
    g_w = jax.grad(lambda q, eta: jnp.sum(c * mpo.e_step(q, eta, 0.1)[0]), argnums=(0, 1))(q, eta)
    g_loss_q = jax.grad(lambda q: mpo.e_step(q, eta, 0.1)[1])(q)
    return g_w, g_loss_q


@jax.jit
def _positive_and_grad(raw):
    return mpo.positive(raw), jax.vmap(jax.grad(mpo.positive))(raw)


@functools.partial(jax.jit, static_argnums=(10,))
def _m_step_grads(om, os_, tm, ts, actions, w, am, as_, eps_mean, eps_std, per_dim, mask=None):
    """m_step outputs plus gradients of policy_loss and alpha_loss w.r.t. (online mean, online std, α_μ, α_σ)."""
    def f(i):
        return lambda om, os_, am, as_: mpo.m_step(om, os_, tm, ts, actions, w, am, as_, eps_mean, eps_std, per_dim,
                                                   mask)[i]

    pl, al, st = mpo.m_step(om, os_, tm, ts, actions, w, am, as_, eps_mean, eps_std, per_dim, mask)
    g_pl = jax.grad(f(0), argnums=(0, 1, 2, 3))(om, os_, am, as_)
    g_al = jax.grad(f(1), argnums=(0, 1, 2, 3))(om, os_, am, as_)
    return pl, al, st, g_pl, g_al


def _np_softmax(x, axis=0):
    x = np.asarray(x, np.float64)
    z = x - x.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def _np_dual(eta, q, eps):
    """Temperature dual g(η) = η ε + η mean_B log mean_N exp(Q/η), float64."""
    q = np.asarray(q, np.float64)
    return eta * eps + eta * np.mean(special.logsumexp(q / eta, axis=0) - np.log(q.shape[0]))


def _np_kl_vs_uniform(w):
    """KL(w ‖ uniform) per column via scipy.stats.entropy."""
    w = np.asarray(w, np.float64)
    return np.array([stats.entropy(w[:, b], np.full(w.shape[0], 1.0 / w.shape[0])) for b in range(w.shape[1])])


def _np_gauss_kl(mp, sp, mq, sq):
    mp, sp, mq, sq = (np.asarray(x, np.float64) for x in (mp, sp, mq, sq))
    return np.log(sq / sp) + (sp**2 + (mp - mq) ** 2) / (2 * sq**2) - 0.5


# ---------------------------------------------------------------------------------------------------
# E-step and temperature dual
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("eta", [0.05, 1.0, 30.0])
def test_e_step_weights_are_softmax_and_normalised(eta):
    """Weights equal a float64 numpy softmax(Q/η) over N and each column sums to 1; the returned loss
    equals the numpy dual."""
    rng = np.random.default_rng(0)
    q = rng.normal(scale=2.0, size=(16, 5)).astype(np.float32)
    w, loss = _e_step(jnp.asarray(q), eta, 0.1)
    assert w.shape == (16, 5)
    np.testing.assert_allclose(np.asarray(w), _np_softmax(q / eta), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(np.asarray(w).sum(0), 1.0, rtol=1e-5)
    np.testing.assert_allclose(float(loss), _np_dual(eta, q, 0.1), rtol=1e-5, atol=1e-6)


def test_e_step_weights_carry_no_gradient():
    """The weights are constants: d/dη and d/dQ of Σ c·w are exactly zero; the loss has no Q gradient."""
    rng = np.random.default_rng(1)
    q = jnp.asarray(rng.normal(size=(8, 3)), jnp.float32)
    c = jnp.asarray(rng.normal(size=(8, 3)), jnp.float32)

    (g_q, g_eta), g_q_loss = _e_step_weight_grads(q, jnp.float32(0.7), c)
    np.testing.assert_array_equal(np.asarray(g_q), 0.0)
    assert float(g_eta) == 0.0
    np.testing.assert_array_equal(np.asarray(g_q_loss), 0.0)


@pytest.mark.parametrize("eta", [0.1, 0.8, 5.0])
def test_temperature_gradient_is_epsilon_minus_kl(eta):
    """d(temperature_loss)/dη = ε − mean_B KL(weights ‖ uniform), KL from the library and from scipy."""
    rng = np.random.default_rng(2)
    eps = 0.05
    q = rng.normal(size=(32, 7)).astype(np.float32)
    grad = float(_temperature_grad(jnp.float32(eta), jnp.asarray(q), eps))
    w, _ = _e_step(jnp.asarray(q), eta, eps)
    kl_lib = np.asarray(mpo.kl_weights_vs_uniform(w))
    kl_np = _np_kl_vs_uniform(_np_softmax(q / eta))
    np.testing.assert_allclose(kl_lib, kl_np, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(grad, eps - kl_np.mean(), rtol=1e-4, atol=1e-5)
    # And against a central finite difference of the float64 dual.
    h = 1e-5 * eta
    fd = (_np_dual(eta + h, q, eps) - _np_dual(eta - h, q, eps)) / (2 * h)
    np.testing.assert_allclose(grad, fd, rtol=1e-4, atol=1e-5)


def test_kl_weights_vs_uniform_handles_zero_weights():
    """One-hot weights give KL = log N; uniform weights give 0; zeros do not produce NaN."""
    n = 10
    w = np.zeros((n, 2), np.float32)
    w[3, 0] = 1.0
    w[:, 1] = 1.0 / n
    kl = np.asarray(mpo.kl_weights_vs_uniform(jnp.asarray(w)))
    np.testing.assert_allclose(kl, [np.log(n), 0.0], atol=1e-6)


def test_temperature_dual_descent_reaches_scipy_minimiser():
    """Adam on an unconstrained raw with η = positive(raw) converges to the bounded scipy minimiser of the
    convex dual on a fixed batch (rtol 1e-2)."""
    rng = np.random.default_rng(3)
    eps = 0.1
    q = (rng.normal(size=(32, 16)) * 3.0).astype(np.float32)
    res = optimize.minimize_scalar(lambda e: _np_dual(e, q, eps), bounds=(1e-4, 1e3), method="bounded",
                                   options={"xatol": 1e-8})
    eta_star = res.x
    assert 1e-3 < eta_star < 1e2  # an interior minimiser
    assert abs(_np_dual(eta_star, q, eps) - res.fun) < 1e-12

    opt = optax.adam(optax.exponential_decay(0.1, 500, 0.3))
    qj = jnp.asarray(q)
    raw0 = mpo.inverse_positive(20.0)  # start far away (η₀ = 20)

    @jax.jit
    def run(raw):
        def step(carry, _):
            raw, st = carry
            g = jax.grad(lambda r: mpo.e_step(qj, mpo.positive(r), eps)[1])(raw)
            up, st = opt.update(g, st)
            return (optax.apply_updates(raw, up), st), None

        (raw, _), _ = jax.lax.scan(step, (raw, opt.init(raw)), None, length=3000)
        return mpo.positive(raw)

    eta = float(run(raw0))
    np.testing.assert_allclose(eta, eta_star, rtol=1e-2)


@pytest.mark.parametrize("scale", [1e-3, 1e3])
def test_e_step_is_reward_scale_invariant(scale):
    """Scaling Q by c scales the optimal temperature by c (scipy minimiser of the dual) and leaves the
    E-step weights at the optimum unchanged: g_{cQ}(cη) = c·g_Q(η) and softmax(cQ/cη) = softmax(Q/η)."""
    rng = np.random.default_rng(4)
    eps = 0.1
    q = (rng.normal(size=(16, 8)) * 2.0).astype(np.float64)

    def solve(values):  # minimise over log η so one bracket serves every scale
        lo = optimize.minimize_scalar(lambda log_e: _np_dual(np.exp(log_e), values, eps), bounds=(-25, 25),
                                      method="bounded", options={"xatol": 1e-10}).x
        return np.exp(lo)

    eta, eta_scaled = solve(q), solve(q * scale)
    np.testing.assert_allclose(eta_scaled, scale * eta, rtol=1e-4)
    weights, loss = mpo.e_step(jnp.asarray(q, jnp.float32), jnp.float32(eta), eps)
    weights_scaled, loss_scaled = mpo.e_step(jnp.asarray(q * scale, jnp.float32), jnp.float32(eta_scaled), eps)
    np.testing.assert_allclose(np.asarray(weights_scaled), np.asarray(weights), rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(float(loss_scaled), scale * float(loss), rtol=1e-3)


# ---------------------------------------------------------------------------------------------------
# Masks: masked_mean and the masked E-step
# ---------------------------------------------------------------------------------------------------


def _random_mask(rng, shape, p=0.6):
    mask = rng.uniform(size=shape) < p
    mask.flat[0] = True  # at least one unmasked entry
    return mask


@pytest.mark.parametrize("axis", [None, 0, 1])
def test_masked_mean_matches_numpy_loop(axis):
    """masked_mean over axis None/0/1 equals a numpy loop averaging the selected entries (0 where none is);
    NaN/inf at masked entries change nothing; mask None is the plain mean."""
    rng = np.random.default_rng(20)
    x = rng.normal(size=(6, 5)).astype(np.float32)
    mask = _random_mask(rng, x.shape)
    mask[:, 2] = False  # a column with no selected entry
    mask[3, :] = False  # a row with no selected entry
    x64 = x.astype(np.float64)

    def np_masked(x, m):
        return x[m].mean() if m.any() else 0.0

    if axis is None:
        expected = np_masked(x64, mask)
    elif axis == 0:
        expected = np.array([np_masked(x64[:, j], mask[:, j]) for j in range(x.shape[1])])
    else:
        expected = np.array([np_masked(x64[i], mask[i]) for i in range(x.shape[0])])
    poisoned = x.copy()
    poisoned[~mask] = np.where(rng.uniform(size=(~mask).sum()) < 0.5, np.nan, np.inf)
    for data in (x, poisoned):
        out = np.asarray(mpo.masked_mean(jnp.asarray(data), jnp.asarray(mask), axis=axis))
        np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.asarray(mpo.masked_mean(jnp.asarray(x), None, axis=axis)), x64.mean(axis=axis),
                               rtol=1e-6, atol=1e-7)


def test_masked_mean_broadcasts_state_mask_and_has_masked_gradient():
    """A state mask [B, 1] over x [B, D] averages the unmasked rows per column (numpy), and d/dx is
    mask/count: exactly 0 (not NaN) at masked entries even where x is NaN."""
    rng = np.random.default_rng(21)
    x = rng.normal(size=(7, 3)).astype(np.float32)
    mask = np.array([True, False, True, True, False, False, True])
    x[~mask] = np.nan
    f = jax.jit(lambda x, m: mpo.masked_mean(x, m[:, None], axis=0))
    out = np.asarray(f(jnp.asarray(x), jnp.asarray(mask)))
    np.testing.assert_allclose(out, x[mask].astype(np.float64).mean(0), rtol=1e-6)
    grad = np.asarray(jax.grad(lambda x: jnp.sum(f(x, jnp.asarray(mask))))(jnp.asarray(x)))
    expected = np.where(mask[:, None], 1.0 / mask.sum(), 0.0) * np.ones((1, 3))
    np.testing.assert_allclose(grad, expected, rtol=1e-6)


@jax.jit
def _masked_e_step_and_grad(q, eta, eps, mask):
    weights, loss = mpo.e_step(q, eta, eps, mask)
    grad = jax.grad(lambda e: mpo.e_step(q, e, eps, mask)[1])(eta)
    return weights, loss, grad


@pytest.mark.parametrize("eta", [0.2, 3.0])
def test_masked_e_step_dual_uses_unmasked_states_only(eta):
    """With a state mask, the temperature loss equals the float64 numpy dual over the unmasked columns only,
    its η-gradient equals ε − mean over unmasked states of KL(weights ‖ uniform) (scipy), unmasked weights
    equal the numpy softmax, and NaN/±inf Q at masked states leave all of these finite and unchanged."""
    rng = np.random.default_rng(22)
    eps = 0.07
    q = rng.normal(scale=2.0, size=(16, 6)).astype(np.float32)
    mask = np.array([True, False, True, True, False, True])
    poisoned = q.copy()
    poisoned[:, 1] = np.nan
    poisoned[:3, 4], poisoned[3:, 4] = np.inf, -np.inf
    expected_loss = _np_dual(eta, q[:, mask], eps)
    expected_grad = eps - _np_kl_vs_uniform(_np_softmax(q[:, mask] / eta)).mean()
    for data in (q, poisoned):
        w, loss, grad = _masked_e_step_and_grad(jnp.asarray(data), jnp.float32(eta), eps, jnp.asarray(mask))
        w = np.asarray(w)
        np.testing.assert_allclose(float(loss), expected_loss, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(float(grad), expected_grad, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(w[:, mask], _np_softmax(q[:, mask] / eta), rtol=1e-4, atol=1e-7)
        assert np.all(np.isfinite(w)), "masked columns' weights must stay finite (the M-step multiplies them)"
    # The mask matters: unmasked, the same data gives the dual over all states.
    _, loss_all, _ = _masked_e_step_and_grad(jnp.asarray(q), jnp.float32(eta), eps, jnp.ones(6, bool))
    np.testing.assert_allclose(float(loss_all), _np_dual(eta, q, eps), rtol=1e-5, atol=1e-6)
    assert abs(float(loss_all) - expected_loss) > 1e-3


def test_masked_e_step_with_nothing_unmasked_is_finite():
    """An all-false mask (a batch of terminal states) gives the loss η·ε and gradient ε, finite, whatever Q."""
    q = jnp.full((8, 3), jnp.nan)
    _, loss, grad = _masked_e_step_and_grad(q, jnp.float32(2.0), 0.1, jnp.zeros(3, bool))
    np.testing.assert_allclose(float(loss), 0.2, rtol=1e-6)
    np.testing.assert_allclose(float(grad), 0.1, rtol=1e-6)


# ---------------------------------------------------------------------------------------------------
# Dual parametrisation
# ---------------------------------------------------------------------------------------------------


def test_positive_inverse_roundtrip():
    """positive(inverse_positive(v)) == v for v in [1e-3, 1e4]."""
    values = np.logspace(-3, 4, 57).astype(np.float32)
    back = np.asarray(mpo.positive(mpo.inverse_positive(jnp.asarray(values))))
    np.testing.assert_allclose(back, values, rtol=1e-5)
    # Scalar (python float) inputs, as used by init_dual_params.
    for v in (1e-3, 1.0, 1e4):
        np.testing.assert_allclose(float(mpo.positive(mpo.inverse_positive(v))), v, rtol=1e-5)


def test_positive_is_exp_of_clipped_raw():
    """positive(raw) equals float64 exp(clip(raw, LOG_MIN, LOG_MAX)) on [-1e4, 1e4] (saturating at
    exp(±18)), and its gradient equals exp(raw) strictly inside the interval and 0 outside."""
    raw = np.sort(np.concatenate([np.linspace(-1e4, 1e4, 2001), np.linspace(-50.0, 50.0, 1001) + 0.013]))
    raw = raw.astype(np.float32)
    val, grads = (np.asarray(x, np.float64) for x in _positive_and_grad(jnp.asarray(raw)))
    clipped = np.clip(raw.astype(np.float64), mpo.LOG_MIN, mpo.LOG_MAX)
    np.testing.assert_allclose(val, np.exp(clipped), rtol=1e-6)
    assert val.min() == pytest.approx(np.exp(-18.0), rel=1e-6) and val.max() == pytest.approx(np.exp(18.0), rel=1e-6)
    inside = (raw > mpo.LOG_MIN) & (raw < mpo.LOG_MAX)
    assert inside.sum() > 300 and (~inside).sum() > 300
    np.testing.assert_allclose(grads[inside], np.exp(raw[inside].astype(np.float64)), rtol=1e-6)
    np.testing.assert_array_equal(grads[~inside], 0.0)


def test_init_dual_params_shapes_and_values():
    """init_dual_params maps the initial values through inverse_positive with [D] or [1] alphas."""
    for per_dim, shape in ((True, (3,)), (False, (1,))):
        d = mpo.init_dual_params(3, per_dim, 2.0, 0.5, 7.0)
        assert d.alpha_mean.shape == shape and d.alpha_std.shape == shape
        np.testing.assert_allclose(float(mpo.positive(d.temperature)), 2.0, rtol=1e-5)
        np.testing.assert_allclose(float(mpo.positive(d.penalty_temperature)), 2.0, rtol=1e-5)
        np.testing.assert_allclose(np.asarray(mpo.positive(d.alpha_mean)), 0.5, rtol=1e-5)
        np.testing.assert_allclose(np.asarray(mpo.positive(d.alpha_std)), 7.0, rtol=1e-5)


RAW_VALUES = np.array([-1e4, -100.0, -18.5, -17.0, -9.0, -5.0, -1.0, 0.0, 3.0, 17.9, 18.5, 40.0], np.float32)


def _raw_duals():
    """Raw (log) duals spanning both sides of [LOG_MIN, LOG_MAX]; alphas [D] with D = len(RAW_VALUES)."""
    return mpo.DualParams(temperature=jnp.float32(-17.0), penalty_temperature=jnp.float32(25.0),
                          alpha_mean=jnp.asarray(RAW_VALUES), alpha_std=jnp.asarray(RAW_VALUES[::-1]))


@pytest.mark.parametrize("min_alpha", [None, 0.0, 1e-9, 1e-8, 1e-3, 0.5, 30.0])
def test_project_dual_params_clips_and_floors_alphas(min_alpha):
    """Every raw dual is clipped into [LOG_MIN, LOG_MAX] (numpy clip) and the α_μ, α_σ raws are further floored
    at log(min_alpha) (numpy maximum), temperatures never; so positive(α) ≥ min_alpha. None: the default."""
    raw = _raw_duals()
    out = mpo.project_dual_params(raw) if min_alpha is None else mpo.project_dual_params(raw, min_alpha)
    floor = -np.inf if not min_alpha else np.log(min_alpha)

    def clip(x):
        return np.clip(np.asarray(x, np.float64), -18.0, 18.0)

    np.testing.assert_allclose(float(out.temperature), -17.0, rtol=1e-7)  # below log(min_alpha): untouched
    np.testing.assert_allclose(float(out.penalty_temperature), 18.0, rtol=1e-7)
    np.testing.assert_allclose(np.asarray(out.alpha_mean), np.maximum(clip(raw.alpha_mean), floor), rtol=1e-6,
                               atol=1e-5)
    np.testing.assert_allclose(np.asarray(out.alpha_std), np.maximum(clip(raw.alpha_std), floor), rtol=1e-6,
                               atol=1e-5)
    for alpha in (out.alpha_mean, out.alpha_std):
        value = np.asarray(mpo.positive(alpha), np.float64)
        assert np.all(value >= (min_alpha or 0.0) * (1 - 1e-5))
        assert np.all(value <= np.exp(18.0) * (1 + 1e-6))
    # Raws already inside the interval and above the floor are returned unchanged.
    keep = (RAW_VALUES >= max(floor, -18.0)) & (RAW_VALUES <= 18.0)
    np.testing.assert_array_equal(np.asarray(out.alpha_mean)[keep], RAW_VALUES[keep])


def test_proportional_alpha_is_gain_times_the_clipped_excess_violation():
    violation = jnp.asarray([0.0, 0.5, 1.0, 1.5, 4.0, 11.0, 50.0, 1e9])
    np.testing.assert_allclose(np.asarray(mpo.proportional_alpha(violation, 0.3)),
                               0.3 * np.asarray([0, 0, 0, 0.5, 3.0, 10.0, 10.0, 10.0]), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(mpo.proportional_alpha(violation, 0.0)), 0.0)
    # No gradient flows into the violation (it is a multiplier, not part of the objective).
    assert float(jax.grad(lambda v: jnp.sum(mpo.proportional_alpha(v, 0.3)))(violation).sum()) == 0.0


@pytest.mark.parametrize("per_dim", [True, False])
def test_proportional_gain_acts_as_a_larger_multiplier_in_the_policy_loss(per_dim):
    """m_step with proportional_gain k has the policy gradient of m_step with gain 0 and the multipliers
    α + k·clip(KL/ε − 1, 0, 10) (violations from the stats); the multipliers' loss and the stats are unchanged."""
    rng = np.random.default_rng(5)
    B, D, N = 6, 3, 4
    tm = rng.normal(size=(B, D)).astype(np.float32)
    ts = rng.uniform(0.3, 1.0, size=(B, D)).astype(np.float32)
    om = jnp.asarray(tm + 0.3 * rng.normal(size=(B, D)), jnp.float32)
    os_ = jnp.asarray(ts * np.exp(0.3 * rng.normal(size=(B, D))), jnp.float32)
    actions = rng.normal(size=(N, B, D)).astype(np.float32)
    weights = np.full((N, B), 1.0 / N, np.float32)
    shape = (D,) if per_dim else (1,)
    alpha_mean, alpha_std = jnp.full(shape, 0.7), jnp.full(shape, 3.0)

    def run(gain, a_mean, a_std):
        def f(om, os_):
            loss, alpha_loss, stats = mpo.m_step(om, os_, tm, ts, actions, weights, a_mean, a_std, 0.02, 2e-4,
                                                 per_dim, proportional_gain=gain)
            return loss, (alpha_loss, stats)
        return jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(om, os_)

    (_, (alpha_loss, stats)), grads = run(0.4, alpha_mean, alpha_std)
    assert np.all(np.asarray(stats.violation_mean) > 1.0)  # the proportional term is active
    applied_mean = alpha_mean + 0.4 * np.clip(np.asarray(stats.violation_mean) - 1.0, 0.0, 10.0)
    applied_std = alpha_std + 0.4 * np.clip(np.asarray(stats.violation_std) - 1.0, 0.0, 10.0)
    np.testing.assert_allclose(np.asarray(stats.applied_alpha_mean), applied_mean, rtol=1e-6)
    (_, (alpha_loss_0, stats_0)), grads_0 = run(0.0, jnp.asarray(applied_mean), jnp.asarray(applied_std))
    for g, g0 in zip(grads, grads_0):
        np.testing.assert_allclose(np.asarray(g), np.asarray(g0), rtol=1e-5, atol=1e-7)
    (_, (alpha_loss_plain, _)), grads_plain = run(0.0, alpha_mean, alpha_std)
    np.testing.assert_allclose(float(alpha_loss), float(alpha_loss_plain), rtol=1e-6)
    assert not np.allclose(np.asarray(grads[0]), np.asarray(grads_plain[0]))


@pytest.mark.parametrize("per_dim,gain", [(True, 0.0), (False, 0.0), (True, 0.4), (False, 0.4)])
def test_normalized_penalty_divides_the_policy_gradient_by_one_plus_the_applied_multipliers(per_dim, gain):
    """normalize_penalty: the policy's loss and gradient are those without it divided by 1 + Σ α_μ + Σ α_σ as
    applied (learned + proportional, recomputed here from the stats' violations); the multipliers' loss, their
    gradient and the stats are unchanged, and no gradient flows through the divisor."""
    rng = np.random.default_rng(11)
    om, os_, tm, ts, actions, weights = _random_m_step_inputs(rng)
    shape = (D_,) if per_dim else (1,)
    alpha_mean = jnp.asarray(rng.uniform(0.5, 50.0, size=shape), jnp.float32)
    alpha_std = jnp.asarray(rng.uniform(10.0, 5000.0, size=shape), jnp.float32)

    def run(normalize):
        def f(om, os_, am, as_):
            loss, alpha_loss, st = mpo.m_step(om, os_, tm, ts, actions, weights, am, as_, 0.02, 2e-4, per_dim,
                                              proportional_gain=gain, normalize_penalty=normalize)
            return loss + alpha_loss, (loss, alpha_loss, st)
        return jax.value_and_grad(f, argnums=(0, 1, 2, 3), has_aux=True)(om, os_, alpha_mean, alpha_std)

    (_, (loss, alpha_loss, st)), (g_om, g_os, g_am, g_as) = run(True)
    (_, (loss0, alpha_loss0, st0)), (g_om0, g_os0, g_am0, g_as0) = run(False)
    applied_mean = np.asarray(alpha_mean) + gain * np.clip(np.asarray(st0.violation_mean) - 1.0, 0.0, 10.0)
    applied_std = np.asarray(alpha_std) + gain * np.clip(np.asarray(st0.violation_std) - 1.0, 0.0, 10.0)
    divisor = 1.0 + applied_mean.sum() + applied_std.sum()
    np.testing.assert_allclose(float(loss), float(loss0) / divisor, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(g_om), np.asarray(g_om0) / divisor, rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(np.asarray(g_os), np.asarray(g_os0) / divisor, rtol=1e-4, atol=1e-9)
    assert float(alpha_loss) == float(alpha_loss0)
    np.testing.assert_array_equal(np.asarray(g_am), np.asarray(g_am0))
    np.testing.assert_array_equal(np.asarray(g_as), np.asarray(g_as0))
    np.testing.assert_array_equal(np.asarray(st.kl_mean), np.asarray(st0.kl_mean))


@pytest.mark.parametrize("per_dim,eps_per_dim", [(True, False), (False, False), (True, True), (False, True)])
def test_m_step_violation_is_constrained_kl_over_its_bound(per_dim, eps_per_dim):
    """MStepStats.violation_* = per-dimension KL / (ε/D) with per-dimension multipliers, Σ KL / ε otherwise
    (closed-form Gaussian KLs in numpy); with `epsilon_per_dimension` ε is each dimension's bound: KL / ε and
    Σ KL / (D·ε). The multipliers' loss is Σ α·(bound − KL) with the same bounds."""
    rng = np.random.default_rng(3)
    B, D, N = 7, 3, 5
    tm = rng.normal(size=(B, D)).astype(np.float32)
    ts = rng.uniform(0.3, 1.0, size=(B, D)).astype(np.float32)
    om = (tm + 0.2 * rng.normal(size=(B, D))).astype(np.float32)
    os_ = (ts * np.exp(0.2 * rng.normal(size=(B, D)))).astype(np.float32)
    actions = rng.normal(size=(N, B, D)).astype(np.float32)
    weights = np.full((N, B), 1.0 / N, np.float32)
    shape = (D,) if per_dim else (1,)
    alpha_mean, alpha_std = jnp.full(shape, 0.5), jnp.full(shape, 2.0)
    _, alpha_loss, st = mpo.m_step(om, os_, tm, ts, actions, weights, alpha_mean, alpha_std, 0.03, 6e-4, per_dim,
                                   epsilon_per_dimension=eps_per_dim)
    kl_mean = np.mean((tm - om) ** 2 / (2 * ts**2), axis=0)
    ratio = ts**2 / os_**2
    kl_std = np.mean(0.5 * (ratio - 1 - np.log(ratio)), axis=0)
    scale = {(True, False): 1.0 / D, (False, False): 1.0, (True, True): 1.0, (False, True): float(D)}[
        (per_dim, eps_per_dim)]
    bound_mean, bound_std = 0.03 * scale, 6e-4 * scale
    if per_dim:
        kl_mean_c, kl_std_c = kl_mean, kl_std
    else:
        kl_mean_c, kl_std_c = np.array([kl_mean.sum()]), np.array([kl_std.sum()])
    np.testing.assert_allclose(np.asarray(st.violation_mean), kl_mean_c / bound_mean, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(st.violation_std), kl_std_c / bound_std, rtol=1e-4)
    want_alpha_loss = np.sum(0.5 * (bound_mean - kl_mean_c)) + np.sum(2.0 * (bound_std - kl_std_c))
    np.testing.assert_allclose(float(alpha_loss), want_alpha_loss, rtol=1e-4, atol=1e-7)


# ---------------------------------------------------------------------------------------------------
# Gaussian helpers
# ---------------------------------------------------------------------------------------------------


def test_gaussian_log_prob_matches_scipy():
    """Per-dimension log density equals scipy.stats.norm.logpdf, with broadcasting."""
    rng = np.random.default_rng(4)
    x = rng.normal(scale=3.0, size=(6, 4, 3)).astype(np.float32)
    mean = rng.normal(size=(4, 3)).astype(np.float32)
    std = rng.uniform(0.05, 3.0, size=(4, 3)).astype(np.float32)
    lp = np.asarray(mpo.gaussian_log_prob(jnp.asarray(x), mean, std))
    assert lp.shape == x.shape
    np.testing.assert_allclose(lp, stats.norm.logpdf(x, mean, std), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("antithetic", [False, True])
def test_sampled_gaussian_actions_have_the_policy_moments(antithetic):
    """Many samples of either kind have mean μ and std σ per dimension (KS test against N(μ, σ²) on the
    independent half), and the shape is [N, ...]."""
    mean, std = jnp.asarray([[0.5, -1.0], [2.0, 0.0]]), jnp.asarray([[0.3, 1.5], [0.1, 2.0]])
    a = np.asarray(mpo.sample_gaussian(jax.random.PRNGKey(0), mean, std, 4000, antithetic))
    assert a.shape == (4000, 2, 2)
    np.testing.assert_allclose(a.mean(0), mean, atol=4 * float(jnp.max(std)) / np.sqrt(4000))
    np.testing.assert_allclose(a.std(0), std, rtol=0.05)
    for i, j in itertools.product(range(2), range(2)):
        assert stats.kstest(a[:2000, i, j], "norm", args=(float(mean[i, j]), float(std[i, j]))).pvalue > 1e-3


def test_antithetic_samples_mirror_and_make_a_linear_q_exact():
    """Pairs (j, j + N/2) mirror about μ, so the sample mean of a Q linear in the action equals Q(μ) exactly
    (closed form), while independent samples miss it. For Q = −|a − c|² with its optimum c well outside the
    policy's spread (the linear part dominates) the mean over 2,000 keys equals the closed form
    −(|μ − c|² + Σσ²) for both kinds, with a smaller spread for mirrored pairs."""
    mean, std = jnp.asarray([0.2, -0.4, 1.0]), jnp.asarray([0.5, 1.0, 0.2])
    w, c = jnp.asarray([1.0, -2.0, 3.0]), jnp.asarray([2.0, -3.0, 3.0])
    pairs = mpo.sample_gaussian(jax.random.PRNGKey(1), mean, std, 8, antithetic=True)
    np.testing.assert_allclose(pairs[:4] + pairs[4:], jnp.broadcast_to(2 * mean, (4, 3)), atol=1e-6)
    linear = lambda a: a @ w + 0.7  # noqa: E731
    np.testing.assert_allclose(jnp.mean(linear(pairs)), linear(mean), atol=1e-5)
    independent = mpo.sample_gaussian(jax.random.PRNGKey(1), mean, std, 8)
    assert abs(float(jnp.mean(linear(independent)) - linear(mean))) > 1e-3

    def estimates(antithetic):
        quadratic = lambda a: -jnp.sum((a - c) ** 2, axis=-1)  # noqa: E731
        sample = lambda k: jnp.mean(quadratic(mpo.sample_gaussian(k, mean, std, 8, antithetic)))  # noqa: E731
        return np.asarray(jax.vmap(sample)(jax.random.split(jax.random.PRNGKey(2), 2000)))

    exact = -(float(jnp.sum((mean - c) ** 2)) + float(jnp.sum(std ** 2)))
    mirrored, plain = estimates(True), estimates(False)
    for values in (mirrored, plain):
        assert abs(values.mean() - exact) < 4 * values.std() / np.sqrt(len(values))
    assert mirrored.std() < 0.5 * plain.std()
    with pytest.raises(ValueError, match="even number of samples, got 7"):
        mpo.sample_gaussian(jax.random.PRNGKey(0), mean, std, 7, antithetic=True)


@pytest.mark.parametrize(
    "mp,sp,mq,sq",
    [(0.0, 1.0, 0.0, 1.0), (0.3, 1.0, -0.5, 1.0), (0.0, 0.5, 0.0, 2.0), (1.2, 2.5, -0.7, 0.4), (0.0, 1.0, 1e-2, 1.01)],
)
def test_gaussian_kl_matches_numerical_integration(mp, sp, mq, sq):
    """Closed-form KL(p ‖ q) equals ∫ p log(p/q) by scipy quadrature."""
    def integrand(x):
        return stats.norm.pdf(x, mp, sp) * (stats.norm.logpdf(x, mp, sp) - stats.norm.logpdf(x, mq, sq))

    ref, _ = integrate.quad(integrand, mp - 15 * sp, mp + 15 * sp, epsabs=1e-13, epsrel=1e-12, limit=200)
    kl = float(mpo.gaussian_kl(jnp.float32(mp), jnp.float32(sp), jnp.float32(mq), jnp.float32(sq)))
    np.testing.assert_allclose(kl, ref, rtol=1e-4, atol=1e-6)
    assert kl >= 0.0


def test_gaussian_kl_vectorised_matches_numpy():
    """Elementwise KL on arrays matches the float64 closed form and is exactly 0 for identical inputs."""
    rng = np.random.default_rng(5)
    mp, mq = rng.normal(size=(2, 5, 3)).astype(np.float32)
    sp, sq = rng.uniform(0.1, 2.0, size=(2, 5, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(mpo.gaussian_kl(mp, sp, mq, sq)), _np_gauss_kl(mp, sp, mq, sq),
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(mpo.gaussian_kl(mp, sp, mp, sp)), 0.0)


# ---------------------------------------------------------------------------------------------------
# M-step
# ---------------------------------------------------------------------------------------------------


N_, B_, D_ = 12, 3, 3  # shared M-step test shapes (one compile of the jitted helper per config)


def _random_m_step_inputs(rng, n=N_, b=B_, d=D_, scale=1.0):
    target_mean = rng.normal(size=(b, d)).astype(np.float32)
    target_std = rng.uniform(0.3, 1.5, size=(b, d)).astype(np.float32)
    online_mean = (target_mean + 0.2 * rng.normal(size=(b, d))).astype(np.float32)
    online_std = (target_std * np.exp(0.2 * rng.normal(size=(b, d)))).astype(np.float32)
    actions = (target_mean + target_std * rng.normal(size=(n, b, d)) * scale).astype(np.float32)
    w = _np_softmax(rng.normal(size=(n, b))).astype(np.float32)
    return online_mean, online_std, target_mean, target_std, actions, w


@pytest.mark.parametrize("per_dim", [True, False])
def test_m_step_zero_kl_and_alpha_gradient_is_epsilon_when_online_equals_target(per_dim):
    """online == target ⇒ KLs are exactly zero and d(alpha_loss)/dα is the bound: ε/D per dimension with
    per_dim_constraining, ε for the single multiplier of the summed KL otherwise."""
    rng = np.random.default_rng(6)
    _, _, tm, ts, actions, w = _random_m_step_inputs(rng)
    shape = (D_,) if per_dim else (1,)
    eps_mean, eps_std = 0.07, 3e-3
    _, _, st, _, (_, _, g_am, g_as) = _m_step_grads(tm, ts, tm, ts, actions, w, jnp.full(shape, 2.0),
                                                      jnp.full(shape, 5.0), eps_mean, eps_std, per_dim)
    np.testing.assert_array_equal(np.asarray(st.kl_mean), 0.0)
    np.testing.assert_array_equal(np.asarray(st.kl_std), 0.0)
    split = D_ if per_dim else 1
    np.testing.assert_allclose(np.asarray(g_am), np.full(shape, eps_mean / split), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(g_as), np.full(shape, eps_std / split), rtol=1e-6)


@pytest.mark.parametrize("per_dim", [True, False])
def test_m_step_alpha_gradient_is_epsilon_minus_kl(per_dim):
    """Random online/target: stats KLs match numpy (mean over B, per dim); d(alpha_loss)/dα_d = ε/D − KL_d
    per dimension, or ε − Σ_d KL_d for one multiplier; alpha_loss carries no gradient into the policy."""
    rng = np.random.default_rng(7)
    om, os_, tm, ts, actions, w = _random_m_step_inputs(rng)
    shape = (D_,) if per_dim else (1,)
    eps_mean, eps_std = 0.01, 1e-3
    kl_mean_np = _np_gauss_kl(tm, ts, om, ts).mean(0)
    kl_std_np = _np_gauss_kl(tm, ts, tm, os_).mean(0)
    _, _, st, _, (g_om, g_os, g_am, g_as) = _m_step_grads(om, os_, tm, ts, actions, w, jnp.full(shape, 2.0),
                                                            jnp.full(shape, 5.0), eps_mean, eps_std, per_dim)
    np.testing.assert_allclose(np.asarray(st.kl_mean), kl_mean_np, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(np.asarray(st.kl_std), kl_std_np, rtol=1e-4, atol=1e-7)
    if per_dim:
        eps_mean, eps_std = eps_mean / D_, eps_std / D_
    else:
        kl_mean_np, kl_std_np = kl_mean_np.sum(keepdims=True), kl_std_np.sum(keepdims=True)
    np.testing.assert_allclose(np.asarray(g_am), eps_mean - kl_mean_np, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(np.asarray(g_as), eps_std - kl_std_np, rtol=1e-4, atol=1e-7)
    np.testing.assert_array_equal(np.asarray(g_om), 0.0)
    np.testing.assert_array_equal(np.asarray(g_os), 0.0)


@pytest.mark.parametrize("per_dim", [True, False])
def test_m_step_policy_gradient_matches_analytic(per_dim):
    """d(policy_loss)/d(online mean, online std) equals the hand-derived gradient of
    −mean_B Σ_j w_j [log N(a_j; μ, σ') + log N(a_j; μ', σ)] + α_μ·KL_μ + α_σ·KL_σ; no gradient reaches α."""
    rng = np.random.default_rng(8)
    om, os_, tm, ts, a, w = (np.asarray(x, np.float64) for x in _random_m_step_inputs(rng))
    am = np.array([0.7, 3.0, 0.1]) if per_dim else np.array([1.3])
    as_ = np.array([20.0, 4.0, 60.0]) if per_dim else np.array([9.0])
    am_d, as_d = np.broadcast_to(am, (D_,)), np.broadcast_to(as_, (D_,))
    # Weighted NLL part, averaged over B.
    g_mean = -np.sum(w[:, :, None] * (a - om) / ts**2, axis=0) / B_
    g_std = np.sum(w[:, :, None] * (1.0 / os_ - (a - tm) ** 2 / os_**3), axis=0) / B_
    # KL parts: KL(N(μ',σ')‖N(μ,σ')) = (μ−μ')²/(2σ'²); KL(N(μ',σ')‖N(μ',σ)) = ½(σ'²/σ² − 1 − log σ'²/σ²).
    g_mean += am_d * (om - tm) / ts**2 / B_
    g_std += as_d * (1.0 / os_ - ts**2 / os_**3) / B_
    # Loss value: weighted NLL + Σ α·KL.
    nll = -np.mean(np.sum(w * (stats.norm.logpdf(a, om, ts).sum(-1) + stats.norm.logpdf(a, tm, os_).sum(-1)), 0))
    kl_m, kl_s = _np_gauss_kl(tm, ts, om, ts).mean(0), _np_gauss_kl(tm, ts, tm, os_).mean(0)
    if not per_dim:
        kl_m, kl_s = kl_m.sum(keepdims=True), kl_s.sum(keepdims=True)
    loss_np = nll + np.sum(am * kl_m) + np.sum(as_ * kl_s)

    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    pl, _, _, (g_om, g_os, g_am, g_as), _ = _m_step_grads(
        f32(om), f32(os_), f32(tm), f32(ts), f32(a), f32(w), f32(am), f32(as_), 0.01, 1e-3, per_dim
    )
    np.testing.assert_allclose(float(pl), loss_np, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(g_om), g_mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(g_os), g_std, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(g_am), 0.0)
    np.testing.assert_array_equal(np.asarray(g_as), 0.0)


def test_m_step_policy_gradient_tiny_case():
    """B=1, D=1: d/dμ policy_loss = −Σ_j w_j (a_j − μ)/σ'² + α_μ (μ − μ')/σ'²."""
    a = np.array([0.3, -1.1, 2.0, 0.5])
    w = np.array([0.1, 0.2, 0.3, 0.4])
    mu, mu_t, sig_t, alpha = 0.25, -0.1, 0.8, 3.0
    expected = -np.sum(w * (a - mu)) / sig_t**2 + alpha * (mu - mu_t) / sig_t**2
    col = lambda x: jnp.full((1, 1), x, jnp.float32)  # noqa: E731
    _, _, _, (g_om, _, _, _), _ = _m_step_grads(
        col(mu), col(sig_t), col(mu_t), col(sig_t), jnp.asarray(a, jnp.float32).reshape(4, 1, 1),
        jnp.asarray(w, jnp.float32).reshape(4, 1), jnp.full((1,), alpha), jnp.full((1,), 1.0), 0.1, 0.1, True
    )
    np.testing.assert_allclose(float(g_om[0, 0]), expected, rtol=1e-5)


def test_m_step_unconstrained_optimum_is_weighted_mle():
    """With α = 0 the policy loss is stationary at the closed-form weighted MLE
    μ* = Σ_j w_j a_j, σ*² = Σ_j w_j (a_j − μ')², and not stationary elsewhere."""
    rng = np.random.default_rng(9)
    _, _, tm, ts, a, w = _random_m_step_inputs(rng)
    a64, w64 = a.astype(np.float64), w.astype(np.float64)
    mu_star = np.sum(w64[:, :, None] * a64, axis=0)
    sig_star = np.sqrt(np.sum(w64[:, :, None] * (a64 - tm) ** 2, axis=0))
    zero = jnp.zeros((D_,))

    def grads(om, os_):
        _, _, _, (g_m, g_s, _, _), _ = _m_step_grads(jnp.asarray(om, jnp.float32), jnp.asarray(os_, jnp.float32),
                                                     tm, ts, a, w, zero, zero, 0.1, 0.1, True)
        return np.asarray(g_m), np.asarray(g_s)

    g_m, g_s = grads(mu_star, sig_star)
    np.testing.assert_allclose(g_m, 0.0, atol=1e-4)
    np.testing.assert_allclose(g_s, 0.0, atol=1e-4)
    g_m2, g_s2 = grads(mu_star + 0.1, sig_star * 1.2)
    assert np.all(g_m2 > 0) and np.all(g_s2 > 0)


def _np_masked_m_step(om, os_, tm, ts, a, w, am, as_, eps_mean, eps_std, per_dim, mask):
    """Reference M-step in float64 by a Python loop over the unmasked states: (policy_loss, alpha grads,
    per-dim KLs, d policy_loss / d online mean, d policy_loss / d online std)."""
    om, os_, tm, ts, a, w = (np.asarray(x, np.float64) for x in (om, os_, tm, ts, a, w))
    states = [b for b in range(om.shape[0]) if mask[b]]
    d = om.shape[1]
    nll, kl_m, kl_s = 0.0, np.zeros(d), np.zeros(d)
    for b in states:
        for j in range(a.shape[0]):
            log_prob = stats.norm.logpdf(a[j, b], om[b], ts[b]).sum() + stats.norm.logpdf(a[j, b], tm[b], os_[b]).sum()
            nll -= w[j, b] * log_prob
        kl_m += _np_gauss_kl(tm[b], ts[b], om[b], ts[b])
        kl_s += _np_gauss_kl(tm[b], ts[b], tm[b], os_[b])
    nll, kl_m, kl_s = nll / len(states), kl_m / len(states), kl_s / len(states)
    if per_dim:
        c_m, c_s, e_m, e_s = kl_m, kl_s, eps_mean / d, eps_std / d
    else:
        c_m, c_s, e_m, e_s = kl_m.sum(keepdims=True), kl_s.sum(keepdims=True), eps_mean, eps_std
    am_d, as_d = np.broadcast_to(am, (d,)), np.broadcast_to(as_, (d,))
    g_mean, g_std = np.zeros_like(om), np.zeros_like(os_)
    for b in states:
        g_mean[b] = (-np.sum(w[:, b, None] * (a[:, b] - om[b]), 0) / ts[b] ** 2 + am_d * (om[b] - tm[b]) / ts[b] ** 2)
        g_std[b] = (np.sum(w[:, b, None] * (1.0 / os_[b] - (a[:, b] - tm[b]) ** 2 / os_[b] ** 3), 0)
                    + as_d * (1.0 / os_[b] - ts[b] ** 2 / os_[b] ** 3))
    loss = nll + np.sum(am * c_m) + np.sum(as_ * c_s)
    return loss, (e_m - c_m, e_s - c_s), (kl_m, kl_s), g_mean / len(states), g_std / len(states)


@pytest.mark.parametrize("per_dim", [True, False])
def test_masked_m_step_matches_loop_over_unmasked_states(per_dim):
    """With a state mask, policy loss, per-dim KLs, α-gradients (ε/D − KL_d or ε − Σ KL) and policy gradients
    equal a float64 loop over the unmasked states only; masked states get exactly zero policy gradient."""
    rng = np.random.default_rng(23)
    b = 5
    om, os_, tm, ts, a, w = _random_m_step_inputs(rng, b=b)
    mask = np.array([True, False, True, True, False])
    am = np.array([0.7, 3.0, 0.1], np.float32) if per_dim else np.array([1.3], np.float32)
    as_ = np.array([20.0, 4.0, 60.0], np.float32) if per_dim else np.array([9.0], np.float32)
    eps_mean, eps_std = 0.05, 2e-3
    loss_np, (g_am_np, g_as_np), (kl_m_np, kl_s_np), g_om_np, g_os_np = _np_masked_m_step(
        om, os_, tm, ts, a, w, am, as_, eps_mean, eps_std, per_dim, mask)
    pl, _, st, (g_om, g_os, _, _), (_, _, g_am, g_as) = _m_step_grads(
        om, os_, tm, ts, a, w, am, as_, eps_mean, eps_std, per_dim, jnp.asarray(mask))
    np.testing.assert_allclose(float(pl), loss_np, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(st.kl_mean), kl_m_np, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(np.asarray(st.kl_std), kl_s_np, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(np.asarray(g_am), g_am_np, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(np.asarray(g_as), g_as_np, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(np.asarray(g_om), g_om_np, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(g_os), g_os_np, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(g_om)[~mask], 0.0)
    np.testing.assert_array_equal(np.asarray(g_os)[~mask], 0.0)
    # Arbitrary (finite) values at the masked states change nothing.
    om2, os2, tm2, ts2, a2, w2 = (x.copy() for x in (om, os_, tm, ts, a, w))
    om2[~mask], os2[~mask], tm2[~mask], ts2[~mask] = 1e3, 1e-3, -50.0, 20.0
    a2[:, ~mask] = 1e4
    w2[:, ~mask] = 7.0
    pl2, _, st2, (g_om2, g_os2, _, _), (_, _, g_am2, g_as2) = _m_step_grads(
        om2, os2, tm2, ts2, a2, w2, am, as_, eps_mean, eps_std, per_dim, jnp.asarray(mask))
    for x, y in ((pl, pl2), (st.kl_mean, st2.kl_mean), (st.kl_std, st2.kl_std), (g_am, g_am2), (g_as, g_as2)):
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(np.asarray(g_om2)[mask], np.asarray(g_om)[mask], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(np.asarray(g_os2)[mask], np.asarray(g_os)[mask], rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(np.asarray(g_om2)[~mask], 0.0)


def _kkt_problem():
    """A fixed M-step problem (B=1, D=2) whose weights pull dim 0's mean far (active mean constraint) and
    leave dim 1's mean almost still (inactive), while both stds want to move far (active std constraints)."""
    rng = np.random.default_rng(0)
    n, d = 32, 2
    tm = np.zeros((1, d), np.float32)
    ts = np.array([[1.0, 0.5]], np.float32)
    a = (tm + ts * rng.normal(size=(n, 1, d))).astype(np.float32)
    q = 3.0 * a[..., 0] - 2.0 * a[..., 1] ** 2
    w = _np_softmax(q / 0.5).astype(np.float32)
    return tm, ts, a, w


@functools.partial(jax.jit, static_argnums=(6, 7))
def _lagrangian_descent_ascent(tm, ts, a, w, eps_mean, eps_std, per_dim, steps):
    """Simultaneous Adam descent on (μ, log σ) of policy_loss and on raw α of alpha_loss, from online = target."""
    d = tm.shape[1]
    shape = (d,) if per_dim else (1,)
    opt = optax.adam(optax.exponential_decay(0.02, steps, 0.01))
    dual_opt = optax.adam(optax.exponential_decay(0.05, steps, 0.01))
    pol = (tm, jnp.log(ts))
    alphas = (jnp.zeros(shape), jnp.zeros(shape))

    def step(c, _):
        pol, alphas, ps, ds = c

        def loss(pol, alphas):
            pl, al, _ = mpo.m_step(pol[0], jnp.exp(pol[1]), tm, ts, a, w, mpo.positive(alphas[0]),
                                   mpo.positive(alphas[1]), eps_mean, eps_std, per_dim)
            return pl + al

        g_pol, g_alpha = jax.grad(loss, argnums=(0, 1))(pol, alphas)
        up, ps = opt.update(g_pol, ps)
        up_a, ds = dual_opt.update(g_alpha, ds)
        return (optax.apply_updates(pol, up), optax.apply_updates(alphas, up_a), ps, ds), None

    (pol, alphas, _, _), _ = jax.lax.scan(step, (pol, alphas, opt.init(pol), dual_opt.init(alphas)), None,
                                          length=steps)
    return pol[0][0], jnp.exp(pol[1])[0], mpo.positive(alphas[0]), mpo.positive(alphas[1])


@pytest.mark.parametrize("per_dim", [True, False])
def test_m_step_lagrangian_saddle_point_matches_kkt(per_dim):
    """Gradient descent on policy_loss / ascent via alpha_loss converges to the KKT solution of the
    decoupled trust-region problem, derived in closed form (mean) and with scipy.brentq (std):
      μ(α) = (Σ w a + α μ')/(1+α),  σ(α)² = (Σ w (a−μ')² + α σ'²)/(1+α),  KL(α) = bound where active, α = 0
    else; the bound is ε/D per dimension with per_dim_constraining and ε on the KL summed over dims otherwise."""
    tm, ts, a, w = _kkt_problem()
    eps_mean, eps_std = 1e-2, 1e-3
    mu, sig, alpha_mean, alpha_std = (np.asarray(x, np.float64) for x in
                                      _lagrangian_descent_ascent(tm, ts, a, w, eps_mean, eps_std, per_dim, 4000))
    t_mean, t_std = tm[0].astype(np.float64), ts[0].astype(np.float64)
    w64, a64 = w.astype(np.float64), a.astype(np.float64)
    wm = np.sum(w64[:, :, None] * a64, axis=0)[0]
    second = np.sum(w64[:, :, None] * (a64 - t_mean) ** 2, axis=0)[0]

    def mean_of(alpha):
        return (wm + alpha * t_mean) / (1 + alpha)

    def std_of(alpha):
        return np.sqrt((second + alpha * t_std**2) / (1 + alpha))

    def kl_std(sig):
        r = t_std**2 / sig**2
        return 0.5 * (r - 1 - np.log(r))

    if per_dim:
        bound_mean, bound_std = eps_mean / 2, eps_std / 2  # D = 2
        kl_unconstrained = (wm - t_mean) ** 2 / (2 * t_std**2)
        assert kl_unconstrained[0] > 10 * bound_mean and kl_unconstrained[1] < 0.1 * bound_mean  # active / inactive
        am_star = np.array([np.sqrt(kl_unconstrained[0] / bound_mean) - 1, 0.0])
        as_star = np.array([optimize.brentq(lambda al: kl_std(std_of(al))[i] - bound_std, 0.0, 1e6) for i in range(2)])
        np.testing.assert_allclose(alpha_mean[0], am_star[0], rtol=1e-3)
        assert alpha_mean[1] < 0.05
    else:
        kl_unconstrained = np.sum((wm - t_mean) ** 2 / (2 * t_std**2))
        assert kl_unconstrained > 10 * eps_mean
        am_star = np.full(2, np.sqrt(kl_unconstrained / eps_mean) - 1)
        as_star = np.full(2, optimize.brentq(lambda al: kl_std(std_of(al)).sum() - eps_std, 0.0, 1e6))
        np.testing.assert_allclose(alpha_mean, am_star[:1], rtol=1e-3)
    assert kl_std(std_of(0.0)).max() > 10 * eps_std  # the std constraints are active
    np.testing.assert_allclose(alpha_std, as_star if per_dim else as_star[:1], rtol=1e-3)
    np.testing.assert_allclose(mu, mean_of(am_star), rtol=1e-3, atol=2e-3)
    np.testing.assert_allclose(sig, std_of(as_star), rtol=1e-4)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _full_mpo_loss_and_grads(per_dim, with_penalty, policy, duals, tm, ts, actions, q, eps_mean, eps_std):
    def total(policy, duals):
        om, os_ = policy
        weights, t_loss = mpo.e_step(q, mpo.positive(duals.temperature), 0.1)
        if with_penalty:
            pw, p_loss = mpo.e_step(mpo.action_penalty_cost(actions), mpo.positive(duals.penalty_temperature), 1e-3)
            weights, t_loss = weights + pw, t_loss + p_loss
        pl, al, st = mpo.m_step(om, os_, tm, ts, actions, weights, mpo.positive(duals.alpha_mean),
                                mpo.positive(duals.alpha_std), eps_mean, eps_std, per_dim)
        return t_loss + pl + al, (t_loss, pl, al, st, weights)

    return jax.value_and_grad(total, argnums=(0, 1), has_aux=True)(policy, duals)


@pytest.mark.parametrize(
    "per_dim,with_penalty,q_scale", list(itertools.product([True, False], [True, False], [1.0, 1e6, 1e-6]))
)
def test_full_mpo_loss_finite_for_all_configurations(per_dim, with_penalty, q_scale):
    """E-step (+ optional action-penalty E-step, weights summed) + M-step: finite losses and finite
    gradients w.r.t. policy and all duals, for [D]/[1] alphas and extreme Q scales; alpha gradient
    still equals (ε/D − KL_d) or (ε − Σ KL) times positive'(raw) (chain rule through `positive`)."""
    rng = np.random.default_rng(10)
    om, os_, tm, ts, _, _ = _random_m_step_inputs(rng)
    raw_actions = rng.normal(size=(N_, B_, D_)) * 2.0
    raw_actions[: N_ // 2] = np.clip(raw_actions[: N_ // 2], -0.9, 0.9)  # half inside the box
    raw_actions[N_ // 2 :, :, 0] = 1.5 + np.abs(raw_actions[N_ // 2 :, :, 0])  # half clearly outside
    actions = jnp.asarray(raw_actions, jnp.float32)
    q = jnp.asarray(rng.normal(size=(N_, B_)) * q_scale, jnp.float32)
    duals = mpo.init_dual_params(D_, per_dim, 1.0, 1.0, 10.0)
    eps_mean, eps_std = 1e-2, 1e-4

    (loss, (t_loss, pl, al, st, weights)), (g_pol, g_dual) = _full_mpo_loss_and_grads(
        per_dim, with_penalty, (jnp.asarray(om), jnp.asarray(os_)), duals, tm, ts, actions, q, eps_mean, eps_std
    )
    for x in (loss, t_loss, pl, al):
        assert np.isfinite(float(x))
    for g in jax.tree.leaves((g_pol, g_dual)):
        assert np.all(np.isfinite(np.asarray(g)))
    assert np.any(np.asarray(g_pol[0]) != 0.0)
    np.testing.assert_allclose(np.asarray(weights).sum(0), 2.0 if with_penalty else 1.0, rtol=1e-5)
    assert (float(g_dual.penalty_temperature) != 0.0) == with_penalty
    # d alpha_loss / d raw = (ε − KL) · positive'(raw).
    kl_m, kl_s = np.asarray(st.kl_mean, np.float64), np.asarray(st.kl_std, np.float64)
    if per_dim:
        eps_mean, eps_std = eps_mean / D_, eps_std / D_
    else:
        kl_m, kl_s = kl_m.sum(keepdims=True), kl_s.sum(keepdims=True)
    dpos_m = np.asarray(_positive_and_grad(duals.alpha_mean)[1])
    dpos_s = np.asarray(_positive_and_grad(duals.alpha_std)[1])
    np.testing.assert_allclose(np.asarray(g_dual.alpha_mean), (eps_mean - kl_m) * dpos_m, rtol=1e-4, atol=1e-8)
    np.testing.assert_allclose(np.asarray(g_dual.alpha_std), (eps_std - kl_s) * dpos_s, rtol=1e-4, atol=1e-8)


def test_action_penalty_cost():
    """Zero inside [-1, 1]^D, −‖a − clip(a)‖₂ outside (numpy reference), custom bounds respected."""
    rng = np.random.default_rng(11)
    inside = rng.uniform(-1.0, 1.0, size=(50, 4)).astype(np.float32)
    inside[0] = [1.0, -1.0, 1.0, -1.0]  # on the boundary
    np.testing.assert_array_equal(np.asarray(mpo.action_penalty_cost(jnp.asarray(inside))), 0.0)
    a = rng.normal(scale=3.0, size=(7, 5, 4)).astype(np.float32)
    expected = -np.linalg.norm(a.astype(np.float64) - np.clip(a, -1.0, 1.0), axis=-1)
    cost = np.asarray(mpo.action_penalty_cost(jnp.asarray(a)))
    assert cost.shape == (7, 5)
    np.testing.assert_allclose(cost, expected, rtol=1e-5, atol=1e-6)
    assert np.all(cost[np.abs(a).max(-1) > 1.0] < 0)
    np.testing.assert_allclose(float(mpo.action_penalty_cost(jnp.array([3.0, -4.5]))), -np.hypot(2.0, 3.5), rtol=1e-6)
    np.testing.assert_allclose(float(mpo.action_penalty_cost(jnp.array([0.5, 2.5]), low=0.0, high=2.0)), -0.5,
                               rtol=1e-6)


# ---------------------------------------------------------------------------------------------------
# Toy end-to-end MPO
# ---------------------------------------------------------------------------------------------------

A_STAR = np.array([0.5, -0.3], np.float32)
# ε_μ, ε_σ bound the KL summed over the D = 2 dims (each dimension's multiplier gets ε/2).
TOY = dict(iters=300, n=64, m_steps=20, t_steps=10, eps_eta=0.1, eps_mean=2e-2, eps_std=2e-4)


def _make_toy_mpo():
    """A state-independent Gaussian policy (mean [D], log-std [D]) improved by MPO on Q(a) = −‖a − a*‖².

    Per iteration: sample N actions from the target (= current params), a few Adam steps on the raw
    temperature dual, E-step weights, then `m_steps` Adam steps jointly on the policy update and raw
    alphas, and finally target ← online. The policy update is expressed relative to the target
    (μ = μ' + σ'·δ, σ = σ'·exp(ρ), starting from δ = ρ = 0) so that a fixed Adam step size stays meaningful
    as σ shrinks. `alpha_scale` multiplies the multipliers (0 disables the trust regions)."""
    d, n = len(A_STAR), TOY["n"]
    pol_opt, alpha_opt, t_opt = optax.adam(0.05), optax.adam(0.1), optax.adam(0.1)

    a_star = jnp.asarray(A_STAR)

    def iteration(carry, key, alpha_scale):
        (mean, log_std), duals, t_state = carry
        t_mean, t_std = mean[None], jnp.exp(log_std)[None]
        actions = t_mean + t_std * jax.random.normal(key, (n, 1, d))
        q = -jnp.sum((actions - a_star) ** 2, axis=-1)  # [N, 1]

        def t_step(c, _):
            duals, st = c
            g = jax.grad(lambda raw: mpo.e_step(q, mpo.positive(raw), TOY["eps_eta"])[1])(duals.temperature)
            up, st = t_opt.update(g, st)
            return (_project(duals._replace(temperature=duals.temperature + up)), st), None

        (duals, t_state), _ = jax.lax.scan(t_step, (duals, t_state), None, length=TOY["t_steps"])
        weights, _ = mpo.e_step(q, mpo.positive(duals.temperature), TOY["eps_eta"])

        def online(upd):
            return t_mean + t_std * upd[0][None], t_std * jnp.exp(upd[1])[None]

        def m_step(c, _):
            upd, alphas, pst, ast = c

            def loss(upd, alphas):
                om, os_ = online(upd)
                pl, al, _ = mpo.m_step(om, os_, t_mean, t_std, actions, weights,
                                       alpha_scale * mpo.positive(alphas[0]), alpha_scale * mpo.positive(alphas[1]),
                                       TOY["eps_mean"], TOY["eps_std"], True)
                return pl + al

            g_upd, g_alpha = jax.grad(loss, argnums=(0, 1))(upd, alphas)
            up, pst = pol_opt.update(g_upd, pst)
            upd = optax.apply_updates(upd, up)
            up, ast = alpha_opt.update(g_alpha, ast)
            alphas = optax.apply_updates(alphas, up)
            projected = _project(duals._replace(alpha_mean=alphas[0], alpha_std=alphas[1]))
            return (upd, (projected.alpha_mean, projected.alpha_std), pst, ast), None

        upd0 = (jnp.zeros(d), jnp.zeros(d))
        alphas0 = (duals.alpha_mean, duals.alpha_std)
        (upd, alphas, _, _), _ = jax.lax.scan(
            m_step, (upd0, alphas0, pol_opt.init(upd0), alpha_opt.init(alphas0)), None, length=TOY["m_steps"]
        )
        duals = duals._replace(alpha_mean=alphas[0], alpha_std=alphas[1])
        om, os_ = online(upd)
        new_mean, new_std = om[0], os_[0]
        # KL between successive targets, decoupled as in the M-step constraints.
        kl_mean = mpo.gaussian_kl(mean, t_std[0], new_mean, t_std[0])
        kl_std = mpo.gaussian_kl(mean, t_std[0], mean, new_std)
        return ((new_mean, jnp.log(new_std)), duals, t_state), (kl_mean, kl_std, new_mean, new_std)

    @jax.jit
    def run(key, alpha_scale):
        duals = mpo.init_dual_params(d, True, 1.0, 1.0, 100.0)
        carry = ((jnp.zeros(d), jnp.zeros(d)), duals, t_opt.init(duals.temperature))
        keys = jax.random.split(key, TOY["iters"])
        _, trace = jax.lax.scan(lambda c, k: iteration(c, k, alpha_scale), carry, keys)
        return trace

    return run


@pytest.mark.slow
def test_toy_mpo_converges_within_trust_region():
    """MPO moves a Gaussian policy (σ₀ = 1, μ₀ = 0) onto a* of Q(a) = −‖a − a*‖² (atol 0.05) while the
    KL between successive targets, summed over action dims, respects the trust regions: Σ_d KL_σ ≤ 3 ε_σ at
    every iteration, Σ_d KL_μ ≤ ε_μ on average and ≤ 3 ε_μ in 95% of iterations. With the multipliers
    disabled the same loop violates the std trust region by orders of magnitude, so the bound is the
    multipliers' doing.

    (KL_μ is not bounded by 3 ε_μ at *every* iteration: with ε_η = 0.1 the mean constraint is rarely active,
    α_μ decays towards its floor, and an occasional noisy E-step moves the mean by up to ~6–15 ε_μ before
    α_μ can react. The active-constraint behaviour of the multipliers is checked exactly in
    test_m_step_lagrangian_saddle_point_matches_kkt.)"""
    run = _make_toy_mpo()
    kl_mean, kl_std, means, stds = (np.asarray(x) for x in run(jax.random.key(0), 1.0))
    kl_mean, kl_std = kl_mean.sum(-1), kl_std.sum(-1)  # [iters, D] -> [iters]
    eps_mean, eps_std = TOY["eps_mean"], TOY["eps_std"]

    np.testing.assert_allclose(means[-1], A_STAR, atol=0.05)
    assert np.all(stds[-1] < 0.5), "the policy should have concentrated"
    assert np.all(np.isfinite(kl_mean)) and np.all(np.isfinite(kl_std))
    assert kl_std.max() <= 3 * eps_std, kl_std.max() / eps_std
    assert kl_mean.mean() <= eps_mean, kl_mean.mean() / eps_mean
    assert np.quantile(kl_mean, 0.95) <= 3 * eps_mean, np.quantile(kl_mean, 0.95) / eps_mean

    kl_mean0, kl_std0, _, _ = (np.asarray(x).sum(-1) for x in run(jax.random.key(0), 0.0))
    assert kl_std0.max() > 100 * eps_std
    assert kl_mean0.max() > 3 * eps_mean
