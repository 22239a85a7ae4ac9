"""Command line: one-line usage errors (exit 2), run-dir protection, a real tiny run and --help."""

import functools
import json
import math
import os
import subprocess
import sys

import pytest

from purempo import cli, driver

TINY_FLAGS = [
    "--total-steps", "6400", "--num-envs", "8", "--unroll-length", "2", "--updates-per-iteration", "2",
    "--batch-size", "8", "--sequence-length", "4", "--num-action-samples", "4", "--policy-hidden", "16", "16",
    "--critic-hidden", "16", "16", "--prefill-steps", "64", "--num-evals", "4", "--eval-episodes", "2",
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
    """--env nope exits 2 with one 'purempo: error:' line pointing to `purempo envs`; nothing is written."""
    code = cli.main(["train", "--env", "nope", "--run-dir", str(tmp_path / "run")])
    assert code == 2
    line = _single_error_line(capsys.readouterr().err)
    assert "'nope'" in line and "purempo envs" in line and len(line) < 200
    assert not (tmp_path / "run").exists()


def test_invalid_field_is_a_one_line_usage_error(capsys, tmp_path):
    """--sequence-length 1 exits 2 with one line naming the flag."""
    code = cli.main(["train", "--sequence-length", "1", "--run-dir", str(tmp_path / "run")])
    assert code == 2
    line = _single_error_line(capsys.readouterr().err)
    assert "invalid --sequence-length=1" in line
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
    assert config["total_steps"] == 6400 and config["num_envs"] == 8
    assert config["episode_length"] == config["time_limit"] == 50
    assert config["policy_hidden"] == [16, 16] and config["critic_hidden"] == [16, 16]

    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4
    rows = [json.loads(line) for line in lines]
    # 16 steps per iteration; 6400 // 16 = 400 iterations, 400 // 4 = 100 per evaluation (prefill included).
    assert [row["env_steps"] for row in rows] == [1600, 3200, 4800, 6400]
    assert config["env_steps_per_seed"] == rows[-1]["env_steps"]
    assert all(a["wall_time_s"] < b["wall_time_s"] for a, b in zip(rows, rows[1:]))
    assert [row["eval"] for row in rows] == [1, 2, 3, 4]
    for row in rows:
        per_seed = row["eval_return_per_seed"]
        assert len(per_seed) == 2
        assert math.isclose(row["eval_return"], sum(per_seed) / 2, rel_tol=1e-9, abs_tol=1e-9)
        # Returns of inverted_pendulum are episode lengths: within [1, episode_length].
        assert all(1.0 <= r <= 50.0 for r in per_seed)
        assert 1.0 <= row["eval_stochastic_return"] <= 50.0 and 1.0 <= row["eval_episode_length"] <= 50.0
        assert row["eval_return_min"] <= row["eval_return"]
        assert math.isclose(row["eval_episode_length"], row["eval_return"], rel_tol=1e-6)  # 1 per step alive
        assert "eval_episodes" not in row and "eval_iteration" not in row
        for name, value in row.items():
            values = value if isinstance(value, list) else [value]
            assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in values), name


def _chunk_metrics(critic_loss):
    """A 2-seed, 3-iteration chunk's metrics as the trainer returns them (first iteration a prefill one)."""
    import numpy as np

    from purempo.envs import Episodes

    updates = np.array([[0.0, 2.0, 2.0], [0.0, 2.0, 2.0]], np.float32)
    return dict(
        critic_loss=np.asarray(critic_loss, np.float32),
        kl_mean_max=np.array([[np.nan, 0.3, 0.5], [np.nan, 0.1, 0.1]], np.float32),
        alpha_mean_min=np.array([[np.nan, 0.2, 0.05], [np.nan, 0.4, 0.3]], np.float32),
        env_steps=np.array([[1.0, 2.0, 3.0]] * 2, np.float32) * 256,
        updates=updates,
        episode_return_sum=np.array([[0.0, 10.0, 20.0], [5.0, 0.0, 0.0]], np.float32),
        episodes_finished=np.array([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]], np.float32),
        nonfinite_steps=np.array([[2, 0, 1], [0, 0, 0]], np.int32),
        eval_return=np.array([10.0, 20.0], np.float32),
        eval_return_min=np.array([2.0, 12.0], np.float32),
        eval_stochastic_return=np.array([4.0, 6.0], np.float32),
        # 3,000,001 iterations of 256 steps: 768,000,256 env steps, not a float32 number.
        eval_iteration=np.array([3_000_001, 3_000_001], np.int32),
        eval_env_steps=np.array([768_000_256, 768_000_256], np.float32),
        eval_episodes=Episodes(returns=np.zeros((2, 4), np.float32), lengths=np.ones((2, 4), np.int32),
                               final_obs=np.zeros((2, 4, 3), np.float32)),
    )


def test_config_json_records_the_time_limit_the_run_uses():
    from purempo.config import Config

    assert driver.config_record(Config(env="hopper"), driver.Options())["time_limit"] == 1000  # Brax's own
    record = driver.config_record(Config(env="hopper", episode_length=70), driver.Options())
    assert record["episode_length"] == record["time_limit"] == 70


def test_metrics_row_counts_env_steps_from_the_iteration_and_reduces_learned_iterations():
    metrics = _chunk_metrics([[float("nan"), 1.0, 3.0], [float("nan"), 5.0, 7.0]])
    row = driver.metrics_row(metrics, index=6, iterations_per_eval=3, steps_per_iteration=256, wall_time_s=1.23456)
    assert row["eval"] == 7 and row["wall_time_s"] == 1.235
    assert row["env_steps"] == 3_000_001 * 256 and isinstance(row["env_steps"], int)
    assert row["eval_return"] == 15.0 and row["eval_return_per_seed"] == [10.0, 20.0]
    assert row["eval_stochastic_return"] == 5.0
    assert row["critic_loss"] == 4.0  # mean over the iterations that learned (prefill NaNs left out)
    # Peaks stay peaks: the largest per-iteration maximum, the smallest minimum (over seeds and iterations).
    assert math.isclose(row["kl_mean_max"], 0.5, rel_tol=1e-6)
    assert math.isclose(row["alpha_mean_min"], 0.05, rel_tol=1e-6)
    assert row["eval_return_min"] == 2.0
    assert row["nonfinite_steps"] == 3  # every iteration's, prefill included, over the seeds
    assert row["train_episode_return"] == 10.0  # seeds 0 and 1: 30 / 2 = 15 and 5 / 1 = 5
    for name in ("eval_episodes", "eval_iteration", "eval_env_steps", "updates", "episodes_finished"):
        assert name not in row, name


def test_metrics_row_names_the_first_non_finite_metric_and_its_iteration():
    metrics = _chunk_metrics([[float("nan"), 1.0, float("inf")], [float("nan"), 5.0, 7.0]])
    expected = r"non-finite critic_loss at iteration 9 \(evaluation period 3, seed 0\)"  # 2 · 3 + 3rd iteration
    with pytest.raises(cli.UsageError, match=expected):
        driver.metrics_row(metrics, index=2, iterations_per_eval=3, steps_per_iteration=256, wall_time_s=0.0)


def test_train_help_lists_main_flags():
    """`purempo train --help` exits 0 and documents the main flags."""
    proc = subprocess.run(
        [sys.executable, "-m", "purempo.cli", "train", "--help"],
        capture_output=True, text=True, timeout=120, env=_subprocess_env(),
    )
    assert proc.returncode == 0, proc.stderr
    for flag in ("--env", "--total-steps", "--num-envs", "--seed", "--num-seeds", "--run-dir"):
        assert flag in proc.stdout, flag


# ------------------------------------------------------------------------------------------------------------
# Bad input: one line, exit 2, nothing written or changed
# ------------------------------------------------------------------------------------------------------------


def _snapshot(directory):
    """{relative path: bytes} of every file under `directory` (to show nothing was changed)."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("flags, expected", [  # the message names the flags to change, as typed
    (["--batch-size", "2000000"], "invalid --batch-size=2000000: must be <= --replay-size"),  # more than replay slots
    (["--sequence-length", "1"], "invalid --sequence-length=1"),
    (["--epsilon", "-0.1"], "invalid epsilon=-0.1"),
    (["--epsilon-mean", "-0.01"], "invalid --epsilon-mean=-0.01"),
    (["--replay-size", "262200"], "multiple of --num-envs"),  # 256 envs cannot share 262,200 slots evenly
    (["--num-envs", "0"], "invalid --num-envs=0"),
])
def test_impossible_config_is_a_one_line_usage_error(capsys, tmp_path, flags, expected):
    code = cli.main(["train", *flags, "--run-dir", str(tmp_path / "run")])
    assert code == 2
    assert expected in _single_error_line(capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


def test_unwritable_run_dir_is_a_one_line_usage_error(capsys, tmp_path, monkeypatch):
    # Reported before the trainer is traced (seconds for the default config): tracing fails the test.
    def traced(*args, **kwargs):
        raise AssertionError("the trainer was traced before the run dir was checked")

    monkeypatch.setattr(driver, "lower_programs", traced)
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me\n")
    code = cli.main(["train", "--run-dir", str(blocker / "run" / "deeper")])
    assert code == 2
    assert "cannot write" in _single_error_line(capsys.readouterr().err)
    assert blocker.read_text() == "keep me\n"


def test_overwrite_removes_only_the_previous_runs_files(tmp_path):
    run_dir = tmp_path / "run"
    for name in ("checkpoints/3", "tb"):
        (run_dir / name).mkdir(parents=True)
    for name in ("config.json", "metrics.jsonl", "checkpoints/3/x", "tb/events", "notes.txt"):
        (run_dir / name).write_text(name)
    assert driver.prepare_new_run_dir(run_dir, overwrite=True) == run_dir
    assert _snapshot(run_dir) == {"notes.txt": b"notes.txt"}


@pytest.mark.parametrize("command", [["eval"], ["render", "--out", "unused.html"], ["train", "--resume"]])
def test_commands_on_a_missing_run_are_one_line_errors(capsys, tmp_path, command):
    *head, last = command
    argv = [*head, last, str(tmp_path / "nowhere")] if last == "--resume" else [*command, str(tmp_path / "nowhere")]
    code = cli.main(argv)
    assert code == 2
    assert "nowhere" in _single_error_line(capsys.readouterr().err)
    assert not (tmp_path / "nowhere").exists()


def test_unknown_command_is_a_one_line_error(capsys):
    assert cli.main(["trian"]) == 2
    assert "train" in _single_error_line(capsys.readouterr().err)


# ------------------------------------------------------------------------------------------------------------
# Presets
# ------------------------------------------------------------------------------------------------------------

ISSUE_ENVS = ("inverted_pendulum", "halfcheetah", "ant", "hopper", "walker2d", "humanoid", "reacher", "pusher")


@pytest.mark.parametrize("env", ISSUE_ENVS)
def test_env_flag_picks_its_preset(env):
    from purempo import presets

    assert env in presets.PRESETS
    config = cli.parse_train_args(["--env", env]).config
    assert config == presets.preset(env) and config.env == env
    for field, value in presets.PRESETS[env].items():
        assert getattr(config, field) == value, field


def test_any_preset_field_can_be_overridden():
    from purempo import presets

    config = cli.parse_train_args(["--env", "ant", "--num-envs", "128", "--policy-hidden", "64", "64"]).config
    assert config == presets.preset("ant", num_envs=128, policy_hidden=(64, 64))
    assert config.total_steps == presets.PRESETS["ant"]["total_steps"] != cli.Config().total_steps
    # The last --env wins, as argparse does.
    assert cli.parse_train_args(["--env", "ant", "--env", "hopper"]).config == presets.preset("hopper")


# ------------------------------------------------------------------------------------------------------------
# Checkpoints and exact resumption (real subprocesses)
# ------------------------------------------------------------------------------------------------------------


def _final_state(run_dir):
    """The newest checkpoint of `run_dir`, restored in full (replay included)."""
    import jax

    from purempo import checkpoint, make_trainer

    config, record = cli.load_run_config(run_dir)
    keys = jax.random.split(jax.random.PRNGKey(record["seed"]), record["num_seeds"])
    abstract = jax.eval_shape(jax.vmap(make_trainer(config).init), keys)
    return config, keys, checkpoint.restore(run_dir, abstract)


def _rows_without_wall_time(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        row.pop("wall_time_s")
    return rows


def _assert_trees_identical(a, b):
    import jax
    import numpy as np

    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_run_writes_checkpoints_and_tensorboard_events(tiny_run):
    from purempo import checkpoint

    proc, run_dir = tiny_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert checkpoint.steps(run_dir) == [2, 3, 4]  # initial state and every evaluation saved, newest 3 kept
    scalars = [(step, value) for tag, step, value in _tensorboard_scalars(run_dir / "tb") if tag == "purempo/eval_return"]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [step for step, _ in scalars] == [row["env_steps"] for row in rows]
    assert [value for _, value in scalars] == pytest.approx([row["eval_return"] for row in rows])


def _tensorboard_scalars(log_dir):
    """(tag, step, value) of every scalar in the TFRecord event files of `log_dir`, read record by record
    (u64 length, u32 crc, Event proto, u32 crc)."""
    import struct

    from tensorboardX.proto import event_pb2

    scalars = []
    for path in sorted(log_dir.glob("events.out.tfevents.*")):
        data, offset = path.read_bytes(), 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
            offset += 12 + length + 4
            scalars += [(value.tag, event.step, value.simple_value) for value in event.summary.value]
    return scalars


def test_progress_and_checkpoints_do_not_change_the_numbers(tiny_run):
    """The CLI run (progress bar, metrics, TensorBoard, checkpoints between donated chunks) ends bit-identical
    to a bare loop of `train.run_chunk`, the chunk `make_train` scans over."""
    import jax
    import numpy as np

    from purempo.train import make_trainer, run_chunk

    _, run_dir = tiny_run
    config, keys, restored = _final_state(run_dir)
    trainer = make_trainer(config)
    chunk = jax.jit(jax.vmap(functools.partial(run_chunk, trainer)))
    state, per_seed = jax.jit(jax.vmap(trainer.init))(keys), []
    for _ in range(config.num_evals):
        state, metrics = chunk(state)
        per_seed.append(np.asarray(metrics["eval_return"]))
    _assert_trees_identical(restored.state, jax.device_get(state))
    logged = np.array([row["eval_return_per_seed"] for row in _rows_without_wall_time(run_dir)])
    np.testing.assert_array_equal(logged, np.stack(per_seed))


def test_sigkilled_run_resumes_to_bit_identical_results(tiny_run, tmp_path):
    """Kill a run for real (SIGKILL) after its first checkpoint, resume it: final state (params, targets,
    optimiser and dual states, normalisers, replay, keys, counters) and metrics equal the uninterrupted run's."""
    import signal
    import time

    _, reference_dir = tiny_run
    run_dir = tmp_path / "killed"
    command = [sys.executable, "-m", "purempo.cli", "train", *TINY_FLAGS, "--run-dir", str(run_dir)]
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=log, env=_subprocess_env(), cwd=tmp_path)
        deadline = time.monotonic() + 400
        while proc.poll() is None and not (run_dir / "checkpoints" / "1").exists():
            assert time.monotonic() < deadline, "no checkpoint within the time limit"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    rows_at_kill = len((run_dir / "metrics.jsonl").read_text().splitlines())
    assert rows_at_kill < 4, "the run finished before the kill"

    resumed = subprocess.run([sys.executable, "-m", "purempo.cli", "train", "--resume", str(run_dir)],
                             capture_output=True, text=True, timeout=400, env=_subprocess_env(), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming after evaluation" in resumed.stderr

    assert _rows_without_wall_time(run_dir) == _rows_without_wall_time(reference_dir)
    _, _, reference = _final_state(reference_dir)
    _, _, final = _final_state(run_dir)
    assert final.step == reference.step == 4
    _assert_trees_identical(final.state, reference.state)


def _copy_run(tiny_run, tmp_path, name="copy"):
    import shutil

    proc, run_dir = tiny_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    target = tmp_path / name
    shutil.copytree(run_dir, target)
    return target


def test_resuming_a_complete_run_changes_nothing(capsys, tiny_run, tmp_path):
    run_dir = _copy_run(tiny_run, tmp_path)
    before = _snapshot(run_dir)
    assert cli.main(["train", "--resume", str(run_dir)]) == 0
    assert "nothing to do" in capsys.readouterr().err
    assert _snapshot(run_dir) == before


def _damage_newest_checkpoint(run_dir):
    newest = max((run_dir / "checkpoints").iterdir(), key=lambda p: int(p.name))
    for path in (newest / "state").rglob("*"):
        if path.is_file():
            path.write_bytes(b"\x00garbage" * max(1, path.stat().st_size // 8))


def _change_env_to_reacher(run_dir):
    record = json.loads((run_dir / "config.json").read_text())
    record["env"] = "reacher"  # 11-dim observations, 2 actions: the checkpoint's arrays no longer fit
    (run_dir / "config.json").write_text(json.dumps(record))


@pytest.mark.parametrize("case, flags, damage, expected", [
    ("other env flag", ["--env", "ant"], None, "env='ant' (run has 'inverted_pendulum')"),
    ("other seed flag", ["--seed", "3"], None, "seed=3 (run has 0)"),
    ("corrupt checkpoint", [], _damage_newest_checkpoint, "cannot read checkpoint 4"),
    ("checkpoint of another obs size", [], _change_env_to_reacher, "does not match the run's config"),
    ("resume and overwrite", ["--overwrite"], None, "exclude each other"),
])
def test_bad_resume_is_a_one_line_error_and_changes_nothing(capsys, tiny_run, tmp_path, case, flags, damage,
                                                            expected):
    run_dir = _copy_run(tiny_run, tmp_path)
    if damage is not None:
        damage(run_dir)
    before = _snapshot(run_dir)
    code = cli.main(["train", "--resume", str(run_dir), *flags])
    assert code == 2, case
    assert expected in _single_error_line(capsys.readouterr().err), case
    assert _snapshot(run_dir) == before, case


def test_diverging_run_stops_naming_metric_and_iteration_and_keeps_its_checkpoints(capsys, tmp_path):
    """Rewards of 1e38 overflow the critic's float32 targets at the first update: the run stops there."""
    from purempo import checkpoint

    run_dir = tmp_path / "diverging"
    code = cli.main(["train", *TINY_FLAGS, "--reward-scale", "1e38", "--no-reward-normalization",
                     "--run-dir", str(run_dir)])
    err = capsys.readouterr().err
    assert code == 2
    errors = [line for line in err.splitlines() if "purempo: error:" in line]
    assert len(errors) == 1 and "Traceback" not in err
    # 64 prefill steps = 4 iterations of 16 steps; the 5th iteration makes the first update.
    assert "non-finite" in errors[0] and "critic_loss" in errors[0] and "at iteration 5 " in errors[0]
    assert checkpoint.steps(run_dir) == [0]  # the last good one (the initial state) is kept
    assert (run_dir / "metrics.jsonl").read_text() == ""  # no row from the diverged period


# ------------------------------------------------------------------------------------------------------------
# eval, render, plot
# ------------------------------------------------------------------------------------------------------------


def test_eval_prints_mean_and_std_of_the_checkpointed_policies(capsys, tiny_run):
    import numpy as np

    _, run_dir = tiny_run
    first = cli.run_eval(cli.EvalArgs(run_dir=run_dir, episodes=3))
    again = cli.run_eval(cli.EvalArgs(run_dir=run_dir, episodes=3))
    out = capsys.readouterr().out
    returns = first["returns"]
    assert returns.shape == (2, 3)  # seeds × episodes
    np.testing.assert_array_equal(returns, again["returns"])
    # inverted_pendulum pays 1 per step alive: whole numbers within the 50-step episode.
    assert np.all((returns >= 1) & (returns <= 50)) and np.all(returns == np.round(returns))
    assert f"return {returns.mean():.2f} ± {returns.std():.2f} over 6 episodes" in out
    assert first["step"] == 4 and "checkpoint 4 (6,400 env steps per seed)" in out


def test_render_writes_the_viewer_and_refuses_to_overwrite(capsys, tiny_run, tmp_path):
    _, run_dir = tiny_run
    out = tmp_path / "policy.html"
    assert cli.main(["render", str(run_dir), "--out", str(out), "--run-seed", "1", "--max-steps", "20"]) == 0
    page = out.read_text()
    assert 'id="brax-viewer"' in page and "var system = " in page
    # Offline, the page says why it stays blank: the notice is visible until the viewer's module has loaded.
    notice = page.index('id="purempo-offline"')
    assert "offline" in page[notice:notice + 400] and page.index('id="brax-viewer"') < notice
    assert "import 'viewer'; document.getElementById('purempo-offline').remove();" in page
    out_text = capsys.readouterr().out
    assert "wrote" in out_text and "needs internet access" in out_text
    assert cli.main(["render", str(run_dir), "--out", str(out)]) == 2
    assert "already exists" in _single_error_line(capsys.readouterr().err)
    assert out.read_text() == page
    assert cli.main(["render", str(run_dir), "--out", str(tmp_path / "b.html"), "--run-seed", "2"]) == 2
    assert "seeds 0..1" in _single_error_line(capsys.readouterr().err)


def test_plot_writes_a_png_and_reports_bad_metrics_in_one_line(capsys, tiny_run, tmp_path):
    _, run_dir = tiny_run
    out = tmp_path / "curves.png"
    assert cli.main(["plot", str(run_dir), str(run_dir), "--merge", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cli.main(["plot", str(run_dir), "--metric", "nope", "--out", str(tmp_path / "other.png")]) == 2
    assert "nope" in _single_error_line(capsys.readouterr().err)
    assert not (tmp_path / "other.png").exists()


def test_on_a_gpu_backend_auto_scale_uses_only_measured_gpu_presets(monkeypatch, capsys):
    # --scale auto on a GPU: a GPU preset listed as measured is used; any other (ant) is not, and one line says
    # what it would change.
    from purempo import presets

    monkeypatch.setattr(presets, "default_scale", lambda: "gpu")
    monkeypatch.setattr(presets, "MEASURED_GPU", frozenset({"CheetahRun"}))
    assert cli.parse_train_args(["--env", "CheetahRun"]).config == presets.preset("CheetahRun", scale="gpu")
    assert capsys.readouterr().err == ""
    assert cli.parse_train_args(["--env", "ant"]).config == presets.preset("ant", scale="cpu")
    note = capsys.readouterr().err
    assert note.count("\n") == 1 and note.startswith("purempo: note: ant's GPU preset") and "untested" in note
    assert cli.parse_train_args(["--env", "ant", "--scale", "gpu"]).config == presets.preset("ant", scale="gpu")
    assert cli.parse_train_args(["--env", "ant", "--scale", "cpu"]).config == presets.preset("ant", scale="cpu")
    assert capsys.readouterr().err == ""
    assert cli.parse_train_args(["--env", "ant", "--scale", "gpu", "--num-envs", "2048", "--prefill-steps",
                                 "24576"]).config.num_envs == 2048
    monkeypatch.setattr(presets, "default_scale", lambda: "cpu")
    assert cli.parse_train_args(["--env", "ant"]).config.num_envs == presets.PRESETS["ant"]["num_envs"]
    assert capsys.readouterr().err == ""


def test_a_gymnax_env_trains_evaluates_and_renders_from_the_command_line(tmp_path, capsys):
    """Breakout-MinAtar from its preset with the conv torso through every command: train (2 seeds), eval, render as a GIF
    and as a PNG strip of MinAtar frames (an .html is refused), plot; TensorBoard written. (Exact resumes of a
    discrete run: tests/test_sharding.py, tests/test_discrete_train.py.)"""
    run_dir = tmp_path / "breakout"
    flags = ["train", "--env", "breakout_minatar", "--total-steps", "3072", "--num-envs", "8", "--unroll-length",
             "4", "--updates-per-iteration", "2", "--batch-size", "8", "--sequence-length", "4", "--policy-hidden",
             "16", "--critic-hidden", "16", "--prefill-steps", "64", "--num-evals", "3", "--eval-episodes", "2",
             "--episode-length", "40", "--replay-size", "1024", "--reset-pool-size", "16", "--num-seeds", "2",
             "--observation-torso", "conv", "--min-action-prob", "0.02", "--run-dir", str(run_dir)]
    assert cli.main(flags) == 0
    config = json.loads((run_dir / "config.json").read_text())
    assert config["env"] == "Breakout-MinAtar" and config["observation_torso"] == "conv"
    assert config["time_limit"] == 40 and not config["observation_normalization"]  # the MinAtar preset's
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(len(row["eval_return_per_seed"]) == 2 for row in rows)
    assert all(math.isfinite(rows[-1][name]) for name in ("kl_policy", "policy_entropy", "temperature", "q_mean"))
    assert list((run_dir / "tb").iterdir())
    capsys.readouterr()
    assert cli.main(["eval", str(run_dir), "--episodes", "2"]) == 0
    assert "Breakout-MinAtar, checkpoint 3" in capsys.readouterr().out
    from PIL import Image

    gif, strip = tmp_path / "episode.gif", tmp_path / "episode.png"
    assert cli.main(["render", str(run_dir), "--out", str(gif), "--max-steps", "12"]) == 0
    with Image.open(gif) as image:
        assert image.n_frames >= 2 and image.size == (160, 160)  # MinAtar's 10 × 10 cells, 16 pixels each
    assert cli.main(["render", str(run_dir), "--out", str(strip), "--max-steps", "12"]) == 0
    assert Image.open(strip).format == "PNG"
    assert cli.main(["render", str(run_dir), "--out", str(tmp_path / "episode.html")]) != 0
    assert "written as .gif or .png" in capsys.readouterr().err
    assert cli.main(["plot", str(run_dir), "--out", str(tmp_path / "curves.png")]) == 0
