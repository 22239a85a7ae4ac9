"""docs/cli.md is the current `--help` output of every command, and the tool that writes it reports drift."""

from purempo import cli_reference


def test_cli_reference_is_up_to_date():
    text = cli_reference.render()
    assert cli_reference.PATH.read_text() == text, (
        "docs/cli.md is out of date: run `python -m purempo.cli_reference --write`")
    assert text.startswith("# Command-line reference\n")
    for command in ("train", "eval", "render", "plot"):
        assert f"$ purempo {command} --help" in text
    assert "--resume" in text and "--episodes" in text and "--out" in text and "--merge" in text


def test_check_fails_on_a_stale_file_and_write_cures_it(tmp_path, monkeypatch):
    path = tmp_path / "docs" / "cli.md"
    monkeypatch.setattr(cli_reference, "PATH", path)
    monkeypatch.setattr(cli_reference, "render", lambda: "# Command-line reference\n\ncurrent\n")
    assert cli_reference.main(["--check"]) == 1  # missing
    path.parent.mkdir()
    path.write_text("# Command-line reference\n\nstale\n")
    assert cli_reference.main(["--check"]) == 1
    assert cli_reference.main(["--write"]) == 0
    assert path.read_text() == "# Command-line reference\n\ncurrent\n"
    assert cli_reference.main(["--check"]) == 0
    assert cli_reference.main([]) == 2
