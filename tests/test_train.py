"""Trainer: vmap over seeds and hyper-parameters, determinism, single compilation, finite metrics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from purempo import Config, make_train, make_trainer

TINY = Config(
    env="inverted_pendulum",
    episode_length=50,
    total_steps=2_000,
    num_envs=8,
    unroll_length=2,
    updates_per_iteration=2,
    prefill_steps=64,
    num_evals=2,
    eval_episodes=2,
    replay_size=2_048,
    batch_size=8,
    sequence_length=4,
    num_action_samples=4,
    policy_hidden=(16, 16),
    critic_hidden=(16, 16),
)


@pytest.fixture(scope="module")
def vmapped_train():
    return jax.jit(jax.vmap(make_train(TINY)))


@pytest.fixture(scope="module")
def two_seed_run(vmapped_train):
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    return jax.device_get(vmapped_train(keys))


def test_vmap_over_seeds_gives_finite_metrics_of_the_documented_shapes(two_seed_run):
    state, metrics = two_seed_run
    per_iteration = (2, TINY.num_evals, TINY.iterations_per_eval)
    learned = metrics["updates"] > 0
    assert learned.shape == per_iteration and learned.sum() > 0
    for name in ("critic_loss", "policy_loss", "temperature", "alpha_mean", "alpha_std", "kl_mean", "kl_std",
                 "q_mean"):
        assert metrics[name].shape == per_iteration, name
        assert np.all(np.isfinite(metrics[name][learned])), name
        assert np.all(np.isnan(metrics[name][~learned])), name  # prefill iterations do not learn
    assert metrics["eval_return"].shape == (2, TINY.num_evals)
    assert np.all(metrics["temperature"][learned] > 0) and np.all(metrics["alpha_std"][learned] > 0)
    assert int(state.env_steps[0]) == TINY.env_steps
    np.testing.assert_array_equal(metrics["eval_env_steps"][0],
                                  TINY.iterations_per_eval * np.arange(1, 3) * TINY.steps_per_iteration)
    learning_iterations = TINY.num_iterations - TINY.prefill_iterations
    assert int(state.learner.num_updates[0]) == learning_iterations * TINY.updates_per_iteration
    assert metrics["updates"].sum() == 2 * learning_iterations * TINY.updates_per_iteration


def test_seeds_differ_and_same_seed_is_identical(vmapped_train, two_seed_run):
    _, metrics = two_seed_run
    assert not np.array_equal(metrics["critic_loss"][0], metrics["critic_loss"][1])
    again = jax.device_get(vmapped_train(jax.random.split(jax.random.PRNGKey(0), 2)))
    for name, value in metrics.items():
        np.testing.assert_array_equal(value, again[1][name], err_msg=name)
    jax.tree.map(np.testing.assert_array_equal, two_seed_run[0].learner.policy_params,
                 again[0].learner.policy_params)
    assert vmapped_train._cache_size() == 1  # the second call reused the compiled program


def test_vmapped_seed_equals_single_run(two_seed_run):
    """Seed i of a vmapped run is the same computation as an unbatched run with key i."""
    key = jax.random.split(jax.random.PRNGKey(0), 2)[1]
    _, single = jax.device_get(jax.jit(make_train(TINY))(key))
    _, batched = two_seed_run
    for name in ("eval_return", "episodes_finished", "env_steps"):
        np.testing.assert_array_equal(single[name], batched[name][1], err_msg=name)
    learned = single["updates"] > 0
    np.testing.assert_allclose(single["critic_loss"][learned], batched["critic_loss"][1][learned], rtol=1e-3,
                               atol=1e-5)


def test_chunked_driver_matches_fused_train(two_seed_run):
    """Running init + run_chunk from Python (as the CLI does) gives the fused scan's numbers."""
    trainer = make_trainer(TINY)
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    state = jax.jit(jax.vmap(trainer.init))(keys)
    run_chunk = jax.jit(jax.vmap(trainer.run_chunk))
    returns = []
    for _ in range(TINY.num_evals):
        state, metrics = run_chunk(state)
        returns.append(np.asarray(metrics["eval_return"]))
    np.testing.assert_array_equal(np.stack(returns, axis=1), two_seed_run[1]["eval_return"])


def test_hyperparameter_sweep_with_vmap(two_seed_run):
    """Float hyper-parameters are a pytree: vmapping over two learning rates trains two different agents,
    and the sweep member with the config's own values reproduces the unswept run."""
    hp = TINY.hparams
    sweep = hp._replace(policy_lr=jnp.array([hp.policy_lr, 1e-2]), critic_lr=jnp.array([hp.critic_lr, 1e-2]))
    axes = type(hp)(*[0 if name in ("policy_lr", "critic_lr") else None for name in hp._fields])
    train = jax.jit(jax.vmap(make_train(TINY), in_axes=(None, axes)))
    key = jax.random.split(jax.random.PRNGKey(0), 2)[1]
    _, metrics = jax.device_get(train(key, sweep))
    learned = metrics["updates"][0] > 0
    assert np.all(np.isfinite(metrics["critic_loss"][:, learned]))
    assert not np.allclose(metrics["critic_loss"][0][learned], metrics["critic_loss"][1][learned])
    _, unswept = two_seed_run
    for name in ("eval_return", "episodes_finished"):
        np.testing.assert_array_equal(metrics[name][0], unswept[name][1], err_msg=name)
    np.testing.assert_allclose(metrics["critic_loss"][0][learned], unswept["critic_loss"][1][learned],
                               rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("per_dim,penalty", [(True, True), (False, False)])
def test_flag_combinations_keeps_duals_positive_and_finite(per_dim, penalty):
    config = TINY.replace(env="reacher", per_dim_constraining=per_dim, action_penalization=penalty,
                          reward_scale=1e3, num_evals=1, total_steps=1_000, episode_length=20)
    state, metrics = jax.device_get(jax.jit(make_train(config))(jax.random.PRNGKey(2)))
    duals = state.learner.dual_params
    expected_shape = (2,) if per_dim else (1,)
    assert duals.alpha_mean.shape == expected_shape and duals.alpha_std.shape == expected_shape
    learned = metrics["updates"] > 0
    for name in ("temperature", "penalty_temperature", "alpha_mean", "alpha_std", "critic_loss", "policy_loss"):
        assert np.all(np.isfinite(metrics[name][learned])), name
    for name in ("temperature", "penalty_temperature", "alpha_mean", "alpha_std"):
        assert np.all(metrics[name][learned] > 0), name


def _reacher_scale_run(normalize):
    config = TINY.replace(env="reacher", reward_normalization=normalize, num_evals=1, total_steps=640,
                          episode_length=20)
    hp = config.hparams
    sweep = hp._replace(reward_scale=jnp.array([1.0, 1000.0]))
    axes = type(hp)(*[0 if name == "reward_scale" else None for name in hp._fields])
    state, metrics = jax.device_get(jax.jit(jax.vmap(make_train(config), in_axes=(None, axes)))(
        jax.random.PRNGKey(3), sweep))
    return config, state, metrics


def test_reward_divisor_is_the_prefill_rms_and_removes_the_reward_scale():
    config, state, metrics = _reacher_scale_run(normalize=True)
    prefill_rows = config.prefill_iterations * config.unroll_length  # replay rows written during prefill
    for run, scale in enumerate((1.0, 1000.0)):
        stored = state.replay.data.reward[run, :prefill_rows]
        np.testing.assert_allclose(metrics["reward_divisor"][run, 0, -1], np.sqrt(np.mean(stored**2)), rtol=1e-5)
        np.testing.assert_allclose(state.replay.data.reward[run, :prefill_rows],
                                   scale * state.replay.data.reward[0, :prefill_rows], rtol=1e-5)
    # Stored rewards differ by 1000x, yet the learner sees the same numbers: its first updates agree.
    learned = metrics["updates"][0, 0] > 0
    first = np.flatnonzero(learned)[:3]
    for name in ("q_mean", "critic_loss", "temperature", "kl_mean"):
        np.testing.assert_allclose(metrics[name][1, 0, first], metrics[name][0, 0, first], rtol=2e-3, atol=1e-6,
                                   err_msg=name)


def test_without_reward_normalization_the_critic_sees_the_scale():
    _, _, metrics = _reacher_scale_run(normalize=False)
    learned = metrics["updates"][0, 0] > 0
    assert np.all(metrics["reward_divisor"][:, 0, learned] == 1.0)
    target = metrics["target_mean"][:, 0, learned]
    assert np.all(np.abs(target[1]) > 100 * np.abs(target[0]))
