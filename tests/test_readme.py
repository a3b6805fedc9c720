"""The README's promises that code can check: its two commands, its length, its settings."""

from __future__ import annotations

import re
from pathlib import Path

from wsgi_memopt import Settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
# A newcomer reads the whole README in a minute; depth belongs in docs/.
README_MAX_LINES = 180


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


def test_the_two_commands_come_before_anything_else() -> None:
    before_second = README.split(_commands()[1], 1)[0]
    assert "## " not in before_second, "a section comes before the README's two commands"


def test_readme_stays_short() -> None:
    assert len(README.splitlines()) <= README_MAX_LINES


def test_settings_the_readme_names_exist() -> None:
    section = README.split("## The five settings people change", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    named = [name for row in rows for name in re.findall(r"`([a-z_]+)`", row.split("|")[1])]
    assert len(rows) == 5
    assert named, "the settings table lost its setting names"
    for name in named:
        assert name in Settings.NAMES, f"the README names {name!r}, which is not a setting"


def test_readme_holds_no_benchmark_table() -> None:
    # Figures go stale: they live in docs/performance.md, under the command that prints them.
    assert "benchmark-table" not in README
    assert not re.search(r"\|\s*(meets|misses)\s*\|", README)
