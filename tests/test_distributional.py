"""The HL-Gauss critic: histograms against numerical integration, the support against bounded returns, the loss
against a direct computation, the network's logits, and the expectation against a scalar critic on a toy problem."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import integrate, stats

from purempo import distributional, losses
from purempo.config import Config
from purempo.train import make_networks


def _integrated_histogram(y, support, sigma_bins):
    """HL-Gauss by quadrature: the N(clip(y), σ²) density integrated over each bin, renormalised (float64)."""
    width = support[1] - support[0]
    edges = np.concatenate([[support[0] - width / 2], (support[1:] + support[:-1]) / 2, [support[-1] + width / 2]])
    mean, sigma = np.clip(y, support[0], support[-1]), sigma_bins * width
    density = stats.norm(mean, sigma).pdf
    mass = np.array([integrate.quad(density, a, b, epsabs=1e-13)[0] for a, b in zip(edges[:-1], edges[1:])])
    return mass / mass.sum()


@pytest.mark.parametrize("y", [-3.7, 0.0, 0.31, 4.99, 5.0, 12.0])
@pytest.mark.parametrize("sigma_bins", [0.75, 2.0])
def test_hl_gauss_histogram_equals_numerical_integration(y, sigma_bins):
    """Inside the support, on an atom, at its end and beyond it (clipped): the erf differences equal quadrature of
    the Gaussian density over each bin, and sum to 1."""
    support = np.linspace(-5.0, 5.0, 21)
    got = np.asarray(distributional.hl_gauss_probs(jnp.float32(y), jnp.asarray(support, jnp.float32), sigma_bins))
    expected = _integrated_histogram(y, support, sigma_bins)
    np.testing.assert_allclose(got, expected, atol=2e-6)
    np.testing.assert_allclose(got.sum(), 1.0, rtol=1e-6)


def test_hl_gauss_histograms_keep_the_mean_of_targets_away_from_the_ends():
    """A batch `[B, L]` gives `[B, L, Z]`; the histogram's mean is the target itself where the Gaussian lies
    well inside the support (symmetric mass), and the expectation of its logs recovers it."""
    support = jnp.linspace(0.0, 100.0, 101)
    targets = jnp.array([[20.0, 33.3, 50.0], [61.7, 70.25, 80.0]])
    probs = distributional.hl_gauss_probs(targets, support, 0.75)
    assert probs.shape == (2, 3, 101)
    np.testing.assert_allclose(np.asarray(distributional.expectation(jnp.log(probs), support)), targets, atol=1e-3)


def test_expectation_entropy_and_cross_entropy_match_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 4, 7)).astype(np.float32) * 2
    support = np.linspace(-1.0, 2.0, 7)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    target = rng.dirichlet(np.ones(7), size=(3, 4))
    np.testing.assert_allclose(np.asarray(distributional.expectation(logits, jnp.asarray(support, jnp.float32))),
                               (p * support).sum(-1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(distributional.entropy(logits)), -(p * np.log(p)).sum(-1), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(distributional.cross_entropy(logits, target.astype(np.float32))),
                               -(target * np.log(p)).sum(-1), rtol=1e-5)


@pytest.mark.parametrize("reward_range", [(0.0, 1.0), (-2.0, 0.5), (0.3, 4.0), (-3.0, -1.0)])
def test_value_bounds_hold_every_discounted_return_of_bounded_rewards(reward_range):
    """The closed form (scaled by reward_scale / divisor) against returns of reward sequences at the bounds and at
    random, of every length (early terminations): all inside, and the extremes of long runs reach the ends."""
    scale, divisor, gamma = 2.0, 0.25, 0.9
    v_min, v_max = (float(v) for v in distributional.value_bounds(reward_range, scale, divisor, gamma))
    low, high = reward_range
    np.testing.assert_allclose([v_min, v_max], [min(low, 0) * 8 / 0.1, max(high, 0) * 8 / 0.1], rtol=1e-6)
    rng = np.random.default_rng(1)
    rewards = np.concatenate([np.full((1, 400), low), np.full((1, 400), high), rng.uniform(low, high, (50, 400))])
    discounted = np.cumsum(rewards * gamma ** np.arange(400), axis=1) * scale / divisor  # every prefix: any end
    assert discounted.min() >= v_min - 1e-6 and discounted.max() <= v_max + 1e-6
    assert min(abs(discounted.min() - v_min), abs(discounted.max() - v_max)) < 1e-3 * (v_max - v_min)


def _critic_inputs(seed, B=4, L=6):
    rng = np.random.default_rng(seed)
    f32 = lambda *shape, scale=1.0: (scale * rng.normal(size=shape)).astype(np.float32)  # noqa: E731
    terminated, truncated = np.zeros((B, L), bool), np.zeros((B, L), bool)
    terminated[0, 2], truncated[1, 3] = True, True
    return dict(q_target_taken=f32(B, L, scale=3.0) + 5.0, v_tp1=f32(B, L, scale=3.0) + 5.0, rewards=f32(B, L),
                discounts=np.where(terminated, 0.0, 0.9).astype(np.float32), log_rhos=f32(B, L, scale=0.5),
                truncated=truncated, lambda_=0.9)


@pytest.mark.parametrize("members", [None, 3])
def test_hl_gauss_loss_is_the_cross_entropy_to_the_targets_integrated_histograms(members):
    """On Retrace targets (`critic_loss`'s): the mean cross-entropy to the integrated histograms (summed over an
    ensemble's members), no gradient into the targets, and the fraction clipped counts targets beyond the
    support."""
    inputs = _critic_inputs(0)
    _, targets = losses.critic_loss(np.zeros((4, 6), np.float32), **inputs)
    support = jnp.linspace(0.0, 12.0, 25)
    rng = np.random.default_rng(1)
    logits = rng.normal(size=((members,) if members else ()) + (4, 6, 25)).astype(np.float32)
    loss, clipped = losses.hl_gauss_loss(logits, targets, support, 0.75)
    t = np.asarray(targets, np.float64)
    probs = np.stack([_integrated_histogram(y, np.asarray(support, np.float64), 0.75) for y in t.ravel()])
    log_softmax = np.asarray(jax.nn.log_softmax(logits, -1), np.float64).reshape(-1, 4 * 6, 25)
    expected = -(probs * log_softmax).sum(-1).mean(-1).sum()
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    assert 0 < float(clipped) < 1  # the inputs put some targets below 0 or above 12
    np.testing.assert_allclose(float(clipped), np.mean((t < 0) | (t > 12)), rtol=1e-6)
    grad = jax.grad(lambda g: losses.hl_gauss_loss(logits, g, support, 0.75)[0])(targets)
    np.testing.assert_array_equal(np.asarray(grad), 0.0)


def test_hl_gauss_loss_rejects_logits_of_another_support():
    with pytest.raises(AssertionError):
        losses.hl_gauss_loss(np.zeros((4, 6, 11), np.float32), np.zeros((4, 6), np.float32),
                             jnp.linspace(0.0, 1.0, 25), 0.75)


@pytest.mark.parametrize("num_critics", [1, 2])
def test_the_critic_outputs_logits_over_the_bins_for_n_actions_per_state(num_critics):
    """critic_head hl_gauss: `[N, B, critic_bins]` logits (a leading member axis for an ensemble), the same trunk
    as the scalar critic's (same parameter names and shapes but the last layer)."""
    config = Config(env="inverted_pendulum", critic_hidden=(8, 6), num_critics=num_critics, critic_head="hl_gauss",
                    critic_bins=11, reward_range=(0.0, 1.0))
    critic = make_networks(config, 2).critic
    params = critic.init(jax.random.key(0), jnp.zeros((5,)), jnp.zeros((2,)))
    out = critic.apply(params, jnp.zeros((7, 5)), jnp.zeros((4, 7, 2)))
    assert out.shape == ((4, 7, 11) if num_critics == 1 else (2, 4, 7, 11))
    scalar = make_networks(config.replace(critic_head="scalar"), 2).critic
    scalar_params = scalar.init(jax.random.key(0), jnp.zeros((5,)), jnp.zeros((2,)))
    shapes = jax.tree.map(jnp.shape, params)
    scalar_shapes = jax.tree.map(jnp.shape, scalar_params)
    last = (lambda tree: tree["params"]["Dense_0"]) if num_critics == 1 else (
        lambda tree: tree["params"]["members"]["Dense_0"])
    assert last(shapes)["kernel"][-1] == 11 and last(scalar_shapes)["kernel"][-1] == 1
    trunk = (lambda tree: tree["params"]["LayerNormMLP_0"]) if num_critics == 1 else (
        lambda tree: tree["params"]["members"]["LayerNormMLP_0"])
    assert trunk(shapes) == trunk(scalar_shapes)


def test_the_hl_gauss_critics_expectation_learns_what_a_scalar_critic_learns():
    """A toy regression of noisy values y = 40·sin(3x) + 50 + N(0, 5²) of a state x: the HL-Gauss critic trained
    by cross-entropy (support [0, 100], 51 bins) and the scalar critic by squared error both approach the true
    mean within a few percent of its range, and each other."""
    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, size=(2048, 1)).astype(np.float32)
    truth = 40 * np.sin(3 * x[:, 0]) + 50
    y = (truth + rng.normal(0, 5, size=truth.shape)).astype(np.float32)
    support = jnp.linspace(0.0, 100.0, 51)
    config = Config(env="inverted_pendulum", critic_hidden=(64, 64), critic_head="hl_gauss", critic_bins=51,
                    reward_range=(0.0, 1.0))
    action = jnp.zeros((2048, 1))

    def fit(head):
        critic = make_networks(config.replace(critic_head=head), 1).critic
        params = critic.init(jax.random.key(0), x[:1], action[:1])
        optimizer = optax.adam(3e-3)

        def loss(p):
            out = critic.apply(p, x, action)
            if head == "scalar":
                return jnp.mean((out - y) ** 2)
            return jnp.mean(distributional.cross_entropy(out, distributional.hl_gauss_probs(y, support, 0.75)))

        @jax.jit
        def step(carry, _):
            p, s = carry
            grads = jax.grad(loss)(p)
            updates, s = optimizer.update(grads, s)
            return (optax.apply_updates(p, updates), s), None

        (params, _), _ = jax.lax.scan(step, (params, optimizer.init(params)), None, length=1500)
        out = critic.apply(params, x, action)
        return np.asarray(out if head == "scalar" else distributional.expectation(out, support))

    scalar, hl_gauss = fit("scalar"), fit("hl_gauss")
    rmse = lambda a, b: math.sqrt(np.mean((a - b) ** 2))  # noqa: E731
    assert rmse(hl_gauss, truth) < 1.5 and rmse(scalar, truth) < 1.5  # against a noise σ of 5 and a range of 80
    assert rmse(hl_gauss, scalar) < 1.5


@pytest.mark.parametrize("reward_range", [(0.0, 1.0), (-1.0, 1.0), (-0.5, 3.0)])
def test_an_hl_gauss_critic_starts_near_zero_for_every_input(reward_range):
    """The last layer starts at `initial_logits` with a small kernel: on the support of any reward divisor and
    discount, Q is within half a bin of 0 for very different inputs (a uniform start would sit at the middle)."""
    config = Config(env="inverted_pendulum", critic_hidden=(32, 32), critic_head="hl_gauss", critic_bins=51,
                    reward_range=reward_range, num_critics=2)
    critic = make_networks(config, 3).critic
    params = critic.init(jax.random.key(0), jnp.zeros((6,)), jnp.zeros((3,)))
    obs = 5.0 * jax.random.normal(jax.random.key(1), (64, 6))
    actions = 2.0 * jax.random.normal(jax.random.key(2), (64, 3))
    for divisor, discount in ((1.0, 0.99), (0.013, 0.999)):
        support = distributional.atoms(*distributional.value_bounds(reward_range, 1.0, divisor, discount), 51,
                                       distributional.margin_bins("hl_gauss", 0.75))
        q = np.asarray(distributional.expectation(critic.apply(params, obs, actions), support))
        assert np.all(np.abs(q) < 0.05 * float(support[1] - support[0])), (divisor, q.min(), q.max())


@pytest.mark.parametrize("v_min, v_max, margin", [(0.0, 100.0, 3.0), (-7.5, 2.0, 1.25), (-1.0, 1.0, 0.0)])
def test_atoms_put_the_value_bounds_margin_bins_inside_the_ends(v_min, v_max, margin):
    """Evenly spaced, Z of them, with v_min and v_max exactly `margin` bin widths inside the end atoms."""
    z = np.asarray(distributional.atoms(v_min, v_max, 41, margin), np.float64)
    width = np.diff(z)
    assert z.shape == (41,)
    np.testing.assert_allclose(width, width[0], rtol=1e-4)
    np.testing.assert_allclose([(v_min - z[0]) / width[0], (z[-1] - v_max) / width[0]], [margin, margin], atol=1e-4)


@pytest.mark.parametrize("bound", ["low", "high"])
def test_hl_gauss_targets_at_the_value_bounds_keep_their_mean_with_the_margin(bound):
    """A return at a bound of `value_bounds` is a possible target: on the HL-Gauss support (4σ margin) its
    histogram's mean is the target to 1e-3 bins; on atoms ending at the bound the dropped tail moves it 0.37 bins
    inside (the defect the margin removes), and targets a bin apart come out 0.6-0.7 bins apart."""
    v_min, v_max = 0.0, 500.0
    y = v_min if bound == "low" else v_max
    inward = 1.0 if bound == "low" else -1.0
    for margin, check in ((distributional.margin_bins("hl_gauss", 0.75), "exact"), (0.0, "biased")):
        z = distributional.atoms(v_min, v_max, 101, margin)
        width = float(z[1] - z[0])
        means = [float(distributional.expectation(jnp.log(distributional.hl_gauss_probs(
            jnp.float32(y + inward * k * width), z, 0.75)), z)) for k in (0, 1)]
        shift = [(m - (y + inward * k * width)) * inward / width for k, m in enumerate(means)]
        if check == "exact":
            np.testing.assert_allclose(shift, 0.0, atol=1e-3)
        else:
            assert 0.3 < shift[0] < 0.45 and 0.55 < (means[1] - means[0]) * inward / width < 0.75, shift


# ------------------------------------------------------------------------------------------------------------
# The categorical head: C51's projection and distributional Retrace
# ------------------------------------------------------------------------------------------------------------


def _naive_projection(values, masses, support):
    """C51's projection as usually written: every value's mass spread over every atom by the triangular kernel
    max(0, 1 − |clip(v) − z_j| / Δz) (float64, O(K·Z))."""
    width = support[1] - support[0]
    out = np.zeros(len(support))
    for v, m in zip(values, masses):
        v = min(max(v, support[0]), support[-1])
        out += m * np.maximum(0.0, 1.0 - np.abs(v - support) / width)
    return out


def test_categorical_projection_equals_the_naive_kernel_sum():
    """Values inside, on atoms, on both ends and beyond them, with signed masses: the scatter-add projection equals
    the O(K·Z) kernel sum; the total mass is kept, and so is the mean of mass inside the support."""
    support = np.linspace(-2.0, 3.0, 11)
    rng = np.random.default_rng(4)
    values = np.concatenate([rng.uniform(-1.9, 2.9, 40), support[[0, 3, 10]], [-5.0, 7.5]])
    masses = rng.normal(size=values.shape)
    got = np.asarray(distributional.categorical_projection(jnp.asarray(values, jnp.float32),
                                                           jnp.asarray(masses, jnp.float32),
                                                           jnp.asarray(support, jnp.float32)), np.float64)
    np.testing.assert_allclose(got, _naive_projection(values, masses, support), atol=1e-5)
    np.testing.assert_allclose(got.sum(), masses.sum(), atol=1e-5)
    inside = slice(0, 43)
    mean_inside = np.asarray(distributional.categorical_projection(
        jnp.asarray(values[inside], jnp.float32), jnp.asarray(masses[inside], jnp.float32),
        jnp.asarray(support, jnp.float32)), np.float64) @ support
    np.testing.assert_allclose(mean_inside, masses[inside] @ values[inside], rtol=1e-5, atol=1e-5)


def _naive_categorical_retrace(p_taken, p_next, r, d, log_rhos, trunc, lam, support):
    """The recursion written out per step in float64 with the naive projection."""
    T, Z = p_taken.shape
    out = np.zeros((T, Z))
    for t in reversed(range(T)):
        if d[t] == 0.0:
            out[t] = _naive_projection([r[t]], [1.0], support)
            continue
        mixture = p_next[t].astype(np.float64).copy()
        if t + 1 < T and not trunc[t]:
            c = lam * min(1.0, np.exp(float(log_rhos[t + 1])))
            mixture += c * (out[t + 1] - p_taken[t + 1])
        out[t] = _naive_projection(r[t] + d[t] * support, mixture, support)
    return out


def _pmf_sequence(seed, T=7, Z=15):
    rng = np.random.default_rng(seed)
    pmf = lambda n: rng.dirichlet(np.ones(Z) * 0.7, size=n).astype(np.float32)  # noqa: E731
    p_taken, p_next = pmf(T), pmf(T)
    p_next[2] = np.nan  # a terminal step's next state: never read
    r = rng.uniform(-0.5, 1.0, T).astype(np.float32)
    d = np.full(T, 0.9, np.float32)
    d[2] = 0.0
    trunc = np.zeros(T, bool)
    trunc[4] = True
    return p_taken, p_next, r, d, (0.6 * rng.normal(size=T)).astype(np.float32), trunc


@pytest.mark.parametrize("lam", [0.0, 0.95, 1.0])
def test_categorical_retrace_equals_a_naive_loop_and_its_mean_is_the_scalar_retrace_target(lam):
    """A sequence with a termination and a truncation: the scan equals the per-step loop; every row sums to 1; on
    a support wide enough that nothing is clipped, each target's mean is the scalar Retrace target of the pmfs'
    means (`retrace.retrace_targets`), since each projection keeps the mean."""
    from purempo.retrace import retrace_targets

    p_taken, p_next, r, d, log_rhos, trunc = _pmf_sequence(5)
    for support in (np.linspace(-1.0, 1.0, 15), np.linspace(-30.0, 60.0, 15)):
        sup = jnp.asarray(support, jnp.float32)
        got = np.asarray(distributional.categorical_retrace_targets(p_taken, p_next, r, d, log_rhos, trunc, lam, sup))
        expected = _naive_categorical_retrace(p_taken, p_next, r, d, log_rhos, trunc, lam, support.astype(np.float64))
        np.testing.assert_allclose(got, expected, atol=2e-5)
        np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5)
    # The wide support: no value leaves it, so the means follow the scalar recursion.
    mean = lambda p: jnp.sum(jnp.nan_to_num(jnp.asarray(p)) * sup, -1)  # noqa: E731
    scalar = retrace_targets(mean(p_taken), mean(p_next), r, d, log_rhos, trunc, lam)
    np.testing.assert_allclose(got @ support, np.asarray(scalar), rtol=1e-4, atol=1e-4)


def test_categorical_loss_clips_negative_masses_and_renormalises():
    logits = jnp.asarray(np.random.default_rng(6).normal(size=(2, 5)), jnp.float32)
    signed = jnp.array([[0.5, -0.2, 0.4, 0.3, 0.0], [0.0, 0.0, 1.0, 0.0, 0.0]])
    kept = np.array([[0.5, 0.0, 0.4, 0.3, 0.0], [0.0, 0.0, 1.0, 0.0, 0.0]])
    kept /= kept.sum(-1, keepdims=True)
    np.testing.assert_allclose(np.asarray(distributional.categorical_loss(logits, signed)),
                               np.asarray(distributional.cross_entropy(logits, kept)), rtol=1e-6)
