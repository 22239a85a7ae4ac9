"""Learning curves from run directories written by `purempo train --run-dir DIR`.

A run directory holds `config.json` (the Config fields plus seed, num_seeds, ...) and `metrics.jsonl` (one JSON
object per evaluation). `load_run` reads one, `curve` pools runs into a mean ± std curve over seeds, and
`plot_runs` draws one or several runs to a PNG/PDF/SVG file with matplotlib, without touching pyplot's backend.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np

__all__ = ["PlotError", "Run", "load_run", "curve", "plot_runs", "X_AXES", "FORMATS"]

PathLike = Union[str, Path]

# Allowed x axes and their axis labels.
X_AXES = {"env_steps": "env steps", "wall_time_s": "wall time (s)", "eval": "evaluation"}
# Output formats plot_runs writes (by file suffix).
FORMATS = (".png", ".pdf", ".svg")

FIGSIZE = (8.0, 5.0)  # inches
DPI = 100  # so a PNG is 800 x 500 pixels


class PlotError(ValueError):
    """A run directory, metric, axis or output path that cannot be plotted; the message is one line."""


@dataclass(frozen=True)
class Run:
    """One run directory: its config and its evaluation rows (one per eval index, sorted by eval)."""

    path: Path
    name: str
    env: str
    config: dict
    rows: list[dict]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _read_config(path: Path) -> dict:
    config_path = path / "config.json"
    if not config_path.is_file():
        return {}
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise PlotError(f"{config_path} is not JSON") from None
    if not isinstance(config, dict):
        raise PlotError(f"{config_path} is not a JSON object")
    return config


def _read_rows(metrics_path: Path) -> list[dict]:
    """Parse metrics.jsonl: blank lines skipped, an unparseable last line (a killed writer) dropped, last row per eval kept."""
    try:
        lines = metrics_path.read_text().split("\n")
    except UnicodeDecodeError:
        raise PlotError(f"{metrics_path} is not UTF-8 text") from None
    numbered = [(number, line) for number, line in enumerate(lines, start=1) if line.strip()]
    by_eval: dict[int, dict] = {}
    for position, (number, line) in enumerate(numbered):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if position == len(numbered) - 1:
                break  # truncated final line: the process was killed while writing it
            raise PlotError(f"{metrics_path} line {number} is not JSON") from None
        if not isinstance(row, dict):
            raise PlotError(f"{metrics_path} line {number} is not a JSON object")
        index = row.get("eval")
        if not (_is_number(index) and float(index).is_integer()):
            raise PlotError(f"{metrics_path} line {number} has no integer 'eval' index")
        by_eval[int(index)] = row  # a resumed run may repeat an eval index: the last row wins
    return [by_eval[index] for index in sorted(by_eval)]


def load_run(path: PathLike) -> Run:
    """Read a run directory: `metrics.jsonl` is required, `config.json` optional (env is then "unknown")."""
    path = Path(path)
    metrics_path = path / "metrics.jsonl"
    if not metrics_path.is_file():
        raise PlotError(f"no run in {path}: metrics.jsonl missing")
    config = _read_config(path)
    env = config.get("env")
    return Run(path=path, name=path.resolve().name, env=env if isinstance(env, str) else "unknown",
               config=config, rows=_read_rows(metrics_path))


def _available_metrics(run: Run) -> list[str]:
    """Names with a numeric value in at least one row, plus eval_return when per-seed returns are logged."""
    names = {key for row in run.rows for key, value in row.items() if _is_number(value)}
    if any(isinstance(row.get("eval_return_per_seed"), list) for row in run.rows):
        names.add("eval_return")
    return sorted(names)


def _number(run: Run, value: Any, name: str, index: int) -> float:
    """A logged value as float; missing or null is NaN (e.g. a metric added after a resume)."""
    if value is None:
        return math.nan
    if not _is_number(value):
        raise PlotError(f"{run.path}: '{name}' at eval {index} is {value!r}, not a number")
    return float(value)


def _value(run: Run, row: dict, name: str) -> float:
    return _number(run, row.get(name), name, row["eval"])


def _run_curves(run: Run, rows: list[dict], metric: str) -> np.ndarray:
    """The run's curves over `rows`, shape [curves, T]: one per seed for eval_return, else one."""
    per_seed = [row.get("eval_return_per_seed") for row in rows]
    if metric == "eval_return" and all(isinstance(values, list) for values in per_seed):
        sizes = {len(values) for values in per_seed}
        if len(sizes) != 1 or 0 in sizes:
            raise PlotError(f"{run.path}: eval_return_per_seed has {sorted(sizes)} values across evaluations; "
                            f"expected the same non-zero number at every evaluation")
        table = [[_number(run, v, "eval_return_per_seed", row["eval"]) for v in values]
                 for row, values in zip(rows, per_seed)]
        return np.asarray(table, dtype=np.float64).T
    return np.asarray([[_value(run, row, metric) for row in rows]], dtype=np.float64)


def _nan_mean_std(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population std over axis 0 of the finite values; NaN where none is finite, no warnings."""
    finite = np.isfinite(values)
    count = finite.sum(axis=0)
    safe_count = np.maximum(count, 1)
    mean = np.where(finite, values, 0.0).sum(axis=0) / safe_count
    var = np.where(finite, (np.where(finite, values, 0.0) - mean) ** 2, 0.0).sum(axis=0) / safe_count
    empty = count == 0
    return np.where(empty, np.nan, mean), np.where(empty, np.nan, np.sqrt(var))


def curve(runs: Union[Run, Sequence[Run]], metric: str = "eval_return",
          x: str = "env_steps") -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Learning curve pooled over the seeds of `runs`: (xs [T], mean [T], std [T], num_seeds).

    For "eval_return" each seed of each run is one curve (from eval_return_per_seed); any other metric gives one
    curve per run. Curves are aligned on eval index, keeping the indices every run has (the shortest run's
    prefix). xs is the mean x over curves; std is the population std over curves. Non-finite values (NaN learner
    metrics before the first update) are left out of mean/std; a point with none finite is NaN.
    """
    runs = [runs] if isinstance(runs, Run) else list(runs)
    if not runs:
        raise PlotError("no runs given")
    if x not in X_AXES:
        raise PlotError(f"unknown x '{x}'; allowed: {', '.join(X_AXES)}")
    for run in runs:
        if not run.rows:
            raise PlotError(f"{run.path} has no evaluations yet")
        available = _available_metrics(run)
        if metric not in available:
            raise PlotError(f"unknown metric '{metric}' in {run.path}; available: {', '.join(available)}")

    common = set.intersection(*({row["eval"] for row in run.rows} for run in runs))
    if not common:
        raise PlotError(f"runs share no evaluation index: {', '.join(str(run.path) for run in runs)}")
    curves, xs = [], []
    for run in runs:
        rows = [row for row in run.rows if row["eval"] in common]  # already sorted by eval
        run_curves = _run_curves(run, rows, metric)
        run_x = np.asarray([_value(run, row, x) for row in rows], dtype=np.float64)
        if not np.all(np.isfinite(run_x)):
            raise PlotError(f"{run.path}: '{x}' is missing or not finite in some evaluations")
        curves.append(run_curves)
        xs.append(np.broadcast_to(run_x, run_curves.shape))  # every curve of the run shares its x
    values = np.concatenate(curves)
    mean, std = _nan_mean_std(values)
    return np.concatenate(xs).mean(axis=0), mean, std, int(values.shape[0])


def _seeds(count: int) -> str:
    return f"{count} seed" if count == 1 else f"{count} seeds"


def _figure(runs: Sequence[Run], metric: str = "eval_return", x: str = "env_steps", merge: bool = False,
            title: str | None = None):
    """Build the matplotlib Figure (no pyplot, so no global backend change): one line and ±std band per series."""
    from matplotlib.figure import Figure

    if merge:
        xs, mean, std, count = curve(runs, metric, x)
        series = [(f"mean of {_seeds(count)}", xs, mean, std)]
    else:
        if not runs:
            raise PlotError("no runs given")
        series = []
        for run in runs:
            xs, mean, std, count = curve([run], metric, x)
            series.append((f"{run.name} ({run.env}, {_seeds(count)})", xs, mean, std))

    figure = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    ax = figure.add_subplot()
    for label, xs, mean, std in series:
        (line,) = ax.plot(xs, mean, label=label)
        ax.fill_between(xs, mean - std, mean + std, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel(X_AXES[x])
    ax.set_ylabel(metric)
    ax.set_title(title if title is not None else ", ".join(dict.fromkeys(run.env for run in runs)))
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    return figure


def _expand_sweeps(run_dirs: Sequence[PathLike]) -> list[Path]:
    """Each sweep directory (`sweep.json`, written by `purempo train --sweep`) replaced by its members' run
    directories, so that the members are drawn side by side."""
    expanded = []
    for path in map(Path, run_dirs):
        sweep = path / "sweep.json"
        if sweep.is_file() and not (path / "metrics.jsonl").exists():
            try:
                members = json.loads(sweep.read_text())["members"]
            except (ValueError, KeyError, TypeError):
                raise PlotError(f"{sweep} does not list the sweep's members") from None
            expanded += [path / name for name in members]
        else:
            expanded.append(path)
    return expanded


def plot_runs(run_dirs: Union[PathLike, Sequence[PathLike]], out: PathLike, metric: str = "eval_return",
              x: str = "env_steps", merge: bool = False, title: str | None = None) -> Path:
    """Plot the learning curves of `run_dirs` to `out` (.png, .pdf or .svg; parents created) and return its path.

    Without `merge`, one mean ± std curve per run directory (a sweep's directory: one per member), labelled
    "NAME (env, K seeds)"; with `merge`, all
    runs pooled into one curve labelled "mean of K seeds". The title defaults to the env names.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    out = Path(out)
    if out.suffix.lower() not in FORMATS:
        raise PlotError(f"unsupported output '{out}'; allowed suffixes: {', '.join(FORMATS)}")
    run_dirs = [run_dirs] if isinstance(run_dirs, (str, Path)) else list(run_dirs)
    runs = [load_run(path) for path in _expand_sweeps(run_dirs)]
    figure = _figure(runs, metric, x, merge, title)
    FigureCanvasAgg(figure)  # attach a non-interactive canvas; vector formats switch canvas while saving
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out)
    return out
