"""The ``sluicegate`` command as a person at a terminal meets it: its help and its errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sluicegate._cli import main

#: reStructuredText and Sphinx markup that has no business in a terminal.
MARKUP = re.compile(r"``|:(class|func|data|meth|mod|attr):|\*\*|\.\. ")


@pytest.mark.parametrize("argv", [["--help"], ["serve", "--help"], ["quickstart", "--help"]])
def test_help_is_plain_text(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Regression: the help was the module docstring, with its double backquotes."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: sluicegate")
    assert not MARKUP.search(out), out


def test_help_names_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "quickstart" in out and "serve" in out


@pytest.mark.parametrize("command", ["serve", "quickstart"])
def test_a_config_error_is_one_line_naming_the_setting(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Regression: it read ``sluicegate: 500 general_settings...`` (a ConfigError's HTTP
    status, which means nothing at a terminal)."""
    config = tmp_path / "bad.yaml"
    config.write_text("general_settings:\n  max_request_body_bytes: 10\n")
    assert main([command, "--config", str(config)]) == 1
    captured = capsys.readouterr()
    assert captured.err == (
        "sluicegate: general_settings.max_request_body_bytes: must be at least 1024\n"
    )
    assert captured.out == ""


def test_serving_without_a_master_key_says_which_setting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "open.yaml"
    config.write_text("model_list: []\n")
    assert main(["serve", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("sluicegate: general_settings.master_key: a master key is required")
    assert err.count("\n") == 1


def test_an_unreadable_config_names_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.yaml"
    assert main(["serve", "--config", str(missing)]) == 1
    assert capsys.readouterr().err.startswith(f"sluicegate: {missing}: cannot read configuration")


def test_an_error_of_a_request_keeps_its_status(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["quickstart", "--model", "missing"]) == 1
    assert capsys.readouterr().err.startswith("sluicegate: 404 ")
