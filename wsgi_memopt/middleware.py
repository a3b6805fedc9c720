"""``MemoryOptimizer``: the WSGI middleware that caches responses under hard memory caps.

Wrap any WSGI app; every setting of :class:`~wsgi_memopt.Settings` may be given as a keyword:

    from wsgi_memopt import MemoryOptimizer

    app.wsgi_app = MemoryOptimizer(app.wsgi_app, cache_max_mb=10)

The request flow (SPEC §5): a GET or HEAD that may use the cache and finds a fresh entry is
replayed from ``environ`` alone, without calling the app or building any framework object;
anything else calls the app, streams its response through unchanged, and keeps a copy that is
stored when the server closes the response. The rules are listed in
:mod:`wsgi_memopt.cache.policy`. Every response goes back wrapped so that the server's
``close()``, the real end of the request, reaches the memory governor.
"""

from __future__ import annotations

import fnmatch
import logging
import re
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, NamedTuple

from .api import MemoryAPI
from .api.report import memory_stats
from .cache.capture import Capture, CaptureRules, cache_status
from .cache.policy import (
    BYPASS_HEADERS,
    FORWARDED_KEY_HEADERS,
    CacheKey,
    environ_key,
    is_not_modified,
    request_directives,
)
from .cache.store import Entry, ResponseStore, entry_shell_size
from .closing import ClosingResponse
from .lazy import LazyModules
from .memory.cleanups import Cleanups
from .memory.governor import Governor
from .settings import Settings

if TYPE_CHECKING:
    from _typeshed import OptExcInfo
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["MemoryOptimizer"]

log = logging.getLogger("wsgi_memopt")

_MB = 1 << 20


class MemoryOptimizer:
    """A WSGI middleware with an in-process, byte-capped, RFC 9111-minded response cache.

    :param app: the WSGI application to wrap.
    :param settings: a :class:`Settings`; when omitted, defaults overridden by the
        ``WSGI_MEMOPT_*`` environment variables.
    :param lazy: a :class:`~wsgi_memopt.lazy.LazyModules` registry to report on and, in an
        emergency, to unload idle pure-Python modules from (``.lazy``).
    :param overrides: settings given as keywords; they win over both of the above.
    :raises SettingsError: for an unknown setting name or a value it does not allow.

    Its parts, for programmatic use: ``.cache``, the
    :class:`~wsgi_memopt.cache.store.ResponseStore` (``stats()``, ``clear()``,
    ``invalidate(path_prefix)``); ``.governor``, the
    :class:`~wsgi_memopt.memory.governor.Governor` (``sample()``, ``optimize()``,
    ``emergency()``, ``history``, ``restart_reason``, ``on_recycle_needed``); ``.cleanups``,
    where app-level caches register to be cleared in an emergency; ``.lazy``.
    """

    def __init__(
        self,
        app: WSGIApplication,
        settings: Settings | None = None,
        *,
        lazy: LazyModules | None = None,
        **overrides: Any,
    ) -> None:
        if settings is None:
            settings = Settings.from_env(**overrides)
        elif overrides:
            settings = settings.replace(**overrides)
        self.app = app
        self.settings = settings
        entry_shell_size()  # measured once with pympler now, not inside the first request
        item_limit = int(min(settings.cache_item_max_mb, settings.cache_max_mb) * _MB)
        self.cache = ResponseStore(
            max_items=settings.cache_max_items,
            max_bytes=int(settings.cache_max_mb * _MB),
            item_max_bytes=item_limit,
            evict_fraction=settings.cache_evict_fraction,
            cleanup_interval_s=settings.cache_cleanup_interval_s,
        )
        self._rules = CaptureRules(
            store=self.cache,
            statuses=frozenset(settings.cache_statuses),
            item_limit=item_limit,
            ttl_cap=settings.cache_ttl_s,
            on_close=self._end_of_request,
        )
        keyed = set(settings.cache_key_headers)
        self._key_environ = tuple(
            environ_key(name) for name in sorted(keyed.union(FORWARDED_KEY_HEADERS))
        )
        self._bypass_environ = tuple(
            environ_key(name) for name in BYPASS_HEADERS if name not in keyed
        )
        self._path_allowed = _path_filter(settings.cache_paths, settings.cache_exclude_paths)
        self._lock_wait = settings.cache_lock_timeout_s
        self._cache_enabled = settings.cache_enabled
        self.cleanups = Cleanups()
        self.lazy = lazy
        self.governor = Governor(settings, self.cache, self.cleanups)
        self.governor.lazy = lazy
        self.api = MemoryAPI(self)
        # With the API off, a prefix no PATH_INFO starts with (it starts with "/" or is empty).
        self._api_prefix = settings.api_prefix if settings.api_enabled else "\x00"
        self._request_started = self.governor.request_started
        self._request_finished = self.governor.request_finished
        self._hit_response = _hit_response_class(self._request_finished)
        self._hit_started = self.governor.hit_started
        self._hit_finished = self.governor.hit_finished
        self._fast_hit_response = _hit_response_class(self._hit_finished)
        self._plain_entry, self._move_to_end, self._count_hit = self.cache.hot_path()
        self._no_keyed_values = (None,) * len(self._key_environ)
        self._rule_headers = frozenset(
            (
                "HTTP_CACHE_CONTROL",
                "HTTP_PRAGMA",
                "HTTP_AUTHORIZATION",
                "HTTP_COOKIE",
                *self._bypass_environ,
                *self._key_environ,
            )
        )
        # The plain hit also leaves conditional requests (304s) to the full path.
        self._replay_rule_headers = self._rule_headers | {
            "HTTP_IF_NONE_MATCH",
            "HTTP_IF_MODIFIED_SINCE",
        }

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """Serve from the cache when allowed and fresh; otherwise call the app and capture.

        Every response goes back wrapped so that the server's ``close()`` reaches the
        governor: that is the end of the request, when memory is looked after.
        """
        # The commonest request first: a plain GET or HEAD whose fresh entry has no Vary. It
        # needs no API check (API answers are never stored) and no GC switch (a replay
        # allocates next to nothing); it is counted in flight until its close() all the same.
        if self._cache_enabled:
            method = environ.get("REQUEST_METHOD")
            if (method == "GET" or method == "HEAD") and environ.keys().isdisjoint(
                self._replay_rule_headers
            ):
                now = self.cache.clock()
                try:
                    key = (
                        environ["wsgi.url_scheme"],
                        environ.get("HTTP_HOST")
                        or f"{environ['SERVER_NAME']}:{environ['SERVER_PORT']}",
                        environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", ""),
                        environ.get("QUERY_STRING", ""),
                    )
                    entry = self._plain_entry(key)
                    if entry is not None and entry.expires > now:
                        self._move_to_end(key)  # KeyError if just evicted: served below
                        self._count_hit()
                    else:
                        entry = None
                except Exception:
                    entry = None  # the full path below logs and copes
                if entry is not None:
                    self._hit_started()
                    try:
                        headers = entry.replay_headers
                        if not entry.created <= now < headers[0]:
                            headers = entry.rebuild_hit_headers(now)
                        start_response(entry.status, headers[1][:])
                    except BaseException:
                        self._hit_finished()
                        raise
                    if method == "HEAD":
                        return self._fast_hit_response()
                    return self._fast_hit_response((entry.body,))
        return self._respond(environ, start_response)

    def _respond(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """Every request but the plain hit: the API, pass-through, hits with rules, misses."""
        finished = self._request_finished
        self._request_started()
        try:
            path_info = environ.get("PATH_INFO", "")
            if path_info.startswith(self._api_prefix) and self.api.handles(path_info):
                # The memory API: answered here, never cached, never passed to the app.
                return self._closing(self.api(environ, start_response), environ)
            if not self._cache_enabled:
                return self._closing(self.app(environ, start_response), environ)
            method = environ.get("REQUEST_METHOD")
            if method != "GET" and method != "HEAD":
                self._count_bypass("method")
                return self._closing(self._pass(_FORWARD_METHOD, environ, start_response), environ)
            now = self.cache.clock()
            try:
                path = environ.get("SCRIPT_NAME", "") + path_info
                base_key: CacheKey = (
                    environ["wsgi.url_scheme"],
                    environ.get("HTTP_HOST")
                    or f"{environ['SERVER_NAME']}:{environ['SERVER_PORT']}",
                    path,
                    environ.get("QUERY_STRING", ""),
                )
                # No rule-changing header (the plain hit was tried in __call__): a hit with
                # Vary, or one a conditional request may turn into a 304.
                plan: Entry | _Miss | tuple[str, str] | None = None
                if environ.keys().isdisjoint(self._rule_headers):
                    plan = self.cache.lookup(base_key, environ, now, count_miss=False)[1]
                if plan is None:
                    plan = self._plan(environ, method, now, path, base_key)
                    if type(plan) is tuple:
                        self._count_bypass(plan[1])
            except Exception:
                # A broken cache costs the request its caching, never its response.
                log.warning("[CACHE] lookup failed; passing the request through", exc_info=True)
                self._count_bypass("cache-error")
                return self._closing(self.app(environ, start_response), environ)
            if type(plan) is Entry:
                if ("HTTP_IF_NONE_MATCH" in environ or "HTTP_IF_MODIFIED_SINCE" in environ) and (
                    plan.status.startswith("200")
                    and is_not_modified(environ, plan.etag, plan.last_modified)
                ):
                    start_response("304 Not Modified", plan.not_modified_headers_at(now))
                    return self._hit_response()
                start_response(plan.status, plan.hit_headers(now))
                if method == "HEAD":
                    return self._hit_response()
                return self._hit_response((plan.body,))
            if type(plan) is _Miss:
                return self._fetch(plan, environ, start_response)
            forward, detail = plan  # type: ignore[misc]
            return self._closing(
                self._pass(cache_status(forward, detail), environ, start_response), environ
            )
        except BaseException:
            finished()  # the app raised (or the server's start_response did): request over
            raise

    # -- deciding

    def _plan(
        self, environ: WSGIEnvironment, method: str, now: float, path: str, base_key: CacheKey
    ) -> Entry | _Miss | tuple[str, str]:
        """A fresh entry to replay, a miss to fetch, or ``(forward, detail)`` to pass."""
        refresh = credentials = False
        if not environ.keys().isdisjoint(self._rule_headers):
            if "HTTP_CACHE_CONTROL" in environ or "HTTP_PRAGMA" in environ:
                no_store, refresh = request_directives(environ)
                if no_store:
                    return "bypass", "request-no-store"
            for name in self._bypass_environ:
                if name in environ:
                    return "bypass", "forwarding-header"
            credentials = "HTTP_AUTHORIZATION" in environ or "HTTP_COOKIE" in environ
            keyed = tuple(map(environ.get, self._key_environ))
            if keyed != self._no_keyed_values:
                base_key = (*base_key, keyed)
        if self._path_allowed is not None and not self._path_allowed(path):
            return "bypass", "path"
        if refresh:
            if method == "HEAD":
                return "request", "head"  # nothing to refresh the entry with
            return _Miss(base_key, path, credentials, "request", None, None)
        # Single flight: the first miss of a key fetches it; the others wait for its result.
        # Such a request looks up twice, and is counted once: as the hit or miss it ends as.
        flight = self._lock_wait > 0 and not credentials and method == "GET"
        key, entry = self.cache.lookup(
            base_key, environ, now, credentials=credentials, count_miss=not flight
        )
        if entry is not None:
            return entry
        if method == "HEAD":
            return "miss", "head"  # a HEAD response has no body to store
        fill_key = fill_owner = None
        if flight:
            fill_owner = object()
            event = self.cache.begin_fill(key, self._lock_wait, fill_owner)
            if event is not None:
                event.wait(self._lock_wait)
                key, entry = self.cache.lookup(base_key, environ, self.cache.clock())
                if entry is not None:
                    return entry
            else:
                fill_key = key
                # The previous fill may have stored the entry between our lookup and now;
                # this lookup counts the request, as a hit or as the miss it is.
                _, entry = self.cache.lookup(base_key, environ, self.cache.clock())
                if entry is not None:
                    self.cache.end_fill(key, fill_owner)
                    return entry
        return _Miss(base_key, path, credentials, "miss", fill_key, fill_owner)

    # -- answering

    def _fetch(
        self, miss: _Miss, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        capture = Capture(
            self._rules,
            environ,
            start_response,
            base_key=miss.base_key,
            path=miss.path,
            credentials=miss.credentials,
            forward=miss.forward,
            fill_key=miss.fill_key,
            fill_owner=miss.fill_owner,
        )
        try:
            app_iter = self.app(environ, capture.start_response)
        except BaseException:
            capture.refuse("app-error")  # releases single-flight waiters; nothing is stored
            self.cache.reject("app-error")
            raise
        if _is_file_wrapper(app_iter, environ):
            # A file the server can sendfile(): the page cache already holds it, and wrapping
            # it would cost the server its zero-copy path. Hand it over untouched.
            capture.refuse("file-wrapper")
            self.cache.reject("file-wrapper")
            return self._closing(app_iter, environ)
        capture.app_iter = app_iter
        return capture

    def _pass(
        self,
        extra: list[tuple[str, str]],
        environ: WSGIEnvironment,
        start_response: StartResponse,
    ) -> Iterable[bytes]:
        """Call the app untouched but for ``extra`` headers (``Cache-Status``, ``X-Cache``)."""

        def start_with_status(
            status: str, headers: list[tuple[str, str]], exc_info: OptExcInfo | None = None, /
        ) -> Callable[[bytes], object]:
            return start_response(status, headers + extra, exc_info)

        return self.app(environ, start_with_status)

    def _count_bypass(self, reason: str) -> None:
        try:
            self.cache.bypass(reason)
        except Exception:  # counting must not cost the request its response either
            log.warning("[CACHE] could not count a bypass", exc_info=True)

    def _closing(self, app_iter: Iterable[bytes], environ: WSGIEnvironment) -> Iterable[bytes]:
        """``app_iter`` with the end of the request hooked to its ``close()``."""
        if _is_file_wrapper(app_iter, environ):
            # Wrapping would cost the server its sendfile(); the app's part is done already.
            self._request_finished()
            return app_iter
        return ClosingResponse(app_iter, self._request_finished)

    def _end_of_request(self) -> None:
        """Runs after the server closed a miss's response: between-request housekeeping."""
        try:
            if self.cache.sweep_due():
                self.cache.sweep()
        finally:
            self._request_finished()

    def optimize(self) -> dict[str, Any]:
        """Run the governor's optimize now; the measured result, as the API returns it."""
        return self.governor.optimize()

    def memory_stats(self) -> dict[str, Any]:
        """The figures the ``stats`` endpoint returns."""
        return memory_stats(self)


_FORWARD_METHOD = cache_status("method")


class _Miss(NamedTuple):
    """What a cache miss needs to fetch the response and maybe store it."""

    base_key: CacheKey
    path: str
    credentials: bool
    forward: str  # RFC 9211 fwd= value: "miss", or "request" when the client asked to refresh
    fill_key: CacheKey | None  # the single-flight key this request leads, if any
    fill_owner: object  # the token that lets this request, and only it, end that fill


def _hit_response_class(on_close: Callable[[], None]) -> type[list[bytes]]:
    """A list type whose ``close()`` ends the request: a hit's response.

    A list built in C and one plain method cost a third of a general wrapper (SPEC §11:
    the hit path counts every call); a hit has no app iterable to close, so there is
    nothing else to guard.
    """

    class HitResponse(list[bytes]):
        __slots__ = ()
        # A bound method as a class attribute is not bound again: close() *is* on_close(),
        # one Python frame fewer on every hit.
        close = on_close

    return HitResponse


def _is_file_wrapper(app_iter: object, environ: WSGIEnvironment) -> bool:
    # The server's own class, exactly (a server may offer a function instead: then never).
    return type(app_iter) is environ.get("wsgi.file_wrapper")


def _path_filter(
    include: tuple[str, ...], exclude: tuple[str, ...]
) -> Callable[[str], bool] | None:
    """A predicate over the path from ``cache_paths`` / ``cache_exclude_paths`` globs."""
    if not include and not exclude:
        return None
    included = re.compile("|".join(map(fnmatch.translate, include))).match if include else None
    excluded = re.compile("|".join(map(fnmatch.translate, exclude))).match if exclude else None

    def allowed(path: str) -> bool:
        if included is not None and included(path) is None:
            return False
        return excluded is None or excluded(path) is None

    return allowed
