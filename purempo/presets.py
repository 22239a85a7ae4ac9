"""Per-environment configurations that have been measured (see benchmarks/RESULTS.md).

`preset(env)` returns the tuned `Config` for `env`, or the defaults with `env` set where none is tuned yet.
"""

from __future__ import annotations

from purempo.config import Config

PRESETS = {
    # The defaults are tuned for inverted_pendulum.
    "inverted_pendulum": {},
    # CPU-sized: Brax's halfcheetah step is compute bound on a CPU, so fewer envs and a wider network.
    "halfcheetah": dict(
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
        epsilon_mean=5e-3,
        epsilon_std=1e-5,
        target_update_period=50,
        total_steps=1_000_000,
        num_evals=20,
        eval_episodes=8,
    ),
}


def preset(env: str, **overrides) -> Config:
    """The tuned config for `env` with `overrides` applied (validated)."""
    return Config(env=env, **{**PRESETS.get(env, {}), **overrides})
