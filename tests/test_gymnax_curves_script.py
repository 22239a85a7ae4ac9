"""benchmarks/gymnax_curves.py end to end on a tiny CartPole run: its JSON, summary figures, PNG, and the report's
reading of it; stability.py points gymnax envs to it."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gymnax_curves  # noqa: E402
import report  # noqa: E402
import stability  # noqa: E402

TINY = dict(num_envs=8, unroll_length=4, updates_per_iteration=2, batch_size=8, sequence_length=4, replay_size=1024,
            prefill_steps=64, reset_pool_size=16, policy_hidden=(16,), critic_hidden=(16,), total_steps=1536,
            num_evals=3, eval_episodes=2, episode_length=30)


def test_the_script_records_every_evaluation_per_seed_and_the_report_reads_it(tmp_path, monkeypatch):
    sets = [f"--set={field}={value!r}" for field, value in TINY.items()]
    monkeypatch.setattr(sys, "argv", ["gymnax_curves.py", "--env", "CartPole-v1", "--num-seeds", "2", "--name",
                                      "tiny", "--out", str(tmp_path), *sets])
    gymnax_curves.main()
    path = tmp_path / "gymnax_CartPole-v1_tiny.json"
    summary = json.loads(path.read_text())
    assert summary["complete"] and summary["seed_list"] == [0, 1] and path.with_suffix(".png").exists()
    chunks = summary["chunks"]
    assert [c["env_steps"] for c in chunks] == [512, 1024, 1536]  # 3 evaluations of 16 iterations of 32 steps
    assert all(len(c["eval_return"]) == 2 and 1 <= min(c["eval_return"]) <= 30 for c in chunks)  # reward 1 a step
    for c in chunks:  # learner diagnostics per seed (the prefill's 2 iterations of the first period are NaN, skipped)
        assert all(v is not None and v > 0 for v in c["kl_policy_max"] + c["temperature"])
    for i, seed in enumerate(summary["seeds"]):
        returns = [c["eval_return"][i] for c in chunks]
        assert seed["best"] == max(returns) and seed["final"] == returns[-1]
        assert seed["steps_to_threshold"] is None  # 500 cannot be reached in 30-step episodes
    assert summary["env_steps_per_s"] > 0 and summary["anchor"]["target"] == 500.0
    monkeypatch.setattr(report, "RESULTS", Path(tmp_path.name))
    curves = report.curves(tmp_path.parent, path.stem)
    assert [c.returns for c in curves] == [[c["eval_return"][i] for c in chunks] for i in range(2)]
    assert all(c.threshold == 500.0 and c.seeds_in_program == 2 for c in curves)


def test_stability_script_points_gymnax_envs_to_this_script(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["stability.py", "--env", "Acrobot-v1"])
    with pytest.raises(SystemExit, match="gymnax_curves.py"):
        stability.main()
