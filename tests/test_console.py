"""`purempo train` on a terminal and in a pipe, run as a user runs it (subprocesses, a pseudo-terminal where the
behaviour depends on it): progress within an evaluation period, the compile notice, Ctrl-C, empty training
returns, env names, a full disk, one-line errors, a longer resumed run, --version and --help."""

import json
import os
import pty
import re
import resource
import select
import signal
import subprocess
import sys
import time

import pytest

from purempo import driver

# 8 envs × 2 steps = 16 env steps per iteration. Most runs below have evaluation periods of 1,600 env steps (100
# iterations, run as 20 calls of 5), so that they share compiled programs through the session's compile cache.
TINY = ["--num-envs", "8", "--unroll-length", "2", "--updates-per-iteration", "1", "--batch-size", "8",
        "--sequence-length", "4", "--num-action-samples", "4", "--policy-hidden", "16", "16", "--critic-hidden", "16",
        "16", "--prefill-steps", "64", "--eval-episodes", "2", "--episode-length", "50", "--replay-size", "4096"]


def _env():
    return dict(os.environ, COLUMNS="200", JAX_PLATFORMS="cpu", TERM="xterm-256color")


def _purempo(*args, timeout=600, **kwargs):
    return subprocess.run([sys.executable, "-m", "purempo.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=_env(), **kwargs)


def _lines(text):
    return [line for line in text.splitlines() if line.strip() and not line.startswith("WARNING")]


def _in_terminal(args, cwd, timeout=600):
    """Runs `purempo ARGS` with stdout and stderr on a pseudo-terminal; returns (exit code, everything shown)."""
    controller, terminal = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "purempo.cli", *args], stdin=terminal, stdout=terminal,
                            stderr=terminal, env=_env(), cwd=cwd, close_fds=True)
    os.close(terminal)
    shown, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([controller], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            shown += chunk
        elif proc.poll() is not None:
            break
    proc.wait(timeout=60)
    os.close(controller)
    return proc.returncode, shown.decode(errors="replace")


def test_the_bar_moves_within_an_evaluation_period_and_shows_an_eta(tmp_path):
    """Evaluation periods of 100 iterations: on a terminal the bar shows step counts between 0 and the end that
    no evaluation line shows, and an ETA; the header and the compile notice come before compilation ends."""
    code, shown = _in_terminal(["train", *TINY, "--total-steps", "3200", "--num-evals", "2",
                                "--run-dir", str(tmp_path / "run")], tmp_path)
    assert code == 0, shown[-3000:]
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", shown)
    counts = {int(c.replace(",", "")) for c in re.findall(r"([\d,]+)/3,200 steps", plain)}
    assert any(0 < c < 3200 and c != 1600 for c in counts), sorted(counts)
    assert re.search(r"ETA \d+:\d\d", plain), plain[-2000:]
    header, compiling = plain.index("purempo inverted_pendulum"), plain.index("compiling…")
    done = re.search(r"(compiled|loaded the compiled programs from the cache) in [\d.]+ s", plain)
    assert done and header < compiling < done.start() < plain.index("steps      1,600")


def test_piped_output_is_plain_unwrapped_lines_in_order(tmp_path):
    """In a pipe: no bar, no escape codes, the header, the compile notice, "compiled", then one unbroken line
    per evaluation however long."""
    result = _purempo("train", *TINY, "--total-steps", "3200", "--num-evals", "2", "--run-dir", str(tmp_path / "run"),
                      cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = _lines(result.stderr)
    assert "\x1b[" not in result.stderr
    assert lines[0].startswith("purempo inverted_pendulum") and lines[1].startswith("compiling…")
    assert re.match(r"(compiled|loaded the compiled programs from the cache) in [\d.]+ s", lines[2])
    evaluations = [line for line in lines if line.startswith("steps ")]
    assert len(evaluations) == 2 and all("KLσ" in line and len(line) > 80 for line in evaluations)


def test_progress_reaches_the_callbacks_within_each_period(tmp_path):
    """`Callbacks.progress` gets increasing env steps, at least 16 times per evaluation period here, ending on
    each evaluation's env steps; the rows are those of the same run without progress (same seed, same bits)."""
    from purempo.config import Config

    class Record(driver.Callbacks):
        def __init__(self):
            self.steps, self.evaluated_at = [], []

        def progress(self, env_steps):
            self.steps.append(env_steps)

        def evaluated(self, row, steps_per_second):
            self.evaluated_at.append(row["env_steps"])

    config = Config(num_envs=8, unroll_length=2, updates_per_iteration=1, batch_size=8, sequence_length=4,
                    num_action_samples=4, policy_hidden=(16, 16), critic_hidden=(16, 16), prefill_steps=64,
                    eval_episodes=2, episode_length=50, replay_size=4096, total_steps=3200, num_evals=2)
    record = Record()
    driver.train(config, tmp_path / "run", callbacks=record)
    assert record.steps == sorted(record.steps) and len(record.steps) >= 2 * 16
    assert record.evaluated_at == [1600, 3200] and {1600, 3200} <= set(record.steps)
    assert driver.progress_iterations(64) == 4 and driver.progress_iterations(61) == 1


def _wait_for(path_or_text, proc, log, timeout=400):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the run ended early: {log.read_text()[-2000:]}")
        if (path_or_text(log.read_text()) if callable(path_or_text) else path_or_text.exists()):
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


def _interrupt(proc, log):
    tick = time.monotonic()
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    return time.monotonic() - tick, log.read_text()


def test_ctrl_c_while_compiling_exits_at_once_and_leaves_no_run_dir(tmp_path):
    run_dir = tmp_path / "runs" / "new"
    log = tmp_path / "log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "purempo.cli", "train", *TINY, "--total-steps", "3200",
                                 "--num-evals", "2", "--run-dir", str(run_dir), "--no-compile-cache"],
                                stdout=out, stderr=out, env=_env(), cwd=tmp_path)
        _wait_for(lambda text: "compiling…" in text, proc, log)
        time.sleep(1.0)
        seconds, text = _interrupt(proc, log)
    assert proc.returncode == 130, text
    assert seconds < 10, f"took {seconds:.1f} s to exit"
    assert "interrupted before the first checkpoint" in text and "Traceback" not in text
    assert not run_dir.exists() and not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_ctrl_c_while_training_says_how_to_resume_and_resume_continues(tmp_path):
    """Interrupted after its first checkpoint, a run exits at once with the resume command; running that command
    finishes the run with the rows of an uninterrupted one."""
    run_dir = tmp_path / "run"
    log = tmp_path / "log"
    flags = [*TINY, "--total-steps", "48000", "--num-evals", "30", "--seed", "3"]
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "purempo.cli", "train", *flags, "--run-dir", str(run_dir)],
                                stdout=out, stderr=out, env=_env(), cwd=tmp_path)
        _wait_for(run_dir / "checkpoints" / "1", proc, log)
        seconds, text = _interrupt(proc, log)
    assert proc.returncode == 130, text
    assert seconds < 10, f"took {seconds:.1f} s to exit"
    command = f"purempo train --resume {run_dir}"
    assert command in text and "Traceback" not in text, text[-2000:]
    resumed = _purempo("train", "--resume", str(run_dir), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["eval"] for row in rows] == list(range(1, 31))


def test_a_second_ctrl_c_while_a_checkpoint_is_written_quits_at_once(tmp_path):
    """The first Ctrl-C during a write waits for it (saying so); a second one quits at once with code 130."""
    script = (
        "import os, signal, sys, time\n"
        "from purempo import driver\n"
        "with driver.handle_interrupts(lambda text: print('notice:', text, flush=True)):\n"
        "    with driver._writing():\n"
        "        os.kill(os.getpid(), signal.SIGINT)\n"
        "        print('still writing', flush=True)\n"
        "        os.kill(os.getpid(), signal.SIGINT)\n"
        "        time.sleep(30)\n"
        "print('not reached')\n")
    tick = time.monotonic()
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=_env())
    assert time.monotonic() - tick < 20 and result.returncode == 130, result.stderr
    assert result.stdout.splitlines() == [
        "notice: interrupted: finishing the checkpoint being written (Ctrl-C again to quit now)", "still writing",
        "notice: quitting now"]
    deferred = (
        "import os, signal\n"
        "from purempo import driver\n"
        "with driver.handle_interrupts(print):\n"
        "    try:\n"
        "        with driver._writing():\n"
        "            os.kill(os.getpid(), signal.SIGINT)\n"
        "            print('write finished')\n"
        "    except KeyboardInterrupt:\n"
        "        print('stopped after the write')\n")
    result = subprocess.run([sys.executable, "-c", deferred], capture_output=True, text=True, timeout=60, env=_env())
    assert result.stdout.splitlines()[-2:] == ["write finished", "stopped after the write"], result.stdout


def test_no_finished_training_episode_is_null_not_zero(tmp_path):
    """Brax's `fast` env never ends an episode: its rows store null (and the number of episodes, 0), TensorBoard
    gets no point, and the console prints a dash."""
    run_dir = tmp_path / "run"
    result = _purempo("train", *TINY, "--env", "fast", "--episode-length", "1000", "--total-steps", "3200",
                      "--num-evals", "2", "--run-dir", str(run_dir), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["train_episode_return"] for row in rows] == [None, None]
    assert [row["train_episodes"] for row in rows] == [0, 0]
    assert all(re.search(r"train +— \(0 ep\)", line) for line in _lines(result.stderr) if line.startswith("steps"))
    from tensorboardX.proto import event_pb2  # noqa: F401  (tensorboardX is installed)

    events = b"".join(path.read_bytes() for path in (run_dir / "tb").glob("events.out.tfevents.*"))
    assert b"purempo/train_episodes" in events and b"purempo/train_episode_return" not in events


def test_an_hl_gauss_critic_needs_reward_bounds_and_says_when_its_support_clips_the_targets(tmp_path):
    """Without --reward-range an hl_gauss critic is refused in one line; with bounds far below the returns
    (rewards of 1, support [0, 10]) every evaluation line says what fraction of the targets was clipped, and the
    metrics store it; with the true bounds (0, 1) no line does."""
    hl_gauss = ["--env", "inverted_pendulum", "--critic-head", "hl_gauss", "--critic-bins", "21", "--total-steps",
                "3200", "--num-evals", "2"]
    refused = _purempo("train", *TINY, *hl_gauss, "--run-dir", str(tmp_path / "refused"))
    assert refused.returncode == 2 and len(_lines(refused.stderr)) == 1, refused.stderr
    assert "invalid --reward-range=None" in refused.stderr and "hl_gauss" in refused.stderr
    assert not (tmp_path / "refused").exists()
    for reward_range, clips in ((["0", "0.002"], True), (["0", "1"], False)):
        run_dir = tmp_path / reward_range[1]
        result = _purempo("train", *TINY, *hl_gauss, "--reward-range", *reward_range, "--run-dir", str(run_dir))
        assert result.returncode == 0, result.stderr[-2000:]
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        evaluations = [line for line in _lines(result.stderr) if line.startswith("steps")]
        assert len(evaluations) == 2
        warned = [re.search(r"(\d+\.\d)% of critic targets clipped to the value support: widen --reward-range", line)
                  for line in evaluations]
        if clips:
            assert all(row["targets_clipped"] > 0.25 for row in rows)  # Q starts at 0, targets rise past 2
            assert [float(m.group(1)) for m in warned] == [round(100 * row["targets_clipped"], 1) for row in rows]
        else:
            assert all(row["targets_clipped"] < 0.01 for row in rows) and not any(warned)


def test_env_names_match_without_case_and_unknown_ones_suggest(tmp_path):
    result = _purempo("train", "--env", "cheetah_run", "--total-steps", "1", "--run-dir", str(tmp_path / "r"))
    assert result.returncode == 2
    assert "purempo: note: --env cheetah_run is CheetahRun" in result.stderr
    assert "unknown env" not in result.stderr
    result = _purempo("train", "--env", "HalfCheetahh", "--run-dir", str(tmp_path / "r"))
    lines = _lines(result.stderr)
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "did you mean halfcheetah" in lines[0] and len(lines[0]) < 200
    listing = _purempo("envs")
    assert listing.returncode == 0
    assert "Brax, 11 envs: runs" in listing.stdout and "CheetahRun" in listing.stdout
    assert "DeepMind Control Suite, 25 envs: runs" in listing.stdout
    assert re.search(r"locomotion, \d+ envs: (runs|needs MuJoCo Menagerie)", listing.stdout)
    assert "fast" not in listing.stdout.split()


def _limit_file_size(limit):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


# With the replay in the checkpoints and no reset pool, checkpoint 0's largest file is ~22 kB (the replay is empty
# and compresses to nothing) and checkpoint 1's ~49 kB: a 30 kB limit lets the first through and stops the second.
@pytest.mark.parametrize("limit, intact", [(30_000, "checkpoint 0 is intact"), (200, "no checkpoint was written")])
def test_a_full_disk_is_one_line_naming_the_intact_checkpoint(tmp_path, limit, intact):
    """Writes that find no room (here a file size limit, EFBIG, which the run treats as a full disk) end the run
    with one line, no traceback, and the command that continues it; the intact checkpoint resumes."""
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "purempo.cli", "train", *TINY, "--total-steps", "16000",
                           "--num-evals", "5", "--run-dir", str(run_dir), "--no-tensorboard", "--reset-pool-size",
                           "0", "--checkpoint-replay", "always"],
                          capture_output=True, text=True, timeout=600, env=_env(), cwd=tmp_path,
                          preexec_fn=_limit_file_size(limit))
    lines = _lines(proc.stderr)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) < 40, proc.stderr[-3000:]
    error = [line for line in lines if line.startswith("purempo: error:")]
    assert len(error) == 1 and "file too large" in error[0] and intact in error[0], proc.stderr[-2000:]
    if "checkpoint 0" in intact:
        assert f"purempo train --resume {run_dir}" in error[0]
        resumed = _purempo("train", "--resume", str(run_dir), cwd=tmp_path)
        assert resumed.returncode == 0 and "resuming after evaluation 0" in resumed.stderr, resumed.stderr[-2000:]


@pytest.mark.parametrize("flags, expected", [
    (["--total-steps", "1.5"], "invalid --total-steps=1.5: must be a whole number"),
    (["--num-devices", "3"], "XLA_FLAGS=--xla_force_host_platform_device_count=3"),
    (["--scale", "gpu", "--env", "halfcheetah", "--total-steps", "5e4"],
     "invalid --total-steps=50000: must be >= --num-evals * --num-envs * --unroll-length = 81920 (one iteration per "
     "evaluation); raise --total-steps or lower --num-evals"),
])
def test_bad_counts_and_devices_are_one_line_naming_the_flag(tmp_path, flags, expected):
    result = _purempo("train", *flags, "--run-dir", str(tmp_path / "r"))
    lines = _lines(result.stderr)
    assert result.returncode == 2 and len(lines) == 1 and expected in lines[0], result.stderr
    assert not result.stderr.startswith("\n")


def test_counts_take_whole_number_floats(tmp_path):
    """`--total-steps 1e5` is 100000 (as typed by RL users); the run's config says so."""
    run_dir = tmp_path / "r"
    result = _purempo("train", "--total-steps", "1e5", "--num-evals=1e0", "--num-envs", "2.56e2", "--run-dir",
                      str(run_dir), "--num-devices", "7")  # stops at the device check, after parsing
    assert "JAX sees 1 cpu device(s)" in result.stderr, result.stderr
    from purempo import cli

    args = cli.parse_train_args(["--total-steps", "1e5", "--num-evals=2.0", "--seed", "1e1"])
    assert (args.config.total_steps, args.config.num_evals, args.options.seed) == (100_000, 2, 10)


def test_a_finished_run_trains_on_with_a_larger_total(tmp_path):
    """`--resume DIR --total-steps N` continues a finished run bit-identically to a run started with N (and the
    evaluations that keep the period), says so, and refuses a smaller total."""
    base = [*TINY, "--num-seeds", "2"]
    first, fresh = tmp_path / "first", tmp_path / "fresh"
    assert _purempo("train", *base, "--total-steps", "3200", "--num-evals", "2", "--run-dir", str(first)).returncode == 0
    longer = _purempo("train", "--resume", str(first), "--total-steps", "6500")
    assert longer.returncode == 0, longer.stderr[-2000:]
    assert ("training on to 6,400 env steps: 4 evaluation periods of 1,600 env steps, as a run started with "
            "--total-steps 6400 --num-evals 4; 6,500 is not a whole number of periods") in longer.stderr
    assert _purempo("train", *base, "--total-steps", "6400", "--num-evals", "4", "--run-dir", str(fresh)).returncode == 0

    def rows(run_dir):
        return [{k: v for k, v in json.loads(line).items() if k != "wall_time_s"}
                for line in (run_dir / "metrics.jsonl").read_text().splitlines()]

    assert rows(first) == rows(fresh) and len(rows(first)) == 4
    assert json.loads((first / "config.json").read_text())["num_evals"] == 4
    shorter = _purempo("train", "--resume", str(first), "--total-steps", "6000")
    assert shorter.returncode == 2 and "a resumed run can only grow" in shorter.stderr


def test_version_and_help_into_a_closed_pipe():
    result = _purempo("--version")
    assert result.returncode == 0 and re.fullmatch(r"purempo \d+\.\d+\.\d+\n", result.stdout)
    piped = subprocess.run(f"{sys.executable} -m purempo.cli train --help | head -3", shell=True,
                           capture_output=True, text=True, timeout=300, env=_env())
    assert len(piped.stdout.splitlines()) == 3 and "Error" not in piped.stderr and "Traceback" not in piped.stderr, \
        piped.stderr


def test_train_help_is_grouped_with_the_essentials_first_one_line_each():
    """`train --help`: every flag once, in a group by concern, the essentials first, one line each; tyro's full
    descriptions stay behind --help-full."""
    from purempo import cli

    result = _purempo("train", "--help")
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("usage: purempo train [--env NAME]")
    essentials = lines.index("essentials:")
    assert [line.split()[0] for line in lines[essentials + 1:essentials + 5]] == [
        "--env", "--total-steps", "--num-seeds", "--run-dir"]
    flags = [line.split()[0] for line in lines if line.startswith("  -")]
    flags = [flag.rstrip(",") for flag in flags]
    parser_flags = {f for a in __import__("tyro").extras.get_parser(cli.TrainArgs)._actions for f in a.option_strings
                    if f.startswith("--") and not f.startswith("--no-") and f != "--help"}
    shown = {f.replace("--[no-]", "--") for line in lines if line.startswith("  -")
             for f in line.split("  ")[1].replace(",", " ").split() if f.startswith("--")}
    assert shown == parser_flags and len(flags) == len(set(flags)) and "other:" not in lines
    assert all(len(line) <= 140 for line in lines)
    full = _purempo("train", "--help-full")
    assert full.returncode == 0 and "Retrace trace coefficient" in full.stdout


def test_simulator_notices_are_quiet_unless_verbose(tmp_path):
    """MuJoCo's deprecation notice while compiling CheetahRun's model is hidden; PUREMPO_VERBOSE (`train -v`)
    shows it."""
    script = "from purempo import envs; envs.make('CheetahRun'); print('made')"
    quiet = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=_env(), timeout=300)
    loud = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env=dict(_env(), PUREMPO_VERBOSE="1"))
    assert quiet.stdout == "made\n" and "settotalmass" not in quiet.stderr, quiet.stderr
    assert "settotalmass" in loud.stderr
    from purempo import cli

    assert cli.parse_train_args(["-v"]).verbose and not cli.parse_train_args([]).verbose


def test_warp_solver_messages_are_off_unless_verbose():
    """MuJoCo Warp prints a line whenever its solver hits its iteration limit (hundreds per run); its own
    `warn_overflow` switch is off in purempo's envs, on with PUREMPO_VERBOSE (`train -v`). The model is built
    on the CPU here; the messages themselves need a GPU run."""
    script = ("from purempo import envs; env = envs.make('CartpoleBalance', impl='warp'); "
              "print(env.mjx_model.opt._impl.warn_overflow)")
    quiet = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=_env(), timeout=600)
    loud = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                          env=dict(_env(), PUREMPO_VERBOSE="1"))
    assert quiet.stdout.split() == ["0"] and not quiet.stderr.strip(), quiet.stderr
    assert int(loud.stdout.split()[-1]) != 0


def test_a_ctrl_c_python_drops_is_raised_again_without_a_traceback():
    """A Ctrl-C that lands in a finaliser (JAX's garbage-collection callback, in practice) cannot propagate;
    Python would print it as "Exception ignored" with a traceback. It is kept quiet and raised at the next check."""
    script = (
        "import os, signal, time\n"
        "from purempo import driver\n"
        "class Finalised:\n"
        "    def __del__(self):\n"
        "        os.kill(os.getpid(), signal.SIGINT)\n"
        "        time.sleep(0.05)\n"
        "with driver.handle_interrupts(print):\n"
        "    try:\n"
        "        value = Finalised()\n"
        "        del value\n"
        "        print('went on')\n"
        "        driver.check_interrupt()\n"
        "    except KeyboardInterrupt:\n"
        "        print('raised again')\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=_env())
    assert result.stdout.splitlines() == ["went on", "raised again"], result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, result.stderr
