"""The memory API's ``/metrics``: the exposition parsed back with prometheus_client's own parser
equals the optimizer's own figures; the collector works in an app's registry; without
prometheus_client the functions raise MetricsUnavailable with the install hint, and importing
the module never imports prometheus_client."""

from __future__ import annotations

import dataclasses
import gc
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterable
from types import ModuleType
from typing import Any

import pytest
from helpers.needs import require_module
from helpers.wsgi import get, wrap

from wsgi_memopt import MemoryOptimizer
from wsgi_memopt.api.metrics import (
    MetricsUnavailable,
    memory_collector,
    render_metrics,
)
from wsgi_memopt.memory.pressure import MB, MemorySample

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _prometheus() -> ModuleType:
    """prometheus_client; skipped when missing, but a failure under CI (which installs it)."""
    require_module("prometheus_client")
    import prometheus_client

    return prometheus_client


def _parse(text: str) -> tuple[dict[str, str], Samples]:
    """(family name -> type, (sample name, sorted labels) -> value), by prometheus_client."""
    from prometheus_client.parser import text_string_to_metric_families

    types: dict[str, str] = {}
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return types, samples


def _app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    control = {"/private": "private", "/no-store": "no-store"}.get(path, "public, max-age=60")
    start_response("200 OK", [("Content-Type", "text/plain"), ("Cache-Control", control)])
    return [b"hello " + path.encode()]


def _driven(optimizes: int = 0) -> MemoryOptimizer:
    """An optimizer after ``optimizes`` optimizes (they empty the cache), then a few requests:
    stores, a hit, misses, rejections, an eviction."""
    optimizer, client = wrap(_app, cache_max_items=2)
    for _ in range(optimizes):
        optimizer.governor.optimize("test")
    for path in ("/a", "/a", "/b", "/c", "/private", "/no-store", "/private"):
        assert get(client, path).status_code == 200
    return optimizer


def _fixed_sample(status: str = "warning", percent: float = 80.0) -> MemorySample:
    return MemorySample(
        memory_percent=percent,
        rss_mb=123.5,
        used_mb=819.2,
        available_mb=204.8,
        limit_mb=1024.0,
        source="container",
        status=status,
        taken_at=time.time(),
    )


def test_render_parses_back_to_the_optimizers_own_figures() -> None:
    _prometheus()
    optimizer = _driven(optimizes=2)
    sample = _fixed_sample()
    optimizer.governor.last_sample = sample  # fresh: the collector must use it, not sample anew
    optimizer.governor.restart_reason = "rss over restart_percent"
    gc_before = gc.get_stats()

    body, content_type = render_metrics(optimizer.parts)

    gc_after = gc.get_stats()
    assert content_type.startswith("text/plain; version=0.0.4")
    types, samples = _parse(body.decode())
    p = "wsgi_memopt_"
    source = (("source", "container"),)
    assert samples[(p + "memory_percent", source)] == 80.0
    assert samples[(p + "memory_used_bytes", source)] == round(819.2 * MB)
    assert samples[(p + "memory_limit_bytes", source)] == 1024 * MB
    assert samples[(p + "process_rss_bytes", ())] == round(123.5 * MB)

    cache = optimizer.cache.stats()
    assert cache["stores"] >= 3
    assert cache["hits"] == 1
    assert cache["evictions"] >= 1
    assert cache["rejected"] == {"private": 2, "no-store": 1}
    assert samples[(p + "cache_items", ())] == cache["items"] == 2
    assert samples[(p + "cache_bytes", ())] == cache["bytes"] > 0
    for name in ("hits", "misses", "evictions", "stores"):
        assert samples[(p + f"cache_{name}_total", ())] == cache[name], name
        assert types[p + f"cache_{name}"] == "counter"
    for reason, count in cache["rejected"].items():
        assert samples[(p + "cache_rejected_total", (("reason", reason),))] == count

    for generation, (before, after) in enumerate(zip(gc_before, gc_after, strict=True)):
        labels = (("generation", str(generation)),)
        for key in ("collections", "collected"):
            value = samples[(p + f"gc_{key}_total", labels)]
            assert before[key] <= value <= after[key], (generation, key)

    kinds = [action.kind for action in optimizer.governor.history]
    assert kinds.count("optimize") == 2
    assert types[p + "governor_actions"] == "counter"
    for kind in ("optimize", "emergency", "trim", "recycle"):
        value = samples[(p + "governor_actions_total", (("kind", kind),))]
        assert value == kinds.count(kind) == optimizer.governor.action_counts[kind], kind

    assert types[p + "status"] == "gauge"
    for band in ("excellent", "good", "warning", "critical"):
        assert samples[(p + "status", (("status", band),))] == (band == "warning")
    assert samples[(p + "restart_needed", ())] == 1
    # Only our figures: the private registry holds none of prometheus_client's defaults.
    assert all(name.startswith(p) for name in types)


def test_a_stale_sample_is_taken_anew() -> None:
    _prometheus()
    optimizer = _driven()
    stale = _fixed_sample(status="critical", percent=99.0)
    stale = dataclasses.replace(stale, taken_at=time.time() - 5)
    optimizer.governor.last_sample = stale
    body, _ = render_metrics(optimizer.parts)
    _, samples = _parse(body.decode())
    fresh = optimizer.governor.last_sample
    assert fresh is not None
    assert fresh is not stale
    assert fresh.taken_at > stale.taken_at + 4
    labels = (("source", fresh.source),)
    assert samples[("wsgi_memopt_memory_percent", labels)] == pytest.approx(fresh.memory_percent)
    assert samples[("wsgi_memopt_status", (("status", fresh.status),))] == 1
    assert samples[("wsgi_memopt_restart_needed", ())] == 0


def test_the_collector_works_in_an_apps_own_registry() -> None:
    prometheus_client = _prometheus()
    optimizer = _driven()
    registry = prometheus_client.CollectorRegistry(auto_describe=True)
    taken = len(optimizer.governor.samples)
    registry.register(memory_collector(optimizer.parts))
    assert len(optimizer.governor.samples) == taken  # describe(): registering samples nothing
    assert registry.get_sample_value("wsgi_memopt_cache_hits_total") == 1
    assert registry.get_sample_value("wsgi_memopt_cache_items") == 2
    _, samples = _parse(prometheus_client.generate_latest(registry).decode())
    assert samples[("wsgi_memopt_cache_stores_total", ())] == optimizer.cache.stats()["stores"]
    # A second collector of the same names in the same registry is refused, as usual.
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        registry.register(memory_collector(optimizer.parts))


def _run(prelude: str, code: str) -> subprocess.CompletedProcess[str]:
    script = textwrap.dedent(prelude) + textwrap.dedent(code)
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )


def test_without_prometheus_client_both_functions_raise_with_the_install_hint() -> None:
    result = _run(
        'import sys\nsys.modules["prometheus_client"] = None\n',
        """
        from wsgi_memopt import MemoryOptimizer
        from wsgi_memopt.api.metrics import MetricsUnavailable, memory_collector, render_metrics

        def app(environ, start_response):
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"x"]

        optimizer = MemoryOptimizer(app, monitor_interval_s=0, gc_freeze=False)
        for function in (render_metrics, memory_collector):
            try:
                function(optimizer.parts)
            except MetricsUnavailable as error:
                print("RAISED", error)
            else:
                print("DID NOT RAISE")
        """,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    for line in lines:
        assert line.startswith("RAISED ")
        assert "pip install 'wsgi_memopt[prometheus]'" in line


def test_importing_the_module_does_not_import_prometheus_client() -> None:
    result = _run(
        "import sys\n",
        """
        import wsgi_memopt
        import wsgi_memopt.api.metrics
        print("prometheus_client" in sys.modules)
        """,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_metrics_unavailable_is_an_exception_with_the_hint() -> None:
    error = MetricsUnavailable()
    assert "pip install 'wsgi_memopt[prometheus]'" in str(error)
