"""A small plain-WSGI app that shows what :class:`~wsgi_memopt.MemoryOptimizer` does.

It has no dependencies and is meant to be served through the middleware::

    wsgi-memopt serve --demo                  # then: curl -i http://127.0.0.1:8000/slow (twice)
    wsgi-memopt serve 'wsgi_memopt.demo:make_demo_app(slow_seconds=1)'

Routes, each showing one rule of the cache:

- ``/``: this index, linking the routes and saying what to look for;
- ``/slow``: a cacheable page (``max-age=30``) that takes ``slow_seconds`` to compute; the
  second request is instant and says ``Cache-Status: wsgi-memopt; hit``;
- ``/plain``: a page that says nothing about caching: not stored, unless the middleware gives
  such pages a lifetime (``--set cache_default_ttl_s=30``);
- ``/me``: a page personalised by the ``user`` cookie, ``Cache-Control: private``: never stored;
- ``/stream``: 5 MiB streamed in 64 KiB chunks; it passes through, and the middleware drops its
  copy once the body passes ``cache_item_max_mb`` (2 MB by default);
- ``/echo``: POST only; echoes the start of the body (at most 1 MiB is read); never cached;
- anything else: 404.
"""

from __future__ import annotations

import html
import itertools
import time
from collections.abc import Callable, Iterable, Iterator
from http.cookies import CookieError, SimpleCookie
from typing import TYPE_CHECKING
from wsgiref.util import application_uri

from .settings import MB

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["make_demo_app"]

SLOW_MAX_AGE_S = 30
STREAM_CHUNK = 64 * 1024
STREAM_CHUNKS = 80  # 80 x 64 KiB = 5 MiB, well over the default 2 MB item limit
ECHO_READ_MAX = MB  # bytes of a request body read at most
ECHO_SHOWN = 4096  # bytes of it echoed back
USER_SHOWN = 64  # characters of the user cookie shown

_HTML = "text/html; charset=utf-8"
_TEXT = "text/plain; charset=utf-8"
_GET = ("GET", "HEAD")

Route = Callable[["WSGIEnvironment", "StartResponse"], Iterable[bytes]]


def make_demo_app(slow_seconds: float = 0.5) -> WSGIApplication:
    """The demo app, unwrapped: wrap it in ``MemoryOptimizer`` to see the cache at work.

    :param slow_seconds: how long ``/slow`` takes to compute (tests pass ``0``).
    """
    if not slow_seconds >= 0:
        raise ValueError(f"slow_seconds must be >= 0, got {slow_seconds!r}")
    return _DemoApp(slow_seconds)


class _DemoApp:
    """The routes of the demo; the only state is a counter of the times ``/slow`` ran."""

    def __init__(self, slow_seconds: float) -> None:
        self.slow_seconds = slow_seconds
        self._slow_runs = itertools.count(1)  # next() on a count is atomic under the GIL
        self._routes: dict[str, tuple[tuple[str, ...], Route]] = {
            "/": (_GET, self.index),
            "/slow": (_GET, self.slow),
            "/plain": (_GET, self.plain),
            "/me": (_GET, self.me),
            "/stream": (_GET, self.stream),
            "/echo": (("POST",), self.echo),
        }

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        route = self._routes.get(environ.get("PATH_INFO") or "/")
        if route is None:
            return self.not_found(environ, start_response)
        methods, handler = route
        if environ["REQUEST_METHOD"] not in methods:
            allow = ", ".join(methods)
            body = f"405 Method Not Allowed: use {allow}\n".encode()
            return _respond(start_response, "405 Method Not Allowed", _TEXT, body, Allow=allow)
        return handler(environ, start_response)

    # -- routes

    def index(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        base = application_uri(environ).rstrip("/")
        script = html.escape(environ.get("SCRIPT_NAME", ""))
        content = _INDEX.format(
            base=html.escape(base),
            script=script,
            slow_seconds=f"{self.slow_seconds:g}",
            max_age=SLOW_MAX_AGE_S,
            stream_mib=STREAM_CHUNK * STREAM_CHUNKS // MB,
            chunk_kib=STREAM_CHUNK >> 10,
            echo_mib=ECHO_READ_MAX // MB,
        )
        page = _page("wsgi-memopt demo", content)
        return _respond(start_response, "200 OK", _HTML, page, cache="max-age=60")

    def slow(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        started = time.perf_counter()
        if self.slow_seconds:
            time.sleep(self.slow_seconds)  # stands for an expensive query or template
        run = next(self._slow_runs)
        took = time.perf_counter() - started
        page = _page(
            "wsgi-memopt demo: a slow page",
            f"<p>Generated at <strong>{_now()}</strong> in {took:.2f} s. The app has computed "
            f"this page <strong>{run}</strong> time{'s' if run != 1 else ''} since it started."
            f"</p><p>It says <code>Cache-Control: max-age={SLOW_MAX_AGE_S}</code>, so the "
            "middleware stores it: for the next "
            f"{SLOW_MAX_AGE_S} s, requests get this very page back instantly, with "
            "<code>Cache-Status: wsgi-memopt; hit</code>, <code>X-Cache: HIT</code> and an "
            "<code>Age</code> header, and the time above does not change.</p>",
        )
        return _respond(start_response, "200 OK", _HTML, page, cache=f"max-age={SLOW_MAX_AGE_S}")

    def plain(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        page = _page(
            "wsgi-memopt demo: a page that says nothing about caching",
            f"<p>Generated at <strong>{_now()}</strong>. This page sends no "
            "<code>Cache-Control</code>, <code>Expires</code> or <code>Last-Modified</code>, so "
            "the middleware does not store it (<code>detail=no-freshness</code>): an error page "
            "never outlives its error. To keep such pages anyway, give them a lifetime: "
            "<code>wsgi-memopt serve --demo --set cache_default_ttl_s=30</code> (and "
            "<code>cache_paths</code> to choose the routes).</p>",
        )
        return _respond(start_response, "200 OK", _HTML, page)

    def me(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        user = _cookie(environ.get("HTTP_COOKIE", ""), "user")
        if user:
            greeting = f"Hello, <strong>{html.escape(user[:USER_SHOWN])}</strong>."
        else:
            greeting = (
                "Hello, anonymous visitor. Send a <code>user</code> cookie, e.g. "
                "<code>curl -i -b user=alice ...</code>, to get your own page."
            )
        page = _page(
            "wsgi-memopt demo: your page",
            f"<p>{greeting} Generated at {_now()}.</p><p>This page is personal, so it says "
            "<code>Cache-Control: private</code>: a shared cache must never store it, and the "
            "middleware does not (look for <code>detail=private</code> in "
            "<code>Cache-Status</code>). A request carrying a cookie is never answered from "
            "the cache either, unless the response is marked <code>public</code>.</p>",
        )
        return _respond(start_response, "200 OK", _HTML, page, cache="private")

    def stream(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        # No Content-Length: like a generated export, the size is not known in advance, so
        # the middleware copies as it streams and drops the copy once it passes the limit.
        start_response(
            "200 OK",
            [("Content-Type", _TEXT), ("Cache-Control", f"max-age={SLOW_MAX_AGE_S}")],
        )
        return _chunks()

    def echo(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        body = _read_body(environ, ECHO_READ_MAX)
        shown = body[:ECHO_SHOWN]
        head = (
            f"received {len(body)} bytes (at most {ECHO_READ_MAX} are read); "
            f"the first {len(shown)} follow\n"
        ).encode()
        return _respond(start_response, "200 OK", _TEXT, head + shown)

    def not_found(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        script = html.escape(environ.get("SCRIPT_NAME", ""))
        path = html.escape(environ.get("PATH_INFO", ""))
        page = _page(
            "wsgi-memopt demo: not found",
            f'<p>There is no <code>{path}</code> here. See <a href="{script}/">the index</a>.</p>',
        )
        return _respond(start_response, "404 Not Found", _HTML, page)


# -- helpers


def _respond(
    start_response: StartResponse,
    status: str,
    content_type: str,
    body: bytes,
    *,
    cache: str | None = None,
    **extra: str,
) -> list[bytes]:
    headers = [("Content-Type", content_type), ("Content-Length", str(len(body)))]
    if cache is not None:
        headers.append(("Cache-Control", cache))
    headers.extend(extra.items())
    start_response(status, headers)
    return [body]


def _chunks() -> Iterator[bytes]:
    line = b"wsgi-memopt demo: streamed, passed through, never stored.\n"
    chunk = (line * (STREAM_CHUNK // len(line) + 1))[: STREAM_CHUNK - 1] + b"\n"
    for _ in range(STREAM_CHUNKS):
        yield chunk


def _read_body(environ: WSGIEnvironment, cap: int) -> bytes:
    """At most ``cap`` bytes of the request body, never reading past ``CONTENT_LENGTH``."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or -1)
    except ValueError:
        length = -1
    if length < 0:
        # Without a length, only a server that marks the input as terminated lets us read
        # to its end (WSGI 1.0.1 forbids reading past CONTENT_LENGTH otherwise).
        length = cap if environ.get("wsgi.input_terminated") else 0
    remaining = min(length, cap)
    stream = environ["wsgi.input"]
    parts = []
    while remaining > 0:
        part = stream.read(remaining)
        if not part:
            break
        parts.append(part)
        remaining -= len(part)
    return b"".join(parts)


def _cookie(header: str, name: str) -> str:
    cookies: SimpleCookie = SimpleCookie()
    try:
        cookies.load(header)
    except CookieError:
        return ""
    morsel = cookies.get(name)
    return morsel.value if morsel is not None else ""


def _now() -> str:
    now = time.time()
    return time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now * 1000) % 1000:03d}"


def _page(title: str, content: str) -> bytes:
    return _PAGE.format(title=html.escape(title), content=content).encode()


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:46rem;margin:2rem auto;padding:0 1rem}}
code,pre{{background:#f3f3f3;padding:0 .2em}}pre{{padding:.6em;overflow-x:auto}}</style>
</head><body><h1>{title}</h1>
{content}
</body></html>
"""

_INDEX = """<p>This app is served through <code>MemoryOptimizer</code>, an in-process response
cache. Every response carries the cache's verdict in its headers; look at them with
<code>curl -i</code> or your browser's network tab:</p>
<ul>
<li><code>Cache-Status: wsgi-memopt; hit; ttl=N</code> (and <code>X-Cache: HIT</code>, an
<code>Age</code> in seconds): answered from the cache, without calling the app;</li>
<li><code>Cache-Status: wsgi-memopt; fwd=miss; stored</code> (<code>X-Cache: MISS</code>): the
app answered and the response was stored;</li>
<li><code>fwd=miss; detail=...</code>, <code>fwd=method</code>, <code>fwd=bypass</code>: the app
answered, and <code>detail</code> says why the cache did not keep it.</li>
</ul>
<h2>Routes</h2>
<ul>
<li><a href="{script}/slow">/slow</a>: takes {slow_seconds} s to compute and says
<code>max-age={max_age}</code>. Ask twice: the second answer is instant and a hit.
<pre>curl -i {base}/slow
curl -i {base}/slow</pre></li>
<li><a href="{script}/plain">/plain</a>: says nothing about caching, so it is not stored
(<code>detail=no-freshness</code>) unless the middleware gives such pages a lifetime:
<pre>wsgi-memopt serve --demo --set cache_default_ttl_s=30</pre></li>
<li><a href="{script}/me">/me</a>: personalised by the <code>user</code> cookie and
<code>Cache-Control: private</code>, so never stored or shared.
<pre>curl -i -b user=alice {base}/me
curl -i -b user=bob {base}/me</pre></li>
<li><a href="{script}/stream">/stream</a>: {stream_mib} MiB in {chunk_kib} KiB chunks. It
streams straight through; the cache's copy is dropped once it passes the item limit
(<code>cache_item_max_mb</code>), so it is a miss every time and never fills memory.
<pre>curl -s -o /dev/null -D - {base}/stream</pre></li>
<li><code>/echo</code>: POST only; echoes the start of the body (at most {echo_mib} MiB is
read). Only GET and HEAD use the cache: look for <code>fwd=method</code>.
<pre>curl -i --data 'hello' {base}/echo</pre></li>
</ul>
"""
