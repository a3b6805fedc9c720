"""Tests of wsgi_memopt.demo: every route of the demo app, served through the middleware."""

from __future__ import annotations

import io
import math
import time
import warnings
from collections.abc import Iterable
from typing import Any

import pytest
from helpers.headers import cache_status
from helpers.wsgi import checked, get, wrap
from werkzeug.middleware.lint import WSGIWarning
from werkzeug.test import EnvironBuilder

from wsgi_memopt.demo import ECHO_READ_MAX, STREAM_CHUNK, STREAM_CHUNKS, make_demo_app

MiB = 1 << 20


@pytest.fixture
def optimizer_client() -> tuple[Any, Any]:
    return wrap(make_demo_app(slow_seconds=0))


def _call(app: Any, environ: dict[str, Any]) -> tuple[str, list[tuple[str, str]], list[bytes]]:
    """Call a WSGI app directly; return its status, headers and the chunks it yielded."""
    started: list[Any] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        started[:] = [status, headers]
        return lambda data: None

    iterable: Iterable[bytes] = app(environ, start_response)
    try:
        chunks = list(iterable)
    finally:
        close = getattr(iterable, "close", None)
        if close is not None:
            close()
    return started[0], started[1], chunks


# -- /


def test_index_links_every_route_and_says_what_to_look_for(optimizer_client: Any) -> None:
    _, client = optimizer_client
    response = get(client, "/")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    page = response.text
    for route in ("/slow", "/plain", "/me", "/stream"):
        assert f'href="{route}"' in page
    assert "/echo" in page
    for header in ("Cache-Status", "X-Cache", "Age"):
        assert header in page
    assert "curl -i http://localhost/slow" in page


def test_index_links_stay_under_the_mount_point(optimizer_client: Any) -> None:
    _, client = optimizer_client
    page = get(client, "/", base_url="http://example.test/demo/").text
    assert 'href="/demo/slow"' in page
    assert "curl -i http://example.test/demo/slow" in page


# -- /plain


def test_plain_says_nothing_about_caching_and_is_not_stored(optimizer_client: Any) -> None:
    optimizer, client = optimizer_client
    for _ in range(2):
        response = get(client, "/plain")
        assert "Cache-Control" not in response.headers
        assert cache_status(response) == {"fwd": "miss", "detail": "no-freshness"}
    assert "cache_default_ttl_s" in response.text
    assert optimizer.cache.stats()["items"] == 0


def test_plain_is_stored_when_the_middleware_gives_it_a_lifetime() -> None:
    _, client = wrap(make_demo_app(slow_seconds=0), cache_default_ttl_s=30)
    first, second = get(client, "/plain"), get(client, "/plain")
    assert cache_status(first) == {"fwd": "miss", "stored": True}
    assert cache_status(second) == {"hit": True, "ttl": "30"}
    assert second.data == first.data


# -- /slow


def test_slow_is_stored_then_replayed_from_the_cache(optimizer_client: Any) -> None:
    optimizer, client = optimizer_client
    first = get(client, "/slow")
    assert first.status_code == 200
    assert first.headers["Cache-Control"] == "max-age=30"
    assert first.headers["X-Cache"] == "MISS"
    assert cache_status(first) == {"fwd": "miss", "stored": True}
    assert "computed this page <strong>1</strong> time " in first.text

    second = get(client, "/slow")
    assert second.headers["X-Cache"] == "HIT"
    assert cache_status(second)["hit"] is True
    assert "Age" in second.headers
    assert second.data == first.data
    assert optimizer.cache.stats()["hits"] == 1


def test_slow_is_computed_again_once_its_max_age_has_passed(optimizer_client: Any) -> None:
    optimizer, client = optimizer_client
    now = [time.monotonic()]
    optimizer.cache.clock = lambda: now[0]
    first = get(client, "/slow")

    now[0] += 10
    aged = get(client, "/slow")
    assert aged.headers["Age"] == "10"
    assert cache_status(aged) == {"hit": True, "ttl": "20"}
    assert aged.data == first.data

    now[0] += 21
    fresh = get(client, "/slow")
    assert fresh.headers["X-Cache"] == "MISS"
    assert "computed this page <strong>2</strong> times" in fresh.text


def test_slow_takes_the_configured_time(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr("wsgi_memopt.demo.time.sleep", slept.append)
    _, client = wrap(make_demo_app(slow_seconds=0.25))
    get(client, "/slow")
    get(client, "/slow")  # a hit: the app is not called
    assert slept == [0.25]


@pytest.mark.parametrize("delay", [-1, math.nan], ids=["negative", "nan"])
def test_slow_seconds_must_be_a_duration(delay: float) -> None:
    with pytest.raises(ValueError, match="slow_seconds"):
        make_demo_app(slow_seconds=delay)


def test_head_of_slow_is_answered_from_the_cache(optimizer_client: Any) -> None:
    _, client = optimizer_client
    stored = get(client, "/slow")
    # werkzeug's lint does not know that a HEAD response carries the GET's Content-Length
    # without its body (RFC 9110 §9.3.2): that one complaint is ignored here.
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="Content-Length and the number of bytes", category=WSGIWarning
        )
        head = client.head("/slow", buffered=True)
    assert head.headers["X-Cache"] == "HIT"
    assert head.headers["Content-Length"] == str(len(stored.data))
    assert head.data == b""


# -- /me


def test_me_is_personal_and_never_stored(optimizer_client: Any) -> None:
    optimizer, client = optimizer_client
    alice = get(client, "/me", headers={"Cookie": "user=alice"})
    bob = get(client, "/me", headers={"Cookie": "user=bob"})
    alice_again = get(client, "/me", headers={"Cookie": "user=alice"})
    assert "<strong>alice</strong>" in alice.text
    assert "<strong>bob</strong>" in bob.text
    for response in (alice, bob, alice_again):
        assert response.headers["Cache-Control"] == "private"
        assert response.headers["X-Cache"] == "MISS"
        assert cache_status(response)["detail"] == "private"
    assert len(optimizer.cache) == 0


def test_me_without_a_cookie_greets_an_anonymous_visitor(optimizer_client: Any) -> None:
    optimizer, client = optimizer_client
    response = get(client, "/me")
    assert "anonymous visitor" in response.text
    assert cache_status(response) == {"fwd": "miss", "detail": "private"}
    assert len(optimizer.cache) == 0


@pytest.mark.parametrize(
    ("cookie", "shown"),
    [
        ("user=<script>alert(1)</script>", "&lt;script&gt;alert(1)&lt;/script&gt;"),
        ("user=" + "x" * 500, "<strong>" + "x" * 64 + "</strong>"),
        ('user="unterminated', "anonymous visitor"),
    ],
    ids=["escaped", "truncated", "malformed"],
)
def test_me_shows_the_cookie_safely(optimizer_client: Any, cookie: str, shown: str) -> None:
    _, client = optimizer_client
    page = get(client, "/me", headers={"Cookie": cookie}).text
    assert shown in page
    assert "<script>" not in page


# -- /stream


def test_stream_passes_through_and_is_never_stored(optimizer_client: Any) -> None:
    optimizer, client = optimizer_client
    for _ in range(2):
        response = get(client, "/stream")
        assert response.status_code == 200
        assert len(response.data) == STREAM_CHUNK * STREAM_CHUNKS == 5 * MiB
        assert response.headers["X-Cache"] == "MISS"
        assert "stored" not in cache_status(response)
    assert len(optimizer.cache) == 0
    assert optimizer.cache.stats()["rejected"] == {"too-large": 2}


def test_stream_yields_64_kib_chunks() -> None:
    environ = EnvironBuilder(path="/stream").get_environ()
    status, headers, chunks = _call(checked(make_demo_app(0)), environ)
    assert status == "200 OK"
    assert "Content-Length" not in dict(headers)  # the size is not announced: a real stream
    assert [len(chunk) for chunk in chunks] == [64 * 1024] * 80


# -- /echo


def test_echo_returns_the_body_and_is_never_cached(optimizer_client: Any) -> None:
    optimizer, client = optimizer_client
    for _ in range(2):
        response = client.post("/echo", data=b"hello", buffered=True)
        assert response.status_code == 200
        assert response.data.startswith(b"received 5 bytes")
        assert response.data.endswith(b"\nhello")
        assert cache_status(response) == {"fwd": "method"}
    assert len(optimizer.cache) == 0


def test_echo_reads_at_most_one_mib() -> None:
    body = io.BytesIO(b"x" * (2 * MiB))
    environ = EnvironBuilder(
        method="POST", path="/echo", input_stream=body, content_length=2 * MiB
    ).get_environ()
    _, _, chunks = _call(checked(make_demo_app(0)), environ)
    text = b"".join(chunks)
    assert text.startswith(f"received {ECHO_READ_MAX} bytes".encode())
    assert len(text.split(b"\n", 1)[1]) == 4096  # only the start of it is echoed
    assert body.tell() == ECHO_READ_MAX == MiB


@pytest.mark.parametrize(
    ("extra", "received"),
    [({}, 0), ({"wsgi.input_terminated": True}, 3)],
    ids=["unknown-length", "terminated-input"],
)
def test_echo_without_content_length_reads_only_a_terminated_input(
    extra: dict[str, Any], received: int
) -> None:
    body = io.BytesIO(b"abc")
    environ = EnvironBuilder(method="POST", path="/echo", input_stream=body).get_environ()
    environ.pop("CONTENT_LENGTH", None)
    environ.update(extra)
    _, _, chunks = _call(make_demo_app(0), environ)
    assert b"".join(chunks).startswith(f"received {received} bytes".encode())


# -- methods and unknown paths


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [("POST", "/slow", "GET, HEAD"), ("DELETE", "/", "GET, HEAD"), ("GET", "/echo", "POST")],
    ids=["post-slow", "delete-index", "get-echo"],
)
def test_wrong_method_is_405_with_allow(
    optimizer_client: Any, method: str, path: str, allow: str
) -> None:
    _, client = optimizer_client
    response = client.open(path, method=method, buffered=True)
    assert response.status_code == 405
    assert response.headers["Allow"] == allow


def test_unknown_path_is_404_and_not_stored(optimizer_client: Any) -> None:
    optimizer, client = optimizer_client
    response = get(client, "/<b>nope</b>")
    assert response.status_code == 404
    assert "&lt;b&gt;nope&lt;/b&gt;" in response.text
    assert 'href="/"' in response.text
    assert len(optimizer.cache) == 0
