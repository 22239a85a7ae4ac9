"""Learning curves of categorical MPO on gymnax's discrete-action envs against published anchors.

Trains `--env`'s preset (purempo.presets) for `--num-seeds` seeds vmapped in one program through the driver
`purempo train` runs, and writes `benchmarks/results/gymnax_ENV[_NAME].json` after every evaluation (an
interrupted run keeps its figures) and a PNG of the evaluation return against env steps and against wall time,
with the anchor (PPO's gymnax checkpoints, PQN) drawn in. Per seed: best, final, the first evaluation at the
target and the worst one after it (`stability.seed_summary`).

    python benchmarks/gymnax_curves.py --env CartPole-v1 --num-seeds 2
    python benchmarks/gymnax_curves.py --env Breakout-MinAtar --set total_steps=1000000 --set num_evals=20
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (RESULTS, command_line, jsonable, machine, parse_overrides, today,  # noqa: E402
                    train_in_driver, versions)
from stability import seed_summary  # noqa: E402

from purempo import driver  # noqa: E402
from purempo.presets import preset  # noqa: E402

# Published returns on the same gymnax envs (sticky actions off): PPO checkpoints of gymnax's README at 1e7 env
# steps, the classic-control targets, PQN on Asterix from its author's notebook (read off a plot).
ANCHORS = {
    "CartPole-v1": dict(target=500.0, by_steps=150_000, source="PPO (gymnax README): 500 at 1.5e5 env steps"),
    "Acrobot-v1": dict(target=-80.0, by_steps=500_000, source="PPO (gymnax README): -80 at 5e5 env steps"),
    "Asterix-MinAtar": dict(target=15.0, by_steps=10_000_000, source="PPO (gymnax README): 15 at 1e7 env steps",
                            moonshot=70.0, moonshot_source="PQN: about 70 at 1e7 env steps"),
    "Breakout-MinAtar": dict(target=28.0, by_steps=10_000_000, source="PPO (gymnax README): 28 at 1e7 env steps"),
    "Freeway-MinAtar": dict(target=58.0, by_steps=10_000_000, source="PPO (gymnax README): 58 at 1e7 env steps"),
    "SpaceInvaders-MinAtar": dict(target=131.0, by_steps=10_000_000,
                                  source="PPO (gymnax README): 131 at 1e7 env steps"),
}
DIAGNOSTICS = ("kl_policy_max", "temperature", "policy_entropy", "q_mean", "alpha_policy", "e_step_kl_max")


class Recorder(driver.Callbacks):
    """Per-evaluation returns and learner diagnostics per seed; rewrites the JSON after each evaluation."""

    def __init__(self, summary: dict, path: Path):
        self.summary, self.path = summary, path
        self.start = time.perf_counter()

    def chunk(self, index, metrics, state, seconds):
        record = dict(env_steps=int(np.asarray(metrics["eval_iteration"])[0]) * self.summary["steps_per_iteration"],
                      wall_time_s=round(time.perf_counter() - self.start, 1),
                      eval_return=np.asarray(metrics["eval_return"]).round(2).tolist(),
                      eval_stochastic_return=np.asarray(metrics["eval_stochastic_return"]).round(2).tolist())
        for name in DIAGNOSTICS:  # per-iteration values [runs, iterations]; NaN while prefilling
            values = np.asarray(metrics[name], np.float64).reshape(len(record["eval_return"]), -1)
            reduce = np.nanmax if name.endswith("_max") else np.nanmean
            record[name] = [None if np.all(np.isnan(v)) else float(reduce(v)) for v in values]
        self.summary["chunks"].append(record)
        self.summary["complete"] = index + 1 == self.summary["config"]["num_evals"]
        finish(self.summary)
        self.path.write_text(json.dumps(self.summary, indent=1) + "\n")
        print(f"{record['env_steps']:>10,} steps {record['wall_time_s']:7.0f} s  eval "
              + " ".join(f"{r:7.1f}" for r in record["eval_return"])
              + "  sampled " + " ".join(f"{r:7.1f}" for r in record["eval_stochastic_return"]), flush=True)


def finish(summary: dict) -> None:
    """Per-seed figures and the run's env steps per second, from the chunks recorded so far."""
    chunks = summary["chunks"]
    steps = [c["env_steps"] for c in chunks]
    times = [c["wall_time_s"] for c in chunks]
    anchor = ANCHORS.get(summary["env"], {})
    summary["seeds"] = [
        dict(seed=seed, **seed_summary(steps, times, [c["eval_return"][i] for c in chunks], anchor.get("target"),
                                       0))
        for i, seed in enumerate(summary["seed_list"])]
    if len(chunks) > 1:  # the first evaluation's time includes compilation
        summary["env_steps_per_s"] = round((steps[-1] - steps[0]) * len(summary["seed_list"])
                                           / max(times[-1] - times[0], 1e-9))


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chunks = summary["chunks"]
    steps = np.array([c["env_steps"] for c in chunks])
    times = np.array([c["wall_time_s"] for c in chunks])
    returns = np.array([c["eval_return"] for c in chunks])  # [evals, seeds]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, x, label in ((axes[0], steps, "env steps"), (axes[1], times, "wall time (s)")):
        for i, seed in enumerate(summary["seed_list"]):
            ax.plot(x, returns[:, i], lw=1.2, label=f"seed {seed}")
        anchor = ANCHORS.get(summary["env"])
        if anchor:
            ax.axhline(anchor["target"], color="k", ls="--", lw=0.8, label=anchor["source"])
            if "moonshot" in anchor:
                ax.axhline(anchor["moonshot"], color="grey", ls=":", lw=0.8, label=anchor["moonshot_source"])
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("evaluation return (mode of π)")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"purempo categorical MPO on {summary['env']} ({summary['machine'].split(';')[0]}, "
                 f"{summary.get('env_steps_per_s', 0):,} env steps/s)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", required=True)
    parser.add_argument("--seed", type=int, default=0, help="base seed, as purempo train --seed")
    parser.add_argument("--num-seeds", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a config field")
    parser.add_argument("--scale", default="cpu", choices=("cpu", "gpu"), help="the preset's scale")
    parser.add_argument("--name", default=None, help="output file stem after gymnax_ENV_ (default: none)")
    parser.add_argument("--out", default=str(RESULTS), help="directory for the JSON and PNG files")
    parser.add_argument("--replot", default=None, help="only redraw the PNG of a saved results JSON")
    args = parser.parse_args()
    if args.replot:
        path = Path(args.replot)
        plot(json.loads(path.read_text()), path.with_suffix(".png"))
        return
    try:
        config = preset(args.env, scale=args.scale, **parse_overrides(args.set))
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / ("_".join(filter(None, ["gymnax", args.env, args.name])) + ".json")
    summary = dict(env=args.env, command=command_line("gymnax_curves.py"), date=today(), machine=machine(),
                   versions=versions(), config=jsonable(config), steps_per_iteration=config.steps_per_iteration,
                   seed_list=list(range(args.seed, args.seed + args.num_seeds)), anchor=ANCHORS.get(args.env),
                   chunks=[], complete=False)
    train_in_driver(config, Recorder(summary, path), seed=args.seed, num_seeds=args.num_seeds)
    plot(summary, path.with_suffix(".png"))
    print(json.dumps(summary["seeds"], indent=1))


if __name__ == "__main__":
    main()
