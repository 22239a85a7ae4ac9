"""Per-environment configurations: `preset(env)` is what `purempo train --env ENV` starts from.

Measured (docs/journal.md): `inverted_pendulum` (the `Config` defaults; its stability over 500k steps in §6),
`halfcheetah`, `hopper` and `walker2d` (the shared locomotion settings below with a 1e-3 critic learning rate,
§1 and §4) and the DM Control Suite (`_PLAYGROUND`, §7). The other locomotion and
manipulation presets use the same CPU-sized settings (critic learning rate 3e-4), with the run length and
network size scaled to the task (humanoid: 244-dim observations, 17 actions); they have not been tuned yet.
A MuJoCo Playground env gets the shared `_PLAYGROUND` settings (plus `PLAYGROUND_OVERRIDES[env]`); any other
env without a preset gets the defaults with `env` set. Every field can be overridden.

Two scales (`preset(env, scale=...)`; `default_scale()` picks "gpu" on a GPU/TPU back end, else "cpu"):

- ``"cpu"`` (the default): `PRESETS` / `_PLAYGROUND` above, 64-256 envs, sized for a CPU (the presets
  measured in docs/journal.md ran at this scale).
- ``"gpu"``: the same per-env settings (networks, learning rates, KL bounds, per-task overrides) with the
  scale fields replaced by `gpu_settings(env)` for every locomotion/Brax preset (ant, humanoid, halfcheetah,
  hopper, walker2d, reacher, pusher, and Brax envs without a preset) and every MuJoCo Playground env:
  1,024-8,192 envs, batches of thousands of sequences, `updates_per_iteration` from a target replay ratio
  (`updates_for_replay_ratio`), a replay of >= 3 episodes per env, a reset pool of num_envs starts, 128
  evaluation episodes, a prefill of a few iterations, Polyak targets and tens of millions of env steps.
  The tiny envs in `CPU_ONLY` (inverted_pendulum, inverted_double_pendulum, fast) keep their CPU settings: a
  100k-step run has nothing to gain from 4,096 envs. GPU presets are sized from published settings and
  `benchmarks/throughput.py --scale gpu` estimates; they have not been trained with yet.

Replay ratio = sampled transitions per env step = updates_per_iteration * batch_size * sequence_length /
(num_envs * unroll_length) (`replay_ratio`). CPU presets: 16 (locomotion), 32 (Playground).
"""

from __future__ import annotations

import math
from typing import Any, Dict

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


# MuJoCo Playground's envs (its DeepMind Control Suite: 1,000-step episodes, rewards in [0, 1] per step, no
# termination): the locomotion settings with the faster critic that halfcheetah, hopper and walker2d measured
# best (compared with Brax SAC and PPO under Playground's own settings in docs/journal.md §7), and:
# - restarts from a pool of 256 starts drawn once: their resets settle the physics (CheetahRun: 200 steps);
# - KL bounds per action dimension (halfcheetah's measured 5e-3 and 1e-5), so one-action CartpoleSwingup does not
#   get 6× the per-dimension step of six-action CheetahRun (816.8 at 410k env steps against 518.1 at 348k, §7);
# - 32 sampled transitions per env step, Brax SAC's ratio under Playground's settings (CheetahRun: 393.5 at 307k
#   env steps against 197.9 with 8 updates per iteration, §7).
# With alpha_gain 0 (inherited) a single update can move the mean far past ε_μ and a solved task can dip; the
# remedies measured (alpha_gain 3, policy_lr 1e-4, normalize_penalty) are not used here (docs/journal.md §7).
_PLAYGROUND: Dict[str, Any] = dict(_LOCOMOTION, critic_lr=1e-3, reset_pool_size=256,
                                   epsilon_per_dimension=True, epsilon_mean=5e-3, epsilon_std=1e-5,
                                   updates_per_iteration=16)
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


def updates_for_replay_ratio(ratio: float, num_envs: int, unroll_length: int, batch_size: int,
                             sequence_length: int) -> int:
    """The updates per iteration (>= 1) whose `replay_ratio` is nearest `ratio` (exact where it divides)."""
    if not (math.isfinite(ratio) and ratio > 0):
        raise ValueError(f"invalid replay ratio {ratio!r}: must be a finite number > 0")
    return max(1, round(ratio * num_envs * unroll_length / (batch_size * sequence_length)))


def _gpu(num_envs: int, unroll_length: int, batch_size: int, ratio: float, total_steps: int,
         episode_length: int = 1000, episodes_in_replay: int = 3, prefill_iterations: int = 4,
         sequence_length: int = 8, **extra) -> Dict[str, Any]:
    """The scale fields of a GPU preset: `ratio` sampled transitions per env step in updates of `batch_size`
    sequences, a replay of `episodes_in_replay` episodes per env (rounded up to a multiple of 1,024 steps), a
    reset pool of num_envs starts, a prefill of `prefill_iterations` iterations and Polyak targets."""
    steps_per_env = -(-episodes_in_replay * episode_length // 1024) * 1024
    return dict(
        num_envs=num_envs, unroll_length=unroll_length, batch_size=batch_size, sequence_length=sequence_length,
        updates_per_iteration=updates_for_replay_ratio(ratio, num_envs, unroll_length, batch_size, sequence_length),
        replay_size=steps_per_env * num_envs, reset_pool_size=num_envs,
        prefill_steps=prefill_iterations * num_envs * unroll_length, eval_episodes=128, num_evals=20,
        total_steps=total_steps, target_update_period=0, tau=0.1, **extra)


# GPU scale. Published settings these follow:
# - FastTD3 on Playground (Seo et al. 2025, arXiv 2505.22642): 1,024 envs, batches of 32,768 transitions,
#   2 updates per lockstep step (64 sampled transitions per env step), 10,240 replay steps per env, γ 0.97, τ 0.1.
# - FastSAC (Seo et al. 2025, FastTD3's authors' SAC): batches of 8,192 transitions, 8 updates per step, τ 0.125.
# - Playground's Brax configs (`mujoco_playground.config`): DM Control PPO 2,048 envs, γ 0.995; DM Control SAC
#   128 envs, batch 512, 8 updates per step (32 sampled transitions per env step), γ 0.99, 4M replay; locomotion
#   and manipulation PPO 1,024-8,192 envs, γ 0.97.
# Every GPU preset: batches of 4,096 sequences × 8 steps = 32,768 transitions (FastTD3's batch); an unroll of 8
# steps per iteration; Polyak targets with FastTD3's τ 0.1 (a hard copy every 50 updates would be 50 × 32k env
# steps apart); 3 episodes of replay per env (about FastTD3's 10-12M transitions in all); 128 evaluation episodes.
# Replay ratios stay far below FastTD3's 64 so that training keeps up with >= 0.5× the simulation rate on one
# H100 (`benchmarks/throughput.py --scale gpu`): few, large updates keep the GPU busy, many small sequential ones
# idle it. These sizes trade sample efficiency for wall time and have not been trained with yet
# (docs/journal.md §7, §8).
_GPU_BATCH = 4096
# Brax locomotion (generalized physics): replay ratio 8, one update of 32,768 transitions per lockstep step of
# 4,096 envs; training estimated at 0.94× ant's simulation rate (a lower bound: Brax PPO's training rate;
# docs/journal.md §8).
_GPU_LOCOMOTION = dict(num_envs=4096, unroll_length=8, batch_size=_GPU_BATCH, ratio=8.0)
GPU_TOTAL_STEPS: Dict[str, int] = {
    "ant": 50_000_000, "humanoid": 100_000_000, "halfcheetah": 20_000_000, "hopper": 20_000_000,
    "walker2d": 20_000_000, "reacher": 10_000_000, "pusher": 20_000_000,
}
# humanoid: replay observations in bfloat16, 7.1 GB for its 12.6M transitions against 13.3 GB in float32; at
# ratio 8 training is estimated at >= 0.5× MJX's documented 190k humanoid env steps/s on an A100
# (docs/journal.md §8).
_GPU_HUMANOID = dict(_GPU_LOCOMOTION, replay_obs_dtype="bfloat16")
# DM Control Suite (Playground): Playground's DM Control PPO env count (2,048) and ratio 16, half the CPU
# preset's 32, at which the learner would take as long as the simulation (>= 435k CheetahRun env steps/s on an
# A100, Brax PPO's training rate in Playground's paper); at 16 the estimate is 0.67× (docs/journal.md §8).
_GPU_DM_CONTROL = dict(num_envs=2048, unroll_length=8, batch_size=_GPU_BATCH, ratio=16.0, total_steps=20_000_000)
# Playground locomotion and manipulation: 8,192 envs (Playground's locomotion PPO), γ 0.97 (FastTD3 and
# Playground's PPO configs for both families), ratio 8, 50M env steps (Playground's PPO uses 100-200M).
_GPU_PLAYGROUND_ROBOTS = dict(num_envs=8192, unroll_length=8, batch_size=_GPU_BATCH, ratio=8.0,
                              total_steps=50_000_000, discount=0.97)


def gpu_settings(env: str) -> Dict[str, Any]:
    """The fields `preset(env, scale="gpu")` replaces in env's CPU preset (see the comments above)."""
    if env == "humanoid":
        return _gpu(total_steps=GPU_TOTAL_STEPS[env], **_GPU_HUMANOID)
    if env in PRESETS or not _is_playground(env):
        return _gpu(total_steps=GPU_TOTAL_STEPS.get(env, 20_000_000), **_GPU_LOCOMOTION)
    from purempo import envs

    scale = _GPU_DM_CONTROL if env in envs.dm_control_names() else _GPU_PLAYGROUND_ROBOTS
    return _gpu(episode_length=envs.episode_length(env), **scale)


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
    else:
        base = {}
    if scale == "gpu" and env not in CPU_ONLY:
        if not base:  # a Brax env without a preset: the locomotion settings
            base = _LOCOMOTION
        base = dict(base, **gpu_settings(env))
    return Config(env=env, **{**base, **overrides})


def _is_playground(env: str) -> bool:
    """Whether `env` names a MuJoCo Playground env (imports Playground: seconds, so only for names outside PRESETS)."""
    from purempo import envs

    try:
        return envs.family(env) == envs.PLAYGROUND
    except ValueError:  # unknown: the trainer reports it with both families' names
        return False
