"""Command line: one-line usage errors (exit 2), run-dir protection, a real tiny run and --help."""

import json
import math
import os
import subprocess
import sys

import pytest

from purempo import cli

TINY_FLAGS = [
    "--total-steps", "3000", "--num-envs", "8", "--unroll-length", "2", "--updates-per-iteration", "2",
    "--batch-size", "8", "--sequence-length", "4", "--num-action-samples", "4", "--policy-hidden", "16", "16",
    "--critic-hidden", "16", "16", "--prefill-steps", "64", "--num-evals", "2", "--eval-episodes", "2",
    "--episode-length", "50", "--replay-size", "4096", "--num-seeds", "2",
]


def _subprocess_env():
    env = dict(os.environ, COLUMNS="200", JAX_PLATFORMS="cpu")
    return env


def _single_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("purempo: error:"), err
    assert "Traceback" not in err
    return lines[0]


def test_unknown_env_is_a_one_line_usage_error(capsys, tmp_path):
    """--env nope exits 2 with one 'purempo: error:' line listing the valid names."""
    code = cli.main(["train", "--env", "nope", "--run-dir", str(tmp_path / "run")])
    assert code == 2
    line = _single_error_line(capsys.readouterr().err)
    assert "nope" in line
    for name in ("inverted_pendulum", "ant", "halfcheetah"):
        assert name in line
    assert not (tmp_path / "run").exists()


def test_invalid_field_is_a_one_line_usage_error(capsys, tmp_path):
    """--sequence-length 1 exits 2 with one line naming the field."""
    code = cli.main(["train", "--sequence-length", "1", "--run-dir", str(tmp_path / "run")])
    assert code == 2
    line = _single_error_line(capsys.readouterr().err)
    assert "sequence_length" in line
    assert not (tmp_path / "run").exists()


def test_zero_seeds_is_a_usage_error(capsys, tmp_path):
    """--num-seeds 0 exits 2 with one line naming the flag, before creating the run dir."""
    code = cli.main(["train", "--num-seeds", "0", "--run-dir", str(tmp_path / "run")])
    assert code == 2
    line = _single_error_line(capsys.readouterr().err)
    assert "num-seeds" in line or "num_seeds" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("existing", [("config.json",), ("metrics.jsonl",), ("config.json", "metrics.jsonl")])
def test_existing_run_dir_is_refused_and_left_untouched(capsys, tmp_path, existing):
    """A run dir that already holds a run exits 2 and its files stay byte-identical."""
    run_dir = tmp_path / "old-run"
    run_dir.mkdir()
    contents = {name: f'{{"previous": "{name}"}}\n'.encode() for name in existing}
    for name, data in contents.items():
        (run_dir / name).write_bytes(data)
    code = cli.main(["train", "--run-dir", str(run_dir)])
    assert code == 2
    line = _single_error_line(capsys.readouterr().err)
    assert str(run_dir) in line
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(existing)
    for name, data in contents.items():
        assert (run_dir / name).read_bytes() == data


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("cli") / "tiny"
    proc = subprocess.run(
        [sys.executable, "-m", "purempo.cli", "train", *TINY_FLAGS, "--run-dir", str(run_dir)],
        capture_output=True, text=True, timeout=400, env=_subprocess_env(), cwd=run_dir.parent,
    )
    return proc, run_dir


def test_tiny_run_writes_config_and_metrics(tiny_run):
    """A real 2-seed run exits 0 and writes config.json plus one finite metrics line per evaluation."""
    proc, run_dir = tiny_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr

    config = json.loads((run_dir / "config.json").read_text())
    assert config["env"] == "inverted_pendulum"
    assert config["num_seeds"] == 2
    assert config["seed"] == 0
    assert config["total_steps"] == 3000 and config["num_envs"] == 8
    assert config["policy_hidden"] == [16, 16] and config["critic_hidden"] == [16, 16]

    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    rows = [json.loads(line) for line in lines]
    # 16 steps per iteration; 3000 // 16 = 187 iterations, 187 // 2 = 93 per evaluation (prefill included).
    assert [row["env_steps"] for row in rows] == [93 * 16, 2 * 93 * 16]
    assert config["env_steps_per_seed"] == rows[-1]["env_steps"]
    assert rows[0]["wall_time_s"] < rows[1]["wall_time_s"]
    assert [row["eval"] for row in rows] == [1, 2]
    for row in rows:
        per_seed = row["eval_return_per_seed"]
        assert len(per_seed) == 2
        assert math.isclose(row["eval_return"], sum(per_seed) / 2, rel_tol=1e-9, abs_tol=1e-9)
        # Returns of inverted_pendulum are episode lengths: within [1, episode_length].
        assert all(1.0 <= r <= 50.0 for r in per_seed)
        for name, value in row.items():
            values = value if isinstance(value, list) else [value]
            assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in values), name


def test_train_help_lists_main_flags():
    """`purempo train --help` exits 0 and documents the main flags."""
    proc = subprocess.run(
        [sys.executable, "-m", "purempo.cli", "train", "--help"],
        capture_output=True, text=True, timeout=120, env=_subprocess_env(),
    )
    assert proc.returncode == 0, proc.stderr
    for flag in ("--env", "--total-steps", "--num-envs", "--seed", "--num-seeds", "--run-dir"):
        assert flag in proc.stdout, flag
