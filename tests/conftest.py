"""Shared test helpers: every app is checked for WSGI compliance on both sides of the middleware."""

from __future__ import annotations

import gc
import os
import shutil
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any
from wsgiref.validate import validator

import pytest
from werkzeug.middleware import lint
from werkzeug.middleware.lint import LintMiddleware
from werkzeug.test import Client, TestResponse

from wsgi_memopt import MemoryOptimizer

WSGIApp = Callable[..., Iterable[bytes]]

# The benchmarks' server helpers (a free port, gunicorn's flags, a clean environment) and the
# leaking-pool harness serve the tests that start real servers too.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))


def checked(app: WSGIApp) -> WSGIApp:
    """``app`` behind werkzeug's lint and wsgiref's validator (lint warnings are errors)."""
    return validator(LintMiddleware(app))  # type: ignore[no-any-return]


def wrap(app: WSGIApp, **settings: Any) -> tuple[MemoryOptimizer, Client]:
    """The optimizer around a checked app, and a cookie-less client for it behind the checks.

    Settings not given get test-friendly values: no single-flight wait, no background
    monitor thread per optimizer, and no gc.freeze() of the test process. The GC stays in the
    default "between" mode, so every cache test also runs the governor's request bookkeeping.
    """
    settings.setdefault("cache_lock_timeout_s", 0)
    settings.setdefault("monitor_interval_s", 0)
    settings.setdefault("gc_freeze", False)
    optimizer = MemoryOptimizer(checked(app), **settings)
    return optimizer, Client(checked(optimizer), use_cookies=False)


def get(client: Client, path: str = "/", **kwargs: Any) -> TestResponse:
    """A GET whose response is read to its end and closed, as a server does."""
    return client.get(path, buffered=True, **kwargs)


def run_threads(count: int, worker: Callable[[int], object], timeout_s: float) -> None:
    """``worker(n)`` for n in ``range(count)``, each in its own thread, all started, then
    joined; fails if any is still running after ``timeout_s`` (a bug fails, never hangs)."""
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout_s)
    assert not any(thread.is_alive() for thread in threads)


def require_peer(executable: str) -> str:
    """The path of a real peer program; skip without it, but fail under CI (which installs it)."""
    path = shutil.which(executable)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{executable} is not installed; .ci/run must install it")
        pytest.skip(f"{executable} is not installed")
    return path


@pytest.fixture(autouse=True)
def _lint_input_has_readlines(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let ``checked`` be stacked on both sides of the middleware.

    werkzeug's lint wraps ``wsgi.input`` in an ``InputStream`` without ``readlines``, which
    PEP 3333 requires and the inner wsgiref validator checks for.
    """

    def readlines(self: Any, hint: int = -1) -> list[bytes]:
        return list(iter(self.readline, b""))

    monkeypatch.setattr(lint.InputStream, "readlines", readlines, raising=False)


@pytest.fixture(autouse=True)
def _collector_as_found() -> Iterator[None]:
    """Every test leaves CPython's collector as it found it: a governor a test never stopped
    keeps the thresholds its GC schedule set, which would change the tests after it."""
    threshold, enabled = gc.get_threshold(), gc.isenabled()
    yield
    gc.set_threshold(*threshold)
    if enabled:
        gc.enable()
    else:
        gc.disable()


@pytest.fixture(autouse=True)
def _no_env_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep a developer's WSGI_MEMOPT_* variables out of the tests."""
    for name in list(os.environ):
        if name.startswith("WSGI_MEMOPT_"):
            monkeypatch.delenv(name)
