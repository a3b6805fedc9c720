"""GC scheduling against CPython's default collector: the product's three GC targets, side by side.

A Flask app is called in-process the way a server calls it (a prebuilt ``environ`` copied per
call, a minimal ``start_response``, the body iterated, ``close()``):

- ``heavy`` builds ~50k containers per request (25k dicts each holding a list) and sums them,
- ``light`` is a hello route,
- ``cycles`` is one long request that builds and drops two-object reference cycles (a row and
  its child pointing back at it, as an ORM's back-references do), ``--cycles`` of them,

over a long-lived heap of ~1M containers built at startup, like an app's caches and tables.
Three configurations, each in fresh subprocesses of its own so that ``gc.freeze()`` and the
collector's state never leak from one to another:

- ``default``: CPython's automatic collector as it comes (one ``gc.collect()`` after startup),
- ``freeze``: the same plus ``gc.freeze()`` of the startup heap,
- ``between``: ``GCScheduler(mode="between")`` with its defaults (freeze on), driven as the
  middleware drives it: after ``close()``, ``collect_between()`` when ``collection_due()``.

A request's latency runs from the call to ``close()`` (``perf_counter_ns``); the collection
``between`` makes after ``close()`` is not in any request's latency, but it is in the CPU time
(``time.process_time`` over the whole loop, divided by the requests).

The long request runs last, in one more fresh process per configuration and replica (so that
memory the heavy requests left free cannot absorb its garbage), while this process samples the
worker's RSS every millisecond: its peak growth over the RSS just before the request.

The configurations' processes stay up and take turns, in an order that rotates from turn to
turn, in chunks of 20 heavy and 1,000 light requests (by default), so a drift of the machine
lands on all of them alike; each configuration has 3 processes (replicas), twins across
configurations sharing a ``PYTHONHASHSEED``, because two processes of one configuration differ
by a few per cent at p50 (memory layout). Target ratios are the median of the ratios within
each turn; the table's percentiles pool every turn. A request during which the process was
switched out for another (``ru_nivcsw``) is counted as preempted: the worst pause is reported
with and without those.

    python benchmarks/gc_latency.py              # 900 heavy requests each, about 90 s on 2 cores
    python benchmarks/gc_latency.py --quick      # 60 heavy requests each, about 20 s
    python benchmarks/gc_latency.py --requests N # N heavy (and 50 N light) per configuration
    python benchmarks/gc_latency.py --request-budget N  # between's request_budget, to explore
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
import timeit
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import psutil
from flask import Flask, request
from werkzeug.test import EnvironBuilder

from wsgi_memopt.memory.gc_schedule import REQUEST_BUDGET, GCScheduler

Environ = dict[str, Any]
WSGIApp = Callable[[Environ, Callable[..., Any]], Iterable[bytes]]

CONFIGS = ("default", "freeze", "between")
HEAP_ROWS = 500_000  # two containers each (a dict and its list): ~1M live containers
REQUEST_ROWS = 25_000  # two containers each: ~50k per heavy request
LIGHT_PER_HEAVY = 50
LONG_CYCLES = 3_000_000  # two-object cycles built and dropped by the long request
TARGETS = {
    "heavy p99": 10.0,  # default p99 / between p99 at least
    "heavy CPU": 4.0,  # default CPU / between CPU at least
    "light max ms": 5.0,  # between's worst request at most
    "light p50": 1.05,  # between p50 / default p50 at most
    "long growth": 1.5,  # between's peak RSS growth / default's at most...
    "long growth MB": 10.0,  # ...or this many MB, whichever is larger
}


# -- the app and the server's side of a call


def make_app() -> Flask:
    app = Flask("gc_latency")

    @app.get("/heavy")
    def heavy() -> dict[str, int]:
        rows: list[dict[str, Any]] = [{"id": i, "tags": [i, i + 1]} for i in range(REQUEST_ROWS)]
        return {"rows": len(rows), "sum": sum(row["tags"][1] for row in rows)}

    @app.get("/light")
    def light() -> str:
        return "hello"

    @app.get("/cycles")
    def cycles() -> dict[str, int]:
        total = 0
        for i in range(request.args.get("n", 0, type=int)):
            parent = Row(i)
            parent.child = Row(i, parent)  # a cycle, garbage once the next one is built
            total += parent.child.id
        return {"sum": total}

    return app


class Row:
    """An ORM-like row: a few columns, and its child and parent referring to each other."""

    def __init__(self, ident: int, parent: Row | None = None) -> None:
        self.id = ident
        self.name = "row"
        self.parent = parent
        self.child: Row | None = None


def build_heap(rows: int) -> list[dict[str, Any]]:
    """The long-lived startup heap: what an app's tables, caches and modules hold."""
    return [{"id": i, "name": f"item-{i}", "tags": [i]} for i in range(rows)]


def _write(data: bytes) -> None:
    pass


def _start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
    return _write


@dataclass
class Phase:
    """One handler's run in one configuration: latencies and CPU."""

    latencies_ns: list[int]
    preempted: list[bool]  # an involuntary context switch around the request: another process ran
    cpu_ns: int
    collections_ms: list[float]  # the scheduler's, made between requests
    cpython_collections: list[int]  # per generation, from gc.get_stats(), all collections

    def as_dict(self) -> dict[str, Any]:
        return {
            "latencies_ns": self.latencies_ns,
            "preempted": self.preempted,
            "cpu_ns": self.cpu_ns,
            "collections_ms": self.collections_ms,
            "cpython_collections": self.cpython_collections,
        }


def run_phase(app: WSGIApp, path: str, n: int, scheduler: GCScheduler | None) -> Phase:
    base = EnvironBuilder(path=path).get_environ()
    start_response = _start_response
    perf = time.perf_counter_ns
    getrusage, who = resource.getrusage, resource.RUSAGE_SELF
    latencies = [0] * n
    preempted = [False] * n
    collections_ms: list[float] = []
    before = [generation["collections"] for generation in gc.get_stats()]
    cpu_start = time.process_time_ns()
    for index in range(n):
        environ = dict(base)  # Flask writes into it; a server hands a fresh one each time
        switches = getrusage(who).ru_nivcsw
        start = perf()
        result = app(environ, start_response)
        for _ in result:
            pass
        close = getattr(result, "close", None)
        if close is not None:
            close()
        latencies[index] = perf() - start
        preempted[index] = getrusage(who).ru_nivcsw != switches
        if scheduler is not None and scheduler.collection_due():
            collection = scheduler.collect_between()  # after close(): between requests
            if collection is not None:
                collections_ms.append(collection.duration_ms)
    cpu_ns = time.process_time_ns() - cpu_start
    after = [generation["collections"] for generation in gc.get_stats()]
    return Phase(
        latencies,
        preempted,
        cpu_ns,
        collections_ms,
        [b - a for a, b in zip(before, after, strict=True)],
    )


def hot_path_ns(number: int = 200_000) -> dict[str, float]:
    """Nanoseconds per call of the check after every request, nothing due (best of 5)."""
    scheduler = GCScheduler(mode="between", freeze=False)
    scheduler.start()
    try:
        gc.collect()
        namespace = {"due": scheduler.collection_due}
        best = min(timeit.repeat("due()", globals=namespace, number=number, repeat=5))
        return {"collection_due()": best / number * 1e9}
    finally:
        scheduler.stop()


def worker(config: str, heap_rows: int, request_budget: int) -> None:
    """One configuration in this fresh process, serving the parent's commands on stdin.

    ``run HANDLER N`` answers one line of JSON (a ``Phase``); ``cycles N`` one long request
    building ``N`` cycles (a ``Phase``); ``info`` the startup figures; end of input ends the
    process.
    """
    app = make_app()
    heap = build_heap(heap_rows)
    start = time.perf_counter_ns()
    gc.collect()
    full_ms = (time.perf_counter_ns() - start) / 1e6
    tracked = len(gc.get_objects())
    scheduler = None
    if config == "freeze":
        gc.freeze()
    elif config == "between":
        scheduler = GCScheduler(mode="between", request_budget=request_budget)
        scheduler.start()
    wsgi = app.wsgi_app
    # Warm-up, untimed: first-call costs (imports, caches) must not land on one configuration.
    run_phase(wsgi, "/heavy", 3, scheduler)
    run_phase(wsgi, "/light", 200, scheduler)
    run_phase(wsgi, "/cycles?n=1000", 3, scheduler)
    answer = sys.stdout
    for line in sys.stdin:
        command = line.split()
        out: dict[str, Any]
        if command[0] == "run":
            out = run_phase(wsgi, "/" + command[1], int(command[2]), scheduler).as_dict()
        elif command[0] == "cycles":
            out = run_phase(wsgi, f"/cycles?n={command[1]}", 1, scheduler).as_dict()
        else:
            out = {
                "heap_rows": len(heap),
                "tracked_objects": tracked,
                "full_collection_ms": full_ms,
                "frozen": gc.get_freeze_count(),
            }
            if scheduler is not None:
                start = time.perf_counter_ns()
                scheduler.collect_full("forced")  # what a full collection costs once frozen
                out["full_collection_frozen_ms"] = (time.perf_counter_ns() - start) / 1e6
        answer.write(json.dumps(out) + "\n")
        answer.flush()


# -- the parent: one worker per configuration, taking turns in small chunks, then the tables


class Worker:
    """A configuration's subprocess, driven one command at a time."""

    def __init__(self, config: str, options: argparse.Namespace, hash_seed: int) -> None:
        self.config = config
        command = [sys.executable, os.path.abspath(__file__), "--worker", config]
        command += ["--heap-rows", str(options.heap_rows)]
        command += ["--request-budget", str(options.request_budget)]
        # The same string hashes, so the same dict layouts, as the other configurations' twin.
        env = {**os.environ, "PYTHONHASHSEED": str(hash_seed)}
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1, env=env
        )
        self.info = self.ask("info")  # answers once its heap is built and warmed up

    def ask(self, command: str) -> dict[str, Any]:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.config} worker died (exit {self.process.wait()})")
        return json.loads(line)  # type: ignore[no-any-return]

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=60)


def long_request(config: str, options: argparse.Namespace, hash_seed: int) -> dict[str, Any]:
    """The long request in a fresh worker, its RSS sampled from here: a ``Phase`` plus
    ``rss_before_mb`` and ``peak_growth_mb``."""
    running = Worker(config, options, hash_seed)
    try:
        process = psutil.Process(running.process.pid)
        before = peak = process.memory_info().rss
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.wait(0.001):
                peak = max(peak, process.memory_info().rss)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            out = running.ask(f"cycles {options.cycles}")
        finally:
            done.set()
            sampler.join()
        peak = max(peak, process.memory_info().rss)
    finally:
        running.close()
    return {**out, "rss_before_mb": before / 2**20, "peak_growth_mb": (peak - before) / 2**20}


def percentile(sorted_values: list[int], q: float) -> int:
    """Nearest-rank percentile of already sorted values."""
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass
class Summary:
    p50_ms: float
    p99_ms: float
    max_ms: float
    max_unpreempted_ms: float  # the worst request no other process interrupted
    cpu_ms: float  # per request, collections between requests included
    requests: int
    preempted: int


def summarize(phases: list[dict[str, Any]]) -> Summary:
    pairs = [
        pair
        for phase in phases
        for pair in zip(phase["latencies_ns"], phase["preempted"], strict=True)
    ]
    latencies = sorted(ns for ns, _ in pairs)
    unpreempted = [ns for ns, preempted in pairs if not preempted] or [0]
    cpu = sum(phase["cpu_ns"] for phase in phases)
    return Summary(
        percentile(latencies, 0.50) / 1e6,
        percentile(latencies, 0.99) / 1e6,
        latencies[-1] / 1e6,
        max(unpreempted) / 1e6,
        cpu / len(latencies) / 1e6,
        len(latencies),
        len(pairs) - len(unpreempted),
    )


def round_ratios(
    results: dict[str, list[dict[str, Any]]], handler: str, measure: Callable[[Summary], float]
) -> list[float]:
    """``measure`` of default over ``measure`` of between, within each round."""
    return [
        measure(summarize([default[handler]])) / measure(summarize([between[handler]]))
        for default, between in zip(results["default"], results["between"], strict=True)
    ]


def table(header: tuple[str, ...], lines: list[tuple[str, ...]]) -> None:
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]
    for i, line in enumerate([header, *lines]):
        cells = [
            cell.ljust(width) if column < 2 else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(line, widths, strict=True))
        ]
        print(" | ".join(cells))
        if i == 0:
            print("-+-".join("-" * width for width in widths))


def report(
    results: dict[str, list[dict[str, Any]]],
    infos: dict[str, dict[str, Any]],
    long: dict[str, list[dict[str, Any]]],
    hot_path: dict[str, float],
    options: argparse.Namespace,
    load: list[float],
) -> bool:
    """Print the tables and notes; whether every target was met."""
    first = infos["default"]
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    print(
        f"Python {platform.python_version()} ({platform.python_implementation()}), "
        f"cores: {os.cpu_count()} ({affinity} usable), 1-min load average before/after: "
        f"{load[0]:.2f}/{load[1]:.2f}; {options.replicas} fresh subprocess(es) per configuration, "
        f"taking turns {options.rounds} times each in rotating order"
    )
    print(
        f"startup heap: {first['heap_rows']:,} rows, {first['tracked_objects']:,} GC-tracked "
        f"objects; one full collection over it: {first['full_collection_ms']:.0f} ms"
    )
    print(
        f"per configuration: {options.requests} heavy requests (~{2 * REQUEST_ROWS:,} "
        f"containers each), {options.requests * LIGHT_PER_HEAVY} light requests, and "
        f"{options.replicas} long request(s) of {options.cycles:,} cycles; between's "
        f"request_budget: {options.request_budget:,}"
    )
    summaries = {
        (handler, config): summarize([run[handler] for run in results[config]])
        for handler in ("heavy", "light")
        for config in CONFIGS
    }
    print()
    header = ("handler", "GC", "p50 ms", "p99 ms", "max ms", "max ms (not preempted)",
              "CPU ms/req", "default p99 / this", "default CPU / this", "preempted",
              "collections gen0/1/2 per 100 req")  # fmt: skip
    lines: list[tuple[str, ...]] = []
    for handler in ("heavy", "light"):
        base = summaries[handler, "default"]
        for config in CONFIGS:
            s = summaries[handler, config]
            runs = [run[handler] for run in results[config]]
            per_gen = [sum(run["cpython_collections"][g] for run in runs) for g in range(3)]
            lines.append(
                (
                    handler,
                    config,
                    f"{s.p50_ms:.3f}",
                    f"{s.p99_ms:.3f}",
                    f"{s.max_ms:.3f}",
                    f"{s.max_unpreempted_ms:.3f}",
                    f"{s.cpu_ms:.3f}",
                    f"{base.p99_ms / s.p99_ms:.2f}",
                    f"{base.cpu_ms / s.cpu_ms:.2f}",
                    f"{s.preempted}/{s.requests}",
                    "/".join(f"{100 * count / s.requests:.1f}" for count in per_gen),
                )
            )
    table(header, lines)
    print()
    long_table(long)

    heavy_p99 = round_ratios(results, "heavy", lambda s: s.p99_ms)
    heavy_cpu = round_ratios(results, "heavy", lambda s: s.cpu_ms)
    light_p50 = [1 / ratio for ratio in round_ratios(results, "light", lambda s: s.p50_ms)]
    worst = summaries["light", "between"]
    checks = [
        ("heavy: p99, default / between", heavy_p99, "heavy p99", ">="),
        ("heavy: CPU, default / between", heavy_cpu, "heavy CPU", ">="),
        ("light: p50, between / default", light_p50, "light p50", "<="),
    ]
    lines = []
    verdicts = []
    for name, ratios, target, sense in checks:
        value = statistics.median(ratios)
        ok = value >= TARGETS[target] if sense == ">=" else value <= TARGETS[target]
        verdicts.append(ok)
        spread = f"{min(ratios):.3f}..{max(ratios):.3f}"
        lines.append((name, "", f"{value:.3f}", spread, f"{sense} {TARGETS[target]:g}",
                      "PASS" if ok else "FAIL"))  # fmt: skip
    ok = worst.max_unpreempted_ms <= TARGETS["light max ms"]
    verdicts.append(ok)
    lines.append(("light: worst pause under between, ms", "", f"{worst.max_unpreempted_ms:.3f}",
                  f"{worst.max_ms:.3f} with preempted", f"<= {TARGETS['light max ms']:g}",
                  "PASS" if ok else "FAIL"))  # fmt: skip
    growth = {config: [run["peak_growth_mb"] for run in long[config]] for config in CONFIGS}
    default_mb = statistics.median(growth["default"])
    bound = max(TARGETS["long growth"] * default_mb, TARGETS["long growth MB"])
    value = statistics.median(growth["between"])
    ok = value <= bound
    verdicts.append(ok)
    lines.append(("long request: peak RSS growth under between, MB", "", f"{value:.1f}",
                  f"default {default_mb:.1f}; per run {max(growth['between']):.1f} at most",
                  f"<= {bound:.1f}", "PASS" if ok else "FAIL"))  # fmt: skip
    print()
    table(("target", "", "measured", "per turn / note", "target", "verdict"), lines)

    print()
    print("Notes:")
    print(
        "- latency runs from the call to close(); between's collections run after close(): "
        "NOT in any request's latency, but IN its CPU time."
    )
    print(
        "- ratios in the target table: the median over the turns of the ratio within each turn "
        "(configurations' twin processes, same hash seed, one after the other; per turn: "
        "lowest..highest); the first table pools all turns."
    )
    print(
        "- preempted: requests during which this process was involuntarily switched out "
        "(getrusage ru_nivcsw), i.e. another process took the core; the worst pause is taken "
        "over the others, as a preemption is not a GC pause. Both figures are shown."
    )
    for handler in ("heavy", "light"):
        runs = [run[handler] for run in results["between"]]
        made = [ms for run in runs for ms in run["collections_ms"]]
        requests = sum(len(run["latencies_ns"]) for run in runs)
        longest = f"{max(made):.2f} ms" if made else "-"
        print(
            f"- between, {handler}: the scheduler made {len(made)} collections between "
            f"{requests} requests, {sum(made) / requests:.4f} ms per request on average, "
            f"longest {longest}."
        )
    print(
        "- collections per 100 requests: every collection gc.get_stats() counted, the "
        "scheduler's and CPython's own; under between, CPython's own are young ones once "
        "request_budget young containers piled up, never a full one."
    )
    print(
        "- long request: peak RSS growth over the RSS just before it, sampled every ms from "
        "this process; the target is the larger of "
        f"{TARGETS['long growth']:g}x default's growth and {TARGETS['long growth MB']:g} MB."
    )
    between = infos["between"]
    print(
        f"- a full collection once the startup heap is frozen ({between['frozen']:,} objects): "
        f"{between['full_collection_frozen_ms']:.1f} ms (between makes one at most every "
        f"full_interval_s, 300 s, when idle, or on memory pressure)."
    )
    print(
        "- the check after every request, nothing due (best of 5): "
        + ", ".join(f"{label} {ns:.0f} ns" for label, ns in hot_path.items())
        + "."
    )
    return all(verdicts)


def long_table(long: dict[str, list[dict[str, Any]]]) -> None:
    """The long request per configuration: its peak RSS growth, time and collections."""
    header = ("handler", "GC", "peak RSS growth MB", "per run", "RSS before MB", "seconds",
              "CPU s", "collections gen0/1/2 inside")  # fmt: skip
    lines: list[tuple[str, ...]] = []
    for config in CONFIGS:
        runs = long[config]
        growth = [run["peak_growth_mb"] for run in runs]
        per_gen = [sum(run["cpython_collections"][g] for run in runs) / len(runs) for g in range(3)]
        lines.append(
            (
                "long",
                config,
                f"{statistics.median(growth):.1f}",
                " ".join(f"{mb:.1f}" for mb in growth),
                f"{statistics.median(run['rss_before_mb'] for run in runs):.0f}",
                f"{statistics.median(run['latencies_ns'][0] for run in runs) / 1e9:.2f}",
                f"{statistics.median(run['cpu_ns'] for run in runs) / 1e9:.2f}",
                "/".join(f"{count:.0f}" for count in per_gen),
            )
        )
    table(header, lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--requests", type=int, default=None, help="heavy requests per configuration (900)"
    )
    parser.add_argument("--rounds", type=int, default=None, help="turns they are split in (15)")
    parser.add_argument(
        "--replicas", type=int, default=None, help="worker processes per configuration (3)"
    )
    parser.add_argument(
        "--cycles", type=int, default=None, help=f"cycles the long request builds ({LONG_CYCLES:,})"
    )
    parser.add_argument(
        "--request-budget",
        type=int,
        default=REQUEST_BUDGET,
        help=f"between's request_budget ({REQUEST_BUDGET:,})",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke test: 60, 3, 1, 1M cycles")
    parser.add_argument("--heap-rows", type=int, default=HEAP_ROWS, help=argparse.SUPPRESS)
    parser.add_argument("--worker", choices=CONFIGS, help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.worker:
        worker(options.worker, options.heap_rows, options.request_budget)
        return 0
    quick = options.quick
    for name, full, smoke in (
        ("requests", 900, 60),
        ("rounds", 15, 3),
        ("replicas", 3, 1),
        ("cycles", LONG_CYCLES, 1_000_000),
    ):
        if getattr(options, name) is None:
            setattr(options, name, smoke if quick else full)
        if getattr(options, name) < 1:
            parser.error(f"--{name} must be at least 1")
    turns = options.rounds * options.replicas
    per_turn = max(1, round(options.requests / turns))
    options.requests = per_turn * turns

    load = [os.getloadavg()[0]]
    workers: dict[tuple[str, int], Worker] = {}
    try:
        for replica in range(options.replicas):
            for config in CONFIGS:  # one after the other: startup figures are timed alone
                print(f"starting {config} worker {replica + 1}...", file=sys.stderr)
                workers[config, replica] = Worker(config, options, replica)
        results: dict[str, list[dict[str, Any]]] = {config: [] for config in CONFIGS}
        for index in range(turns):
            replica = index % options.replicas
            shift = index % len(CONFIGS)
            order = CONFIGS[shift:] + CONFIGS[:shift]
            turn: dict[str, dict[str, Any]] = {config: {} for config in CONFIGS}
            for handler, n in (("heavy", per_turn), ("light", per_turn * LIGHT_PER_HEAVY)):
                for config in order:
                    turn[config][handler] = workers[config, replica].ask(f"run {handler} {n}")
            for config in CONFIGS:
                results[config].append(turn[config])
        infos = {config: workers[config, 0].ask("info") for config in CONFIGS}
    finally:
        for running in workers.values():
            running.close()
    long: dict[str, list[dict[str, Any]]] = {config: [] for config in CONFIGS}
    for replica in range(options.replicas):
        for config in CONFIGS:  # one at a time: the sampled worker has a core to itself
            print(f"long request, {config} worker {replica + 1}...", file=sys.stderr)
            long[config].append(long_request(config, options, replica))
    load.append(os.getloadavg()[0])
    report(results, infos, long, hot_path_ns(), options, load)
    return 0  # verdicts are read, not enforced: a neighbour's load can sway one run


if __name__ == "__main__":
    sys.exit(main())
