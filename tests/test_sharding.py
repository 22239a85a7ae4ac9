"""Data parallelism over 4 CPU devices (`--xla_force_host_platform_device_count=4`), and over two processes
of 2 devices each (`jax.distributed.initialize`, gloo collectives), in child processes
(tests/_sharded_children.py): a JAX process fixes its device count when its back end starts."""

import json
import os
import socket
import subprocess
import sys
import types
from pathlib import Path

import pytest

from conftest import FAST_COMPILE_FLAGS
from purempo import sharding
from purempo.config import Config

CHILD = Path(__file__).with_name("_sharded_children.py")


def _run(check, out, *args, devices=4, fast=True, background=False):
    flags = f"--xla_force_host_platform_device_count={devices}" + (f" {FAST_COMPILE_FLAGS}" if fast else "")
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=flags)
    command = [sys.executable, str(CHILD), check, str(out), *map(str, args)]
    if background:
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(Path(out).read_text())


@pytest.fixture(scope="module")
def four_device_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("sharded")
    return root, _run("run_and_resume", root / "out.json", root)


@pytest.mark.parametrize("critic_head", ["scalar", "categorical"])
def test_a_sharded_update_applies_the_mean_of_the_devices_gradients(tmp_path, critic_head):
    # One update with the batch split over 4 devices against each quarter's gradients computed one device at
    # a time and averaged by NumPy: equal to float rounding, and far from what summed gradients would give.
    result = _run("learner_step", tmp_path / "out.json", critic_head)
    assert result["critic_moved"] > 1e-4  # the update did something
    # Adam's first step is g / (|g| + 1e-8): where a distributional critic's gradient is ~1e-8 (the small last
    # kernel, logits of far atoms), float rounding of the devices' mean moves that step by up to a few % of its
    # size (3e-3); the moments, linear in g, are checked to 1e-6 below.
    assert result["policy_gap"] < 1e-6 and result["critic_gap"] < (1e-6 if critic_head == "scalar" else 1e-4)
    # Summed gradients would give 4x the first moment: ~1e2-1e7 times the gap left by rounding.
    assert result["moments_gap"] < 1e-6 and result["moments_gap_to_summed"] > 1e3 * max(result["moments_gap"], 1e-9)
    assert result["copies_equal"]


def test_parameters_stay_identical_on_every_device_and_seeds_compose_with_devices(four_device_runs):
    _, result = four_device_runs
    assert result["num_copies"] == 4 and result["learner_copies_equal"]
    # 2 seeds × 16 envs of 64 steps: each device holds its 4 envs of both seeds.
    assert result["replay_shape"][:3] == [2, 64, 16] and result["replay_shard_shape"][:3] == [2, 64, 4]
    assert all(len(row) == 2 for row in result["eval_returns"]) and result["seeds_differ"]


def test_a_sharded_run_resumes_bit_identically(four_device_runs):
    _, result = four_device_runs
    assert result["cut_steps"] == [0, 1, 2]  # killed after evaluation 2, then resumed
    assert result["final_step"] == 4 and result["num_leaves"] > 100 and result["identical"]


def test_a_discrete_run_splits_over_devices_and_resumes_bit_identically(tmp_path):
    """CartPole-v1 (categorical MPO, int actions in the replay) over 4 devices with 2 seeds: the same checks."""
    result = _run("run_and_resume", tmp_path / "out.json", tmp_path, "CartPole-v1")
    assert result["num_copies"] == 4 and result["learner_copies_equal"]
    assert result["replay_shape"][:3] == [2, 64, 16] and result["replay_shard_shape"][:3] == [2, 64, 4]
    assert result["cut_steps"] == [0, 1, 2] and result["final_step"] == 4 and result["identical"]
    assert result["seeds_differ"]


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_train_one_run_like_one_process_with_all_devices(tmp_path, four_device_runs):
    """Also when one process compiles, or writes the run's files, 35 s longer than the other (the driver waits
    for both before its collectives and orbax's; gloo alone gives a first collective 30 s)."""
    port, run_dir = _free_port(), tmp_path / "run"
    children = [_run("two_processes", tmp_path / f"out{i}.json", i, port, run_dir, devices=2, background=True)
                for i in range(2)]
    for child in children:
        output, _ = child.communicate(timeout=900)
        assert child.returncode == 0, output[-3000:]
    results = [json.loads((tmp_path / f"out{i}.json").read_text()) for i in range(2)]
    assert [r["process_count"] for r in results] == [2, 2] and [r["device_count"] for r in results] == [4, 4]
    assert [r["local_devices"] for r in results] == [2, 2]
    # The files are written once (process 0), checkpoints by both, and the run is the one-process 4-device run.
    root, _ = four_device_runs
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    reference = [json.loads(line) for line in (root / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert [r["eval_return_per_seed"] for r in rows] == [r["eval_return_per_seed"] for r in reference]
    assert [r["critic_loss"] for r in rows] == pytest.approx([r["critic_loss"] for r in reference], rel=1e-5)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())[-1] == "4"


@pytest.mark.parametrize("field", ["num_envs", "batch_size", "eval_episodes", "reset_pool_size"])
def test_sizes_that_do_not_split_over_the_devices_are_one_line_errors(field):
    config = Config(num_envs=16, batch_size=16, eval_episodes=4, reset_pool_size=64, replay_size=16 * 4096)
    bad = types.SimpleNamespace(**{**config.__dict__, field: getattr(config, field) + 2})
    with pytest.raises(ValueError, match=f"invalid {field}=.*multiple of the number of devices \\(4\\)"):
        sharding.check_divisible(bad, 4)
    sharding.check_divisible(config, 4)


def test_a_mesh_needs_devices_that_exist():
    with pytest.raises(ValueError, match="invalid num_devices=9: must be in 1..1"):
        sharding.make_mesh(9)
    assert sharding.make_mesh().size == 1
