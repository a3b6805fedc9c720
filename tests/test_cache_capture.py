"""Tests of wsgi_memopt.cache.capture: streaming, close() once, what is (not) stored, isolation.

The capture is the response iterable the middleware hands the server on a miss. These tests
play the server themselves where they need to watch it chunk by chunk (``Server`` below), and
use werkzeug's ``Client`` (through ``helpers.wsgi.wrap``/``get``) everywhere else. Either way
the app is behind wsgiref's validator and werkzeug's lint on both sides of the middleware.

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
from typing import Any

import pytest
from helpers.wsgi import checked, get, wrap
from werkzeug.http import parse_cookie
from werkzeug.middleware import lint
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.test import Client, EnvironBuilder, TestResponse
from werkzeug.wrappers import Response

from wsgi_memopt import MemoryOptimizer
from wsgi_memopt.cache.capture import Capture

MB = 1 << 20
CHUNK = 64 * 1024
WAIT_S = 10.0  # the bound of every wait on another thread; never reached when all is well
# How the test apps mark a response cacheable, where a test is about anything but freshness.
CACHEABLE = (("Cache-Control", "max-age=1800"),)


# -- helpers

_started: list[Any] = []  # every response a ``Server`` started, closed at teardown if left open


@pytest.fixture(autouse=True)
def _close_what_a_failed_test_left_open() -> Iterator[None]:
    yield
    while _started:
        response = _started.pop()
        if not response.closed:
            # The test failed already; closing only keeps its report readable.
            with contextlib.suppress(Exception):
                response.close()


class Server:
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


class CountingApp:
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


# -- 1. streaming


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
    server = Server(optimizer)
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


@pytest.mark.parametrize(
    ("size", "stored"),
    [
        pytest.param(CHUNK // 2, True, id="well-under-the-limit"),
        pytest.param(CHUNK + 1, False, id="one-byte-over"),
    ],
)
def test_body_over_the_item_limit_is_not_stored(size: int, stored: bool) -> None:
    app = CountingApp([b"x"] * size)  # one-byte chunks: the limit is crossed mid-stream
    optimizer, client = wrap(app, cache_item_max_mb=CHUNK / MB)
    for _ in range(2):
        assert get(client, "/").data == b"x" * size
    assert app.calls == (1 if stored else 2)
    assert stats(optimizer)["items"] == int(stored)
    if not stored:
        assert stats(optimizer)["rejected"].get("too-large") == 2


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


# -- 2. close() exactly once


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
    app = CountingApp(headers=response_headers)
    optimizer, client = wrap(app)
    client.open("/page", method=method, headers=request_headers, buffered=True)
    assert app.calls == 1
    assert app.closes == 1
    assert stats(optimizer)["items"] == int(stored)


def test_a_hit_does_not_call_the_app_so_closes_nothing() -> None:
    app = CountingApp(headers=[("ETag", '"v1"'), *CACHEABLE])
    optimizer, client = wrap(app)
    assert get(client, "/page").headers["X-Cache"] == "MISS"
    assert (app.calls, app.closes) == (1, 1)

    assert get(client, "/page").headers["X-Cache"] == "HIT"
    assert head(client, "/page").headers["X-Cache"] == "HIT"
    assert get(client, "/page", headers={"If-None-Match": '"v1"'}).status_code == 304
    assert (app.calls, app.closes) == (1, 1)
    assert stats(optimizer)["hits"] == 3


def test_client_stopping_early_closes_once_and_stores_nothing() -> None:
    app = CountingApp([b"a", b"b", b"c"])
    optimizer = MemoryOptimizer(checked(app), cache_lock_timeout_s=0)
    server = Server(optimizer)
    response = server.call("/page")
    assert next(response) == b"a"
    response.close()
    assert app.bodies[0].produced == 1
    assert app.closes == 1
    assert stats(optimizer)["items"] == 0
    assert stats(optimizer)["rejected"].get("incomplete") == 1


def test_app_raising_mid_body_closes_once_and_stores_nothing() -> None:
    app = CountingApp([b"a", b"b", b"c"], fail_at=1)
    optimizer = MemoryOptimizer(checked(app), cache_lock_timeout_s=0)
    server = Server(optimizer)
    response = server.call("/page")
    with pytest.raises(AppError):
        list(response)
    response.close()
    assert app.closes == 1
    cache = stats(optimizer)
    assert cache["items"] == 0
    assert cache["stores"] == 0
    assert sum(cache["rejected"].values()) == 1


def test_app_close_raising_propagates_stores_nothing_and_closes_once() -> None:
    error = CloseError("close failed")
    app = CountingApp(close_error=error)
    optimizer = MemoryOptimizer(checked(app), cache_lock_timeout_s=0)
    server = Server(optimizer)
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
    first = CountingApp(close_error=CloseError("close failed"))
    later = CountingApp()

    def app(environ: dict[str, Any], start_response: Any) -> Body:
        return (first if not first.calls else later)(environ, start_response)

    optimizer, client = wrap(app, cache_lock_timeout_s=WAIT_S)
    answers, someone_waits = spy_single_flight(monkeypatch, optimizer)
    server = Server(optimizer)
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
    server = Server(optimizer)
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
    app = CountingApp()
    optimizer = MemoryOptimizer(checked(app), cache_lock_timeout_s=0)
    server = Server(optimizer)
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
    app = CountingApp()
    optimizer = MemoryOptimizer(checked(app), cache_lock_timeout_s=0)
    server = Server(optimizer)
    server.call("/page").close()
    assert app.bodies[0].produced == 0
    assert app.closes == 1
    assert stats(optimizer)["items"] == 0
    assert stats(optimizer)["rejected"].get("incomplete") == 1


# -- 3. the legacy write() callable


def test_write_callable_reaches_the_client_and_is_never_stored() -> None:
    calls: list[int] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        calls.append(1)
        write = start_response("200 OK", [("Content-Type", "text/plain"), *CACHEABLE])
        write(b"a")
        return [b"b"]

    # Played by ``Server``: werkzeug's Client drops write() data when buffered=True.
    optimizer = MemoryOptimizer(checked(app), cache_lock_timeout_s=0)
    server = Server(optimizer)
    for _ in range(2):
        server.written.clear()
        response = server.call("/legacy")
        body = b"".join(response)
        response.close()
        assert b"".join(server.written) + body == b"ab"
        assert server.header("X-Cache") == "MISS"
    assert len(calls) == 2
    assert stats(optimizer)["items"] == 0
    assert stats(optimizer)["rejected"].get("write-callable") == 2


# -- 4. exc_info


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
            start_response("500 Internal Server Error", [("Content-Type", "text/plain")], exc_info)
        return [b"error page"]

    # 500 may be stored here: only the exc_info can keep the error page out of the cache.
    optimizer = MemoryOptimizer(checked(app), cache_lock_timeout_s=0, cache_statuses=(200, 500))
    server = Server(optimizer)
    for _ in range(2):
        response = server.call("/broken")
        assert b"".join(response) == b"error page"
        response.close()
        status, _, exc_info = server.responses[-1]
        assert status == "500 Internal Server Error"
        assert exc_info is given[-1]
    assert len(given) == 2  # the app was called again: nothing was stored
    assert stats(optimizer)["items"] == 0
    assert stats(optimizer)["rejected"].get("app-error") == 2


# -- 5. the app raising before it returns


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


# -- 6. one user's page never reaches another


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
    "directive", ["no-store", "private", "no-cache", "No-Store", "Private", "NO-CACHE"]
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


HONEST = b'<a href="http://localhost/next">next</a>'
EVIL = b'<a href="http://evil.example/next">next</a>'


def links_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """Builds absolute links from the host, honouring X-Forwarded-Host as ProxyFix would."""
    host = environ.get("HTTP_X_FORWARDED_HOST") or environ["HTTP_HOST"]
    body = f'<a href="http://{host}/next">next</a>'.encode()
    headers = [("Content-Type", "text/html"), ("Content-Length", str(len(body))), *CACHEABLE]
    start_response("200 OK", headers)
    return [body]


def host_links_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """Builds absolute links from ``HTTP_HOST`` only (which ProxyFix rewrites)."""
    body = f'<a href="http://{environ["HTTP_HOST"]}/next">next</a>'.encode()
    headers = [("Content-Type", "text/html"), ("Content-Length", str(len(body))), *CACHEABLE]
    start_response("200 OK", headers)
    return [body]


def forwarded_setup(placement: str, **settings: Any) -> tuple[MemoryOptimizer, Client]:
    if placement == "app-reads-the-header":
        return wrap(links_app, **settings)
    if placement == "proxy-fix-inside":
        return wrap(ProxyFix(checked(host_links_app), x_host=1), **settings)
    optimizer = MemoryOptimizer(checked(host_links_app), cache_lock_timeout_s=0, **settings)
    return optimizer, Client(checked(ProxyFix(checked(optimizer), x_host=1)), use_cookies=False)


@pytest.mark.parametrize("evil_first", [True, False], ids=["evil-first", "honest-first"])
@pytest.mark.parametrize(
    "placement", ["app-reads-the-header", "proxy-fix-inside", "proxy-fix-outside"]
)
def test_forwarded_host_cannot_poison_the_cache(placement: str, evil_first: bool) -> None:
    optimizer, client = forwarded_setup(placement)
    evil_headers = {"X-Forwarded-Host": "evil.example"}
    for step in ("evil", "honest") if evil_first else ("honest", "evil"):
        if step == "evil":
            response = get(client, "/links", headers=evil_headers)
            assert response.data == EVIL  # the app did use the header: the test is real
            assert response.headers["X-Cache"] == "MISS"
        else:
            assert get(client, "/links").data == HONEST
    for _ in range(2):
        assert get(client, "/links").data == HONEST
        assert get(client, "/links", headers=evil_headers).data == EVIL
    assert all(entry.body == HONEST for entry in optimizer.cache.entries())
    assert stats(optimizer)["bypassed"].get("forwarding-header") == 3


@pytest.mark.parametrize(
    "placement", ["app-reads-the-header", "proxy-fix-inside", "proxy-fix-outside"]
)
def test_forwarded_host_keyed_by_setting_is_stored_apart(placement: str) -> None:
    optimizer, client = forwarded_setup(placement, cache_key_headers=("X-Forwarded-Host",))
    evil_headers = {"X-Forwarded-Host": "evil.example"}
    assert get(client, "/links", headers=evil_headers).data == EVIL
    again = get(client, "/links", headers=evil_headers)
    assert (again.data, again.headers["X-Cache"]) == (EVIL, "HIT")  # it was stored...
    honest = get(client, "/links")
    assert (honest.data, honest.headers["X-Cache"]) == (HONEST, "MISS")  # ...apart
    evil_entries = [entry for entry in optimizer.cache.entries() if entry.body == EVIL]
    assert len(evil_entries) == 1
    assert "evil.example" in str(evil_entries[0].key)


class MethodOverride:
    """Flask's "Adding HTTP Method Overrides" pattern: X-HTTP-Method-Override picks the method."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        method = environ.get("HTTP_X_HTTP_METHOD_OVERRIDE", "").upper()
        if method in ("GET", "HEAD", "POST", "DELETE", "PUT", "PATCH", "OPTIONS"):
            environ["REQUEST_METHOD"] = method
        return self.app(environ, start_response)


def test_a_method_override_filter_behind_the_cache_cannot_store_a_delete_as_the_get() -> None:
    items = ["a", "b"]

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if environ["REQUEST_METHOD"] == "DELETE":
            items.clear()
        body = f"items: {items}".encode()
        start_response(
            "200 OK",
            [("Content-Type", "text/plain"), ("Content-Length", str(len(body))), *CACHEABLE],
        )
        return [body]

    optimizer, client = wrap(MethodOverride(app))
    deleted = get(client, "/items", headers={"X-HTTP-Method-Override": "DELETE"})
    items[:] = ["a", "b"]  # restored

    assert deleted.data == b"items: []"  # the filter did act: the test is real
    assert get(client, "/items").data == b"items: ['a', 'b']"
    assert all(entry.body == b"items: ['a', 'b']" for entry in optimizer.cache.entries())


def test_host_header_is_part_of_the_key() -> None:
    optimizer, client = wrap(host_links_app)
    assert get(client, "/links", base_url="http://evil.example/").data == EVIL
    assert get(client, "/links").data == HONEST
    assert stats(optimizer)["items"] == 2


# -- 7. hit replays


@pytest.mark.parametrize(
    "request_headers",
    [
        pytest.param({}, id="get"),
        pytest.param({"method": "HEAD"}, id="head"),
        pytest.param({"headers": {"If-None-Match": '"v1"'}}, id="not-modified"),
    ],
)
def test_hit_gives_the_server_a_fresh_header_list_each_time(
    request_headers: dict[str, Any],
) -> None:
    app = CountingApp(headers=[("ETag", '"v1"'), ("Content-Length", "11"), *CACHEABLE])
    optimizer = MemoryOptimizer(checked(app), cache_lock_timeout_s=0)
    server = Server(optimizer)

    def serve(**request: Any) -> list[tuple[str, str]]:
        with warnings.catch_warnings():
            # A HEAD hit's Content-Length without a body: see ``head``.
            warnings.filterwarnings(
                "ignore",
                message="Content-Length and the number of bytes sent",
                category=lint.WSGIWarning,
            )
            response = server.call("/page", **request)
            b"".join(response)
            response.close()
        _, headers, _ = server.responses[-1]
        return headers

    # A server adds and replaces headers in the list it was given, as wsgiref's does.
    serve().extend([("Date", "on the miss"), ("Server", "on the miss")])
    assert app.calls == 1
    seen: list[list[tuple[str, str]]] = []
    for _ in range(3):
        headers = serve(**request_headers)
        assert server.header("X-Cache") == "HIT"
        assert all(headers is not earlier for earlier in seen)
        names = [name for name, _ in headers]
        assert "Date" not in names
        assert "Server" not in names
        assert len(names) == len(set(names))
        seen.append(list(headers))
        headers.append(("Date", "on a hit"))
        headers[0] = ("X-Replaced", "by the server")
    assert seen[0] == seen[1] == seen[2]
    assert app.calls == 1


# -- what a HEAD request leaves in the cache


@pytest.mark.parametrize("stored_first", [False, True], ids=["cold", "warm"])
def test_head_refresh_never_stores_an_empty_body_for_get(stored_first: bool) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        # A streamed werkzeug response: on HEAD it sends no body and no Content-Length.
        response = Response(
            (chunk for chunk in (b"full ", b"page")), mimetype="text/plain", headers=CACHEABLE
        )
        return response(environ, start_response)

    optimizer, client = wrap(app)
    if stored_first:
        assert get(client, "/page").data == b"full page"
    refresh = head(client, "/page", headers={"Cache-Control": "no-cache"})
    assert (refresh.status_code, refresh.data) == (200, b"")
    assert get(client, "/page").data == b"full page"
    assert stats(optimizer)["items"] == 1


# -- 9. a response nobody closes cannot jam the process


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
    app = CountingApp([b"hello ", b"world"])
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
    app = CountingApp()  # two chunks, no Content-Length: whole only at the end
    optimizer, client = wrap(app, cache_lock_timeout_s=WAIT_S)
    answers, someone_waits = spy_single_flight(monkeypatch, optimizer)
    server = Server(optimizer)
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
    app = CountingApp(close_error=CloseError("close failed"))
    optimizer = MemoryOptimizer(checked(app), cache_lock_timeout_s=0)
    server = Server(optimizer)
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
    app = CountingApp([b"a", b"b", b"c"])
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
    app = CountingApp(headers=[("ETag", '"v1"')])
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
    app = CountingApp()
    optimizer, client = wrap(app)
    get(client, "/page")
    optimizer.governor.next_tick = 0.0  # a sample is due: the hit that ticks on close()
    environ = EnvironBuilder(path="/page").get_environ()
    response = optimizer(environ, lambda status, headers, exc_info=None: None)
    assert optimizer.governor.in_flight == 1
    del response
    assert optimizer.governor.in_flight == 0
