"""Building a run's programs: `compile_trainer` against `programs.build` (traced and exported), each in a fresh
process with no compilation cache, then the same chunks timed on both.

    python benchmarks/build_paths.py                     # inverted_pendulum preset, 4 evaluation periods

Prints and writes benchmarks/results/build_paths_<env>.json: build seconds, per-chunk seconds (training and
evaluation of one period), whether both paths give the same evaluation returns, and the bytes of the
program-cache entry the exported build wrote.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import RESULTS, command_line, machine, today, versions


def child(path: str, env: str, cache: str) -> None:
    import jax

    from purempo import programs
    from purempo.presets import preset
    from purempo.train import compile_trainer, make_trainer

    config = preset(env, total_steps=40_960, num_evals=4)
    keys = jax.random.split(jax.random.PRNGKey(0), 1)
    tick = time.perf_counter()
    if path == "compile_trainer":
        built = compile_trainer(make_trainer(config), keys, batched=True)
    else:
        built = programs.build(config, keys, cache_dir=Path(cache))
    build_s = time.perf_counter() - tick
    state, chunks, returns = built.init(keys), [], []
    for _ in range(config.num_evals):
        tick = time.perf_counter()
        state, _ = built.train_chunk(state)
        state, evaluation = built.evaluate_state(state)
        returns.append(float(jax.device_get(evaluation["eval_return"])[0]))
        chunks.append(round(time.perf_counter() - tick, 2))
    entry = sum(p.stat().st_size for p in Path(cache).glob("*/*"))
    print(json.dumps(dict(path=path, build_s=round(build_s, 2), chunk_s=chunks, eval_returns=returns,
                          cache_entry_bytes=entry)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="inverted_pendulum")
    parser.add_argument("--child", nargs=2, metavar=("PATH", "CACHE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child[0], args.env, args.child[1])
    results = []
    for path in ("compile_trainer", "programs.build"):
        with tempfile.TemporaryDirectory() as cache:
            out = subprocess.run([sys.executable, __file__, "--env", args.env, "--child", path, cache],
                                 capture_output=True, text=True, check=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(results[-1], flush=True)
    summary = dict(same_eval_returns=results[0]["eval_returns"] == results[1]["eval_returns"],
                   build_s={r["path"]: r["build_s"] for r in results})
    print(json.dumps(summary))
    target = RESULTS / f"build_paths_{args.env}.json"
    target.write_text(json.dumps(dict(env=args.env, date=today(), machine=machine(), versions=versions(),
                                      command=command_line("build_paths.py"), runs=results, summary=summary),
                                 indent=1) + "\n")
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
