"""A small reverse proxy as a WSGI app: what a user puts in front of an origin to test a cache.

Every request goes to ``origin`` (``http://host:port``) with the same method, path, query,
headers and body; the origin's status, headers and body come back. Hop-by-hop headers (RFC 9110
§7.6.1: ``Connection``, those it lists, ``Keep-Alive``, ``Transfer-Encoding``, ...) stay on
their own hop, in both directions; the origin's ``Date`` is kept.

    app = MemoryOptimizer(ReverseProxy("http://127.0.0.1:8000"))
"""

from __future__ import annotations

import http.client
import urllib.parse
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_TIMEOUT_S = 30.0


def _end_to_end(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """``headers`` less the hop-by-hop ones and those ``Connection`` names."""
    headers = list(headers)
    named = {
        token.strip().lower()
        for name, value in headers
        if name.lower() == "connection"
        for token in value.split(",")
    }
    return [(n, v) for n, v in headers if n.lower() not in HOP_BY_HOP and n.lower() not in named]


class ReverseProxy:
    """A WSGI app that forwards each request to ``origin`` and answers what it answers."""

    def __init__(self, origin: str) -> None:
        parsed = urllib.parse.urlsplit(origin)
        self.host = parsed.hostname or "127.0.0.1"
        self.port = parsed.port or 80

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        target = urllib.parse.quote(environ.get("PATH_INFO", ""), safe="/%;:@&=+$,!~*'()")
        if environ.get("QUERY_STRING"):
            target += "?" + environ["QUERY_STRING"]
        headers = [
            (key[5:].replace("_", "-").title(), value)
            for key, value in environ.items()
            if key.startswith("HTTP_") and key != "HTTP_HOST"
        ]
        if environ.get("CONTENT_TYPE"):
            headers.append(("Content-Type", environ["CONTENT_TYPE"]))
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else None
        connection = http.client.HTTPConnection(self.host, self.port, timeout=_TIMEOUT_S)
        try:
            connection.putrequest(
                environ["REQUEST_METHOD"], target, skip_host=True, skip_accept_encoding=True
            )
            connection.putheader("Host", f"{self.host}:{self.port}")
            for name, value in _end_to_end(headers):
                connection.putheader(name, value)
            if body is not None:
                connection.putheader("Content-Length", str(len(body)))
            connection.endheaders(body)
            response = connection.getresponse()
            content = response.read()
            status = f"{response.status} {response.reason}"
            response_headers = _end_to_end(response.getheaders())
        except (OSError, http.client.HTTPException) as error:
            # What a gateway answers when the origin fails it (RFC 9110 §15.6.3).
            status, content = "502 Bad Gateway", f"the origin failed: {error!r}".encode()
            response_headers = [
                ("Content-Type", "text/plain"),
                ("Content-Length", str(len(content))),
            ]
        finally:
            connection.close()
        start_response(status, response_headers)
        return [content]
