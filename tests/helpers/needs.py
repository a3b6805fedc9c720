"""What a test needs from the machine: it skips where that is missing, but fails under CI
(``CI=true``), which provides all of it."""

from __future__ import annotations

import importlib.util
import os
import shutil
from typing import NoReturn

import pytest

from wsgi_memopt.memory.cleanups import malloc_trim_available


def unavailable(missing: str, provided_by: str) -> NoReturn:
    """Skip the test, saying ``missing``; under CI, where ``provided_by``, fail instead."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{missing}; {provided_by}")
    pytest.skip(missing)


def require_module(name: str) -> None:
    """Skip when ``name`` cannot be imported (the test extra and ``.ci/run`` install it)."""
    if importlib.util.find_spec(name) is None:
        unavailable(f"{name} is not installed", ".ci/run must install it")


def require_peer(executable: str) -> str:
    """The path of a real peer program; skip without it (``.ci/run`` installs it)."""
    path = shutil.which(executable)
    if path is None:
        unavailable(f"{executable} is not installed", ".ci/run must install it")
    return path


def require_malloc_trim() -> None:
    """Skip where glibc's ``malloc_trim`` is missing (CI runs on glibc Linux)."""
    if not malloc_trim_available():
        unavailable("malloc_trim is not available (not glibc)", "CI runs on glibc Linux")
