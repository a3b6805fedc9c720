"""A cache hit through a real server: gunicorn's own ceiling for a constant body, and ours.

Two apps are written into a temporary directory: ``bare`` answers a constant 5-byte body with
``Cache-Control: public, max-age=600`` and does nothing else (the most a gunicorn worker can
serve); ``wrapped`` is the same app behind ``MemoryOptimizer`` with its defaults and the
background monitor off, so that every request after the first is a cache hit. Each gets its
own gunicorn on 127.0.0.1 (one ``gthread`` worker with 4 threads, keep-alive), started fresh
and stopped by PID, loaded by ``wrk`` (one thread, 8 connections) in interleaved rounds.

The ratio (wrapped / bare requests per second) is what a hit costs where it is served: the
in-process figures of ``benchmarks/cache.py`` are hidden or not by the server's own work.

    python benchmarks/server_hit.py             # 3 rounds of 5 s per contender
    python benchmarks/server_hit.py --quick     # 1 round of 2 s, a smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from _servers import HOST, child_env, control_socket_args, free_port, stop_process
from leak_pool import parse_wrk

APPS = textwrap.dedent(
    """
    from wsgi_memopt import MemoryOptimizer

    BODY = b"hello"
    HEADERS = [
        ("Content-Type", "text/plain"),
        ("Content-Length", str(len(BODY))),
        ("Cache-Control", "public, max-age=600"),
    ]


    def bare(environ, start_response):
        start_response("200 OK", list(HEADERS))
        return [BODY]


    wrapped = MemoryOptimizer(bare, monitor_interval_s=0)
    """
)
_START_S = 30.0  # a gunicorn that does not answer within this long has failed
_STOP_S = 10.0


@contextlib.contextmanager
def gunicorn(app_dir: Path, app: str) -> Iterator[str]:
    """A gunicorn serving ``apps:<app>``; yields its URL once it answers (from the cache, for
    the wrapped app: checked); stopped by PID when done."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        f"--bind={HOST}:{port}",
        "--workers=1",
        "--worker-class=gthread",
        "--threads=4",
        "--keep-alive=30",
        *control_socket_args(),
        f"--chdir={app_dir}",
        f"apps:{app}",
    ]
    process = subprocess.Popen(
        command, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://{HOST}:{port}/page"
    try:
        deadline = time.monotonic() + _START_S
        while True:
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    response.read()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"gunicorn serving {app} did not start") from None
                time.sleep(0.1)
        with urllib.request.urlopen(url, timeout=5) as response:
            response.read()
            cached = response.headers.get("X-Cache") == "HIT"
        if cached != (app == "wrapped"):
            raise RuntimeError(f"{app}: X-Cache is {response.headers.get('X-Cache')!r}")
        yield url
    finally:
        stop_process(process, _STOP_S)


def requests_per_second(url: str, seconds: float) -> float:
    """What ``wrk`` (one thread, 8 connections) gets from ``url`` in ``seconds``."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    output = subprocess.run(
        [wrk, "-t1", "-c8", f"-d{seconds:g}s", "--latency", url],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    ).stdout
    result = parse_wrk(output)
    if result.failed:
        raise RuntimeError(f"{result.failed} failed requests:\n{output}")
    return result.requests_per_s


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--seconds", type=float, default=5.0, help="per run (default 5)")
    parser.add_argument("--quick", action="store_true", help="1 round of 2 s: a smoke test")
    options = parser.parse_args(argv)
    if options.quick:
        options.rounds, options.seconds = 1, 2.0
    rates: dict[str, list[float]] = {"bare": [], "wrapped": []}
    with tempfile.TemporaryDirectory() as directory:
        app_dir = Path(directory)
        (app_dir / "apps.py").write_text(APPS)
        for _ in range(options.rounds):
            for app, runs in rates.items():
                with gunicorn(app_dir, app) as url:
                    runs.append(requests_per_second(url, options.seconds))
    ratios = [wrapped / bare for bare, wrapped in zip(rates["bare"], rates["wrapped"], strict=True)]
    print(f"gunicorn gthread, 1 worker x 4 threads; wrk -t1 -c8; {options.rounds} rounds")
    print()
    print("contender                          |  req/s (median) | per round")
    print("-----------------------------------+-----------------+----------------")
    for app, label in (("bare", "bare app (gunicorn's ceiling)"), ("wrapped", "cache hit")):
        runs = rates[app]
        spread = f"{min(runs):.0f}..{max(runs):.0f}"
        print(f"{label:34s} | {statistics.median(runs):15.0f} | {spread}")
    print()
    print(
        f"cache hit / ceiling: {statistics.median(ratios):.3f} "
        f"({min(ratios):.3f}..{max(ratios):.3f})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
