"""Several middleware "processes" on one Redis, for the tests of the shared cache.

Each :class:`Process` is a :class:`~wsgi_memopt.MemoryOptimizer` of its own (its own
``ResponseCache``, local store, single-flight table and invalidation listener) in front of the
same app, as gunicorn workers on one or many machines would be; they share nothing but the
Redis that ``cache_backend`` names. :func:`processes` builds them and always stops their
listeners::

    with processes(app, redis_url, 2) as (a, b):
        get(a.client, "/page")            # fetched by a, stored in Redis
        assert get(b.client, "/page").data == b"body #1"   # b never calls the app

Every wait here is bounded: a bug fails a test, never hangs it.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

import redis
from werkzeug.test import Client, TestResponse

from wsgi_memopt import MemoryOptimizer
from wsgi_memopt.cache.redis_store import RedisStore
from wsgi_memopt.cache.shared import SharedStore

from .apps import Headers
from .wsgi import WSGIApp, checked, get, wrap

__all__ = [
    "WAIT_S",
    "GatedApp",
    "Process",
    "listening",
    "processes",
    "redis_names",
    "subscribers",
    "wait_heard",
    "wait_until",
]

WAIT_S = 10.0  # the longest a test waits for another thread, or for Redis to come back


@dataclass
class Process:
    """One middleware standing for one worker process, and a client for it."""

    optimizer: MemoryOptimizer
    client: Client

    @property
    def store(self) -> SharedStore:
        """Its two-level store (this process's copies in front of Redis)."""
        return cast(SharedStore, self.optimizer.cache.store)

    @property
    def shared(self) -> RedisStore:
        """Its Redis level."""
        return self.store.shared

    def shared_stats(self) -> dict[str, Any]:
        """The ``shared`` part of its cache stats, as the memory API reports it."""
        return cast(dict[str, Any], self.optimizer.cache.stats()["shared"])

    def new_client(self) -> Client:
        """Another cookie-less client (one per thread: a test client is not shared)."""
        return Client(checked(self.optimizer), use_cookies=False)

    def get(self, path: str = "/", **kwargs: Any) -> TestResponse:
        """A GET through this process, read to its end and closed."""
        return get(self.client, path, **kwargs)


@contextlib.contextmanager
def processes(app: WSGIApp, url: str, count: int = 2, **settings: Any) -> Iterator[list[Process]]:
    """``count`` processes on ``url`` in front of ``app``, with ``settings`` (see
    :func:`~helpers.wsgi.wrap` for the test defaults); their listeners stopped at the end.

    Redis may be slow to answer on a loaded machine: unless a test sets its own, the timeout
    is long enough that only a real fault makes a request go on without it.
    """
    settings.setdefault("cache_backend", url)
    settings.setdefault("cache_redis_timeout_s", 2.0)
    built: list[Process] = []
    try:
        for _ in range(count):
            built.append(Process(*wrap(app, **settings)))
        yield built
    finally:
        for process in built:
            process.optimizer.close()


def listening(*running: Process) -> None:
    """Start the invalidation listeners of ``running`` (every process on one channel) and
    return once Redis counts each one's subscription: a message published before it would be
    lost."""
    for process in running:
        process.store.listener.ensure_running()
    shared = running[0].shared
    wait_until(
        lambda: subscribers(shared.client, shared.channel) >= len(running),
        f"{len(running)} listeners to subscribe",
    )


def wait_heard(process: Process, before: int, what: str) -> None:
    """Wait until ``process``'s listener has received more than ``before`` messages."""
    wait_until(lambda: process.store.listener.received > before, what)


def subscribers(client: redis.Redis | redis.RedisCluster, channel: str) -> int:
    """How many connections subscribe to ``channel`` (on every node of a cluster)."""
    if isinstance(client, redis.RedisCluster):
        counts = client.pubsub_numsub(channel, target_nodes=redis.RedisCluster.ALL_NODES)
    else:
        counts = client.pubsub_numsub(channel)
    return sum(count for _, count in counts)


def wait_until(predicate: Callable[[], object], what: str, pause_s: float = 0.01) -> None:
    """Poll ``predicate`` until it holds; fail after :data:`WAIT_S`."""
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {WAIT_S:g} s waiting for {what}"
        time.sleep(pause_s)


def redis_names(client: redis.Redis | redis.RedisCluster, pattern: str) -> list[str]:
    """The names of the keys matching ``pattern`` (on every primary of a cluster), sorted."""
    return sorted(name.decode() for name in client.scan_iter(match=pattern, count=1000))


class GatedApp:
    """A thread-safe counting app: ``body #N`` on its N-th call, after ``delay_s``. After
    :meth:`hold`, its next call waits until :meth:`release` (bounded by :data:`WAIT_S`): a
    fill that hangs while the test looks at the others.

    ``headers`` follow ``Content-Type``.
    """

    def __init__(self, headers: Headers, *, delay_s: float = 0.0) -> None:
        self.headers = headers
        self.delay_s = delay_s
        self.calls = 0
        self.waiting = threading.Event()  # set once the held call is waiting
        self._held = False
        self._gate = threading.Event()
        self._lock = threading.Lock()

    def hold(self) -> None:
        """Make the next call wait until :meth:`release`."""
        with self._lock:
            self._held = True
            self._gate.clear()
            self.waiting.clear()

    def release(self) -> None:
        """Let the held call go on."""
        self._gate.set()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        with self._lock:
            self.calls += 1
            number, held, self._held = self.calls, self._held, False
        if held:
            self.waiting.set()
            self._gate.wait(WAIT_S)
        if self.delay_s:
            time.sleep(self.delay_s)
        body = b"body #%d" % number
        headers = [("Content-Type", "text/plain"), *self.headers]
        start_response("200 OK", [*headers, ("Content-Length", str(len(body)))])
        return [body]
