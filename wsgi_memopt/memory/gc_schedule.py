"""Garbage-collection scheduling: full collections between requests, young ones inside a
request only past a budget, the startup heap frozen once.

Two costs of CPython's collector land on requests: a young collection every 700 net container
allocations (a request that holds 50k containers at once pays ~70, each walking what is still
alive), and now and then a full collection that walks the whole heap. Switching the collector
off for the whole request removes both, but then a request that drops reference cycles (an
ORM's back-references) keeps every one of them until it ends. So, in ``gc_mode="between"``:

- ``start()`` applies ``gc_threshold``; with ``freeze`` it collects, then ``gc.freeze()``-s the
  startup heap, once per process, so collections skip it and copy-on-write pages stay shared
  between forked workers. Then it puts ``(request_budget, t1, never)`` in force, ``t1`` being
  the gen-1 threshold: automatic collection stays on, but a young collection starts only once
  ``request_budget`` containers have piled up (a request that builds fewer pays none; one that
  builds cyclic garbage for seconds holds at most that many: a count of containers, not of
  bytes), and CPython never starts a full one. The collector is never switched off: a library
  switching it on or off is obeyed.
- Between requests (the caller's to know: nothing of this process in flight), when
  ``collection_due()`` (the gen-0 count passed ``t0``, the gen-0 threshold applied),
  ``collect_between()`` collects the young generations (gen 0, or gen 1 when its count passed
  ``t1``), or everything when ``full_interval_s`` has passed since the last full collection. A
  request then starts with its whole budget, and the young collection it left is not in any
  request's latency.
- A full collection otherwise runs only when asked: ``collect_full()`` (memory pressure, the
  API's ``/gc/force``). Under constant overlapping load the budget alone bounds the young
  generations.
- One thread collects at a time; ``collect_between`` skips when another thread is collecting,
  it never waits (``collect_full`` does wait: it must run).

``gc_mode="auto"`` leaves CPython's collector alone: only ``gc_threshold`` and ``gc_freeze``
apply.

    scheduler = GCScheduler(mode="between", freeze=True)
    scheduler.start()
    ...  # a request ran; now none is in flight
    if scheduler.collection_due():
        scheduler.collect_between()
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

__all__ = ["MODES", "REASONS", "REQUEST_BUDGET", "Collection", "GCScheduler"]

log = logging.getLogger("wsgi_memopt")

MODES = ("between", "auto")
REASONS = ("threshold", "interval", "pressure", "forced")

# Young containers a request may pile up before a collection runs inside it: above what an
# allocation-heavy request holds alive at once, and a few MB of small cyclic garbage at most.
REQUEST_BUDGET = 64_000
# gc.set_threshold takes C ints: the largest one keeps CPython from ever starting a full one.
_NEVER = 2**31 - 1

# collection_due() runs after every request: C functions through module globals are cheaper
# than ``gc.<name>``.
_get_count = gc.get_count

# Every live scheduler, so a fork's child gets fresh locks (see _after_fork_in_child).
_SCHEDULERS: weakref.WeakSet[GCScheduler] = weakref.WeakSet()

# The pid that froze its heap. ``gc.freeze()`` is process-wide, so "once" is per process, not
# per scheduler; a forked worker (another pid) freezes what it built after the fork once more.
_frozen_by: int | None = None
# The thresholds a budget replaced, by the budget's thresholds: a scheduler started while
# another one's budget is in force must see the thresholds under it as CPython's.
_replaced: dict[tuple[int, int, int], tuple[int, int, int]] = {}
_process_lock = threading.Lock()  # the freeze and the thresholds: process-wide


@dataclass(frozen=True, slots=True)
class Collection:
    """One collection run by the scheduler."""

    generation: int
    collected: int  # objects collected (gc.collect's return)
    duration_ms: float
    reason: str  # "threshold" | "interval" | "pressure" | "forced"


def _freeze_once() -> int | None:
    """Collect, then freeze the heap, unless this process already did; the objects frozen."""
    global _frozen_by
    with _process_lock:
        pid = os.getpid()
        if _frozen_by == pid:
            return None
        gc.collect()
        gc.freeze()
        _frozen_by = pid
        return gc.get_freeze_count()


def _in_requests(threshold: tuple[int, int, int], budget: int) -> tuple[int, int, int]:
    """The thresholds in force under ``between``: young ones past the budget, never a full one.

    A gen-0 threshold of 0 means "no automatic collection": that choice is kept.
    """
    t0, t1, _ = threshold
    return (max(t0, budget) if t0 else 0), t1, _NEVER


def _put_in_force(
    threshold: tuple[int, ...] | None, budget: int | None
) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Apply ``threshold`` over CPython's thresholds, then the ``budget`` if given.

    Returns CPython's thresholds as found (under another scheduler's budget, the ones it
    replaced) and the thresholds applied, before the budget.
    """
    with _process_lock:
        found = gc.get_threshold()
        original = _replaced.get(found, found)
        values = original if threshold is None else (*threshold, *original[len(threshold) :])
        applied = (values[0], values[1], values[2])
        in_force = applied if budget is None else _in_requests(applied, budget)
        gc.set_threshold(*in_force)
        if budget is not None:
            _replaced[in_force] = applied
        return original, applied


class GCScheduler:
    """Keeps CPython's full collections, and young ones under a budget, out of requests.

    :param mode: ``"between"`` (collect between requests) or ``"auto"`` (CPython's own).
    :param freeze: collect, then ``gc.freeze()`` the startup heap at ``start()``, once per
        process.
    :param threshold: ``gc.set_threshold`` values applied at ``start()``; ``None`` keeps
        CPython's. Under ``between`` their gen-0 and gen-1 values decide the collections
        between requests.
    :param request_budget: under ``between``, the gen-0 threshold in force: the young
        containers that pile up before a collection runs inside a request (at least the gen-0
        threshold).
    :param full_interval_s: between requests, a full collection at most this often.
    :param clock: monotonic seconds; injectable for tests.
    """

    def __init__(
        self,
        mode: str = "between",
        freeze: bool = True,
        threshold: tuple[int, ...] | None = None,
        *,
        request_budget: int = REQUEST_BUDGET,
        full_interval_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"gc mode must be one of {', '.join(MODES)}, not {mode!r}")
        if threshold is not None and not 1 <= len(threshold) <= 3:
            raise ValueError(f"gc threshold takes 1 to 3 values, not {len(threshold)}")
        if not 0 < request_budget <= _NEVER:
            raise ValueError(f"gc request budget must be 1 to {_NEVER}, not {request_budget}")
        self.mode = mode
        self.freeze = freeze
        self.threshold = threshold
        self.request_budget = request_budget
        self.full_interval_s = full_interval_s
        self._clock = clock
        # True only between start() and stop() in "between" mode: collection_due() checks it.
        self.active = False
        self._started = False
        self._original_threshold: tuple[int, int, int] | None = None
        # The gen-0 and gen-1 thresholds of the collections between requests, set at start().
        self._t0 = self._t1 = sys.maxsize
        # Held while deciding and collecting: collect_between() skips when it is taken, only
        # collect_full() waits for it.
        self._lock = threading.Lock()
        now = clock()
        self._last_full = now
        self._collections = [0, 0, 0]
        self._collected = [0, 0, 0]
        self._frozen: int | None = None
        self._last: Collection | None = None
        _SCHEDULERS.add(self)

    def start(self) -> None:
        """Apply the threshold, freeze the startup heap, and (``between``) put the budget in force.

        Idempotent: a second call changes nothing.
        """
        if self._started:
            return
        self._started = True
        between = self.mode == "between"
        self._original_threshold, applied = _put_in_force(
            self.threshold, self.request_budget if between else None
        )
        if self.freeze:
            self._frozen = _freeze_once()
            if self._frozen is not None:
                log.info("[GC] froze the startup heap: %d objects", self._frozen)
        self._last_full = self._clock()
        if between:
            # A gen-0 threshold of 0 turns collection off: between requests too.
            self._t0, self._t1 = applied[0] or sys.maxsize, applied[1]
            self.active = True

    def stop(self) -> None:
        """Give the collector back to CPython: ``gc.enable()`` and the original threshold."""
        self.active = False
        if self._started and self._original_threshold is not None:
            gc.set_threshold(*self._original_threshold)
        self._started = False
        gc.enable()

    # -- between requests: after every response, with nothing of this process in flight

    def collection_due(self) -> bool:
        """Whether a collection is due between requests: the gen-0 count passed its threshold.

        One ``gc.get_count()`` and a compare; always ``False`` unless ``between`` is active.
        """
        return self.active and _get_count()[0] > self._t0

    def full_overdue(self) -> bool:
        """Whether twice ``full_interval_s`` passed without a full collection: a process that
        is never quiet (a threaded worker under constant load) gets one even with requests in
        flight, or the cycles that reach the oldest generation would pile up for good."""
        return self.active and self._clock() - self._last_full >= 2 * self.full_interval_s

    def collect_between(self) -> Collection | None:
        """When due, a full collection if ``full_interval_s`` has passed, else the young ones.

        Gen 1 is taken in its turn, when its count passed its threshold: the collections
        between requests would otherwise leave it to grow until CPython's next young one.
        Only with no request of this process in flight (the caller knows). ``None`` when
        nothing is due, or another thread is collecting.
        """
        if not self._lock.acquire(blocking=False):
            return None  # another thread is collecting right now
        try:
            # Decided under the lock: another thread may have collected since the caller asked.
            if not self.collection_due():
                return None
            if self._clock() - self._last_full >= self.full_interval_s:
                return self._collect(2, "interval")
            return self._collect(1 if gc.get_count()[1] > self._t1 else 0, "threshold")
        finally:
            self._lock.release()

    def _collect(self, generation: int, reason: str) -> Collection:
        """Collect ``generation`` (the caller holds the lock), timed and counted."""
        start = time.perf_counter_ns()
        collected = gc.collect(generation)
        duration_ms = (time.perf_counter_ns() - start) / 1e6
        if generation == 2:
            self._last_full = self._clock()
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

        ``threshold`` is the one in force (under ``between``, the budget's). Read without the
        lock: a collection finishing meanwhile may show in one counter and not yet in another.
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
    global _process_lock
    _process_lock = threading.Lock()
    for scheduler in list(_SCHEDULERS):
        scheduler._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
