"""A real server on loopback: gunicorn, a Flask route doing ~5 ms of work, repeated URLs.

A Flask app is written into a temporary directory: ``/work/<n>`` burns ~5 ms of CPU in a
bounded loop (calibrated here, in this process, before any server starts; not a sleep) and
answers a small body with ``Cache-Control: public, max-age=60``. One module serves it
unwrapped (``plain = app.wsgi_app``), another through the middleware with its defaults, the
background monitor off and the memory API opened to this script's loopback address
(``MemoryOptimizer(app.wsgi_app, monitor_interval_s=0, api_allow_networks="127.0.0.1/32")``).

Each contender gets its own gunicorn on 127.0.0.1 (a free port; ``--workers 2 --worker-class
gthread --threads 4``; ``--no-control-socket`` where this gunicorn has one), started fresh,
waited for until every worker booted and it answers, warmed up, then loaded from this process:
``--clients`` threads, each with one keep-alive ``http.client.HTTPConnection``, cycling over
``--paths`` distinct ``/work/<i>`` URLs for ``--seconds`` (and at most ``--max-requests`` in
all). Every response is read to its end; non-200s and connection errors are counted, never
retried. The contenders run interleaved (plain, wrapped, plain, wrapped, ...), each gunicorn
is stopped by PID (SIGTERM, SIGKILL after a bound) before the next starts, and none survives
the script. Before a wrapped server stops, its workers' cache counters are read from
``GET /api/v1/memory/stats`` (from 127.0.0.1, no forwarding headers: let in by that setting).

The load generator shares the machine with the server: on a small box it takes a share of the
CPU the server could have used, which caps the wrapped server's figure more than the plain
one's (whose workers are busy burning their 5 ms). The ratio is therefore a lower bound.

    python benchmarks/gunicorn_throughput.py            # 2 rounds of 10 s per contender
    python benchmarks/gunicorn_throughput.py --quick    # 2 rounds of 2 s, a smoke test
    python benchmarks/gunicorn_throughput.py --json     # the same figures as JSON
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import psutil
from _servers import HOST, child_env, control_socket_args, free_port, stop_process

from wsgi_memopt.settings import DEFAULT_API_PREFIX

TARGET_RATIO = 5.0  # the guard-rail: throughput >= 5x the unwrapped app
TARGET_ERRORS = 0  # the guard-rail: no errors
WORK_MS = 5.0
BOOT_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
REQUEST_TIMEOUT_S = 10.0
STATS_PATH = DEFAULT_API_PREFIX + "/stats"
WORKERS = 2
THREADS = 4

COMMON_SOURCE = textwrap.dedent(
    """\
    from flask import Flask

    ITERATIONS = {iterations}

    app = Flask("gunicorn_throughput")


    def burn(n):
        x = 0
        for i in range(ITERATIONS):
            x = (x + i * n) % 1000003
        return x


    @app.route("/work/<int:n>")
    def work(n):
        result = burn(n)
        return (
            f"work {{n}}: {{result}}\\n",
            200,
            {{"Content-Type": "text/plain", "Cache-Control": "public, max-age=60"}},
        )
    """
)
PLAIN_SOURCE = "from common import app\n\nplain = app.wsgi_app\n"
WRAPPED_SOURCE = textwrap.dedent(
    """\
    from common import app

    from wsgi_memopt import MemoryOptimizer

    wrapped = MemoryOptimizer(app.wsgi_app, monitor_interval_s=0, api_allow_networks="127.0.0.1/32")
    """
)
CONTENDERS = {"plain": "plain_app:plain", "wrapped": "wrapped_app:wrapped"}


# -- the ~5 ms of work


def _burn(iterations: int, n: int = 7) -> int:
    """The route's loop, the same bytecode as in ``COMMON_SOURCE``."""
    x = 0
    for i in range(iterations):
        x = (x + i * n) % 1000003
    return x


def calibrate(target_ms: float = WORK_MS) -> tuple[int, float]:
    """Iterations of the route's loop that take ``target_ms`` here, and what they measured."""
    probe = 50_000
    times = []
    for _ in range(7):
        start = time.perf_counter()
        _burn(probe)
        times.append(time.perf_counter() - start)
    iterations = max(1, round(probe * target_ms / 1000 / statistics.median(times)))
    checks = []
    for _ in range(9):
        start = time.perf_counter()
        _burn(iterations)
        checks.append(time.perf_counter() - start)
    return iterations, 1000 * statistics.median(checks)


# -- gunicorn


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    children: set[int] = field(default_factory=set)  # worker PIDs seen, for the final check

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def note_children(self) -> None:
        with contextlib.suppress(psutil.Error):
            self.children |= {c.pid for c in psutil.Process(self.proc.pid).children(True)}


def start_server(
    directory: Path,
    target: str,
    label: str,
    extra: tuple[str, ...],
    *,
    workers: int = WORKERS,
    env: dict[str, str] | None = None,
) -> Server:
    """gunicorn serving ``target`` from ``directory`` with ``workers`` gthread workers of
    ``THREADS`` threads, in its own session, logging to a file; ``env`` added to the child's."""
    port = free_port()
    log_path = directory / f"gunicorn-{label}-{port}.log"
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        f"{HOST}:{port}",
        "--workers",
        str(workers),
        "--worker-class",
        "gthread",
        "--threads",
        str(THREADS),
        "--graceful-timeout",
        "5",
        "--chdir",
        str(directory),
        "--log-level",
        "info",
        "--error-logfile",
        "-",
        *extra,
        target,
    ]
    with log_path.open("wb") as log_file:
        # Its own session: were the master ever SIGKILLed, its workers can be found by PID.
        proc = subprocess.Popen(
            command,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**child_env(), **(env or {})},
            start_new_session=True,
        )
    return Server(proc, port, log_path)


def wait_ready(server: Server, workers: int = WORKERS) -> None:
    """Until every one of ``workers`` has booted and the server answers an HTTP request."""
    deadline = time.monotonic() + BOOT_TIMEOUT_S
    while True:
        if server.proc.poll() is not None:
            raise RuntimeError(
                f"gunicorn exited ({server.proc.returncode}) while booting:\n{server.log()[-3000:]}"
            )
        if time.monotonic() > deadline:
            raise RuntimeError(f"gunicorn not ready after {BOOT_TIMEOUT_S:g} s")
        if server.log().count("Booting worker with pid") >= workers:
            try:
                connection = http.client.HTTPConnection(HOST, server.port, timeout=2)
                try:
                    connection.request("GET", "/ready")  # a 404, outside the measured paths
                    connection.getresponse().read()
                    server.note_children()
                    return
                finally:
                    connection.close()
            except OSError:
                pass
        time.sleep(0.05)


def stop_server(server: Server) -> None:
    """SIGTERM to the master by PID, SIGKILL after a bound; then no worker may be left."""
    server.note_children()
    stop_process(server.proc, STOP_TIMEOUT_S)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for pid in server.children:
        with contextlib.suppress(psutil.Error):
            child = psutil.Process(pid)
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except psutil.TimeoutExpired:
                print(
                    f"warning: gunicorn worker {pid} outlived its master; killed", file=sys.stderr
                )
                os.kill(pid, signal.SIGKILL)


# -- the load


@dataclass
class Load:
    ok: int = 0
    non_200: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    error_samples: list[str] = field(default_factory=list)

    @property
    def answered(self) -> int:
        return self.ok + self.non_200

    def merge(self, other: Load) -> None:
        self.ok += other.ok
        self.non_200 += other.non_200
        self.errors += other.errors
        self.latencies_ms += other.latencies_ms
        self.error_samples += other.error_samples[: max(0, 5 - len(self.error_samples))]


def client(port: int, offset: int, paths: int, deadline: float, cap: int) -> Load:
    """One keep-alive connection, one request at a time, until ``deadline`` or ``cap``."""
    load = Load()
    connection: http.client.HTTPConnection | None = None
    perf = time.perf_counter
    try:
        for index in range(cap):
            if perf() >= deadline:
                break
            path = f"/work/{(offset + index) % paths}"
            if connection is None:
                connection = http.client.HTTPConnection(HOST, port, timeout=REQUEST_TIMEOUT_S)
            started = perf()
            try:
                connection.request("GET", path)
                response = connection.getresponse()
                response.read()
            except (OSError, http.client.HTTPException) as exc:
                load.errors += 1
                if len(load.error_samples) < 5:
                    load.error_samples.append(f"{path}: {type(exc).__name__}: {exc}")
                connection.close()
                connection = None
                continue
            load.latencies_ms.append(1000 * (perf() - started))
            if response.status == 200:
                load.ok += 1
            else:
                load.non_200 += 1
                if len(load.error_samples) < 5:
                    load.error_samples.append(f"{path}: HTTP {response.status}")
            if response.will_close:
                connection.close()
                connection = None
    finally:
        if connection is not None:
            connection.close()
    return load


def connections_per_worker(server: Server) -> list[int]:
    """ESTABLISHED connections each worker holds on the server's port, most first."""
    counts = []
    for pid in sorted(server.children):
        try:
            worker = psutil.Process(pid)
            listing = getattr(worker, "net_connections", None) or worker.connections
            counts.append(
                sum(
                    1
                    for c in listing(kind="tcp")
                    if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr[1] == server.port
                )
            )
        except psutil.Error:
            continue
    return sorted(counts, reverse=True)


def run_load(
    server: Server, clients: int, paths: int, seconds: float, max_requests: int
) -> tuple[Load, list[int]]:
    """The load, and how its connections were split over the workers (sampled mid-run)."""
    port = server.port
    cap = max(1, max_requests // clients)
    results: list[Load | None] = [None] * clients
    start_gate = threading.Barrier(clients + 1)

    def body(k: int) -> None:
        start_gate.wait()
        # Offsets spread the clients over the paths; each still cycles through all of them.
        results[k] = client(port, k * paths // clients, paths, deadline, cap)

    threads = [threading.Thread(target=body, args=(k,), daemon=True) for k in range(clients)]
    for thread in threads:
        thread.start()
    deadline = time.perf_counter() + seconds
    start_gate.wait()
    started = time.perf_counter()
    time.sleep(seconds / 2)
    split = connections_per_worker(server)
    for thread in threads:
        thread.join()
    total = Load(seconds=time.perf_counter() - started)
    for result in results:
        assert result is not None
        total.merge(result)
    return total, split


def read_stats(port: int) -> dict[str, Any]:
    """``GET /stats`` on a connection of its own: the body of whichever worker answered."""
    connection = http.client.HTTPConnection(HOST, port, timeout=REQUEST_TIMEOUT_S)
    try:
        connection.request("GET", STATS_PATH)
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    if response.status != 200:
        raise RuntimeError(f"{STATS_PATH}: HTTP {response.status}: {body[:300]!r}")
    return dict(json.loads(body))


def read_cache_stats(port: int, attempts: int = 64) -> list[dict[str, Any]]:
    """The cache counters of every worker that answered one of ``attempts`` fresh connections.

    Each worker has its own cache; with the load stopped its counters stand still (the API's
    own requests are not lookups), so distinct counters are distinct workers.
    """
    seen: dict[tuple[int, int, int], dict[str, Any]] = {}
    for _ in range(attempts):
        cache = read_stats(port)["cache"]
        seen[(cache["hits"], cache["misses"], cache["stores"])] = cache
        if len(seen) >= WORKERS:
            break
        time.sleep(0.01)  # which idle worker accepts a connection is up to the kernel
    return list(seen.values())


# -- one run of one contender


@dataclass
class Run:
    contender: str
    round: int
    requests: int
    ok: int
    non_200: int
    errors: int
    seconds: float
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    error_samples: list[str]
    connections_per_worker: list[int]
    sent_to_wrapped: int = 0  # warm-up and measured requests, and the readiness probe
    cache: list[dict[str, Any]] | None = None


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(
    directory: Path,
    contender: str,
    round_index: int,
    options: argparse.Namespace,
    extra: tuple[str, ...],
    started: list[Server],
) -> Run:
    server = start_server(directory, CONTENDERS[contender], f"{contender}{round_index}", extra)
    started.append(server)
    try:
        wait_ready(server)
        warm, _ = run_load(
            server, options.clients, options.paths, options.warmup, options.max_requests
        )
        if warm.errors:
            print(
                f"note: {warm.errors} connection errors while warming {contender}", file=sys.stderr
            )
        load, split = run_load(
            server, options.clients, options.paths, options.seconds, options.max_requests
        )
        server.note_children()
        cache = read_cache_stats(server.port) if contender == "wrapped" else None
        log = server.log()
        if "Traceback" in log or "WORKER TIMEOUT" in log:
            load.error_samples.append(f"the {contender} gunicorn log shows trouble:\n{log[-2000:]}")
    finally:
        stop_server(server)
    return Run(
        contender=contender,
        round=round_index,
        requests=load.answered + load.errors,
        ok=load.ok,
        non_200=load.non_200,
        errors=load.errors,
        seconds=load.seconds,
        requests_per_s=load.answered / load.seconds if load.seconds else 0.0,
        p50_ms=percentile(load.latencies_ms, 0.50),
        p99_ms=percentile(load.latencies_ms, 0.99),
        error_samples=load.error_samples,
        connections_per_worker=split,
        sent_to_wrapped=1 + warm.answered + load.answered if contender == "wrapped" else 0,
        cache=cache,
    )


# -- the report


def summarize(runs: list[Run]) -> dict[str, Any]:
    totals: dict[str, dict[str, float]] = {}
    for name in CONTENDERS:
        mine = [run for run in runs if run.contender == name]
        answered = sum(run.ok + run.non_200 for run in mine)
        seconds = sum(run.seconds for run in mine)
        requests = sum(run.requests for run in mine)
        failed = sum(run.non_200 + run.errors for run in mine)
        totals[name] = {
            "requests_per_s": answered / seconds if seconds else 0.0,
            "requests": requests,
            "non_200": sum(run.non_200 for run in mine),
            "errors": sum(run.errors for run in mine),
            "error_rate": failed / requests if requests else 0.0,
        }
    by_round: dict[int, dict[str, Run]] = {}
    for run in runs:
        by_round.setdefault(run.round, {})[run.contender] = run
    round_ratios = [
        pair["wrapped"].requests_per_s / pair["plain"].requests_per_s
        for pair in by_round.values()
        if len(pair) == 2 and pair["plain"].requests_per_s
    ]
    plain_rps = totals["plain"]["requests_per_s"]
    ratio = totals["wrapped"]["requests_per_s"] / plain_rps if plain_rps else 0.0
    failures = sum(totals[name]["non_200"] + totals[name]["errors"] for name in CONTENDERS)
    return {
        "totals": totals,
        "ratio": ratio,
        "round_ratios": round_ratios,
        "target_ratio": TARGET_RATIO,
        "failures": failures,
        "meets": ratio >= TARGET_RATIO and failures == TARGET_ERRORS,
    }


def print_report(env: dict[str, Any], runs: list[Run], summary: dict[str, Any]) -> None:
    print(
        f"Python {env['python']}, gunicorn {env['gunicorn']}, flask {env['flask']}, "
        f"{env['cpus']} CPU(s); gunicorn on {HOST}: {WORKERS} gthread workers x {THREADS} threads"
        f"{' --no-control-socket' if env['no_control_socket'] else ''}"
    )
    print(
        f"route /work/<n>: {env['iterations']} loop iterations = {env['work_ms']:.2f} ms here; "
        f"{env['clients']} keep-alive clients over {env['paths']} paths, {env['seconds']:g} s "
        f"per run after {env['warmup']:g} s of warm-up, at most {env['max_requests']} requests"
    )
    print()
    print(
        f"{'round':>5} | {'contender':9} | {'requests':>8} | {'req/s':>8} | {'p50 ms':>7} | "
        f"{'p99 ms':>7} | {'non-200':>7} | {'conn err':>8} | conns/worker"
    )
    for run in runs:
        print(
            f"{run.round:>5} | {run.contender:9} | {run.requests:8d} | {run.requests_per_s:8.1f} | "
            f"{run.p50_ms:7.2f} | {run.p99_ms:7.2f} | {run.non_200:7d} | {run.errors:8d} | "
            f"{'+'.join(map(str, run.connections_per_worker)) or '?'}"
        )
    print()
    totals = summary["totals"]
    ratios = ", ".join(f"{r:.2f}x" for r in summary["round_ratios"])
    verdict = "meets" if summary["meets"] else "misses"
    print(f"{'measure':34} | {'plain':>9} | {'wrapped':>9} | {'ratio':>7} | target")
    print(
        f"{'throughput, req/s (all rounds)':34} | {totals['plain']['requests_per_s']:9.1f} | "
        f"{totals['wrapped']['requests_per_s']:9.1f} | {summary['ratio']:6.2f}x | "
        f">= {TARGET_RATIO:g}x, error rate 0: {verdict}"
    )
    print(
        f"{'errors (non-200 + connection)':34} | "
        f"{totals['plain']['non_200'] + totals['plain']['errors']:9d} | "
        f"{totals['wrapped']['non_200'] + totals['wrapped']['errors']:9d} | {'':>7} | 0"
    )
    print(f"per-round ratio wrapped/plain: {ratios}")
    for run in runs:
        if run.cache is None:
            continue
        workers = "; ".join(
            f"hits {c['hits']}, misses {c['misses']}, stores {c['stores']}, "
            f"hit rate {c['hit_rate']:.2%}"
            for c in run.cache
        )
        hits = sum(c["hits"] for c in run.cache)
        lookups = hits + sum(c["misses"] for c in run.cache)
        overall = f"{hits / lookups:.2%}" if lookups else "n/a"
        print(
            f"wrapped round {run.round}, {STATS_PATH} from {len(run.cache)} of {WORKERS} "
            f"worker(s), warm-up included: hit rate {overall}, {lookups} lookups of "
            f"{run.sent_to_wrapped} requests sent [{workers}]"
        )
    for run in runs:
        for sample in run.error_samples:
            print(f"! {run.contender} round {run.round}: {sample}")
    print(
        "req/s: answered requests over the wall time of the run; ratio: all wrapped rounds "
        "over all plain rounds. The client runs on the same CPUs as the server: a lower bound.\n"
        "conns/worker: the clients' keep-alive connections each worker held mid-run; the kernel "
        "decides which worker accepts, and a worker holding them all serves alone (one GIL)."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per run (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="per run, unmeasured (2)")
    parser.add_argument("--rounds", type=int, default=2, help="plain+wrapped pairs (default 2)")
    parser.add_argument("--clients", type=int, default=8, help="client threads (default 8)")
    parser.add_argument("--paths", type=int, default=20, help="distinct URLs (default 20)")
    parser.add_argument(
        "--max-requests", type=int, default=500_000, help="cap per run (default 500000)"
    )
    parser.add_argument("--quick", action="store_true", help="2 rounds of 2 s: a smoke test")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    options = parser.parse_args(argv)
    if options.quick:
        options.seconds, options.warmup = min(options.seconds, 2.0), min(options.warmup, 0.5)
    if options.rounds < 1 or options.clients < 1 or options.paths < 1 or options.seconds <= 0:
        parser.error("--rounds, --clients, --paths and --seconds must be positive")

    iterations, work_ms = calibrate()
    extra = control_socket_args()
    env = {
        "python": platform.python_version(),
        "gunicorn": version("gunicorn"),
        "flask": version("flask"),
        "cpus": os.cpu_count(),
        "no_control_socket": bool(extra),
        "iterations": iterations,
        "work_ms": work_ms,
        "clients": options.clients,
        "paths": options.paths,
        "seconds": options.seconds,
        "warmup": options.warmup,
        "max_requests": options.max_requests,
    }
    runs: list[Run] = []
    started: list[Server] = []
    with tempfile.TemporaryDirectory(prefix="gunicorn_throughput-") as tmp:
        directory = Path(tmp)
        (directory / "common.py").write_text(COMMON_SOURCE.format(iterations=iterations))
        (directory / "plain_app.py").write_text(PLAIN_SOURCE)
        (directory / "wrapped_app.py").write_text(WRAPPED_SOURCE)
        try:
            for round_index in range(1, options.rounds + 1):
                for contender in CONTENDERS:
                    runs.append(measure(directory, contender, round_index, options, extra, started))
        finally:
            for server in started:  # already stopped unless something raised mid-run
                stop_server(server)
    summary = summarize(runs)
    if options.json:
        json.dump(
            {"environment": env, "runs": [asdict(run) for run in runs], "summary": summary},
            sys.stdout,
            indent=2,
        )
        print()
    else:
        print_report(env, runs, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
