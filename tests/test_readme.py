"""The README's command-line reference is the current `--help` output of every command."""

from purempo import cli_reference


def test_readme_cli_reference_is_up_to_date():
    text = cli_reference.README.read_text()
    section = cli_reference.render()
    assert cli_reference._replace_section(text, section) == text, (
        "README's CLI reference is out of date: run `python -m purempo.cli_reference --write`")
    for command in ("train", "eval", "render", "plot"):
        assert f"$ purempo {command} --help" in section
    assert "--resume" in section and "--episodes" in section and "--out" in section and "--merge" in section
