"""Start-up of `purempo train`: cold (an empty compilation cache) against warm (the same command again, served by
JAX's persistent compilation cache).

    python benchmarks/startup.py                      # inverted_pendulum, its preset, 3 cold + 3 warm launches
    python benchmarks/startup.py --flags --env hopper --total-steps 40960

Each launch runs `purempo train FLAGS --run-dir TMP` in a fresh process with `XDG_CACHE_HOME` pointing at a
temporary directory (cold: a new one; warm: the one the previous cold launch filled) and timestamps, from the
moment the process is spawned, the lines it prints: `compiled in …`, `training from …` (the first training
step is about to run) and the first evaluation row. A launch with `--no-compile-cache` is the reference for
what the cache saves. Writes benchmarks/results/startup_<env>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import RESULTS, command_line, machine, today, versions


def launch(flags, cache_home: Path, run_dir: Path, extra=()):
    """Seconds from spawning the CLI to its first training step and to its first evaluation, and its total."""
    env = dict(os.environ, XDG_CACHE_HOME=str(cache_home), COLUMNS="200")
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    command = [sys.executable, "-m", "purempo.cli", "train", *flags, "--run-dir", str(run_dir), "--no-tensorboard",
               *extra]
    start = time.perf_counter()
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    marks, lines = {}, []
    for line in proc.stderr:
        now = time.perf_counter() - start
        lines.append(line.rstrip())
        if line.startswith("compiled in"):
            marks["compiled_s"] = now
            marks["compile_reported_s"] = float(line.split()[2])
        elif line.startswith("training from"):
            marks["first_training_step_s"] = now
        elif line.startswith("steps ") and "first_eval_s" not in marks:
            marks["first_eval_s"] = now
    proc.wait()
    if proc.returncode != 0:
        raise SystemExit(f"purempo train failed ({proc.returncode}):\n" + "\n".join(lines[-20:]))
    marks["total_s"] = time.perf_counter() - start
    return {k: round(v, 2) for k, v in marks.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="cold/warm pairs")
    parser.add_argument("--out", help="file name under benchmarks/results (default: startup_ENV.json)")
    parser.add_argument("--flags", nargs=argparse.REMAINDER, default=[], help="flags for purempo train (last)")
    args = parser.parse_args()
    env = next((args.flags[i + 1] for i, f in enumerate(args.flags[:-1]) if f == "--env"), "inverted_pendulum")
    pairs = []
    with tempfile.TemporaryDirectory(prefix="purempo-startup-") as tmp:
        tmp = Path(tmp)
        uncached = launch(args.flags, tmp / "unused-cache", tmp / "run-uncached", ["--no-compile-cache"])
        print(f"no cache: {uncached}", flush=True)
        for repeat in range(args.repeats):
            cache = tmp / f"cache-{repeat}"
            cold = launch(args.flags, cache, tmp / f"run-cold-{repeat}")
            warm = launch(args.flags, cache, tmp / f"run-warm-{repeat}")
            pairs.append(dict(cold=cold, warm=warm))
            print(f"cold: {cold}\nwarm: {warm}", flush=True)

    def median(kind, key):
        values = sorted(pair[kind][key] for pair in pairs)
        return values[len(values) // 2]

    summary = {f"{kind}_{key}_median": median(kind, key) for kind in ("cold", "warm")
               for key in ("first_training_step_s", "first_eval_s", "total_s")}
    summary["first_eval_sooner_when_warm_s"] = round(summary["cold_first_eval_s_median"]
                                                     - summary["warm_first_eval_s_median"], 2)
    print(json.dumps(summary, indent=2))
    out = RESULTS / (args.out or f"startup_{env}.json")
    out.write_text(json.dumps(dict(date=today(), machine=machine(), versions=versions(), command=command_line("startup.py"),
                                   flags=args.flags, no_cache=uncached, launches=pairs, summary=summary),
                              indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
