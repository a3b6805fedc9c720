"""The memory API through the WSGI interface (SPEC §8): endpoints, errors, access, OpenAPI.

Every request goes through ``checked(optimizer)`` (wsgiref's validator + werkzeug's lint) around
an app that counts its calls; every API response is checked for ``Cache-Control: no-store``,
for the app not being called, for the error shape, and against the OpenAPI document's schema.
"""

from __future__ import annotations

import gc
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psutil
import pytest
from conftest import get, wrap
from openapi_schema_validator import OAS30Validator
from openapi_spec_validator import validate
from werkzeug.test import Client, TestResponse

import wsgi_memopt.api.report
from wsgi_memopt import MemoryOptimizer
from wsgi_memopt.api.openapi import document

PREFIX = "/api/v1/memory"
DOC = document(PREFIX)
MB = float(1 << 20)
LOOPBACK = "127.0.0.1"
REMOTE = "10.1.2.3"
TOKEN = "s3cret-Token_42"

# werkzeug's lint warns on a HEAD response whose Content-Length is not matched by a body, but
# a HEAD response legitimately has one (RFC 9110 §9.3.2): filtered on HEAD tests only.
HEAD_LINT = pytest.mark.filterwarnings("ignore:Content-Length and the number of bytes sent")

GET_ENDPOINTS = ["/health", "/stats", "/profile", "/metrics", "/openapi.json", "/"]
POST_ENDPOINTS = ["/optimize", "/optimize/force", "/gc/force", "/cache/clear"]


class CountingApp:
    """A cacheable app that records every PATH_INFO it is called with."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        self.calls.append(environ["PATH_INFO"])
        body = b"app:" + environ["PATH_INFO"].encode() + b"." * 2048
        start_response(
            "200 OK",
            [
                ("Content-Type", "text/plain"),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "public, max-age=600"),
            ],
        )
        return [body]


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
        app = CountingApp()
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


def schema_errors(method: str, path: str, status: int, body: Any) -> list[str]:
    """Where ``body`` departs from the schema DOC gives for (method, path, status)."""
    operation = DOC["paths"].get(path if path != PREFIX else PREFIX + "/", {}).get(method.lower())
    if operation is None:
        # No such path or method in the document (404, 405): the common error schema.
        schema: dict[str, Any] = {"$ref": "#/components/schemas/Error"}
    else:
        responses = operation["responses"]
        if str(status) not in responses:
            return [f"{method} {path}: status {status} is not documented"]
        schema = responses[str(status)]["content"]["application/json"]["schema"]
    validator = OAS30Validator({"allOf": [schema], "components": DOC["components"]})
    return [
        f"{list(error.absolute_path)}: {error.message}" for error in validator.iter_errors(body)
    ]


def call(
    api: Api,
    method: str,
    path: str,
    *,
    remote: str = LOOPBACK,
    headers: dict[str, str] | None = None,
    query: str = "",
    conform: bool = True,
    **kwargs: Any,
) -> TestResponse:
    """One API request, read to its end; checks what every API response must satisfy."""
    calls = len(api.app.calls)
    stores = api.optimizer.cache.stats()["stores"]
    response = api.client.open(
        path + (f"?{query}" if query else ""),
        method=method,
        headers=headers or {},
        environ_base={"REMOTE_ADDR": remote},
        buffered=True,
        **kwargs,
    )
    assert response.headers.get("Cache-Control") == "no-store", (method, path, response.status)
    assert api.app.calls[calls:] == [], "the app was called for an API path"
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
    assert isinstance(stats["governor"]["last_actions"], list)
    assert "forecast" in stats["governor"]  # None until the samples make a trend
    assert stats["process"]["pid"] == os.getpid()
    assert stats["process"]["uptime_s"] >= 0
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
    assert api.app.calls == ["/page"]


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
    assert body["improvement"]["mb_freed"] >= 0
    assert body["improvement"]["percent_freed"] >= 0
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
    assert body["duration_ms"] >= 0
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
    assert api.app.calls == ["/a", "/b", "/c", "/a"]


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
    assert response.data.startswith(b"app:" + path.encode())
    assert api.app.calls == [path]


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
    def broken(optimizer: MemoryOptimizer) -> dict[str, Any]:
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


# -- access (SPEC §8.3)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": token}


TOKEN_SET = {"api_token": TOKEN}
TEN = {"api_allow_networks": "10.0.0.0/8"}
XFF = {"X-Forwarded-For": "1.2.3.4"}
RIGHT = bearer(f"Bearer {TOKEN}")
LB = LOOPBACK
ACCESS = [
    # (id, settings, REMOTE_ADDR, headers, expected status)
    ("loopback", {}, LB, {}, 200),
    ("loopback-127/8", {}, "127.9.8.7", {}, 200),
    ("ipv6-loopback", {}, "::1", {}, 200),
    ("ipv4-mapped-loopback", {}, "::ffff:127.0.0.1", {}, 200),
    ("loopback-xff-no-token", {}, LB, XFF, 403),
    ("loopback-forwarded-no-token", {}, LB, {"Forwarded": "for=1.2.3.4"}, 403),
    ("loopback-x-real-ip-no-token", {}, LB, {"X-Real-IP": "1.2.3.4"}, 403),
    ("loopback-xff-loopback-value", {}, LB, {"X-Forwarded-For": "127.0.0.1"}, 403),
    ("loopback-xff-token-set", TOKEN_SET, LB, XFF, 401),
    ("loopback-forwarded-token-set", TOKEN_SET, LB, {"Forwarded": "for=1.2.3.4"}, 401),
    ("loopback-x-real-ip-token-set", TOKEN_SET, LB, {"X-Real-IP": "1.2.3.4"}, 401),
    ("loopback-xff-right-token", TOKEN_SET, LB, {**XFF, **RIGHT}, 200),
    ("loopback-token-set-no-token", TOKEN_SET, LB, {}, 200),
    ("loopback-wrong-token", TOKEN_SET, LB, bearer("Bearer nope"), 401),
    ("remote-no-token-configured", {}, REMOTE, {}, 403),
    ("remote-bearer-but-no-token-configured", {}, REMOTE, bearer("Bearer anything"), 403),
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
    ("allow-network-in", TEN, REMOTE, {}, 200),
    ("allow-network-out", TEN, "11.0.0.1", {}, 403),
    ("allow-network-excludes-loopback", TEN, LB, {}, 403),
    ("allow-network-xff", TEN, REMOTE, XFF, 403),
    ("allow-none", {"api_allow_networks": "none"}, LB, {}, 403),
    ("remote-addr-garbage", {}, "not-an-ip", {}, 403),
    ("remote-addr-empty", {}, "", {}, 403),
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
    response = call(api, "GET", PREFIX + "/stats", remote=remote, headers=headers)
    assert response.status_code == status
    if status == 401:
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    if status == 200:
        assert response.get_json()["process"]["pid"] == os.getpid()


@pytest.mark.parametrize(
    ("method", "sub"),
    [
        ("GET", "/health"),
        ("POST", "/optimize"),
        ("GET", "/nope"),
        pytest.param("HEAD", "/stats", marks=HEAD_LINT),
    ],
    ids=["health", "optimize", "unknown", "head-stats"],
)
def test_access_is_checked_before_anything_else(
    make_api: Callable[..., Api], method: str, sub: str
) -> None:
    api = make_api(api_token=TOKEN)
    response = call(api, method, PREFIX + sub, remote=REMOTE)
    assert response.status_code == 401
    assert "WWW-Authenticate" in response.headers
    assert len(api.optimizer.governor.history) == 0


def test_api_disabled_passes_the_prefix_to_the_app(make_api: Callable[..., Api]) -> None:
    api = make_api(api_enabled=False)
    for path in (PREFIX + "/stats", PREFIX, PREFIX + "/nope"):
        response = page(api, path)
        assert response.status_code == 200
        assert response.data.startswith(b"app:" + path.encode())
        assert response.headers["Cache-Control"] == "public, max-age=600"
    assert api.app.calls == [PREFIX + "/stats", PREFIX, PREFIX + "/nope"]


def test_a_custom_prefix_moves_the_api(make_api: Callable[..., Api]) -> None:
    api = make_api(api_prefix="/_mem/")
    response = api.client.get("/_mem/stats", buffered=True, environ_base={"REMOTE_ADDR": LOOPBACK})
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    assert page(api, PREFIX + "/stats").data.startswith(b"app:")


def test_the_api_works_under_a_script_name(api: Api) -> None:
    response = api.client.get(
        PREFIX + "/stats",
        base_url="http://localhost/mounted",
        buffered=True,
        environ_base={"REMOTE_ADDR": LOOPBACK},
    )
    assert response.request.environ["SCRIPT_NAME"] == "/mounted"
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    assert api.app.calls == []


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
    call(api, "GET", PREFIX + "/stats", remote=REMOTE)  # 401
    call(api, "GET", PREFIX + "/stats", remote=REMOTE, headers=bearer(f"Bearer {TOKEN}"))
    call(api, "POST", PREFIX + "/stats")  # 405
    call(api, "GET", PREFIX + "/nope")  # 404
    statuses = {status for _, _, status, _ in api.seen}
    assert statuses >= {200, 400, 401, 404, 405, 429}
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
    sample = report.current_sample(optimizer)
    advice = report.recommendations(optimizer, sample)
    findings = " | ".join(item["finding"] for item in advice)
    assert "hit rate 0%" in findings
    assert any(item.get("setting") == "gc_mode" for item in advice)
    assert all(item.get("setting") or item.get("endpoint") for item in advice)


def test_the_dashboard_page_loads_without_access_and_holds_no_data(
    make_api: Callable[..., Api],
) -> None:
    # The page must load before it can ask for the token; what it shows comes from `stats`.
    api = make_api(api_token=TOKEN)
    page = call(api, "GET", PREFIX + "/", remote=REMOTE)
    assert page.status_code == 200
    assert page.mimetype == "text/html"
    assert str(os.getpid()) not in page.get_data(as_text=True)
    assert call(api, "GET", PREFIX + "/stats", remote=REMOTE).status_code == 401
