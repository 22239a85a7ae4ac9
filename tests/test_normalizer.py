"""Running observation statistics: parallel Welford merge and clipped normalisation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from purempo import networks, normalizer
from purempo.networks import Critic, GaussianPolicy

SIZE = 5
# Batches of different sizes, some with extra leading dims ([T, E, O]); offset mean, varied scales.
SHAPES = [(7, SIZE), (3, 4, SIZE), (1, SIZE), (2, 6, SIZE), (13, SIZE)]


def _batches(seed=0):
    rng = np.random.default_rng(seed)
    scale = np.array([0.1, 1.0, 3.0, 10.0, 0.5])
    offset = np.array([5.0, -2.0, 0.0, 100.0, 1.0])
    return [(offset + scale * rng.standard_normal(shape)).astype(np.float32) for shape in SHAPES]


@pytest.fixture(scope="module")
def stats_and_data():
    batches = _batches()
    stats = normalizer.init(SIZE)
    update = jax.jit(normalizer.update)
    for batch in batches:
        stats = update(stats, jnp.asarray(batch))
    data = np.concatenate([b.reshape(-1, SIZE) for b in batches]).astype(np.float64)
    return stats, data


def test_mean_and_variance_match_numpy_over_concatenation(stats_and_data):
    """After several merges, count/mean/variance equal numpy's over all rows seen."""
    stats, data = stats_and_data
    assert float(stats.count) == data.shape[0]
    np.testing.assert_allclose(np.asarray(stats.mean), data.mean(0), rtol=1e-5, atol=1e-5)
    variance = np.asarray(stats.sum_sq_dev) / float(stats.count)
    np.testing.assert_allclose(variance, data.var(0), rtol=1e-4)


def test_single_update_matches_numpy():
    """One merge into empty statistics gives the batch's own mean and variance."""
    batch = _batches(seed=3)[1]
    stats = normalizer.update(normalizer.init(SIZE), jnp.asarray(batch))
    flat = batch.reshape(-1, SIZE).astype(np.float64)
    np.testing.assert_allclose(np.asarray(stats.mean), flat.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(stats.sum_sq_dev) / float(stats.count), flat.var(0), rtol=1e-4)


def test_devices_merge_their_moments_into_the_statistics_of_all_their_data():
    """With `axis_name`, each of 4 devices (here: vmap members along a named axis) merges its own `[T, E, O]`
    part; every device ends with numpy's count, mean and variance over all devices' rows, after two merges into
    existing statistics. The reward scale likewise sums every device's squares and count."""
    rng = np.random.default_rng(5)
    first, second = (rng.normal([5.0, -2.0, 0.0, 100.0, 1.0], [0.1, 1.0, 3.0, 10.0, 0.5], (4, 3, 2, SIZE))
                     .astype(np.float32) for _ in range(2))
    rewards = rng.normal(0.3, 2.0, (4, 3, 2)).astype(np.float32)

    def merge(a, b, r):
        stats = normalizer.update(normalizer.update(normalizer.init(SIZE), a, "d"), b, "d")
        return stats, normalizer.update_reward_scale(normalizer.init_reward_scale(), r, "d")

    stats, scale = jax.device_get(jax.vmap(merge, axis_name="d")(first, second, rewards))
    data = np.concatenate([first.reshape(-1, SIZE), second.reshape(-1, SIZE)]).astype(np.float64)
    for d in range(4):
        assert float(stats.count[d]) == data.shape[0] == 48
        np.testing.assert_allclose(stats.mean[d], data.mean(0), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(stats.sum_sq_dev[d] / stats.count[d], data.var(0), rtol=1e-4)
        assert float(scale.count[d]) == rewards.size
        np.testing.assert_allclose(scale.sum_sq[d], np.sum(rewards.astype(np.float64) ** 2), rtol=1e-5)


def test_normalize_before_any_update_is_clipped_identity():
    """With no data, normalize returns the input clipped to ±10."""
    obs = np.array([[0.0, 1.5, -3.0, 25.0, -11.0], [9.99, -9.99, 10.0, -10.0, 1e-3]], np.float32)
    out = np.asarray(normalizer.normalize(normalizer.init(SIZE), jnp.asarray(obs)))
    np.testing.assert_allclose(out, np.clip(obs, -10.0, 10.0), rtol=1e-6)


def test_normalize_after_updates_standardises_and_clips(stats_and_data):
    """After updates, normalize gives (x - mean) / std clipped to ±10, with std from numpy."""
    stats, data = stats_and_data
    mean, std = data.mean(0), data.std(0)
    rng = np.random.default_rng(1)
    obs = (mean + std * 4.0 * rng.standard_normal((50, SIZE))).astype(np.float32)
    obs[0] = mean + 30.0 * std  # far outside: clipped to +10
    obs[1] = mean - 30.0 * std  # clipped to -10
    out = np.asarray(normalizer.normalize(stats, jnp.asarray(obs)))
    expected = np.clip((obs - mean) / std, -10.0, 10.0)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(out[0], 10.0)
    np.testing.assert_array_equal(out[1], -10.0)
    assert np.abs(out).max() <= 10.0


def test_normalize_constant_feature_is_finite():
    """A feature with zero variance is divided by the std floor 1e-3, never by zero."""
    batch = np.stack([np.full(6, 2.0), np.arange(6.0), np.zeros(6), np.ones(6), np.linspace(-1, 1, 6)], -1)
    stats = normalizer.update(normalizer.init(SIZE), jnp.asarray(batch, jnp.float32))
    obs = batch[:2].astype(np.float32)
    obs[1, 0] = 2.0005
    out = np.asarray(normalizer.normalize(stats, jnp.asarray(obs)))
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out[:, 0], [0.0, 0.5], atol=1e-3)
    var = batch.var(0)
    expected = np.clip((obs - batch.mean(0)) / np.sqrt(np.maximum(var, 1e-6)), -10, 10)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-3)


def test_std_matches_numpy(stats_and_data):
    """std is numpy's population std of all rows seen, 1 before any data, and floored at 1e-3."""
    stats, data = stats_and_data
    np.testing.assert_allclose(np.asarray(normalizer.std(stats)), data.std(0), rtol=1e-4)
    np.testing.assert_array_equal(np.asarray(normalizer.std(normalizer.init(SIZE))), 1.0)
    constant = normalizer.update(normalizer.init(SIZE), jnp.full((4, SIZE), 3.0))
    np.testing.assert_allclose(np.asarray(normalizer.std(constant)), 1e-3, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------
# Output-preserving re-parametrisation of the first layer
# ---------------------------------------------------------------------------------------------------

_update = jax.jit(normalizer.update)


def _moved_stats(seed=0):
    """(old, new) statistics: `old` from the module's batches, `new` after merging batches drawn from a
    shifted, rescaled distribution (the statistics move by a lot in every dimension)."""
    old = normalizer.init(SIZE)
    for batch in _batches(seed):
        old = _update(old, jnp.asarray(batch))
    rng = np.random.default_rng(seed + 100)
    new = old
    for n in (9, 4, 20):
        shifted = np.array([3.0, 1.0, -4.0, 110.0, 0.0]) + np.array([0.3, 2.0, 1.0, 25.0, 0.05]) * rng.standard_normal(
            (n, SIZE))
        new = _update(new, jnp.asarray(shifted, jnp.float32))
    return old, new


def _unclipped_obs(rng, stats_list, n):
    """n raw observations inside the ±10 clip range of every statistics in `stats_list` (checked)."""
    old = stats_list[0]
    x = np.asarray(old.mean) + np.asarray(normalizer.std(old)) * rng.uniform(-2.5, 2.5, size=(n, SIZE))
    x = x.astype(np.float32)
    for s in stats_list:
        z = (x - np.asarray(s.mean)) / np.asarray(normalizer.std(s))
        assert np.abs(z).max() < 9.9
    return x


@pytest.mark.parametrize("extra_inputs", [0, 3])
def test_preserve_first_layer_keeps_the_function_of_raw_obs(extra_inputs):
    """normalize(new, x)·W'[:O] + e·W'[O:] + b' equals normalize(old, x)·W[:O] + e·W[O:] + b (float64 numpy
    of the float32 results) for unclipped x and any extra inputs e; rows beyond O are returned unchanged, and
    the naive layer without re-parametrisation does change (the statistics really moved)."""
    old, new = _moved_stats()
    rng = np.random.default_rng(5)
    hidden = 7
    kernel = rng.normal(size=(SIZE + extra_inputs, hidden)).astype(np.float32)
    bias = rng.normal(size=(hidden,)).astype(np.float32)
    kernel2, bias2 = jax.jit(normalizer.preserve_first_layer)(jnp.asarray(kernel), jnp.asarray(bias), old, new)
    kernel2, bias2 = np.asarray(kernel2), np.asarray(bias2)
    assert kernel2.shape == kernel.shape and bias2.shape == bias.shape
    np.testing.assert_array_equal(kernel2[SIZE:], kernel[SIZE:])

    x = _unclipped_obs(rng, [old, new], 40)
    extra = rng.normal(size=(40, extra_inputs))
    z_old = np.asarray(normalizer.normalize(old, jnp.asarray(x)), np.float64)
    z_new = np.asarray(normalizer.normalize(new, jnp.asarray(x)), np.float64)
    before = z_old @ kernel[:SIZE] + extra @ kernel[SIZE:] + bias
    after = z_new @ kernel2[:SIZE].astype(np.float64) + extra @ kernel2[SIZE:] + bias2
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-4 * np.abs(before).max())
    naive = z_new @ kernel[:SIZE] + extra @ kernel[SIZE:] + bias
    assert np.abs(naive - before).max() > 1.0


def test_preserve_first_layer_is_identity_for_unchanged_stats():
    """old == new returns the kernel and bias unchanged (ratio 1, zero shift), also from empty statistics."""
    old, _ = _moved_stats()
    rng = np.random.default_rng(6)
    kernel = jnp.asarray(rng.normal(size=(SIZE + 2, 4)), jnp.float32)
    bias = jnp.asarray(rng.normal(size=(4,)), jnp.float32)
    for stats in (old, normalizer.init(SIZE)):
        k2, b2 = normalizer.preserve_first_layer(kernel, bias, stats, stats)
        np.testing.assert_allclose(np.asarray(k2), np.asarray(kernel), rtol=1e-6)
        np.testing.assert_allclose(np.asarray(b2), np.asarray(bias), rtol=1e-6, atol=1e-6)


def test_preserve_first_layer_from_empty_statistics():
    """From empty statistics (identity normalisation) to the first data's statistics, the layer still
    computes the same function of raw x within ±10 (where the empty normaliser does not clip)."""
    rng = np.random.default_rng(7)
    empty = normalizer.init(SIZE)
    first = np.array([1.0, -2.0, 0.5, 3.0, 0.0]) + np.array([2.0, 2.5, 4.0, 3.0, 3.0]) * rng.standard_normal((64, SIZE))
    new = normalizer.update(empty, jnp.asarray(first, jnp.float32))
    kernel = rng.normal(size=(SIZE, 3)).astype(np.float32)
    bias = rng.normal(size=(3,)).astype(np.float32)
    k2, b2 = (np.asarray(x, np.float64)
              for x in normalizer.preserve_first_layer(jnp.asarray(kernel), jnp.asarray(bias), empty, new))
    x = rng.uniform(-9.0, 9.0, size=(30, SIZE)).astype(np.float32)
    z_new = np.asarray(normalizer.normalize(new, jnp.asarray(x)), np.float64)
    assert np.abs(z_new).max() < 9.9
    np.testing.assert_allclose(z_new @ k2 + b2, x.astype(np.float64) @ kernel + bias, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def nets_and_params():
    policy = GaussianPolicy(hidden=(8, 6), action_dim=2, init_std=0.7)
    critic = Critic(hidden=(8, 6))
    k1, k2 = jax.random.split(jax.random.key(0))
    policy_params = jax.jit(policy.init)(k1, jnp.zeros((1, SIZE)))
    critic_params = jax.jit(critic.init)(k2, jnp.zeros((1, SIZE)), jnp.zeros((1, 2)))
    # Make the output heads large enough that a moved normaliser visibly changes mean, std and Q.
    def scale(path, x):  # the heads' Dense layers sit directly under "params"
        return x * 300.0 if path[-3].key == "params" and path[-2].key.startswith("Dense_") else x

    policy_params = jax.tree_util.tree_map_with_path(scale, policy_params)
    return policy, critic, policy_params, critic_params


def test_preserve_outputs_keeps_policy_and_critic_functions_of_raw_obs(nets_and_params):
    """networks.preserve_outputs makes policy (mean, std) and critic Q, as functions of raw observations under
    the new statistics, allclose (rtol 1e-5) to the originals under the old statistics; without it they
    differ; only the first Dense layer's leaves change."""
    policy, critic, policy_params, critic_params = nets_and_params
    old, new = _moved_stats(seed=1)
    rng = np.random.default_rng(8)
    x = jnp.asarray(_unclipped_obs(rng, [old, new], 32))
    actions = jnp.asarray(rng.uniform(-1, 1, size=(32, 2)), jnp.float32)

    @jax.jit
    def outputs(policy_params, critic_params, stats):
        obs = normalizer.normalize(stats, x)
        mean, std = policy.apply(policy_params, obs)
        return mean, std, critic.apply(critic_params, obs, actions)

    keep = jax.jit(networks.preserve_outputs)
    policy2, critic2 = keep(policy_params, old, new), keep(critic_params, old, new)
    before = outputs(policy_params, critic_params, old)
    after = outputs(policy2, critic2, new)
    naive = outputs(policy_params, critic_params, new)
    for b, a, n in zip(before, after, naive):
        b, a, n = (np.asarray(v, np.float64) for v in (b, a, n))
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())
        assert np.abs(n - b).max() > 100 * 1e-5 * np.abs(b).max()  # the statistics really moved the outputs

    for original, kept in ((policy_params, policy2), (critic_params, critic2)):
        flat, flat_kept = (dict(jax.tree_util.tree_flatten_with_path(p)[0]) for p in (original, kept))
        assert flat.keys() == flat_kept.keys()
        changed = {jax.tree_util.keystr(k) for k in flat if not np.array_equal(flat[k], flat_kept[k])}
        assert changed == {"['params']['LayerNormMLP_0']['Dense_0']['kernel']",
                           "['params']['LayerNormMLP_0']['Dense_0']['bias']"}


@pytest.mark.parametrize("critic, trunk, shape", [
    (Critic(hidden=(8, 6), num_members=3), "LayerNormMLP_0", (3, 32)),
    (Critic(hidden=(8,), num_members=3, residual_blocks=2, num_bins=5), "ResidualMLP_0", (3, 32, 5)),
])
def test_preserve_outputs_keeps_every_member_of_an_ensemble_critic(critic, trunk, shape):
    """An ensemble critic (3 members, first layers stacked under "members"), a layer-norm MLP with scalar outputs
    or a residual one with logits: after preserve_outputs every member's outputs for raw observations under the
    new statistics match the original under the old ones, and only the stacked first Dense layer changes."""
    params = jax.jit(critic.init)(jax.random.key(4), jnp.zeros((1, SIZE)), jnp.zeros((1, 2)))
    old, new = _moved_stats(seed=2)
    rng = np.random.default_rng(9)
    x = jnp.asarray(_unclipped_obs(rng, [old, new], 32))
    actions = jnp.asarray(rng.uniform(-1, 1, size=(32, 2)), jnp.float32)
    q = jax.jit(lambda p, stats: critic.apply(p, normalizer.normalize(stats, x), actions))
    kept = jax.jit(networks.preserve_outputs)(params, old, new)
    before, after, naive = (np.asarray(v, np.float64) for v in (q(params, old), q(kept, new), q(params, new)))
    assert before.shape == shape
    assert np.abs(before[0] - before[1]).max() > 1e-3  # independently initialised members
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5 * np.abs(before).max())
    assert np.abs(naive - before).max() > 100 * 1e-5 * np.abs(before).max()
    flat, flat_kept = (dict(jax.tree_util.tree_flatten_with_path(p)[0]) for p in (params, kept))
    changed = {jax.tree_util.keystr(k) for k in flat if not np.array_equal(flat[k], flat_kept[k])}
    assert changed == {f"['params']['members']['{trunk}']['Dense_0']['kernel']",
                       f"['params']['members']['{trunk}']['Dense_0']['bias']"}
