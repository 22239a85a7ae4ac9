"""Tests for purempo.losses: critic loss against a naive Retrace oracle, policy loss against closed forms."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from purempo import losses, mpo

GAMMA = 0.95


def _naive_retrace(q, v, r, d, log_rhos, trunc, lam):
    """Reference Retrace for one sequence: reversed float64 loop, c_{t+1} := 0 after a truncated t, the value
    of a terminal step (d = 0) never read."""
    T = len(q)
    g = np.zeros(T)
    for t in reversed(range(T)):
        boot = 0.0
        if d[t] != 0.0:
            boot = float(v[t])
            if t + 1 < T and not trunc[t]:
                c = lam * min(1.0, np.exp(float(log_rhos[t + 1])))
                boot += c * (g[t + 1] - float(q[t + 1]))
        g[t] = float(r[t]) + float(d[t]) * boot
    return g


def _critic_batch(seed, B=4, L=7):
    rng = np.random.default_rng(seed)
    f32 = lambda *shape, scale=1.0: (scale * rng.normal(size=shape)).astype(np.float32)  # noqa: E731
    q_online, q_target, v, r, log_rhos = f32(B, L), f32(B, L), f32(B, L), f32(B, L), f32(B, L, scale=0.7)
    terminated = np.zeros((B, L), bool)
    truncated = np.zeros((B, L), bool)
    terminated[0, 2] = terminated[2, 6] = terminated[3, 0] = True
    truncated[1, 3] = truncated[2, 1] = truncated[3, 4] = truncated[3, 5] = True
    discounts = np.where(terminated, 0.0, GAMMA).astype(np.float32)
    return q_online, q_target, v, r, discounts, log_rhos, truncated, terminated


_critic_value_and_grad = jax.jit(jax.value_and_grad(losses.critic_loss, argnums=(0, 1, 2), has_aux=True))


@pytest.mark.parametrize("lam", [0.0, 0.9, 1.0])
def test_critic_loss_and_gradient_match_naive_retrace(lam):
    """Targets equal the naive float64 Retrace loop row by row, the loss is 0.5·mean (Q − G)², its gradient
    w.r.t. q_online is (Q − G)/numel, and no gradient reaches the target-network inputs."""
    q_online, q_target, v, r, d, log_rhos, trunc, _ = _critic_batch(0)
    expected_g = np.stack([_naive_retrace(q_target[b], v[b], r[b], d[b], log_rhos[b], trunc[b], lam)
                           for b in range(q_online.shape[0])])
    (loss, g), (grad_q, grad_qt, grad_v) = _critic_value_and_grad(q_online, q_target, v, r, d, log_rhos, trunc, lam)
    np.testing.assert_allclose(np.asarray(g), expected_g, rtol=1e-5, atol=1e-5)
    err = q_online.astype(np.float64) - expected_g
    np.testing.assert_allclose(float(loss), 0.5 * np.mean(err**2), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(grad_q), err / err.size, rtol=1e-4, atol=1e-7)
    np.testing.assert_array_equal(np.asarray(grad_qt), 0.0)
    np.testing.assert_array_equal(np.asarray(grad_v), 0.0)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_critic_loss_ignores_non_finite_values_at_terminations(bad):
    """NaN/inf v_tp1 at terminated transitions gives the same finite loss, targets and q_online gradient as
    any finite stand-in (here 0 and 1e3)."""
    q_online, q_target, v, r, d, log_rhos, trunc, terminated = _critic_batch(1)
    outs = []
    for filler in (bad, 0.0, 1e3):
        v2 = np.where(terminated, filler, v).astype(np.float32)
        (loss, g), (grad_q, _, _) = _critic_value_and_grad(q_online, q_target, v2, r, d, log_rhos, trunc, 0.9)
        outs.append((float(loss), np.asarray(g), np.asarray(grad_q)))
    assert np.isfinite(outs[0][0]) and np.all(np.isfinite(outs[0][1])) and np.all(np.isfinite(outs[0][2]))
    for other in outs[1:]:
        np.testing.assert_allclose(outs[0][0], other[0], rtol=1e-6)
        np.testing.assert_allclose(outs[0][1], other[1], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(outs[0][2], other[2], rtol=1e-6, atol=1e-9)


def test_ensemble_critic_loss_sums_the_members_losses_against_shared_targets():
    """q_online `[K, B, L]`: the targets are those of one critic, the loss is the sum over members of each
    member's single-critic loss, and each member's gradient is the single-critic gradient."""
    q_online, q_target, v, r, d, log_rhos, trunc, _ = _critic_batch(2)
    members = np.stack([q_online, q_online + 0.5, q_online * 2.0])
    (loss, g), (grad_q, _, _) = _critic_value_and_grad(members, q_target, v, r, d, log_rhos, trunc, 0.9)
    singles = [_critic_value_and_grad(m, q_target, v, r, d, log_rhos, trunc, 0.9) for m in members]
    np.testing.assert_allclose(float(loss), sum(float(s[0][0]) for s in singles), rtol=1e-6)
    for k, ((_, g_k), (grad_k, _, _)) in enumerate(singles):
        np.testing.assert_allclose(np.asarray(g), np.asarray(g_k), rtol=1e-6)
        np.testing.assert_allclose(np.asarray(grad_q[k]), np.asarray(grad_k), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("pessimism", [0.0, 0.5, 1.0, 2.0])
def test_pessimistic_value_is_mean_minus_beta_std_and_the_minimum_of_two(pessimism):
    """Closed form mean − β·std (population std, float64) over K = 5 members; for K = 2 and β = 1 it is the
    elementwise minimum; one member is returned unchanged whatever β."""
    rng = np.random.default_rng(3)
    q = rng.normal(size=(5, 4, 3)).astype(np.float32)
    expected = q.astype(np.float64).mean(0) - pessimism * q.astype(np.float64).std(0)
    got = losses.pessimistic_value(jnp.asarray(q), jnp.float32(pessimism))
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-6)
    if pessimism == 1.0:
        np.testing.assert_allclose(np.asarray(losses.pessimistic_value(jnp.asarray(q[:2]), 1.0)),
                                   np.minimum(q[0], q[1]), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(losses.pessimistic_value(jnp.asarray(q[:1]), pessimism)), q[0])


def test_critic_loss_rejects_unbatched_inputs():
    """Rank-1 inputs (a single sequence) are rejected: the loss expects [B, L]."""
    x, t = jnp.zeros(5), jnp.zeros(5, bool)
    with pytest.raises((AssertionError, ValueError, TypeError)):
        losses.critic_loss(x, x, x, x, x, x, t, 0.9)


# ---------------------------------------------------------------------------------------------------
# Policy loss
# ---------------------------------------------------------------------------------------------------

N, M, A = 10, 6, 3
EPS, EPS_PENALTY, EPS_MEAN, EPS_STD = 0.1, 1e-3, 0.05, 2e-3
MASK = np.array([True, False, True, True, False, True])


def _policy_inputs(seed):
    rng = np.random.default_rng(seed)
    target_mean = rng.normal(scale=0.5, size=(M, A)).astype(np.float32)
    target_std = rng.uniform(0.3, 1.0, size=(M, A)).astype(np.float32)
    online_mean = (target_mean + 0.3 * rng.normal(size=(M, A))).astype(np.float32)
    online_std = (target_std * np.exp(0.3 * rng.normal(size=(M, A)))).astype(np.float32)
    actions = (target_mean + target_std * rng.normal(size=(N, M, A)) * 2.0).astype(np.float32)
    q = rng.normal(scale=2.0, size=(N, M)).astype(np.float32)
    return q, actions, online_mean, online_std, target_mean, target_std


def _duals(per_dim):
    d = A if per_dim else 1
    return mpo.DualParams(temperature=jnp.float32(np.log(0.8)), penalty_temperature=jnp.float32(np.log(0.3)),
                          alpha_mean=jnp.asarray(np.log(np.linspace(0.5, 4.0, d)), jnp.float32),
                          alpha_std=jnp.asarray(np.log(np.linspace(20.0, 60.0, d)), jnp.float32))


@functools.partial(jax.jit, static_argnums=(0, 1))
def _policy_loss_and_grads(per_dim, penalise, q, actions, om, os_, tm, ts, mask, duals):
    def f(om, os_, duals):
        return losses.policy_loss(q, actions, om, os_, tm, ts, mask, duals, EPS, EPS_PENALTY, EPS_MEAN, EPS_STD,
                                  losses.PolicyLossConfig(per_dim, penalise))

    return jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True)(om, os_, duals)


CONFIGS = [(True, True), (True, False), (False, True), (False, False)]


@pytest.mark.parametrize("per_dim,penalise", CONFIGS)
def test_masked_states_have_no_influence(per_dim, penalise):
    """Arbitrary Q (NaN, ±inf), actions and online/target parameters at masked states leave the loss, every
    metric and the gradients (policy at unmasked states, all duals) unchanged and finite; the masked states'
    policy gradient is exactly 0. Without the mask, the same NaN poisons the loss (the mask is what works)."""
    q, actions, om, os_, tm, ts = _policy_inputs(0)
    mask = jnp.asarray(MASK)
    duals = _duals(per_dim)
    (loss, metrics), grads = _policy_loss_and_grads(per_dim, penalise, q, actions, om, os_, tm, ts, mask, duals)

    q2, actions2, om2, os2, tm2, ts2 = (x.copy() for x in (q, actions, om, os_, tm, ts))
    q2[:, 1] = np.nan
    q2[: N // 2, 4], q2[N // 2 :, 4] = np.inf, -np.inf
    actions2[:, ~MASK] = 40.0
    om2[~MASK], os2[~MASK], tm2[~MASK], ts2[~MASK] = -7.0, 1e-2, 5.0, 3.0
    (loss2, metrics2), grads2 = _policy_loss_and_grads(per_dim, penalise, q2, actions2, om2, os2, tm2, ts2, mask,
                                                       duals)
    assert np.isfinite(float(loss2))
    np.testing.assert_allclose(float(loss2), float(loss), rtol=1e-6)
    assert metrics.keys() == metrics2.keys()
    for name in metrics:
        assert np.isfinite(float(metrics2[name])), name
        np.testing.assert_allclose(float(metrics2[name]), float(metrics[name]), rtol=1e-6, atol=1e-9, err_msg=name)
    for g, g2 in zip(jax.tree.leaves(grads), jax.tree.leaves(grads2)):
        assert np.all(np.isfinite(np.asarray(g2)))
    for g, g2 in zip(grads[:2], grads2[:2]):  # online mean, online std
        np.testing.assert_allclose(np.asarray(g2)[MASK], np.asarray(g)[MASK], rtol=1e-6, atol=1e-9)
        np.testing.assert_array_equal(np.asarray(g2)[~MASK], 0.0)
    for g, g2 in zip(jax.tree.leaves(grads[2]), jax.tree.leaves(grads2[2])):
        np.testing.assert_allclose(np.asarray(g2), np.asarray(g), rtol=1e-6, atol=1e-9)

    (loss_unmasked, _), _ = _policy_loss_and_grads(per_dim, penalise, q2, actions2, om2, os2, tm2, ts2,
                                                   jnp.ones(M, bool), duals)
    assert not np.isfinite(float(loss_unmasked))


@pytest.mark.parametrize("per_dim,penalise", CONFIGS)
def test_masked_loss_equals_loss_on_unmasked_subset(per_dim, penalise):
    """policy_loss with a mask equals policy_loss with mask None on the unmasked states alone (loss, metrics,
    dual gradients, and the policy gradients of those states)."""
    q, actions, om, os_, tm, ts = _policy_inputs(1)
    duals = _duals(per_dim)
    (loss, metrics), grads = _policy_loss_and_grads(per_dim, penalise, q, actions, om, os_, tm, ts,
                                                    jnp.asarray(MASK), duals)
    (loss_s, metrics_s), grads_s = _policy_loss_and_grads(per_dim, penalise, q[:, MASK], actions[:, MASK], om[MASK],
                                                          os_[MASK], tm[MASK], ts[MASK], None, duals)
    np.testing.assert_allclose(float(loss), float(loss_s), rtol=1e-5)
    for name in metrics:
        np.testing.assert_allclose(float(metrics[name]), float(metrics_s[name]), rtol=1e-5, atol=1e-8, err_msg=name)
    for g, g_s in zip(grads[:2], grads_s[:2]):
        np.testing.assert_allclose(np.asarray(g)[MASK], np.asarray(g_s), rtol=1e-5, atol=1e-7)
    for g, g_s in zip(jax.tree.leaves(grads[2]), jax.tree.leaves(grads_s[2])):
        np.testing.assert_allclose(np.asarray(g), np.asarray(g_s), rtol=1e-5, atol=1e-8)


def _np_gauss_kl(mp, sp, mq, sq):
    mp, sp, mq, sq = (np.asarray(x, np.float64) for x in (mp, sp, mq, sq))
    return np.log(sq / sp) + (sp**2 + (mp - mq) ** 2) / (2 * sq**2) - 0.5


def _np_softmax(x):
    z = np.asarray(x, np.float64)
    e = np.exp(z - z.max(0, keepdims=True))
    return e / e.sum(0, keepdims=True)


@pytest.mark.parametrize("per_dim", [True, False])
def test_kl_metrics_and_dual_gradients_match_closed_forms(per_dim):
    """kl_mean / kl_std metrics equal the closed-form Gaussian KL averaged over unmasked states and summed over
    dims; d loss / d raw α_μ,d = α_d·(ε_μ/D − KL_μ,d) per dim (α·(ε_μ − Σ_d KL_μ,d) for one multiplier), the same
    for α_σ; d loss / d raw η = η·(ε − mean_unmasked KL(q ‖ uniform)) and e_step_kl is that mean KL."""
    q, actions, om, os_, tm, ts = _policy_inputs(2)
    om[:, 0] = tm[:, 0]  # dim 0's mean constraint is slack (KL 0), the others are violated
    ts[1, 2] = 0.05  # the smallest σ' is at a masked state: target_std_min must not see it
    duals = _duals(per_dim)
    (_, metrics), (_, _, g_duals) = _policy_loss_and_grads(per_dim, False, q, actions, om, os_, tm, ts,
                                                           jnp.asarray(MASK), duals)
    kl_mean_d = _np_gauss_kl(tm, ts, om, ts)[MASK].mean(0)  # [A]
    kl_std_d = _np_gauss_kl(tm, ts, tm, os_)[MASK].mean(0)
    np.testing.assert_allclose(float(metrics["kl_mean"]), kl_mean_d.sum(), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["kl_std"]), kl_std_d.sum(), rtol=1e-5)
    assert float(metrics["target_std_min"]) == ts[MASK].min() >= 0.3

    alpha_mean = np.exp(np.asarray(duals.alpha_mean, np.float64))
    alpha_std = np.exp(np.asarray(duals.alpha_std, np.float64))
    if per_dim:
        expected_mean = alpha_mean * (EPS_MEAN / A - kl_mean_d)
        expected_std = alpha_std * (EPS_STD / A - kl_std_d)
    else:
        expected_mean = alpha_mean * (EPS_MEAN - kl_mean_d.sum())
        expected_std = alpha_std * (EPS_STD - kl_std_d.sum())
    if per_dim:  # both signs exercised: slack dim 0, violated dims 1, 2
        assert expected_mean[0] > 0 and np.all(expected_mean[1:] < 0)
    np.testing.assert_allclose(np.asarray(g_duals.alpha_mean), expected_mean, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(np.asarray(g_duals.alpha_std), expected_std, rtol=1e-4, atol=1e-7)

    eta = 0.8
    w = _np_softmax(q[:, MASK] / eta)
    kl_q = np.sum(w * np.log(w * N), axis=0).mean()
    np.testing.assert_allclose(float(metrics["e_step_kl"]), kl_q, rtol=1e-4)
    np.testing.assert_allclose(float(g_duals.temperature), eta * (EPS - kl_q), rtol=1e-4, atol=1e-7)
    assert float(g_duals.penalty_temperature) == 0.0  # no action penalty: its dual gets no gradient
