"""Run configuration: a frozen, validated dataclass and the vmappable pytree of float hyper-parameters."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, NamedTuple, Optional, Tuple

KNOWN_BACKENDS = ("generalized", "positional", "spring", "mjx")
PLAYGROUND_IMPLS = ("jax", "warp")
REPLAY_OBS_DTYPES = ("float32", "bfloat16")
CRITIC_HEADS = ("scalar", "hl_gauss", "categorical")
OBSERVATION_TORSOS = ("flatten", "conv")
# Float hyper-parameters that only one kind of action space reads (a sweep of one on the other would repeat a run).
CONTINUOUS_ONLY_HPARAMS = ("epsilon_mean", "epsilon_std", "epsilon_penalty", "init_alpha_std",
                           "exploration_correlation", "exploration_correlation_from_step", "hl_gauss_sigma")
DISCRETE_ONLY_HPARAMS = ("epsilon_policy",)


class HParams(NamedTuple):
    """Float hyper-parameters. A pytree, so `jax.vmap(train, in_axes=(None, 0))` sweeps them."""

    discount: float
    retrace_lambda: float
    epsilon: float
    epsilon_mean: float
    epsilon_std: float
    epsilon_penalty: float
    policy_lr: float
    critic_lr: float
    dual_lr: float
    tau: float
    init_temperature: float
    init_alpha_mean: float
    init_alpha_std: float
    min_alpha: float
    alpha_gain: float
    critic_pessimism: float
    policy_lr_decay_updates: float
    exploration_correlation: float
    exploration_correlation_from_step: float
    reward_scale: float
    hl_gauss_sigma: float
    epsilon_policy: float


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything that defines a purempo run. Shapes and loop counts are static; floats form `HParams`.

    Defaults are tuned on a CPU for the default env, `inverted_pendulum`: wall time to a return of 950, and
    staying there (docs/journal.md §6).
    """

    # --- env. Environment: which task, how many copies, how episodes end and restart, reward scaling.
    env: str = "inverted_pendulum"
    """Environment name: a Brax env (`halfcheetah`, see `brax.envs.get_environment`) a MuJoCo Playground env (`CheetahRun`, see `mujoco_playground.registry`) or a gymnax env with discrete actions (`CartPole-v1`, `Breakout-MinAtar`); checked when the trainer is built. On the command line, --env NAME also makes NAME's preset (purempo.presets) the defaults of every other flag."""
    backend: Optional[str] = None
    """Brax physics backend (generalized, positional, spring, mjx); None uses the env's default. Brax envs only."""
    impl: Optional[str] = None
    """MuJoCo Playground physics implementation, jax (MJX) or warp (MuJoCo Warp); None: warp on an NVIDIA GPU with warp-lang installed (written for it), jax elsewhere (on a CPU 2.2–7.7× Warp's steps/s, docs/journal.md §7). Playground envs only."""
    episode_length: Optional[int] = None
    """Time limit in agent steps (after the env's action repeat); None: the env's own (Brax's 1000, a Playground env's config; `envs.time_limit`). Reaching it truncates (bootstraps), it does not terminate."""
    num_envs: int = 256
    """Parallel environments stepped in lockstep."""
    reset_pool_size: int = 4096
    """Initial states drawn by env.reset at the start; finished training envs restart from one drawn uniformly from them (evaluation episodes start from fresh env.reset draws). 0 calls env.reset at every restart instead (slower to compile and to run)."""
    reward_scale: float = 1.0
    """Multiplies the training envs' rewards, as a reward-scaling env wrapper would (the replay stores scaled rewards); evaluation runs the unscaled env and every reported return is unscaled."""
    reward_normalization: bool = True
    """Divide the learner's rewards by their root mean square over the prefill data (over the first iteration if prefill_steps is 0), a constant for the rest of the run: critic, temperatures and learning rates then see the same numbers whatever the reward scale."""
    stagger_starts: bool = True
    """Start each env's first episode at a step counter drawn uniformly below the time limit, so that envs that never terminate (DM Control) do not all truncate on the same step for the whole run (exact: truncations bootstrap; such a shortened first episode's return is not reported)."""
    reward_range: Optional[Tuple[float, float]] = None
    """The env's per-step reward bounds (LOW, HIGH), before reward_scale; an hl_gauss or categorical critic's value support is every discounted return they allow (`distributional.value_bounds`). The DM Control presets set (0, 1); needed with those critic heads."""

    # --- replay. Replay: capacity, prefill and the sampled sequences.
    replay_size: int = 1_048_576
    """Replay capacity in transitions over all envs (each env keeps replay_size // num_envs steps)."""
    prefill_steps: int = 2048
    """Env steps collected with the initial policy before the first update (rounded up to iterations)."""
    batch_size: int = 128
    """Sequences per SGD update."""
    sequence_length: int = 8
    """Length L of each sampled sequence (Retrace horizon)."""
    replay_obs_dtype: str = "float32"
    """Dtype the replay stores observations in (once per step): float32, or bfloat16 to halve their bytes, the replay's dominant cost; the learner gets them back as float32, rounded to bfloat16's 8 significant bits."""

    # --- networks. Networks: policy and critic architecture, initial and minimum policy std, input normalisation.
    policy_hidden: Tuple[int, ...] = (64, 64)
    """Hidden layer sizes of the policy network."""
    critic_hidden: Tuple[int, ...] = (64, 64)
    """Hidden layer sizes of the critic network."""
    critic_norm_all: bool = False
    """LayerNorm after every hidden layer of the critic, not only the first (Acme's trunk): Brax SAC's `q_network_layer_norm`, which Playground's DM Control settings turn on."""
    critic_residual_blocks: int = 0
    """0: the critic is the layer-norm MLP of critic_hidden; N > 0: BRO's residual critic (Nauman et al. 2024), Dense → LayerNorm → ReLU of width critic_hidden (one size) and N blocks x + LN(Dense(ReLU(LN(Dense(x)))))."""
    critic_head: str = "scalar"
    """What the critic outputs: scalar (one Q, squared error to the Retrace targets), or logits over critic_bins values spanning every return reward_range allows (Q is their expectation) trained by cross-entropy to: hl_gauss, each scalar Retrace target's Gaussian histogram (Farebrother et al. 2024); categorical, distributional Retrace targets built from the target critic's distributions (C51's projection, Reactor's recursion)."""
    critic_bins: int = 101
    """Atoms of an hl_gauss or categorical critic's value support (hl_gauss's extends 4 hl_gauss_sigma bins beyond each bound of the returns, so a target at a bound keeps its mean)."""
    hl_gauss_sigma: float = 0.75
    """Standard deviation of an hl_gauss target's histogram, in bin widths."""
    num_critics: int = 1
    """Independently initialised critics trained on the same targets; with more than one, every target value (Retrace, E-step) is their mean − critic_pessimism × their standard deviation."""
    init_std: float = 0.7
    """Initial policy standard deviation."""
    min_std: float = 1e-3
    """Lower bound of the policy's standard deviation."""
    obs_norm_preserves_outputs: bool = True
    """When the running observation statistics move, re-parametrise every network's first layer (online and target) to compute the same function of the raw observation, so normalisation cannot move the policy outside its trust region (off: inverted_pendulum solves sooner but falls over again and again, docs/journal.md §6)."""
    observation_normalization: bool = True
    """Standardise observations by running statistics before every network (off: networks see the raw observation clipped to ±10, as normalised ones are, e.g. MinAtar's 0/1 images; needed by the conv torso, whose shared kernels cannot absorb per-pixel statistics)."""
    observation_torso: str = "flatten"
    """How the networks read an image observation (MinAtar's [10, 10, C]): flatten, the MLP on the flat pixels; conv, a 3×3 convolution of 16 channels and ReLU (MinAtar's own network) before the MLP (needs observation_normalization off)."""

    # --- mpo. MPO: Retrace targets, E-step and M-step bounds and multipliers, optimisers and target networks.
    discount: float = 0.999
    """Discount γ (zeroed only on termination). 0.999, a 1,000-step horizon, lets inverted_pendulum's critic see where a slow drift of the balanced cart ends, at the rail: fewer falls after solving than with 0.995 (docs/journal.md §6)."""
    retrace_lambda: float = 0.95
    """Retrace trace coefficient λ in c = λ·min(1, π/b)."""
    num_action_samples: int = 16
    """Actions sampled per state for the E-step and for E_π Q(s', ·)."""
    antithetic_samples: bool = False
    """Sample the actions in mirrored pairs μ ± σ·ξ (needs an even num_action_samples): E_π Q(s', ·) is exact for a Q linear in the action, and the E-step compares opposite moves."""
    epsilon: float = 0.1
    """E-step KL bound ε."""
    epsilon_mean: float = 1e-2
    """M-step bound on KL(π'‖π) of the mean, summed over action dimensions (each gets epsilon_mean / action_dim when per_dim_constraining); see epsilon_per_dimension."""
    epsilon_std: float = 1e-4
    """M-step bound on KL(π'‖π) of the standard deviation, summed over action dimensions (split like epsilon_mean)."""
    epsilon_penalty: float = 1e-3
    """E-step KL bound of the action-penalty objective."""
    epsilon_per_dimension: bool = False
    """Read epsilon_mean and epsilon_std as each action dimension's bound (the summed KL may reach action_dim × ε), not the sum's, so one setting suits any action dimension (the DM Control preset: under a summed bound one-action CartpoleSwingup got 6× halfcheetah's per-dimension bound, docs/journal.md §7)."""
    per_dim_constraining: bool = True
    """One Lagrange multiplier per action dimension (else one for the summed KL)."""
    action_penalization: bool = True
    """MO-MPO penalty -||a - clip(a, -1, 1)|| keeping the unsquashed Gaussian's mean within bounds."""
    epsilon_policy: float = 1e-2
    """Discrete actions: M-step bound on KL(π'‖π) of the categorical policy, the one trust region (continuous actions use epsilon_mean and epsilon_std)."""
    min_action_prob: float = 0.0
    """Discrete actions: floor on every action's probability, π = (1 − K·floor)·softmax + floor over K actions, so that no action stops being explored (0: none; must be < 1/K). Static, not swept: it is part of the policy's distribution everywhere, evaluation included."""
    init_temperature: float = 1.0
    """Initial E-step temperatures η (task and action penalty)."""
    init_alpha_mean: float = 10.0
    """Initial Lagrange multiplier(s) α_μ of the mean KL constraint."""
    init_alpha_std: float = 1000.0
    """Initial Lagrange multiplier(s) α_σ of the std KL constraint."""
    min_alpha: float = 1e-2
    """Floor of the M-step multipliers α_μ, α_σ, so that they do not decay to nothing while their constraint is slack (a floor of 1 made inverted_pendulum dip more, docs/journal.md §6)."""
    alpha_gain: float = 1.0
    """Proportional gain of the KL multipliers: the policy's penalty uses α + alpha_gain · clip(KL/ε − 1, 0, 10) per constraint (α: the learned, integral part), so a violated trust region tightens in the same update, not hundreds of updates later; it adds nothing while the bound holds (0: α alone; docs/journal.md §6)."""
    normalize_penalty: bool = False
    """Divide the policy's M-step loss by 1 + the sum of the KL multipliers it applies (gradient stopped): the same minimiser, but while a multiplier climbs by orders of magnitude after a violation, Adam's steps no longer outgrow the learning rate with it (`mpo.normalized_policy_loss`; docs/journal.md §7)."""
    critic_pessimism: float = 0.0
    """β of the ensemble's pessimistic value mean − β·std (2 critics, β = 1: the minimum, TD3's clipped double-Q); needs num_critics > 1."""
    policy_lr: float = 6e-4
    """Adam learning rate of the policy (6e-4 solves inverted_pendulum sooner than 3e-4, docs/journal.md §6)."""
    policy_lr_decay_updates: float = 0.0
    """Policy learning rate after n updates: policy_lr / (1 + n / policy_lr_decay_updates), so that a solved policy's random walk on a flat critic stops growing (0: constant)."""
    critic_lr: float = 3e-3
    """Adam learning rate of the critic. Adam moves a critic's output by roughly a fixed amount per step, so values of ~100–1000 (rewards normalised to ~1) are reached 10× sooner at 3e-3 than at 3e-4 (docs/journal.md §1)."""
    dual_lr: float = 1e-2
    """Adam learning rate of the (log-space) dual variables η, α_μ, α_σ."""
    max_grad_norm: float = 40.0
    """Gradient clipping: the policy's and the critic's gradients by their global norm, each dual's gradient on its own (so a large multiplier's gradient cannot shrink the temperature's step)."""
    target_update_period: int = 25
    """Hard-copy target networks every this many updates; 0 uses Polyak averaging with tau."""
    tau: float = 0.005
    """Polyak coefficient for the target networks (used when target_update_period == 0)."""

    # --- run. Run: length, the acting/learning schedule, exploration noise and evaluation.
    total_steps: int = 100_000
    """Env steps in the whole run, prefill included (rounded down to a multiple of num_evals iterations)."""
    unroll_length: int = 2
    """Env steps per environment between learning phases (one iteration = num_envs * unroll_length steps)."""
    updates_per_iteration: int = 16
    """SGD updates after each unroll."""
    exploration_correlation: float = 0.0
    """Correlation ρ of consecutive steps' exploration noise in the training envs: actions are mean + std·n_t, n_t = ρ·n_{t−1} + sqrt(1 − ρ²)·ξ_t (unit-variance Ornstein–Uhlenbeck noise, restarted each episode), still samples of π_θ(·|s) but pushes that persist ~1/(1 − ρ) steps (0, the default: ρ 0.5 did not make inverted_pendulum's dips rarer, docs/journal.md §6)."""
    exploration_correlation_from_step: float = 0.0
    """Env steps after which exploration_correlation applies (white noise before): a task is learnt fastest with independent noise, and the correlated pushes matter once a solved policy can drift (docs/journal.md §6)."""
    num_evals: int = 10
    """Evaluations (and metric reports) during the run, evenly spaced."""
    eval_episodes: int = 16
    """Episodes per evaluation of the mean action (eval_return), and as many again of the sampled policy (eval_stochastic_return), run in parallel from fresh env.reset starts."""

    def __post_init__(self):
        def need(ok: bool, field: str, allowed: str):
            if not ok:
                raise ValueError(f"invalid {field}={getattr(self, field)!r}: must be {allowed}")

        # The env name is checked against both families when the trainer is built (purempo.envs.make):
        # constructing a Config imports no simulator.
        need(isinstance(self.env, str) and bool(self.env), "env", "a Brax, MuJoCo Playground or gymnax env name")
        need(self.backend is None or self.backend in KNOWN_BACKENDS, "backend", f"None or one of {KNOWN_BACKENDS}")
        need(self.impl is None or self.impl in PLAYGROUND_IMPLS, "impl", f"None or one of {PLAYGROUND_IMPLS}")
        need(self.episode_length is None or self.episode_length >= 1, "episode_length", ">= 1 (None: the env's own)")
        for field in ("num_envs", "unroll_length", "updates_per_iteration", "num_evals",
                      "eval_episodes", "batch_size", "num_action_samples", "total_steps"):
            need(getattr(self, field) >= 1, field, ">= 1")
        need(self.prefill_steps >= 0, "prefill_steps", ">= 0")
        need(self.reset_pool_size >= 0, "reset_pool_size", ">= 0 (0 resets with env.reset)")
        need(self.sequence_length >= 2, "sequence_length", ">= 2")
        need(self.num_action_samples >= 2, "num_action_samples", ">= 2")
        need(not self.antithetic_samples or self.num_action_samples % 2 == 0, "num_action_samples",
             "even when antithetic_samples is on (the actions come in mirrored pairs)")
        need(len(self.policy_hidden) >= 1 and min(self.policy_hidden) >= 1, "policy_hidden", "non-empty positive sizes")
        need(len(self.critic_hidden) >= 1 and min(self.critic_hidden) >= 1, "critic_hidden", "non-empty positive sizes")
        need(self.replay_size % self.num_envs == 0, "replay_size",
             f"a multiple of num_envs ({self.num_envs}): every env keeps replay_size // num_envs steps")
        # A sampled sequence reads sequence_length + 1 rows (the next observations are the following row's).
        need(self.capacity_per_env >= self.sequence_length + 1 + self.unroll_length, "replay_size",
             f">= num_envs * (sequence_length + 1 + unroll_length) = "
             f"{self.num_envs * (self.sequence_length + 1 + self.unroll_length)}")
        need(self.replay_obs_dtype in REPLAY_OBS_DTYPES, "replay_obs_dtype", f"one of {REPLAY_OBS_DTYPES}")
        need(self.batch_size <= self.replay_size, "batch_size", f"<= replay_size ({self.replay_size})")
        need(self.iterations_per_eval >= 1, "total_steps",
             f">= num_evals * num_envs * unroll_length = {self.num_evals * self.steps_per_iteration} (one iteration "
             f"per evaluation); raise total_steps or lower num_evals")
        need(self.prefill_iterations < self.num_iterations, "prefill_steps",
             f"< the run's env steps ({self.env_steps}) so that some iterations learn; raise total_steps or lower "
             f"prefill_steps")
        need((self.prefill_iterations + 1) * self.unroll_length >= self.sequence_length + 1, "prefill_steps",
             f">= {max(0, self.sequence_length + 1 - self.unroll_length) * self.num_envs} so the replay holds "
             f"sequence_length + 1 = {self.sequence_length + 1} steps per env at the first update")
        need(0.0 <= self.discount < 1.0, "discount", "in [0, 1)")
        need(0.0 <= self.retrace_lambda <= 1.0, "retrace_lambda", "in [0, 1]")
        for field in ("epsilon", "epsilon_mean", "epsilon_std", "epsilon_penalty", "policy_lr", "critic_lr",
                      "dual_lr", "init_temperature", "init_alpha_mean", "init_alpha_std", "min_alpha", "min_std", "init_std",
                      "max_grad_norm", "reward_scale", "epsilon_policy"):
            value = getattr(self, field)
            need(math.isfinite(value) and value > 0.0, field, "a finite number > 0")
        need(self.init_std > self.min_std, "init_std", f"> min_std ({self.min_std})")
        need(0.0 < self.tau <= 1.0, "tau", "in (0, 1]")
        need(math.isfinite(self.alpha_gain) and self.alpha_gain >= 0.0, "alpha_gain", "a finite number >= 0")
        need(self.num_critics >= 1, "num_critics", ">= 1")
        need(self.critic_residual_blocks >= 0, "critic_residual_blocks", ">= 0 (0: the layer-norm MLP)")
        need(self.critic_residual_blocks == 0 or len(self.critic_hidden) == 1, "critic_hidden",
             "one width (e.g. 512) with critic_residual_blocks > 0: every residual block keeps it")
        need(self.critic_head in CRITIC_HEADS, "critic_head", f"one of {CRITIC_HEADS}")
        need(self.critic_bins >= 2, "critic_bins", ">= 2")
        need(math.isfinite(self.hl_gauss_sigma) and self.hl_gauss_sigma > 0.0, "hl_gauss_sigma", "a finite number > 0")
        need(self.critic_head != "hl_gauss" or self.critic_bins > 1 + 8 * self.hl_gauss_sigma, "critic_bins",
             f"> 1 + 8 * hl_gauss_sigma = {1 + 8 * self.hl_gauss_sigma:g} with critic_head hl_gauss (4σ of support "
             "beyond each value bound)")
        need(self.reward_range is None or (len(self.reward_range) == 2 and all(map(math.isfinite, self.reward_range))
                                           and self.reward_range[0] < self.reward_range[1]),
             "reward_range", "None or two finite numbers LOW < HIGH")
        need(self.critic_head != "categorical" or self.critic_pessimism == 0.0, "critic_pessimism",
             "0 with critic_head categorical (its targets mix the members' distributions)")
        need(self.critic_head == "scalar" or self.reward_range is not None, "reward_range",
             f"the env's per-step reward bounds (LOW, HIGH) with critic_head={self.critic_head!r}, which builds its "
             f"value support from them (DM Control: 0 1)")
        need(math.isfinite(self.critic_pessimism) and self.critic_pessimism >= 0.0, "critic_pessimism",
             "a finite number >= 0")
        need(self.critic_pessimism == 0.0 or self.num_critics > 1, "critic_pessimism",
             "0 with num_critics=1 (an ensemble's spread needs num_critics > 1)")
        need(math.isfinite(self.policy_lr_decay_updates) and self.policy_lr_decay_updates >= 0.0,
             "policy_lr_decay_updates", "a finite number >= 0 (0: constant learning rate)")
        need(math.isfinite(self.exploration_correlation) and 0.0 <= self.exploration_correlation < 1.0,
             "exploration_correlation", "in [0, 1)")
        need(math.isfinite(self.exploration_correlation_from_step) and self.exploration_correlation_from_step >= 0.0,
             "exploration_correlation_from_step", "a finite number of env steps >= 0")
        need(math.isfinite(self.min_action_prob) and 0.0 <= self.min_action_prob < 0.5, "min_action_prob",
             "in [0, 1/K) for K actions (0: no floor)")
        need(self.observation_torso in OBSERVATION_TORSOS, "observation_torso", f"one of {OBSERVATION_TORSOS}")
        need(self.observation_torso != "conv" or not self.observation_normalization, "observation_normalization",
             "False with observation_torso conv (its shared kernels cannot absorb per-pixel statistics)")
        need(self.target_update_period >= 0, "target_update_period", ">= 0 (0 selects Polyak averaging)")

    @property
    def steps_per_iteration(self) -> int:
        return self.num_envs * self.unroll_length

    @property
    def capacity_per_env(self) -> int:
        return self.replay_size // self.num_envs

    @property
    def prefill_iterations(self) -> int:
        """Leading iterations that only collect data (no updates)."""
        return -(-self.prefill_steps // self.steps_per_iteration)

    @property
    def iterations_per_eval(self) -> int:
        return self.total_steps // self.steps_per_iteration // self.num_evals

    @property
    def num_iterations(self) -> int:
        """Iterations in the run, prefill included."""
        return self.num_evals * self.iterations_per_eval

    @property
    def env_steps(self) -> int:
        """Env steps the run actually takes (total_steps rounded down to whole chunks)."""
        return self.num_iterations * self.steps_per_iteration

    @property
    def hparams(self) -> HParams:
        return HParams(**{name: float(getattr(self, name)) for name in HParams._fields})

    def concern(self, name: str) -> Dict[str, Any]:
        """The fields of one concern (a key of `CONCERNS`) with their values, e.g. `config.concern("replay")`."""
        if name not in CONCERNS:
            raise ValueError(f"unknown concern {name!r}: must be one of {tuple(CONCERNS)}")
        return {field: getattr(self, field) for field in CONCERNS[name]}

    def replace(self, **changes) -> "Config":
        return dataclasses.replace(self, **changes)


# Which concern each Config field belongs to, in field order: the class body is laid out in these sections,
# `purempo train --help` lists the flags in this order, and `config.concern(name)` reads one section.
CONCERNS: Dict[str, Tuple[str, ...]] = {
    "env": ("env", "backend", "impl", "episode_length", "num_envs", "reset_pool_size", "reward_scale",
            "reward_normalization", "stagger_starts", "reward_range"),
    "replay": ("replay_size", "prefill_steps", "batch_size", "sequence_length", "replay_obs_dtype"),
    "networks": ("policy_hidden", "critic_hidden", "critic_norm_all", "critic_residual_blocks", "critic_head",
                 "critic_bins", "hl_gauss_sigma", "num_critics", "init_std", "min_std",
                 "obs_norm_preserves_outputs", "observation_normalization", "observation_torso"),
    "mpo": ("discount", "retrace_lambda", "num_action_samples", "antithetic_samples", "epsilon", "epsilon_mean",
            "epsilon_std", "epsilon_penalty", "epsilon_per_dimension", "per_dim_constraining", "action_penalization",
            "epsilon_policy", "min_action_prob",
            "init_temperature", "init_alpha_mean", "init_alpha_std", "min_alpha", "alpha_gain", "normalize_penalty",
            "critic_pessimism",
            "policy_lr", "policy_lr_decay_updates",
            "critic_lr", "dual_lr", "max_grad_norm", "target_update_period", "tau"),
    "run": ("total_steps", "unroll_length", "updates_per_iteration", "exploration_correlation",
            "exploration_correlation_from_step", "num_evals", "eval_episodes"),
}
