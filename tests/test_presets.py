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
# The one deliberate change since: 8 mirrored action samples instead of 16 independent ones (docs/journal.md §11).
_PLAYGROUND_BEFORE = dict(
    _LOCOMOTION_BEFORE, updates_per_iteration=16, epsilon_mean=0.005, epsilon_std=1e-05, critic_lr=0.001,
    reset_pool_size=256, epsilon_per_dimension=True, num_action_samples=8, antithetic_samples=True,
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
    # DM Control rewards are tolerance products in [0, 1]: an hl_gauss critic's support comes from these bounds.
    assert presets.preset(env) == Config(env=env, **PLAYGROUND_BEFORE[env], reward_range=(0.0, 1.0))


def test_only_dm_control_presets_state_reward_bounds():
    assert presets.preset("halfcheetah").reward_range is None and presets.preset("inverted_pendulum").reward_range is None
    assert presets.preset("CheetahRun", scale="gpu").reward_range == (0.0, 1.0)
    assert presets.preset("CheetahRun", critic_head="hl_gauss").critic_head == "hl_gauss"


def test_unknown_scale_is_rejected():
    with pytest.raises(ValueError, match="scale"):
        presets.preset("ant", scale="tpu")


def test_replay_ratio_matches_a_count_of_sampled_transitions():
    assert presets.replay_ratio(64, 4, 16, 64, 8) == 32.0  # the CPU Playground preset: 16 x 64 x 8 per 256 steps
    assert presets.replay_ratio(1024, 1, 2, 4096, 8) == 64.0  # FastTD3: 2 updates of 32,768 per step of 1,024


def _check_gpu_shape(gpu: Config, cpu: Config):
    """A GPU preset: 1,024 envs, batches of 256 sequences, the CPU preset's env steps per update (so 4-8x its
    sampled transitions per env step), and its per-update learning rates, KL bounds and target period."""
    assert gpu.num_envs == 1024 and gpu.batch_size == 4 * cpu.batch_size == 256
    per_update = cpu.num_envs * cpu.unroll_length / cpu.updates_per_iteration  # a naive count: 16, 32 or 64
    assert gpu.num_envs * gpu.unroll_length / gpu.updates_per_iteration == per_update
    assert presets.env_steps_per_update(gpu) == presets.env_steps_per_update(cpu) == per_update
    assert presets.replay_ratio(gpu.num_envs, gpu.unroll_length, gpu.updates_per_iteration, gpu.batch_size,
                                gpu.sequence_length) == 4 * presets.replay_ratio(
        cpu.num_envs, cpu.unroll_length, cpu.updates_per_iteration, cpu.batch_size, cpu.sequence_length)
    for field in ("policy_lr", "critic_lr", "dual_lr", "epsilon_mean", "epsilon_std", "epsilon_per_dimension",
                  "target_update_period", "tau", "num_action_samples", "antithetic_samples"):
        assert getattr(gpu, field) == getattr(cpu, field), field
    assert presets.target_lag_env_steps(gpu) == presets.target_lag_env_steps(cpu)
    assert gpu.capacity_per_env >= 3 * envs.time_limit(gpu)
    assert gpu.replay_size == gpu.capacity_per_env * gpu.num_envs
    assert gpu.reset_pool_size >= gpu.num_envs and gpu.eval_episodes >= 128
    assert gpu.prefill_steps == 32 * gpu.num_envs  # 32 steps per env, in whole unrolls
    assert gpu.prefill_steps % (gpu.num_envs * gpu.unroll_length) == 0 and gpu.total_steps >= 5_000_000
    assert gpu.replay_obs_dtype == "float32"  # bfloat16 rounds relative to |x|: noise in log ρ


def test_gpu_sizes_that_do_not_split_into_updates_are_refused():
    with pytest.raises(ValueError, match="do not split into updates of 16 env steps"):
        presets._gpu(presets.preset("CheetahRun"), num_envs=1000, unroll_length=1)


@pytest.mark.parametrize("env", BRAX_GPU)
def test_brax_gpu_presets_keep_the_cpu_presets_learning_per_env_step(env):
    # A Brax env without a preset gets the locomotion settings at both scales' learner fields.
    cpu = presets.preset(env) if env in presets.PRESETS else Config(env=env, **presets._LOCOMOTION)
    gpu = presets.preset(env, scale="gpu")
    _check_gpu_shape(gpu, cpu)
    for field in ("policy_hidden", "critic_hidden", "num_action_samples", "discount",
                  "episode_length", "alpha_gain", "normalize_penalty"):
        assert getattr(gpu, field) == getattr(cpu, field), field
    if env in ("ant", "humanoid"):
        assert gpu.total_steps >= 50_000_000
    # Overrides still win.
    assert presets.preset(env, scale="gpu", num_envs=2048, replay_size=2048 * 4096,
                          prefill_steps=3 * 2048 * 4).num_envs == 2048


def test_the_cheetah_run_gpu_preset_is_the_measured_one():
    gpu = presets.preset("CheetahRun", scale="gpu")
    assert (gpu.num_envs, gpu.unroll_length, gpu.updates_per_iteration, gpu.batch_size, gpu.sequence_length,
            gpu.target_update_period, gpu.replay_size, gpu.prefill_steps) == (1024, 4, 256, 256, 8, 50, 4096 * 1024,
                                                                             32768)
    assert (gpu.policy_lr, gpu.critic_lr, gpu.dual_lr, gpu.epsilon_mean, gpu.epsilon_std) == \
        pytest.approx((3e-4, 1e-3, 0.01, 5e-3, 1e-5))


@pytest.mark.parametrize("env", sorted(presets.CPU_ONLY))
def test_tiny_envs_keep_their_cpu_settings_at_gpu_scale(env):
    assert presets.preset(env, scale="gpu") == presets.preset(env)


def test_every_playground_gpu_preset_is_valid_and_keeps_its_cpu_settings():
    names = envs.playground_names()
    assert set(envs.dm_control_names()) <= set(names) and "CheetahRun" in names
    for env in names:
        config = presets.preset(env, scale="gpu")  # Config validates it
        cpu = presets.preset(env)
        _check_gpu_shape(config, cpu)
        assert config.normalize_penalty == cpu.normalize_penalty
        if env in envs.dm_control_names():
            assert config.discount == 0.99
        else:
            assert config.discount == 0.97  # FastTD3 and Playground's locomotion/manipulation PPO


def test_cartpole_swingup_gpu_polyak_rate_keeps_the_cpu_target_lag():
    cpu, gpu = presets.preset("CartpoleSwingup"), presets.preset("CartpoleSwingup", scale="gpu")
    assert cpu.target_update_period == 0 and gpu.target_update_period == 0
    # 1/0.005 = 200 updates of 16 env steps = 3,200 env steps at both scales.
    assert gpu.tau == cpu.tau == 0.005 and presets.target_lag_env_steps(gpu) == pytest.approx(3200)


@pytest.mark.parametrize("backend_scale", ["cpu", "gpu"])
def test_auto_scale_selects_only_measured_gpu_presets(monkeypatch, backend_scale):
    monkeypatch.setattr(presets, "default_scale", lambda: backend_scale)
    for env in ("ant", "halfcheetah", "WalkerWalk"):
        scale, note = presets.resolve_scale(env, "auto")
        assert scale == "cpu" and env not in presets.MEASURED_GPU
        if backend_scale == "gpu":
            assert "untested" in note and "num_envs 64 -> 1,024" in note and "\n" not in note
        else:
            assert note is None
    for env in presets.MEASURED_GPU:
        assert presets.resolve_scale(env, "auto") == (backend_scale, None)
    assert presets.resolve_scale("inverted_pendulum", "auto") == ("cpu", None)
    assert presets.resolve_scale("ant", "gpu") == ("gpu", None)
    with pytest.raises(ValueError, match="scale"):
        presets.resolve_scale("ant", "big")


def _results(name: str) -> dict:
    import json
    from pathlib import Path

    return json.loads((Path(__file__).resolve().parents[1] / "benchmarks" / "results" / f"{name}.json").read_text())


def _mean_returns(summary: dict) -> dict:
    """env steps -> the seeds' mean evaluation return, from a stability.py JSON."""
    runs = summary["runs"]
    return {step: sum(run["eval_return"][i] for run in runs) / len(runs) for i, step in enumerate(summary["env_steps"])}


@pytest.mark.parametrize("env", sorted(presets.GPU_CURVES))
def test_gpu_curves_ran_the_presets_training_settings_and_measured_ones_hold_up(env):
    gpu_name, cpu_name = presets.GPU_CURVES[env]
    gpu_run, cpu_run = _results(gpu_name), _results(cpu_name)
    gpu, cpu = presets.preset(env, scale="gpu"), presets.preset(env)
    # Every field but the evaluation's and the run's length is the preset's, for both runs.
    for run, config in ((gpu_run, gpu), (cpu_run, cpu)):
        for field, value in config.__dict__.items():
            if field not in ("total_steps", "num_evals", "eval_episodes", "seed", "env"):
                if field not in run["config"]:  # the runs predate these options: their defaults then and now
                    assert field in ("critic_head", "critic_bins", "hl_gauss_sigma", "reward_range",
                                     "critic_residual_blocks", "epsilon_policy", "min_action_prob",
                                     "observation_normalization", "observation_torso")
                    assert config.critic_head == "scalar" and config.critic_residual_blocks == 0
                    assert config.observation_normalization and config.observation_torso == "flatten"
                    continue
                expected = list(value) if isinstance(value, tuple) else value
                assert run["config"][field] == expected, (env, field)
    gpu_means, cpu_means = _mean_returns(gpu_run), _mean_returns(cpu_run)
    shared = [step for step in cpu_means if step in gpu_means and step >= 0.4 * max(gpu_means)]
    assert len(shared) >= 3
    holds = all(gpu_means[step] >= presets.HOLDS_UP * cpu_means[step] for step in shared)
    assert holds == (env in presets.MEASURED_GPU), {step: (gpu_means[step], cpu_means[step]) for step in shared}


def test_measured_gpu_presets_have_a_curve_and_the_help_names_them():
    from pathlib import Path

    from purempo import cli

    assert presets.MEASURED_GPU <= set(presets.GPU_CURVES)
    line = next(text for text in Path(cli.__file__).read_text().splitlines() if "learning curve that holds up (" in text)
    named = line.split("learning curve that holds up (")[1].split(")")[0]
    assert (set() if named == "none yet" else set(named.split(", "))) == set(presets.MEASURED_GPU)


@pytest.mark.parametrize("backend,expected", [("gpu", "gpu"), ("cuda", "gpu"), ("rocm", "gpu"), ("tpu", "gpu"),
                                              ("cpu", "cpu"), ("METAL", "cpu")])
def test_default_scale_follows_the_backend(monkeypatch, backend, expected):
    import jax

    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    assert presets.default_scale() == expected
