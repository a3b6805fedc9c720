"""Tests of the cache's RFC 9111 behaviours, each through the middleware:

- the current age (RFC 9111 §4.2.3): an ``Age`` from upstream and the response delay count
  against the freshness lifetime; an invalid ``Age`` makes a response stale;
- strict dates: an invalid ``Expires`` means "already expired" (§5.3);
- invalidation by unsafe methods (§4.4), of the target URI and of the same-host URIs named by
  ``Location`` and ``Content-Location``;
- revalidation of stale entries (§4.3): conditional requests to the app, a ``304`` freshening
  the entry, a ``200`` replacing it; ``no-cache`` responses revalidated before every reuse;
- ``must-revalidate`` and its kin never served stale; ``stale-while-revalidate`` and
  ``stale-if-error`` (RFC 5861) otherwise;
- targeted fields (RFC 9213), ``must-understand``, and what the counts say.

Time is a :class:`FakeClock` the tests advance; what the app answers is a
:class:`CountingApp` (``#1``, ``#2``, ... in each body tells which call produced it), or
:class:`Origin`, one that also answers ``304`` to a conditional request and can fail.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import pytest
from helpers.apps import CountingApp, Origin
from helpers.headers import cache_status
from helpers.wsgi import get, open_, opened, wrap, wrap_clocked
from werkzeug.http import http_date

from wsgi_memopt import MemoryOptimizer
from wsgi_memopt.cache.policy import key_query

Headers = list[tuple[str, str]]

# werkzeug's lint takes a HEAD response's Content-Length for a short body (RFC 9110 §9.3.2
# allows it); filtered only on HEAD tests.
HEAD_LINT = pytest.mark.filterwarnings("ignore:Content-Length and the number of bytes sent")
# wsgiref's validator warns about any method outside the standard eight.
UNKNOWN_METHOD = pytest.mark.filterwarnings("ignore:Unknown REQUEST_METHOD")
# werkzeug's lint follows RFC 2616, which kept body fields out of a 304; RFC 9110 §8.6 allows
# a Content-Length there, and the test sends such fields to show they replace nothing stored.
FIELDS_IN_304 = pytest.mark.filterwarnings("ignore:Entity header")

ETAG = '"v1"'
LAST_MODIFIED = "Sun, 06 Nov 1994 08:49:37 GMT"
EPOCH = "Thu, 01 Jan 1970 00:00:00 GMT"


def http_now(offset_s: float = 0.0) -> str:
    """An HTTP date ``offset_s`` seconds from the real now (``Date`` is read off the wall
    clock, the cache's deadlines off its own)."""
    return http_date(time.time() + offset_s)


def stale_counts(optimizer: MemoryOptimizer) -> dict[str, int]:
    """``stats()["stale"]``: stale responses served, and entries revalidated, by how."""
    return dict(optimizer.cache.stats()["stale"])


# -- the current age (RFC 9111 §4.2.3)


def test_an_upstream_age_counts_against_max_age() -> None:
    app = CountingApp(headers=[("Cache-Control", "max-age=60"), ("Age", "50")])
    _, client, clock = wrap_clocked(app)
    miss = get(client)
    assert cache_status(miss) == {"fwd": "miss", "stored": True}

    first = get(client)
    clock.advance(5)
    later = get(client)
    clock.advance(5)  # 60 s old now: stale, with nothing to revalidate it with
    expired = get(client)

    assert (first.headers["Age"], cache_status(first)) == ("50", {"hit": True, "ttl": "10"})
    assert (later.headers["Age"], cache_status(later)) == ("55", {"hit": True, "ttl": "5"})
    assert later.headers.getlist("Age") == ["55"]  # the stored Age is replaced, not repeated
    assert expired.data == b"body #2"
    assert app.calls == 2


def test_the_response_delay_counts_against_max_age() -> None:
    # Date says the response left its origin 30 s ago: it is 30 s old on arrival.
    app = CountingApp(headers=[("Cache-Control", "max-age=60"), ("Date", http_now(-30))])
    _, client, clock = wrap_clocked(app)
    get(client)

    clock.advance(28)
    hit = get(client)
    clock.advance(3)
    expired = get(client)

    assert hit.data == b"body #1"
    assert 58 <= int(hit.headers["Age"]) <= 59  # whole seconds of Date, not timing
    assert expired.data == b"body #2"


def test_an_age_beyond_max_age_is_never_served_from_the_cache() -> None:
    app = CountingApp(headers=[("Cache-Control", "max-age=60"), ("Age", "90")])
    optimizer, client = wrap(app)

    miss = get(client)
    again = get(client)

    assert cache_status(miss) == {"fwd": "miss", "detail": "stale"}
    assert again.data == b"body #2"
    assert len(optimizer.cache) == 0


@pytest.mark.parametrize(
    "ages",
    [
        pytest.param(["abc"], id="word"),
        pytest.param(["-1"], id="negative"),
        pytest.param(["1.5"], id="fraction"),
        pytest.param(["7200,0"], id="list"),
        pytest.param(["1", "2"], id="two-lines"),
        pytest.param(["1;a=b"], id="parameter"),
    ],
)
def test_an_invalid_age_makes_the_response_stale(ages: list[str]) -> None:
    headers = [("Cache-Control", "max-age=3600"), *(("Age", age) for age in ages)]
    app = CountingApp(headers=headers)
    optimizer, client = wrap(app)

    miss = get(client)
    again = get(client)

    assert cache_status(miss) == {"fwd": "miss", "detail": "stale"}
    assert again.data == b"body #2"
    assert len(optimizer.cache) == 0


def test_a_valid_age_with_surrounding_whitespace_counts() -> None:
    app = CountingApp(headers=[("Cache-Control", "max-age=60"), ("Age", " 20 ")])
    _, client = wrap(app)
    get(client)

    hit = get(client)

    assert (hit.headers["Age"], cache_status(hit)) == ("20", {"hit": True, "ttl": "40"})


# -- strict dates: an invalid Expires is already expired (RFC 9111 §5.3)


@pytest.mark.parametrize(
    "expires",
    [
        pytest.param(["Thu, 18-Aug-2050 02:01:18 GMT"], id="dashes"),
        pytest.param(["Thu, 18 Aug 50 02:01:18 GMT"], id="2-digit-year"),
        pytest.param(["Thu 18 Aug 2050 02:01:18 GMT"], id="no-comma"),
        pytest.param(["Thu, 18 Aug 2050 02.01.18 GMT"], id="periods"),
        pytest.param(["Thu, 18 Aug 2050 2:01:18 GMT"], id="1-digit-hour"),
        pytest.param(["Thu, 18 Aug 2050 02:01:18 AEST"], id="aest"),
        pytest.param(["Thu, 18 Aug 2050 02:01:18 GMT"] * 2, id="two-lines"),
        pytest.param(["0"], id="zero"),
    ],
)
def test_an_invalid_expires_is_not_stored(expires: list[str]) -> None:
    app = CountingApp(headers=[("Expires", value) for value in expires])
    optimizer, client = wrap(app)

    miss = get(client)
    again = get(client)

    assert cache_status(miss) == {"fwd": "miss", "detail": "stale"}
    assert again.data == b"body #2"
    assert len(optimizer.cache) == 0


def test_a_valid_expires_is_stored() -> None:
    # The counterpart of the invalid ones: the same date, spelled as RFC 9110 says.
    app = CountingApp(headers=[("Expires", "Thu, 18 Aug 2050 02:01:18 GMT")])
    _, client = wrap(app, cache_ttl_s=100)
    get(client)

    hit = get(client)

    assert cache_status(hit) == {"hit": True, "ttl": "100"}


# -- invalidation by unsafe methods (RFC 9111 §4.4)

# werkzeug's lint follows RFC 2616, which wanted an absolute URI in Location; RFC 9110 §10.2.2
# allows any URI reference, and the cache must resolve it.
RELATIVE_LOCATION = pytest.mark.filterwarnings("ignore:Absolute URLs required for location")


def site(
    pages: CountingApp, status: str, headers: Headers | None = None
) -> Callable[..., Iterable[bytes]]:
    """GETs (and HEADs) answered by ``pages``; any other method by ``status`` and
    ``headers``, with an empty body."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ["REQUEST_METHOD"] in ("GET", "HEAD"):
            return pages(environ, start_response)
        # An empty body, typed unless the status forbids a body (PEP 3333's validator).
        typed = [] if status.startswith("204") else [("Content-Type", "text/plain")]
        start_response(status, [*typed, *(headers or []), ("Content-Length", "0")])
        return []

    return app


def stored_paths(optimizer: MemoryOptimizer) -> set[str]:
    """The path and query of every stored entry, as ``/p?q``."""
    paths = set()
    for entry in optimizer.cache.entries():
        query = key_query(entry.base_key)
        paths.add(f"{entry.path}?{query}" if query else entry.path)
    return paths


@pytest.mark.parametrize(
    "method",
    ["POST", "PUT", "DELETE", "PATCH", pytest.param("PURGE", marks=UNKNOWN_METHOD)],
)
@pytest.mark.parametrize("status", ["200 OK", "201 Created", "204 No Content", "303 See Other"])
def test_a_successful_unsafe_method_invalidates_its_uri(method: str, status: str) -> None:
    pages = CountingApp()
    optimizer, client = wrap(site(pages, status))
    for path in ("/page", "/page?x=1", "/other"):
        get(client, path)

    open_(client, method, "/page")

    assert stored_paths(optimizer) == {"/page?x=1", "/other"}  # another query is another URI
    assert get(client, "/page").data == b"body #4"
    assert get(client, "/other").data == b"body #3"


@pytest.mark.parametrize(
    "status", ["400 Bad Request", "404 Not Found", "409 Conflict", "500 Internal Server Error"]
)
def test_an_error_answer_invalidates_nothing(status: str) -> None:
    pages = CountingApp()
    optimizer, client = wrap(site(pages, status))
    get(client, "/page")

    open_(client, "POST", "/page")

    assert stored_paths(optimizer) == {"/page"}
    assert get(client, "/page").data == b"body #1"


@RELATIVE_LOCATION
def test_options_invalidates_nothing() -> None:
    pages = CountingApp()
    optimizer, client = wrap(site(pages, "200 OK", [("Location", "/other")]))
    for path in ("/page", "/other"):
        get(client, path)

    open_(client, "OPTIONS", "/page")

    assert stored_paths(optimizer) == {"/page", "/other"}


def test_invalidation_drops_every_variant_of_the_uri() -> None:
    pages = CountingApp(headers=[("Cache-Control", "max-age=60"), ("Vary", "Accept-Language")])
    optimizer, client = wrap(site(pages, "204 No Content"))
    for language in ("en", "fr"):
        get(client, "/page", headers={"Accept-Language": language})
    assert len(optimizer.cache) == 2

    open_(client, "DELETE", "/page")

    assert len(optimizer.cache) == 0
    assert get(client, "/page", headers={"Accept-Language": "fr"}).data == b"body #3"


@RELATIVE_LOCATION
@pytest.mark.parametrize("field", ["Location", "Content-Location"])
@pytest.mark.parametrize(
    "target",
    [
        pytest.param("/other", id="absolute-path"),
        pytest.param("other", id="relative-path"),
        pytest.param("../other", id="dot-segments"),
        pytest.param("http://localhost/other", id="absolute-uri"),
        pytest.param("//localhost/other", id="network-path"),
    ],
)
def test_the_same_host_uris_it_names_are_invalidated(field: str, target: str) -> None:
    pages = CountingApp()
    optimizer, client = wrap(site(pages, "201 Created", [(field, target)]))
    for path in ("/dir/page", "/other", "/dir/other", "/third"):
        get(client, path)

    open_(client, "POST", "/dir/page")

    # The named URI, resolved against the request's, goes; and the request's own.
    named = "/dir/other" if target == "other" else "/other"
    assert stored_paths(optimizer) == {"/other", "/dir/other", "/third"} - {named}


@RELATIVE_LOCATION
def test_a_named_uri_keeps_its_query() -> None:
    pages = CountingApp()
    optimizer, client = wrap(site(pages, "303 See Other", [("Location", "/other?id=7")]))
    for path in ("/form", "/other?id=7", "/other?id=8", "/other"):
        get(client, path)

    open_(client, "POST", "/form")

    assert stored_paths(optimizer) == {"/other?id=8", "/other"}


@pytest.mark.parametrize(
    "target",
    [
        pytest.param("http://elsewhere.example/other", id="other-host"),
        pytest.param("http://localhost:8080/other", id="other-port"),
        pytest.param("//elsewhere.example/other", id="other-host-network-path"),
    ],
)
def test_a_uri_on_another_host_is_not_invalidated(target: str) -> None:
    pages = CountingApp()
    optimizer, client = wrap(site(pages, "201 Created", [("Location", target)]))
    for path in ("/page", "/other"):
        get(client, path)

    open_(client, "POST", "/page")

    assert stored_paths(optimizer) == {"/other"}


@RELATIVE_LOCATION
def test_a_named_uri_with_a_non_ascii_path_is_invalidated() -> None:
    pages = CountingApp()
    optimizer, client = wrap(site(pages, "201 Created", [("Location", "/caf%C3%A9")]))
    for path in ("/page", "/caf%C3%A9"):
        get(client, path)
    assert len(optimizer.cache) == 2

    open_(client, "POST", "/page")

    assert len(optimizer.cache) == 0


# -- revalidation (RFC 9111 §4.3)

VALIDATORS = [
    pytest.param([("ETag", ETAG)], {"HTTP_IF_NONE_MATCH": ETAG}, id="etag"),
    pytest.param(
        [("Last-Modified", LAST_MODIFIED)],
        {"HTTP_IF_MODIFIED_SINCE": LAST_MODIFIED},
        id="last-modified",
    ),
    pytest.param(
        [("ETag", ETAG), ("Last-Modified", LAST_MODIFIED)],
        {"HTTP_IF_NONE_MATCH": ETAG, "HTTP_IF_MODIFIED_SINCE": LAST_MODIFIED},
        id="both",
    ),
]


@pytest.mark.parametrize(("validators", "preconditions"), VALIDATORS)
def test_a_stale_entry_is_revalidated_with_its_validators(
    validators: Headers, preconditions: dict[str, str]
) -> None:
    app = Origin(
        headers=[("Cache-Control", "max-age=10"), *validators],
        not_modified=[("Cache-Control", "max-age=10")],
    )
    optimizer, client, clock = wrap_clocked(app)
    get(client)
    clock.advance(15)

    # The client's own preconditions (none of which the stored response matches) are not
    # the app's to answer: the entry's validators replace them.
    revalidated = get(
        client,
        headers={"If-None-Match": '"mine"', "If-Modified-Since": EPOCH, "If-Match": "*"},
    )

    assert app.calls == 2
    assert app.preconditions == [{}, preconditions]
    assert (revalidated.status_code, revalidated.data) == (200, b"body #1")
    assert cache_status(revalidated) == {
        "fwd": "stale",
        "fwd-status": "304",
        "detail": "revalidated",
    }
    assert stale_counts(optimizer) == {"revalidated": 1}


@FIELDS_IN_304
def test_a_304_freshens_the_entry_and_updates_its_headers() -> None:
    app = Origin(
        headers=[("Cache-Control", "max-age=10"), ("ETag", ETAG), ("X-Version", "1")],
        not_modified=[
            ("Cache-Control", "max-age=100"),
            ("X-Version", "2"),
            ("X-New", "yes"),
            # Fields of the body: the stored body's stay.
            ("Content-Length", "999"),
            ("Content-Encoding", "gzip"),
        ],
    )
    _, client, clock = wrap_clocked(app)
    get(client)
    clock.advance(15)

    revalidated = get(client)
    clock.advance(90)
    hit = get(client)

    assert app.calls == 2  # the hit did not ask the app
    for response in (revalidated, hit):
        assert (response.status_code, response.data) == (200, b"body #1")
        assert response.headers["X-Version"] == "2"
        assert response.headers["X-New"] == "yes"
        assert response.headers["Cache-Control"] == "max-age=100"
        assert response.headers["ETag"] == ETAG
        assert response.headers["Content-Length"] == str(len(b"body #1"))
        assert "Content-Encoding" not in response.headers
        assert response.headers.getlist("X-Version") == ["2"]
    assert cache_status(hit) == {"hit": True, "ttl": "10"}


def test_a_200_to_the_revalidation_replaces_the_entry() -> None:
    app = Origin(headers=[("Cache-Control", "max-age=10"), ("ETag", ETAG)])  # never a 304
    optimizer, client, clock = wrap_clocked(app)
    get(client)
    clock.advance(15)

    replaced = get(client)
    hit = get(client)

    assert app.preconditions[-1] == {"HTTP_IF_NONE_MATCH": ETAG}
    assert replaced.data == b"body #2"
    assert cache_status(replaced) == {"fwd": "stale", "stored": True}
    assert (hit.data, cache_status(hit)) == (b"body #2", {"hit": True, "ttl": "10"})
    assert app.calls == 2
    assert len(optimizer.cache) == 1
    assert stale_counts(optimizer) == {}


@pytest.mark.parametrize(
    ("validators", "client_headers"),
    [
        pytest.param([("ETag", ETAG)], {"If-None-Match": ETAG}, id="if-none-match"),
        pytest.param([("ETag", ETAG)], {"If-None-Match": f'"x", W/{ETAG}'}, id="weak-in-list"),
        pytest.param(
            [("Last-Modified", LAST_MODIFIED)],
            {"If-Modified-Since": LAST_MODIFIED},
            id="if-modified-since",
        ),
    ],
)
def test_a_client_whose_validators_match_the_revalidated_entry_gets_a_304(
    validators: Headers, client_headers: dict[str, str]
) -> None:
    app = Origin(
        headers=[("Cache-Control", "max-age=10"), *validators],
        not_modified=[("Cache-Control", "max-age=10")],
    )
    _, client, clock = wrap_clocked(app)
    get(client)
    clock.advance(15)

    not_modified = get(client, headers=client_headers)
    hit = get(client)

    assert (not_modified.status_code, not_modified.data) == (304, b"")
    assert not_modified.headers.get("ETag") == dict(validators).get("ETag")
    assert (hit.status_code, hit.data) == (200, b"body #1")
    assert app.calls == 2


def test_a_304_that_forbids_storing_answers_once_and_drops_the_entry() -> None:
    app = Origin(
        headers=[("Cache-Control", "max-age=10"), ("ETag", ETAG)],
        not_modified=[("Cache-Control", "no-store")],
    )
    optimizer, client, clock = wrap_clocked(app)
    get(client)
    clock.advance(15)

    revalidated = get(client)

    assert (revalidated.status_code, revalidated.data) == (200, b"body #1")
    assert revalidated.headers["Cache-Control"] == "no-store"
    assert len(optimizer.cache) == 0
    assert get(client).data == b"body #3"  # unconditional: nothing stored to validate


# -- no-cache on a response: stored only to be revalidated before every reuse


@pytest.mark.parametrize(
    "cache_control", ["no-cache", "no-cache, max-age=600", "max-age=600, NO-CACHE"]
)
def test_a_no_cache_response_is_revalidated_before_every_reuse(cache_control: str) -> None:
    app = Origin(
        headers=[("Cache-Control", cache_control), ("ETag", ETAG)],
        not_modified=[("Cache-Control", cache_control)],
    )
    optimizer, client = wrap(app)
    miss = get(client)
    assert cache_status(miss) == {"fwd": "miss", "stored": True}

    reused = [get(client) for _ in range(3)]

    assert app.calls == 4
    assert app.preconditions[1:] == [{"HTTP_IF_NONE_MATCH": ETAG}] * 3
    for response in reused:
        assert (response.status_code, response.data) == (200, b"body #1")
        assert cache_status(response)["detail"] == "revalidated"
    assert stale_counts(optimizer) == {"revalidated": 3}


def test_a_no_cache_response_without_a_validator_is_not_stored() -> None:
    app = CountingApp(headers=[("Cache-Control", "no-cache, max-age=600")])
    optimizer, client = wrap(app)

    miss = get(client)
    again = get(client)

    assert cache_status(miss) == {"fwd": "miss", "detail": "no-cache"}
    assert again.data == b"body #2"
    assert app.preconditions == [{}, {}]
    assert len(optimizer.cache) == 0


# -- must-revalidate and its kin: never served stale

NEVER_STALE = ["must-revalidate", "proxy-revalidate", "s-maxage=10"]
WINDOWS = "stale-while-revalidate=600, stale-if-error=600"


@pytest.mark.parametrize("directive", NEVER_STALE)
def test_never_served_stale_while_revalidating(directive: str) -> None:
    cache_control = f"max-age=10, {directive}, {WINDOWS}"
    app = Origin(
        headers=[("Cache-Control", cache_control), ("ETag", ETAG)],
        not_modified=[("Cache-Control", cache_control)],
    )
    optimizer, client, clock = wrap_clocked(app, cache_lock_timeout_s=5)
    get(client)
    clock.advance(15)

    response = opened(client)
    asked_before_the_response = app.calls
    body = response.data
    response.close()

    assert asked_before_the_response == 2  # revalidated first, the client waiting
    assert app.preconditions[-1] == {"HTTP_IF_NONE_MATCH": ETAG}
    assert (body, cache_status(response)["detail"]) == (b"body #1", "revalidated")
    assert "stale-while-revalidate" not in stale_counts(optimizer)


@pytest.mark.parametrize("directive", NEVER_STALE)
@pytest.mark.parametrize("failure", ["raises", "503"])
def test_never_served_stale_when_the_app_fails(directive: str, failure: str) -> None:
    app = Origin(headers=[("Cache-Control", f"max-age=10, {directive}, {WINDOWS}"), ("ETag", ETAG)])
    optimizer, client, clock = wrap_clocked(app)
    get(client)
    clock.advance(15)

    if failure == "raises":
        app.down = True
        with pytest.raises(RuntimeError, match="the app is down"):
            get(client)
    else:
        app.status = "503 Service Unavailable"
        response = get(client)
        assert (response.status_code, response.data) == (503, b"body #2")
    assert app.calls == 2
    assert stale_counts(optimizer) == {}


# -- stale-while-revalidate (RFC 5861 §3)

SWR = "max-age=10, stale-while-revalidate=60"


@pytest.mark.parametrize("validators", [[("ETag", ETAG)], []], ids=["etag", "no-validator"])
def test_stale_while_revalidate_serves_at_once_and_refreshes_after_the_response(
    validators: Headers,
) -> None:
    app = Origin(
        headers=[("Cache-Control", SWR), *validators], not_modified=[("Cache-Control", SWR)]
    )
    optimizer, client, clock = wrap_clocked(app)
    get(client)
    clock.advance(15)

    stale = opened(client)
    assert (stale.status_code, stale.data) == (200, b"body #1")
    assert stale.headers["Age"] == "15"
    assert cache_status(stale) == {"hit": True, "ttl": "-5"}  # RFC 9211: stale
    assert app.calls == 1  # nothing asked of the app while the client waits
    stale.close()

    assert app.calls == 2
    assert app.preconditions[-1] == ({"HTTP_IF_NONE_MATCH": ETAG} if validators else {})
    refreshed = get(client)
    assert cache_status(refreshed) == {"hit": True, "ttl": "10"}
    if validators:  # the app said 304: the stored body, fresh again
        assert refreshed.data == b"body #1"
        assert stale_counts(optimizer) == {"stale-while-revalidate": 1, "revalidated": 1}
    else:  # the app's new response replaced it
        assert refreshed.data == b"body #2"
        assert stale_counts(optimizer) == {"stale-while-revalidate": 1}
    assert app.calls == 2


def test_a_refresh_for_a_request_with_credentials_stores_only_what_is_public() -> None:
    # A public page gone stale, served to a logged-in user within stale-while-revalidate:
    # the refresh carries that user's cookie, so the app's new answer is stored only if it
    # is public again; a personal page it answers instead never reaches anyone else.
    swr = "public, max-age=10, stale-while-revalidate=60"
    app = Origin(headers=[("Cache-Control", swr)])
    optimizer, client, clock = wrap_clocked(app)
    get(client)
    clock.advance(15)
    app.headers = [("Cache-Control", "max-age=60")]  # personal now: not public

    stale = opened(client, headers={"Cookie": "session=alice"})
    assert (stale.status_code, stale.data) == (200, b"body #1")
    stale.close()

    assert app.calls == 2  # the refresh ran, with alice's cookie
    assert optimizer.cache.stats()["rejected"] == {"credentials": 1}
    anonymous = get(client)
    assert anonymous.data != b"body #2"  # alice's page was not stored for everyone


def test_one_refresh_for_concurrent_stale_requests() -> None:
    app = Origin(
        headers=[("Cache-Control", SWR), ("ETag", ETAG)], not_modified=[("Cache-Control", SWR)]
    )
    optimizer, client, clock = wrap_clocked(app, cache_lock_timeout_s=5)
    get(client)
    clock.advance(15)

    responses = [opened(client) for _ in range(3)]  # all served before any is closed
    for response in responses:
        assert response.data == b"body #1"
        response.close()

    assert app.calls == 2
    assert stale_counts(optimizer) == {"stale-while-revalidate": 3, "revalidated": 1}


@pytest.mark.parametrize("validators", [[("ETag", ETAG)], []], ids=["etag", "no-validator"])
def test_after_the_stale_while_revalidate_window_the_app_answers_first(
    validators: Headers,
) -> None:
    app = Origin(
        headers=[("Cache-Control", SWR), *validators], not_modified=[("Cache-Control", SWR)]
    )
    optimizer, client, clock = wrap_clocked(app)
    get(client)
    clock.advance(70)  # 10 s of freshness and 60 of the window

    response = opened(client)
    asked_before_the_response = app.calls
    body = response.data
    response.close()

    assert asked_before_the_response == 2
    if validators:
        assert app.preconditions[-1] == {"HTTP_IF_NONE_MATCH": ETAG}
        assert (body, cache_status(response)["detail"]) == (b"body #1", "revalidated")
    else:
        assert (body, cache_status(response)) == (
            b"body #2",
            {"fwd": "miss", "stored": True},
        )
    assert "stale-while-revalidate" not in stale_counts(optimizer)


@HEAD_LINT
def test_a_head_served_stale_refreshes_the_page_with_a_get() -> None:
    app = CountingApp(headers=[("Cache-Control", SWR)], content_length=False)
    _, client, clock = wrap_clocked(app)
    get(client)
    clock.advance(15)

    open_(client, "HEAD")
    refreshed = get(client)

    assert app.calls == 2
    assert refreshed.data == b"body #2"


def test_a_refresh_answered_304_leaves_the_page_cacheable() -> None:
    app = Origin(
        headers=[("Cache-Control", SWR), ("ETag", ETAG)], not_modified=[("Cache-Control", SWR)]
    )
    optimizer, client, clock = wrap_clocked(app, cache_lock_timeout_s=5)
    get(client)
    clock.advance(15)

    get(client)  # served stale, refreshed after it: the app said 304

    (entry,) = optimizer.cache.entries()
    assert not optimizer.cache.store.is_uncacheable(entry.key, clock())


# -- stale-if-error (RFC 5861 §4)

SIE = "max-age=10, stale-if-error=60"


@pytest.mark.parametrize("validators", [[("ETag", ETAG)], []], ids=["etag", "no-validator"])
@pytest.mark.parametrize("failure", ["raises", "500", "503"])
def test_stale_if_error_serves_the_stored_response_when_the_app_fails(
    failure: str, validators: Headers
) -> None:
    app = Origin(headers=[("Cache-Control", SIE), *validators])
    optimizer, client, clock = wrap_clocked(app)
    get(client)
    clock.advance(15)
    if failure == "raises":
        app.down = True
    else:
        app.status = f"{failure} Server Error"

    response = get(client)

    assert app.calls == 2
    assert (response.status_code, response.data) == (200, b"body #1")
    status = cache_status(response)
    if failure == "raises":
        assert status == {"hit": True, "ttl": "-5"}
    else:
        assert status == {"fwd": "stale", "fwd-status": failure, "detail": "stale-if-error"}
    assert stale_counts(optimizer) == {"stale-if-error": 1}


def test_stale_if_error_serves_when_a_lazy_app_raises() -> None:
    app = Origin(headers=[("Cache-Control", SIE)])

    def lazy(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        # A generator app: nothing of it runs, start_response included, before iteration.
        yield from app(environ, start_response)

    optimizer, client, clock = wrap_clocked(lazy)
    get(client)
    clock.advance(15)
    app.down = True

    response = get(client)

    assert (response.status_code, response.data) == (200, b"body #1")
    assert stale_counts(optimizer) == {"stale-if-error": 1}


@pytest.mark.parametrize("failure", ["raises", "503"])
def test_beyond_stale_if_error_the_error_goes_through(failure: str) -> None:
    app = Origin(headers=[("Cache-Control", SIE), ("ETag", ETAG)])
    optimizer, client, clock = wrap_clocked(app)
    get(client)
    clock.advance(70)

    if failure == "raises":
        app.down = True
        with pytest.raises(RuntimeError, match="the app is down"):
            get(client)
    else:
        app.status = "503 Service Unavailable"
        response = get(client)
        assert (response.status_code, response.data) == (503, b"body #2")
    assert stale_counts(optimizer) == {}


def test_stale_if_error_does_not_hide_a_good_answer() -> None:
    app = Origin(headers=[("Cache-Control", SIE)])
    _, client, clock = wrap_clocked(app)
    get(client)
    clock.advance(15)

    assert get(client).data == b"body #2"


def test_a_failed_refresh_counts_no_stale_response_served() -> None:
    cache_control = "max-age=10, stale-while-revalidate=60, stale-if-error=60"
    app = Origin(headers=[("Cache-Control", cache_control)])
    optimizer, client, clock = wrap_clocked(app)
    get(client)
    clock.advance(15)
    app.status = "503 Service Unavailable"

    served = get(client)  # served stale; the refresh after it gets the 503

    assert served.data == b"body #1"
    assert app.calls == 2
    assert stale_counts(optimizer) == {"stale-while-revalidate": 1}


# -- targeted fields (RFC 9213)

TARGETED: list[Any] = [
    # id, settings, response headers, stored
    (
        "cdn-over-no-store",
        {},
        [("Cache-Control", "no-store"), ("CDN-Cache-Control", "max-age=60")],
        True,
    ),
    (
        "cdn-no-store-over-max-age",
        {},
        [("Cache-Control", "max-age=60"), ("CDN-Cache-Control", "no-store")],
        False,
    ),
    (
        "own-over-no-store",
        {},
        [("Cache-Control", "no-store"), ("WSGI-Memopt-Cache-Control", "max-age=60")],
        True,
    ),
    (
        "own-no-store-over-max-age",
        {},
        [("Cache-Control", "max-age=60"), ("WSGI-Memopt-Cache-Control", "no-store")],
        False,
    ),
    (
        "own-before-cdn",
        {},
        [("CDN-Cache-Control", "no-store"), ("WSGI-Memopt-Cache-Control", "max-age=60")],
        True,
    ),
    (
        "own-no-store-before-cdn",
        {},
        [("CDN-Cache-Control", "max-age=60"), ("WSGI-Memopt-Cache-Control", "no-store")],
        False,
    ),
    (
        "order-setting",
        {"cache_targeted_fields": "CDN-Cache-Control, WSGI-Memopt-Cache-Control"},
        [("CDN-Cache-Control", "no-store"), ("WSGI-Memopt-Cache-Control", "max-age=60")],
        False,
    ),
    (
        "only-cdn",
        {"cache_targeted_fields": "CDN-Cache-Control"},
        [("Cache-Control", "max-age=60"), ("WSGI-Memopt-Cache-Control", "no-store")],
        True,
    ),
    (
        "none-ignores-cdn",
        {"cache_targeted_fields": "none"},
        [("Cache-Control", "no-store"), ("CDN-Cache-Control", "max-age=60")],
        False,
    ),
    (
        "none-ignores-cdn-no-store",
        {"cache_targeted_fields": "none"},
        [("Cache-Control", "max-age=60"), ("CDN-Cache-Control", "no-store")],
        True,
    ),
    ("empty-is-ignored", {}, [("Cache-Control", "no-store"), ("CDN-Cache-Control", "")], False),
    ("blank-is-ignored", {}, [("Cache-Control", "max-age=60"), ("CDN-Cache-Control", "  ")], True),
    ("over-expires", {}, [("Expires", EPOCH), ("CDN-Cache-Control", "max-age=60")], True),
    (
        "lower-case-name",
        {},
        [("Cache-Control", "no-store"), ("cdn-cache-control", "max-age=60")],
        True,
    ),
]


@pytest.mark.parametrize(
    ("settings", "headers", "stored"),
    [case[1:] for case in TARGETED],
    ids=[case[0] for case in TARGETED],
)
def test_targeted_fields_take_precedence(
    settings: dict[str, Any], headers: Headers, stored: bool
) -> None:
    app = CountingApp(headers=headers)
    optimizer, client = wrap(app, **settings)

    get(client)
    again = get(client)

    assert again.data == (b"body #1" if stored else b"body #2")
    assert len(optimizer.cache) == int(stored)


def test_a_targeted_field_gives_the_lifetime() -> None:
    app = CountingApp(headers=[("Cache-Control", "max-age=5"), ("CDN-Cache-Control", "max-age=60")])
    _, client, clock = wrap_clocked(app)
    get(client)

    clock.advance(30)
    hit = get(client)

    assert (hit.data, cache_status(hit)) == (b"body #1", {"hit": True, "ttl": "30"})


# -- must-understand (RFC 9111 §5.2.2.3)


@pytest.mark.parametrize(
    ("status", "cache_control", "stored"),
    [
        pytest.param("200 OK", "max-age=60, must-understand, no-store", True, id="understood"),
        pytest.param("599 Custom", "max-age=60, must-understand, no-store", False, id="unknown"),
        pytest.param("599 Custom", "max-age=60", True, id="unknown-without-it"),
        pytest.param("200 OK", "max-age=60, no-store", False, id="no-store-alone"),
    ],
)
def test_must_understand(status: str, cache_control: str, stored: bool) -> None:
    app = CountingApp(status=status, headers=[("Cache-Control", cache_control)])
    optimizer, client = wrap(app, cache_statuses="200,599")

    miss = get(client)
    again = get(client)

    assert again.data == (b"body #1" if stored else b"body #2")
    assert len(optimizer.cache) == int(stored)
    if status.startswith("599") and not stored:
        assert cache_status(miss) == {"fwd": "miss", "detail": "must-understand"}


# -- credentials (RFC 9111 §3.5)


@pytest.mark.parametrize(
    ("cache_control", "shared"),
    [
        # RFC 9111 §3.5 would share it with Authorization; a cookie counts as credentials here
        # too, and a page built for one often says must-revalidate: never shared.
        pytest.param("max-age=60, must-revalidate", False, id="must-revalidate"),
        pytest.param("max-age=60, public", True, id="public"),
        pytest.param("max-age=60, s-maxage=60", True, id="s-maxage"),
        pytest.param("max-age=60", False, id="plain"),
        pytest.param("max-age=60, proxy-revalidate", False, id="proxy-revalidate"),
    ],
)
def test_only_public_or_s_maxage_serves_a_request_with_authorization(
    cache_control: str, shared: bool
) -> None:
    app = CountingApp(headers=[("Cache-Control", cache_control)])
    _, client = wrap(app)
    get(client)

    credentials = {"Authorization": "Basic dTpw"}

    # Stored for a request without credentials, then asked for with them...
    served = get(client, headers=credentials)
    # ...and fetched with them, then asked for again.
    get(client, "/mine", headers=credentials)
    again = get(client, "/mine", headers=credentials)

    if shared:
        assert (served.data, again.data) == (b"body #1", b"body #2")
        assert app.calls == 2
    else:
        assert (served.data, again.data) == (b"body #2", b"body #4")
        assert app.calls == 4
