"""RSS after a 300 MB burst of glibc-heap allocations that the app frees.

Target: >= 95% of the burst back before the next request.

Every measurement runs in a fresh subprocess (a heap nobody else has touched), served the way
a server does it, in-process: ``app(environ, start_response)``, the body iterated, ``close()``.
The app of the burst request allocates ~300 MB as 300,000 separate ``bytes(1024)`` (each a
glibc ``malloc``: above pymalloc's 512 B), then keeps 500 small objects made after the burst
alive (``bytes(600)``: glibc-heap too, on top of the burst, so the heap's top stays pinned and
glibc's own trim at ``free`` cannot give the pages back), frees the burst and returns. RSS is
read with psutil before the request, at the peak (inside the app, before the free) and after
``close()`` (that is "before the next request").

Contenders, side by side, in the same rounds (their order rotates per round):

- ``trim 32``: ``MemoryOptimizer`` with its defaults but ``trim_threshold_mb=32,
  sample_interval_s=0``: the governor's ``malloc_trim`` after a request that grew RSS;
- ``trim off``: the same with ``trim_threshold_mb=0``;
- ``bare``: the app alone.

Two scenarios: ``warm`` (one small request served first, as in a worker's normal life) and
``cold`` (the burst is the process's very first request: before 30b88d4 the governor took
its trim baseline after that request had run, and never trimmed it).

    python benchmarks/rss_burst.py             # 3 rounds, well under a minute
    python benchmarks/rss_burst.py --rounds 1  # a smoke test
    python benchmarks/rss_burst.py --json      # the figures as JSON
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

BURST_OBJECTS = 300_000
BURST_OBJECT_SIZE = 1024
KEPT_OBJECTS = 500
KEPT_OBJECT_SIZE = 600
TARGET_PERCENT = 95.0
MB = float(1 << 20)

CONTENDERS: dict[str, dict[str, Any] | None] = {
    "trim 32": {"trim_threshold_mb": 32, "sample_interval_s": 0},
    "trim off": {"trim_threshold_mb": 0, "sample_interval_s": 0},
    "bare": None,
}
SCENARIOS = ("warm", "cold")

Environ = dict[str, Any]
WSGIApp = Callable[[Environ, Callable[..., Any]], Iterable[bytes]]


# -- the child: one process, one contender, one scenario


def _child(contender: str, scenario: str) -> dict[str, Any]:
    from wsgiref.util import setup_testing_defaults

    import psutil

    process = psutil.Process()

    def rss_mb() -> float:
        return process.memory_info().rss / MB

    kept: list[bytes] = []  # lives past the request: it pins the top of the heap
    peak: list[float] = []

    def app(environ: Environ, start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/burst":
            burst = [bytes(BURST_OBJECT_SIZE) for _ in range(BURST_OBJECTS)]
            kept.extend(bytes(KEPT_OBJECT_SIZE) for _ in range(KEPT_OBJECTS))
            peak.append(rss_mb())
            del burst
        body = b"ok"
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [body]

    settings = CONTENDERS[contender]
    optimizer = None
    served: WSGIApp = app
    if settings is not None:
        from wsgi_memopt import MemoryOptimizer

        optimizer = MemoryOptimizer(app, **settings)
        served = optimizer

    def serve(path: str) -> None:
        environ: Environ = {"PATH_INFO": path}
        setup_testing_defaults(environ)
        result = served(environ, lambda status, headers, exc_info=None: None)
        try:
            for _ in result:
                pass
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()

    if scenario == "warm":
        serve("/warm-up")
    before = rss_mb()
    serve("/burst")
    after = rss_mb()  # the response is closed: this is "before the next request"

    grown = peak[0] - before
    held = after - before
    actions = []
    trim_ms = None
    if optimizer is not None:
        history = list(optimizer.governor.history)
        actions = [action.kind for action in history]
        trims = [action.duration_ms for action in history if action.kind == "trim"]
        trim_ms = trims[-1] if trims else None
        optimizer.governor.stop()
    return {
        "contender": contender,
        "scenario": scenario,
        "before_mb": before,
        "peak_mb": peak[0],
        "after_mb": after,
        "grown_mb": grown,
        "held_mb": held,
        "returned_percent": 100.0 * (grown - held) / grown if grown > 0 else 0.0,
        "actions": actions,
        "trim_ms": trim_ms,
    }


# -- the parent: rounds of fresh subprocesses, then the table


def _run_child(contender: str, scenario: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WSGI_MEMOPT_")}
    done = subprocess.run(
        [sys.executable, __file__, "--child", contender, scenario],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{contender}/{scenario} failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def measure(rounds: int) -> dict[tuple[str, str], list[dict[str, Any]]]:
    names = list(CONTENDERS)
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for index in range(rounds):
        order = names[index % len(names) :] + names[: index % len(names)]
        for scenario in SCENARIOS:
            for name in order:
                results.setdefault((name, scenario), []).append(_run_child(name, scenario))
    return results


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    trims = [run["trim_ms"] for run in runs if run["trim_ms"] is not None]
    returned = statistics.median(run["returned_percent"] for run in runs)
    return {
        "grown_mb": statistics.median(run["grown_mb"] for run in runs),
        "held_mb": statistics.median(run["held_mb"] for run in runs),
        "returned_percent": returned,
        "returned_min": min(run["returned_percent"] for run in runs),
        "trim_ms": statistics.median(trims) if trims else None,
        "actions": sorted({kind for run in runs for kind in run["actions"]}),
        "meets_target": returned >= TARGET_PERCENT,
        "runs": len(runs),
    }


def table(summary: dict[tuple[str, str], dict[str, Any]], seconds: float, rounds: int) -> str:
    header = (
        f"{'scenario':<8} {'contender':<9} {'grown MB':>9} {'held MB':>8} {'returned':>9} "
        f"{'(min)':>7} {'target':>7} {'trim ms':>8}  governor actions"
    )
    lines = [
        f"RSS after a {BURST_OBJECTS * BURST_OBJECT_SIZE / 1e6:.0f} MB burst "
        f"({BURST_OBJECTS:,} x bytes({BURST_OBJECT_SIZE}), {KEPT_OBJECTS} x "
        f"bytes({KEPT_OBJECT_SIZE}) kept), freed by the app; measured after close(); "
        f"median of {rounds} fresh process(es) each",
        header,
        "-" * len(header),
    ]
    for (name, scenario), row in summary.items():
        trim = f"{row['trim_ms']:.1f}" if row["trim_ms"] is not None else "-"
        verdict = "ok" if row["meets_target"] else "MISS"
        lines.append(
            f"{scenario:<8} {name:<9} {row['grown_mb']:>9.1f} {row['held_mb']:>8.1f} "
            f"{row['returned_percent']:>8.1f}% {row['returned_min']:>6.1f}% "
            f"{'>=95% ' + verdict:>7} {trim:>8}  {', '.join(row['actions']) or '-'}"
        )
    lines.append(
        f"Python {platform.python_version()}, {platform.libc_ver()[0]} "
        f"{platform.libc_ver()[1]}, {os.cpu_count()} CPUs; {seconds:.1f} s"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="fresh processes per cell")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--child", nargs=2, metavar=("CONTENDER", "SCENARIO"), help=argparse.SUPPRESS
    )
    options = parser.parse_args(argv)
    if options.child:
        print(json.dumps(_child(*options.child)))
        return 0
    started = time.perf_counter()
    results = measure(options.rounds)
    summary = {key: summarize(runs) for key, runs in sorted(results.items(), key=_row_order)}
    seconds = time.perf_counter() - started
    if options.json:
        print(
            json.dumps(
                {
                    "target_percent": TARGET_PERCENT,
                    "rows": [
                        {"contender": name, "scenario": scenario, **row}
                        for (name, scenario), row in summary.items()
                    ],
                    "seconds": round(seconds, 1),
                },
                indent=2,
            )
        )
    else:
        print(table(summary, seconds, options.rounds))
    return 0


def _row_order(item: tuple[tuple[str, str], Any]) -> tuple[int, int]:
    name, scenario = item[0]
    return SCENARIOS.index(scenario), list(CONTENDERS).index(name)


if __name__ == "__main__":
    sys.exit(main())
