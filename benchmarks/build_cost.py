"""Where a test-sized trainer's fixed cost goes: tracing, lowering and XLA compilation of `jit(vmap(make_train))`.

    python benchmarks/build_cost.py                       # generalized, spring and positional physics
    python benchmarks/build_cost.py --backends default --profile   # and where the trace's time goes
    python benchmarks/build_cost.py --flags --repeats 3   # XLA's defaults against the suite's compile flags

The test suite pays this once per distinct tiny config; `second_trainer_trace_s` is the trace of a second
trainer of the same env in the same process (episode length 40), what the suite's next test of that env pays. The config is `tests/test_train.py`'s TINY (2 seeds).
Each backend runs in a fresh process that first imports `tests/conftest.py`, so it compiles as a test worker
does: the suite's XLA flags (back-end optimisation off) and a new, empty persistent cache. Writes
benchmarks/results/build_cost.json. `--profile` writes the trace's cProfile (cumulative time) to
benchmarks/results/build_cost_trace_profile_<backend>.txt, and its timings, which the profiler slows, to
build_cost_profiled.json instead. `--flags` compiles the default backend under XLA's defaults, with back-end
optimisation off, and with the suite's flags (`tests/conftest.py`: also the older fusion emitters), each
`--repeats` times in a fresh process, and writes benchmarks/results/build_cost_flags.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from common import RESULTS, command_line, machine, today, versions

ROOT = Path(__file__).resolve().parents[1]
CHILD = """
import cProfile, io, json, pstats, sys, time
sys.path.insert(0, {tests!r})
import conftest  # the suite's XLA flags and fresh caches, set before JAX starts
import jax
from purempo import make_train
from test_train import TINY
config = TINY if {backend!r} == "default" else TINY.replace(backend={backend!r})
keys = jax.random.split(jax.random.PRNGKey(0), 2)
profile = cProfile.Profile() if {profile_path!r} else None
marks = [time.perf_counter()]
if profile:
    profile.enable()
traced = jax.jit(jax.vmap(make_train(config))).trace(keys); marks.append(time.perf_counter())
if profile:
    profile.disable()
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("cumulative").print_stats(60)
    open({profile_path!r}, "w").write(text.getvalue())
lowered = traced.lower(); marks.append(time.perf_counter())
compiled = lowered.compile(); marks.append(time.perf_counter())
jax.block_until_ready(compiled(keys)); marks.append(time.perf_counter())
names = ["trace_s", "lower_s", "compile_s", "run_s"]
row = {{name: round(b - a, 2) for name, a, b in zip(names, marks, marks[1:])}}
row["stablehlo_chars"] = len(lowered.as_text())
start = time.perf_counter()  # another trainer of the same env in this process, as the suite's next test traces
jax.jit(jax.vmap(make_train(config.replace(episode_length=40)))).trace(keys)
row["second_trainer_trace_s"] = round(time.perf_counter() - start, 2)
print(json.dumps(row))
"""




def flag_sets() -> dict:
    """XLA_FLAGS for --flags, from conftest.py's options (which leaves XLA_FLAGS alone once they name the
    optimisation level); None: the suite's own."""
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import FAST_COMPILE, FULL_OPTIMISATION, as_xla_flags

    return {"xla_defaults": as_xla_flags(FULL_OPTIMISATION),
            "backend_optimisation_off": as_xla_flags({**FAST_COMPILE, "xla_cpu_use_fusion_emitters": True}),
            "suite": None}


def measure(backend: str, profile: bool, xla_flags: str | None = None) -> dict:
    env = {name: value for name, value in os.environ.items()  # conftest.py sets these three afresh
           if name not in ("XLA_FLAGS", "JAX_COMPILATION_CACHE_DIR", "PUREMPO_TEST_CACHE_HOME")}
    if xla_flags is not None:
        env["XLA_FLAGS"] = xla_flags
    profile_path = str(RESULTS / f"build_cost_trace_profile_{backend}.txt") if profile else ""
    code = CHILD.format(tests=str(ROOT / "tests"), backend=backend, profile_path=profile_path)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return {"backend": backend, **json.loads(out.stdout.strip().splitlines()[-1])}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", nargs="+", default=["default", "spring", "positional"],
                        help="Brax physics backends ('default': the env's own, generalized for inverted_pendulum)")
    parser.add_argument("--profile", action="store_true", help="also write each backend's trace profile")
    parser.add_argument("--flags", action="store_true", help="compare XLA flag sets on the default backend")
    parser.add_argument("--repeats", type=int, default=1, help="fresh processes per backend or flag set")
    parser.add_argument("--out", default=None, help="results JSON (default: results/build_cost[_flags|_profiled].json)")
    args = parser.parse_args()
    if args.flags and args.profile:
        parser.error("--flags and --profile: choose one")
    rows = []
    runs = ([(name, "default", flags) for _ in range(args.repeats) for name, flags in flag_sets().items()]
            if args.flags else [(None, backend, None) for _ in range(args.repeats) for backend in args.backends])
    for name, backend, flags in runs:
        row = measure(backend, args.profile, flags)
        rows.append({"flags": name, **row} if name else row)
        print(json.dumps(rows[-1]), flush=True)
    result = {"command": command_line("build_cost.py"), "date": today(), "machine": machine(), "versions": versions(), "rows": rows}
    path = Path(args.out) if args.out else RESULTS / ("build_cost_profiled.json" if args.profile else
                                                      "build_cost_flags.json" if args.flags else "build_cost.json")
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
