"""Where a test-sized trainer's fixed cost goes: tracing, lowering and XLA compilation of `jit(vmap(make_train))`.

    python benchmarks/build_cost.py                       # generalized, spring and positional physics
    python benchmarks/build_cost.py --backends spring

Most of the test suite's time is this fixed cost, paid once per distinct tiny config. The config is
`tests/test_train.py`'s TINY (2 seeds), compiled with the suite's flags (`tests/conftest.py`: XLA back-end
optimisation off). Each backend runs in a fresh process so that no trace or compile is shared. Writes
benchmarks/results/build_cost.json.
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
import json, sys, time
sys.path.insert(0, {tests!r})
import jax
from purempo import make_train
from test_train import TINY
config = TINY if {backend!r} == "default" else TINY.replace(backend={backend!r})
keys = jax.random.split(jax.random.PRNGKey(0), 2)
marks = [time.perf_counter()]
traced = jax.jit(jax.vmap(make_train(config))).trace(keys); marks.append(time.perf_counter())
lowered = traced.lower(); marks.append(time.perf_counter())
compiled = lowered.compile(); marks.append(time.perf_counter())
jax.block_until_ready(compiled(keys)); marks.append(time.perf_counter())
names = ["trace_s", "lower_s", "compile_s", "run_s"]
row = {{name: round(b - a, 2) for name, a, b in zip(names, marks, marks[1:])}}
row["stablehlo_chars"] = len(lowered.as_text())
print(json.dumps(row))
"""


def measure(backend: str) -> dict:
    env = dict(os.environ, XLA_FLAGS="--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true")
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    code = CHILD.format(tests=str(ROOT / "tests"), backend=backend)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return {"backend": backend, **json.loads(out.stdout.strip().splitlines()[-1])}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", nargs="+", default=["default", "spring", "positional"],
                        help="Brax physics backends ('default': the env's own, generalized for inverted_pendulum)")
    args = parser.parse_args()
    rows = []
    for backend in args.backends:
        rows.append(measure(backend))
        print(json.dumps(rows[-1]), flush=True)
    result = {"command": command_line("build_cost.py"), "date": today(), "machine": machine(), "versions": versions(), "rows": rows}
    path = RESULTS / "build_cost.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
