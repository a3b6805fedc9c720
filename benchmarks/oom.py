"""A leaking gunicorn pool in a memory cgroup: OOM kills, failures and recycles, with and
without the middleware.

For each worker type (``--workers-types``) and each leak rate (``--rates``, KiB kept per
request) a fresh 2-worker gunicorn pool runs in its own memory cgroup of ``--limit-mb``
MiB, loaded by ``wrk -t2 -c4 --latency`` for ``--duration`` seconds (see
``benchmarks/leak_pool.py``), as three variants:

- ``unwrapped``: the leaking app alone; the kernel's OOM killer is all that stops it;
- ``ours``: the app behind ``MemoryOptimizer()`` with the product's defaults;
- ``max-requests``: the app alone, with gunicorn's ``--max-requests M --max-requests-jitter J``,
  M sized to survive that leak in that limit: half of what one worker's share of the limit
  above the pool's measured baseline holds, J = M / 10.

Plus the app that does not leak (0 KiB per request) as the same three variants, max-requests
at 1000/100: what each costs when there is nothing to fix. The pools run one after another,
never two at once; the baseline of each worker type is measured first, by a short run of the
non-leaking app.

    python3 benchmarks/oom.py                 # 32 pools of 90 s, one after another
    python3 benchmarks/oom.py --quick         # 15 s, sync, 20 KiB only: a smoke test
    python3 benchmarks/oom.py --json          # the same figures as JSON

Needs root (to create the cgroup), gunicorn and wrk.
"""

from __future__ import annotations

import argparse
import json
import platform
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from leak_pool import CgroupUnavailable, PoolResult, ToolMissing, run_pool

WORKERS = 2
THREADS = 2
CONNECTIONS = 4
SAFETY = 0.5  # of a worker's share of the headroom that max-requests may fill
QUICK_DURATION_S = 15.0
CALIBRATION_S = 5.0
IDLE_MAX_REQUESTS = (1000, 100)


def size_max_requests(
    limit_mb: float, baseline_mb: float, workers: int, leak_kb: int, safety: float = SAFETY
) -> tuple[int, int]:
    """``--max-requests`` and its jitter for a worker to survive ``leak_kb`` per request.

    Each worker may fill ``safety`` of its share of the headroom (the limit minus the pool's
    baseline): M requests of ``leak_kb`` each, and M + J stays within that share plus a tenth.
    """
    if leak_kb <= 0:
        return IDLE_MAX_REQUESTS
    budget_mb = max(limit_mb - baseline_mb, 1.0) / workers
    requests = max(1, int(budget_mb * 1024 / leak_kb * safety))
    return requests, max(1, requests // 10)


def calibrate(worker_type: str, limit_mb: int, workdir: Path) -> float:
    """The pool's memory under load when nothing leaks (its cgroup peak), in MiB."""
    result = run_pool(
        worker_class=worker_type,
        workers=WORKERS,
        threads=THREADS,
        leak_kb=0,
        settings=None,
        limit_mb=limit_mb,
        duration_s=CALIBRATION_S,
        connections=CONNECTIONS,
        workdir=workdir,
        variant="calibration",
    )
    measured = result.peak_mb if result.peak_mb is not None else result.baseline_mb
    return measured if measured is not None else 0.0


def plan(worker_types: list[str], rates: list[int], quick: bool) -> list[tuple[str, int, str]]:
    """(worker type, leak KiB, variant kind) in the order they run."""
    runs = []
    for worker_type in worker_types:
        for leak_kb in ([] if quick else [0]) + rates:
            for kind in ("unwrapped", "ours", "max-requests"):
                runs.append((worker_type, leak_kb, kind))
    return runs


def notes(
    results: list[PoolResult], max_requests: dict[tuple[str, int], tuple[int, int]]
) -> list[str]:
    """Per worker type and rate: how the variants compare, and how fast the leak filled."""
    lines: list[str] = []
    by_key: dict[tuple[str, int], dict[str, PoolResult]] = {}
    for result in results:
        kind = result.variant.split(" ")[0]
        by_key.setdefault((result.worker_class, result.leak_kb), {})[kind] = result
    for (worker_type, leak_kb), variants in by_key.items():
        unwrapped, ours, capped = (
            variants.get("unwrapped"),
            variants.get("ours"),
            variants.get("max-requests"),
        )
        head = f"{worker_type} {leak_kb} KiB/request:"
        if unwrapped is not None and unwrapped.fill_mb_s is not None:
            lines.append(
                f"{head} unwrapped, {unwrapped.requests_per_s:.0f} req/s filled the cgroup at "
                f"{unwrapped.fill_mb_s:.0f} MiB/s ({leak_kb} KiB x req/s = "
                f"{leak_kb * unwrapped.requests_per_s / 1024:.0f} MiB/s)"
            )
        if ours is not None:
            lines.append(
                f"{head} ours: {ours.oom_kills} OOM kills, {ours.failed} failed, "
                f"{ours.recycles} recycles ({ours.our_recycles} by the middleware)"
                + (
                    f"; unwrapped: {unwrapped.oom_kills} OOM kills, {unwrapped.failed} failed"
                    if unwrapped is not None
                    else ""
                )
                + (
                    f"; max-requests {max_requests[(worker_type, leak_kb)][0]}: "
                    f"{capped.oom_kills} OOM kills, {capped.failed} failed"
                    if capped is not None
                    else ""
                )
            )
        if ours is not None and unwrapped is not None and unwrapped.requests:
            lines.append(
                f"{head} requests ours/unwrapped = {ours.requests / unwrapped.requests:.2f}"
                + (
                    f", ours/max-requests = {ours.requests / capped.requests:.2f}"
                    if capped is not None and capped.requests
                    else ""
                )
            )
        if ours is not None and capped is not None and ours.p99_ms and capped.p99_ms:
            lines.append(
                f"{head} p99 ours/max-requests = {ours.p99_ms / capped.p99_ms:.2f} "
                f"({ours.p99_ms:.1f} ms vs {capped.p99_ms:.1f} ms)"
            )
    lines.extend(fastest_safe_rates(results))
    return lines


def fastest_safe_rates(results: list[PoolResult]) -> list[str]:
    """Per worker type: the fastest leak the defaults kept at 0 OOM kills and 0 failures, and
    the slowest they did not."""
    lines = []
    for worker_type in dict.fromkeys(result.worker_class for result in results):
        ours = [
            result
            for result in results
            if result.worker_class == worker_type and result.variant.startswith("ours")
        ]
        safe = [r.leak_kb for r in ours if r.oom_kills == 0 and r.failed == 0]
        unsafe = [r.leak_kb for r in ours if r.oom_kills or r.failed]
        lines.append(
            f"{worker_type}: fastest leak with 0 OOM kills and 0 failed under the defaults: "
            f"{max(safe) if safe else 'none'} KiB/request"
            + (f"; first that failed: {min(unsafe)} KiB/request" if unsafe else "")
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=90.0, help="seconds of load per pool")
    parser.add_argument("--rates", default="1,20,200,500", help="leak rates, KiB per request")
    parser.add_argument("--workers-types", default="sync,gthread", help="gunicorn worker types")
    parser.add_argument("--limit-mb", type=int, default=300, help="the cgroup's limit, MiB")
    parser.add_argument("--quick", action="store_true", help="15 s, sync, 20 KiB: a smoke test")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    options = parser.parse_args(argv)
    # Stopped by SIGTERM, the pools' `with` blocks still stop their servers and remove their
    # cgroups.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

    duration = options.duration
    rates = [int(rate) for rate in options.rates.split(",") if rate.strip()]
    worker_types = [kind.strip() for kind in options.workers_types.split(",") if kind.strip()]
    if options.quick:
        duration, rates, worker_types = QUICK_DURATION_S, [20], ["sync"]

    def say(text: str) -> None:
        # With --json, stdout carries the JSON alone; progress goes to stderr.
        print(text, file=sys.stderr if options.json else sys.stdout, flush=True)

    started = time.monotonic()
    results: list[PoolResult] = []
    baselines: dict[str, float] = {}
    chosen: dict[tuple[str, int], tuple[int, int]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="wsgi-memopt-oom-") as scratch:
            root = Path(scratch)
            for worker_type in worker_types:
                baselines[worker_type] = calibrate(
                    worker_type, options.limit_mb, root / f"calibrate-{worker_type}"
                )
                say(
                    f"{worker_type}: the pool's baseline (cgroup peak, {CALIBRATION_S:g} s of "
                    f"load, no leak) is {baselines[worker_type]:.1f} MiB"
                )
            say(PoolResult.HEADER)
            for index, (worker_type, leak_kb, kind) in enumerate(
                plan(worker_types, rates, options.quick)
            ):
                extra: tuple[str, ...] = ()
                settings: dict[str, Any] | None = None
                variant = kind
                if kind == "ours":
                    settings, variant = {}, "ours (defaults)"
                elif kind == "max-requests":
                    requests, jitter = size_max_requests(
                        options.limit_mb, baselines[worker_type], WORKERS, leak_kb
                    )
                    chosen[(worker_type, leak_kb)] = (requests, jitter)
                    if leak_kb:
                        say(
                            f"  max-requests for {worker_type} at {leak_kb} KiB: "
                            f"{SAFETY:g} x ({options.limit_mb} - "
                            f"{baselines[worker_type]:.0f}) MiB / {WORKERS} workers / "
                            f"{leak_kb} KiB = {requests}, jitter {jitter}"
                        )
                    extra = ("--max-requests", str(requests), "--max-requests-jitter", str(jitter))
                    variant = f"max-requests {requests}/{jitter}"
                result = run_pool(
                    worker_class=worker_type,
                    workers=WORKERS,
                    threads=THREADS,
                    leak_kb=leak_kb,
                    settings=settings,
                    extra_args=extra,
                    limit_mb=options.limit_mb,
                    duration_s=duration,
                    connections=CONNECTIONS,
                    workdir=root / f"run-{index}",
                    variant=variant,
                )
                results.append(result)
                say(result.as_row())
    except (CgroupUnavailable, ToolMissing) as exc:
        print(f"cannot run: {exc}", file=sys.stderr)
        return 2

    seconds = time.monotonic() - started
    summary = notes(results, chosen)
    if options.json:
        print(
            json.dumps(
                {
                    "limit_mb": options.limit_mb,
                    "duration_s": duration,
                    "workers": WORKERS,
                    "threads": THREADS,
                    "connections": CONNECTIONS,
                    "baseline_mb": baselines,
                    "max_requests": {
                        f"{kind} {leak}": list(pair) for (kind, leak), pair in chosen.items()
                    },
                    "rows": [result.as_dict() for result in results],
                    "notes": summary,
                    "seconds": round(seconds, 1),
                    "python": platform.python_version(),
                },
                indent=2,
            )
        )
        return 0
    print()
    print(
        f"gunicorn, {WORKERS} workers ({THREADS} threads for gthread), {options.limit_mb} MiB "
        f"cgroup, wrk -c{CONNECTIONS}, {duration:g} s per pool; {seconds:.0f} s in all"
    )
    print(
        f"{'rate':>6} {'worker':<7} {'variant':<26} {'OOM':>4} {'failed':>6} {'recycles':>8} "
        f"{'p99 ms':>8} {'peak MB':>8} {'requests':>9}"
    )
    for result in results:
        p99 = f"{result.p99_ms:.1f}" if result.p99_ms is not None else "-"
        peak = f"{result.peak_mb:.0f}" if result.peak_mb is not None else "-"
        print(
            f"{f'{result.leak_kb}KB':>6} {result.worker_class:<7} {result.variant[:26]:<26} "
            f"{result.oom_kills:>4} {result.failed:>6} {result.recycles:>8} {p99:>8} "
            f"{peak:>8} {result.requests:>9}"
        )
    print()
    for line in summary:
        print(f"- {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
