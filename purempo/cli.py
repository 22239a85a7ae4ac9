"""Command line: `purempo train | eval | render | plot`.

`purempo train` runs the same chunks as `make_train`'s scan, one jitted call per evaluation period, so it can
show progress, write metrics (`metrics.jsonl`, TensorBoard) and save orbax checkpoints between chunks with
identical numerics; `--resume DIR` continues a killed run from its newest checkpoint and ends bit-identical
to an uninterrupted run. `--env NAME` starts from NAME's preset (`purempo.presets`); every `Config` field is a
flag. Bad input is reported as one `purempo: error:` line with exit code 2, and nothing already written is
changed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Dict, List, Literal, Optional, Tuple

import tyro

from purempo.config import Config

EXIT_USAGE = 2
RUN_FILES = ("config.json", "metrics.jsonl")  # a directory holding either holds a run
OWNED_PATHS = ("config.json", "metrics.jsonl", "checkpoints", "tb")  # what --overwrite removes


class UsageError(Exception):
    """A problem with the user's input or run, reported as one line with exit code 2."""


@dataclasses.dataclass(frozen=True)
class TrainArgs:
    """Train MPO on a Brax environment; writes config.json, metrics.jsonl, tb/ and checkpoints/ to the run dir."""

    config: Annotated[Config, tyro.conf.arg(name="")] = Config()
    run_dir: Optional[Path] = None
    """Where the run is written (default: runs/ENV-TIMESTAMP). Must not hold a run unless --overwrite."""
    seed: int = 0
    """Base seed; seed i of --num-seeds uses jax.random.split(PRNGKey(seed), num_seeds)[i]."""
    num_seeds: int = 1
    """Independent seeds trained in parallel with jax.vmap."""
    resume: Optional[Path] = None
    """Continue the run in this directory from its newest checkpoint. Its config.json gives every default; a flag that changes the config, seed or number of seeds is an error."""
    overwrite: bool = False
    """Delete the run already in --run-dir (config.json, metrics.jsonl, checkpoints/, tb/) and start anew."""
    checkpoint_every: int = 1
    """Save a checkpoint every this many evaluation periods (the initial state and the end are always saved)."""
    keep_checkpoints: int = 3
    """Checkpoints kept on disk (the newest)."""
    checkpoint_replay: bool = True
    """Include the replay buffer in checkpoints. Without it checkpoints are smaller, but a resumed run first refills its replay with the current policy, so it is no longer identical to an uninterrupted one."""
    tensorboard: bool = True
    """Also write metrics as TensorBoard events to RUN_DIR/tb."""


@dataclasses.dataclass(frozen=True)
class EvalArgs:
    """Evaluate a run's newest checkpoint: mean and std of the deterministic policy's episode returns."""

    run_dir: tyro.conf.Positional[Path]
    """The run directory (written by purempo train)."""
    episodes: int = 16
    """Episodes per seed of the run, run in parallel."""
    seed: int = 0
    """Seed of the evaluation episodes' initial states."""
    step: Optional[int] = None
    """Checkpoint to evaluate (evaluation periods completed); default: the newest."""


@dataclasses.dataclass(frozen=True)
class RenderArgs:
    """Roll out a run's trained policy for one episode and write Brax's HTML viewer of it."""

    run_dir: tyro.conf.Positional[Path]
    """The run directory (written by purempo train)."""
    out: Path = Path("policy.html")
    """The HTML file to write (refused if it exists, unless --overwrite)."""
    run_seed: int = 0
    """Which of the run's --num-seeds policies to show."""
    seed: int = 0
    """Seed of the episode's initial state."""
    max_steps: Optional[int] = None
    """Steps to roll out at most (default: the run's episode_length); the episode also ends when done."""
    height: int = 480
    """Height of the viewer in pixels."""
    step: Optional[int] = None
    """Checkpoint to render (evaluation periods completed); default: the newest."""
    overwrite: bool = False
    """Replace --out if it exists."""


@dataclasses.dataclass(frozen=True)
class PlotArgs:
    """Plot learning curves (mean ± std over seeds) of one or more runs to an image."""

    run_dirs: tyro.conf.Positional[Tuple[Path, ...]]
    """Run directories (written by purempo train)."""
    out: Path = Path("curves.png")
    """The image to write (.png, .pdf or .svg; refused if it exists, unless --overwrite)."""
    metric: str = "eval_return"
    """Metric of metrics.jsonl to plot."""
    x: Literal["env_steps", "wall_time_s", "eval"] = "env_steps"
    """Horizontal axis."""
    merge: bool = False
    """Pool all runs' seeds into one curve (e.g. runs of one config with different --seed)."""
    title: Optional[str] = None
    """Figure title (default: the runs' env names)."""
    overwrite: bool = False
    """Replace --out if it exists."""


COMMANDS = {"train": TrainArgs, "eval": EvalArgs, "render": RenderArgs, "plot": PlotArgs}


# ----------------------------------------------------------------------------------------------------------
# Run directories and their config.json
# ----------------------------------------------------------------------------------------------------------


def _config_record(config: Config, args: TrainArgs) -> Dict[str, Any]:
    import jax

    return dict(dataclasses.asdict(config), seed=args.seed, num_seeds=args.num_seeds,
                env_steps_per_seed=config.env_steps, jax_version=jax.__version__,
                device=str(jax.devices()[0].device_kind))


def load_run_config(run_dir: Path) -> Tuple[Config, Dict[str, Any]]:
    """(Config, the whole config.json record) of the run in `run_dir`; UsageError if there is none or it is bad."""
    path = Path(run_dir) / "config.json"
    if not Path(run_dir).is_dir():
        raise UsageError(f"no run in {run_dir}: the directory does not exist")
    if not path.is_file():
        raise UsageError(f"no run in {run_dir}: config.json is missing")
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise UsageError(f"cannot read {path}: {error}") from None
    if not isinstance(record, dict):
        raise UsageError(f"cannot read {path}: not a JSON object")
    fields = {}
    for field in dataclasses.fields(Config):
        if field.name not in record:
            raise UsageError(f"{path} lacks the config field {field.name!r}; it was not written by this purempo")
        value = record[field.name]
        fields[field.name] = tuple(value) if isinstance(value, list) else value
    try:
        config = Config(**fields)
    except (TypeError, ValueError) as error:
        raise UsageError(f"{path} does not hold a valid config: {error}") from None
    for name in ("seed", "num_seeds"):
        if not isinstance(record.get(name), int):
            raise UsageError(f"{path} lacks an integer {name!r}")
    return config, record


def _check_writable(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".purempo-write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise UsageError(f"cannot write to {directory}: {error.strerror or error}") from None


def _prepare_new_run_dir(args: TrainArgs) -> Path:
    run_dir = args.run_dir or Path("runs") / f"{args.config.env}-{time.strftime('%Y%m%d-%H%M%S')}"
    held = [name for name in RUN_FILES if (run_dir / name).exists()]
    if held and not args.overwrite:
        raise UsageError(f"run dir {run_dir} already holds a run ({held[0]}); "
                         f"use --resume {run_dir} to continue it, --overwrite to replace it, or another --run-dir")
    _check_writable(run_dir)
    if args.overwrite:
        for name in OWNED_PATHS:
            path = run_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    return run_dir


def _check_resume(args: TrainArgs, stored: Config, record: Dict[str, Any]) -> Path:
    run_dir = args.resume
    if args.overwrite:
        raise UsageError("--resume and --overwrite exclude each other: resume continues a run, overwrite replaces it")
    if args.run_dir is not None and Path(args.run_dir).resolve() != Path(run_dir).resolve():
        raise UsageError(f"--run-dir {args.run_dir} differs from --resume {run_dir}; a resumed run stays in its dir")
    changed = [f"{f.name}={getattr(args.config, f.name)!r} (run has {getattr(stored, f.name)!r})"
               for f in dataclasses.fields(Config) if getattr(args.config, f.name) != getattr(stored, f.name)]
    changed += [f"{name}={getattr(args, name)!r} (run has {record[name]!r})"
                for name in ("seed", "num_seeds") if getattr(args, name) != record[name]]
    if changed:
        raise UsageError(f"cannot resume {run_dir} with a different setup: {', '.join(changed)}; "
                         "a resumed run keeps its config and seeds")
    _check_writable(Path(run_dir))
    return Path(run_dir)


def _kept_metric_rows(path: Path, last_eval: int) -> List[str]:
    """Lines of metrics.jsonl for evaluations <= last_eval (later ones are recomputed; a torn line is dropped)."""
    if not path.exists():
        return []
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("eval"), int) and row["eval"] <= last_eval:
            kept.append(line)
    return kept


def _replace_file(path: Path, text: str) -> None:
    """Writes `text` to `path` atomically (a kill leaves the old or the new file, never a mix)."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


# ----------------------------------------------------------------------------------------------------------
# purempo train
# ----------------------------------------------------------------------------------------------------------


def _metrics_row(metrics: Dict[str, Any], index: int, iterations_per_eval: int, steps_per_iteration: int,
                 wall_time_s: float):
    """One metrics.jsonl row from a chunk's metrics (leaves `[S, I]` per iteration, `[S]` per evaluation).

    Raises UsageError naming the first iteration (1-based, over the whole run) whose learner metrics are not
    finite, and the metrics that are not.
    """
    import numpy as np

    finished = np.sum(metrics["episodes_finished"], axis=1)
    episode_return = np.sum(metrics["episode_return_sum"], axis=1) / np.maximum(finished, 1)
    per_seed = [float(x) for x in metrics["eval_return"]]
    row = dict(
        eval=index + 1,
        env_steps=int(metrics["eval_iteration"][0]) * steps_per_iteration,
        wall_time_s=round(wall_time_s, 3),
        eval_return=float(np.mean(per_seed)),
        eval_return_per_seed=per_seed,
        train_episode_return=float(np.mean(episode_return)),
    )
    learned = np.asarray(metrics["updates"]) > 0  # [S, I]; prefill iterations report NaN learner metrics
    skip = {"env_steps", "updates", "episode_return_sum", "episodes_finished", "eval_return", "eval_env_steps",
            "eval_iteration", "eval_episodes"}
    per_iteration = {name: np.asarray(value) for name, value in metrics.items()
                     if name not in skip and np.shape(value) == learned.shape}
    bad = {name: learned & ~np.isfinite(value) for name, value in per_iteration.items()}
    bad_iterations = [np.flatnonzero(mask.any(axis=0)) for mask in bad.values()]
    if any(indices.size for indices in bad_iterations):
        first = min(int(indices[0]) for indices in bad_iterations if indices.size)
        names = sorted(name for name, mask in bad.items() if mask[:, first].any())
        seeds = sorted({int(s) for mask in bad.values() for s in np.flatnonzero(mask[:, first])})
        raise UsageError(f"training diverged: non-finite {', '.join(names)} at iteration "
                         f"{index * iterations_per_eval + first + 1} (evaluation period {index + 1}, "
                         f"seed {', '.join(map(str, seeds))})")
    if not all(math.isfinite(r) for r in per_seed):
        raise UsageError(f"training diverged: non-finite eval_return at evaluation {index + 1}")
    for name, value in metrics.items():
        if name in skip:
            continue
        value = np.asarray(value)
        if name in per_iteration:
            value = value[learned] if learned.any() else np.full(1, np.nan)
        row[name] = float(np.mean(value))
    return row


class _TensorBoard:
    """Scalars of every metrics row under `purempo/<metric>`, with env steps (per seed) as the global step."""

    def __init__(self, log_dir: Path, purge_after_step: Optional[int]):
        from tensorboardX import SummaryWriter

        # On resume, hide the events of evaluations that are recomputed (those after the checkpoint).
        purge_step = None if purge_after_step is None else purge_after_step + 1
        self._writer = SummaryWriter(str(log_dir), purge_step=purge_step)

    def write(self, row: Dict[str, Any]) -> None:
        step = row["env_steps"]
        for name, value in row.items():
            if name in ("eval", "env_steps"):
                continue
            if isinstance(value, list):
                for seed, seed_value in enumerate(value):
                    self._writer.add_scalar(f"{name}/seed_{seed}", seed_value, step)
            else:
                self._writer.add_scalar(f"purempo/{name}", value, step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def run_training(args: TrainArgs) -> Path:
    """Trains as `args` says (a new run, or `args.resume`); returns the run directory."""
    import jax
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from purempo import checkpoint
    from purempo.train import compile_trainer, make_trainer

    for name, value, least in (("--num-seeds", args.num_seeds, 1), ("--checkpoint-every", args.checkpoint_every, 1),
                               ("--keep-checkpoints", args.keep_checkpoints, 1)):
        if value < least:
            raise UsageError(f"invalid {name}={value}: must be >= {least}")
    config = args.config
    console = Console(stderr=True)
    trainer = make_trainer(config)
    keys = jax.random.split(jax.random.PRNGKey(args.seed), args.num_seeds)

    if args.resume is not None:
        stored, record = load_run_config(args.resume)
        run_dir = _check_resume(args, stored, record)
        abstract = jax.eval_shape(jax.vmap(trainer.init), keys)
        try:  # checks the newest checkpoint against the config and reads all but the replay: cheap
            restored = checkpoint.restore(run_dir, abstract, with_replay=False)
        except checkpoint.CheckpointError as error:
            raise UsageError(f"cannot resume {run_dir}: {error}") from None
        start_eval, elapsed = restored.step, float(restored.meta.get("wall_time_s", 0.0))
        if start_eval >= config.num_evals:
            console.print(f"{run_dir} is complete ({start_eval} of {config.num_evals} evaluations); nothing to do")
            return run_dir
    else:
        run_dir = _prepare_new_run_dir(args)
        (run_dir / "config.json").write_text(json.dumps(_config_record(config, args), indent=2) + "\n")
        start_eval, elapsed = 0, 0.0

    start = time.perf_counter() - elapsed
    console.print(f"[bold]purempo[/] {config.env}: {args.num_seeds} seed(s) × {config.env_steps:,} env steps, "
                  f"{config.num_envs} envs, {config.num_evals} evaluations → {run_dir}"
                  + (f" (resuming after evaluation {start_eval})" if args.resume is not None else ""))
    saver = checkpoint.Saver(run_dir, keep=args.keep_checkpoints, with_replay=args.checkpoint_replay)
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:,.0f}/{task.total:,.0f} steps"),
               TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn())
    tensorboard = None
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("compiling", total=config.env_steps,
                                 completed=start_eval * config.iterations_per_eval * config.steps_per_iteration, info="")
        compiled = compile_trainer(trainer, keys, batched=True)
        if args.resume is None:
            state = compiled.init(keys)
            saver.save(0, state, dict(wall_time_s=time.perf_counter() - start))
        else:
            fresh_replay = None if restored.has_replay else compiled.init(keys).replay
            try:
                state = checkpoint.restore(run_dir, abstract, fresh_replay, step=start_eval).state
            except checkpoint.CheckpointError as error:
                raise UsageError(f"cannot resume {run_dir}: {error}") from None
            if not restored.has_replay:
                console.print("[yellow]the checkpoint holds no replay: refilling it before learning resumes "
                              "(the run will differ from an uninterrupted one)")
        metrics_path = run_dir / "metrics.jsonl"
        kept = _kept_metric_rows(metrics_path, start_eval)
        _replace_file(metrics_path, "".join(line + "\n" for line in kept))
        if args.tensorboard:
            tensorboard = _TensorBoard(run_dir / "tb", purge_after_step=(
                None if args.resume is None else start_eval * config.iterations_per_eval * config.steps_per_iteration))
        last_saved = start_eval
        try:
            with open(metrics_path, "a") as log:
                for index in range(start_eval, config.num_evals):
                    progress.update(task, description="training")
                    state, metrics = compiled.train_chunk(state)
                    state, eval_metrics = compiled.evaluate_state(state)
                    metrics = jax.device_get({**metrics, **eval_metrics})
                    try:
                        row = _metrics_row(metrics, index, config.iterations_per_eval, config.steps_per_iteration,
                                           time.perf_counter() - start)
                    except UsageError as error:
                        raise UsageError(f"{error}; metrics up to evaluation {index} are in {metrics_path}, "
                                         f"newest checkpoint kept: {run_dir / 'checkpoints' / str(last_saved)}") from None
                    log.write(json.dumps(row) + "\n")
                    log.flush()
                    if tensorboard is not None:
                        tensorboard.write(row)
                    if (index + 1) % args.checkpoint_every == 0 or index + 1 == config.num_evals:
                        saver.save(index + 1, state, dict(wall_time_s=time.perf_counter() - start))
                        last_saved = index + 1
                    sps = (row["env_steps"] - start_eval * config.iterations_per_eval * config.steps_per_iteration) \
                        * args.num_seeds / max(time.perf_counter() - start - elapsed, 1e-9)
                    progress.update(task, completed=row["env_steps"], info=f"eval {row['eval_return']:.1f}  SPS {sps:,.0f}")
                    console.print(
                        f"steps {row['env_steps']:>10,}  t {row['wall_time_s']:7.1f}s  eval {row['eval_return']:9.2f}"
                        f"  train {row['train_episode_return']:9.2f}  Q {row['q_mean']:8.2f}  η {row['temperature']:.3g}"
                        f"  KLμ {row['kl_mean']:.2e}  KLσ {row['kl_std']:.2e}  σ {row['policy_std']:.3f}")
        finally:
            if tensorboard is not None:
                tensorboard.close()
    return run_dir


# ----------------------------------------------------------------------------------------------------------
# purempo eval / render / plot
# ----------------------------------------------------------------------------------------------------------


def restore_run(run_dir: Path, step: Optional[int] = None, config_changes: Optional[dict] = None):
    """(config, trainer, record, restored checkpoint without replay) of the run in `run_dir`; `UsageError` (one
    line) when it has no readable checkpoint."""
    import jax

    from purempo import checkpoint
    from purempo.train import make_trainer

    config, record = load_run_config(run_dir)
    config = config.replace(**(config_changes or {}))
    trainer = make_trainer(config)
    keys = jax.random.split(jax.random.PRNGKey(record["seed"]), record["num_seeds"])
    abstract = jax.eval_shape(jax.vmap(trainer.init), keys)
    try:
        restored = checkpoint.restore(run_dir, abstract, step=step, with_replay=False)
    except checkpoint.CheckpointError as error:
        raise UsageError(str(error)) from None
    return config, trainer, record, restored


def run_eval(args: EvalArgs) -> Dict[str, Any]:
    """Prints and returns the returns of `args.episodes` deterministic episodes per seed of the run."""
    import jax
    import numpy as np

    if args.episodes < 1:
        raise UsageError(f"invalid --episodes={args.episodes}: must be >= 1")
    config, trainer, record, restored = restore_run(args.run_dir, args.step, dict(eval_episodes=args.episodes))
    state = restored.state
    keys = jax.random.split(jax.random.PRNGKey(args.seed), record["num_seeds"])
    returns = np.asarray(jax.jit(jax.vmap(trainer.evaluate))(
        state.learner.policy_params, state.obs_stats, keys).returns)  # [S, K]
    env_steps = int(np.asarray(state.iteration).reshape(-1)[0]) * config.steps_per_iteration
    print(f"{config.env}, checkpoint {restored.step} ({env_steps:,} env steps per seed): "
          f"return {returns.mean():.2f} ± {returns.std():.2f} over {returns.size} episodes "
          f"({record['num_seeds']} seed(s) × {args.episodes})")
    if returns.shape[0] > 1:
        for seed, seed_returns in enumerate(returns):
            print(f"  seed {seed}: {seed_returns.mean():.2f} ± {seed_returns.std():.2f}")
    return dict(returns=returns, mean=float(returns.mean()), std=float(returns.std()), step=restored.step)


def _check_output(out: Path, overwrite: bool) -> None:
    if out.exists() and not overwrite:
        raise UsageError(f"{out} already exists; use --overwrite to replace it or choose another --out")
    if out.is_dir():
        raise UsageError(f"{out} is a directory; --out must name a file")
    _check_writable(out.parent)


def run_render(args: RenderArgs) -> Path:
    import jax

    from purempo import rendering

    _check_output(args.out, args.overwrite)
    if args.max_steps is not None and args.max_steps < 1:
        raise UsageError(f"invalid --max-steps={args.max_steps}: must be >= 1")
    if args.height < 1:
        raise UsageError(f"invalid --height={args.height}: must be >= 1")
    config, _, record, restored = restore_run(args.run_dir, args.step)
    if not 0 <= args.run_seed < record["num_seeds"]:
        raise UsageError(f"invalid --run-seed={args.run_seed}: the run has seeds 0..{record['num_seeds'] - 1}")
    pick = lambda tree: jax.tree.map(lambda x: x[args.run_seed], tree)  # noqa: E731
    state = restored.state
    html, episode_return = rendering.render_html(config, pick(state.learner.policy_params), pick(state.obs_stats),
                                                 jax.random.PRNGKey(args.seed), args.height, args.max_steps)
    _replace_file(args.out, html)
    print(f"wrote {args.out}: one episode of {config.env} (checkpoint {restored.step}, seed {args.run_seed}), "
          f"return {episode_return:.2f}")
    return args.out


def run_plot(args: PlotArgs) -> Path:
    from purempo import plotting

    _check_output(args.out, args.overwrite)
    try:
        out = plotting.plot_runs(list(args.run_dirs), args.out, metric=args.metric, x=args.x, merge=args.merge,
                                 title=args.title)
    except plotting.PlotError as error:
        raise UsageError(str(error)) from None
    print(f"wrote {out}")
    return out


# ----------------------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------------------


def _flag_value(argv: List[str], flag: str) -> Optional[str]:
    """The value of `flag` in `argv` (`--flag V` or `--flag=V`; the last one wins, as in argparse)."""
    value = None
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(flag + "="):
            value = arg[len(flag) + 1:]
    return value


def _train_defaults(argv: List[str]) -> TrainArgs:
    """Defaults of `purempo train`: the resumed run's setup, else the preset of `--env` (default env's otherwise)."""
    from purempo import presets

    resume = _flag_value(argv, "--resume")
    if resume is not None:
        config, record = load_run_config(Path(resume))
        return TrainArgs(config=config, seed=record["seed"], num_seeds=record["num_seeds"])
    env = _flag_value(argv, "--env")
    return TrainArgs(config=presets.preset(env if env is not None else Config.env))


def parse_train_args(argv: List[str]) -> TrainArgs:
    """`purempo train`'s arguments; raises ValueError/UsageError for an invalid config, SystemExit for bad flags."""
    return tyro.cli(TrainArgs, args=argv, prog="purempo train", default=_train_defaults(argv),
                    description=TrainArgs.__doc__)


def _usage() -> str:
    lines = ["usage: purempo {train,eval,render,plot} [--help] ...", "",
             "Pure-JAX MPO on Brax and MuJoCo Playground environments.", "", "commands:"]
    for name, cls in COMMANDS.items():
        lines.append(f"  {name:<8}{cls.__doc__.splitlines()[0]}")
    lines += ["", "`purempo COMMAND --help` lists a command's flags."]
    return "\n".join(lines)


def main(argv: Optional[list] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else EXIT_USAGE
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"purempo: error: unknown command {command!r}; choose from {', '.join(COMMANDS)}", file=sys.stderr)
        return EXIT_USAGE
    try:
        # Config validation runs while tyro builds the arguments: its ValueError is a usage error.
        if command == "train":
            args = parse_train_args(rest)
        else:
            args = tyro.cli(COMMANDS[command], args=rest, prog=f"purempo {command}",
                            description=COMMANDS[command].__doc__)
        runner = dict(train=run_training, eval=run_eval, render=run_render, plot=run_plot)[command]
        runner(args)
    except (UsageError, ValueError) as error:
        if os.environ.get("PUREMPO_TRACEBACK"):  # for bug reports: the full traceback instead of one line
            raise
        message = " ".join(str(error).split())  # one line, whatever the source
        print(f"purempo: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("purempo: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
