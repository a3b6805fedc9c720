"""The governor: measures memory pressure between requests and acts on it.

The middleware tells it when a request starts and when the server closes a response; the
governor keeps the count of requests in flight, and after a response is closed it samples
memory at most every ``sample_interval_s`` and decides:

- above ``critical_percent``: emergency (clear the cache, run the registered cleanups and the
  stdlib caches, collect until nothing more is freed, ``malloc_trim``);
- above ``max_memory_percent``: optimize (sweep expired entries, evict
  ``cache_evict_fraction``, collect, ``malloc_trim``);
- RSS grown by ``trim_threshold_mb`` since the last trim: ``malloc_trim`` alone;
- the limit forecast closer than ``forecast_lead_s`` at the measured rate of approach, or
  above ``restart_percent`` for ``restart_after_s``, or above it after an emergency that freed
  nothing: recycle the worker where a master respawns it (in a pool, the one that gives back
  the most, one at a time), else report the need.

An optimize or emergency that freed less than a point of the limit is not repeated at the same
level: what no cleanup lowers (a leak, native memory) is the recycle's to give back.

The status band of each sample follows the same thresholds (:class:`~.pressure.Bands`):
``warning`` above ``max_memory_percent``, ``critical`` above ``critical_percent``, ``good`` in
the 10 points below ``max_memory_percent``, ``excellent`` below that.

Anything that pauses runs only with no other request of this process in flight, and one
thread at a time; what is asked for by hand while requests run (the memory API) waits a
bounded time for that moment, else is deferred to it (:meth:`Governor.run_when_quiet`). Every
action is measured before and after and kept in a bounded history.

    governor = optimizer.governor
    governor.sample().memory_percent
    governor.optimize()["improvement"]
"""

from __future__ import annotations

import collections
import logging
import os
import random
import signal
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from ..lazy import LazyModules
from ..settings import MB, Settings
from .cleanups import CleanupResult, Cleanups, malloc_trim
from .forecast import Forecast
from .gc_schedule import GCScheduler
from .pool import RecycleLease, current_pool, serving_master
from .pressure import Bands, MemorySample, Sampler, make_sampler, traced_bytes

__all__ = ["Action", "GovernedCache", "Governor"]

log = logging.getLogger("wsgi_memopt")

_SAMPLES_KEPT = 720  # the dashboard's ring: an hour at one sample every 5 s
_COLLECT_ROUNDS = 5  # "collect until nothing more is freed", bounded
_LAZY_IDLE_S = 300.0  # an emergency unloads lazy modules unused for this long
_ACTION_BACKOFF_S = 30.0  # optimize/emergency at most this often under steady pressure...
_ACTION_RISE_PERCENT = 5.0  # ...unless memory rose this much since the last one
_FUTILE_PERCENT = 1.0  # an optimize or emergency that freed less than this did nothing...
_FUTILE_RETRY_S = 600.0  # ...and is tried again at that level only after this long
# A recycle must give back at least this share of the limit (or _GAIN_MB): the growth of this
# worker since it started. Less means the pressure is not this worker's, and a fresh worker
# would find the same.
_GAIN_SHARE = 0.05
_GAIN_MB = 64.0
# A worker that lets a larger sibling go first waits this long (beyond a sample interval)
# for it: a sibling that has not recycled by then is busy in a long request, or idle.
_DEFER_S = 1.0
_QUIET_POLL_S = 0.005  # how often run_when_quiet looks at the requests in flight
_T = TypeVar("_T")


class GovernedCache(Protocol):
    """What the governor does to the response cache: weigh it, trim it, empty it.

    The governor knows no more of the store than this, so any store with these methods can be
    governed and the memory package never imports the cache package.
    """

    @property
    def bytes(self) -> int:
        """Bytes held, as the store accounts them."""

    def __len__(self) -> int:
        """Entries held."""

    def sweep(self) -> int:
        """Drop the expired entries; how many."""

    def evict(self) -> int:
        """Drop a share of the entries, least recently used first; how many."""

    def clear_local(self) -> tuple[int, int]:
        """Drop every entry this process holds (a store shared with other processes keeps
        its own); ``(items, bytes)`` dropped."""

    def after_fork(self) -> None:
        """Make the store safe to use in a forked child (its locks made afresh)."""


@dataclass
class Action:
    """One thing the governor did, measured before and after."""

    kind: str  # "optimize" | "emergency" | "trim" | "recycle"
    reason: str
    before: MemorySample
    after: MemorySample
    duration_ms: float
    cache_items_freed: int = 0
    cache_mb_freed: float = 0.0
    objects_collected: int = 0
    trimmed: bool = False
    cleanups: list[CleanupResult] = field(default_factory=list)
    modules: list[dict[str, Any]] = field(default_factory=list)  # lazy modules unloaded
    at: float = field(default_factory=time.time)

    @property
    def rss_mb_freed(self) -> float:
        """RSS given back, measured; 0 when it grew (nothing was freed is an honest answer)."""
        return max(self.before.rss_mb - self.after.rss_mb, 0.0)

    @property
    def used_mb_freed(self) -> float:
        """Memory of the measured source (container, host, process) given back; 0 if it grew."""
        return max(self.before.used_mb - self.after.used_mb, 0.0)

    @property
    def percent_freed(self) -> float:
        """Points of ``memory_percent`` given back; 0 when it grew."""
        return max(self.before.memory_percent - self.after.memory_percent, 0.0)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, as the API returns it."""
        return {
            "kind": self.kind,
            "reason": self.reason,
            "at": self.at,
            "duration_ms": round(self.duration_ms, 2),
            "before": self.before.as_dict(),
            "after": self.after.as_dict(),
            "improvement": {
                "mb_freed": round(self.rss_mb_freed, 1),
                "used_mb_freed": round(self.used_mb_freed, 1),
                "percent_freed": round(self.percent_freed, 2),
            },
            "actions": {
                "cache_items_freed": self.cache_items_freed,
                "cache_mb_freed": round(self.cache_mb_freed, 3),
                "objects_collected": self.objects_collected,
                "malloc_trim": self.trimmed,
                "cleanups": [result.as_dict() for result in self.cleanups],
                "modules": self.modules,
            },
        }


class Governor:
    """Between-request memory governor of one process (see the module docstring).

    :param settings: the middleware's settings (thresholds, intervals, ``gc_*``).
    :param store: the response cache it trims, seen through :class:`GovernedCache`.
    :param cleanups: the registry of app-level cleanups it runs in an emergency.
    :param sampler: where pressure is read; by default from ``pressure_source``, its samples
        banded by ``.bands`` (from ``max_memory_percent`` and ``critical_percent``).
    :param on_recycle_needed: called once with the reason when the worker should be
        recycled and nothing here can do it (no master process to respawn it).
    """

    def __init__(
        self,
        settings: Settings,
        store: GovernedCache,
        cleanups: Cleanups,
        *,
        sampler: Sampler | None = None,
        on_recycle_needed: Callable[[str], object] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.store = store
        self.cleanups = cleanups
        self.bands = Bands(settings.max_memory_percent, settings.critical_percent)
        self.sampler = sampler or make_sampler(
            settings.pressure_source, settings.process_limit_mb, bands=self.bands
        )
        self.gc = GCScheduler(settings.gc_mode, settings.gc_freeze, settings.gc_threshold)
        self.on_recycle_needed = on_recycle_needed
        self.lazy: LazyModules | None = None  # attached by the middleware
        self.clock = clock
        self.history: collections.deque[Action] = collections.deque(maxlen=50)
        self.action_counts: collections.Counter[str] = collections.Counter()  # since start
        self.samples: collections.deque[tuple[float, float, float]] = collections.deque(
            maxlen=_SAMPLES_KEPT
        )  # (time, memory_percent, rss_mb): the dashboard's chart
        self.last_sample: MemorySample | None = None
        self.restart_reason: str | None = None  # set when a recycle is needed and not possible
        self.forecast = Forecast(settings.forecast_window_s)
        # One tick at a time, never waited for; re-entrant, since the work deferred to a
        # quiet moment runs inside a tick and may be optimize() or emergency().
        self._tick_lock = threading.RLock()
        self._deferred: dict[str, Callable[[], object]] = {}  # kind -> work (run_when_quiet)
        self._sample_due = 0.0  # next_tick, unless deferred work has it at 0
        # Requests in flight (pauses wait for them to end), counted without a lock: one item
        # per request, and list.append / del list[-1:] are single C calls under the GIL.
        self._flight: list[None] = []
        self._enter = self._flight.append
        # When the next sample is due: 0 until this process serves, and again after a fork.
        self.next_tick = 0.0
        self._status: str | None = None
        self._above_restart_since: float | None = None
        self._futile: dict[str, float] = {}  # optimize/emergency that freed nothing -> when
        self._rss_at_start: float | None = None  # what a fresh worker of this app holds
        self._lease: RecycleLease | None = None
        self._noted: str | None = None  # the last "not recycling because..." line logged
        self._deferred_since: float | None = None  # since when a larger sibling may go first
        self._trimmed_at_rss: float | None = None
        self._last_action_at: float | None = None  # the last optimize or emergency
        self._last_action_percent = 0.0
        self._started_at = clock()
        self._restart_jitter = self._draw_jitter()
        self._recycle_sent = False
        self._started = False
        self._start_lock = threading.Lock()
        self._monitor: _Monitor | None = None
        _GOVERNORS.add(self)

    # -- the request path

    def request_started(self) -> None:
        """A request of this process starts: counted in flight."""
        if not self._started:
            self._start_in_this_process()
        self._enter(None)

    def request_finished(self) -> None:
        """The server closed a response: between requests. Never raises."""
        del self._flight[-1:]  # never below 0, even when a server closes a response twice
        try:
            scheduler = self.gc
            # in_flight (a few reads) is counted only when a collection is due.
            if scheduler.collection_due() and (not self.in_flight or scheduler.full_overdue()):
                scheduler.collect_between()
            if self.clock() >= self.next_tick:
                self.tick()
        except Exception:
            log.warning("[MEMORY] the between-request tick failed", exc_info=True)

    def request_dropped(self) -> None:
        """A response was collected without the server's ``close()``: the request is over.

        Counted and nothing more: the collector may run this in any thread, at any moment,
        even inside a lock of ours, so nothing here may wait or pause; the next request or
        the monitor ticks.
        """
        del self._flight[-1:]

    @property
    def in_flight(self) -> int:
        """Requests of this process running now."""
        return len(self._flight)

    def _start_in_this_process(self) -> None:
        # Lazily, in the serving process: never before a fork (a preloaded app forks after
        # building the middleware); a forked child starts afresh (see _forked).
        with self._start_lock:
            if self._started:
                return
            self._started = True
            self._started_at = self.clock()
            try:
                # The RSS before the first request: a burst in that request is growth too.
                self._trimmed_at_rss = self._rss_at_start = self.sampler.sample().rss_mb
            except Exception:
                # Measured at the first sample that works instead (see _would_give_back).
                log.warning("[MEMORY] could not measure memory at start", exc_info=True)
            try:
                if serving_master() is None:
                    log.info(
                        "[MEMORY] no gunicorn or uWSGI master respawns this process: the "
                        "governor cannot recycle it, and /health answers 503 when it needs a "
                        "restart"
                    )
                self.gc.start()
                frames = self.settings.tracemalloc_frames
                if frames > 0 and traced_bytes() is None:
                    # Opt-in: tracing slows allocation-heavy code several times over.
                    import tracemalloc

                    tracemalloc.start(frames)
                if self.settings.monitor_interval_s > 0:
                    self._monitor = _Monitor(self, self.settings.monitor_interval_s)
                    self._monitor.start()
            except Exception:
                # The governor's trouble must never cost a request: serve, and say why.
                log.warning("[MEMORY] the governor could not start fully", exc_info=True)

    def _draw_jitter(self) -> float:
        # Workers recycle at different moments, so a pool never restarts all at once.
        return random.uniform(0, 0.1) * self.settings.restart_after_s

    def _forked(self) -> None:
        # In the child of a fork only the forking thread survives: no monitor runs here, no
        # request of this process is in flight, and this worker's life starts now.
        self._started = False
        self._monitor = None
        self._flight.clear()  # the same list: its bound append stays valid
        self.next_tick = 0.0  # a sample at its first request, which also starts it here
        self._tick_lock = threading.RLock()
        self._deferred.clear()  # the parent's, asked of the parent
        self._sample_due = 0.0
        self._start_lock = threading.Lock()
        self._recycle_sent = False
        self._above_restart_since = None
        self.restart_reason = None  # the parent's need is not this new worker's
        self._restart_jitter = self._draw_jitter()  # each worker its own (--preload forks)
        self._trimmed_at_rss = self._rss_at_start = None
        self.forecast = Forecast(self.settings.forecast_window_s)  # its lock is the parent's
        self._futile.clear()
        self._noted = self._deferred_since = None
        if self._lease is not None:
            self._lease.after_fork()
            self._lease = None
        self.store.after_fork()
        self.cleanups.after_fork()

    # -- deciding

    def tick(self) -> Action | None:
        """Sample (at most every ``sample_interval_s``) and act on the pressure found; first,
        when nothing is in flight, the work :meth:`run_when_quiet` deferred."""
        if not self._tick_lock.acquire(blocking=False):
            return None  # another thread is ticking (it looks again, below): never wait
        try:
            return self._tick_locked()
        finally:
            if self._deferred:
                self.next_tick = 0.0  # until it has run, every closed response ticks
            self._tick_lock.release()
            # A close that found the lock taken may have been the last one in flight (it
            # counted itself out before it tried the lock): its quiet moment is not lost.
            if self._deferred and not self.in_flight:
                self.tick()

    def _tick_locked(self) -> Action | None:
        """The tick, under the tick lock."""
        now = self.clock()
        if now < self.next_tick:
            return None
        if self._deferred:
            self._run_deferred()
            if now < self._sample_due:
                return None  # only looked for a quiet moment: no sample due yet
        if self._started:  # until then every request ticks: the first one starts it here
            self.next_tick = self._sample_due = now + self.settings.sample_interval_s
        sample = self.sample()
        quiet = self.in_flight == 0  # pausing work only with nothing in flight
        level = self._cleanup_level(sample, now)
        action = None
        if level is not None and quiet and self._pressure_action_due(sample, now):
            if level == "emergency":
                action = self._emergency("critical", sample)
            else:
                action = self._optimize("pressure", sample)
        elif quiet and self._grew_past_trim_threshold(sample):
            action = self._trim(sample)
        self._check_recycle(action.after if action else sample, now)
        return action

    def sample(self) -> MemorySample:
        """Measure memory now (kept for the dashboard's chart and the forecast)."""
        sample = self.sampler.sample()
        self.last_sample = sample
        self.samples.append((sample.taken_at, sample.memory_percent, sample.rss_mb))
        self.forecast.add(self.clock(), sample.used_mb, sample.limit_mb)
        self._log_transition(sample)
        return sample

    def _cleanup_level(self, sample: MemorySample, now: float) -> str | None:
        """``"emergency"``, ``"optimize"`` or None for the pressure in ``sample``. A level whose
        last cleanup freed nothing is skipped, until memory falls below it or after
        ``_FUTILE_RETRY_S``: repeating it would only cost pauses and the cache."""
        thresholds = {
            "emergency": self.settings.critical_percent,
            "optimize": self.settings.max_memory_percent,
        }
        for kind, since in list(self._futile.items()):
            if sample.memory_percent <= thresholds[kind] or now - since >= _FUTILE_RETRY_S:
                del self._futile[kind]
        for kind, threshold in thresholds.items():
            if sample.memory_percent > threshold:
                return None if kind in self._futile else kind
        return None

    def _pressure_action_due(self, sample: MemorySample, now: float) -> bool:
        """Whether optimize/emergency may run again: memory that no cleanup lowers (native
        memory, a fragmented heap) must not get a full collection every sample; that is the
        recycle's job. Again after ``_ACTION_BACKOFF_S``, or sooner if memory rose further."""
        if self._last_action_at is None or now - self._last_action_at >= _ACTION_BACKOFF_S:
            return True
        return sample.memory_percent >= self._last_action_percent + _ACTION_RISE_PERCENT

    def _grew_past_trim_threshold(self, sample: MemorySample) -> bool:
        threshold = self.settings.trim_threshold_mb
        if threshold <= 0:
            return False
        if self._trimmed_at_rss is None:
            self._trimmed_at_rss = sample.rss_mb
            return False
        if sample.rss_mb < self._trimmed_at_rss:
            self._trimmed_at_rss = sample.rss_mb  # the floor moved down by itself
        return sample.rss_mb - self._trimmed_at_rss > threshold

    # -- actions

    def optimize(self, reason: str = "manual") -> dict[str, Any]:
        """Run an optimize now (by hand or from the API); returns the measured action."""
        with self._tick_lock:
            return self._optimize(reason, self.sample()).as_dict()

    def emergency(self, reason: str = "manual") -> dict[str, Any]:
        """Run the emergency cleanup now; returns the measured action."""
        with self._tick_lock:
            return self._emergency(reason, self.sample()).as_dict()

    def run_when_quiet(
        self, kind: str, work: Callable[[], _T], *, wait_s: float, own: int = 0
    ) -> _T | None:
        """``work()`` with no request of this process in flight but the caller's ``own``.

        Now, if the others end within ``wait_s``; else None, and ``work`` runs at the next
        moment nothing is in flight (the tick of the response closed last, or the monitor's),
        the latest of each ``kind`` only. Under the tick lock, as every pausing action.
        """
        deadline = time.monotonic() + wait_s
        while self.in_flight > own:
            if time.monotonic() >= deadline:
                with self._tick_lock:
                    self._deferred[kind] = work
                    self.next_tick = 0.0  # the next closed response looks for the moment
                log.info(
                    "[MEMORY] %s deferred: %d other request(s) still in flight after %.1f s; it "
                    "runs at the next moment none is",
                    kind,
                    max(self.in_flight - own, 0),
                    wait_s,
                )
                return None
            time.sleep(_QUIET_POLL_S)
        with self._tick_lock:
            return work()

    @property
    def deferred(self) -> list[str]:
        """The kinds of work waiting for a moment with no request in flight."""
        return list(self._deferred)

    def _run_deferred(self) -> None:
        # Inside a tick: each piece of deferred work, as long as nothing is in flight.
        for kind in list(self._deferred):
            if self.in_flight:
                return
            work = self._deferred.pop(kind)
            log.info("[MEMORY] running the deferred %s: no request in flight", kind)
            try:
                work()
            except Exception:
                log.warning("[MEMORY] the deferred %s failed", kind, exc_info=True)

    def _optimize(self, reason: str, before: MemorySample) -> Action:
        started = time.perf_counter()
        items, cache_bytes = len(self.store), self.store.bytes
        self.store.sweep()
        self.store.evict()
        collected = self.gc.collect_full(reason).collected
        trimmed = malloc_trim().trimmed
        return self._record(
            Action(
                "optimize",
                reason,
                before,
                self.sampler.sample(),
                (time.perf_counter() - started) * 1000,
                cache_items_freed=items - len(self.store),
                cache_mb_freed=(cache_bytes - self.store.bytes) / MB,
                objects_collected=collected,
                trimmed=trimmed,
            )
        )

    def _emergency(self, reason: str, before: MemorySample) -> Action:
        started = time.perf_counter()
        items, cache_bytes = self.store.clear_local()
        results = self.cleanups.run()
        # Only modules the registry judges unloadable go, and only what was measured is told.
        modules = self.lazy.unload_idle(_LAZY_IDLE_S) if self.lazy is not None else []
        collected = 0
        for _ in range(_COLLECT_ROUNDS):
            freed = self.gc.collect_full(reason).collected
            collected += freed
            if freed == 0:
                break
        trimmed = malloc_trim().trimmed
        return self._record(
            Action(
                "emergency",
                reason,
                before,
                self.sampler.sample(),
                (time.perf_counter() - started) * 1000,
                cache_items_freed=items,
                cache_mb_freed=cache_bytes / MB,
                objects_collected=collected,
                trimmed=trimmed,
                cleanups=results,
                modules=modules,
            )
        )

    def _trim(self, before: MemorySample) -> Action:
        started = time.perf_counter()
        trimmed = malloc_trim().trimmed
        return self._record(
            Action(
                "trim",
                f"rss grew over {self.settings.trim_threshold_mb:g} MB",
                before,
                self.sampler.sample(),
                (time.perf_counter() - started) * 1000,
                trimmed=trimmed,
            )
        )

    def _record(self, action: Action) -> Action:
        self.history.append(action)
        self.action_counts[action.kind] += 1
        futile = action.percent_freed < _FUTILE_PERCENT
        if action.kind in ("optimize", "emergency"):
            self._last_action_at = self.clock()
            self._last_action_percent = action.after.memory_percent
            if futile:
                self._futile[action.kind] = self._last_action_at
        self.last_sample = action.after
        self._trimmed_at_rss = action.after.rss_mb
        log.info(
            "[MEMORY] %s (%s): freed %.1f MB of %s, %.1f%% -> %.1f%%, rss %.1f -> %.1f MB, "
            "cache -%d items, %d objects collected, in %.1f ms%s",
            action.kind,
            action.reason,
            action.used_mb_freed,
            action.after.source,
            action.before.memory_percent,
            action.after.memory_percent,
            action.before.rss_mb,
            action.after.rss_mb,
            action.cache_items_freed,
            action.objects_collected,
            action.duration_ms,
            "; not repeated at this level: what no cleanup frees, only a recycle gives back"
            if futile and action.kind in ("optimize", "emergency")
            else "",
        )
        return action

    # -- recycling

    def _check_recycle(self, sample: MemorySample, now: float) -> None:
        reason = self._recycle_reason(sample, now)
        if reason is not None:
            self._recycle(reason, now)

    def _recycle_reason(self, sample: MemorySample, now: float) -> str | None:
        """Why this worker should be recycled now; None while it should not."""
        settings = self.settings
        percent, source = sample.memory_percent, sample.source
        if percent <= settings.restart_percent:
            self._above_restart_since = None
        elif self._above_restart_since is None:
            self._above_restart_since = now
        old_enough = now - self._started_at >= settings.min_worker_lifetime_s
        if self._above_restart_since is not None and old_enough:
            sustained = now - self._above_restart_since
            if sustained >= settings.restart_after_s + self._restart_jitter:
                return (
                    f"memory above {settings.restart_percent:g}% for {sustained:.0f} s "
                    f"({percent:.1f}% of {source})"
                )
        trend = self.forecast.trend
        lead = settings.forecast_lead_s
        # The forecast overrides min_worker_lifetime_s: a young worker the kernel kills is
        # worse than a young worker recycled.
        if lead > 0 and trend is not None and trend.reaches_limit_within(lead):
            if not self._would_give_back(sample):
                return None
            return (
                f"the limit is {trend.seconds_to_limit:.1f} s away at "
                f"+{trend.rate_mb_s:.1f} MB/s ({percent:.1f}% of {source})"
            )
        # The cleanups had their chance and freed nothing: waiting out restart_after_s would
        # only wait for the OOM killer.
        if self._above_restart_since is not None and old_enough and "emergency" in self._futile:
            if not self._would_give_back(sample):
                return None
            return (
                f"memory above {settings.restart_percent:g}% ({percent:.1f}% of {source}) "
                "and the emergency cleanup freed nothing"
            )
        # No recycle is wanted: a new episode may say again why it waits, and defers afresh.
        self._noted = None
        self._deferred_since = None
        return None

    def _would_give_back(self, sample: MemorySample) -> bool:
        """Whether this worker grew enough since it started for its recycle to matter."""
        if self._rss_at_start is None:  # the start could not be measured: it is now
            self._rss_at_start = sample.rss_mb
        grown = sample.rss_mb - self._rss_at_start
        needed = min(_GAIN_SHARE * sample.limit_mb, _GAIN_MB)
        if grown >= needed:
            return True
        self._note(
            "small",
            f"[MEMORY] memory at {sample.memory_percent:.1f}% of {sample.source}, but this "
            f"worker's RSS changed by {grown:+.1f} MB since it started (a recycle must give "
            f"back {needed:.1f} MB): not recycling it",
        )
        return False

    def _recycle(self, reason: str, now: float) -> None:
        if self._recycle_sent:
            return
        server = serving_master()
        if server is None:
            if self.restart_reason is None:
                self.restart_reason = reason
                log.warning("[MEMORY] this worker needs a restart nothing here can do: %s", reason)
                self._record_recycle(reason)
                if self.on_recycle_needed is not None:
                    try:
                        self.on_recycle_needed(reason)
                    except Exception:
                        log.warning("[MEMORY] on_recycle_needed hook failed", exc_info=True)
            return
        if not self._my_turn(reason, now):
            return
        self._recycle_sent = True
        log.warning("[MEMORY] recycling this %s worker: %s", server, reason)
        self._record_recycle(reason)
        # No wait for a quiet moment: both masters' signals are graceful (the requests in
        # flight finish first), and a threaded worker under constant load has none.
        # gunicorn: SIGTERM is a worker's graceful exit; uWSGI: a worker's SIGHUP is its
        # graceful exit ("Gracefully killing worker"), and its master respawns it.
        os.kill(os.getpid(), signal.SIGHUP if server == "uwsgi" else signal.SIGTERM)

    def _my_turn(self, reason: str, now: float) -> bool:
        """In a pool: whether this worker goes now. Under a shared limit the largest worker
        goes first (unless it has not acted within ``_DEFER_S``: busy in a long request, or
        idle), and only one worker at a time (the lease)."""
        pool = current_pool()
        if pool is None:
            return True  # the master vanished while we looked: nothing to share with
        if self.sampler.source != "process":
            largest = pool.largest()
            if largest is not None and largest != os.getpid():
                if self._deferred_since is None:
                    self._deferred_since = now
                if now - self._deferred_since < self.settings.sample_interval_s + _DEFER_S:
                    self._note(
                        "largest",
                        f"[MEMORY] {reason}: worker {largest} gives back more and goes first",
                    )
                    return False
        if self._lease is None:
            self._lease = RecycleLease.for_master(pool.master_pid)
        if self._lease is not None and not self._lease.try_acquire():
            self._note(
                "lease",
                f"[MEMORY] {reason}: another worker of the pool is recycling; this one "
                "measures again after it",
            )
            return False
        return True

    def _note(self, key: str, message: str) -> None:
        # Why a recycle waits, once per episode rather than at every sample.
        if self._noted != key:
            self._noted = key
            log.info(message)

    def _record_recycle(self, reason: str) -> None:
        sample = self.last_sample or self.sampler.sample()
        self.history.append(Action("recycle", reason, sample, sample, 0.0))
        self.action_counts["recycle"] += 1

    # -- alerts

    def _log_transition(self, sample: MemorySample) -> None:
        status = sample.status
        previous, self._status = self._status, status
        if status == previous:
            return
        message = (
            f"[MEMORY] memory {status}: {sample.memory_percent:.1f}% of {sample.source} "
            f"(rss {sample.rss_mb:.0f} MB, limit {sample.limit_mb:.0f} MB)"
        )
        if status == "critical":
            log.error(message)
        elif status == "warning":
            log.warning(message)
        elif previous in ("warning", "critical"):
            log.info(message + ", recovered")

    # -- reporting

    def stats(self) -> dict[str, Any]:
        """Last sample, status, in-flight count, GC and the last actions, JSON-ready."""
        sample = self.last_sample
        return {
            "memory": sample.as_dict() if sample else None,
            "status": sample.status if sample else self.bands.status(0.0),
            "in_flight": self.in_flight,
            "restart_reason": self.restart_reason,
            "gc": self.gc.stats(),
            "modules": self.lazy.stats() if self.lazy is not None else None,
            "last_actions": [action.as_dict() for action in list(self.history)[-5:]],
        }

    def stop(self) -> None:
        """Stop the background monitor and give the GC back to CPython."""
        if self._monitor is not None:
            self._monitor.stop()
            self._monitor = None
        self.gc.stop()


class _Monitor:
    """A daemon thread that samples while the process is idle, so pressure is acted on
    without traffic; it never runs a pausing action while a request is in flight."""

    def __init__(self, governor: Governor, interval_s: float) -> None:
        self._governor = weakref.ref(governor)
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wsgi-memopt-monitor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            governor = self._governor()
            if governor is None:
                return  # the middleware is gone
            try:
                if governor.in_flight == 0:
                    # An idle process gets its collections between requests all the same.
                    governor.gc.collect_between()
                    governor.tick()
            except Exception:
                log.warning("[MEMORY] the background monitor's tick failed", exc_info=True)
            del governor


# Every live governor, so a fork can tell the child's copies to start afresh.
_GOVERNORS: weakref.WeakSet[Governor] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for governor in list(_GOVERNORS):
        governor._forked()


os.register_at_fork(after_in_child=_after_fork_in_child)
