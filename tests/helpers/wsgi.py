"""Calling an app in process, behind wsgiref's validator and werkzeug's lint on both sides."""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.handlers import SimpleHandler
from wsgiref.validate import validator

from werkzeug.middleware.lint import LintMiddleware
from werkzeug.test import Client, EnvironBuilder, TestResponse

from wsgi_memopt import MemoryOptimizer

from .clock import FakeClock

WSGIApp = Callable[..., Iterable[bytes]]


def checked(app: WSGIApp) -> WSGIApp:
    """``app`` behind werkzeug's lint and wsgiref's validator (lint warnings are errors)."""
    return validator(LintMiddleware(app))


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


def wrap_clocked(app: WSGIApp, **settings: Any) -> tuple[MemoryOptimizer, Client, FakeClock]:
    """:func:`wrap`, with the cache's clock a :class:`FakeClock` at 0."""
    optimizer, client = wrap(app, **settings)
    clock = FakeClock()
    optimizer.cache.clock = clock
    return optimizer, client, clock


def opened(client: Client, path: str = "/", **kwargs: Any) -> TestResponse:
    """A GET whose response the test reads and then closes itself, as a server does last."""
    return client.get(path, buffered=False, **kwargs)


def open_(client: Client, method: str, path: str = "/", **kwargs: Any) -> TestResponse:
    """Any method, read to its end and closed like :func:`get`."""
    return client.open(path, method=method, buffered=True, **kwargs)


def wsgiref_get(
    app: WSGIApp, path: str = "/", *, checks: bool = True
) -> tuple[str, list[tuple[str, str]], bytes]:
    """One GET through wsgiref's server handler: ``(status, headers, body)`` as sent.

    werkzeug's test client cannot run some cases: it re-raises any ``exc_info`` given to
    ``start_response`` even before headers are sent, and with ``buffered=True`` it drops what
    the legacy ``write()`` callable sent. The stdlib's PEP 3333 handler does both as a server
    must, and its output is the bytes in the order they went. ``checks=False`` leaves out
    the compliance checks, for an app broken on purpose.
    """
    environ = EnvironBuilder(path).get_environ()
    out = io.BytesIO()
    handler = SimpleHandler(io.BytesIO(), out, io.StringIO(), environ)
    handler.os_environ = {}  # keep the process environment out of the request
    handler.run(checked(app) if checks else app)
    head, _, body = out.getvalue().partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = [tuple(line.split(": ", 1)) for line in lines]
    return status_line.split(" ", 1)[1], headers, body  # type: ignore[return-value]


def run_threads(count: int, worker: Callable[[int], object], timeout_s: float) -> None:
    """``worker(n)`` for n in ``range(count)``, each in its own thread, all started, then
    joined; fails if any is still running after ``timeout_s`` (a bug fails, never hangs)."""
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout_s)
    assert not any(thread.is_alive() for thread in threads)
