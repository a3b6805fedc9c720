"""The response iterable that tells the middleware when the server is done with a response.

PEP 3333: the server calls ``close()`` on the iterable when it has sent the response (or
given up on it), which is the real end of a request. The governor works then.

    return ClosingResponse(app_iter, governor.request_finished)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

__all__ = ["ClosingResponse"]


class ClosingResponse:
    """Iterates ``iterable`` unchanged; ``close()`` closes it (if it can be) exactly once,
    then calls ``on_close`` exactly once, even when closing raised."""

    __slots__ = ("_iterable", "_on_close")

    def __init__(self, iterable: Iterable[bytes], on_close: Callable[[], None]) -> None:
        self._iterable = iterable
        self._on_close: Callable[[], None] | None = on_close

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._iterable)

    def close(self) -> None:
        """Close the wrapped iterable, then run the end-of-request hook; both at most once."""
        on_close = self._on_close
        if on_close is None:
            return
        self._on_close = None
        try:
            close = getattr(self._iterable, "close", None)
            if close is not None:
                close()
        finally:
            on_close()
