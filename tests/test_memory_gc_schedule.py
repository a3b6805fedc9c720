"""GC scheduling: young collections inside a request only past its budget, never a full one;
young collections between requests, a full one by interval, freeze once; and a long request
building cyclic garbage stays within a few MB of CPython's own collector.

The collector's state is process-wide: every test gets it back as it found it (enabled, the
original threshold, nothing frozen), and the freeze and long-request tests run in subprocesses
of their own.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from helpers.clock import FakeClock
from helpers.wsgi import run_threads

from wsgi_memopt.memory import gc_schedule
from wsgi_memopt.memory.gc_schedule import REQUEST_BUDGET, Collection, GCScheduler

NEVER = 2**31 - 1  # the largest C int: a threshold CPython's counts never pass


@pytest.fixture(autouse=True)
def _restore_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.enable()
    gc.set_threshold(*threshold)
    gc.unfreeze()


class Node:
    """A container with no free list: each one made adds exactly one to the gen-0 count."""

    __slots__ = ("ref",)

    def __init__(self) -> None:
        self.ref = self


def make_garbage_cycles(n: int) -> None:
    """Drop ``n`` self-referencing objects: garbage only a collection frees; gen-0 count +``n``."""
    for _ in range(n):
        Node()


def past_gen0() -> int:
    """Enough new containers to push the gen-0 count past CPython's gen-0 threshold."""
    return 700 + 100


def collections_by_cpython() -> list[int]:
    """Collections of each generation since the interpreter started, whoever ran them."""
    return [generation["collections"] for generation in gc.get_stats()]


def started(**kwargs: Any) -> GCScheduler:
    kwargs.setdefault("freeze", False)  # gc.freeze is process-wide: only in a subprocess
    kwargs.setdefault("threshold", (700, 10, 10))  # CPython's defaults, whatever ran before
    scheduler = GCScheduler(**kwargs)
    scheduler.start()
    gc.collect()  # counts from zero, whatever the test process did before
    return scheduler


def collect_if_due(scheduler: GCScheduler) -> Collection | None:
    """What the governor does after a response with nothing else in flight."""
    return scheduler.collect_between() if scheduler.collection_due() else None


# -- between: inside a request, young collections past the budget and never a full one


def test_start_puts_the_budget_in_force_and_leaves_the_collector_on() -> None:
    started()
    assert gc.get_threshold() == (REQUEST_BUDGET, 10, NEVER)
    assert gc.isenabled()


def test_the_collector_switch_is_the_apps() -> None:
    gc.disable()  # an app that turned automatic collection off on purpose
    scheduler = started()
    assert not gc.isenabled()
    make_garbage_cycles(past_gen0())
    assert collect_if_due(scheduler) is not None  # between requests all the same
    assert not gc.isenabled()


def test_young_collections_run_inside_a_request_only_past_the_budget() -> None:
    started(request_budget=5_000)
    before = collections_by_cpython()
    make_garbage_cycles(4_500)  # past the gen-0 threshold, not the budget
    assert collections_by_cpython() == before
    assert gc.get_count()[0] >= 4_500
    make_garbage_cycles(1_000)
    after = collections_by_cpython()
    assert after[0] + after[1] > before[0] + before[1]  # CPython's own, inside the "request"
    assert gc.get_count()[0] < 1_000


@pytest.mark.parametrize("mode", ["between", "auto"])
def test_cpython_never_starts_a_full_collection_under_between(mode: str) -> None:
    started(mode=mode, threshold=(100, 2, 2), request_budget=200)
    # CPython starts a full collection once the survivors of young ones exceed a quarter of
    # the old generation: as many as the whole heap holds are more than enough.
    survivors = len(gc.get_objects())
    before = collections_by_cpython()
    kept = [Node() for _ in range(survivors)]
    after = collections_by_cpython()
    assert len(kept) == survivors
    assert after[0] > before[0]
    assert after[1] > before[1]
    if mode == "between":
        assert after[2] == before[2]
    else:
        assert after[2] > before[2]  # CPython's own schedule, as it comes


def test_a_gen0_threshold_of_0_keeps_automatic_collection_off() -> None:
    scheduler = started(threshold=(0, 10, 10))
    assert gc.get_threshold() == (0, 10, NEVER)
    make_garbage_cycles(past_gen0())
    assert not scheduler.collection_due()


# -- between: young collections between requests


def test_a_collection_is_due_past_the_gen0_threshold_and_collects_the_young() -> None:
    scheduler = started()
    make_garbage_cycles(past_gen0())
    assert scheduler.collection_due()
    collection = scheduler.collect_between()
    assert collection is not None
    assert (collection.generation, collection.reason) == (0, "threshold")
    assert collection.collected >= past_gen0() - 100
    assert collection.duration_ms > 0  # it collected hundreds of cycles: that takes time
    assert gc.get_count()[0] < 100
    assert not scheduler.collection_due()
    assert gc.isenabled()


def test_below_the_gen0_threshold_nothing_is_due_or_collected() -> None:
    scheduler = started()
    make_garbage_cycles(10)
    assert not scheduler.collection_due()
    assert scheduler.collect_between() is None
    assert scheduler.stats()["collections"] == [0, 0, 0]


def test_gen_1_is_collected_when_its_count_passed_its_threshold() -> None:
    scheduler = started(threshold=(100, 2, 1000))
    generations = []
    for _ in range(4):
        make_garbage_cycles(150)
        collection = collect_if_due(scheduler)
        assert collection is not None
        generations.append(collection.generation)
    # Each gen-0 collection adds one to count[1]; the fourth finds it past 2.
    assert generations == [0, 0, 0, 1]
    assert scheduler.stats()["collections"] == [3, 1, 0]


def test_collect_between_skips_while_another_thread_collects() -> None:
    scheduler = started()
    make_garbage_cycles(past_gen0())
    with scheduler._lock:  # another thread is collecting
        assert scheduler.collection_due()
        assert scheduler.collect_between() is None
    assert scheduler.collect_between() is not None


def test_sixteen_threads_finishing_together_collect_one_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scheduler = started()
    running = 0
    concurrent: list[int] = []
    real_collect = gc.collect

    def collect(generation: int = 2) -> int:
        nonlocal running
        running += 1
        concurrent.append(running)
        try:
            return real_collect(generation)
        finally:
            running -= 1

    monkeypatch.setattr(gc_schedule.gc, "collect", collect)
    made: list[Collection] = []
    barrier = threading.Barrier(16)

    def worker() -> None:
        barrier.wait()
        for _ in range(50):
            make_garbage_cycles(100)
            collection = collect_if_due(scheduler)
            if collection is not None:
                made.append(collection)

    run_threads(16, lambda _: worker(), timeout_s=30)

    assert max(concurrent) == 1  # one collection at a time
    # 80k containers past a 700 threshold: about 100 collections, some lost to skips.
    assert len(made) >= 10
    assert {c.reason for c in made} == {"threshold"}
    assert {c.generation for c in made} <= {0, 1}
    stats = scheduler.stats()
    assert stats["collections"] == [
        sum(c.generation == 0 for c in made),
        sum(c.generation == 1 for c in made),
        0,
    ]


# -- full collections


def test_full_collection_between_requests_after_full_interval_s() -> None:
    clock = FakeClock()
    scheduler = started(full_interval_s=300.0, clock=clock)

    def request(at: float) -> Collection | None:
        clock.now = at
        make_garbage_cycles(past_gen0())
        return collect_if_due(scheduler)

    first = request(10.0)
    assert first is not None
    assert (first.generation, first.reason) == (0, "threshold")
    full = request(300.0)
    assert full is not None
    assert (full.generation, full.reason) == (2, "interval")
    after = request(301.0)  # the interval counts from the last full collection
    assert after is not None
    assert after.generation == 0


@pytest.mark.parametrize("mode", ["between", "auto"])
def test_collect_full_collects_everything_and_restarts_the_interval(mode: str) -> None:
    clock = FakeClock()
    scheduler = started(mode=mode, full_interval_s=300.0, clock=clock)
    make_garbage_cycles(50)
    clock.now = 200.0
    collection = scheduler.collect_full()
    assert (collection.generation, collection.reason) == (2, "pressure")
    assert collection.collected >= 50
    assert scheduler.collect_full("forced").reason == "forced"
    assert scheduler.stats()["collections"] == [0, 0, 2]
    clock.now = 499.0  # 499 s after start(), 299 s after the last full collection
    make_garbage_cycles(past_gen0())
    young = collect_if_due(scheduler)
    if mode == "between":
        assert young is not None
        assert young.generation == 0
    else:
        assert young is None


# -- the long request: one that builds and drops reference cycles for a while

LONG_REQUEST_SCRIPT = textwrap.dedent(
    """
    import gc, json, sys, threading
    import psutil
    from werkzeug.test import EnvironBuilder
    from wsgi_memopt import MemoryOptimizer

    class Row:  # an ORM-like row and its child, referring to each other
        def __init__(self, ident, parent=None):
            self.id, self.name, self.parent, self.child = ident, "row", parent, None

    def app(environ, start_response):
        for i in range(int(environ["QUERY_STRING"])):
            parent = Row(i)
            parent.child = Row(i, parent)  # garbage once the next one is built
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"done"]

    optimizer = MemoryOptimizer(
        app, gc_mode=sys.argv[1], cache_enabled=False, monitor_interval_s=0
    )

    def serve(cycles):
        environ = EnvironBuilder(path="/", query_string=str(cycles)).get_environ()
        response = optimizer(environ, lambda status, headers, exc_info=None: None)
        assert b"".join(response) == b"done"
        response.close()

    serve(1_000)  # the first request starts the governor
    process = psutil.Process()
    before = peak = process.memory_info().rss
    done = threading.Event()

    def sample():
        global peak
        while not done.wait(0.001):
            peak = max(peak, process.memory_info().rss)

    sampler = threading.Thread(target=sample)
    sampler.start()
    full_before = gc.get_stats()[2]["collections"]
    serve(int(sys.argv[2]))
    full_inside = gc.get_stats()[2]["collections"] - full_before
    done.set()
    sampler.join()
    peak = max(peak, process.memory_info().rss)
    print(json.dumps({"growth_mb": (peak - before) / 2**20, "full_inside": full_inside}))
    """
)
LONG_REQUEST_CYCLES = 500_000  # a million containers, under a second


def long_request(gc_mode: str) -> dict[str, Any]:
    """The long request served through the middleware in a fresh process: its peak RSS
    growth (sampled every ms) and the full collections CPython started inside it."""
    result = subprocess.run(
        [sys.executable, "-c", LONG_REQUEST_SCRIPT, gc_mode, str(LONG_REQUEST_CYCLES)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_a_long_request_building_cycles_grows_rss_about_as_little_as_cpythons_own_gc() -> None:
    auto = long_request("auto")
    between = long_request("between")
    # The product's bound: 1.5x CPython's own growth, or 10 MB, whichever is larger.
    assert between["growth_mb"] <= max(1.5 * auto["growth_mb"], 10.0), (auto, between)
    assert between["full_inside"] == 0  # the young collections did it, no full one


# -- auto mode, threshold, freeze


@pytest.mark.parametrize("enabled", [True, False], ids=["gc-on", "gc-off"])
def test_auto_mode_never_touches_automatic_gc(enabled: bool) -> None:
    scheduler = started(mode="auto")
    assert gc.get_threshold() == (700, 10, 10)
    (gc.enable if enabled else gc.disable)()
    make_garbage_cycles(past_gen0())
    assert not scheduler.collection_due()
    assert scheduler.collect_between() is None
    assert gc.isenabled() is enabled
    assert gc.get_threshold() == (700, 10, 10)
    assert scheduler.stats()["collections"] == [0, 0, 0]


@pytest.mark.parametrize("mode", ["between", "auto"])
def test_threshold_is_applied_at_start_and_restored_at_stop(mode: str) -> None:
    original = gc.get_threshold()
    scheduler = started(mode=mode, threshold=(300, 5, 5))
    if mode == "between":
        assert gc.get_threshold() == (REQUEST_BUDGET, 5, NEVER)
        make_garbage_cycles(350)  # past 300, not past CPython's default 700
        assert collect_if_due(scheduler) is not None
    else:
        assert gc.get_threshold() == (300, 5, 5)
    scheduler.stop()
    assert gc.get_threshold() == original
    assert gc.isenabled()
    make_garbage_cycles(past_gen0())
    assert not scheduler.collection_due()  # stopped: inert


def test_a_gen0_threshold_above_the_budget_is_kept_in_requests() -> None:
    started(threshold=(100_000, 10, 10))
    assert gc.get_threshold() == (100_000, 10, NEVER)


def test_a_second_scheduler_sees_cpythons_thresholds_under_the_first_ones_budget() -> None:
    original = gc.get_threshold()
    first = started(threshold=(300, 5, 5))
    second = started(threshold=None, request_budget=1_000)
    assert gc.get_threshold() == (1_000, 5, NEVER)
    make_garbage_cycles(350)  # past 300: due for both, the budget is not a gen-0 threshold
    assert second.collection_due()
    assert first.collection_due()
    second.stop()
    assert gc.get_threshold() == (300, 5, 5)  # what the second one found under the budget
    first.stop()
    assert gc.get_threshold() == original


def test_start_is_idempotent() -> None:
    scheduler = started(threshold=(300, 5, 5))
    gc.set_threshold(400)
    scheduler.start()
    assert gc.get_threshold()[0] == 400
    scheduler.stop()
    assert gc.get_threshold()[0] != 300


def test_bad_mode_threshold_and_budget_are_refused() -> None:
    with pytest.raises(ValueError, match="gc mode"):
        GCScheduler(mode="sometimes")
    with pytest.raises(ValueError, match="threshold"):
        GCScheduler(threshold=(1, 2, 3, 4))
    for budget in (0, NEVER + 1):
        with pytest.raises(ValueError, match="budget"):
            GCScheduler(request_budget=budget)


FREEZE_SCRIPT = textwrap.dedent(
    """
    import gc, json, os
    from wsgi_memopt.memory.gc_schedule import GCScheduler

    calls = []
    real_collect, real_freeze = gc.collect, gc.freeze
    gc.collect = lambda *a: calls.append("collect") or real_collect(*a)
    gc.freeze = lambda: calls.append("freeze") or real_freeze()
    startup_heap = [{"n": i} for i in range(10_000)]

    scheduler = GCScheduler(mode="between", freeze=True)
    scheduler.start()
    scheduler.start()
    GCScheduler(mode="auto", freeze=True).start()  # a second scheduler: still once
    report = {"calls": calls, "frozen": gc.get_freeze_count(), "enabled": gc.isenabled()}

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # a forked worker freezes what it built after the fork, once
        calls.clear()
        built_after_fork = [{"n": i} for i in range(1_000)]
        GCScheduler(freeze=True).start()
        GCScheduler(freeze=True).start()
        os.write(write, json.dumps(calls.count("freeze")).encode())
        os._exit(0)
    os.waitpid(pid, 0)
    report["child_freezes"] = json.loads(os.read(read, 100))
    print(json.dumps(report))
    """
)


def test_freeze_collects_then_freezes_once_per_process() -> None:
    result = subprocess.run(
        [sys.executable, "-c", FREEZE_SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    report = json.loads(result.stdout)
    assert report["calls"] == ["collect", "freeze"]
    assert report["frozen"] >= 10_000
    assert report["enabled"] is True  # between mode leaves the collector on
    assert report["child_freezes"] == 1


# -- stats


def test_stats_report_the_scheduler_and_cpython_side_by_side() -> None:
    scheduler = started(threshold=(300, 5, 5))
    assert scheduler.stats()["last"] is None
    make_garbage_cycles(350)
    collection = collect_if_due(scheduler)
    assert collection is not None
    stats = scheduler.stats()
    assert set(stats) == {
        "mode",
        "enabled",
        "frozen",
        "threshold",
        "counts",
        "collections",
        "collected",
        "generations",
        "last",
    }
    assert stats["mode"] == "between"
    assert stats["enabled"] is True
    assert stats["frozen"] == 0
    assert stats["threshold"] == [REQUEST_BUDGET, 5, NEVER]  # in force
    assert stats["collections"] == [1, 0, 0]
    assert stats["collected"] == [collection.collected, 0, 0]
    generations: Any = stats["generations"]
    assert len(generations) == 3
    assert set(generations[0]) == {"collections", "collected", "uncollectable"}
    assert stats["last"] == {
        "generation": 0,
        "collected": collection.collected,
        "duration_ms": collection.duration_ms,
        "reason": "threshold",
    }
    json.dumps(stats)


def test_collection_is_a_frozen_value() -> None:
    collection = Collection(0, 3, 0.1, "threshold")
    with pytest.raises(dataclasses.FrozenInstanceError):
        collection.generation = 1  # type: ignore[misc]


FORK_SCRIPT = textwrap.dedent(
    """
    import os, signal
    from wsgi_memopt.memory.gc_schedule import GCScheduler

    scheduler = GCScheduler(freeze=False)
    scheduler.start()
    scheduler._lock.acquire()  # another thread is collecting at the moment of the fork
    pid = os.fork()
    if pid == 0:
        signal.alarm(10)  # a lock inherited held would hang here
        os._exit(0 if scheduler.collect_full().generation == 2 else 1)
    _, status = os.waitpid(pid, 0)
    print(os.waitstatus_to_exitcode(status))
    """
)


def test_a_forked_child_never_inherits_a_held_lock() -> None:
    result = subprocess.run(
        [sys.executable, "-c", FORK_SCRIPT], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "0"


def test_a_process_that_is_never_quiet_still_gets_a_full_collection() -> None:
    # A threaded worker under constant load: something is always in flight, so the full
    # collection between requests never comes; twice its interval without one, it runs anyway.
    clock = [1000.0]
    scheduler = started(full_interval_s=300.0, clock=lambda: clock[0])
    make_garbage_cycles(past_gen0())
    assert scheduler.collection_due()
    assert not scheduler.full_overdue()

    clock[0] += 599.0
    assert not scheduler.full_overdue()
    clock[0] += 1.0
    assert scheduler.full_overdue()
    collection = scheduler.collect_between()
    assert collection is not None
    assert collection.generation == 2
    assert not scheduler.full_overdue()  # the interval starts again
