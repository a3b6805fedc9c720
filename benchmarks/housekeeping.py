"""The governor's housekeeping, amortized per request, against a trivial Flask route.

The governor's cost rule: per request only counters and a monotonic clock; a real sample at
most every ``sample_interval_s``; housekeeping, amortized, under 1% of a trivial Flask request.
Measured here, side by side in one run:

1. the governor's per-request part, the two hooks the middleware calls around every request
   (``request_started``: the in-flight count; ``request_finished``: the count, the check
   whether a young collection is due between requests, the clock read that says whether a
   sample is due), timed as one pair per request with no sample due;
2. a due tick (a real sample of memory and the decision on it, nothing to act on), timed on
   its own, then spread over the requests a server answers in one ``sample_interval_s`` at
   the trivial Flask route's pace (the busier the server, the smaller its share; at one
   request per interval every request pays for one, shown as the worst case);
3. for the record, the whole middleware around a bare WSGI function with the cache off: the
   hooks plus the response wrapper whose ``close()`` calls them and the API prefix check.
   That part is the middleware's, not housekeeping: the pass-through rows of
   ``benchmarks/cache.py`` bound it against the unwrapped route.

    python benchmarks/housekeeping.py [--rounds 15] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask
from werkzeug.test import EnvironBuilder

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _timing import Prepare, WSGIApp, interleaved, repeated

from wsgi_memopt import MemoryOptimizer
from wsgi_memopt.memory.governor import Governor

TARGET_PERCENT = 1.0  # the guard-rail: housekeeping <= 1% of a trivial Flask request
TICKS = 200  # due ticks timed for their median


def flask_app() -> Callable[..., Iterable[bytes]]:
    app = Flask("housekeeping")

    @app.route("/")
    def hello() -> str:
        return "hello"

    return app.wsgi_app


def constant_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    return [b"hello"]


def prepare_for(app: WSGIApp) -> Prepare:
    """The contender: ``app`` called like a server would, a fresh copy of the environ each time."""
    return repeated(app, EnvironBuilder("/").get_environ(), copy=True)


def optimizer(gc_mode: str, app: WSGIApp = constant_app) -> MemoryOptimizer:
    # No background thread, the cache off: the governor's work alone.
    return MemoryOptimizer(
        app, cache_enabled=False, gc_mode=gc_mode, gc_freeze=False, monitor_interval_s=0
    )


def started_governor(gc_mode: str) -> Governor:
    """A governor started in this process, as by the first request."""
    governor = optimizer(gc_mode).governor
    governor.request_started()
    governor.request_finished()
    return governor


def hooks(gc_mode: str) -> Prepare:
    """``n`` requests' worth of the governor's hooks, no sample due (ticks are timed apart)."""
    governor = started_governor(gc_mode)
    started, finished = governor.request_started, governor.request_finished

    def prepare(n: int) -> Callable[[], None]:
        governor.next_tick = time.monotonic() + 3600.0

        def run() -> None:
            for _ in range(n):
                started()
                finished()

        return run

    return prepare


def tick_us(gc_mode: str) -> float:
    """Median µs of a due tick: a memory sample and the decision on it."""
    governor = started_governor(gc_mode)
    durations = []
    for _ in range(TICKS):
        governor.next_tick = 0.0
        start = time.perf_counter_ns()
        governor.tick()
        durations.append((time.perf_counter_ns() - start) / 1000)
    return statistics.median(durations)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--seconds", type=float, default=0.05, help="per contender per round")
    parser.add_argument("--json", action="store_true")
    options = parser.parse_args(argv)

    contenders = {
        "flask": prepare_for(flask_app()),
        "bare": prepare_for(constant_app),
        "hooks, gc_mode=auto": hooks("auto"),
        "hooks, gc_mode=between": hooks("between"),
        "middleware, gc_mode=auto": prepare_for(optimizer("auto")),
        "middleware, gc_mode=between": prepare_for(optimizer("between")),
    }
    # The GC stays on for all alike: "between" mode's whole point is to move its work.
    samples = interleaved(contenders, rounds=options.rounds, seconds=options.seconds, gc_off=False)
    flask_us = statistics.median(samples["flask"])
    interval_s = MemoryOptimizer(constant_app, monitor_interval_s=0).settings.sample_interval_s
    requests_per_tick = interval_s * 1e6 / flask_us  # at the trivial route's pace
    rows: list[dict[str, Any]] = []
    for mode in ("auto", "between"):
        hook_us = statistics.median(samples[f"hooks, gc_mode={mode}"])
        tick = tick_us(mode)
        amortized = hook_us + tick / requests_per_tick
        wrapper = [
            ours - bare
            for ours, bare in zip(
                samples[f"middleware, gc_mode={mode}"], samples["bare"], strict=True
            )
        ]
        rows.append(
            {
                "gc_mode": mode,
                "hooks_us": hook_us,
                "tick_us": tick,
                "requests_per_tick": requests_per_tick,
                "amortized_us": amortized,
                "amortized_percent_of_flask": 100 * amortized / flask_us,
                "worst_case_us": hook_us + tick,
                "middleware_cache_off_us": statistics.median(wrapper),
                "middleware_cache_off_percent_of_flask": 100
                * statistics.median(wrapper)
                / flask_us,
                "flask_us": flask_us,
                "target_percent": TARGET_PERCENT,
            }
        )
    if options.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(
        f"Python {sys.version.split()[0]}; {options.rounds} interleaved rounds, GC on for all; "
        f"trivial Flask route {flask_us:.1f} µs; a sample every {interval_s:g} s = one per "
        f"{requests_per_tick:,.0f} such requests"
    )
    print(
        f"{'gc_mode':8} | {'hooks µs':>8} | {'tick µs':>8} | {'amortized µs':>12} | "
        f"{'% of Flask':>10} | {'target':>7} | verdict | {'worst case µs':>13} | "
        f"middleware, cache off"
    )
    for row in rows:
        verdict = "meets" if row["amortized_percent_of_flask"] <= TARGET_PERCENT else "misses"
        print(
            f"{row['gc_mode']:8} | {row['hooks_us']:8.3f} | {row['tick_us']:8.1f} | "
            f"{row['amortized_us']:12.3f} | {row['amortized_percent_of_flask']:9.2f}% | "
            f"{'<= ' + format(TARGET_PERCENT, 'g') + '%':>7} | {verdict:7} | "
            f"{row['worst_case_us']:13.1f} | {row['middleware_cache_off_us']:.2f} µs "
            f"({row['middleware_cache_off_percent_of_flask']:.1f}%)"
        )
    print(
        "hooks: the governor's request_started + request_finished, per request, no sample due; "
        "tick: a due sample and its decision; amortized: hooks + tick / requests per tick; "
        "worst case: a tick every request (one request per interval); middleware, cache off: "
        "the whole wrapper around a bare WSGI function (hooks + response object + API check), "
        "median of (wrapped - bare) within each round, bounded by cache.py's pass-through rows"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
