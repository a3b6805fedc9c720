"""Tests of wsgi_memopt.middleware and the cache's decision: what each request gets, one test
per rule.

- which requests are served from the cache, fetched (and maybe stored) or passed through, and
  why (``Cache-Status``): methods, the key, credentials, bypassing headers, request bodies,
  the request target, ``Vary``, refresh, path rules, the cache switched off;
- what a hit sends: freshness and ``Age``, the stored headers afresh, ``304`` to conditional
  requests;
- a failing cache never failing a request; invalidation; a hit's end of request;
- the plain-hit fast path answering as the full rules do.

What is stored of a response is in ``test_cache_capture.py``; the store's books and caps in
``test_cache_store.py``.

Every app runs behind ``checked`` on both sides of the middleware (see helpers/wsgi.py), and each
test tells a hit from a miss by counting the app's calls: :class:`CountingApp` answers
``#1``, ``#2``, ... so a body also says which call produced it.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from helpers.apps import CACHEABLE, CountingApp
from helpers.clock import DATE, FakeClock
from helpers.headers import cache_status
from helpers.wsgi import checked, get, open_, wrap, wrap_clocked
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from werkzeug.http import http_date
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.test import Client, EnvironBuilder
from werkzeug.wrappers import Response

from wsgi_memopt import MemoryOptimizer
from wsgi_memopt.cache.policy import (
    BYPASS_HEADERS,
    environ_key,
)

Headers = list[tuple[str, str]]
BOUND_S = 5.0  # the longest a test waits for another thread: a bug fails, never hangs

# werkzeug's lint warns that "Content-Length and the number of bytes sent do not match" for
# every HEAD response that carries one, but a HEAD response legitimately has a Content-Length
# and no body (RFC 9110 §9.3.2): a limitation of the lint, filtered only on HEAD tests.
HEAD_LINT = pytest.mark.filterwarnings("ignore:Content-Length and the number of bytes sent")


# -- methods


@pytest.mark.parametrize("method", ["GET", pytest.param("HEAD", marks=HEAD_LINT)])
def test_get_and_head_are_answered_from_a_get_entry(method: str) -> None:
    app = CountingApp(b"hello")
    optimizer, client = wrap(app)
    first = get(client, "/page")
    assert first.data == b"hello #1"

    hit = open_(client, method, "/page")

    assert app.calls == 1
    assert hit.status_code == 200
    assert hit.data == (b"hello #1" if method == "GET" else b"")
    assert hit.headers["Content-Length"] == str(len(b"hello #1"))
    assert hit.headers["X-Cache"] == "HIT"
    assert cache_status(hit) == {"hit": True, "ttl": "1800"}
    assert optimizer.cache.stats()["hits"] == 1


@HEAD_LINT
def test_head_miss_passes_through_and_stores_nothing() -> None:
    app = CountingApp()
    optimizer, client = wrap(app)

    response = open_(client, "HEAD", "/page")

    assert app.calls == 1
    assert response.data == b""
    assert cache_status(response) == {"fwd": "miss", "detail": "head"}
    assert response.headers["X-Cache"] == "MISS"
    assert len(optimizer.cache) == 0
    assert optimizer.cache.stats()["bypassed"] == {"head": 1}
    assert get(client, "/page").data == b"body #2"  # the GET after it is a miss


@pytest.mark.parametrize(
    "method",
    [
        "POST",
        "PUT",
        "DELETE",
        "PATCH",
        "OPTIONS",
        # wsgiref's validator warns about any method outside the standard eight.
        pytest.param("PURGE", marks=pytest.mark.filterwarnings("ignore:Unknown REQUEST_METHOD")),
    ],
)
def test_other_methods_pass_through_and_never_store(method: str) -> None:
    app = CountingApp()
    optimizer, client = wrap(app)

    before = open_(client, method, "/page")
    assert before.data == b"body #1"
    assert len(optimizer.cache) == 0
    assert get(client, "/page").data == b"body #2"  # stored by the GET
    after = open_(client, method, "/page")

    assert after.data == b"body #3"  # not the cached body
    assert app.calls == 3
    for response in (before, after):
        assert response.headers["Cache-Status"] == "wsgi-memopt; fwd=method"
        assert cache_status(response) == {"fwd": "method"}
        assert response.headers["X-Cache"] == "MISS"
    stats = optimizer.cache.stats()
    assert (stats["stores"], stats["bypassed"]) == (1, {"method": 2})
    if method in ("OPTIONS",):
        assert get(client, "/page").data == b"body #2"  # a safe method leaves the entry
    else:
        # A successful unsafe method invalidates the page (RFC 9111 §4.4).
        assert get(client, "/page").data == b"body #4"


# -- the key

KEYED: list[Any] = [
    # id, settings, response headers, request A, request B
    ("query", {}, [], {"path": "/p?a=1"}, {"path": "/p?a=2"}),
    ("query-order", {}, [], {"path": "/p?a=1&b=2"}, {"path": "/p?b=2&a=1"}),
    ("host", {}, [], {"base_url": "http://a.example/"}, {"base_url": "http://b.example/"}),
    (
        "host-port",
        {},
        [],
        {"base_url": "http://a.example/"},
        {"base_url": "http://a.example:8080/"},
    ),
    ("scheme", {}, [], {"base_url": "https://localhost/"}, {"base_url": "http://localhost/"}),
    (
        "script-name",
        {},
        [],
        {"base_url": "http://localhost/app1/"},
        {"base_url": "http://localhost/app2/"},
    ),
    (
        "x-forwarded-proto",
        {},
        [],
        {"headers": {"X-Forwarded-Proto": "https"}},
        {"headers": {"X-Forwarded-Proto": "http"}},
    ),
    ("x-forwarded-proto-absent", {}, [], {}, {"headers": {"X-Forwarded-Proto": "https"}}),
    (
        "x-forwarded-port",
        {},
        [],
        {"headers": {"X-Forwarded-Port": "443"}},
        {"headers": {"X-Forwarded-Port": "80"}},
    ),
    (
        "x-forwarded-prefix",
        {},
        [],
        {"headers": {"X-Forwarded-Prefix": "/a"}},
        {"headers": {"X-Forwarded-Prefix": "/b"}},
    ),
    (
        "vary-accept-language",
        {},
        [("Vary", "Accept-Language")],
        {"headers": {"Accept-Language": "en"}},
        {"headers": {"Accept-Language": "fr"}},
    ),
    (
        "vary-absent-vs-empty",
        {},
        [("Vary", "Accept-Language")],
        {},
        {"headers": {"Accept-Language": ""}},
    ),
    (
        "vary-two-headers",
        {},
        [("Vary", "Accept-Language, Accept-Encoding")],
        {"headers": {"Accept-Language": "en", "Accept-Encoding": "gzip"}},
        {"headers": {"Accept-Language": "en", "Accept-Encoding": "br"}},
    ),
    (
        "cache-key-header-x-tenant",
        {"cache_key_headers": ("x-tenant",)},
        [],
        {"headers": {"X-Tenant": "acme"}},
        {"headers": {"X-Tenant": "globex"}},
    ),
    (
        "cache-key-header-absent-vs-empty",
        {"cache_key_headers": ("x-tenant",)},
        [],
        {},
        {"headers": {"X-Tenant": ""}},
    ),
]


@pytest.mark.parametrize(
    ("settings", "response_headers", "request_a", "request_b"),
    [case[1:] for case in KEYED],
    ids=[case[0] for case in KEYED],
)
def test_key_tells_requests_apart(
    settings: dict[str, Any],
    response_headers: Headers,
    request_a: dict[str, Any],
    request_b: dict[str, Any],
) -> None:
    app = CountingApp(headers=[*response_headers, *CACHEABLE])
    optimizer, client = wrap(app, **settings)
    request_a.setdefault("path", "/p")
    request_b.setdefault("path", "/p")

    assert get(client, **request_a).data == b"body #1"
    assert get(client, **request_b).data == b"body #2"
    hit_a = get(client, **request_a)
    hit_b = get(client, **request_b)

    assert (hit_a.data, hit_b.data) == (b"body #1", b"body #2")
    assert app.calls == 2
    assert cache_status(hit_a)["hit"] is cache_status(hit_b)["hit"] is True
    assert len(optimizer.cache) == 2


SHARED = [
    # settings, response headers, request A, request B: one entry serves both
    pytest.param(
        {}, [], {}, {"headers": {"User-Agent": "curl", "X-Tenant": "acme"}}, id="other-header"
    ),
    pytest.param(
        {},
        [("Vary", "Accept-Language")],
        {"headers": {"Accept-Language": "en", "Accept-Encoding": "gzip"}},
        {"headers": {"Accept-Language": "en", "Accept-Encoding": "br"}},
        id="vary-other-header-differs",
    ),
    pytest.param(
        {},
        [("Vary", "accept-language")],
        {"headers": {"Accept-Language": "en"}},
        {"headers": {"accept-language": "en"}},
        id="vary-name-case",
    ),
]


def test_host_is_keyed_as_sent() -> None:
    # Hosts are case-insensitive, but lower-casing every request's Host on the hit path
    # costs more than the rare second copy of a page under another spelling: by choice,
    # "Example.COM" and "example.com" are two entries, each correct for its requests.
    app = CountingApp()
    _, client = wrap(app)

    assert get(client, "/p", headers={"Host": "Example.COM"}).data == b"body #1"
    assert get(client, "/p", headers={"Host": "example.com"}).data == b"body #2"
    assert get(client, "/p", headers={"Host": "example.com"}).data == b"body #2"
    assert app.calls == 2


@pytest.mark.parametrize(("settings", "response_headers", "request_a", "request_b"), SHARED)
def test_key_ignores_what_it_does_not_name(
    settings: dict[str, Any],
    response_headers: Headers,
    request_a: dict[str, Any],
    request_b: dict[str, Any],
) -> None:
    app = CountingApp(headers=[*response_headers, *CACHEABLE])
    _, client = wrap(app, **settings)

    assert get(client, "/p", **request_a).data == b"body #1"
    hit = get(client, "/p", **request_b)

    assert hit.data == b"body #1"
    assert app.calls == 1
    assert cache_status(hit)["hit"] is True


@pytest.mark.parametrize(
    ("attacker", "response_headers"),
    [
        (
            {"path": "/p", "headers": {"Accept-Language": "HTTP_X_FORWARDED_PROTO=https"}},
            [("Vary", "Accept-Language")],
        ),
        ({"path": "/p%00?HTTP_X_FORWARDED_PROTO=https"}, []),
    ],
    ids=["vary-value", "nul-in-path"],
)
def test_key_parts_cannot_spell_another_key(
    attacker: dict[str, Any], response_headers: Headers
) -> None:
    app = CountingApp(headers=[*response_headers, *CACHEABLE], echo="HTTP_X_FORWARDED_PROTO")
    _, client = wrap(app)
    assert get(client, **attacker).data == b"body #1 None"

    victim = get(client, "/p", headers={"X-Forwarded-Proto": "https", "Accept-Language": "en"})

    assert victim.data == b"body #2 'https'"


# -- credentials


def test_a_page_not_public_to_credentials_is_captured_again_after_a_while() -> None:
    # Remembered as not public, the page's requests with credentials pass through without
    # a capture; after min(cache_ttl_s, 120 s) they are captured again, and a page that has
    # become public is stored and served to everyone.
    headers = [("Cache-Control", "max-age=600")]
    optimizer, client, clock = wrap_clocked(CountingApp(headers=headers))
    alice, bob = {"Cookie": "session=alice"}, {"Cookie": "session=bob"}
    get(client, "/p", headers=alice)
    headers[:] = [("Cache-Control", "public, max-age=600")]

    uncaptured = get(client, "/p", headers=alice)
    clock.advance(121)
    captured = get(client, "/p", headers=alice)
    shared = get(client, "/p", headers=bob)

    assert cache_status(uncaptured) == {"fwd": "miss", "detail": "credentials"}
    assert cache_status(captured) == {"fwd": "miss", "stored": True}
    assert (shared.headers["X-Cache"], shared.data) == ("HIT", captured.data)
    assert optimizer.cache.stats()["bypassed"] == {"credentials": 1}


def test_a_page_not_public_to_credentials_is_still_stored_for_everyone_else() -> None:
    headers = [("Cache-Control", "max-age=600")]
    optimizer, client = wrap(CountingApp(headers=headers))
    get(client, "/p", headers={"Authorization": "Bearer alice"})  # remembered: not public
    headers[:] = [("Cache-Control", "public, max-age=600")]

    anonymous = get(client, "/p")  # stored, public: the page is forgotten as not public
    with_credentials = get(client, "/p", headers={"Authorization": "Bearer bob"})

    assert cache_status(anonymous) == {"fwd": "miss", "stored": True}
    assert (with_credentials.headers["X-Cache"], with_credentials.data) == ("HIT", anonymous.data)
    assert len(optimizer.cache.store._private) == 0


@pytest.mark.parametrize(
    "credentials",
    [{"Authorization": "Bearer alice"}, {"Cookie": "session=alice"}],
    ids=["authorization", "cookie"],
)
def test_credentials_never_share_a_non_public_response(credentials: dict[str, str]) -> None:
    app = CountingApp(headers=[("Cache-Control", "max-age=60")])
    optimizer, client = wrap(app)
    assert get(client, "/p").data == b"body #1"  # anonymous: stored

    own = get(client, "/p", headers=credentials)
    own_again = get(client, "/p", headers=credentials)
    anonymous = get(client, "/p")

    assert (own.data, own_again.data) == (b"body #2", b"body #3")
    assert cache_status(own) == cache_status(own_again) == {"fwd": "miss", "detail": "credentials"}
    assert anonymous.data == b"body #1"  # their responses did not replace the shared one
    assert app.calls == 3
    stats = optimizer.cache.stats()
    # The first was captured and refused; the page is then remembered as not public to
    # requests with credentials, and the second passed through without a capture.
    assert (stats["rejected"], stats["bypassed"]) == ({"credentials": 1}, {"credentials": 1})


@pytest.mark.parametrize(
    "credentials",
    [{"Authorization": "Bearer alice"}, {"Cookie": "session=alice"}],
    ids=["authorization", "cookie"],
)
def test_credentials_first_never_store_a_non_public_response(credentials: dict[str, str]) -> None:
    app = CountingApp()
    optimizer, client = wrap(app)

    assert get(client, "/p", headers=credentials).data == b"body #1"
    assert get(client, "/p").data == b"body #2"  # alice's page did not reach anyone else

    assert optimizer.cache.stats()["rejected"] == {"credentials": 1}


@pytest.mark.parametrize(
    "cache_control", ["public", "public, max-age=60", "s-maxage=60"], ids=lambda v: v
)
@pytest.mark.parametrize(
    "credentials",
    [{"Authorization": "Bearer alice"}, {"Cookie": "session=alice"}],
    ids=["authorization", "cookie"],
)
def test_credentials_share_a_public_response(
    credentials: dict[str, str], cache_control: str
) -> None:
    app = CountingApp(headers=[("Cache-Control", cache_control)])
    _, client = wrap(app, cache_default_ttl_s=60)  # "public" alone gives no lifetime

    stored = get(client, "/p", headers=credentials)
    anonymous = get(client, "/p")
    other_user = get(client, "/p", headers={"Authorization": "Bearer bob"})

    assert cache_status(stored) == {"fwd": "miss", "stored": True}
    assert anonymous.data == other_user.data == b"body #1"
    assert app.calls == 1


@pytest.mark.parametrize(
    "request_headers",
    [
        {"Cookie": "_ga=GA1.2.3; theme=dark"},
        {"Authorization": "Bearer alice"},
        {"Cookie": "session=alice", "X-Forwarded-Proto": "https"},
    ],
    ids=["cookie", "authorization", "cookie-behind-a-tls-proxy"],
)
def test_credentials_hit_a_public_entry_in_the_lane(
    monkeypatch: pytest.MonkeyPatch, request_headers: dict[str, str]
) -> None:
    # Browsers send cookies with nearly every request: a public page must reach them as
    # cheaply as anyone, replayed by the hit lane.
    app = CountingApp(headers=[("Cache-Control", "public, max-age=60")])
    optimizer, client = wrap(app)
    assert get(client, "/p", headers=request_headers).data == b"body #1"  # stored
    full_path = spy_full_path(monkeypatch, optimizer)

    environ = EnvironBuilder(path="/p", headers=request_headers).get_environ()
    responses = [optimizer(dict(environ), ignore_start_response) for _ in range(2)]
    for response in responses:
        assert list(response) == [b"body #1"]
        response.close()  # type: ignore[attr-defined]

    assert full_path == []  # the lane, not the full path
    assert optimizer.governor.in_flight == 0
    assert app.calls == 1


@pytest.mark.parametrize(
    "credentials",
    [{"Authorization": "Bearer alice"}, {"Cookie": "session=alice"}],
    ids=["authorization", "cookie"],
)
def test_credentials_refetching_a_stale_public_entry_store_only_a_public_answer(
    credentials: dict[str, str],
) -> None:
    # The lane finds the public entry stale and hands the request on: still as one with
    # credentials, so that alice's own page (no longer public) is not stored for everyone.
    app = CountingApp(headers=[("Cache-Control", "public, max-age=1")])
    _, client, clock = wrap_clocked(app)
    assert get(client, "/p", headers=credentials).data == b"body #1"  # public: stored
    clock.advance(2)
    app.headers = [("Cache-Control", "max-age=60")]  # no longer public

    alice = get(client, "/p", headers=credentials)
    anonymous = get(client, "/p")

    assert alice.data == b"body #2"
    assert cache_status(alice) == {"fwd": "miss", "detail": "credentials"}
    assert anonymous.data == b"body #3"  # not alice's page
    assert app.calls == 3


@pytest.mark.parametrize(
    ("response_headers", "request_headers", "lane"),
    [
        ([("Vary", "Accept-Encoding"), *CACHEABLE], {"Accept-Encoding": "gzip, br"}, True),
        (
            [("Vary", "Accept-Encoding"), ("Cache-Control", "public, max-age=60")],
            {"Accept-Encoding": "gzip", "Cookie": "theme=dark"},
            True,
        ),
        (
            [("Vary", "Accept-Encoding"), *CACHEABLE],
            {"Accept-Encoding": "gzip", "Cookie": "s=alice"},
            False,
        ),
    ],
    ids=["varying-entry", "varying-public-entry-with-cookies", "varying-private-with-cookies"],
)
def test_a_varying_entry_is_replayed_in_the_lane_to_whom_it_may_reach(
    monkeypatch: pytest.MonkeyPatch,
    response_headers: Headers,
    request_headers: dict[str, str],
    lane: bool,
) -> None:
    # A compressing app's Vary: Accept-Encoding must not cost every hit the full path; a
    # variant that did not say public still never reaches a request with credentials.
    app = CountingApp(headers=response_headers)
    optimizer, client = wrap(app)
    anonymous = {name: value for name, value in request_headers.items() if name != "Cookie"}
    get(client, "/p", headers=anonymous)  # stored, under the Accept-Encoding it was asked with
    get(client, "/p", headers={"Accept-Encoding": "identity"})  # another variant
    full_path = spy_full_path(monkeypatch, optimizer)

    environ = EnvironBuilder(path="/p", headers=request_headers).get_environ()
    responses = [optimizer(dict(environ), ignore_start_response) for _ in range(2)]
    bodies = []
    for response in responses:
        bodies.append(b"".join(response))
        response.close()  # type: ignore[attr-defined]

    if lane:
        assert full_path == []
        assert bodies == [b"body #1"] * 2
        assert app.calls == 2
    else:
        assert bodies == [b"body #3", b"body #4"]  # alice's own pages, never stored
        assert app.calls == 4
    assert optimizer.governor.in_flight == 0


# -- requests that bypass the cache

BYPASS: list[Any] = [
    # id, settings, request headers, detail
    ("request-no-store", {}, {"Cache-Control": "no-store"}, "request-no-store"),
    ("x-forwarded-host", {}, {"X-Forwarded-Host": "evil.example"}, "forwarding-header"),
    ("forwarded", {}, {"Forwarded": "host=evil.example"}, "forwarding-header"),
    ("x-original-url", {}, {"X-Original-URL": "/admin"}, "forwarding-header"),
    ("x-rewrite-url", {}, {"X-Rewrite-URL": "/admin"}, "forwarding-header"),
    # The family frameworks and WSGI filters read to build URLs or pick the method.
    ("x-forwarded-server", {}, {"X-Forwarded-Server": "evil.example"}, "forwarding-header"),
    ("x-forwarded-scheme", {}, {"X-Forwarded-Scheme": "javascript"}, "forwarding-header"),
    ("x-host", {}, {"X-Host": "evil.example"}, "forwarding-header"),
    ("x-original-host", {}, {"X-Original-Host": "evil.example"}, "forwarding-header"),
    ("x-forwarded-ssl", {}, {"X-Forwarded-Ssl": "on"}, "forwarding-header"),
    ("x-http-method-override", {}, {"X-HTTP-Method-Override": "DELETE"}, "forwarding-header"),
    ("x-script-name", {}, {"X-Script-Name": "/evil"}, "forwarding-header"),
    (
        "other-header-keyed",
        {"cache_key_headers": ("x-forwarded-host",)},
        {"Forwarded": "host=evil.example"},
        "forwarding-header",
    ),
]


@pytest.mark.parametrize(
    ("settings", "request_headers", "detail"),
    [case[1:] for case in BYPASS],
    ids=[case[0] for case in BYPASS],
)
def test_request_bypasses_the_cache(
    settings: dict[str, Any], request_headers: dict[str, str], detail: str
) -> None:
    app = CountingApp()
    optimizer, client = wrap(app, **settings)

    bypassed = get(client, "/p", headers=request_headers)
    assert len(optimizer.cache) == 0  # stored nothing
    assert get(client, "/p").data == b"body #2"  # a plain GET: stored
    again = get(client, "/p", headers=request_headers)

    assert (bypassed.data, again.data) == (b"body #1", b"body #3")  # never the cached body
    for response in (bypassed, again):
        assert response.headers["Cache-Status"] == f"wsgi-memopt; fwd=bypass; detail={detail}"
        assert response.headers["X-Cache"] == "MISS"
    stats = optimizer.cache.stats()
    assert (stats["stores"], stats["bypassed"]) == (1, {detail: 2})


@pytest.mark.parametrize("header", BYPASS_HEADERS)
def test_every_forwarding_header_passes_through_and_the_lane_agrees(header: str) -> None:
    # Whatever the header's name in policy's list, the request reaches the app, is never
    # answered from the cache (a plain GET stored the page first) and stores nothing.
    app = CountingApp(echo=environ_key(header))
    optimizer, client = wrap(app)
    assert get(client, "/p").data == b"body #1 None"

    responses = [get(client, "/p", headers={header: "evil"}) for _ in range(2)]

    assert [r.data for r in responses] == [b"body #2 'evil'", b"body #3 'evil'"]
    assert {cache_status(r)["detail"] for r in responses} == {"forwarding-header"}
    assert optimizer.cache.stats()["stores"] == 1


@pytest.mark.parametrize(
    "header",
    ["X-Forwarded-Host", "Forwarded", "X-Original-URL", "X-Rewrite-URL", "X-Forwarded-Server"],
)
def test_forwarding_header_in_cache_key_headers_is_keyed(header: str) -> None:
    app = CountingApp(echo="HTTP_" + header.upper().replace("-", "_"))
    _, client = wrap(app, cache_key_headers=(header,))

    first = get(client, "/p", headers={header: "one"})
    second = get(client, "/p", headers={header: "two"})
    hits = [get(client, "/p", headers={header: value}) for value in ("one", "two")]

    assert (
        [r.data for r in hits] == [first.data, second.data] == [b"body #1 'one'", b"body #2 'two'"]
    )
    assert app.calls == 2
    assert cache_status(first) == {"fwd": "miss", "stored": True}
    assert get(client, "/p").data == b"body #3 None"  # absent is a third entry


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
    assert optimizer.cache.stats()["bypassed"].get("forwarding-header") == 3


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


# -- requests with a body

BODIES: list[Any] = [
    # id, request keywords
    ("form", {"data": {"q": "secret"}}),
    ("json", {"json": {"q": "secret"}}),
    (
        "chunked",
        {"environ_overrides": {"HTTP_TRANSFER_ENCODING": "chunked", "wsgi.input_terminated": True}},
    ),
]


@pytest.mark.parametrize("method", ["GET", pytest.param("HEAD", marks=HEAD_LINT)])
@pytest.mark.parametrize(
    ("request_kwargs"), [case[1] for case in BODIES], ids=[c[0] for c in BODIES]
)
def test_a_get_or_head_with_a_body_passes_through(
    method: str, request_kwargs: dict[str, Any]
) -> None:
    # A page built from a body is not the page of the plain key: it is neither served from
    # nor stored under it.
    app = CountingApp(echo="CONTENT_TYPE")
    optimizer, client = wrap(app)
    assert get(client, "/p").data == b"body #1 None"  # stored

    with_body = open_(client, method, "/p", **request_kwargs)
    plain = get(client, "/p")

    assert app.calls == 2
    assert cache_status(with_body) == {"fwd": "bypass", "detail": "request-body"}
    assert plain.data == b"body #1 None"
    assert optimizer.cache.stats()["bypassed"] == {"request-body": 1}


def test_a_get_with_an_empty_body_is_a_plain_request() -> None:
    app = CountingApp()
    _, client = wrap(app)
    get(client, "/p")

    hit = get(client, "/p", environ_overrides={"CONTENT_LENGTH": "0"})
    also_hit = get(client, "/p", environ_overrides={"CONTENT_LENGTH": ""})

    assert cache_status(hit)["hit"] is cache_status(also_hit)["hit"] is True
    assert app.calls == 1


# -- the request target as the server received it


@pytest.mark.parametrize(
    "raw_target",
    ["RAW_URI", "REQUEST_URI"],
    ids=["gunicorn-werkzeug", "uwsgi-waitress"],
)
def test_an_absolute_form_request_target_cannot_poison_the_origin_form_page(
    raw_target: str,
) -> None:
    # An app that builds links from the raw target (RAW_URI under gunicorn, REQUEST_URI
    # under uWSGI) answers "GET http://evil.example/p" with evil links: stored, they must
    # not reach "GET /p", whose PATH_INFO is the same.
    optimizer, _ = wrap(CountingApp(echo=raw_target))

    def fetch(target: str) -> bytes:
        environ = EnvironBuilder(path="/p").get_environ()
        del environ["RAW_URI"], environ["REQUEST_URI"]  # the server sets one of them
        environ[raw_target] = target
        return served(optimizer, environ)[2]

    assert fetch("http://evil.example/p") == b"body #1 'http://evil.example/p'"
    assert fetch("/p") == b"body #2 '/p'"
    assert fetch("/p") == b"body #2 '/p'"  # a hit, of its own entry
    assert fetch("http://evil.example/p") == b"body #1 'http://evil.example/p'"


def test_a_percent_encoded_spelling_of_a_path_is_another_entry() -> None:
    # /a%2Fb and /a/b share PATH_INFO; an app routing on RAW_URI tells them apart.
    app = CountingApp(echo="RAW_URI")
    _, client = wrap(app)

    encoded = get(client, "/a/b", environ_overrides={"RAW_URI": "/a%2Fb"})
    plain = get(client, "/a/b", environ_overrides={"RAW_URI": "/a/b"})

    assert (encoded.data, plain.data) == (b"body #1 '/a%2Fb'", b"body #2 '/a/b'")


# -- Vary: names and values


def test_a_value_sent_under_another_header_never_selects_a_variant() -> None:
    # The page varied on Accept-Encoding, then on X-Flag: "X-Flag: gzip" with no
    # Accept-Encoding must not be given the gzip body stored under Accept-Encoding: gzip.
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        vary = "X-Flag" if switched else "Accept-Encoding"
        chosen = environ.get("HTTP_" + vary.upper().replace("-", "_"))
        body = b"GZIP BYTES" if chosen == "gzip" and vary == "Accept-Encoding" else b"text"
        headers = [("Content-Type", "text/plain"), ("Vary", vary), *CACHEABLE]
        start_response("200 OK", [*headers, ("Content-Length", str(len(body)))])
        return [body]

    switched = False
    _, client = wrap(app)
    assert get(client, "/p", headers={"Accept-Encoding": "gzip"}).data == b"GZIP BYTES"
    switched = True
    assert get(client, "/p", headers={"X-Flag": "other"}).data == b"text"

    flagged = get(client, "/p", headers={"X-Flag": "gzip"})

    assert flagged.data == b"text"
    assert flagged.headers["X-Cache"] == "MISS"


# -- refresh


@pytest.mark.parametrize(
    "request_headers",
    [
        {"Cache-Control": "no-cache"},
        {"Cache-Control": "max-age=0"},
        {"Cache-Control": "no-cache, max-age=60"},
        {"Pragma": "no-cache"},
        {"Pragma": "No-Cache"},
    ],
    ids=["no-cache", "max-age-0", "no-cache-and-max-age", "pragma", "pragma-case"],
)
def test_request_refresh_skips_and_replaces_the_stored_copy(
    request_headers: dict[str, str],
) -> None:
    app = CountingApp()
    optimizer, client = wrap(app)
    assert get(client, "/p").data == b"body #1"

    refreshed = get(client, "/p", headers=request_headers)
    after = get(client, "/p")

    assert refreshed.data == b"body #2"
    assert cache_status(refreshed) == {"fwd": "request", "stored": True}
    assert after.data == b"body #2"  # the new body
    assert cache_status(after)["hit"] is True
    assert app.calls == 2
    assert len(optimizer.cache) == 1


@pytest.mark.parametrize(
    "request_headers",
    [
        {"Pragma": "no-cache", "Cache-Control": "max-age=60"},
        {"Pragma": "no-cache", "Cache-Control": ""},
        {"Cache-Control": "max-age=60"},
        {"Cache-Control": "max-age=garbage"},
        {"Cache-Control": "only-if-cached"},
        {"Pragma": "x-other"},
    ],
    ids=[
        "pragma-ignored-with-cache-control",
        "pragma-ignored-with-empty-cache-control",
        "max-age-60",
        "max-age-garbage",
        "only-if-cached",
        "pragma-other",
    ],
)
def test_request_directives_that_do_not_refresh(request_headers: dict[str, str]) -> None:
    app = CountingApp()
    _, client = wrap(app)
    get(client, "/p")

    hit = get(client, "/p", headers=request_headers)

    assert hit.data == b"body #1"
    assert cache_status(hit)["hit"] is True
    assert app.calls == 1


@HEAD_LINT
@pytest.mark.parametrize("stored_first", [False, True], ids=["cold", "warm"])
def test_head_refresh_does_not_replace_the_get_entry_with_an_empty_body(
    stored_first: bool,
) -> None:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        # A streamed werkzeug response: on HEAD it sends no body and no Content-Length.
        response = Response(
            (chunk for chunk in (b"full ", b"page")), mimetype="text/plain", headers=CACHEABLE
        )
        return response(environ, start_response)

    optimizer, client = wrap(app)
    if stored_first:
        assert get(client, "/p").data == b"full page"

    refresh = open_(client, "HEAD", "/p", headers={"Cache-Control": "no-cache"})

    assert (refresh.status_code, refresh.data) == (200, b"")
    assert cache_status(refresh) == {"fwd": "request", "detail": "head"}  # nothing to store
    assert get(client, "/p").data == b"full page"
    assert len(optimizer.cache) == 1


# -- freshness

FRESHNESS: list[Any] = [
    # id, settings, response headers, expected lifetime
    ("no-header-default-ttl", {"cache_default_ttl_s": 40}, [], 40),
    ("no-header-default-ttl-as-cap", {"cache_default_ttl_s": 100}, [], 100),
    (
        "last-modified-heuristic",
        {},
        [("Date", http_date(DATE)), ("Last-Modified", http_date(DATE - timedelta(seconds=500)))],
        50,
    ),
    (
        "last-modified-heuristic-capped",
        {},
        [("Date", http_date(DATE)), ("Last-Modified", http_date(DATE - timedelta(days=30)))],
        100,
    ),
    (
        "default-ttl-longer-than-heuristic",
        {"cache_default_ttl_s": 80},
        [("Date", http_date(DATE)), ("Last-Modified", http_date(DATE - timedelta(seconds=500)))],
        80,
    ),
    (
        "max-age-beats-default-ttl",
        {"cache_default_ttl_s": 80},
        [("Cache-Control", "max-age=60")],
        60,
    ),
    ("max-age", {}, [("Cache-Control", "max-age=60")], 60),
    ("s-maxage-beats-max-age", {}, [("Cache-Control", "max-age=60, s-maxage=30")], 30),
    ("s-maxage-longer-than-max-age", {}, [("Cache-Control", "max-age=10, s-maxage=30")], 30),
    (
        "max-age-beats-expires",
        {},
        [
            ("Cache-Control", "max-age=60"),
            ("Date", http_date(DATE)),
            ("Expires", http_date(DATE + timedelta(seconds=20))),
        ],
        60,
    ),
    (
        "expires-minus-date",
        {},
        [("Date", http_date(DATE)), ("Expires", http_date(DATE + timedelta(seconds=45)))],
        45,
    ),
    ("max-age-capped", {}, [("Cache-Control", "max-age=5000")], 100),
    ("s-maxage-capped", {}, [("Cache-Control", "s-maxage=5000")], 100),
    (
        "expires-capped",
        {},
        [("Date", http_date(DATE)), ("Expires", http_date(DATE + timedelta(days=1)))],
        100,
    ),
    ("default-ttl", {"cache_ttl_s": 1800, "cache_default_ttl_s": 1800}, [], 1800),
]


@pytest.mark.parametrize(
    ("settings", "response_headers", "lifetime"),
    [case[1:] for case in FRESHNESS],
    ids=[case[0] for case in FRESHNESS],
)
def test_freshness_lifetime(
    settings: dict[str, Any], response_headers: Headers, lifetime: int
) -> None:
    # cache_ttl_s is 100 unless said otherwise: every lifetime is capped by it.
    app = CountingApp(headers=response_headers)
    optimizer, client, clock = wrap_clocked(app, **{"cache_ttl_s": 100, **settings})
    get(client, "/p")

    fresh = get(client, "/p")
    clock.advance(lifetime - 0.5)
    last = get(client, "/p")
    clock.advance(0.5)
    expired = get(client, "/p")

    assert cache_status(fresh) == {"hit": True, "ttl": str(lifetime)}
    assert last.data == b"body #1"
    assert cache_status(last) == {"hit": True, "ttl": "1"}
    assert last.headers["Age"] == str(lifetime - 1)
    assert expired.data == b"body #2"
    if any(name == "Last-Modified" for name, _ in response_headers):
        # A validator keeps the stale entry, to be revalidated: the app was asked if it
        # changed (it answered anew here, and replaced it).
        assert cache_status(expired)["fwd"] == "stale"
        modified = dict(response_headers)["Last-Modified"]
        assert app.preconditions[-1] == {"HTTP_IF_MODIFIED_SINCE": modified}
    else:
        assert cache_status(expired)["fwd"] == "miss"
        assert optimizer.cache.stats()["expirations"] == 1


def test_expires_without_date_counts_from_now() -> None:
    expires = http_date(datetime.now(timezone.utc) + timedelta(seconds=300))
    app = CountingApp(headers=[("Expires", expires)])
    _, client = wrap(app)
    get(client, "/p")

    ttl = int(cache_status(get(client, "/p"))["ttl"])  # type: ignore[arg-type]

    assert 290 <= ttl <= 300  # whole seconds of HTTP dates, not a timing assertion


@pytest.mark.parametrize("cache_control", ["max-age=abc", "max-age=1.5", "s-maxage=soon"])
def test_invalid_max_age_is_not_stored(cache_control: str) -> None:
    app = CountingApp(headers=[("Cache-Control", cache_control)])
    _, client = wrap(app)

    get(client, "/p")
    get(client, "/p")

    assert app.calls == 2


# -- hit and miss headers


def test_hit_headers_and_age_grow_with_the_clock() -> None:
    app = CountingApp(headers=[("Cache-Control", "max-age=100")])
    optimizer, client, clock = wrap_clocked(app)
    miss = get(client, "/p")
    assert miss.headers["X-Cache"] == "MISS"
    assert miss.headers["Cache-Status"] == "wsgi-memopt; fwd=miss; stored"
    assert "Age" not in miss.headers

    ages = []
    for step in (0, 7.9, 0.1, 40):
        clock.advance(step)
        hit = get(client, "/p")
        assert hit.headers["X-Cache"] == "HIT"
        assert hit.headers.getlist("Age") == [hit.headers["Age"]]  # exactly one
        ages.append((hit.headers["Age"], hit.headers["Cache-Status"]))

    assert ages == [
        ("0", "wsgi-memopt; hit; ttl=100"),
        ("7", "wsgi-memopt; hit; ttl=93"),
        ("8", "wsgi-memopt; hit; ttl=92"),
        ("48", "wsgi-memopt; hit; ttl=52"),
    ]
    assert app.calls == 1
    assert optimizer.cache.stats()["hits"] == 4


def test_hit_replays_the_stored_headers() -> None:
    app = CountingApp(headers=[("X-App", "yes"), ("Cache-Control", "public, max-age=60")])
    _, client = wrap(app)
    miss = get(client, "/p")

    hit = get(client, "/p")

    added = {"Age", "Cache-Status", "X-Cache"}
    assert [(k, v) for k, v in hit.headers if k not in added] == [
        (k, v) for k, v in miss.headers if k not in added
    ]


# -- conditional requests

ETAG = '"v1"'
LAST_MODIFIED = DATE
CONDITIONAL: list[Any] = [
    # id, stored ETag, request headers, expected status
    ("inm-strong", ETAG, {"If-None-Match": '"v1"'}, 304),
    ("inm-weak-request", ETAG, {"If-None-Match": 'W/"v1"'}, 304),
    ("inm-weak-stored", 'W/"v1"', {"If-None-Match": '"v1"'}, 304),
    ("inm-weak-both", 'W/"v1"', {"If-None-Match": 'W/"v1"'}, 304),
    ("inm-list", ETAG, {"If-None-Match": '"a", "v1", "b"'}, 304),
    ("inm-star", ETAG, {"If-None-Match": "*"}, 304),
    ("inm-other", ETAG, {"If-None-Match": '"v2"'}, 200),
    ("inm-garbage", ETAG, {"If-None-Match": ",,;"}, 200),
    ("ims-equal", ETAG, {"If-Modified-Since": http_date(LAST_MODIFIED)}, 304),
    ("ims-after", ETAG, {"If-Modified-Since": http_date(LAST_MODIFIED + timedelta(1))}, 304),
    ("ims-before", ETAG, {"If-Modified-Since": http_date(LAST_MODIFIED - timedelta(1))}, 200),
    ("ims-garbage", ETAG, {"If-Modified-Since": "yesterday"}, 200),
    (
        "inm-miss-beats-ims-hit",
        ETAG,
        {"If-None-Match": '"v2"', "If-Modified-Since": http_date(LAST_MODIFIED)},
        200,
    ),
    (
        "inm-hit-beats-ims-miss",
        ETAG,
        {"If-None-Match": '"v1"', "If-Modified-Since": http_date(LAST_MODIFIED - timedelta(1))},
        304,
    ),
]


@pytest.mark.parametrize(
    ("stored_etag", "request_headers", "status"),
    [case[1:] for case in CONDITIONAL],
    ids=[case[0] for case in CONDITIONAL],
)
def test_conditional_request_answered_from_the_cache(
    stored_etag: str, request_headers: dict[str, str], status: int
) -> None:
    app = CountingApp(
        headers=[
            ("ETag", stored_etag),
            ("Last-Modified", http_date(LAST_MODIFIED)),
            ("Cache-Control", "max-age=60"),
        ]
    )
    _, client = wrap(app)
    get(client, "/p")

    response = get(client, "/p", headers=request_headers)

    assert app.calls == 1
    assert response.status_code == status
    assert cache_status(response) == {"hit": True, "ttl": "60"}
    assert response.headers["ETag"] == stored_etag
    assert response.headers["Cache-Control"] == "max-age=60"
    if status == 304:
        assert response.data == b""
        assert "Content-Type" not in response.headers
        assert "Content-Length" not in response.headers
    else:
        assert response.data == b"body #1"


def test_conditional_request_without_a_stored_validator_gets_the_body() -> None:
    app = CountingApp()
    _, client = wrap(app)
    get(client, "/p")

    response = get(
        client, "/p", headers={"If-None-Match": "*", "If-Modified-Since": http_date(DATE)}
    )

    assert (response.status_code, response.data) == (200, b"body #1")


# -- paths and switches


@pytest.mark.parametrize(
    ("settings", "path", "cached"),
    [
        ({"cache_paths": ("/static/*",)}, "/static/app.css", True),
        ({"cache_paths": ("/static/*",)}, "/static/deep/app.css", True),
        ({"cache_paths": ("/static/*",)}, "/api/items", False),
        ({"cache_paths": ("/static/*", "/docs/*")}, "/docs/a", True),
        ({"cache_exclude_paths": ("/api/*",)}, "/api/items", False),
        ({"cache_exclude_paths": ("/api/*",)}, "/static/app.css", True),
        (
            {"cache_paths": ("/static/*",), "cache_exclude_paths": ("/static/private/*",)},
            "/static/private/key",
            False,
        ),
        ({"cache_paths": ("*.css",)}, "/any/where/app.css", True),
        ({"cache_paths": ("*.css",)}, "/app.js", False),
        # The path as the app's router sees it: no spelling slips past a rule.
        ({"cache_exclude_paths": ("/admin/*",)}, "/./admin/x", False),
        ({"cache_exclude_paths": ("/admin/*",)}, "/static/../admin/x", False),
        ({"cache_exclude_paths": ("/admin/*",)}, "/static/../../admin/x", False),
        ({"cache_paths": ("/reports/*",)}, "/reports/../admin/x", False),
        ({"cache_paths": ("/reports/*",)}, "/reports/./q1", True),
    ],
    ids=[
        "included",
        "included-deep",
        "not-included",
        "second-include",
        "excluded",
        "not-excluded",
        "excluded-beats-included",
        "suffix-glob",
        "suffix-glob-miss",
        "excluded-behind-a-dot-segment",
        "excluded-behind-a-parent-segment",
        "excluded-behind-parents-above-the-root",
        "not-included-behind-a-parent-segment",
        "included-behind-a-dot-segment",
    ],
)
def test_path_globs(settings: dict[str, Any], path: str, cached: bool) -> None:
    app = CountingApp()
    optimizer, client = wrap(app, **settings)

    first = get(client, path)
    second = get(client, path)

    assert app.calls == (1 if cached else 2)
    if not cached:
        assert cache_status(first) == cache_status(second) == {"fwd": "bypass", "detail": "path"}
        assert optimizer.cache.stats()["bypassed"] == {"path": 2}


def test_path_rules_see_merged_slashes() -> None:
    # werkzeug's router merges repeated slashes: //admin//x is /admin/x to the app.
    app = CountingApp()
    _, client = wrap(app, cache_exclude_paths=("/admin/*",))

    for _ in range(2):
        response = get(client, "/", environ_overrides={"PATH_INFO": "//admin//x"})
        assert cache_status(response) == {"fwd": "bypass", "detail": "path"}

    assert app.calls == 2


@pytest.mark.parametrize(
    ("settings", "cached"),
    [
        pytest.param({"cache_exclude_paths": ("/admin/*",)}, False, id="excluded-as-routed"),
        pytest.param({"cache_exclude_paths": ("/app/admin/*",)}, False, id="excluded-in-full"),
        pytest.param({"cache_paths": ("/admin/*",)}, True, id="included-as-routed"),
        pytest.param({"cache_paths": ("/other/*",)}, False, id="included-neither-way"),
    ],
)
def test_path_rules_under_a_mount_hold_whichever_way_they_are_written(
    settings: dict[str, Any], cached: bool
) -> None:
    # Mounted at /app, the router sees /admin/x, a client /app/admin/x: an operator may write
    # either, and an exclusion must hold both ways.
    app = CountingApp()
    _, client = wrap(app, **settings)

    for _ in range(2):
        get(client, "/admin/x", base_url="http://localhost/app/")

    assert app.calls == (1 if cached else 2)


def test_path_globs_see_script_name() -> None:
    app = CountingApp()
    _, client = wrap(app, cache_paths=("/mount/static/*",))

    get(client, "/static/a", base_url="http://localhost/mount/")
    get(client, "/static/a", base_url="http://localhost/mount/")
    get(client, "/static/a")
    get(client, "/static/a")

    assert app.calls == 3


def test_cache_disabled_passes_everything_through() -> None:
    app = CountingApp()
    optimizer, client = wrap(app, cache_enabled=False)

    responses = [get(client, "/p") for _ in range(3)]

    assert [r.data for r in responses] == [b"body #1", b"body #2", b"body #3"]
    for response in responses:
        assert "Cache-Status" not in response.headers
        assert "X-Cache" not in response.headers
    assert optimizer.cache.stats()["misses"] == 0


# -- a failing cache never fails a request


@pytest.mark.parametrize(
    ("part", "method", "settings", "counter"),
    [
        ("store", "lookup", {}, {"bypassed": {"cache-error": 2}}),
        ("flights", "join", {"cache_lock_timeout_s": 1}, {"bypassed": {"cache-error": 2}}),
        ("store", "put", {}, {"rejected": {"cache-error": 2}}),
        ("store", "sweep_due", {}, {"stores": 1}),  # only housekeeping fails: still caching
    ],
    ids=["lookup", "single-flight", "put", "sweep-due"],
)
def test_failing_cache_never_fails_the_request(
    monkeypatch: pytest.MonkeyPatch,
    part: str,
    method: str,
    settings: dict[str, Any],
    counter: dict[str, Any],
) -> None:
    app = CountingApp()
    optimizer, client = wrap(app, **settings)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"{method} is broken")

    monkeypatch.setattr(getattr(optimizer.cache, part), method, broken)

    responses = [get(client, "/p") for _ in range(2)]

    stored = method == "sweep_due"
    assert [(r.status_code, r.data) for r in responses] == [
        (200, b"body #1"),
        (200, b"body #1" if stored else b"body #2"),
    ]
    assert len(optimizer.cache) == stored
    stats = optimizer.cache.stats()
    assert {name: stats[name] for name in counter} == counter


@pytest.mark.parametrize(
    ("request_headers", "broken_key"),
    [
        ({}, "QUERY_STRING"),
        ({"Cookie": "s=alice"}, "QUERY_STRING"),
        ({"X-Forwarded-Proto": "https"}, "HTTP_X_FORWARDED_PROTO"),
        ({"Cache-Control": "no-cache"}, "QUERY_STRING"),
        ({"Accept-Encoding": "gzip"}, "HTTP_ACCEPT_ENCODING"),  # a Vary value
    ],
    ids=["plain", "credentials", "keyed-header", "rule-header", "vary-value"],
)
def test_an_unhashable_environ_value_never_fails_the_request(
    request_headers: dict[str, str], broken_key: str
) -> None:
    # A broken server may put a list where PEP 3333 wants a string: no key can hold it, so
    # the request is passed through (as a cache error), through every lane.
    app = CountingApp(headers=[("Vary", "Accept-Encoding"), *CACHEABLE])
    optimizer = MemoryOptimizer(app, monitor_interval_s=0, gc_freeze=False, cache_lock_timeout_s=0)
    sound = EnvironBuilder(path="/p", headers=request_headers).get_environ()
    served(optimizer, sound)  # an entry under /p, with variants

    broken = dict(sound, **{broken_key: ["not", "a", "string"]})
    answers = [served(optimizer, broken) for _ in range(2)]

    assert [(status, body) for status, _, body in answers] == [
        ("200 OK", b"body #2"),
        ("200 OK", b"body #3"),
    ]
    stats = optimizer.cache.stats()
    # Counted as a cache error: in the lookup, or (a refresh looks nothing up) in the store.
    assert stats["bypassed"].get("cache-error", 0) + stats["rejected"].get("cache-error", 0) == 2
    optimizer.governor.stop()


def test_a_request_without_a_method_is_passed_through() -> None:
    # PEP 3333 requires REQUEST_METHOD; a server that leaves it out still gets the app's
    # answer, never one from the cache.
    calls: list[object] = []

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        calls.append(environ.get("REQUEST_METHOD"))
        start_response("200 OK", [("Content-Type", "text/plain"), *CACHEABLE])
        return [b"body #%d" % len(calls)]

    optimizer = MemoryOptimizer(app, monitor_interval_s=0, gc_freeze=False)
    environ = EnvironBuilder(path="/p").get_environ()
    served(optimizer, environ)
    del environ["REQUEST_METHOD"]

    answers = [served(optimizer, environ) for _ in range(2)]

    assert calls == ["GET", None, None]
    assert [body for _, _, body in answers] == [b"body #2", b"body #3"]
    assert ("Cache-Status", "wsgi-memopt; fwd=method") in answers[0][1]
    assert optimizer.cache.stats()["bypassed"] == {"method": 2}
    optimizer.governor.stop()


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_store_down_never_fails_the_request(monkeypatch: pytest.MonkeyPatch, method: str) -> None:
    app = CountingApp()
    optimizer, client = wrap(app)

    def down(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("the cache backend is down")

    cache = optimizer.cache
    for part, name in [
        (cache.store, "lookup"),
        (cache.store, "put"),
        (cache.store, "sweep_due"),
        (cache.flights, "join"),
        (cache.flights, "end"),
        (cache, "refused"),
        (cache._bypassed, "add"),
    ]:
        monkeypatch.setattr(part, name, down)

    response = open_(client, method, "/p")

    assert (response.status_code, response.data) == (200, b"body #1")


# -- invalidation


def test_invalidate_drops_the_path_and_below() -> None:
    app = CountingApp(echo="PATH_INFO")
    optimizer, client = wrap(app)
    for path in ("/a", "/a/b", "/b", "/b/a"):
        get(client, path)

    dropped = optimizer.cache.invalidate("/a")

    assert dropped == 2
    assert sorted(entry.path for entry in optimizer.cache.entries()) == ["/b", "/b/a"]
    assert get(client, "/a").data == b"body #5 '/a'"
    assert get(client, "/a/b").data == b"body #6 '/a/b'"
    assert get(client, "/b").data == b"body #3 '/b'"
    assert get(client, "/b/a").data == b"body #4 '/b/a'"


def test_invalidate_drops_every_variant() -> None:
    app = CountingApp(headers=[("Vary", "Accept-Language"), *CACHEABLE])
    optimizer, client = wrap(app)
    for language in ("en", "fr"):
        get(client, "/a", headers={"Accept-Language": language})

    assert optimizer.cache.invalidate("/a") == 2

    assert get(client, "/a", headers={"Accept-Language": "en"}).data == b"body #3"
    assert len(optimizer.cache) == 1


def test_clear_empties_the_cache() -> None:
    app = CountingApp()
    optimizer, client = wrap(app)
    for path in ("/a", "/b", "/c"):
        get(client, path)
    held = optimizer.cache.bytes
    assert held > 0

    assert optimizer.cache.clear() == (3, held)

    assert (len(optimizer.cache), optimizer.cache.bytes) == (0, 0)
    assert get(client, "/a").data == b"body #4"


def stored_once(path: str) -> tuple[CountingApp, MemoryOptimizer, dict[str, Any]]:
    """An optimizer whose cache holds ``path`` (fetched once), and an environ that hits it."""
    app = CountingApp()
    optimizer, client = wrap(app)
    get(client, path)
    return app, optimizer, EnvironBuilder(path=path).get_environ()


def ignore_start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
    return None


def spy_full_path(monkeypatch: pytest.MonkeyPatch, optimizer: MemoryOptimizer) -> list[object]:
    """A list that gets an item for each request the optimizer's cache decides by its full
    rules (``decide``) rather than the fast path (``plain_hit``)."""
    calls: list[object] = []
    decide = optimizer.cache.decide

    def counted(environ: Any) -> Any:
        calls.append(environ)
        return decide(environ)

    monkeypatch.setattr(optimizer.cache, "decide", counted)
    return calls


def test_a_hit_is_in_flight_until_the_server_closes_it() -> None:
    # The plain hit skips the GC switch but not the count the governor's pauses wait on.
    _, optimizer, environ = stored_once("/p")
    statuses: list[str] = []
    response = optimizer(environ, lambda status, headers, exc_info=None: statuses.append(status))
    assert statuses == ["200 OK"]
    assert b"".join(response) == b"body #1"
    assert optimizer.governor.in_flight == 1
    response.close()  # type: ignore[attr-defined]
    assert optimizer.governor.in_flight == 0
    assert optimizer.cache.stats()["hits"] == 1


def test_a_hit_closed_twice_neither_raises_nor_leaves_the_count_wrong() -> None:
    # The plain hit's close() is a C count; a server closing a response twice must get no
    # error, and the count never goes below 0: the extra close is forgotten once it shows
    # (at the latest when the governor samples with nothing running).
    _, optimizer, environ = stored_once("/p")

    def hit() -> Any:
        return optimizer(dict(environ), ignore_start_response)

    def one_more_hit_counts_once() -> None:
        response = hit()
        assert optimizer.governor.in_flight == 1
        response.close()
        assert optimizer.governor.in_flight == 0

    first = hit()
    first.close()
    first.close()
    assert optimizer.governor.in_flight == 0
    one_more_hit_counts_once()

    third, fourth = hit(), hit()  # the extra close while another hit is running
    third.close()
    third.close()
    fourth.close()
    assert optimizer.governor.in_flight == 0
    one_more_hit_counts_once()
    assert optimizer.cache.stats()["hits"] == 5


def test_a_hit_ends_when_closed_or_let_go_of_and_never_reads_below_the_hits_running() -> None:
    # A lane hit's response is a tuple: no state of its own, so its close() and its
    # collection are counted apart, and the count keeps the larger of the two ends. It may
    # read high while a closed response is still held, never low, and is exact once the
    # responses are let go of, as every server does right after close().
    _, optimizer, environ = stored_once("/p")
    governor = optimizer.governor

    def hit() -> Any:
        return optimizer(dict(environ), ignore_start_response)

    closed_but_held = hit()
    closed_but_held.close()
    assert governor.in_flight == 0
    running = hit()
    unclosed = hit()
    assert governor.in_flight == 2
    del unclosed  # let go of without close(): ended
    assert governor.in_flight >= 1  # the running one, at least
    del closed_but_held
    assert governor.in_flight == 1
    running.close()
    del running
    assert governor.in_flight == 0


@pytest.mark.parametrize(
    ("request_kwargs", "body"),
    [
        pytest.param({}, b"body #1", id="get"),
        pytest.param({"method": "HEAD"}, b"", id="head"),
        pytest.param({"headers": {"If-None-Match": '"v1"'}}, b"", id="not-modified"),
    ],
)
def test_a_hit_replays_the_body_and_the_headers_afresh(
    request_kwargs: dict[str, Any], body: bytes
) -> None:
    # Each hit gets a response of its own (it ends that request, once) and a header list of
    # its own, since a server changes the one it is given (wsgiref adds Date and Server).
    app = CountingApp(headers=[("ETag", '"v1"'), *CACHEABLE])
    optimizer, _ = wrap(app)
    given: list[tuple[list[tuple[str, str]], list[tuple[str, str]]]] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        given.append((headers, list(headers)))
        headers.append(("Date", "set by the server"))
        headers[0] = ("X-Replaced", "by the server")

    miss = optimizer(EnvironBuilder(path="/p").get_environ(), start_response)
    assert b"".join(miss) == b"body #1"
    miss.close()  # type: ignore[attr-defined]
    environ = EnvironBuilder(path="/p", **request_kwargs).get_environ()
    responses = [optimizer(dict(environ), start_response) for _ in range(3)]
    bodies = []
    for response in responses:
        bodies.append(b"".join(response))
        response.close()  # type: ignore[attr-defined]

    assert len({id(response) for response in responses}) == 3
    assert bodies == [body] * 3
    hits = given[1:]
    assert len({id(headers) for headers, _ in hits}) == 3
    assert hits[0][1] == hits[1][1] == hits[2][1]  # as sent, whatever the server did since
    names = [name for name, _ in hits[0][1]]
    assert "Date" not in names
    assert "X-Replaced" not in names
    assert len(names) == len(set(names))
    assert dict(hits[0][1])["X-Cache"] == "HIT"
    assert app.calls == 1


@pytest.mark.parametrize(
    "missing",
    [
        ("SCRIPT_NAME",),
        ("QUERY_STRING",),
        ("HTTP_HOST",),
        ("SCRIPT_NAME", "QUERY_STRING", "HTTP_HOST"),
    ],
    ids=["no-script-name", "no-query-string", "no-host", "none-of-them"],
)
def test_a_server_may_leave_out_what_pep_3333_lets_it(missing: tuple[str, ...]) -> None:
    # PEP 3333 lets SCRIPT_NAME and QUERY_STRING be absent when empty: cached all the same. An
    # HTTP/1.0 client may send no Host: its page is built from the server's own name, which
    # the key does not hold, so it passes through.
    app = CountingApp()
    optimizer = MemoryOptimizer(app, monitor_interval_s=0, cache_lock_timeout_s=0)
    environ = EnvironBuilder(path="/p").get_environ()
    for name in missing:
        environ.pop(name, None)
    bodies = []
    for _ in range(2):
        response = optimizer(dict(environ), ignore_start_response)
        bodies.append(b"".join(response))
        response.close()  # type: ignore[attr-defined]

    if "HTTP_HOST" in missing:
        assert bodies == [b"body #1", b"body #2"]
        assert optimizer.cache.stats()["bypassed"] == {"no-host": 2}
        assert optimizer.cache.entries() == []
    else:
        assert bodies == [b"body #1", b"body #1"]
        assert app.calls == 1
        [entry] = optimizer.cache.entries()
        assert entry.path == "/p"
    optimizer.governor.stop()


def test_a_request_behind_a_tls_proxy_is_a_plain_hit_keyed_by_its_scheme(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # X-Forwarded-Proto on every request must not cost every hit the full path: its value is
    # part of the key, and the hit is replayed by the lane all the same.
    app = CountingApp()
    optimizer, client = wrap(app)
    https = {"X-Forwarded-Proto": "https"}
    assert get(client, "/p", headers=https).data == b"body #1"
    assert get(client, "/p").data == b"body #2"  # plain http: another entry
    full_path = spy_full_path(monkeypatch, optimizer)

    environ = EnvironBuilder(path="/p", headers=https).get_environ()
    responses = [optimizer(dict(environ), ignore_start_response) for _ in range(2)]
    for response in responses:
        assert list(response) == [b"body #1"]
        response.close()  # type: ignore[attr-defined]

    assert full_path == []  # the plain-hit lane
    assert optimizer.governor.in_flight == 0
    assert app.calls == 2
    keys = [entry.key for entry in optimizer.cache.entries()]
    assert keys[0][:-1] == keys[1][:-1]
    assert {key[-1] for key in keys} == {"https", None}  # X-Forwarded-Proto, keyed last


# -- the hit lane finds what the full path finds, and serves nobody what it would not

LANE_ROUTES: dict[str, list[tuple[str, str]]] = {
    "/plain": [("Cache-Control", "max-age=30")],
    "/silent": [],  # stored only under cache_default_ttl_s
    "/modified": [  # heuristic freshness: a tenth of 20 s
        ("Date", http_date(DATE)),
        ("Last-Modified", http_date(DATE - timedelta(seconds=20))),
    ],
    "/public": [("Cache-Control", "public, max-age=30")],
    "/short": [("Cache-Control", "max-age=2")],
    "/vary": [("Vary", "Accept-Encoding"), ("Cache-Control", "max-age=30")],
    "/vary-public": [("Vary", "Accept-Encoding"), ("Cache-Control", "public, max-age=30")],
    "/etag": [("ETag", '"v1"'), ("Cache-Control", "max-age=30")],
    "/no-store": [("Cache-Control", "no-store")],
}
# A request carries none, one or two of these: sparse enough that plain, keyed, credentialed
# and varying requests meet the same entries often.
LANE_REQUEST_HEADERS = [
    ("Cookie", "s=alice"),
    ("Cookie", "s=bob"),
    ("Authorization", "Bearer carol"),
    ("Accept-Encoding", "gzip"),
    ("Accept-Encoding", "br"),
    ("Accept-Encoding", ""),
    ("X-Forwarded-Proto", "https"),
    ("If-None-Match", '"v1"'),
    ("If-None-Match", '"v2"'),
    ("Cache-Control", "no-cache"),
    ("Cache-Control", "no-store"),
    ("X-Forwarded-Host", "evil.example"),
    ("X-Forwarded-Server", "evil.example"),
    ("X-HTTP-Method-Override", "DELETE"),
    ("X-Tenant", "acme"),
    ("X-Tenant", ""),
]
# Inputs a request carries outside its headers, put in environ as a server would: a body,
# and an absolute-form request target.
LANE_ENVIRON_INPUTS = [
    ("CONTENT_LENGTH", "3"),
    ("HTTP_TRANSFER_ENCODING", "chunked"),
    ("RAW_URI", "http://evil.example/plain"),
]
LANE_STEPS = st.lists(
    st.tuples(
        st.sampled_from(["GET", "GET", "GET", "HEAD", "POST"]),
        st.sampled_from(sorted(LANE_ROUTES)),
        st.lists(st.sampled_from(LANE_REQUEST_HEADERS + LANE_ENVIRON_INPUTS), max_size=2).map(dict),
        st.sampled_from([0, 0, 0, 1, 3]),  # seconds the clock moves first
    ),
    min_size=1,
    max_size=30,
)


# What RouteApp's bodies say they were made for, beside the user: name -> environ key.
MADE_FOR = {
    "ae": "HTTP_ACCEPT_ENCODING",
    "tenant": "HTTP_X_TENANT",
    "host": "HTTP_X_FORWARDED_HOST",
    "server": "HTTP_X_FORWARDED_SERVER",
    "override": "HTTP_X_HTTP_METHOD_OVERRIDE",
    "raw": "RAW_URI",
}


class RouteApp:
    """Answers ``LANE_ROUTES``; each body names its call and whom and what it was made for:
    ``/plain #3 for s=alice|ae=gzip|tenant=None|...``."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        self.calls += 1
        user = environ.get("HTTP_COOKIE") or environ.get("HTTP_AUTHORIZATION") or "anyone"
        made_for = [f"{name}={environ.get(key)}" for name, key in MADE_FOR.items()]
        body = "|".join([f"{environ['PATH_INFO']} #{self.calls} for {user}", *made_for]).encode()
        headers = [*LANE_ROUTES[environ["PATH_INFO"]], ("Content-Length", str(len(body)))]
        start_response("200 OK", [("Content-Type", "text/plain"), *headers])
        return [] if environ["REQUEST_METHOD"] == "HEAD" else [body]


def served(optimizer: MemoryOptimizer, environ: dict[str, Any]) -> tuple[str, list[Any], bytes]:
    seen: list[Any] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        seen[:] = [status, list(headers)]
        return lambda data: None

    response = optimizer(dict(environ), start_response)
    try:
        body = b"".join(response)
    finally:
        response.close()  # type: ignore[attr-defined]
    return seen[0], seen[1], body


class FullPathOnly(MemoryOptimizer):
    """The reference: every request decided by the full rules, as if there were no fast path."""

    def _plain_hit(self, environ: Any) -> None:
        return None


# Beside the defaults, settings that key two headers (a forwarding header that would
# otherwise pass through, and one of the app's own), and a default lifetime.
LANE_SETTINGS = [
    {},
    {"cache_key_headers": ("X-Tenant", "X-Forwarded-Host")},
    {"cache_default_ttl_s": 5},
]


@pytest.mark.parametrize(
    "keyed", LANE_SETTINGS, ids=["defaults", "own-keyed-headers", "default-ttl"]
)
@hypothesis_settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=LANE_STEPS)
# Besides the random sequences, always these: one user's page, then another user, through
# each lane (plain, keyed, varying), and a stale public page fetched again with a cookie.
@example(steps=[("GET", "/plain", {}, 0), ("GET", "/plain", {"Cookie": "s=alice"}, 0)])
@example(
    steps=[
        ("GET", "/plain", {"Cookie": "s=alice", "X-Forwarded-Proto": "https"}, 0),
        ("GET", "/plain", {"X-Forwarded-Proto": "https"}, 0),
        ("GET", "/plain", {"Cookie": "s=bob", "X-Forwarded-Proto": "https"}, 0),
    ]
)
@example(
    steps=[
        ("GET", "/vary", {"Accept-Encoding": "gzip"}, 0),
        ("GET", "/vary", {"Accept-Encoding": "gzip", "Cookie": "s=alice"}, 0),
        ("GET", "/vary-public", {"Accept-Encoding": "br", "Authorization": "Bearer carol"}, 0),
        ("GET", "/vary-public", {"Accept-Encoding": "br", "Cookie": "s=bob"}, 0),
    ]
)
@example(
    steps=[
        ("GET", "/public", {"Cookie": "s=alice"}, 0),
        ("GET", "/public", {"Cookie": "s=bob"}, 0),
        ("GET", "/public", {"Cookie": "s=bob"}, 31),
        ("GET", "/public", {}, 0),
    ]
)
@example(
    steps=[
        ("GET", "/plain", {"X-Tenant": "acme"}, 0),
        ("GET", "/plain", {"X-Tenant": ""}, 0),
        ("GET", "/plain", {}, 0),
        ("GET", "/plain", {"X-Tenant": "acme", "Cookie": "s=alice"}, 0),
    ]
)
def test_the_hit_lane_answers_as_the_full_path_does(
    keyed: dict[str, Any], steps: list[tuple[str, str, dict[str, str], int]]
) -> None:
    # The reference sends every request down the full path: the lane's rules (plain, keyed,
    # credentials, Vary, forwarding headers, bodies, the raw target) must find and refuse
    # exactly what _plan does, and no page may reach a request it was not made for.
    options = {"monitor_interval_s": 0, "gc_freeze": False, "cache_lock_timeout_s": 0, **keyed}
    lane = MemoryOptimizer(RouteApp(), **options)
    reference = FullPathOnly(RouteApp(), **options)
    optimizers = [lane, reference]
    for optimizer in optimizers:
        optimizer.cache.clock = FakeClock()
    try:
        for method, path, headers, advance in steps:
            for optimizer in optimizers:
                optimizer.cache.clock.advance(advance)  # type: ignore[attr-defined]
            sent = {name: value for name, value in headers.items() if "_" not in name}
            environ = EnvironBuilder(path=path, method=method, headers=sent).get_environ()
            environ.update((name, value) for name, value in headers.items() if "_" in name)
            answer = served(lane, environ)
            assert answer == served(reference, environ), (method, path, headers)

            status, _, body = answer
            if status.startswith("200") and method == "GET":
                user, *made_for = body.decode().split(" for ", 1)[1].split("|")
                me = sent.get("Cookie") or sent.get("Authorization") or "anyone"
                if "public" not in path:  # only a public page may reach someone else
                    assert user == me, (user, headers)
                fields = dict(field.split("=", 1) for field in made_for)
                expected = {name: str(environ.get(key)) for name, key in MADE_FOR.items()}
                if "vary" not in path:  # only a variant of the same Accept-Encoding
                    del expected["ae"]
                if not keyed.get("cache_key_headers"):  # the tenant is keyed when asked to
                    del expected["tenant"]
                assert fields == {**fields, **expected}, (fields, headers)
        stats = [optimizer.cache.stats() for optimizer in optimizers]
        counted = ("hits", "misses", "stores", "items", "rejected", "bypassed")
        assert [stats[0][name] for name in counted] == [stats[1][name] for name in counted]
        assert lane.app.calls == reference.app.calls  # type: ignore[attr-defined]
    finally:
        for optimizer in optimizers:
            optimizer.governor.stop()


def test_the_reference_of_the_lane_test_never_takes_the_lane(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Else the test above compares the fast path with itself.
    environ = EnvironBuilder(path="/public", headers={"Cookie": "s=alice"}).get_environ()

    def full_path_calls(optimizer: MemoryOptimizer) -> tuple[int, list[bytes]]:
        calls = spy_full_path(monkeypatch, optimizer)
        try:
            bodies = [served(optimizer, environ)[2] for _ in range(2)]
            return len(calls), bodies
        finally:
            optimizer.governor.stop()

    lane_calls, lane_bodies = full_path_calls(MemoryOptimizer(RouteApp()))
    reference_calls, reference_bodies = full_path_calls(FullPathOnly(RouteApp()))
    assert (lane_calls, reference_calls) == (1, 2)
    assert lane_bodies == reference_bodies  # the second from the cache, both times


@pytest.mark.parametrize(
    "header",
    sorted({*BYPASS_HEADERS, "cache-control", "pragma", "transfer-encoding"}),
)
@pytest.mark.parametrize("keyed", [(), ("X-Forwarded-Host", "Forwarded")], ids=["", "keyed"])
def test_a_header_a_rule_reads_sends_the_request_to_the_full_rules(
    header: str, keyed: tuple[str, ...]
) -> None:
    # The fast path's set of headers that change the plan is derived from policy's lists
    # (less what cache_key_headers keys): with any of them, the full rules decide.
    optimizer = MemoryOptimizer(CountingApp(), monitor_interval_s=0, cache_key_headers=keyed)
    try:
        served(optimizer, EnvironBuilder(path="/p").get_environ())
        with_header = EnvironBuilder(path="/p", headers={header: "1"}).get_environ()
        plain = optimizer.cache.plain_hit(EnvironBuilder(path="/p").get_environ())

        assert plain is not None
        if header in {name.lower() for name in keyed}:
            # Keyed: its value is in the key, and its own entry is a plain hit.
            served(optimizer, with_header)
            assert optimizer.cache.plain_hit(with_header) not in (None, plain)
        else:
            assert optimizer.cache.plain_hit(with_header) is None
    finally:
        optimizer.governor.stop()


# -- a response the app hands to the server's wsgi.file_wrapper


@pytest.mark.parametrize(
    "caching",
    [
        pytest.param([("Cache-Control", "public, max-age=60")], id="marked-cacheable"),
        pytest.param([("Last-Modified", "Mon, 01 Jan 2024 00:00:00 GMT")], id="heuristic"),
        pytest.param([], id="says-nothing"),
    ],
)
def test_a_file_wrapper_response_reaches_the_server_whole_and_is_not_stored(
    caching: list[tuple[str, str]],
) -> None:
    # What static-file apps do (WhiteNoise, Flask's send_file, Django's static serve): the
    # server sends the file itself. Its status and headers must reach the server too.
    from wsgiref.util import FileWrapper

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        start_response(
            "200 OK",
            [("Content-Type", "text/plain"), ("Content-Length", "9"), *caching],
        )
        return environ["wsgi.file_wrapper"](io.BytesIO(b"file body"))

    optimizer = MemoryOptimizer(app, monitor_interval_s=0, gc_freeze=False)
    sent: list[tuple[str, list[tuple[str, str]]]] = []
    try:
        for _ in range(2):
            environ = EnvironBuilder(path="/static/a.txt").get_environ()
            environ["wsgi.file_wrapper"] = FileWrapper
            response = optimizer(
                environ, lambda status, headers, exc_info=None: sent.append((status, headers))
            )
            body = b"".join(response)
            response.close()  # type: ignore[attr-defined]
            assert body == b"file body"
        assert [status for status, _ in sent] == ["200 OK", "200 OK"]
        assert ("Content-Length", "9") in sent[0][1]
        assert len(optimizer.cache) == 0  # the file is the page cache's, not ours
        assert optimizer.governor.in_flight == 0
    finally:
        optimizer.governor.stop()
