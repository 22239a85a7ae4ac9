"""What `purempo train` shows on the terminal: the run's header, a compilation spinner, a progress bar with an
ETA from the run's own speed, and one line per evaluation (all on stderr).

On a terminal the bar moves within each evaluation period (`driver.Callbacks.progress`); piped into a file the
same lines come out plain and unwrapped, without the bar or the spinner.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, Optional

from purempo import driver

COMPILE_TIMES = "compile_seconds.json"
"""In the compile cache directory: how long each setup (`Callbacks.compiling`) last took to compile there."""


def _format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class _Rate:
    """Env steps per second since training started (or resumed), and the time left at that rate."""

    def __init__(self):
        self.origin: Optional[tuple] = None  # (time, env steps) when training started

    def start(self, done_steps: int) -> None:
        self.origin = (time.perf_counter(), done_steps)

    def per_second(self, env_steps: int) -> Optional[float]:
        if self.origin is None or env_steps <= self.origin[1]:
            return None
        return (env_steps - self.origin[1]) / max(time.perf_counter() - self.origin[0], 1e-9)

    def remaining(self, env_steps: int, total: int) -> Optional[float]:
        rate = self.per_second(env_steps)
        return None if rate is None else (total - env_steps) / rate


def _compile_cache_dir() -> Optional[Path]:
    import jax

    directory = jax.config.jax_compilation_cache_dir
    return Path(directory) if directory else None


class _CacheMisses:
    """Counts compilations that JAX's persistent cache could not serve (`jax.monitoring` events)."""

    count = 0
    _registered = False

    @classmethod
    def register(cls) -> None:
        if not cls._registered:
            from jax import monitoring

            def listener(event: str, **kwargs) -> None:
                if event == "/jax/compilation_cache/compile_requests_use_cache":
                    cls.count += 1
                elif event == "/jax/compilation_cache/cache_hits":
                    cls.count -= 1

            monitoring.register_event_listener(listener)
            cls._registered = True


# An hl_gauss critic's fraction of Retrace targets beyond its support above which each evaluation line says so.
CLIPPED_WARNING = 0.01


class ConsoleProgress(driver.Callbacks):
    """Progress as a rich progress bar and one line per evaluation, on stderr (what `purempo train` shows)."""

    def __init__(self):
        from rich.console import Console
        from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
        from rich.text import Text

        # soft_wrap: a line longer than the terminal (or than 80 columns, when piped) is never broken mid-metric.
        self.console = Console(stderr=True, soft_wrap=True, highlight=False)
        self.rate = _Rate()
        rate = self.rate

        class Remaining(ProgressColumn):  # rich's own estimate uses only the last 30 s of updates
            def render(self, task):
                left = rate.remaining(int(task.completed), int(task.total or 0))
                return Text("ETA " + ("-:--:--" if left is None else _format_seconds(left)), style="cyan")

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(),
                            TextColumn("{task.completed:,.0f}/{task.total:,.0f} steps"), TextColumn("{task.fields[info]}"),
                            TimeElapsedColumn(), Remaining(), console=self.console, transient=False)
        self.task = self.bar.add_task("training", total=0, info="")
        self.status = None
        self.bar_started = False
        self.setup: Optional[str] = None
        self.misses_before = 0
        self.launched = time.perf_counter()

    # -- before training ---------------------------------------------------------------------------------
    def started(self, description):
        self.console.print(f"[bold]purempo[/] {description}")

    def compiling(self, setup):
        self.setup = setup
        _CacheMisses.register()
        self.misses_before = _CacheMisses.count
        cache = _compile_cache_dir()
        estimate = self._compile_times().get(setup)
        about = f"about {estimate:.0f} s; " if estimate else ""
        text = f"compiling… ({about}{'cached for the next run' if cache else 'compile cache off'})"
        if self.console.is_terminal:
            self.status = self.console.status(text)
            self.status.start()
        else:
            self.console.print(text)

    def compiled(self, seconds):
        if self.status is not None:
            self.status.stop()
            self.status = None
        if _compile_cache_dir() and _CacheMisses.count == self.misses_before:  # every program came from the cache
            self.console.print(f"loaded the compiled programs from the cache in {seconds:.1f} s")
        else:
            self.console.print(f"compiled in {seconds:.1f} s")
            self._record_compile_time(seconds)

    def _compile_times(self) -> Dict[str, float]:
        cache = _compile_cache_dir()
        try:
            return json.loads((cache / COMPILE_TIMES).read_text()) if cache else {}
        except (OSError, ValueError):
            return {}

    def _record_compile_time(self, seconds: float) -> None:
        cache = _compile_cache_dir()
        if cache is None or self.setup is None:
            return
        times = dict(self._compile_times(), **{self.setup: round(seconds, 1)})
        try:
            driver.replace_file(cache / COMPILE_TIMES, json.dumps(times, indent=1) + "\n")
        except OSError:  # a read-only cache only loses the estimate
            pass

    # -- training ----------------------------------------------------------------------------------------
    def training(self, total_steps, done_steps):
        self.console.print(f"training from {time.perf_counter() - self.launched:.1f} s after launch")
        self.rate.start(done_steps)
        self.bar.update(self.task, total=total_steps, completed=done_steps)
        if self.console.is_terminal:
            self.bar.start()
            self.bar_started = True

    def progress(self, env_steps):
        rate = self.rate.per_second(env_steps)
        self.bar.update(self.task, completed=env_steps,
                        info=self.bar.tasks[0].fields.get("info", "") if rate is None else self._info(rate))
        if self.console.is_terminal:
            self.bar.refresh()

    def _info(self, rate: float) -> str:
        eval_text = getattr(self, "last_eval", "")
        return f"{eval_text}SPS {rate:,.0f}"

    def message(self, text):
        self.console.print(f"[yellow]{text}")

    def evaluated(self, row: Dict[str, Any], steps_per_second):
        self.last_eval = f"eval {row['eval_return']:.1f}  "
        self.bar.update(self.task, completed=row["env_steps"], info=self._info(steps_per_second))
        train = row.get("train_episode_return")
        self.console.print(
            (f"{row['member']}  " if row["member"] else "")
            + f"steps {row['env_steps']:>10,}  t {row['wall_time_s']:7.1f}s  eval {row['eval_return']:9.2f}"
            + f"  train {'—' if train is None else f'{train:.2f}':>9} ({row.get('train_episodes', 0)} ep)"
            + f"  Q {row['q_mean']:8.2f}  η {row['temperature']:.3g}"
            + (f"  KL {row['kl_policy']:.2e}  H {row['policy_entropy']:.3f}" if "kl_policy" in row else
               f"  KLμ {row['kl_mean']:.2e}  KLσ {row['kl_std']:.2e}  σ {row['policy_std']:.3f}")
            + (f"  [red]non-finite steps {row['nonfinite_steps']}" if row.get("nonfinite_steps") else "")
            + (f"  [yellow]{row['targets_clipped']:.1%} of critic targets clipped to the value support: widen "
               f"--reward-range" if row.get("targets_clipped", 0.0) >= CLIPPED_WARNING else ""))

    def close(self) -> None:
        if self.status is not None:
            self.status.stop()
        if self.bar_started:  # rich prints an empty line when stopping a bar that never started
            self.bar.stop()
