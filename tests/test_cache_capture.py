"""Tests of wsgi_memopt.cache.capture: the rules for storing a response, one test each.

- what is stored and what is not (and the reason counted), and when ``Cache-Status`` may say
  ``stored``; the item limit, in a streamed body or a declared one;
- streaming: each chunk reaches the server as the app yields it, and the copy is dropped
  past the limit;
- the app's iterable closed exactly once, whatever the server or the app does;
- the legacy ``write()`` callable, ``exc_info``, an app raising in its call or mid-body;
- one user's page never reaching another;
- a response nobody closes, or that the collector takes, never jamming the process.

Which requests are served, fetched or passed through is in ``test_middleware.py``.

The capture is the response iterable the middleware hands the server on a miss. These tests
play the server themselves where they need to watch it chunk by chunk (``FakeServer`` below),
run wsgiref's handler where the bytes on the wire matter (``wsgiref_get``), and use werkzeug's
``Client`` (through ``helpers.wsgi.wrap``/``get``) everywhere else. Either way the app is behind
wsgiref's validator and werkzeug's lint on both sides of the middleware.

A few tests read the capture's private ``_size``/``_chunks`` on purpose: how much of a streamed
body is held in memory cannot be seen from outside, and the cache promises to hold at most
``cache_item_max_mb`` of it.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import math
import random
import sys
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from helpers.apps import CACHEABLE, CountingApp
from helpers.clock import DATE
from helpers.headers import cache_status
from helpers.store import assert_consistent
from helpers.wsgi import WSGIApp, checked, get, wrap, wsgiref_get
from werkzeug.http import http_date, parse_cookie
from werkzeug.middleware import lint
from werkzeug.test import Client, EnvironBuilder, TestResponse

from wsgi_memopt import MemoryOptimizer
from wsgi_memopt.cache.capture import Capture

KB = 1 << 10
MB = 1 << 20
CHUNK = 64 * KB
WAIT_S = 10.0  # the bound of every wait on another thread; never reached when all is well


# -- helpers

_started: list[Any] = []  # every response a ``FakeServer`` started, closed at teardown if left open


@pytest.fixture(autouse=True)
def _close_what_a_failed_test_left_open() -> Iterator[None]:
    yield
    while _started:
        response = _started.pop()
        if not response.closed:
            # The test failed already; closing only keeps its report readable.
            with contextlib.suppress(Exception):
                response.close()


class FakeServer:
    """Plays the WSGI server around ``optimizer``, behind the same checks ``wrap`` puts there.

    ``returned`` holds what the optimizer itself returned (the :class:`Capture` on a miss),
    ``responses`` each ``(status, headers, exc_info)`` given to the server's start_response.
    """

    def __init__(self, optimizer: MemoryOptimizer) -> None:
        self.optimizer = optimizer
        self.returned: list[Iterable[bytes]] = []
        self.responses: list[tuple[str, list[tuple[str, str]], Any]] = []
        self.written: list[bytes] = []
        self.app = checked(self._spy)

    def _spy(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        result = self.optimizer(environ, start_response)
        self.returned.append(result)
        return result

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        self.responses.append((status, headers, exc_info))
        return self.written.append

    def call(self, path: str = "/", **builder: Any) -> Iterator[bytes]:
        """Start a request; the caller iterates and closes what is returned."""
        environ = EnvironBuilder(path=path, **builder).get_environ()
        response = self.app(environ, self.start_response)
        _started.append(response)
        return iter(response)

    @property
    def capture(self) -> Capture:
        result = self.returned[-1]
        assert isinstance(result, Capture)
        return result

    def header(self, name: str) -> str | None:
        _, headers, _ = self.responses[-1]
        return next((value for key, value in headers if key.lower() == name.lower()), None)


class AppError(Exception):
    """Raised by the test apps; unique so that nothing else can be mistaken for it."""


class CloseError(Exception):
    """Raised by an app iterable's close()."""


class Body:
    """An app iterable that counts its close() calls and can fail on demand."""

    def __init__(
        self,
        chunks: Iterable[bytes],
        *,
        fail_at: int | None = None,
        close_error: BaseException | None = None,
    ) -> None:
        self.chunks = list(chunks)
        self.fail_at = fail_at
        self.close_error = close_error
        self.produced = 0
        self.closes = 0

    def __iter__(self) -> Iterator[bytes]:
        for index, chunk in enumerate(self.chunks):
            if index == self.fail_at:
                raise AppError("failed mid-body")
            self.produced += 1
            yield chunk

    def close(self) -> None:
        self.closes += 1
        if self.close_error is not None:
            raise self.close_error


class BodyApp:
    """A tiny app returning a :class:`Body`; counts its calls and its bodies' close() calls.

    Its responses are marked cacheable (:data:`CACHEABLE`) unless ``headers`` says otherwise.
    """

    def __init__(
        self,
        chunks: Iterable[bytes] = (b"hello ", b"world"),
        *,
        headers: Iterable[tuple[str, str]] = CACHEABLE,
        **body: Any,
    ) -> None:
        self.chunks = list(chunks)
        self.headers = list(headers)
        self.body = body
        self.calls = 0
        self.bodies: list[Body] = []

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Body:
        self.calls += 1
        start_response("200 OK", [("Content-Type", "text/plain"), *self.headers])
        body = Body(self.chunks, **self.body)
        self.bodies.append(body)
        return body

    @property
    def closes(self) -> int:
        return sum(body.closes for body in self.bodies)


def head(client: Client, path: str = "/", **kwargs: Any) -> TestResponse:
    """A HEAD read to its end and closed, like ``get``.

    werkzeug's lint does not know that a HEAD response carries the ``Content-Length`` of the
    GET without its body (RFC 9110 §9.3.2); that one complaint, and only it, is ignored here.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore",
            message="Content-Length and the number of bytes sent",
            category=lint.WSGIWarning,
        )
        return client.head(path, buffered=True, **kwargs)


def stats(optimizer: MemoryOptimizer) -> dict[str, Any]:
    return optimizer.cache.stats()


def spy_single_flight(
    monkeypatch: pytest.MonkeyPatch, optimizer: MemoryOptimizer
) -> tuple[list[threading.Event | None], threading.Event]:
    """Record what each single-flight ``join`` answered (the event to wait on, None to the
    request that leads the fill); ``someone_waits`` is set on a wait."""
    answers: list[threading.Event | None] = []
    someone_waits = threading.Event()
    flights = optimizer.cache.flights
    real = flights.join

    def join(*args: Any) -> Any:
        fill, event = real(*args)
        answers.append(event)
        if event is not None:
            someone_waits.set()
        return fill, event

    monkeypatch.setattr(flights, "join", join)
    return answers, someone_waits


def in_thread(target: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Run ``target`` in a daemon thread; the list gets its result or its exception."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(target())
        except BaseException as error:
            outcome.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


# -- what is stored, and what Cache-Status says of it

NOT_STORED: list[Any] = [
    # id, settings, app keywords, detail in Cache-Status (None: decided after the headers), reason
    ("no-store", {}, {"headers": [("Cache-Control", "no-store")]}, "no-store", "no-store"),
    # No explicit freshness, no Last-Modified, cache_default_ttl_s=0: nothing says keep it.
    ("says-nothing", {}, {"headers": []}, "no-freshness", "no-freshness"),
    (
        "says-public-only",
        {},
        {"headers": [("Cache-Control", "public")]},
        "no-freshness",
        "no-freshness",
    ),
    (
        "last-modified-not-heuristic-status",
        {"cache_statuses": (200, 302)},
        {"status": "302 Found", "headers": [("Last-Modified", http_date(DATE))]},
        "no-freshness",
        "no-freshness",
    ),
    ("private", {}, {"headers": [("Cache-Control", "private")]}, "private", "private"),
    (
        "private-with-max-age",
        {},
        {"headers": [("Cache-Control", "max-age=60, private")]},
        "private",
        "private",
    ),
    ("no-cache", {}, {"headers": [("Cache-Control", "no-cache")]}, "no-cache", "no-cache"),
    (
        "no-store-in-second-header",
        {},
        {"headers": [("Cache-Control", "public"), ("Cache-Control", "no-store")]},
        "no-store",
        "no-store",
    ),
    ("set-cookie", {}, {"headers": [("Set-Cookie", "a=1")]}, "set-cookie", "set-cookie"),
    ("vary-star", {}, {"headers": [("Vary", "*")]}, "vary-star", "vary-star"),
    ("vary-star-in-list", {}, {"headers": [("Vary", "Accept, *")]}, "vary-star", "vary-star"),
    ("status-404", {}, {"status": "404 Not Found"}, "status", "status"),
    ("status-500", {}, {"status": "500 Internal Server Error"}, "status", "status"),
    (
        "status-404-not-listed",
        {"cache_statuses": (200, 301)},
        {"status": "404 Not Found"},
        "status",
        "status",
    ),
    (
        "too-large-content-length",
        {"cache_item_max_mb": 0.001},
        {"body": b"x" * 2000},
        "too-large",
        "too-large",
    ),
    (
        "too-large-streamed",
        {"cache_item_max_mb": 0.001},
        {"body": b"x" * 2000, "content_length": False},
        "too-large",  # seen in the first chunk, before the headers went
        "too-large",
    ),
    ("max-age-0", {}, {"headers": [("Cache-Control", "max-age=0")]}, "stale", "stale"),
    (
        "s-maxage-0",
        {},
        {"headers": [("Cache-Control", "s-maxage=0, max-age=60")]},
        "stale",
        "stale",
    ),
    ("expires-invalid", {}, {"headers": [("Expires", "0")]}, "stale", "stale"),
    ("expires-garbage", {}, {"headers": [("Expires", "next tuesday")]}, "stale", "stale"),
    (
        "expires-before-date",
        {},
        {"headers": [("Date", http_date(DATE)), ("Expires", http_date(DATE - timedelta(1)))]},
        "stale",
        "stale",
    ),
]


@pytest.mark.parametrize(
    ("settings", "app_kwargs", "detail", "reason"),
    [case[1:] for case in NOT_STORED],
    ids=[case[0] for case in NOT_STORED],
)
def test_response_not_stored(
    settings: dict[str, Any], app_kwargs: dict[str, Any], detail: str | None, reason: str
) -> None:
    app = CountingApp(**app_kwargs)
    optimizer, client = wrap(app, **settings)

    first = get(client, "/p")
    second = get(client, "/p")

    assert app.calls == 2
    assert second.data.endswith(b" #2")
    expected = {"fwd": "miss"} if detail is None else {"fwd": "miss", "detail": detail}
    assert cache_status(first) == cache_status(second) == expected
    assert first.headers["X-Cache"] == "MISS"
    counts = optimizer.cache.stats()
    assert (counts["items"], counts["stores"], counts["rejected"]) == (0, 0, {reason: 2})


def test_an_error_page_that_says_nothing_does_not_outlive_the_outage() -> None:
    # The database is down for one request: its "unavailable" page, a 200 that says nothing
    # about caching, is not kept; the next request, the database back, gets the real page.
    database: list[bytes] = [b"database unavailable"]

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        body = database[-1]
        start_response(
            "200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
        )
        return [body]

    optimizer, client = wrap(app)
    outage = get(client, "/products")
    database.append(b"42 products")
    back = get(client, "/products")

    assert (outage.data, back.data) == (b"database unavailable", b"42 products")
    assert cache_status(outage) == {"fwd": "miss", "detail": "no-freshness"}
    assert optimizer.cache.stats()["rejected"] == {"no-freshness": 2}


def test_cache_default_ttl_s_keeps_what_says_nothing_where_cache_paths_allows() -> None:
    # The original "keep every page 30 minutes", scoped to the reports.
    app = CountingApp(headers=[], echo="PATH_INFO")
    _, client = wrap(app, cache_default_ttl_s=1800, cache_paths=("/reports/*",))

    reports = [get(client, "/reports/q1") for _ in range(2)]
    accounts = [get(client, "/account") for _ in range(2)]

    assert [r.data for r in reports] == [b"body #1 '/reports/q1'"] * 2
    assert cache_status(reports[1]) == {"hit": True, "ttl": "1800"}
    assert [r.data for r in accounts] == [b"body #2 '/account'", b"body #3 '/account'"]


STORED: list[Any] = [
    # id, settings, app keywords, whether the miss announces "stored"
    ("plain", {}, {}, True),
    ("no-content-length", {}, {"content_length": False}, False),
    ("status-404-listed", {"cache_statuses": (200, 404)}, {"status": "404 Not Found"}, True),
    ("public", {}, {"headers": [("Cache-Control", "public, max-age=60")]}, True),
    ("must-revalidate", {}, {"headers": [("Cache-Control", "max-age=60, must-revalidate")]}, True),
    ("vary-listed", {}, {"headers": [("Vary", "Accept-Language"), *CACHEABLE]}, True),
    (
        "last-modified",
        {},
        {"headers": [("Last-Modified", http_date(datetime.now(timezone.utc)))]},
        True,
    ),
    ("says-nothing-default-ttl", {"cache_default_ttl_s": 60}, {"headers": []}, True),
    (
        "expires-after-date",
        {},
        {"headers": [("Date", http_date(DATE)), ("Expires", http_date(DATE + timedelta(1)))]},
        True,
    ),
    # 10485 B allowed; the entry holds ~1.7 KB besides the body
    ("body-under-limit", {"cache_item_max_mb": 0.01}, {"body": b"x" * 8000}, True),
]


@pytest.mark.parametrize(
    ("settings", "app_kwargs", "announced"),
    [case[1:] for case in STORED],
    ids=[case[0] for case in STORED],
)
def test_response_stored(
    settings: dict[str, Any], app_kwargs: dict[str, Any], announced: bool
) -> None:
    app = CountingApp(**app_kwargs)
    optimizer, client = wrap(app, **settings)

    miss = get(client, "/p")
    hit = get(client, "/p")

    assert app.calls == 1
    assert hit.data == miss.data
    assert hit.status == miss.status
    assert hit.headers["Content-Length"] == str(len(miss.data))
    assert cache_status(miss) == ({"fwd": "miss", "stored": True} if announced else {"fwd": "miss"})
    assert cache_status(hit)["hit"] is True
    counts = optimizer.cache.stats()
    assert (counts["items"], counts["stores"], counts["rejected"]) == (1, 1, {})


def test_stored_is_announced_only_when_stored() -> None:
    app = CountingApp(b"x" * 1000)  # 1000 B body, limit 1048 B: the entry's overhead tips it over
    optimizer, client = wrap(app, cache_item_max_mb=0.001)

    miss = get(client, "/p")

    stored = optimizer.cache.stats()["stores"] == 1
    assert cache_status(miss).get("stored", False) is stored


def declaring_app(declared: int | None, *chunks: bytes, written: bytes = b"") -> WSGIApp:
    """An app whose response declares ``Content-Length: declared`` (None: none), sends
    ``written`` through the legacy write() callable, then returns ``chunks``."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        headers = [("Content-Type", "text/plain"), *CACHEABLE]
        if declared is not None:
            headers.append(("Content-Length", str(declared)))
        write = start_response("200 OK", headers)
        if written:
            write(written)
        return list(chunks)

    return app


@pytest.mark.parametrize(
    ("app", "said", "stored"),
    [
        pytest.param(declaring_app(5, b"hello"), True, True, id="whole-in-its-first-chunk"),
        pytest.param(declaring_app(5, b"lo", written=b"hel"), False, False, id="write-callable"),
        pytest.param(declaring_app(10, b"hello"), False, False, id="shorter-than-declared"),
        pytest.param(declaring_app(10, b"hello", b"world"), False, True, id="whole-at-its-end"),
        pytest.param(declaring_app(None, b"hello"), False, True, id="no-content-length"),
    ],
)
def test_stored_is_said_only_of_a_response_stored_before_its_headers_went(
    app: WSGIApp, said: bool, stored: bool
) -> None:
    # The headers go with the first bytes of the body: "stored" can be said only of a body
    # whole (and stored) by then. Seen before: said of a write() response and of a body
    # shorter than its Content-Length, both then refused.
    optimizer = MemoryOptimizer(app, cache_lock_timeout_s=0, monitor_interval_s=0)
    try:
        _, headers, _ = wsgiref_get(optimizer, checks=False)
        assert cache_status(headers).get("stored", False) is said
        assert len(optimizer.cache) == int(stored)
    finally:
        optimizer.governor.stop()


# -- streaming


@pytest.mark.slow
def test_big_body_streams_chunk_by_chunk_and_its_copy_is_dropped_past_the_limit() -> None:
    produced: list[int] = []
    total_chunks = 10 * MB // CHUNK

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "application/octet-stream"), *CACHEABLE])

        def body() -> Iterator[bytes]:
            for index in range(total_chunks):
                produced.append(index)
                yield bytes([index % 256]) * CHUNK

        return body()

    optimizer = MemoryOptimizer(checked(app), cache_lock_timeout_s=0)
    limit = int(optimizer.settings.cache_item_max_mb * MB)
    assert limit == 2 * MB  # the default this test is about
    server = FakeServer(optimizer)
    response = server.call("/big")
    capture = server.capture  # the internals are inspected on purpose, see the module doc

    def check_copy(received: int) -> None:
        held = sum(len(chunk) for chunk in capture._chunks or [])
        assert held <= limit + CHUNK
        if received > limit:
            kept = capture._chunks is not None
            assert not kept, f"a copy of {held} bytes kept after {received} bytes"
        else:
            assert held == received == capture._size

    first = next(response)
    assert len(first) == CHUNK
    assert produced == [0], "the first chunk must reach the server before the app makes more"
    received = len(first)
    check_copy(received)
    for chunk in response:
        received += len(chunk)
        assert len(produced) == received // CHUNK  # no read-ahead
        check_copy(received)
    response.close()

    assert received == 10 * MB
    assert server.responses[-1][0] == "200 OK"
    cache = stats(optimizer)
    assert cache["items"] == 0
    assert cache["rejected"].get("too-large") == 1


ITEM_LIMIT: list[Any] = [
    # id, body size, Content-Length declared, in pieces of 1 KiB (else one), Cache-Status
    ("well-under-streamed", CHUNK // 2, False, True, {"fwd": "miss"}),
    ("at-the-limit-streamed", CHUNK, False, True, {"fwd": "miss"}),
    # Whole in its first chunk: stored before its headers go, and said so.
    ("at-the-limit-declared", CHUNK, True, False, {"fwd": "miss", "stored": True}),
    # Crossed mid-stream: the headers went before it was known.
    ("one-byte-over-streamed", CHUNK + 1, False, True, {"fwd": "miss"}),
    ("one-byte-over-declared", CHUNK + 1, True, False, {"fwd": "miss", "detail": "too-large"}),
]


@pytest.mark.parametrize(
    ("size", "declared", "pieces", "status"),
    [case[1:] for case in ITEM_LIMIT],
    ids=[case[0] for case in ITEM_LIMIT],
)
def test_a_body_is_stored_up_to_the_item_limit_and_not_a_byte_more(
    size: int, declared: bool, pieces: bool, status: dict[str, Any]
) -> None:
    body = b"x" * size
    chunks = [body[i : i + KB] for i in range(0, size, KB)] if pieces else [body]
    length = [("Content-Length", str(size))] if declared else []
    app = BodyApp(chunks, headers=[*CACHEABLE, *length])
    optimizer, client = wrap(app, cache_item_max_mb=CHUNK / MB)
    stored = size <= CHUNK

    first = get(client, "/")
    assert get(client, "/").data == first.data == body

    assert cache_status(first) == status
    assert app.calls == (1 if stored else 2)
    cache = stats(optimizer)
    assert cache["items"] == int(stored)
    assert cache["rejected"] == ({} if stored else {"too-large": 2})
    assert_consistent(optimizer.cache.store, optimizer.cache)


def test_streamed_body_without_content_length_is_stored_and_replayed_whole() -> None:
    calls: list[int] = []
    chunks = [bytes([index]) * CHUNK for index in range(MB // CHUNK)]

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        calls.append(1)
        start_response("200 OK", [("Content-Type", "application/octet-stream"), *CACHEABLE])
        return (chunk for chunk in chunks)

    optimizer, client = wrap(app)
    miss = get(client, "/one-mb")
    assert miss.headers["X-Cache"] == "MISS"
    assert "Content-Length" not in miss.headers
    assert miss.data == b"".join(chunks)
    assert stats(optimizer)["items"] == 1

    for _ in range(2):
        hit = get(client, "/one-mb")
        assert hit.headers["X-Cache"] == "HIT"
        assert hit.headers["Content-Length"] == str(MB)
        assert hit.data == b"".join(chunks)
    head_hit = head(client, "/one-mb")
    assert head_hit.headers["X-Cache"] == "HIT"
    assert head_hit.headers["Content-Length"] == str(MB)
    assert head_hit.data == b""
    assert len(calls) == 1


# -- close() exactly once


@pytest.mark.parametrize(
    ("method", "request_headers", "response_headers", "stored"),
    [
        pytest.param("GET", {}, CACHEABLE, True, id="miss-stored"),
        pytest.param("GET", {}, [("Cache-Control", "no-store")], False, id="miss-not-stored"),
        pytest.param("GET", {}, [], False, id="miss-says-nothing"),
        pytest.param("GET", {"Cache-Control": "no-store"}, CACHEABLE, False, id="request-no-store"),
        pytest.param("POST", {}, CACHEABLE, False, id="post-passes-through"),
        pytest.param("GET", {"X-Forwarded-Host": "x.example"}, CACHEABLE, False, id="bypass"),
        pytest.param("GET", {"X-Forwarded-Server": "x.example"}, CACHEABLE, False, id="bypass-2"),
        pytest.param("HEAD", {}, CACHEABLE, False, id="head-miss"),
    ],
)
def test_app_iterable_is_closed_once_per_response(
    method: str, request_headers: dict[str, str], response_headers: list[Any], stored: bool
) -> None:
    app = BodyApp(headers=response_headers)
    optimizer, client = wrap(app)
    client.open("/page", method=method, headers=request_headers, buffered=True)
    assert app.calls == 1
    assert app.closes == 1
    assert stats(optimizer)["items"] == int(stored)


def test_a_hit_does_not_call_the_app_so_closes_nothing() -> None:
    app = BodyApp(headers=[("ETag", '"v1"'), *CACHEABLE])
    optimizer, client = wrap(app)
    assert get(client, "/page").headers["X-Cache"] == "MISS"
    assert (app.calls, app.closes) == (1, 1)

    assert get(client, "/page").headers["X-Cache"] == "HIT"
    assert head(client, "/page").headers["X-Cache"] == "HIT"
    assert get(client, "/page", headers={"If-None-Match": '"v1"'}).status_code == 304
    assert (app.calls, app.closes) == (1, 1)
    assert stats(optimizer)["hits"] == 3

    # A POST passed through after the hits: called and closed once; its success invalidates
    # the page's entry (RFC 9111 §4.4).
    assert client.post("/page", buffered=True).data == b"hello world"
    assert (app.calls, app.closes) == (2, 2)
    assert stats(optimizer)["items"] == 0


def test_client_stopping_early_closes_once_and_stores_nothing() -> None:
    app = BodyApp([b"a", b"b", b"c"])
    optimizer = MemoryOptimizer(checked(app), cache_lock_timeout_s=0)
    server = FakeServer(optimizer)
    response = server.call("/page")
    assert next(response) == b"a"
    response.close()
    assert app.bodies[0].produced == 1
    assert app.closes == 1
    assert stats(optimizer)["items"] == 0
    assert stats(optimizer)["rejected"].get("incomplete") == 1


def test_app_raising_mid_body_closes_once_and_stores_nothing() -> None:
    app = BodyApp([b"a", b"b", b"c"], fail_at=1)
    optimizer = MemoryOptimizer(checked(app), cache_lock_timeout_s=0)
    server = FakeServer(optimizer)
    for _ in range(2):
        response = server.call("/page")
        with pytest.raises(AppError):  # reaches the server
            list(response)
        response.close()
    assert app.calls == 2  # nothing was stored
    assert [body.closes for body in app.bodies] == [1, 1]
    cache = stats(optimizer)
    assert (cache["items"], cache["stores"], cache["rejected"]) == (0, 0, {"incomplete": 2})


def test_app_close_raising_propagates_stores_nothing_and_closes_once() -> None:
    error = CloseError("close failed")
    app = BodyApp(close_error=error)
    optimizer = MemoryOptimizer(checked(app), cache_lock_timeout_s=0)
    server = FakeServer(optimizer)
    response = server.call("/page")
    assert b"".join(response) == b"hello world"  # the body ran to its end
    with pytest.raises(CloseError) as raised:
        response.close()
    assert raised.value is error
    assert app.closes == 1
    assert stats(optimizer)["items"] == 0
    server.capture.close()  # a server retrying close() does not close the app again
    assert app.closes == 1


def test_app_close_raising_releases_single_flight_waiters(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = BodyApp(close_error=CloseError("close failed"))
    later = BodyApp()

    def app(environ: dict[str, Any], start_response: Any) -> Body:
        return (first if not first.calls else later)(environ, start_response)

    optimizer, client = wrap(app, cache_lock_timeout_s=WAIT_S)
    answers, someone_waits = spy_single_flight(monkeypatch, optimizer)
    server = FakeServer(optimizer)
    leader = server.call("/page")  # takes the single-flight key
    assert answers == [None]
    thread, outcome = in_thread(lambda: get(client, "/page"))
    assert someone_waits.wait(WAIT_S), "the second request did not wait for the first"

    assert next(leader) == b"hello "  # not read to its end: the waiter waits for close()
    with pytest.raises(CloseError):
        leader.close()
    waited_on = answers[1]
    assert waited_on is not None
    assert waited_on.is_set(), "the waiter was not released by the failed close()"
    thread.join(WAIT_S)
    assert not thread.is_alive()
    assert outcome[0].data == b"hello world"
    assert (first.closes, later.closes, later.calls) == (1, 1, 1)


@pytest.mark.parametrize(
    ("chunks", "headers"),
    [
        pytest.param([b"page", b"tail"], [("Cache-Control", "no-store")], id="refused-at-start"),
        pytest.param([b"x" * CHUNK, b"x", b"tail"], CACHEABLE, id="too-large-mid-body"),
    ],
)
def test_waiters_are_released_as_soon_as_the_response_will_not_be_stored(
    monkeypatch: pytest.MonkeyPatch, chunks: list[bytes], headers: list[tuple[str, str]]
) -> None:
    calls: list[int] = []

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        calls.append(1)

        def body() -> Iterator[bytes]:
            # start_response on the first next(): the waiter can queue before the verdict.
            start_response("200 OK", [("Content-Type", "text/plain"), *headers])
            yield from chunks

        return body()

    optimizer, client = wrap(app, cache_lock_timeout_s=WAIT_S, cache_item_max_mb=CHUNK / MB)
    answers, someone_waits = spy_single_flight(monkeypatch, optimizer)
    server = FakeServer(optimizer)
    leader = server.call("/page")
    thread, outcome = in_thread(lambda: get(client, "/page"))
    assert someone_waits.wait(WAIT_S)
    waited_on = answers[1]
    assert waited_on is not None
    assert not waited_on.is_set()
    received = 0
    for _ in leader:
        received += 1
        if waited_on.is_set():
            break
    assert waited_on.is_set()
    assert received < len(chunks), "released only at the end of the body"
    thread.join(WAIT_S)  # the waiter went to the app while the leader's body is still open
    assert not thread.is_alive()
    assert outcome[0].data == b"".join(chunks)
    leader.close()
    assert len(calls) == 2
    assert stats(optimizer)["items"] == 0


def test_server_closing_twice_closes_the_app_once_and_stores_once() -> None:
    app = BodyApp()
    optimizer = MemoryOptimizer(checked(app), cache_lock_timeout_s=0)
    server = FakeServer(optimizer)
    response = server.call("/page")
    capture = server.capture
    assert b"".join(response) == b"hello world"
    response.close()
    response.close()
    capture.close()
    assert app.closes == 1
    cache = stats(optimizer)
    assert (cache["items"], cache["stores"], cache["rejected"]) == (1, 1, {})


def test_close_without_iterating_closes_once_and_stores_nothing() -> None:
    app = BodyApp()
    optimizer = MemoryOptimizer(checked(app), cache_lock_timeout_s=0)
    server = FakeServer(optimizer)
    server.call("/page").close()
    assert app.bodies[0].produced == 0
    assert app.closes == 1
    assert stats(optimizer)["items"] == 0
    assert stats(optimizer)["rejected"].get("incomplete") == 1


# -- the legacy write() callable


def test_write_callable_reaches_the_client_in_order_and_is_never_stored() -> None:
    calls: list[int] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        calls.append(1)
        write = start_response("200 OK", [("Content-Type", "text/plain"), *CACHEABLE])
        write(b"written-1 ")
        write(b"written-2 ")
        return [b"iterable-1 ", b"iterable-2"]

    # Through wsgiref's handler: werkzeug's Client drops write() data when buffered=True.
    optimizer = MemoryOptimizer(checked(app), cache_lock_timeout_s=0)
    for _ in range(2):
        status, headers, body = wsgiref_get(optimizer, "/legacy")
        assert status == "200 OK"
        assert body == b"written-1 written-2 iterable-1 iterable-2"
        assert cache_status(headers) == {"fwd": "miss", "detail": "write-callable"}
        assert dict(headers)["X-Cache"] == "MISS"
    assert len(calls) == 2
    cache = stats(optimizer)
    assert (cache["items"], cache["rejected"]) == (0, {"write-callable": 2})


# -- exc_info


@pytest.mark.parametrize("started", [True, False], ids=["after-a-start", "as-the-first-call"])
def test_exc_info_is_passed_to_the_server_and_the_error_page_is_not_stored(
    started: bool,
) -> None:
    given: list[Any] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if started:
            start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            raise AppError("before any body")
        except AppError:
            exc_info = sys.exc_info()
            given.append(exc_info)
            error_headers = [("Content-Type", "text/plain"), *CACHEABLE]
            start_response("500 Internal Server Error", error_headers, exc_info)
        return [b"error page"]

    # A cacheable 500, which may be stored here: only the exc_info can keep it out.
    optimizer = MemoryOptimizer(checked(app), cache_lock_timeout_s=0, cache_statuses=(200, 500))
    server = FakeServer(optimizer)
    for _ in range(2):
        response = server.call("/broken")
        assert b"".join(response) == b"error page"
        response.close()
        status, headers, exc_info = server.responses[-1]
        assert status == "500 Internal Server Error"
        assert exc_info is given[-1]
        assert cache_status(headers) == {"fwd": "miss", "detail": "app-error"}
    assert len(given) == 2  # the app was called again: nothing was stored
    cache = stats(optimizer)
    assert (cache["items"], cache["rejected"]) == (0, {"app-error": 2})


# -- the app raising before it returns


@pytest.mark.parametrize("started", [True, False], ids=["after-start-response", "before-it"])
def test_app_raising_in_its_call_propagates_and_releases_the_key(
    monkeypatch: pytest.MonkeyPatch, started: bool
) -> None:
    error = AppError("raised in the call")
    calls: list[int] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        calls.append(1)
        if started or len(calls) > 1:
            start_response("200 OK", [("Content-Type", "text/plain"), *CACHEABLE])
        if len(calls) == 1:
            raise error
        return [b"second"]

    optimizer, client = wrap(app, cache_lock_timeout_s=5)
    answers, _ = spy_single_flight(monkeypatch, optimizer)
    with pytest.raises(AppError) as raised:
        get(client, "/page")
    assert raised.value is error
    assert stats(optimizer)["items"] == 0
    assert stats(optimizer)["rejected"] == {"app-error": 1}

    assert get(client, "/page").data == b"second"
    assert answers == [None, None], "the second request waited on a key nobody was filling"
    assert len(calls) == 2
    assert stats(optimizer)["items"] == 1


def test_app_raising_in_its_call_wakes_a_request_waiting_on_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    error = AppError("raised in the call")
    calls: list[int] = []
    leader_inside = threading.Event()

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        calls.append(1)
        if len(calls) == 1:
            leader_inside.set()
            assert someone_waits.wait(WAIT_S)
            raise error
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"second"]

    optimizer, client = wrap(app, cache_lock_timeout_s=WAIT_S)
    answers, someone_waits = spy_single_flight(monkeypatch, optimizer)
    leader, leader_outcome = in_thread(lambda: get(client, "/page"))
    assert leader_inside.wait(WAIT_S)  # the leader holds the key and is inside the app
    waiter_response = get(client, "/page")  # waits for the leader, which raises
    leader.join(WAIT_S)
    assert not leader.is_alive()
    assert leader_outcome == [error]
    assert answers[0] is None
    assert answers[1] is not None
    assert answers[1].is_set()
    assert waiter_response.data == b"second"
    assert len(calls) == 2


# -- one user's page never reaches another


USERS: dict[str, tuple[dict[str, str], str]] = {
    "anonymous": ({}, "anonymous"),
    "alice-cookie": ({"Cookie": "session=alice"}, "alice"),
    "bob-cookie": ({"Cookie": "session=bob"}, "bob"),
    "alice-bearer": ({"Authorization": "Bearer alice"}, "alice"),
    "bob-bearer": ({"Authorization": "Bearer bob"}, "bob"),
}


def user_of(environ: dict[str, Any]) -> str:
    authorization = environ.get("HTTP_AUTHORIZATION", "")
    if authorization.startswith("Bearer "):
        return str(authorization[len("Bearer ") :])
    return parse_cookie(environ).get("session") or "anonymous"


def personalised_app(*extra_headers: tuple[str, str]) -> Callable[..., list[bytes]]:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        body = f"<p>Hello {user_of(environ)}</p>".encode()
        start_response(
            "200 OK",
            [
                ("Content-Type", "text/html"),
                ("Content-Length", str(len(body))),
                *extra_headers,
            ],
        )
        return [body]

    return app


def page_of(user: str) -> bytes:
    return f"<p>Hello {user}</p>".encode()


@pytest.mark.parametrize(
    ("headers", "settings"),
    [
        # An app that says nothing about caching, kept by the operator's default lifetime.
        pytest.param((), {"cache_default_ttl_s": 60}, id="no-cache-control-default-ttl"),
        pytest.param(
            (("Last-Modified", "Sat, 01 Jan 2000 00:00:00 GMT"),), {}, id="heuristic-freshness"
        ),
        pytest.param((("Cache-Control", "max-age=60"),), {}, id="max-age"),
    ],
)
def test_personalised_page_reaches_only_its_user_in_every_order(
    headers: tuple[tuple[str, str], ...], settings: dict[str, Any]
) -> None:
    optimizer, client = wrap(personalised_app(*headers), **settings)
    anonymous_hits = 0
    for order in itertools.permutations(USERS):
        for name in order:
            request_headers, user = USERS[name]
            response = get(client, "/me", headers=request_headers)
            assert response.data == page_of(user), f"{name} got {response.data!r}"
            if name == "anonymous":
                anonymous_hits += response.headers["X-Cache"] == "HIT"
            else:
                assert response.headers["X-Cache"] == "MISS"
    assert anonymous_hits > 0  # the cache was in play, so the isolation was tested
    assert stats(optimizer)["items"] == 1


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param((("Cache-Control", "max-age=60"),), id="max-age"),
        # Public, but one variant per user: each user's page is cached for that user alone,
        # and replayed from the hit lane (credentials, Vary) to them and nobody else.
        pytest.param(
            (("Cache-Control", "public, max-age=60"), ("Vary", "Cookie, Authorization")),
            id="public-varying-by-user",
        ),
    ],
)
def test_personalised_page_isolation_holds_under_concurrent_requests(
    headers: tuple[tuple[str, str], ...],
) -> None:
    optimizer = MemoryOptimizer(
        checked(personalised_app(*headers)),
        cache_lock_timeout_s=WAIT_S,
    )
    wrong: list[str] = []

    def user_session(seed: int) -> None:
        client = Client(checked(optimizer), use_cookies=False)
        for name in random.Random(seed).choices(list(USERS), k=60):
            request_headers, user = USERS[name]
            response = get(client, "/me", headers=request_headers)
            if response.data != page_of(user):
                wrong.append(f"{name} got {response.data!r}")

    threads = [in_thread(lambda seed=seed: user_session(seed)) for seed in range(8)]
    for thread, outcome in threads:
        thread.join(WAIT_S * 3)
        assert not thread.is_alive()
        assert outcome == [None]
    assert wrong == []
    assert stats(optimizer)["hits"] > 0


@pytest.mark.parametrize("credential", ["cookie", "bearer"])
def test_personalised_page_that_says_public_is_shared_as_rfc_9111_allows(
    credential: str,
) -> None:
    """The README warns about this: ``public`` lets a shared cache reuse a credentialed page."""
    _, client = wrap(personalised_app(("Cache-Control", "public, max-age=60")))
    alice = get(client, "/me", headers=USERS[f"alice-{credential}"][0])
    assert alice.data == page_of("alice")
    bob = get(client, "/me", headers=USERS[f"bob-{credential}"][0])
    anonymous = get(client, "/me")
    assert bob.data == anonymous.data == page_of("alice")
    assert bob.headers["X-Cache"] == anonymous.headers["X-Cache"] == "HIT"


def test_public_personalised_page_that_varies_on_the_credentials_stays_private() -> None:
    optimizer, client = wrap(
        personalised_app(("Cache-Control", "public, max-age=60"), ("Vary", "Cookie, Authorization"))
    )
    for order in itertools.permutations(USERS):
        for name in order:
            request_headers, user = USERS[name]
            assert get(client, "/me", headers=request_headers).data == page_of(user)
    assert stats(optimizer)["items"] == len(USERS)
    assert stats(optimizer)["hits"] > 0


@pytest.mark.parametrize(
    "directive",
    ["no-store", "private", "no-cache", "No-Store", "Private", "NO-CACHE", "NO-STORE", "No-Cache"],
)
def test_page_that_forbids_storing_is_not_shared_whatever_the_case(directive: str) -> None:
    nonces = itertools.count()

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        body = f"<input name=csrf value={next(nonces)}>".encode()
        start_response(
            "200 OK",
            [("Content-Type", "text/html"), ("Cache-Control", f"{directive}, max-age=60")],
        )
        return [body]

    optimizer, client = wrap(app)
    first = get(client, "/form").data
    second = get(client, "/form").data
    assert first != second, "a second visitor got the first one's page"
    assert stats(optimizer)["items"] == 0


# -- a response nobody closes cannot jam the process


def never_closes(app: Callable[..., Iterable[bytes]]) -> Callable[..., list[bytes]]:
    """An outer layer that reads every chunk of the body and never calls close(): it
    breaks PEP 3333, and the middleware must not be jammed by it."""

    def outer(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        return list(app(environ, start_response))

    return outer


def test_an_outer_layer_that_never_closes_cannot_jam_the_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Seen before: every other request waited the whole lock timeout on a dead fill, nothing
    # was stored, in_flight grew by one a request and the collector stayed off for good.
    app = BodyApp([b"hello ", b"world"])
    optimizer = MemoryOptimizer(
        checked(app), cache_lock_timeout_s=WAIT_S, monitor_interval_s=0, gc_freeze=False
    )
    answers, _ = spy_single_flight(monkeypatch, optimizer)
    client = Client(never_closes(optimizer), use_cookies=False)
    try:
        bodies = [get(client, "/page").data for _ in range(6)]

        assert bodies == [b"hello world"] * 6
        assert app.calls == 1  # stored when the body was read to its end; then five hits
        assert app.closes == 1  # closed by the capture's finalizer
        assert answers == [None]  # nobody waited on the first request's fill
        assert optimizer.governor.in_flight == 0
        assert gc.isenabled()  # between requests, the collector is CPython's again
        assert stats(optimizer)["rejected"] == {}
    finally:
        optimizer.governor.stop()


def test_a_body_read_to_its_end_is_stored_and_lets_the_waiters_go_before_close(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = BodyApp()  # two chunks, no Content-Length: whole only at the end
    optimizer, client = wrap(app, cache_lock_timeout_s=WAIT_S)
    answers, someone_waits = spy_single_flight(monkeypatch, optimizer)
    server = FakeServer(optimizer)
    leader = server.call("/page")
    thread, outcome = in_thread(lambda: get(client, "/page"))
    assert someone_waits.wait(WAIT_S)
    waited_on = answers[1]
    assert waited_on is not None

    assert next(leader) == b"hello "
    assert not waited_on.is_set()
    assert next(leader) == b"world"
    assert not waited_on.is_set()  # the body may go on
    assert list(leader) == []  # the end
    assert waited_on.is_set()
    assert len(optimizer.cache) == 1
    thread.join(WAIT_S)
    assert not thread.is_alive()
    assert outcome[0].data == b"hello world"  # the waiter's hit, before the leader closed

    leader.close()
    assert (app.calls, app.closes) == (1, 1)
    assert (stats(optimizer)["stores"], stats(optimizer)["rejected"]) == (1, {})


def test_a_failure_after_the_body_was_stored_drops_the_entry_again() -> None:
    # Stored when whole; the app's close() then raises: the rule "an app that raised is not
    # stored" still holds, though a request may have been served the entry meanwhile.
    app = BodyApp(close_error=CloseError("close failed"))
    optimizer = MemoryOptimizer(checked(app), cache_lock_timeout_s=0)
    server = FakeServer(optimizer)
    response = server.call("/page")
    assert b"".join(response) == b"hello world"
    assert len(optimizer.cache) == 1
    with pytest.raises(CloseError):
        response.close()
    assert len(optimizer.cache) == 0
    assert stats(optimizer)["rejected"] == {"app-error": 1}


def test_a_response_collected_unclosed_ends_its_request_and_lets_the_waiters_go(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = BodyApp([b"a", b"b", b"c"])
    optimizer, client = wrap(app, cache_lock_timeout_s=WAIT_S)
    answers, someone_waits = spy_single_flight(monkeypatch, optimizer)
    environ = EnvironBuilder(path="/page").get_environ()
    response = optimizer(environ, lambda status, headers, exc_info=None: None)
    chunks = iter(response)
    assert next(chunks) == b"a"  # the client went away: neither read to the end nor closed
    thread, outcome = in_thread(lambda: get(client, "/page"))
    assert someone_waits.wait(WAIT_S)
    waited_on = answers[1]
    assert waited_on is not None
    assert optimizer.governor.in_flight == 2

    del chunks, response  # collected: the finalizer closes it, as close() would have

    assert waited_on.is_set()  # not after the lock timeout: now
    assert app.bodies[0].closes == 1
    thread.join(WAIT_S)
    assert not thread.is_alive()
    assert outcome[0].data == b"abc"  # the waiter fetched the page itself
    assert optimizer.governor.in_flight == 0
    assert stats(optimizer)["rejected"] == {"dropped": 1}
    assert stats(optimizer)["items"] == 1  # the waiter's response


def cycle_app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
    """A generator app: its frame holds start_response, the capture's bound method, so an
    unfinished response is a reference cycle that only the collector frees."""
    start_response("200 OK", [("Content-Type", "text/plain"), ("Cache-Control", "max-age=60")])
    yield b"a"
    yield b"b"


def test_a_response_collected_by_the_collector_inside_the_stores_lock_never_waits() -> None:
    # The collector runs finalizers wherever it happens to run: here in a thread holding the
    # store's lock. A finalizer that took that lock would wait for ever.
    optimizer = MemoryOptimizer(
        cycle_app, cache_lock_timeout_s=WAIT_S, monitor_interval_s=0, gc_freeze=False
    )
    try:
        environ = EnvironBuilder(path="/page").get_environ()
        response = optimizer(environ, lambda status, headers, exc_info=None: None)
        chunks = iter(response)
        assert next(chunks) == b"a"
        del chunks, response  # a cycle: still alive
        assert optimizer.governor.in_flight == 1
        [fill] = optimizer.cache.flights._fills.values()  # the one key being filled: /page

        def collect_holding_the_lock() -> int:
            with optimizer.cache.store._lock, optimizer.cache.flights._lock:
                return gc.collect()

        thread, outcome = in_thread(collect_holding_the_lock)
        thread.join(WAIT_S)
        assert not thread.is_alive(), "the finalizer waited for a lock its thread holds"
        assert isinstance(outcome[0], int)  # the collection ran to its end
        assert optimizer.governor.in_flight == 0
        assert fill.started == -math.inf  # the fill is over: the next miss takes it
        assert stats(optimizer)["rejected"] == {"dropped": 1}
    finally:
        optimizer.governor.stop()


@pytest.mark.parametrize(
    ("method", "path", "request_headers"),
    [
        pytest.param("POST", "/page", {}, id="passed-through"),
        pytest.param("GET", "/page", {}, id="hit-in-the-lane"),
        pytest.param("GET", "/page", {"If-None-Match": '"v1"'}, id="hit-answered-304"),
        pytest.param("HEAD", "/page", {}, id="head-hit"),
        pytest.param("GET", "/api/v1/memory/health", {}, id="memory-api"),
    ],
)
def test_every_response_collected_unclosed_ends_its_request_once(
    method: str, path: str, request_headers: dict[str, str]
) -> None:
    app = BodyApp(headers=[("ETag", '"v1"')])
    optimizer, client = wrap(app)
    get(client, "/page")  # stored
    environ = EnvironBuilder(path=path, method=method, headers=request_headers).get_environ()
    environ["REMOTE_ADDR"] = "127.0.0.1"
    for _ in range(3):
        response = optimizer(dict(environ), lambda status, headers, exc_info=None: None)
        assert optimizer.governor.in_flight == 1
        b"".join(response)
        del response
        assert optimizer.governor.in_flight == 0
    assert app.closes == app.calls  # what the app answered was closed, once each


def test_a_hit_whose_sample_is_due_ends_once_when_collected_unclosed() -> None:
    app = BodyApp()
    optimizer, client = wrap(app)
    get(client, "/page")
    optimizer.governor.next_tick = 0.0  # a sample is due: the hit that ticks on close()
    environ = EnvironBuilder(path="/page").get_environ()
    response = optimizer(environ, lambda status, headers, exc_info=None: None)
    assert optimizer.governor.in_flight == 1
    del response
    assert optimizer.governor.in_flight == 0
