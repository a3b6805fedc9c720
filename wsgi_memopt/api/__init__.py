"""The memory API: ``api_prefix`` (default ``/api/v1/memory``), answered by the middleware itself.

Never cached, never passed to the app. Every response is JSON (the dashboard: HTML; metrics:
Prometheus text) with ``Cache-Control: no-store``; every error is
``{"error": {"status": N, "message": "..."}}``; no traceback ever leaves the process.

Closed until the operator opens it (see :mod:`.access`): ``/health`` always answers, with the
status band only unless the request is let in; the dashboard page holds no data and loads for
anyone; every other endpoint needs ``api_token`` or ``api_allow_networks`` and refuses what a
browser made for another site's page. What pauses the process or clears app state (optimize,
the emergency, a forced collection) waits ``api_quiet_wait_s`` for the other requests in
flight to end, else answers 202 and runs at the next moment none is.

The middleware routes to it, with the request counted in flight::

    api = MemoryAPI(optimizer.parts)
    if api.handles(environ["PATH_INFO"]):
        return api(environ, start_response)
"""

from __future__ import annotations

import functools
import gc
import json
import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from werkzeug.wrappers import Request, Response

from ..settings import MB
from . import report
from .access import Access, RateLimiter, cross_site

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

    from ..parts import Parts

__all__ = ["MemoryAPI"]

log = logging.getLogger("wsgi_memopt")

_DEEP_PROFILE_INTERVAL_S = 10.0  # pympler's full summary takes seconds at 1M objects
_OWN_REQUEST = 1  # the middleware counts the API's own request in flight before routing it
# Answered to anyone: a load balancer's probe brings no token, and the page must load before
# it can ask for one. Every other path is guarded.
_OPEN = frozenset({"/health", "/"})
_NOSNIFF = ("X-Content-Type-Options", "nosniff")

Handler = Callable[[Request], Response]


class _BadRequest(Exception):
    """A query value the endpoint cannot take: answered 400 with this message."""


class MemoryAPI:
    """Routes, access and errors of the memory API over one middleware's
    :class:`~wsgi_memopt.parts.Parts`."""

    def __init__(self, parts: Parts) -> None:
        settings = parts.settings
        self.parts = parts
        self.prefix = settings.api_prefix
        self.access = Access(settings)
        self.limits = RateLimiter(settings.api_min_interval_s)
        self.quiet_wait_s = settings.api_quiet_wait_s
        self._routes: dict[str, dict[str, Handler]] = {
            "/": {"GET": self._dashboard},
            "/health": {"GET": self._health},
            "/stats": {"GET": self._stats},
            "/profile": {"GET": self._profile},
            "/optimize": {"POST": self._optimize},
            "/optimize/force": {"POST": self._optimize_force},
            "/gc/force": {"POST": self._gc_force},
            "/cache/clear": {"POST": self._cache_clear},
            "/metrics": {"GET": self._metrics},
            "/openapi.json": {"GET": self._openapi},
        }

    def handles(self, path: str) -> bool:
        """Whether ``PATH_INFO`` is under the prefix (the prefix itself included)."""
        prefix = self.prefix
        return path.startswith(prefix) and (len(path) == len(prefix) or path[len(prefix)] == "/")

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """Answer one API request."""
        response = self.respond(Request(environ))
        return response(environ, start_response)

    def respond(self, request: Request) -> Response:
        """The response to ``request``, errors included; never raises."""
        try:
            response = self._route(request)
        except _BadRequest as error:
            response = _error(400, str(error))
        except Exception:
            log.exception("[MEMORY] the memory API failed on %s %s", request.method, request.path)
            response = _error(500, "the memory API failed; the server's log has the details")
        response.headers["Cache-Control"] = "no-store"
        response.headers.setdefault(*_NOSNIFF)
        return response

    def _route(self, request: Request) -> Response:
        sub = request.path[len(self.prefix) :] or "/"
        if sub not in _OPEN:
            refused = self._guard(request)
            if refused is not None:
                return refused
        methods = self._routes.get(sub)
        if methods is None:
            return _error(404, f"no such endpoint: {sub}; see {self.prefix}/openapi.json")
        method = "GET" if request.method == "HEAD" else request.method
        handler = methods.get(method)
        if handler is None:
            allowed = sorted({*methods, *(["HEAD"] if "GET" in methods else [])})
            response = _error(405, f"{request.method} is not allowed here; use {allowed[0]}")
            response.headers["Allow"] = ", ".join(allowed)
            return response
        return handler(request)

    def _guard(self, request: Request) -> Response | None:
        """The refusal of a request that may not use a guarded endpoint; None if it may."""
        if cross_site(request.environ):
            # A page elsewhere must not make the operator's browser read or act on the API.
            return _error(403, "the memory API refuses requests made by another site's page")
        denied = self.access.check(request.environ)
        if denied is None:
            return None
        status, message = denied
        response = _error(status, message)
        if status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="wsgi_memopt"'
        return response

    # -- endpoints

    def _health(self, request: Request) -> Response:
        status, body = report.health(self.parts)
        if self.access.check(request.environ) is not None:
            # A load balancer's probe needs the band, not the process's figures.
            body = {"status": body["status"]}
        return _json(body, status)

    def _stats(self, request: Request) -> Response:
        return _json(report.memory_stats(self.parts))

    def _profile(self, request: Request) -> Response:
        from .profile import profile

        limit = _int_arg(request, "limit", default=20, low=1, high=1000)
        deep = _bool_arg(request, "deep")
        waited = self._limited("profile-deep" if deep else "profile", deep)
        if waited is not None:
            return waited
        body = profile(self.parts, limit=limit, deep=deep)
        sample = report.current_sample(self.parts)
        body["recommendations"] = report.recommendations(self.parts, sample)
        return _json(body)

    def _optimize(self, request: Request) -> Response:
        waited = self._limited("optimize")
        if waited is not None:
            return waited
        optimize = functools.partial(self.parts.governor.optimize, "api")
        return self._when_quiet("optimize", optimize)

    def _optimize_force(self, request: Request) -> Response:
        waited = self._limited("optimize/force")
        if waited is not None:
            return waited
        emergency = functools.partial(self.parts.governor.emergency, "api")
        return self._when_quiet("emergency", emergency)

    def _gc_force(self, request: Request) -> Response:
        waited = self._limited("gc/force")
        if waited is not None:
            return waited
        return self._when_quiet("collection", _collect_every_generation)

    def _cache_clear(self, request: Request) -> Response:
        # At once, requests in flight or not: the store is built to lose entries under them
        # (evictions happen mid-request), and a replay holds its own reference to its body.
        waited = self._limited("cache/clear")
        if waited is not None:
            return waited
        items, cleared_bytes = self.parts.cache.clear()
        return _json({"cleared_items": items, "freed_mb": round(cleared_bytes / MB, 3)})

    def _metrics(self, request: Request) -> Response:
        from .metrics import MetricsUnavailable, render_metrics

        try:
            body, content_type = render_metrics(self.parts)
        except MetricsUnavailable as error:
            return _error(501, str(error))
        return Response(body, 200, content_type=content_type)

    def _openapi(self, request: Request) -> Response:
        from .openapi import document

        return _json(document(self.prefix))

    def _dashboard(self, request: Request) -> Response:
        from .dashboard import dashboard_csp, dashboard_html

        response = Response(dashboard_html(self.prefix), 200, mimetype="text/html")
        response.headers["Content-Security-Policy"] = dashboard_csp(self.prefix)
        response.headers["X-Frame-Options"] = "DENY"
        return response

    # -- helpers

    def _when_quiet(self, kind: str, work: Callable[[], dict[str, Any]]) -> Response:
        """``work``'s body once no other request is in flight, or 202 saying it was deferred."""
        governor = self.parts.governor
        body = governor.run_when_quiet(kind, work, wait_s=self.quiet_wait_s, own=_OWN_REQUEST)
        if body is not None:
            return _json(body)
        others = max(governor.in_flight - _OWN_REQUEST, 0)
        return _json(
            {
                "deferred": kind,
                "in_flight": others,
                "waited_s": self.quiet_wait_s,
                "message": f"other requests were still in flight after {self.quiet_wait_s:g} s "
                f"(api_quiet_wait_s): the {kind} runs at the next moment none is",
            },
            202,
        )

    def _limited(self, key: str, deep: bool = False) -> Response | None:
        interval = max(_DEEP_PROFILE_INTERVAL_S, self.limits.interval_s) if deep else None
        retry_after = self.limits.acquire(key, interval)
        if retry_after is None:
            return None
        every = interval or self.limits.interval_s
        response = _error(429, f"{key} runs at most once every {every:g} s per process")
        response.headers["Retry-After"] = str(retry_after)
        return response


def _collect_every_generation() -> dict[str, Any]:
    """A collection of each generation, youngest first, each reporting what it collected."""
    before = gc.get_count()
    started = time.perf_counter()
    collected = {str(generation): gc.collect(generation) for generation in (0, 1, 2)}
    duration_ms = (time.perf_counter() - started) * 1000
    return {
        "collected": collected,
        "total_collected": sum(collected.values()),
        "duration_ms": round(duration_ms, 2),
        "before": {"counts": list(before)},
        "after": {"counts": list(gc.get_count())},
        "uncollectable": len(gc.garbage),
    }


def _json(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body), status, mimetype="application/json")


def _error(status: int, message: str) -> Response:
    return _json({"error": {"status": status, "message": message}}, status)


def _int_arg(request: Request, name: str, *, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    # ASCII digits only: int() would also take "1_0", " 5" and other scripts' digits.
    if not (raw.isascii() and raw.isdigit()):
        raise _BadRequest(f"{name} must be an integer from {low} to {high}, not {raw!r}")
    value = int(raw)
    if not low <= value <= high:
        raise _BadRequest(f"{name} must be an integer from {low} to {high}, not {raw!r}")
    return value


def _bool_arg(request: Request, name: str) -> bool:
    raw = request.args.get(name)
    if raw is None:
        return False
    if raw in ("1", "true"):
        return True
    if raw in ("0", "false"):
        return False
    raise _BadRequest(f"{name} must be 1, 0, true or false, not {raw!r}")
