"""The governor: real pressure, real memory, real threads, real forks.

No sampler is faked for a measurement: pressure comes from the ``process`` source (this
process's RSS over ``process_limit_mb``), set just above or below the RSS measured with psutil,
so the cache's bodies really push it past a threshold. Where a test needs to see inside a tick
it wraps the real sampler in a probe that still measures; a sampler that raises is used only to
show that a broken tick never costs a request its response. Heavy work (a 300 MB burst, forks)
runs in a subprocess, so the test process's heap and threads stay out of the figures.
"""

from __future__ import annotations

import collections
import gc
import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
import types
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import psutil
import pytest
from helpers.needs import require_malloc_trim
from helpers.wsgi import get, run_threads, wrap
from werkzeug.test import Client, EnvironBuilder

from wsgi_memopt import MemoryOptimizer, Settings
from wsgi_memopt.memory.cleanups import Cleanups, malloc_trim, malloc_trim_available
from wsgi_memopt.memory.forecast import Forecast
from wsgi_memopt.memory.gc_schedule import REQUEST_BUDGET, GCScheduler
from wsgi_memopt.memory.governor import Governor
from wsgi_memopt.memory.pool import serving_master
from wsgi_memopt.memory.pressure import MemorySample, ProcessSampler

Make = Callable[..., tuple[MemoryOptimizer, Client]]

# A 10 GB budget no test process comes near (a percent or so): no optimize, emergency or
# recycle, and with trim off no trim either. Tests about something else than pressure use it.
NO_PRESSURE: dict[str, Any] = {
    "pressure_source": "process",
    "process_limit_mb": 10_000,
    "trim_threshold_mb": 0,
}

SUBPROCESS_TIMEOUT_S = 180
POLL_S = 5.0  # the longest wait for something a background thread does


def rss_mb() -> float:
    return float(psutil.Process().memory_info().rss) / (1 << 20)


def hand_back_freed_heap() -> None:
    """Collect and give the heap other tests freed back to the OS: new allocations grow RSS
    again, and a governor's cleanups find nothing of theirs to free."""
    gc.collect()
    if malloc_trim_available():
        malloc_trim()


def body_app(size: int = 100_000) -> Callable[..., Iterable[bytes]]:
    """A cacheable app: a ``size``-byte body that starts with the path, fresh for every call."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        head = environ["PATH_INFO"].encode()
        body = head + b"." * max(size - len(head), 0)
        start_response(
            "200 OK",
            [
                ("Content-Type", "text/plain"),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "max-age=600"),
            ],
        )
        return [body]

    return app


OPEN: list[Open] = []  # every request served by hand; a failed test's are closed for it


class Open:
    """A request served by calling the middleware directly, its response not closed yet."""

    def __init__(self, app: Callable[..., Iterable[bytes]], path: str) -> None:
        statuses: list[str] = []

        def start_response(status: str, headers: Any, exc_info: Any = None) -> None:
            statuses.append(status)

        self.response = app(EnvironBuilder(path=path).get_environ(), start_response)
        self.closed = False
        OPEN.append(self)
        self.body = b"".join(self.response)
        self.status = statuses[0]

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        close = getattr(self.response, "close", None)
        if close is not None:
            close()


def call(app: Callable[..., Iterable[bytes]], path: str = "/") -> tuple[str, bytes]:
    """Serve ``path`` and close the response, as a server does."""
    request = Open(app, path)
    request.close()
    return request.status, request.body


def kinds(optimizer: MemoryOptimizer) -> list[str]:
    return [action.kind for action in optimizer.governor.history]


def wait_for(condition: Callable[[], bool], timeout_s: float = POLL_S) -> bool:
    """Poll ``condition`` until it holds or ``timeout_s`` passed; whether it held."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


# What every script below starts with: an app answering "ok", one request served and closed
# as a server does, and a forked child whose function's return value is its exit code.
_SCRIPT_PRELUDE = """
import json, logging, os, sys, threading, time, traceback
from werkzeug.test import EnvironBuilder
from wsgi_memopt import MemoryOptimizer, Settings

def ok_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]

def call(optimizer, path):
    statuses = []
    response = optimizer(
        EnvironBuilder(path=path).get_environ(), lambda s, h, e=None: statuses.append(s)
    )
    try:
        body = b"".join(response)
    finally:
        response.close()
    return statuses[0], body

OK = ("200 OK", b"ok")

def fork_child(child):
    pid = os.fork()
    if pid == 0:
        code = 99  # the child raised (its traceback is on stderr)
        try:
            code = child()
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(code)
    return pid

def exit_code(pid):
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)
"""


def run_script(script: str, *args: str) -> dict[str, Any]:
    """Run ``script``, after ``_SCRIPT_PRELUDE``, in a fresh interpreter; the JSON it printed
    last."""
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT_PRELUDE + textwrap.dedent(script), *args],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.fixture(autouse=True)
def _gc_restored() -> Iterator[None]:
    """Every test starts and ends with CPython's collector on, whatever a governor did."""
    gc.enable()
    yield
    gc.enable()


@pytest.fixture
def make() -> Iterator[Make]:
    """``wrap``, with every governor made stopped afterwards (monitor thread, GC switch)."""
    made: list[MemoryOptimizer] = []

    def factory(app: Callable[..., Iterable[bytes]], **settings: Any) -> Any:
        optimizer, client = wrap(app, **settings)
        made.append(optimizer)
        return optimizer, client

    try:
        yield factory
    finally:
        while OPEN:
            OPEN.pop().close()
        for optimizer in made:
            optimizer.governor.stop()


def check_measured(result: dict[str, Any], kind: str, reason: str) -> None:
    """``result`` is a measured action: before/after samples, a duration, honest improvement."""
    assert result["kind"] == kind
    assert result["reason"] == reason
    assert result["duration_ms"] > 0  # every action runs a full collection: it takes time
    for side in ("before", "after"):
        sample = result[side]
        assert sample["source"] == "process"
        assert sample["rss_mb"] > 0
        assert sample["memory_percent"] > 0
    before, after, improvement = result["before"], result["after"], result["improvement"]
    # What was freed is what was measured: the RSS difference, and 0 when RSS grew (samples
    # and improvement are each rounded to 0.1 MB, hence the tolerance).
    assert improvement["mb_freed"] == pytest.approx(
        max(before["rss_mb"] - after["rss_mb"], 0.0), abs=0.11
    )
    assert improvement["used_mb_freed"] == pytest.approx(
        max(before["used_mb"] - after["used_mb"], 0.0), abs=0.11
    )
    assert improvement["percent_freed"] == pytest.approx(
        max(before["memory_percent"] - after["memory_percent"], 0.0), abs=0.011
    )
    assert set(result["actions"]) == {
        "modules",
        "cache_items_freed",
        "cache_mb_freed",
        "objects_collected",
        "malloc_trim",
        "cleanups",
    }


# --- pressure made real by settings ----------------------------------------------------------


def test_filling_the_cache_past_max_memory_percent_runs_an_optimize_that_trims_it(
    make: Make,
) -> None:
    # A first optimizer and request pay for what is built once (pympler's measure of an
    # entry, werkzeug's parsers), so that from here RSS grows by the cache's bodies.
    _warm, warm_client = make(body_app(), **NO_PRESSURE)
    assert get(warm_client, "/warm").status_code == 200
    hand_back_freed_heap()  # and freed heap is not reused silently
    rss = rss_mb()
    limit = rss + 24  # just above the RSS now
    max_percent = (rss + 8) / limit * 100  # about 80 bodies of 100 KB from here
    optimizer, client = make(
        body_app(),
        pressure_source="process",
        process_limit_mb=limit,
        max_memory_percent=max_percent,
        critical_percent=100,
        restart_percent=100,
        sample_interval_s=0,
        trim_threshold_mb=0,
        cache_max_mb=1024,
        cache_max_items=100_000,
    )
    history = optimizer.governor.history
    items_before = 0
    for number in range(3000):
        items_before = len(optimizer.cache)
        response = get(client, f"/page/{number}")
        assert response.status_code == 200
        assert response.get_data().startswith(f"/page/{number}".encode())
        if "optimize" in kinds(optimizer):
            break
    else:
        pytest.fail(f"no optimize after 3000 bodies of 100 KB; history: {kinds(optimizer)}")

    action = history[-1]
    assert action.kind == "optimize"
    assert action.reason == "pressure"
    assert kinds(optimizer) == ["optimize"]  # nothing before it: the fill made the pressure
    # The request that tipped it stored its body, then its tick trimmed the cache.
    items_at_optimize = items_before + 1
    assert items_at_optimize >= 20, "the optimize came before the cache filled"
    assert action.before.memory_percent > max_percent
    assert action.before.memory_percent <= 100  # an optimize, not an emergency
    assert action.cache_items_freed > 0
    assert len(optimizer.cache) == items_at_optimize - action.cache_items_freed
    assert len(optimizer.cache) < items_at_optimize
    assert action.cache_mb_freed > 0
    assert action.after.taken_at >= action.before.taken_at
    result = action.as_dict()
    check_measured(result, "optimize", "pressure")
    assert result["actions"]["cleanups"] == []  # cleanups are for emergencies
    assert optimizer.governor.stats()["last_actions"][-1] == result


def test_rss_above_critical_percent_runs_an_emergency_with_the_cleanups(make: Make) -> None:
    limit = rss_mb() * 0.8  # below the RSS now: > 100%, above critical_percent
    optimizer, client = make(
        body_app(),
        pressure_source="process",
        process_limit_mb=limit,
        max_memory_percent=65,
        critical_percent=85,
        restart_percent=100,
        sample_interval_s=0,
        trim_threshold_mb=0,
        cache_max_mb=1024,
    )
    ran: list[str] = []
    optimizer.cleanups.register("mine", lambda: ran.append("mine"))
    optimizer.cleanups.register("precious", lambda: ran.append("precious"), critical=True)

    # A request in flight: the ticks of the others sample but must not pause anything.
    holder = Open(optimizer, "/held")
    for number in range(20):
        assert get(client, f"/page/{number}").status_code == 200
    assert len(optimizer.cache) == 21  # the held one too: stored once its body was read
    assert optimizer.governor.history == collections.deque(maxlen=50)
    assert optimizer.governor.last_sample is not None
    assert optimizer.governor.last_sample.memory_percent > 85  # sampled, not acted on
    assert ran == []

    holder.close()  # the last request in flight ends: its tick runs the emergency

    assert kinds(optimizer) == ["emergency"]
    action = optimizer.governor.history[-1]
    assert action.reason == "critical"
    assert action.before.memory_percent > 85
    assert len(optimizer.cache) == 0
    assert action.cache_items_freed == 21
    assert action.cache_mb_freed > 2  # 21 bodies of 100 KB, measured by the store
    assert ran == ["mine"]  # the critical cleanup is not run by an emergency
    names = [cleanup.name for cleanup in action.cleanups]
    assert names[0] == "mine"
    assert "precious" not in names
    assert any(name.startswith("stdlib:re") for name in names)
    assert all(cleanup.ok for cleanup in action.cleanups)
    result = action.as_dict()
    check_measured(result, "emergency", "critical")
    assert [c["name"] for c in result["actions"]["cleanups"]] == names


# --- by hand ---------------------------------------------------------------------------------


def test_optimize_and_emergency_by_hand_return_measured_results(make: Make) -> None:
    optimizer, client = make(body_app(), **NO_PRESSURE, cache_max_mb=1024)
    for number in range(10):
        get(client, f"/page/{number}")
    assert len(optimizer.cache) == 10

    optimized = optimizer.optimize()
    check_measured(optimized, "optimize", "manual")
    assert optimized["actions"]["cache_items_freed"] == 3  # cache_evict_fraction 0.3, LRU
    assert len(optimizer.cache) == 7

    ran: list[str] = []
    optimizer.cleanups.register("mine", lambda: ran.append("mine"))
    emergency = optimizer.governor.emergency()
    check_measured(emergency, "emergency", "manual")
    assert emergency["actions"]["cache_items_freed"] == 7
    assert len(optimizer.cache) == 0
    assert ran == ["mine"]
    assert emergency["actions"]["cleanups"][0]["name"] == "mine"

    assert kinds(optimizer) == ["optimize", "emergency"]
    assert json.loads(json.dumps(optimizer.governor.stats()))["last_actions"] == [
        optimized,
        emergency,
    ]


class ListCache:
    """A cache with only what the governor may call (GovernedCache), recording the calls."""

    def __init__(self, items: int, item_bytes: int) -> None:
        self.items, self.item_bytes = items, item_bytes
        self.calls: list[str] = []

    @property
    def bytes(self) -> int:
        return self.items * self.item_bytes

    def __len__(self) -> int:
        return self.items

    def sweep(self) -> int:
        self.calls.append("sweep")
        return 0

    def evict(self) -> int:
        self.calls.append("evict")
        self.items -= 1
        return 1

    def clear_local(self) -> tuple[int, int]:
        self.calls.append("clear")
        dropped = self.items, self.bytes
        self.items = 0
        return dropped

    def after_fork(self) -> None:
        self.calls.append("after_fork")


def test_the_governor_trims_any_cache_that_offers_the_narrow_interface() -> None:
    settings = Settings(**NO_PRESSURE, monitor_interval_s=0, gc_freeze=False)
    cache = ListCache(items=4, item_bytes=1 << 20)
    governor = Governor(settings, cache, Cleanups())
    try:
        optimized = governor.optimize("test")
        assert cache.calls == ["sweep", "evict"]
        assert optimized["actions"]["cache_items_freed"] == 1
        assert optimized["actions"]["cache_mb_freed"] == pytest.approx(1.0)
        emergency = governor.emergency("test")
        assert cache.calls[-1] == "clear"
        assert emergency["actions"]["cache_items_freed"] == 3
        assert emergency["actions"]["cache_mb_freed"] == pytest.approx(3.0)
    finally:
        governor.stop()


def test_an_emergency_that_frees_the_cache_reports_the_rss_it_gave_back(make: Make) -> None:
    require_malloc_trim()
    optimizer, client = make(
        body_app(1 << 20), **NO_PRESSURE, cache_max_mb=1024, cache_item_max_mb=2
    )
    for number in range(40):
        assert get(client, f"/big/{number}").status_code == 200
    cache_mb = optimizer.cache.bytes / (1 << 20)
    assert cache_mb > 39

    result = optimizer.governor.emergency()

    check_measured(result, "emergency", "manual")
    assert result["actions"]["cache_mb_freed"] == pytest.approx(cache_mb, abs=0.01)
    # 40 MB of bodies dropped and the heap trimmed: most of it is measured back.
    assert result["improvement"]["mb_freed"] >= cache_mb * 0.5
    assert result["improvement"]["percent_freed"] > 0


def test_nothing_freed_is_reported_as_zero_not_negative(make: Make) -> None:
    optimizer, _client = make(body_app(), **NO_PRESSURE)
    kept: list[bytes] = []
    # A cleanup that allocates instead of freeing: RSS is higher after the emergency.
    optimizer.cleanups.register("grows", lambda: kept.append(os.urandom(64 << 20)))

    result = optimizer.governor.emergency()

    check_measured(result, "emergency", "manual")
    assert result["after"]["rss_mb"] > result["before"]["rss_mb"] + 32
    assert result["improvement"] == {"mb_freed": 0.0, "used_mb_freed": 0.0, "percent_freed": 0.0}
    assert optimizer.governor.history[-1].rss_mb_freed == 0.0
    kept.clear()


@pytest.mark.slow
def test_history_is_bounded_and_every_entry_is_timed(make: Make) -> None:
    optimizer, _client = make(body_app(), **NO_PRESSURE)
    history = optimizer.governor.history
    assert history.maxlen is not None
    assert 0 < history.maxlen <= 1000

    results = [optimizer.optimize() for _ in range(history.maxlen + 5)]

    assert len(history) == history.maxlen
    assert [action.as_dict() for action in history] == results[5:]  # the oldest dropped
    assert all(action.duration_ms > 0 for action in history)
    assert all("duration_ms" in result for result in results)
    assert len(optimizer.governor.stats()["last_actions"]) == 5


# --- alert lines -----------------------------------------------------------------------------


def test_one_alert_line_per_status_transition_not_per_tick(
    make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="wsgi_memopt")
    # Thresholds at 100%: a critical *status* (> 85%) without any action that logs as well.
    optimizer, client = make(
        body_app(1000),
        **NO_PRESSURE,
        max_memory_percent=100,
        critical_percent=100,
        restart_percent=100,
        sample_interval_s=0,
    )
    governor = optimizer.governor

    def ticks(count: int) -> str:
        for number in range(count):
            assert get(client, f"/page/{number}").status_code == 200
        assert governor.last_sample is not None
        return governor.last_sample.status

    assert ticks(5) == "excellent"
    governor.sampler = ProcessSampler(rss_mb() / 0.92)  # ~92%: critical, under 100
    assert ticks(5) == "critical"
    governor.sampler = ProcessSampler(10_000)
    assert ticks(5) == "excellent"

    assert kinds(optimizer) == []  # no action: the lines are alerts only
    lines = [
        r for r in caplog.records if r.name == "wsgi_memopt" and "[MEMORY] memory" in r.message
    ]
    assert len(lines) == 2, [r.message for r in lines]
    alert, recovered = lines
    assert alert.levelno == logging.ERROR
    assert "[MEMORY] memory critical" in alert.message
    assert recovered.levelno == logging.INFO
    assert "[MEMORY] memory excellent" in recovered.message
    assert "recovered" in recovered.message
    assert len(governor.samples) >= 15  # every tick sampled; only transitions were logged


# --- GC scheduling in "between" mode, with traffic -------------------------------------------


def young_collections(scheduler: GCScheduler) -> int:
    """The scheduler's collections of gen 0 or 1 (gen 1 when its count passed); none of gen 2."""
    collections: list[int] = scheduler.stats()["collections"]  # type: ignore[assignment]
    assert collections[2] == 0
    return collections[0] + collections[1]


def test_between_mode_keeps_full_collections_out_of_the_app_and_collects_after_close(
    make: Make,
) -> None:
    seen: dict[str, tuple[bool, tuple[int, int, int]]] = {}
    inner = body_app(1000)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        path = environ["PATH_INFO"]
        seen[path] = (gc.isenabled(), gc.get_threshold())
        garbage = None
        for _ in range(2_000):  # cyclic garbage past the gen-0 threshold, under the budget
            cycle: list[Any] = [garbage]
            cycle.append(cycle)
            garbage = None
        return inner(environ, start_response)  # type: ignore[return-value]

    gc.set_threshold(700, 10, 10)  # CPython's defaults, whatever ran before
    optimizer, client = make(app, **NO_PRESSURE, gc_mode="between")
    scheduler = optimizer.governor.gc

    assert get(client, "/one").status_code == 200
    # On, with young collections only past the budget and never a full one.
    assert seen["/one"] == (True, (REQUEST_BUDGET, 10, 2**31 - 1))
    assert gc.get_count()[0] < 700  # collected after close, with nothing in flight
    assert young_collections(scheduler) == 1

    held = Open(optimizer, "/held")
    assert get(client, "/two").status_code == 200
    assert gc.get_count()[0] > 700  # still a request in flight: not collected
    assert young_collections(scheduler) == 1
    held.close()
    assert gc.get_count()[0] < 700
    assert young_collections(scheduler) == 2
    assert optimizer.governor.in_flight == 0
    optimizer.governor.stop()
    assert gc.get_threshold() == (700, 10, 10)


def test_constantly_overlapping_requests_get_young_collections_and_never_a_full_one(
    make: Make,
) -> None:
    threads_count = 8
    counts_seen: list[int] = []
    seen_lock = threading.Lock()
    inner = body_app(1000)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        garbage = None
        for _ in range(1000):  # cyclic garbage: containers only a collection frees
            cycle: list[Any] = [garbage]
            cycle.append(cycle)
            garbage = None
        time.sleep(0.005)  # long enough that the threads' requests overlap
        with seen_lock:
            counts_seen.append(gc.get_count()[0])
        return inner(environ, start_response)  # type: ignore[return-value]

    optimizer, _client = make(app, **NO_PRESSURE, gc_mode="between")

    def collections(generation: int) -> int:
        return int(gc.get_stats()[generation]["collections"])

    # One request stays in flight all along: no moment is ever "between requests".
    holder = Open(optimizer, "/held")
    young, full = collections(0), collections(2)
    deadline = time.monotonic() + 20  # a budget's worth of garbage takes ~64 requests
    done = threading.Event()
    errors: list[BaseException] = []

    def decide() -> None:
        if collections(0) >= young + 2 or time.monotonic() > deadline:
            done.set()

    barrier = threading.Barrier(threads_count, action=decide)

    def worker(number: int) -> None:
        try:
            for round_number in range(10_000):
                barrier.wait(timeout=30)
                if done.is_set():
                    return
                status, body = call(optimizer, f"/work/{number}/{round_number}")
                assert status == "200 OK"
                assert body.startswith(b"/work/")
        except BaseException as error:
            errors.append(error)
            barrier.abort()

    run_threads(threads_count, worker, timeout_s=60)
    assert errors == []

    assert collections(0) >= young + 2  # CPython's own, at the budget
    assert collections(2) == full
    assert max(counts_seen) <= REQUEST_BUDGET + threads_count * 1000
    assert optimizer.governor.in_flight == 1
    holder.close()
    assert optimizer.governor.in_flight == 0


def drop_cycles(count: int) -> None:
    """Make and drop ``count`` self-referencing lists: garbage only a collection frees."""
    for _ in range(count):
        cycle: list[Any] = []
        cycle.append(cycle)


def test_a_process_never_quiet_gets_its_full_collection_when_it_is_overdue(make: Make) -> None:
    # Cycles that reach the oldest generation are freed only by a full collection; with a
    # request always in flight, it comes once twice its interval has passed without one.
    optimizer, client = make(body_app(1000), **NO_PRESSURE, gc_mode="between")
    get(client, "/start")  # the schedule in force
    scheduler = optimizer.governor.gc
    holder = Open(optimizer, "/held")  # no moment is ever "between requests" from here
    full = int(gc.get_stats()[2]["collections"])

    drop_cycles(2000)  # past the gen-0 threshold: a collection is due at the next close
    get(client, "/not-overdue")
    assert int(gc.get_stats()[2]["collections"]) == full

    scheduler.full_interval_s = 0.0  # overdue from now on
    drop_cycles(2000)
    get(client, "/overdue")

    assert int(gc.get_stats()[2]["collections"]) == full + 1
    assert scheduler.stats()["last"]["reason"] == "interval"
    holder.close()


# --- one tick at a time; a tick never fails a request ----------------------------------------


class ProbeSampler:
    """The real sampler, with a probe counting how many threads are inside ``sample()``."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.source = real.source
        self.lock = threading.Lock()
        self.active = 0
        self.max_active = 0
        self.calls = 0
        self.threads: set[int] = set()

    def sample(self) -> MemorySample:
        with self.lock:
            self.active += 1
            self.calls += 1
            self.max_active = max(self.max_active, self.active)
            self.threads.add(threading.get_ident())
        try:
            time.sleep(0.002)  # widen the window another tick would have to overlap
            sample: MemorySample = self.real.sample()
            return sample
        finally:
            with self.lock:
                self.active -= 1


def test_no_tick_runs_concurrently_with_another(make: Make) -> None:
    optimizer, _client = make(body_app(1000), **NO_PRESSURE, sample_interval_s=0)
    probe = ProbeSampler(optimizer.governor.sampler)
    optimizer.governor.sampler = probe
    threads_count, rounds = 16, 20
    barrier = threading.Barrier(threads_count)
    errors: list[BaseException] = []

    def worker(number: int) -> None:
        try:
            for round_number in range(rounds):
                request = Open(optimizer, f"/t/{number}/{round_number}")
                assert request.status == "200 OK"
                barrier.wait(timeout=30)
                request.close()  # every thread closes at once: every one may tick
        except BaseException as error:
            errors.append(error)
            barrier.abort()

    run_threads(threads_count, worker, timeout_s=60)
    assert errors == []

    assert probe.max_active == 1
    assert probe.calls >= rounds  # each round ticked at least once
    assert len(probe.threads) > 1  # ticks did come from several threads
    assert optimizer.governor.in_flight == 0


class BrokenSampler:
    """A sampler whose every measurement fails."""

    source = "process"

    def __init__(self) -> None:
        self.calls = 0

    def sample(self) -> MemorySample:
        self.calls += 1
        raise OSError("the memory probe is gone")


def test_a_failing_tick_never_fails_a_request(make: Make, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="wsgi_memopt")
    optimizer, client = make(body_app(1000), **NO_PRESSURE, sample_interval_s=0)
    broken = BrokenSampler()
    optimizer.governor.sampler = broken

    for path in ("/a", "/a", "/b", "/a", "/c", "/b"):  # misses and hits alike
        response = get(client, path)
        assert response.status_code == 200
        assert response.get_data() == path.encode() + b"." * (1000 - len(path))
    assert optimizer.cache.stats()["hits"] >= 3

    # The first request's start measured the RSS baseline (and failed, and was logged);
    # then every closed response ticked, and each tick failed.
    assert broken.calls == 7
    failures = [r for r in caplog.records if "between-request tick failed" in r.message]
    assert len(failures) == 6
    assert any("could not measure memory at start" in r.message for r in caplog.records)
    assert optimizer.governor.in_flight == 0
    assert gc.isenabled()
    # The tick lock was released each time: a manual action can still run (and fails alike).
    with pytest.raises(OSError, match="probe is gone"):
        optimizer.governor.optimize()


def test_cleanups_that_raise_are_reported_not_raised(make: Make) -> None:
    optimizer, client = make(
        body_app(1000),
        pressure_source="process",
        process_limit_mb=1,  # every tick is an emergency
        trim_threshold_mb=0,
        sample_interval_s=0,
        restart_percent=100,
        restart_after_s=3600,
    )
    ran: list[str] = []

    def wedged() -> None:
        raise RuntimeError("cache is wedged")

    optimizer.cleanups.register("wedged", wedged)
    optimizer.cleanups.register("after", lambda: ran.append("after"))

    response = get(client, "/page")
    assert response.status_code == 200
    assert response.get_data().startswith(b"/page")
    assert kinds(optimizer) == ["emergency"]
    assert ran == ["after"]  # the one after the failing cleanup still ran
    reported = {c.name: c for c in optimizer.governor.history[-1].cleanups}
    assert reported["wedged"].ok is False
    assert reported["wedged"].error == "RuntimeError: cache is wedged"
    assert reported["after"].ok is True

    result = optimizer.governor.emergency()  # by hand: the same, as a dict
    wedged_result = next(c for c in result["actions"]["cleanups"] if c["name"] == "wedged")
    assert wedged_result["ok"] is False
    assert wedged_result["error"] == "RuntimeError: cache is wedged"
    assert ran == ["after", "after"]


# --- the background monitor ------------------------------------------------------------------


def test_the_monitor_samples_without_traffic_and_stops(make: Make) -> None:
    optimizer, client = make(
        body_app(1000), **NO_PRESSURE, monitor_interval_s=0.05, sample_interval_s=0
    )
    governor = optimizer.governor
    assert governor._monitor is None  # started by the first request, not before

    assert get(client, "/").status_code == 200
    monitor = governor._monitor
    assert monitor is not None
    thread = monitor._thread
    assert thread.is_alive()
    assert thread.daemon
    after_request = len(governor.samples)

    # No request from here on: only the monitor can add samples.
    assert wait_for(lambda: len(governor.samples) >= after_request + 2), (
        f"no background sample within {POLL_S} s"
    )

    governor.stop()
    assert not thread.is_alive()
    assert governor._monitor is None


# --- fork ------------------------------------------------------------------------------------

_FORK_SCRIPT = """
optimizer = MemoryOptimizer(
    ok_app, monitor_interval_s=0.05, sample_interval_s=0, gc_freeze=False, trim_threshold_mb=0,
    pressure_source="process", process_limit_mb=10_000_000,
)
governor = optimizer.governor

def start(path):
    statuses = []
    response = optimizer(
        EnvironBuilder(path=path).get_environ(), lambda s, h, e=None: statuses.append(s)
    )
    assert b"".join(response) == b"ok" and statuses == ["200 OK"]
    return response

assert call(optimizer, "/first") == OK
assert governor._started and governor._monitor._thread.is_alive()
held = start("/held")  # in flight in the parent when it forks
assert governor.in_flight == 1

def child():
    if governor._started:
        return 10
    if governor.in_flight != 0:
        return 11
    if governor._monitor is not None:
        return 12
    assert call(optimizer, "/child") == OK
    if not governor._started:
        return 13
    monitor = governor._monitor
    if monitor is None or not monitor._thread.is_alive():
        return 14
    if governor.in_flight != 0:
        return 15
    count = len(governor.samples)
    deadline = time.monotonic() + 5
    while len(governor.samples) < count + 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    if len(governor.samples) < count + 2:
        return 16  # the child's monitor does not sample
    governor.stop()
    return 0

pid = fork_child(child)
child_code = exit_code(pid)
parent_in_flight = governor.in_flight
held.close()
print(json.dumps({
    "child": child_code,
    "parent_in_flight_at_fork": parent_in_flight,
    "parent_in_flight_after": governor.in_flight,
    "parent_monitor_alive": governor._monitor._thread.is_alive(),
}))
governor.stop()
"""


def test_a_forked_child_starts_afresh_on_its_first_request() -> None:
    result = run_script(_FORK_SCRIPT)
    assert result == {
        "child": 0,
        "parent_in_flight_at_fork": 1,
        "parent_in_flight_after": 0,
        "parent_monitor_alive": True,
    }


_FORK_DURING_EMERGENCY_SCRIPT = """
# Every tick is an emergency (1 MB budget): the monitor runs them while the process idles,
# even after one that freed nothing (which the governor would otherwise not repeat).
import wsgi_memopt.memory.governor
wsgi_memopt.memory.governor._FUTILE_RETRY_S = 0.0
wsgi_memopt.memory.governor._ACTION_BACKOFF_S = 0.0
optimizer = MemoryOptimizer(
    ok_app, monitor_interval_s=0.05, sample_interval_s=0, gc_freeze=False, trim_threshold_mb=0,
    pressure_source="process", process_limit_mb=1, restart_percent=100,
    restart_after_s=3600,
)

inside, release = threading.Event(), threading.Event()

class HoldTheMonitorInItsCollection(logging.Handler):
    # The monitor thread logs its full collection while it holds the scheduler's lock:
    # keep it there until the process has forked.
    def emit(self, record):
        if (
            threading.current_thread().name == "wsgi-memopt-monitor"
            and record.getMessage().startswith("[GC] gen 2")
        ):
            inside.set()
            release.wait(30)

logger = logging.getLogger("wsgi_memopt")
logger.setLevel(logging.DEBUG)
logger.addHandler(HoldTheMonitorInItsCollection())

call(optimizer, "/first")  # starts the monitor
assert inside.wait(30), "the monitor ran no emergency"

def child():
    served = []
    thread = threading.Thread(
        target=lambda: served.append(call(optimizer, "/child")[0]), daemon=True
    )
    thread.start()
    thread.join(10)
    return 0 if served == ["200 OK"] else 3  # 3: the child's first request hangs

pid = fork_child(child)
release.set()
print(json.dumps({"child": exit_code(pid)}))
optimizer.governor.stop()
"""


def test_a_child_forked_during_a_monitor_emergency_still_serves() -> None:
    # Only the forking thread survives a fork: the lock the monitor held while collecting must
    # not stay held in the child (it hung the child's first close() in collect_full before
    # gc_schedule made its locks afresh after a fork).
    assert run_script(_FORK_DURING_EMERGENCY_SCRIPT) == {"child": 0}


_FORK_AFTER_RESTART_NEEDED_SCRIPT = """
optimizer = MemoryOptimizer(
    ok_app, monitor_interval_s=0, sample_interval_s=0, gc_freeze=False, trim_threshold_mb=0,
    pressure_source="process", process_limit_mb=1, max_memory_percent=50,
    critical_percent=60, restart_percent=70, restart_after_s=0, min_worker_lifetime_s=0,
)
governor = optimizer.governor
reasons = []
governor.on_recycle_needed = reasons.append

call(optimizer, "/parent")
assert governor.restart_reason and len(reasons) == 1

def child():
    reasons.clear()
    inherited = governor.restart_reason
    call(optimizer, "/child")  # the child's own tick: still far above restart_percent
    if inherited is not None:
        return 20  # the child says it needs a restart before it measured anything
    if not governor.restart_reason or len(reasons) != 1:
        return 21  # the child's own need was never reported to its hook
    return 0

print(json.dumps({"child": exit_code(fork_child(child))}))
"""


def test_a_forked_child_does_not_inherit_the_parents_restart_reason() -> None:
    assert run_script(_FORK_AFTER_RESTART_NEEDED_SCRIPT) == {"child": 0}


# --- recycle without a master ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("uwsgi_module", "expected"),
    [
        pytest.param(types.SimpleNamespace(masterpid=lambda: 4242), "uwsgi", id="uwsgi-master"),
        pytest.param(types.SimpleNamespace(masterpid=lambda: 0), None, id="uwsgi-no-master"),
        pytest.param(types.SimpleNamespace(), None, id="a-module-named-uwsgi"),
    ],
)
def test_only_a_uwsgi_master_counts_as_one_that_respawns(
    monkeypatch: pytest.MonkeyPatch, uwsgi_module: object, expected: str | None
) -> None:
    # Without --master a worker's SIGHUP would end the server: nothing respawns it.
    monkeypatch.setitem(sys.modules, "uwsgi", uwsgi_module)
    assert serving_master() == expected


def test_recycle_needed_without_a_master_is_reported_once_and_the_process_lives_on(
    make: Make,
) -> None:
    assert serving_master() is None  # no gunicorn or uWSGI master in this process
    optimizer, client = make(
        body_app(1000),
        pressure_source="process",
        process_limit_mb=1,  # far above restart_percent
        trim_threshold_mb=0,
        sample_interval_s=0,
        max_memory_percent=50,
        critical_percent=60,
        restart_percent=70,
        restart_after_s=0,
        min_worker_lifetime_s=0,
    )
    governor = optimizer.governor
    reasons: list[str] = []
    governor.on_recycle_needed = reasons.append
    assert governor.restart_reason is None

    assert get(client, "/one").status_code == 200  # its tick finds the need

    assert governor.restart_reason
    assert "70" in governor.restart_reason
    assert reasons == [governor.restart_reason]
    assert governor.stats()["restart_reason"] == governor.restart_reason
    recycles = [action for action in governor.history if action.kind == "recycle"]
    assert len(recycles) == 1
    assert recycles[0].reason == governor.restart_reason

    for path in ("/two", "/three"):  # still above: still reported once, still serving
        response = get(client, path)
        assert response.status_code == 200
        assert response.get_data().startswith(path.encode())
    assert len(reasons) == 1
    assert [action.kind for action in governor.history].count("recycle") == 1
    assert psutil.Process().is_running()


def test_a_failing_recycle_hook_is_logged_not_raised(
    make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="wsgi_memopt")
    optimizer, client = make(
        body_app(1000),
        pressure_source="process",
        process_limit_mb=1,
        trim_threshold_mb=0,
        sample_interval_s=0,
        restart_after_s=0,
        min_worker_lifetime_s=0,
    )

    def hook(reason: str) -> None:
        raise RuntimeError("the orchestrator is unreachable")

    optimizer.governor.on_recycle_needed = hook

    response = get(client, "/page")

    assert response.status_code == 200
    assert optimizer.governor.restart_reason
    assert any("on_recycle_needed hook failed" in r.message for r in caplog.records)


# --- a burst's heap given back between requests -----------------------------------------------

_BURST_SCRIPT = """
import psutil

process = psutil.Process()

def rss_mb():
    return process.memory_info().rss / 2**20

kept = []
figures = {}

def app(environ, start_response):
    if environ["PATH_INFO"] == "/burst":
        burst = [bytes(1024) for _ in range(300_000)]  # ~300 MB of separate glibc chunks
        # Small objects that live on, allocated above the burst (over pymalloc's 512-byte
        # limit, so from glibc's heap too): the heap top cannot shrink past them.
        kept.extend(bytes(600) for _ in range(500))
        figures["peak_mb"] = rss_mb()
        del burst
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]

optimizer = MemoryOptimizer(
    app,
    trim_threshold_mb=float(sys.argv[1]),
    sample_interval_s=0,
    monitor_interval_s=0,
    gc_freeze=False,
    pressure_source="host",
    max_memory_percent=100,
    critical_percent=100,
    restart_percent=100,
)

assert call(optimizer, "/warm") == OK
assert call(optimizer, "/warm") == OK
figures["before_mb"] = rss_mb()
assert call(optimizer, "/burst") == OK
figures["after_close_mb"] = rss_mb()  # the response is closed; no next request yet
figures["actions"] = [
    {"kind": a.kind, "trimmed": a.trimmed} for a in optimizer.governor.history
]
print(json.dumps(figures))
"""


def burst_figures(trim_threshold_mb: float) -> dict[str, Any]:
    figures = run_script(_BURST_SCRIPT, str(trim_threshold_mb))
    grown = figures["peak_mb"] - figures["before_mb"]
    back = figures["peak_mb"] - figures["after_close_mb"]
    assert grown > 250, figures  # the burst really grew RSS by ~300 MB
    figures["grown_mb"], figures["back_mb"] = grown, back
    figures["back_fraction"] = back / grown
    return figures


@pytest.mark.slow
def test_a_freed_burst_is_back_before_the_next_request() -> None:
    require_malloc_trim()
    figures = burst_figures(trim_threshold_mb=32)
    assert figures["back_fraction"] >= 0.95, figures
    assert figures["actions"] == [{"kind": "trim", "trimmed": True}], figures


@pytest.mark.slow
def test_without_the_trim_a_freed_burst_stays_resident() -> None:
    require_malloc_trim()
    figures = burst_figures(trim_threshold_mb=0)
    assert figures["back_fraction"] < 0.5, figures
    assert figures["actions"] == [], figures


def test_tracemalloc_frames_starts_tracing_at_the_first_request() -> None:
    script = """
import tracemalloc

optimizer = MemoryOptimizer(ok_app, tracemalloc_frames=5, monitor_interval_s=0, gc_freeze=False)
before = tracemalloc.is_tracing()
call(optimizer, "/")
print(json.dumps([before, tracemalloc.is_tracing(), tracemalloc.get_traceback_limit()]))
"""
    assert run_script(script) == [False, True, 5]


STEADY_CRITICAL: dict[str, Any] = {
    "pressure_source": "process",
    "max_memory_percent": 65,
    "critical_percent": 85,
    "restart_percent": 100,
    "sample_interval_s": 0,
    "trim_threshold_mb": 0,
}


def test_an_emergency_that_freed_nothing_is_not_repeated_at_that_level(make: Make) -> None:
    # Memory no cleanup lowers (a leak, native memory) must not cost an emergency (the cache,
    # full collections) again and again: once, then not at that level, even after the back-off.
    hand_back_freed_heap()
    optimizer, client = make(body_app(1000), process_limit_mb=rss_mb() / 0.88, **STEADY_CRITICAL)
    kept: list[bytes] = []
    # A cleanup that allocates instead of freeing: this emergency measurably frees nothing.
    optimizer.cleanups.register("grows", lambda: kept.append(os.urandom(4 << 20)))
    governor = optimizer.governor
    clock = [1000.0]
    governor.clock = lambda: clock[0]
    for number in range(10):
        assert get(client, f"/page/{number}").status_code == 200
    assert kinds(optimizer) == ["emergency"]
    assert governor.history[-1].percent_freed < 1.0
    assert governor.history[-1].as_dict()["improvement"]["mb_freed"] == 0.0

    clock[0] += 31.0  # past the back-off: still nothing
    assert get(client, "/page/later").status_code == 200
    assert kinds(optimizer) == ["emergency"]

    governor.sampler = ProcessSampler(10_000)  # memory falls below critical_percent...
    assert get(client, "/page/calm").status_code == 200
    governor.sampler = ProcessSampler(rss_mb() / 0.88)  # ...and comes back: tried again
    clock[0] += 31.0
    assert get(client, "/page/again").status_code == 200
    assert kinds(optimizer) == ["emergency", "emergency"]


def test_an_emergency_that_freed_memory_runs_again_after_the_back_off(make: Make) -> None:
    hand_back_freed_heap()
    optimizer, client = make(body_app(1000), process_limit_mb=rss_mb() / 0.88, **STEADY_CRITICAL)
    held: list[bytes] = []
    # What the app's own cache would hold: a few MB the cleanup gives back, refilled by the
    # next request (a rise of fewer points than the back-off's "rose since" allows).
    optimizer.cleanups.register("app cache", held.clear)
    governor = optimizer.governor
    clock = [1000.0]
    governor.clock = lambda: clock[0]

    def fill_and_get(path: str) -> None:
        held.append(os.urandom(4 << 20))
        assert get(client, path).status_code == 200

    fill_and_get("/one")
    assert kinds(optimizer) == ["emergency"]
    assert governor.history[-1].percent_freed >= 1.0
    fill_and_get("/two")  # within the back-off: not yet
    assert kinds(optimizer) == ["emergency"]
    clock[0] += 31.0
    fill_and_get("/three")
    assert kinds(optimizer) == ["emergency", "emergency"]


def test_a_cache_hit_samples_when_a_sample_is_due_and_only_then(make: Make) -> None:
    # Hits skip the governor's Python hooks while the next sample lies ahead; the first hit
    # after that closes through the hook that ticks.
    optimizer, client = make(body_app(100))
    governor = optimizer.governor
    get(client, "/p")
    samples = len(governor.samples)

    governor.next_tick = time.monotonic() + 3600.0  # no sample due
    assert get(client, "/p").headers["X-Cache"] == "HIT"
    assert len(governor.samples) == samples

    governor.next_tick = 0.0  # due now
    assert get(client, "/p").headers["X-Cache"] == "HIT"
    assert len(governor.samples) == samples + 1
    assert governor.next_tick > time.monotonic()  # and not again until the interval passed
    assert get(client, "/p").headers["X-Cache"] == "HIT"
    assert len(governor.samples) == samples + 1
    assert governor.in_flight == 0


# --- the forecast and the escalation: a leak is recycled before the limit ---------------------

# Only the recycle rules act here: no cleanup threshold is ever crossed, and no dwell time or
# lifetime would allow a recycle within the test.
FORECAST_ONLY: dict[str, Any] = {
    "pressure_source": "process",
    "max_memory_percent": 100,
    "critical_percent": 100,
    "restart_percent": 100,
    "restart_after_s": 3600,
    "min_worker_lifetime_s": 3600,
    "sample_interval_s": 0,
    "trim_threshold_mb": 0,
    "cache_enabled": False,
}
LEAK_REQUESTS = 200  # the most any leak below is served; each waits LEAK_PAUSE_S
LEAK_PAUSE_S = 0.05


def leaking_app(chunk_mb: float, kept: list[bytes]) -> Callable[..., Iterable[bytes]]:
    """An app that keeps ``chunk_mb`` of written memory per request, as a leak does."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        kept.append(b"x" * int(chunk_mb * (1 << 20)))
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]

    return app


def serve_until_restart_reason(client: Client, optimizer: MemoryOptimizer) -> list[float]:
    """Requests ``LEAK_PAUSE_S`` apart until a restart reason is reported (bounded); the
    memory percent each request's tick measured."""
    governor = optimizer.governor
    seen: list[float] = []
    for number in range(LEAK_REQUESTS):
        assert get(client, f"/leak/{number}").status_code == 200
        assert governor.last_sample is not None
        seen.append(governor.last_sample.memory_percent)
        if governor.restart_reason is not None:
            return seen
        time.sleep(LEAK_PAUSE_S)
    pytest.fail(f"no restart reason after {LEAK_REQUESTS} requests; percents {seen}")


def test_a_leak_forecast_to_reach_the_limit_is_recycled_before_it_and_before_its_lifetime(
    make: Make,
) -> None:
    kept: list[bytes] = []
    hand_back_freed_heap()
    optimizer, client = make(leaking_app(2, kept), process_limit_mb=rss_mb() + 200, **FORECAST_ONLY)

    seen = serve_until_restart_reason(client, optimizer)

    reason = optimizer.governor.restart_reason
    assert reason is not None
    assert reason.startswith("the limit is"), reason
    assert "MB/s" in reason, reason
    assert max(seen) < 100, seen  # before the limit, at well under a minute of age
    trend = optimizer.governor.forecast.trend
    assert trend is not None
    assert trend.seconds_to_limit <= 10  # forecast_lead_s, the default
    assert trend.rate_mb_s > 0
    stats = optimizer.memory_stats()["governor"]["forecast"]
    assert stats["rate_mb_per_s"] > 0
    assert stats["seconds_to_limit"] is not None


@pytest.mark.slow
def test_a_worker_recycles_for_a_forecast_only_once_it_would_give_back_enough(
    make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    # A recycle gives back what this worker grew since it started; less than 5% of the limit
    # means the pressure is not this worker's, and a fresh one would find the same. Here the
    # worker started holding 40 MB it then freed: the leak must first grow past that.
    caplog.set_level(logging.INFO, logger="wsgi_memopt")
    kept: list[bytes] = []
    hand_back_freed_heap()
    ballast = [b"x" * (40 << 20)]
    limit = rss_mb() + 10
    optimizer, client = make(leaking_app(0.5, kept), process_limit_mb=limit, **FORECAST_ONLY)
    assert get(client, "/start").status_code == 200  # the worker's start: ballast included
    ballast.clear()

    serve_until_restart_reason(client, optimizer)

    notes = [r.message for r in caplog.records if "not recycling it" in r.message]
    assert len(notes) == 1, notes  # said once, not at every sample
    assert f"must give back {0.05 * limit:.1f} MB" in notes[0]
    reason = optimizer.governor.restart_reason
    assert reason is not None
    assert reason.startswith("the limit is")
    assert len(kept) * 0.5 >= 40 + 0.05 * limit - 1  # regrown past the start, and more


def test_memory_that_does_not_grow_is_never_recycled_by_the_forecast(make: Make) -> None:
    optimizer, client = make(body_app(1000), process_limit_mb=10_000, **FORECAST_ONLY)
    for number in range(100):  # warm: the pages stored, the heap grown to what serving takes
        assert get(client, f"/flat/{number % 20}").status_code == 200
    hand_back_freed_heap()
    optimizer.governor.sampler = ProcessSampler(rss_mb() / 0.8)
    optimizer.governor.forecast = Forecast(optimizer.settings.forecast_window_s)  # afresh
    deadline = time.monotonic() + 2.0
    served = 0
    while time.monotonic() < deadline and served < 400:
        assert get(client, f"/flat/{served % 20}").status_code == 200
        served += 1
        time.sleep(0.005)

    trend = optimizer.governor.forecast.trend
    assert trend is not None  # measured, at 80% of the limit...
    assert trend.seconds_to_limit > 10  # ...and going nowhere
    assert optimizer.governor.restart_reason is None
    assert "recycle" not in kinds(optimizer)


def test_above_restart_percent_after_a_futile_emergency_recycles_without_the_dwell_time(
    make: Make,
) -> None:
    # The cleanups had their chance and freed nothing: waiting restart_after_s more would only
    # wait for the OOM killer.
    hand_back_freed_heap()
    kept: list[bytes] = []
    optimizer, client = make(
        body_app(1000),
        pressure_source="process",
        process_limit_mb=rss_mb() / 0.95,
        max_memory_percent=65,
        critical_percent=85,
        restart_percent=90,
        restart_after_s=3600,
        min_worker_lifetime_s=0,
        forecast_lead_s=0,  # the escalation alone
        sample_interval_s=0,
        trim_threshold_mb=0,
    )
    optimizer.cleanups.register("grows", lambda: kept.append(os.urandom(16 << 20)))

    assert get(client, "/one").status_code == 200

    assert kinds(optimizer) == ["emergency", "recycle"]
    emergency = optimizer.governor.history[0]
    assert emergency.percent_freed < 1.0
    reason = optimizer.governor.restart_reason
    assert reason is not None
    assert "the emergency cleanup freed nothing" in reason
    assert "above 90%" in reason
