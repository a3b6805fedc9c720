"""``MemoryOptimizer``: the WSGI middleware that caches responses under hard memory caps.

Wrap any WSGI app; every setting of :class:`~wsgi_memopt.Settings` may be given as a keyword:

    from wsgi_memopt import MemoryOptimizer

    app.wsgi_app = MemoryOptimizer(app.wsgi_app, cache_max_mb=10)

The request flow: a GET or HEAD that may use the cache and finds a fresh entry is
replayed from ``environ`` alone, without calling the app or building any framework object;
anything else calls the app, streams its response through unchanged, and keeps a copy that is
stored when the server closes the response. The rules are listed in
:mod:`wsgi_memopt.cache.policy`. Every response goes back wrapped so that the server's
``close()``, the real end of the request, reaches the memory governor.
"""

from __future__ import annotations

import fnmatch
import logging
import operator
import re
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from .api import MemoryAPI
from .api.report import memory_stats
from .cache.capture import Capture, CaptureRules, cache_status
from .cache.policy import (
    BYPASS_HEADERS,
    FORWARDED_KEY_HEADERS,
    NO_BODY_LENGTHS,
    CacheKey,
    environ_key,
    has_body,
    is_not_modified,
    key_path,
    normalized_path,
    plan_environ_keys,
    request_directives,
    variant_key,
)
from .cache.store import Entry, ResponseStore
from .closing import ClosingResponse, HitResponse, counted_response_type
from .lazy import LazyModules
from .memory.cleanups import Cleanups
from .memory.governor import Governor
from .parts import Parts
from .settings import Settings

if TYPE_CHECKING:
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
        item_limit = int(min(settings.cache_item_max_mb, settings.cache_max_mb) * _MB)
        self.cache = ResponseStore(
            max_items=settings.cache_max_items,
            max_bytes=int(settings.cache_max_mb * _MB),
            item_max_bytes=item_limit,
            evict_fraction=settings.cache_evict_fraction,
            cleanup_interval_s=settings.cache_cleanup_interval_s,
            uncacheable_ttl_s=min(settings.cache_ttl_s, _REMEMBER_UNCACHEABLE_S),
        )
        keyed = set(settings.cache_key_headers)
        self._key_environ = tuple(
            environ_key(name) for name in sorted(keyed.union(FORWARDED_KEY_HEADERS))
        )
        self._bypass_environ = frozenset(
            environ_key(name) for name in BYPASS_HEADERS if name not in keyed
        )
        # Whether a GET or HEAD carries none of the headers that call for _plan's rules
        # (policy's lists, less what the settings key): one C pass over environ's keys.
        self._no_plan_header = plan_environ_keys(keyed).isdisjoint
        self._path_allowed = _path_filter(settings.cache_paths, settings.cache_exclude_paths)
        self._lock_wait = settings.cache_lock_timeout_s
        self._cache_enabled = settings.cache_enabled
        self.cleanups = Cleanups()
        self.lazy = lazy
        self.governor = Governor(settings, self.cache, self.cleanups)
        self.governor.lazy = lazy
        self.parts = Parts(settings, self.cache, self.governor, self.cleanups, lazy)
        self.api = MemoryAPI(self.parts)
        # With the API off, a prefix no PATH_INFO starts with (it starts with "/" or is empty).
        self._api_prefix = settings.api_prefix if settings.api_enabled else "\x00"
        governor = self.governor
        self._rules = CaptureRules(
            store=self.cache,
            statuses=frozenset(settings.cache_statuses),
            item_limit=item_limit,
            ttl_cap=settings.cache_ttl_s,
            default_ttl=settings.cache_default_ttl_s,
            on_close=governor.request_finished,
            on_drop=governor.request_dropped,
        )
        self._request_started = governor.request_started
        self._request_finished = governor.request_finished
        self._request_dropped = governor.request_dropped
        self._hit_started = governor.hit_started
        self._hit_open = governor.hit_open
        self._hit_close = governor.hit_close
        self.cache.count_hits_from(governor.lane_hits)  # what hit_open counts
        # A lane hit's response: its close(), or its collection without one, ends the
        # request, each a C count (see Governor.in_flight).
        self._lane_hit = counted_response_type(governor.hit_close, governor.hit_drop)
        self._entry_at, self._touch, self._count_hit = self.cache.hot_path()
        self._count_miss = self.cache.miss_counter()
        self._uncacheable_until = self.cache.uncacheable_until()
        self._private_until = self.cache.uncacheable_until(credentials=True)
        self._variants_of = self.cache.variants_of()
        self._count_method_bypass = self.cache.bypass_counter("method")
        # The keyed headers beyond the three forwarding ones: the settings' own (_keyed puts
        # their values in the key after those three; the hit lane looks for them as a set).
        self._settings_key_environ = tuple(
            name for name in self._key_environ if name not in LANE_KEYED_HEADERS
        )
        self._own_key_environ = frozenset(self._settings_key_environ)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """Serve from the cache when allowed and fresh; otherwise call the app and capture.

        Every response goes back wrapped so that the server's ``close()`` reaches the
        governor: that is the end of the request, when memory is looked after.
        """
        # The hit lane first: a GET or HEAD with no header that changes its plan and no body
        # (cookies, Authorization and keyed headers may be there: the key and the public
        # rule see to them) whose entry, direct or under its Vary values, is fresh. It needs
        # no API check (API answers are never stored), no GC switch (a replay allocates next
        # to nothing) and no allocation but the header list the server may change; it is in
        # flight until its close(). The rest goes the full path, _respond.
        if self._cache_enabled:
            try:
                method = environ["REQUEST_METHOD"]  # a dict subscript: cheaper than get()
            except KeyError:
                method = None  # PEP 3333 requires it; such a request is passed through
            if method == "GET" or method == "HEAD":
                try:
                    plain = self._no_plan_header(environ) and (
                        environ.get("CONTENT_LENGTH") in NO_BODY_LENGTHS
                    )
                except TypeError:
                    plain = False  # an unhashable Content-Length: _plan passes it through
                if not plain:
                    # A request directive, a body, or a forwarding header the settings do
                    # not key: which rule applies is _plan's to say.
                    return self._respond(environ, start_response, None)
                # Credentials (a browser's cookies) are served only what said "public".
                credentials = "HTTP_AUTHORIZATION" in environ or "HTTP_COOKIE" in environ
                try:
                    # request_key, inlined: one C call.
                    key = (_KEY_BY_RAW_URI if "RAW_URI" in environ else _KEY_BY_REQUEST_URI)(
                        environ
                    )
                except KeyError:
                    key = request_key(environ)
                if (
                    "HTTP_X_FORWARDED_PROTO" in environ
                    or "HTTP_X_FORWARDED_PORT" in environ
                    or "HTTP_X_FORWARDED_PREFIX" in environ
                    or (
                        self._own_key_environ
                        and not environ.keys().isdisjoint(self._own_key_environ)
                    )
                ):
                    # A keyed header (a TLS proxy's X-Forwarded-Proto): its value in the key,
                    # spelled as _plan spells it.
                    key = self._keyed(key, environ)
                try:
                    entry = self._entry_at(key)
                    if entry is None:
                        # Stored under the request's values of what its Vary names (a
                        # compressing app's Accept-Encoding): found as _plan finds it.
                        variants = self._variants_of(key)
                        if variants is not None and variants[0]:
                            entry = self._entry_at(variant_key(key, variants[0], environ))
                except TypeError:
                    # An unhashable value a broken server put in environ: the full path
                    # (below) passes such a request through.
                    entry = None
                if credentials and entry is not None and not entry.shareable_with_credentials:
                    entry = None  # one user's page must never reach another
                if entry is not None:
                    now = self.cache.clock()
                    # Fresh, its Age header still right, and no validator a conditional
                    # request could turn into a 304: nothing else to check.
                    if now < entry.replay_until and not (
                        entry.validated
                        and ("HTTP_IF_NONE_MATCH" in environ or "HTTP_IF_MODIFIED_SINCE" in environ)
                    ):
                        try:  # noqa: SIM105 (a with block costs five times as much here)
                            self._touch(entry.key)  # least recently used goes first
                        except KeyError:
                            pass  # evicted meanwhile by another thread: still ours to send
                        if now < self.governor.next_tick:
                            self._hit_open()  # one C call: a hit, and in flight until close()
                            try:
                                start_response(entry.status, entry.replay.copy())
                            except BaseException:
                                self._hit_close()
                                raise
                            if method == "GET":
                                return self._lane_hit((entry.body,))
                            return self._lane_hit()
                        # A sample is due: this hit's close() ticks.
                        self._count_hit()
                        self._hit_started()
                        try:
                            start_response(entry.status, entry.replay.copy())
                        except BaseException:
                            self.governor.hit_finished()
                            raise
                        return self._hit_response(
                            self.governor.hit_finished, entry.body if method == "GET" else None
                        )
                    if now < entry.expires:
                        # Fresh, but its Age header is a second behind, or the request is
                        # conditional and the entry has validators (a 304, if they match).
                        try:  # noqa: SIM105
                            self._touch(entry.key)
                        except KeyError:
                            pass
                        self._count_hit()
                        self._request_started()
                        try:
                            return self._replay(entry, environ, start_response, now, method)
                        except BaseException:
                            self._request_finished()  # the server's start_response raised
                            raise
                return self._respond(environ, start_response, key, credentials)
            if not environ.get("PATH_INFO", "").startswith(self._api_prefix):
                # Any other method goes to the app and is never stored.
                self._request_started()
                self._count_method_bypass()
                try:
                    return self._pass(_FORWARD_METHOD, environ, start_response)
                except BaseException:
                    self._request_finished()  # the app raised: the request is over
                    raise
        return self._respond(environ, start_response, None)

    def _respond(
        self,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        plain_key: CacheKey | None,
        credentials: bool = False,
    ) -> Iterable[bytes]:
        """Every request but the plain hit: the API, pass-through, hits with rules, misses.

        ``plain_key`` is the base key of a GET or HEAD carrying none of the headers that
        change its plan (it may carry credentials, said by ``credentials``, and keyed
        forwarding headers, whose values the key holds), as the hit lane built it; None for
        anything else.
        """
        self._request_started()
        try:
            path_info = environ.get("PATH_INFO", "")
            if path_info.startswith(self._api_prefix) and self.api.handles(path_info):
                # The memory API: answered here, never cached, never passed to the app.
                return self._closing(self.api(environ, start_response), environ)
            if not self._cache_enabled:
                return self._closing(self.app(environ, start_response), environ)
            method: str = environ.get("REQUEST_METHOD", "")
            if plain_key is None and method != "GET" and method != "HEAD":
                self._count_method_bypass()
                return self._pass(_FORWARD_METHOD, environ, start_response)
            now = self.cache.clock()
            try:
                plan = self._plan(environ, start_response, method, now, plain_key, credentials)
            except Exception:
                # A broken cache costs the request its caching, never its response.
                log.warning("[CACHE] lookup failed; passing the request through", exc_info=True)
                self._count_bypass("cache-error")
                return self._closing(self.app(environ, start_response), environ)
            if isinstance(plan, Capture):
                # A miss: the app's response streams through the capture (inlined: this
                # runs on every miss).
                try:
                    app_iter = self.app(environ, plan.start_response)
                except BaseException:
                    plan.dismiss("app-error")  # releases single-flight waiters
                    raise
                if type(app_iter) is environ.get("wsgi.file_wrapper"):
                    # The page cache holds that file already: not ours to copy.
                    plan.hand_over("file-wrapper")
                    return self._handed_over(app_iter)
                plan.app_iter = app_iter
                return plan
            if isinstance(plan, Entry):
                return self._replay(plan, environ, start_response, now, method)
            forward, detail = plan
            self._count_bypass(detail)
            return self._pass(cache_status(forward, detail), environ, start_response)
        except BaseException:
            self._request_finished()  # the app raised (or the server's start_response did)
            raise

    # -- deciding

    def _plan(
        self,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        method: str,
        now: float,
        base_key: CacheKey | None,
        credentials: bool = False,
    ) -> Entry | Capture | tuple[str, str]:
        """A fresh entry to replay, a capture to fetch a miss with, or ``(forward, detail)``
        to pass the request through with. ``base_key`` and ``credentials``: as the hit lane
        found them (see :meth:`_respond`)."""
        refresh = False
        if base_key is None:
            # The hit lane saw a header a rule reads (which, it does not say: each is asked).
            base_key = request_key(environ)
            if "HTTP_CACHE_CONTROL" in environ or "HTTP_PRAGMA" in environ:
                no_store, refresh = request_directives(environ)
                if no_store:
                    return "bypass", "request-no-store"
            if not environ.keys().isdisjoint(self._bypass_environ):
                return "bypass", "forwarding-header"
            if has_body(environ):
                return "bypass", "request-body"  # a page of what the key does not hold
            credentials = "HTTP_AUTHORIZATION" in environ or "HTTP_COOKIE" in environ
            if not environ.keys().isdisjoint(self._key_environ):
                base_key = self._keyed(base_key, environ)
        path_allowed = self._path_allowed
        if path_allowed is not None and not path_allowed(key_path(base_key), base_key[3]):
            return "bypass", "path"
        if refresh:
            if method == "HEAD":
                return "request", "head"  # nothing to refresh the entry with
            return Capture(self._rules, environ, start_response, base_key, credentials, "request")
        # Single flight: the first miss of a key fetches it; the others wait for its result.
        # Such a request looks up twice, and is counted once: as the hit or miss it ends as.
        flight = self._lock_wait > 0 and not credentials and method == "GET"
        key, entry = self.cache.lookup(base_key, environ, now, credentials, not flight)
        if entry is not None:
            return entry
        if method == "HEAD":
            return "miss", "head"  # a HEAD response has no body to store
        if not flight:
            if credentials and self._private_until(base_key, 0.0) > now:
                # The page's last response to a request with credentials was not public:
                # passed through without a capture (counted as a bypass, as a HEAD miss is).
                return "miss", "credentials"
            return Capture(self._rules, environ, start_response, base_key, credentials)
        if self._uncacheable_until(key, 0.0) > now:
            # Its last response could not be stored: nobody waits for this one either.
            self._count_miss()
            return Capture(self._rules, environ, start_response, base_key)
        owner = object()
        event = self.cache.begin_fill(key, self._lock_wait, owner, now)
        if event is not None:
            event.wait(self._lock_wait)
            key, entry = self.cache.lookup(base_key, environ, self.cache.clock())
            if entry is not None:
                return entry
            return Capture(self._rules, environ, start_response, base_key)
        if self._entry_at(key) is not None:
            # Stored by the previous fill between our lookup and now: this lookup counts
            # the request, as the hit it is (or as a miss, if that entry is stale).
            _, entry = self.cache.lookup(base_key, environ, self.cache.clock())
            if entry is not None:
                self.cache.end_fill(key, owner)
                return entry
        else:
            self._count_miss()
        return Capture(self._rules, environ, start_response, base_key, False, "miss", key, owner)

    def _keyed(self, base_key: CacheKey, environ: WSGIEnvironment) -> CacheKey:
        """``base_key`` with the request's values of the keyed headers: one spelling for the
        hit lane and the full path, so both find the same entry."""
        get = environ.get
        # The three forwarding headers every key holds, asked for by name: a third of what
        # tuple(map(get, names)) costs; then those the settings added, if any.
        values: tuple[object, ...] = (
            get(_FORWARDED_PORT),
            get(_FORWARDED_PREFIX),
            get(_FORWARDED_PROTO),
        )
        if self._settings_key_environ:
            values += tuple(map(get, self._settings_key_environ))
        return (*base_key, values)

    # -- answering

    def _replay(
        self,
        entry: Entry,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        now: float,
        method: str,
    ) -> Iterable[bytes]:
        """A fresh ``entry`` replayed at ``now`` (its ``Age`` brought up to date), or a
        ``304`` when the request's validators match it; the request is over at close()."""
        if ("HTTP_IF_NONE_MATCH" in environ or "HTTP_IF_MODIFIED_SINCE" in environ) and (
            entry.status.startswith("200")
            and is_not_modified(environ, entry.etag, entry.last_modified)
        ):
            start_response("304 Not Modified", entry.not_modified_headers_at(now))
            return self._hit_response(self._request_finished)
        start_response(entry.status, entry.hit_headers(now))
        if method == "HEAD":
            return self._hit_response(self._request_finished)
        return self._hit_response(self._request_finished, entry.body)

    def _hit_response(
        self, on_close: Callable[[], object], body: bytes | None = None
    ) -> Iterable[bytes]:
        """A replayed response (``body``, or none): its ``close()`` calls ``on_close``; its
        collection without one ends the request as :meth:`Governor.request_dropped` does."""
        response: HitResponse = _new_list(HitResponse)
        response._on_close = on_close
        response._on_drop = self._request_dropped
        if body is not None:
            response.append(body)
        return response

    def _pass(
        self,
        extra: list[tuple[str, str]],
        environ: WSGIEnvironment,
        start_response: StartResponse,
    ) -> Iterable[bytes]:
        """Call the app untouched but for ``extra`` headers (``Cache-Status``, ``X-Cache``),
        its response hooked to the end of the request.

        Every request the cache cannot serve pays this, so the response object is filled in
        field by field here rather than through an ``__init__`` frame.
        """
        response: ClosingResponse = _new_object(ClosingResponse)
        response._on_close = None  # armed once the app has answered (see __call__ if it raises)
        response._server_start_response = start_response
        response._extra = extra
        app_iter = self.app(environ, response.start_response)
        if type(app_iter) is environ.get("wsgi.file_wrapper"):
            return self._handed_over(app_iter)
        response.iterable = app_iter
        response._on_drop = self._request_dropped
        response._on_close = self._request_finished
        return response

    def _count_bypass(self, reason: str) -> None:
        try:
            self.cache.bypass(reason)
        except Exception:  # counting must not cost the request its response either
            log.warning("[CACHE] could not count a bypass", exc_info=True)

    def _closing(self, app_iter: Iterable[bytes], environ: WSGIEnvironment) -> Iterable[bytes]:
        """``app_iter`` with the end of the request hooked to its ``close()``."""
        if type(app_iter) is environ.get("wsgi.file_wrapper"):
            return self._handed_over(app_iter)
        return ClosingResponse(self._request_finished, self._request_dropped, iterable=app_iter)

    def _handed_over(self, file_wrapper: Iterable[bytes]) -> Iterable[bytes]:
        """The app's ``wsgi.file_wrapper``, untouched: wrapping it would cost the server its
        sendfile(), and the app's part of the request is done already."""
        self._request_finished()
        return file_wrapper

    def optimize(self) -> dict[str, Any]:
        """Run the governor's optimize now; the measured result, as the API returns it."""
        return self.governor.optimize()

    def memory_stats(self) -> dict[str, Any]:
        """The figures the ``stats`` endpoint returns."""
        return memory_stats(self.parts)


_FORWARD_METHOD = cache_status("method")
# How long a page whose response could not be stored is remembered as such (at most
# cache_ttl_s): Varnish's default for its hit-for-miss and hit-for-pass objects.
_REMEMBER_UNCACHEABLE_S = 120.0
# The forwarding headers keyed by default: the hit lane asks for them by name (in __call__).
LANE_KEYED_HEADERS = tuple(map(environ_key, FORWARDED_KEY_HEADERS))
_FORWARDED_PORT, _FORWARDED_PREFIX, _FORWARDED_PROTO = sorted(LANE_KEYED_HEADERS)
_new_object = object.__new__
_new_list = list.__new__

# The base key of a request from a server that sets every variable it may leave out
# (gunicorn, werkzeug, waitress and uWSGI all do): one C call. See request_key.
_KEY_FIELDS = ("wsgi.url_scheme", "HTTP_HOST", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING")
_KEY_BY_RAW_URI = operator.itemgetter(*_KEY_FIELDS, "RAW_URI")
_KEY_BY_REQUEST_URI = operator.itemgetter(*_KEY_FIELDS, "REQUEST_URI")


def request_key(environ: WSGIEnvironment) -> CacheKey:
    """The base key of a request: scheme, host, ``SCRIPT_NAME``, ``PATH_INFO``, query, and
    the request target as the server received it.

    The target is ``RAW_URI`` (gunicorn, werkzeug) or else ``REQUEST_URI`` (uWSGI, waitress,
    mod_wsgi): an app that reads it sees what ``PATH_INFO`` hides (an absolute-form
    ``http://other.host/p``, ``%2F`` against ``/``), so two spellings of a path never share
    an entry. PEP 3333 lets a server leave out ``SCRIPT_NAME`` and ``QUERY_STRING`` when
    empty, and an HTTP/1.0 client ``Host``; then the key has "" and
    ``SERVER_NAME:SERVER_PORT`` (and None for a target the server does not give). The paths
    are kept apart in the key: joining them would cost every hit a new string.
    """
    try:
        if "RAW_URI" in environ:
            return _KEY_BY_RAW_URI(environ)  # type: ignore[no-any-return]
        return _KEY_BY_REQUEST_URI(environ)  # type: ignore[no-any-return]
    except KeyError:
        return (
            environ["wsgi.url_scheme"],
            environ.get("HTTP_HOST") or f"{environ['SERVER_NAME']}:{environ['SERVER_PORT']}",
            environ.get("SCRIPT_NAME", ""),
            environ.get("PATH_INFO", ""),
            environ.get("QUERY_STRING", ""),
            environ.get("RAW_URI", environ.get("REQUEST_URI")),
        )


def _path_filter(
    include: tuple[str, ...], exclude: tuple[str, ...]
) -> Callable[[str, str], bool] | None:
    """A predicate from ``cache_paths`` / ``cache_exclude_paths`` globs over a request's full
    path (``SCRIPT_NAME + PATH_INFO``, as a client sees it) and its ``PATH_INFO`` (as the
    app's router sees it under a mount), both normalized (see ``normalized_path``). A glob
    that matches either counts: an exclusion written either way holds."""
    if not include and not exclude:
        return None
    included = re.compile("|".join(map(fnmatch.translate, include))).match if include else None
    excluded = re.compile("|".join(map(fnmatch.translate, exclude))).match if exclude else None

    def allowed(full_path: str, route: str) -> bool:
        paths = {normalized_path(full_path), normalized_path(route)}
        if included is not None and all(included(path) is None for path in paths):
            return False
        return excluded is None or all(excluded(path) is None for path in paths)

    return allowed
