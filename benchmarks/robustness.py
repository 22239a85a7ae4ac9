"""Robustness of the default preset: many seeds, rescaled rewards, and the KL trust regions, in one program.

    python benchmarks/robustness.py                       # 20 seeds; 4 seeds at rewards x1, x1000 and x0.001
    python benchmarks/robustness.py --num-seeds 4 --scale-seeds 2 --set total_steps=50000

Two runs of `purempo.driver.train` (the loop of `purempo train`), each one jitted, vmapped program: S seeds at
reward scale 1 (`purempo train --num-seeds S`), then a sweep of the reward scale over 1 and the other scales
with K seeds each (`--num-seeds K --sweep reward_scale=1,...`: every scale trains the same K seeds). The reward
scale is a float hyper-parameter (`Config.reward_scale`, vmapped like the others). It multiplies every reward
the learner sees, which is exactly what a reward-scaling env wrapper on the training envs does; evaluation
returns are reported unscaled so runs compare directly.

Reports: how many of the S seeds reach the threshold and when; for each other scale, its final return as a
fraction of the same K seeds' final return at scale 1 (target >= 90%) and whether any learner metric went
non-finite; the per-update KL(pi_old || pi) of the mean and std parts against their bounds (target: within
about 2 epsilon).
Writes benchmarks/results/robustness_<env>.json and .png.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from common import RESULTS, command_line, jsonable, machine, parse_overrides, today, train_in_driver, versions
from purempo import driver
from purempo.presets import preset


class Collect(driver.Callbacks):
    """Every chunk's metrics over all runs (numpy, `[R, ...]`), the evaluation's episodes left out."""

    def __init__(self, label):
        self.label, self.chunks, self.start = label, [], time.perf_counter()

    def chunk(self, index, metrics, state, seconds):
        self.chunks.append({k: v for k, v in metrics.items() if k != "eval_episodes"})
        print(f"{self.label}: {int(metrics['eval_env_steps'][0]):>9,} steps  {time.perf_counter() - self.start:7.1f} s"
              f"  eval mean {np.mean(metrics['eval_return']):8.1f}  min {np.min(metrics['eval_return']):8.1f}", flush=True)


def train_runs(config, label, num_seeds, sweep=()):
    collect = Collect(label)
    train_in_driver(config, collect, num_seeds=num_seeds, sweep=sweep)
    return collect.chunks


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="inverted_pendulum")
    parser.add_argument("--num-seeds", type=int, default=20, help="seeds at reward scale 1")
    parser.add_argument("--scale-seeds", type=int, default=4, help="seeds (the first ones) run at each other scale")
    parser.add_argument("--reward-scales", type=float, nargs="*", default=[1000.0, 0.001])
    parser.add_argument("--threshold", type=float, default=950.0)
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a config field")
    parser.add_argument("--name", default=None, help="output file stem (default: robustness_ENV)")
    args = parser.parse_args()
    if args.scale_seeds < 1 or args.num_seeds < 1:
        raise SystemExit(f"error: --num-seeds and --scale-seeds must be >= 1, got {args.num_seeds}, {args.scale_seeds}")
    if 1.0 in args.reward_scales or len(set(args.reward_scales)) != len(args.reward_scales):
        raise SystemExit(f"error: --reward-scales must be distinct and other than 1, got {args.reward_scales}")
    config = preset(args.env, **parse_overrides(args.set))
    name = args.name or f"robustness_{args.env}"

    start = time.perf_counter()
    scales_swept = [1.0, *args.reward_scales]
    base_chunks = train_runs(config, "seeds", args.num_seeds)
    sweep = [f"reward_scale={','.join(repr(x) for x in scales_swept)}"]  # repr: the exact floats
    scale_chunks = train_runs(config, "scales", args.scale_seeds, sweep)
    wall = time.perf_counter() - start
    # One table of runs: the S seeds, then the sweep's members (member-major: K seeds per scale).
    chunks = [{k: np.concatenate([a[k], b[k]]) for k in a} for a, b in zip(base_chunks, scale_chunks)]
    groups = ["seeds"] * args.num_seeds + ["scales"] * (len(scales_swept) * args.scale_seeds)
    seeds = list(range(args.num_seeds)) + [s for _ in scales_swept for s in range(args.scale_seeds)]
    scales = [1.0] * args.num_seeds + [x for x in scales_swept for _ in range(args.scale_seeds)]

    steps = [int(c["eval_env_steps"][0]) for c in chunks]
    returns = np.stack([c["eval_return"] for c in chunks], axis=1)  # [runs, evals]
    per_iter = {k: np.concatenate([c[k] for c in chunks], axis=1) for k in chunks[0] if chunks[0][k].ndim == 2}
    learned = per_iter["updates"][0] > 0
    runs = []
    for i, (group, seed, scale) in enumerate(zip(groups, seeds, scales)):
        hit = next((steps[j] for j, r in enumerate(returns[i]) if r >= args.threshold), None)
        finite = all(bool(np.all(np.isfinite(per_iter[k][i][learned])))
                     for k in per_iter if k not in ("env_steps", "updates", "episode_return_sum", "episodes_finished"))
        runs.append(dict(group=group, seed=seed, reward_scale=scale, eval_return=returns[i].tolist(), first_step_at_threshold=hit,
                         final_return=float(returns[i][-1]), all_finite=finite,
                         kl_mean=dict(mean=float(np.mean(per_iter["kl_mean"][i][learned])),
                                      max=float(np.max(per_iter["kl_mean"][i][learned]))),
                         kl_std=dict(mean=float(np.mean(per_iter["kl_std"][i][learned])),
                                     max=float(np.max(per_iter["kl_std"][i][learned]))),
                         temperature_final=float(per_iter["temperature"][i][learned][-1])))
    base = base_runs(runs)
    reached = [r for r in base if r["first_step_at_threshold"] is not None]
    unscaled = {r["seed"]: r for r in runs if r["group"] == "scales" and r["reward_scale"] == 1.0}
    scale_rows = []
    for scale in args.reward_scales:
        scaled = [r for r in runs if r["group"] == "scales" and r["reward_scale"] == scale]
        reference = [unscaled[r["seed"]]["final_return"] for r in scaled]
        final = [r["final_return"] for r in scaled]
        scale_rows.append(dict(reward_scale=scale, seeds=[r["seed"] for r in scaled], final_return=final,
                               unscaled_final_return=reference,
                               ratio=float(np.mean(final) / np.mean(reference)),
                               all_finite=all(r["all_finite"] for r in scaled)))
    summary = dict(
        env=args.env, date=today(), machine=machine(), versions=versions(),
        command=command_line("robustness.py"),
        config=jsonable(config), threshold=args.threshold, wall_time_s=round(wall, 1), env_steps=steps,
        seeds_reaching_threshold=f"{len(reached)}/{len(base)}", reward_scales=scale_rows, runs=runs,
        epsilon_mean=config.epsilon_mean, epsilon_std=config.epsilon_std,
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(summary, indent=1) + "\n")
    plot(summary, RESULTS / f"{name}.png")
    report(summary)


def base_runs(runs):
    """The S seeds at reward scale 1, not the sweep's scale-1 runs. Files from before the sweep have no `group`:
    their scale-1 runs are all base runs."""
    return [r for r in runs if r.get("group", "seeds") == "seeds" and r["reward_scale"] == 1.0]


def report(summary):
    print(f"\n{summary['env']} on {summary['machine']}; {summary['versions']}; {summary['date']}")
    print(f"command: {summary['command']}  ({summary['wall_time_s']} s for {len(summary['runs'])} runs)")
    base = base_runs(summary["runs"])
    print(f"\n**{summary['seeds_reaching_threshold']} seeds reach {summary['threshold']:g}**\n")
    print("| seed | first step ≥ threshold | final return | KL_μ mean / max (ε_μ = {:g}) | KL_σ mean / max (ε_σ = {:g}) |"
          .format(summary["epsilon_mean"], summary["epsilon_std"]))
    print("|---:|---:|---:|---:|---:|")
    for r in base:
        hit = "never" if r["first_step_at_threshold"] is None else f"{r['first_step_at_threshold']:,}"
        print(f"| {r['seed']} | {hit} | {r['final_return']:.1f} | {r['kl_mean']['mean']:.2e} / {r['kl_mean']['max']:.2e}"
              f" | {r['kl_std']['mean']:.2e} / {r['kl_std']['max']:.2e} |")
    print("\n| reward scale | seeds | final return (scaled run) | same seeds, scale 1 | ratio | all metrics finite |")
    print("|---:|---|---:|---:|---:|---|")
    for row in summary["reward_scales"]:
        print(f"| ×{row['reward_scale']:g} | {row['seeds']} | {np.mean(row['final_return']):.1f} "
              f"| {np.mean(row['unscaled_final_return']):.1f} | {row['ratio']:.1%} | {row['all_finite']} |")


def plot(summary, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.asarray(summary["env_steps"]) / 1e3
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for r in base_runs(summary["runs"]):
        axes[0].plot(steps, r["eval_return"], color="tab:blue", alpha=0.4, lw=1)
    colors = ("tab:red", "tab:green", "tab:purple", "tab:orange")
    for color, row in zip(colors, summary["reward_scales"]):
        for r in summary["runs"]:
            if r["reward_scale"] == row["reward_scale"]:
                axes[0].plot(steps, r["eval_return"], color=color, alpha=0.7, lw=1, ls="--")
        axes[0].plot([], [], color=color, ls="--", label=f"rewards ×{row['reward_scale']:g}")
    axes[0].plot([], [], color="tab:blue", label="rewards ×1 (every seed)")
    axes[0].axhline(summary["threshold"], color="gray", lw=0.8, ls=":")
    axes[0].set_xlabel("env steps (thousands)")
    axes[0].set_ylabel("deterministic eval return")
    axes[0].legend(fontsize=8)
    axes[0].grid(alpha=0.3)
    base = base_runs(summary["runs"])
    x = np.arange(len(base))
    axes[1].bar(x - 0.2, [r["kl_mean"]["mean"] / summary["epsilon_mean"] for r in base], 0.4, label="KL_μ / ε_μ")
    axes[1].bar(x + 0.2, [r["kl_std"]["mean"] / summary["epsilon_std"] for r in base], 0.4, label="KL_σ / ε_σ")
    axes[1].axhline(1.0, color="gray", lw=0.8, ls=":")
    axes[1].axhline(2.0, color="tab:red", lw=0.8, ls=":")
    axes[1].set_xlabel("seed")
    axes[1].set_ylabel("mean per-update KL / its bound")
    axes[1].legend(fontsize=8)
    axes[1].grid(alpha=0.3)
    fig.suptitle(f"purempo robustness on {summary['env']} ({summary['machine'].split(';')[0]}, {summary['date']})",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
