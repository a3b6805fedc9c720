"""The response of a cache miss: streamed to the client as the app yields it, copied on the side.

:class:`Capture` is one fetch's state. The middleware passes :meth:`Capture.start_response`
to the app and returns the capture itself to the server as the response iterable:

    capture = Capture(cache, decision, environ, start_response, on_close, on_drop)
    capture.app_iter = app(environ, capture.start_response)
    return capture

Each chunk goes to the server unchanged; a copy is kept until it passes the item limit, then
dropped. A response refused at ``start_response`` (``no-store``, a cookie, ...) is not copied
at all: the server iterates the app's own iterator. A response that may be stored is stored
as soon as its body is whole: when it reaches its ``Content-Length``, or, without one, when
the server has read the iterable to its end; single-flight waiters are let go then. Its
headers wait for the body's first bytes (PEP 3333: a server sends nothing before them), so
that ``Cache-Status`` says ``stored`` of a body stored before they go, and of nothing else.

The server's :meth:`Capture.close` (the real end of a WSGI request) closes the app's iterable
exactly once and ends the request; an app that fails after its body was stored (its close()
raises, it sends more than it declared) loses the entry again. A capture collected without a
``close()`` (a layer above that never calls it) is closed by its finalizer, which does only
what is safe in any thread at any moment: no lock, no pause.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from ..closing import close_dropped
from .decision import Decision, ResponseCache, cache_status, stored_response
from .entry import Entry
from .policy import ResponseVerdict, variant_key

if TYPE_CHECKING:
    from _typeshed import OptExcInfo
    from _typeshed.wsgi import StartResponse

__all__ = ["Capture"]

log = logging.getLogger("wsgi_memopt")

# Refusals that say nothing of the key's next response: the next miss leads a fill again.
_TRANSIENT_REFUSALS = frozenset(
    {"app-error", "cache-error", "no-response", "incomplete", "revalidated", "stale-if-error"}
)


class Capture:
    """One fetch: records the app's ``start_response``, tees its body, stores it once whole.

    ``reason`` says why the response will not be stored (``None`` while it may be); once it
    is set the copy (``_chunks``) is dropped. ``on_close`` ends the request (the server's
    ``close()``); ``on_drop`` ends it for a capture collected unclosed.
    """

    __slots__ = (
        "_cache",
        "_chunks",
        "_closed",
        "_counted",
        "_entry",
        "_headers",
        "_on_close",
        "_on_drop",
        "_pending",
        "_refetch",
        "_refetch_wanted",
        "_requested_at",
        "_responded_at",
        "_server_start_response",
        "_serves_client",
        "_size",
        "_status",
        "_swapped",
        "_write",
        "app_iter",
        "decision",
        "environ",
        "fill",
        "reason",
        "verdict",
    )

    def __init__(
        self,
        cache: ResponseCache,
        decision: Decision,
        environ: Mapping[str, Any],
        start_response: StartResponse,
        on_close: Callable[[], object],
        on_drop: Callable[[], object],
        *,
        serves_client: bool = True,
        refetch: Callable[[StartResponse], Iterable[bytes]] | None = None,
    ) -> None:
        self._cache = cache
        # How to ask the app again without conditions, when its 304 names another version.
        self._refetch = refetch
        self._refetch_wanted = False
        # False for a background refresh: nobody is served, so no stale copy stands in.
        self._serves_client = serves_client
        self.decision = decision
        self.environ = environ
        self._server_start_response = start_response
        self._on_close = on_close
        self._on_drop = on_drop
        self.fill = decision.fill  # set while this request leads a single-flight fill
        self.app_iter: Iterable[bytes] = ()
        self.verdict: ResponseVerdict | None = None
        self.reason: str | None = "no-response"
        self._chunks: list[bytes] | None = []
        self._size = 0
        self._pending: tuple[str, list[tuple[str, str]]] | None = None  # headers not yet sent
        self._write: Callable[[bytes], object] | None = None  # the server's, once they are
        self._entry: Entry | None = None  # stored, while it stays so
        self._counted = False  # stored or refused, in the cache's counts
        self._closed = False  # close() (or the finalizer) ran
        self._requested_at = time.time()  # the fetch's start: the response's age counts from it
        self._responded_at = self._requested_at
        self._swapped: Entry | None = None  # the stored response sent instead of the app's

    # -- what the app sees

    def start_response(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: OptExcInfo | None = None,
    ) -> Callable[[bytes], object]:
        """Record the response and decide whether it may be stored. The server gets it now
        if not, else with the body's first bytes (see the module docstring)."""
        if self.decision.entry is not None and self._stands_in(status, headers, exc_info):
            return self.write
        if exc_info is not None:
            self.refuse("app-error")
        else:
            try:
                verdict = self.verdict = self._cache.assess(
                    status, headers, self.decision.credentials
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
                    self._responded_at = time.time()
                    self._headers = headers
        if self.reason is None and self._write is None:
            self._pending = (status, headers)
        else:
            self._pending = None
            self._send_headers(status, headers, exc_info)
        return self.write

    def _stands_in(
        self, status: str, headers: list[tuple[str, str]], exc_info: OptExcInfo | None
    ) -> bool:
        """Whether the stale entry this fetch revalidates answers instead of the app's
        response: freshened by a ``304`` (RFC 9111 §4.3.4), or as it is when the app answers
        an error within the entry's stale-if-error window (RFC 5861). Never raises: a failure
        here is the cache's, and the app's response goes through as it is."""
        stale = self.decision.entry
        assert stale is not None
        try:
            cache, now = self._cache, self._cache.clock()
            if status.startswith("304") and exc_info is None and stale.validated:
                if not cache.same_representation(stale, headers):
                    # RFC 9111 §4.3.4: a 304 for another representation updates nothing; the
                    # stored one goes, and the app is asked again without conditions.
                    cache.store.discard(stale)
                    self._refetch_wanted = self._refetch is not None
                    return self._refetch_wanted
                try:
                    entry = cache.revalidated(
                        stale, headers, self.decision.credentials, self._requested_at, time.time()
                    )
                except Exception:
                    # The 304 still vouches for the stored response: served as it is.
                    log.warning("[CACHE] could not freshen a stored response", exc_info=True)
                    entry = stale
                self._swap(entry, "wsgi-memopt; fwd=stale; fwd-status=304; detail=revalidated")
                return True
            failed = exc_info is not None or status[:1] == "5"
            if failed and self._serves_client and now < stale.sie_until:
                code = status[:3] if exc_info is None else "error"
                value = f"wsgi-memopt; fwd=stale; fwd-status={code}; detail=stale-if-error"
                self._swap(stale, value)
                return True
        except Exception:
            log.warning("[CACHE] could not revalidate a stored response", exc_info=True)
        return False

    def _swap(self, entry: Entry, status_value: str) -> None:
        """Send ``entry`` (or a 304 of it, if the client's validators match) instead of the
        app's response, whose body is read and dropped."""
        how = status_value.rsplit("=", 1)[1]
        self.refuse(how)  # the app's response is not stored
        self._counted = True
        self._cache.served_stale(how)
        self._swapped = entry
        status, headers, _ = stored_response(entry, self.environ, self._cache.clock(), status_value)
        self._pending = (status, headers)

    def write(self, data: bytes) -> object:
        """The legacy ``write()`` callable: passed on, and the response is not stored (what
        it sends bypasses the iterable, so it is never seen whole)."""
        if self._standing_in():
            return None  # the stored response (or a second fetch) answers: these bytes go nowhere
        if self.reason is None:
            self.refuse("write-callable")
        self._send_pending()
        return self._write(data)  # type: ignore[misc]

    def refuse(self, reason: str) -> None:
        """Give up storing this response (dropping its entry if it was stored), drop the
        copy and let single-flight waiters go."""
        self.reason = reason
        self._chunks = None
        entry, self._entry = self._entry, None
        store = self._cache.store
        if entry is not None:
            self._counted = False  # counted again, as refused
            try:
                store.discard(entry)
            except Exception:
                log.warning("[CACHE] could not drop a failed response's entry", exc_info=True)
        if self.fill is not None:
            # A refusal for this request's credentials says nothing of the page's response to
            # anyone else: the page is not remembered as uncacheable for them.
            uncacheable = reason not in _TRANSIENT_REFUSALS and reason != "credentials"
            self._release_waiters(uncacheable)
        if reason == "credentials":
            # Not public: the page's next requests with credentials need no capture.
            try:
                store.remember_uncacheable(self.decision.key, credentials=True)  # type: ignore[arg-type]
            except Exception:
                log.warning("[CACHE] could not remember an uncacheable page", exc_info=True)

    def dismiss(self, reason: str) -> None:
        """This capture never reaches the server (the app raised in its call, or answered
        a ``wsgi.file_wrapper``): refuse and count ``reason``; the caller ends the request."""
        self._closed = True  # nothing for close() or the finalizer to do
        self.refuse(reason)
        self._counted = True
        self._cache.refused(reason)

    def hand_over(self, reason: str) -> None:
        """The app's own iterable goes to the server instead of this capture (a
        ``wsgi.file_wrapper``): dismiss it, and send the headers held for its first bytes."""
        self.dismiss(reason)
        self._send_pending()

    def _release_waiters(self, uncacheable: bool = False) -> None:
        # Requests waiting for this response need not wait for a body that will not be
        # stored (a 10 MB stream, say): let them go to the app now. When the response
        # itself says so (no-store, a cookie, ...), the key's next misses need not wait
        # either (ResponseStore.remember_uncacheable).
        fill, self.fill = self.fill, None
        if fill is not None:
            try:
                if uncacheable:
                    self._cache.store.remember_uncacheable(fill.key)
                self._cache.flights.end(fill)
            except Exception:
                # Runs inside the response stream: a broken store must not cut it short.
                log.warning("[CACHE] could not release single-flight waiters", exc_info=True)

    # -- what the server sees

    def __iter__(self) -> Iterator[bytes]:
        if self._chunks is None and self._write is not None:
            # Refused already and its headers sent (the usual app calls start_response
            # before it returns): the server iterates the app's own iterator, with nothing
            # of ours per chunk.
            return iter(self.app_iter)
        return self._tee()

    def _tee(self) -> Iterator[bytes]:
        chunks = iter(self.app_iter)
        while not self._standing_in():
            try:
                chunk = next(chunks)
            except StopIteration:
                break
            except Exception:
                # A lazy app (a generator) fails only now: the stored response may stand in.
                if not self._stands_in_for_error():
                    raise
                break
            if self._standing_in():
                break  # a lazy app's start_response, run by this first next(), swapped it
            if self._chunks is not None:
                self._copy(chunk)
            elif chunk and self._entry is not None:
                self.refuse("content-length")  # more than it declared: broken after all
            if chunk and self._pending is not None:
                self._send_pending()  # the first bytes: their headers go first
            yield chunk
        if self._refetch_wanted:
            yield from self._refetched(chunks)
            return
        if self._swapped is not None:
            yield from self._stand_in(chunks)
            return
        # The server read the iterable to its end: the body is whole, whether or not the
        # server ever calls close().
        if self._chunks is not None and self.reason is None:
            declared = self._declared_length()
            if declared is None or self._size == declared:
                self._store()
            else:
                self.refuse("content-length")  # shorter than it declared
        self._send_pending()  # an empty body's headers

    def _standing_in(self) -> bool:
        """Whether the app's response is not the one sent: the stored one answers instead
        (see :meth:`_swap`), or a second, unconditional fetch does (see :meth:`_refetched`)."""
        return self._swapped is not None or self._refetch_wanted

    def _stand_in(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        """The swapped-in stored response: the rest of the app's body is read (its iterable
        may have work to finish) and dropped."""
        with contextlib.suppress(Exception):  # the app already failed, or answered a 304
            for _ in chunks:
                pass
        self._send_pending()
        entry = self._swapped
        assert entry is not None
        _, _, body = stored_response(entry, self.environ, self._cache.clock())
        if body:
            yield body

    def _refetched(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        """The answer to the app's unconditional fetch, captured as any miss, after the
        mismatched 304's iterable is read and closed."""
        with contextlib.suppress(Exception):
            for _ in chunks:
                pass
        close_dropped(self.app_iter)
        assert self._refetch is not None
        self._refetch_wanted = False
        self.decision = self.decision._replace(entry=None)
        self.reason, self.verdict, self._chunks, self._size = "no-response", None, [], 0
        self._pending = None
        self.app_iter = self._refetch(self.start_response)
        yield from self._tee()

    @property
    def headers_sent(self) -> bool:
        """Whether the server has been given a status and headers already."""
        return self._write is not None

    def _stands_in_for_error(self) -> bool:
        """Whether the stale entry answers for an app that raised before sending anything."""
        stale = self.decision.entry
        if stale is None or not self._serves_client or self._write is not None:
            return False
        if self._cache.clock() >= stale.sie_until:
            return False
        log.warning("[CACHE] the app failed; serving a stale response", exc_info=True)
        self._swap(stale, "wsgi-memopt; fwd=stale; fwd-status=error; detail=stale-if-error")
        return True

    def _copy(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size > self._cache.item_limit:
            self.refuse("too-large")  # drop the copy now: the client still gets all
            return
        self._chunks.append(chunk)  # type: ignore[union-attr]
        declared = self._declared_length()
        if declared is not None and self._size >= declared and self.reason is None:
            if self._size == declared:
                self._store()  # whole, as declared: stored before its headers go, if they wait
            else:
                self.refuse("content-length")

    def _declared_length(self) -> int | None:
        """The response's ``Content-Length``, if it has one."""
        return None if self.verdict is None else self.verdict.content_length

    def _send_headers(
        self, status: str, headers: list[tuple[str, str]], exc_info: OptExcInfo | None = None
    ) -> None:
        if self._swapped is None:
            stored = self._entry is not None
            forward = self.decision.forward or "miss"
            headers = [*headers, *cache_status(forward, self.reason, stored)]
        self._write = self._server_start_response(status, headers, exc_info)

    def _send_pending(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            self._send_headers(*pending)

    def close(self) -> None:
        """Close the app's iterable exactly once, then end the request."""
        if self._closed:
            return
        self._closed = True
        close = getattr(self.app_iter, "close", None)
        try:
            if close is not None:
                close()
        except BaseException:
            self.refuse("app-error")  # its close() failed: not stored, or no longer
            raise
        finally:
            self.finish()

    def finish(self) -> None:
        """Count what became of the response, release single-flight waiters, end the
        request. Never raises: a failing cache must not fail the request it served."""
        try:
            if not self._counted:
                self._counted = True
                self._cache.refused(self.reason or "incomplete")
        except Exception:
            log.warning("[CACHE] counting a response failed", exc_info=True)
        finally:
            if self.fill is not None:
                self._release_waiters()
            try:
                self._on_close()
            except Exception:
                log.warning("[CACHE] end-of-request housekeeping failed", exc_info=True)

    def __del__(self) -> None:
        # Collected without close(): closed here, in whatever thread the collector runs,
        # maybe inside one of our locks. Only what takes no lock: the fill is marked over
        # (waiters woken), the response counted (a count made in advance), the request ended.
        if self._closed:
            return
        self._closed = True
        close_dropped(self.app_iter)
        try:
            if self.fill is not None:
                self._cache.flights.abandon(self.fill)
            if not self._counted:
                self._cache.refused("dropped")
        except Exception:  # a finalizer has nobody to raise to
            log.warning("[CACHE] ending a response collected unclosed failed", exc_info=True)
        self._on_drop()

    def _store(self) -> None:
        """Store the whole body (the copy is dropped), then let the waiters find it."""
        cache = self._cache
        verdict: ResponseVerdict = self.verdict  # type: ignore[assignment]
        body = b"".join(self._chunks)  # type: ignore[arg-type]
        self._chunks = None
        headers = self._headers
        if verdict.content_length is None:
            headers = [*headers, ("Content-Length", str(len(body)))]
        # The lookup key knew only the Vary of an earlier response, if any: use this one's.
        base_key = self.decision.key
        assert base_key is not None  # a fetch always has one
        key = variant_key(base_key, verdict.vary, self.environ) if verdict.vary else base_key
        try:
            entry = cache.entry_for(
                key,
                base_key,
                self._status,
                headers,
                body,
                verdict,
                self._requested_at,
                self._responded_at,
            )
            if entry.keep_until <= cache.clock():
                self.refuse("stale")  # older than its lifetime on arrival, and no validator
                return
            stored = cache.stored(entry, verdict.vary)
        except Exception:
            log.warning("[CACHE] storing a response failed; it was served uncached", exc_info=True)
            self.refuse("cache-error")
            return
        if not stored:
            self.refuse("too-large")
            return
        self._counted = True
        self._entry = entry
        self._release_waiters()
