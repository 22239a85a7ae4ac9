"""Env steps and training time to a return threshold, seed after seed: the screen used to tune a preset.

    python benchmarks/steps_to_threshold.py --env inverted_pendulum --seeds 0 1 2 3 18 --set critic_lr=3e-3

Each seed runs on its own (not vmapped: on a CPU that is faster per seed) through `purempo.driver.train`, as
`purempo train --seed SEED` would; the first seed compiles the programs, the others load them from a
temporary compilation cache (each still traces them). Each is evaluated every `--eval-every` env steps and stops at the
first evaluation ≥ `--threshold` (or, with `--full`, runs on to `--max-steps` to show what happens after).
Training time counts `train_chunk` only: neither compilation nor evaluation. Prints one line per seed and a summary, and
writes `results/steps_to_threshold_<name>.json`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, command_line, jsonable, machine, parse_overrides, today, train_in_driver, versions  # noqa: E402,E501

from purempo import driver  # noqa: E402
from purempo.presets import preset  # noqa: E402


class UntilThreshold(driver.Callbacks):
    """One seed's evaluations; stops the run at the first one ≥ `threshold` (unless `full`)."""

    def __init__(self, threshold, full):
        self.threshold, self.full = threshold, full
        self.train_s, self.updates, self.curve, self.hit, self.compile_s = 0.0, 0, [], None, None

    def compiled(self, seconds):
        self.compile_s = seconds

    def chunk(self, index, metrics, state, seconds):
        self.train_s += seconds["train"]
        self.updates += int(np.sum(metrics["updates"][0]))
        self.curve.append(dict(env_steps=int(metrics["eval_env_steps"][0]), eval_return=float(metrics["eval_return"][0])))
        if self.hit is None and self.curve[-1]["eval_return"] >= self.threshold:
            self.hit = dict(env_steps=self.curve[-1]["env_steps"], train_time_s=round(self.train_s, 2),
                            updates=self.updates)

    def stop(self, row):
        return self.hit is not None and not self.full


def run_seed(config, seed, threshold, full):
    """Evaluation returns after each chunk until the threshold (or all chunks with `full`), and compile time."""
    recorder = UntilThreshold(threshold, full)
    train_in_driver(config, recorder, seed=seed)
    return dict(seed=seed, hit=recorder.hit, curve=recorder.curve, compile_s=round(recorder.compile_s, 1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="inverted_pendulum")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--threshold", type=float, default=950.0)
    parser.add_argument("--eval-every", type=int, default=5_120, help="env steps between evaluations")
    parser.add_argument("--max-steps", type=int, default=100_000)
    parser.add_argument("--full", action="store_true", help="run to --max-steps even after the threshold")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a field")
    parser.add_argument("--name", default=None, help="output name (default: ENV plus the overrides)")
    args = parser.parse_args()

    overrides = parse_overrides(args.set)
    base = preset(args.env, **overrides)
    iterations = max(1, args.eval_every // base.steps_per_iteration)
    num_chunks = max(1, args.max_steps // (iterations * base.steps_per_iteration))
    config = base.replace(total_steps=iterations * base.steps_per_iteration * num_chunks, num_evals=num_chunks)

    runs = []
    with tempfile.TemporaryDirectory(prefix="purempo-steps-") as cache:
        driver.enable_compile_cache(Path(cache) / "xla")
        for seed in args.seeds:
            run = run_seed(config, seed, args.threshold, args.full)
            runs.append(run)
            hit = run["hit"]
            returns = " ".join(f"{p['eval_return']:.0f}" for p in run["curve"])
            print(f"  seed {seed:3d}: " + (f"{hit['env_steps']:>8,} steps, {hit['train_time_s']:6.1f} s, "
                                           f"{hit['updates']:>6,} updates" if hit else "   not reached")
                  + f"  (compiled in {run['compile_s']} s) | {returns}", flush=True)
    compile_s = runs[0]["compile_s"]
    hits = [r["hit"] for r in runs if r["hit"]]
    summary = dict(reached=len(hits), seeds=len(runs),
                   mean_env_steps=float(np.mean([h["env_steps"] for h in hits])) if hits else None,
                   max_env_steps=max((h["env_steps"] for h in hits), default=None),
                   mean_train_time_s=float(np.mean([h["train_time_s"] for h in hits])) if hits else None)
    print(f"reached {args.threshold:g}: {summary['reached']}/{summary['seeds']}; mean env steps "
          f"{summary['mean_env_steps']}, slowest {summary['max_env_steps']}, mean training time "
          f"{summary['mean_train_time_s']} s (compilation excluded)")

    name = args.name or "_".join([args.env] + [f"{k}={v}" for k, v in overrides.items()]).replace(" ", "")
    out = RESULTS / f"steps_to_threshold_{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(
        env=args.env, overrides={k: str(v) for k, v in overrides.items()}, threshold=args.threshold,
        summary=summary, runs=runs, compile_s=round(compile_s, 1), config=jsonable(config), machine=machine(),
        versions=versions(), date=today(), command=command_line("steps_to_threshold.py"),
    ), indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
