"""GC scheduling: automatic collection off during requests and on between them, young
collections between requests, the ceiling under constant load, freeze once, full by interval.

The collector's state is process-wide: every test gets it back as it found it (enabled, the
original threshold, nothing frozen), and the freeze test runs in a subprocess of its own.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import run_threads

from wsgi_memopt.memory import gc_schedule
from wsgi_memopt.memory.gc_schedule import Collection, GCScheduler


@pytest.fixture(autouse=True)
def _restore_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.enable()
    gc.set_threshold(*threshold)
    gc.unfreeze()


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


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
    """Enough new containers to push the gen-0 count past its threshold."""
    return gc.get_threshold()[0] + 100


def started(**kwargs: Any) -> GCScheduler:
    kwargs.setdefault("freeze", False)  # gc.freeze is process-wide: only in a subprocess
    scheduler = GCScheduler(**kwargs)
    scheduler.start()
    gc.collect()  # counts from zero, whatever the test process did before
    return scheduler


# -- between: off during requests, on between them


def test_start_and_request_started_turn_automatic_gc_off() -> None:
    scheduler = started()
    assert not gc.isenabled()
    gc.enable()
    scheduler.request_started()
    assert not gc.isenabled()


def test_a_library_enabling_gc_mid_request_is_corrected_at_the_next_request_started() -> None:
    scheduler = started()
    scheduler.request_started()
    gc.enable()  # what some libraries do on import or in a context manager's exit
    scheduler.request_finished(1)  # another request is still running: not ours to touch
    assert gc.isenabled()
    scheduler.request_started()
    assert not gc.isenabled()


def test_idle_request_finished_collects_past_the_threshold_and_turns_gc_back_on() -> None:
    scheduler = started()
    scheduler.request_started()
    make_garbage_cycles(past_gen0())
    assert not gc.isenabled()
    collection = scheduler.request_finished(0)
    assert collection is not None
    assert (collection.generation, collection.reason) == (0, "threshold")
    assert collection.collected >= past_gen0() - 100
    assert collection.duration_ms >= 0
    assert gc.get_count()[0] < 100
    assert gc.isenabled()
    scheduler.request_started()
    assert not gc.isenabled()


def test_idle_request_finished_below_the_threshold_only_turns_gc_back_on() -> None:
    scheduler = started()
    scheduler.request_started()
    make_garbage_cycles(10)
    assert scheduler.request_finished(0) is None
    assert gc.isenabled()
    assert scheduler.stats()["collections"] == [0, 0, 0]


def test_gen_1_is_collected_when_its_count_passed_its_threshold() -> None:
    scheduler = started(threshold=(100, 2, 1000))
    generations = []
    for _ in range(4):
        scheduler.request_started()
        make_garbage_cycles(150)
        collection = scheduler.request_finished(0)
        assert collection is not None
        generations.append(collection.generation)
    # Each gen-0 collection adds one to count[1]; the fourth finds it past 2.
    assert generations == [0, 0, 0, 1]
    assert scheduler.stats()["collections"] == [3, 1, 0]


def test_request_finished_skips_while_another_thread_collects() -> None:
    scheduler = started()
    scheduler.request_started()
    make_garbage_cycles(past_gen0())
    with scheduler._lock:  # another thread is collecting
        assert scheduler.request_finished(0) is None
    assert gc.isenabled()  # idle all the same


# -- between: overlapping requests and the ceiling


def test_overlapping_requests_collect_only_once_the_ceiling_passed() -> None:
    clock = FakeClock()
    scheduler = started(ceiling_s=1.0, clock=clock)
    scheduler.request_started()
    make_garbage_cycles(past_gen0())
    assert scheduler.request_finished(2) is None
    clock.now = 0.9
    assert scheduler.request_finished(1) is None
    assert gc.get_count()[0] > gc.get_threshold()[0]
    clock.now = 1.0
    collection = scheduler.request_finished(1)
    assert collection is not None
    assert (collection.generation, collection.reason) == (0, "ceiling")
    assert not gc.isenabled()  # requests still run
    make_garbage_cycles(past_gen0())
    clock.now = 1.5  # the ceiling counts from the last collection
    assert scheduler.request_finished(1) is None


def test_sixteen_threads_always_overlapping_still_get_young_collections(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = FakeClock()
    scheduler = started(ceiling_s=1.0, clock=clock)
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
    gc_was_on: list[bool] = []
    in_flight = 1  # a long request held open for the whole test: never idle
    count_lock = threading.Lock()
    barrier = threading.Barrier(16)

    def worker() -> None:
        nonlocal in_flight
        barrier.wait()
        for _ in range(50):
            with count_lock:
                in_flight += 1
                clock.now += 0.05
            scheduler.request_started()
            make_garbage_cycles(100)
            gc_was_on.append(gc.isenabled())
            with count_lock:
                in_flight -= 1
                still_running = in_flight
            collection = scheduler.request_finished(still_running)
            if collection is not None:
                made.append(collection)

    scheduler.request_started()
    run_threads(16, lambda _: worker(), timeout_s=30)

    assert not any(gc_was_on)
    assert max(concurrent) == 1  # one collection at a time
    # 40 fake seconds with a 1 s ceiling: about 40 collections, some lost to skips.
    assert len(made) >= 10
    assert {c.reason for c in made} == {"ceiling"}
    assert {c.generation for c in made} <= {0, 1}
    stats = scheduler.stats()
    assert stats["collections"] == [
        sum(c.generation == 0 for c in made),
        sum(c.generation == 1 for c in made),
        0,
    ]


# -- full collections


def test_full_collection_after_full_interval_s_and_only_when_idle() -> None:
    clock = FakeClock()
    scheduler = started(full_interval_s=300.0, ceiling_s=1.0, clock=clock)

    def request(at: float, in_flight: int) -> Collection | None:
        clock.now = at
        scheduler.request_started()
        make_garbage_cycles(past_gen0())
        return scheduler.request_finished(in_flight)

    first = request(10.0, 0)
    assert first is not None
    assert (first.generation, first.reason) == (0, "threshold")
    busy = request(400.0, 3)  # due, but other requests run: a young one by the ceiling
    assert busy is not None
    assert (busy.generation, busy.reason) == (0, "ceiling")
    full = request(401.0, 0)
    assert full is not None
    assert (full.generation, full.reason) == (2, "interval")
    after = request(402.0, 0)  # the interval counts from the last full collection
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
    scheduler.request_started()
    make_garbage_cycles(past_gen0())
    young = scheduler.request_finished(0)
    if mode == "between":
        assert young is not None
        assert young.generation == 0
    else:
        assert young is None


# -- auto mode, threshold, freeze


@pytest.mark.parametrize("enabled", [True, False], ids=["gc-on", "gc-off"])
def test_auto_mode_never_touches_automatic_gc(enabled: bool) -> None:
    scheduler = started(mode="auto")
    assert gc.isenabled()
    (gc.enable if enabled else gc.disable)()
    for in_flight in (0, 2):
        scheduler.request_started()
        assert gc.isenabled() is enabled
        make_garbage_cycles(past_gen0())
        assert scheduler.request_finished(in_flight) is None
        assert gc.isenabled() is enabled
    assert scheduler.stats()["collections"] == [0, 0, 0]


@pytest.mark.parametrize("mode", ["between", "auto"])
def test_threshold_is_applied_at_start_and_restored_at_stop(mode: str) -> None:
    original = gc.get_threshold()
    scheduler = started(mode=mode, threshold=(300, 5, 5))
    assert gc.get_threshold() == (300, 5, 5)
    if mode == "between":
        scheduler.request_started()
        make_garbage_cycles(350)  # past 300, not past CPython's default 700
        assert scheduler.request_finished(0) is not None
    scheduler.stop()
    assert gc.get_threshold() == original
    assert gc.isenabled()
    scheduler.request_started()  # stopped: inert
    assert gc.isenabled()


def test_start_is_idempotent() -> None:
    scheduler = started(threshold=(300, 5, 5))
    gc.set_threshold(400)
    scheduler.start()
    assert gc.get_threshold()[0] == 400
    scheduler.stop()
    assert gc.get_threshold()[0] != 300


def test_bad_mode_and_threshold_are_refused() -> None:
    with pytest.raises(ValueError, match="gc mode"):
        GCScheduler(mode="sometimes")
    with pytest.raises(ValueError, match="threshold"):
        GCScheduler(threshold=(1, 2, 3, 4))


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
    assert report["enabled"] is False  # between mode
    assert report["child_freezes"] == 1


# -- stats


def test_stats_report_the_scheduler_and_cpython_side_by_side() -> None:
    scheduler = started(threshold=(300, 5, 5))
    assert scheduler.stats()["last"] is None
    scheduler.request_started()
    make_garbage_cycles(350)
    collection = scheduler.request_finished(0)
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
    assert stats["threshold"] == [300, 5, 5]
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
