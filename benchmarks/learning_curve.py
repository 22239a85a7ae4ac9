"""Learning curve of one purempo run: evaluation return against env steps and wall-clock time.

    python benchmarks/learning_curve.py --env inverted_pendulum
    python benchmarks/learning_curve.py --env halfcheetah --budget-s 900

The env's preset (purempo/presets.py) is used; `--set FIELD=VALUE` overrides a field. Training runs through
`purempo.driver.train`, the CLI's loop (one jitted chunk per evaluation), wall time counts from before
compilation, and the run stops at the end of the chunk that crosses `--budget-s` (or after the preset's
total_steps).
Writes benchmarks/results/<name>.json and .png and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

import jax
import numpy as np

from common import RESULTS, command_line, jsonable, machine, parse_overrides, today, versions
from purempo import driver
from purempo.presets import preset

def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="inverted_pendulum")
    parser.add_argument("--budget-s", type=float, default=None, help="stop after this wall time (compile included)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a config field")
    parser.add_argument("--name", default=None, help="output file stem (default: ENV)")
    parser.add_argument("--replot", type=Path, default=None, help="only redraw the PNG of a saved results JSON")
    args = parser.parse_args()
    if args.replot is not None:
        plot(json.loads(args.replot.read_text()), args.replot.with_suffix(".png"))
        return
    config = preset(args.env, **parse_overrides(args.set))
    name = args.name or args.env

    rows = []

    class Curve(driver.Callbacks):
        """Collects each evaluation as a curve point and ends the run at the first one past the budget."""

        def evaluated(self, row, steps_per_second):
            done = min(row["eval"] * config.iterations_per_eval, config.num_iterations) - config.prefill_iterations
            point = dict(env_steps=row["env_steps"], wall_time_s=round(row["wall_time_s"], 2),
                         eval_return=row["eval_return"], eval_return_std=row["eval_return_std"],
                         updates=float(max(0, min(done, config.iterations_per_eval)) * config.updates_per_iteration))
            for key in ("critic_loss", "q_mean", "temperature", "alpha_mean", "kl_mean", "kl_std", "policy_std"):
                point[key] = row[key] if math.isfinite(row[key]) else None
            rows.append(point)
            print(f"{point['env_steps']:>9,} steps  {point['wall_time_s']:7.1f} s  eval {point['eval_return']:9.2f} "
                  f"± {point['eval_return_std']:.1f}", flush=True)

        def stop(self, row):
            return args.budget_s is not None and row["wall_time_s"] >= args.budget_s

    # The run loop of `purempo train` (wall time counts from before compilation), into a throw-away run dir.
    with tempfile.TemporaryDirectory(prefix="purempo-curve-") as run_dir:
        driver.train(config, Path(run_dir) / "run", driver.Options(seed=args.seed, num_devices=1, tensorboard=False,
                                                                   checkpoint_replay="never"), callbacks=Curve())
    compile_s, steps_at_first, time_at_first = rows[0]["wall_time_s"], rows[0]["env_steps"], rows[0]["wall_time_s"]

    total_updates = sum(r["updates"] for r in rows)
    steady_s = rows[-1]["wall_time_s"] - time_at_first
    steady_steps = rows[-1]["env_steps"] - steps_at_first
    steady_updates = total_updates - rows[0]["updates"]
    summary = dict(
        env=args.env,
        seed=args.seed,
        date=today(),
        machine=machine(),
        versions=versions(),
        command=command_line("learning_curve.py"),
        config=jsonable(config),
        first_chunk_s=round(compile_s, 2),
        env_steps_per_s=round(steady_steps / steady_s, 1) if steady_s > 0 else None,
        updates_per_s=round(steady_updates / steady_s, 1) if steady_s > 0 else None,
        best_eval_return=max(r["eval_return"] for r in rows),
        final_eval_return=rows[-1]["eval_return"],
        curve=rows,
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(summary, indent=1) + "\n")
    plot(summary, RESULTS / f"{name}.png")
    print(f"\n{args.env} on {summary['machine']}; jax {jax.__version__}, brax {summary['versions']['brax']}; {summary['date']}")
    print(f"command: {summary['command']}")
    print(f"first chunk (compile + prefill + first training chunk): {summary['first_chunk_s']} s; "
          f"afterwards {summary['env_steps_per_s']} env steps/s, {summary['updates_per_s']} SGD updates/s\n")
    print("| env steps | wall time (s) | eval return (mean ± std) |\n|---:|---:|---:|")
    for r in rows:
        print(f"| {r['env_steps']:,} | {r['wall_time_s']:.1f} | {r['eval_return']:.1f} ± {r['eval_return_std']:.1f} |")


def plot(summary, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    curve = summary["curve"]
    steps = [r["env_steps"] for r in curve]
    wall = [r["wall_time_s"] for r in curve]
    mean = np.array([r["eval_return"] for r in curve])
    std = np.array([r["eval_return_std"] for r in curve])
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, x, label in ((axes[0], steps, "env steps"), (axes[1], wall, "wall time incl. compile (s)")):
        ax.plot(x, mean, marker="o", ms=3)
        ax.fill_between(x, mean - std, mean + std, alpha=0.25)
        ax.set_xlabel(label)
        if x is steps:
            ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v / 1e3:,.0f}k"))
        ax.set_ylabel("deterministic eval return")
        ax.grid(alpha=0.3)
    fig.suptitle(f"purempo MPO on {summary['env']} ({summary['machine'].split(';')[0]}, {summary['date']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
