"""Several seeds of one preset trained in a single vmapped program; prints eval return per seed and evaluation.

    python benchmarks/seeds.py --env inverted_pendulum --first-seed 10 --num-seeds 4 --set total_steps=200000 --set num_evals=20

Seed s uses `jax.random.PRNGKey(s)`. Writes benchmarks/results/<env>_seeds.json.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from common import RESULTS, parse_overrides
from purempo.presets import preset
from purempo.train import make_train

def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="inverted_pendulum")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--num-seeds", type=int, default=4)
    parser.add_argument("--threshold", type=float, default=950.0)
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    args = parser.parse_args()
    overrides = parse_overrides(args.set)
    config = preset(args.env, **overrides)
    seeds = list(range(args.first_seed, args.first_seed + args.num_seeds))
    keys = jnp.stack([jax.random.PRNGKey(s) for s in seeds])
    start = time.perf_counter()
    _, metrics = jax.device_get(jax.jit(jax.vmap(make_train(config)))(keys))
    wall = time.perf_counter() - start
    steps = metrics["eval_env_steps"][0].tolist()
    returns = metrics["eval_return"]
    reached = [next((steps[i] for i, r in enumerate(row) if r >= args.threshold), None) for row in returns]
    print(f"{args.env}: {len(seeds)} seeds, {config.env_steps:,} env steps each, {wall:.1f} s in one vmapped program")
    print("| seed | " + " | ".join(f"{s / 1e3:.0f}k" for s in steps) + f" | first ≥ {args.threshold:g} |")
    print("|---:" * (len(steps) + 2) + "|")
    for seed, row, hit in zip(seeds, returns, reached):
        print(f"| {seed} | " + " | ".join(f"{r:.0f}" for r in row) + f" | {hit if hit is None else f'{hit:,}'} |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.env}_seeds.json").write_text(json.dumps(dict(
        env=args.env, seeds=seeds, overrides=overrides, env_steps=steps, eval_return=np.asarray(returns).tolist(),
        first_step_at_threshold=reached,
        # Per-chunk mean and max over iterations of every learner metric, per seed (NaN prefill iterations skipped).
        chunk_means={k: np.nanmean(np.asarray(v, np.float64), axis=-1).tolist() for k, v in metrics.items() if np.ndim(v) == 3},
        chunk_max={k: np.nanmax(np.asarray(v, np.float64), axis=-1).tolist() for k, v in metrics.items() if np.ndim(v) == 3}, threshold=args.threshold, wall_time_s=round(wall, 1),
        jax=jax.__version__, device=jax.devices()[0].device_kind), indent=1) + "\n")


if __name__ == "__main__":
    main()
