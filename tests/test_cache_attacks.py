"""The cache's RFC 9111 behaviours as an attacker, or a hostile or buggy app, sees them.

Each test drives the middleware with werkzeug's ``Client`` (behind the WSGI checks of
``helpers.wsgi``) and asks one question: can one user's page reach another, can a request
poison or wipe what others are served, can the cache be made to do unbounded work or to
fail a request? Each one pins down an attack that fails: those it was written for were
found in review and fixed with it.

Time is a :class:`FakeClock` the tests advance; the app is a :class:`CountingApp` (``#1``,
``#2``, ... in each body says which call produced it) or :class:`Origin`, which also answers
``304`` to a conditional request.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest
from helpers.apps import CountingApp, Origin
from helpers.headers import cache_status
from helpers.store import assert_consistent
from helpers.wsgi import (
    checked,
    get,
    opened,
    run_threads,
    wrap,
    wrap_clocked,
    wsgiref_get,
)
from werkzeug.http import http_date
from werkzeug.test import Client

Headers = list[tuple[str, str]]

ETAG = '"v1"'
LAST_MODIFIED = "Sun, 06 Nov 1994 08:49:37 GMT"
LATER_MODIFIED = "Mon, 07 Nov 1994 08:49:37 GMT"
BOUND_S = 5.0  # the longest a test waits for another thread: a bug fails, never hangs

# werkzeug's lint follows RFC 2616, which kept body fields out of a 304 and wanted absolute
# URLs in Location; RFC 9110 allows both, and the tests send them on purpose.
FIELDS_IN_304 = pytest.mark.filterwarnings("ignore:Entity header")
RELATIVE_LOCATION = pytest.mark.filterwarnings("ignore:Absolute URLs required for location")


# -- revalidation: what a 304 may do to the stored entry (RFC 9111 §4.3.4)


@FIELDS_IN_304
@pytest.mark.parametrize(
    ("stored", "not_modified"),
    [
        pytest.param([("ETag", ETAG)], [("ETag", '"v2"')], id="strong-etag"),
        pytest.param([("ETag", ETAG)], [("ETag", 'W/"v2"')], id="weak-etag"),
        pytest.param(
            [("Last-Modified", LAST_MODIFIED)],
            [("Last-Modified", LATER_MODIFIED)],
            id="last-modified",
        ),
    ],
)
def test_a_304_for_another_representation_does_not_freshen_the_stored_one(
    stored: Headers, not_modified: Headers
) -> None:
    app = Origin(
        headers=[("Cache-Control", "max-age=10"), *stored],
        not_modified=[("Cache-Control", "max-age=100"), *not_modified],
    )
    _, client, clock = wrap_clocked(app)
    get(client)
    clock.advance(15)

    answered = get(client)  # the app says: not modified, but it is "v2" now
    clock.advance(5)
    later = get(client)

    # body #1 is the "v1" representation: the 304 did not say it is current.
    assert cache_status(answered).get("detail") != "revalidated"
    assert (later.data, cache_status(later).get("hit")) != (b"body #1", True)


@pytest.mark.parametrize("failure", ["absurd-max-age", "store-down"])
def test_a_failure_while_freshening_never_answers_an_unconditional_get_with_304(
    monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    # 400 digits: a valid delta-seconds, but no float holds it.
    cache_control = f"max-age={'9' * 400}" if failure == "absurd-max-age" else "max-age=10"
    app = Origin(
        headers=[("Cache-Control", "max-age=10"), ("ETag", ETAG)],
        not_modified=[("Cache-Control", cache_control)],
    )
    optimizer, client, clock = wrap_clocked(app)
    get(client)
    clock.advance(15)
    if failure == "store-down":

        def down(*args: Any, **kwargs: Any) -> Any:
            raise ConnectionError("the cache backend is down")

        monkeypatch.setattr(optimizer.cache.store, "put", down)

    response = get(client)  # no If-None-Match, no If-Modified-Since

    assert app.calls == 2
    assert (response.status_code, response.data) == (200, b"body #1")


def test_a_304_that_adds_vary_keeps_the_page_reachable_and_the_books_right() -> None:
    app = Origin(
        headers=[("Cache-Control", "max-age=10"), ("ETag", ETAG)],
        not_modified=[("Cache-Control", "max-age=10"), ("Vary", "Accept-Language")],
    )
    optimizer, client, clock = wrap_clocked(app)
    english = {"Accept-Language": "en"}
    get(client, headers=english)
    clock.advance(15)

    revalidated = get(client, headers=english)
    again = get(client, headers=english)
    then = get(client, headers=english)

    assert cache_status(revalidated)["detail"] == "revalidated"
    assert_consistent(optimizer.cache.store)
    # Under another key now: served once, then fetched anew and stored where lookups go.
    assert cache_status(again) == {"fwd": "miss", "stored": True}
    assert (then.data, cache_status(then).get("hit")) == (again.data, True)
    assert_consistent(optimizer.cache.store)


def test_a_304_without_date_freshens_the_entry_for_its_max_age(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = Origin(
        headers=[("Cache-Control", "max-age=10"), ("ETag", ETAG), ("Date", http_date(time.time()))],
        not_modified=[("Cache-Control", "max-age=10")],
    )
    _, client, clock = wrap_clocked(app)
    get(client)
    # The wall clock (which Date is read against) moves with the cache's own.
    wall = time.time
    monkeypatch.setattr(time, "time", lambda: wall() + clock())
    clock.advance(15)

    revalidated = get(client)
    hit = get(client)

    assert cache_status(revalidated)["detail"] == "revalidated"
    assert (hit.data, cache_status(hit)) == (b"body #1", {"hit": True, "ttl": "10"})
    assert app.calls == 2


@FIELDS_IN_304
def test_a_304_that_sets_a_cookie_is_never_stored_for_others() -> None:
    app = Origin(
        headers=[("Cache-Control", "max-age=10"), ("ETag", ETAG)],
        not_modified=[("Cache-Control", "max-age=10"), ("Set-Cookie", "session=alice")],
    )
    optimizer, client, clock = wrap_clocked(app)
    get(client)
    clock.advance(15)

    alice = get(client)  # her revalidation: the app's 304 sets her cookie
    bob = get(client)

    assert alice.headers.get("Set-Cookie") == "session=alice"
    assert "Set-Cookie" not in bob.headers
    assert len(optimizer.cache) <= 1
    assert all(
        name.lower() != "set-cookie"
        for entry in optimizer.cache.entries()
        for name, _ in entry.headers
    )


# -- single flight and background refreshes: the work one request can cause


def test_concurrent_requests_for_a_stale_entry_ask_the_app_once() -> None:
    requests = 5
    conditional_calls: list[int] = []
    all_in = threading.Event()

    class SlowOrigin(Origin):
        """Holds each conditional request until all the test's requests asked, or a second
        passed: long enough for them to arrive, whether they wait for each other or not."""

        def __call__(
            self, environ: dict[str, Any], start_response: Callable[..., Any]
        ) -> list[bytes]:
            if "HTTP_IF_NONE_MATCH" in environ:
                conditional_calls.append(1)
                if len(conditional_calls) == requests:
                    all_in.set()
                all_in.wait(1.0)
            return super().__call__(environ, start_response)

    app = SlowOrigin(
        headers=[("Cache-Control", "max-age=10"), ("ETag", ETAG)],
        not_modified=[("Cache-Control", "max-age=10")],
    )
    optimizer, client, clock = wrap_clocked(app, cache_lock_timeout_s=BOUND_S)
    get(client)
    clock.advance(15)
    bodies: list[bytes] = []

    def request(_: int) -> None:
        bodies.append(get(Client(checked(optimizer), use_cookies=False)).data)

    run_threads(requests, request, BOUND_S)

    assert bodies == [b"body #1"] * requests
    assert len(conditional_calls) == 1


@pytest.mark.parametrize("answer", ["too-large", "no-store"])
def test_a_background_refresh_stops_reading_a_body_it_will_not_store(answer: str) -> None:
    swr = "max-age=10, stale-while-revalidate=60"
    pulled: list[int] = []

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if not pulled:  # the first response: small, and stored
            pulled.append(0)
            start_response("200 OK", [("Content-Type", "text/plain"), ("Cache-Control", swr)])
            return [b"small"]
        cache_control = swr if answer == "too-large" else "no-store"
        start_response("200 OK", [("Content-Type", "text/plain"), ("Cache-Control", cache_control)])

        def stream() -> Iterator[bytes]:
            for n in range(1, 1001):
                pulled.append(n)
                yield b"x" * 1024

        return stream()

    _, client, clock = wrap_clocked(app, cache_item_max_mb=0.01)
    get(client)
    clock.advance(15)

    stale = opened(client)
    assert stale.data == b"small"
    stale.close()  # the refresh runs now, in the thread that served the stale copy

    assert len(pulled) < 20  # the item limit is 10 KB: nothing past it is of any use


# -- one user's page reaching another


def test_a_must_revalidate_page_built_for_a_cookie_never_reaches_another_user() -> None:
    app = CountingApp(
        headers=[("Cache-Control", "max-age=60, must-revalidate")], echo="HTTP_COOKIE"
    )
    _, client = wrap(app)

    alice = get(client, headers={"Cookie": "session=alice"})
    anonymous = get(client)

    assert b"alice" in alice.data
    assert b"alice" not in anonymous.data


def test_a_refresh_with_credentials_leaves_the_page_cacheable_for_everyone() -> None:
    swr = "public, max-age=10, stale-while-revalidate=60"
    app = CountingApp(headers=[("Cache-Control", swr)])
    optimizer, client, clock = wrap_clocked(app, cache_lock_timeout_s=5)
    get(client)
    clock.advance(15)
    app.headers = [("Cache-Control", "max-age=60")]  # personal to a logged-in user: not public

    stale = opened(client, headers={"Cookie": "session=mallory"})
    assert stale.data == b"body #1"
    stale.close()  # the refresh runs, with her cookie, and is not stored

    (entry,) = optimizer.cache.entries()
    assert not optimizer.cache.store.is_uncacheable(entry.key, clock())


# -- stale-if-error (RFC 5861 §4)


def test_stale_if_error_stands_in_for_an_app_that_raises_after_start_response() -> None:
    down = False

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if not down:
            cache_control = "max-age=10, stale-if-error=60"
            start_response(
                "200 OK", [("Content-Type", "text/plain"), ("Cache-Control", cache_control)]
            )
            return [b"stored"]
        start_response("200 OK", [("Content-Type", "text/plain"), ("Set-Cookie", "a=1")])
        raise RuntimeError("the app failed after start_response")

    optimizer, _, clock = wrap_clocked(app)
    assert wsgiref_get(optimizer)[2] == b"stored"
    clock.advance(15)
    down = True

    status, _, body = wsgiref_get(optimizer)

    assert (status, body) == ("200 OK", b"stored")
