"""Trainer: vmap over seeds and hyper-parameters, determinism, single compilation, finite metrics."""

import functools

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
                 "q_mean", "kl_mean_max", "kl_std_max", "alpha_mean_min", "e_step_kl", "e_step_kl_max",
                 "target_std_min"):
        assert metrics[name].shape == per_iteration, name
        assert np.all(np.isfinite(metrics[name][learned])), name
        assert np.all(np.isnan(metrics[name][~learned])), name  # prefill iterations do not learn
    per_eval = (2, TINY.num_evals)
    for name in ("eval_return", "eval_return_std", "eval_return_min", "eval_stochastic_return",
                 "eval_stochastic_return_std", "eval_episode_length", "eval_env_steps", "eval_iteration"):
        assert metrics[name].shape == per_eval, name
        assert np.all(np.isfinite(metrics[name])), name
    assert metrics["eval_episodes"].returns.shape == per_eval + (2 * TINY.eval_episodes,)
    assert np.all(metrics["temperature"][learned] > 0) and np.all(metrics["alpha_std"][learned] > 0)
    assert np.all(metrics["alpha_mean_min"][learned] <= metrics["alpha_mean"][learned] * (1 + 1e-6))
    assert np.all(metrics["alpha_mean_min"][learned] >= TINY.min_alpha)
    assert np.all(metrics["kl_mean_max"][learned] >= metrics["kl_mean"][learned] * (1 - 1e-6))
    assert np.all(metrics["kl_std_max"][learned] >= metrics["kl_std"][learned] * (1 - 1e-6))
    assert np.all(metrics["e_step_kl_max"][learned] >= metrics["e_step_kl"][learned] * (1 - 1e-6))
    # A std of the batch (finite, not the +inf of masked states) that is at most about the policy's mean std.
    assert np.all(metrics["target_std_min"][learned] <= metrics["policy_std"][learned] * 1.5)
    assert state.iteration.dtype == np.int32 and np.all(state.iteration == TINY.num_iterations)
    assert TINY.num_iterations * TINY.steps_per_iteration == TINY.env_steps
    np.testing.assert_array_equal(metrics["eval_iteration"][0], TINY.iterations_per_eval * np.arange(1, 3))
    assert metrics["eval_env_steps"].dtype == np.float32
    np.testing.assert_array_equal(metrics["eval_env_steps"][0],
                                  TINY.iterations_per_eval * np.arange(1, 3) * TINY.steps_per_iteration)
    learning_iterations = TINY.num_iterations - TINY.prefill_iterations
    assert int(state.learner.num_updates[0]) == learning_iterations * TINY.updates_per_iteration
    assert metrics["updates"].sum() == 2 * learning_iterations * TINY.updates_per_iteration


def test_seeds_differ_and_same_seed_is_identical(vmapped_train, two_seed_run):
    _, metrics = two_seed_run
    assert not np.array_equal(metrics["critic_loss"][0], metrics["critic_loss"][1])
    again = jax.device_get(vmapped_train(jax.random.split(jax.random.PRNGKey(0), 2)))
    for name, value in metrics.items():  # eval_episodes is an Episodes pytree
        jax.tree.map(lambda x, y: np.testing.assert_array_equal(x, y, err_msg=name), value, again[1][name])
    jax.tree.map(np.testing.assert_array_equal, two_seed_run[0].learner.policy_params,
                 again[0].learner.policy_params)
    assert vmapped_train._cache_size() == 1  # the second call reused the compiled program


def test_vmapped_seed_equals_single_run(two_seed_run):
    """Seed i of a vmapped run is the same computation as an unbatched run with key i."""
    key = jax.random.split(jax.random.PRNGKey(0), 2)[1]
    _, single = jax.device_get(jax.jit(make_train(TINY))(key))
    _, batched = two_seed_run
    for name in ("eval_return", "eval_stochastic_return", "episodes_finished", "env_steps", "eval_iteration"):
        np.testing.assert_array_equal(single[name], batched[name][1], err_msg=name)
    learned = single["updates"] > 0
    np.testing.assert_allclose(single["critic_loss"][learned], batched["critic_loss"][1][learned], rtol=1e-3,
                               atol=1e-5)


def test_chunked_driver_matches_fused_train(two_seed_run):
    """Running init + run_chunk from Python (as the CLI does) gives the fused scan's numbers."""
    trainer = make_trainer(TINY)
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    state = jax.jit(jax.vmap(trainer.init))(keys)
    run_chunk = jax.jit(jax.vmap(functools.partial(train.run_chunk, trainer)))
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


def test_an_hl_gauss_run_sweeps_its_sigma_and_its_support_follows_the_reward_scale():
    """critic_head hl_gauss under a vmapped sweep: rewards ×1000 are divided by a divisor ×1000 and the support
    grows with reward_scale, so in the learner's units both are those of the unscaled run (same support top
    1 / (divisor·(1 − γ)) per unscaled reward and the config's 4σ margin, same critic losses); another
    hl_gauss_sigma trains another critic on the same atoms."""
    config = TINY.replace(critic_head="hl_gauss", reward_range=(0.0, 1.0), critic_bins=21)
    hp = config.hparams
    sweep = hp._replace(reward_scale=jnp.array([1.0, 1000.0, 1.0]), hl_gauss_sigma=jnp.array([0.75, 0.75, 2.0]))
    axes = type(hp)(*[0 if name in ("reward_scale", "hl_gauss_sigma") else None for name in hp._fields])
    _, metrics = jax.device_get(jax.jit(jax.vmap(make_train(config), in_axes=(None, axes)))(
        jax.random.PRNGKey(4), sweep))
    learned = metrics["updates"][0] > 0
    support_max, divisor = metrics["support_max"][:, learned], metrics["reward_divisor"][:, learned]
    margin = 4 * 0.75  # bins beyond the bound from the config's σ, not the swept one: the atoms stay put
    top = np.array([1.0, 1000.0, 1.0]) * (1 + margin / (config.critic_bins - 1 - 2 * margin))
    np.testing.assert_allclose(support_max, top[:, None] / (divisor * (1 - config.discount)),
                               rtol=1e-4)  # 1 − γ in float32
    np.testing.assert_allclose(support_max[1], support_max[0], rtol=1e-5)
    np.testing.assert_allclose(metrics["critic_loss"][1][learned], metrics["critic_loss"][0][learned], rtol=1e-3)
    assert np.all(np.isfinite(metrics["critic_loss"][:, learned])) and np.all(metrics["critic_entropy"][:, learned] > 0)
    assert not np.allclose(metrics["critic_loss"][2][learned], metrics["critic_loss"][0][learned], rtol=1e-2)


@pytest.fixture(scope="module")
def reacher_scale_runs():
    """Two reacher runs (2 actions), each vmapped over reward_scale [1, 1000]: with reward normalisation and the
    default flags (per-dimension multipliers, action penalty), and without normalisation with both flags off.
    Shared by the reward-scale and flag-combination tests so each compiles once (Brax's spring pipeline: the
    fastest to compile, and these tests do not depend on the physics)."""
    runs = {}
    for normalize, flags in ((True, True), (False, False)):
        config = TINY.replace(env="reacher", backend="spring", reward_normalization=normalize,
                              per_dim_constraining=flags, action_penalization=flags, num_evals=1, total_steps=640,
                              episode_length=20)
        hp = config.hparams
        sweep = hp._replace(reward_scale=jnp.array([1.0, 1000.0]))
        axes = type(hp)(*[0 if name == "reward_scale" else None for name in hp._fields])
        state, metrics = jax.device_get(jax.jit(jax.vmap(make_train(config), in_axes=(None, axes)))(
            jax.random.PRNGKey(3), sweep))
        runs[normalize] = config, state, metrics
    return runs


@pytest.mark.parametrize("normalize", [True, False])
def test_flag_combinations_keeps_duals_positive_and_finite(reacher_scale_runs, normalize):
    config, state, metrics = reacher_scale_runs[normalize]
    duals = state.learner.dual_params
    expected_shape = (2, 2) if config.per_dim_constraining else (2, 1)  # [reward scales, multipliers]
    assert duals.alpha_mean.shape == expected_shape and duals.alpha_std.shape == expected_shape
    learned = metrics["updates"] > 0
    names = ("temperature", "alpha_mean", "alpha_std", "critic_loss", "policy_loss")
    names += ("penalty_temperature",) if config.action_penalization else ()
    for name in names:
        assert np.all(np.isfinite(metrics[name][learned])), name
    for name in names[:3] + names[5:]:
        assert np.all(metrics[name][learned] > 0), name


def test_reward_divisor_is_the_prefill_rms_and_removes_the_reward_scale(reacher_scale_runs):
    config, state, metrics = reacher_scale_runs[True]
    prefill_rows = config.prefill_iterations * config.unroll_length  # replay rows written during prefill
    for run, scale in enumerate((1.0, 1000.0)):
        stored = state.replay.data.reward[run, :prefill_rows]
        divisors = metrics["reward_divisor"][run, 0, config.prefill_iterations - 1:]
        np.testing.assert_allclose(divisors, np.sqrt(np.mean(stored**2)), rtol=1e-5)  # frozen after the prefill
        np.testing.assert_allclose(state.replay.data.reward[run, :prefill_rows],
                                   scale * state.replay.data.reward[0, :prefill_rows], rtol=1e-5)
    # Stored rewards differ by 1000x, yet the learner sees the same numbers: its first updates agree.
    learned = metrics["updates"][0, 0] > 0
    first = np.flatnonzero(learned)[:3]
    for name in ("q_mean", "critic_loss", "temperature", "kl_mean"):
        np.testing.assert_allclose(metrics[name][1, 0, first], metrics[name][0, 0, first], rtol=2e-3, atol=1e-6,
                                   err_msg=name)


def test_without_reward_normalization_the_critic_sees_the_scale(reacher_scale_runs):
    _, _, metrics = reacher_scale_runs[False]
    learned = metrics["updates"][0, 0] > 0
    assert np.all(metrics["reward_divisor"][:, 0, learned] == 1.0)
    target = metrics["target_mean"][:, 0, learned]
    assert np.all(np.abs(target[1]) > 100 * np.abs(target[0]))


# ------------------------------------------------------------------------------------------------------------
# Glue: the learner step's target networks, terminal masking, output-preserving normalisation, counters
# ------------------------------------------------------------------------------------------------------------

from purempo import acting, distributional, envs, losses, mpo, normalizer, replay, train  # noqa: E402

# 4 envs × 2 steps = 8 steps per iteration; 2 prefill iterations; 10 iterations, 2 per evaluation.
GLUE = Config(
    env="inverted_pendulum",
    episode_length=10,
    total_steps=80,
    num_envs=4,
    unroll_length=2,
    updates_per_iteration=1,
    prefill_steps=16,
    num_evals=5,
    eval_episodes=2,
    replay_size=64,
    reset_pool_size=16,
    batch_size=4,
    sequence_length=3,
    num_action_samples=3,
    policy_hidden=(8,),
    critic_hidden=(8,),
)


def _leaves(tree):
    return [np.asarray(x, np.float64) for x in jax.tree.leaves(tree)]


def _assert_trees_identical(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _trees_differ(a, b):
    return any(not np.array_equal(x, y) for x, y in zip(_leaves(a), _leaves(b)))


@pytest.fixture(scope="module")
def glue_run():
    """The GLUE trainer's jitted run_chunk and the states after 0, 1 and 2 chunks (2 prefill + 2 learning
    iterations), with their metrics."""
    trainer = make_trainer(GLUE)
    run_chunk = jax.jit(functools.partial(train.run_chunk, trainer))
    states = [jax.jit(trainer.init)(jax.random.PRNGKey(0))]
    metrics = []
    for _ in range(2):
        state, chunk_metrics = run_chunk(states[-1])
        states.append(state)
        metrics.append(chunk_metrics)
    return trainer, run_chunk, jax.device_get(states), jax.device_get(metrics)


@pytest.fixture(scope="module")
def learner_pieces(glue_run):
    """A replay batch, the reward divisor and a jitted learner_step per (target_update_period, tau)."""
    _, _, states, _ = glue_run
    state = states[-1]
    action_dim = envs.make(GLUE.env).action_size
    nets = train.make_networks(GLUE, action_dim)
    optimizers = train.make_optimizers(GLUE)
    divisor = normalizer.reward_divisor(state.reward_stats)
    batches = [replay.sample(state.replay, k, GLUE.batch_size, GLUE.sequence_length)
               for k in jax.random.split(jax.random.PRNGKey(5), 4)]

    def step_fn(period, tau=GLUE.tau, hparams=None, config=GLUE):
        config = config.replace(target_update_period=period, tau=tau)
        hp = config.hparams if hparams is None else hparams

        @jax.jit
        def step(learner, batch, key):
            return train.learner_step(learner, state.obs_stats, divisor, batch, key, hp, config, nets, optimizers)

        return step

    # One jitted function for every test: calls with an equal config (and so equal networks) reuse its compile.
    jitted_loss_and_grads = jax.jit(jax.value_and_grad(train.mpo_loss, has_aux=True), static_argnums=(7, 8))

    def loss_and_grads(learner, batch, key, hparams=None, config=GLUE):
        params = (learner.policy_params, learner.critic_params, learner.dual_params)
        hp = config.hparams if hparams is None else hparams
        return jitted_loss_and_grads(params, learner, state.obs_stats, divisor, batch, key, hp, config,
                                     train.make_networks(config, action_dim))

    # A learner whose targets differ from its online networks (4 learning updates, no copy yet) and which has
    # made no update yet by its own count.
    learner = state.learner._replace(num_updates=jnp.zeros((), jnp.int32))
    assert _trees_differ(learner.target_policy_params, learner.policy_params)
    assert _trees_differ(learner.target_critic_params, learner.critic_params)
    return dict(learner=learner, batches=batches, step_fn=step_fn, loss_and_grads=loss_and_grads,
                obs_stats=state.obs_stats, divisor=divisor)


def test_targets_are_not_changed_by_the_sgd_step(learner_pieces):
    """Between copies the SGD step moves the online networks, optimiser states and duals, never the targets."""
    learner = learner_pieces["learner"]
    step = learner_pieces["step_fn"](period=5)
    new, metrics = step(learner, learner_pieces["batches"][0], jax.random.PRNGKey(1))
    assert np.isfinite(float(metrics["critic_loss"])) and np.isfinite(float(metrics["policy_loss"]))
    assert int(new.num_updates) == 1
    _assert_trees_identical(new.target_policy_params, learner.target_policy_params)
    _assert_trees_identical(new.target_critic_params, learner.target_critic_params)
    for name in ("policy_params", "critic_params", "dual_params", "policy_opt_state", "critic_opt_state"):
        assert _trees_differ(getattr(new, name), getattr(learner, name)), name
    # mpo_loss differentiates the online parameters and duals only: its gradient has exactly their structure.
    (_, _), grads = learner_pieces["loss_and_grads"](learner, learner_pieces["batches"][0], jax.random.PRNGKey(1))
    assert jax.tree.structure(grads) == jax.tree.structure(
        (learner.policy_params, learner.critic_params, learner.dual_params))


def test_targets_are_copied_exactly_every_period_updates(learner_pieces):
    """With target_update_period P: after P − 1 updates the targets are still the initial ones; after exactly P
    they equal the online networks bit for bit; after P + 1 they still hold that copy."""
    period = 3
    step = learner_pieces["step_fn"](period=period)
    learner = initial = learner_pieces["learner"]
    history = []
    for k, key in enumerate(jax.random.split(jax.random.PRNGKey(2), period + 1)):
        learner, _ = step(learner, learner_pieces["batches"][k % 4], key)
        history.append(jax.device_get(learner))
    before_copy, at_copy, after_copy = history[period - 2], history[period - 1], history[period]
    assert int(at_copy.num_updates) == period
    _assert_trees_identical(before_copy.target_policy_params, initial.target_policy_params)
    _assert_trees_identical(before_copy.target_critic_params, initial.target_critic_params)
    _assert_trees_identical(at_copy.target_policy_params, at_copy.policy_params)
    _assert_trees_identical(at_copy.target_critic_params, at_copy.critic_params)
    _assert_trees_identical(after_copy.target_policy_params, at_copy.policy_params)
    _assert_trees_identical(after_copy.target_critic_params, at_copy.critic_params)
    assert _trees_differ(after_copy.policy_params, at_copy.policy_params)


def test_polyak_targets_follow_the_online_networks_by_tau(learner_pieces):
    """target_update_period 0: target' = target + τ·(online' − target), leaf by leaf (numpy, float64)."""
    tau = 0.3
    step = learner_pieces["step_fn"](period=0, tau=tau)
    learner = learner_pieces["learner"]
    new, _ = jax.device_get(step(learner, learner_pieces["batches"][1], jax.random.PRNGKey(3)))
    for target, online, name in ((learner.target_policy_params, new.policy_params, "policy"),
                                 (learner.target_critic_params, new.critic_params, "critic")):
        expected = [t + tau * (o - t) for t, o in zip(_leaves(target), _leaves(online))]
        got = new.target_policy_params if name == "policy" else new.target_critic_params
        for e, g in zip(expected, _leaves(got)):
            np.testing.assert_allclose(g, e, rtol=1e-6, atol=1e-7, err_msg=name)
    assert _trees_differ(new.target_policy_params, learner.target_policy_params)


def test_alpha_gain_reaches_the_policy_penalty_only(learner_pieces):
    """alpha_gain g travels from HParams to the M-step: with bounds so tight that every KL is > 11× its bound,
    the applied α_μ is the learned one + 10·g; the policy gradient changes, while the critic gradient, the
    duals' gradients and the learned multipliers' values do not."""
    learner, batch, key = learner_pieces["learner"], learner_pieces["batches"][2], jax.random.PRNGKey(4)
    config = GLUE.replace(epsilon_mean=1e-9, epsilon_std=1e-11)
    out = {g: jax.device_get(learner_pieces["loss_and_grads"](learner, batch, key, hparams=config.replace(
        alpha_gain=g).hparams, config=config)) for g in (0.0, 0.5)}
    (_, metrics0), (policy0, critic0, duals0) = out[0.0]
    (_, metrics1), (policy1, critic1, duals1) = out[0.5]
    np.testing.assert_allclose(metrics0["alpha_mean_applied"], metrics0["alpha_mean"], rtol=1e-6)
    np.testing.assert_allclose(metrics1["alpha_mean_applied"], metrics1["alpha_mean"] + 5.0, rtol=1e-6)
    assert metrics1["alpha_mean"] == metrics0["alpha_mean"]
    assert _trees_differ(policy1, policy0)
    _assert_trees_identical(critic1, critic0)
    _assert_trees_identical(duals1, duals0)


def test_normalize_penalty_reaches_the_policy_loss_only(learner_pieces):
    """Config.normalize_penalty travels to the M-step: the policy gradient is the plain one divided by
    1 + Σ α_μ + Σ α_σ (the learner's multipliers, alpha_gain 0), while the critic's and the duals' gradients and
    the reported metrics are unchanged."""
    learner, batch, key = learner_pieces["learner"], learner_pieces["batches"][1], jax.random.PRNGKey(6)
    hparams = GLUE.replace(alpha_gain=0.0).hparams
    out = {n: jax.device_get(learner_pieces["loss_and_grads"](
        learner, batch, key, hparams=hparams, config=GLUE.replace(normalize_penalty=n))) for n in (False, True)}
    (_, metrics0), (policy0, critic0, duals0) = out[False]
    (_, metrics1), (policy1, critic1, duals1) = out[True]
    alpha_mean, alpha_std = (np.asarray(mpo.positive(a)) for a in (learner.dual_params.alpha_mean,
                                                                    learner.dual_params.alpha_std))
    divisor = 1.0 + alpha_mean.sum() + alpha_std.sum()
    assert divisor > 100.0  # init_alpha_std: the scaling is far from 1
    for g1, g0 in zip(jax.tree.leaves(policy1), jax.tree.leaves(policy0)):
        np.testing.assert_allclose(g1, g0 / divisor, rtol=2e-4, atol=1e-9)
    _assert_trees_identical(critic1, critic0)
    _assert_trees_identical(duals1, duals0)
    np.testing.assert_allclose(metrics1["policy_loss"], metrics0["policy_loss"] / divisor, rtol=1e-5)
    assert metrics1["kl_mean"] == metrics0["kl_mean"] and metrics1["critic_loss"] == metrics0["critic_loss"]


def _as_ensemble(params, k):
    """Single-critic parameters as an ensemble of k identical members (stacked under "members")."""
    return {"params": {"members": jax.tree.map(lambda x: jnp.stack([x] * k), params["params"])}}


def test_an_ensemble_of_identical_critics_reproduces_the_single_critic(learner_pieces):
    """num_critics 2 with both members (online and target) equal to the single critic: their spread is 0, so
    whatever the pessimism the targets, E-step and policy gradient are the single critic's; the critic loss
    is twice the single one and each member's gradient is the single critic's gradient."""
    learner, batch, key = learner_pieces["learner"], learner_pieces["batches"][3], jax.random.PRNGKey(6)
    (loss1, m1), (policy1, critic1, duals1) = jax.device_get(learner_pieces["loss_and_grads"](learner, batch, key))
    config = GLUE.replace(num_critics=2, critic_pessimism=1.0)
    ensemble = learner._replace(critic_params=_as_ensemble(learner.critic_params, 2),
                                target_critic_params=_as_ensemble(learner.target_critic_params, 2))
    (loss2, m2), (policy2, critic2, duals2) = jax.device_get(
        learner_pieces["loss_and_grads"](ensemble, batch, key, config=config))
    np.testing.assert_allclose(m2["critic_loss"], 2 * m1["critic_loss"], rtol=1e-5)
    for name in ("policy_loss", "target_mean", "q_mean", "kl_mean", "temperature"):
        np.testing.assert_allclose(m2[name], m1[name], rtol=1e-5, atol=1e-7, err_msg=name)
    assert float(m2["q_member_std"]) == 0.0
    for a, b in zip(_leaves(policy2) + _leaves(duals2), _leaves(policy1) + _leaves(duals1)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
    for member in range(2):
        got = jax.tree.map(lambda x: x[member], critic2["params"]["members"])
        for a, b in zip(_leaves(got), _leaves(critic1["params"])):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


def test_ensemble_pessimism_lowers_the_targets_the_critic_regresses_on(learner_pieces):
    """Two different critics: the mean target of β = 1 (their minimum) is below that of β = 0 (their mean),
    and the metric q_member_std reports their spread."""
    learner, batch, key = learner_pieces["learner"], learner_pieces["batches"][0], jax.random.PRNGKey(7)
    config = GLUE.replace(num_critics=2)
    nets = train.make_networks(config, envs.make(GLUE.env).action_size)
    obs_dim = learner.policy_params["params"]["LayerNormMLP_0"]["Dense_0"]["kernel"].shape[0]
    params = nets.critic.init(jax.random.PRNGKey(11), jnp.zeros((obs_dim,)), jnp.zeros((1,)))
    params = jax.tree.map(lambda x: x * 30.0, params)  # large, clearly different values per member
    ensemble = learner._replace(critic_params=params, target_critic_params=params)
    target = {}
    for beta in (0.0, 1.0):
        (_, m), _ = jax.device_get(learner_pieces["loss_and_grads"](
            ensemble, batch, key, hparams=config.replace(critic_pessimism=beta).hparams, config=config))
        target[beta] = float(m["target_mean"])
        assert float(m["q_member_std"]) > 0.1
    assert target[1.0] < target[0.0] - 0.1


def test_antithetic_samples_reach_the_sampled_actions(learner_pieces, monkeypatch):
    """antithetic_samples: mpo_loss samples its N actions at every next state in mirrored pairs about π'’s
    mean (checked on the concrete actions, run without jit), and the loss stays finite."""
    seen = []

    def recording(key, mean, std, num_samples, antithetic=False):
        actions = sample(key, mean, std, num_samples, antithetic)
        seen.append((mean, actions))
        return actions

    sample = train.mpo.sample_gaussian
    monkeypatch.setattr(train.mpo, "sample_gaussian", recording)
    config = GLUE.replace(antithetic_samples=True, num_action_samples=4)
    with jax.disable_jit():
        (loss, _), _ = learner_pieces["loss_and_grads"](learner_pieces["learner"], learner_pieces["batches"][0],
                                                        jax.random.PRNGKey(8), config=config)
    assert np.isfinite(float(loss))
    [(mean, actions)] = seen
    assert actions.shape[:3] == (4, GLUE.batch_size, GLUE.sequence_length)
    np.testing.assert_allclose(actions[:2] + actions[2:], 2 * jnp.broadcast_to(mean, actions[:2].shape), atol=1e-5)
    assert float(jnp.max(jnp.abs(actions[0] - actions[1]))) > 1e-3  # two different pairs, not one repeated


@pytest.mark.parametrize("decay, n", [(0.0, 500), (100.0, 0), (100.0, 300)])
def test_policy_learning_rate_decays_as_one_over_updates(learner_pieces, decay, n):
    """policy_lr_decay_updates T: Adam's first step from fresh moments moves every parameter with a non-zero
    gradient by the learning rate itself (m̂/√v̂ = ±1), so the largest policy change after the learner's n-th
    update is policy_lr / (1 + n/T) (policy_lr when T is 0); the critic keeps its own constant rate."""
    learner = learner_pieces["learner"]
    optimizer = train.make_optimizer(GLUE)
    learner = learner._replace(num_updates=jnp.asarray(n, jnp.int32),
                               policy_opt_state=optimizer.init(learner.policy_params),
                               critic_opt_state=optimizer.init(learner.critic_params))
    hp = GLUE.replace(policy_lr_decay_updates=decay).hparams
    new, _ = jax.device_get(learner_pieces["step_fn"](period=1000, hparams=hp)(
        learner, learner_pieces["batches"][1], jax.random.PRNGKey(8)))
    moved = max(np.abs(a - b).max() for a, b in zip(_leaves(new.policy_params), _leaves(learner.policy_params)))
    expected = GLUE.policy_lr / (1.0 + n / decay) if decay > 0 else GLUE.policy_lr
    np.testing.assert_allclose(moved, expected, rtol=1e-3)
    critic_moved = max(np.abs(a - b).max() for a, b in zip(_leaves(new.critic_params), _leaves(learner.critic_params)))
    np.testing.assert_allclose(critic_moved, GLUE.critic_lr, rtol=1e-3)


def test_exploration_correlation_reaches_acting_and_its_noise_is_carried_in_the_state(glue_run):
    """exploration_correlation travels from HParams to the rollout: after the prefill chunk (no update, so the
    policy is the initial one as a function of raw observations) the state's exploration_noise equals the
    standardised last stored action of every env still in its episode; with ρ = 0 and ρ = 0.9 the actions
    differ from the same key."""
    trainer = glue_run[0]
    state0 = jax.jit(trainer.init)(jax.random.PRNGKey(0))
    chunk = jax.jit(trainer.train_chunk)
    nets = train.make_networks(GLUE, envs.make(GLUE.env).action_size)
    actions = {}
    for rho in (0.0, 0.9):
        state1, metrics = jax.device_get(chunk(state0, GLUE.replace(exploration_correlation=rho).hparams))
        assert float(np.sum(metrics["updates"])) == 0.0  # prefill only
        last = int(state1.replay.write_index) - 1
        row = jax.tree.map(lambda x: x[last], state1.replay.data)
        mean, std = nets.policy.apply(state0.learner.policy_params, normalizer.normalize(state0.obs_stats, row.obs))
        running = ~(row.terminated | row.truncated)
        assert running.any()
        np.testing.assert_allclose(state1.exploration_noise[running], ((row.action - mean) / std)[running],
                                   rtol=1e-4, atol=1e-4)
        actions[rho] = state1.replay.data.action
    assert _trees_differ(actions[0.0], actions[0.9])
    # exploration_correlation_from_step: white noise (bit for bit the ρ = 0 run) until that many env steps.
    late = GLUE.replace(exploration_correlation=0.9, exploration_correlation_from_step=1e6).hparams
    np.testing.assert_array_equal(jax.device_get(chunk(state0, late))[0].replay.data.action, actions[0.0])
    at_start = GLUE.replace(exploration_correlation=0.9, exploration_correlation_from_step=0.0).hparams
    np.testing.assert_array_equal(jax.device_get(chunk(state0, at_start))[0].replay.data.action, actions[0.9])


def test_terminal_next_observations_never_reach_the_networks(learner_pieces):
    """Transitions that terminated carry NaN next observations: loss, metrics and gradients stay finite and
    are exactly those with any other values there (terminal next states are masked, not bootstrapped)."""
    learner, batch = learner_pieces["learner"], learner_pieces["batches"][2]
    terminated = np.zeros(batch.terminated.shape, bool)
    terminated[:, 1] = True  # the middle step of every sequence
    terminated[0, -1] = True
    base = batch._replace(terminated=jnp.asarray(terminated),
                          truncated=jnp.asarray(np.asarray(batch.truncated) & ~terminated))
    nan_obs = np.asarray(base.next_obs).copy()
    nan_obs[terminated] = np.nan
    other_obs = np.asarray(base.next_obs).copy()
    other_obs[terminated] = 1e3
    key = jax.random.PRNGKey(4)
    (loss, metrics), grads = learner_pieces["loss_and_grads"](learner, base._replace(next_obs=jnp.asarray(nan_obs)),
                                                              key)
    assert np.isfinite(float(loss))
    for name, value in metrics.items():
        assert np.all(np.isfinite(np.asarray(value))), name
    for leaf in _leaves(grads):
        assert np.all(np.isfinite(leaf))
    (other_loss, _), other_grads = learner_pieces["loss_and_grads"](
        learner, base._replace(next_obs=jnp.asarray(other_obs)), key)
    assert float(other_loss) == float(loss)
    _assert_trees_identical(grads, other_grads)
    # The same NaNs on transitions that did not terminate do reach the loss (the check above is not vacuous).
    (unmasked_loss, _), _ = learner_pieces["loss_and_grads"](
        learner, batch._replace(next_obs=jnp.asarray(nan_obs)), key)
    assert not np.isfinite(float(unmasked_loss))
    new, _ = learner_pieces["step_fn"](period=GLUE.target_update_period)(
        learner, base._replace(next_obs=jnp.asarray(nan_obs)), key)
    for leaf in _leaves(new):
        assert np.all(np.isfinite(leaf))


def _naive_critic_loss(pieces, learner, batch, key, config):
    """The critic loss built the direct way: π'(a_t|s_t) from the target policy at every stored s_t."""
    nets = train.make_networks(config, batch.action.shape[-1])
    target_policy = functools.partial(nets.policy.apply, learner.target_policy_params)
    target_critic = functools.partial(nets.critic.apply, learner.target_critic_params)
    obs = normalizer.normalize(pieces["obs_stats"], batch.obs)
    next_obs = normalizer.normalize(pieces["obs_stats"], jnp.where(batch.terminated[..., None], batch.obs,
                                                                   batch.next_obs))
    mean, std = target_policy(obs)
    next_mean, next_std = target_policy(next_obs)
    actions = mpo.sample_gaussian(key, next_mean, next_std, config.num_action_samples, config.antithetic_samples)
    log_pi = jnp.sum(mpo.gaussian_log_prob(batch.action, mean, std), axis=-1)
    loss, targets = losses.critic_loss(
        nets.critic.apply(learner.critic_params, obs, acting.env_action(batch.action)),
        target_critic(obs, acting.env_action(batch.action)),
        jnp.mean(target_critic(next_obs, acting.env_action(actions)), axis=0),
        batch.reward / pieces["divisor"], config.discount * (1.0 - batch.terminated.astype(jnp.float32)),
        log_pi - batch.behaviour_log_prob, batch.truncated, config.retrace_lambda)
    return float(loss), np.asarray(targets)


def test_the_trace_reads_pi_of_each_next_state_as_the_direct_way_does(learner_pieces):
    """mpo_loss takes π'(a_{t+1}|s_{t+1}) from the target policy at the next states it already evaluates; the
    critic loss and targets equal the direct way's (π' at every stored s_t) on sequences that terminate, hit a
    time limit (a final observation unlike the next row's) or run on, and the trace does read those ratios."""
    learner, batch, key = learner_pieces["learner"], learner_pieces["batches"][1], jax.random.PRNGKey(12)
    terminated, truncated = np.asarray(batch.terminated).copy(), np.asarray(batch.truncated).copy()
    added = np.zeros_like(truncated)
    added[1, 0] = added[2, 1] = True
    terminated[0, 0], terminated[added], truncated[added] = True, False, True
    truncated[0, 0] = False
    next_obs = np.asarray(batch.next_obs).copy()
    next_obs[added] += 0.5  # a true final state: not the next row's observation (a reset's)
    batch = batch._replace(terminated=jnp.asarray(terminated), truncated=jnp.asarray(truncated),
                           next_obs=jnp.asarray(next_obs))
    config = GLUE.replace(retrace_lambda=0.9)
    (_, metrics), _ = learner_pieces["loss_and_grads"](learner, batch, key, hparams=config.hparams, config=config)
    loss, targets = _naive_critic_loss(learner_pieces, learner, batch, key, config)
    np.testing.assert_allclose(float(metrics["critic_loss"]), loss, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["target_mean"]), targets.mean(), rtol=1e-5, atol=1e-6)
    # Not vacuous: other behaviour probabilities inside the sequences change the targets.
    other = batch._replace(behaviour_log_prob=batch.behaviour_log_prob + 3.0)
    assert abs(_naive_critic_loss(learner_pieces, learner, other, key, config)[0] - loss) > 1e-6 * abs(loss)


def _distributional_pieces(pieces, head, batch, key, seeds):
    """For critic_head `head` on [-1, 2] rewards (γ 0.9, 11 atoms): mpo_loss's metrics with spread-out online and
    target critics (`seeds`), and what a direct computation needs: the support in the learner's units, the target
    critic's outputs at the taken and at the sampled next actions, the log-ratios, the online critic's outputs."""
    config = GLUE.replace(critic_head=head, reward_range=(-1.0, 2.0), critic_bins=11, retrace_lambda=0.9,
                          discount=0.9)
    nets = train.make_networks(config, batch.action.shape[-1])
    init = lambda seed: jax.tree.map(  # noqa: E731
        lambda x: x * 3.0, nets.critic.init(jax.random.PRNGKey(seed), jnp.zeros((batch.obs.shape[-1],)),
                                            jnp.zeros((1,))))
    learner = pieces["learner"]._replace(critic_params=init(seeds[0]), target_critic_params=init(seeds[1]))
    (_, metrics), _ = pieces["loss_and_grads"](learner, batch, key, hparams=config.hparams, config=config)
    divisor = float(pieces["divisor"])
    obs = normalizer.normalize(pieces["obs_stats"], batch.obs)
    next_obs = normalizer.normalize(pieces["obs_stats"], jnp.where(batch.terminated[..., None], batch.obs,
                                                                   batch.next_obs))
    target_policy = functools.partial(nets.policy.apply, learner.target_policy_params)
    target_critic = functools.partial(nets.critic.apply, learner.target_critic_params)
    mean, std = target_policy(obs)
    actions = mpo.sample_gaussian(key, *target_policy(next_obs), config.num_action_samples)
    return dict(
        metrics=jax.device_get(metrics), config=config, divisor=divisor,
        # ((−1, 2) / (1 − γ)) / divisor, 0 inside; HL-Gauss's reaches 3 bins (4σ) beyond: 3 units per 4 bins.
        support=(np.linspace(-1.0, 2.0, 11) if head == "categorical" else np.linspace(-3.25, 4.25, 11)) / (
            divisor * 0.1),
        taken=target_critic(obs, acting.env_action(batch.action)),
        sampled=target_critic(next_obs, acting.env_action(actions)),
        log_rhos=jnp.sum(mpo.gaussian_log_prob(batch.action, mean, std), -1) - batch.behaviour_log_prob,
        discounts=config.discount * (1.0 - batch.terminated.astype(jnp.float32)),
        online=np.asarray(nets.critic.apply(learner.critic_params, obs, acting.env_action(batch.action)), np.float64),
    )


def _log_softmax(z):
    z = np.asarray(z, np.float64) - np.max(z, -1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_an_hl_gauss_critic_regresses_on_histograms_of_retrace_targets_of_its_expected_values(learner_pieces):
    """critic_head hl_gauss: the support spans every return of rewards in reward_range in the learner's units
    (divided by the reward divisor), Retrace and the E-step read the target critic's expectations, and the loss is
    the cross-entropy to the targets' histograms: each metric equals a direct numpy computation."""
    batch = learner_pieces["batches"][2]
    p = _distributional_pieces(learner_pieces, "hl_gauss", batch, jax.random.PRNGKey(13), (1, 2))
    metrics, support = p["metrics"], p["support"]
    expect = lambda logits: (np.exp(_log_softmax(logits)) * support).sum(-1)  # noqa: E731
    _, targets = losses.critic_loss(
        jnp.zeros(batch.reward.shape), jnp.asarray(expect(p["taken"]), jnp.float32),
        jnp.asarray(expect(p["sampled"]).mean(0), jnp.float32), batch.reward / p["divisor"], p["discounts"],
        p["log_rhos"], batch.truncated, 0.9)
    targets = np.asarray(targets, np.float64)
    probs = np.asarray(distributional.hl_gauss_probs(jnp.asarray(targets, jnp.float32),
                                                     jnp.asarray(support, jnp.float32), 0.75), np.float64)
    log_softmax = _log_softmax(p["online"])
    np.testing.assert_allclose(float(metrics["critic_loss"]), -(probs * log_softmax).sum(-1).mean(), rtol=1e-4)
    np.testing.assert_allclose(float(metrics["target_mean"]), targets.mean(), rtol=1e-4)
    np.testing.assert_allclose(float(metrics["q_mean"]), expect(p["online"]).mean(), rtol=1e-4)
    np.testing.assert_allclose(float(metrics["support_max"]), support[-1], rtol=1e-5)
    np.testing.assert_allclose(float(metrics["targets_clipped"]),
                               np.mean((targets < support[0]) | (targets > support[-1])))
    np.testing.assert_allclose(float(metrics["critic_entropy"]), -(np.exp(log_softmax) * log_softmax).sum(-1).mean(),
                               rtol=1e-4)
    assert 0.5 < float(metrics["critic_entropy"]) < np.log(11) - 0.1  # neither uniform nor one atom


def test_a_categorical_critic_regresses_on_distributional_retrace_targets_of_the_target_pmfs(learner_pieces):
    """critic_head categorical: the targets are `categorical_retrace_targets` of the target critic's pmf at the
    taken actions and of the sampled actions' mean pmf at the next states, on the support of reward_range; the
    loss is the cross-entropy to them (negative masses clipped), the E-step reads the pmfs' means."""
    batch = learner_pieces["batches"][2]
    p = _distributional_pieces(learner_pieces, "categorical", batch, jax.random.PRNGKey(14), (3, 4))
    metrics, support = p["metrics"], p["support"]
    p_taken = jax.nn.softmax(p["taken"], -1)
    p_next = jnp.mean(jax.nn.softmax(p["sampled"], -1), axis=0)
    masses = np.stack([np.asarray(distributional.categorical_retrace_targets(
        p_taken[b], p_next[b], batch.reward[b] / p["divisor"], p["discounts"][b], p["log_rhos"][b],
        batch.truncated[b], 0.9, jnp.asarray(support, jnp.float32))) for b in range(batch.reward.shape[0])])
    kept = np.maximum(masses, 0.0)
    kept /= kept.sum(-1, keepdims=True)
    log_softmax = _log_softmax(p["online"])
    np.testing.assert_allclose(float(metrics["critic_loss"]), -(kept * log_softmax).sum(-1).mean(), rtol=1e-4)
    np.testing.assert_allclose(float(metrics["target_mean"]), (masses @ support).mean(), rtol=1e-4)
    np.testing.assert_allclose(float(metrics["q_mean"]), (np.exp(log_softmax) @ support).mean(), rtol=1e-4)


def _outputs(params_source, obs_stats, obs, actions):
    """Policy (mean, std) and critic values of every network of a learner for raw observations."""
    action_dim = actions.shape[-1]
    nets = train.make_networks(GLUE, action_dim)
    z = normalizer.normalize(obs_stats, obs)
    learner = params_source
    return dict(
        policy=nets.policy.apply(learner.policy_params, z),
        target_policy=nets.policy.apply(learner.target_policy_params, z),
        critic=nets.critic.apply(learner.critic_params, z, actions),
        target_critic=nets.critic.apply(learner.target_critic_params, z, actions),
    )


def _scaled_mean_head(learner):
    """The learner with a mean head of unit-scale weights (the initial one outputs ≈ 0 for every input)."""
    def scale(params):
        head = params["params"]["Dense_0"]
        kernel = jax.random.normal(jax.random.PRNGKey(9), head["kernel"].shape)
        return {**params, "params": {**params["params"], "Dense_0": {**head, "kernel": kernel}}}

    return learner._replace(policy_params=scale(learner.policy_params),
                            target_policy_params=scale(learner.target_policy_params))


@pytest.mark.parametrize("preserve", [True, False])
def test_observation_statistics_updates_preserve_every_networks_outputs(glue_run, preserve):
    """One chunk of two prefill iterations moves the observation statistics (no SGD update yet). With
    obs_norm_preserves_outputs the policy (mean and std), the critic and both targets compute the same function
    of the raw observation with the new statistics and parameters as with the old ones; without it they do not."""
    config = GLUE.replace(obs_norm_preserves_outputs=preserve)
    _, glue_chunk, glue_states, _ = glue_run
    state = glue_states[0]
    state = state._replace(learner=_scaled_mean_head(state.learner))
    # GLUE itself preserves outputs (the default): reuse its compiled chunk.
    chunk = glue_chunk if preserve else jax.jit(make_trainer(config).train_chunk)
    assert GLUE.obs_norm_preserves_outputs
    new_state, metrics = jax.device_get(chunk(state))
    assert np.all(metrics["updates"] == 0)  # prefill only: parameters change by re-parametrisation alone
    assert not np.array_equal(new_state.obs_stats.mean, state.obs_stats.mean)

    obs = new_state.replay.data.obs[: config.unroll_length].reshape(-1, new_state.obs_stats.mean.shape[0])
    actions = new_state.replay.data.action[: config.unroll_length].reshape(obs.shape[0], -1)
    z_new = np.asarray(normalizer.normalize(new_state.obs_stats, obs))
    assert np.abs(z_new).max() < 10.0  # no clipping, where the re-parametrisation is exact
    before = _outputs(state.learner, state.obs_stats, obs, actions)
    after = _outputs(new_state.learner, new_state.obs_stats, obs, actions)
    assert np.abs(np.asarray(before["policy"][0])).max() > 0.1  # the mean action is not trivially 0
    for name in before:
        for b, a in zip(jax.tree.leaves(before[name]), jax.tree.leaves(after[name])):
            if preserve:
                np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5, err_msg=name)
            else:
                assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-3, name
    if not preserve:  # without re-parametrisation the prefill leaves the parameters exactly as they were
        _assert_trees_identical(new_state.learner.policy_params, state.learner.policy_params)


def test_each_dual_gradient_is_clipped_on_its_own():
    """A multiplier's gradient α·(ε − KL) grows with α. Two dual steps, the second with α_σ's gradient at 1e7:
    η's steps equal Adam's on η's own gradients alone, and α_σ's equal Adam's on its gradient clipped to
    ±max_grad_norm. A global-norm clip over all duals (the networks' optimiser) would shrink η's second step."""
    import optax

    duals = mpo.init_dual_params(2, True, 1.0, 10.0, 1000.0)
    grads = [jax.tree.map(jnp.ones_like, duals), jax.tree.map(jnp.ones_like, duals)._replace(
        alpha_std=jnp.full((2,), 1e7), temperature=jnp.asarray(-0.5))]

    def run(optimizer):
        params, state = duals, optimizer.init(duals)
        for g in grads:
            params, state = train.apply_updates(optimizer, g, state, params, 0.01)
        return params

    def alone(values):  # Adam on one parameter's gradient sequence, from scratch
        adam, p = optax.scale_by_adam(), jnp.zeros(())
        state = adam.init(p)
        for v in values:
            update, state = adam.update(jnp.asarray(v, jnp.float32), state, p)
            p = p - 0.01 * update
        return float(p)

    moved = jax.tree.map(lambda a, b: np.asarray(a - b), run(train.make_optimizers(GLUE).duals), duals)
    np.testing.assert_allclose(moved.temperature, alone([1.0, -0.5]), rtol=1e-5)
    np.testing.assert_allclose(moved.alpha_std, alone([1.0, GLUE.max_grad_norm]), rtol=1e-5)
    globally = jax.tree.map(lambda a, b: np.asarray(a - b), run(train.make_optimizer(GLUE)), duals)
    assert abs(float(globally.temperature) - alone([1.0, -0.5])) > 1e-3


def test_learner_step_reports_the_duals_gradient_norm(learner_pieces):
    """`dual_grad_norm` is the global norm of the duals' gradient (before clipping), as `jax.grad` of the loss."""
    learner, batch = learner_pieces["learner"], learner_pieces["batches"][0]
    key = jax.random.PRNGKey(4)
    _, metrics = learner_pieces["step_fn"](period=1000)(learner, batch, key)
    (_, _), (_, _, dual_grads) = learner_pieces["loss_and_grads"](learner, batch, key)
    norm = np.sqrt(sum(np.sum(np.square(np.asarray(g, np.float64))) for g in jax.tree.leaves(dual_grads)))
    assert norm > 0
    np.testing.assert_allclose(float(metrics["dual_grad_norm"]), norm, rtol=1e-5)


def test_iteration_counter_and_env_steps(glue_run):
    """state.iteration counts iterations (int32); env steps are iteration · steps_per_iteration (float32)."""
    _, _, states, metrics = glue_run
    per_eval = GLUE.iterations_per_eval
    assert per_eval == 2 and GLUE.steps_per_iteration == 8
    for chunk, (state, chunk_metrics) in enumerate(zip(states[1:], metrics), start=1):
        assert state.iteration.dtype == np.int32 and int(state.iteration) == chunk * per_eval
        assert chunk_metrics["eval_iteration"].dtype == np.int32
        assert int(chunk_metrics["eval_iteration"]) == chunk * per_eval
        assert chunk_metrics["eval_env_steps"].dtype == np.float32
        assert float(chunk_metrics["eval_env_steps"]) == chunk * per_eval * GLUE.steps_per_iteration
        # Per iteration: the env steps taken once that iteration's unroll is collected.
        assert chunk_metrics["env_steps"].dtype == np.float32
        np.testing.assert_array_equal(chunk_metrics["env_steps"],
                                      ((chunk - 1) * per_eval + np.arange(1, per_eval + 1)) * GLUE.steps_per_iteration)
    assert int(states[0].iteration) == 0


def test_evaluate_state_metrics_summarise_its_episodes(glue_run):
    """eval_* metrics are the statistics of eval_episodes: the first half deterministic, the second sampled.
    inverted_pendulum pays 1 per step alive, so each return equals its episode's length."""
    _, _, _, metrics = glue_run
    for m in metrics:
        episodes = m["eval_episodes"]
        num = GLUE.eval_episodes
        assert episodes.returns.shape == episodes.lengths.shape == (2 * num,)
        np.testing.assert_array_equal(episodes.returns, episodes.lengths.astype(np.float32))
        assert np.all((episodes.lengths >= 1) & (episodes.lengths <= GLUE.episode_length))
        det, sampled = np.asarray(episodes.returns[:num], np.float64), np.asarray(episodes.returns[num:], np.float64)
        np.testing.assert_allclose(m["eval_return"], det.mean(), rtol=1e-6)
        np.testing.assert_allclose(m["eval_return_std"], det.std(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(m["eval_return_min"], det.min(), rtol=1e-6)
        np.testing.assert_allclose(m["eval_stochastic_return"], sampled.mean(), rtol=1e-6)
        np.testing.assert_allclose(m["eval_stochastic_return_std"], sampled.std(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(m["eval_episode_length"], episodes.lengths[:num].mean(), rtol=1e-6)
        for name in ("kl_mean_max", "kl_std_max", "alpha_mean_min"):
            assert m[name].shape == (GLUE.iterations_per_eval,), name


def test_evaluation_does_not_depend_on_the_training_reset_pool(glue_run):
    """evaluate_state starts its episodes from fresh env.reset draws: replacing the training reset pool by
    other states changes none of its numbers."""
    trainer, _, states, _ = glue_run
    state = states[-1]
    evaluate_state = jax.jit(trainer.evaluate_state)
    _, expected = jax.device_get(evaluate_state(state))
    pool = state.env_state.reset_pool
    shifted = jax.tree.map(lambda x: x[::-1] + 0.05 if np.issubdtype(np.asarray(x).dtype, np.floating) else x, pool)
    _, got = jax.device_get(evaluate_state(state._replace(env_state=state.env_state._replace(reset_pool=shifted))))
    _assert_trees_identical(got, expected)


def test_trainer_evaluate_deterministic_and_sampled_episodes(glue_run):
    """Trainer.evaluate with stochastic=False follows the mean action: a naive loop over the raw env from the
    same env.reset draws gives its returns, lengths and final observations. A per-episode mask samples only
    where it is set, leaving the other episodes identical to the deterministic ones."""
    trainer, _, states, _ = glue_run
    state = states[-1]
    env = envs.make(GLUE.env)
    nets = train.make_networks(GLUE, env.action_size)
    key = jax.random.PRNGKey(6)
    params, obs_stats = state.learner.policy_params, state.obs_stats
    det = jax.device_get(jax.jit(lambda p, s, k: trainer.evaluate(p, s, k, num_episodes=3))(params, obs_stats, key))
    mixed = jax.device_get(jax.jit(trainer.evaluate, static_argnums=(4,))(
        params, obs_stats, key, jnp.array([False, True, True]), 3))
    assert isinstance(det, envs.Episodes) and det.returns.shape == (3,)

    reset, step = jax.jit(env.reset), jax.jit(env.step)
    mean_fn = jax.jit(lambda x: nets.policy.apply(params, normalizer.normalize(obs_stats, x))[0])
    start_key, _ = jax.random.split(key)
    for i, episode_key in enumerate(jax.random.split(start_key, 3)):
        sim_state, total, length = reset(episode_key), 0.0, 0
        for _ in range(GLUE.episode_length):
            sim_state = step(sim_state, np.clip(np.asarray(mean_fn(sim_state.obs)), -1.0, 1.0))
            total, length = total + float(sim_state.reward), length + 1
            if float(sim_state.done) > 0.5:
                break
        np.testing.assert_allclose(det.returns[i], total, rtol=1e-6)
        assert det.lengths[i] == length
        np.testing.assert_allclose(det.final_obs[i], np.asarray(sim_state.obs), rtol=1e-5, atol=1e-5)
    # The same episode in another program: equal up to the rounding of its own compilation.
    assert mixed.lengths[0] == det.lengths[0]
    for field in ("returns", "final_obs"):
        np.testing.assert_allclose(getattr(mixed, field)[0], getattr(det, field)[0], rtol=1e-6, atol=1e-7,
                                   err_msg=field)
    assert not np.array_equal(mixed.final_obs[1:], det.final_obs[1:])


def test_a_run_on_an_env_whose_state_turns_nan_stays_finite_and_counts_the_steps(monkeypatch):
    """inverted_pendulum without its own terminations, whose state turns NaN at the 7th step of every episode:
    the episode ends there (reward 0), the env restarts, nothing non-finite reaches replay, statistics or
    learner, evaluation episodes last 7 steps (6 rewards of 1), and `nonfinite_steps` counts, per iteration, the
    envs whose global step number is a multiple of 7 (the one kind of episode end)."""
    from test_envs import NanAtStep

    make = envs.make
    monkeypatch.setattr(train.envs, "make", lambda *args: NanAtStep(make(*args), at=7, never_done=True))
    # Envs in lockstep (the count below assumes every env restarts on the same steps).
    state, metrics = jax.device_get(jax.jit(make_train(GLUE.replace(stagger_starts=False)))(jax.random.PRNGKey(0)))
    steps = np.arange(GLUE.num_iterations)[:, None] * GLUE.unroll_length + np.arange(1, GLUE.unroll_length + 1)
    expected = GLUE.num_envs * np.sum(steps % 7 == 0, axis=1).reshape(GLUE.num_evals, -1)
    assert expected.sum() == GLUE.num_envs * 2  # 20 steps per env: NaN at the 7th and 14th
    np.testing.assert_array_equal(metrics["nonfinite_steps"], expected)
    np.testing.assert_array_equal(metrics["episodes_finished"], expected)
    np.testing.assert_array_equal(metrics["episode_return_sum"], 6.0 * expected)
    np.testing.assert_array_equal(metrics["eval_episode_length"], 7.0)
    np.testing.assert_array_equal(metrics["eval_return"], 6.0)
    for leaf in jax.tree.leaves((state.replay, state.obs_stats, state.reward_stats, state.learner)):
        assert np.all(np.isfinite(np.asarray(leaf, np.float64))) if np.issubdtype(leaf.dtype, np.floating) else True
    assert np.sum(state.replay.data.terminated) == GLUE.num_envs * 2
    learned = metrics["updates"] > 0
    assert learned.any() and np.all(np.isfinite(metrics["critic_loss"][learned]))
