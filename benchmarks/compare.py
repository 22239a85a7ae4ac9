"""purempo vs Brax SAC vs Brax PPO on one env, each for the same wall-clock budget, one after another.

    python benchmarks/compare.py --env inverted_pendulum --budget-s 300 --threshold 950
    python benchmarks/compare.py --env halfcheetah --budget-s 900
    python benchmarks/compare.py --env CartpoleSwingup --budget-s 300   # a MuJoCo Playground (DM Control) env

Every trainer gets the same env (Brax's, same backend), the same evaluation (deterministic policy mean,
`eval_episodes` parallel episodes of up to 1000 steps) and the same clock, started before the env is built,
so compilation counts. The budget and the headline times are *training* wall time: total elapsed time minus
the time spent in evaluations, so that how often a trainer is evaluated does not change its numbers. For Brax
that subtracts its reported `eval/walltime`, which includes compiling its evaluator; for purempo evaluation
is compiled up front with the rest and is not subtracted, so the comparison leans against purempo. Each
trainer stops at its first evaluation after the budget is spent (or, with `--max-env-steps N`, at its first
evaluation at or after N env steps, if that comes first: `--budget-s 3600 --max-env-steps 1000000` measures
return at 1M env steps).

Brax settings (`BRAX_SETTINGS`): PPO uses Brax's published training-notebook hyper-parameters for the env;
Brax publishes SAC settings only for hopper/walker2d, so SAC uses those (reward_scaling 30, 128 envs, 64
gradient updates of batch 512 per env step, replay 2^20, 8192 prefill steps) on every env. Networks are
Brax's defaults. On a MuJoCo Playground env both use Playground's own published settings instead
(`mujoco_playground.config.dm_control_suite_params`, with its network options), the env wrapped by
Playground's `wrap_for_brax_training`; the keys Brax 0.14.2's `train()` does not accept are dropped and listed
in the output (`dropped` in the JSON). Brax 0.14.2 needs `brax_compat.install()` on jax >= 0.10 (see that file).

Writes benchmarks/results/compare_<env>.json and .png (return vs training wall time, and vs env steps).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import numpy as np

import brax_compat
from common import RESULTS, command_line, jsonable, machine, parse_overrides, today, train_in_driver, versions
from supervisor import supervise
from purempo import driver, envs
from purempo.presets import preset

# Brax training notebook (brax/notebooks/training.ipynb) PPO settings, and its hopper/walker2d SAC settings.
_PPO_NOTEBOOK = dict(
    inverted_pendulum=dict(reward_scaling=10, normalize_observations=True, unroll_length=5, num_minibatches=32,
                           num_updates_per_batch=4, discounting=0.97, learning_rate=3e-4, entropy_cost=1e-2,
                           num_envs=2048, batch_size=1024),
    halfcheetah=dict(reward_scaling=1, normalize_observations=True, unroll_length=20, num_minibatches=32,
                     num_updates_per_batch=8, discounting=0.95, learning_rate=3e-4, entropy_cost=1e-3,
                     num_envs=2048, batch_size=512),
    ant=dict(reward_scaling=10, normalize_observations=True, unroll_length=5, num_minibatches=32,
             num_updates_per_batch=4, discounting=0.97, learning_rate=3e-4, entropy_cost=1e-2, num_envs=4096,
             batch_size=2048),
    humanoid=dict(reward_scaling=0.1, normalize_observations=True, unroll_length=10, num_minibatches=32,
                  num_updates_per_batch=8, discounting=0.97, learning_rate=3e-4, entropy_cost=1e-3,
                  num_envs=2048, batch_size=1024),
)
_SAC_HOPPER = dict(reward_scaling=30, normalize_observations=True, discounting=0.997, learning_rate=6e-4,
                   num_envs=128, batch_size=512, grad_updates_per_step=64, max_replay_size=1_048_576,
                   min_replay_size=8192, max_devices_per_host=1)

# Evaluation spacing in env steps for each trainer (Brax's are multiples of one training step of its own).
EVAL_EVERY = dict(
    inverted_pendulum=dict(purempo=5_120, ppo=163_840, sac=4_096),
    halfcheetah=dict(purempo=20_480, ppo=327_680, sac=8_192),
    ant=dict(purempo=262_144, ppo=2_621_440, sac=65_536),
    humanoid=dict(purempo=262_144, ppo=2_621_440, sac=65_536),
)
# DM Control (1,000-step episodes): PPO is evaluated after every training step (Playground's settings take
# 983,040 env steps per step), the others every 20,480 env steps.
_PLAYGROUND_EVAL_EVERY = dict(purempo=20_480, ppo=1, sac=20_480)
_OTHER_EVAL_EVERY = dict(purempo=20_480, ppo=2_621_440, sac=65_536)


def eval_every(env_name, trainer):
    """Env steps between evaluations of `trainer` on `env_name` (rounded to its own training steps later)."""
    if env_name in EVAL_EVERY:
        return EVAL_EVERY[env_name][trainer]
    family_default = _PLAYGROUND_EVAL_EVERY if envs.family(env_name) == envs.PLAYGROUND else _OTHER_EVAL_EVERY
    return family_default[trainer]


class _BudgetSpent(Exception):
    pass


class Curve:
    """Evaluation points of one trainer: env steps, elapsed and evaluation wall time, return."""

    def __init__(self, name, budget_s, max_env_steps=None):
        self.name, self.budget_s, self.max_env_steps, self.points = name, budget_s, max_env_steps, []
        self.start = time.perf_counter()
        self.stopped_at_train_time_s = None  # set when stopped from outside between two evaluations

    def add(self, env_steps, eval_time_s, mean, std):
        elapsed = time.perf_counter() - self.start
        point = dict(env_steps=int(env_steps), wall_time_s=round(elapsed, 2), eval_time_s=round(eval_time_s, 2),
                     train_time_s=round(elapsed - eval_time_s, 2), eval_return=float(mean), eval_return_std=float(std))
        self.points.append(point)
        print(f"  {self.name:8s} {point['env_steps']:>11,} steps  train {point['train_time_s']:7.1f} s  "
              f"(elapsed {elapsed:7.1f} s)  eval {mean:9.2f} ± {std:.1f}", flush=True)
        reached = self.max_env_steps is not None and point["env_steps"] >= self.max_env_steps
        return point["train_time_s"] >= self.budget_s or reached


class _Budget(driver.Callbacks):
    """Hands each of the driver's evaluations to a `Curve` (with the evaluation time so far) and stops the run
    at the first one after the budget is spent."""

    def __init__(self, curve):
        self.curve, self.eval_time, self.spent = curve, 0.0, False

    def chunk(self, index, metrics, state, seconds):
        self.eval_time += seconds["evaluate"]
        self.spent = self.curve.add(metrics["eval_env_steps"][0], self.eval_time, metrics["eval_return"][0],
                                    metrics["eval_return_std"][0])

    def stop(self, row):
        return self.spent


def run_purempo(env_name, budget_s, seed, overrides, max_env_steps=None):
    """purempo through `purempo.driver.train` (what `purempo train --seed SEED` runs), until the budget."""
    every = eval_every(env_name, "purempo")
    curve = Curve("purempo", budget_s, max_env_steps)
    base = preset(env_name, **overrides)
    iterations = max(1, every // base.steps_per_iteration)
    num_evals = 10_000
    config = base.replace(total_steps=iterations * base.steps_per_iteration * num_evals, num_evals=num_evals)
    train_in_driver(config, _Budget(curve), seed=seed)
    return curve, jsonable(config)


def env_fields(overrides):
    """The purempo overrides that choose the simulator (`backend`, `impl`): every trainer's env gets them."""
    return {key: value for key, value in overrides.items() if key in ("backend", "impl")}


def run_brax(algorithm, env_name, budget_s, seed, overrides, env_overrides, max_env_steps=None):
    """Brax's `algorithm` in a child process under `supervise`: (curve, settings). `env_overrides`: the purempo
    fields that choose the env (`backend`, `impl`), so that every trainer steps the same simulator."""
    curve = Curve(f"brax-{algorithm}", budget_s, max_env_steps)
    settings = supervise(curve, _brax_child,
                         (algorithm, env_name, budget_s, seed, overrides, env_overrides, max_env_steps),
                         grace_s=max(60.0, 0.1 * budget_s))
    return curve, settings


def _brax_child(messages, algorithm, env_name, budget_s, seed, overrides, env_overrides, max_env_steps=None):
    """Runs in the child process: sends ("settings", dict), then ("point", dict) per evaluation, then ("done",)."""
    try:
        _train_brax(messages, algorithm, env_name, budget_s, seed, overrides, env_overrides, max_env_steps)
        messages.put(("done", None))
    except BaseException as error:  # reported to the parent, which raises
        messages.put(("error", f"{type(error).__name__}: {error}"))


def _train_brax(messages, algorithm, env_name, budget_s, seed, overrides, env_overrides, max_env_steps=None):
    brax_compat.install()
    if algorithm == "ppo":
        from brax.training.agents.ppo import train as brax_train
    else:
        from brax.training.agents.sac import train as brax_train
    dropped = {}
    if envs.family(env_name) == envs.PLAYGROUND:
        settings, dropped = playground_settings(algorithm, env_name, brax_train.train, overrides)
    elif algorithm == "ppo":
        settings = dict(_PPO_NOTEBOOK.get(env_name, _PPO_NOTEBOOK["ant"]), **overrides)
    else:
        settings = dict(_SAC_HOPPER, **overrides)
    num_evals = 10_000
    if algorithm == "ppo":
        per_eval = eval_every(env_name, "ppo")
        step = settings["batch_size"] * settings["unroll_length"] * settings["num_minibatches"]
        per_eval = max(1, per_eval // step) * step
        settings.update(num_timesteps=per_eval * num_evals, num_evals=num_evals + 1)
    else:
        per_eval = eval_every(env_name, "sac")
        per_eval = max(1, per_eval // settings["num_envs"]) * settings["num_envs"]
        prefill = -(-settings["min_replay_size"] // settings["num_envs"]) * settings["num_envs"]
        settings.update(num_timesteps=prefill + per_eval * num_evals, num_evals=num_evals + 1)
    eval_episodes = preset(env_name).eval_episodes
    settings.update(episode_length=1000, action_repeat=1, seed=seed, num_eval_envs=eval_episodes,
                    deterministic_eval=True)
    curve = Curve(f"brax-{algorithm}", budget_s, max_env_steps)
    env_config = preset(env_name, **env_overrides)
    env = envs.make(env_name, env_config.backend, env_config.impl)

    def progress(num_steps, metrics):
        spent = curve.add(num_steps, float(metrics["eval/walltime"]), metrics["eval/episode_reward"],
                          metrics["eval/episode_reward_std"])
        messages.put(("point", curve.points[-1]))
        if spent:
            raise _BudgetSpent

    if envs.family(env_name) == envs.PLAYGROUND:
        from mujoco_playground import wrapper

        settings["wrap_env_fn"] = wrapper.wrap_for_brax_training
    recorded = {k: v if isinstance(v, (int, float, str, bool, type(None))) else str(v) for k, v in settings.items()}
    network_options = settings.pop("network_options", None)
    if network_options:
        recorded["network_options"] = network_options
    if dropped:
        recorded["dropped"] = dropped
    messages.put(("settings", recorded))
    try:
        brax_train.train(environment=env, progress_fn=progress, **settings)
    except _BudgetSpent:
        pass


def playground_settings(algorithm, env_name, train_fn, overrides):
    """Playground's published Brax `algorithm` settings for `env_name` with `overrides`: (the arguments Brax's
    `train_fn` accepts, with the network options turned into a `network_factory`; the keys it rejects)."""
    import functools
    import inspect

    from mujoco_playground.config import dm_control_suite_params as params

    config = (params.brax_ppo_config if algorithm == "ppo" else params.brax_sac_config)(env_name).to_dict()
    config.update(overrides)
    factory = config.pop("network_factory", None)
    accepted = inspect.signature(train_fn).parameters
    dropped = {key: config.pop(key) for key in list(config) if key not in accepted}
    if factory:
        if algorithm == "ppo":
            from brax.training.agents.ppo import networks as nets

            config["network_factory"] = functools.partial(nets.make_ppo_networks, **factory)
        else:
            from brax.training.agents.sac import networks as nets

            config["network_factory"] = functools.partial(nets.make_sac_networks, **factory)
        config["network_options"] = factory  # recorded (the factory itself is not JSON)
    return config, dropped


def summarize(curve, threshold):
    points = curve.points
    hit = next((p for p in points if threshold is not None and p["eval_return"] >= threshold), None)
    learning = [p for p in points if p["env_steps"] > 0]
    first, last = (learning[0], learning[-1]) if len(learning) > 1 else (None, None)
    at_1m = next((p for p in points if p["env_steps"] >= 1_000_000), None)
    sps = None
    if first is not None and last["train_time_s"] > first["train_time_s"]:
        sps = (last["env_steps"] - first["env_steps"]) / (last["train_time_s"] - first["train_time_s"])
    return dict(
        trainer=curve.name,
        threshold_train_time_s=hit and hit["train_time_s"],
        threshold_wall_time_s=hit and hit["wall_time_s"],
        threshold_env_steps=hit and hit["env_steps"],
        final_return=points[-1]["eval_return"] if points else None,  # None: stopped before its first evaluation
        final_return_std=points[-1]["eval_return_std"] if points else None,
        best_return=max(p["eval_return"] for p in points) if points else None,
        final_env_steps=points[-1]["env_steps"] if points else 0,
        final_train_time_s=points[-1]["train_time_s"] if points else None,
        env_steps_per_s=sps and round(sps, 1),
        # The first evaluation at or after 1M env steps (the sample-efficiency point).
        return_at_1m=at_1m and at_1m["eval_return"],
        env_steps_at_1m=at_1m and at_1m["env_steps"],
        stopped_at_train_time_s=curve.stopped_at_train_time_s,
        curve=points,
    )


def main():
    # Every trainer compiles from scratch: no persistent compilation cache here or in the trainers' children
    # (purempo's CLI keeps one; Brax's trainers have none), so compile time counts alike for all.
    os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)
    jax.config.update("jax_compilation_cache_dir", None)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="inverted_pendulum")
    parser.add_argument("--budget-s", type=float, default=None, help="training wall time per trainer (required)")
    parser.add_argument("--threshold", type=float, default=None, help="return whose first crossing is timed")
    parser.add_argument("--trainers", nargs="+", default=["purempo", "ppo", "sac"], choices=["purempo", "ppo", "sac"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-env-steps", type=int, default=None,
                        help="also stop each trainer at its first evaluation at or after this many env steps")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a purempo field")
    parser.add_argument("--brax-set", action="append", default=[], metavar="ARG=VALUE",
                        help="override an argument of the Brax trainers")
    parser.add_argument("--name", default=None, help="output file stem (default: compare_ENV)")
    parser.add_argument("--replot", action="store_true", help="only redraw the PNG from the saved JSON")
    args = parser.parse_args()
    try:
        envs.family(args.env)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    name = args.name or f"compare_{args.env}"
    path = RESULTS / f"{name}.json"
    if args.replot:
        summary = json.loads(path.read_text())
        plot(summary, path.with_suffix(".png"))
        report(summary)
        return
    if args.budget_s is None or args.budget_s <= 0:
        raise SystemExit(f"error: --budget-s must be given and > 0, got {args.budget_s}")
    if args.max_env_steps is not None and args.max_env_steps <= 0:
        raise SystemExit(f"error: --max-env-steps must be > 0 (or left out), got {args.max_env_steps}")
    overrides, brax_overrides = parse_overrides(args.set), parse_overrides(args.brax_set)
    results, settings = [], {}
    for trainer in args.trainers:
        print(f"{trainer}: {args.budget_s:g} s training budget on {args.env}", flush=True)
        if trainer == "purempo":
            curve, settings[trainer] = run_purempo(args.env, args.budget_s, args.seed, overrides, args.max_env_steps)
        else:
            curve, settings[trainer] = run_brax(trainer, args.env, args.budget_s, args.seed, brax_overrides,
                                                env_fields(overrides), args.max_env_steps)
        results.append(summarize(curve, args.threshold))
    summary = dict(
        env=args.env, date=today(), machine=machine(), versions=versions(), budget_s=args.budget_s,
        max_env_steps=args.max_env_steps,
        threshold=args.threshold, seed=args.seed,
        command=command_line("compare.py"),
        settings={k: {a: (list(b) if isinstance(b, tuple) else b) for a, b in v.items()} for k, v in settings.items()},
        results=results,
    )
    RESULTS.mkdir(exist_ok=True)
    path.write_text(json.dumps(summary, indent=1, default=str) + "\n")
    plot(summary, path.with_suffix(".png"))
    report(summary)


def _fmt(value, spec):
    return "not reached" if value is None else format(value, spec)


def report(summary):
    cap = f" (or {summary['max_env_steps']:,} env steps)" if summary.get("max_env_steps") else ""
    print(f"\n{summary['env']}, {summary['budget_s']:g} s training budget each{cap}; {summary['machine']}; "
          f"jax {summary['versions'].get('jax')}, brax {summary['versions'].get('brax')}; {summary['date']}")
    print(f"command: {summary['command']}\n")
    threshold = summary["threshold"]
    head = f"| trainer | training time to {threshold:g} (s) | elapsed incl. evals (s) | env steps to {threshold:g} " \
        if threshold is not None else "| trainer "
    print(head + "| final return | best return | env steps | env steps/s | return at 1M env steps |")
    print("|---" + "|---:" * (5 if threshold is None else 8) + "|")
    for r in summary["results"]:
        cells = [r["trainer"]]
        if threshold is not None:
            cells += [_fmt(r["threshold_train_time_s"], ".1f"), _fmt(r["threshold_wall_time_s"], ".1f"),
                      _fmt(r["threshold_env_steps"], ",")]
        at_1m = r.get("return_at_1m")
        final = "no evaluation" if r["final_return"] is None else f"{r['final_return']:.1f} ± {r['final_return_std']:.1f}"
        cells += [final, _fmt(r["best_return"], ".1f"),
                  f"{r['final_env_steps']:,}", _fmt(r["env_steps_per_s"], ",.0f"),
                  "not reached" if at_1m is None else f"{at_1m:.1f} (at {r['env_steps_at_1m']:,})"]
        print("| " + " | ".join(cells) + " |")
    learned = [r for r in summary["results"] if r["final_env_steps"] > 0]
    if len(learned) > 1:  # sample efficiency: each trainer at the env steps the shortest curve reached
        common = min(r["final_env_steps"] for r in learned)
        cells = []
        for r in learned:
            point = next(p for p in r["curve"] if p["env_steps"] >= common)
            cells.append(f"{r['trainer']} {point['eval_return']:.1f} (at {point['env_steps']:,})")
        print(f"at >= {common:,} env steps: " + ", ".join(cells))
    for r in summary["results"]:
        if r.get("stopped_at_train_time_s") is not None:
            print(f"{r['trainer']}: stopped from outside at {r['stopped_at_train_time_s']:g} s of training, "
                  f"its next evaluation not reached; its row is its last evaluation, at {r['final_env_steps']:,} env steps")
    for trainer, settings in summary.get("settings", {}).items():
        if settings.get("dropped"):
            print(f"{trainer}: dropped from Playground's published settings (not accepted by Brax's train()): "
                  + ", ".join(f"{k}={v}" for k, v in settings["dropped"].items()))
    ours = next((r for r in summary["results"] if r["trainer"] == "purempo"), None)
    if threshold is not None and ours and ours["threshold_train_time_s"] is not None:
        for r in summary["results"]:
            if r is not ours and r["threshold_train_time_s"] is not None:
                print(f"purempo / {r['trainer']} training time to {threshold:g}: "
                      f"{ours['threshold_train_time_s'] / r['threshold_train_time_s']:.2f}×")


def plot(summary, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for r in summary["results"]:
        curve = r["curve"]
        mean = np.array([p["eval_return"] for p in curve])
        std = np.array([p["eval_return_std"] for p in curve])
        for ax, key in ((axes[0], "train_time_s"), (axes[1], "env_steps")):
            x = np.array([p[key] for p in curve])
            ax.plot(x, mean, marker="o", ms=3, label=r["trainer"])
            ax.fill_between(x, mean - std, mean + std, alpha=0.15)
    axes[0].set_xlabel("training wall time incl. compilation (s)")
    axes[1].set_xlabel("env steps")
    axes[1].set_xscale("log")
    for ax in axes:
        ax.set_ylabel("deterministic eval return")
        ax.grid(alpha=0.3)
        if summary["threshold"] is not None:
            ax.axhline(summary["threshold"], color="gray", lw=0.8, ls=":")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{summary['env']}: purempo vs Brax PPO/SAC, {summary['budget_s']:g} s each "
                 f"({summary['machine'].split(';')[0]}, {summary['date']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
