"""What the governor's emergency step can free: app caches, stdlib caches, and glibc's heap.

- ``Cleanups`` is a registry of callables that drop an app-level cache. The emergency step
  runs the non-critical ones (``critical=True`` marks a cache that is expensive to rebuild and
  runs only when asked), then the stdlib caches. Each is timed; one that raises is logged and
  reported, and the others still run.
- ``clear_stdlib_caches`` empties the interpreter's own caches (``re``, ``linecache``, ...).
- ``malloc_trim`` hands freed glibc heap back to the OS: ``gc.collect()`` does not lower RSS;
  after a burst of small allocations is freed, RSS stays up until ``malloc_trim(0)`` (see
  ``benchmarks/rss_burst.py``). Without glibc (musl, macOS, Windows) it quietly reports
  ``available=False``.

    cleanups = Cleanups()
    cleanups.register("templates", template_cache.clear)
    results = cleanups.run()
"""

from __future__ import annotations

import fnmatch
import functools
import importlib
import linecache
import logging
import re
import struct
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "CleanupResult",
    "Cleanups",
    "TrimResult",
    "clear_stdlib_caches",
    "malloc_trim",
    "malloc_trim_available",
]

log = logging.getLogger("wsgi_memopt")

STDLIB_PREFIX = "stdlib:"


@dataclass(frozen=True, slots=True)
class CleanupResult:
    """How one cleanup went: ``error`` is ``"ExcType: message"`` when it raised."""

    name: str
    ok: bool
    duration_ms: float
    error: str | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "ok": self.ok,
            "duration_ms": self.duration_ms,
            "error": self.error,
        }


@dataclass(frozen=True, slots=True)
class TrimResult:
    """One ``malloc_trim(0)``: ``trimmed`` is its C return value (memory was released)."""

    available: bool
    trimmed: bool
    duration_ms: float

    def as_dict(self) -> dict[str, object]:
        return {
            "available": self.available,
            "trimmed": self.trimmed,
            "duration_ms": self.duration_ms,
        }


@dataclass(frozen=True, slots=True)
class _Registered:
    name: str
    func: Callable[[], object]
    critical: bool


class Cleanups:
    """Registry of callables that free app-level caches; run by the governor's emergency step.

    Registration is thread safe; ``run`` works on a snapshot, so a cleanup may itself register
    or unregister others (the change applies from the next run).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._registered: dict[str, _Registered] = {}  # insertion order is registration order

    def register(self, name: str, func: Callable[[], object], critical: bool = False) -> None:
        """Add ``func`` under ``name``; ``critical`` ones run only with ``include_critical``."""
        if not callable(func):
            raise TypeError(f"cleanup {name!r} must be callable, got {type(func).__name__}")
        if not isinstance(name, str):
            raise TypeError(f"a cleanup name must be a str, got {type(name).__name__}")
        if not name:
            raise ValueError(f"a cleanup needs a non-empty name, got {name!r}")
        if name.startswith(STDLIB_PREFIX):
            # Results of the stdlib caches carry this prefix; a report must stay unambiguous.
            raise ValueError(f"cleanup names starting with {STDLIB_PREFIX!r} are reserved")
        with self._lock:
            if name in self._registered:
                raise ValueError(f"a cleanup named {name!r} is already registered")
            self._registered[name] = _Registered(name, func, critical)

    def unregister(self, name: str) -> None:
        """Remove the cleanup ``name``; ``KeyError`` if there is none."""
        with self._lock:
            del self._registered[name]

    def names(self) -> list[str]:
        """Registered names, critical ones included, in registration order."""
        with self._lock:
            return list(self._registered)

    def after_fork(self) -> None:
        """In a forked child: a lock another thread held at the fork would stay held."""
        self._lock = threading.Lock()

    def run(self, *, include_critical: bool = False) -> list[CleanupResult]:
        """Run the cleanups in registration order, then the stdlib caches; never raises.

        ``BaseException`` that is not an ``Exception`` (``KeyboardInterrupt``, ``SystemExit``)
        propagates: stopping the process is not a failed cleanup.
        """
        with self._lock:
            chosen = [c for c in self._registered.values() if include_critical or not c.critical]
        results = [_timed(c.name, c.func) for c in chosen]
        results.extend(clear_stdlib_caches())
        return results


def _timed(name: str, func: Callable[[], object]) -> CleanupResult:
    """Run one cleanup, timed; an exception is logged and reported, not raised."""
    start = time.perf_counter()
    try:
        func()
    except Exception as exc:
        duration_ms = (time.perf_counter() - start) * 1000
        log.warning("[MEMORY] cleanup %r failed", name, exc_info=True)
        message = str(exc)
        error = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
        return CleanupResult(name, False, duration_ms, error)
    return CleanupResult(name, True, (time.perf_counter() - start) * 1000)


def _stdlib_cache_clearers() -> list[tuple[str, Callable[[], object]]]:
    """The stdlib's cache-clearing calls this interpreter has (all private ones may go away)."""
    found: list[tuple[str, Callable[[], object]]] = []

    def add(name: str, owner: object, attr: str) -> None:
        func = getattr(owner, attr, None)
        if callable(func):
            found.append((STDLIB_PREFIX + name, func))

    add("re", re, "purge")
    add("linecache", linecache, "clearcache")
    # fnmatch's compiled patterns sit in an lru_cache: `_compile_pattern` up to 3.13 at least.
    for attr in ("_compile_pattern", "_compile"):
        if hasattr(getattr(fnmatch, attr, None), "cache_clear"):
            add("fnmatch", getattr(fnmatch, attr), "cache_clear")
            break
    add("urllib.parse", urllib.parse, "clear_cache")
    add("struct", struct, "_clearcache")
    add("importlib", importlib, "invalidate_caches")
    add("sys.type_cache", sys, "_clear_type_cache")
    return found


def clear_stdlib_caches() -> list[CleanupResult]:
    """Empty the interpreter's own caches, one ``CleanupResult`` (``"stdlib:re"``, ...) each."""
    return [_timed(name, func) for name, func in _stdlib_cache_clearers()]


@functools.cache
def _load_malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, looked up once; ``None`` where there is none."""
    # ctypes only here: a process that never trims never loads it.
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        func = libc.malloc_trim
    except (OSError, AttributeError):
        log.debug("[MEMORY] malloc_trim is not available (no glibc); trimming is skipped")
        return None
    func.argtypes = [ctypes.c_size_t]
    func.restype = ctypes.c_int
    return func


def malloc_trim_available() -> bool:
    """Whether this process's C library has ``malloc_trim`` (glibc)."""
    return _load_malloc_trim() is not None


def malloc_trim() -> TrimResult:
    """Hand the freed glibc heap back to the OS with ``malloc_trim(0)``; never raises.

    It walks every arena, so it takes time proportional to the heap: call it between
    requests. ctypes releases the GIL for the call.
    """
    func = _load_malloc_trim()
    if func is None:
        return TrimResult(available=False, trimmed=False, duration_ms=0.0)
    start = time.perf_counter()
    released = func(0)
    return TrimResult(True, bool(released), (time.perf_counter() - start) * 1000)
