"""The governor's per-request bookkeeping, amortized, against a trivial Flask route (SPEC §11).

Every request through the middleware is counted in and out (the in-flight count the governor's
pauses wait on), its response is wrapped so the server's ``close()`` reaches the governor, the
clock is read to see whether a sample is due, and in ``gc_mode=between`` the collector is
switched off for the request and on after it. Samples themselves (every ``sample_interval_s``)
are amortized over the requests between them. The cache is off here: what is left is the
housekeeping alone.

    python benchmarks/housekeeping.py [--rounds 15] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask
from werkzeug.test import EnvironBuilder

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _timing import Prepare, WSGIApp, interleaved, repeated

from wsgi_memopt import MemoryOptimizer

TARGET_PERCENT = 1.0  # SPEC §11: housekeeping <= 1% of a trivial Flask request


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--seconds", type=float, default=0.05, help="per contender per round")
    parser.add_argument("--json", action="store_true")
    options = parser.parse_args(argv)

    # Measured twice: around a bare WSGI function, where its cost stands out of the noise,
    # and around the Flask route, the reference the target is a share of.
    rows: list[dict[str, Any]] = []
    for label, bare in (("bare WSGI function", constant_app), ("trivial Flask route", flask_app())):
        contenders = {
            "bare": prepare_for(bare),
            # Samples every 0.5 s (the default), no background thread: per-request work only.
            "gc_mode=auto": prepare_for(
                MemoryOptimizer(bare, cache_enabled=False, gc_mode="auto", monitor_interval_s=0)
            ),
            "gc_mode=between": prepare_for(
                MemoryOptimizer(
                    bare,
                    cache_enabled=False,
                    gc_mode="between",
                    gc_freeze=False,
                    monitor_interval_s=0,
                )
            ),
        }
        # The GC stays on for all alike: "between" mode's whole point is to move its work.
        samples = interleaved(
            contenders, rounds=options.rounds, seconds=options.seconds, gc_off=False
        )
        base = samples["bare"]
        for name in ("gc_mode=auto", "gc_mode=between"):
            extra = [ours - bare_us for ours, bare_us in zip(samples[name], base, strict=True)]
            rows.append(
                {
                    "around": label,
                    "contender": name,
                    "us_per_request": statistics.median(samples[name]),
                    "bare_us_per_request": statistics.median(base),
                    "extra_us": statistics.median(extra),
                }
            )
    flask_us = rows[-1]["bare_us_per_request"]
    for row in rows:
        row["extra_percent_of_flask"] = 100 * row["extra_us"] / flask_us
        row["target_percent"] = TARGET_PERCENT
    if options.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"Python {sys.version.split()[0]}; {options.rounds} interleaved rounds, GC on for all")
    print(
        f"{'around':20} | {'contender':16} | {'µs/request':>10} | {'bare µs':>8} | "
        f"{'extra µs':>8} | {'% of Flask':>10} | target"
    )
    for row in rows:
        verdict = "meets" if row["extra_percent_of_flask"] <= TARGET_PERCENT else "misses"
        print(
            f"{row['around']:20} | {row['contender']:16} | {row['us_per_request']:10.2f} | "
            f"{row['bare_us_per_request']:8.2f} | {row['extra_us']:8.2f} | "
            f"{row['extra_percent_of_flask']:9.2f}% | <= {TARGET_PERCENT:g}% {verdict}"
        )
    print(
        "extra: median over rounds of (wrapped - bare) within each round, cache off; "
        f"% of Flask: extra over the trivial Flask route's {flask_us:.1f} µs"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
