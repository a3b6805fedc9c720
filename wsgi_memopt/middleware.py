"""``MemoryOptimizer``: the WSGI middleware that caches responses under hard memory caps.

Wrap any WSGI app; every setting of :class:`~wsgi_memopt.Settings` may be given as a keyword:

    from wsgi_memopt import MemoryOptimizer

    app.wsgi_app = MemoryOptimizer(app.wsgi_app, cache_max_mb=10)

The middleware only sequences its parts: the cache decides what a request gets
(:mod:`wsgi_memopt.cache.decision`), the memory API answers its own paths, and every response
goes back wrapped so that the server's ``close()``, the real end of the request, reaches the
governor, which looks after memory between requests.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from .api import MemoryAPI
from .api.report import memory_stats
from .cache.capture import Capture
from .cache.decision import Decision, ResponseCache, Route, cache_status, stored_response
from .cache.entry import Entry
from .cache.policy import SAFE_METHODS
from .closing import ClosingResponse, Replay
from .lazy import LazyModules
from .memory.cleanups import Cleanups
from .memory.governor import Governor
from .parts import Parts
from .settings import Settings

if TYPE_CHECKING:
    from _typeshed import OptExcInfo
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["MemoryOptimizer"]

log = logging.getLogger("wsgi_memopt")


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
    :class:`~wsgi_memopt.cache.decision.ResponseCache` (``stats()``, ``clear()``,
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
        self.cache = ResponseCache(settings)
        self.cleanups = Cleanups()
        self.lazy = lazy
        self.governor = Governor(settings, self.cache, self.cleanups)
        self.governor.lazy = lazy
        self.parts = Parts(settings, self.cache, self.governor, self.cleanups, lazy)
        self.api = MemoryAPI(self.parts)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """Serve from the cache when the rules allow, else call the app (capturing what may
        be stored); the memory API answers its own paths."""
        entry = self._plain_hit(environ)
        self.governor.request_started()
        try:
            if entry is not None:
                return self._serve(entry, environ, start_response)
            if self.settings.api_enabled and self.api.handles(environ.get("PATH_INFO", "")):
                # Answered here, never cached, never passed to the app.
                return self._closing(self.api(environ, start_response), environ)
            decision = self._decide(environ)
            if decision.route is Route.SERVE:
                return self._serve(decision.entry, environ, start_response)  # type: ignore[arg-type]
            if decision.route is Route.SERVE_STALE:
                return self._serve_stale(decision, environ, start_response)
            if decision.route is Route.FETCH:
                return self._fetch(decision, environ, start_response)
            return self._pass(decision, environ, start_response)
        except BaseException:
            self.governor.request_finished()  # the app raised, or the server's start_response
            raise

    # -- deciding: a broken cache costs the request its caching, never its response

    def _plain_hit(self, environ: WSGIEnvironment) -> Entry | None:
        try:
            return self.cache.plain_hit(environ)
        except Exception:
            log.warning("[CACHE] lookup failed; the full rules decide", exc_info=True)
            return None

    def _decide(self, environ: WSGIEnvironment) -> Decision:
        try:
            return self.cache.decide(environ)
        except Exception:
            log.warning("[CACHE] lookup failed; passing the request through", exc_info=True)
            return self.cache.passing_on_error()

    # -- answering

    def _serve(
        self,
        entry: Entry,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        then: Callable[[], object] | None = None,
        exc_info: OptExcInfo | None = None,
    ) -> Iterable[bytes]:
        """The stored response as it is now (its ``Age`` brought up to date), or a ``304``
        when the request's validators match it; ``then`` runs after the server closed it.
        ``exc_info``: the error it replaces a response for, if the server had its headers."""
        status, headers, body = stored_response(entry, environ, self.cache.clock())
        start_response(status, headers, exc_info)
        governor = self.governor
        if then is None:
            return Replay(body, governor.request_finished, governor.request_dropped)

        def then_finish() -> None:
            try:
                then()
            finally:
                governor.request_finished()

        return Replay(body, then_finish, governor.request_dropped)

    def _serve_stale(
        self, decision: Decision, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        """A stale entry within its stale-while-revalidate window: served now; the request
        that leads its refresh asks the app after its response is closed, so that no client
        waits for it (RFC 5861 §3)."""
        self.cache.served_stale("stale-while-revalidate")
        entry = decision.entry
        assert entry is not None
        if decision.fill is None:
            return self._serve(entry, environ, start_response)  # another request refreshes it
        refresh = decision._replace(route=Route.FETCH)
        return self._serve(entry, environ, start_response, lambda: self._refresh(refresh, environ))

    def _refresh(self, decision: Decision, environ: WSGIEnvironment) -> None:
        """Fetch (conditionally) what ``decision`` revalidates, for the cache alone: the
        response goes nowhere but the store. Never raises."""
        try:
            capture = Capture(
                self.cache,
                decision,
                environ,
                _discard_response,
                _nothing,
                _nothing,
                serves_client=False,
            )
            entry = decision.entry
            assert entry is not None
            app_environ = self.cache.revalidation_environ(environ, entry)
            capture.app_iter = self.app(app_environ, capture.start_response)
            for _ in capture:
                if capture.reason is not None:
                    break  # not to be stored: nothing more of it is of use
            capture.close()
        except Exception:
            log.warning("[CACHE] refreshing a stale response failed", exc_info=True)
        finally:
            if decision.fill is not None:
                self.cache.flights.end(decision.fill)

    def _fetch(
        self, decision: Decision, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        """The app's response, streamed through a capture that stores it if it may."""
        governor = self.governor
        stale = decision.entry
        app_environ = environ
        if stale is not None and stale.validated:
            app_environ = self.cache.revalidation_environ(environ, stale)
        capture = Capture(
            self.cache,
            decision,
            environ,
            start_response,
            governor.request_finished,
            governor.request_dropped,
            refetch=lambda start: self.app(environ, start),
        )
        try:
            app_iter = self.app(app_environ, capture.start_response)
        except Exception:
            capture.dismiss("app-error")  # releases single-flight waiters
            # Not once the server has a status: PEP 3333 lets it be replaced only with exc_info.
            if stale is not None and self.cache.clock() < stale.sie_until:
                # The app is down: the stored response stands in (RFC 5861 §4); headers the
                # app already gave the server are replaced as PEP 3333 allows, with exc_info.
                log.warning("[CACHE] the app failed; serving a stale response", exc_info=True)
                self.cache.served_stale("stale-if-error")
                exc_info = sys.exc_info() if capture.headers_sent else None
                return self._serve(stale, environ, start_response, exc_info=exc_info)
            raise
        except BaseException:
            capture.dismiss("app-error")
            raise
        if _is_file_wrapper(app_iter, environ):
            capture.hand_over("file-wrapper")  # the page cache holds that file already
            return self._handed_over(app_iter)
        capture.app_iter = app_iter
        return capture

    def _pass(
        self, decision: Decision, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        """The app's response, untouched but for ``Cache-Status`` saying why; a response to
        an unsafe method invalidates what its URIs had stored."""
        if decision.forward is None:
            return self._closing(self.app(environ, start_response), environ)
        status_headers = cache_status(decision.forward, decision.detail)
        unsafe = environ.get("REQUEST_METHOD") not in SAFE_METHODS

        def start_with_status(
            status: str, headers: list[tuple[str, str]], exc_info: OptExcInfo | None = None
        ) -> Any:
            if unsafe:
                self._invalidate_after(environ, status, headers)
            return start_response(status, [*headers, *status_headers], exc_info)

        return self._closing(self.app(environ, start_with_status), environ)

    def _invalidate_after(
        self, environ: WSGIEnvironment, status: str, headers: list[tuple[str, str]]
    ) -> None:
        try:
            self.cache.invalidate_after(environ, status, headers)
        except Exception:
            log.warning("[CACHE] could not invalidate after an unsafe method", exc_info=True)

    def _closing(self, app_iter: Iterable[bytes], environ: WSGIEnvironment) -> Iterable[bytes]:
        """``app_iter`` with the end of the request hooked to its ``close()``."""
        if _is_file_wrapper(app_iter, environ):
            return self._handed_over(app_iter)
        governor = self.governor
        return ClosingResponse(app_iter, governor.request_finished, governor.request_dropped)

    def _handed_over(self, file_wrapper: Iterable[bytes]) -> Iterable[bytes]:
        """The app's ``wsgi.file_wrapper``, untouched: wrapping it would cost the server its
        sendfile(), and the app's part of the request is done already."""
        self.governor.request_finished()
        return file_wrapper

    def close(self) -> None:
        """Stop the threads the middleware runs beside the requests: the governor's monitor
        (CPython's collector given back its own settings) and a shared store's listener. For
        tests and programs that build many; a server's workers need not call it."""
        self.governor.stop()
        self.cache.close()

    def optimize(self) -> dict[str, Any]:
        """Run the governor's optimize now; the measured result, as the API returns it."""
        return self.governor.optimize()

    def memory_stats(self) -> dict[str, Any]:
        """The figures the ``stats`` endpoint returns."""
        return memory_stats(self.parts)


def _discard_response(
    status: str, headers: list[tuple[str, str]], exc_info: OptExcInfo | None = None
) -> Callable[[bytes], object]:
    """A ``start_response`` for a response nobody reads (a background refresh)."""
    return _nothing_written


def _nothing_written(data: bytes) -> None:
    return None


def _nothing() -> None:
    return None


def _is_file_wrapper(app_iter: Iterable[bytes], environ: WSGIEnvironment) -> bool:
    """Whether the app answered with the server's ``wsgi.file_wrapper`` (PEP 3333)."""
    file_wrapper = environ.get("wsgi.file_wrapper")
    return file_wrapper is not None and type(app_iter) is file_wrapper
