"""Helpers shared by the benchmark scripts: machine description, versions, `--set` parsing, timing."""

from __future__ import annotations

import ast
import os
import platform
import shlex
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import jax

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> str:
    """e.g. 'CPU (cpu); AMD EPYC 7B13; 1 device(s); 2 cores' or 'GPU (NVIDIA H100 80GB HBM3); ...'."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    device = jax.devices()[0]
    return (f"{device.platform.upper()} ({device.device_kind}); {cpu}; {jax.device_count()} device(s); "
            f"{len(os.sched_getaffinity(0))} cores")


def versions() -> dict:
    found = {"python": platform.python_version()}
    for package in ("purempo", "jax", "jaxlib", "brax", "flax", "optax", "playground", "mujoco", "mujoco-mjx"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return found


def command_line(script: str, argv=None) -> str:
    """The command that ran, as typed: `python benchmarks/<script> <argv[1:]>`, each argument quoted for the
    shell, so a result file names every flag it was made with (its seed and output name included)."""
    return f"python benchmarks/{script} " + shlex.join((sys.argv if argv is None else argv)[1:])


def today() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d")


def parse_overrides(items) -> dict:
    """`["batch_size=64", "policy_hidden=(64,64)"]` -> {"batch_size": 64, "policy_hidden": (64, 64)}."""
    overrides = {}
    for item in items:
        field, sep, value = item.partition("=")
        if not sep or not field:
            raise SystemExit(f"error: --set expects FIELD=VALUE, got {item!r}")
        try:
            overrides[field] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[field] = value
    return overrides


def jsonable(config) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.__dict__.items()}


def train_in_driver(config, callbacks, seed: int = 0, num_seeds: int = 1, sweep=(), run_dir=None):
    """Runs `config` through `purempo.driver.train`, the loop `purempo train` runs: in a temporary run directory
    (or `run_dir`, kept). JAX's persistent cache stays off unless the caller turns it on (a comparison with Brax
    compiles cold). Checkpoints only at the
    start and the end, without the replay, and no TensorBoard. Seed i of `num_seeds` is the one `purempo train
    --seed SEED --num-seeds N` trains. Returns the run directory (None when temporary). What a benchmark
    reports comes from `callbacks` (`driver.Callbacks.chunk`: per-run metrics, the state, train/eval seconds).
    """
    import tempfile

    from purempo import driver

    options = driver.Options(seed=seed, num_seeds=num_seeds, sweep=tuple(sweep), checkpoint_every=config.num_evals,
                             keep_checkpoints=1, checkpoint_replay="never", tensorboard=False)
    if run_dir is not None:
        return driver.train(config, Path(run_dir), options, callbacks=callbacks)
    with tempfile.TemporaryDirectory(prefix="purempo-benchmark-") as directory:
        driver.train(config, Path(directory) / "run", options, callbacks=callbacks)
    return None
