"""The response iterables that tell the middleware when the server is done with a response.

PEP 3333: the server calls ``close()`` on the iterable when it has sent the response (or given
up on it), which is the real end of a request. The governor works then. A server, or a layer
above the middleware, may also let go of a response without calling ``close()``: its
collection then ends the request all the same, once, doing only what is safe wherever and
whenever the collector runs it (``on_drop``: no lock, no pause).

    response = ClosingResponse(governor.request_finished, governor.request_dropped,
                               start_response, extra_headers)
    response.iterable = app(environ, response.start_response)
    return response
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed import OptExcInfo
    from _typeshed.wsgi import StartResponse

__all__ = ["ClosingResponse", "HitResponse", "close_dropped", "counted_response_type"]

log = logging.getLogger("wsgi_memopt")

_NO_HEADERS: list[tuple[str, str]] = []


class ClosingResponse:
    """Iterates ``iterable`` unchanged; ``close()`` closes it (if it can be) exactly once,
    then calls ``on_close`` exactly once, even when closing raised. Collected without a
    ``close()``, it closes the iterable (errors logged) and calls ``on_drop`` instead.

    With ``start_response``, :meth:`start_response` is what the app gets: it passes the
    response on with ``extra`` headers added (``Cache-Status``: why it was not cached). One
    object for both jobs: a request passed through costs one allocation of ours.
    """

    __slots__ = ("_extra", "_on_close", "_on_drop", "_server_start_response", "iterable")

    def __init__(
        self,
        on_close: Callable[[], None],
        on_drop: Callable[[], None],
        start_response: StartResponse | None = None,
        extra: list[tuple[str, str]] = _NO_HEADERS,
        iterable: Iterable[bytes] = (),
    ) -> None:
        self._on_close: Callable[[], None] | None = on_close
        self._on_drop = on_drop
        self._server_start_response = start_response
        self._extra = extra
        self.iterable = iterable

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: OptExcInfo | None = None, /
    ) -> Callable[[bytes], object]:
        """The server's ``start_response`` with the extra headers added (a new list: the
        app's own may be a constant it passes every time)."""
        return self._server_start_response(status, headers + self._extra, exc_info)  # type: ignore[misc]

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.iterable)

    def close(self) -> None:
        """Close the wrapped iterable, then run the end-of-request hook; both at most once."""
        on_close = self._on_close
        if on_close is None:
            return
        self._on_close = None
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


class HitResponse(list[bytes]):
    """A response the middleware answers itself, its body in hand (a cache hit, a ``304``):
    iterated as the list it is, in C. ``close()`` calls ``_on_close``, or its collection
    without one calls ``_on_drop``: exactly one of them, once.

    The caller fills it in (``list.__new__``, the two hooks, ``append(body)``): an
    ``__init__`` frame would cost every hit.
    """

    __slots__ = ("_on_close", "_on_drop")
    _on_close: Callable[[], object] | None
    _on_drop: Callable[[], object]

    def close(self) -> None:
        """End the request, once."""
        on_close = self._on_close
        if on_close is not None:
            self._on_close = None
            on_close()

    def __del__(self) -> None:
        if self._on_close is not None:
            self._on_close = None
            self._on_drop()


def counted_response_type(
    close: Callable[[], object], drop: Callable[[], object]
) -> Callable[..., Iterable[bytes]]:
    """A ``tuple`` type for a response in hand whose ``close()`` *is* ``close`` and whose
    collection calls ``drop``: a C method as a class attribute is not bound again, so with
    two counts' ``__next__`` neither is a Python frame (the cache-hit lane counts every
    nanosecond). A tuple holds no state: ``close`` may count a close twice, and a closed
    response counts again when collected. The counts' reader sees to both (see
    ``Governor.in_flight``).
    """
    return type("CountedResponse", (tuple,), {"__slots__": (), "close": close, "__del__": drop})


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
