"""The README's promises that code can check: its two commands and its settings table."""

from __future__ import annotations

import re
from pathlib import Path

from wsgi_memopt import Settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _commands() -> list[str]:
    return re.findall(r"```sh\n(.+?)\n```", README)


def test_first_command_installs_and_serves_the_demo() -> None:
    first = _commands()[0]
    assert "pip install" in first
    assert "serve --demo" in first


def test_ci_runs_exactly_the_readme_test_command() -> None:
    test_command = _commands()[1]
    assert "pytest" in test_command
    ci_lines = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert ci_lines[-1] == test_command


def test_settings_table_is_generated_from_the_settings_definition() -> None:
    match = re.search(
        r"<!-- settings-table:[^\n]*-->\n(.*?)\n<!-- end settings-table -->", README, re.S
    )
    assert match is not None, "the README lost its settings-table markers"
    assert match.group(1) == Settings.markdown_table(), (
        "README settings table drifted from Settings; regenerate it with Settings.markdown_table()"
    )


def test_every_setting_is_in_the_readme() -> None:
    for name in Settings.NAMES:
        assert f"`{name}`" in README
