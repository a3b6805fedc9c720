"""The response iterables that tell the middleware when the server is done with a response.

PEP 3333: the server calls ``close()`` on the iterable when it has sent the response (or given
up on it), which is the real end of a request; the governor works then. A server, or a layer
above the middleware, may also let go of a response without calling ``close()``: its
collection then ends the request all the same, once, doing only what is safe wherever and
whenever the collector runs it (``on_drop``: no lock, no pause).

    return ClosingResponse(app(environ, start_response), governor.request_finished,
                           governor.request_dropped)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator

__all__ = ["ClosingResponse", "Replay", "close_dropped"]

log = logging.getLogger("wsgi_memopt")


class ClosingResponse:
    """Iterates ``iterable`` unchanged; ``close()`` closes it (if it can be) exactly once,
    then calls ``on_close`` exactly once, even when closing raised. Collected without a
    ``close()``, it closes the iterable (errors logged) and calls ``on_drop`` instead."""

    __slots__ = ("_on_close", "_on_drop", "iterable")

    def __init__(
        self,
        iterable: Iterable[bytes],
        on_close: Callable[[], object],
        on_drop: Callable[[], object],
    ) -> None:
        self.iterable = iterable
        self._on_close: Callable[[], object] | None = on_close
        self._on_drop = on_drop

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.iterable)

    def close(self) -> None:
        """Close the wrapped iterable, then run the end-of-request hook; both at most once."""
        on_close, self._on_close = self._on_close, None
        if on_close is None:
            return
        try:
            close = getattr(self.iterable, "close", None)
            if close is not None:
                close()
        finally:
            on_close()

    def __del__(self) -> None:
        if self._on_close is not None:  # collected without close(): see the module doc
            self._on_close = None
            close_dropped(self.iterable)
            self._on_drop()


class Replay:
    """A response the middleware answers itself, its body in hand (a cache hit, a ``304``).
    ``close()`` calls ``on_close``, or its collection without one calls ``on_drop``: exactly
    one of them, once."""

    __slots__ = ("_chunks", "_on_close", "_on_drop")

    def __init__(
        self, body: bytes | None, on_close: Callable[[], object], on_drop: Callable[[], object]
    ) -> None:
        self._chunks = () if body is None else (body,)
        self._on_close: Callable[[], object] | None = on_close
        self._on_drop = on_drop

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._chunks)

    def close(self) -> None:
        """End the request, once."""
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close()

    def __del__(self) -> None:
        if self._on_close is not None:
            self._on_close = None
            self._on_drop()


def close_dropped(iterable: object) -> None:
    """``close()`` an app's iterable whose response was collected unclosed: PEP 3333
    promises the app that call. Never raises (a finalizer cannot report to anyone)."""
    try:
        close = getattr(iterable, "close", None)
        if close is not None:
            close()
    except Exception:
        log.warning(
            "[MEMORY] closing the app's iterable of a response collected without close() failed",
            exc_info=True,
        )
