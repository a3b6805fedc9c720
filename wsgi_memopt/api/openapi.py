"""The OpenAPI 3 description of the memory API, served at ``<api_prefix>/openapi.json``.

The schemas describe what the endpoints really send; the test suite validates the document and
every response it receives against it.
"""

from __future__ import annotations

from typing import Any

from .. import __version__

__all__ = ["document"]

_NUMBER = {"type": "number"}
_INTEGER = {"type": "integer"}
_STRING = {"type": "string"}
_NULLABLE_STRING = {"type": "string", "nullable": True}
_COUNTS = {"type": "object", "additionalProperties": {"type": "integer"}}
_NULLABLE_INTEGER = {"type": "integer", "nullable": True}


def _object(required: dict[str, Any], **optional: Any) -> dict[str, Any]:
    return {
        "type": "object",
        "required": sorted(required),
        "properties": {**required, **optional},
    }


_ERROR = _object(
    {"error": _object({"status": _INTEGER, "message": _STRING})},
)
_SAMPLE = _object(
    {
        "memory_percent": _NUMBER,
        "rss_mb": _NUMBER,
        "used_mb": _NUMBER,
        "available_mb": _NUMBER,
        "limit_mb": _NUMBER,
        "source": _STRING,
        "status": _STRING,
        "taken_at": _NUMBER,
    }
)
_ACTION = _object(
    {
        "kind": _STRING,
        "reason": _STRING,
        "at": _NUMBER,
        "duration_ms": _NUMBER,
        "before": {"$ref": "#/components/schemas/Sample"},
        "after": {"$ref": "#/components/schemas/Sample"},
        "improvement": _object(
            {"mb_freed": _NUMBER, "used_mb_freed": _NUMBER, "percent_freed": _NUMBER}
        ),
        "actions": _object(
            {
                "cache_items_freed": _INTEGER,
                "cache_mb_freed": _NUMBER,
                "objects_collected": _INTEGER,
                "malloc_trim": {"type": "boolean"},
                "cleanups": {"type": "array", "items": {"type": "object"}},
                "modules": {"type": "array", "items": {"type": "object"}},
            }
        ),
    }
)
_RECOMMENDATION = _object(
    {"finding": _STRING, "action": _STRING}, setting=_STRING, endpoint=_STRING
)
# Without access, /health answers the status alone; let in, every field.
_HEALTH = _object(
    {
        "status": {
            "type": "string",
            "enum": ["excellent", "good", "warning", "critical", "restart-needed"],
        },
    },
    memory_percent=_NUMBER,
    source=_STRING,
    alert={
        "nullable": True,
        **_object({"level": _STRING, "message": _STRING, "recommendation": _NULLABLE_STRING}),
    },
    restart_reason=_NULLABLE_STRING,
    recycle=_object(
        {
            "possible": {"type": "boolean"},
            "server": _NULLABLE_STRING,
            "note": _NULLABLE_STRING,
        }
    ),
    recommendations={
        "type": "array",
        "items": {"$ref": "#/components/schemas/Recommendation"},
    },
    shared_cache=_object(
        {
            "state": {"type": "string", "enum": ["closed", "open", "half-open"]},
            "listening": {"type": "boolean"},
            "errors": _INTEGER,
            "breaker_opened": _INTEGER,
        }
    ),
)
# The store every process shares (cache_backend); null with the default, memory.
_SHARED = {
    "nullable": True,
    **_object(
        {
            "backend": _STRING,
            "kind": {"type": "string", "enum": ["single", "cluster", "sentinel"]},
            "prefix": _STRING,
            "state": {"type": "string", "enum": ["closed", "open", "half-open"]},
            "hits": _INTEGER,
            "misses": _INTEGER,
            "hit_rate": _NUMBER,
            "stores": _INTEGER,
            "errors": _INTEGER,
            "errors_by_kind": _COUNTS,
            "skipped": _INTEGER,
            "refused_records": _COUNTS,
            "breaker_opened": _INTEGER,
            "pending_invalidations": _NULLABLE_INTEGER,
            "read_at": {"type": "number", "nullable": True},
            "used_memory_bytes": _NULLABLE_INTEGER,
            "maxmemory_bytes": _NULLABLE_INTEGER,
            "keys": _NULLABLE_INTEGER,
            "local_ttl_s": _NUMBER,
            "listening": {"type": "boolean"},
            "invalidations_published": _INTEGER,
            "invalidations_received": _INTEGER,
            "resubscribed": _INTEGER,
        }
    ),
}
_STATS = _object(
    {
        "memory": _object(
            {
                "percent": _NUMBER,
                "used_mb": _NUMBER,
                "available_mb": _NUMBER,
                "limit_mb": _NUMBER,
                "rss_mb": _NUMBER,
                "source": _STRING,
                "status": _STRING,
                # Where the good, warning and critical bands start (each exclusive but good).
                "bands": _object({"good": _NUMBER, "warning": _NUMBER, "critical": _NUMBER}),
            }
        ),
        "cache": _object(
            {
                "items": _INTEGER,
                "size_mb": _NUMBER,
                "max_items": _INTEGER,
                "max_mb": _NUMBER,
                "hits": _INTEGER,
                "misses": _INTEGER,
                "hit_rate": _NUMBER,
                "stores": _INTEGER,
                "evictions": _INTEGER,
                "rejected": _COUNTS,
                "bypassed": _COUNTS,
                "shared": _SHARED,
            }
        ),
        "gc": {"type": "object"},
        "modules": {"type": "object", "nullable": True},
        "governor": _object(
            {
                "in_flight": _INTEGER,
                "restart_reason": _NULLABLE_STRING,
                "deferred": {"type": "array", "items": _STRING},
                "forecast": {
                    "nullable": True,
                    **_object(
                        {
                            "rate_mb_per_s": _NUMBER,
                            "seconds_to_limit": {"type": "number", "nullable": True},
                            "samples": _INTEGER,
                            "span_s": _NUMBER,
                        }
                    ),
                },
                "last_actions": {"type": "array", "items": {"$ref": "#/components/schemas/Action"}},
            }
        ),
        "history": {
            "type": "array",
            "items": _object({"t": _NUMBER, "percent": _NUMBER, "rss_mb": _NUMBER}),
        },
        "process": _object({"pid": _INTEGER, "uptime_s": _NUMBER}),
        "workers": {
            "nullable": True,
            **_object(
                {
                    "server": _STRING,
                    "master_pid": _INTEGER,
                    "workers": {
                        "type": "array",
                        "items": _object({"pid": _INTEGER, "rss_mb": _NUMBER}),
                    },
                    "total_rss_mb": _NUMBER,
                }
            ),
        },
    }
)
_GC_FORCE = _object(
    {
        "collected": _COUNTS,
        "total_collected": _INTEGER,
        "duration_ms": _NUMBER,
        "before": _object({"counts": {"type": "array", "items": _INTEGER}}),
        "after": _object({"counts": {"type": "array", "items": _INTEGER}}),
        "uncollectable": _INTEGER,
    }
)
_CACHE_CLEAR = _object({"cleared_items": _INTEGER, "freed_mb": _NUMBER})
_DEFERRED = _object(
    {
        "deferred": {"type": "string", "enum": ["optimize", "emergency", "collection"]},
        "in_flight": _INTEGER,
        "waited_s": _NUMBER,
        "message": _STRING,
    }
)


def _json_response(description: str, schema: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


def _errors(*statuses: int) -> dict[str, Any]:
    why = {
        "400": "a query value the endpoint cannot take",
        "401": "a bearer token is required, or the one given is wrong",
        "403": "the API is closed (neither api_token nor api_allow_networks is set), the "
        "request is not let in by api_allow_networks and no token is configured, or a browser "
        "made it for another site's page",
        "429": "rate limited (api_min_interval_s); Retry-After says when to come back",
        "500": "the endpoint failed; the server's log has the details",
        "501": "prometheus_client is not installed",
        "503": "the worker needs a restart nothing here can do",
    }
    return {str(status): _json_response(why[str(status)], "Error") for status in statuses}


def _operation(summary: str, ok: dict[str, Any], *errors: int, **extra: Any) -> dict[str, Any]:
    return {
        "summary": summary,
        "security": [{}, {"bearer": []}],
        "responses": {"200": ok, **_errors(401, 403, 500, *errors)},
        **extra,
    }


def _with_response(operation: dict[str, Any], status: str, response: Any) -> dict[str, Any]:
    operation["responses"][status] = response
    return operation


def _when_quiet(summary: str, schema: str) -> dict[str, Any]:
    """A POST that pauses the process or clears app state: 200 when it ran, 202 deferred."""
    return _with_response(
        _operation(summary, _json_response("what was done and freed", schema), 429),
        "202",
        _json_response(
            "other requests were in flight for api_quiet_wait_s: deferred to the next moment "
            "none is",
            "Deferred",
        ),
    )


def document(prefix: str) -> dict[str, Any]:
    """The OpenAPI 3.0 document, paths under ``prefix``."""
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "wsgi_memopt memory API",
            "version": __version__,
            "description": "Answered by the middleware itself, never cached, never passed "
            "to the app. Closed until the operator opens it: /health always answers (the "
            "status alone without access) and the dashboard page loads for anyone; the rest "
            "needs Authorization: Bearer <api_token>, or a request from api_allow_networks "
            "with no client-address header and a Host that is an IP address or localhost. "
            "Requests a browser made for another site's page are refused.",
        },
        "paths": {
            f"{prefix}/health": {
                "get": _with_response(
                    _operation(
                        "status band; with access also memory percent, alert, recommendations",
                        _json_response("healthy or degraded", "Health"),
                    ),
                    "503",
                    _json_response(
                        "the worker needs a restart nothing here can do (restart_reason)",
                        "Health",
                    ),
                )
            },
            f"{prefix}/stats": {
                "get": _operation(
                    "cheap summary: memory, cache, gc, modules, governor, process, workers",
                    _json_response("the figures", "Stats"),
                )
            },
            f"{prefix}/profile": {
                "get": _operation(
                    "what holds memory: types, components, gc, tracemalloc sites",
                    {
                        "description": "the profile",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    400,
                    429,
                    parameters=[
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                        },
                        {
                            "name": "deep",
                            "in": "query",
                            "schema": {"type": "string", "enum": ["0", "1", "true", "false"]},
                        },
                    ],
                )
            },
            f"{prefix}/optimize": {
                "post": _when_quiet(
                    "sweep, evict a fraction, collect, malloc_trim; measured", "Action"
                )
            },
            f"{prefix}/optimize/force": {
                "post": _when_quiet("the emergency cleanup; measured", "Action")
            },
            f"{prefix}/gc/force": {
                "post": _when_quiet("a collection of every generation, youngest first", "GcForce")
            },
            f"{prefix}/cache/clear": {
                "post": _operation(
                    "empty the response cache",
                    _json_response("what was dropped", "CacheClear"),
                    429,
                )
            },
            f"{prefix}/metrics": {
                "get": _operation(
                    "Prometheus text exposition",
                    {"description": "metrics", "content": {"text/plain": {"schema": _STRING}}},
                    501,
                )
            },
            f"{prefix}/openapi.json": {
                "get": _operation(
                    "this document",
                    {
                        "description": "OpenAPI 3",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                )
            },
            f"{prefix}/": {
                "get": _operation(
                    "the dashboard",
                    {"description": "HTML", "content": {"text/html": {"schema": _STRING}}},
                )
            },
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": _ERROR,
                "Sample": _SAMPLE,
                "Action": _ACTION,
                "Recommendation": _RECOMMENDATION,
                "Health": _HEALTH,
                "Stats": _STATS,
                "GcForce": _GC_FORCE,
                "CacheClear": _CACHE_CLEAR,
                "Deferred": _DEFERRED,
            },
        },
    }
