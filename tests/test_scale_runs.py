"""A 4-device run that learns (child process, tests/_sharded_children.py) and a hyper-parameter sweep through
the CLI: the longer runs of the scale features, in a file of their own so that pytest-xdist runs them beside
tests/test_sharding.py."""

import json

import pytest

from test_sharding import _run


@pytest.mark.slow
def test_four_devices_learn_inverted_pendulum(tmp_path):
    # The default config (256 envs: 64 per device) with XLA's full CPU optimisation; one seed. It solved at
    # 29k env steps in the run behind docs/journal.md §8.
    result = _run("learn", tmp_path / "out.json", tmp_path / "run", fast=False)
    assert result["devices"] == 4
    assert max(result["returns"]) >= 950, result["returns"]
    assert result["returns"][-1] >= 950, result["returns"]


def test_a_sweep_runs_every_member_in_one_program_into_its_own_run_directory(tmp_path):
    # Two critic learning rates × 2 seeds through the CLI on one device: one run directory per member, each a
    # complete run (config with its value, metrics per seed, checkpoints) that eval and plot read; a member
    # equals the same config trained alone (its seeds' first evaluation), and plot draws both side by side.
    from purempo import cli, plotting

    flags = ["--total-steps", "1280", "--num-envs", "8", "--unroll-length", "2", "--updates-per-iteration", "2",
             "--batch-size", "8", "--sequence-length", "4", "--num-action-samples", "4", "--policy-hidden", "8",
             "--critic-hidden", "8", "--prefill-steps", "64", "--num-evals", "2", "--eval-episodes", "2",
             "--episode-length", "50", "--replay-size", "1024", "--num-seeds", "2", "--no-tensorboard"]
    sweep_dir = tmp_path / "sweep"
    assert cli.main(["train", *flags, "--sweep", "critic_lr=1e-3,3e-2", "--run-dir", str(sweep_dir)]) == 0
    record = json.loads((sweep_dir / "sweep.json").read_text())
    assert record["members"] == ["critic_lr=0.001", "critic_lr=0.03"]
    alone = tmp_path / "alone"
    assert cli.main(["train", *flags, "--critic-lr", "3e-2", "--run-dir", str(alone)]) == 0
    rows = {}
    for name in record["members"] + ["alone"]:
        path = alone if name == "alone" else sweep_dir / name
        rows[name] = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    assert json.loads((sweep_dir / "critic_lr=0.03" / "config.json").read_text())["critic_lr"] == 0.03
    assert rows["critic_lr=0.03"][0]["eval_return_per_seed"] == rows["alone"][0]["eval_return_per_seed"]
    assert rows["critic_lr=0.03"][-1]["critic_loss"] == pytest.approx(rows["alone"][-1]["critic_loss"], rel=1e-4)
    assert rows["critic_lr=0.001"][-1]["critic_loss"] != rows["critic_lr=0.03"][-1]["critic_loss"]
    assert (sweep_dir / "critic_lr=0.001" / "checkpoints" / "2").is_dir()
    assert cli.main(["eval", str(sweep_dir / "critic_lr=0.001"), "--episodes", "2"]) == 0
    figure = plotting._figure([plotting.load_run(p) for p in plotting._expand_sweeps([sweep_dir])])
    assert [text.get_text().split(" (")[0] for text in figure.axes[0].get_legend().get_texts()] == record["members"]
    # A bad grid is one line before anything is written.
    assert cli.main(["train", *flags, "--sweep", "critic_lr=1e-3,x", "--run-dir", str(tmp_path / "bad")]) == 2
    assert cli.main(["train", *flags, "--sweep", "nope=1", "--run-dir", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()


def test_checkpoint_replay_auto_leaves_a_large_replay_out(tmp_path, monkeypatch):
    # auto keeps the replay in checkpoints while the whole replay is at most REPLAY_CHECKPOINT_AUTO_BYTES.
    from purempo import checkpoint, driver
    from test_checkpoint import TINY

    options = driver.Options(tensorboard=False)
    driver.train(TINY, tmp_path / "small", options)
    monkeypatch.setattr(driver, "REPLAY_CHECKPOINT_AUTO_BYTES", 1000)  # this TINY replay is larger
    driver.train(TINY, tmp_path / "large", options)
    driver.train(TINY, tmp_path / "forced", driver.Options(tensorboard=False, checkpoint_replay="always"))

    import jax

    from purempo.train import make_trainer

    abstract = jax.eval_shape(jax.vmap(make_trainer(TINY).init), jax.random.split(jax.random.PRNGKey(0), 1))

    def has_replay(run_dir):
        return checkpoint.restore(run_dir, abstract, with_replay=False).has_replay

    assert has_replay(tmp_path / "small") and not has_replay(tmp_path / "large") and has_replay(tmp_path / "forced")


def test_a_callback_can_end_a_run_early_and_resume_finishes_it_identically(tmp_path):
    # Callbacks.stop (a wall-time budget, say) ends the run after an evaluation with a checkpoint of it;
    # --resume then finishes the run, ending where an uninterrupted one does (replay checkpointed).
    import numpy as np

    from purempo import driver
    from test_checkpoint import TINY

    class StopAfterFirst(driver.Callbacks):
        def stop(self, row):
            return row["eval"] == 1

    options = driver.Options(tensorboard=False)
    driver.train(TINY, tmp_path / "whole", options)
    driver.train(TINY, tmp_path / "cut", options, callbacks=StopAfterFirst())
    assert len((tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()) == 1
    assert (tmp_path / "cut" / "checkpoints" / "1").is_dir()
    driver.train(TINY, tmp_path / "cut", options, resume=True)
    rows = {name: [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
            for name in ("whole", "cut")}
    assert [r["eval_return_per_seed"] for r in rows["cut"]] == [r["eval_return_per_seed"] for r in rows["whole"]]
    assert [r["critic_loss"] for r in rows["cut"]] == [r["critic_loss"] for r in rows["whole"]]
    finals = [driver.evaluate_run(tmp_path / name, episodes=2)["returns"] for name in ("whole", "cut")]
    np.testing.assert_array_equal(*finals)
