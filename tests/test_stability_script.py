"""benchmarks/stability.py's sweep grid and file names (the script itself is a long benchmark)."""

import argparse
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import stability  # noqa: E402

from purempo import Config  # noqa: E402


def test_sweep_is_the_drivers_grid_in_order():
    config = Config(env="inverted_pendulum")
    members, settings = stability.sweep_settings(config, ["alpha_gain=0,0.2", "discount=0.99,0.995,0.999"])
    assert settings == [{"alpha_gain": a, "discount": d} for a in (0.0, 0.2) for d in (0.99, 0.995, 0.999)]
    assert [(m.config.alpha_gain, m.config.discount) for m in members] == [tuple(s.values()) for s in settings]
    members, settings = stability.sweep_settings(config, [])
    assert settings == [{}] and members[0].config == config


@pytest.mark.parametrize("item", ["alpha_gain", "num_envs=8,16", "alpha_gain=0,fast", "=1"])
def test_sweep_rejects_non_float_fields_and_values(item):
    with pytest.raises(SystemExit, match="--sweep"):
        stability.sweep_settings(Config(env="inverted_pendulum"), [item])


def test_file_names_are_unique_per_env_and_setting():
    def stem(env, name, setting):
        return stability.file_stem(argparse.Namespace(env=env, name=name), setting)

    assert stem("hopper", None, {}) == "stability_hopper"
    assert stem("hopper", "gpu", {"alpha_gain": 0.05}) == "stability_hopper_gpu_alpha_gain0.05"
    assert stem("halfcheetah", "gpu", {"alpha_gain": 0.05}) != stem("hopper", "gpu", {"alpha_gain": 0.05})
    assert stem("inverted_pendulum", "inverted_pendulum_final", {}) == "stability_inverted_pendulum_final"
    assert (stem("inverted_pendulum", None, {"alpha_gain": 0.2, "discount": 0.995})
            == "stability_inverted_pendulum_alpha_gain0.2-discount0.995")


@pytest.mark.parametrize("per_dimension", [False, True])
def test_plotted_kl_bound_is_the_one_m_step_holds_the_summed_kl_to(per_dimension):
    """The KL panel divides the summed KL peak by `summed_kl_bounds`; with one summed multiplier, m_step's own
    violation ratio is that same quotient, so the two must agree for either reading of ε."""
    import jax
    import jax.numpy as jnp

    from purempo import mpo

    batch, dims = 5, 3
    k = jax.random.split(jax.random.PRNGKey(0), 4)
    online_mean, target_mean = jax.random.normal(k[0], (batch, dims)), jax.random.normal(k[1], (batch, dims))
    online_std, target_std = jnp.full((batch, dims), 0.5), jnp.full((batch, dims), 0.7)
    actions = jax.random.normal(k[2], (4, batch, dims))
    weights = jax.nn.softmax(jax.random.normal(k[3], (4, batch)), axis=0)
    config = dict(epsilon_mean=5e-3, epsilon_std=1e-5, epsilon_per_dimension=per_dimension)
    _, _, stats = mpo.m_step(online_mean, online_std, target_mean, target_std, actions, weights, jnp.ones(1),
                             jnp.ones(1), config["epsilon_mean"], config["epsilon_std"], False,
                             epsilon_per_dimension=per_dimension)
    bound_mean, bound_std = stability.summed_kl_bounds(config, dims)
    assert float(jnp.sum(stats.kl_mean)) / bound_mean == pytest.approx(float(stats.violation_mean[0]), rel=1e-5)
    assert float(jnp.sum(stats.kl_std)) / bound_std == pytest.approx(float(stats.violation_std[0]), rel=1e-5)
    assert bound_mean == pytest.approx(5e-3 * (dims if per_dimension else 1))


def test_steps_to_threshold_target_is_inverted_pendulums_only():
    """The 35k-step target is inverted_pendulum's own; another task's threshold run checks holding only."""
    runs = [dict(steps_to_threshold=368_640, fraction_at_threshold_after=1.0, final=863.7),
            dict(steps_to_threshold=327_680, fraction_at_threshold_after=0.95, final=840.0)]
    cartpole = stability.targets("CartpoleSwingup", runs, 800.0)
    assert cartpole == {"every seed reaches the threshold": True,
                        "every seed holds it in >= 98% of later evaluations": False,
                        "every seed ends at or above it": True}
    pendulum = stability.targets("inverted_pendulum", [dict(r, final=1000.0) for r in runs], 950.0)
    assert pendulum["mean steps to threshold <= 35k"] is False


TINY = dict(episode_length=50, total_steps=1_024, num_envs=8, unroll_length=2, updates_per_iteration=2,
            prefill_steps=32, num_evals=2, eval_episodes=2, replay_size=2_048, batch_size=8, sequence_length=4,
            num_action_samples=4, policy_hidden=(16, 16), critic_hidden=(16, 16), reset_pool_size=16)


def test_a_sweep_through_the_driver_reports_each_members_own_seeds(tmp_path, monkeypatch):
    """The script end to end on a tiny config: its per-setting JSONs hold, seed by seed, the returns the
    driver wrote to each sweep member's metrics.jsonl (the runs are sliced member-major)."""
    import json

    sets = [f"--set={field}={value!r}" for field, value in TINY.items()]
    monkeypatch.setattr(sys, "argv", ["stability.py", "--env", "inverted_pendulum", "--num-seeds", "2",
                                      "--sweep", "alpha_gain=0,0.5", "--name", "tiny", "--out", str(tmp_path),
                                      "--run-dir", str(tmp_path / "run"), *sets])
    stability.main()
    for gain in ("0", "0.5"):
        summary = json.loads((tmp_path / f"stability_inverted_pendulum_tiny_alpha_gain{gain}.json").read_text())
        rows = [json.loads(line) for line in (tmp_path / "run" / f"alpha_gain={gain}" / "metrics.jsonl").open()]
        assert summary["complete"] and summary["setting"] == {"alpha_gain": float(gain)}
        assert [run["eval_return"] for run in summary["runs"]] == [list(r) for r in zip(*[row["eval_return_per_seed"] for row in rows])]
        assert summary["env_steps"] == [row["env_steps"] for row in rows]
        for chunk in summary["chunks"]:
            assert len(chunk["replay_terminals"]) == len(chunk["obs_mean_move"]) == 2  # per seed
    assert (tmp_path / "stability_inverted_pendulum_tiny_alpha_gain0.png").is_file()
