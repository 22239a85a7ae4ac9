"""Where a training iteration's time goes, at an env's CPU preset and at its GPU preset's sizes, on this machine.

    python benchmarks/update_cost.py --env CheetahRun --label after

Per scale ("cpu": `preset(env)`, "gpu": `preset(env, scale="gpu")`, both run here):
- one SGD update (`throughput.profile_learner`: ms per `learner_step` and per sampled-action target-critic pass,
  the E-step's largest part, and that pass's share of the update);
- training as the driver runs it (`throughput.time_training`: env steps/s and updates/s over `--chunks` chunks
  of `--iterations` iterations after the prefill and a warm-up chunk), one seed.
Written to benchmarks/results/update_cost_<env>_<label>.json. Uses only functions that earlier versions of
throughput.py also have, so the same script measures an older checkout (copy it into that tree's benchmarks/).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import RESULTS, command_line, jsonable, machine, parse_overrides, today, versions
from purempo.presets import preset
from throughput import profile_learner, time_training


def sized(config, iterations: int):
    """`config` with chunks of `iterations` iterations and room for many of them."""
    return config.replace(total_steps=config.steps_per_iteration * iterations * 1000, num_evals=1000)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="CheetahRun")
    parser.add_argument("--label", required=True, help="e.g. before / after (the file name's suffix)")
    parser.add_argument("--scales", nargs="+", default=["cpu", "gpu"], choices=("cpu", "gpu"))
    parser.add_argument("--chunks", type=int, default=2)
    parser.add_argument("--iterations", type=int, nargs=2, default=[16, 2], metavar=("CPU", "GPU"),
                        help="iterations per timed chunk at each scale")
    parser.add_argument("--repeats", type=int, nargs=2, default=[20, 4], metavar=("CPU", "GPU"),
                        help="updates per profiled call at each scale")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a config field at every scale (e.g. an older checkout's GPU preset sizes)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    result = dict(env=args.env, label=args.label, date=today(), machine=machine(), versions=versions(),
                  command=command_line("update_cost.py"), scales={})
    for scale in args.scales:
        index = 0 if scale == "cpu" else 1
        config = sized(preset(args.env, scale=scale, **parse_overrides(args.set)), args.iterations[index])
        profile = profile_learner(config, repeats=args.repeats[index])
        compile_s, steps_per_s, updates_per_s = time_training(config, 1, args.chunks)
        result["scales"][scale] = dict(
            ms_per_update=profile["learner_step"]["ms"], sampled_critic_ms=profile["sampled_action_critic"]["ms"],
            sampled_critic_share=profile["sampled_action_critic_share"],
            gflop_per_update=profile["learner_step"]["gflop"],
            train_env_steps_per_s=round(steps_per_s, 1), train_updates_per_s=round(updates_per_s, 2),
            compile_s=round(compile_s, 1), config=jsonable(config))
        print(f"{args.env} {scale} ({args.label}): {profile['learner_step']['ms']:.1f} ms per update "
              f"(sampled-action critic {profile['sampled_action_critic']['ms']:.1f} ms, "
              f"{profile['sampled_action_critic_share']:.0%}); training {steps_per_s:,.0f} env steps/s, "
              f"{updates_per_s:.1f} updates/s", flush=True)
        out = Path(args.out) / f"update_cost_{args.env}_{args.label}.json"  # after every scale
        out.write_text(json.dumps(result, indent=1))
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
