"""A leaking pool in a real memory cgroup: the middleware's defaults recycle it before the
kernel's OOM killer does, under real memory pressure.

Each test runs a real 2-worker server pool inside a fresh memory cgroup with a hard 300 MiB
limit, loads it with ``wrk -c4`` for a short while, and reads what happened from the kernel
(the cgroup's OOM-kill counter), from wrk (failed requests) and from the server's log
(recycles), through ``benchmarks/leak_pool.py``. Proved here:

- the harness sees OOM kills: the unwrapped leaking app is OOM-killed (so the tests below
  can fail);
- ``MemoryOptimizer()`` with its defaults, around an app that keeps 100 KiB per request,
  recycles the workers gracefully before the limit: no OOM kill, no failed request, at least
  one recycle, by the middleware's own hand; under gunicorn (sync and gthread workers) and
  under uWSGI with ``--master``. Under gunicorn the log shows one recycle at a time: a worker
  has exited before the next one starts recycling;
- the same defaults never recycle a pool that does not leak.

The route and the load are the benchmark's (``benchmarks/oom.py``: a 5 ms route, a few hundred
requests a second); the leak is five times the benchmark's 20 KiB, so that a 25 s run sees
several recycles (the benchmark runs 90 s at 1, 20 and 200 KiB).
These need root (a cgroup), wrk, gunicorn and uWSGI: without them they skip, but fail under
CI.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers.needs import require_peer, unavailable
from leak_pool import (
    CgroupUnavailable,
    MemoryCgroup,
    PoolResult,
    ToolMissing,
    find_uwsgi,
    run_pool,
)

LIMIT_MB = 300
LEAK_KB = 100
LOAD_S = 25.0
WORKERS = 2


@pytest.fixture
def pool_peers() -> None:
    """wrk is installed and a memory cgroup can be made here."""
    require_peer("wrk")
    try:
        with MemoryCgroup("probe", 16):
            pass
    except CgroupUnavailable as exc:
        unavailable(f"no memory cgroup: {exc}", "CI runs as root with a memory controller")


def _uwsgi() -> None:
    try:
        find_uwsgi()
    except ToolMissing as exc:
        unavailable(str(exc), "CI runs as root with a memory controller")


def _run(
    tmp_path: Path,
    *,
    leak_kb: int,
    settings: dict[str, object] | None,
    variant: str,
    server: str = "gunicorn",
    worker_class: str = "sync",
) -> PoolResult:
    """One pool of the tests' shape (2 workers, 300 MiB, wrk -c4 for 25 s); its row printed."""
    result = run_pool(
        server=server,
        worker_class=worker_class,
        workers=WORKERS,
        leak_kb=leak_kb,
        settings=settings,
        limit_mb=LIMIT_MB,
        duration_s=LOAD_S,
        connections=4,
        workdir=tmp_path,
        variant=variant,
    )
    fill = f"{result.fill_mb_s:.0f} MiB/s" if result.fill_mb_s is not None else "-"
    print(
        f"\n{PoolResult.HEADER}\n{result.as_row()}\n"
        f"socket errors {result.socket_errors}, non-2xx/3xx {result.non_2xx_3xx}, "
        f"respawns {result.respawns}, abnormal deaths {result.abnormal_deaths}, "
        f"cgroup fill under load {fill}"
    )
    return result


def _report(result: PoolResult) -> str:
    return (
        f"\n{PoolResult.HEADER}\n{result.as_row()}\n"
        f"socket errors {result.socket_errors}, non-2xx/3xx {result.non_2xx_3xx}, "
        f"respawns {result.respawns}, abnormal deaths {result.abnormal_deaths}\n"
        f"--- wrk ---\n{result.wrk_output}\n--- server log (tail) ---\n{result.log_tail}"
    )


@pytest.mark.slow
@pytest.mark.usefixtures("pool_peers")
def test_unwrapped_leaking_pool_is_oom_killed(tmp_path: Path) -> None:
    result = _run(tmp_path, leak_kb=LEAK_KB, settings=None, variant="unwrapped")

    assert result.oom_kills >= 1, _report(result)
    assert result.requests > 0, _report(result)


def _assert_recycled_before_the_oom_killer(result: PoolResult) -> None:
    report = _report(result)
    assert result.oom_kills == 0, report
    assert result.failed == 0, report
    assert result.recycles >= 2, report
    assert result.our_recycles >= 2, report


def overlapping_recycles(log: str) -> list[str]:
    """The lines of a gunicorn log where a worker began recycling while another one that had
    begun had not yet exited."""
    recycling: set[str] = set()
    overlaps = []
    for line in log.splitlines():
        began = re.search(r"\[(\d+)\] wsgi_memopt WARNING \[MEMORY\] recycling this", line)
        exited = re.search(r"Worker exiting \(pid: (\d+)\)", line)
        if began:
            if recycling:
                overlaps.append(line)
            recycling.add(began.group(1))
        elif exited:
            recycling.discard(exited.group(1))
    return overlaps


@pytest.mark.slow
@pytest.mark.usefixtures("pool_peers")
@pytest.mark.parametrize("worker_class", ["sync", "gthread"])
def test_defaults_recycle_a_leaking_pool_before_the_oom_killer(
    tmp_path: Path, worker_class: str
) -> None:
    result = _run(
        tmp_path,
        server="gunicorn",
        worker_class=worker_class,
        leak_kb=LEAK_KB,
        settings={},
        variant="ours (defaults)",
    )
    _assert_recycled_before_the_oom_killer(result)
    log = "\n".join(path.read_text(errors="replace") for path in tmp_path.glob("*.log"))
    assert overlapping_recycles(log) == [], _report(result)


@pytest.mark.slow
@pytest.mark.usefixtures("pool_peers")
def test_defaults_recycle_a_leaking_uwsgi_pool_before_the_oom_killer(tmp_path: Path) -> None:
    _uwsgi()
    result = _run(
        tmp_path,
        server="uwsgi",
        worker_class="sync",
        leak_kb=LEAK_KB,
        settings={},
        variant="ours (defaults)",
    )
    _assert_recycled_before_the_oom_killer(result)


@pytest.mark.slow
@pytest.mark.usefixtures("pool_peers")
def test_defaults_never_recycle_a_pool_that_does_not_leak(tmp_path: Path) -> None:
    result = _run(tmp_path, leak_kb=0, settings={}, variant="ours (defaults), no leak")
    report = _report(result)

    assert result.requests > 0, report
    assert result.recycles == 0, report
    assert result.our_recycles == 0, report
    assert result.oom_kills == 0, report
    assert result.failed == 0, report
