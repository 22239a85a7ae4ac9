"""Categorical MPO inside the trainer: the wiring of `train.categorical_mpo_loss`, acting and evaluation on gymnax
envs, the networks' checks, exact checkpoint round trips, and an end-to-end run that learns CartPole-v1."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import FULL_OPTIMISATION
from purempo import Config, checkpoint, envs, make_train, make_trainer, normalizer, replay, train
from purempo.presets import preset

TINY = Config(
    env="CartPole-v1",
    episode_length=40,
    total_steps=1_536,
    num_envs=8,
    unroll_length=4,
    updates_per_iteration=2,
    prefill_steps=64,
    num_evals=2,
    eval_episodes=2,
    replay_size=1_024,
    reset_pool_size=16,
    batch_size=8,
    sequence_length=4,
    policy_hidden=(16, 16),
    critic_hidden=(16, 16),
    min_action_prob=0.05,
)
KEYS = jax.random.split(jax.random.PRNGKey(0), 2)


@pytest.fixture(scope="module")
def pieces():
    trainer = make_trainer(TINY)
    init = jax.jit(jax.vmap(trainer.init))
    chunk = jax.jit(jax.vmap(functools.partial(train.run_chunk, trainer)))
    state, metrics = chunk(init(KEYS))
    return dict(trainer=trainer, chunk=chunk, abstract=jax.eval_shape(jax.vmap(trainer.init), KEYS),
                state=jax.device_get(state), metrics=jax.device_get(metrics))


def test_a_discrete_run_has_finite_categorical_metrics_and_stores_int_actions(pieces):
    metrics, state = pieces["metrics"], pieces["state"]
    learned = metrics["updates"] > 0
    assert learned.any() and not learned.all()  # the prefill iterations do not learn
    for name in ("critic_loss", "policy_loss", "temperature", "alpha_policy", "kl_policy", "kl_policy_max",
                 "e_step_kl", "e_step_kl_max", "policy_entropy", "q_mean"):
        assert np.all(np.isfinite(metrics[name][learned])), name
        assert np.all(np.isnan(metrics[name][~learned])), name
    # A near-uniform start over CartPole's 2 actions: entropy close to log 2, and never above it.
    assert np.all(metrics["policy_entropy"][learned] <= np.log(2) + 1e-6)
    stored = state.replay.data
    rows = int(state.replay.size[0])
    assert stored.action.dtype == np.int32 and set(np.unique(stored.action[:, :rows])) <= {0, 1}
    # The stored behaviour probabilities are those of a floored two-action policy: within [floor, 1 − floor].
    probs = np.exp(stored.behaviour_log_prob[:, :rows])
    assert np.all(probs >= TINY.min_action_prob - 1e-6) and np.all(probs <= 1 - TINY.min_action_prob + 1e-6)
    assert state.exploration_noise is None  # no Gaussian noise state for a categorical policy
    assert state.learner.dual_params.alpha_std.shape[-1] == 0


def _naive_loss(trainer_nets, learner, obs_stats, divisor, batch, config):
    """Critic loss, its targets' mean and the trust region's KL, computed the direct way: loops over actions for
    V(s') = Σ_a π'(a|s') Q'(s', a), π'(a_t|s_t) from the target policy at each stored s_t, and Retrace written
    out backwards per sequence."""
    nets = trainer_nets
    floor = config.min_action_prob
    policy = lambda params, x: np.asarray(jax.nn.softmax(nets.policy.apply(params, x))) * (1 - 2 * floor) + floor  # noqa
    obs = np.asarray(normalizer.normalize(obs_stats, batch.obs))
    next_raw = np.where(np.asarray(batch.terminated)[..., None], batch.obs, batch.next_obs)
    next_obs = np.asarray(normalizer.normalize(obs_stats, next_raw))
    pi_next = policy(learner.target_policy_params, next_obs)  # [B, L, K]
    pi_now = policy(learner.target_policy_params, obs)
    def target(x):  # an ensemble's members `[M, ...]`: their mean − β·(population) std
        q = np.asarray(nets.critic.apply(learner.target_critic_params, x))
        return q if config.num_critics == 1 else q.mean(0) - config.critic_pessimism * q.std(0)

    q_next, q_now_target = target(next_obs), target(obs)
    q_online = np.asarray(nets.critic.apply(learner.critic_params, obs))
    members = [q_online] if config.num_critics == 1 else list(q_online)
    actions = np.asarray(batch.action)
    num_b, num_l, num_k = q_next.shape
    losses, targets = [], []
    for b in range(num_b):
        v = [sum(pi_next[b, t, a] * q_next[b, t, a] for a in range(num_k)) for t in range(num_l)]
        c = [config.retrace_lambda * min(1.0, pi_now[b, t, actions[b, t]] / np.exp(batch.behaviour_log_prob[b, t]))
             for t in range(num_l)]
        g = [0.0] * num_l
        for t in reversed(range(num_l)):
            if batch.terminated[b, t]:
                g[t] = float(batch.reward[b, t]) / divisor
                continue
            bootstrap = v[t]
            if t + 1 < num_l and not batch.truncated[b, t]:
                bootstrap += c[t + 1] * (g[t + 1] - q_now_target[b, t + 1, actions[b, t + 1]])
            g[t] = float(batch.reward[b, t]) / divisor + config.discount * bootstrap
        for t in range(num_l):
            losses.append(sum(0.5 * (q[b, t, actions[b, t]] - g[t]) ** 2 for q in members))  # members' losses summed
            targets.append(g[t])
    pi_online = policy(learner.policy_params, next_obs)
    live = ~np.asarray(batch.terminated)
    kl = np.sum(pi_next * (np.log(pi_next) - np.log(pi_online)), axis=-1)
    return float(np.mean(losses)), float(np.mean(targets)), float(kl[live].mean())


@pytest.mark.parametrize("ensemble", [False, True])
def test_categorical_loss_matches_the_direct_computation(pieces, ensemble):
    """categorical_mpo_loss's critic loss, target mean and KL(π'‖π) on a replay batch equal the direct way's,
    with online and target networks that differ (the run's learner against a fresh init) and with episodes
    ending inside the sequences (terminated and truncated rows are forced in); also for an ensemble of 3 critics
    with pessimism 0.7 (each member's Q(s, ·) `[M, B, L, K]`)."""
    trainer, state = pieces["trainer"], jax.tree.map(lambda x: x[0], pieces["state"])
    config = TINY.replace(num_critics=3, critic_pessimism=0.7) if ensemble else TINY
    nets = train.env_networks(config, envs.make(TINY.env))
    fresh = trainer.init(jax.random.PRNGKey(7)).learner
    learner = state.learner._replace(target_policy_params=fresh.policy_params,
                                     target_critic_params=fresh.critic_params)
    if ensemble:
        critic = lambda seed: nets.critic.init(jax.random.PRNGKey(seed), jnp.zeros((4,)))  # noqa: E731
        learner = learner._replace(critic_params=critic(8), target_critic_params=critic(9))
    batch = replay.sample(state.replay, jax.random.PRNGKey(3), 6, 4)
    terminated, truncated = np.asarray(batch.terminated).copy(), np.asarray(batch.truncated).copy()
    terminated[0, 1], truncated[1, 2], terminated[1, 2] = True, True, False
    batch = batch._replace(terminated=jnp.asarray(terminated), truncated=jnp.asarray(truncated))
    divisor = normalizer.reward_divisor(state.reward_stats)
    params = (learner.policy_params, learner.critic_params, learner.dual_params)
    _, metrics = train.categorical_mpo_loss(params, learner, state.obs_stats, divisor, batch, None, config.hparams,
                                            config, nets)
    loss, target_mean, kl = _naive_loss(nets, learner, state.obs_stats, float(divisor), batch, config)
    np.testing.assert_allclose(float(metrics["critic_loss"]), loss, rtol=2e-5)
    np.testing.assert_allclose(float(metrics["target_mean"]), target_mean, rtol=2e-5)
    np.testing.assert_allclose(float(metrics["kl_policy"]), kl, rtol=2e-4, atol=1e-7)
    assert kl > 1e-6  # not vacuous: the online and target policies differ


def test_evaluation_takes_the_mode_or_samples_the_floored_policy():
    nets = train.env_networks(TINY, envs.make(TINY.env))
    params = nets.policy.init(jax.random.PRNGKey(0), jnp.zeros((4,)))
    params = jax.tree.map(lambda x: x * 400.0, params)  # sharp preferences
    obs = jax.random.normal(jax.random.PRNGKey(1), (5, 4))
    logits = np.asarray(nets.policy.apply(params, obs))
    greedy = train.evaluation_action(nets, params, obs, jax.random.PRNGKey(2), jnp.zeros(5, bool), 0.2)
    np.testing.assert_array_equal(np.asarray(greedy), logits.argmax(-1))
    draws = jax.vmap(lambda k: train.evaluation_action(nets, params, obs, k, jnp.ones(5, bool), 0.2))(
        jax.random.split(jax.random.PRNGKey(3), 4000))
    expected = np.asarray(jax.nn.softmax(logits)) * 0.6 + 0.2  # (1 − K·floor)·softmax + floor, K = 2
    frequency = np.stack([np.mean(np.asarray(draws) == a, axis=0) for a in range(2)], -1)
    np.testing.assert_allclose(frequency, expected, atol=0.03)


@pytest.mark.parametrize("changes, message", [
    (dict(observation_torso="conv", observation_normalization=False), "needs image observations"),
    (dict(critic_head="hl_gauss", reward_range=(0.0, 1.0)), "discrete-action env"),
    (dict(env="Breakout-MinAtar", min_action_prob=0.34), "must be < 1/K = 0.3333 for Breakout-MinAtar's K = 3"),
    (dict(critic_residual_blocks=2, critic_hidden=(16,)), "its critic is the layer-norm MLP"),
])
def test_impossible_discrete_settings_are_one_line_errors(changes, message):
    config = TINY.replace(**changes)
    with pytest.raises(ValueError, match=message) as error:
        train.env_networks(config, envs.make(config.env))
    assert "\n" not in str(error.value)


def test_a_conv_torso_is_for_image_observations_only():
    with pytest.raises(ValueError, match="needs image observations"):
        make_trainer(Config(observation_torso="conv", observation_normalization=False))


def test_minatar_conv_and_flatten_torsos_read_the_image():
    """Both torsos train on Breakout-MinAtar's [10, 10, 4] images; the conv torso's kernel is 3×3 over 4 channels."""
    config = TINY.replace(env="Breakout-MinAtar", observation_normalization=False, min_action_prob=0.0)
    for torso in ("flatten", "conv"):
        trainer = make_trainer(config.replace(observation_torso=torso))
        state = trainer.init(jax.random.PRNGKey(0))
        params = state.learner.policy_params["params"]
        if torso == "conv":
            assert params["ImageTorso_0"]["Conv_0"]["kernel"].shape == (3, 3, 4, 16)
        else:
            assert "ImageTorso_0" not in params and params["LayerNormMLP_0"]["Dense_0"]["kernel"].shape[0] == 400


def test_checkpoint_round_trip_of_a_discrete_run_is_exact(tmp_path, pieces):
    saver = checkpoint.Saver(tmp_path, keep=1, with_replay=True)
    saver.save(1, pieces["state"], {})
    restored = checkpoint.restore(tmp_path, pieces["abstract"])
    for x, y in zip(jax.tree.leaves(restored.state), jax.tree.leaves(pieces["state"])):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    expected = jax.device_get(pieces["chunk"](pieces["state"]))
    continued = jax.device_get(pieces["chunk"](restored.state))
    for x, y in zip(jax.tree.leaves(continued), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_the_cartpole_preset_reaches_500_within_150k_steps_on_every_seed():
    """The CartPole-v1 preset, two seeds in one vmapped program, cut to 150k env steps: every seed's mean-action
    evaluation reaches 500 (the time limit) by then; the initial policy does not."""
    config = preset("CartPole-v1", total_steps=153_600, num_evals=10)
    _, metrics = jax.device_get(jax.jit(jax.vmap(make_train(config)), compiler_options=FULL_OPTIMISATION)(KEYS))
    for seed_returns in metrics["eval_return"]:
        curve = np.round(seed_returns, 1).tolist()
        assert np.any(seed_returns >= 500.0), f"never reached 500: {curve}"
    assert np.all(np.isfinite(metrics["critic_loss"][metrics["updates"] > 0]))


@pytest.mark.parametrize("env, swept", [("CartPole-v1", "epsilon_mean=0.01,0.02"),
                                        ("inverted_pendulum", "epsilon_policy=0.01,0.02")])
def test_a_sweep_of_a_setting_the_env_does_not_read_is_refused(env, swept, tmp_path):
    from purempo import driver

    with pytest.raises(driver.RunError, match="whose learner does not read it"):
        driver.sweep_members(Config(env=env), tmp_path, [swept])
    assert len(driver.sweep_members(Config(env="CartPole-v1"), tmp_path, ["epsilon_policy=0.01,0.02"])) == 2


def test_a_vmapped_sweep_of_the_trust_region_reaches_the_categorical_loss():
    """epsilon_policy swept in one program (as `--sweep` does): the tighter bound's run moves its policy less per
    update, and each member equals its own run compiled alone in its evaluations' lengths and returns."""
    hp = TINY.hparams
    sweep = hp._replace(epsilon_policy=jnp.array([1e-1, 1e-4]))
    axes = type(hp)(*[0 if f == "epsilon_policy" else None for f in hp._fields])
    train_fn = make_train(TINY.replace(num_evals=2))
    _, metrics = jax.device_get(jax.jit(jax.vmap(train_fn, in_axes=(None, axes)))(KEYS[0], sweep))
    learned = metrics["updates"][0] > 0
    loose, tight = (np.nanmean(metrics["kl_policy"][i][learned]) for i in range(2))
    assert tight < 0.5 * loose
    alone = jax.device_get(jax.jit(train_fn)(KEYS[0], hp._replace(epsilon_policy=1e-4)))[1]
    np.testing.assert_allclose(alone["kl_policy"][learned], metrics["kl_policy"][1][learned], rtol=1e-3, atol=1e-7)
