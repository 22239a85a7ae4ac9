"""Return against wall time on one accelerator: purempo's GPU presets (and, by flag, Brax's PPO/SAC) per task.

    python benchmarks/gpu.py                                  # CheetahRun and HumanoidWalk, 2 seeds, 270 s each
    python benchmarks/gpu.py --envs WalkerRun --budget-s 120
    python benchmarks/gpu.py --envs CheetahRun --trainers ppo sac    # Brax's trainers, Playground's settings
    python benchmarks/gpu.py --envs Breakout-MinAtar --budget-s 480  # a gymnax env: 1,024 envs at scale gpu

Each task runs `preset(env, scale=--scale)` (default "gpu") through `purempo.driver.train`, the loop of
`purempo train`, with `--num-seeds` seeds in one vmapped program, from its own launch (compilation included)
until the first evaluation after `--budget-s` seconds of wall time. Playground envs use MJX (`impl=jax`) unless
`--set impl=...` says otherwise: Warp's wheel cannot be uploaded to the lent GPU. After every evaluation it
rewrites `gpu_<env>.json` (`gpu_<env>_<trainer>.json` for Brax's) in `--out`, so a stopped run keeps its curve:
per evaluation the env steps, wall time since launch, time spent evaluating, each seed's return; and the
training rate after the first evaluation (env steps/s per seed and in all, updates/s). Brax's trainers run as in
`compare.py` (a child process; its budget is training time, i.e. wall time less evaluations).

Prepared for a lent GPU: see benchmarks/gpu_device.sh for the one command that runs it there.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from common import RESULTS, command_line, jsonable, machine, parse_overrides, today, train_in_driver, versions
from purempo import driver, envs
from purempo.presets import preset

DEFAULT_ENVS = ("CheetahRun", "HumanoidWalk")


class WallClock(driver.Callbacks):
    """Records each evaluation against wall time since the task's launch; rewrites the JSON after each one and
    stops the run at the first evaluation after the budget."""

    def __init__(self, path: Path, summary: dict, budget_s: float, start: float, max_evals=None):
        self.path, self.summary, self.budget_s, self.start = path, summary, budget_s, start
        self.max_evals = max_evals
        self.eval_time = 0.0
        self.spent = False

    def chunk(self, index, metrics, state, seconds):
        self.eval_time += seconds["evaluate"]
        wall = time.perf_counter() - self.start
        returns = [float(x) for x in np.asarray(metrics["eval_return"])]
        updates = float(np.sum(np.asarray(metrics["updates"])[0]))
        self.summary["points"].append(dict(
            env_steps=int(np.asarray(metrics["eval_env_steps"])[0]), wall_time_s=round(wall, 2),
            eval_time_s=round(self.eval_time, 2), train_s=round(seconds["train"], 3), updates=updates,
            eval_return=returns, eval_return_mean=float(np.mean(returns))))
        self.summary["rates"] = rates(self.summary["points"], len(returns))
        write(self.path, self.summary)
        point = self.summary["points"][-1]
        print(f"  {self.summary['env']:<14} {point['env_steps']:>12,} env steps  {wall:7.1f} s  return "
              + " / ".join(f"{r:.1f}" for r in returns), flush=True)
        self.spent = wall >= self.budget_s or (self.max_evals is not None and index + 1 >= self.max_evals)

    def stop(self, row):
        return self.spent


def rates(points, num_seeds: int) -> dict:
    """Training rates after the first evaluation (which holds the compilation): env steps/s per seed and in all,
    updates/s per seed, from the chunks' own training seconds."""
    later = points[1:]
    if not later:
        return {}
    seconds = sum(p["train_s"] for p in later)
    steps = later[-1]["env_steps"] - points[0]["env_steps"]
    updates = sum(p["updates"] for p in later)
    return dict(env_steps_per_s_per_seed=steps / seconds, env_steps_per_s=num_seeds * steps / seconds,
                updates_per_s=updates / seconds, first_eval_wall_time_s=points[0]["wall_time_s"])


def write(path: Path, summary: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(summary, indent=1))
    tmp.replace(path)


def run_purempo(env: str, args, overrides: dict, out: Path) -> dict:
    start = time.perf_counter()
    if envs.family(env) == envs.PLAYGROUND:
        overrides = {"impl": "jax", **overrides}
    base = preset(env, scale=args.scale, **overrides)
    iterations = max(1, args.eval_every // base.steps_per_iteration)
    num_evals = 10_000
    config = base.replace(total_steps=iterations * base.steps_per_iteration * num_evals, num_evals=num_evals)
    import jax

    summary = dict(env=env, trainer="purempo", date=today(), machine=machine(), versions=versions(),
                   devices=[str(d) for d in jax.devices()], command=command_line("gpu.py"),
                   scale=args.scale, budget_s=args.budget_s, seeds=list(range(args.seed, args.seed + args.num_seeds)),
                   config=jsonable(config), points=[], rates={})
    path = out / f"gpu_{env}.json"
    clock = WallClock(path, summary, args.budget_s, start, args.max_evals)
    train_in_driver(config, clock, seed=args.seed, num_seeds=args.num_seeds)
    return summary


def run_brax(env: str, trainer: str, args, out: Path) -> dict:
    import compare

    curve, settings = compare.run_brax(trainer, env, args.budget_s, args.seed, {},
                                       {"impl": "jax"} if envs.family(env) == envs.PLAYGROUND else {})
    summary = dict(env=env, trainer=f"brax-{trainer}", date=today(), machine=machine(), versions=versions(),
                   command=command_line("gpu.py"), budget_s=args.budget_s, settings=settings,
                   points=curve.points)
    write(out / f"gpu_{env}_{trainer}.json", summary)
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="+", default=list(DEFAULT_ENVS))
    parser.add_argument("--trainers", nargs="+", default=["purempo"], choices=("purempo", "ppo", "sac"))
    parser.add_argument("--budget-s", type=float, default=270.0, help="wall time per task from its launch")
    parser.add_argument("--num-seeds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", default="gpu", choices=("cpu", "gpu"))
    parser.add_argument("--max-evals", type=int, default=None, help="also stop after this many evaluations")
    parser.add_argument("--eval-every", type=int, default=1_048_576, help="env steps between evaluations")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a config field")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    if args.budget_s <= 0 or args.num_seeds < 1 or args.eval_every < 1:
        raise SystemExit("error: --budget-s, --num-seeds and --eval-every must be > 0")
    for env in args.envs:
        if envs.family(env) == envs.GYMNAX and set(args.trainers) - {"purempo"}:  # an unknown name fails here too
            raise SystemExit(f"error: {env} is a gymnax env: Brax's trainers (--trainers ppo sac) take Brax and "
                             f"MuJoCo Playground envs only")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    overrides = parse_overrides(args.set)
    for env in args.envs:
        for trainer in args.trainers:
            print(f"{env}: {trainer}, {args.budget_s:g} s of wall time", flush=True)
            summary = (run_purempo(env, args, overrides, out) if trainer == "purempo"
                       else run_brax(env, trainer, args, out))
            last = summary["points"][-1] if summary["points"] else None
            if last:
                print(f"{env} {trainer}: {last.get('eval_return_mean', last.get('eval_return'))} at "
                      f"{last['env_steps']:,} env steps, {last['wall_time_s']:.0f} s; {summary.get('rates', {})}")


if __name__ == "__main__":
    main()
