"""The MPO trainer: `make_train(config)` returns a pure `train(key, hparams=None)`.

One iteration = an unroll of `unroll_length` lockstep steps of `num_envs` envs, written to replay, then
`updates_per_iteration` SGD updates on sampled sequences. Iterations are grouped into `num_evals` chunks,
each followed by an evaluation (mean-action and sampled-action episodes from fresh resets). `train` is a
`lax.scan` over chunks; a driver that reports and checkpoints between chunks runs the two pieces of one,
`Trainer.train_chunk` and `Trainer.evaluate_state`, itself (`purempo.driver`: the same computation; compiled as
separate programs, it may round differently from the fused scan in the last bits)."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import chex
import jax
import jax.numpy as jnp
import optax

from purempo import acting, discrete, distributional, envs, losses, mpo, networks, normalizer, replay, sharding
from purempo.config import Config, HParams
from purempo.networks import CategoricalPolicy, Critic, DiscreteCritic, GaussianPolicy
from purempo.retrace import batched_retrace_targets
from purempo.types import Transition


class Networks(NamedTuple):
    policy: GaussianPolicy | CategoricalPolicy
    critic: Critic | DiscreteCritic

    @property
    def discrete(self) -> bool:
        """Whether the actions are discrete: a categorical policy and a critic of every action's value."""
        return isinstance(self.policy, CategoricalPolicy)


class LearnerState(NamedTuple):
    policy_params: Any
    critic_params: Any
    target_policy_params: Any
    target_critic_params: Any
    dual_params: mpo.DualParams
    policy_opt_state: Any
    critic_opt_state: Any
    dual_opt_state: Any
    num_updates: chex.Array  # int32 []


class TrainState(NamedTuple):
    learner: LearnerState
    obs_stats: normalizer.RunningStats
    reward_stats: normalizer.RewardScale  # frozen once learning starts
    replay: replay.ReplayState
    env_state: envs.EnvState
    exploration_noise: Optional[chex.Array]  # [E, A]: the last acting step's noise (acting.correlated_noise); None
    #                                          for a categorical policy, which samples its actions afresh
    key: chex.PRNGKey
    iteration: chex.Array  # int32 []: iterations done; env steps = iteration · steps_per_iteration


def env_networks(config: Config, env) -> Networks:
    """`make_networks` for `env` (from `envs.make`): its action space, views and observation shape."""
    return make_networks(config, env.action_size, envs.views(env), envs.num_actions(env) is not None,
                         envs.observation_shape(env))


def make_networks(config: Config, action_dim: int, views: envs.Views = envs.Views(), discrete_actions: bool = False,
                  observation_shape: Optional[tuple] = None) -> Networks:
    """The policy and critic of `config`, each reading its part of the observation (`envs.views(env)`).

    `discrete_actions`: `action_dim` is the number K of actions, the policy categorical (`CategoricalPolicy`) and the
    critic gives Q(s, ·) for all of them (`DiscreteCritic`, scalar head only). With `config.observation_torso` conv,
    both read the flat observation as images of `observation_shape` `[H, W, C]`."""
    image = None
    if config.observation_torso == "conv":
        if observation_shape is None or len(observation_shape) != 3:
            raise ValueError(f"invalid observation_torso='conv' for {config.env}: it needs image observations "
                             f"[H, W, C] (MinAtar's), this env's are {list(observation_shape or ())}; use flatten")
        image = tuple(observation_shape)
    if discrete_actions:
        if config.min_action_prob * action_dim >= 1.0:
            raise ValueError(f"invalid min_action_prob={config.min_action_prob}: must be < 1/K = {1 / action_dim:.4g} "
                             f"for {config.env}'s K = {action_dim} actions")
        if config.critic_head != "scalar":
            raise ValueError(f"invalid critic_head={config.critic_head!r} for {config.env}, a discrete-action env: "
                             f"its critic gives every action's scalar value (scalar)")
        if config.critic_residual_blocks:
            raise ValueError(f"invalid critic_residual_blocks={config.critic_residual_blocks} for {config.env}, a "
                             f"discrete-action env: its critic is the layer-norm MLP (0)")
        return Networks(
            policy=CategoricalPolicy(config.policy_hidden, action_dim, view=views.policy, image_shape=image),
            critic=DiscreteCritic(config.critic_hidden, action_dim, config.num_critics, view=views.critic,
                                  norm_all_layers=config.critic_norm_all, image_shape=image))
    return Networks(
        policy=GaussianPolicy(config.policy_hidden, action_dim, config.min_std, config.init_std, view=views.policy),
        critic=Critic(config.critic_hidden, config.num_critics, view=views.critic,
                      norm_all_layers=config.critic_norm_all, residual_blocks=config.critic_residual_blocks,
                      **({} if config.critic_head == "scalar" else dict(
                          num_bins=config.critic_bins, initial_logits=tuple(map(float, distributional.initial_logits(
                              config.reward_range, config.critic_bins, config.hl_gauss_sigma,
                              support_margin(config))))))),
    )


def support_margin(config: Config) -> float:
    """Bins of a distributional critic's support beyond the value bounds, from the config's σ (not a swept one), so
    the atoms `mpo_loss` reads are those the initial logits were built on."""
    return distributional.margin_bins(config.critic_head, config.hl_gauss_sigma)


def make_optimizer(config: Config) -> optax.GradientTransformation:
    """Clipping + Adam scaling; the (vmappable) learning rate is applied by `apply_updates`."""
    return optax.chain(optax.clip_by_global_norm(config.max_grad_norm), optax.scale_by_adam())


class Optimizers(NamedTuple):
    networks: optax.GradientTransformation  # policy and critic, each clipped by its own global norm
    duals: optax.GradientTransformation


def make_optimizers(config: Config) -> Optimizers:
    """The networks' `make_optimizer`; for the log-space duals Adam with each gradient clipped on its own (to
    ±max_grad_norm): under one global-norm clip a multiplier's gradient α·(ε − KL), which grows with α, would
    scale down η's step exactly when the trust region is in trouble."""
    return Optimizers(make_optimizer(config), optax.chain(optax.clip(config.max_grad_norm), optax.scale_by_adam()))


def apply_updates(optimizer, grads, opt_state, params, learning_rate):
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = jax.tree.map(lambda p, u: p - learning_rate * u, params, updates)
    return params, opt_state


def mpo_loss(params, learner: LearnerState, obs_stats, reward_divisor, batch: Transition, key, hp: HParams,
             config: Config, nets: Networks):
    """Critic loss + policy loss (their parameters do not interact) and metrics, for a batch of sequences.

    Applies the networks and hands their outputs to `losses.critic_loss` and `losses.policy_loss`. Shapes:
    batch leaves `[B, L, ...]`; N = num_action_samples; A = action dim. The learner's rewards are
    `batch.reward / reward_divisor` (see `Config.reward_normalization`). The policy is improved on the next
    states s_{t+1}, reusing the target-Q of the actions sampled there for E_π' Q'(s_{t+1}, ·) and the target
    policy there for the trace's ratios π'(a_{t+1}|s_{t+1}) / b(a_{t+1}|s_{t+1}).
    """
    policy_params, critic_params, dual_params = params
    num_samples = config.num_action_samples
    action_dim = batch.action.shape[-1]
    # A terminal next state is never bootstrapped from (discount 0) and the policy is not improved there
    # (masked below), but its observation can be non-finite (Brax physics after a fall): keep it away from
    # every network, where even a masked NaN would poison the gradients.
    next_obs = jnp.where(batch.terminated[..., None], batch.obs, batch.next_obs)
    obs = normalizer.normalize(obs_stats, batch.obs)  # [B, L, O]
    next_obs = normalizer.normalize(obs_stats, next_obs)

    # Target policy at s_{t+1}: samples for E_π' Q' and the E-step, and π'(a_{t+1}|s_{t+1}) for the trace.
    next_target_mean, next_target_std = nets.policy.apply(learner.target_policy_params, next_obs)
    sampled_actions = mpo.sample_gaussian(key, next_target_mean, next_target_std, num_samples,
                                          config.antithetic_samples)  # [N, B, L, A]
    # A distributional critic's values are its expectations over the support of every return the rewards allow.
    support = None
    if config.critic_head != "scalar":
        support = distributional.atoms(*distributional.value_bounds(config.reward_range, hp.reward_scale,
                                                                    reward_divisor, hp.discount), config.critic_bins,
                                       support_margin(config))

    def q_value(output):
        return output if support is None else distributional.expectation(output, support)

    def members(output):  # a leading member axis, one critic or an ensemble
        return output if config.num_critics > 1 else output[None]

    # Target-critic values go through the ensemble's pessimistic estimate (the single value for one critic).
    def target_q(output):
        return losses.pessimistic_value(members(q_value(output)), hp.critic_pessimism)

    sampled_output = nets.critic.apply(learner.target_critic_params, next_obs, acting.env_action(sampled_actions))
    taken_output = nets.critic.apply(learner.target_critic_params, obs, acting.env_action(batch.action))
    sampled_q = target_q(sampled_output)  # [N, B, L]

    # log ρ_t for t ≥ 1 from π' at next_obs[t−1], which is s_t wherever Retrace reads ρ_t (transition t−1 neither
    # terminated nor truncated); ρ_0 and ρ after an episode's end are never read (the trace is cut there).
    log_pi = jnp.sum(mpo.gaussian_log_prob(batch.action[:, 1:], next_target_mean[:, :-1],
                                           next_target_std[:, :-1]), axis=-1)
    log_pi = jnp.concatenate([batch.behaviour_log_prob[:, :1], log_pi], axis=1)  # [B, L]; ρ_0 = 1, unread
    online = nets.critic.apply(critic_params, obs, acting.env_action(batch.action))  # [(K,) B, L (, Z)]
    q_online = q_value(online)  # [B, L] or [K, B, L]
    # Retrace's inputs, in `batched_retrace_targets`' (and `losses.critic_loss`'s) order.
    retrace_inputs = (
        target_q(taken_output),  # Q'(s_t, a_t)
        jnp.mean(sampled_q, axis=0),  # E_π' Q'(s_{t+1}, ·)
        batch.reward / reward_divisor,
        hp.discount * (1.0 - batch.terminated.astype(jnp.float32)),
        log_pi - batch.behaviour_log_prob,
        batch.truncated,
        hp.retrace_lambda,
    )
    critic_metrics = {}
    if support is None:
        critic_loss, targets = losses.critic_loss(q_online, *retrace_inputs)
    elif config.critic_head == "hl_gauss":
        targets = batched_retrace_targets(*retrace_inputs)
        critic_loss, clipped = losses.hl_gauss_loss(online, targets, support, hp.hl_gauss_sigma)
    else:  # categorical: distributional Retrace on the target critic's pmfs, the members' pmfs mixed
        pmf = lambda output: jnp.mean(members(jax.nn.softmax(output, axis=-1)), axis=0)  # noqa: E731
        critic_loss, targets, clipped = losses.categorical_critic_loss(
            online, pmf(taken_output), jnp.mean(pmf(sampled_output), axis=0), *retrace_inputs[2:], support)
    if support is not None:
        critic_metrics = dict(targets_clipped=clipped, critic_entropy=jnp.mean(distributional.entropy(online)),
                              support_max=support[-1])

    online_mean, online_std = nets.policy.apply(policy_params, next_obs)
    flat = lambda x: x.reshape(-1, action_dim)  # noqa: E731  [B, L, A] -> [B·L, A]
    policy_loss, metrics = losses.policy_loss(
        sampled_q=sampled_q.reshape(num_samples, -1),
        sampled_actions=sampled_actions.reshape(num_samples, -1, action_dim),
        online_mean=flat(online_mean), online_std=flat(online_std),
        target_mean=flat(next_target_mean), target_std=flat(next_target_std),
        mask=jnp.logical_not(batch.terminated).reshape(-1),
        duals=dual_params,
        epsilon=hp.epsilon, epsilon_penalty=hp.epsilon_penalty,
        epsilon_mean=hp.epsilon_mean, epsilon_std=hp.epsilon_std,
        static=losses.PolicyLossConfig(config.per_dim_constraining, config.action_penalization,
                                       config.epsilon_per_dimension, config.normalize_penalty),
        alpha_gain=hp.alpha_gain,
    )
    metrics.update(critic_loss=critic_loss, target_mean=jnp.mean(targets), q_mean=jnp.mean(q_online),
                   q_member_std=jnp.mean(jnp.std(q_online, axis=0)) if config.num_critics > 1 else jnp.zeros(()),
                   **critic_metrics)
    return critic_loss + policy_loss, metrics


def categorical_mpo_loss(params, learner: LearnerState, obs_stats, reward_divisor, batch: Transition, key,
                         hp: HParams, config: Config, nets: Networks):
    """`mpo_loss` for K discrete actions, where every expectation over actions is an exact sum (`discrete`).

    The critic gives Q(s, ·) `[..., K]` in one pass per state, so V(s_{t+1}) = Σ_a π'(a|s_{t+1}) Q'(s_{t+1}, a) and
    the E-step q(a|s) ∝ π'(a|s) exp(Q'(s, a)/η) with its temperature dual are exact; the M-step is weighted maximum
    likelihood under one KL(π'‖π_θ) ≤ ε_policy trust region, whose multiplier is `dual_params.alpha_mean` `[1]`.
    Retrace's ratios read the stored behaviour log-probability of the taken action (int32 `batch.action` `[B, L]`).
    Policies are floored at `config.min_action_prob` everywhere (acting, E-step prior, M-step). `key` is unused.
    """
    del key
    policy_params, critic_params, dual_params = params
    next_obs = jnp.where(batch.terminated[..., None], batch.obs, batch.next_obs)  # as in `mpo_loss`
    obs = normalizer.normalize(obs_stats, batch.obs)  # [B, L, O]
    next_obs = normalizer.normalize(obs_stats, next_obs)
    log_probs = lambda p, x: discrete.floored_log_probs(nets.policy.apply(p, x), config.min_action_prob)  # noqa: E731
    members = lambda q: q if config.num_critics > 1 else q[None]  # noqa: E731

    def taken(values, actions):  # values `[..., B, L, K]` at actions `[B, L]` -> `[..., B, L]`
        index = jnp.broadcast_to(actions[..., None], values.shape[:-1] + (1,))
        return jnp.take_along_axis(values, index, axis=-1)[..., 0]

    target_q = lambda x: losses.pessimistic_value(  # noqa: E731
        members(nets.critic.apply(learner.target_critic_params, x)), hp.critic_pessimism)
    next_target_log_probs = log_probs(learner.target_policy_params, next_obs)  # [B, L, K]
    next_q = target_q(next_obs)  # [B, L, K]
    # log ρ_t for t ≥ 1 from π' at next_obs[t−1] (s_t wherever Retrace reads it), as in `mpo_loss`.
    log_pi = taken(next_target_log_probs[:, :-1], batch.action[:, 1:])
    log_pi = jnp.concatenate([batch.behaviour_log_prob[:, :1], log_pi], axis=1)  # [B, L]
    q_online = taken(nets.critic.apply(critic_params, obs), batch.action)  # [B, L] or [M, B, L]
    critic_loss, targets = losses.critic_loss(
        q_online, taken(target_q(obs), batch.action), discrete.expected_value(next_target_log_probs, next_q),
        batch.reward / reward_divisor, hp.discount * (1.0 - batch.terminated.astype(jnp.float32)),
        log_pi - batch.behaviour_log_prob, batch.truncated, hp.retrace_lambda)

    num_actions = next_q.shape[-1]
    flat = lambda x: x.reshape(-1, num_actions)  # noqa: E731  [B, L, K] -> [B·L, K]
    mask = jnp.logical_not(batch.terminated).reshape(-1)
    temperature = mpo.positive(dual_params.temperature)
    weights, temperature_loss = discrete.e_step(flat(next_q), flat(next_target_log_probs), temperature, hp.epsilon,
                                                mask)
    online_log_probs = flat(log_probs(policy_params, next_obs))
    alpha = mpo.positive(dual_params.alpha_mean)
    policy_loss, alpha_loss, stats = discrete.m_step(online_log_probs, flat(next_target_log_probs), weights, alpha,
                                                     hp.epsilon_policy, mask, hp.alpha_gain)
    entropy = -jnp.sum(jnp.exp(online_log_probs) * online_log_probs, axis=-1)
    metrics = dict(
        policy_loss=policy_loss, temperature=temperature, alpha_policy=jnp.mean(alpha),
        alpha_policy_applied=jnp.mean(stats.applied_alpha), kl_policy=jnp.sum(stats.kl),
        e_step_kl=mpo.masked_mean(discrete.e_step_kl(weights, flat(next_target_log_probs)), mask),
        policy_entropy=mpo.masked_mean(entropy, mask),
        critic_loss=critic_loss, target_mean=jnp.mean(targets), q_mean=jnp.mean(q_online),
        q_member_std=jnp.mean(jnp.std(q_online, axis=0)) if config.num_critics > 1 else jnp.zeros(()),
    )
    return critic_loss + policy_loss + temperature_loss + alpha_loss, metrics


def policy_learning_rate(hp: HParams, num_updates: chex.Array) -> chex.Array:
    """`policy_lr / (1 + n / policy_lr_decay_updates)` after n updates; constant when the decay is 0.

    Adam's steps keep their size when the gradients are noise (a solved task on a flat critic), so a constant
    rate makes the policy random-walk forever; with a 1/n rate the walk's total variance, ∝ Σ lr², stays bounded
    (Robbins & Monro 1951).
    """
    decay = jnp.asarray(hp.policy_lr_decay_updates, jnp.float32)
    n = num_updates.astype(jnp.float32)
    return hp.policy_lr / jnp.where(decay > 0, 1.0 + n / jnp.where(decay > 0, decay, 1.0), 1.0)


def learner_step(learner: LearnerState, obs_stats, reward_divisor, batch: Transition, key, hp: HParams,
                 config: Config, nets: Networks, optimizers: Optimizers, axis_name: Optional[str] = None):
    """One SGD update of critic, policy and duals, then the target-network update.

    With `axis_name` (inside `shard_map` over devices, each with its own part of the batch) the gradients
    are averaged over the devices before any optimiser sees them, so every device applies the same update
    to the same (replicated) parameters; metrics are reduced likewise (`sharding.reduce_metrics`).
    """
    params = (learner.policy_params, learner.critic_params, learner.dual_params)
    loss = categorical_mpo_loss if nets.discrete else mpo_loss
    grads, metrics = jax.grad(loss, has_aux=True)(params, learner, obs_stats, reward_divisor, batch, key, hp, config,
                                                   nets)
    if axis_name is not None:
        grads = jax.lax.pmean(grads, axis_name)
        metrics = sharding.reduce_metrics(metrics, axis_name)
    policy_grads, critic_grads, dual_grads = grads
    policy_params, policy_opt = apply_updates(optimizers.networks, policy_grads, learner.policy_opt_state,
                                              learner.policy_params, policy_learning_rate(hp, learner.num_updates))
    critic_params, critic_opt = apply_updates(optimizers.networks, critic_grads, learner.critic_opt_state,
                                              learner.critic_params, hp.critic_lr)
    dual_params, dual_opt = apply_updates(optimizers.duals, dual_grads, learner.dual_opt_state,
                                          learner.dual_params, hp.dual_lr)
    metrics.update(dual_grad_norm=optax.global_norm(dual_grads))
    dual_params = mpo.project_dual_params(dual_params, hp.min_alpha)
    num_updates = learner.num_updates + 1
    if config.target_update_period > 0:
        copy = num_updates % config.target_update_period == 0
        update_target = lambda target, online: jnp.where(copy, online, target)  # noqa: E731
    else:
        update_target = lambda target, online: target + hp.tau * (online - target)  # noqa: E731
    learner = LearnerState(
        policy_params=policy_params,
        critic_params=critic_params,
        target_policy_params=jax.tree.map(update_target, learner.target_policy_params, policy_params),
        target_critic_params=jax.tree.map(update_target, learner.target_critic_params, critic_params),
        dual_params=dual_params,
        policy_opt_state=policy_opt,
        critic_opt_state=critic_opt,
        dual_opt_state=dual_opt,
        num_updates=num_updates,
    )
    return learner, metrics


def evaluation_action(nets: Networks, policy_params, obs: chex.Array, key: chex.PRNGKey, stochastic: chex.Array,
                      min_action_prob: chex.Numeric = 0.0) -> chex.Array:
    """The action the env receives in an evaluation episode, for normalised observations `obs` `[E, O]`.

    Per episode, `stochastic` bool `[E]`: false takes the policy's mode (the Gaussian's mean clipped into the action
    box; a categorical policy's most likely action), true a sample of π_θ (a categorical one floored at
    `min_action_prob`). Returns `[E, A]` floats or, for discrete actions, int32 `[E]`."""
    out = nets.policy.apply(policy_params, obs)
    if nets.discrete:
        log_probs = discrete.floored_log_probs(out, min_action_prob)
        sampled = jax.random.categorical(key, log_probs)
        return jnp.where(stochastic, sampled, jnp.argmax(out, axis=-1)).astype(jnp.int32)
    mean, std = out
    noise = jax.random.normal(key, mean.shape) * stochastic[:, None]
    return acting.env_action(mean + std * noise)


def preserve_outputs(learner: LearnerState, old_stats, new_stats, views: envs.Views = envs.Views()) -> LearnerState:
    """The learner with every network (online and target) re-parametrised so that it computes the same
    function of raw observations under `new_stats` as under `old_stats` (`networks.preserve_outputs`, each
    network on its view). Adam's moment estimates are kept: the statistics move little per iteration, and the
    moments re-adapt quickly."""
    policy = lambda params: networks.preserve_outputs(params, old_stats, new_stats, views.policy)  # noqa: E731
    critic = lambda params: networks.preserve_outputs(params, old_stats, new_stats, views.critic)  # noqa: E731
    return learner._replace(
        policy_params=policy(learner.policy_params),
        critic_params=critic(learner.critic_params),
        target_policy_params=policy(learner.target_policy_params),
        target_critic_params=critic(learner.target_critic_params),
    )


class Trainer(NamedTuple):
    """Pure functions of one run; all are `jit`/`vmap`-able."""

    config: Config
    init: Callable  # (key, hparams) -> TrainState before the first env step
    train_chunk: Callable  # (state, hparams=None, iterations=None) -> (state, per-iteration metrics of that many
    #   iterations; default: one evaluation period)
    evaluate_state: Callable  # (state) -> (state with a new key, evaluation metrics)
    evaluate: Callable  # (policy_params, obs_stats, key, stochastic=False, num_episodes=None) -> envs.Episodes
    env_axes: Callable  # (state) -> per leaf, the index of its env axis (split over devices) or sharding.SHARED
    num_devices: int  # 1, or D: the pieces above are per-device programs for shard_map over sharding.AXIS


def make_trainer(config: Config, num_devices: int = 1) -> Trainer:
    """The pure pieces of a run. With `num_devices` D > 1 they are per-device programs for `shard_map` over
    `sharding.AXIS` (`distribute` with a mesh; `driver.lower_programs` compiles them): each device steps num_envs / D envs, keeps their replay,
    samples batch_size / D sequences and runs eval_episodes / D of each kind of evaluation episode."""
    sharding.check_divisible(config, num_devices)
    axis = sharding.AXIS if num_devices > 1 else None
    num_envs, pool_size = config.num_envs // num_devices, config.reset_pool_size // num_devices
    batch_size = config.batch_size // num_devices
    env = envs.make(config.env, config.backend, config.impl)
    limit = envs.time_limit(config)
    obs_dim, action_dim = envs.observation_size(env), env.action_size
    views = envs.views(env)
    nets = env_networks(config, env)
    optimizers = make_optimizers(config)

    def env_steps(state: TrainState) -> chex.Array:
        """Env steps taken, as float32 (exact below 2²⁴ ≈ 16.8M). `state.iteration` is the exact count: int32
        iterations do not overflow in any realistic run, where an int32 step count would after 2³¹ steps."""
        return state.iteration.astype(jnp.float32) * config.steps_per_iteration

    # Iterations whose rewards set the reward divisor: the prefill, or the first iteration without one.
    reward_estimation_iterations = max(config.prefill_iterations, 1)

    def collect(state: TrainState, policy_params, key, hp: HParams):
        env_state, transitions, episodes, noise = acting.rollout(
            env, nets.policy, policy_params, state.obs_stats, state.env_state, sharding.per_device(key, axis),
            config.unroll_length, limit, hp.reward_scale,
            state.exploration_noise,
            jnp.where(env_steps(state) >= hp.exploration_correlation_from_step, hp.exploration_correlation, 0.0),
            nets.discrete, config.min_action_prob,
        )
        estimating = state.iteration < reward_estimation_iterations
        reward_stats = jax.tree.map(
            lambda new, old: jnp.where(estimating, new, old),
            normalizer.update_reward_scale(state.reward_stats, transitions.reward, axis),
            state.reward_stats,
        )
        # Statistics of every device's envs (their moments merged): the same on every device.
        obs_stats = state.obs_stats  # never updated without normalisation: the identity (`normalizer.normalize`)
        if config.observation_normalization:
            obs_stats = normalizer.update(state.obs_stats, transitions.obs, axis)
        learner = state.learner
        if config.obs_norm_preserves_outputs and config.observation_normalization:
            learner = preserve_outputs(learner, state.obs_stats, obs_stats, views)
        state = state._replace(
            learner=learner,
            env_state=env_state,
            exploration_noise=None if nets.discrete else noise,
            reward_stats=reward_stats,
            obs_stats=obs_stats,
            replay=replay.add(state.replay, transitions),
            iteration=state.iteration + 1,
        )
        return state, jax.tree.map(lambda x: sharding.total(x, axis), episodes)

    def init(key, hparams: Optional[HParams] = None) -> TrainState:
        hp = config.hparams if hparams is None else hparams
        key, env_key, policy_key, critic_key = jax.random.split(key, 4)
        # Every device draws its own envs; the networks start from the same key, so they start replicated.
        env_key = sharding.per_device(env_key, axis)
        env_state = envs.reset(env, env_key, num_envs, pool_size, limit if config.stagger_starts else 0)
        dummy_obs, dummy_action = jnp.zeros((obs_dim,)), jnp.zeros((action_dim,))
        policy_params = nets.policy.init(policy_key, dummy_obs)
        if nets.discrete:
            critic_params = nets.critic.init(critic_key, dummy_obs)
            dual_params = mpo.init_categorical_dual_params(hp.init_temperature, hp.init_alpha_mean)
        else:
            critic_params = nets.critic.init(critic_key, dummy_obs, dummy_action)
            dual_params = mpo.init_dual_params(action_dim, config.per_dim_constraining, hp.init_temperature,
                                               hp.init_alpha_mean, hp.init_alpha_std)
        learner = LearnerState(
            policy_params=policy_params,
            critic_params=critic_params,
            target_policy_params=policy_params,
            target_critic_params=critic_params,
            dual_params=dual_params,
            policy_opt_state=optimizers.networks.init(policy_params),
            critic_opt_state=optimizers.networks.init(critic_params),
            dual_opt_state=optimizers.duals.init(dual_params),
            num_updates=jnp.zeros((), jnp.int32),
        )
        example = Transition(
            obs=jnp.zeros((num_envs, obs_dim)),
            action=jnp.zeros((num_envs,), jnp.int32) if nets.discrete else jnp.zeros((num_envs, action_dim)),
            reward=jnp.zeros((num_envs,)),
            terminated=jnp.zeros((num_envs,), bool),
            truncated=jnp.zeros((num_envs,), bool),
            next_obs=jnp.zeros((num_envs, obs_dim)),
            behaviour_log_prob=jnp.zeros((num_envs,)),
        )
        return TrainState(
            learner=learner,
            obs_stats=normalizer.init(obs_dim),
            reward_stats=normalizer.init_reward_scale(),
            replay=replay.init(example, config.capacity_per_env, limit,
                               jnp.dtype(config.replay_obs_dtype)),
            env_state=env_state,
            # Stationary from the first step: N(0, I), like every later step's noise.
            exploration_noise=None if nets.discrete else jax.random.normal(jax.random.fold_in(env_key, 1),
                                                                           (num_envs, action_dim)),
            key=key,
            iteration=jnp.zeros((), jnp.int32),
        )

    def iteration(state: TrainState, hp: HParams):
        key, rollout_key, update_key = jax.random.split(state.key, 3)
        learning = state.iteration >= config.prefill_iterations
        state, episodes = collect(state._replace(key=key), state.learner.policy_params, rollout_key, hp)
        # A run resumed from a checkpoint without replay refills as much as the prefill gave it (always true
        # otherwise: the prefill leaves exactly this much).
        learning = learning & (state.replay.size >= min((config.prefill_iterations + 1) * config.unroll_length,
                                                         config.capacity_per_env))
        divisor = normalizer.reward_divisor(state.reward_stats) if config.reward_normalization else 1.0

        def update(learner, k):
            sample_key, loss_key = jax.random.split(sharding.per_device(k, axis))  # each device its own envs
            batch = replay.sample(state.replay, sample_key, batch_size, config.sequence_length)
            return learner_step(learner, state.obs_stats, divisor, batch, loss_key, hp, config, nets, optimizers,
                                axis)

        def learn(learner):
            learner, metrics = jax.lax.scan(update, learner, jax.random.split(update_key, config.updates_per_iteration))
            peaks = {f"{name}_max": jnp.max(metrics[name]) for name in ("kl_mean", "kl_std", "kl_policy", "e_step_kl")
                     if name in metrics}
            if "target_std_min" in metrics:
                peaks.update(target_std_min=jnp.min(metrics["target_std_min"]))
            return learner, {**jax.tree.map(jnp.mean, metrics), **peaks}

        def prefill(learner):  # no update yet: learner metrics are NaN
            shapes = jax.eval_shape(learn, learner)[1]
            return learner, jax.tree.map(lambda s: jnp.full(s.shape, jnp.nan, s.dtype), shapes)

        learner, metrics = jax.lax.cond(learning, learn, prefill, state.learner)
        metrics.update(
            env_steps=env_steps(state),
            updates=learning.astype(jnp.float32) * config.updates_per_iteration,
            reward_divisor=jnp.asarray(divisor, jnp.float32),
            episode_return_sum=episodes.return_sum,
            episodes_finished=episodes.count,
            nonfinite_steps=episodes.nonfinite,  # envs whose step was not finite (`envs.step`), summed over envs
        )
        return state._replace(learner=learner), metrics

    def evaluate(policy_params, obs_stats, key, stochastic=False, num_episodes=None):
        """Episodes of the mean action (`stochastic` false) or of samples from π_θ (true), per episode if an
        array `[num_episodes]` (`evaluation_action`; a discrete policy's samples are floored at min_action_prob).
        Starts come from `env.reset` with this key, independent of the
        training reset pool (tasks such as reacher and pusher draw their goal at reset)."""
        num_episodes = config.eval_episodes if num_episodes is None else num_episodes
        stochastic = jnp.broadcast_to(jnp.asarray(stochastic, bool), (num_episodes,))

        def act(obs, step_key):
            return evaluation_action(nets, policy_params, normalizer.normalize(obs_stats, obs), step_key, stochastic,
                                     config.min_action_prob)

        return envs.evaluate(env, act, key, num_episodes, limit)

    def train_chunk(state: TrainState, hparams: Optional[HParams] = None, iterations: Optional[int] = None):
        hp = config.hparams if hparams is None else hparams
        return jax.lax.scan(lambda s, _: iteration(s, hp), state, None, length=iterations or config.iterations_per_eval)

    def evaluate_state(state: TrainState):
        # eval_episodes of the mean action and as many of the stochastic policy, in one lockstep rollout.
        key, eval_key = jax.random.split(state.key)
        num, local = config.eval_episodes, 2 * config.eval_episodes // num_devices
        first = 0 if axis is None else jax.lax.axis_index(axis) * local  # this device's episodes, in global order
        stochastic = first + jnp.arange(local) >= num
        episodes = evaluate(state.learner.policy_params, state.obs_stats, sharding.per_device(eval_key, axis),
                            stochastic, local)
        episodes = jax.tree.map(lambda x: sharding.gather(x, axis), episodes)
        deterministic, sampled = episodes.returns[:num], episodes.returns[num:]
        metrics = dict(
            eval_return=jnp.mean(deterministic), eval_return_std=jnp.std(deterministic),
            eval_return_min=jnp.min(deterministic),
            eval_stochastic_return=jnp.mean(sampled), eval_stochastic_return_std=jnp.std(sampled),
            eval_episode_length=jnp.mean(episodes.lengths[:num].astype(jnp.float32)),
            eval_env_steps=env_steps(state), eval_iteration=state.iteration,
            eval_episodes=episodes,
        )
        return state._replace(key=key), metrics

    def env_axes(state: TrainState) -> TrainState:
        # Sim states and the reset pool: per-env leaves have the env (or pool) axis first, shared ones none.
        sim = jax.tree.map(lambda batched: 0 if batched else sharding.SHARED, envs.per_env_leaves(env))
        shared = lambda tree: jax.tree.map(lambda _: sharding.SHARED, tree)  # noqa: E731
        return TrainState(
            learner=shared(state.learner), obs_stats=shared(state.obs_stats), reward_stats=shared(state.reward_stats),
            replay=jax.tree.map(lambda axis: sharding.SHARED if axis is None else axis, replay.env_axes(state.replay),
                                is_leaf=lambda x: x is None),
            env_state=envs.EnvState(sim_state=sim, episode_step=0, episode_return=0,
                                    reset_pool=None if state.env_state.reset_pool is None else sim),
            exploration_noise=None if nets.discrete else 0, key=sharding.SHARED, iteration=sharding.SHARED,
        )

    return Trainer(config=config, init=init, train_chunk=train_chunk, evaluate_state=evaluate_state,
                   evaluate=evaluate, env_axes=env_axes, num_devices=num_devices)


def run_chunk(trainer: Trainer, state: TrainState, hparams: Optional[HParams] = None):
    """One evaluation period: `train_chunk`, then `evaluate_state`, their metrics merged."""
    state, metrics = trainer.train_chunk(state, hparams)
    state, evaluation = trainer.evaluate_state(state)
    return state, {**metrics, **evaluation}


def make_train(config: Config) -> Callable:
    """Returns `train(key, hparams=None) -> (final TrainState, metrics)`; pure, so jit/vmap it.

    `metrics` holds per-iteration values shaped `[num_evals, iterations_per_eval]` and per-evaluation
    values shaped `[num_evals]`: `eval_return` (mean-action episodes; `_std`, `_min`), `eval_stochastic_return`
    (`_std`), `eval_episode_length`, `eval_env_steps` (float32), `eval_iteration` (int32, exact) and the
    `eval_episodes` themselves (`envs.Episodes`, first half mean-action, second half sampled). The first
    `config.prefill_iterations` iterations only collect data: their learner metrics are NaN and `updates` is 0.
    """
    trainer = make_trainer(config)

    def train(key, hparams: Optional[HParams] = None):
        return jax.lax.scan(lambda state, _: run_chunk(trainer, state, hparams), trainer.init(key, hparams), None,
                            length=config.num_evals)

    return train


def distribute(trainer: Trainer, mesh=None, batched: bool = False, hp_axis: Optional[int] = None,
               iterations: Optional[int] = None):
    """(init, train_chunk, evaluate_state) of `trainer` over global arrays: vmapped over runs (`batched`;
    hyper-parameters per run if `hp_axis` is 0, shared if None) and, with a `mesh`, split over its devices by
    `shard_map` (env-axis leaves split, the rest replicated; `sharding`); train_chunk runs `iterations`
    iterations (default: an evaluation period). Also returns the state's PartitionSpecs (None without a mesh)."""
    def init(k, hp):
        return trainer.init(k, hp)

    def train_chunk(state, hp):
        return trainer.train_chunk(state, hp, iterations)

    def evaluate_state(state):
        return trainer.evaluate_state(state)

    specs = None
    if mesh is not None:
        if mesh.size != trainer.num_devices:
            raise ValueError(f"the mesh has {mesh.size} devices but the trainer was made for {trainer.num_devices}")
        if trainer.num_devices > 1:
            from jax.sharding import PartitionSpec as P

            # check_vma=False: the collectives are explicit (`sharding`, `learner_step`'s pmean). With JAX's
            # varying-value typing on, the gradient of a replicated parameter would get an implicit psum as
            # well, and the devices' gradients would be added up twice.
            def shard(fn, in_specs, out_specs):
                return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)

            # Every output declared replicated gives the per-device shapes: the state's structure and local sizes.
            local = jax.eval_shape(shard(init, (P(), P()), P()), jax.random.PRNGKey(0), trainer.config.hparams)
            specs = sharding.state_specs(trainer.env_axes(local))
            init = shard(init, (P(), P()), specs)
            train_chunk = shard(train_chunk, (specs, P()), (specs, P()))
            evaluate_state = shard(evaluate_state, (specs,), (specs, P()))
    if batched:
        init = jax.vmap(init, in_axes=(0, hp_axis))
        train_chunk = jax.vmap(train_chunk, in_axes=(0, hp_axis))
        evaluate_state = jax.vmap(evaluate_state)
    return init, train_chunk, evaluate_state, specs
