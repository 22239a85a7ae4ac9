"""Presets: the CPU presets stay exactly as they were, the GPU presets stay within their stated bounds."""

from __future__ import annotations

import dataclasses

import pytest

from purempo import envs, presets
from purempo.config import Config

# A literal copy of the CPU presets as they stood before the GPU presets were added (copied, not computed):
# no CPU value may change when scale-aware presets are added.
_LOCOMOTION_BEFORE = {
    "num_envs": 64, "unroll_length": 4, "updates_per_iteration": 8, "prefill_steps": 8192, "replay_size": 1048576,
    "batch_size": 64, "sequence_length": 8, "num_action_samples": 16, "policy_hidden": (256, 256),
    "critic_hidden": (256, 256), "epsilon_mean": 0.03, "epsilon_std": 6e-05, "target_update_period": 50,
    "critic_lr": 0.0003, "discount": 0.99, "policy_lr": 0.0003, "alpha_gain": 0.0, "total_steps": 1000000,
    "num_evals": 20, "eval_episodes": 8,
}
CPU_BEFORE = {
    "inverted_pendulum": {},
    "halfcheetah": dict(_LOCOMOTION_BEFORE, critic_lr=0.001),
    "hopper": dict(_LOCOMOTION_BEFORE, critic_lr=0.001, epsilon_mean=0.015, epsilon_std=3e-05),
    "walker2d": dict(_LOCOMOTION_BEFORE, critic_lr=0.001),
    "ant": dict(_LOCOMOTION_BEFORE, total_steps=2000000),
    "humanoid": dict(_LOCOMOTION_BEFORE, num_envs=128, replay_size=2097152, num_action_samples=20,
                     policy_hidden=(256, 256, 256), critic_hidden=(512, 512, 256), total_steps=5000000),
    "reacher": dict(_LOCOMOTION_BEFORE, total_steps=500000),
    "pusher": dict(_LOCOMOTION_BEFORE, total_steps=1000000),
}
_PLAYGROUND_BEFORE = dict(
    _LOCOMOTION_BEFORE, updates_per_iteration=16, epsilon_mean=0.005, epsilon_std=1e-05, critic_lr=0.001,
    reset_pool_size=256, epsilon_per_dimension=True,
)
PLAYGROUND_BEFORE = {
    "CheetahRun": _PLAYGROUND_BEFORE,
    "WalkerWalk": dict(_PLAYGROUND_BEFORE, normalize_penalty=True, epsilon_mean=0.015),
    "CartpoleSwingup": dict(_PLAYGROUND_BEFORE, target_update_period=0),
}

BRAX_GPU = ("ant", "humanoid", "halfcheetah", "hopper", "walker2d", "reacher", "pusher", "humanoidstandup")


@pytest.mark.parametrize("env", sorted(CPU_BEFORE))
def test_cpu_presets_are_unchanged(env):
    assert presets.PRESETS[env] == CPU_BEFORE[env]
    expected = Config(env=env, **CPU_BEFORE[env])
    assert presets.preset(env) == expected
    assert presets.preset(env, scale="cpu") == expected
    assert presets.preset(env, "cpu", total_steps=123_456 * 20) == expected.replace(total_steps=123_456 * 20)


@pytest.mark.parametrize("env", sorted(PLAYGROUND_BEFORE))
def test_cpu_playground_presets_are_unchanged(env):
    assert dict(presets._PLAYGROUND, **presets.PLAYGROUND_OVERRIDES.get(env, {})) == PLAYGROUND_BEFORE[env]
    assert presets.preset(env) == Config(env=env, **PLAYGROUND_BEFORE[env])


def test_unknown_scale_is_rejected():
    with pytest.raises(ValueError, match="scale"):
        presets.preset("ant", scale="tpu")


@pytest.mark.parametrize("ratio,envs_,unroll,batch,length", [
    (8.0, 4096, 8, 4096, 8), (16.0, 2048, 8, 4096, 8), (32.0, 64, 4, 64, 8), (64.0, 1024, 1, 4096, 8),
    (8.0, 8192, 8, 4096, 8), (0.5, 256, 2, 128, 8), (3.0, 100, 3, 7, 5)])
def test_replay_ratio_helper_matches_the_closed_form(ratio, envs_, unroll, batch, length):
    updates = presets.updates_for_replay_ratio(ratio, envs_, unroll, batch, length)
    assert updates == max(1, round(ratio * envs_ * unroll / (batch * length)))
    assert presets.replay_ratio(envs_, unroll, updates, batch, length) == updates * batch * length / (envs_ * unroll)
    if (ratio * envs_ * unroll) % (batch * length) == 0:  # exact where it divides
        assert presets.replay_ratio(envs_, unroll, updates, batch, length) == ratio


def test_replay_ratio_helper_examples_and_errors():
    assert presets.updates_for_replay_ratio(64.0, 1024, 1, 4096, 8) == 2  # FastTD3: 2 updates of 32,768 per step
    assert presets.replay_ratio(64, 4, 16, 64, 8) == 32.0  # the CPU Playground preset
    assert presets.updates_for_replay_ratio(1e-6, 4096, 8, 4096, 8) == 1  # at least one update
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="replay ratio"):
            presets.updates_for_replay_ratio(bad, 64, 4, 64, 8)


def _check_gpu_bounds(config: Config):
    assert 1024 <= config.num_envs <= 8192
    assert config.batch_size >= 1024  # thousands of sequences
    assert config.batch_size * config.sequence_length >= 8192  # at least FastSAC's batch in transitions
    assert config.capacity_per_env >= 3 * envs.time_limit(config)
    assert config.replay_size == config.capacity_per_env * config.num_envs
    assert config.reset_pool_size >= config.num_envs
    assert config.eval_episodes >= 128
    assert 1 <= config.prefill_iterations <= 8
    assert config.total_steps >= 10_000_000
    assert config.target_update_period == 0 and 0.0 < config.tau <= 0.125  # Polyak (FastTD3 0.1, FastSAC 0.125)
    ratio = presets.replay_ratio(config.num_envs, config.unroll_length, config.updates_per_iteration,
                                 config.batch_size, config.sequence_length)
    assert 4.0 <= ratio <= 64.0
    # Few, large updates: at most 2 per lockstep step (FastTD3's count).
    assert config.updates_per_iteration <= 2 * config.unroll_length
    return ratio


@pytest.mark.parametrize("env", BRAX_GPU)
def test_brax_gpu_presets_are_within_bounds(env):
    cpu, gpu = presets.preset(env), presets.preset(env, scale="gpu")
    _check_gpu_bounds(gpu)
    # The per-env settings stay the CPU preset's (networks, learning rates, KL bounds, discount).
    for field in ("policy_hidden", "critic_hidden", "critic_lr", "policy_lr", "epsilon_mean", "epsilon_std",
                  "num_action_samples", "discount", "episode_length"):
        assert getattr(gpu, field) == (getattr(cpu, field) if env in presets.PRESETS
                                       else presets._LOCOMOTION.get(field, getattr(cpu, field)))
    if env in ("ant", "humanoid"):
        assert gpu.total_steps >= 50_000_000
    # Overrides still win.
    assert presets.preset(env, scale="gpu", num_envs=2048, replay_size=2048 * 4096).num_envs == 2048


def test_humanoid_gpu_replay_memory():
    config = presets.preset("humanoid", scale="gpu")
    assert config.replay_obs_dtype == "bfloat16"
    # 244-dim observations: 488 B each in bfloat16, ~567 B per transition with action, reward, flags, log-prob.
    per_transition = 244 * 2 + 17 * 4 + 4 + 1 + 1 + 4 + 1
    assert per_transition * config.replay_size < 8e9


@pytest.mark.parametrize("env", sorted(presets.CPU_ONLY))
def test_tiny_envs_keep_their_cpu_settings_at_gpu_scale(env):
    assert presets.preset(env, scale="gpu") == presets.preset(env)


def test_every_playground_gpu_preset_is_valid_and_within_bounds():
    from purempo import envs

    names = envs.playground_names()
    assert set(envs.dm_control_names()) <= set(names) and "CheetahRun" in names
    for env in names:
        config = presets.preset(env, scale="gpu")  # Config validates it
        _check_gpu_bounds(config)
        cpu = presets.preset(env)
        assert config.critic_lr == cpu.critic_lr and config.epsilon_mean == cpu.epsilon_mean
        assert config.normalize_penalty == cpu.normalize_penalty  # per-task overrides kept
        if env in envs.dm_control_names():
            assert config.discount == 0.99 and config.num_envs == 2048
        else:
            assert config.discount == 0.97  # FastTD3 and Playground's locomotion/manipulation PPO


@pytest.mark.parametrize("backend,expected", [("gpu", "gpu"), ("cuda", "gpu"), ("rocm", "gpu"), ("tpu", "gpu"),
                                              ("cpu", "cpu"), ("METAL", "cpu")])
def test_default_scale_follows_the_backend(monkeypatch, backend, expected):
    import jax

    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    assert presets.default_scale() == expected
