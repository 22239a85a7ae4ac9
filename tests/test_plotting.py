"""Plotting: run loading, seed-pooled curves against hand-computed numpy statistics, and the drawn figure."""

import json
import math
import warnings

import matplotlib
import matplotlib.image
import numpy as np
import pytest

from purempo.plotting import DPI, FIGSIZE, PlotError, Run, _figure, curve, load_run, plot_runs


def write_run(path, per_seed, env="inverted_pendulum", steps_per_eval=1000, extra=None, config=True):
    """Write a run directory: per_seed[t] lists eval_return per seed at eval t+1; extra[name][t] more metrics."""
    path.mkdir(parents=True, exist_ok=True)
    if config:
        record = {"env": env, "total_steps": steps_per_eval * len(per_seed), "num_seeds": len(per_seed[0]), "seed": 0}
        (path / "config.json").write_text(json.dumps(record))
    lines = []
    for t, returns in enumerate(per_seed):
        row = {"eval": t + 1, "env_steps": steps_per_eval * (t + 1), "wall_time_s": 2.5 * (t + 1),
               "eval_return": float(np.mean(returns)), "eval_return_per_seed": list(returns)}
        for name, values in (extra or {}).items():
            row[name] = values[t]
        lines.append(json.dumps(row))
    (path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return path


def random_returns(rng, evals, seeds):
    return rng.normal(100.0, 30.0, size=(evals, seeds)).round(3).tolist()


# --- load_run ---------------------------------------------------------------------------------------------------

def test_load_run_reads_config_and_keeps_last_duplicate_sorted(tmp_path):
    run_dir = tmp_path / "my-run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps({"env": "ant", "num_envs": 256}))
    rows = [{"eval": 2, "env_steps": 20, "eval_return": 1.0},
            {"eval": 1, "env_steps": 10, "eval_return": 2.0},
            {"eval": 2, "env_steps": 20, "eval_return": 3.0},  # resumed run re-logged eval 2: this one wins
            {"eval": 3, "env_steps": 30, "eval_return": 4.0}]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    run = load_run(str(run_dir))
    assert isinstance(run, Run)
    assert run.name == "my-run" and run.env == "ant" and run.config == {"env": "ant", "num_envs": 256}
    assert [row["eval"] for row in run.rows] == [1, 2, 3]
    assert [row["eval_return"] for row in run.rows] == [2.0, 3.0, 4.0]


def test_load_run_without_config_has_unknown_env(tmp_path):
    run = load_run(write_run(tmp_path / "r", [[1.0]], config=False))
    assert run.env == "unknown" and run.config == {} and len(run.rows) == 1


def test_load_run_missing_metrics_raises(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(PlotError, match="no run in .*empty: metrics.jsonl missing"):
        load_run(tmp_path / "empty")
    with pytest.raises(PlotError, match="metrics.jsonl missing"):
        load_run(tmp_path / "does-not-exist")


def test_blank_lines_and_truncated_final_line_are_ignored(tmp_path):
    run_dir = write_run(tmp_path / "r", [[1.0], [2.0]])
    text = (run_dir / "metrics.jsonl").read_text()
    (run_dir / "metrics.jsonl").write_text("\n" + text.replace("\n", "\n\n") + '{"eval": 3, "env_steps": 30')
    assert [row["eval_return"] for row in load_run(run_dir).rows] == [1.0, 2.0]


def test_malformed_middle_line_raises_with_its_line_number(tmp_path):
    run_dir = write_run(tmp_path / "r", [[1.0], [2.0], [3.0]])
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    lines[1] = lines[1][:-5]  # line 2 of 3 cut short
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(PlotError, match=r"metrics.jsonl line 2 is not JSON"):
        load_run(run_dir)


def test_rows_without_eval_index_and_bad_config_raise(tmp_path):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text('{"env_steps": 10}\n{"eval": 2}\n')
    with pytest.raises(PlotError, match="line 1 has no integer 'eval' index"):
        load_run(run_dir)
    (run_dir / "metrics.jsonl").write_text('{"eval": 1}\n')
    (run_dir / "config.json").write_text("{not json")
    with pytest.raises(PlotError, match="config.json is not JSON"):
        load_run(run_dir)


def test_nan_in_metrics_is_read(tmp_path):
    run_dir = write_run(tmp_path / "r", [[1.0], [2.0]], extra={"q_mean": [math.nan, 0.5]})
    assert "NaN" in (run_dir / "metrics.jsonl").read_text()  # json writes NaN as a bare token
    values = [row["q_mean"] for row in load_run(run_dir).rows]
    assert math.isnan(values[0]) and values[1] == 0.5


# --- curve ------------------------------------------------------------------------------------------------------

def test_curve_eval_return_is_numpy_mean_and_std_over_seeds(tmp_path):
    returns = random_returns(np.random.default_rng(0), evals=5, seeds=3)
    run = load_run(write_run(tmp_path / "r", returns, steps_per_eval=512))
    xs, mean, std, num_seeds = curve(run)
    assert num_seeds == 3
    np.testing.assert_array_equal(xs, [512, 1024, 1536, 2048, 2560])
    np.testing.assert_allclose(mean, [np.mean(r) for r in returns], rtol=1e-12)
    np.testing.assert_allclose(std, [np.std(r) for r in returns], rtol=1e-12)  # population std (ddof=0)
    assert not np.allclose(std, [np.std(r, ddof=1) for r in returns])


def test_curve_pools_seeds_of_two_runs(tmp_path):
    rng = np.random.default_rng(1)
    a, b = random_returns(rng, 4, 2), random_returns(rng, 4, 2)
    runs = [load_run(write_run(tmp_path / "a", a, steps_per_eval=1000)),
            load_run(write_run(tmp_path / "b", b, steps_per_eval=1100))]
    xs, mean, std, num_seeds = curve(runs)
    pooled = np.concatenate([np.asarray(a), np.asarray(b)], axis=1)  # [T, 4]
    assert num_seeds == 4
    np.testing.assert_allclose(mean, pooled.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(std, pooled.std(axis=1), rtol=1e-12)
    np.testing.assert_allclose(xs, [1050.0 * t for t in range(1, 5)])


def test_curve_x_is_the_mean_over_contributing_seeds(tmp_path):
    runs = [load_run(write_run(tmp_path / "a", [[1.0, 2.0, 3.0]], steps_per_eval=100)),
            load_run(write_run(tmp_path / "b", [[4.0]], steps_per_eval=200))]
    xs, mean, _, num_seeds = curve(runs)
    assert num_seeds == 4
    np.testing.assert_allclose(xs, [(3 * 100 + 200) / 4])
    np.testing.assert_allclose(mean, [2.5])


def test_curve_truncates_to_the_shortest_run(tmp_path):
    rng = np.random.default_rng(2)
    long, short = random_returns(rng, 6, 2), random_returns(rng, 3, 2)
    runs = [load_run(write_run(tmp_path / "long", long)), load_run(write_run(tmp_path / "short", short))]
    xs, mean, std, _ = curve(runs)
    assert xs.shape == mean.shape == std.shape == (3,)
    pooled = np.concatenate([np.asarray(long)[:3], np.asarray(short)], axis=1)
    np.testing.assert_allclose(mean, pooled.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(std, pooled.std(axis=1), rtol=1e-12)
    assert len(curve(runs[0])[0]) == 6  # alone, the long run keeps all its points


def test_curve_other_metric_is_one_curve_per_run(tmp_path):
    q_a, q_b = [1.0, 2.0, 3.0], [3.0, 6.0, 7.0]
    runs = [load_run(write_run(tmp_path / "a", [[0.0] * 4] * 3, extra={"q_mean": q_a})),
            load_run(write_run(tmp_path / "b", [[0.0] * 2] * 3, extra={"q_mean": q_b}))]
    xs, mean, std, num_seeds = curve(runs, metric="q_mean")
    assert num_seeds == 2
    np.testing.assert_allclose(mean, np.mean([q_a, q_b], axis=0))
    np.testing.assert_allclose(std, np.std([q_a, q_b], axis=0))
    _, mean_one, std_one, n_one = curve(runs[0], metric="q_mean")
    assert n_one == 1
    np.testing.assert_allclose(mean_one, q_a)
    np.testing.assert_array_equal(std_one, 0.0)


def test_curve_x_axes(tmp_path):
    run = load_run(write_run(tmp_path / "r", [[1.0], [2.0], [3.0]]))
    np.testing.assert_array_equal(curve(run, x="eval")[0], [1, 2, 3])
    np.testing.assert_allclose(curve(run, x="wall_time_s")[0], [2.5, 5.0, 7.5])


def test_curve_nan_learner_metrics_without_warnings(tmp_path):
    runs = [load_run(write_run(tmp_path / "a", [[0.0]] * 3, extra={"critic_loss": [math.nan, math.nan, 1.0]})),
            load_run(write_run(tmp_path / "b", [[0.0]] * 3, extra={"critic_loss": [math.nan, 2.0, 3.0]}))]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a RuntimeWarning (mean of empty slice, ...) would fail the test
        _, mean, std, num_seeds = curve(runs, metric="critic_loss")
    assert num_seeds == 2
    assert np.isnan(mean[0]) and np.isnan(std[0])  # no run has learned yet
    assert mean[1] == 2.0 and std[1] == 0.0  # only run b's value counts
    assert mean[2] == 2.0 and std[2] == 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numpy's own nan-functions warn on the all-NaN column
        values = np.array([[math.nan, math.nan, 1.0], [math.nan, 2.0, 3.0]])
        np.testing.assert_array_equal(mean, np.nanmean(values, axis=0))
        np.testing.assert_array_equal(std, np.nanstd(values, axis=0))


def test_curve_unknown_metric_and_x_list_allowed_names(tmp_path):
    run = load_run(write_run(tmp_path / "r", [[1.0]], extra={"kl_mean": [0.1]}))
    with pytest.raises(PlotError) as error:
        curve(run, metric="foo")
    message = str(error.value)
    assert "unknown metric 'foo'" in message and str(run.path) in message and "\n" not in message
    available = message.split("available: ")[1].split(", ")
    assert available == ["env_steps", "eval", "eval_return", "kl_mean", "wall_time_s"]
    with pytest.raises(PlotError, match=r"^unknown x 'bar'; allowed: env_steps, wall_time_s, eval$"):
        curve(run, x="bar")


def test_curve_errors_for_empty_runs(tmp_path):
    run_dir = tmp_path / "fresh"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text("")
    with pytest.raises(PlotError, match="fresh has no evaluations yet"):
        curve(load_run(run_dir))
    with pytest.raises(PlotError, match="no runs given"):
        curve([])


def test_curve_rejects_changing_seed_count(tmp_path):
    run = load_run(write_run(tmp_path / "r", [[1.0, 2.0], [3.0]]))
    with pytest.raises(PlotError, match="eval_return_per_seed"):
        curve(run)


# --- plotting ---------------------------------------------------------------------------------------------------

def two_runs(tmp_path):
    rng = np.random.default_rng(3)
    return [write_run(tmp_path / "a", random_returns(rng, 5, 2), env="ant"),
            write_run(tmp_path / "b", random_returns(rng, 4, 2), env="hopper")]


def test_figure_lines_are_the_curves(tmp_path):
    runs = [load_run(path) for path in two_runs(tmp_path)]
    figure = _figure(runs)
    ax = figure.axes[0]
    assert len(ax.lines) == 2 and len(ax.collections) == 2  # a line and a ±std band per run
    for line, band, run in zip(ax.lines, ax.collections, runs):
        xs, mean, std, _ = curve(run)
        np.testing.assert_array_equal(line.get_xdata(), xs)
        np.testing.assert_array_equal(line.get_ydata(), mean)
        band_y = band.get_paths()[0].vertices[:, 1]
        np.testing.assert_allclose([band_y.min(), band_y.max()], [(mean - std).min(), (mean + std).max()])
    assert [line.get_label() for line in ax.lines] == ["a (ant, 2 seeds)", "b (hopper, 2 seeds)"]
    assert ax.get_xlabel() == "env steps" and ax.get_ylabel() == "eval_return"
    assert ax.get_title() == "ant, hopper"
    assert [text.get_text() for text in ax.get_legend().get_texts()] == ["a (ant, 2 seeds)", "b (hopper, 2 seeds)"]


def test_figure_merge_pools_into_one_line(tmp_path):
    runs = [load_run(path) for path in two_runs(tmp_path)]
    ax = _figure(runs, metric="eval_return", x="wall_time_s", merge=True, title="pooled").axes[0]
    xs, mean, _, num_seeds = curve(runs, x="wall_time_s")
    assert num_seeds == 4 and len(ax.lines) == 1 and len(xs) == 4
    np.testing.assert_array_equal(ax.lines[0].get_xdata(), xs)
    np.testing.assert_array_equal(ax.lines[0].get_ydata(), mean)
    assert ax.lines[0].get_label() == "mean of 4 seeds"
    assert ax.get_xlabel() == "wall time (s)" and ax.get_title() == "pooled"


def test_plot_runs_writes_png_of_the_figure_size(tmp_path):
    backend = dict.__getitem__(matplotlib.rcParams, "backend")
    out = tmp_path / "new" / "dir" / "curve.png"
    assert plot_runs(two_runs(tmp_path), out, x="eval") == out
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width = matplotlib.image.imread(out).shape[:2]
    assert (width, height) == (round(FIGSIZE[0] * DPI), round(FIGSIZE[1] * DPI))
    assert dict.__getitem__(matplotlib.rcParams, "backend") == backend  # the global backend is untouched


def test_plot_runs_vector_formats_and_single_dir(tmp_path):
    run_dir = write_run(tmp_path / "r", [[1.0, 2.0], [2.0, 4.0]])
    assert plot_runs(run_dir, tmp_path / "c.pdf").read_bytes()[:5] == b"%PDF-"
    assert b"<svg" in plot_runs([run_dir], tmp_path / "c.svg", merge=True).read_bytes()[:1000]


def test_plot_runs_errors(tmp_path):
    run_dir = write_run(tmp_path / "r", [[1.0]])
    with pytest.raises(PlotError, match=r"allowed suffixes: \.png, \.pdf, \.svg"):
        plot_runs([run_dir], tmp_path / "out" / "curve.jpg")
    with pytest.raises(PlotError, match="unknown metric 'nope'"):
        plot_runs([run_dir], tmp_path / "out" / "curve.png", metric="nope")
    with pytest.raises(PlotError, match="metrics.jsonl missing"):
        plot_runs([tmp_path / "missing"], tmp_path / "out" / "curve.png")
    assert not (tmp_path / "out").exists()  # nothing written when plotting fails
