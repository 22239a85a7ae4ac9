"""Does a solved task stay solved? Long runs of several seeds in one vmapped program, with per-chunk diagnostics.

    python benchmarks/stability.py --env inverted_pendulum                 # 5 seeds x 500k steps, 50 evaluations
    python benchmarks/stability.py --env halfcheetah --num-seeds 2         # 1.5M steps, 30 evaluations
    python benchmarks/stability.py --env inverted_pendulum --set min_alpha=1e-8 --name ablation_no_floor
    python benchmarks/stability.py --env inverted_pendulum --sweep alpha_gain=0,0.05 --sweep discount=0.99,0.995

The env's preset (purempo/presets.py, what `purempo train --env ENV` uses) with the run length below unless
`--set` overrides it, trained by `purempo.driver.train` (the loop of `purempo train`; seed i is the one
`purempo train --seed SEED --num-seeds N` trains). After every chunk (evaluation period) the script records, per seed:
- the deterministic (mean-action) and stochastic evaluation returns of `eval_episodes` episodes each, drawn
  from fresh `env.reset` starts; the deterministic episodes' mean length, and the mean |final observation|
  of the episodes that ended early (for inverted_pendulum: cart position, pole angle) and of all of them;
- the largest per-update KL_μ and KL_σ of the chunk against ε_μ and ε_σ, the mean and smallest α_μ, α_σ, η
  and the policy's σ, and the largest iteration mean of the α_μ the policy's penalty applied (learned +
  proportional, `alpha_gain`);
- how far the observation normaliser moved during the chunk (largest |Δmean|/std and |Δlog std| over
  dimensions), and how many terminal transitions the replay still holds.

Summary per seed: with `--threshold` (inverted_pendulum: 950), env steps and wall time to it, the fraction of
later evaluations at or above it, the lowest later evaluation and the final one; for every run the best,
the final, and the largest drop below the running best after `--drop-after` env steps. Targets are checked
and printed. Writes benchmarks/results/stability_<name>.json and .png (`--out` elsewhere).

`--sweep FIELD=V1,V2,...` (float hyper-parameters only, repeatable: the grid of all combinations) runs every
setting × seed as one member of the same vmapped program, and writes one JSON/PNG per setting, named
stability_<env>_<name>_<field><value>[-<field><value>...].
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from common import RESULTS, command_line, jsonable, machine, parse_overrides, today, train_in_driver, versions
from purempo import driver, envs, normalizer
from purempo.presets import preset

# Run lengths of the stability check (the presets' own total_steps are sized for a first result).
DEFAULT_RUNS = {
    "inverted_pendulum": dict(total_steps=500_000, num_evals=50),
    "halfcheetah": dict(total_steps=1_500_000, num_evals=30),
    "hopper": dict(total_steps=1_500_000, num_evals=30),
}
THRESHOLDS = {"inverted_pendulum": 950.0}


@jax.jit
def replay_summary(state):
    """Per seed: terminal transitions held in the replay, and its fill level (rows per env)."""
    def one(s):
        valid = jnp.arange(s.replay.data.terminated.shape[0]) < s.replay.size
        return jnp.sum(s.replay.data.terminated & valid[:, None]), s.replay.size
    return jax.vmap(one)(state)


def obs_moves(before, after):
    """Per seed: largest |Δmean|/std and |Δ log std| over observation dimensions between two statistics."""
    def one(b, a):
        std_b, std_a = normalizer.std(b), normalizer.std(a)
        return jnp.max(jnp.abs(a.mean - b.mean) / std_b), jnp.max(jnp.abs(jnp.log(std_a / std_b)))
    return jax.device_get(jax.jit(jax.vmap(one))(before, after))


def chunk_record(metrics, evaluation, obs_move, replay_terminals, episode_length):
    """One chunk's diagnostics, per seed (lists over seeds)."""
    learned = metrics["updates"] > 0  # [S, I]

    def reduce(name, fn):
        values = np.where(learned, metrics[name], np.nan)
        return [None if not np.isfinite(x) else float(x) for x in fn(values, axis=1)]

    episodes = evaluation["eval_episodes"]
    num = episodes["returns"].shape[1] // 2  # first half deterministic, second half stochastic
    lengths = episodes["lengths"][:, :num]
    final_abs = np.abs(episodes["final_obs"][:, :num])  # [S, E, O]
    early = lengths < episode_length
    failed = [final_abs[s][early[s]].mean(axis=0).round(4).tolist() if early[s].any() else None
              for s in range(lengths.shape[0])]
    return dict(
        eval_return=evaluation["eval_return"].tolist(),
        eval_return_min=evaluation["eval_return_min"].tolist(),
        eval_stochastic_return=evaluation["eval_stochastic_return"].tolist(),
        eval_episode_length=evaluation["eval_episode_length"].tolist(),
        early_ends=early.sum(axis=1).tolist(),
        final_abs_obs=final_abs.mean(axis=1).round(4).tolist(),
        failed_final_abs_obs=failed,
        kl_mean_max=reduce("kl_mean_max", np.nanmax), kl_std_max=reduce("kl_std_max", np.nanmax),
        # KL(E-step weights ‖ uniform) against ε, and the smallest σ' the M-step's KL_μ divides by.
        e_step_kl_max=reduce("e_step_kl_max", np.nanmax), target_std_min=reduce("target_std_min", np.nanmin),
        alpha_mean=reduce("alpha_mean", np.nanmean), alpha_mean_min=reduce("alpha_mean_min", np.nanmin),
        alpha_mean_applied_max=reduce("alpha_mean_applied", np.nanmax),
        alpha_std=reduce("alpha_std", np.nanmean), temperature=reduce("temperature", np.nanmean),
        policy_std=reduce("policy_std", np.nanmean), q_mean=reduce("q_mean", np.nanmean),
        q_member_std=reduce("q_member_std", np.nanmean),
        obs_mean_move=obs_move[0].tolist(), obs_log_std_move=obs_move[1].tolist(),
        replay_terminals=replay_terminals.tolist(),
    )


def seed_summary(steps, times, returns, threshold, drop_after):
    """Best / final / worst-after-threshold figures of one seed's evaluation curve."""
    returns = np.asarray(returns)
    out = dict(best=float(returns.max()), final=float(returns[-1]))
    running_best = np.maximum.accumulate(returns)
    late = np.asarray(steps) >= drop_after
    if late.any():
        drops = 1.0 - returns[late] / np.maximum(running_best[late], 1e-9)
        out["largest_drop_after"] = float(drops.max())  # fraction of the running best
        out["lowest_fraction_of_running_best"] = float(1.0 - drops.max())
    out["final_fraction_of_best"] = float(returns[-1] / returns.max()) if returns.max() > 0 else None
    if threshold is not None:
        hit = next((i for i, r in enumerate(returns) if r >= threshold), None)
        out["steps_to_threshold"] = None if hit is None else int(steps[hit])
        out["time_to_threshold_s"] = None if hit is None else round(times[hit], 1)
        if hit is not None:
            after = returns[hit:]
            out["fraction_at_threshold_after"] = float(np.mean(after >= threshold))
            out["lowest_after"] = float(after.min())
            out["dips_after"] = [(int(steps[hit + i]), float(r)) for i, r in enumerate(after) if r < threshold]
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="inverted_pendulum")
    parser.add_argument("--seed", type=int, default=0, help="base seed, as purempo train --seed")
    parser.add_argument("--num-seeds", type=int, default=None,
                        help="seeds, as purempo train --num-seeds (default: 5 for inverted_pendulum, 2 otherwise)")
    parser.add_argument("--threshold", type=float, default=None, help="default: 950 for inverted_pendulum")
    parser.add_argument("--drop-after", type=int, default=500_000,
                        help="env steps after which drops below the running best count")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a config field")
    parser.add_argument("--scale", default="cpu", choices=("cpu", "gpu"), help="the preset's scale (presets.preset)")
    parser.add_argument("--name", default=None, help="output file stem after stability_ (ENV_NAME, or NAME if it holds ENV; default: ENV)")
    parser.add_argument("--sweep", action="append", default=[], metavar="FIELD=V1,V2",
                        help="sweep a float hyper-parameter within the same vmapped program (repeat for a grid)")
    parser.add_argument("--out", default=str(RESULTS), help="directory for the JSON and PNG files")
    parser.add_argument("--run-dir", default=None, help="keep the driver's run directory here (default: temporary)")
    parser.add_argument("--replot", default=None, help="only redraw the PNG of a saved results JSON")
    args = parser.parse_args()
    if args.replot:
        path = Path(args.replot)
        summary = json.loads(path.read_text())
        # JSONs written before action_dim was recorded: read it off the env.
        summary.setdefault("action_dim", envs.make(summary["env"], summary["config"].get("backend"),
                                                   summary["config"].get("impl")).action_size)
        plot(summary, path.with_suffix(".png"))
        report(summary)
        return
    if envs.family(args.env) == envs.GYMNAX:  # its diagnostics are the Gaussian policy's
        raise SystemExit(f"error: {args.env} has discrete actions: use benchmarks/gymnax_curves.py")
    num_seeds = args.num_seeds or (5 if args.env == "inverted_pendulum" else 2)
    seeds = list(range(num_seeds))
    threshold = args.threshold if args.threshold is not None else THRESHOLDS.get(args.env)
    overrides = {**DEFAULT_RUNS.get(args.env, {}), **parse_overrides(args.set)}
    config = preset(args.env, scale=args.scale, **overrides)
    members, settings = sweep_settings(config, args.sweep)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    recorder = Recorder(args, config, members, settings, seeds, threshold, out_dir)
    train_in_driver(config, recorder, seed=args.seed, num_seeds=num_seeds, sweep=args.sweep, run_dir=args.run_dir)
    for setting in settings:
        path = out_dir / f"{file_stem(args, setting)}.json"
        summary = json.loads(path.read_text())
        plot(summary, path.with_suffix(".png"))
        report(summary)


def sweep_settings(config, sweep):
    """The driver's grid for `--sweep` items: its members (runs are member-major: member j's seeds come j-th)
    and each member's setting `{field: value}` (`[{}]` without a sweep); SystemExit for bad items."""
    try:
        swept = [name for name, _ in driver.parse_sweep(sweep)]
        members = driver.sweep_members(config, Path("."), sweep)
    except driver.RunError as error:
        raise SystemExit(f"error: {error}") from None
    return members, [{name: getattr(member.config, name) for name in swept} for member in members]


class Recorder(driver.Callbacks):
    """Builds the per-chunk diagnostics from the driver's `chunk` hook and rewrites every setting's JSON after
    each chunk, so that an interrupted long run still leaves its figures."""

    def __init__(self, args, config, members, settings, seeds, threshold, out_dir):
        self.args, self.config, self.members, self.settings = args, config, members, settings
        self.seeds, self.threshold, self.out_dir = seeds, threshold, out_dir
        self.stats_before = None  # the observation statistics at the start of the chunk, per run
        self.chunks, self.times = [], []
        self.start = time.perf_counter()

    def chunk(self, index, metrics, state, seconds):
        config, num_runs = self.config, len(self.members) * len(self.seeds)
        self.action_dim = state.exploration_noise.shape[-1]  # [runs, E, A]
        if self.stats_before is None:  # the initial statistics, the same for every run
            initial = normalizer.init(state.obs_stats.mean.shape[-1])
            self.stats_before = jax.tree.map(lambda x: np.broadcast_to(x, (num_runs,) + np.shape(x)), initial)
        evaluation = {k: v for k, v in metrics.items() if k.startswith("eval_")}
        self.times.append(time.perf_counter() - self.start)
        stats_after = jax.device_get(state.obs_stats)
        record = chunk_record(metrics, evaluation, obs_moves(self.stats_before, stats_after),
                              np.asarray(replay_summary(state)[0]), envs.time_limit(config))
        self.stats_before = stats_after
        record["env_steps"] = int(evaluation["eval_iteration"][0]) * config.steps_per_iteration
        record["wall_time_s"] = round(self.times[-1], 1)
        self.chunks.append(record)
        print(f"{record['env_steps']:>9,} steps {self.times[-1]:7.0f} s  det "
              + " ".join(f"{r:7.1f}" for r in record["eval_return"])
              + "  sto " + " ".join(f"{r:7.1f}" for r in record["eval_stochastic_return"])
              + "  α_μ " + " ".join(f"{a:.1e}" if a is not None else "-" for a in record["alpha_mean"]), flush=True)
        size = len(self.seeds)
        for j, (member, setting) in enumerate(zip(self.members, self.settings)):
            rows = range(j * size, (j + 1) * size)  # runs are member-major: member j's seeds are j·S ... j·S + S − 1
            own = [{key: ([value[i] for i in rows] if isinstance(value, list) else value) for key, value in c.items()}
                   for c in self.chunks]
            summary = summarise(self.args, member.config, self.seeds, self.threshold, own, self.times,
                                complete=index + 1 == config.num_evals, setting=setting,
                                action_dim=self.action_dim)
            (self.out_dir / f"{file_stem(self.args, setting)}.json").write_text(json.dumps(summary, indent=1) + "\n")


def file_stem(args, setting):
    label = "-".join(f"{field}{value:g}" for field, value in setting.items())
    name = args.name if args.name and args.env in args.name else "_".join(filter(None, [args.env, args.name]))
    return f"stability_{name}" + (f"_{label}" if label else "")


def summarise(args, config, seeds, threshold, chunks, times, complete, setting=None, action_dim=None):
    steps = [c["env_steps"] for c in chunks]
    runs = []
    for i, seed in enumerate(seeds):
        det = [c["eval_return"][i] for c in chunks]
        runs.append(dict(seed=seed, eval_return=det,
                         eval_stochastic_return=[c["eval_stochastic_return"][i] for c in chunks],
                         **seed_summary(steps, times, det, threshold, args.drop_after)))
    return dict(
        env=args.env, date=today(), machine=machine(), versions=versions(),
        command=command_line("stability.py"),
        sweep=args.sweep or None,
        setting=setting,  # this file's member of a `--sweep` grid (None without one)
        config=jsonable(config), action_dim=action_dim, threshold=threshold, drop_after=args.drop_after,
        wall_time_s=round(times[-1], 1),
        complete=complete, env_steps=steps, runs=runs, chunks=chunks, targets=targets(args.env, runs, threshold),
    )


def targets(env, runs, threshold):
    """The stability targets (issue: every seed, the settings `purempo train --env ENV` uses)."""
    out = {}
    if threshold is not None:
        reached = [r for r in runs if r.get("steps_to_threshold") is not None]
        out["every seed reaches the threshold"] = len(reached) == len(runs)
        out["every seed holds it in >= 98% of later evaluations"] = bool(reached) and all(
            r["fraction_at_threshold_after"] >= 0.98 for r in reached) and len(reached) == len(runs)
        out["every seed ends at or above it"] = all(r["final"] >= threshold for r in runs)
        if reached and env == "inverted_pendulum":  # its stability issue's target; other tasks have none
            out["mean steps to threshold <= 35k"] = float(np.mean([r["steps_to_threshold"] for r in reached])) <= 35_000
    else:
        out["no evaluation after drop_after below 85% of the running best"] = all(
            r.get("lowest_fraction_of_running_best", 1.0) >= 0.85 for r in runs)
        out["final >= 90% of best"] = all((r["final_fraction_of_best"] or 0) >= 0.9 for r in runs)
        if env == "halfcheetah":
            out["best >= 8,000 on every seed"] = all(r["best"] >= 8000 for r in runs)
    return out


def report(summary):
    print(f"\n{summary['env']} on {summary['machine']}; {summary['versions']}; {summary['date']}")
    print(f"command: {summary['command']}  ({summary['wall_time_s']} s, {len(summary['runs'])} seeds in one program)\n")
    if summary["threshold"] is not None:
        print(f"| seed | steps to {summary['threshold']:g} | time to it (s) | later evals ≥ it | lowest later | final | "
              "dips (steps, return) |")
        print("|---:|---:|---:|---:|---:|---:|---|")
        for r in summary["runs"]:
            hit = r["steps_to_threshold"]
            print(f"| {r['seed']} | {'never' if hit is None else f'{hit:,}'} | {r['time_to_threshold_s']} | "
                  f"{r.get('fraction_at_threshold_after', float('nan')):.0%} | {r.get('lowest_after', float('nan')):.1f} | "
                  f"{r['final']:.1f} | {r.get('dips_after', [])} |")
    print("\n| seed | best | final | final / best | lowest after "
          f"{summary['drop_after'] / 1e3:.0f}k / running best |")
    print("|---:|---:|---:|---:|---:|")
    for r in summary["runs"]:
        low = r.get("lowest_fraction_of_running_best")
        print(f"| {r['seed']} | {r['best']:.1f} | {r['final']:.1f} | {r['final_fraction_of_best']:.0%} | "
              f"{'-' if low is None else f'{low:.0%}'} |")
    print("\nTargets: " + "; ".join(f"{k}: {'MET' if v else 'NOT met'}" for k, v in summary["targets"].items()))


def summed_kl_bounds(config, action_dim):
    """The bounds that the recorded KL peaks (summed over action dimensions) are held to: `(mean, std)`.

    With `epsilon_per_dimension` each dimension gets ε, so the sum may reach action_dim · ε (`mpo.m_step`).
    """
    scale = action_dim if config.get("epsilon_per_dimension") else 1
    return config["epsilon_mean"] * scale, config["epsilon_std"] * scale


def plot(summary, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.asarray(summary["env_steps"]) / 1e3
    chunks = summary["chunks"]
    bound_mean, bound_std = summed_kl_bounds(summary["config"], summary["action_dim"])
    fig, axes = plt.subplots(2, 2, figsize=(12, 7), sharex=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, r in enumerate(summary["runs"]):
        c = colors[i % len(colors)]
        axes[0, 0].plot(steps, r["eval_return"], color=c, lw=1.2, label=f"seed {r['seed']}")
        axes[0, 0].plot(steps, r["eval_stochastic_return"], color=c, lw=0.8, ls=":")
        series = lambda key: np.array([np.nan if ch[key][i] is None else ch[key][i] for ch in chunks])  # noqa
        axes[0, 1].semilogy(steps, series("alpha_mean"), color=c, lw=1)
        axes[0, 1].semilogy(steps, series("alpha_mean_min"), color=c, lw=0.6, ls=":")
        axes[1, 0].semilogy(steps, series("kl_mean_max") / bound_mean, color=c, lw=1)
        axes[1, 0].semilogy(steps, series("kl_std_max") / bound_std, color=c, lw=0.8, ls=":")
        axes[1, 1].semilogy(steps, np.maximum(series("obs_mean_move"), 1e-6), color=c, lw=1)
    if summary["threshold"] is not None:
        axes[0, 0].axhline(summary["threshold"], color="gray", lw=0.8, ls="--")
    axes[0, 0].set_ylabel("eval return (solid: mean action, dotted: sampled)")
    axes[0, 0].legend(fontsize=7)
    axes[0, 1].set_ylabel("α_μ (solid: mean, dotted: smallest)")
    axes[1, 0].axhline(1.0, color="gray", lw=0.8, ls="--")
    axes[1, 0].set_ylabel("max per-update KL / bound (solid: μ, dotted: σ)")
    axes[1, 1].set_ylabel("obs normaliser move per chunk (max |Δmean|/std)")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("env steps (thousands)")
    fig.suptitle(f"purempo stability on {summary['env']}: {summary['command'].split('stability.py ')[1]} "
                 f"({summary['machine'].split(';')[0]}, {summary['date']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
