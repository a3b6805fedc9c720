"""What the memory API reports: health, the fast stats summary, recommendations, the worker pool.

Every figure is read from what the parts measured (the governor's samples, the store's
counters, CPython's collector, psutil); nothing here estimates. ``stats`` must be cheap enough
to poll every second: one memory sample at most (reused when fresh), no USS, no object walk.

    body = memory_stats(optimizer.parts)
    status_code, body = health(optimizer.parts)
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

import psutil

from ..memory.pool import current_pool, serving_master
from ..memory.pressure import MemorySample, traced_bytes
from ..settings import MB

if TYPE_CHECKING:
    from ..parts import Parts

__all__ = ["health", "memory_stats", "recommendations", "worker_pool"]

_STARTED = time.time()


def current_sample(parts: Parts, max_age_s: float = 1.0) -> MemorySample:
    """The governor's last sample when younger than ``max_age_s``, else a new one."""
    sample = parts.governor.last_sample
    if sample is None or time.time() - sample.taken_at > max_age_s:
        sample = parts.governor.sample()
    return sample


def memory_stats(parts: Parts) -> dict[str, Any]:
    """The ``stats`` endpoint's body, JSON-ready."""
    sample = current_sample(parts)
    cache = parts.cache.stats()
    governor = parts.governor
    gc_stats = governor.gc.stats()
    lazy = parts.lazy.stats() if parts.lazy is not None else None
    return {
        "memory": {
            "percent": round(sample.memory_percent, 2),
            "used_mb": round(sample.used_mb, 1),
            "available_mb": round(sample.available_mb, 1),
            "limit_mb": round(sample.limit_mb, 1),
            "rss_mb": round(sample.rss_mb, 1),
            "source": sample.source,
            "status": sample.status,
            "bands": parts.governor.bands.lower_bounds(),
        },
        "cache": {
            "items": cache["items"],
            "size_mb": cache["size_mb"],
            "max_items": cache["max_items"],
            "max_mb": round(cache["max_bytes"] / MB, 3),
            "hits": cache["hits"],
            "misses": cache["misses"],
            "hit_rate": cache["hit_rate"],
            "stores": cache["stores"],
            "evictions": cache["evictions"],
            "rejected": cache["rejected"],
            "bypassed": cache["bypassed"],
            # The store every process shares (cache_backend), beside this process's own.
            "shared": cache.get("shared"),
        },
        "gc": gc_stats,
        "modules": None
        if lazy is None
        else {key: lazy[key] for key in ("registered", "loaded", "unloaded", "pinned", "refused")},
        "governor": {
            "in_flight": governor.in_flight,
            "restart_reason": governor.restart_reason,
            "deferred": governor.deferred,  # waiting for a moment with no request in flight
            "forecast": trend.as_dict() if (trend := governor.forecast.trend) else None,
            "last_actions": [action.as_dict() for action in list(governor.history)[-5:]],
        },
        # The dashboard's chart: (time, percent, rss_mb) samples, oldest first, bounded.
        "history": [
            {"t": round(t, 3), "percent": round(percent, 2), "rss_mb": round(rss, 1)}
            for t, percent, rss in list(governor.samples)
        ],
        "process": {
            "pid": os.getpid(),
            "uptime_s": round(time.time() - _process_started(), 1),
        },
        "workers": worker_pool(),
    }


def health(parts: Parts) -> tuple[int, dict[str, Any]]:
    """``(status code, body)`` of the ``health`` endpoint: 503 when the worker needs a restart
    nothing here can do (no master to respawn it)."""
    sample = current_sample(parts)
    cache = parts.cache.stats()
    advice = recommendations(parts, sample, cache)
    alert = None
    if sample.status in ("warning", "critical"):
        alert = {
            "level": sample.status,
            "message": f"memory at {sample.memory_percent:.1f}% of {sample.source} "
            f"({sample.rss_mb:.0f} MB RSS, limit {sample.limit_mb:.0f} MB)",
            "recommendation": advice[0]["action"] if advice else None,
        }
    reason = parts.governor.restart_reason
    server = serving_master()
    body = {
        "status": "restart-needed" if reason else sample.status,
        "memory_percent": round(sample.memory_percent, 2),
        "source": sample.source,
        "alert": alert,
        "restart_reason": reason,
        "recycle": {
            "possible": server is not None,
            "server": server,
            "note": None
            if server
            else "no gunicorn or uWSGI master respawns this process, so the governor cannot "
            "recycle it: when it needs one, this endpoint answers 503 with restart_reason",
        },
        "recommendations": advice,
    }
    shared = cache.get("shared")
    if shared is not None:
        # Reported, never a failure: without Redis this worker still serves every request.
        body["shared_cache"] = {
            key: shared[key] for key in ("state", "listening", "errors", "breaker_opened")
        }
    return (503 if reason else 200), body


def recommendations(
    parts: Parts, sample: MemorySample, cache: dict[str, Any] | None = None
) -> list[dict[str, str]]:
    """Advice derived from the current figures, each naming the setting or endpoint to use
    (``cache``: the cache's stats, when the caller has them already)."""
    settings = parts.settings
    if cache is None:
        cache = parts.cache.stats()
    advice: list[dict[str, str]] = []
    lookups = cache["hits"] + cache["misses"]
    if lookups >= 100 and cache["hit_rate"] < 0.2:
        advice.append(
            {
                "finding": f"cache hit rate {cache['hit_rate']:.0%} over {lookups} lookups",
                "action": "mark shared pages cacheable (Cache-Control: public, max-age=N) or "
                "lower cache_max_mb to give the memory back",
                "setting": "cache_max_mb",
            }
        )
    if cache["max_bytes"] and cache["bytes"] >= 0.9 * cache["max_bytes"]:
        advice.append(
            {
                "finding": f"cache at {cache['bytes'] / cache['max_bytes']:.0%} of cache_max_mb",
                "action": "raise cache_max_mb if memory allows, or lower cache_ttl_s",
                "setting": "cache_max_mb",
            }
        )
    shared = cache.get("shared")
    if shared is not None and shared["state"] != "closed":
        advice.append(
            {
                "finding": f"the shared cache is {shared['state']} after {shared['errors']} "
                "Redis errors: misses go to the app, each process caches for itself",
                "action": "check that Redis answers within cache_redis_timeout_s; the cache "
                "asks again every cache_redis_retry_s",
                "setting": "cache_backend",
            }
        )
    if sample.status == "critical":
        advice.append(
            {
                "finding": f"memory critical ({sample.memory_percent:.1f}%)",
                "action": "run the emergency cleanup now; if it frees little, recycle the "
                "worker (restart_percent, restart_after_s)",
                "endpoint": "POST optimize/force",
            }
        )
    elif sample.status == "warning":
        advice.append(
            {
                "finding": f"memory in warning ({sample.memory_percent:.1f}%)",
                "action": "run an optimize; check the profile for what holds memory",
                "endpoint": "POST optimize",
            }
        )
    heap_mb = _python_heap_mb()
    if heap_mb is not None and sample.rss_mb > 4 * max(heap_mb, 1.0) and sample.rss_mb > 200:
        advice.append(
            {
                "finding": f"RSS {sample.rss_mb:.0f} MB is far above the Python heap "
                f"({heap_mb:.0f} MB traced): native memory or a fragmented heap",
                "action": "malloc_trim gives freed heap back (trim_threshold_mb); what stays is "
                "reclaimed only by recycling the worker (restart_percent)",
                "setting": "restart_percent",
            }
        )
    last = parts.governor.gc.stats().get("last")
    if isinstance(last, dict) and float(last.get("duration_ms", 0)) > 50:
        advice.append(
            {
                "finding": f"the last collection (generation {last.get('generation')}) took "
                f"{float(last['duration_ms']):.0f} ms",
                "action": "freeze the startup heap (gc_freeze) so full collections skip it, "
                "and keep them between requests (gc_mode=between)",
                "setting": "gc_freeze",
            }
        )
    if settings.gc_mode == "auto":
        advice.append(
            {
                "finding": "CPython's collector runs inside requests",
                "action": "gc_mode=between moves collections between requests (lower p99)",
                "setting": "gc_mode",
            }
        )
    return advice


def worker_pool() -> dict[str, Any] | None:
    """The server's worker pool when the parent is a gunicorn or uWSGI master, else None."""
    pool = current_pool()
    if pool is None:
        return None
    workers = [{"pid": pid, "rss_mb": round(rss / MB, 1)} for pid, rss in pool.workers.items()]
    return {
        "server": pool.server,
        "master_pid": pool.master_pid,
        "workers": workers,
        "total_rss_mb": round(sum(worker["rss_mb"] for worker in workers), 1),
    }


def _process_started() -> float:
    try:
        return float(psutil.Process().create_time())
    except psutil.Error:
        return _STARTED


def _python_heap_mb() -> float | None:
    """What tracemalloc traces, when it is tracing; None otherwise (never estimated)."""
    traced = traced_bytes()
    return None if traced is None else traced / MB
