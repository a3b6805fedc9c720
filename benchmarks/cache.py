"""The response cache against its peers and the bare app, side by side: the guard-rails of the
request path (docs/performance.md lists them with their figures).

Every contender is a WSGI app called in-process the way a server calls it (no sockets): a
prebuilt ``environ`` (copied per call where a Flask app, which mutates it, is in the row), a
minimal ``start_response``, the result iterated to its end and ``close()`` called if present.
Contenders are timed in interleaved rounds (see ``_timing.py``): times are medians over the
rounds, ratios the median of the ratios within each round.

    python benchmarks/cache.py            # 15 rounds, about 10 s on 2 cores
    python benchmarks/cache.py --quick    # 5 short rounds, a smoke test
    python benchmarks/cache.py --json     # the same figures as JSON, for the README and CI
"""

from __future__ import annotations

import argparse
import itertools
import json
import mmap
import operator
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from typing import Any, ClassVar

from _timing import (
    Environ,
    Prepare,
    WSGIApp,
    interleaved,
    repeated,
    round_ratios,
    serve,
    write_nothing,
)
from flask import Flask
from flask_caching import Cache
from werkzeug.test import EnvironBuilder
from werkzeug.wsgi import ClosingIterator

from wsgi_memopt import MemoryOptimizer
from wsgi_memopt.cache.policy import NO_BODY_LENGTHS, plan_environ_keys

BODY = b"hello"  # 5 B: the Flask route's body and the small entry
BIG = b"x" * (100 * 1024)  # the 100 KB entry
BIG_CAPS = {"cache_max_items": 10**7, "cache_max_mb": 4096.0}  # no eviction in any row
# The cache alone: the governor's GC scheduling would switch the collector back on between
# requests, under a benchmark that keeps it off for every contender alike. Its per-request
# bookkeeping is measured on its own, in benchmarks/housekeeping.py. The apps say nothing
# about caching (as a route behind Flask-Caching need not): cache_default_ttl_s gives their
# responses the lifetime a Cache-Control header would, so that both sides of every ratio run
# the very same app. (OTHER_HITS's apps mark theirs with headers: the other way.)
CACHE_ONLY = {"gc_mode": "auto", "monitor_interval_s": 0, "cache_default_ttl_s": 1800}


def fresh_urls(app: WSGIApp, base: Environ, counter: Iterable[int]) -> Prepare:
    """A contender calling ``app`` with a never-seen query string every call."""
    numbers = iter(counter)

    def prepare(n: int) -> Callable[[], None]:
        environs = []
        for number, _ in zip(numbers, range(n), strict=False):
            environ = dict(base)
            query = f"n={number}"
            environ["QUERY_STRING"] = query
            environ["REQUEST_URI"] = environ["RAW_URI"] = f"{base['PATH_INFO']}?{query}"
            environs.append(environ)
        return serve(app, environs, copy=True)

    return prepare


def environ_for(path: str = "/", **kwargs: Any) -> Environ:
    return EnvironBuilder(path=path, **kwargs).get_environ()


def call_once(app: WSGIApp, environ: Environ) -> tuple[str, dict[str, str], bytes]:
    """One served call, for the checks: status, headers and body."""
    seen: list[Any] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        seen[:] = [status, dict(headers)]
        return write_nothing

    result = app(dict(environ), start_response)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return seen[0], seen[1], body


# -- the apps


def floor_app(environ: Environ, start_response: Callable[..., Any]) -> list[bytes]:
    """The bare WSGI floor: a constant response, nothing else."""
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    return [BODY]


def sized_app(environ: Environ, start_response: Callable[..., Any]) -> list[bytes]:
    """``/big`` answers 100 KB, anything else 5 B."""
    body = BIG if environ["PATH_INFO"] == "/big" else BODY
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


FLASK_HEADERS = [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", "5")]
FLASK_NO_STORE_HEADERS = [*FLASK_HEADERS, ("Cache-Control", "no-store")]


def flask_shaped_app(environ: Environ, start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Answers as the Flask routes below do (status, headers, a werkzeug ``ClosingIterator``)
    with none of Flask's work: around it, the middleware's own cost shows."""
    no_store = environ["PATH_INFO"] == "/nostore"
    start_response("200 OK", FLASK_NO_STORE_HEADERS if no_store else FLASK_HEADERS)
    return ClosingIterator(iter([BODY]), _nothing)


def _nothing() -> None:
    pass


@dataclass
class ViewCalls:
    count: int = 0


def flask_app(*, flask_caching: bool = False) -> tuple[Flask, ViewCalls]:
    """The Flask routes every Flask row uses; ``/`` behind ``@cache.cached()`` if asked."""
    app = Flask(f"bench_{'flask_caching' if flask_caching else 'plain'}")
    calls = ViewCalls()

    def hello() -> str:
        calls.count += 1
        return "hello"

    def no_store() -> tuple[str, dict[str, str]]:
        return "hello", {"Cache-Control": "no-store"}

    if flask_caching:
        config = {"CACHE_TYPE": "SimpleCache", "CACHE_DEFAULT_TIMEOUT": 10**6}
        hello = Cache(app, config=config).cached()(hello)
    app.add_url_rule("/", "hello", hello, methods=["GET", "POST"])
    app.add_url_rule("/nostore", "no_store", no_store)
    app.add_url_rule("/items", "items", lambda: "hello")
    return app, calls


class LeastWrapper:
    """The least any pass-through can cost, as a yardstick: the app's response with the two
    headers a pass-through adds (``Cache-Status``, ``X-Cache``), its iterable handed on, and a
    ``close()`` that closes it once and counts the request as over. No rule is checked, no
    governor runs: no middleware that keeps the caching rules (docs/caching.md) can be cheaper."""

    __slots__ = ("_closed", "_server_start_response", "iterable")
    _closed: bool
    _server_start_response: Callable[..., Callable[[bytes], object]]
    iterable: Iterable[bytes]
    in_flight: ClassVar[list[None]] = []
    EXTRA: ClassVar[list[tuple[str, str]]] = [
        ("Cache-Status", "wsgi-memopt; fwd=method"),
        ("X-Cache", "MISS"),
    ]

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], object]:
        return self._server_start_response(status, headers + self.EXTRA, exc_info)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.iterable)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            close = getattr(self.iterable, "close", None)
            if close is not None:
                close()
        finally:
            del self.in_flight[-1:]


class LeastCapture(LeastWrapper):
    """The least any miss that stores can cost, as a yardstick: :class:`LeastWrapper`'s work,
    plus the status and headers kept, the body copied chunk by chunk as the server iterates
    it, and at ``close()`` joined once and put in a dict under the request's key. No rule is
    checked, nothing is measured, evicted or timed: no cache that keeps the caching rules and its
    byte cap can store a miss for less."""

    __slots__ = ("_chunks", "_headers", "_key", "_status")
    _chunks: list[bytes]
    _headers: list[tuple[str, str]]
    _key: tuple[Any, ...]
    _status: str
    stored: ClassVar[dict[tuple[Any, ...], tuple[str, tuple[tuple[str, str], ...], bytes]]] = {}
    EXTRA: ClassVar[list[tuple[str, str]]] = [
        ("Cache-Status", "wsgi-memopt; fwd=miss; stored"),
        ("X-Cache", "MISS"),
    ]

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], object]:
        self._status, self._headers = status, headers
        return self._server_start_response(status, headers + self.EXTRA, exc_info)

    def __iter__(self) -> Iterator[bytes]:
        keep = self._chunks.append
        for chunk in self.iterable:
            keep(chunk)
            yield chunk

    def close(self) -> None:
        closing = not self._closed
        super().close()
        if closing:
            body = b"".join(self._chunks)
            self.stored[self._key] = (self._status, tuple(self._headers), body)


_REQUEST_KEY = operator.itemgetter(
    "wsgi.url_scheme", "HTTP_HOST", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "RAW_URI"
)


def least_wrapper(app: WSGIApp, response_type: type[LeastWrapper] = LeastWrapper) -> WSGIApp:
    """``app`` behind :class:`LeastWrapper` (or :class:`LeastCapture`)."""
    new = object.__new__
    capture = response_type is LeastCapture

    def wrapped(environ: Environ, start_response: Callable[..., Any]) -> Iterable[bytes]:
        LeastWrapper.in_flight.append(None)
        response: Any = new(response_type)
        response._server_start_response = start_response
        response._closed = False
        if capture:
            response._key = _REQUEST_KEY(environ)
            response._chunks = []
        response.iterable = app(environ, response.start_response)
        served: LeastWrapper = response
        return served

    return wrapped


_LEAN_STORED: dict[tuple[Any, ...], tuple[float, str, list[tuple[str, str]], list[bytes]]] = {}


def least_hit(app: WSGIApp) -> WSGIApp:
    """The least a hit can cost, as a yardstick: a function (not an object) that asks for the
    headers that change the rules (one pass over policy's set, as the middleware does), for a
    body, credentials and the keyed forwarding headers, builds the key, looks it up, compares
    a deadline and sends a copy of prebuilt headers (``Age`` and the rest frozen at store
    time) and the body in a list. No LRU touch, no hit or in-flight count, no ``close()``:
    the least any hit that keeps the caching rules can do. Its misses store naively (5 B
    bodies only)."""
    clock = time.monotonic
    no_rule_header = plan_environ_keys(()).isdisjoint

    def wrapped(environ: Environ, start_response: Callable[..., Any]) -> Iterable[bytes]:
        if (
            environ["REQUEST_METHOD"] == "GET"
            and no_rule_header(environ)
            and environ.get("CONTENT_LENGTH") in NO_BODY_LENGTHS
            and not (
                "HTTP_AUTHORIZATION" in environ
                or "HTTP_COOKIE" in environ
                or "HTTP_X_FORWARDED_PROTO" in environ
                or "HTTP_X_FORWARDED_PORT" in environ
                or "HTTP_X_FORWARDED_PREFIX" in environ
            )
        ):
            key = _REQUEST_KEY(environ)
            entry = _LEAN_STORED.get(key)
            if entry is not None and clock() < entry[0]:
                start_response(entry[1], entry[2].copy())
                return entry[3]
            status, headers, body = call_once(app, environ)
            replay = [*headers.items(), ("Age", "0"), ("Cache-Status", "hit"), ("X-Cache", "HIT")]
            _LEAN_STORED[key] = (clock() + 3600.0, status, replay, [body])
            start_response(status, list(headers.items()))
            return [body]
        return app(environ, start_response)

    return wrapped


# -- the rows


@dataclass
class Row:
    measure: str
    ours: str  # contender names
    baseline: str
    target: float
    explain: str
    samples: dict[str, list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def times(self) -> tuple[float, float]:
        return statistics.median(self.samples[self.ours]), statistics.median(
            self.samples[self.baseline]
        )

    def ratio(self) -> float:
        """The median of the per-round ratios: a burst of load on the machine slows both
        contenders of a round alike, so pairing them within the round cancels it out."""
        return statistics.median(self.round_ratios())

    def round_ratios(self) -> list[float]:
        """Baseline time / our time within each round (higher is better for us)."""
        return round_ratios(self.samples[self.baseline], self.samples[self.ours])

    def verdict(self) -> str:
        return "meets" if self.ratio() >= self.target else "misses"


def timed(options: argparse.Namespace, contenders: dict[str, Prepare]) -> dict[str, list[float]]:
    """Interleaved rounds of ``contenders`` as the command line asked."""
    return interleaved(
        contenders, rounds=options.rounds, seconds=options.seconds, gc_off=not options.gc_on
    )


def own_cost_note(samples: dict[str, list[float]], row: Row, bare: str, ours_bare: str) -> str:
    """What the middleware adds around the Flask-shaped bare app, beside what it adds inside
    Flask, from contenders timed in the same rounds."""
    median = {name: statistics.median(times) for name, times in samples.items()}
    return (
        f"added per request: +{median[ours_bare] - median[bare]:.2f} µs around a bare app "
        f"answering as the Flask route does, +{median[row.ours] - median[row.baseline]:.2f} µs "
        f"inside Flask"
    )


class Failed(AssertionError):
    pass


def check(condition: bool, message: str) -> None:
    if not condition:
        raise Failed(message)


def row_flask_caching(options: argparse.Namespace) -> Row:
    plain, _ = flask_app()
    theirs, their_calls = flask_app(flask_caching=True)
    ours = MemoryOptimizer(plain, **CACHE_ONLY)
    environ = environ_for("/")
    for app in (ours, theirs):
        call_once(app, environ)  # fill both caches
    check(call_once(ours, environ)[1].get("X-Cache") == "HIT", "our cache did not hit")
    before = their_calls.count
    row = Row(
        "hit vs Flask-Caching hit",
        "ours: hit",
        "Flask-Caching: hit",
        60,
        "Flask-Caching hit time / our hit time: how many times faster our hit is than "
        "@cache.cached() (SimpleCache) hitting on the same Flask route",
    )
    lean = least_hit(plain)
    call_once(lean, environ)
    samples = timed(
        options,
        {
            row.ours: repeated(ours, environ, copy=True),
            row.baseline: repeated(theirs, environ, copy=True),
            "least hit": repeated(lean, environ, copy=True),
        },
    )
    row.samples = {row.ours: samples[row.ours], row.baseline: samples[row.baseline]}
    check(their_calls.count == before, "Flask-Caching called the view: it missed")
    check(ours.cache.stats()["misses"] == 1, "our cache missed while timed")
    least = round_ratios(samples[row.baseline], samples["least hit"])
    row.notes.append(
        f"the least any hit can cost (benchmarks/cache.py least_hit: the rules' headers, the "
        f"key, the lookup, a deadline, prebuilt headers copied; no LRU touch, no counts, a "
        f"function): {statistics.median(samples['least hit']):.3f} µs, "
        f"{statistics.median(least):.1f}x ({min(least):.1f}..{max(least):.1f})"
    )
    return row


def constant_app(headers: list[tuple[str, str]]) -> WSGIApp:
    """The floor's answer with ``headers`` added."""
    answer = [("Content-Type", "text/plain"), ("Content-Length", "5"), *headers]

    def app(environ: Environ, start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", answer)
        return [BODY]

    return app


# Hits that real traffic asks for beside the plain one: (response headers, request headers).
OTHER_HITS = {
    # a browser sends cookies with nearly every request, and may see only what is public
    "with cookies": (
        [("Cache-Control", "public, max-age=1800")],
        {"Cookie": "_ga=GA1.2.3; theme=dark"},
    ),
    "with cookies behind a TLS proxy": (
        [("Cache-Control", "public, max-age=1800")],
        {"Cookie": "_ga=GA1.2.3", "X-Forwarded-Proto": "https"},
    ),
    # a compressing app says Vary: Accept-Encoding
    "of a varying entry": (
        [("Vary", "Accept-Encoding"), ("Cache-Control", "max-age=1800")],
        {"Accept-Encoding": "gzip, br"},
    ),
    # a browser revalidating its copy
    "answered 304": (
        [("ETag", '"v1"'), ("Cache-Control", "max-age=1800")],
        {"If-None-Match": '"v1"'},
    ),
}


def row_floor(options: argparse.Namespace) -> Row:
    ours = MemoryOptimizer(floor_app, **CACHE_ONLY)
    environ = environ_for("/")
    call_once(ours, environ)
    check(call_once(ours, environ)[1].get("X-Cache") == "HIT", "our cache did not hit")
    others = {}
    optimizers = [ours]
    for kind, (response_headers, request_headers) in OTHER_HITS.items():
        optimizer = MemoryOptimizer(constant_app(response_headers), **CACHE_ONLY)
        optimizers.append(optimizer)
        request = environ_for("/", headers=request_headers)
        call_once(optimizer, request)
        check(call_once(optimizer, request)[1].get("X-Cache") == "HIT", f"{kind}: no hit")
        others[f"hit {kind}"] = repeated(optimizer, request, copy=False)
    row = Row(
        "hit vs bare WSGI floor",
        "ours: hit",
        "bare WSGI app",
        0.15,
        "floor time / our hit time: our hit's throughput as a share of that of a WSGI "
        "function returning a constant body",
    )
    samples = timed(
        options,
        {
            row.ours: repeated(ours, environ, copy=False),
            row.baseline: repeated(floor_app, environ, copy=False),
            **others,
        },
    )
    row.samples = {row.ours: samples[row.ours], row.baseline: samples[row.baseline]}
    for optimizer in optimizers:
        check(optimizer.cache.stats()["misses"] == 1, "our cache missed while timed")
    row.notes.append(
        "other hits, in the same rounds: "
        + ", ".join(f"{name} {statistics.median(samples[name]):.2f} µs" for name in others)
    )
    return row


def row_body_size(options: argparse.Namespace) -> Row:
    ours = MemoryOptimizer(sized_app, **CACHE_ONLY)
    small, big = environ_for("/small"), environ_for("/big")
    for environ, body in ((small, BODY), (big, BIG)):
        call_once(ours, environ)
        _, headers, replayed = call_once(ours, environ)
        check(headers.get("X-Cache") == "HIT" and replayed == body, "a sized entry did not hit")
    row = Row(
        "hit at 100 KB vs hit at 5 B",
        "ours: hit 100 KB",
        "ours: hit 5 B",
        0.9,
        "5 B hit time / 100 KB hit time: a stored body is replayed by reference, so its size "
        "should not matter",
    )
    row.samples = timed(
        options,
        {
            row.ours: repeated(ours, big, copy=False),
            row.baseline: repeated(ours, small, copy=False),
        },
    )
    check(ours.cache.stats()["misses"] == 2, "our cache missed while timed")
    return row


PASS_KINDS = {
    # kind: (environ, the Cache-Status detail our middleware must add, the target)
    "POST": (lambda: environ_for("/", method="POST", data=b"a=1"), "fwd=method", 0.95),
    "GET + Authorization": (
        lambda: environ_for("/", headers={"Authorization": "Bearer t0ken"}),
        "detail=credentials",
        0.90,
    ),
    "GET, response no-store": (lambda: environ_for("/nostore"), "detail=no-store", 0.90),
}


def rows_pass_through(options: argparse.Namespace) -> list[Row]:
    plain, _ = flask_app()
    ours = MemoryOptimizer(plain, **CACHE_ONLY)
    ours_bare = MemoryOptimizer(flask_shaped_app, **CACHE_ONLY)
    rows: list[Row] = []
    for kind, (make_environ, status, target) in PASS_KINDS.items():
        environ = make_environ()
        cache_status = call_once(ours, environ)[1].get("Cache-Status", "")
        check(status in cache_status, f"{kind}: expected {status} in {cache_status!r}")
        check(
            call_once(ours_bare, environ)[1:] == call_once(ours, environ)[1:],
            f"{kind}: the bare app does not answer as the Flask route does",
        )
        row = Row(
            f"pass-through: {kind}",
            f"ours: {kind}",
            f"Flask: {kind}",
            target,
            f"unwrapped time / wrapped time: the share of the route's throughput kept when the "
            f"middleware must pass the request through ({status})",
        )
        bare, around_bare = f"bare: {kind}", f"ours around bare: {kind}"
        contenders = {
            row.ours: repeated(ours, environ, copy=True),
            row.baseline: repeated(plain, environ, copy=True),
            bare: repeated(flask_shaped_app, environ, copy=True),
            around_bare: repeated(ours_bare, environ, copy=True),
        }
        control, least = f"Flask again: {kind}", f"least wrapper: {kind}"
        if not rows:
            # A/A control: how far apart two identical contenders land; and the yardstick.
            contenders[control] = repeated(plain, environ, copy=True)
            contenders[least] = repeated(least_wrapper(plain), environ, copy=True)
        samples = timed(options, contenders)
        row.samples = {row.ours: samples[row.ours], row.baseline: samples[row.baseline]}
        row.notes.append(own_cost_note(samples, row, bare, around_bare))
        if control in samples:
            same = round_ratios(samples[control], samples[row.baseline])
            row.notes.append(
                f"A/A control, the unwrapped route against itself in the same rounds: "
                f"{statistics.median(same):.3f} ({min(same):.2f}..{max(same):.2f}): "
                f"the noise a target has to be read against"
            )
            floor = round_ratios(samples[row.baseline], samples[least])
            row.notes.append(
                f"the least any pass-through can cost (benchmarks/cache.py LeastWrapper: the "
                f"two headers added, close() passed on and counted, no rule checked): "
                f"{statistics.median(floor):.3f} ({min(floor):.2f}..{max(floor):.2f})"
            )
        rows.append(row)
    check(len(ours.cache) + len(ours_bare.cache) == 0, "a pass-through response was stored")
    return rows


def row_miss_store(options: argparse.Namespace) -> Row:
    plain, _ = flask_app()
    ours = MemoryOptimizer(plain, **BIG_CAPS, **CACHE_ONLY)
    base = environ_for("/items")
    _, headers, _ = call_once(ours, dict(base, QUERY_STRING="warm"))
    check("stored" in headers.get("Cache-Status", ""), f"a miss was not stored: {headers}")
    counter = itertools.count()  # shared: no URL is ever seen twice by anyone
    row = Row(
        "miss + store vs unwrapped Flask",
        "ours: miss + store",
        "Flask: unwrapped",
        0.80,
        "unwrapped time / wrapped time, every call a new URL: the share of the route's "
        "throughput kept while every response is captured and stored",
    )
    ours_bare = MemoryOptimizer(flask_shaped_app, **BIG_CAPS, **CACHE_ONLY)
    samples = timed(
        options,
        {
            row.ours: fresh_urls(ours, base, counter),
            row.baseline: fresh_urls(plain, base, counter),
            "bare": fresh_urls(flask_shaped_app, base, counter),
            "ours around bare": fresh_urls(ours_bare, base, counter),
            "least capture": fresh_urls(least_wrapper(plain, LeastCapture), base, counter),
        },
    )
    row.samples = {row.ours: samples[row.ours], row.baseline: samples[row.baseline]}
    for optimizer in (ours, ours_bare):
        stats = optimizer.cache.stats()
        check(stats["hits"] == 0 and stats["stores"] == stats["misses"], f"not all stored: {stats}")
    row.notes.append(own_cost_note(samples, row, "bare", "ours around bare"))
    floor = round_ratios(samples[row.baseline], samples["least capture"])
    row.notes.append(
        f"the least any stored miss can cost (benchmarks/cache.py LeastCapture: the body "
        f"copied, joined and put in a dict under its key, no rule checked, nothing measured): "
        f"{statistics.median(floor):.3f} ({min(floor):.2f}..{max(floor):.2f})"
    )
    row.notes.append(
        f"{stats['stores']} stores, {stats['evictions']} evictions, "
        f"{stats['items']} items / {stats['size_mb']} MB held at the end "
        f"(caps {BIG_CAPS['cache_max_items']} items / {BIG_CAPS['cache_max_mb']:g} MB)"
    )
    row.notes.append(
        f"the cache grows by {stats['bytes'] / max(stats['items'], 1) / 1024:.1f} KB per stored "
        f"entry; first touch of a fresh memory page costs {page_fault_us():.2f} µs here"
    )
    return row


def page_fault_us(pages: int = 2048) -> float:
    """Microseconds to touch one never-used page: what a growing heap pays per new page."""
    size = pages * mmap.PAGESIZE
    with mmap.mmap(-1, size) as memory:
        start = time.perf_counter_ns()
        for offset in range(0, size, mmap.PAGESIZE):
            memory[offset] = 1
        return (time.perf_counter_ns() - start) / pages / 1000


# -- output


def _commit() -> str | None:
    """The measured checkout: short commit, ``+dirty`` when tracked package files are edited."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", root, *args], capture_output=True, text=True)
        if done.returncode:
            raise OSError(done.stderr)
        return done.stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", "wsgi_memopt")
    except OSError:
        return None
    return head + ("+dirty" if dirty else "")


def environment(options: argparse.Namespace) -> dict[str, Any]:
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "werkzeug": version("werkzeug"),
        "flask": version("flask"),
        "flask_caching": version("flask-caching"),
        "wsgi_memopt": version("wsgi-memopt"),
        "commit": _commit(),
        "cpu_count": os.cpu_count(),
        "usable_cores": affinity,
        "machine": platform.machine(),
        "rounds": options.rounds,
        "seconds_per_run": options.seconds,
        "gc": "on" if options.gc_on else "off while timed (all contenders), collected between",
    }


def as_json(rows: list[Row], env: dict[str, Any]) -> dict[str, Any]:
    out = []
    for row in rows:
        ours, baseline = row.times()
        ratios = row.round_ratios()
        item = asdict(row)
        item.update(
            ours_us=ours,
            baseline_us=baseline,
            ratio=row.ratio(),
            round_ratio_min=min(ratios),
            round_ratio_max=max(ratios),
            verdict=row.verdict(),
        )
        out.append(item)
    return {"environment": env, "rows": out}


def print_table(rows: list[Row], env: dict[str, Any]) -> None:
    print(
        f"Python {env['python']} ({env['implementation']}), werkzeug {env['werkzeug']}, "
        f"flask {env['flask']}, flask-caching {env['flask_caching']}, "
        f"wsgi_memopt {env['wsgi_memopt']} (commit {env['commit']})"
    )
    print(
        f"cores: {env['cpu_count']} ({env['usable_cores']} usable); {env['rounds']} interleaved "
        f"rounds of ~{env['seconds_per_run'] * 1000:g} ms per contender, rotating order; "
        f"µs/call: medians; GC {env['gc']}"
    )
    header = (
        "measure",
        "ours µs/call",
        "baseline µs/call",
        "ratio",
        "target",
        "verdict",
        "per round",
    )
    lines = []
    for row in rows:
        ours, baseline = row.times()
        ratios = row.round_ratios()
        lines.append(
            (
                row.measure,
                f"{ours:.3f}",
                f"{baseline:.3f}",
                f"{row.ratio():.3f}",
                f">= {row.target:g}",
                row.verdict(),
                f"{min(ratios):.2f}..{max(ratios):.2f}",
            )
        )
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]
    print()
    for i, line in enumerate([header, *lines]):
        cells = [
            cell.ljust(width) if column == 0 else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(line, widths, strict=True))
        ]
        print(" | ".join(cells))
        if i == 0:
            print("-+-".join("-" * width for width in widths))
    print()
    print(
        "ratio: the median over the rounds of the ratio within each round; "
        "per round: its lowest..highest (noise)."
    )
    for row in rows:
        print(f"- {row.measure}: {row.explain}.")
        for note in row.notes:
            print(f"  {note}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds (default 15)")
    parser.add_argument(
        "--seconds", type=float, default=0.02, help="seconds per contender per round (default 0.02)"
    )
    parser.add_argument("--quick", action="store_true", help="5 rounds of ~5 ms: a smoke test")
    parser.add_argument("--gc-on", action="store_true", help="leave the GC on while timing")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    options = parser.parse_args(argv)
    if options.quick:
        options.rounds, options.seconds = min(options.rounds, 5), 0.005
    if options.rounds < 1:
        parser.error("--rounds must be at least 1")

    rows = [
        row_flask_caching(options),
        row_floor(options),
        row_body_size(options),
        *rows_pass_through(options),
        row_miss_store(options),
    ]
    env = environment(options)
    if options.json:
        json.dump(as_json(rows, env), sys.stdout, indent=2)
        print()
    else:
        print_table(rows, env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
