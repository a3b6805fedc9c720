"""The ``profile`` endpoint's body: what holds the memory, by type and by component.

    body = profile(optimizer.parts)                       # the cheap default view
    body = profile(optimizer.parts, limit=50, deep=True)  # plus pympler's measured summary

Every figure says how it was obtained, and nothing is guessed:

- ``top_types`` comes from ONE pass over ``gc.get_objects()`` counting ``type(obj)`` (the
  cheap per-type count; ``benchmarks/profile.py`` times it at 1M objects). Its sizes are
  ``count * sys.getsizeof(one sampled instance)``, hence ``size_mb_estimate``: only the deep
  view measures sizes.
  ``gc.get_objects()`` lists neither untracked objects (ints, strings, ...) nor the objects
  ``gc.freeze()`` moved to the permanent generation (``gc.frozen_objects``).
- ``components`` reports what was measured where it can be (cache byte accounting, RSS deltas
  around lazy imports, tracemalloc, psutil) and ``None`` where it cannot, with a note why.
- ``deep`` (opt-in) is pympler's ``muppy.get_objects()`` + ``summary.summarize()``: measured
  sizes, seconds at 1M objects.

The router adds ``recommendations`` and parses ``?limit=N`` and ``?deep=1``; this module only
takes the arguments.
"""

from __future__ import annotations

import gc
import sys
import time
import tracemalloc
from collections import Counter
from typing import TYPE_CHECKING, Any

import psutil

from ..settings import MB

if TYPE_CHECKING:
    from ..parts import Parts

__all__ = ["LIMIT_MAX", "profile"]

LIMIT_MAX = 1000


def profile(parts: Parts, *, limit: int = 20, deep: bool = False) -> dict[str, Any]:
    """The ``profile`` body, JSON-ready (see the module docstring).

    :param limit: rows in ``top_types``, ``tracemalloc.top`` and ``deep`` (1..1000).
    :param deep: add pympler's measured summary (slow: seconds at 1M objects).
    :raises ValueError: for a ``limit`` outside 1..1000.
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= LIMIT_MAX:
        raise ValueError(f"limit must be an integer in 1..{LIMIT_MAX}, got {limit!r}")
    started = time.perf_counter()
    notes: list[str] = []
    objects_total, top_types = _top_types(limit)
    frozen = gc.get_freeze_count()
    if frozen:
        notes.append(
            f"{frozen} objects frozen by gc.freeze() are not listed by gc.get_objects(): "
            "top_types and objects_total leave them out"
        )
    body: dict[str, Any] = {
        "objects_total": objects_total,
        "top_types": top_types,
        "components": _components(parts, notes),
        "gc": _gc(parts),
        "tracemalloc": _tracemalloc(limit, notes, parts.settings.tracemalloc_frames),
    }
    if deep:
        body["deep"] = _deep(limit)
    body["notes"] = notes
    body["duration_ms"] = round((time.perf_counter() - started) * 1000, 3)
    return body


def _type_name(kind: type) -> str:
    module = getattr(kind, "__module__", None)
    qualname = getattr(kind, "__qualname__", kind.__name__)
    if not isinstance(module, str) or module == "builtins":
        return str(qualname)
    return f"{module}.{qualname}"


def _top_types(limit: int) -> tuple[int, list[dict[str, Any]]]:
    """``(objects_total, rows)``: one C-speed pass counting ``type(obj)``, then one sampled
    instance per listed type for ``sys.getsizeof``."""
    objects = gc.get_objects()
    try:
        counts = Counter(map(type, objects))
        top = counts.most_common(limit)
        # One instance per listed type, found by a scan that stops as soon as each has one:
        # the listed types are the most common ones, so they turn up early.
        wanted = {kind for kind, _ in top}
        samples: dict[type, int] = {}
        for obj in objects:
            kind = type(obj)
            if kind in wanted:
                wanted.discard(kind)
                try:
                    samples[kind] = sys.getsizeof(obj)
                except Exception:  # a foreign type's __sizeof__ may raise anything
                    samples[kind] = 0
                if not wanted:
                    break
        total = len(objects)
    finally:
        del objects  # never keep every object alive past the pass
    rows = [
        {
            "type": _type_name(kind),
            "count": count,
            "size_mb_estimate": round(count * samples.get(kind, 0) / MB, 3),
        }
        for kind, count in top
    ]
    return total, rows


def _components(parts: Parts, notes: list[str]) -> dict[str, Any]:
    try:
        rss_mb: float | None = psutil.Process().memory_info().rss / MB
    except psutil.Error as error:
        rss_mb = None
        notes.append(f"RSS unavailable: {error}")
    cache_mb = parts.cache.bytes / MB
    modules_mb = 0.0
    if parts.lazy is not None:
        modules = parts.lazy.stats()["modules"]
        assert isinstance(modules, dict)
        for entry in modules.values():
            if entry["state"] == "loaded" and entry["import_rss_bytes"] is not None:
                modules_mb += entry["import_rss_bytes"] / MB
    heap_mb: float | None = None
    if tracemalloc.is_tracing():
        heap_mb = tracemalloc.get_traced_memory()[0] / MB
    else:
        notes.append(
            "python_heap_mb is None: tracemalloc is off (tracemalloc_frames=0), and without it "
            "the Python heap is not measured; other_mb is None for the same reason"
        )
    other_mb: float | None = None
    if rss_mb is not None and heap_mb is not None:
        other_mb = rss_mb - cache_mb - modules_mb - heap_mb
        notes.append(
            "other_mb = rss_mb - cache_mb - modules_mb - python_heap_mb; the parts overlap "
            "(cache entries and imports made while tracing are also in the traced heap), so "
            "other_mb is a lower bound of native / untraced memory"
        )
    return {
        "rss_mb": _mb(rss_mb),
        "cache_mb": round(cache_mb, 3),
        "modules_mb": round(modules_mb, 3),
        "python_heap_mb": _mb(heap_mb),
        "other_mb": _mb(other_mb),
        "sources": {
            "rss_mb": "measured: psutil RSS of this process",
            "cache_mb": "measured: the response store's byte accounting",
            "modules_mb": "measured at import: RSS deltas of the loaded lazy modules"
            if parts.lazy is not None
            else "no lazy module registry attached",
            "python_heap_mb": "measured: tracemalloc traced memory"
            if heap_mb is not None
            else "not measured: tracemalloc is off",
            "other_mb": "derived: rss minus the parts above (lower bound)"
            if other_mb is not None
            else "not derived: a part is unknown",
        },
    }


def _mb(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _gc(parts: Parts) -> dict[str, Any]:
    return {
        "counts": list(gc.get_count()),
        "thresholds": list(gc.get_threshold()),
        "generations": gc.get_stats(),
        "frozen": gc.get_freeze_count(),
        "uncollectable": len(gc.garbage),
        "enabled": gc.isenabled(),
        "scheduler": parts.governor.gc.stats(),
    }


def _tracemalloc(limit: int, notes: list[str], frames: int) -> dict[str, Any] | None:
    if not tracemalloc.is_tracing():
        notes.append(
            f"tracemalloc is off (tracemalloc_frames={frames}): set tracemalloc_frames=N to see "
            "the top allocation sites; tracing slows allocation-heavy code"
        )
        return None
    current, peak = tracemalloc.get_traced_memory()
    snapshot = tracemalloc.take_snapshot().filter_traces(
        (tracemalloc.Filter(False, tracemalloc.__file__),)
    )
    top = []
    for stat in snapshot.statistics("lineno")[:limit]:
        frame = stat.traceback[0]
        top.append(
            {
                "site": f"{frame.filename}:{frame.lineno}",
                "size_mb": round(stat.size / MB, 3),
                "count": stat.count,
            }
        )
    return {
        "traced_mb": round(current / MB, 3),
        "peak_mb": round(peak / MB, 3),
        "frames": tracemalloc.get_traceback_limit(),
        "top": top,
    }


def _deep(limit: int) -> list[dict[str, Any]]:
    """pympler's summary, the ``limit`` largest rows by measured total size."""
    import types

    from pympler import summary

    # The collector's objects, not muppy.get_objects(): muppy filters frames with
    # isinstance(), which runs the __class__ of lazy proxies (Django's settings, for one)
    # and can set them up or raise. type() never calls into the object.
    objects = [obj for obj in gc.get_objects() if type(obj) is not types.FrameType]
    # Strings, numbers and bytes are not tracked by the collector: reach them as referents,
    # once each, as muppy does.
    seen = {id(obj) for obj in objects}
    for referent in gc.get_referents(*objects):
        if not gc.is_tracked(referent) and id(referent) not in seen:
            seen.add(id(referent))
            objects.append(referent)
    del seen
    try:
        rows: list[list[Any]] = summary.summarize(objects)  # type: ignore[no-untyped-call]
    finally:
        del objects
    rows.sort(key=lambda row: row[2], reverse=True)
    return [
        {"type": str(name), "count": int(count), "size_mb": round(size / MB, 3)}
        for name, count, size in rows[:limit]
    ]
