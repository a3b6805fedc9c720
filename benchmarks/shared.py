"""The shared cache on Redis, side by side with per-worker caches and with its peers.

Real gunicorn pools (4 ``gthread`` workers of 4 threads) and a real ``redis-server`` this script
starts on a free loopback port (no persistence) and stops by PID. The route is a Flask view
that burns ~5 ms of CPU (calibrated here before any server starts; not a sleep) and answers
``/page/<n>`` with a body of ``--body-kb`` KB and ``Cache-Control: public, max-age=600``; the
app counts its own calls (one byte appended to a file of its worker's own per call). Four parts:

1. **Memory and hit rate from cold.** Per-worker caches (the defaults) against an L1 in each
   worker in front of Redis (``cache_backend`` set), each from cold over 200 URLs. Every client
   walks the URLs in the same order from the same start, so a cold URL is asked by several
   clients at once on several workers: the case cross-process single flight is for. Each
   request opens its own connection, so every worker gets its share. Measured: the hit rate
   (the responses' ``Cache-Status``), the app's calls over the pool, the workers' cache bytes
   (``cache.bytes`` of ``GET /api/v1/memory/stats``, read until every worker has answered),
   their RSS, and Redis's ``used_memory`` beside them. It runs at two page sizes: one where
   every URL fits in every L1, one where the 200 pages overflow an L1 but not a per-worker cache.
2. **Throughput and p99 against the peers**, on the same route and the same Redis:
   Flask-Caching's ``RedisCache`` (``@cache.cached()``) and Django's cache middleware with its
   Redis backend, loaded by ``wrk --latency`` cycling over the 200 URLs after a warm pass, in
   interleaved rounds; the per-worker caches ride along as a reference.
3. **The L2 hit in-process** (no server): every request misses the L1 (its copies live a
   microsecond) and hits Redis, against a Flask-Caching ``RedisCache`` hit on the same route,
   an L1 hit, and the bare route, timed with ``_timing.interleaved``.
4. **A fault.** The L1 + Redis pool under load for ``--fault-seconds``; Redis is SIGKILLed a
   third of the way in and restarted (empty) on the same port half-way: failed requests and
   the hit rate second by second, and how long after Redis returned the hit rate is back to
   its level before the kill.

Everything is bounded in time; every server is stopped by PID; nothing outlives the script.
The load generator shares the machine's CPUs with the servers, as in the other server
benchmarks: the figures are those of one small machine, printed by the script on each run.

    python benchmarks/shared.py               # all four parts, a few minutes
    python benchmarks/shared.py --quick       # short runs of every part: a smoke test
    python benchmarks/shared.py --parts 1,4   # some parts only
    python benchmarks/shared.py --json        # the same figures as JSON
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import importlib.util
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import gunicorn_throughput
import redis
from _servers import HOST, control_socket_args, free_port, stop_process
from _timing import interleaved, repeated, round_ratios, serve
from gunicorn_throughput import (
    Server,
    calibrate,
    read_stats,
    start_server,
    stop_server,
    wait_ready,
)
from leak_pool import WrkOutput, parse_wrk
from werkzeug.test import EnvironBuilder

from wsgi_memopt import MemoryOptimizer
from wsgi_memopt.settings import DEFAULT_API_PREFIX

PATHS = 200
WORKERS = 4
THREADS = gunicorn_throughput.THREADS  # the same gthread workers as the other server benchmark
WORK_MS = 5.0
MAX_AGE_S = 600
STATS_PATH = DEFAULT_API_PREFIX + "/stats"
STOP_TIMEOUT_S = 10.0
REQUEST_TIMEOUT_S = 10.0
REDIS_TIMEOUT_S = 10.0

# The targets of issue #16.
TARGET_HIT_RATE_PP = 1.0  # B's hit rate at most this many points below A's
TARGET_MEMORY_SHARE = 1 / 3  # B's workers' cache bytes over A's
TARGET_CALLS_FACTOR = 1.1  # B's app calls over the number of URLs
TARGET_RECOVERY_S = 5.0  # hit rate back to its pre-kill level after Redis returns
RECOVERED_WITHIN_PP = 1.0  # "back to its level": within this many points of it

# -- the apps, written into a temporary directory

COMMON_SOURCE = textwrap.dedent(
    """\
    import os

    from flask import Flask

    ITERATIONS = {iterations}
    BODY_BYTES = {body_bytes}
    HEADERS = {{"Content-Type": "text/plain", "Cache-Control": "public, max-age={max_age}"}}


    def burn(n):
        x = 0
        for i in range(ITERATIONS):
            x = (x + i * n) % 1000003
        return x


    def page_body(n):
        head = f"page {{n}}: {{burn(n)}}\\n".encode()
        return head + b"." * max(0, BODY_BYTES - len(head))


    class Calls:
        # One byte appended per call to a file of this process's own: the files' sizes, summed,
        # are the pool's calls, however gunicorn spread them.
        def __init__(self, directory):
            self.directory = directory
            self.pid = None
            self.fd = None

        def count(self):
            pid = os.getpid()
            if pid != self.pid:  # the first call in this worker, after the fork
                path = os.path.join(self.directory, f"calls-{{pid}}")
                self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                self.pid = pid
            os.write(self.fd, b".")


    def make_flask(name, calls, cache_config=None):
        app = Flask(name)

        def page(n):
            calls.count()
            return page_body(n), 200, HEADERS

        if cache_config is not None:
            from flask_caching import Cache

            page = Cache(app, config=cache_config).cached()(page)
        app.add_url_rule("/page/<int:n>", view_func=page)
        return app
    """
)
OURS_MEMORY_SOURCE = textwrap.dedent(
    """\
    import os

    from common import Calls, make_flask
    from wsgi_memopt import MemoryOptimizer

    flask_app = make_flask("ours_memory", Calls(os.environ["BENCH_CALLS_DIR"]))
    application = MemoryOptimizer(
        flask_app.wsgi_app, monitor_interval_s=0, api_allow_networks="127.0.0.1/32"
    )
    """
)
OURS_SHARED_SOURCE = textwrap.dedent(
    """\
    import os

    from common import Calls, make_flask
    from wsgi_memopt import MemoryOptimizer

    flask_app = make_flask("ours_shared", Calls(os.environ["BENCH_CALLS_DIR"]))
    application = MemoryOptimizer(
        flask_app.wsgi_app,
        cache_backend=os.environ["BENCH_REDIS_URL"],
        monitor_interval_s=0,
        api_allow_networks="127.0.0.1/32",
    )
    """
)
FLASK_CACHING_SOURCE = textwrap.dedent(
    """\
    import os

    from common import Calls, make_flask

    config = {{
        "CACHE_TYPE": "RedisCache",
        "CACHE_REDIS_URL": os.environ["BENCH_REDIS_URL"],
        "CACHE_DEFAULT_TIMEOUT": {max_age},
    }}
    application = make_flask(
        "flask_caching", Calls(os.environ["BENCH_CALLS_DIR"]), cache_config=config
    ).wsgi_app
    """
)
DJANGO_SETTINGS_SOURCE = textwrap.dedent(
    """\
    import os

    SECRET_KEY = "a benchmark's throwaway key"
    DEBUG = False
    ALLOWED_HOSTS = ["{host}"]
    ROOT_URLCONF = "django_site.urls"
    INSTALLED_APPS = []
    MIDDLEWARE = [
        "django.middleware.cache.UpdateCacheMiddleware",
        "django.middleware.cache.FetchFromCacheMiddleware",
    ]
    CACHES = {{
        "default": {{
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": os.environ["BENCH_REDIS_URL"],
        }}
    }}
    CACHE_MIDDLEWARE_SECONDS = {max_age}
    USE_TZ = True
    """
)
DJANGO_URLS_SOURCE = textwrap.dedent(
    """\
    import os

    from django.http import HttpResponse
    from django.urls import path

    from common import HEADERS, Calls, page_body

    calls = Calls(os.environ["BENCH_CALLS_DIR"])


    def page(request, n):
        calls.count()
        response = HttpResponse(page_body(n), content_type=HEADERS["Content-Type"])
        response["Cache-Control"] = HEADERS["Cache-Control"]
        return response


    urlpatterns = [path("page/<int:n>", page)]
    """
)
DJANGO_WSGI_SOURCE = textwrap.dedent(
    """\
    import os

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "django_site.settings")

    from django.core.wsgi import get_wsgi_application

    application = get_wsgi_application()
    """
)
# gunicorn targets, by contender.
OURS_MEMORY = "wsgi_memopt, per-worker caches"
OURS_SHARED = "wsgi_memopt, L1 + Redis"
FLASK_CACHING = "Flask-Caching RedisCache"
DJANGO = "Django cache middleware"
TARGETS = {
    OURS_MEMORY: "ours_memory:application",
    OURS_SHARED: "ours_shared:application",
    FLASK_CACHING: "flask_caching_app:application",
    DJANGO: "django_site.wsgi:application",
}
# The requests are built in init, once wrk has set the Host header from the URL: built at the
# top of the script, they would go without one.
WRK_SCRIPT = textwrap.dedent(
    """\
    local requests = {{}}
    local i = 0

    init = function(args)
        for k = 0, {paths} - 1 do
            requests[k + 1] = wrk.format("GET", "/page/" .. k)
        end
    end

    request = function()
        i = i % #requests + 1
        return requests[i]
    end
    """
)


def write_apps(directory: Path, iterations: int, body_bytes: int) -> None:
    """Every contender's modules, sharing one route, into ``directory``."""
    common = COMMON_SOURCE.format(iterations=iterations, body_bytes=body_bytes, max_age=MAX_AGE_S)
    (directory / "common.py").write_text(common)
    (directory / "ours_memory.py").write_text(OURS_MEMORY_SOURCE)
    (directory / "ours_shared.py").write_text(OURS_SHARED_SOURCE)
    (directory / "flask_caching_app.py").write_text(FLASK_CACHING_SOURCE.format(max_age=MAX_AGE_S))
    site = directory / "django_site"
    site.mkdir(exist_ok=True)
    (site / "__init__.py").write_text("")
    settings = DJANGO_SETTINGS_SOURCE.format(host=HOST, max_age=MAX_AGE_S)
    (site / "settings.py").write_text(settings)
    (site / "urls.py").write_text(DJANGO_URLS_SOURCE)
    (site / "wsgi.py").write_text(DJANGO_WSGI_SOURCE)
    (directory / "paths.lua").write_text(WRK_SCRIPT.format(paths=PATHS))


def app_calls(calls_dir: Path) -> int:
    """Calls of the route so far by every process that wrote to ``calls_dir``."""
    return sum(path.stat().st_size for path in calls_dir.glob("calls-*"))


# -- redis-server


class RedisServer:
    """A ``redis-server`` of our own on 127.0.0.1, without persistence; stopped by PID."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://{HOST}:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        """Start it (again, on the same port) and return once it answers PING."""
        executable = shutil.which("redis-server")
        if executable is None:
            raise SystemExit("redis-server is not installed (apt-get install redis-server)")
        self.starts += 1
        log_path = self.directory / f"redis-{self.port}-{self.starts}.log"
        command = [
            executable,
            "--port",
            str(self.port),
            "--bind",
            HOST,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.directory),
        ]
        with log_path.open("wb") as log_file:
            self.proc = subprocess.Popen(
                command, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + REDIS_TIMEOUT_S
        while True:
            with contextlib.suppress(redis.RedisError), self.client() as client:
                if client.ping():
                    return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start:\n{log_path.read_text()[-2000:]}")
            time.sleep(0.02)

    def client(self) -> redis.Redis:
        """A fresh client with short timeouts, to be closed (``with``) after a call or two."""
        return redis.Redis(host=HOST, port=self.port, socket_timeout=2, socket_connect_timeout=2)

    def flush(self) -> None:
        """Empty it: every contender starts from cold."""
        with self.client() as client:
            client.flushall()

    def memory(self) -> tuple[int, int]:
        """``used_memory`` (INFO memory) and the number of keys."""
        with self.client() as client:
            return int(client.info("memory")["used_memory"]), int(client.dbsize())

    def kill(self) -> None:
        """SIGKILL by PID, as a crash would end it; returns once it is gone."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=REDIS_TIMEOUT_S)

    def stop(self) -> None:
        """SIGTERM by PID, SIGKILL after a bound."""
        if self.proc is not None:
            stop_process(self.proc, STOP_TIMEOUT_S)


# -- gunicorn


@contextlib.contextmanager
def gunicorn(directory: Path, contender: str, label: str, env: dict[str, str]) -> Iterator[Server]:
    """A gunicorn of ``WORKERS`` gthread workers serving ``contender``, once every worker has
    booted and it answers; stopped by PID (its workers too) on the way out."""
    server = start_server(
        directory, TARGETS[contender], label, control_socket_args(), workers=WORKERS, env=env
    )
    try:
        wait_ready(server, workers=WORKERS)
        yield server
    finally:
        stop_server(server)


def log_trouble(server: Server) -> str | None:
    """The tail of the server's log when it shows a traceback or a timed-out worker."""
    log = server.log()
    if "Traceback" in log or "WORKER TIMEOUT" in log:
        return log[-2000:]
    return None


# -- requests


def get(port: int, path: str) -> tuple[int, str | None]:
    """GET ``path`` on a connection of its own, read to the end: status and Cache-Status."""
    connection = http.client.HTTPConnection(HOST, port, timeout=REQUEST_TIMEOUT_S)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status, response.getheader("Cache-Status")
    finally:
        connection.close()


def classify(cache_status: str | None) -> str:
    """``hit``, ``miss`` (``fwd=miss``) or ``other``, from a ``Cache-Status`` value."""
    params = [param.strip() for param in (cache_status or "").split(";")[1:]]
    if "hit" in params:
        return "hit"
    if "fwd=miss" in params:
        return "miss"
    return "other"


@dataclass
class Tally:
    """What the responses said, counted."""

    hit: int = 0
    miss: int = 0
    other: int = 0
    failed: int = 0  # a connection error or a status other than 200
    failure_samples: list[str] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return self.hit + self.miss + self.other + self.failed

    @property
    def hit_rate(self) -> float:
        """Hits over hits + misses (``fwd=miss``), as the responses said."""
        looked_up = self.hit + self.miss
        return self.hit / looked_up if looked_up else float("nan")

    def ask(self, port: int, path: str) -> str:
        """Send one request, count its answer, and return how it was counted."""
        try:
            status, cache_status = get(port, path)
        except (OSError, http.client.HTTPException) as exc:
            return self._failed(f"{path}: {type(exc).__name__}: {exc}")
        if status != 200:
            return self._failed(f"{path}: HTTP {status}")
        kind = classify(cache_status)
        setattr(self, kind, getattr(self, kind) + 1)
        return kind

    def _failed(self, sample: str) -> str:
        self.failed += 1
        if len(self.failure_samples) < 5:
            self.failure_samples.append(sample)
        return "failed"

    def merge(self, other: Tally) -> None:
        self.hit += other.hit
        self.miss += other.miss
        self.other += other.other
        self.failed += other.failed
        room = max(0, 5 - len(self.failure_samples))
        self.failure_samples += other.failure_samples[:room]


def in_threads(count: int, body: Callable[[int], None]) -> None:
    """Run ``body(k)`` for k in range(count) in threads released together; wait for all."""
    gate = threading.Barrier(count)

    def run(k: int) -> None:
        gate.wait()
        body(k)

    threads = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def warm(port: int) -> Tally:
    """One pass over the URLs, one request at a time: every page is stored."""
    tally = Tally()
    for n in range(PATHS):
        tally.ask(port, f"/page/{n}")
    return tally


def read_workers(server: Server, seconds: float = 10.0) -> dict[int, dict[str, Any]]:
    """The stats of every worker, by PID: each request lands on whichever worker the kernel
    picks, so ask on fresh connections until every worker has answered (bounded)."""
    seen: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + seconds
    while len(seen) < WORKERS and time.monotonic() < deadline:
        stats = read_stats(server.port)
        seen[int(stats["process"]["pid"])] = stats
        time.sleep(0.005)
    return seen


# -- part 1: memory and hit rate from cold


def cache_bytes(cache: dict[str, Any]) -> int:
    """A worker's cache bytes from its stats (``size_mb``, rounded, where ``bytes`` is absent)."""
    if "bytes" in cache:
        return int(cache["bytes"])
    return round(float(cache["size_mb"]) * 2**20)


@dataclass
class MemoryRun:
    """One contender's cold run of part 1."""

    contender: str
    body_kb: float
    requests: int
    hit: int
    miss: int
    other: int
    failed: int
    hit_rate: float
    app_calls: int
    workers_seen: int
    cache_bytes: int  # the workers' cache.bytes, summed
    cache_bytes_per_worker: list[int]
    lookups_per_worker: list[int]  # hits + misses each worker counted: how the load spread
    rss_mb: float  # the workers' RSS, summed
    redis_used_memory: int | None
    redis_keys: int | None
    shared: list[dict[str, Any] | None] | None  # each worker's cache["shared"]
    seconds: float
    failure_samples: list[str]
    trouble: str | None


def cold_run(
    directory: Path,
    redis_server: RedisServer,
    contender: str,
    body_kb: float,
    options: argparse.Namespace,
) -> MemoryRun:
    """From cold: every client walks the URLs in the same order, ``--passes`` times."""
    redis_server.flush()
    calls_dir = Path(tempfile.mkdtemp(prefix="calls-", dir=directory))
    env = {"BENCH_CALLS_DIR": str(calls_dir), "BENCH_REDIS_URL": redis_server.url}
    label = f"cold-{body_kb:g}kb-{'shared' if contender == OURS_SHARED else 'memory'}"
    with gunicorn(directory, contender, label, env) as server:
        tallies = [Tally() for _ in range(options.clients)]
        deadline = time.monotonic() + options.cold_timeout

        def client(k: int) -> None:
            for _ in range(options.passes):
                for n in range(PATHS):
                    if time.monotonic() > deadline:
                        return
                    tallies[k].ask(server.port, f"/page/{n}")

        started = time.perf_counter()
        in_threads(options.clients, client)
        seconds = time.perf_counter() - started
        workers = read_workers(server)
        calls = app_calls(calls_dir)
        used, keys = redis_server.memory() if contender == OURS_SHARED else (None, None)
        trouble = log_trouble(server)
    total = Tally()
    for tally in tallies:
        total.merge(tally)
    caches = [stats["cache"] for stats in workers.values()]
    return MemoryRun(
        contender=contender,
        body_kb=body_kb,
        requests=total.requests,
        hit=total.hit,
        miss=total.miss,
        other=total.other,
        failed=total.failed,
        hit_rate=total.hit_rate,
        app_calls=calls,
        workers_seen=len(workers),
        cache_bytes=sum(map(cache_bytes, caches)),
        cache_bytes_per_worker=list(map(cache_bytes, caches)),
        lookups_per_worker=[int(cache["hits"]) + int(cache["misses"]) for cache in caches],
        rss_mb=sum(float(stats["memory"]["rss_mb"]) for stats in workers.values()),
        redis_used_memory=used,
        redis_keys=keys,
        shared=[cache.get("shared") for cache in caches] if contender == OURS_SHARED else None,
        seconds=seconds,
        failure_samples=total.failure_samples,
        trouble=trouble,
    )


def memory_verdicts(per_worker: MemoryRun, shared: MemoryRun) -> dict[str, Any]:
    """Issue #16's targets for one page size: hit rate, workers' cache memory, app calls."""
    share = shared.cache_bytes / per_worker.cache_bytes if per_worker.cache_bytes else float("inf")
    points_behind = 100 * (per_worker.hit_rate - shared.hit_rate)
    calls_cap = TARGET_CALLS_FACTOR * PATHS
    all_seen = per_worker.workers_seen == WORKERS and shared.workers_seen == WORKERS
    return {
        "body_kb": shared.body_kb,
        "hit_rate_points_behind": points_behind,
        "hit_rate_ok": points_behind <= TARGET_HIT_RATE_PP,
        "memory_share": share,
        "memory_ok": all_seen and share <= TARGET_MEMORY_SHARE,
        "calls_cap": calls_cap,
        "calls_ok": shared.app_calls <= calls_cap,
        "failures": per_worker.failed + shared.failed,
        "all_workers_seen": all_seen,
    }


# -- part 2: throughput and p99 against the peers


@dataclass
class LoadRun:
    """One contender's wrk run of part 2."""

    contender: str
    round: int
    requests_per_s: float
    p99_ms: float | None
    requests: int
    failed: int
    warm_failed: int
    app_calls_loaded: int  # the app's calls while wrk ran: ~0 when every request hits
    trouble: str | None


def wrk_run(url: str, script: Path, seconds: float, connections: int) -> tuple[WrkOutput, str]:
    """``wrk --latency`` on ``url`` with the URL-cycling script; parsed, and its output."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    command = [
        wrk,
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",  # wrk takes whole seconds
        f"--timeout={REQUEST_TIMEOUT_S:g}s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    if done.returncode != 0:
        raise RuntimeError(f"wrk exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return parse_wrk(done.stdout), done.stdout


def load_run(
    directory: Path,
    redis_server: RedisServer,
    contender: str,
    round_index: int,
    options: argparse.Namespace,
) -> LoadRun:
    """A fresh pool of ``contender``, warmed (every page stored, then wrk for ``--warmup``),
    then loaded by wrk for ``--seconds``."""
    redis_server.flush()
    calls_dir = Path(tempfile.mkdtemp(prefix="calls-", dir=directory))
    env = {"BENCH_CALLS_DIR": str(calls_dir), "BENCH_REDIS_URL": redis_server.url}
    label = f"load{round_index}-{list(TARGETS).index(contender)}"
    script = directory / "paths.lua"
    with gunicorn(directory, contender, label, env) as server:
        url = f"http://{HOST}:{server.port}"
        warmed = warm(server.port)
        if options.warmup > 0:
            wrk_run(url, script, options.warmup, options.connections)
        before = app_calls(calls_dir)
        result, _ = wrk_run(url, script, options.seconds, options.connections)
        loaded_calls = app_calls(calls_dir) - before
        trouble = log_trouble(server)
    return LoadRun(
        contender=contender,
        round=round_index,
        requests_per_s=result.requests_per_s,
        p99_ms=result.p99_ms,
        requests=result.requests,
        failed=result.failed,
        warm_failed=warmed.failed,
        app_calls_loaded=loaded_calls,
        trouble=trouble,
    )


def load_summary(runs: list[LoadRun]) -> dict[str, Any]:
    """Medians over the rounds, and the ratios wsgi_memopt (L1 + Redis) / each peer."""
    contenders: dict[str, dict[str, Any]] = {}
    for name in TARGETS:
        mine = [run for run in runs if run.contender == name]
        if not mine:
            continue
        p99s = [run.p99_ms for run in mine if run.p99_ms is not None]
        contenders[name] = {
            "requests_per_s": statistics.median(run.requests_per_s for run in mine),
            "requests_per_s_rounds": [run.requests_per_s for run in mine],
            "p99_ms": statistics.median(p99s) if p99s else None,
            "p99_ms_rounds": [run.p99_ms for run in mine],
            "failed": sum(run.failed for run in mine),
            "app_calls_loaded": sum(run.app_calls_loaded for run in mine),
        }
    ours = contenders[OURS_SHARED]
    ratios: dict[str, dict[str, Any]] = {}
    for peer in (FLASK_CACHING, DJANGO):
        theirs = contenders[peer]
        rps = ours["requests_per_s"] / theirs["requests_per_s"] if theirs["requests_per_s"] else 0
        p99 = (
            ours["p99_ms"] / theirs["p99_ms"]
            if ours["p99_ms"] is not None and theirs["p99_ms"]
            else None
        )
        ratios[peer] = {
            "requests_per_s": rps,
            "p99_ms": p99,
            "ahead": rps > 1 and p99 is not None and p99 < 1,
        }
    failures = sum(entry["failed"] for entry in contenders.values())
    return {"contenders": contenders, "ratios": ratios, "failures": failures}


# -- part 3: the L2 hit in-process


def in_process(
    directory: Path, redis_server: RedisServer, options: argparse.Namespace
) -> dict[str, Any]:
    """µs per request of an L2 hit, a Flask-Caching RedisCache hit, an L1 hit, the bare route.

    Each contender is checked before it is timed: the hits call the app once (the first
    request), the L2 contender's hits are Redis's (its L2 hit count grows with each request).
    """
    # The module write_apps wrote: the route every contender serves, in this process.
    spec = importlib.util.spec_from_file_location("shared_bench_common", directory / "common.py")
    assert spec is not None
    assert spec.loader is not None
    common = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(common)
    redis_server.flush()
    calls_dir = Path(tempfile.mkdtemp(prefix="calls-", dir=directory))
    calls = common.Calls(str(calls_dir))
    bare = common.make_flask("bare", calls).wsgi_app
    theirs = common.make_flask(
        "flask_caching",
        calls,
        cache_config={
            "CACHE_TYPE": "RedisCache",
            "CACHE_REDIS_URL": redis_server.url,
            "CACHE_DEFAULT_TIMEOUT": MAX_AGE_S,
        },
    ).wsgi_app
    # The L1's copies live a microsecond: every request after the first misses it and asks Redis.
    l2 = MemoryOptimizer(
        common.make_flask("ours_l2", calls).wsgi_app,
        cache_backend=redis_server.url,
        cache_local_ttl_s=1e-6,
        monitor_interval_s=0,
    )
    l1 = MemoryOptimizer(
        common.make_flask("ours_l1", calls).wsgi_app,
        cache_backend=redis_server.url,
        monitor_interval_s=0,
    )

    def environ(path: str) -> dict[str, Any]:
        built = EnvironBuilder(path=path, base_url=f"http://{HOST}:8000").get_environ()
        built["REMOTE_ADDR"] = HOST
        return built

    contenders = {
        "wsgi_memopt L2 hit": (l2, environ("/page/1")),
        "Flask-Caching RedisCache hit": (theirs, environ("/page/2")),
        "wsgi_memopt L1 hit": (l1, environ("/page/3")),
        "bare Flask route": (bare, environ("/page/4")),
    }
    try:
        checks = check_in_process(contenders, l2, calls_dir)
        samples = interleaved(
            {name: repeated(app, env, copy=True) for name, (app, env) in contenders.items()},
            rounds=options.rounds_in_process,
            seconds=0.02 if not options.quick else 0.01,
        )
    finally:
        for optimizer in (l2, l1):
            # Their invalidation listeners would go on reconnecting while part 4 kills Redis.
            optimizer.close()
    base = samples["wsgi_memopt L2 hit"]
    rows = []
    for name, times in samples.items():
        ratios = round_ratios(times, base)
        rows.append(
            {
                "contender": name,
                "us": statistics.median(times),
                "us_range": [min(times), max(times)],
                "over_l2_hit": statistics.median(ratios),
                "over_l2_hit_range": [min(ratios), max(ratios)],
            }
        )
    return {"rows": rows, "rounds": options.rounds_in_process, "checks": checks}


def check_in_process(
    contenders: dict[str, tuple[Any, dict[str, Any]]], l2: Any, calls_dir: Path
) -> list[str]:
    """That each contender does what its row says; raises when one does not."""

    def l2_hits() -> int:
        return int(l2.cache.stats()["shared"]["hits"])

    notes = []
    for name, (app, env) in contenders.items():
        before = app_calls(calls_dir)
        serve(app, [env], copy=True)()  # the first request: a miss, stored
        hits_before = l2_hits() if app is l2 else 0
        time.sleep(0.01)  # past the L1 copy's microsecond
        serve(app, [env] * 20, copy=True)()
        calls = app_calls(calls_dir) - before
        expected = 21 if name == "bare Flask route" else 1
        if calls != expected:
            raise RuntimeError(f"{name}: {calls} app calls for 21 requests, expected {expected}")
        note = f"{name}: {calls} app call(s) for 21 requests"
        if app is l2:
            hits = l2_hits() - hits_before
            if hits < 20:
                raise RuntimeError(f"{name}: {hits} Redis hits for 20 requests after the first")
            note += f", {hits} Redis hits for the 20 after the first"
        notes.append(note)
    return notes


# -- part 4: Redis killed and restarted under load


@dataclass
class Second:
    """One second of the fault run, by when its requests completed."""

    second: int
    redis: str  # up, down, or back (restarted during or before this second)
    hit: int = 0
    miss: int = 0
    other: int = 0
    failed: int = 0
    states: list[str] = field(default_factory=list)  # breaker states the stats reads saw

    @property
    def requests(self) -> int:
        return self.hit + self.miss + self.other + self.failed

    @property
    def hit_rate(self) -> float:
        looked_up = self.hit + self.miss
        return self.hit / looked_up if looked_up else float("nan")


def fault_run(
    directory: Path, redis_server: RedisServer, options: argparse.Namespace
) -> dict[str, Any]:
    """The L1 + Redis pool, warmed, loaded for ``--fault-seconds``; Redis SIGKILLed at a third
    of it and restarted on its port at half of it."""
    redis_server.flush()
    calls_dir = Path(tempfile.mkdtemp(prefix="calls-", dir=directory))
    env = {"BENCH_CALLS_DIR": str(calls_dir), "BENCH_REDIS_URL": redis_server.url}
    seconds = options.fault_seconds
    kill_at, restart_at = seconds / 3, seconds / 2
    events: list[tuple[float, str]] = []  # (completed at, how counted), all clients
    states: list[tuple[float, str]] = []  # (read at, breaker state), from the stats reads
    lock = threading.Lock()
    with gunicorn(directory, OURS_SHARED, "fault", env) as server:
        warmed = warm(server.port)
        tally = Tally()
        started = time.monotonic()
        end = started + seconds

        def client(k: int) -> None:
            mine = Tally()
            done: list[tuple[float, str]] = []
            n = k * PATHS // options.clients
            while time.monotonic() < end:
                kind = mine.ask(server.port, f"/page/{n}")
                done.append((time.monotonic() - started, kind))
                n = (n + 1) % PATHS
            with lock:
                events.extend(done)
                tally.merge(mine)

        def poll_states() -> None:
            while time.monotonic() < end:
                with contextlib.suppress(OSError, http.client.HTTPException, RuntimeError):
                    state = read_stats(server.port)["cache"]["shared"]["state"]
                    states.append((time.monotonic() - started, state))
                time.sleep(0.25)

        load = threading.Thread(target=in_threads, args=(options.clients, client), daemon=True)
        poller = threading.Thread(target=poll_states, daemon=True)
        load.start()
        poller.start()
        time.sleep(max(0.0, started + kill_at - time.monotonic()))
        redis_server.kill()
        killed = time.monotonic() - started
        time.sleep(max(0.0, started + restart_at - time.monotonic()))
        redis_server.start()
        back = time.monotonic() - started
        load.join(timeout=seconds + 2 * REQUEST_TIMEOUT_S)
        poller.join(timeout=2 * REQUEST_TIMEOUT_S)
        workers = read_workers(server)
        calls = app_calls(calls_dir)
        trouble = log_trouble(server)
    return fault_summary(
        events, states, tally, warmed, killed, back, seconds, workers, calls, trouble
    )


def fault_summary(
    events: list[tuple[float, str]],
    states: list[tuple[float, str]],
    tally: Tally,
    warmed: Tally,
    killed: float,
    back: float,
    seconds: float,
    workers: dict[int, dict[str, Any]],
    calls: int,
    trouble: str | None,
) -> dict[str, Any]:
    """Per-second bins, the pre-kill level, and the recovery time after Redis returned."""
    full_seconds = int(seconds)  # a last, partial second is left out
    bins = []
    for second in range(full_seconds):
        if second + 1 <= killed:
            redis_state = "up"
        elif second + 1 <= back:
            redis_state = "down"
        else:
            redis_state = "back"
        bins.append(Second(second, redis_state))
    for at, kind in events:
        index = int(at)
        if index < full_seconds:
            setattr(bins[index], kind, getattr(bins[index], kind) + 1)
    for at, state in states:
        index = int(at)
        if index < full_seconds and state not in bins[index].states:
            bins[index].states.append(state)
    before = [b for b in bins if b.second + 1 <= killed]
    hits = sum(b.hit for b in before)
    looked_up = hits + sum(b.miss for b in before)
    level = hits / looked_up if looked_up else float("nan")
    # Recovered: from the first second after Redis returned from which every second is within
    # RECOVERED_WITHIN_PP of the pre-kill level (a dip that comes back later does not count).
    floor_rate = level - RECOVERED_WITHIN_PP / 100
    after = [b for b in bins if b.second + 1 > back]
    recovered_at: float | None = None
    for index, candidate in enumerate(after):
        if all(b.hit_rate >= floor_rate for b in after[index:] if b.hit + b.miss):
            recovered_at = max(float(candidate.second), back)
            break
    recovery = None if recovered_at is None else recovered_at - back
    errors = [(stats["cache"].get("shared") or {}).get("errors") for stats in workers.values()]
    return {
        "seconds": seconds,
        "killed_at_s": killed,
        "back_at_s": back,
        "requests": tally.requests,
        "failed": tally.failed,
        "failure_samples": tally.failure_samples,
        "warm_failed": warmed.failed,
        "hit_rate": tally.hit_rate,
        "pre_kill_hit_rate": level,
        "recovery_s": recovery,
        "recovery_ok": recovery is not None and recovery <= TARGET_RECOVERY_S,
        "failures_ok": tally.failed == 0,
        "app_calls": calls,
        "shared_errors_per_worker": errors,
        "workers_seen": len(workers),
        "bins": [{**asdict(b), "hit_rate": b.hit_rate} for b in bins],
        "trouble": trouble,
    }


# -- the report


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def _mb(value: int | float | None) -> str:
    return "-" if value is None else f"{value / 2**20:.2f}"


def print_memory(
    runs: list[MemoryRun], verdicts: list[dict[str, Any]], options: argparse.Namespace
) -> None:
    print(
        f"1. Memory and hit rate from cold: {WORKERS} gthread workers x {THREADS} threads, "
        f"{PATHS} URLs, {options.clients} clients in step x {options.passes} passes, "
        "a new connection per request"
    )
    print()
    header = (
        f"{'page':>6} | {'contender':31} | {'requests':>8} | {'hit rate':>8} | {'misses':>6} | "
        f"{'other':>5} | {'failed':>6} | {'app calls':>9} | {'cache MB':>8} | "
        f"{'per worker MB':>23} | {'Redis MB':>8} | {'keys':>5} | {'RSS MB':>7}"
    )
    print(header)
    print("-" * len(header))
    for run in runs:
        per_worker = "+".join(f"{b / 2**20:.1f}" for b in run.cache_bytes_per_worker)
        print(
            f"{run.body_kb:>4g}KB | {run.contender:31} | {run.requests:8d} | "
            f"{run.hit_rate:8.2%} | {run.miss:6d} | {run.other:5d} | {run.failed:6d} | "
            f"{run.app_calls:9d} | {_mb(run.cache_bytes):>8} | {per_worker:>23} | "
            f"{_mb(run.redis_used_memory):>8} | "
            f"{'-' if run.redis_keys is None else run.redis_keys:>5} | {run.rss_mb:7.1f}"
        )
    print()
    for v in verdicts:
        a, b = (run for run in runs if run.body_kb == v["body_kb"])
        print(f"targets at {v['body_kb']:g} KB pages (L1 + Redis against per-worker caches):")
        print(
            f"  hit rate within {TARGET_HIT_RATE_PP:g} point of it or better: "
            f"{b.hit_rate:.2%} vs {a.hit_rate:.2%} ({-v['hit_rate_points_behind']:+.2f} points): "
            f"{verdict(v['hit_rate_ok'])}"
        )
        print(
            f"  workers' cache memory <= 1/3 of it: {_mb(b.cache_bytes)} MB vs "
            f"{_mb(a.cache_bytes)} MB ({v['memory_share']:.2f}x; Redis holds "
            f"{_mb(b.redis_used_memory)} MB beside them): {verdict(v['memory_ok'])}"
        )
        print(
            f"  app calls of the pool <= {TARGET_CALLS_FACTOR:g} x {PATHS} = {v['calls_cap']:g}: "
            f"{b.app_calls} (per-worker caches: {a.app_calls}): {verdict(v['calls_ok'])}"
        )
        if not v["all_workers_seen"]:
            print(f"  ! not every worker answered {STATS_PATH}: memory verdict withheld")
    for run in runs:
        line = (
            f"  {run.body_kb:g} KB, {run.contender}: {run.seconds:.1f} s; lookups per worker "
            + "+".join(map(str, run.lookups_per_worker))
        )
        if run.shared is not None:
            line += "; Redis per worker (hits/misses/errors): " + ", ".join(
                "?" if s is None else f"{s['hits']}/{s['misses']}/{s['errors']}" for s in run.shared
            )
        print(line)
        for sample in run.failure_samples:
            print(f"  ! {sample}")
        if run.trouble:
            print(f"  ! the gunicorn log shows trouble:\n{run.trouble}")
    print(
        "hit rate: hits / (hits + fwd=miss) as the responses' Cache-Status said; app calls: "
        "the route's own count over all workers; cache MB: the sum of the workers' cache.bytes "
        "(for L1 + Redis, the L1s); Redis MB: INFO used_memory; RSS: the workers'."
    )


def print_load(runs: list[LoadRun], summary: dict[str, Any], options: argparse.Namespace) -> None:
    print(
        f"2. Throughput and p99: {WORKERS} gthread workers x {THREADS} threads, wrk -t1 "
        f"-c{options.connections} cycling over {PATHS} URLs for {options.seconds:g} s after a "
        f"warm pass and {options.warmup:g} s of wrk, {options.rounds} interleaved round(s)"
    )
    print()
    header = (
        f"{'contender':31} | {'req/s (median)':>14} | {'per round':>17} | {'p99 ms':>7} | "
        f"{'failed':>6} | app calls loaded"
    )
    print(header)
    print("-" * len(header))
    for name, entry in summary["contenders"].items():
        rounds = entry["requests_per_s_rounds"]
        p99 = "-" if entry["p99_ms"] is None else f"{entry['p99_ms']:7.2f}"
        print(
            f"{name:31} | {entry['requests_per_s']:14.0f} | "
            f"{f'{min(rounds):.0f}..{max(rounds):.0f}':>17} | {p99:>7} | {entry['failed']:6d} | "
            f"{entry['app_calls_loaded']}"
        )
    print()
    for peer, ratio in summary["ratios"].items():
        p99 = "-" if ratio["p99_ms"] is None else f"{ratio['p99_ms']:.2f}x"
        print(
            f"wsgi_memopt (L1 + Redis) / {peer}: req/s {ratio['requests_per_s']:.2f}x "
            f"(target > 1), p99 {p99} (target < 1): {verdict(ratio['ahead'])}"
        )
    for run in runs:
        if run.trouble:
            print(f"! {run.contender} round {run.round}: the gunicorn log shows trouble:")
            print(run.trouble)
        if run.warm_failed:
            print(f"! {run.contender} round {run.round}: {run.warm_failed} failed while warming")
    print(
        "app calls loaded: the route's calls while wrk ran (each contender's pages were stored "
        "by the warm pass; the reference row keeps a cache per worker and no Redis).\n"
        "wrk keeps its connections busy (a closed loop): each p99 is taken at that contender's "
        "own top rate, so a faster server is measured under more load on the same CPUs."
    )


def print_in_process(result: dict[str, Any]) -> None:
    print(
        f"3. One hit in-process (no server), {result['rounds']} interleaved rounds; "
        "Redis on loopback"
    )
    print()
    header = (
        f"{'contender':29} | {'µs/request':>10} | {'per round':>17} | {'/ L2 hit':>8} | per round"
    )
    print(header)
    print("-" * len(header))
    for row in result["rows"]:
        low, high = row["us_range"]
        rlow, rhigh = row["over_l2_hit_range"]
        print(
            f"{row['contender']:29} | {row['us']:10.1f} | {f'{low:.1f}..{high:.1f}':>17} | "
            f"{row['over_l2_hit']:7.2f}x | {rlow:.2f}..{rhigh:.2f}"
        )
    for note in result["checks"]:
        print(f"checked: {note}")
    print(
        "L2 hit: the L1's copies live 1 µs, so each request asks Redis; / L2 hit: the row's time "
        "over the L2 hit's, median of the ratios within each round."
    )


def print_fault(result: dict[str, Any]) -> None:
    print(
        f"4. Redis SIGKILLed at {result['killed_at_s']:.1f} s and back (empty, same port) at "
        f"{result['back_at_s']:.1f} s of a {result['seconds']:g} s run under the L1 + Redis pool"
    )
    print()
    header = (
        f"{'second':>6} | {'redis':5} | {'requests':>8} | {'hit rate':>8} | {'misses':>6} | "
        f"{'other':>5} | {'failed':>6} | breaker seen"
    )
    print(header)
    print("-" * len(header))
    for b in result["bins"]:
        rate = "-" if b["hit"] + b["miss"] == 0 else f"{b['hit_rate']:.2%}"
        requests = b["hit"] + b["miss"] + b["other"] + b["failed"]
        print(
            f"{b['second']:6d} | {b['redis']:5} | {requests:8d} | "
            f"{rate:>8} | {b['miss']:6d} | {b['other']:5d} | {b['failed']:6d} | "
            f"{','.join(b['states']) or '-'}"
        )
    print()
    recovery = result["recovery_s"]
    print(
        f"failed requests: {result['failed']} of {result['requests']} (target 0): "
        f"{verdict(result['failures_ok'])}"
    )
    print(
        f"hit rate back within {RECOVERED_WITHIN_PP:g} point of its pre-kill "
        f"{result['pre_kill_hit_rate']:.2%}: "
        + ("never, in this run" if recovery is None else f"{recovery:.1f} s after Redis returned")
        + f" (target <= {TARGET_RECOVERY_S:g} s): {verdict(result['recovery_ok'])}"
    )
    print(
        f"app calls over the run (warm pass included): {result['app_calls']}; L2 errors per "
        f"worker: {'+'.join(map(str, result['shared_errors_per_worker']))} "
        f"({result['workers_seen']} of {WORKERS} workers read)"
    )
    for sample in result["failure_samples"]:
        print(f"! {sample}")
    if result["trouble"]:
        print(f"! the gunicorn log shows trouble:\n{result['trouble']}")
    print(
        "seconds count requests by when they completed, to the second; recovered: from the "
        "first second after Redis returned that every later second stays at the level."
    )


# -- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="1,2,3,4", help="which parts to run (default 1,2,3,4)")
    parser.add_argument(
        "--body-kb", type=float, default=4.0, help="page size of every part (default 4)"
    )
    parser.add_argument(
        "--large-body-kb",
        type=float,
        default=100.0,
        help="part 1's second page size: the 200 pages overflow an L1 (default 100; 0: skip)",
    )
    parser.add_argument("--clients", type=int, default=8, help="part 1 and 4 clients (default 8)")
    parser.add_argument("--passes", type=int, default=5, help="part 1 passes per client (5)")
    parser.add_argument(
        "--cold-timeout", type=float, default=120.0, help="part 1 bound per run, s (120)"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="part 2 wrk run, s (10)")
    parser.add_argument("--warmup", type=float, default=3.0, help="part 2 wrk warm-up, s (3)")
    parser.add_argument("--rounds", type=int, default=2, help="part 2 rounds (default 2)")
    parser.add_argument("--connections", type=int, default=8, help="part 2 wrk connections (8)")
    parser.add_argument(
        "--rounds-in-process", type=int, default=15, help="part 3 rounds (default 15)"
    )
    parser.add_argument(
        "--fault-seconds", type=float, default=30.0, help="part 4 run, s (default 30)"
    )
    parser.add_argument("--quick", action="store_true", help="short runs: a smoke test")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    options = parser.parse_args(argv)
    if options.quick:
        options.large_body_kb = 0.0 if options.large_body_kb == 100.0 else options.large_body_kb
        options.clients = min(options.clients, 4)
        options.passes = min(options.passes, 2)
        options.seconds, options.warmup = min(options.seconds, 1.0), 0.0
        options.rounds = 1
        options.rounds_in_process = min(options.rounds_in_process, 3)
        options.fault_seconds = min(options.fault_seconds, 6.0)
    try:
        options.parts = sorted({int(part) for part in options.parts.split(",")})
    except ValueError:
        parser.error("--parts is a comma-separated list of 1, 2, 3, 4")
    if not set(options.parts) <= {1, 2, 3, 4}:
        parser.error("--parts is a comma-separated list of 1, 2, 3, 4")
    if min(options.clients, options.passes, options.rounds, options.connections) < 1:
        parser.error("--clients, --passes, --rounds and --connections must be positive")
    if options.body_kb <= 0 or options.seconds <= 0 or options.fault_seconds < 3:
        parser.error("--body-kb and --seconds must be positive, --fault-seconds at least 3")
    return options


def progress(message: str) -> None:
    print(f"[shared.py] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    iterations, work_ms = calibrate(WORK_MS)
    env = {
        "python": platform.python_version(),
        "gunicorn": version("gunicorn"),
        "flask": version("flask"),
        "flask_caching": version("flask-caching"),
        "django": version("django"),
        "redis_py": version("redis"),
        "redis_server": subprocess.run(
            ["redis-server", "--version"], capture_output=True, text=True, timeout=10, check=True
        )
        .stdout.split()[2]
        .removeprefix("v="),
        "cpus": os.cpu_count(),
        "iterations": iterations,
        "work_ms": work_ms,
    }
    results: dict[str, Any] = {"environment": env, "options": vars(options)}
    if not options.json:
        print_environment(env)
    with tempfile.TemporaryDirectory(prefix="shared-bench-") as tmp:
        directory = Path(tmp)
        redis_server = RedisServer(directory)
        redis_server.start()
        try:
            sizes = [options.body_kb] + ([options.large_body_kb] if options.large_body_kb else [])
            if 1 in options.parts:
                runs: list[MemoryRun] = []
                for size in sizes:
                    write_apps(directory, iterations, round(size * 1024))
                    for contender in (OURS_MEMORY, OURS_SHARED):
                        progress(f"part 1: {size:g} KB pages, {contender}")
                        runs.append(cold_run(directory, redis_server, contender, size, options))
                verdicts = [
                    memory_verdicts(*(run for run in runs if run.body_kb == size)) for size in sizes
                ]
                results["memory"] = {"runs": [asdict(run) for run in runs], "verdicts": verdicts}
                if not options.json:
                    print_memory(runs, verdicts, options)
            write_apps(directory, iterations, round(options.body_kb * 1024))
            if 2 in options.parts:
                load_runs: list[LoadRun] = []
                names = list(TARGETS)
                for round_index in range(1, options.rounds + 1):
                    shift = (round_index - 1) % len(names)
                    for contender in names[shift:] + names[:shift]:
                        progress(f"part 2: round {round_index}, {contender}")
                        load_runs.append(
                            load_run(directory, redis_server, contender, round_index, options)
                        )
                summary = load_summary(load_runs)
                results["load"] = {"runs": [asdict(run) for run in load_runs], "summary": summary}
                if not options.json:
                    print()
                    print_load(load_runs, summary, options)
            if 3 in options.parts:
                progress("part 3: in-process hits")
                results["in_process"] = in_process(directory, redis_server, options)
                if not options.json:
                    print()
                    print_in_process(results["in_process"])
            if 4 in options.parts:
                progress(f"part 4: Redis killed and restarted in a {options.fault_seconds:g} s run")
                results["fault"] = fault_run(directory, redis_server, options)
                if not options.json:
                    print()
                    print_fault(results["fault"])
        finally:
            redis_server.stop()
    if options.json:
        json.dump(results, sys.stdout, indent=2)
        print()
    return 0


def print_environment(env: dict[str, Any]) -> None:
    print(
        f"Python {env['python']}, gunicorn {env['gunicorn']}, flask {env['flask']}, "
        f"flask-caching {env['flask_caching']}, django {env['django']}, redis-py "
        f"{env['redis_py']}, redis-server {env['redis_server']}, {env['cpus']} CPU(s); "
        f"route /page/<n>: {env['iterations']} loop iterations = {env['work_ms']:.2f} ms here"
    )
    print()


if __name__ == "__main__":
    sys.exit(main())
