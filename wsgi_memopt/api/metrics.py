"""The ``/metrics`` endpoint: the memory figures in the Prometheus text format.

Needs ``prometheus_client`` (the ``prometheus`` extra); it is imported only when metrics are
asked for, never when this module is imported, so the middleware runs without it. Without
it, both functions raise :class:`MetricsUnavailable`, whose message says how to install it.

    body, content_type = render_metrics(optimizer.parts)  # our figures only, a private registry
    REGISTRY.register(memory_collector(optimizer.parts))  # or in the app's own registry

The collector is a custom collector: every scrape reads this process's figures when it is
collected (the governor's last sample when younger than 1 s, else a new one; the store's
counters; CPython's ``gc.get_stats()``). It writes nothing to prometheus_client's
multiprocess files, so ``MultiProcessCollector`` does not aggregate it: in gunicorn's
multiprocess mode each worker's ``/metrics`` shows that worker.

``governor_actions_total{kind}`` counts every action since the process started (the
governor's own counter, not its bounded history).
"""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..backend import MEMORY
from ..settings import MB
from .report import current_sample

if TYPE_CHECKING:
    from ..parts import Parts

__all__ = ["PREFIX", "STATUSES", "MetricsUnavailable", "memory_collector", "render_metrics"]

PREFIX = "wsgi_memopt_"
STATUSES = ("excellent", "good", "warning", "critical")
ACTION_KINDS = ("optimize", "emergency", "trim", "recycle")
_INSTALL_HINT = (
    "the /metrics endpoint needs prometheus_client: pip install 'wsgi_memopt[prometheus]'"
)
# The classic text format generate_latest() writes (CONTENT_TYPE_LATEST names 1.0.0 in
# prometheus_client >= 0.22, 0.0.4 before; the text written is the same).
_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class MetricsUnavailable(Exception):
    """prometheus_client is not installed."""

    def __init__(self, message: str = _INSTALL_HINT) -> None:
        super().__init__(message)


def _require() -> None:
    """Import prometheus_client, or raise MetricsUnavailable with the install hint."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError as error:
        raise MetricsUnavailable() from error


class MemoryCollector:
    """A prometheus_client custom collector of one middleware's figures (see the module
    docstring). Made by :func:`memory_collector`, which checks prometheus_client is there."""

    def __init__(self, parts: Parts) -> None:
        self.parts = parts

    def describe(self) -> Iterator[Any]:
        """The metric families without samples: registering takes no memory sample."""
        return iter(self._families(with_samples=False))

    def collect(self) -> Iterator[Any]:
        """The metric families with this process's current figures."""
        return iter(self._families(with_samples=True))

    def _families(self, with_samples: bool) -> list[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        def gauge(name: str, documentation: str, labels: tuple[str, ...] = ()) -> Any:
            return GaugeMetricFamily(PREFIX + name, documentation, labels=list(labels))

        def counter(name: str, documentation: str, labels: tuple[str, ...] = ()) -> Any:
            return CounterMetricFamily(PREFIX + name, documentation, labels=list(labels))

        percent = gauge(
            "memory_percent",
            "Used memory as a percentage of the limit of the source that binds this worker "
            "(the process source may pass 100).",
            ("source",),
        )
        used = gauge("memory_used_bytes", "Used memory of the source, in bytes.", ("source",))
        limit = gauge(
            "memory_limit_bytes", "What counts as 100% for the source, in bytes.", ("source",)
        )
        rss = gauge("process_rss_bytes", "Resident set size of this process, in bytes.")
        items = gauge("cache_items", "Responses in the response cache.")
        cache_bytes = gauge("cache_bytes", "Bytes held by the response cache, as accounted.")
        hits = counter("cache_hits_total", "Cache lookups that found a fresh entry.")
        misses = counter("cache_misses_total", "Cache lookups that found none.")
        evictions = counter("cache_evictions_total", "Entries evicted to stay within the caps.")
        stores = counter("cache_stores_total", "Responses stored in the cache.")
        rejected = counter(
            "cache_rejected_total", "Responses not stored in the cache, by reason.", ("reason",)
        )
        collections = counter(
            "gc_collections_total",
            "Collections of each generation since the interpreter started (gc.get_stats()).",
            ("generation",),
        )
        collected = counter(
            "gc_collected_total",
            "Objects collected in each generation since the interpreter started (gc.get_stats()).",
            ("generation",),
        )
        actions = counter(
            "governor_actions",
            "Governor actions since this process started, by kind.",
            ("kind",),
        )
        status = gauge(
            "status",
            "1 for the current memory status band, 0 for the others.",
            ("status",),
        )
        restart = gauge(
            "restart_needed",
            "1 when this worker needs a restart it cannot do itself (no master to respawn it).",
        )
        families = [
            percent,
            used,
            limit,
            rss,
            items,
            cache_bytes,
            hits,
            misses,
            evictions,
            stores,
            rejected,
            collections,
            collected,
            actions,
            status,
            restart,
        ]
        shared = self._shared_families(gauge, counter)
        families.extend(shared)
        if not with_samples:
            return families

        parts = self.parts
        sample = current_sample(parts)
        source = [sample.source]
        percent.add_metric(source, sample.memory_percent)
        used.add_metric(source, round(sample.used_mb * MB))
        limit.add_metric(source, round(sample.limit_mb * MB))
        rss.add_metric([], round(sample.rss_mb * MB))

        cache = parts.cache.stats()
        items.add_metric([], cache["items"])
        cache_bytes.add_metric([], cache["bytes"])
        hits.add_metric([], cache["hits"])
        misses.add_metric([], cache["misses"])
        evictions.add_metric([], cache["evictions"])
        stores.add_metric([], cache["stores"])
        for reason, count in sorted(cache["rejected"].items()):
            rejected.add_metric([reason], count)

        for generation, stats in enumerate(gc.get_stats()):
            collections.add_metric([str(generation)], stats["collections"])
            collected.add_metric([str(generation)], stats["collected"])

        governor = parts.governor
        kinds = Counter(governor.action_counts)
        for kind in (*ACTION_KINDS, *sorted(set(kinds) - set(ACTION_KINDS))):
            actions.add_metric([kind], kinds[kind])

        for band in STATUSES:
            status.add_metric([band], 1 if sample.status == band else 0)
        restart.add_metric([], 1 if governor.restart_reason else 0)
        if shared:
            _shared_samples(shared, cache["shared"])
        return families

    def _shared_families(self, gauge: Any, counter: Any) -> list[Any]:
        """The shared store's families, when ``cache_backend`` names one."""
        if self.parts.settings.cache_backend == MEMORY:
            return []
        return [
            gauge("shared_cache_up", "1 while Redis answers (its circuit breaker closed), else 0."),
            counter("shared_cache_hits_total", "Lookups this process answered from Redis."),
            counter("shared_cache_misses_total", "Lookups Redis answered with nothing."),
            counter("shared_cache_stores_total", "Responses this process wrote to Redis."),
            counter("shared_cache_errors_total", "Redis calls that failed, by kind.", ("kind",)),
            counter(
                "shared_cache_invalidations_total",
                "Invalidation messages this process published or received.",
                ("direction",),
            ),
            gauge("shared_cache_redis_used_memory_bytes", "Redis's used_memory (INFO memory)."),
            gauge("shared_cache_keys", "Entries under the cache's prefix in Redis."),
        ]


def memory_collector(parts: Parts) -> MemoryCollector:
    """A collector of one middleware's figures (its ``parts``), to register in any
    ``CollectorRegistry``.

    :raises MetricsUnavailable: prometheus_client is not installed.
    """
    _require()
    return MemoryCollector(parts)


def render_metrics(parts: Parts) -> tuple[bytes, str]:
    """``(body, content type)`` of ``/metrics``: a private registry holding only our collector,
    so the body carries none of prometheus_client's default process/platform metrics.

    :raises MetricsUnavailable: prometheus_client is not installed.
    """
    collector = memory_collector(parts)
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    registry.register(collector)
    return generate_latest(registry), _CONTENT_TYPE


def _shared_samples(families: list[Any], shared: dict[str, Any]) -> None:
    """Fill the shared store's families (in :meth:`MemoryCollector._shared_families`' order)."""
    up, hits, misses, stores, errors, invalidations, used, keys = families
    up.add_metric([], 1 if shared["state"] == "closed" else 0)
    hits.add_metric([], shared["hits"])
    misses.add_metric([], shared["misses"])
    stores.add_metric([], shared["stores"])
    for kind, count in sorted(shared["errors_by_kind"].items()):
        errors.add_metric([kind], count)
    invalidations.add_metric(["published"], shared["invalidations_published"])
    invalidations.add_metric(["received"], shared["invalidations_received"])
    if shared["used_memory_bytes"] is not None:
        used.add_metric([], shared["used_memory_bytes"])
    if shared["keys"] is not None:
        keys.add_metric([], shared["keys"])
