"""Garbage-collection scheduling: automatic collection off while requests run, young
collections between them, the startup heap frozen once (SPEC §4 ``gc_*``, §7 "GC scheduling").

GC pauses, not allocation, make an allocation-heavy handler's p99: CPython's automatic
collector runs in the middle of a request every 700 net container allocations, and now and
then a full collection walks the whole heap (~90 ms at 1M live objects). The rules, in
``gc_mode="between"``:

- ``start()`` applies ``gc_threshold``; with ``freeze`` it collects, then ``gc.freeze()``-s the
  startup heap, once per process, so full collections skip it and copy-on-write pages stay
  shared between forked workers; then it turns automatic collection off.
- ``request_started()`` turns automatic collection off if something switched it back on
  (libraries call ``gc.enable()``).
- ``request_finished(0)``, with no other request of this process in flight: if the gen-0 count
  passed its threshold, collect the young generations (gen 0, or gen 1 when its count passed
  too), or everything when ``full_interval_s`` has also passed since the last full collection;
  then automatic collection is back on until the next request starts.
- ``request_finished(n > 0)`` (a threaded server with overlapping requests): nothing, unless
  no collection has run for ``ceiling_s`` and the gen-0 count passed its threshold: then a
  young collection runs anyway, so a server that is never idle is never starved.
- A full collection otherwise runs only when asked: ``collect_full()`` (memory pressure, the
  API's ``/gc/force``).
- One thread collects at a time; ``request_finished`` skips when another thread is collecting,
  it never waits (``collect_full`` does wait: it must run).
- ``request_started`` takes no lock, so a request starting in another thread at the very
  instant ``request_finished(0)`` turns the collector back on may run under CPython's automatic
  collection, as it would without the scheduler; the next ``request_started`` corrects it.

``gc_mode="auto"`` leaves CPython's collector alone: only ``gc_threshold`` and ``gc_freeze``
apply.

    scheduler = GCScheduler(mode="between", freeze=True)
    scheduler.start()
    scheduler.request_started(); ...; scheduler.request_finished(in_flight=0)

Cost, measured with ``benchmarks/gc_latency.py`` (CPython 3.11, the reference machine): with
nothing to do ``request_started()`` takes ~50 ns, ``request_finished()`` ~110-125 ns (one
``gc.get_count()``, a compare, and ``gc.enable()`` when idle; one clock read more when the
count passed its threshold under overlapping requests), the pair around an idle request
~180-220 ns, as it toggles the collector off and on.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import asdict, dataclass

__all__ = ["MODES", "REASONS", "Collection", "GCScheduler"]

log = logging.getLogger("wsgi_memopt")

MODES = ("between", "auto")
REASONS = ("threshold", "ceiling", "interval", "pressure", "forced")

# The hot path calls these C functions through module globals: cheaper than ``gc.<name>``.
_isenabled = gc.isenabled
_disable = gc.disable
_enable = gc.enable
_get_count = gc.get_count

# Every live scheduler, so a fork's child gets fresh locks (see _after_fork_in_child).
_SCHEDULERS: weakref.WeakSet[GCScheduler] = weakref.WeakSet()

# The pid that froze its heap. ``gc.freeze()`` is process-wide, so "once" is per process, not
# per scheduler; a forked worker (another pid) freezes what it built after the fork once more.
_frozen_by: int | None = None
_freeze_lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class Collection:
    """One collection run by the scheduler."""

    generation: int
    collected: int  # objects collected (gc.collect's return)
    duration_ms: float
    reason: str  # "threshold" | "ceiling" | "interval" | "pressure" | "forced"


def _gen0_threshold() -> int:
    """The gen-0 threshold the fast path compares with; 0 (collection off) never passes."""
    return gc.get_threshold()[0] or sys.maxsize


def _freeze_once() -> int | None:
    """Collect, then freeze the heap, unless this process already did; the objects frozen."""
    global _frozen_by
    with _freeze_lock:
        pid = os.getpid()
        if _frozen_by == pid:
            return None
        gc.collect()
        gc.freeze()
        _frozen_by = pid
        return gc.get_freeze_count()


class GCScheduler:
    """Defers CPython's automatic garbage collection to between requests.

    :param mode: ``"between"`` (collect between requests) or ``"auto"`` (CPython's own).
    :param freeze: collect, then ``gc.freeze()`` the startup heap at ``start()``, once per
        process.
    :param threshold: ``gc.set_threshold`` values applied at ``start()``; ``None`` keeps
        CPython's. The hot path compares with the gen-0 threshold in force at ``start()``;
        a collection is decided on the thresholds in force then.
    :param ceiling_s: under overlapping requests, the longest time without a collection before
        a young one is forced (once the gen-0 count passed its threshold).
    :param full_interval_s: between requests, a full collection at most this often.
    :param clock: monotonic seconds; injectable for tests.
    """

    def __init__(
        self,
        mode: str = "between",
        freeze: bool = True,
        threshold: tuple[int, ...] | None = None,
        *,
        ceiling_s: float = 1.0,
        full_interval_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"gc mode must be one of {', '.join(MODES)}, not {mode!r}")
        if threshold is not None and not 1 <= len(threshold) <= 3:
            raise ValueError(f"gc threshold takes 1 to 3 values, not {len(threshold)}")
        self.mode = mode
        self.freeze = freeze
        self.threshold = threshold
        self.ceiling_s = ceiling_s
        self.full_interval_s = full_interval_s
        self._clock = clock
        # True only between start() and stop() in "between" mode: the hot path checks one flag
        # (the governor reads it, and gen0_threshold, to switch the collector inline).
        self.active = False
        self._started = False
        self._original_threshold: tuple[int, int, int] | None = None
        self.gen0_threshold = _gen0_threshold()
        # Held while deciding and collecting: the hot path skips when it is taken, only
        # collect_full() waits for it.
        self._lock = threading.Lock()
        now = clock()
        self._last_collection = now
        self._last_full = now
        self._collections = [0, 0, 0]
        self._collected = [0, 0, 0]
        self._frozen: int | None = None
        self._last: Collection | None = None
        _SCHEDULERS.add(self)

    def start(self) -> None:
        """Apply the threshold, freeze the startup heap, and (``between``) turn automatic GC off.

        Idempotent: a second call changes nothing.
        """
        if self._started:
            return
        self._started = True
        self._original_threshold = gc.get_threshold()
        if self.threshold is not None:
            gc.set_threshold(*self.threshold)
        self.gen0_threshold = _gen0_threshold()
        if self.freeze:
            self._frozen = _freeze_once()
            if self._frozen is not None:
                log.info("[GC] froze the startup heap: %d objects", self._frozen)
        now = self._clock()
        self._last_collection = now
        self._last_full = now
        if self.mode == "between":
            self.active = True
            _disable()

    def stop(self) -> None:
        """Give the collector back to CPython: ``gc.enable()`` and the original threshold."""
        self.active = False
        if self._started and self._original_threshold is not None:
            gc.set_threshold(*self._original_threshold)
        self.gen0_threshold = _gen0_threshold()
        self._started = False
        gc.enable()

    # -- the hot path: a request of this process starts, or its response was closed

    def request_started(self) -> None:
        """Make sure automatic collection is off while the request runs (``between``)."""
        if self.active and _isenabled():
            _disable()

    def request_finished(self, in_flight: int) -> Collection | None:
        """Collect the young generations if their counts passed the thresholds, where allowed.

        ``in_flight`` is the number of this process's requests still running after this one.
        Returns the collection made, or ``None``. With nothing to collect: one
        ``gc.get_count()``, a compare, and ``gc.enable()`` when idle.
        """
        if not self.active:
            return None
        if _get_count()[0] <= self.gen0_threshold:  # nothing to collect: the common case
            if in_flight == 0:
                _enable()
            return None
        if in_flight == 0:
            collection = self._collect_between()
            _enable()  # idle: CPython's collector runs until the next request starts
            return collection
        if self._clock() - self._last_collection < self.ceiling_s:
            return None
        return self._collect_young("ceiling")

    def _collect_between(self) -> Collection | None:
        """No request in flight: a full collection when it is due, else a young one."""
        if not self._lock.acquire(blocking=False):
            return None  # another thread is collecting right now
        try:
            if self._clock() - self._last_full >= self.full_interval_s:
                return self._collect(2, "interval")
            return self._young("threshold")
        finally:
            self._lock.release()

    def _collect_young(self, reason: str) -> Collection | None:
        """Requests in flight: a young collection, unless another thread is collecting."""
        if not self._lock.acquire(blocking=False):
            return None
        try:
            return self._young(reason)
        finally:
            self._lock.release()

    def _young(self, reason: str) -> Collection | None:
        """Gen 0, or gen 1 when its count passed too; ``None`` if the count fell back meanwhile.

        Gen 1 is taken in its turn here, not only gen 0: under constant load (ceiling
        collections only) it would otherwise never be collected and grow without bound.
        """
        counts, threshold = gc.get_count(), gc.get_threshold()
        # Re-checked under the lock: another thread may have collected since the fast path.
        # A gen-0 threshold of 0 means "no automatic collection", for us as for CPython.
        if threshold[0] == 0 or counts[0] <= threshold[0]:
            return None
        generation = 1 if counts[1] > threshold[1] else 0
        return self._collect(generation, reason)

    def _collect(self, generation: int, reason: str) -> Collection:
        """Collect ``generation`` (the caller holds the lock), timed and counted."""
        start = time.perf_counter_ns()
        collected = gc.collect(generation)
        duration_ms = (time.perf_counter_ns() - start) / 1e6
        now = self._clock()
        self._last_collection = now
        if generation == 2:
            self._last_full = now
        self._collections[generation] += 1
        self._collected[generation] += collected
        collection = Collection(generation, collected, duration_ms, reason)
        self._last = collection
        log.debug(
            "[GC] gen %d (%s): %d collected in %.2f ms", generation, reason, collected, duration_ms
        )
        return collection

    # -- actions and introspection for the governor and the API

    def collect_full(self, reason: str = "pressure") -> Collection:
        """A full collection now (``gc.collect(2)``), timed; waits if another thread collects."""
        with self._lock:
            collection = self._collect(2, reason)
        log.info(
            "[GC] full collection (%s): %d collected in %.1f ms",
            reason,
            collection.collected,
            collection.duration_ms,
        )
        return collection

    def stats(self) -> dict[str, object]:
        """What the scheduler did and what CPython's collector reports, JSON-ready.

        Read without the lock: a collection finishing meanwhile may show in one counter and not
        yet in another.
        """
        return {
            "mode": self.mode,
            "enabled": gc.isenabled(),
            "frozen": gc.get_freeze_count(),
            "threshold": list(gc.get_threshold()),
            "counts": list(gc.get_count()),
            "collections": list(self._collections),
            "collected": list(self._collected),
            "generations": gc.get_stats(),
            "last": None if self._last is None else asdict(self._last),
        }


def _after_fork_in_child() -> None:
    # Only the forking thread survives a fork: a lock another thread held while collecting
    # would stay held in the child for good, and collect_full() would wait on it forever.
    global _freeze_lock
    _freeze_lock = threading.Lock()
    for scheduler in list(_SCHEDULERS):
        scheduler._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
