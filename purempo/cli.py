"""Command line: `purempo train | eval | render | plot`, a thin shell over `purempo.driver`.

`purempo train` runs the driver's loop (`driver.train`: one jitted chunk per evaluation period, metrics,
TensorBoard, checkpoints, divergence stop); `--resume DIR` continues a killed run from its newest checkpoint
and ends bit-identical to an uninterrupted run. `--env NAME` starts from NAME's preset (`purempo.presets`, sized
for the backend: `--scale`); every `Config` field is a flag. Bad input is reported as one `purempo: error:`
line with exit code 2, and nothing already written is changed.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Dict, List, Literal, Optional, Tuple

import tyro

from purempo import driver
from purempo.config import Config
from purempo.driver import RunError as UsageError, load_run_config, restore_run  # noqa: F401  (public names)

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


@dataclasses.dataclass(frozen=True)
class TrainArgs:
    """Train MPO on a Brax, MuJoCo Playground or gymnax env; writes config.json, metrics.jsonl, tb/ and checkpoints/ to the run dir."""

    config: Annotated[Config, tyro.conf.arg(name="")] = Config()
    options: Annotated[driver.Options, tyro.conf.arg(name="")] = driver.Options()
    run_dir: Optional[Path] = None
    """Where the run is written (default: runs/ENV-TIMESTAMP). Must not hold a run unless --overwrite."""
    resume: Optional[Path] = None
    """Continue the run in this directory from its newest checkpoint. Its config.json gives every default; a flag that changes the config, seed, number of seeds or sweep is an error."""
    overwrite: bool = False
    """Delete the run already in --run-dir (config.json, metrics.jsonl, sweep.json, checkpoints/, tb/) and start anew."""
    scale: Literal["auto", "cpu", "gpu"] = "auto"
    """Preset sizes: cpu (tens to hundreds of envs), gpu (1,024 envs, batches of 256 sequences), auto: gpu on a GPU or TPU backend for an env whose GPU preset has a committed learning curve that holds up (none yet), cpu otherwise (with a note). The other GPU presets are untested."""
    verbose: Annotated[bool, tyro.conf.arg(aliases=("-v",))] = False
    """Show what the simulators print natively (MuJoCo's notices while loading a model), quiet by default."""
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
    """Roll out a run's trained policy for one episode and write Brax's HTML viewer of it (a gymnax env: a GIF or a
    PNG strip of its frames)."""

    run_dir: tyro.conf.Positional[Path]
    """The run directory (written by purempo train)."""
    out: Optional[Path] = None
    """The file to write (refused if it exists, unless --overwrite): .html (default policy.html); for a gymnax env .gif (default policy.gif, animated) or .png (every 10th frame in a strip)."""
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


@dataclasses.dataclass(frozen=True)
class EnvsArgs:
    """List the envs of each family and whether they run on this install."""


COMMANDS = {"train": TrainArgs, "eval": EvalArgs, "render": RenderArgs, "plot": PlotArgs, "envs": EnvsArgs}


def run_training(args: TrainArgs) -> Path:
    """Trains as `args` says (a new run, or `args.resume`); returns the run directory."""
    if args.verbose:
        from purempo import envs

        os.environ[envs.VERBOSE_VARIABLE] = "1"
    if args.compile_cache:
        driver.enable_compile_cache()
    if args.resume is not None and args.run_dir is not None and Path(args.run_dir).resolve() != args.resume.resolve():
        raise UsageError(f"--run-dir {args.run_dir} differs from --resume {args.resume}; a resumed run stays in its dir")
    from purempo.console import ConsoleProgress

    progress = ConsoleProgress()
    try:
        with driver.handle_interrupts(lambda text: progress.console.print(f"[yellow]purempo: {text}")):
            return driver.train(args.config, args.resume or args.run_dir, args.options,
                                resume=args.resume is not None, callbacks=progress, overwrite=args.overwrite)
    finally:
        progress.close()


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
    out, text = driver.render_run(args.run_dir, args.run_seed, args.seed, args.height, args.max_steps, args.step,
                                  args.out, args.overwrite)
    print(f"wrote {out}: {text}")
    return out


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


def run_envs(args: EnvsArgs) -> None:
    from purempo import envs

    for family, names, status in envs.catalogue():
        print(f"{family}, {len(names)} envs: {status}")
        print("  " + ", ".join(names))
    print("Names match without case or separators (cheetah_run is CheetahRun); `purempo train --env NAME`.")


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
    env = _flag_value(argv, "--env") or Config.env  # already the canonical name (`_canonical_env`)
    scale = _flag_value(argv, "--scale") or "auto"
    if scale not in ("auto", "cpu", "gpu"):
        raise UsageError(f"invalid --scale={scale!r}: must be auto, cpu or gpu")
    scale, note = presets.resolve_scale(env, scale)
    if note and not {"-h", "--help"} & set(argv):
        print(f"purempo: note: {note}", file=sys.stderr)
    return TrainArgs(config=presets.preset(env, scale=scale))


def _canonical_env(argv: List[str]) -> List[str]:
    """`argv` with `--env NAME` replaced by the env NAME stands for (`envs.resolve_name`: case and separators
    ignored), saying so; UsageError with the closest names for an unknown one."""
    name = _flag_value(argv, "--env")
    if name is None:
        return argv
    from purempo import envs

    canonical = envs.resolve_name(name)
    if canonical == name:
        return argv
    print(f"purempo: note: --env {name} is {canonical}", file=sys.stderr)
    out = []
    for arg in argv:
        out.append(f"--env={canonical}" if arg.startswith("--env=") else canonical if out[-1:] == ["--env"] else arg)
    return out


def _count_flags() -> Dict[str, str]:
    """{flag: field} for `purempo train`'s whole-number settings (`--total-steps`, `--num-seeds`, ...)."""
    import typing

    flags = {}
    for cls in (Config, driver.Options, TrainArgs):
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            if hints[field.name] in (int, Optional[int]):
                flags["--" + field.name.replace("_", "-")] = field.name
    return flags


def _whole_numbers(argv: List[str]) -> List[str]:
    """`argv` with counts written as floats (`--total-steps 1e6`, `2.5e5`, `1000.0`) turned into integers;
    UsageError for a count that is not a whole number."""
    flags, out = _count_flags(), []
    for i, arg in enumerate(argv):
        flag, value = (arg.split("=", 1) + [None])[:2] if arg.startswith("--") and "=" in arg else (None, None)
        if flag is None and i > 0 and argv[i - 1] in flags:
            flag, value = argv[i - 1], arg
        if flag in flags and value is not None and not value.lstrip("-").isdigit():
            try:
                number = float(value)
            except ValueError:
                number = None  # not a number: tyro reports it
            if number is not None:
                if not (math.isfinite(number) and number == int(number)):
                    raise UsageError(f"invalid {flag}={value}: must be a whole number")
                value = str(int(number))
                arg = f"{flag}={value}" if arg.startswith(flag + "=") else value
        out.append(arg)
    return out


def flag_names(message: str) -> str:
    """A config error's field names as the flags that set them (`total_steps` -> `--total-steps`)."""
    import re

    # Names with an underscore only: `env`, `discount` or `tau` are also plain words in the messages.
    fields = sorted((f.name for f in dataclasses.fields(Config) if "_" in f.name), key=len, reverse=True)
    return re.sub(r"(?<![\w-])(" + "|".join(fields) + r")(?![\w])",
                  lambda match: "--" + match.group(1).replace("_", "-"), message)


ESSENTIALS = ("env", "total_steps", "num_seeds", "run_dir", "resume", "scale", "seed")


def _first_sentence(text: str) -> str:
    """A flag's help in one line: its first sentence, and its default."""
    import re

    default = re.search(r"\(default: [^)]*\)\s*$", text)
    body = text[:default.start()] if default else text
    sentence = re.split(r"(?<=[.;])\s", body.strip(), maxsplit=1)[0].rstrip(".;")
    if len(sentence) > 72:
        sentence = sentence[:72].rsplit(" ", 1)[0].rstrip(",(") + "…"
    return f"{sentence} {default.group(0).strip()}" if default else sentence


def train_help(argv: List[str]) -> str:
    """`purempo train --help`: the flags grouped by concern, the essentials first, one line each (tyro's full
    descriptions: `--help-full`)."""
    from purempo.config import CONCERNS

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # get_parser: tyro's only way to its argparse parser
        parser = tyro.extras.get_parser(TrainArgs, default=_train_defaults(argv))
    def field(action) -> str:
        flag = next(f for f in action.option_strings if f.startswith("--") and not f.startswith("--no-"))
        return flag[2:].replace("-", "_")

    actions = {field(a): a for a in parser._actions if a.option_strings and a.dest != "help"}

    def line(name: str) -> str:
        action = actions[name]
        flags = [f for f in action.option_strings if not f.startswith("--no-")]
        negated = any(f.startswith("--no-") for f in action.option_strings)
        shown = ", ".join(("--[no-]" + f[2:]) if negated and f.startswith("--") else f for f in flags)
        if action.metavar and not negated:
            shown += f" {action.metavar}"
        return f"  {shown:<34} {_first_sentence(action.help or '')}"

    groups = [("essentials", ESSENTIALS)]
    groups += [(concern, tuple(f for f in fields if f not in ESSENTIALS)) for concern, fields in CONCERNS.items()]
    options = tuple(f.name for f in dataclasses.fields(driver.Options) if f.name not in ESSENTIALS)
    groups.append(("seeds, sweeps, devices, checkpoints", options))
    groups.append(("this command", ("overwrite", "verbose", "compile_cache")))
    groups.append(("several hosts", ("coordinator", "num_processes", "process_id")))
    listed = {name for _, names in groups for name in names}
    missing = sorted(set(actions) - listed)
    if missing:  # every flag is in a group (tests/test_console.py)
        groups.append(("other", tuple(missing)))
    out = ["usage: purempo train [--env NAME] [--total-steps N] [--num-seeds N] [--run-dir DIR] [FLAGS]", "",
           TrainArgs.__doc__, "Defaults come from the env's preset (purempo.presets); counts take 1e6.", ""]
    for title, names in groups:
        out += [f"{title}:", *(line(name) for name in names if name in actions), ""]
    out.append("`purempo train --help-full` describes every flag in full.")
    return "\n".join(out)


def parse_train_args(argv: List[str]) -> TrainArgs:
    """`purempo train`'s arguments; raises ValueError/UsageError for an invalid config, SystemExit for bad flags."""
    argv = _whole_numbers(_canonical_env(argv))
    if {"-h", "--help"} & set(argv):
        print(train_help(argv))
        raise SystemExit(0)
    argv = ["--help" if arg == "--help-full" else arg for arg in argv]
    return tyro.cli(TrainArgs, args=argv, prog="purempo train", default=_train_defaults(argv),
                    description=TrainArgs.__doc__)


def _join_processes(argv: List[str]) -> None:
    """Joins a multi-host run (`--num-processes N > 1`) before anything starts JAX's back end."""
    num = int(_flag_value(argv, "--num-processes") or 1)
    if num > 1:
        driver.join_processes(_flag_value(argv, "--coordinator"), num, int(_flag_value(argv, "--process-id") or 0))


def _usage() -> str:
    lines = ["usage: purempo {train,eval,render,plot,envs} [--help] [--version] ...", "",
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
    if argv[0] in ("-V", "--version"):
        from purempo import __version__

        print(f"purempo {__version__}")
        return 0
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
        runner = dict(train=run_training, eval=run_eval, render=run_render, plot=run_plot, envs=run_envs)[command]
        runner(args)
    except driver.Interrupted as interrupted:  # a RunError too: caught first
        print(f"purempo: {interrupted}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (UsageError, ValueError) as error:
        if os.environ.get("PUREMPO_TRACEBACK"):  # for bug reports: the full traceback instead of one line
            raise
        message = " ".join(str(error).split())  # one line, whatever the source
        if command == "train":
            message = flag_names(message)
        print(f"purempo: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("purempo: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def entry() -> None:
    """The `purempo` command. After Ctrl-C or an error it exits at once: computations still in flight on the
    devices, and the threads of a failed checkpoint write, are dropped rather than waited for (what the run
    keeps is on disk already)."""
    try:
        code = main()
    except BrokenPipeError:  # `purempo train --help | head`: the reader has gone, which is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        sys.exit(0)
    if code in (EXIT_INTERRUPTED, EXIT_USAGE):  # what the run keeps is on disk: nothing to wait for
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
