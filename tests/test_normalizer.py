"""Running observation statistics: parallel Welford merge and clipped normalisation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from purempo import normalizer

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
