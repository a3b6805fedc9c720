"""Tests of wsgi_memopt.cli.apps: what ``MODULE:APP`` may name, and each failure as one line."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.cli import one_error_line, run_cli

from wsgi_memopt.cli.apps import load_app
from wsgi_memopt.cli.common import UsageError


@pytest.fixture
def module(app_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.syspath_prepend(str(app_dir))
    yield "webapp"
    sys.modules.pop("webapp", None)


def _body(app: Any) -> bytes:
    chunks: Any = app({}, lambda status, headers, exc_info=None: None)
    return b"".join(chunks)


@pytest.mark.parametrize(
    ("expression", "body"),
    [
        ("app", b"hello #"),
        ("holder.app", b"hello #"),
        ("create_app()", b"hello #"),
        ("create_app('hi')", b"hi #"),
        ("create_app(greeting='hey')", b"hey #"),
        (" create_app ( 'spaced' ) ", b"spaced #"),
    ],
)
def test_load_app_expressions(module: str, expression: str, body: bytes) -> None:
    assert _body(load_app(f"{module}:{expression}")).startswith(body)


def test_load_app_module_alone_finds_app(module: str) -> None:
    assert _body(load_app(module)).startswith(b"hello #")


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("webapp.py:app", "give a module name, not a file, e.g. 'webapp'"),
        ("apps/webapp:app", "give a module name, not a file, e.g. 'apps.webapp'"),
        (":app", "expected MODULE:APP"),
        ("webapp:", "the APP after ':' is missing"),
        ("webapp:app[0]", "APP must be a name, a dotted path or a factory call"),
        ("webapp:create_app(**{})", "APP must be a name"),
        ("webapp:value()", "is an int, not a factory to call"),
        ("webapp:app()", "calling webapp:app() failed: TypeError"),
        ("webapp:holder.missing", "webapp.holder has no attribute 'missing'"),
    ],
)
def test_load_app_errors(module: str, target: str, message: str) -> None:
    with pytest.raises(UsageError) as info:
        load_app(target)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("raise RuntimeError('boom')\n", "RuntimeError: boom (apps/broken.py:1)"),
        ("import no_such_dependency_xyz\n", "No module named 'no_such_dependency_xyz'"),
        ("def broken(:\n", "SyntaxError"),
    ],
    ids=["raises", "missing-dependency", "syntax-error"],
)
def test_an_app_module_that_fails_to_import_is_one_line(
    app_dir: Path, source: str, expected: str
) -> None:
    (app_dir / "broken.py").write_text(source)
    result = run_cli("serve", "broken:app", app_dir=app_dir)
    assert result.returncode == 2
    line = one_error_line(result)
    assert line.startswith("wsgi-memopt: error: importing 'broken' failed: ")
    assert expected in line
