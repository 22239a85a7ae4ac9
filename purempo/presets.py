"""Per-environment configurations: `preset(env)` is what `purempo train --env ENV` starts from.

Measured (docs/journal.md): `inverted_pendulum` (the `Config` defaults; its stability over 500k steps in §6),
`halfcheetah`, `hopper` and `walker2d` (the shared locomotion settings below with a 1e-3 critic learning rate,
§1 and §4) and the DM Control Suite (`_PLAYGROUND`, §7). The other locomotion and
manipulation presets use the same CPU-sized settings (critic learning rate 3e-4), with the run length and
network size scaled to the task (humanoid: 244-dim observations, 17 actions); they have not been tuned yet.
gymnax's discrete-action envs (§16): CartPole-v1, Acrobot-v1 and four MinAtar games measured; MountainCar-v0 and
Seaquest-MinAtar share their family's settings untested.
A MuJoCo Playground env gets the shared `_PLAYGROUND` settings (plus `PLAYGROUND_OVERRIDES[env]`); any other
env without a preset gets the defaults with `env` set. Every field can be overridden.

Two scales (`preset(env, scale=...)`; `resolve_scale` says what `purempo train --scale auto` picks):

- ``"cpu"`` (the default): `PRESETS` / `_PLAYGROUND` above, 64-256 envs, sized for a CPU (the presets
  measured in docs/journal.md ran at this scale).
- ``"gpu"``: the same per-env settings (networks, per-task overrides, and every per-update setting: learning
  rates, KL bounds, target period) with the scale fields replaced by `gpu_settings(env)` for every locomotion/Brax
  preset and every MuJoCo Playground env: 1,024 envs, batches of 256 sequences (4x the CPU's), as many updates
  per env step as the CPU preset, a replay of 4 episodes per env (docs/journal.md §12). The tiny envs in
  `CPU_ONLY` keep their CPU settings. `GPU_CURVES` names the GPU presets trained at their own sizes and
  `MEASURED_GPU` those whose curve holds up against the CPU preset's; `--scale auto` on an accelerator uses only
  those.

Replay ratio = sampled transitions per env step = updates_per_iteration * batch_size * sequence_length /
(num_envs * unroll_length) (`replay_ratio`). CPU presets: 16 (locomotion), 32 (Playground).
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

from purempo.config import Config

# Brax's generalized-backend locomotion step is compute bound on a CPU: fewer envs, wider networks, and
# tighter per-update KL bounds than inverted_pendulum's, since a (256, 256) policy moves more per step.
_LOCOMOTION: Dict[str, Any] = dict(
    num_envs=64,
    unroll_length=4,
    updates_per_iteration=8,
    prefill_steps=8192,
    replay_size=1_048_576,
    batch_size=64,
    sequence_length=8,
    num_action_samples=16,
    policy_hidden=(256, 256),
    critic_hidden=(256, 256),
    # KL bounds summed over action dimensions: halfcheetah's measured 5e-3 and 1e-5 per dimension × 6.
    epsilon_mean=3e-2,
    epsilon_std=6e-5,
    target_update_period=50,
    critic_lr=3e-4,
    # Measured with these (inverted_pendulum's defaults differ: discount 0.999, policy lr 6e-4, alpha_gain 1).
    discount=0.99,
    policy_lr=3e-4,
    alpha_gain=0.0,
    total_steps=1_000_000,
    num_evals=20,
    eval_episodes=8,
)

PRESETS: Dict[str, Dict[str, Any]] = {
    "inverted_pendulum": {},  # the defaults are tuned for it
    # A faster critic: 9,040 at 998k steps in 859 s against 4,814 at 849k with 3e-4 (docs/journal.md §1).
    "halfcheetah": dict(_LOCOMOTION, critic_lr=1e-3),
    # A faster critic: 2,874 at 649k steps against 972 at 599k with 3e-4 (docs/journal.md §4).
    "hopper": dict(_LOCOMOTION, critic_lr=1e-3, epsilon_mean=1.5e-2, epsilon_std=3e-5),  # its 3 dims, as measured
    # Same change for walker2d: 1,055 at 499k steps against 381 with 3e-4 (one seed each, docs/journal.md §4).
    "walker2d": dict(_LOCOMOTION, critic_lr=1e-3),
    "ant": dict(_LOCOMOTION, total_steps=2_000_000),
    "humanoid": dict(_LOCOMOTION, num_envs=128, policy_hidden=(256, 256, 256), critic_hidden=(512, 512, 256),
                     num_action_samples=20, total_steps=5_000_000, replay_size=2_097_152),
    "reacher": dict(_LOCOMOTION, total_steps=500_000),
    "pusher": dict(_LOCOMOTION, total_steps=1_000_000),
}

# gymnax's discrete-action envs (categorical MPO, `purempo.discrete`): classic control with 16 envs and 4 updates of
# 64 sequences per 64 env steps; MinAtar with 64 envs, its 0/1 image observations flattened unnormalised into one
# hidden layer of 256 (on a CPU 5x the conv torso's env steps/s), a replay of 4 episodes per env. CartPole: γ 0.999
# and ε_policy 3e-3, whose dips after reaching 500 were the shallowest (≥ 448, 4 seeds; ε 1e-2: to 133).
_GYMNAX_CLASSIC: Dict[str, Any] = dict(
    num_envs=16, unroll_length=4, updates_per_iteration=4, prefill_steps=1024, replay_size=65_536, batch_size=64,
    sequence_length=8, reset_pool_size=256, policy_hidden=(64, 64), critic_hidden=(64, 64), discount=0.99,
    critic_lr=1e-3, policy_lr=3e-4, target_update_period=50, epsilon_policy=1e-2, num_evals=20, eval_episodes=8)
_MINATAR: Dict[str, Any] = dict(
    num_envs=64, unroll_length=4, updates_per_iteration=4, prefill_steps=4096, replay_size=262_144, batch_size=64,
    sequence_length=8, reset_pool_size=256, policy_hidden=(256,), critic_hidden=(256,), discount=0.99,
    critic_lr=3e-4, policy_lr=3e-4, target_update_period=50, epsilon_policy=1e-2, observation_normalization=False,
    replay_obs_dtype="bfloat16", total_steps=10_000_000, num_evals=50, eval_episodes=16)
PRESETS.update({
    "CartPole-v1": dict(_GYMNAX_CLASSIC, discount=0.999, epsilon_policy=3e-3, total_steps=300_000),
    "Acrobot-v1": dict(_GYMNAX_CLASSIC, total_steps=500_000),
    "MountainCar-v0": dict(_GYMNAX_CLASSIC, total_steps=500_000),
    **{f"{game}-MinAtar": dict(_MINATAR) for game in ("Asterix", "Breakout", "Freeway", "SpaceInvaders", "Seaquest")},
})


# MuJoCo Playground's envs (its DeepMind Control Suite: 1,000-step episodes, rewards in [0, 1] per step, no
# termination): the locomotion settings with the faster critic that halfcheetah, hopper and walker2d measured
# best (compared with Brax SAC and PPO under Playground's own settings in docs/journal.md §7), and:
# - restarts from a pool of 256 starts drawn once: their resets settle the physics (CheetahRun: 200 steps);
# - KL bounds per action dimension (halfcheetah's measured 5e-3 and 1e-5), so one-action CartpoleSwingup does not
#   get 6× the per-dimension step of six-action CheetahRun (816.8 at 410k env steps against 518.1 at 348k, §7);
# - 32 sampled transitions per env step, Brax SAC's ratio under Playground's settings (CheetahRun: 393.5 at 307k
#   env steps against 197.9 with 8 updates per iteration, §7).
# - 8 action samples in mirrored pairs: updates 1.4x faster than 16 independent ones, return per env step as
#   good (CheetahRun and WalkerWalk, 2 seeds x 500k, docs/journal.md §11).
# With alpha_gain 0 (inherited) a single update can move the mean far past ε_μ and a solved task can dip; the
# remedies measured (alpha_gain 3, policy_lr 1e-4, normalize_penalty) are not used here (docs/journal.md §7).
_PLAYGROUND: Dict[str, Any] = dict(_LOCOMOTION, critic_lr=1e-3, reset_pool_size=256,
                                   epsilon_per_dimension=True, epsilon_mean=5e-3, epsilon_std=1e-5,
                                   updates_per_iteration=16, num_action_samples=8, antithetic_samples=True)
# WalkerWalk: normalize_penalty with a 3x looser ε_μ holds the trust region, and no episode falls once it walks
# (964.1 and 915.9 at 1M env steps against the shared preset's 849.3); CheetahRun trails with them
# (docs/journal.md §7).
# CartpoleSwingup: Polyak-averaged targets (τ 0.005, Brax SAC's) instead of a hard copy every 50 updates, whose KL
# spikes came right before its falls; with them none of 5 seeds fell once swung up (docs/journal.md §7).
PLAYGROUND_OVERRIDES: Dict[str, Dict[str, Any]] = {
    "WalkerWalk": dict(normalize_penalty=True, epsilon_mean=1.5e-2),
    "CartpoleSwingup": dict(target_update_period=0),
}


SCALES = ("cpu", "gpu")

# Tiny tasks whose whole run is 100k env steps: they keep their CPU settings at scale "gpu".
CPU_ONLY = frozenset({"inverted_pendulum", "inverted_double_pendulum", "fast"})


def default_scale() -> str:
    """"gpu" when JAX's default back end is an accelerator (gpu, cuda, rocm, tpu), else "cpu"."""
    import jax

    return "gpu" if jax.default_backend().lower() in ("gpu", "cuda", "rocm", "tpu") else "cpu"


def replay_ratio(num_envs: int, unroll_length: int, updates_per_iteration: int, batch_size: int,
                 sequence_length: int) -> float:
    """Sampled transitions per env step: updates_per_iteration·batch_size·sequence_length / (num_envs·unroll_length)."""
    return updates_per_iteration * batch_size * sequence_length / (num_envs * unroll_length)


def env_steps_per_update(config: Config) -> float:
    """Env steps one SGD update stands for: num_envs · unroll_length / updates_per_iteration."""
    return config.num_envs * config.unroll_length / config.updates_per_iteration


def target_lag_env_steps(config: Config) -> float:
    """How far behind the online networks the targets are, in env steps: a hard copy every period updates lags
    them by the period; Polyak averaging with τ by about 1/τ updates."""
    updates = config.target_update_period if config.target_update_period > 0 else 1.0 / config.tau
    return updates * env_steps_per_update(config)


def _gpu(cpu: Config, num_envs: int = 1024, unroll_length: int = 4, batch_size: int = 256,
         sequence_length: int = 8, total_steps: int = 10_000_000, episodes_in_replay: int = 4,
         prefill_steps_per_env: int = 32, **extra) -> Dict[str, Any]:
    """The fields of a GPU preset built from the CPU preset `cpu`: `num_envs` envs and updates of `batch_size`
    sequences, one update per as many env steps as the CPU preset's, so its learning rates, KL bounds and target
    period stay as they are (each counted per update)."""
    per_update = env_steps_per_update(cpu)
    updates = num_envs * unroll_length / per_update
    if updates != int(updates):
        raise ValueError(f"invalid GPU sizes: {num_envs} envs x {unroll_length} steps do not split into updates "
                         f"of {per_update:g} env steps")
    from purempo import envs

    steps_per_env = -(-episodes_in_replay * envs.time_limit(cpu) // 1024) * 1024
    prefill_steps = -(-prefill_steps_per_env // unroll_length) * unroll_length * num_envs
    return dict(
        num_envs=num_envs, unroll_length=unroll_length, batch_size=batch_size, sequence_length=sequence_length,
        updates_per_iteration=int(updates), replay_size=steps_per_env * num_envs, reset_pool_size=num_envs,
        prefill_steps=prefill_steps, eval_episodes=128, num_evals=20, total_steps=total_steps, **extra)


# GPU scale (docs/journal.md §12): 1,024 envs and 4x the CPU batch, at the CPU preset's updates per env step (one
# per 16 env steps in the Playground CPU preset, 32 in the locomotion one, 64 in humanoid's). Fewer updates per
# env step, each allowed to move further, learned less per env step (one per 64: CheetahRun 153.2 / 112.2 at
# 246k against 324.1 / 282.3; §9); on a GPU an update's time barely depends on its batch.
GPU_TOTAL_STEPS: Dict[str, int] = {
    "ant": 50_000_000, "humanoid": 50_000_000, "halfcheetah": 10_000_000, "hopper": 10_000_000,
    "walker2d": 10_000_000, "reacher": 5_000_000, "pusher": 10_000_000,
}
# Playground locomotion and manipulation: γ 0.97 (FastTD3 and Playground's PPO configs for both families).
_GPU_PLAYGROUND_ROBOTS = dict(total_steps=50_000_000, discount=0.97)

# GPU presets trained at their own sizes (on a CPU, 2 seeds; docs/journal.md §12): env -> (that run's results file,
# the CPU preset's run over the same env steps it is held against), in benchmarks/results.
GPU_CURVES: Dict[str, Tuple[str, str]] = {
    "CheetahRun": ("stability_CheetahRun_gpu_u16_b256", "stability_CheetahRun_antithetic8_500k"),
}
HOLDS_UP = 0.85
"""A GPU curve holds up when, at every evaluation both runs share from 40% of the GPU run's env steps on, its
mean over seeds is at least this fraction of the CPU preset's."""
# The GPU presets whose curve holds up; `--scale auto` selects only these.
MEASURED_GPU: frozenset = frozenset()


def resolve_scale(env: str, scale: str) -> Tuple[str, Optional[str]]:
    """(the scale `preset` gets for `purempo train --env ENV --scale SCALE`, a one-line note or None).

    "auto" is "gpu" on an accelerator (`default_scale`) only for an env in `MEASURED_GPU`; any other env keeps
    its CPU preset's sizes there, and the note says what its GPU preset would change and that it is untested."""
    if scale not in ("auto",) + SCALES:
        raise ValueError(f"invalid scale={scale!r}: must be auto, cpu or gpu")
    if scale != "auto":
        return scale, None
    if default_scale() == "cpu" or env in CPU_ONLY:
        return "cpu", None
    if env in MEASURED_GPU:
        return "gpu", None
    cpu, gpu = preset(env), preset(env, scale="gpu")
    changes = ", ".join(f"{name} {getattr(cpu, name):,} -> {getattr(gpu, name):,}" for name in
                        ("num_envs", "batch_size", "updates_per_iteration", "target_update_period", "policy_lr",
                         "epsilon_mean")
                        if getattr(cpu, name) != getattr(gpu, name))
    return "cpu", (f"{env}'s GPU preset ({changes}) has no committed learning curve, so --scale auto trains with "
                   f"its CPU preset sizes; --scale gpu uses it (untested)")


def gpu_settings(env: str, cpu: Optional[Config] = None) -> Dict[str, Any]:
    """The fields `preset(env, scale="gpu")` replaces in env's CPU preset `cpu` (default: `preset(env)`)."""
    cpu = preset(env) if cpu is None else cpu
    if env in PRESETS or not _is_playground(env):
        return _gpu(cpu, total_steps=GPU_TOTAL_STEPS.get(env, 10_000_000))
    from purempo import envs

    extra = {} if env in envs.dm_control_names() else _GPU_PLAYGROUND_ROBOTS
    return _gpu(cpu.replace(episode_length=envs.episode_length(env)), **extra)


def preset(env: str, scale: str = "cpu", **overrides) -> Config:
    """The preset config for `env` at `scale` ("cpu" or "gpu", see the module docstring) with `overrides`
    applied (validated): `PRESETS[env]`, else the shared Playground settings for a MuJoCo Playground env, else
    the defaults; at scale "gpu" the scale fields are then replaced by `gpu_settings(env)`."""
    if scale not in SCALES:
        raise ValueError(f"invalid scale={scale!r}: must be one of {SCALES}")
    if env in PRESETS:
        base = PRESETS[env]
    elif _is_playground(env):
        base = dict(_PLAYGROUND, **PLAYGROUND_OVERRIDES.get(env, {}))
        from purempo import envs

        if env in envs.dm_control_names():  # every DM Control task's reward is a tolerance product in [0, 1]
            base["reward_range"] = (0.0, 1.0)
    else:
        base = {}
    if scale == "gpu" and env not in CPU_ONLY:
        if not base:  # a Brax env without a preset: the locomotion settings
            base = _LOCOMOTION
        base = dict(base, **gpu_settings(env, Config(env=env, **base)))
    return Config(env=env, **{**base, **overrides})


def _is_playground(env: str) -> bool:
    """Whether `env` names a MuJoCo Playground env (imports Playground: seconds, so only for names outside PRESETS)."""
    from purempo import envs

    try:
        return envs.family(env) == envs.PLAYGROUND
    except ValueError:  # unknown: the trainer reports it with both families' names
        return False
