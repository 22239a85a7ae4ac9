"""benchmarks/stability.py's sweep grid and file names (the script itself is a long benchmark)."""

import argparse
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import stability  # noqa: E402


def test_sweep_is_the_grid_of_every_combination_in_order():
    grid = stability.parse_sweep(["alpha_gain=0,0.2", "discount=0.99,0.995,0.999"])
    assert grid == [{"alpha_gain": a, "discount": d} for a in (0.0, 0.2) for d in (0.99, 0.995, 0.999)]
    assert stability.parse_sweep([]) == [{}]


@pytest.mark.parametrize("item", ["alpha_gain", "num_envs=8,16", "alpha_gain=0,fast", "=1"])
def test_sweep_rejects_non_float_fields_and_values(item):
    with pytest.raises(SystemExit, match="--sweep"):
        stability.parse_sweep([item])


def test_file_names_are_unique_per_env_and_setting():
    def stem(env, name, setting):
        return stability.file_stem(argparse.Namespace(env=env, name=name), setting)

    assert stem("hopper", None, {}) == "stability_hopper"
    assert stem("hopper", "gpu", {"alpha_gain": 0.05}) == "stability_hopper_gpu_alpha_gain0.05"
    assert stem("halfcheetah", "gpu", {"alpha_gain": 0.05}) != stem("hopper", "gpu", {"alpha_gain": 0.05})
    assert stem("inverted_pendulum", "inverted_pendulum_final", {}) == "stability_inverted_pendulum_final"
    assert (stem("inverted_pendulum", None, {"alpha_gain": 0.2, "discount": 0.995})
            == "stability_inverted_pendulum_alpha_gain0.2-discount0.995")
