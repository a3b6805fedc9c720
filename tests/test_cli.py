"""Tests of wsgi_memopt.cli's entry point: the commands, help, version, and every bad input
reported as one ``wsgi-memopt: error:`` line with exit status 2, through real processes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers.cli import one_error_line, run_cli

from wsgi_memopt.cli import main


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["serve", "no_such_module_xyz:app"], "no module named 'no_such_module_xyz'"),
        (["serve", "webapp:ap"], "module 'webapp' has no attribute 'ap'; did you mean 'app'?"),
        (["serve", "webapp:holder.nope"], "webapp.holder has no attribute 'nope'"),
        (["serve", "webapp:value"], "webapp:value is not a WSGI application"),
        (["serve", "webapp:create_app"], "call it: 'webapp:create_app()'"),
        (["serve", "webapp:create_app(x)"], "literal arguments"),
        (["serve", "--demo", "--set", "cache_max_mb=-1"], "cache_max_mb: '-1' is not allowed"),
        (
            ["serve", "--demo", "--set", "nosuch=1"],
            "setting nosuch (from --set nosuch=1): '1' is not allowed; there is no such setting",
        ),
        (["serve", "--demo", "--set", "cache_max_mbb=1"], "did you mean 'cache_max_mb'?"),
        (["serve", "--demo", "--set", "cache_max_mb"], "--set expects NAME=VALUE"),
        (["serve", "--demo", "--port", "http"], "argument --port"),
        (["serve"], "MODULE:APP or --demo"),
        (["serve", "--demo", "webapp:app"], "MODULE:APP or --demo"),
        (["settings", "--set", "cache_ttl_s=soon"], "cache_ttl_s: 'soon' is not allowed"),
        (["bogus"], "invalid choice: 'bogus'"),
        ([], "choose a command"),
    ],
    ids=[
        "unknown-module",
        "missing-attribute",
        "missing-dotted-attribute",
        "not-callable",
        "bare-factory",
        "non-literal-argument",
        "bad-value",
        "unknown-setting",
        "misspelt-setting",
        "set-without-equals",
        "bad-port",
        "no-target",
        "target-and-demo",
        "settings-bad-value",
        "unknown-command",
        "no-command",
    ],
)
def test_bad_input_is_one_line_and_status_2(app_dir: Path, args: list[str], expected: str) -> None:
    result = run_cli(*args, app_dir=app_dir)
    assert result.returncode == 2
    assert expected in one_error_line(result)


@pytest.mark.parametrize(
    "command", [[], ["serve"], ["settings"], ["status"]], ids=["top", "serve", "settings", "status"]
)
def test_help_has_a_description_and_examples(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: wsgi-memopt {' '.join(command)}".rstrip())
    if command:
        assert "examples:\n  wsgi-memopt " + command[0] in out


def test_top_level_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^    serve +serve a WSGI app", out, re.M)
    assert re.search(r"^    settings +print every effective setting", out, re.M)
    assert re.search(r"^    status +print a running server's", out, re.M)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert re.fullmatch(r"wsgi-memopt \d+\.\d+\.\d+\n", capsys.readouterr().out)
