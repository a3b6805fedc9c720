"""The memory API's ``profile`` body: top types, components, gc, tracemalloc, the deep view."""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from werkzeug.test import Client

from wsgi_memopt import MemoryOptimizer
from wsgi_memopt.api.profile import profile
from wsgi_memopt.lazy import LazyModules

MB = float(1 << 20)


def cacheable_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    body = b"x" * 4096 + environ["PATH_INFO"].encode()
    start_response(
        "200 OK",
        [
            ("Content-Type", "text/plain"),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "public, max-age=600"),
        ],
    )
    return [body]


@pytest.fixture
def optimizer() -> Iterator[MemoryOptimizer]:
    optimizer = MemoryOptimizer(cacheable_app, monitor_interval_s=0, gc_freeze=False)
    yield optimizer
    optimizer.governor.stop()


@pytest.fixture
def not_tracing() -> Iterator[None]:
    frames = tracemalloc.get_traceback_limit() if tracemalloc.is_tracing() else 0
    tracemalloc.stop()
    try:
        yield
    finally:
        if frames:
            tracemalloc.start(frames)


@pytest.fixture
def tracing() -> Iterator[None]:
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start(1)
    try:
        yield
    finally:
        if not was_tracing:
            tracemalloc.stop()


def test_keys_and_types(optimizer: MemoryOptimizer, not_tracing: None) -> None:
    body = profile(optimizer.parts)
    assert set(body) == {
        "objects_total",
        "top_types",
        "components",
        "gc",
        "tracemalloc",
        "notes",
        "duration_ms",
    }
    assert isinstance(body["objects_total"], int)
    assert body["objects_total"] > 0
    assert isinstance(body["duration_ms"], float)
    assert body["duration_ms"] > 0  # counting every object takes time
    assert len(body["top_types"]) == 20
    for row in body["top_types"]:
        assert set(row) == {"type", "count", "size_mb_estimate"}
        assert isinstance(row["type"], str)
        assert row["type"]
        assert isinstance(row["count"], int)
        assert row["count"] > 0
        assert isinstance(row["size_mb_estimate"], float)
        assert row["size_mb_estimate"] >= 0
    counts = [row["count"] for row in body["top_types"]]
    assert counts == sorted(counts, reverse=True)
    assert sum(counts) <= body["objects_total"]
    gc_part = body["gc"]
    assert {"counts", "thresholds", "generations", "frozen", "uncollectable", "scheduler"} <= set(
        gc_part
    )
    assert len(gc_part["counts"]) == 3
    assert len(gc_part["thresholds"]) == 3
    assert isinstance(gc_part["uncollectable"], int)
    assert gc_part["scheduler"]["mode"] == optimizer.settings.gc_mode
    assert all(isinstance(note, str) for note in body["notes"])
    json.loads(json.dumps(body))  # JSON-ready, with no custom encoder


def test_finds_many_instances_of_a_local_class(optimizer: MemoryOptimizer) -> None:
    class Crowd:
        pass

    crowd = [Crowd() for _ in range(50_000)]
    body = profile(optimizer.parts, limit=100)
    rows = {row["type"]: row for row in body["top_types"]}
    name = f"{__name__}.{Crowd.__qualname__}"
    assert name in rows, list(rows)
    assert rows[name]["count"] >= 50_000
    assert rows[name]["size_mb_estimate"] > 0
    del crowd


def test_limit_is_respected(optimizer: MemoryOptimizer) -> None:
    assert len(profile(optimizer.parts, limit=1)["top_types"]) == 1
    assert len(profile(optimizer.parts, limit=7)["top_types"]) == 7
    assert len(profile(optimizer.parts, limit=1000)["top_types"]) <= 1000


@pytest.mark.parametrize("limit", [0, -1, 1001, True, 2.5, "5"])
def test_limit_is_validated(optimizer: MemoryOptimizer, limit: Any) -> None:
    with pytest.raises(ValueError, match="limit"):
        profile(optimizer.parts, limit=limit)


def test_components_without_tracing(optimizer: MemoryOptimizer, not_tracing: None) -> None:
    client = Client(optimizer, use_cookies=False)
    for n in range(20):
        client.get(f"/page/{n}", buffered=True)
    assert optimizer.cache.stats()["items"] == 20
    assert optimizer.cache.bytes > 20 * 4096
    components = profile(optimizer.parts)["components"]
    assert components["cache_mb"] == round(optimizer.cache.bytes / MB, 3)
    assert components["modules_mb"] == 0.0
    assert components["rss_mb"] > components["cache_mb"]
    assert components["python_heap_mb"] is None
    assert components["other_mb"] is None
    assert "tracemalloc" in components["sources"]["python_heap_mb"]
    notes = profile(optimizer.parts)["notes"]
    assert any("python_heap_mb is None" in note for note in notes)


def test_components_with_tracing(optimizer: MemoryOptimizer, tracing: None) -> None:
    Client(optimizer, use_cookies=False).get("/page", buffered=True)
    components = profile(optimizer.parts)["components"]
    assert components["python_heap_mb"] is not None
    assert components["python_heap_mb"] > 0
    expected = (
        components["rss_mb"]
        - components["cache_mb"]
        - components["modules_mb"]
        - components["python_heap_mb"]
    )
    assert components["other_mb"] == pytest.approx(expected, abs=0.01)


def test_modules_are_the_loaded_lazy_imports(not_tracing: None) -> None:
    lazy = LazyModules()
    lazy.register("colorsys")
    lazy.get("colorsys")
    optimizer = MemoryOptimizer(cacheable_app, lazy=lazy, monitor_interval_s=0, gc_freeze=False)
    try:
        modules = lazy.stats()["modules"]
        assert isinstance(modules, dict)
        assert modules["colorsys"]["state"] == "loaded"
        expected = sum(
            entry["import_rss_bytes"] or 0
            for entry in modules.values()
            if entry["state"] == "loaded"
        )
        components = profile(optimizer.parts)["components"]
        assert components["modules_mb"] == round(expected / MB, 3)
        assert "measured at import" in components["sources"]["modules_mb"]
    finally:
        optimizer.governor.stop()


def test_tracemalloc_section_when_tracing(optimizer: MemoryOptimizer, tracing: None) -> None:
    hoard = [bytearray(1024) for _ in range(2000)]  # ~2 MiB from one line
    section = profile(optimizer.parts, limit=5)["tracemalloc"]
    assert section is not None
    assert section["traced_mb"] > 1
    assert 1 <= len(section["top"]) <= 5
    for row in section["top"]:
        assert set(row) == {"site", "size_mb", "count"}
        filename, _, line = row["site"].rpartition(":")
        assert filename
        assert line.isdigit()
    assert any(
        row["site"].endswith("test_api_profile.py:" + _line_of("hoard")) for row in section["top"]
    )
    del hoard


def _line_of(marker: str) -> str:
    with open(__file__, encoding="utf-8") as source:
        for number, text in enumerate(source, 1):
            if text.strip().startswith(f"{marker} = "):
                return str(number)
    raise AssertionError(marker)


def test_tracemalloc_section_when_off(optimizer: MemoryOptimizer, not_tracing: None) -> None:
    body = profile(optimizer.parts)
    assert body["tracemalloc"] is None
    assert any("tracemalloc is off" in n and "tracemalloc_frames" in n for n in body["notes"])


def test_deep_view_has_pympler_rows(optimizer: MemoryOptimizer) -> None:
    body = profile(optimizer.parts, limit=5, deep=True)
    rows = body["deep"]
    assert 1 <= len(rows) <= 5
    for row in rows:
        assert set(row) == {"type", "count", "size_mb"}
        assert isinstance(row["type"], str)
        assert isinstance(row["count"], int)
        assert row["count"] > 0
        assert isinstance(row["size_mb"], float)
    sizes = [row["size_mb"] for row in rows]
    assert sizes == sorted(sizes, reverse=True)
    json.dumps(body)
    assert "deep" not in profile(optimizer.parts, limit=5)
