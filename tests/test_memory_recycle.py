"""Recycling end to end, with real servers on 127.0.0.1: a worker past
``restart_percent`` is replaced without losing a request, wherever a master can respawn it.

The app under test is written into ``tmp_path`` and served by a subprocess: its body is the
serving process's PID, and its optimizer measures the process source against a 1 MB limit, so
the worker is critical and above ``restart_percent`` from its first request, with no wait
(``restart_after_s=0``, ``min_worker_lifetime_s=0``, ``sample_interval_s=0``).

- under gunicorn (sync and gthread workers) the worker finishes the request, SIGTERMs itself
  and the master boots a fresh one: every request still gets its 200 (no retry), and the PID
  in the bodies changes;
- under uWSGI with ``--master`` the worker sends itself SIGHUP (uWSGI's "gracefully killing
  worker") and the master respawns it, every request answered;
- under werkzeug's development server, waitress, or uWSGI without ``--master``, where no
  master would respawn it, the process keeps serving with one PID and reports
  ``governor.restart_reason`` instead.

Each client request opens its own connection (``Connection: close``), and none is ever
retried: a request that lands while a worker exits must still get its 200.

Also here, regression tests for what these runs found: a gthread worker whose requests
always overlap must still recycle; every worker of a ``--preload`` app draws its own restart
jitter; and a freed burst in a process's first request is trimmed too (at least
95% of it given back; see ``benchmarks/rss_burst.py``).
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import re
import selectors
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pytest
from helpers.needs import require_malloc_trim, require_module, require_peer
from helpers.servers import (
    BOOT_TIMEOUT_S,
    HOST,
    Server,
    child_env,
    fetch,
    free_port,
    gunicorn_command,
    launch,
    stop,
)

LOOP_REQUESTS = 40
LOOP_SECONDS = 30.0
RECYCLE_WARNING = "[MEMORY] recycling this gunicorn worker"
NEEDS_RESTART_WARNING = "[MEMORY] this worker needs a restart nothing here can do"
CANNOT_RECYCLE_NOTICE = "[MEMORY] no gunicorn or uWSGI master respawns this process"

APP_SOURCE = textwrap.dedent(
    """\
    import json
    import logging
    import os
    import sys
    import threading
    import time

    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s [%(process)d] %(name)s %(levelname)s %(message)s",
    )

    from wsgi_memopt import MemoryOptimizer

    chain = threading.Condition()
    chain_started = [0]


    def raw_app(environ, start_response):
        if environ.get("PATH_INFO") == "/chain":
            # Answers only once the next /chain request has started (or after 2 s): when
            # this response is closed, its successor is in flight.
            with chain:
                chain_started[0] += 1
                me = chain_started[0]
                chain.notify_all()
                chain.wait_for(lambda: chain_started[0] > me, timeout=2.0)
            body = str(os.getpid()).encode()
        elif environ.get("PATH_INFO") == "/jitter":
            time.sleep(0.5)  # long enough for a concurrent request to go to another worker
            body = json.dumps(
                {"pid": os.getpid(), "jitter": optimizer.governor._restart_jitter}
            ).encode()
        elif environ.get("PATH_INFO") == "/restart-reason":
            governor = optimizer.governor
            body = json.dumps(
                {
                    "pid": os.getpid(),
                    "restart_reason": governor.restart_reason,
                    "history": [action.kind for action in governor.history],
                    "stats_restart_reason": governor.stats()["restart_reason"],
                }
            ).encode()
        else:
            body = str(os.getpid()).encode()
        start_response(
            "200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
        )
        return [body]


    application = MemoryOptimizer(raw_app, **SETTINGS)
    optimizer = application  # what /restart-reason reads
    """
)

# Servers with no master process: each prints the port it listens on, then serves app.py.
MASTERLESS_SERVER = textwrap.dedent(
    """\
    import sys

    import app

    if sys.argv[1] == "waitress":
        from waitress import create_server

        server = create_server(app.application, host="127.0.0.1", port=0, threads=4)
        print(server.effective_port, flush=True)
        server.run()
    else:
        from werkzeug.serving import make_server

        threaded = sys.argv[1] == "werkzeug-threaded"
        server = make_server("127.0.0.1", 0, app.application, threaded=threaded)
        print(server.server_port, flush=True)
        server.serve_forever()
    """
)


# -- helpers


# The app is critical and above restart_percent from its first request, with no wait.
RECYCLE_NOW = {
    "pressure_source": "process",
    "process_limit_mb": 1,  # any real RSS is thousands of percent of it
    "max_memory_percent": 50,
    "critical_percent": 60,
    "restart_percent": 70,
    "restart_after_s": 0,
    "min_worker_lifetime_s": 0,
    "sample_interval_s": 0,
    "monitor_interval_s": 0,
    "cache_enabled": False,
}


# The tests read the memory API from 127.0.0.1, which the operator must open explicitly.
API_FROM_THE_TEST = {"api_allow_networks": "127.0.0.1/32"}


def write_app(directory: Path, settings: dict[str, object] | None = None) -> None:
    """``app.py`` in ``directory``, its optimizer built with ``settings`` (``RECYCLE_NOW``)."""
    settings = {**(settings or RECYCLE_NOW), **API_FROM_THE_TEST}
    source = APP_SOURCE.replace("**SETTINGS", f"**{settings!r}")
    (directory / "app.py").write_text(source)


@dataclass
class Outcome:
    """What the client saw: one entry per request, in order."""

    statuses: list[int] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def distinct_pids(self) -> list[int]:
        return list(dict.fromkeys(self.pids))

    def per_pid(self) -> str:
        """``pid x requests`` in the order the PIDs were first seen."""
        counts = collections.Counter(self.pids)
        return ", ".join(f"{pid} x{counts[pid]}" for pid in self.distinct_pids)


def concurrent_loops(port: int, clients: int) -> Outcome:
    """``clients`` threads share ``LOOP_REQUESTS``, each one request (one connection) at a
    time, their outcomes merged. Each client (a lone one too) goes on, up to five times its
    share, until it has seen a second worker: a gthread worker that is exiting may still
    answer every request of a fast burst, which proves nothing either way."""
    share = LOOP_REQUESTS // clients

    def client(_: int) -> Outcome:
        return request_loop(
            port,
            until=lambda seen: len(seen.statuses) >= share and len(seen.distinct_pids) >= 2,
            requests=5 * share,
        )

    if clients == 1:
        return client(0)
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        parts = list(pool.map(client, range(clients)))
    merged = Outcome(elapsed_s=time.monotonic() - started)
    for part in parts:
        merged.statuses += part.statuses
        merged.pids += part.pids
        merged.failures += part.failures
    return merged


def request_loop(
    port: int,
    until: Callable[[Outcome], bool] | None = None,
    requests: int = LOOP_REQUESTS,
) -> Outcome:
    """Up to ``requests`` requests or ``LOOP_SECONDS``; every failure is recorded."""
    outcome = Outcome()
    started = time.monotonic()
    for index in range(requests):
        if time.monotonic() - started > LOOP_SECONDS:
            break
        try:
            status, _, body = fetch(port)
            pid = int(body)  # an error page is no pid: a failure too
        except Exception as exc:  # connection errors and HTTP errors alike are failures
            outcome.failures.append(f"request {index}: {type(exc).__name__}: {exc}")
            continue
        outcome.statuses.append(status)
        outcome.pids.append(pid)
        if until is not None and until(outcome):
            break
    outcome.elapsed_s = time.monotonic() - started
    return outcome


# -- gunicorn


class StartGunicorn(Protocol):
    def __call__(
        self,
        worker_class: str,
        *,
        workers: int = 1,
        preload: bool = False,
        settings: dict[str, object] | None = None,
    ) -> Server: ...


@pytest.fixture
def start_gunicorn(tmp_path: Path) -> Iterator[StartGunicorn]:
    require_module("gunicorn")
    started: list[subprocess.Popen[bytes]] = []

    def start(
        worker_class: str,
        *,
        workers: int = 1,
        preload: bool = False,
        settings: dict[str, object] | None = None,
    ) -> Server:
        write_app(tmp_path, settings)
        port = free_port()
        command = gunicorn_command(
            port,
            worker_class,
            "--workers",
            str(workers),
            *(("--preload",) if preload else ()),
            "--chdir",
            str(tmp_path),
            "--log-level",
            "info",
            "app:application",
        )
        # Ready when the master listens and every worker has booted.
        return launch(
            command,
            port,
            tmp_path / "gunicorn.log",
            started,
            lambda log: log.count("Booting worker with pid") >= workers,
            f"gunicorn's {workers} worker(s)",
        )

    yield start
    for proc in started:
        stop(proc)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("worker_class", "clients", "preload"),
    [
        pytest.param("sync", 1, False, id="sync-worker-1-client"),
        pytest.param("sync", 4, False, id="sync-worker-4-clients"),
        pytest.param("sync", 1, True, id="sync-worker-preload-1-client"),
        pytest.param("gthread", 1, False, id="gthread-worker-1-client"),
        pytest.param("gthread", 4, False, id="gthread-worker-4-clients"),
        pytest.param("gthread", 4, True, id="gthread-worker-preload-4-clients"),
    ],
)
def test_gunicorn_worker_recycles_and_every_request_succeeds(
    start_gunicorn: StartGunicorn, worker_class: str, clients: int, preload: bool
) -> None:
    server = start_gunicorn(worker_class, preload=preload)
    outcome = concurrent_loops(server.port, clients)
    log = server.log()
    report = (
        f"{worker_class}, {clients} client(s): {len(outcome.statuses)} answered, "
        f"{len(outcome.failures)} failed in {outcome.elapsed_s:.1f} s; "
        f"pids (requests each): {outcome.per_pid()}\n"
        f"failures: {outcome.failures}\n--- gunicorn log (tail) ---\n{log[-4000:]}"
    )
    print(report)

    assert not outcome.failures, report
    assert outcome.statuses, report
    assert set(outcome.statuses) == {200}, report
    assert len(outcome.distinct_pids) >= 2, report  # the worker recycled, the master respawned

    # The log tells the same story: a seen worker exited, a seen worker was booted after it.
    exited = {int(pid) for pid in re.findall(r"Worker exiting \(pid: (\d+)\)", log)}
    booted = [int(pid) for pid in re.findall(r"Booting worker with pid: (\d+)", log)]
    assert exited & set(outcome.pids), report
    assert len(booted) >= 2, report
    assert set(booted[1:]) & set(outcome.pids), report
    assert RECYCLE_WARNING in log, report
    # A graceful exit: code 0, no signal death, nothing raised.
    assert "exited with code" not in log, report
    assert "Traceback" not in log, report
    assert server.proc.poll() is None, report  # the master itself is still serving


# -- werkzeug's development server and waitress: no master, so no suicide


@pytest.fixture
def start_masterless(
    tmp_path: Path,
) -> Iterator[Callable[[str], tuple[subprocess.Popen[bytes], int]]]:
    write_app(tmp_path)
    (tmp_path / "serve.py").write_text(MASTERLESS_SERVER)
    started: list[subprocess.Popen[bytes]] = []

    def start(server: str) -> tuple[subprocess.Popen[bytes], int]:
        if server == "waitress":
            require_module("waitress")
        log_file = (tmp_path / "server.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "serve.py", server],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=log_file,
            env=child_env(),
        )
        log_file.close()
        started.append(proc)
        assert proc.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ)
            if not selector.select(timeout=BOOT_TIMEOUT_S):
                pytest.fail(f"{server} did not print its port within {BOOT_TIMEOUT_S:g} s")
        line = proc.stdout.readline()
        if not line.strip():
            pytest.fail(f"{server} exited ({proc.wait(5)}) before printing its port")
        return proc, int(line)

    yield start
    for proc in started:
        stop(proc)
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.mark.parametrize("server", ["werkzeug-single", "werkzeug-threaded", "waitress"])
def test_masterless_server_keeps_serving_and_reports_restart_reason(
    start_masterless: Callable[[str], tuple[subprocess.Popen[bytes], int]],
    tmp_path: Path,
    server: str,
) -> None:
    proc, port = start_masterless(server)
    log = assert_serves_on_and_reports_restart(
        port, proc, lambda: (tmp_path / "server.log").read_text(errors="replace"), server
    )
    assert RECYCLE_WARNING not in log


def assert_serves_on_and_reports_restart(
    port: int, proc: subprocess.Popen[bytes], read_log: Callable[[], str], name: str
) -> str:
    """15 requests all answered by ``proc`` itself, which lives on and reports, once, that
    it needs a restart nothing here can do; returns the server's log."""
    outcome = request_loop(port, until=lambda seen: len(seen.statuses) >= 15)
    status, _, body = fetch(port, "/restart-reason")
    log = read_log()
    report = (
        f"{name}: {len(outcome.statuses)} answered, {len(outcome.failures)} failed "
        f"in {outcome.elapsed_s:.1f} s; pids {outcome.distinct_pids}; server pid {proc.pid}\n"
        f"failures: {outcome.failures}\n/restart-reason: {status} {body!r}\n"
        f"--- server log (tail) ---\n{log[-3000:]}"
    )
    print(report)

    assert not outcome.failures, report
    assert len(outcome.statuses) == 15, report
    assert set(outcome.statuses) == {200}, report
    assert outcome.distinct_pids == [proc.pid], report  # one process served them all
    assert proc.poll() is None, report  # and it is still running

    assert status == 200, report
    reported = json.loads(body)
    assert reported["pid"] == proc.pid, report
    reason = reported["restart_reason"]
    assert reason, report
    assert "above 70%" in reason, report
    assert "of process" in reason, report
    assert reported["stats_restart_reason"] == reason, report
    assert reported["history"].count("recycle") == 1, report  # reported once, not per request
    assert log.count(NEEDS_RESTART_WARNING) == 1, report
    # Said at start, and by /health: this server cannot recycle the worker, so it answers 503.
    assert CANNOT_RECYCLE_NOTICE in log, report
    status, _, body = fetch(port, "/api/v1/memory/health")
    assert status == 503, report
    health = json.loads(body)
    assert health["restart_reason"] == reason, report
    assert health["recycle"]["possible"] is False, report
    return log


# -- uWSGI: a worker's SIGHUP is its graceful exit, but only a master respawns it


UWSGI_RECYCLE_WARNING = "[MEMORY] recycling this uwsgi worker"


def uwsgi_binary() -> str:
    """The ``uwsgi`` pip built for this Python (next to it), else one on PATH."""
    beside = Path(sys.executable).with_name("uwsgi")
    return str(beside) if beside.exists() else require_peer("uwsgi")


@pytest.fixture
def start_uwsgi(tmp_path: Path) -> Iterator[Callable[[bool], Server]]:
    binary = uwsgi_binary()
    started: list[subprocess.Popen[bytes]] = []

    def start(master: bool) -> Server:
        write_app(tmp_path)
        port = free_port()
        command = [
            binary,
            *(("--master",) if master else ()),
            "--http-socket",
            f"{HOST}:{port}",
            "--processes",
            "1",
            "--chdir",
            str(tmp_path),
            "--module",
            "app:application",
            "--need-app",
            "--die-on-term",  # SIGTERM stops it (uWSGI 2.0 would reload instead)
            "--reload-mercy",
            "5",
            "--worker-reload-mercy",
            "5",
        ]
        # Listening before it spawns the worker, which logs this once the app is loaded.
        return launch(
            command,
            port,
            tmp_path / "uwsgi.log",
            started,
            lambda log: "spawned uWSGI worker 1" in log,
            "uWSGI's worker",
        )

    yield start
    for proc in started:
        stop(proc)


@pytest.mark.slow
def test_uwsgi_worker_recycles_under_a_master_and_every_request_succeeds(
    start_uwsgi: Callable[[bool], Server],
) -> None:
    server = start_uwsgi(True)
    # uWSGI holds back a worker that dies young ("respawning too fast": 2 s): three
    # workers are enough to see the cycle, and keep the test short.
    outcome = request_loop(server.port, until=lambda seen: len(seen.distinct_pids) >= 3)
    log = server.log()
    report = (
        f"{len(outcome.statuses)} answered, {len(outcome.failures)} failed in "
        f"{outcome.elapsed_s:.1f} s; pids (requests each): {outcome.per_pid()}\n"
        f"failures: {outcome.failures}\n--- uWSGI log (tail) ---\n{log[-4000:]}"
    )
    print(report)

    assert not outcome.failures, report
    assert set(outcome.statuses) == {200}, report
    assert len(outcome.distinct_pids) >= 3, report  # recycled, and respawned each time
    assert UWSGI_RECYCLE_WARNING in log, report
    for pid in outcome.distinct_pids[:2]:
        assert f"Gracefully killing worker 1 (pid: {pid})" in log, report
    assert "Respawned uWSGI worker 1" in log, report
    assert "Traceback" not in log, report
    assert server.proc.poll() is None, report  # the master itself is still serving
    # The memory API names the pool: the master is the server's first process.
    status, _, body = fetch(server.port, "/api/v1/memory/stats")
    assert status == 200, report
    pool = json.loads(body)["workers"]
    assert (pool["server"], pool["master_pid"]) == ("uwsgi", server.proc.pid), report


def test_uwsgi_without_a_master_keeps_serving_and_reports_restart_reason(
    start_uwsgi: Callable[[bool], Server],
) -> None:
    # Before this was found, the worker sent itself SIGHUP here too, and with no master to
    # respawn it the server was gone: every later request was refused.
    server = start_uwsgi(False)
    log = assert_serves_on_and_reports_restart(server.port, server.proc, server.log, "uWSGI")
    assert UWSGI_RECYCLE_WARNING not in log
    assert "Gracefully killing worker" not in log
    status, _, body = fetch(server.port, "/api/v1/memory/stats")
    assert (status, json.loads(body)["workers"]) == (200, None)  # no pool to name


# -- a threaded worker that is never idle


@pytest.mark.slow
def test_gthread_worker_recycles_under_overlapping_requests(start_gunicorn: StartGunicorn) -> None:
    server = start_gunicorn("gthread")
    # Two clients, one /chain request at a time each: every response waits for the next
    # request to start, so whenever a response is closed another request is in flight, for
    # 3 s; then the last one answers after its 2 s wait, and the worker is idle.
    deadline = time.monotonic() + 3.0

    def client(delay: float) -> Outcome:
        time.sleep(delay)
        outcome = Outcome()
        while time.monotonic() < deadline:
            try:
                status, _, body = fetch(server.port, "/chain")
                pid = int(body)  # an error page is no pid: a failure too
            except Exception as exc:
                outcome.failures.append(f"{type(exc).__name__}: {exc}")
                continue
            outcome.statuses.append(status)
            outcome.pids.append(pid)
        return outcome

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        parts = list(pool.map(client, [0.0, 0.1]))
    outcome = Outcome(
        statuses=parts[0].statuses + parts[1].statuses,
        pids=parts[0].pids + parts[1].pids,
        failures=parts[0].failures + parts[1].failures,
    )
    log = server.log()
    report = (
        f"overlapping: {len(outcome.statuses)} answered, {len(outcome.failures)} failed; "
        f"pids (requests each): {outcome.per_pid()}; "
        f"recycle warnings: {log.count(RECYCLE_WARNING)}\nfailures: {outcome.failures}\n"
        + "\n".join(line for line in log.splitlines() if "[GC]" not in line)[-3000:]
    )
    print(report)
    assert not outcome.failures, report
    assert set(outcome.statuses) == {200}, report
    assert len(outcome.distinct_pids) >= 2, report


# -- per-worker jitter: workers forked from one master do not all recycle at once

LOW_PRESSURE = {
    "pressure_source": "process",
    "process_limit_mb": 100_000,  # never above any threshold: nothing recycles here
    "restart_after_s": 300,  # the default: the jitter is drawn in [0, 30) s
    "monitor_interval_s": 0,
    "cache_enabled": False,
}


@pytest.mark.parametrize(
    "preload",
    [
        pytest.param(False, id="app-loaded-per-worker"),
        # Regression: before 30b88d4 a preloaded app's workers all shared the master's draw.
        pytest.param(True, id="preload"),
    ],
)
def test_gunicorn_workers_draw_their_own_restart_jitter(
    start_gunicorn: StartGunicorn, preload: bool
) -> None:
    server = start_gunicorn("sync", workers=2, preload=preload, settings=LOW_PRESSURE)
    # Two sync workers, two concurrent requests that each keep a worker busy for 0.5 s: one
    # request per worker.
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda _: fetch(server.port, "/jitter"), range(2)))
    assert [answer.status for answer in answers] == [200, 200]
    seen = [json.loads(answer.body) for answer in answers]
    print(f"preload={preload}: {seen}")
    assert seen[0]["pid"] != seen[1]["pid"], seen
    assert seen[0]["jitter"] != seen[1]["jitter"], seen


# -- found while measuring a freed burst's RSS (benchmarks/rss_burst.py)

BURST_SCRIPT = textwrap.dedent(
    """\
    import json
    import sys
    from wsgiref.util import setup_testing_defaults

    import psutil

    from wsgi_memopt import MemoryOptimizer

    process = psutil.Process()
    kept, peak = [], []


    def rss_mb():
        return process.memory_info().rss / 2**20


    def app(environ, start_response):
        if environ["PATH_INFO"] == "/burst":
            burst = [bytes(1024) for _ in range(100_000)]  # ~100 MB of glibc malloc
            kept.extend(bytes(600) for _ in range(500))  # on top of it: pins the heap's top
            peak.append(rss_mb())
            del burst
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]


    optimizer = MemoryOptimizer(
        app,
        trim_threshold_mb=32,
        sample_interval_s=0,
        monitor_interval_s=0,
        pressure_source="process",
        process_limit_mb=100_000,  # no pressure: only the trim threshold can act
    )


    def serve(path):
        environ = {"PATH_INFO": path}
        setup_testing_defaults(environ)
        result = optimizer(environ, lambda status, headers, exc_info=None: None)
        for _ in result:
            pass
        result.close()


    if sys.argv[1] == "warm":
        serve("/warm-up")
    before = rss_mb()
    serve("/burst")
    after = rss_mb()
    print(
        json.dumps(
            {
                "grown": peak[0] - before,
                "held": after - before,
                "actions": [action.kind for action in optimizer.governor.history],
            }
        )
    )
    """
)


@pytest.mark.parametrize(
    "scenario",
    [
        pytest.param("warm", id="after-a-warm-up-request"),
        # Regression: before 30b88d4 the trim baseline was the first sample, taken after the
        # first request had run, so this burst was never trimmed.
        pytest.param("cold", id="burst-is-the-first-request"),
    ],
)
def test_freed_burst_is_given_back_before_the_next_request(tmp_path: Path, scenario: str) -> None:
    require_malloc_trim()
    script = tmp_path / "burst.py"
    script.write_text(BURST_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), scenario],
        capture_output=True,
        text=True,
        timeout=120,
        env=child_env(),
        check=True,
    )
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"{scenario}: {measured}")
    assert measured["grown"] > 64, measured  # the burst did reach the RSS
    assert measured["held"] <= 0.05 * measured["grown"], measured  # at least 95% given back
