"""Per-environment configurations: `preset(env)` is what `purempo train --env ENV` starts from.

Measured (benchmarks/RESULTS.md): `inverted_pendulum` (the `Config` defaults; its stability over 500k steps
in §6), and `halfcheetah`, `hopper` and
`walker2d` (the shared locomotion settings below with a 1e-3 critic learning rate). The other locomotion and
manipulation presets use the same CPU-sized settings (critic learning rate 3e-4), with the run length and
network size scaled to the task (humanoid: 244-dim observations, 17 actions); they have not been tuned yet.
A MuJoCo Playground env gets the shared `_PLAYGROUND` settings (plus `PLAYGROUND_OVERRIDES[env]`); any other
env without a preset gets the defaults with `env` set. Every field can be overridden.

Two scales (`preset(env, scale=...)`; `default_scale()` picks "gpu" on a GPU/TPU back end, else "cpu"):

- ``"cpu"`` (the default): `PRESETS` / `_PLAYGROUND` above, 64-256 envs, sized for a CPU (all measured
  results in RESULTS.md are at this scale).
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
    # A faster critic: 9,040 at 998k steps in 859 s against 4,814 at 849k with 3e-4 (RESULTS.md §1).
    "halfcheetah": dict(_LOCOMOTION, critic_lr=1e-3),
    # A faster critic: 2,874 at 649k steps against 972 at 599k with 3e-4 (benchmarks/RESULTS.md §4).
    "hopper": dict(_LOCOMOTION, critic_lr=1e-3, epsilon_mean=1.5e-2, epsilon_std=3e-5),  # its 3 dims, as measured
    # Same change for walker2d: 1,055 at 499k steps against 381 with 3e-4 (one seed each, RESULTS.md §4).
    "walker2d": dict(_LOCOMOTION, critic_lr=1e-3),
    "ant": dict(_LOCOMOTION, total_steps=2_000_000),
    "humanoid": dict(_LOCOMOTION, num_envs=128, policy_hidden=(256, 256, 256), critic_hidden=(512, 512, 256),
                     num_action_samples=20, total_steps=5_000_000, replay_size=2_097_152),
    "reacher": dict(_LOCOMOTION, total_steps=500_000),
    "pusher": dict(_LOCOMOTION, total_steps=1_000_000),
}


# MuJoCo Playground's envs (its DeepMind Control Suite: 1,000-step episodes, rewards in [0, 1] per step, no
# termination): the locomotion settings with the faster critic that halfcheetah, hopper and walker2d measured
# best, KL bounds per action dimension and twice the updates per env step (below). Measured against Brax SAC and
# PPO with Playground's own settings in RESULTS.md §7, where SAC is still ahead on CheetahRun and WalkerWalk.
# `PLAYGROUND_OVERRIDES` holds per-task changes. At 1M env steps on CheetahRun it is level with SAC (2 seeds).
# Not yet stable: with alpha_gain 0 (inherited) its KL multipliers fall to min_alpha while a bound is slack and
# then let a single update move the mean 25-63x past ε_μ (CartpoleSwingup seed 1 fell from 795 to 386).
# alpha_gain 3 stops that wind-up (α_μ ≤ 55) but not the violations (7-69x ε_μ), and CartpoleSwingup (seed 2),
# FingerSpin and CheetahRun still dip with it (RESULTS.md §7), so it is not used here. The violations follow
# the policy's step size: policy_lr 1e-4 holds every update within 4.5x ε_μ, but CartpoleSwingup still dipped
# (580 -> 337) without a violation and CheetahRun learned more slowly (2 seeds each), so 3e-4 stays.
# normalize_penalty holds the bound on all four tasks (KL_μ ≤ 8.2x, α_μ at its floor) and gives 957.9 on WalkerWalk
# and 562.0 on FingerSpin at 1M env steps (the preset: 849.3, 501.0), but CheetahRun 509.2 / 613.3 (618.3 / 671.1,
# 2 seeds; 581.2 with a 3x looser ε_μ) and CartpoleSwingup as many dips (RESULTS.md §7), so it is not used here.
# Their resets settle the physics (CheetahRun: 200 steps per reset), so restarts come from a pool of 256 starts
# drawn once (about 50k physics steps at initialisation) rather than from fresh resets.
# KL bounds per action dimension (halfcheetah's measured 5e-3 and 1e-5), so one-action CartpoleSwingup does not
# get 6× the per-dimension step of six-action CheetahRun: 816.8 at 410k env steps against 518.1 at 348k with the
# summed bound (one seed each, RESULTS.md §7).
# Twice the locomotion updates per env step: 32 sampled transitions per env step, Brax SAC's ratio under
# Playground's settings (8 updates × 512 per 128 env steps). CheetahRun: 393.5 at 307k env steps against 197.9
# with 8 updates per iteration, and 356 against 259 after ~600 s of training on one core (RESULTS.md §7).
_PLAYGROUND: Dict[str, Any] = dict(_LOCOMOTION, critic_lr=1e-3, episode_length=1000, reset_pool_size=256,
                                   epsilon_per_dimension=True, epsilon_mean=5e-3, epsilon_std=1e-5,
                                   updates_per_iteration=16)
# WalkerWalk: normalize_penalty with a 3x looser ε_μ. The shared preset walks by 737k env steps but keeps
# dropping single episodes (a fall in 7 evaluations after 300k, one at 1M: 849.3); with these two settings the
# bound holds (KL_μ ≤ 0.52x over the whole run) and no episode falls once it walks: 964.1 and 915.9 at 1M on
# seeds 0 and 1 (SAC 974.8 / 969.5; RESULTS.md §7). CheetahRun trails the shared preset with them (2 seeds), so they stay per task.
# It walks sooner with an E-step ε of 0.3 (800 at 532k) or 32 updates per iteration (451k; 1.9x the cost per env
# step), but ends no higher (942.9, 959.0; one seed each, session 11), so neither is used.
# So does policy_lr 1e-3 (532k / 655k; 961.8 / 946.3 at 1M, 2 seeds), but it moves the mean up to 7.3x the bound
# and drops single episodes again; a critic layer-normed on every layer learned no sooner (session 12). Without
# the action penalty it walks at 532k / 655k but ends at 965.1 / 718.6, a single episode falling (session 13).
# The gap to SAC at 1M is the policy's, not the critic's (benchmarks/final_policies.py, 64 shared starts: 949.9
# against 969.2): 80% of it is getting up, and under purempo's own σ ≈ 0.5 SAC's gait is no better (session 14).
# CartpoleSwingup: Polyak-averaged targets (τ 0.005, Brax SAC's) instead of a hard copy every 50 updates. With the
# copies, chunks whose largest per-update KL_μ reached 136-202x ε_μ, with α_μ swinging to 10⁴-10⁵, came right
# before its falls (857 -> 425 at 573k, 854 -> 509 at 1M on seed 0; raw rewards instead of the normalised ones
# fell the same way at 532k). With Polyak targets the applied α_μ stays ≤ 0.08 after 330k, and 3 seeds never
# fall once they swing up (≥ 826 from 330-370k to 860k / 860k / 492k; RESULTS.md §7, session 9); to 1M, 2 more
# seeds end at 863.7 and 856.1 (SAC 845.6), never below 817.9 after first reaching 800 (session 10).
# On CheetahRun and WalkerWalk Polyak targets hold the bound too but learn no faster (584.6 at 1M against the
# preset's 618.3 / 671.1; 961.4 against 964.1; one seed each, session 10), so they stay CartpoleSwingup's.
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
# Every GPU preset: batches of 4,096 sequences × 8 steps = 32,768 transitions (FastTD3's batch), so one update
# per lockstep step of 4,096 envs is 8 sampled transitions per env step; an unroll of 8 steps per iteration;
# Polyak targets with FastTD3's τ 0.1 (a hard copy every 50 updates would be 50 × 32k env steps apart at these
# sizes); 3 episodes of replay per env (3,072 steps: FastTD3 keeps 10,240 per env at 1,024 envs, about the same
# 10-12M transitions in all); 128 evaluation episodes. Replay ratios are far below FastTD3's 64 because the
# issue's target is training at >= 0.5× the simulation rate on one H100 (`benchmarks/throughput.py --scale
# gpu`, roofline estimates at the FP32 peak): few, large updates keep the GPU busy, many small sequential ones
# idle it. On one H200, CheetahRun with 1,024 envs, batches of 1,024 sequences and 32 sampled transitions per
# env step trained at 86.9k env steps/s per seed but learnt more slowly per env step than the CPU preset
# (RESULTS.md §7, session 8): these sizes trade sample efficiency for wall time and have not been trained yet.
_GPU_BATCH = 4096
# Brax locomotion (generalized physics). Replay ratio 8: one update of 32,768 transitions per lockstep step of
# 4,096 envs. No published simulation rate fits Brax's generalized ant, and against the roofline of its bare step
# (18.0M env steps/s, an over-estimate: XLA's cost analysis counts each of the step's 6 while-loop bodies once,
# Brax's 5 physics steps per env step among them) the estimate is 0.085× (1.54M env steps/s;
# benchmarks/results/throughput_ant_gpu_estimate.json); meeting 0.5× against that ceiling would take under one
# sampled transition per env step, so ratio 8 is kept. The same roofline over-states CheetahRun's published
# simulation rate 50×; with ant's ceiling scaled down alike (~360k env steps/s) the estimate is ~0.8×.
_GPU_LOCOMOTION = dict(num_envs=4096, unroll_length=8, batch_size=_GPU_BATCH, ratio=8.0)
GPU_TOTAL_STEPS: Dict[str, int] = {
    "ant": 50_000_000, "humanoid": 100_000_000, "halfcheetah": 20_000_000, "hopper": 20_000_000,
    "walker2d": 20_000_000, "reacher": 10_000_000, "pusher": 20_000_000,
}
# humanoid: 244-dim observations and wider networks (27 MFLOP per sampled transition against ant's 3.9, XLA's
# count). Simulation: MJX's documentation gives 950k physics steps/s for one humanoid on an A100 at a batch of
# 8,192, i.e. 190k env steps/s at Brax humanoid's 5 physics steps per env step; at ratio 8 the estimate is
# >= 0.5× that (throughput_humanoid_gpu_estimate.json). Replay observations in bfloat16: 3,072 steps × 4,096 envs
# = 12.6M transitions at ~567 B each (244 × 2 B observation, 17 × 4 B action, reward, flags, behaviour log-prob)
# is 7.1 GB, against 13.3 GB in float32 (1,055 B each); throughput.py prints the exact figure.
_GPU_HUMANOID = dict(_GPU_LOCOMOTION, replay_obs_dtype="bfloat16")
# DM Control Suite (Playground): Playground's DM Control PPO env count (2,048) and ratio 16, half the CPU
# preset's 32 (Brax SAC's): 8 updates of 32,768 transitions per 8-step unroll of 2,048 envs, one update per
# lockstep step. Simulation rate: Playground's Table IV reports Brax PPO training CheetahRun at 435,162 env
# steps/s on one A100 (its learning included, so the simulation is at least that fast); at ratio 32 the learner
# would take as long as that simulation (estimate ~0.5×), at 16 the estimate is above 0.5×
# (benchmarks/results/throughput_CheetahRun_gpu_estimate.json).
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

    if env in envs.dm_control_names():
        return _gpu(**_GPU_DM_CONTROL)
    return _gpu(**_GPU_PLAYGROUND_ROBOTS)


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
