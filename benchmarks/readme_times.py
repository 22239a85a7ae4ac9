"""How long the README's quickstart commands take on this machine, run as a user runs them.

    python benchmarks/readme_times.py            # writes benchmarks/results/readme_times.json

Each command runs as a subprocess in a temporary directory with an empty compile cache first (a new user's
first run), then `train` again with the cache filled. Long trainings (halfcheetah with 4 seeds, CheetahRun at
1M env steps) are not rerun here; their times come from the committed runs the README's table links.
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

COMMANDS = (
    ("train", ["train", "--env", "inverted_pendulum", "--run-dir", "runs/pendulum"]),
    ("eval", ["eval", "runs/pendulum", "--episodes", "32"]),
    ("render", ["render", "runs/pendulum", "--out", "policy.html"]),
    ("plot", ["plot", "runs/pendulum", "--out", "curves.png"]),
    ("envs", ["envs"]),
    ("train, cached", ["train", "--env", "inverted_pendulum", "--run-dir", "runs/pendulum-again"]),
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(RESULTS / "readme_times.json"))
    parser.add_argument("--set", nargs=2, action="append", default=[], metavar=("FLAG", "VALUE"),
                        help="extra flag for both trainings (tests use tiny runs)")
    args = parser.parse_args()
    extra = [item for pair in args.set for item in pair]
    rows = []
    with tempfile.TemporaryDirectory() as work:
        env = dict(os.environ, XDG_CACHE_HOME=str(Path(work) / "cache"))
        env.pop("JAX_COMPILATION_CACHE_DIR", None)
        for name, argv in COMMANDS:
            argv = argv + (extra if argv[0] == "train" else [])
            tick = time.perf_counter()
            result = subprocess.run([sys.executable, "-m", "purempo.cli", *argv], cwd=work, env=env,
                                    capture_output=True, text=True)
            seconds = time.perf_counter() - tick
            if result.returncode != 0:
                print(result.stderr[-2000:], file=sys.stderr)
                raise SystemExit(f"`purempo {' '.join(argv)}` failed with exit code {result.returncode}")
            rows.append(dict(name=name, command="purempo " + " ".join(argv), seconds=round(seconds, 1)))
            print(f"{seconds:7.1f} s  purempo {' '.join(argv)}", flush=True)
    record = dict(date=today(), machine=machine(), versions=versions(), command=command_line("readme_times.py"),
                  commands=rows)
    Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
