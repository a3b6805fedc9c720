"""The cleanup registry, the stdlib caches and malloc_trim, checked by what they really do."""

from __future__ import annotations

import ctypes
import fnmatch
import functools
import json
import linecache
import logging
import re
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator

import pytest
from helpers.needs import require_malloc_trim

from wsgi_memopt.memory import cleanups as cleanups_module
from wsgi_memopt.memory.cleanups import (
    CleanupResult,
    Cleanups,
    TrimResult,
    clear_stdlib_caches,
    malloc_trim,
    malloc_trim_available,
)


def registered_names(results: list[CleanupResult]) -> list[str]:
    """The names of the app cleanups in ``results``, without the stdlib ones."""
    return [r.name for r in results if not r.name.startswith("stdlib:")]


def boom() -> None:
    raise RuntimeError("cache is wedged")


# --- registry -------------------------------------------------------------------------------


def test_run_calls_cleanups_in_registration_order_then_stdlib() -> None:
    calls: list[str] = []
    cleanups = Cleanups()
    for name in ("templates", "sessions", "thumbnails"):
        cleanups.register(name, functools.partial(calls.append, name))

    results = cleanups.run()

    assert calls == ["templates", "sessions", "thumbnails"]
    assert [r.name for r in results] == calls + [r.name for r in clear_stdlib_caches()]
    assert all(r.ok and r.error is None and r.duration_ms > 0 for r in results)  # each timed


@pytest.mark.parametrize(
    ("include_critical", "expected"),
    [
        pytest.param(False, ["cheap", "also-cheap"], id="critical-skipped-by-default"),
        pytest.param(True, ["cheap", "expensive", "also-cheap"], id="critical-run-when-asked"),
    ],
)
def test_critical_cleanups_run_only_when_asked(include_critical: bool, expected: list[str]) -> None:
    calls: list[str] = []
    cleanups = Cleanups()
    cleanups.register("cheap", lambda: calls.append("cheap"))
    cleanups.register("expensive", lambda: calls.append("expensive"), critical=True)
    cleanups.register("also-cheap", lambda: calls.append("also-cheap"))

    results = cleanups.run(include_critical=include_critical)

    assert calls == expected
    assert registered_names(results) == expected
    assert cleanups.names() == ["cheap", "expensive", "also-cheap"]


def test_duplicate_name_is_refused_and_the_first_stays() -> None:
    calls: list[str] = []
    cleanups = Cleanups()
    cleanups.register("templates", lambda: calls.append("first"))

    with pytest.raises(ValueError, match="'templates' is already registered"):
        cleanups.register("templates", lambda: calls.append("second"))

    cleanups.run()
    assert calls == ["first"]


@pytest.mark.parametrize(
    ("func", "name", "error", "match"),
    [
        pytest.param(None, "x", TypeError, "must be callable, got NoneType", id="none"),
        pytest.param("clear", "x", TypeError, "must be callable, got str", id="string"),
        pytest.param(dict.clear, "", ValueError, "non-empty name", id="empty-name"),
        pytest.param(dict.clear, 42, TypeError, "must be a str, got int", id="int-name"),
        pytest.param(dict.clear, "stdlib:re", ValueError, "reserved", id="stdlib-prefix"),
    ],
)
def test_bad_registration_is_refused(
    func: object, name: object, error: type[Exception], match: str
) -> None:
    cleanups = Cleanups()
    with pytest.raises(error, match=match):
        cleanups.register(name, func)  # type: ignore[arg-type]
    assert cleanups.names() == []


def test_unregister_removes_and_unknown_name_is_a_key_error() -> None:
    calls: list[str] = []
    cleanups = Cleanups()
    cleanups.register("a", lambda: calls.append("a"))
    cleanups.register("b", lambda: calls.append("b"))

    cleanups.unregister("a")
    assert cleanups.names() == ["b"]
    cleanups.run()
    assert calls == ["b"]

    with pytest.raises(KeyError, match="nope"):
        cleanups.unregister("nope")
    cleanups.register("a", lambda: calls.append("a again"))  # the name is free again
    assert cleanups.names() == ["b", "a"]


def test_a_raising_cleanup_is_reported_logged_and_does_not_stop_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[str] = []
    cleanups = Cleanups()
    cleanups.register("before", lambda: calls.append("before"))
    cleanups.register("wedged", boom)
    cleanups.register("after", lambda: calls.append("after"))

    with caplog.at_level(logging.WARNING, logger="wsgi_memopt"):
        results = cleanups.run()

    assert calls == ["before", "after"]
    by_name = {r.name: r for r in results}
    assert by_name["wedged"].ok is False
    assert by_name["wedged"].error == "RuntimeError: cache is wedged"
    assert by_name["wedged"].duration_ms > 0  # a failed cleanup is timed all the same
    assert by_name["before"].ok
    assert by_name["after"].ok
    assert all(r.ok for r in results if r.name.startswith("stdlib:"))

    (record,) = [r for r in caplog.records if r.name == "wsgi_memopt"]
    assert record.levelno == logging.WARNING
    assert "[MEMORY]" in record.getMessage()
    assert "'wedged'" in record.getMessage()
    assert record.exc_info is not None
    assert record.exc_info[0] is RuntimeError
    assert "cache is wedged" in caplog.text  # the traceback is in the log


def test_error_without_a_message_is_just_the_type() -> None:
    def raise_bare() -> None:
        raise LookupError

    cleanups = Cleanups()
    cleanups.register("bare", raise_bare)
    (result,) = [r for r in cleanups.run() if r.name == "bare"]
    assert result.error == "LookupError"


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit], ids=lambda e: e.__name__)
def test_keyboard_interrupt_and_system_exit_propagate(exc: type[BaseException]) -> None:
    def stop() -> None:
        raise exc

    calls: list[str] = []
    cleanups = Cleanups()
    cleanups.register("stop", stop)
    cleanups.register("after", lambda: calls.append("after"))

    with pytest.raises(exc):
        cleanups.run()
    assert calls == []


def test_run_works_on_a_snapshot_so_a_cleanup_may_change_the_registry() -> None:
    calls: list[str] = []
    cleanups = Cleanups()

    def reshuffle() -> None:
        calls.append("reshuffle")
        cleanups.unregister("later")  # would deadlock if run() held the lock
        cleanups.register("added", lambda: calls.append("added"))

    cleanups.register("reshuffle", reshuffle)
    cleanups.register("later", lambda: calls.append("later"))

    assert registered_names(cleanups.run()) == ["reshuffle", "later"]
    assert calls == ["reshuffle", "later"]
    assert cleanups.names() == ["reshuffle", "added"]


def test_concurrent_registration_loses_nothing() -> None:
    cleanups = Cleanups()
    barrier = threading.Barrier(8)

    def register_many(thread: int) -> None:
        barrier.wait()
        for i in range(200):
            cleanups.register(f"t{thread}-{i}", {}.clear)

    threads = [threading.Thread(target=register_many, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    names = cleanups.names()
    assert len(names) == len(set(names)) == 8 * 200
    for t in range(8):  # each thread's own registrations keep their order
        assert [n for n in names if n.startswith(f"t{t}-")] == [f"t{t}-{i}" for i in range(200)]


def test_cleanup_result_as_dict() -> None:
    result = CleanupResult("wedged", False, 1.5, "RuntimeError: cache is wedged")
    assert result.as_dict() == {
        "name": "wedged",
        "ok": False,
        "duration_ms": 1.5,
        "error": "RuntimeError: cache is wedged",
    }
    assert json.loads(json.dumps(result.as_dict())) == result.as_dict()
    assert CleanupResult("ok", True, 0.1).as_dict()["error"] is None


# --- stdlib caches --------------------------------------------------------------------------


def test_clear_stdlib_caches_reports_each_cache_it_cleared() -> None:
    results = clear_stdlib_caches()

    names = [r.name for r in results]
    # all of these exist on CPython 3.10-3.13; a missing one is skipped, not an error
    assert names == [
        "stdlib:re",
        "stdlib:linecache",
        "stdlib:fnmatch",
        "stdlib:urllib.parse",
        "stdlib:struct",
        "stdlib:importlib",
        "stdlib:sys.type_cache",
    ]
    assert all(r.ok and r.error is None and r.duration_ms > 0 for r in results)  # each timed


def test_clear_stdlib_caches_empties_the_re_cache() -> None:
    for i in range(20):
        re.compile(f"cleanup-test-{i}-[a-z]+")
    assert len(re._cache) > 0  # type: ignore[attr-defined]

    clear_stdlib_caches()

    assert len(re._cache) == 0  # type: ignore[attr-defined]


def test_clear_stdlib_caches_empties_linecache() -> None:
    assert linecache.getline(__file__, 1).startswith('"""')
    assert __file__ in linecache.cache

    clear_stdlib_caches()

    assert linecache.cache == {}


def test_clear_stdlib_caches_empties_the_fnmatch_cache() -> None:
    fnmatch.fnmatch("report.csv", "*.cleanup-test")
    compile_pattern = fnmatch._compile_pattern  # type: ignore[attr-defined]
    assert compile_pattern.cache_info().currsize > 0

    clear_stdlib_caches()

    assert compile_pattern.cache_info().currsize == 0


def test_a_failing_stdlib_clearer_is_reported_and_the_others_still_run(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(re, "purge", boom)
    linecache.getline(__file__, 1)

    with caplog.at_level(logging.WARNING, logger="wsgi_memopt"):
        results = clear_stdlib_caches()

    assert results[0] == CleanupResult(
        "stdlib:re", False, results[0].duration_ms, "RuntimeError: cache is wedged"
    )
    assert all(r.ok for r in results[1:])
    assert linecache.cache == {}
    assert "[MEMORY] cleanup 'stdlib:re' failed" in caplog.text


def test_a_missing_stdlib_clearer_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(sys, "_clear_type_cache")
    names = [r.name for r in clear_stdlib_caches()]
    assert "stdlib:sys.type_cache" not in names
    assert "stdlib:re" in names


# --- malloc_trim ----------------------------------------------------------------------------


@pytest.fixture
def fresh_libc_lookup() -> Iterator[None]:
    """Forget the looked-up ``malloc_trim`` before and after, so a fake libc does not stick."""
    cleanups_module._load_malloc_trim.cache_clear()
    yield
    cleanups_module._load_malloc_trim.cache_clear()


class LibcWithoutTrim:
    """A C library that loads but has no ``malloc_trim`` (musl, macOS's libSystem)."""

    def __init__(self, name: str | None) -> None:
        self.name = name

    def __getattr__(self, symbol: str) -> object:
        raise AttributeError(f"{self.name}: undefined symbol: {symbol}")


def no_libc(name: str | None) -> object:
    raise OSError(f"{name}: cannot open shared object file")


@pytest.mark.usefixtures("fresh_libc_lookup")
@pytest.mark.parametrize(
    "cdll",
    [
        pytest.param(LibcWithoutTrim, id="libc-without-malloc_trim"),
        pytest.param(no_libc, id="no-loadable-libc"),
    ],
)
def test_malloc_trim_without_glibc_is_quietly_unavailable(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, cdll: object
) -> None:
    monkeypatch.setattr(ctypes, "CDLL", cdll)

    with caplog.at_level(logging.INFO, logger="wsgi_memopt"):
        assert malloc_trim_available() is False
        assert malloc_trim() == TrimResult(available=False, trimmed=False, duration_ms=0.0)
    assert caplog.records == []


@pytest.mark.usefixtures("fresh_libc_lookup")
def test_libc_is_looked_up_once(monkeypatch: pytest.MonkeyPatch) -> None:
    loads: list[str | None] = []
    real_cdll = ctypes.CDLL

    def counting_cdll(name: str | None) -> ctypes.CDLL:
        loads.append(name)
        return real_cdll(name)

    monkeypatch.setattr(ctypes, "CDLL", counting_cdll)
    for _ in range(3):
        malloc_trim_available()
        malloc_trim()
    assert len(loads) == 1


def test_malloc_trim_in_process_returns_a_measured_result() -> None:
    result = malloc_trim()
    assert result.available is malloc_trim_available()
    assert not result.trimmed or result.available  # nothing is trimmed without malloc_trim
    # Timed when it ran; 0 when there was nothing to call.
    assert (result.duration_ms > 0) is result.available
    assert result.as_dict() == {
        "available": result.available,
        "trimmed": result.trimmed,
        "duration_ms": result.duration_ms,
    }


BURST_SCRIPT = textwrap.dedent(
    """
    import gc, json, psutil
    from wsgi_memopt.memory.cleanups import malloc_trim

    process = psutil.Process()

    def rss_mb():
        return process.memory_info().rss / 2**20

    base = rss_mb()
    # 300_000 separate 1 KB bytes objects: each is its own glibc malloc (above pymalloc's
    # 512-byte limit, far below the 128 KB mmap threshold), so all of them sit in the heap.
    burst = [bytes(1024) for _ in range(300_000)]
    # Kept alive on top of the heap: the top cannot shrink by itself past these.
    pinned = [bytes(1024) for _ in range(500)]
    peak = rss_mb()
    del burst
    gc.collect()
    freed = rss_mb()
    trim = malloc_trim()
    trimmed = rss_mb()
    print(json.dumps({
        "base": base, "peak": peak, "freed": freed, "trimmed": trimmed,
        "trim": trim.as_dict(), "pinned": len(pinned),
    }))
    """
)


def test_malloc_trim_returns_a_freed_burst_to_the_os() -> None:
    require_malloc_trim()

    proc = subprocess.run(
        [sys.executable, "-c", BURST_SCRIPT],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    m = json.loads(proc.stdout)
    grown = m["peak"] - m["base"]
    back_without_trim = m["peak"] - m["freed"]
    back_with_trim = m["peak"] - m["trimmed"]
    print(
        f"burst grew {grown:.1f} MB; back without trim {back_without_trim:.1f} MB, "
        f"with trim {back_with_trim:.1f} MB; trim took {m['trim']['duration_ms']:.1f} ms"
    )

    assert grown > 250, m  # the burst really landed in RSS
    assert m["trim"]["available"] is True
    assert m["trim"]["trimmed"] is True
    # `del` + gc.collect() leave the freed heap mapped: at most a small share comes back
    # (the burst list's own buffer is mmapped and does).
    assert back_without_trim <= 0.10 * grown, m
    # malloc_trim(0) hands (nearly) all of it back.
    assert back_with_trim >= 0.95 * grown, m
