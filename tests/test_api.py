"""The memory API through the WSGI interface: endpoints, errors, access, OpenAPI.

Every request goes through ``checked(optimizer)`` (wsgiref's validator + werkzeug's lint) around
an app that counts its calls; every API response is checked for ``Cache-Control: no-store``,
``nosniff``, for the app not being called, for the error shape, and against the OpenAPI
document's schema. The API is closed by default: the optimizers here get a token, and the
requests send it, unless a test is about access.
"""

from __future__ import annotations

import base64
import gc
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psutil
import pytest
from helpers.apps import CountingApp
from helpers.openapi import DOC, PREFIX, schema_errors
from helpers.wsgi import get, wrap
from openapi_spec_validator import validate
from werkzeug.test import Client, TestResponse

import wsgi_memopt.api.report
from wsgi_memopt import MemoryOptimizer
from wsgi_memopt.parts import Parts

MB = float(1 << 20)
LOOPBACK = "127.0.0.1"
REMOTE = "10.1.2.3"
TOKEN = "s3cret-Token_42"

# werkzeug's lint warns on a HEAD response whose Content-Length is not matched by a body, but
# a HEAD response legitimately has one (RFC 9110 §9.3.2): filtered on HEAD tests only.
HEAD_LINT = pytest.mark.filterwarnings("ignore:Content-Length and the number of bytes sent")

# The app's body: big enough for the cache to hold a real figure of bytes.
APP_BODY = b"app" + b"." * 2048


def app_body(call: int, path: str) -> bytes:
    """What the app answers on its ``call``-th call, for ``path``."""
    return APP_BODY + b" #%d " % call + repr(path).encode()


GET_ENDPOINTS = ["/health", "/stats", "/profile", "/metrics", "/openapi.json", "/"]
POST_ENDPOINTS = ["/optimize", "/optimize/force", "/gc/force", "/cache/clear"]


@dataclass
class Api:
    optimizer: MemoryOptimizer
    client: Client
    app: CountingApp
    seen: list[tuple[str, str, int, Any]] = field(default_factory=list)


@pytest.fixture
def make_api() -> Iterator[Callable[..., Api]]:
    made: list[MemoryOptimizer] = []

    def make(**settings: Any) -> Api:
        settings.setdefault("api_min_interval_s", 0)
        settings.setdefault("api_token", TOKEN)
        app = CountingApp(
            APP_BODY, headers=[("Cache-Control", "public, max-age=600")], echo="PATH_INFO"
        )
        optimizer, client = wrap(app, **settings)
        made.append(optimizer)
        return Api(optimizer, client, app)

    yield make
    for optimizer in made:
        optimizer.governor.stop()


@pytest.fixture
def api(make_api: Callable[..., Api]) -> Api:
    return make_api()


# -- helpers


def call(
    api: Api,
    method: str,
    path: str,
    *,
    remote: str = LOOPBACK,
    headers: dict[str, str] | None = None,
    token: str | None = TOKEN,
    query: str = "",
    conform: bool = True,
    **kwargs: Any,
) -> TestResponse:
    """One API request, read to its end; checks what every API response must satisfy.

    It sends ``Authorization: Bearer <token>`` unless ``token`` is None or ``headers`` has
    its own ``Authorization``.
    """
    calls = len(api.app.paths)
    stores = api.optimizer.cache.stats()["stores"]
    sent = dict(headers or {})
    if token is not None:
        sent.setdefault("Authorization", f"Bearer {token}")
    response = api.client.open(
        path + (f"?{query}" if query else ""),
        method=method,
        headers=sent,
        environ_base={"REMOTE_ADDR": remote},
        buffered=True,
        **kwargs,
    )
    assert response.headers.get("Cache-Control") == "no-store", (method, path, response.status)
    assert response.headers.get("X-Content-Type-Options") == "nosniff", (method, path)
    assert api.app.paths[calls:] == [], "the app was called for an API path"
    assert "HIT" not in response.headers.get("X-Cache", "")
    assert api.optimizer.cache.stats()["stores"] == stores, "an API response was cached"
    if method == "HEAD":
        assert response.data == b""
        return response
    if response.mimetype == "application/json":
        body = response.get_json()
        api.seen.append((method, path, response.status_code, body))
        if response.status_code >= 400 and not (path.endswith("/health") and conform is False):
            assert set(body) == {"error"}, body
            assert body["error"]["status"] == response.status_code
            assert isinstance(body["error"]["message"], str)
            assert body["error"]["message"]
        if conform:
            assert schema_errors(method, path, response.status_code, body) == []
    else:
        assert response.status_code < 400, "every API error is JSON"
    return response


def page(api: Api, path: str) -> TestResponse:
    """A GET of the app through the optimizer (cacheable)."""
    return api.client.get(path, buffered=True, environ_base={"REMOTE_ADDR": LOOPBACK})


# -- the document


def test_openapi_json_is_a_valid_openapi_3_document_and_the_one_served(api: Api) -> None:
    response = call(api, "GET", PREFIX + "/openapi.json")
    assert response.status_code == 200
    served = response.get_json()
    validate(served)
    assert served["openapi"].startswith("3.")
    assert served == json.loads(json.dumps(DOC))
    documented = {(path, method.upper()) for path, ops in served["paths"].items() for method in ops}
    routed = {
        (PREFIX + sub, method)
        for sub, methods in api.optimizer.api._routes.items()
        for method in methods
    }
    assert documented == routed


# -- every endpoint


@pytest.mark.parametrize(
    ("method", "sub", "mimetype"),
    [
        ("GET", "/health", "application/json"),
        ("GET", "/stats", "application/json"),
        ("GET", "/profile", "application/json"),
        ("GET", "/metrics", "text/plain"),
        ("GET", "/openapi.json", "application/json"),
        ("GET", "/", "text/html"),
        ("GET", "", "text/html"),
        ("POST", "/optimize", "application/json"),
        ("POST", "/optimize/force", "application/json"),
        ("POST", "/gc/force", "application/json"),
        ("POST", "/cache/clear", "application/json"),
    ],
    ids=[
        "GET-health",
        "GET-stats",
        "GET-profile",
        "GET-metrics",
        "GET-openapi.json",
        "GET-dashboard-slash",
        "GET-dashboard-bare-prefix",
        "POST-optimize",
        "POST-optimize-force",
        "POST-gc-force",
        "POST-cache-clear",
    ],
)
def test_every_endpoint_answers_200_with_its_type(
    api: Api, method: str, sub: str, mimetype: str
) -> None:
    response = call(api, method, PREFIX + sub)
    assert response.status_code == 200
    assert response.mimetype == mimetype
    assert response.data
    if mimetype == "text/html":
        assert b"<html" in response.data.lower()


@HEAD_LINT
@pytest.mark.parametrize("sub", GET_ENDPOINTS, ids=lambda sub: sub.strip("/") or "dashboard")
def test_head_on_every_get_endpoint(api: Api, sub: str) -> None:
    got = call(api, "GET", PREFIX + sub)
    head = call(api, "HEAD", PREFIX + sub)
    assert head.status_code == 200
    assert head.mimetype == got.mimetype
    if sub in ("/openapi.json", "/"):  # the same bytes every time: the same length
        assert head.headers["Content-Length"] == got.headers["Content-Length"]


def test_health_fields(api: Api) -> None:
    body = call(api, "GET", PREFIX + "/health").get_json()
    for key in ("status", "memory_percent", "source", "alert", "recommendations"):
        assert key in body
    assert body["status"] in ("excellent", "good", "warning", "critical")
    assert 0 <= body["memory_percent"] <= 100 or body["status"] == "critical"
    if body["status"] in ("warning", "critical"):
        assert set(body["alert"]) >= {"level", "message", "recommendation"}
        assert body["alert"]["level"] == body["status"]
    else:
        assert body["alert"] is None
    assert body["restart_reason"] is None
    # No gunicorn or uWSGI master here (a test client): /health says the worker cannot be
    # recycled by the governor, and how a need for a restart will show.
    assert body["recycle"]["possible"] is False
    assert body["recycle"]["server"] is None
    assert "503" in body["recycle"]["note"]
    for advice in body["recommendations"]:
        assert advice["finding"]
        assert advice["action"]


@pytest.mark.parametrize(
    ("max_memory_percent", "critical_percent", "status"),
    [
        pytest.param(80, 90, "excellent", id="far-below-optimizing"),
        pytest.param(55, 90, "good", id="near-optimizing"),
        pytest.param(40, 90, "warning", id="optimizing"),
        pytest.param(20, 30, "critical", id="emergency"),
    ],
)
def test_health_bands_follow_the_configured_thresholds(
    make_api: Callable[..., Api], max_memory_percent: int, critical_percent: int, status: str
) -> None:
    # A process budget of twice the RSS: memory at about 50% of it.
    budget_mb = psutil.Process().memory_info().rss / (1 << 20) * 2
    api = make_api(
        pressure_source="process",
        process_limit_mb=budget_mb,
        max_memory_percent=max_memory_percent,
        critical_percent=critical_percent,
        restart_percent=100,
    )
    body = call(api, "GET", PREFIX + "/health").get_json()
    assert body["status"] == status, body["memory_percent"]
    stats = call(api, "GET", PREFIX + "/stats").get_json()
    assert stats["memory"]["bands"] == {
        "good": max_memory_percent - 10,
        "warning": max_memory_percent,
        "critical": critical_percent,
    }


def test_health_is_503_with_the_reason_when_a_restart_is_needed(api: Api) -> None:
    api.optimizer.governor.restart_reason = "test"
    response = call(api, "GET", PREFIX + "/health", conform=False)
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "restart-needed"
    assert body["restart_reason"] == "test"
    stats = call(api, "GET", PREFIX + "/stats").get_json()
    assert stats["governor"]["restart_reason"] == "test"


def test_health_503_body_conforms_to_the_document(api: Api) -> None:
    api.optimizer.governor.restart_reason = "test"
    response = call(api, "GET", PREFIX + "/health", conform=False)
    assert response.status_code == 503
    assert schema_errors("GET", PREFIX + "/health", 503, response.get_json()) == []


def test_stats_fields(api: Api) -> None:
    stats = call(api, "GET", PREFIX + "/stats").get_json()
    assert set(stats["memory"]) >= {"percent", "used_mb", "available_mb", "rss_mb", "status"}
    assert stats["memory"]["rss_mb"] > 0
    cache_keys = {"items", "size_mb", "hits", "misses", "hit_rate", "evictions", "rejected"}
    assert set(stats["cache"]) >= cache_keys
    assert set(stats["gc"]) >= {"collections", "collected", "threshold", "frozen"}
    assert "modules" in stats
    assert stats["modules"] is None or set(stats["modules"]) >= {"loaded", "unloaded", "pinned"}
    assert stats["governor"]["last_actions"] == []  # nothing has acted yet
    assert "forecast" in stats["governor"]  # None until the samples make a trend
    assert stats["process"]["pid"] == os.getpid()
    assert stats["process"]["uptime_s"] > 0  # this process has run since before the test
    assert "workers" in stats


def test_workers_is_none_outside_a_gunicorn_or_uwsgi_master(api: Api) -> None:
    parent = " ".join(psutil.Process(os.getppid()).cmdline())
    assert "gunicorn" not in parent
    assert "uwsgi" not in parent
    assert call(api, "GET", PREFIX + "/stats").get_json()["workers"] is None


def test_stats_is_fresh_every_time_and_never_from_the_cache(api: Api) -> None:
    page(api, "/page")
    first = call(api, "GET", PREFIX + "/stats")
    assert page(api, "/page").headers.get("X-Cache") == "HIT"
    second = call(api, "GET", PREFIX + "/stats")
    assert first.get_json()["cache"]["hits"] == 0
    assert second.get_json()["cache"]["hits"] == 1
    assert second.get_json()["cache"]["items"] == 1
    assert api.app.paths == ["/page"]


def test_profile_limit_is_honoured(api: Api) -> None:
    body = call(api, "GET", PREFIX + "/profile", query="limit=3").get_json()
    assert 1 <= len(body["top_types"]) <= 3
    assert body["objects_total"] > 0


@pytest.mark.parametrize(
    ("sub", "kind"), [("/optimize", "optimize"), ("/optimize/force", "emergency")]
)
def test_optimize_returns_the_measured_action(api: Api, sub: str, kind: str) -> None:
    for path in ("/a", "/b"):
        page(api, path)
    body = call(api, "POST", PREFIX + sub).get_json()
    assert body["kind"] == kind
    assert body["reason"] == "api"
    for side in ("before", "after"):
        assert body[side]["rss_mb"] > 0
    # What was freed is what was measured: the RSS difference, 0 when it grew (rounded figures).
    freed = max(body["before"]["rss_mb"] - body["after"]["rss_mb"], 0.0)
    assert body["improvement"]["mb_freed"] == pytest.approx(freed, abs=0.11)
    assert set(body["actions"]) >= {"cache_items_freed", "objects_collected", "malloc_trim"}
    last = call(api, "GET", PREFIX + "/stats").get_json()["governor"]["last_actions"]
    assert last[-1]["kind"] == kind
    assert last[-1]["at"] == body["at"]


def test_gc_force_reports_per_generation(api: Api) -> None:
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for _ in range(500):
            cycle: list[Any] = []
            cycle.append(cycle)
        del cycle
        body = call(api, "POST", PREFIX + "/gc/force").get_json()
    finally:
        if was_enabled:
            gc.enable()
    assert set(body["collected"]) == {"0", "1", "2"}
    assert body["total_collected"] == sum(body["collected"].values())
    assert body["total_collected"] >= 500
    assert body["duration_ms"] > 0  # 500 cycles were collected: that takes time
    assert len(body["before"]["counts"]) == len(body["after"]["counts"]) == 3


def test_cache_clear_reports_what_was_cached(api: Api) -> None:
    for path in ("/a", "/b", "/c"):
        page(api, path)
    cached_items, cached_bytes = len(api.optimizer.cache), api.optimizer.cache.bytes
    assert cached_items == 3
    stats = call(api, "GET", PREFIX + "/stats").get_json()["cache"]
    body = call(api, "POST", PREFIX + "/cache/clear").get_json()
    assert body == {"cleared_items": 3, "freed_mb": round(cached_bytes / MB, 3)}
    assert body["freed_mb"] == pytest.approx(stats["size_mb"], abs=0.001)
    assert call(api, "GET", PREFIX + "/stats").get_json()["cache"]["items"] == 0
    page(api, "/a")
    assert api.app.paths == ["/a", "/b", "/c", "/a"]


# -- errors


@pytest.mark.parametrize(
    ("method", "sub", "allow"),
    [
        ("POST", "/health", "GET, HEAD"),
        ("PUT", "/stats", "GET, HEAD"),
        ("DELETE", "/profile", "GET, HEAD"),
        ("POST", "/", "GET, HEAD"),
        ("GET", "/optimize", "POST"),
        pytest.param("HEAD", "/optimize/force", "POST", marks=HEAD_LINT),
        ("GET", "/gc/force", "POST"),
        ("PUT", "/cache/clear", "POST"),
        ("OPTIONS", "/metrics", "GET, HEAD"),
    ],
    ids=lambda value: value.strip("/").replace("/", "-").replace(", ", "+") or "dashboard",
)
def test_wrong_method_is_405_with_allow(api: Api, method: str, sub: str, allow: str) -> None:
    response = call(api, method, PREFIX + sub)
    assert response.status_code == 405
    assert response.headers["Allow"] == allow


@pytest.mark.parametrize(
    ("method", "sub"),
    [
        ("GET", "/nope"),
        ("GET", "/stats/extra"),
        ("GET", "/health/"),
        ("POST", "/optimize/"),
        ("POST", "/nope"),
        ("GET", "//stats"),
    ],
    ids=["get-nope", "stats-extra", "health-slash", "optimize-slash", "post-nope", "double-slash"],
)
def test_unknown_path_under_the_prefix_is_404_json(api: Api, method: str, sub: str) -> None:
    assert call(api, method, PREFIX + sub).status_code == 404


@pytest.mark.parametrize(
    "path", ["/api/v1/memoryX", "/api/v1/memory-stats", "/api/v1/mem", "/api/v1"], ids=str
)
def test_paths_beside_the_prefix_go_to_the_app(api: Api, path: str) -> None:
    response = page(api, path)
    assert response.status_code == 200
    assert response.data == app_body(1, path)
    assert api.app.paths == [path]


def test_the_prefix_itself_is_the_dashboard(api: Api) -> None:
    bare = call(api, "GET", PREFIX)
    slash = call(api, "GET", PREFIX + "/")
    assert bare.status_code == slash.status_code == 200
    assert bare.mimetype == "text/html"
    assert bare.data == slash.data


@pytest.mark.parametrize("sub", POST_ENDPOINTS, ids=lambda sub: sub.strip("/").replace("/", "-"))
def test_mutating_endpoints_are_rate_limited(make_api: Callable[..., Api], sub: str) -> None:
    api = make_api(api_min_interval_s=60)
    assert call(api, "POST", PREFIX + sub).status_code == 200
    limited = call(api, "POST", PREFIX + sub)
    assert limited.status_code == 429
    assert 1 <= int(limited.headers["Retry-After"]) <= 60


def test_profile_is_rate_limited(make_api: Callable[..., Api]) -> None:
    api = make_api(api_min_interval_s=60)
    assert call(api, "GET", PREFIX + "/profile").status_code == 200
    limited = call(api, "GET", PREFIX + "/profile")
    assert limited.status_code == 429
    assert "Retry-After" in limited.headers


def test_rate_limits_are_per_endpoint_and_stats_is_not_limited(
    make_api: Callable[..., Api],
) -> None:
    api = make_api(api_min_interval_s=60)
    assert call(api, "POST", PREFIX + "/optimize").status_code == 200
    assert call(api, "POST", PREFIX + "/gc/force").status_code == 200
    assert call(api, "POST", PREFIX + "/optimize").status_code == 429
    for _ in range(3):
        assert call(api, "GET", PREFIX + "/stats").status_code == 200
        assert call(api, "GET", PREFIX + "/health").status_code == 200


@pytest.mark.parametrize(
    "query",
    ["limit=0", "limit=abc", "limit=1001", "limit=-1", "limit=", "limit=2.5", "deep=maybe"],
    ids=str,
)
def test_bad_query_values_are_400(api: Api, query: str) -> None:
    response = call(api, "GET", PREFIX + "/profile", query=query)
    assert response.status_code == 400
    assert query.split("=")[0] in response.get_json()["error"]["message"]


@pytest.mark.parametrize(
    "query",
    ["limit=1_0", "limit=%D9%A5", "limit=%205"],
    ids=["underscore", "arabic-digit", "space"],
)
def test_limit_takes_only_ascii_digits(api: Api, query: str) -> None:
    assert call(api, "GET", PREFIX + "/profile", query=query).status_code == 400


def test_a_failing_endpoint_is_500_json_without_traceback(
    api: Api, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(parts: Parts) -> dict[str, Any]:
        raise RuntimeError("secret-internal-detail")

    monkeypatch.setattr(wsgi_memopt.api.report, "memory_stats", broken)
    response = call(api, "GET", PREFIX + "/stats")
    assert response.status_code == 500
    text = response.get_data(as_text=True)
    for leak in ("Traceback", "secret-internal-detail", "RuntimeError", 'File "'):
        assert leak not in text
    assert "secret-internal-detail" in caplog.text  # the log has it
    assert call(api, "GET", PREFIX + "/health").status_code == 200  # the rest still works


class HugeInput:
    """A request body that fails the test when more than 64 KiB of it is read."""

    LIMIT = 64 * 1024

    def __init__(self) -> None:
        self.read_bytes = 0

    def _take(self, size: int) -> bytes:
        size = self.LIMIT + 1 if size is None or size < 0 else size
        self.read_bytes += size
        if self.read_bytes > self.LIMIT:
            raise AssertionError("the API read more than 64 KiB of the request body")
        return b"x" * size

    def read(self, size: int = -1) -> bytes:
        return self._take(size)

    def readline(self, size: int = -1) -> bytes:
        return self._take(size)

    def readlines(self, hint: int = -1) -> list[bytes]:
        return [self._take(hint)]

    def __iter__(self) -> Iterator[bytes]:
        yield self._take(-1)


def test_a_huge_post_body_is_not_read(api: Api) -> None:
    body = HugeInput()
    response = call(
        api,
        "POST",
        PREFIX + "/optimize",
        content_type="application/octet-stream",
        environ_overrides={"wsgi.input": body, "CONTENT_LENGTH": str(1 << 30)},
    )
    assert response.status_code == 200
    assert body.read_bytes <= HugeInput.LIMIT


# -- access: closed until the operator opens it


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": token}


CLOSED: dict[str, Any] = {"api_token": None}  # the defaults: neither setting
TOKEN_SET: dict[str, Any] = {"api_token": TOKEN}
LOOP: dict[str, Any] = {"api_token": None, "api_allow_networks": "loopback"}
BOTH: dict[str, Any] = {"api_token": TOKEN, "api_allow_networks": "loopback"}
TEN: dict[str, Any] = {"api_token": None, "api_allow_networks": "10.0.0.0/8"}
XFF = {"X-Forwarded-For": "1.2.3.4"}
RIGHT = bearer(f"Bearer {TOKEN}")
LB = LOOPBACK
ACCESS = [
    # (id, settings, REMOTE_ADDR, headers, expected status)
    ("default-loopback-closed", CLOSED, LB, {}, 403),
    ("default-remote-closed", CLOSED, REMOTE, {}, 403),
    ("default-bearer-closed", CLOSED, LB, RIGHT, 403),
    ("token-set-loopback-not-open", TOKEN_SET, LB, {}, 401),
    ("allow-loopback", LOOP, LB, {}, 200),
    ("allow-loopback-127/8", LOOP, "127.9.8.7", {}, 200),
    ("allow-ipv6-loopback", LOOP, "::1", {}, 200),
    ("allow-ipv4-mapped-loopback", LOOP, "::ffff:127.0.0.1", {}, 200),
    ("allow-loopback-remote", LOOP, REMOTE, {}, 403),
    ("allow-loopback-xff", LOOP, LB, XFF, 403),
    ("allow-loopback-xff-loopback-value", LOOP, LB, {"X-Forwarded-For": "127.0.0.1"}, 403),
    ("both-loopback", BOTH, LB, {}, 200),
    ("both-loopback-xff", BOTH, LB, XFF, 401),
    ("both-loopback-xff-right-token", BOTH, LB, {**XFF, **RIGHT}, 200),
    ("both-wrong-token", BOTH, LB, bearer("Bearer nope"), 401),
    ("remote-bearer-but-no-token-configured", LOOP, REMOTE, bearer("Bearer anything"), 403),
    ("remote-token-missing", TOKEN_SET, REMOTE, {}, 401),
    ("remote-right-token", TOKEN_SET, REMOTE, RIGHT, 200),
    ("remote-wrong-token", TOKEN_SET, REMOTE, bearer("Bearer nope"), 401),
    ("remote-token-prefix", TOKEN_SET, REMOTE, bearer(f"Bearer {TOKEN[:-1]}"), 401),
    ("remote-token-longer", TOKEN_SET, REMOTE, bearer(f"Bearer {TOKEN}x"), 401),
    ("bearer-lowercase", TOKEN_SET, REMOTE, bearer(f"bearer {TOKEN}"), 200),
    ("bearer-uppercase", TOKEN_SET, REMOTE, bearer(f"BEARER {TOKEN}"), 200),
    ("bearer-extra-spaces", TOKEN_SET, REMOTE, bearer(f"  Bearer   {TOKEN}  "), 200),
    ("bearer-empty", TOKEN_SET, REMOTE, bearer("Bearer "), 401),
    ("basic-scheme", TOKEN_SET, REMOTE, bearer(f"Basic {TOKEN}"), 401),
    ("token-without-scheme", TOKEN_SET, REMOTE, bearer(TOKEN), 401),
    ("token-in-a-cookie", TOKEN_SET, REMOTE, {"Cookie": f"api_token={TOKEN}"}, 401),
    ("allow-network-in", TEN, REMOTE, {}, 200),
    ("allow-network-out", TEN, "11.0.0.1", {}, 403),
    ("allow-network-excludes-loopback", TEN, LB, {}, 403),
    ("allow-network-xff", TEN, REMOTE, XFF, 403),
    ("allow-none", {"api_token": None, "api_allow_networks": "none"}, LB, {}, 403),
    ("remote-addr-garbage", LOOP, "not-an-ip", {}, 403),
    ("remote-addr-empty", LOOP, "", {}, 403),
]


@pytest.mark.parametrize(
    ("settings", "remote", "headers", "status"),
    [case[1:] for case in ACCESS],
    ids=[case[0] for case in ACCESS],
)
def test_access_matrix(
    make_api: Callable[..., Api],
    settings: dict[str, Any],
    remote: str,
    headers: dict[str, str],
    status: int,
) -> None:
    api = make_api(**settings)
    response = call(api, "GET", PREFIX + "/stats", remote=remote, headers=headers, token=None)
    assert response.status_code == status
    if status == 401:
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    if status == 200:
        assert response.get_json()["process"]["pid"] == os.getpid()


def test_the_defaults_open_only_health_and_say_which_settings_open_the_rest(
    make_api: Callable[..., Api],
) -> None:
    # No setting: even loopback without any proxy header is refused (a same-host proxy that
    # adds no header would otherwise hand the API to the Internet).
    api = make_api(**CLOSED)
    assert call(api, "GET", PREFIX + "/health", token=None).status_code == 200
    for method, sub in [("GET", "/stats"), ("GET", "/profile"), ("GET", "/metrics")] + [
        ("POST", sub) for sub in POST_ENDPOINTS
    ]:
        response = call(api, method, PREFIX + sub, token=None)
        assert response.status_code == 403, sub
        message = response.get_json()["error"]["message"]
        assert "api_token" in message
        assert "api_allow_networks" in message
    assert len(api.optimizer.governor.history) == 0


@pytest.mark.parametrize(
    "where",
    ["api_token", "token", "access_token", "Authorization"],
    ids=str,
)
def test_a_token_in_the_query_string_is_not_taken(make_api: Callable[..., Api], where: str) -> None:
    api = make_api(**TOKEN_SET)
    response = call(
        api, "GET", PREFIX + "/stats", remote=REMOTE, token=None, query=f"{where}={TOKEN}"
    )
    assert response.status_code == 401


# The client-address headers proxies and CDNs add. Any of them means REMOTE_ADDR is a proxy.
CLIENT_ADDRESS_HEADERS = [
    "Forwarded",
    "X-Forwarded-For",
    "X-Real-IP",
    "X-Client-IP",
    "True-Client-IP",
    "CF-Connecting-IP",
    "X-Forwarded",
    "X-Cluster-Client-IP",
    "Client-IP",
    "Fastly-Client-IP",
    "X-Forwarded-Host",
    "X-Forwarded-Proto",
    "X-Original-Forwarded-For",
    "X-Azure-ClientIP",
    "X-Appengine-User-IP",
    "X-Envoy-External-Address",
    "X-Remote-Addr",
    "Via",
]


@pytest.mark.parametrize("header", CLIENT_ADDRESS_HEADERS, ids=str)
def test_an_allow_list_is_refused_with_any_client_address_header(
    make_api: Callable[..., Api], header: str
) -> None:
    closed = make_api(**LOOP)
    response = call(closed, "GET", PREFIX + "/stats", headers={header: "127.0.0.1"}, token=None)
    assert response.status_code == 403
    assert "proxy" in response.get_json()["error"]["message"]
    assert call(closed, "GET", PREFIX + "/stats", token=None).status_code == 200  # without it

    with_token = make_api(**BOTH)
    asked = call(with_token, "GET", PREFIX + "/stats", headers={header: "1.2.3.4"}, token=None)
    assert asked.status_code == 401
    brought = call(with_token, "GET", PREFIX + "/stats", headers={header: "1.2.3.4"})
    assert brought.status_code == 200


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("localhost", 200),
        ("LOCALHOST:8000", 200),
        ("127.0.0.1", 200),
        ("127.0.0.1:8000", 200),
        ("[::1]:8000", 200),
        ("rebind.evil.example", 403),
        ("rebind.evil.example:8000", 403),
        ("localhost.evil.example", 403),
        ("127.0.0.1.nip.io:8000", 403),
    ],
    ids=str,
)
def test_an_allow_list_needs_a_host_that_is_an_address(
    make_api: Callable[..., Api], host: str, status: int
) -> None:
    # DNS rebinding: a page of evil.example, resolved to 127.0.0.1 in the operator's browser,
    # reaches a loopback server as its own origin, and its requests say Host: evil.example.
    api = make_api(**LOOP)
    response = call(api, "GET", PREFIX + "/stats", headers={"Host": host}, token=None)
    assert response.status_code == status
    if status == 403:
        assert "Host" in response.get_json()["error"]["message"]


def test_a_token_works_whatever_the_host(make_api: Callable[..., Api]) -> None:
    # A rebinding page cannot know the token: behind a proxy, names are what Host says.
    api = make_api(**BOTH)
    rebound = {"Host": "rebind.evil.example:8000"}
    assert call(api, "GET", PREFIX + "/stats", headers=rebound, token=None).status_code == 401
    assert call(api, "GET", PREFIX + "/stats", headers=rebound).status_code == 200


@pytest.mark.parametrize(
    ("settings", "remote", "headers"),
    [
        (CLOSED, LB, {}),
        (TOKEN_SET, REMOTE, {}),
        (TOKEN_SET, REMOTE, bearer("Bearer nope")),
        (LOOP, LB, XFF),
        (LOOP, LB, {"Host": "rebind.evil.example"}),
    ],
    ids=["closed", "token-missing", "token-wrong", "proxied", "rebound-host"],
)
def test_health_always_answers_and_without_access_tells_the_band_only(
    make_api: Callable[..., Api],
    settings: dict[str, Any],
    remote: str,
    headers: dict[str, str],
) -> None:
    api = make_api(**settings)
    response = call(api, "GET", PREFIX + "/health", remote=remote, headers=headers, token=None)
    assert response.status_code == 200
    body = response.get_json()
    assert set(body) == {"status"}
    assert body["status"] in ("excellent", "good", "warning", "critical")
    api.optimizer.governor.restart_reason = "test"  # a load balancer still sees the need
    needed = call(
        api, "GET", PREFIX + "/health", remote=remote, headers=headers, token=None, conform=False
    )
    assert (needed.status_code, needed.get_json()) == (503, {"status": "restart-needed"})
    assert schema_errors("GET", PREFIX + "/health", 503, needed.get_json()) == []


def test_health_with_access_has_every_field(make_api: Callable[..., Api]) -> None:
    for settings, headers in [(TOKEN_SET, RIGHT), (LOOP, {})]:
        api = make_api(**settings)
        body = call(api, "GET", PREFIX + "/health", headers=headers, token=None).get_json()
        assert {"status", "memory_percent", "source", "alert", "recommendations"} <= set(body)


@pytest.mark.parametrize(
    ("method", "sub"),
    [
        ("POST", "/optimize"),
        ("GET", "/nope"),
        pytest.param("HEAD", "/stats", marks=HEAD_LINT),
    ],
    ids=["optimize", "unknown", "head-stats"],
)
def test_access_is_checked_before_anything_else(
    make_api: Callable[..., Api], method: str, sub: str
) -> None:
    api = make_api(api_token=TOKEN)
    response = call(api, method, PREFIX + sub, remote=REMOTE, token=None)
    assert response.status_code == 401
    assert "WWW-Authenticate" in response.headers
    assert len(api.optimizer.governor.history) == 0


# -- requests a browser made for another site's page

EVIL_FORM = {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}
CROSS_SITE = [
    pytest.param(EVIL_FORM, id="form-post"),
    pytest.param({"Origin": "https://evil.example"}, id="origin-only"),
    pytest.param({"Origin": "null"}, id="origin-null"),
    pytest.param({"Origin": "http://localhost:8080"}, id="origin-other-port"),
    pytest.param({"Sec-Fetch-Site": "cross-site"}, id="sec-fetch-cross-site"),
    pytest.param({"Sec-Fetch-Site": "same-site"}, id="sec-fetch-same-site"),
    pytest.param({"Sec-Fetch-Site": "cross-site", "Origin": "http://localhost"}, id="mixed"),
]


@pytest.mark.parametrize("headers", CROSS_SITE)
@pytest.mark.parametrize("settings", [LOOP, BOTH], ids=["allow-list", "token-too"])
def test_a_cross_site_post_is_refused_and_changes_nothing(
    make_api: Callable[..., Api], settings: dict[str, Any], headers: dict[str, str]
) -> None:
    # What a page elsewhere can make the operator's browser send: no token, its own Origin.
    api = make_api(**settings)
    page(api, "/cached")
    for sub in POST_ENDPOINTS:
        response = call(
            api,
            "POST",
            PREFIX + sub,
            headers=headers,
            token=None,
            data="a=1",
            content_type="application/x-www-form-urlencoded",
        )
        assert response.status_code == 403, sub
        assert "another site" in response.get_json()["error"]["message"]
    assert len(api.optimizer.cache) == 1
    assert len(api.optimizer.governor.history) == 0
    # Even a request that brings the token: a browser made it for another site's page.
    assert call(api, "GET", PREFIX + "/stats", headers=headers).status_code == 403


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-browser-headers"),
        pytest.param({"Sec-Fetch-Site": "same-origin", "Origin": "http://localhost"}, id="same"),
        pytest.param({"Origin": "https://localhost:443"}, id="origin-https-default-port"),
        pytest.param({"Origin": "http://LOCALHOST"}, id="origin-case"),
        pytest.param({"Sec-Fetch-Site": "none"}, id="typed-by-the-user"),
    ],
)
def test_the_dashboards_own_requests_are_not_cross_site(
    make_api: Callable[..., Api], headers: dict[str, str]
) -> None:
    api = make_api(**LOOP)
    assert (
        call(api, "POST", PREFIX + "/cache/clear", headers=headers, token=None).status_code == 200
    )


def test_health_and_the_dashboard_page_answer_another_site(make_api: Callable[..., Api]) -> None:
    api = make_api(**LOOP)
    assert call(api, "GET", PREFIX + "/health", headers=EVIL_FORM, token=None).status_code == 200
    assert call(api, "GET", PREFIX + "/", headers=EVIL_FORM, token=None).status_code == 200


# -- the dashboard page's own protection


def _sha256(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


def test_the_dashboard_is_served_with_a_strict_csp_and_no_framing(api: Api) -> None:
    response = call(api, "GET", PREFIX + "/", token=None)
    assert response.headers["X-Frame-Options"] == "DENY"
    policy = dict(
        directive.strip().split(" ", 1)
        for directive in response.headers["Content-Security-Policy"].split(";")
    )
    page_text = response.get_data(as_text=True)
    script = re.search(r"<script>(.*?)</script>", page_text, re.S)
    style = re.search(r"<style>(.*?)</style>", page_text, re.S)
    assert script is not None
    assert style is not None
    assert policy == {
        "default-src": "'none'",
        "script-src": f"'{_sha256(script[1])}'",
        "style-src": f"'{_sha256(style[1])}'",
        "connect-src": "'self'",
        "base-uri": "'none'",
        "form-action": "'none'",
        "frame-ancestors": "'none'",
    }
    assert " style=" not in page_text  # an inline style attribute would need 'unsafe-inline'


def test_api_disabled_passes_the_prefix_to_the_app(make_api: Callable[..., Api]) -> None:
    api = make_api(api_enabled=False)
    for call, path in enumerate((PREFIX + "/stats", PREFIX, PREFIX + "/nope"), start=1):
        response = page(api, path)
        assert response.status_code == 200
        assert response.data == app_body(call, path)
        assert response.headers["Cache-Control"] == "public, max-age=600"
    assert api.app.paths == [PREFIX + "/stats", PREFIX, PREFIX + "/nope"]


def test_a_custom_prefix_moves_the_api(make_api: Callable[..., Api]) -> None:
    api = make_api(api_prefix="/_mem/")
    response = api.client.get(
        "/_mem/stats", buffered=True, headers=RIGHT, environ_base={"REMOTE_ADDR": LOOPBACK}
    )
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    assert page(api, PREFIX + "/stats").data == app_body(1, PREFIX + "/stats")


def test_the_api_works_under_a_script_name(api: Api) -> None:
    response = api.client.get(
        PREFIX + "/stats",
        base_url="http://localhost/mounted",
        buffered=True,
        headers=RIGHT,
        environ_base={"REMOTE_ADDR": LOOPBACK},
    )
    assert response.request.environ["SCRIPT_NAME"] == "/mounted"
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    assert api.app.paths == []


# -- the schema, once more, over everything a full tour receives


def test_a_tour_of_every_response_conforms_to_the_document(make_api: Callable[..., Api]) -> None:
    api = make_api(api_token=TOKEN, api_min_interval_s=60)
    page(api, "/warm")
    for sub in GET_ENDPOINTS:
        call(api, "GET", PREFIX + sub)
    for sub in POST_ENDPOINTS:
        call(api, "POST", PREFIX + sub)
        call(api, "POST", PREFIX + sub)  # 429
    call(api, "GET", PREFIX + "/profile", query="limit=0")
    call(api, "GET", PREFIX + "/stats", remote=REMOTE, token=None)  # 401
    call(api, "GET", PREFIX + "/health", remote=REMOTE, token=None)  # the band only
    call(api, "GET", PREFIX + "/stats", remote=REMOTE, headers=bearer(f"Bearer {TOKEN}"))
    call(api, "POST", PREFIX + "/stats")  # 405
    call(api, "GET", PREFIX + "/nope")  # 404
    call(api, "GET", PREFIX + "/stats", headers=EVIL_FORM)  # 403
    statuses = {status for _, _, status, _ in api.seen}
    assert statuses >= {200, 400, 401, 403, 404, 405, 429}
    for method, path, status, body in api.seen:
        assert schema_errors(method, path, status, body) == [], (method, path, status)


def test_recommendations_name_what_to_use() -> None:
    report = wsgi_memopt.api.report

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response(
            "200 OK",
            [
                ("Content-Type", "text/plain"),
                ("Content-Length", "0"),
                ("Cache-Control", "no-store"),
            ],
        )
        return []

    optimizer, client = wrap(app, gc_mode="auto", cache_max_mb=0.001)
    for number in range(120):  # 120 lookups, none a hit: a low hit rate
        get(client, f"/p{number}")
    sample = report.current_sample(optimizer.parts)
    advice = report.recommendations(optimizer.parts, sample)
    findings = " | ".join(item["finding"] for item in advice)
    assert "hit rate 0%" in findings
    assert any(item.get("setting") == "gc_mode" for item in advice)
    assert all(item.get("setting") or item.get("endpoint") for item in advice)


def test_the_dashboard_page_loads_without_access_and_holds_no_data(
    make_api: Callable[..., Api],
) -> None:
    # The page must load before it can ask for the token; what it shows comes from `stats`.
    api = make_api(api_token=TOKEN)
    page = call(api, "GET", PREFIX + "/", remote=REMOTE, token=None)
    assert page.status_code == 200
    assert page.mimetype == "text/html"
    assert str(os.getpid()) not in page.get_data(as_text=True)
    assert call(api, "GET", PREFIX + "/stats", remote=REMOTE, token=None).status_code == 401
