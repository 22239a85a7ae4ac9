"""benchmarks/report.py: the committed results tables are what the committed JSON files give, and the
arithmetic of a row (seeds pooled over files, mean ± sample std, the evaluation at or after a step, the worst
evaluation after first reaching the threshold) on hand-made files."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import report  # noqa: E402


def test_committed_tables_match_the_json_files():
    stale = report.stale()
    assert not stale, f"stale generated sections {stale}: run python benchmarks/report.py --write"


def _write(root, name, data):
    path = root / report.RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def _stability(steps, returns_per_seed, threshold=None):
    return dict(machine="CPU (cpu); AMD EPYC; 1 device(s); 2 cores", command="python benchmarks/stability.py",
                env_steps=steps, threshold=threshold, drop_after=500_000, wall_time_s=99.0,
                chunks=[dict(wall_time_s=10.0 * (i + 1)) for i in range(len(steps))],
                runs=[dict(eval_return=r) for r in returns_per_seed])


def _compare(trainer, steps, returns):
    curve = [dict(env_steps=s, eval_return=r, wall_time_s=float(i)) for i, (s, r) in enumerate(zip(steps, returns))]
    return dict(machine="CPU (cpu); AMD EPYC; 1 device(s); 1 cores", command="python benchmarks/compare.py",
                results=[dict(trainer=trainer, curve=curve)])


def test_a_row_pools_seeds_over_files_and_reads_each_at_the_first_evaluation_after_the_step(tmp_path):
    steps = [400_000, 800_000, 1_200_000]
    _write(tmp_path, "a", _stability(steps, [[100.0, 900.0, 0.0], [200.0, 1000.0, 0.0]], threshold=850))
    _write(tmp_path, "b", _stability(steps, [[300.0, 950.0, 0.0]]))
    _write(tmp_path, "sac", _compare("brax-sac", [0, 990_000, 1_011_712], [0.0, 1.0, 700.0]))
    cell = report.Cell(report.Row("T", ["a", "b"], sac=["sac"], at=600_000), tmp_path)
    assert report.c_return(cell) == "950.0 ± 50.0 (3 seeds)"  # 900, 1000, 950: sample std 50
    assert report.c_env_steps(cell) == "800k"
    assert report.c_wall(cell) == "20 s (2 seeds in one program) / 20 s"
    assert report.c_machine(cell) == "CPU, 2 cores"
    assert report.c_sac(cell) == "1.0 at 990k (1 seed)"
    whole = report.Cell(report.Row("T", ["a"], sac=["sac"], at=1_000_000), tmp_path)
    assert report.c_return(whole) == "0.0 ± 0.0 (2 seeds)"
    assert report.c_sac(whole) == "700.0 at 1.01M (1 seed)"
    assert report.c_return(report.Cell(report.Row("T", ["a"], at=2_000_000), tmp_path)) == "did not reach 2.00M"
    assert report.c_return(report.Cell(report.Row("T"), tmp_path)) == "no run of the current preset"


def test_best_final_and_worst_after_first_reaching_the_threshold(tmp_path):
    steps = [100_000, 200_000, 300_000, 400_000, 600_000]
    _write(tmp_path, "s", _stability(steps, [[990.0, 100.0, 960.0, 700.0, 955.0],
                                             [50.0, 60.0, 70.0, 80.0, 90.0]], threshold=950))
    cell = report.Cell(report.Row("T", ["s"]), tmp_path)
    # seed 0 reaches 950 at once, then dips to 100 and 700; seed 1 never reaches it
    assert report.c_seeds(cell) == "990.0 / 955.0 / 100.0; 90.0 / 90.0 / —"
    assert report.c_reached(cell) == "100k, never (≥ 950)"
    assert report.c_below(cell) == "2 in 2 seeds"
    assert report.c_drop(cell) == "96%, 100%"  # after 500k: 955 / 990, 90 / 90
    assert report.c_seeds(report.Cell(report.Row("T", ["s"], threshold=10), tmp_path)).endswith("/ 50.0")


def test_check_names_a_stale_section_and_write_fixes_it(tmp_path, monkeypatch):
    _write(tmp_path, "s", _stability([1000], [[5.0], [7.0]]))
    (tmp_path / "doc.md").write_text("intro\n<!-- report:t:start -->\nold table\n<!-- report:t:end -->\nend\n")
    monkeypatch.setattr(report, "TABLES", {"t": report.Table("doc.md", report.CURRENT, [report.Row("T", ["s"])])})
    assert report.stale(tmp_path) == ["doc.md: t"]
    (old, new), = report.updated(tmp_path).values()
    assert "6.0 ± 1.4 (2 seeds)" in new and new.startswith("intro\n") and new.endswith("end\n")
    (tmp_path / "doc.md").write_text(new)
    assert report.stale(tmp_path) == []


def test_startup_table_reads_every_arm_the_file_holds(tmp_path):
    _write(tmp_path, "startup_inverted_pendulum", dict(
        command="python benchmarks/startup.py",
        no_cache=dict(first_training_step_s=30.0, first_eval_s=33.0, total_s=40.0),
        launches=[dict(cold=dict(first_eval_s=31.0), warm=dict(first_eval_s=9.0), program_cache=dict(first_eval_s=3.0))],
        summary=dict(cold_first_eval_s_median=31.0, warm_first_eval_s_median=9.0,
                     program_cache_first_eval_s_median=3.0, first_eval_sooner_when_warm_s=22.0)))
    rows = report.startup_arms("startup_inverted_pendulum")(tmp_path)
    assert [r[1] for r in rows] == ["cold", "warm", "program_cache", "no_cache"]
    assert report.startup_notes(tmp_path, "startup_inverted_pendulum") == ["`first_eval_sooner_when_warm_s`: 22.0"]
    table = report.render("startup", tmp_path)
    assert "| program cache | — | 3.0 s | 3.0 | — |" in table
    assert "| no cache (one launch) | 30.0 s | 33.0 s | — | 40.0 s |" in table


@pytest.mark.parametrize("description, short", [
    ("CPU (cpu); AMD EPYC; 1 device(s); 1 cores", "CPU, 1 core"),
    ("GPU (NVIDIA H200); Intel(R) Xeon(R) Processor; 1 device(s); 16 cores", "H200"),
])
def test_machine(description, short):
    assert report.machine(description) == short
