"""Command line: `purempo train [--env NAME] [--total-steps S] ... --run-dir DIR`.

Every `Config` field is a flag (`purempo train --help` lists them with their documentation). Training runs
the same chunks as `make_train`'s scan, one jitted call per evaluation, so progress can be shown and written
between chunks; `--num-seeds M` trains M independent seeds with `vmap` (keys `split(PRNGKey(seed), M)`).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import tyro

from purempo.config import Config

EXIT_USAGE = 2


class UsageError(Exception):
    """A problem with the user's input, reported as one line with exit code 2."""


@dataclasses.dataclass(frozen=True)
class TrainArgs:
    """Train MPO on a Brax environment and write config.json and metrics.jsonl to the run directory."""

    config: Annotated[Config, tyro.conf.arg(name="")] = Config()
    run_dir: Optional[Path] = None
    """Where to write config.json and metrics.jsonl (default: runs/ENV-TIMESTAMP). Must not hold a run."""
    seed: int = 0
    """Base seed; seed i of --num-seeds uses jax.random.split(PRNGKey(seed), num_seeds)[i]."""
    num_seeds: int = 1
    """Independent seeds trained in parallel with jax.vmap."""


def _prepare_run_dir(args: TrainArgs) -> Path:
    run_dir = args.run_dir or Path("runs") / f"{args.config.env}-{time.strftime('%Y%m%d-%H%M%S')}"
    for name in ("config.json", "metrics.jsonl"):
        if (run_dir / name).exists():
            raise UsageError(f"run dir {run_dir} already holds a run ({name}); choose another --run-dir")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise UsageError(f"cannot write to run dir {run_dir}: {error.strerror}") from None
    return run_dir


def run_training(args: TrainArgs) -> Path:
    """Trains as `args` says; returns the run directory."""
    import jax
    import numpy as np
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from purempo.train import compile_trainer, make_trainer

    if args.num_seeds < 1:
        raise UsageError(f"invalid --num-seeds={args.num_seeds}: must be >= 1")
    config = args.config
    run_dir = _prepare_run_dir(args)
    console = Console(stderr=True)
    record = dict(dataclasses.asdict(config), seed=args.seed, num_seeds=args.num_seeds,
                  env_steps_per_seed=config.env_steps, jax_version=jax.__version__,
                  device=str(jax.devices()[0].device_kind))
    (run_dir / "config.json").write_text(json.dumps(record, indent=2) + "\n")

    start = time.perf_counter()
    trainer = make_trainer(config)
    keys = jax.random.split(jax.random.PRNGKey(args.seed), args.num_seeds)
    console.print(f"[bold]purempo[/] {config.env}: {args.num_seeds} seed(s) × {config.env_steps:,} env steps, "
                  f"{config.num_envs} envs, {config.num_evals} evaluations → {run_dir}")

    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:,.0f}/{task.total:,.0f} steps"),
               TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("compiling", total=config.env_steps, info="")
        compiled = compile_trainer(trainer, keys, batched=True)
        state = compiled.init(keys)
        with open(run_dir / "metrics.jsonl", "a") as log:
            for index in range(config.num_evals):
                progress.update(task, description="training")
                state, metrics = compiled.train_chunk(state)
                state, eval_metrics = compiled.evaluate_state(state)
                metrics = jax.device_get({**metrics, **eval_metrics})
                finished = np.sum(metrics["episodes_finished"], axis=1)
                episode_return = np.sum(metrics["episode_return_sum"], axis=1) / np.maximum(finished, 1)
                per_seed = [float(x) for x in metrics["eval_return"]]
                row = dict(
                    eval=index + 1,
                    env_steps=int(metrics["eval_env_steps"][0]),
                    wall_time_s=round(time.perf_counter() - start, 3),
                    eval_return=float(np.mean(per_seed)),
                    eval_return_per_seed=per_seed,
                    train_episode_return=float(np.mean(episode_return)),
                )
                learned = np.asarray(metrics["updates"]) > 0  # prefill iterations report NaN learner metrics
                skip = {"env_steps", "updates", "episode_return_sum", "episodes_finished", "eval_return",
                        "eval_env_steps"}
                for name, value in metrics.items():
                    if name in skip:
                        continue
                    value = np.asarray(value)
                    if value.shape == learned.shape:
                        if not np.all(np.isfinite(value[learned])):
                            raise UsageError(f"non-finite {name} during evaluation period {index + 1}; "
                                             f"metrics up to there are in {run_dir / 'metrics.jsonl'}")
                        value = value[learned] if learned.any() else np.full(1, np.nan)
                    row[name] = float(np.mean(value))
                log.write(json.dumps(row) + "\n")
                log.flush()
                progress.update(task, completed=row["env_steps"],
                                info=f"eval {row['eval_return']:.1f}  SPS {row['env_steps'] * args.num_seeds / row['wall_time_s']:,.0f}")
                console.print(f"steps {row['env_steps']:>10,}  t {row['wall_time_s']:7.1f}s  eval {row['eval_return']:9.2f}"
                              f"  train {row['train_episode_return']:9.2f}  Q {row['q_mean']:8.2f}  η {row['temperature']:.3g}"
                              f"  KLμ {row['kl_mean']:.2e}  KLσ {row['kl_std']:.2e}  σ {row['policy_std']:.3f}")
    return run_dir


def main(argv: Optional[list] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        # Config validation runs while tyro builds the arguments: its ValueError is a usage error.
        args = tyro.extras.subcommand_cli_from_dict(
            {"train": TrainArgs}, args=argv, prog="purempo", description="Pure-JAX MPO on Brax environments."
        )
    except ValueError as error:
        print(f"purempo: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    try:
        run_training(args)
    except UsageError as error:
        print(f"purempo: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("purempo: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
