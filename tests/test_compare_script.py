"""benchmarks/compare.py's glue: the supervisor that bounds a Brax trainer's wall time, the Playground settings
it hands to Brax, and the summary row (the script itself is a long benchmark)."""

import inspect
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import compare  # noqa: E402
from _compare_children import child_that_fails, child_that_finishes, child_that_stalls  # noqa: E402

BENCHMARKS, TESTS = Path(__file__).resolve().parents[1] / "benchmarks", Path(__file__).resolve().parent


def test_supervise_kills_a_child_that_outlasts_the_budget_without_evaluating():
    curve = compare.Curve("stall", budget_s=3.0)
    tick = time.perf_counter()
    settings = compare.supervise(curve, child_that_stalls, (7,), grace_s=2.0)
    assert time.perf_counter() - tick < 60  # not the child's 120 s
    assert settings == {"kind": "stall"}
    assert [p["env_steps"] for p in curve.points] == [7]
    assert curve.stopped_at_train_time_s > 5.0  # budget + grace passed before the kill
    row = compare.summarize(curve, threshold=None)
    assert row["stopped_at_train_time_s"] == curve.stopped_at_train_time_s
    assert row["final_return"] == 1.0 and row["final_env_steps"] == 7


def test_supervise_collects_every_point_of_a_child_that_finishes():
    curve = compare.Curve("finish", budget_s=100.0)
    settings = compare.supervise(curve, child_that_finishes, ([3.0, 5.0, 4.0],), grace_s=10.0)
    assert settings == {"kind": "finish"}
    assert [p["eval_return"] for p in curve.points] == [3.0, 5.0, 4.0]
    assert curve.stopped_at_train_time_s is None


def test_supervise_raises_the_childs_error():
    with pytest.raises(RuntimeError, match="bad setting"):
        compare.supervise(compare.Curve("fail", budget_s=100.0), child_that_fails, (), grace_s=10.0)


def _gone(pid: int) -> bool:
    """The process has exited (a zombie nobody reaps counts as exited)."""
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads process states from /proc")
def test_a_supervised_child_exits_when_its_parent_is_killed(tmp_path):
    """SIGKILL the comparison (no `finally` runs): its trainer child must not keep running on its own."""
    pid_file = tmp_path / "child.pid"
    parent = subprocess.Popen([sys.executable, "-c", f"""
import sys, time, types
sys.path[:0] = [{str(BENCHMARKS)!r}, {str(TESTS)!r}]
import supervisor, _compare_children
curve = types.SimpleNamespace(name="orphan", start=time.perf_counter(), budget_s=1000.0, points=[],
                              stopped_at_train_time_s=None)
supervisor.supervise(curve, _compare_children.child_that_writes_its_pid, ({str(pid_file)!r},), grace_s=1000.0)
"""])
    try:
        deadline = time.monotonic() + 60
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < deadline and parent.poll() is None, "the child never started"
            time.sleep(0.1)
        child = int(pid_file.read_text())
        assert not _gone(child)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 15
        while not _gone(child) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _gone(child), "the child outlived its killed parent"
    finally:
        parent.kill()
        if pid_file.exists() and pid_file.read_text() and not _gone(int(pid_file.read_text())):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


def test_summary_reports_the_first_evaluation_at_1m_steps_and_a_curve_without_evaluations():
    curve = compare.Curve("x", budget_s=1.0)
    for steps, value in [(0, 1.0), (600_000, 50.0), (1_003_520, 70.0), (1_200_000, 65.0)]:
        curve.points.append(dict(env_steps=steps, train_time_s=steps / 1e4, wall_time_s=steps / 1e4 + 1,
                                 eval_return=value, eval_return_std=0.0))
    row = compare.summarize(curve, threshold=60.0)
    assert (row["return_at_1m"], row["env_steps_at_1m"]) == (70.0, 1_003_520)
    assert (row["final_return"], row["best_return"], row["threshold_env_steps"]) == (65.0, 70.0, 1_003_520)
    assert row["env_steps_per_s"] == pytest.approx(1e4)
    empty = compare.summarize(compare.Curve("none", budget_s=1.0), threshold=None)
    assert (empty["final_return"], empty["return_at_1m"], empty["final_env_steps"]) == (None, None, 0)


@pytest.mark.parametrize("algorithm", ["sac", "ppo"])
def test_playground_settings_are_playgrounds_minus_what_brax_rejects(algorithm):
    from mujoco_playground.config import dm_control_suite_params as params

    if algorithm == "sac":
        from brax.training.agents.sac import train as brax_train
        published = params.brax_sac_config("CartpoleSwingup").to_dict()
    else:
        from brax.training.agents.ppo import train as brax_train
        published = params.brax_ppo_config("CartpoleSwingup").to_dict()
    settings, dropped = compare.playground_settings(algorithm, "CartpoleSwingup", brax_train.train,
                                                    {"learning_rate": 1e-4})
    accepted = inspect.signature(brax_train.train).parameters
    assert set(dropped) == {key for key in published if key not in accepted}
    assert settings["learning_rate"] == 1e-4  # the override wins
    for key, value in published.items():
        if key in accepted and key not in ("network_factory", "learning_rate"):
            assert settings[key] == value
    if "network_factory" in published:
        assert settings["network_factory"].keywords == dict(published["network_factory"])
        assert settings["network_options"] == published["network_factory"]


class _EnvBuilt(Exception):
    pass


@pytest.mark.parametrize("algorithm", ["sac", "ppo"])
def test_brax_trains_on_the_simulator_that_set_chooses(monkeypatch, algorithm):
    """`--set impl=jax` must reach Brax's env too (on an NVIDIA GPU the default would be Warp): stop the child's
    training where it builds its env and look at what it asked for."""
    asked = {}

    def make(name, backend=None, impl=None):
        asked.update(name=name, backend=backend, impl=impl)
        raise _EnvBuilt

    monkeypatch.setattr(compare.envs, "make", make)
    overrides = compare.parse_overrides(["impl=jax", "critic_lr=1e-3"])
    assert compare.env_fields(overrides) == {"impl": "jax"}
    with pytest.raises(_EnvBuilt):
        compare._train_brax(None, algorithm, "CartpoleSwingup", 1.0, 0, {}, compare.env_fields(overrides))
    assert asked == dict(name="CartpoleSwingup", backend=None, impl="jax")


def test_a_curve_stops_at_its_budget_or_at_max_env_steps_whichever_comes_first():
    timed = compare.Curve("t", budget_s=1e9)
    assert not timed.add(5_000_000, 0.0, 1.0, 0.0)  # no step cap: only the clock stops it
    capped = compare.Curve("c", budget_s=1e9, max_env_steps=1_000_000)
    assert not capped.add(999_999, 0.0, 1.0, 0.0)
    assert capped.add(1_000_000, 0.0, 1.0, 0.0)
    assert compare.Curve("b", budget_s=0.0, max_env_steps=1_000_000).add(10, 0.0, 1.0, 0.0)  # budget first


def test_the_recorded_command_is_the_one_that_ran_seed_and_name_included():
    """A result file must name every flag it came from: a seed-1 run recorded without `--seed 1` reads as seed 0."""
    import common

    argv = ["benchmarks/compare.py", "--env", "WalkerWalk", "--budget-s", "3000", "--trainers", "sac", "--seed", "1",
            "--name", "compare WalkerWalk", "--set", "policy_hidden=(64, 64)"]
    command = common.command_line("compare.py", argv)
    assert command.startswith("python benchmarks/compare.py ")
    assert shlex.split(command)[2:] == argv[1:]


def test_purempo_runs_through_the_driver_and_stops_at_the_first_evaluation_past_its_cap(monkeypatch):
    """`run_purempo` hands each of the driver's evaluations to its Curve and stops the (10,000-evaluation) run
    once the curve says so: here at the first evaluation at or after 2 periods' env steps."""
    monkeypatch.setitem(compare.EVAL_EVERY, "inverted_pendulum", dict(purempo=64, ppo=64, sac=64))
    tiny = dict(episode_length=50, num_envs=8, unroll_length=2, updates_per_iteration=2, prefill_steps=32,
                eval_episodes=2, replay_size=2_048, batch_size=8, sequence_length=4, num_action_samples=4,
                policy_hidden=(16, 16), critic_hidden=(16, 16), reset_pool_size=16)
    curve, config = compare.run_purempo("inverted_pendulum", 1e9, 0, tiny, max_env_steps=128)
    assert config["num_evals"] == 10_000 and config["num_envs"] == 8
    assert [p["env_steps"] for p in curve.points] == [64, 128]
    for point in curve.points:
        assert 0 < point["eval_time_s"] < point["wall_time_s"]
        assert point["train_time_s"] == pytest.approx(point["wall_time_s"] - point["eval_time_s"], abs=0.02)
