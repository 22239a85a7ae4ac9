"""benchmarks/throughput.py's roofline arithmetic for `--scale gpu` (the script itself compiles full-size programs)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import throughput  # noqa: E402


def test_roofline_is_the_slower_of_compute_and_memory():
    assert throughput.roofline_seconds(67e12, 0.0, 67e12, 3.35e12) == pytest.approx(1.0)
    assert throughput.roofline_seconds(0.0, 3.35e12, 67e12, 3.35e12) == pytest.approx(1.0)
    assert throughput.roofline_seconds(67e9, 6.7e9, 67e12, 3.35e12) == pytest.approx(2e-3)  # memory bound
    assert throughput.roofline_seconds(670e9, 3.35e9, 67e12, 3.35e12) == pytest.approx(1e-2)  # compute bound


def test_training_estimate_closed_form():
    learn, act, bare = 2e-3, 1e-3, 0.5e-3
    e = throughput.training_estimate(learn, act, bare, num_envs=4096, unroll_length=8, updates_per_iteration=8)
    iteration = 8 * act + 8 * learn
    assert e["iteration_s"] == pytest.approx(iteration)
    assert e["train_env_steps_per_s"] == pytest.approx(4096 * 8 / iteration)
    assert e["updates_per_s"] == pytest.approx(8 / iteration)
    assert e["simulation_env_steps_per_s_roofline"] == pytest.approx(4096 / bare)
    assert e["ratio_to_roofline_simulation"] == pytest.approx(bare / (act + learn))
    assert e["learner_share"] == pytest.approx(2 / 3)
    assert "ratio_to_published_simulation" not in e


def test_training_estimate_with_a_published_simulation_rate():
    # The published rate replaces the bare step; the policy's and wrapper's extra (act - bare) is kept.
    learn, act, bare, sim = 1e-3, 0.6e-3, 0.5e-3, 2_048_000.0
    e = throughput.training_estimate(learn, act, bare, 2048, 4, 2, simulation_env_steps_per_s=sim)
    step = 2048 / sim + (act - bare)  # 1.0 ms + 0.1 ms
    iteration = 4 * step + 2 * learn
    assert e["train_env_steps_per_s_with_published_simulation"] == pytest.approx(2048 * 4 / iteration)
    assert e["ratio_to_published_simulation"] == pytest.approx(2048 * 4 / iteration / sim)
    assert e["updates_per_s_with_published_simulation"] == pytest.approx(2 / iteration)
    # Learner time equal to simulation time halves the rate: the 0.5x boundary.
    half = throughput.training_estimate(1e-3, 1e-3, 1e-3, 1000, 1, 1, simulation_env_steps_per_s=1e6)
    assert half["ratio_to_published_simulation"] == pytest.approx(0.5)


def test_peaks_and_published_rates_are_named():
    assert throughput.H100_SXM["peak_flops"] == 67e12 and throughput.H100_SXM["bandwidth"] == 3.35e12
    for entry in throughput.PUBLISHED_SIMULATION.values():
        assert entry["env_steps_per_s"] > 0 and entry["source"]
