"""Tiny WSGI apps the tests put behind the middleware."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Headers = list[tuple[str, str]]

# How the test apps mark a response cacheable, where a test is about anything but freshness.
CACHEABLE: Headers = [("Cache-Control", "max-age=1800")]


class CountingApp:
    """A tiny app answering ``body #N`` on its N-th call, with ``headers`` and ``status``.

    A test tells a hit from a miss by its calls: ``calls`` counts them and ``paths`` holds
    each ``PATH_INFO`` in order, and the body says which call produced it. Without
    ``headers`` its responses are cacheable (:data:`CACHEABLE`); a test that gives its own
    says what it wants stored. ``echo`` names an environ key whose value (its ``repr``) is
    added to the body. A HEAD gets the GET's headers and no body, as werkzeug's ``Response``
    does.
    """

    def __init__(
        self,
        body: bytes = b"body",
        *,
        status: str = "200 OK",
        headers: Headers | None = None,
        content_length: bool = True,
        echo: str | None = None,
    ) -> None:
        self.body = body
        self.status = status
        self.headers = list(CACHEABLE) if headers is None else headers
        self.content_length = content_length
        self.echo = echo
        self.calls = 0
        self.paths: list[str] = []
        # Each call's preconditions (If-None-Match, If-Modified-Since, ...): a revalidation's.
        self.preconditions: list[dict[str, str]] = []

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        self.calls += 1
        self.paths.append(environ["PATH_INFO"])
        self.preconditions.append({k: v for k, v in environ.items() if k.startswith("HTTP_IF_")})
        body = self.body + b" #%d" % self.calls
        if self.echo is not None:
            body += b" " + repr(environ.get(self.echo)).encode()
        headers = [("Content-Type", "text/plain"), *self.headers]
        if self.content_length:
            headers.append(("Content-Length", str(len(body))))
        start_response(self.status, headers)
        return [] if environ["REQUEST_METHOD"] == "HEAD" else [body]


class Origin(CountingApp):
    """A :class:`CountingApp` that answers a conditional request (``If-None-Match`` or
    ``If-Modified-Since``) ``304 Not Modified`` with the headers ``not_modified``, unless
    that is None; and raises while ``down``."""

    def __init__(self, *, headers: Headers, not_modified: Headers | None = None) -> None:
        super().__init__(headers=headers)
        self.not_modified = not_modified
        self.down = False

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        if self.down:
            self.calls += 1
            raise RuntimeError("the app is down")
        conditional = "HTTP_IF_NONE_MATCH" in environ or "HTTP_IF_MODIFIED_SINCE" in environ
        if not conditional or self.not_modified is None:
            return super().__call__(environ, start_response)
        self.calls += 1
        self.paths.append(environ["PATH_INFO"])
        self.preconditions.append({k: v for k, v in environ.items() if k.startswith("HTTP_IF_")})
        start_response("304 Not Modified", list(self.not_modified))
        return []
