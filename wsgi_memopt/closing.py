"""The response iterable that tells the middleware when the server is done with a response.

PEP 3333: the server calls ``close()`` on the iterable when it has sent the response (or
given up on it), which is the real end of a request. The governor works then.

    response = ClosingResponse(governor.request_finished, start_response, extra_headers)
    response.iterable = app(environ, response.start_response)
    return response
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed import OptExcInfo
    from _typeshed.wsgi import StartResponse

__all__ = ["ClosingResponse"]

_NO_HEADERS: list[tuple[str, str]] = []


class ClosingResponse:
    """Iterates ``iterable`` unchanged; ``close()`` closes it (if it can be) exactly once,
    then calls ``on_close`` exactly once, even when closing raised.

    With ``start_response``, :meth:`start_response` is what the app gets: it passes the
    response on with ``extra`` headers added (``Cache-Status``: why it was not cached). One
    object for both jobs: a request passed through costs one allocation of ours.
    """

    __slots__ = ("_extra", "_on_close", "_server_start_response", "iterable")

    def __init__(
        self,
        on_close: Callable[[], None],
        start_response: StartResponse | None = None,
        extra: list[tuple[str, str]] = _NO_HEADERS,
        iterable: Iterable[bytes] = (),
    ) -> None:
        self._on_close: Callable[[], None] | None = on_close
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
