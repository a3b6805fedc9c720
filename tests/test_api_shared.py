"""The memory API, /metrics and ``wsgi-memopt status`` show the shared store beside the worker's
own figures: where it is (its password hidden), its state, what Redis holds, this worker's hits,
misses and errors there. A Redis that is down is reported, and never fails /health."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.cli import demo_token, run_cli
from helpers.needs import require_module
from helpers.openapi import PREFIX, schema_errors
from helpers.servers import Server, fetch, free_port
from helpers.wsgi import get, wrap
from werkzeug.test import Client

from wsgi_memopt import MemoryOptimizer

LOOPBACK = {"REMOTE_ADDR": "127.0.0.1"}
SHARED_FIELDS = {
    "backend",
    "kind",
    "prefix",
    "state",
    "hits",
    "misses",
    "hit_rate",
    "stores",
    "errors",
    "errors_by_kind",
    "used_memory_bytes",
    "keys",
    "listening",
    "invalidations_published",
    "invalidations_received",
}


def _page(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Cache-Control", "max-age=60")])
    return [b"page " + environ["PATH_INFO"].encode()]


@pytest.fixture
def optimizers() -> Iterator[Callable[..., tuple[MemoryOptimizer, Client]]]:
    """``make(**settings)``: a middleware on ``_page`` with its API open to loopback; every
    one made stops its invalidation listener when the test ends."""
    made: list[MemoryOptimizer] = []

    def make(**settings: Any) -> tuple[MemoryOptimizer, Client]:
        optimizer, client = wrap(_page, api_allow_networks="127.0.0.1/32", **settings)
        made.append(optimizer)
        return optimizer, client

    yield make
    for optimizer in made:
        optimizer.cache.store.close()


def _api(client: Client, endpoint: str) -> Any:
    response = get(client, f"{PREFIX}/{endpoint}", environ_base=LOOPBACK)
    assert response.status_code == 200, response.data
    return response


def test_stats_show_the_shared_store_beside_the_worker(
    optimizers: Callable[..., tuple[MemoryOptimizer, Client]], redis_url: str
) -> None:
    _, first = optimizers(cache_backend=redis_url)
    _, second = optimizers(cache_backend=redis_url)
    assert get(first, "/a").headers["Cache-Status"] == "wsgi-memopt; fwd=miss"
    assert get(second, "/a").headers["Cache-Status"].startswith("wsgi-memopt; hit")
    assert get(second, "/b").status_code == 200  # a miss in Redis too

    body = _api(second, "stats").get_json()
    assert schema_errors("GET", PREFIX + "/stats", 200, body) == []
    shared = body["cache"]["shared"]
    assert SHARED_FIELDS <= set(shared)
    assert shared["backend"] == redis_url
    assert shared["state"] == "closed"
    assert (shared["hits"], shared["misses"], shared["stores"]) == (1, 1, 1)
    assert shared["errors"] == 0
    assert shared["keys"] == 2  # /a and /b, as Redis counts them
    assert shared["used_memory_bytes"] > 0
    # The worker's own figures stay its own: bounded by the small default of a shared setup.
    assert body["cache"]["max_mb"] == 5


def test_the_default_memory_backend_reports_no_shared_store(
    optimizers: Callable[..., tuple[MemoryOptimizer, Client]],
) -> None:
    _, client = optimizers()
    body = _api(client, "stats").get_json()
    assert body["cache"]["shared"] is None
    assert "shared_cache" not in _api(client, "health").get_json()


def test_redis_down_is_reported_and_health_stays_200(
    optimizers: Callable[..., tuple[MemoryOptimizer, Client]],
) -> None:
    url = f"redis://app:s3cret-pass@127.0.0.1:{free_port()}/0"
    _, client = optimizers(cache_backend=url, cache_redis_retry_s=60)
    for path in ("/a", "/b", "/c", "/d"):
        assert get(client, path).status_code == 200  # served by the app, never failed

    health = _api(client, "health").get_json()
    assert schema_errors("GET", PREFIX + "/health", 200, health) == []
    assert health["shared_cache"]["state"] == "open"
    assert health["shared_cache"]["breaker_opened"] == 1
    advice = [item for item in health["recommendations"] if item.get("setting") == "cache_backend"]
    assert len(advice) == 1
    assert "the shared cache is open" in advice[0]["finding"]

    stats = _api(client, "stats")
    assert "s3cret-pass" not in stats.get_data(as_text=True)
    shared = stats.get_json()["cache"]["shared"]
    assert shared["backend"] == f"redis://app:***@127.0.0.1:{url.rsplit(':', 1)[1]}"
    assert shared["errors_by_kind"]["connection"] >= 3
    assert shared["skipped"] > 0  # asked no more once open
    assert shared["used_memory_bytes"] is None
    assert shared["keys"] is None


def test_metrics_carry_the_shared_store(
    optimizers: Callable[..., tuple[MemoryOptimizer, Client]], redis_url: str
) -> None:
    require_module("prometheus_client")
    from prometheus_client.parser import text_string_to_metric_families

    _, first = optimizers(cache_backend=redis_url)
    _, second = optimizers(cache_backend=redis_url)
    get(first, "/a")
    get(second, "/a")
    text = _api(second, "metrics").get_data(as_text=True)
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    assert samples[("wsgi_memopt_shared_cache_up", ())] == 1
    assert samples[("wsgi_memopt_shared_cache_hits_total", ())] == 1
    assert samples[("wsgi_memopt_shared_cache_stores_total", ())] == 0
    assert samples[("wsgi_memopt_shared_cache_keys", ())] == 1
    assert samples[("wsgi_memopt_shared_cache_redis_used_memory_bytes", ())] > 0
    published = ("wsgi_memopt_shared_cache_invalidations_total", (("direction", "published"),))
    assert samples[published] == 0


def test_metrics_without_a_shared_store_have_no_shared_families(
    optimizers: Callable[..., tuple[MemoryOptimizer, Client]],
) -> None:
    require_module("prometheus_client")
    _, client = optimizers()
    assert "shared_cache" not in _api(client, "metrics").get_data(as_text=True)


def test_status_prints_the_shared_store(
    serve: Callable[..., Server], app_dir: Path, redis_url: str
) -> None:
    server = serve(
        "--demo",
        "--set",
        "pressure_source=process",
        "--set",
        "process_limit_mb=100000",
        "--set",
        f"cache_backend={redis_url}",
    )
    assert fetch(server.port, "/slow").status == 200  # stored in Redis as the server closes it
    result = run_cli("status", server.url, "--token", demo_token(server), app_dir=app_dir)
    assert result.returncode == 0, result.stderr
    line = re.search(r"^shared: +(.*)$", result.stdout, re.MULTILINE)
    assert line, result.stdout
    assert re.fullmatch(
        rf"{re.escape(redis_url)} closed; Redis \d+\.\d MB used, 1 entries under wsgi-memopt:; "
        r"hit rate 0% \(0 hits, 1 misses\), 0 errors",
        line[1],
    )
