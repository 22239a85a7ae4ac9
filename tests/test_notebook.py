"""The quickstart notebook runs end to end (its tiny CI configuration) and shows what it says it shows."""

import math
import pathlib
import re

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = pathlib.Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"
TINY_EPISODE_LENGTH = 50  # the notebook's tiny config; inverted_pendulum pays 1 per step alive


@pytest.fixture(scope="module")
def executed():
    """The notebook executed in memory (the file on disk is left as it is, without outputs)."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    with pytest.MonkeyPatch.context() as mp:  # the kernel inherits this process's environment
        mp.setenv("PUREMPO_QUICKSTART_TINY", "1")
        mp.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend makes the PNG outputs
        client = nbclient.NotebookClient(notebook, kernel_name="python3", timeout=600,
                                         resources={"metadata": {"path": str(NOTEBOOK.parent)}})
        client.execute()
    return notebook


def _outputs(notebook):
    return [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.get("outputs", [])]


def _stdout(notebook):
    return "".join(out.get("text", "") for out in _outputs(notebook) if out.output_type == "stream")


def _number(pattern, text):
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not in the notebook's output:\n{text}"
    return float(match.group(1))


def test_stored_notebook_has_no_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


def test_every_cell_runs_without_error(executed):
    assert not [out for out in _outputs(executed) if out.output_type == "error"]
    assert all(cell.execution_count is not None for cell in executed.cells if cell.cell_type == "code")
    assert "env steps=" in _stdout(executed) and f"episode length={TINY_EPISODE_LENGTH}" in _stdout(executed)


def test_reported_returns_are_possible_inverted_pendulum_returns(executed):
    text = _stdout(executed)
    final = _number(r"final eval return: (\S+)", text)
    assert math.isfinite(final) and 0.0 <= final <= TINY_EPISODE_LENGTH
    stochastic = _number(r"final stochastic eval return: (\S+)", text)
    assert math.isfinite(stochastic) and 0.0 <= stochastic <= TINY_EPISODE_LENGTH
    per_seed = re.search(r"2 seeds in \S+ s; final returns per seed: \[([^\]]*)\]", text)
    assert per_seed, text
    seeds = [float(x) for x in per_seed.group(1).split()]
    assert len(seeds) == 2 and all(0.0 <= r <= TINY_EPISODE_LENGTH for r in seeds)
    sweep = [float(x) for x in re.findall(r"policy_lr=\S+: final eval return (\S+)", text)]
    assert len(sweep) == 3 and all(0.0 <= r <= TINY_EPISODE_LENGTH for r in sweep)
    rendered = _number(r"rendered episode return: (\S+)", text)
    # One reward of 1 per step survived, the step that drops the pole included: a whole number of steps.
    assert rendered == round(rendered) and 1 <= rendered <= TINY_EPISODE_LENGTH


def test_plots_and_the_render_are_displayed(executed):
    outputs = _outputs(executed)
    pngs = [out for out in outputs if "image/png" in out.get("data", {})]
    assert len(pngs) == 3  # one seed, the seed band, the sweep
    pages = [out.data["text/html"] for out in outputs if "text/html" in out.get("data", {})]
    assert len(pages) == 1 and 'id="brax-viewer"' in pages[0] and "var system = " in pages[0]


def test_the_driver_run_writes_a_run_directory_and_matches_the_vmapped_seeds(executed):
    """Section 5's `driver.train` with section 2's seeds: a complete run directory, and the same evaluation
    returns as the fused `jax.vmap(make_train(config))` (README: chunked and fused runs return alike)."""
    text = _stdout(executed)
    run = re.search(r"driver run in \S+: (\d+) evaluations, files \[([^\]]*)\]", text)
    assert run, text
    assert int(run.group(1)) == 2  # the tiny config's num_evals
    assert {"'config.json'", "'metrics.jsonl'", "'checkpoints'"} <= set(run.group(2).split(", "))
    both = re.search(r"final returns per seed: \[([^\]]*)\]; section 2's: \[([^\]]*)\]", text)
    assert both, text
    driver_returns, vmapped_returns = ([float(x) for x in group.split()] for group in both.groups())
    assert len(driver_returns) == 2 and driver_returns == vmapped_returns
