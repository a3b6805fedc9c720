"""The response of a cache miss: streamed to the client as the app yields it, copied on the side.

:class:`Capture` is one request's state. The middleware passes :meth:`Capture.start_response`
to the app and returns the capture itself to the server as the response iterable:

    capture = Capture(rules, environ, start_response, base_key, credentials=False)
    capture.app_iter = app(environ, capture.start_response)
    return capture

Each chunk goes to the server unchanged; a copy is kept until it passes the item limit, then
dropped. A response refused at ``start_response`` (``no-store``, a cookie, ...) is not copied
at all: the server iterates the app's own iterator. When the server calls
:meth:`Capture.close` (the real end of a WSGI request) the app's iterable is closed exactly
once and, if the response ran to its end and may be stored, the copy is joined into one
``bytes`` object and stored.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .policy import CacheKey, ResponseVerdict, assess_response, variant_key
from .store import Entry, ResponseStore

if TYPE_CHECKING:
    from _typeshed import OptExcInfo
    from _typeshed.wsgi import StartResponse

__all__ = ["Capture", "CaptureRules", "cache_status"]

log = logging.getLogger("wsgi_memopt")

_STATUS_HEADERS: dict[tuple[str, str | None, bool], list[tuple[str, str]]] = {}
# Refusals that say nothing of the key's next response: the next miss leads a fill again.
_TRANSIENT_REFUSALS = frozenset({"app-error", "cache-error", "no-response", "incomplete"})


def cache_status(
    forward: str, detail: str | None = None, *, stored: bool = False
) -> list[tuple[str, str]]:
    """``Cache-Status`` (RFC 9211) and ``X-Cache`` for a response not served from the cache.

    The list is shared between calls (there are a few dozen of them): add it to a list of
    one's own, never change it.
    """
    headers = _STATUS_HEADERS.get((forward, detail, stored))
    if headers is None:
        value = f"wsgi-memopt; fwd={forward}"
        if stored:
            value += "; stored"
        if detail is not None:
            value += f"; detail={detail}"
        headers = _STATUS_HEADERS.setdefault(
            (forward, detail, stored), [("Cache-Status", value), ("X-Cache", "MISS")]
        )
    return headers


@dataclass(frozen=True)
class CaptureRules:
    """What a capture needs from the middleware's settings."""

    store: ResponseStore
    statuses: frozenset[int]
    item_limit: int  # bytes of body beyond which the copy is dropped
    ttl_cap: float  # cache_ttl_s: the longest lifetime of any entry
    default_ttl: float = 0.0  # cache_default_ttl_s: the lifetime of a response that gives none
    on_close: Callable[[], None] = lambda: None  # the middleware's end-of-request hook


class Capture:
    """One miss: records the app's ``start_response``, tees its body, stores it on ``close()``.

    ``reason`` says why the response will not be stored (``None`` while it may be); once it
    is set the copy (``_chunks``) is dropped.
    """

    __slots__ = (
        "_chunks",
        "_closed",
        "_complete",
        "_headers",
        "_rules",
        "_server_start_response",
        "_size",
        "_status",
        "_write",
        "app_iter",
        "base_key",
        "credentials",
        "environ",
        "fill_key",
        "fill_owner",
        "forward",
        "reason",
        "verdict",
    )

    def __init__(
        self,
        rules: CaptureRules,
        environ: Mapping[str, Any],
        start_response: StartResponse,
        base_key: CacheKey,
        credentials: bool = False,
        forward: str = "miss",
        fill_key: CacheKey | None = None,
        fill_owner: object = None,
    ) -> None:
        self._rules = rules
        self._server_start_response = start_response
        self.environ = environ
        self.base_key = base_key
        self.credentials = credentials
        self.forward = forward  # RFC 9211 fwd=: "miss", or "request" for a client's refresh
        self.fill_key = fill_key  # set while this request leads a single-flight fill
        self.fill_owner = fill_owner
        self.app_iter: Iterable[bytes] = ()
        self.verdict: ResponseVerdict | None = None
        self.reason: str | None = "no-response"
        self._chunks: list[bytes] | None = []
        self._size = 0
        self._complete = self._closed = False

    # -- what the app sees

    def start_response(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: OptExcInfo | None = None,
    ) -> Callable[[bytes], object]:
        """Record the response, decide whether it may be stored, and pass it to the server."""
        if exc_info is not None:
            self.refuse("app-error")
        else:
            try:
                verdict = self.verdict = assess_response(
                    status,
                    headers,
                    self.credentials,
                    self._rules.statuses,
                    self._rules.item_limit,
                    self._rules.ttl_cap,
                    default_ttl=self._rules.default_ttl,
                )
            except Exception:
                log.warning("[CACHE] could not assess a response; not storing it", exc_info=True)
                self.refuse("cache-error")
            else:
                if verdict.reason is not None:
                    self.refuse(verdict.reason)
                else:
                    self.reason = None
                    self._status = status
                    self._headers = headers
        # "stored" is promised only when the size is known up front to be within the limit.
        stored = self.reason is None and self.verdict.content_length is not None  # type: ignore[union-attr]
        self._write = self._server_start_response(
            status, headers + cache_status(self.forward, self.reason, stored=stored), exc_info
        )
        return self.write

    def write(self, data: bytes) -> object:
        """The legacy ``write()`` callable: passed on, and the response is not stored (what
        it sends bypasses the iterable, so it is never seen whole)."""
        if self.reason is None:
            self.refuse("write-callable")
        return self._write(data)

    def refuse(self, reason: str) -> None:
        """Give up storing this response, drop the copy and let single-flight waiters go."""
        self.reason = reason
        self._chunks = None
        if self.fill_key is not None:
            self._release_waiters(reason not in _TRANSIENT_REFUSALS)
        elif reason == "credentials":
            # Not public: the page's next requests with credentials need no capture.
            try:
                self._rules.store.remember_uncacheable(self.base_key, credentials=True)
            except Exception:
                log.warning("[CACHE] could not remember an uncacheable page", exc_info=True)

    def _release_waiters(self, uncacheable: bool = False) -> None:
        # Requests waiting for this response need not wait for a body that will not be
        # stored (a 10 MB stream, say): let them go to the app now. When the response
        # itself says so (no-store, a cookie, ...), the key's next misses need not wait
        # either (ResponseStore.remember_uncacheable).
        fill_key, self.fill_key = self.fill_key, None
        if fill_key is not None:
            store = self._rules.store
            try:
                if uncacheable:
                    store.remember_uncacheable(fill_key)
                store.end_fill(fill_key, self.fill_owner)
            except Exception:
                # Runs inside the response stream: a broken store must not cut it short.
                log.warning("[CACHE] could not release single-flight waiters", exc_info=True)

    # -- what the server sees

    def __iter__(self) -> Iterator[bytes]:
        if self._chunks is None:
            # Refused already (the usual app calls start_response before it returns): the
            # server iterates the app's own iterator, with nothing of ours per chunk.
            return iter(self.app_iter)
        return self._tee()

    def _tee(self) -> Iterator[bytes]:
        limit = self._rules.item_limit
        for chunk in self.app_iter:
            chunks = self._chunks
            if chunks is not None:
                self._size += len(chunk)
                if self._size > limit:
                    self.refuse("too-large")  # drop the copy now: the client still gets all
                else:
                    chunks.append(chunk)
            yield chunk
        self._complete = True

    def close(self) -> None:
        """Close the app's iterable exactly once, then store the copy if it is whole."""
        if self._closed:
            return
        self._closed = True
        close = getattr(self.app_iter, "close", None)
        try:
            if close is not None:
                close()
        except BaseException:
            self._complete = False
            raise
        finally:
            self.finish()

    def finish(self) -> None:
        """Store the response if it may be, release single-flight waiters, run the hook.

        Never raises: a failing cache must not fail the request it served.
        """
        store = self._rules.store
        stored = False
        try:
            if self._chunks is not None and self.reason is None and self._complete:
                self._store()
                stored = True
            else:
                store.reject(self.reason or "incomplete")
        except Exception:
            log.warning("[CACHE] storing a response failed; it was served uncached", exc_info=True)
            try:  # noqa: SIM105 (nothing more to do when even counting fails)
                store.reject("cache-error")
            except Exception:
                pass
        finally:
            if self.fill_key is not None:
                self._release_waiters()
            try:
                # The cache grows only by a store: the place to drop what expired, now and then.
                if stored and store.sweep_due():
                    store.sweep()
            except Exception:
                log.warning("[CACHE] sweeping expired entries failed", exc_info=True)
            try:
                self._rules.on_close()
            except Exception:
                log.warning("[CACHE] end-of-request housekeeping failed", exc_info=True)

    def _store(self) -> None:
        store = self._rules.store
        verdict: ResponseVerdict = self.verdict  # type: ignore[assignment]
        body = b"".join(self._chunks)  # type: ignore[arg-type]
        self._chunks = None
        headers = self._headers
        if verdict.content_length is None:
            headers = [*headers, ("Content-Length", str(len(body)))]
        elif verdict.content_length != len(body):
            store.reject("content-length")  # a body that disagrees with its header is broken
            return
        # The lookup key knew only the Vary of an earlier response, if any: use this one's.
        key = self.base_key
        if verdict.vary:
            key = variant_key(key, verdict.vary, self.environ)
        store.put(
            Entry(
                key,
                self.base_key,
                self._status,
                tuple(headers),
                body,
                store.clock(),
                verdict.lifetime,
                verdict.shareable_with_credentials,
                verdict.etag,
                verdict.last_modified,
            ),
            verdict.vary,
        )
