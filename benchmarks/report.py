"""Build the results tables of README.md and benchmarks/RESULTS.md from the JSON files in benchmarks/results/.

Each table sits between `<!-- report:NAME:start ... -->` and `<!-- report:NAME:end -->` in its document and is
rebuilt from the JSON files that its spec in `TABLES` names; every row links the files it came from, and a
list of the commands that wrote them follows the table.

    python benchmarks/report.py --write   # rewrite every generated section
    python benchmarks/report.py --check   # exit 1 naming each stale section (tests/test_report.py runs it)

A return is the mean over one evaluation's mean-action episodes; "mean ± std" is over seeds (the sample
standard deviation), one figure per seed: its evaluation at the row's env steps (the first at or after
`Row.at`, else its last). Standard library only, so that the check is fast.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path("benchmarks") / "results"  # relative to the root


# ----------------------------------------------------------------------------------------------- reading a run

@dataclass
class Curve:
    """One seed's evaluations, read from a stability.py, compare.py or learning_curve.py JSON file."""
    steps: List[int]
    returns: List[float]
    walls: List[Optional[float]]  # seconds from launch to each evaluation, compilation included
    seeds_in_program: int
    threshold: Optional[float]
    drop_after: Optional[int]
    machine: str


def load(root: Path, name: str) -> dict:
    return json.loads((root / RESULTS / f"{name}.json").read_text())


def curves(root: Path, name: str, trainer: str = "purempo") -> List[Curve]:
    d = load(root, name)
    machine = d.get("machine") or "?"
    if "runs" in d and "env_steps" in d:  # stability.py: seeds vmapped in one program
        walls = [c.get("wall_time_s") for c in d.get("chunks", [])] or [None] * len(d["env_steps"])
        if walls[-1] is None:
            walls[-1] = d.get("wall_time_s")
        return [Curve(d["env_steps"], r["eval_return"], walls, len(d["runs"]), d.get("threshold"),
                      d.get("drop_after"), machine) for r in d["runs"]]
    if "seed_list" in d:  # gymnax_curves.py: seeds vmapped in one program, the anchor's target as threshold
        chunks = d["chunks"]
        target = (d.get("anchor") or {}).get("target")
        return [Curve([c["env_steps"] for c in chunks], [c["eval_return"][i] for c in chunks],
                      [c["wall_time_s"] for c in chunks], len(d["seed_list"]), target, None, machine)
                for i in range(len(d["seed_list"]))]
    if "results" in d:  # compare.py: one seed per trainer
        r = next((r for r in d["results"] if r["trainer"] == trainer), None)
        if r is None:
            return []
        c = r["curve"]
        return [Curve([p["env_steps"] for p in c], [p["eval_return"] for p in c], [p.get("wall_time_s") for p in c],
                      1, d.get("threshold"), None, machine)]
    c = d["curve"]  # learning_curve.py
    return [Curve([p["env_steps"] for p in c], [p["eval_return"] for p in c], [p.get("wall_time_s") for p in c],
                  1, None, None, machine)]


def point(curve: Curve, at: Optional[int]) -> Optional[int]:
    """Index of the first evaluation at or after `at` env steps (the last one if `at` is None)."""
    if at is None:
        return len(curve.steps) - 1
    return next((i for i, s in enumerate(curve.steps) if s >= at), None)


def after_threshold(curve: Curve, threshold: Optional[float], upto: int):
    """(index of the first evaluation >= threshold, the evaluations from there to `upto`), or (None, [])."""
    if threshold is None:
        return None, []
    hit = next((i for i, r in enumerate(curve.returns[:upto + 1]) if r >= threshold), None)
    return hit, ([] if hit is None else curve.returns[hit:upto + 1])


# ------------------------------------------------------------------------------------------------- formatting

def mean_std(values: Sequence[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:,.1f}"
    return f"{statistics.mean(values):,.1f} ± {statistics.stdev(values):,.1f}"


def steps(n: Optional[float]) -> str:
    if n is None:
        return "—"
    if n == 0:
        return "0"
    if n >= 1e6:
        return f"{n / 1e6:.2f}M"
    return f"{n / 1e3:.1f}k" if n < 1e5 else f"{n / 1e3:,.0f}k"


def seconds(s: Optional[float]) -> str:
    return "—" if s is None else f"{s:,.0f} s"


def machine(description: str) -> str:
    """'CPU (cpu); AMD EPYC; 1 device(s); 2 cores' -> 'CPU, 2 cores'; 'GPU (NVIDIA H200); ...' -> 'H200'."""
    m = re.match(r"GPU \((?:NVIDIA )?([^)]*)\)", description)
    if m:
        return m.group(1)
    cores = re.search(r"(\d+) cores", description)
    if cores:
        return f"CPU, {cores.group(1)} core{'s' if cores.group(1) != '1' else ''}"
    return description


def joined(values: Sequence[str]) -> str:
    return " / ".join(dict.fromkeys(values))  # unique, in order


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


# -------------------------------------------------------------------------------------------- learning tables

@dataclass
class Row:
    """One task's current run: purempo's JSON files (their seeds pooled), and Brax's on the same task."""
    task: str
    purempo: List[str] = field(default_factory=list)  # empty: no run of the current preset
    sac: List[str] = field(default_factory=list)
    ppo: List[str] = field(default_factory=list)
    at: Optional[int] = None  # compare at the first evaluation at or after this many env steps (None: the last)
    threshold: Optional[float] = None  # None: the JSON's own
    settings: str = "preset"
    missing: str = "no run of the current preset"
    no_brax: str = "not run"


@dataclass
class Cell:
    """A row's figures, read once."""
    row: Row
    root: Path

    def runs(self, names: List[str], trainer: str):
        out = []
        for name in names:
            for c in curves(self.root, name, trainer):
                out.append((name, c, point(c, self.row.at)))
        return out

    def purempo(self):
        return self.runs(self.row.purempo, "purempo")

    def threshold(self, c: Curve) -> Optional[float]:
        return self.row.threshold if self.row.threshold is not None else c.threshold

    def returns(self, names: List[str], trainer: str, empty: str) -> str:
        runs = [(c, i) for _, c, i in self.runs(names, trainer)]
        if not runs:
            return empty
        if any(i is None for _, i in runs):
            return f"did not reach {steps(self.row.at)}"
        at = joined([steps(c.steps[i]) for c, i in runs])
        return f"{mean_std([c.returns[i] for c, i in runs])} at {at} ({plural(len(runs), 'seed')})"


def c_task(cell: Cell) -> str:
    return cell.row.task


def c_settings(cell: Cell) -> str:
    return cell.row.settings


def c_env_steps(cell: Cell) -> str:
    runs = cell.purempo()
    return joined([steps(c.steps[i]) for _, c, i in runs if i is not None]) or "—"


def c_return(cell: Cell) -> str:
    runs = cell.purempo()
    if not runs:
        return cell.row.missing
    if any(i is None for _, _, i in runs):
        return f"did not reach {steps(cell.row.at)}"
    return f"{mean_std([c.returns[i] for _, c, i in runs])} ({plural(len(runs), 'seed')})"


def c_seeds(cell: Cell) -> str:
    """Per seed: best / final / worst evaluation after first reaching the threshold, up to the row's point."""
    out = []
    for _, c, i in cell.purempo():
        if i is None:
            continue
        best, final = max(r for r in c.returns[:i + 1] if not math.isnan(r)), c.returns[i]
        hit, later = after_threshold(c, cell.threshold(c), i)
        worst = f"{min(later):,.1f}" if later else "—"
        out.append(f"{best:,.1f} / {final:,.1f} / {worst}")
    return "; ".join(out) or "—"


def c_reached(cell: Cell) -> str:
    """Per seed: env steps of the first evaluation at or above the threshold."""
    out = []
    for _, c, i in cell.purempo():
        t = cell.threshold(c)
        if t is None or i is None:
            continue
        hit, _ = after_threshold(c, t, i)
        out.append(steps(c.steps[hit]) if hit is not None else "never")
    if not out:
        return "—"
    return f"{', '.join(out)} (≥ {joined([f'{cell.threshold(c):g}' for _, c, _ in cell.purempo()])})"


def c_wall(cell: Cell) -> str:
    out = {}
    for name, c, i in cell.purempo():
        if i is not None:
            together = f" ({c.seeds_in_program} seeds in one program)" if c.seeds_in_program > 1 else ""
            out[name] = seconds(c.walls[i]) + together
    return joined(list(out.values())) or "—"


def c_machine(cell: Cell) -> str:
    return joined([machine(c.machine) for _, c, _ in cell.purempo()]) or "—"


def c_sac(cell: Cell) -> str:
    return cell.returns(cell.row.sac, "brax-sac", cell.row.no_brax)


def c_ppo(cell: Cell) -> str:
    return cell.returns(cell.row.ppo, "brax-ppo", cell.row.no_brax)


def c_below(cell: Cell) -> str:
    """Evaluations below the threshold after first reaching it, over all seeds, up to the row's point."""
    counts = []
    for _, c, i in cell.purempo():
        if i is not None and cell.threshold(c) is not None:
            _, later = after_threshold(c, cell.threshold(c), i)
            counts.append(sum(r < cell.threshold(c) for r in later))
    return f"{sum(counts)} in {plural(len(counts), 'seed')}" if counts else "—"


def c_drop(cell: Cell) -> str:
    """Per seed: the lowest evaluation after `drop_after` env steps as a fraction of the running best then."""
    out = []
    for _, c, i in cell.purempo():
        after = c.drop_after if c.drop_after is not None else 500_000
        if i is None:
            continue
        best, lows = 0.0, []
        for s, r in zip(c.steps[:i + 1], c.returns[:i + 1]):
            best = max(best, r)
            if s >= after and best > 0:
                lows.append(r / best)
        out.append(f"{min(lows):.0%}" if lows else "—")
    return ", ".join(out) or "—"


def c_anchor(cell: Cell) -> str:
    """The published return the row's JSON names (gymnax_curves.py's `anchor`)."""
    anchors = [load(cell.root, n).get("anchor") for n in cell.row.purempo]
    return joined([a["source"] for a in anchors if a]) or "—"


def c_rate(cell: Cell) -> str:
    """Env steps per second over all seeds, after the first evaluation (gymnax_curves.py's `env_steps_per_s`)."""
    rates = [load(cell.root, n).get("env_steps_per_s") for n in cell.row.purempo]
    return joined([f"{r:,}" for r in rates if r]) or "—"


def c_data(cell: Cell, prefix: str) -> str:
    names = cell.row.purempo + cell.row.sac + cell.row.ppo
    return ", ".join(f"[{Path(n).name}]({prefix}/{n}.json)" for n in dict.fromkeys(names)) or "—"


# --------------------------------------------------------------------------------------- throughput, start-up

def entries(name: str, key: str):
    """Rows of one list in one JSON file: (file, entry) pairs."""
    return lambda root: [(name, e) for e in load(root, name).get(key) or []]


def estimate(name: str):
    return lambda root: [(name, load(root, name))]


def startup_arms(name: str):
    """(file, arm, {metric: median}, [first evaluation of each launch]) for every arm the file holds."""
    def rows(root: Path):
        d = load(root, name)
        summary = d.get("summary", {})
        arms = {}
        for key, value in summary.items():
            m = re.match(r"(.+?)_(first_training_step_s|first_eval_s|total_s)_median$", key)
            if m:
                arms.setdefault(m.group(1), {})[m.group(2)] = value
        for key, value in d.items():  # arms launched once, e.g. "no_cache": {first_eval_s: ...}
            if isinstance(value, dict) and "first_eval_s" in value and key not in arms:
                arms[key] = dict(value, launches=1)
        out = []
        for arm, figures in arms.items():
            launches = [l[arm]["first_eval_s"] for l in d.get("launches", []) if arm in l and "first_eval_s" in l[arm]]
            out.append((name, arm, figures, launches))
        return out
    return rows


def startup_notes(root: Path, name: str) -> List[str]:
    """The summary's figures that are not an arm's median, e.g. how much sooner a warm start evaluates."""
    summary = load(root, name).get("summary", {})
    return [f"`{k}`: {v}" for k, v in summary.items()
            if not re.match(r".+_(first_training_step_s|first_eval_s|total_s)_median$", k)]


# --------------------------------------------------------------------------------------------------- the specs

@dataclass
class Table:
    doc: str  # where the section lives, relative to the root
    columns: List[tuple]  # (header, function of a row)
    rows: object  # a list of Rows, or a function of the root giving the rows
    sources: Callable = None  # row -> the JSON files named by the row (for the commands listed below the table)


CURRENT = [
    ("task", c_task), ("env steps", c_env_steps), ("return, mean ± std over seeds", c_return),
    ("wall time", c_wall), ("machine", c_machine), ("Brax SAC", c_sac), ("Brax PPO", c_ppo),
]
LEARNING = [
    ("task", c_task), ("settings", c_settings), ("env steps", c_env_steps),
    ("return, mean ± std over seeds", c_return), ("per seed: best / final / worst after reaching the threshold", c_seeds),
    ("first reaching the threshold", c_reached), ("wall time", c_wall), ("machine", c_machine),
    ("Brax SAC, same env steps", c_sac),
]
STABILITY = [
    ("task", c_task), ("settings", c_settings), ("env steps", c_env_steps), ("first reaching the threshold", c_reached),
    ("evaluations below it later", c_below), ("per seed: best / final / worst after reaching it", c_seeds),
    ("lowest evaluation after 500k env steps ÷ running best", c_drop), ("wall time", c_wall), ("machine", c_machine),
]
GYMNAX = [
    ("task", c_task), ("settings", c_settings), ("env steps", c_env_steps),
    ("return, mean ± std over seeds", c_return), ("per seed: best / final / worst after reaching the target", c_seeds),
    ("first reaching the target", c_reached), ("published", c_anchor), ("wall time", c_wall),
    ("env steps/s", c_rate), ("machine", c_machine),
]
BUDGET = [
    ("task", c_task), ("settings", c_settings), ("purempo", c_return), ("at env steps", c_env_steps),
    ("Brax SAC", c_sac), ("Brax PPO", c_ppo), ("machine", c_machine),
]
THROUGHPUT = [
    ("env", lambda r: r[0].split("_", 1)[1]), ("envs", lambda r: f"{r[1]['num_envs']:,}"),
    ("updates / iteration", lambda r: r[1]["updates_per_iteration"]),
    ("train env steps/s", lambda r: f"{r[1]['train_env_steps_per_s']:,.0f}"),
    ("updates/s", lambda r: f"{r[1]['updates_per_s']:,.1f}"),
    ("random-action ceiling (env steps/s)", lambda r: f"{r[1]['ceiling_wrapper_env_steps_per_s']:,.0f}"),
    ("train ÷ ceiling", lambda r: f"{r[1]['ratio']:.3f}"),
]
IMPLS = [
    ("env", lambda r: r[0].split("_", 1)[1]), ("physics (`--impl`)", lambda r: r[1]["impl"]),
    ("envs", lambda r: r[1]["num_envs"]),
    ("random actions, env steps/s (purempo's env wrapper)", lambda r: f"{r[1]['ceiling_wrapper_env_steps_per_s']:,.0f}"),
    ("bare `vmap(env.step)`", lambda r: f"{r[1]['ceiling_bare_env_steps_per_s']:,.0f}"),
]
GPU_ESTIMATE = [
    ("env", lambda r: r[1]["env"]), ("envs", lambda r: f"{r[1]['config']['num_envs']:,}"),
    ("batch (sequences)", lambda r: f"{r[1]['config']['batch_size']:,}"),
    ("updates / iteration", lambda r: r[1]["config"]["updates_per_iteration"]),
    ("est. learner step (ms)", lambda r: f"{r[1]['programs']['learner_step']['estimate_h100_s'] * 1e3:.2f}"),
    ("est. updates/s", lambda r: f"{r[1]['estimate_h100']['updates_per_s']:,.0f}"),
    ("published simulation rate (env steps/s)", lambda r: f"{r[1]['published_simulation']['env_steps_per_s']:,.0f}"),
    ("est. training ÷ simulation", lambda r: f"{r[1]['estimate_h100']['ratio_to_published_simulation']:.2f}"),
]
HEAD_TO_HEAD = [
    ("trainer", lambda r: r[1]["trainer"]),
    ("training time to the threshold", lambda r: seconds_1(r[1].get("threshold_train_time_s"))),
    ("env steps to it", lambda r: steps(r[1].get("threshold_env_steps"))),
    ("final return", lambda r: f"{r[1]['final_return']:,.1f} ± {r[1]['final_return_std']:,.1f}"),
    ("env steps", lambda r: steps(r[1]["final_env_steps"])),
    ("env steps/s", lambda r: f"{r[1]['env_steps_per_s']:,.0f}"),
]
STARTUP = [
    ("start", lambda r: r[1].replace("_", " ") + (" (one launch)" if r[2].get("launches") == 1 else "")),
    ("launch → first training step", lambda r: seconds_1(r[2].get("first_training_step_s"))),
    ("launch → first evaluation", lambda r: seconds_1(r[2].get("first_eval_s"))),
    ("each launch's first evaluation", lambda r: ", ".join(f"{s:.1f}" for s in r[3]) or "—"),
    ("whole run", lambda r: seconds_1(r[2].get("total_s"))),
]


def seconds_1(s: Optional[float]) -> str:
    return "—" if s is None else f"{s:.1f} s"


M = 1_000_000
ONE_M = 983_040  # 24 evaluations of 40,960 env steps: the 491,520-step runs' points, continued
BRAX_ROWS = [
    Row("inverted_pendulum", ["stability_inverted_pendulum_issue39"], sac=["compare_inverted_pendulum"],
        ppo=["compare_inverted_pendulum"]),
    Row("halfcheetah", ["stability_halfcheetah"], no_brax="not run with this preset"),
    Row("hopper", ["gpu_sweep/stability_h200_hopper_alpha_gain0"]),
    Row("walker2d", ["walker2d_critic_lr_1e-3"],
        settings="preset (its ε_μ, ε_σ recorded per action dimension: 5e-3, 1e-5)"),
    Row("reacher"), Row("pusher"), Row("ant"), Row("humanoid"),
]
DMC_16 = "preset with 16 independent action samples (now 8 mirrored)"
DMC_ROWS = [
    Row("CartpoleSwingup", ["stability_CartpoleSwingup_1m_preset_seed0", "stability_CartpoleSwingup_1m_preset_seed1"],
        sac=["compare_CartpoleSwingup_sac_1m"], at=M, threshold=800, settings=DMC_16),
    Row("CheetahRun", ["stability_CheetahRun_preset_1m"], sac=["compare_CheetahRun_sac_1m"], at=ONE_M),
    Row("WalkerRun", ["stability_WalkerRun_preset_1m"], at=ONE_M),
    Row("WalkerWalk", ["stability_WalkerWalk_1m_normalized_eps_mean1.5e-2",
                       "stability_WalkerWalk_1m_normalized_eps_mean1.5e-2_seed1"],
        sac=["compare_WalkerWalk_sac_1m", "compare_WalkerWalk_sac_1m_seed1"], at=M, threshold=800, settings=DMC_16),
    Row("FingerSpin", ["stability_FingerSpin_preset_1m"], sac=["compare_FingerSpin_sac_1m"], at=ONE_M),
    Row("ReacherHard", ["stability_ReacherHard_1m_preset"], sac=["compare_ReacherHard_sac_1m"], at=M, threshold=800,
        settings=DMC_16),
    Row("HopperStand", ["stability_HopperStand_1m_preset"], sac=["compare_HopperStand_sac_1m"], at=M, threshold=800,
        settings=DMC_16),
]
GPU_ROWS = [
    Row("CheetahRun", ["gpu_dmc/stability_CheetahRun_gpu1024"], no_brax="not measured",
        settings="preset with 1,024 envs, batch 1,024, MJX (not `--scale gpu`)"),
    Row("WalkerWalk", ["gpu_dmc/stability_WalkerWalk_gpu1024"], no_brax="not measured",
        settings="preset with 1,024 envs, batch 1,024, MJX (not `--scale gpu`)"),
    Row("CheetahRun", ["stability_CheetahRun_gpu_u16_b256"], no_brax="not measured", threshold=600,
        settings="`--scale gpu` preset (1,024 envs, batch 256 × 8, an update per 16 env steps), run on a CPU"),
    Row("CheetahRun", ["stability_CheetahRun_gpu_u16_b64"], no_brax="not measured", threshold=600,
        settings="1,024 envs with the CPU preset's batch (64 × 8) and updates per env step, run on a CPU"),
    Row("CheetahRun", ["stability_CheetahRun_gpu_u16_b64_256envs"], no_brax="not measured", threshold=600,
        settings="256 envs with the CPU preset's batch (64 × 8) and updates per env step, run on a CPU"),
    Row("WalkerWalk", ["stability_WalkerWalk_gpu_u16_b64"], no_brax="not measured", threshold=800,
        settings="1,024 envs with the CPU preset's batch (64 × 8) and updates per env step, run on a CPU"),
    Row("CheetahRun", ["stability_CheetahRun_gpu_u64"], no_brax="not measured", threshold=600,
        settings="the GPU preset before (1,024 envs, batch 1,024 × 8, an update per 64 env steps), run on a CPU, "
                 "stopped at 246k"),
]
BUDGET_ROWS = [  # purempo and Brax SAC for the same training time, side by side on one machine
    Row("CartpoleSwingup", ["compare_CartpoleSwingup_600s_polyak_preset_purempo"],
        sac=["compare_CartpoleSwingup_600s_polyak_preset_sac"], settings="600 s of training"),
    Row("CheetahRun", ["compare_CheetahRun_purempo_session8"], sac=["compare_CheetahRun_sac_session8"],
        settings="600 s of training"),
    Row("WalkerWalk", ["compare_WalkerWalk_purempo_walker_override"], sac=["compare_WalkerWalk_sac_session7"],
        settings="600 s of training"),
    Row("FingerSpin", ["compare_FingerSpin"], sac=["compare_FingerSpin"], ppo=["compare_FingerSpin"],
        settings="600 s of training, one run of the three"),
    Row("ReacherHard", ["compare_ReacherHard_600s_purempo"], sac=["compare_ReacherHard_600s_sac"],
        settings="600 s of training"),
]
HALF_M = 491_520
SAMPLES_ROWS = [  # the DM Control preset's action samples, both settings on the same code (docs/journal.md §11)
    Row("CheetahRun", ["stability_CheetahRun_preset500k"], at=HALF_M,
        settings="16 independent action samples (the preset before)"),
    Row("CheetahRun", ["stability_CheetahRun_antithetic8_500k"], at=HALF_M, settings="8 mirrored action samples"),
    Row("WalkerWalk", ["stability_WalkerWalk_preset500k"], at=HALF_M,
        settings="16 independent action samples (the preset before)"),
    Row("WalkerWalk", ["stability_WalkerWalk_antithetic8_500k"], at=HALF_M, settings="8 mirrored action samples"),
]
_PRESET_CRITIC = "preset: layer-norm MLP (256, 256), scalar head"
_RESIDUAL_CRITIC = "residual trunk (width 256, 1 block), scalar head"
_CRITIC_SETTINGS = {  # results-file suffix -> what its critic was
    "antithetic8_500k": _PRESET_CRITIC, "preset_1m": _PRESET_CRITIC,
    "hl_gauss_500k": "HL-Gauss head, 101 bins, support ending at the value bounds",
    "hl_gauss_1m": "HL-Gauss head, 101 bins, support 4σ beyond the value bounds",
    "categorical_500k": "categorical head (distributional Retrace), 101 atoms",
    "residual256x1_500k": _RESIDUAL_CRITIC, "residual256x1_1m": _RESIDUAL_CRITIC,
}
_CRITIC_THRESHOLDS = {"CheetahRun": 300, "WalkerWalk": 600, "FingerSpin": 400, "WalkerRun": 300}
# The critic heads and trunks against the preset's, on the same code and seeds (docs/journal.md §13–§15).
CRITIC_ROWS = [
    Row(task, [f"stability_{task}_{run}"], at=ONE_M if run.endswith("_1m") else HALF_M,
        threshold=_CRITIC_THRESHOLDS[task], settings=_CRITIC_SETTINGS[run])
    for task, runs in (("CheetahRun", ("antithetic8_500k", "hl_gauss_500k", "categorical_500k", "residual256x1_500k")),
                       ("WalkerWalk", ("antithetic8_500k", "hl_gauss_500k", "residual256x1_500k")),
                       ("CheetahRun", ("preset_1m", "residual256x1_1m", "hl_gauss_1m")),
                       ("FingerSpin", ("preset_1m", "residual256x1_1m", "hl_gauss_1m")),
                       ("WalkerRun", ("preset_1m", "hl_gauss_1m")))
    for run in runs
]
NOT_BRAX = "no Brax trainer for gymnax envs"
GYMNAX_ROWS = [
    Row("CartPole-v1", ["gymnax_CartPole-v1"], no_brax=NOT_BRAX),
    Row("Acrobot-v1", ["gymnax_Acrobot-v1"], no_brax=NOT_BRAX),
    Row("Breakout-MinAtar", ["gymnax_Breakout-MinAtar_1m"], no_brax=NOT_BRAX),
    Row("Asterix-MinAtar", ["gymnax_Asterix-MinAtar_1m"], no_brax=NOT_BRAX),
    Row("Freeway-MinAtar", ["gymnax_Freeway-MinAtar_500k"], no_brax=NOT_BRAX),
    Row("SpaceInvaders-MinAtar", ["gymnax_SpaceInvaders-MinAtar_500k"], no_brax=NOT_BRAX),
]
GYMNAX_VARIANT_ROWS = [  # the same code, one setting changed, compared at the same env steps
    Row("Breakout-MinAtar", ["gymnax_Breakout-MinAtar_1m"], at=249_600, settings="preset (flattened images)"),
    Row("Breakout-MinAtar", ["gymnax_Breakout-MinAtar_conv_250k"], settings="preset with the conv torso"),
    Row("Breakout-MinAtar", ["gymnax_Breakout-MinAtar_speed_flatten"], settings="preset, 1 seed alone on a core"),
    Row("Breakout-MinAtar", ["gymnax_Breakout-MinAtar_speed_conv"], settings="conv torso, 1 seed alone on a core"),
    Row("Asterix-MinAtar", ["gymnax_Asterix-MinAtar_1m"], at=249_600, settings="preset"),
    Row("Asterix-MinAtar", ["gymnax_Asterix-MinAtar_floor0.02_250k"], settings="preset, min_action_prob 0.02"),
]
STABILITY_ROWS = [
    Row("inverted_pendulum", ["stability_inverted_pendulum_issue39"]),
    Row("inverted_pendulum", ["stability_inverted_pendulum_driver"]),
    Row("inverted_pendulum", ["stability_inverted_pendulum_replay_once"]),
    Row("halfcheetah", ["stability_halfcheetah"], threshold=8000),
    Row("hopper", ["gpu_sweep/stability_h200_hopper_alpha_gain0"]),
] + [Row(r.task, r.purempo, threshold=r.threshold) for r in DMC_ROWS]

RESULTS_MD = "benchmarks/RESULTS.md"
TABLES = {
    "current": Table("README.md", CURRENT, BRAX_ROWS + DMC_ROWS + GYMNAX_ROWS),
    "gymnax": Table(RESULTS_MD, GYMNAX, GYMNAX_ROWS),
    "gymnax-variants": Table(RESULTS_MD, GYMNAX, GYMNAX_VARIANT_ROWS),
    "brax": Table(RESULTS_MD, LEARNING, BRAX_ROWS),
    "brax-head-to-head": Table(RESULTS_MD, HEAD_TO_HEAD, entries("compare_inverted_pendulum", "results"),
                               sources=lambda r: [r[0]]),
    "dmc-cpu": Table(RESULTS_MD, LEARNING, DMC_ROWS),
    "dmc-cpu-600s": Table(RESULTS_MD, BUDGET, BUDGET_ROWS),
    "dmc-cpu-samples": Table(RESULTS_MD, LEARNING, SAMPLES_ROWS),
    "dmc-cpu-critics": Table(RESULTS_MD, LEARNING, CRITIC_ROWS),
    "dmc-gpu": Table(RESULTS_MD, LEARNING, GPU_ROWS),
    "stability": Table(RESULTS_MD, STABILITY, STABILITY_ROWS),
    "throughput": Table(RESULTS_MD, THROUGHPUT, lambda root: entries("throughput_inverted_pendulum", "num_envs_sweep")(
        root) + entries("throughput_CheetahRun", "num_envs_sweep")(root), sources=lambda r: [r[0]]),
    "physics": Table(RESULTS_MD, IMPLS, entries("throughput_CheetahRun", "playground_impls"), sources=lambda r: [r[0]]),
    "gpu-estimate": Table(RESULTS_MD, GPU_ESTIMATE, lambda root: [x for n in ("CheetahRun", "ant", "humanoid")
                                                                  for x in estimate(f"throughput_{n}_gpu_estimate")(root)],
                          sources=lambda r: [r[0]]),
    "startup": Table(RESULTS_MD, STARTUP, startup_arms("startup_inverted_pendulum"), sources=lambda r: [r[0]]),
}


# ---------------------------------------------------------------------------------------------- the formatter

def render(name: str, root: Path = ROOT) -> str:
    """The markdown of one generated section: the table, then the data files and the commands that wrote them."""
    table = TABLES[name]
    prefix = Path(os.path.relpath(RESULTS, Path(table.doc).parent)).as_posix()
    rows = table.rows(root) if callable(table.rows) else table.rows
    lines, files = [], []
    if rows and isinstance(rows[0], Row):
        cells = [Cell(r, root) for r in rows]
        columns = table.columns + [("data", lambda c: c_data(c, prefix))]
        body = [[str(f(c)) for _, f in columns] for c in cells]
        files = [n for r in rows for n in r.purempo + r.sac + r.ppo]
    else:
        columns = table.columns + [("data", lambda r: f"[{Path(r[0]).name}]({prefix}/{r[0]}.json)")]
        body = [[str(f(r)) for _, f in columns] for r in rows]
        files = [n for r in rows for n in table.sources(r)]
    lines.append("| " + " | ".join(h for h, _ in columns) + " |")
    lines.append("|" + "|".join("---" for _ in columns) + "|")
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in body]
    if name == "startup":
        lines += [""] + [f"- {note}" for note in startup_notes(root, "startup_inverted_pendulum")]
    if table.doc != "README.md":
        lines += ["", "Commands (each file's `command`):"]
        for n in dict.fromkeys(files):
            lines.append(f"- `{Path(n).name}`: `{load(root, n).get('command') or '(not recorded)'}`")
    return "\n".join(lines)


def section(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- report:{re.escape(name)}:start[^>]*-->\n)(.*?)(<!-- report:{re.escape(name)}:end -->)",
                      re.S)


def updated(root: Path = ROOT):
    """{doc: (old text, new text)} with every generated section rebuilt."""
    out = {}
    for name, table in TABLES.items():
        path = root / table.doc
        old, new = out.get(table.doc, (path.read_text(),) * 2)
        pattern = section(name)
        if not pattern.search(new):
            raise SystemExit(f"{table.doc}: no section markers for {name!r} "
                             f"(<!-- report:{name}:start --> ... <!-- report:{name}:end -->)")
        new = pattern.sub(lambda m: m.group(1) + render(name, root) + "\n" + m.group(3), new)
        out[table.doc] = (old, new)
    return out


def stale(root: Path = ROOT) -> List[str]:
    """'DOC: NAME' for every generated section whose committed text differs from what the JSON gives."""
    docs = updated(root)
    return [f"{t.doc}: {name}" for name, t in TABLES.items()
            if section(name).search(docs[t.doc][0]).group(2) != section(name).search(docs[t.doc][1]).group(2)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="rewrite the generated sections")
    mode.add_argument("--check", action="store_true", help="exit 1 if a generated section is stale")
    args = parser.parse_args(argv)
    if args.check:
        names = stale()
        for n in names:
            print(f"stale: {n} (run python benchmarks/report.py --write)", file=sys.stderr)
        return 1 if names else 0
    for doc, (old, new) in updated().items():
        if new != old:
            (ROOT / doc).write_text(new)
            print(f"wrote {doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
