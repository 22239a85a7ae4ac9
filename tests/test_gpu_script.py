"""benchmarks/gpu.py end to end on the CPU at a tiny size: one JSON per task, rewritten after every evaluation."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gpu  # noqa: E402

from purempo.presets import preset  # noqa: E402

TINY = ["--set", "num_envs=8", "--set", "unroll_length=2", "--set", "updates_per_iteration=2", "--set",
        "batch_size=8", "--set", "replay_size=1024", "--set", "prefill_steps=32", "--set", "eval_episodes=2",
        "--set", "episode_length=50", "--set", "policy_hidden=(8,)", "--set", "critic_hidden=(8,)",
        "--set", "reset_pool_size=8", "--set", "sequence_length=4"]


def test_gpu_script_writes_return_against_wall_time_and_rates(tmp_path):
    gpu.main(["--envs", "inverted_pendulum", "--scale", "cpu", "--budget-s", "1e9", "--max-evals", "3",
              "--eval-every", "64", "--num-seeds", "2", "--out", str(tmp_path)] + TINY)
    summary = json.loads((tmp_path / "gpu_inverted_pendulum.json").read_text())
    config = preset("inverted_pendulum", num_envs=8, unroll_length=2, updates_per_iteration=2)
    points = summary["points"]
    assert len(points) == 3 and summary["seeds"] == [0, 1] and summary["trainer"] == "purempo"
    assert [p["env_steps"] for p in points] == [64, 128, 192]  # 4 iterations of 8 envs x 2 steps each
    assert all(len(p["eval_return"]) == 2 for p in points)
    walls = [p["wall_time_s"] for p in points]
    assert walls == sorted(walls) and points[0]["eval_time_s"] <= walls[0]
    # Later chunks learn in every iteration: 4 iterations x updates_per_iteration updates.
    assert [p["updates"] for p in points[1:]] == [4 * config.updates_per_iteration] * 2
    rates = summary["rates"]
    seconds = points[1]["train_s"] + points[2]["train_s"]
    assert rates["env_steps_per_s_per_seed"] == pytest.approx(128 / seconds)
    assert rates["env_steps_per_s"] == pytest.approx(2 * 128 / seconds)
    assert rates["updates_per_s"] == pytest.approx(16 / seconds)
    assert summary["config"]["num_envs"] == 8 and summary["devices"]


def test_gpu_script_rejects_an_unknown_env_before_running(tmp_path):
    with pytest.raises(ValueError, match="unknown env"):
        gpu.main(["--envs", "cheetah", "--out", str(tmp_path)])
    assert not list(tmp_path.iterdir())


def test_gpu_script_trains_a_gymnax_env_at_its_gpu_preset(tmp_path):
    """Breakout-MinAtar through the same loop (categorical MPO), from its GPU preset with the sizes cut down."""
    gpu.main(["--envs", "Breakout-MinAtar", "--budget-s", "1e9", "--max-evals", "2", "--eval-every", "64",
              "--num-seeds", "1", "--out", str(tmp_path)] + TINY)
    summary = json.loads((tmp_path / "gpu_Breakout-MinAtar.json").read_text())
    gpu_preset = preset("Breakout-MinAtar", scale="gpu")
    assert gpu_preset.num_envs >= 1024 and summary["scale"] == "gpu"
    assert summary["config"]["observation_normalization"] is False  # the MinAtar preset's, kept at scale gpu
    assert [p["env_steps"] for p in summary["points"]] == [64, 128]
    assert summary["points"][1]["updates"] == 4 * 2  # 4 iterations of the 2 updates TINY sets


def test_gpu_script_refuses_brax_trainers_on_a_gymnax_env(tmp_path):
    with pytest.raises(SystemExit, match="gymnax env"):
        gpu.main(["--envs", "CartPole-v1", "--trainers", "sac", "--out", str(tmp_path)])
    assert not list(tmp_path.iterdir())
