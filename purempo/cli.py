"""Command line: `purempo train | eval | render | plot`, a thin shell over `purempo.driver`.

`purempo train` runs the driver's loop (`driver.train`: one jitted chunk per evaluation period, metrics,
TensorBoard, checkpoints, divergence stop); `--resume DIR` continues a killed run from its newest checkpoint
and ends bit-identical to an uninterrupted run. `--env NAME` starts from NAME's preset (`purempo.presets`, sized
for the backend: `--scale`); every `Config` field is a flag. Bad input is reported as one `purempo: error:`
line with exit code 2, and nothing already written is changed.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Dict, List, Literal, Optional, Tuple

import tyro

from purempo import driver
from purempo.config import Config
from purempo.driver import RunError as UsageError, load_run_config, restore_run  # noqa: F401  (public names)

EXIT_USAGE = 2


@dataclasses.dataclass(frozen=True)
class TrainArgs:
    """Train MPO on a Brax or MuJoCo Playground env; writes config.json, metrics.jsonl, tb/ and checkpoints/ to the run dir."""

    config: Annotated[Config, tyro.conf.arg(name="")] = Config()
    options: Annotated[driver.Options, tyro.conf.arg(name="")] = driver.Options()
    run_dir: Optional[Path] = None
    """Where the run is written (default: runs/ENV-TIMESTAMP). Must not hold a run unless --overwrite."""
    resume: Optional[Path] = None
    """Continue the run in this directory from its newest checkpoint. Its config.json gives every default; a flag that changes the config, seed, number of seeds or sweep is an error."""
    overwrite: bool = False
    """Delete the run already in --run-dir (config.json, metrics.jsonl, sweep.json, checkpoints/, tb/) and start anew."""
    scale: Literal["auto", "cpu", "gpu"] = "auto"
    """Preset sizes: cpu (tens to hundreds of envs), gpu (1,024 envs, batches of 1,024 sequences), auto: gpu on a GPU or TPU backend for an env whose GPU preset has a committed learning curve that holds up (none yet), cpu otherwise (with a note). The other GPU presets are untested."""
    compile_cache: bool = True
    """Keep the run's compiled programs in JAX's persistent compilation cache ($XDG_CACHE_HOME/purempo/xla, or $JAX_COMPILATION_CACHE_DIR), so that a second run of the same setup skips XLA's compilation."""
    coordinator: Optional[str] = None
    """Multi-host: HOST:PORT of process 0; every host runs the same command with its --process-id, and the devices of all of them form one mesh (jax.distributed.initialize)."""
    num_processes: int = 1
    """Multi-host: the number of processes (one per host)."""
    process_id: int = 0
    """Multi-host: this process's index, 0..num_processes-1 (process 0 writes the run's files)."""


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


def run_training(args: TrainArgs) -> Path:
    """Trains as `args` says (a new run, or `args.resume`); returns the run directory."""
    if args.compile_cache:
        driver.enable_compile_cache()
    if args.resume is not None and args.run_dir is not None and Path(args.run_dir).resolve() != args.resume.resolve():
        raise UsageError(f"--run-dir {args.run_dir} differs from --resume {args.resume}; a resumed run stays in its dir")
    progress = driver.ConsoleProgress()
    try:
        return driver.train(args.config, args.resume or args.run_dir, args.options, resume=args.resume is not None,
                            callbacks=progress, overwrite=args.overwrite)
    finally:
        progress.bar.stop()


def run_eval(args: EvalArgs) -> Dict[str, Any]:
    """Prints and returns the returns of `args.episodes` deterministic episodes per seed of the run."""
    if args.episodes < 1:
        raise UsageError(f"invalid --episodes={args.episodes}: must be >= 1")
    result = driver.evaluate_run(args.run_dir, args.episodes, args.seed, args.step)
    returns = result["returns"]  # [S, K]
    print(f"{result['env']}, checkpoint {result['step']} ({result['env_steps']:,} env steps per seed): "
          f"return {returns.mean():.2f} ± {returns.std():.2f} over {returns.size} episodes "
          f"({returns.shape[0]} seed(s) × {args.episodes})")
    if returns.shape[0] > 1:
        for seed, seed_returns in enumerate(returns):
            print(f"  seed {seed}: {seed_returns.mean():.2f} ± {seed_returns.std():.2f}")
    return result


def run_render(args: RenderArgs) -> Path:
    driver.check_output(args.out, args.overwrite)
    html, text = driver.render_run(args.run_dir, args.run_seed, args.seed, args.height, args.max_steps, args.step)
    driver.replace_file(args.out, html)
    print(f"wrote {args.out}: {text}")
    return args.out


def run_plot(args: PlotArgs) -> Path:
    from purempo import plotting

    driver.check_output(args.out, args.overwrite)
    try:
        out = plotting.plot_runs(list(args.run_dirs), args.out, metric=args.metric, x=args.x, merge=args.merge,
                                 title=args.title)
    except plotting.PlotError as error:
        raise UsageError(str(error)) from None
    print(f"wrote {out}")
    return out


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
    """Defaults of `purempo train`: the resumed run's setup, else the preset of `--env` (default env's otherwise)
    at `--scale` (auto: gpu on a GPU or TPU backend)."""
    from purempo import presets

    resume = _flag_value(argv, "--resume")
    if resume is not None:
        config, record = load_run_config(Path(resume))
        return TrainArgs(config=config, options=driver.Options(
            seed=record["seed"], num_seeds=record["num_seeds"], sweep=tuple(record.get("sweep", ()))))
    env = _flag_value(argv, "--env") or Config.env
    scale = _flag_value(argv, "--scale") or "auto"
    if scale not in ("auto", "cpu", "gpu"):
        raise UsageError(f"invalid --scale={scale!r}: must be auto, cpu or gpu")
    scale, note = presets.resolve_scale(env, scale)
    if note and not {"-h", "--help"} & set(argv):
        print(f"purempo: note: {note}", file=sys.stderr)
    return TrainArgs(config=presets.preset(env, scale=scale))


def parse_train_args(argv: List[str]) -> TrainArgs:
    """`purempo train`'s arguments; raises ValueError/UsageError for an invalid config, SystemExit for bad flags."""
    return tyro.cli(TrainArgs, args=argv, prog="purempo train", default=_train_defaults(argv),
                    description=TrainArgs.__doc__)


def _join_processes(argv: List[str]) -> None:
    """Joins a multi-host run (`--num-processes N > 1`) before anything starts JAX's back end."""
    num = int(_flag_value(argv, "--num-processes") or 1)
    if num > 1:
        driver.join_processes(_flag_value(argv, "--coordinator"), num, int(_flag_value(argv, "--process-id") or 0))


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
            _join_processes(rest)  # before anything starts JAX's back end
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
