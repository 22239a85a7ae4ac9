"""The run loop shared by the CLI, the benchmarks and the notebook: `train(config, run_dir, options)`.

A run directory holds `config.json`, `metrics.jsonl` (one row per evaluation), `tb/` (TensorBoard) and
`checkpoints/` (orbax, `purempo.checkpoint`). `train` compiles the trainer's chunks once (`lower_programs`),
runs them one evaluation period at a time (the same numerics as `make_train`'s fused scan), writes a row and a
checkpoint after each, and stops with a `RunError` naming the first non-finite metric. `resume=True`
continues the run in `run_dir` from its newest checkpoint and ends bit-identical to an uninterrupted run
(with the replay checkpointed, on the same devices).

- Seeds (`Options.num_seeds`) and a hyper-parameter grid (`Options.sweep`, any `HParams` field) run as one
  vmapped program: members × seeds runs. A sweep writes `sweep.json` and one complete run directory per
  member (`RUN_DIR/critic_lr=0.001`), which `purempo eval`, `render` and `plot` read like any other run.
- Devices (`Options.num_devices`, default all): envs, replay and batches split over a mesh
  (`purempo.sharding`); with several processes (`jax.distributed.initialize`) the mesh spans every host and
  only process 0 writes the run's files.
- `Callbacks` receive progress (the CLI draws a progress bar with them); `enable_compile_cache` turns on
  JAX's persistent compilation cache so that a second run of the same config skips XLA compilation.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Literal, NamedTuple, Optional, Sequence, Tuple

from purempo.config import Config, HParams

RUN_FILES = ("config.json", "metrics.jsonl", "sweep.json")  # a directory holding any of them holds a run
OWNED_PATHS = ("config.json", "metrics.jsonl", "sweep.json", "checkpoints", "tb")  # what overwrite removes
REPLAY_CHECKPOINT_AUTO_BYTES = 1 << 30
"""`checkpoint_replay="auto"` includes the replay in checkpoints while it is at most this big (all runs
together): a GPU-sized replay is gigabytes per evaluation otherwise."""


COMPILE_CACHE_MAX_BYTES = 2 << 30
"""What `enable_compile_cache` lets JAX's persistent cache hold in a directory of purempo's own (its least
recently used entries go first)."""


class RunError(Exception):
    """A problem with the user's input or run, reported as one line (the CLI exits with code 2)."""


@dataclasses.dataclass(frozen=True)
class Options:
    """How a run is executed and recorded (the `Config` says what is trained)."""

    seed: int = 0
    """Base seed; seed i of --num-seeds uses jax.random.split(PRNGKey(seed), num_seeds)[i]."""
    num_seeds: int = 1
    """Independent seeds trained in parallel with jax.vmap (per sweep member)."""
    num_devices: Optional[int] = None
    """Devices the envs, replay and batches are split over (default: all that JAX sees, over every process); num_envs, batch_size, eval_episodes and reset_pool_size must be multiples of it."""
    sweep: Tuple[str, ...] = ()
    """Hyper-parameter grid, NAME=V1,V2,... for any float hyper-parameter (e.g. critic_lr=3e-4,1e-3); several give their product. Every member × seed runs in one vmapped program; each member gets a run directory of its own inside the run dir."""
    checkpoint_every: int = 1
    """Save a checkpoint every this many evaluation periods (the initial state and the end are always saved)."""
    keep_checkpoints: int = 3
    """Checkpoints kept on disk (the newest)."""
    checkpoint_replay: Literal["auto", "always", "never"] = "auto"
    """Include the replay buffer in checkpoints: auto does while it is at most 1 GiB (all runs together). Without it checkpoints are small, but a resumed run first refills its replay with the current policy, so it is no longer identical to an uninterrupted one."""
    tensorboard: bool = True
    """Also write metrics as TensorBoard events to RUN_DIR/tb."""

    def check(self) -> None:
        for name, least in (("num_seeds", 1), ("checkpoint_every", 1), ("keep_checkpoints", 1)):
            if getattr(self, name) < least:
                raise RunError(f"invalid --{name.replace('_', '-')}={getattr(self, name)}: must be >= {least}")
        if self.num_devices is not None and self.num_devices < 1:
            raise RunError(f"invalid --num-devices={self.num_devices}: must be >= 1")


class Callbacks:
    """Progress of a run; every method is optional (the defaults do nothing). In order: `started` (before
    anything is compiled), `compiling`, `compiled`, `training`, then `progress` within and `evaluated` after
    each evaluation period."""

    def started(self, description: str) -> None: ...

    def compiling(self, setup: str) -> None:
        """Compilation begins; `setup` names what is compiled (env, envs, runs, devices), the same string for the
        same programs."""

    def compiled(self, seconds: float) -> None: ...

    def training(self, total_steps: int, done_steps: int) -> None:
        """Training begins (or resumes) with `done_steps` of `total_steps` env steps per run done."""

    def progress(self, env_steps: int) -> None:
        """Env steps per run done so far, several times per evaluation period (`progress_iterations`)."""

    def message(self, text: str) -> None: ...

    def evaluated(self, row: Dict[str, Any], steps_per_second: float) -> None: ...

    def chunk(self, index: int, metrics: Dict[str, Any], state: List[Any], seconds: Dict[str, float]) -> None:
        """After evaluation `index` (0-based), before its rows are written, for drivers that need more than a
        row (the benchmarks): the chunk's metrics as numpy arrays over all R = members × seeds runs (`[R, I]`
        per iteration, `[R]` per evaluation, `eval_episodes` a dict of `[R, 2·eval_episodes, ...]` arrays:
        mean-action episodes first), the `TrainState` of all runs on the devices (the next chunk donates it,
        so read it here) and the seconds that `train` and `evaluate` ran."""

    def stop(self, row: Dict[str, Any]) -> bool:
        """True ends the run after this evaluation (e.g. a wall-time budget), with a checkpoint of it, so that
        `resume` can continue it later."""
        return False


class Interrupted(RunError):
    """The user interrupted the run (Ctrl-C); the message says what was kept and how to continue."""


class _Interrupts:
    """SIGINT while `handle_interrupts` is active: the first stops the run at once (KeyboardInterrupt), unless a
    checkpoint or metrics row is being written, in which case the run stops right after it; a second quits the
    process at once (exit code 130). A KeyboardInterrupt that Python drops (raised inside a garbage-collection
    callback, say) is raised again at the next `check_interrupt`."""

    def __init__(self, notify: Callable[[str], None]):
        self.notify, self.count, self.depth, self.requested = notify, 0, 0, False

    def handle(self, signum, frame) -> None:
        self.count += 1
        if self.count > 1:
            self.notify("quitting now")
            os._exit(130)
        self.requested = True
        if self.depth:
            self.notify("interrupted: finishing the checkpoint being written (Ctrl-C again to quit now)")
            return
        raise KeyboardInterrupt


_interrupts: Optional[_Interrupts] = None


def check_interrupt() -> None:
    """Raises KeyboardInterrupt if Ctrl-C was pressed (`handle_interrupts`) outside a write."""
    if _interrupts is not None and _interrupts.requested and not _interrupts.depth:
        raise KeyboardInterrupt


class handle_interrupts:
    """Context manager (main thread): Ctrl-C is handled as `_Interrupts` says while it is active; `notify`
    prints one line."""

    def __init__(self, notify: Callable[[str], None]):
        self.interrupts = _Interrupts(notify)

    def __enter__(self):
        import signal
        import sys

        global _interrupts
        self.previous = signal.signal(signal.SIGINT, self.interrupts.handle)
        self.previous_hook = sys.unraisablehook
        previous_hook = self.previous_hook

        def unraisable(info):  # a Ctrl-C that landed in a callback Python cannot raise from is raised later
            if not issubclass(info.exc_type, KeyboardInterrupt):
                previous_hook(info)

        sys.unraisablehook = unraisable
        _interrupts = self.interrupts
        return self.interrupts

    def __exit__(self, *exc):
        import signal
        import sys

        global _interrupts
        signal.signal(signal.SIGINT, self.previous)
        sys.unraisablehook = self.previous_hook
        _interrupts = None
        return False


class _writing:
    """A checkpoint or metrics write that Ctrl-C does not cut (`handle_interrupts`): the interrupt takes effect
    after it."""

    def __enter__(self):
        if _interrupts is not None:
            _interrupts.depth += 1

    def __exit__(self, *exc):
        if _interrupts is not None:
            _interrupts.depth -= 1
            if exc[0] is None:
                check_interrupt()
        return False


def wait(tree) -> None:
    """Waits for every array of `tree`, polling, so that Ctrl-C is handled at once rather than when the
    computation ends (a blocked `block_until_ready` runs Python's signal handlers only after it returns)."""
    import jax

    for leaf in jax.tree.leaves(tree):
        delay = 1e-4  # doubling up to 10 ms: a call of a few milliseconds is not left idle behind a long sleep
        while hasattr(leaf, "is_ready") and not leaf.is_ready():
            time.sleep(delay)
            delay = min(2 * delay, 0.01)
            check_interrupt()
    check_interrupt()


# ----------------------------------------------------------------------------------------------------------
# Sweeps: a grid of hyper-parameter values, one member run directory each
# ----------------------------------------------------------------------------------------------------------


class Member(NamedTuple):
    name: str  # "critic_lr=0.001,epsilon=0.1"; "" for a run without a sweep
    config: Config
    run_dir: Path


def parse_sweep(specs: Sequence[str]) -> List[Tuple[str, Tuple[float, ...]]]:
    """`["critic_lr=3e-4,1e-3"]` → `[("critic_lr", (3e-4, 1e-3))]`; RunError (one line) for bad input."""
    grid, seen = [], set()
    for spec in specs:
        name, sep, values = spec.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in HParams._fields:
            raise RunError(f"invalid --sweep {spec!r}: must be NAME=V1,V2,... with NAME one of {', '.join(HParams._fields)}")
        if name in seen:
            raise RunError(f"invalid --sweep {spec!r}: {name} is swept twice")
        try:
            numbers = tuple(float(v) for v in values.split(","))
        except ValueError:
            raise RunError(f"invalid --sweep {spec!r}: the values must be numbers separated by commas") from None
        if len(set(numbers)) != len(numbers):
            raise RunError(f"invalid --sweep {spec!r}: a value is repeated")
        seen.add(name)
        grid.append((name, numbers))
    return grid


def sweep_members(config: Config, run_dir: Path, sweep: Sequence[str]) -> List[Member]:
    """One member per point of the grid (its config validated), or the run itself without a sweep."""
    grid = parse_sweep(sweep)
    if not grid:
        return [Member("", config, Path(run_dir))]
    from purempo import envs
    from purempo.config import CONTINUOUS_ONLY_HPARAMS, DISCRETE_ONLY_HPARAMS

    discrete = config.env in envs.gymnax_names()
    for name, _ in grid:  # members that would all compute the same run
        unread = DISCRETE_ONLY_HPARAMS if not discrete else CONTINUOUS_ONLY_HPARAMS
        if name in unread:
            kind = "discrete" if discrete else "continuous"
            raise RunError(f"invalid --sweep {name}: {config.env} has {kind} actions, whose learner does not read it")
    members = []
    for point in itertools.product(*(values for _, values in grid)):
        changes = {name: value for (name, _), value in zip(grid, point)}
        name = ",".join(f"{key}={value:g}" for key, value in changes.items())
        try:
            members.append(Member(name, config.replace(**changes), Path(run_dir) / name))
        except ValueError as error:
            raise RunError(f"invalid --sweep member {name}: {error}") from None
    return members


def sweep_member_dirs(run_dir: Path) -> Optional[List[Path]]:
    """The member directories of a sweep run directory (its `sweep.json`), or None if it is no sweep."""
    path = Path(run_dir) / "sweep.json"
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        return [Path(run_dir) / name for name in record["members"]]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise RunError(f"cannot read {path}: {error}") from None


# ----------------------------------------------------------------------------------------------------------
# Run directories and their config.json
# ----------------------------------------------------------------------------------------------------------


def config_record(config: Config, options: Options, **extra) -> Dict[str, Any]:
    """config.json: the config, the seeds, the time limit the run uses (`episode_length`, or the env's own
    when it is None) and the versions."""
    import jax

    from purempo import envs

    return dict(dataclasses.asdict(config), seed=options.seed, num_seeds=options.num_seeds,
                time_limit=envs.time_limit(config), env_steps_per_seed=config.env_steps, jax_version=jax.__version__,
                device=str(jax.devices()[0].device_kind), **extra)


def load_run_config(run_dir: Path) -> Tuple[Config, Dict[str, Any]]:
    """(Config, the whole record) of the run in `run_dir` (its `sweep.json` for a sweep, whose config is the
    grid's base); RunError if there is none or it is bad."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"no run in {run_dir}: the directory does not exist")
    path = run_dir / ("sweep.json" if (run_dir / "sweep.json").is_file() else "config.json")
    if not path.is_file():
        raise RunError(f"no run in {run_dir}: config.json is missing")
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise RunError(f"cannot read {path}: {error}") from None
    if not isinstance(record, dict):
        raise RunError(f"cannot read {path}: not a JSON object")
    fields = {}
    for field in dataclasses.fields(Config):
        if field.name not in record:
            raise RunError(f"{path} lacks the config field {field.name!r}; it was not written by this purempo")
        value = record[field.name]
        fields[field.name] = tuple(value) if isinstance(value, list) else value
    try:
        config = Config(**fields)
    except (TypeError, ValueError) as error:
        raise RunError(f"{path} does not hold a valid config: {error}") from None
    for name in ("seed", "num_seeds"):
        if not isinstance(record.get(name), int):
            raise RunError(f"{path} lacks an integer {name!r}")
    return config, record


def check_writable(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".purempo-write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise RunError(f"cannot write to {directory}: {error.strerror or error}") from None


_NO_SPACE = {28: "No space left on device", 27: "File too large", 122: "Disk quota exceeded"}  # errno: strerror


def no_space(error: BaseException) -> Optional[str]:
    """The reason, if `error` (or one it came from) is a write that found no room: a full disk, a file size
    limit or a quota; orbax and tensorstore report these inside their own exceptions, often only as text."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _NO_SPACE:
            return _NO_SPACE[error.errno]
        for reason in _NO_SPACE.values():
            if reason.lower() in str(error).lower():
                return reason
        error = error.__cause__ or error.__context__
    return None


class _disk_errors:
    """Turns a write that found no room into one RunError line: what could not be written, which checkpoint is
    intact and the command that continues the run once there is space."""

    def __init__(self, run_dir: Path, what: str, intact: Optional[int]):
        self.run_dir, self.what, self.intact = run_dir, what, intact

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        reason = None if error is None or isinstance(error, RunError) else no_space(error)
        if reason is None:
            return False
        kept = (f"checkpoint {self.intact} is intact; free some space, then continue with: purempo train --resume "
                f"{self.run_dir}") if self.intact is not None else "no checkpoint was written yet"
        raise RunError(f"cannot write {self.what} in {self.run_dir}: {reason.lower()}; {kept}") from None


def check_output(out: Path, overwrite: bool) -> None:
    """RunError unless `out` can be written as a new file (or replaced, with `overwrite`)."""
    if out.exists() and not overwrite:
        raise RunError(f"{out} already exists; use --overwrite to replace it or choose another --out")
    if out.is_dir():
        raise RunError(f"{out} is a directory; --out must name a file")
    check_writable(out.parent)


def check_new_run_dir(run_dir: Path, overwrite: bool) -> None:
    """RunError if `run_dir` holds a run and `overwrite` is not set, or if it could not be created (a file on
    its path, an ancestor without write permission); creates nothing. Called before the trainer is traced, so a
    bad `--run-dir` is reported at once rather than after seconds of tracing."""
    held = [name for name in RUN_FILES if (Path(run_dir) / name).exists()]
    if held and not overwrite:
        raise RunError(f"run dir {run_dir} already holds a run ({held[0]}); "
                       f"use --resume {run_dir} to continue it, --overwrite to replace it, or another --run-dir")
    existing = Path(run_dir).absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise RunError(f"cannot write to {run_dir}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RunError(f"cannot write to {run_dir}: no write permission in {existing}")


def prepare_new_run_dir(run_dir: Path, overwrite: bool) -> Path:
    """Checks that `run_dir` holds no run (or removes its run's files with `overwrite`) and is writable."""
    run_dir = Path(run_dir)
    check_new_run_dir(run_dir, overwrite)
    check_writable(run_dir)
    if overwrite:
        members = sweep_member_dirs(run_dir) or []
        for directory in [run_dir, *members]:
            for name in OWNED_PATHS:
                path = directory / name
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.exists():
                    path.unlink()
    return run_dir


def extended_config(stored: Config, config: Config) -> Tuple[Config, Optional[str]]:
    """For a run resumed with a larger `--total-steps`: the stored config with as many more evaluation periods
    of the same length as fit (a note saying so), or `config` itself (None) when total_steps is unchanged.

    The periods keep their length, so the run ends as one started with the returned total_steps and num_evals
    would, bit for bit (an evaluation draws from the training key stream, so a different period would change
    the numbers). RunError for a total that does not exceed the run's or a num_evals that contradicts it."""
    if config.total_steps == stored.total_steps:
        return config, None
    period = stored.iterations_per_eval * stored.steps_per_iteration
    num_evals = config.total_steps // period
    if num_evals <= stored.num_evals:
        raise RunError(f"invalid --total-steps={config.total_steps}: a resumed run can only grow; it must be at "
                       f"least {(stored.num_evals + 1) * period} (one more evaluation period of {period} env "
                       f"steps than the run's {stored.env_steps})")
    if config.num_evals not in (stored.num_evals, num_evals):
        raise RunError(f"cannot resume with both --total-steps and --num-evals={config.num_evals}: a longer run "
                       f"keeps its evaluation period ({period} env steps), so --total-steps {config.total_steps} "
                       f"gives {num_evals} evaluations")
    extended = dataclasses.replace(config, total_steps=num_evals * period, num_evals=num_evals)
    rounded = (f"; {config.total_steps:,} is not a whole number of periods, so {extended.total_steps:,}"
               if extended.total_steps != config.total_steps else "")
    return extended, (f"training on to {extended.total_steps:,} env steps: {num_evals} evaluation periods of "
                      f"{period:,} env steps, as a run started with --total-steps {extended.total_steps} "
                      f"--num-evals {num_evals}{rounded}")


def check_resume(run_dir: Path, config: Config, options: Options) -> Tuple[Config, Optional[str]]:
    """RunError unless `config` and `options` are the setup the run in `run_dir` was started with, except for a
    larger total_steps (`extended_config`); returns the config to continue with and a note, if extended."""
    stored, record = load_run_config(run_dir)
    config, note = extended_config(stored, config)
    reference = stored if note is None else dataclasses.replace(stored, total_steps=config.total_steps,
                                                                num_evals=config.num_evals)
    changed = [f"{f.name}={getattr(config, f.name)!r} (run has {getattr(stored, f.name)!r})"
               for f in dataclasses.fields(Config) if getattr(config, f.name) != getattr(reference, f.name)]
    changed += [f"{name}={getattr(options, name)!r} (run has {record[name]!r})"
                for name in ("seed", "num_seeds") if getattr(options, name) != record[name]]
    if list(options.sweep) != list(record.get("sweep", [])):
        changed.append(f"sweep={list(options.sweep)!r} (run has {record.get('sweep', [])!r})")
    if changed:
        raise RunError(f"cannot resume {run_dir} with a different setup: {', '.join(changed)}; "
                       "a resumed run keeps its config and seeds (only a larger --total-steps is allowed)")
    check_writable(Path(run_dir))
    return config, note


def kept_metric_rows(path: Path, last_eval: int) -> List[str]:
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


def replace_file(path: Path, text: str) -> None:
    """Writes `text` to `path` atomically (a kill leaves the old or the new file, never a mix)."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


# ----------------------------------------------------------------------------------------------------------
# Metrics rows and TensorBoard
# ----------------------------------------------------------------------------------------------------------


def metrics_row(metrics: Dict[str, Any], index: int, iterations_per_eval: int, steps_per_iteration: int,
                wall_time_s: float) -> Dict[str, Any]:
    """One metrics.jsonl row from a chunk's metrics (leaves `[S, I]` per iteration, `[S]` per evaluation).

    Raises RunError naming the first iteration (1-based, over the whole run) whose learner metrics are not
    finite, and the metrics that are not.
    """
    import numpy as np

    finished = np.sum(metrics["episodes_finished"], axis=1)  # [S] whole training episodes ended this period
    returns = np.sum(metrics["episode_return_sum"], axis=1)[finished > 0] / finished[finished > 0]
    per_seed = [float(x) for x in metrics["eval_return"]]
    row = dict(
        eval=index + 1,
        env_steps=int(metrics["eval_iteration"][0]) * steps_per_iteration,
        wall_time_s=round(wall_time_s, 3),
        eval_return=float(np.mean(per_seed)),
        eval_return_per_seed=per_seed,
        # Mean return of the training episodes that ended in the period over the seeds that ended one; None
        # (null) when none did, e.g. a DM Control run's first 1,000 steps, or a solved task that never fails.
        train_episode_return=float(np.mean(returns)) if returns.size else None,
        train_episodes=int(np.sum(finished)),
    )
    if "nonfinite_steps" in metrics:  # steps that ended an episode for a NaN/inf observation or reward, prefill too
        row["nonfinite_steps"] = int(np.sum(metrics["nonfinite_steps"]))
    learned = np.asarray(metrics["updates"]) > 0  # [S, I]; prefill iterations report NaN learner metrics
    skip = {"env_steps", "updates", "episode_return_sum", "episodes_finished", "eval_return", "eval_env_steps",
            "eval_iteration", "eval_episodes", "nonfinite_steps"}
    per_iteration = {name: np.asarray(value) for name, value in metrics.items()
                     if name not in skip and np.shape(value) == learned.shape}
    bad = {name: learned & ~np.isfinite(value) for name, value in per_iteration.items()}
    bad_iterations = [np.flatnonzero(mask.any(axis=0)) for mask in bad.values()]
    if any(indices.size for indices in bad_iterations):
        first = min(int(indices[0]) for indices in bad_iterations if indices.size)
        names = sorted(name for name, mask in bad.items() if mask[:, first].any())
        seeds = sorted({int(s) for mask in bad.values() for s in np.flatnonzero(mask[:, first])})
        raise RunError(f"training diverged: non-finite {', '.join(names)} at iteration "
                       f"{index * iterations_per_eval + first + 1} (evaluation period {index + 1}, "
                       f"seed {', '.join(map(str, seeds))})")
    if not all(math.isfinite(r) for r in per_seed):
        raise RunError(f"training diverged: non-finite eval_return at evaluation {index + 1}")
    for name, value in metrics.items():
        if name in skip:
            continue
        value = np.asarray(value)
        if name in per_iteration:
            value = value[learned] if learned.any() else np.full(1, np.nan)
        row[name] = float(_reduce(name, value))
    return row


def _reduce(name: str, values):
    """A metric over seeds and iterations: peaks stay peaks (the largest `*_max`, the smallest `*_min`), the
    rest is averaged."""
    import numpy as np

    return np.max(values) if name.endswith("_max") else np.min(values) if name.endswith("_min") else np.mean(values)


class TensorBoard:
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
            if value is None:  # nothing measured (no training episode ended): no point rather than a 0
                continue
            if isinstance(value, list):
                for seed, seed_value in enumerate(value):
                    self._writer.add_scalar(f"{name}/seed_{seed}", seed_value, step)
            else:
                self._writer.add_scalar(f"purempo/{name}", value, step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


# ----------------------------------------------------------------------------------------------------------
# Compilation cache
# ----------------------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/purempo/xla` (`~/.cache/purempo/xla` without it)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "purempo" / "xla"


def enable_compile_cache(directory: Optional[Path] = None) -> Optional[Path]:
    """Turns on JAX's persistent compilation cache for every program of this process, even quick ones (a
    cached executable is the compiled code itself: same results, bit for bit). `directory` defaults to
    `$JAX_COMPILATION_CACHE_DIR` if set, else `default_cache_dir()`. Returns the directory, or None when it
    cannot be created (the run then compiles as usual).

    A directory of purempo's own (the default, or `directory`) is capped at `COMPILE_CACHE_MAX_BYTES`.
    `$JAX_COMPILATION_CACHE_DIR` is the user's, which other JAX programs may fill uncapped: it is left
    uncapped too, because JAX's eviction reads an access-time file that only capped writers keep, and a
    capped process fails every write (a warning, then no entry) in a directory holding entries without one."""
    import jax

    shared = directory is None and bool(os.environ.get("JAX_COMPILATION_CACHE_DIR"))
    directory = Path(directory or os.environ.get("JAX_COMPILATION_CACHE_DIR") or default_cache_dir())
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    if not shared:  # JAX evicts the least recently used executables beyond this (by default it keeps all)
        jax.config.update("jax_compilation_cache_max_size", COMPILE_CACHE_MAX_BYTES)
    return directory


# ----------------------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------------------


PROGRESS_CALLS = 16
"""An evaluation period runs as at least this many calls of one compiled program where its iterations allow
(`progress_iterations`), so that progress can be shown between them; the numbers are those of one call."""


def progress_iterations(iterations_per_eval: int, calls: int = PROGRESS_CALLS) -> int:
    """Iterations per compiled call: the largest divisor of `iterations_per_eval` that gives at least `calls`
    calls per evaluation period (1 if it has fewer iterations)."""
    return max(d for d in range(1, iterations_per_eval + 1)
               if iterations_per_eval % d == 0 and (iterations_per_eval // d >= calls or d == 1))


class Programs(NamedTuple):
    """A batch of runs' compiled programs, over the `TrainState` of all runs (a leading runs axis)."""

    init: Callable  # keys [R, 2] -> TrainState
    # (TrainState, progress=None) -> (TrainState, per-iteration metrics [R, I] of an evaluation period) in calls
    # of `Lowered.iterations` iterations, each donating its input; progress(i) is called after each with the iterations
    # done so far in the period.
    train_chunk: Callable
    evaluate_state: Callable  # TrainState -> (TrainState, evaluation metrics [R]); donates its input
    state_shape: Any  # the TrainState's jax.ShapeDtypeStructs, with their shardings on a mesh


class Lowered(NamedTuple):
    """The three programs traced and lowered: enough to check a checkpoint against the state before compiling."""

    programs: Tuple[Any, Any, Any]  # jax.stages.Lowered of init, train (`iterations` per call), evaluate_state
    state_shape: Any
    hparams: Any
    iterations: int
    calls: int  # training calls per evaluation period

    def compile(self) -> Programs:
        """Compiles the three at once on threads (XLA releases the GIL while compiling); JAX's persistent cache
        (`enable_compile_cache`) serves the executables of a setup compiled before."""
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(len(self.programs))
        try:
            futures = [pool.submit(program.compile) for program in self.programs]
            while not all(future.done() for future in futures):  # polled, so that Ctrl-C stops it at once
                time.sleep(0.02)
                check_interrupt()
            init, train, evaluate_state = [future.result() for future in futures]
        finally:  # an interrupt does not wait for the compilations in flight
            pool.shutdown(wait=False)
        hparams, iterations, calls = self.hparams, self.iterations, self.calls

        def train_chunk(state, progress: Optional[Callable[[int], None]] = None):
            import jax
            import numpy as np

            parts = []
            for call in range(calls):  # the next call is queued before waiting for the one before it
                state, metrics = train(state, hparams)
                parts.append(metrics)
                if progress is not None and call > 0:
                    wait(parts[-2])
                    progress(call * iterations)
            if progress is not None:
                wait(parts[-1])
                progress(calls * iterations)
            if calls == 1:
                return state, parts[0]
            return state, jax.tree.map(lambda *xs: np.concatenate(xs, axis=1), *jax.device_get(parts))

        return Programs(lambda keys: init(keys, hparams), train_chunk, evaluate_state, self.state_shape)


def lower_programs(config: Config, keys, hparams=None, num_devices: int = 1, mesh=None) -> Lowered:
    """`jax.jit` of the trainer's `init`, `train_chunk` (`progress_iterations` iterations per call) and
    `evaluate_state` for runs `keys` (`[R, 2]`), vmapped over them, with `hparams` shared (None: the config's) or
    per run (leaves `[R]`), split over `mesh` when `num_devices` > 1; the chunks donate their state. Raises
    ValueError for a config the trainer refuses."""
    import jax

    from purempo import sharding
    from purempo.train import distribute, make_trainer

    trainer = make_trainer(config, num_devices)
    mesh = mesh if num_devices > 1 else None
    hp_axis = None if hparams is None or jax.numpy.ndim(jax.tree.leaves(hparams)[0]) == 0 else 0
    iterations = progress_iterations(config.iterations_per_eval)
    init, train_chunk, evaluate_state, specs = distribute(trainer, mesh, True, hp_axis, iterations)
    state_sharding = None if specs is None else sharding.named(mesh, specs, True)
    shape = jax.eval_shape(init, keys, hparams)
    if state_sharding is not None:
        shape = jax.tree.map(lambda s, where: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=where),
                             shape, state_sharding)
    programs = (jax.jit(init, out_shardings=state_sharding).lower(keys, hparams),
                jax.jit(train_chunk, donate_argnums=0).lower(shape, hparams),
                jax.jit(evaluate_state, donate_argnums=0).lower(shape))
    return Lowered(programs, shape, hparams, iterations, config.iterations_per_eval // iterations)


def _stack(trees):
    import jax
    import jax.numpy as jnp

    return jax.tree.map(lambda *xs: jnp.concatenate(xs), *trees) if len(trees) > 1 else trees[0]


def _member_slice(tree, index: int, num_seeds: int, num_members: int):
    import jax

    if num_members == 1:
        return tree
    return jax.tree.map(lambda x: x[index * num_seeds:(index + 1) * num_seeds], tree)


def _nbytes(tree) -> int:
    import jax
    import numpy as np

    return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def restore_run(run_dir: Path, step: Optional[int] = None, config_changes: Optional[dict] = None):
    """(config, trainer, record, restored checkpoint without replay) of the run in `run_dir` (one device);
    `RunError` (one line) when it has no readable checkpoint (a sweep's runs are its member directories)."""
    import jax

    from purempo import checkpoint
    from purempo.train import make_trainer

    if sweep_member_dirs(run_dir) is not None:
        raise RunError(f"{run_dir} is a sweep: name one of its member directories "
                       f"({', '.join(p.name for p in sweep_member_dirs(run_dir))})")
    config, record = load_run_config(run_dir)
    config = config.replace(**(config_changes or {}))
    trainer = make_trainer(config)
    keys = jax.random.split(jax.random.PRNGKey(record["seed"]), record["num_seeds"])
    abstract = jax.eval_shape(jax.vmap(trainer.init), keys)
    try:
        restored = checkpoint.restore(run_dir, abstract, step=step, with_replay=False)
    except checkpoint.CheckpointError as error:
        raise RunError(str(error)) from None
    return config, trainer, record, restored


def evaluate_run(run_dir: Path, episodes: int, seed: int = 0, step: Optional[int] = None) -> Dict[str, Any]:
    """Returns `[num_seeds, episodes]` of the mean action of every seed of the run's checkpoint `step` (default:
    the newest), from starts drawn with `seed`; with the checkpoint's step and env steps."""
    import jax
    import numpy as np

    config, trainer, record, restored = restore_run(run_dir, step, dict(eval_episodes=episodes))
    state = restored.state
    keys = jax.random.split(jax.random.PRNGKey(seed), record["num_seeds"])
    returns = np.asarray(jax.jit(jax.vmap(trainer.evaluate))(state.learner.policy_params, state.obs_stats, keys).returns)
    env_steps = int(np.asarray(state.iteration).reshape(-1)[0]) * config.steps_per_iteration
    return dict(returns=returns, mean=float(returns.mean()), std=float(returns.std()), step=restored.step,
                env=config.env, env_steps=env_steps)


def render_run(run_dir: Path, run_seed: int, seed: int, height: int, max_steps: Optional[int],
               step: Optional[int] = None, out: Optional[Path] = None, overwrite: bool = False) -> Tuple[Path, str]:
    """Writes one episode of seed `run_seed`'s policy in the run to `out` (default: `policy.html`, or `policy.gif`
    for a gymnax env): Brax's HTML viewer, or for a gymnax env an animated GIF (`.gif`) or a PNG strip of every
    10th frame (`.png`). Returns (the file, a one-line summary)."""
    import jax

    from purempo import envs, frames, rendering

    for flag, value in (("--max-steps", max_steps), ("--height", height)):
        if value is not None and value < 1:
            raise RunError(f"invalid {flag}={value}: must be >= 1")
    config, _, record, restored = restore_run(run_dir, step)
    if not 0 <= run_seed < record["num_seeds"]:
        raise RunError(f"invalid --run-seed={run_seed}: the run has seeds 0..{record['num_seeds'] - 1}")
    pictures = envs.family(config.env) == envs.GYMNAX
    out = Path("policy.gif" if pictures else "policy.html") if out is None else Path(out)
    allowed = (".gif", ".png") if pictures else (".html",)
    if out.suffix.lower() not in allowed:
        raise RunError(f"invalid --out {out}: an episode of {config.env} is written as {' or '.join(allowed)}")
    check_output(out, overwrite)
    pick = lambda tree: jax.tree.map(lambda x: x[run_seed], tree)  # noqa: E731
    state, key = restored.state, jax.random.PRNGKey(seed)
    policy_params, obs_stats = pick(state.learner.policy_params), pick(state.obs_stats)
    if pictures:
        images, episode_return = rendering.episode_frames(config, policy_params, obs_stats, key, max_steps)
        temporary = out.with_name(out.name + ".tmp" + out.suffix)  # a kill leaves the old or the new file
        temporary.unlink(missing_ok=True)
        (frames.save_gif if out.suffix.lower() == ".gif" else frames.save_strip)(images, temporary)
        os.replace(temporary, out)
        shown = f"{len(images) - 1} steps"
    else:
        html, episode_return = rendering.render_html(config, policy_params, obs_stats, key, height, max_steps)
        replace_file(out, html)
        shown = "open it in a browser; its viewer needs internet access to load"
    return out, (f"one episode of {config.env} (checkpoint {restored.step}, seed {run_seed}), "
                 f"return {episode_return:.2f} ({shown})")


def join_processes(coordinator: Optional[str], num_processes: int, process_id: int) -> None:
    """`jax.distributed.initialize` for one process of a multi-host run (CPU hosts talk over gloo); call it
    before anything starts JAX's back end."""
    import jax

    if coordinator is None or not 0 <= process_id < num_processes:
        raise RunError(f"--num-processes {num_processes} needs --coordinator HOST:PORT and --process-id in "
                       f"0..{num_processes - 1}")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)


# ----------------------------------------------------------------------------------------------------------
# Setting a run up: its runs (members × seeds), a new run directory, or the checkpoint it resumes from
# ----------------------------------------------------------------------------------------------------------


class Runs(NamedTuple):
    """Every run of a `train` call: members (a sweep's grid points, or the run itself) × seeds, on devices."""

    members: List[Member]
    num_seeds: int
    keys: Any  # [R, 2], member-major: member m's seeds are rows m·S ... m·S + S − 1
    hparams: Any  # None (the config's), or per run (leaves [R]) for a sweep
    num_devices: int
    mesh: Any

    @property
    def root(self) -> Path:
        """The run directory (a sweep's, holding the members' directories)."""
        first = self.members[0]
        return first.run_dir.parent if first.name else first.run_dir

    def member(self, tree, index: int):
        """Member `index`'s part of a tree over all runs."""
        return _member_slice(tree, index, self.num_seeds, len(self.members))

    def member_shape(self, state_shape):
        """One member's part of the state's shape (its shardings kept)."""
        import jax

        return jax.tree.map(lambda s: jax.ShapeDtypeStruct((s.shape[0] // len(self.members),) + s.shape[1:], s.dtype,
                                                           sharding=getattr(s, "sharding", None)), state_shape)


def plan_runs(config: Config, run_dir: Path, options: Options) -> Runs:
    import jax
    import jax.numpy as jnp

    from purempo import sharding

    members = sweep_members(config, run_dir, options.sweep)
    num_devices = options.num_devices or jax.device_count()
    if num_devices > jax.device_count():  # before any size is checked against the count
        platform = jax.default_backend()
        hint = (f"; for {num_devices} CPU devices start with XLA_FLAGS=--xla_force_host_platform_device_count="
                f"{num_devices}" if platform == "cpu" else "")
        raise RunError(f"invalid --num-devices={num_devices}: JAX sees {jax.device_count()} {platform} "
                       f"device(s){hint}")
    try:
        sharding.check_divisible(config, num_devices)
        mesh = sharding.make_mesh(num_devices)
    except ValueError as error:
        raise RunError(str(error)) from None
    seeds = jax.random.split(jax.random.PRNGKey(options.seed), options.num_seeds)
    hparams = None if not options.sweep else jax.tree.map(
        lambda *values: jnp.repeat(jnp.asarray(values, jnp.float32), options.num_seeds),
        *(member.config.hparams for member in members))
    return Runs(members, options.num_seeds, jnp.tile(seeds, (len(members), 1)), hparams, num_devices, mesh)


def start_new_run(config: Config, runs: Runs, options: Options, writer: bool) -> None:
    """Writes config.json of every member (and a sweep's sweep.json)."""
    if not writer:
        return
    if options.sweep:
        run_dir = runs.members[0].run_dir.parent
        replace_file(run_dir / "sweep.json", json.dumps(config_record(
            config, options, sweep=list(options.sweep), members=[m.name for m in runs.members]), indent=2) + "\n")
    for member in runs.members:
        member.run_dir.mkdir(parents=True, exist_ok=True)
        record = config_record(member.config, options, **({"sweep_member": member.name} if member.name else {}))
        (member.run_dir / "config.json").write_text(json.dumps(record, indent=2) + "\n")


class ResumePoint(NamedTuple):
    step: int  # evaluations completed
    wall_time_s: float  # spent up to it
    has_replay: bool  # every member's checkpoint holds its replay


def resume_point(runs: Runs, state_shape) -> ResumePoint:
    """The newest checkpoint that every member holds, each checked against the run's state (without reading
    the replay)."""
    restored = _restore_members(runs, state_shape, None, with_replay=False)
    return ResumePoint(restored[0].step, float(restored[0].meta.get("wall_time_s", 0.0)),
                       all(r.has_replay for r in restored))


def resumed_state(runs: Runs, programs: Programs, point: ResumePoint, callbacks: Callbacks):
    """The state of every run at checkpoint `point`, on the run's devices; a checkpoint without replay gets a
    fresh one (refilled before learning resumes)."""
    import jax

    fresh = None
    if not point.has_replay:
        fresh = programs.init(runs.keys).replay
        callbacks.message("the checkpoint holds no replay: refilling it before learning resumes "
                          "(the run will differ from an uninterrupted one)")
    state = _stack([r.state for r in _restore_members(runs, programs.state_shape, point.step, True, fresh)])
    return jax.device_put(state, jax.tree.map(lambda s: s.sharding, programs.state_shape)) \
        if runs.num_devices > 1 else state


def _restore_members(runs: Runs, state_shape, step: Optional[int], with_replay: bool, fresh_replay=None):
    """Each member's checkpoint `step` (default: the newest that every member holds)."""
    from purempo import checkpoint

    members = runs.members
    if step is None:
        common = set.intersection(*(set(checkpoint.steps(member.run_dir)) for member in members))
        if not common:
            where = members[0].run_dir.parent if members[0].name else members[0].run_dir
            raise RunError(f"cannot resume {where}: no checkpoint that every member holds")
        step = max(common)
    restored, abstract = [], runs.member_shape(state_shape)
    for index, member in enumerate(members):
        fresh = None if fresh_replay is None else runs.member(fresh_replay, index)
        try:
            restored.append(checkpoint.restore(member.run_dir, abstract, fresh, step=step, with_replay=with_replay))
        except checkpoint.CheckpointError as error:
            raise RunError(f"cannot resume {member.run_dir}: {error}") from None
    return restored


class Records:
    """What a run leaves behind, per member: metrics.jsonl, TensorBoard events and checkpoints."""

    def __init__(self, runs: Runs, config: Config, options: Options, first_eval: int, with_replay: bool, writer: bool):
        from purempo import checkpoint

        self.runs, self.config, self.last_saved, self.saved = runs, config, first_eval, first_eval > 0
        self.savers = [checkpoint.Saver(m.run_dir, keep=options.keep_checkpoints, with_replay=with_replay)
                       for m in runs.members]
        self.logs, self.boards = [], []
        done_steps = first_eval * config.iterations_per_eval * config.steps_per_iteration
        for member in runs.members if writer else []:
            path = member.run_dir / "metrics.jsonl"  # rows after the checkpoint are recomputed
            replace_file(path, "".join(line + "\n" for line in kept_metric_rows(path, first_eval)))
            self.logs.append(open(path, "a"))
            if options.tensorboard:
                self.boards.append(TensorBoard(member.run_dir / "tb", purge_after_step=done_steps if first_eval else None))

    def save(self, step: int, state, wall_time_s: float) -> None:
        """Checkpoint `step` of every member (Ctrl-C takes effect after it; a full disk is a one-line RunError
        naming the checkpoint that is intact)."""
        with _writing(), _disk_errors(self.runs.root, f"checkpoint {step}", self.last_saved if self.saved else None):
            for index, saver in enumerate(self.savers):
                saver.save(step, self.runs.member(state, index), dict(wall_time_s=wall_time_s))
        self.last_saved, self.saved = step, True

    def rows(self, metrics: Dict[str, Any], index: int, wall_time_s: float) -> List[Dict[str, Any]]:
        """One metrics row per member (RunError naming the member and what is kept, if training diverged)."""
        rows = []
        for m, member in enumerate(self.runs.members):
            try:
                rows.append(metrics_row(self.runs.member(metrics, m), index, self.config.iterations_per_eval,
                                        self.config.steps_per_iteration, wall_time_s))
            except RunError as error:
                raise RunError(f"{error}{f' in {member.name}' if member.name else ''}; metrics up to evaluation "
                               f"{index} are in {member.run_dir / 'metrics.jsonl'}, newest checkpoint kept: "
                               f"{member.run_dir / 'checkpoints' / str(self.last_saved)}") from None
        return rows

    def write(self, rows: List[Dict[str, Any]]) -> None:
        with _writing(), _disk_errors(self.runs.root, "metrics.jsonl", self.last_saved if self.saved else None):
            self._write(rows)

    def _write(self, rows: List[Dict[str, Any]]) -> None:
        for log, row in zip(self.logs, rows):
            log.write(json.dumps(row) + "\n")
            log.flush()
        for board, row in zip(self.boards, rows):
            board.write(row)

    def close(self) -> None:
        for handle in [*self.logs, *self.boards]:
            handle.close()


def _host_metrics(metrics, evaluation) -> Dict[str, Any]:
    """A chunk's metrics as numpy arrays, the evaluation's episodes as a dict of them."""
    import jax

    values = jax.device_get({**metrics, **evaluation})
    return dict(values, eval_episodes=values["eval_episodes"]._asdict())


# ----------------------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------------------


class Setup(NamedTuple):
    config: Config  # what is trained (a resumed run's, extended by a larger total_steps)
    runs: Runs
    programs: Programs
    records: Records
    state: Any  # the TrainState of every run, on the devices
    first_eval: int  # evaluations already done (a resumed run's checkpoint)
    start: float  # perf_counter origin of wall_time_s (moved back by a resumed run's time before)


def _description(config: Config, runs: Runs, run_dir: Path) -> str:
    return (f"{config.env}: {len(runs.members)} member(s) × {runs.num_seeds} seed(s) × {config.env_steps:,} env "
            f"steps, {config.num_envs} envs on {runs.num_devices} device(s), {config.num_evals} evaluations → {run_dir}")


def set_up(config: Config, run_dir: Path, options: Options, resume: bool, overwrite: bool,
           callbacks: Callbacks, created: List[Path]) -> Optional[Setup]:
    """Checks the input, compiles the run's programs and gives the state to train from: a new run's (its
    config.json and initial checkpoint written) or the resumed one's newest checkpoint; None when a resumed run
    is already complete. Bad input is reported before anything is traced or written; a new run's directory is
    made only once its programs are compiled (and appended to `created`)."""
    import jax

    options.check()
    writer = jax.process_index() == 0  # with several processes, one writes the run's files
    if resume and overwrite:
        raise RunError("--resume and --overwrite exclude each other: resume continues a run, overwrite replaces it")
    extension = None
    if resume:
        config, extension = check_resume(run_dir, config, options)
    else:
        check_new_run_dir(run_dir, overwrite)
    runs = plan_runs(config, run_dir, options)
    start = time.perf_counter()  # wall_time_s counts compilation, and a resumed run's time before
    setup_name = f"{config.env}, {config.num_envs} envs, {len(runs.keys)} run(s), {runs.num_devices} device(s)"
    if not resume:  # a new run says what it is before the seconds of tracing and compiling
        callbacks.started(_description(config, runs, run_dir))
        callbacks.compiling(setup_name)
    try:
        lowered = lower_programs(config, runs.keys, runs.hparams, runs.num_devices, runs.mesh)
    except ValueError as error:
        raise RunError(" ".join(str(error).split())) from None
    point = ResumePoint(0, 0.0, False)
    if resume:  # the checkpoint is checked against the config before compiling, and before anything is shown
        point = resume_point(runs, lowered.state_shape)
        if point.step >= config.num_evals:
            callbacks.message(f"{run_dir} is complete ({point.step} of {config.num_evals} evaluations); nothing to do")
            return None
        callbacks.started(_description(config, runs, run_dir))
        callbacks.compiling(setup_name)
    programs = lowered.compile()
    from purempo import sharding

    sharding.wait_for_every_process("compiled")  # what follows runs collectives
    callbacks.compiled(time.perf_counter() - start)
    start -= point.wall_time_s
    if resume:
        state = resumed_state(runs, programs, point, callbacks)
        callbacks.message(f"resuming after evaluation {point.step}")
        if extension is not None:
            callbacks.message(extension)
            if writer:
                _record_extension(runs, config)
    else:
        if not Path(run_dir).exists():
            created.append(Path(run_dir))
        with _disk_errors(run_dir, "the run's config.json", None):
            prepare_new_run_dir(run_dir, overwrite)
            start_new_run(config, runs, options, writer)
        state = programs.init(runs.keys)
    with_replay = {"always": True, "never": False}.get(
        options.checkpoint_replay, _nbytes(programs.state_shape.replay) <= REPLAY_CHECKPOINT_AUTO_BYTES)
    records = Records(runs, config, options, point.step, with_replay, writer)
    if not resume:
        records.save(0, state, time.perf_counter() - start)
    return Setup(config, runs, programs, records, state, point.step, start)


def _record_extension(runs: Runs, config: Config) -> None:
    """Every member's config.json (and a sweep's sweep.json) with the extended total_steps and num_evals."""
    paths = [m.run_dir / "config.json" for m in runs.members]
    if runs.members[0].name:
        paths.append(runs.root / "sweep.json")
    for path in paths:
        record = json.loads(path.read_text())
        record.update(total_steps=config.total_steps, num_evals=config.num_evals)
        if "env_steps_per_seed" in record:
            record["env_steps_per_seed"] = config.env_steps
        with _writing():
            replace_file(path, json.dumps(record, indent=2) + "\n")


def _interrupted(run_dir: Path, resume: bool, records: Optional[Records], created: List[Path], num_evals: int):
    """The `Interrupted` error for a run stopped by Ctrl-C; a new run stopped before its first checkpoint leaves
    nothing behind (the directory it made, or its files in one that existed)."""
    saved = records is not None and records.saved
    if not resume and not saved:
        for path in [Path(run_dir) / name for name in OWNED_PATHS]:
            shutil.rmtree(path) if path.is_dir() else path.unlink() if path.exists() else None
        for directory in created:
            if directory.is_dir() and not any(directory.iterdir()):
                directory.rmdir()
        return Interrupted(f"interrupted before the first checkpoint; nothing was kept in {run_dir}")
    step = records.last_saved if records is not None else None
    kept = f"checkpoint {step} of {num_evals} is kept" if step is not None else "its checkpoints are kept"
    return Interrupted(f"interrupted; {kept} in {run_dir}; continue with: purempo train --resume {run_dir}")


def train(config: Config, run_dir: Optional[Path] = None, options: Options = Options(), resume: bool = False,
          callbacks: Optional[Callbacks] = None, overwrite: bool = False) -> Path:
    """Trains `config` as `options` say into `run_dir` (default: runs/ENV-TIMESTAMP), or continues the run there
    (`resume`). Returns the run directory. Raises RunError (one line) for bad input, a run that cannot be
    resumed, or divergence; nothing already written is lost (a diverged run keeps its metrics and checkpoints).
    A KeyboardInterrupt becomes `Interrupted`, saying what was kept and how to continue."""
    callbacks = callbacks or Callbacks()
    run_dir = Path(run_dir or Path("runs") / f"{config.env}-{time.strftime('%Y%m%d-%H%M%S')}")
    created: List[Path] = []
    setup = None
    try:
        setup = set_up(config, run_dir, options, resume, overwrite, callbacks, created)
        if setup is not None:
            _train_loop(options, setup, callbacks)
    except KeyboardInterrupt:
        raise _interrupted(run_dir, resume, None if setup is None else setup.records, created,
                           (config if setup is None else setup.config).num_evals) from None
    finally:
        if setup is not None:
            setup.records.close()
    return run_dir


def _train_loop(options: Options, setup: Setup, callbacks: Callbacks) -> None:
    config, runs, programs, records, state, first_eval, start = setup
    steps_per_iteration = config.steps_per_iteration
    done_steps = first_eval * config.iterations_per_eval * steps_per_iteration
    callbacks.training(config.env_steps, done_steps)
    began = time.perf_counter()
    for index in range(first_eval, config.num_evals):
        tick = time.perf_counter()
        period_start = index * config.iterations_per_eval
        state, metrics = programs.train_chunk(
            state, lambda iterations: callbacks.progress((period_start + iterations) * steps_per_iteration))
        wait(state)
        trained = time.perf_counter()
        state, evaluation = programs.evaluate_state(state)
        wait(evaluation)
        metrics = _host_metrics(metrics, evaluation)
        callbacks.chunk(index, metrics, state, dict(train=trained - tick, evaluate=time.perf_counter() - trained))
        rows = records.rows(metrics, index, time.perf_counter() - start)
        records.write(rows)
        stop = any([callbacks.stop(dict(row, member=m.name)) for m, row in zip(runs.members, rows)])
        if stop or index + 1 == config.num_evals or (index + 1) % options.checkpoint_every == 0:
            records.save(index + 1, state, time.perf_counter() - start)
        steps_per_second = (rows[0]["env_steps"] - done_steps) * len(runs.keys) / (time.perf_counter() - began)
        for member, row in zip(runs.members, rows):
            callbacks.evaluated(dict(row, member=member.name), steps_per_second)
        if stop:
            break
