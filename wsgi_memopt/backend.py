"""Where the response cache keeps what it shares between processes: ``cache_backend``.

``memory`` (the default) keeps every response in the process that fetched it. A Redis URL puts
a store shared by every worker and machine that names it behind each process's own:

    redis://[[user]:password@]host[:port][/db]          rediss://... (TLS)
    unix://[[user]:password@]/path/to/redis.sock[?db=N]
    redis+cluster://[[user]:password@]host:port[,host:port...]     (rediss+cluster://)
    redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db]   (rediss+sentinel://)

This module only reads the URL (no import of redis-py): the settings validate with it, and the
shared store builds its client from what it returns.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass

__all__ = ["MEMORY", "BackendAddress", "parse_backend", "redacted"]

MEMORY = "memory"
_SCHEMES = {
    "redis": "single",
    "rediss": "single",
    "unix": "single",
    "redis+cluster": "cluster",
    "rediss+cluster": "cluster",
    "redis+sentinel": "sentinel",
    "rediss+sentinel": "sentinel",
}
# A password in the query, which redis-py reads as well as the one before the host.
_QUERY_PASSWORD = re.compile(r"((?:^|&)password=)[^&]*")
_DEFAULT_PORT = {"single": 6379, "cluster": 6379, "sentinel": 26379}
RULE = (
    "expected 'memory', or a Redis URL: redis://host:port/db, rediss://..., unix:///path.sock, "
    "redis+cluster://host:port[,host:port], redis+sentinel://host:port[,host:port]/service[/db]"
)


@dataclass(frozen=True)
class BackendAddress:
    """A Redis URL taken apart: ``kind`` is ``single``, ``cluster`` or ``sentinel``; ``url``
    is the text redis-py reads for a single server."""

    kind: str
    url: str
    tls: bool
    nodes: tuple[tuple[str, int], ...]
    username: str | None
    password: str | None
    service: str | None
    db: int


def parse_backend(url: str) -> BackendAddress | None:
    """The address ``url`` names, or None for ``memory``; ``ValueError`` (saying what is
    allowed) for anything else."""
    text = url.strip()
    if text.lower() == MEMORY:
        return None
    try:
        parts = urllib.parse.urlsplit(text)
        scheme = parts.scheme.lower()
        kind = _SCHEMES[scheme]
        tls = scheme.startswith("rediss")
        username = urllib.parse.unquote(parts.username) if parts.username else None
        password = urllib.parse.unquote(parts.password) if parts.password is not None else None
        netloc = parts.netloc.rpartition("@")[2]
        query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
        _check_options(query, kind, scheme)
        if scheme == "unix":
            if not parts.path or netloc:
                raise ValueError(text)
            db = int(query.get("db", ["0"])[0])
            return BackendAddress(kind, text, False, (), username, password, None, _db(db))
        nodes = tuple(_node(node, _DEFAULT_PORT[kind]) for node in netloc.split(","))
        segments = [segment for segment in parts.path.split("/") if segment]
        service = None
        if kind == "sentinel":
            if not segments:
                raise ValueError(text)
            service = urllib.parse.unquote(segments.pop(0))
        if kind == "cluster" and segments:
            raise ValueError(text)  # a cluster has one database
        if len(segments) > 1 or (kind == "single" and len(nodes) != 1):
            raise ValueError(text)
        db = _db(int(segments[0])) if segments else 0
    except (KeyError, ValueError, IndexError):
        raise ValueError(RULE) from None
    return BackendAddress(kind, text, tls, nodes, username, password, service, db)


def _check_options(query: dict[str, list[str]], kind: str, scheme: str) -> None:
    """A URL's query may carry TLS options (``ssl_*``), a ``client_name``, a ``password``
    and, on a socket, ``db``; nothing that would undo the cache's own timeouts and retries,
    and nothing at all for a cluster or Sentinel, whose clients are built from the parts."""
    for name in query:
        allowed = name.startswith("ssl_") or name in ("client_name", "password")
        if kind != "single" or not (allowed or (name == "db" and scheme == "unix")):
            raise ValueError(name)


def _node(text: str, default_port: int) -> tuple[str, int]:
    host, colon, port = text.rpartition(":") if not text.endswith("]") else (text, "", "")
    if not colon:
        host, port = text, str(default_port)
    host = host.strip("[]")
    number = int(port)
    if not host or not 0 < number < 65536:
        raise ValueError(text)
    return host, number


def _db(number: int) -> int:
    if number < 0:
        raise ValueError(number)
    return number


def redacted(url: str) -> str:
    """``url`` with its password replaced by ``***``, for logs, errors and reports."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unreadable URL>"
    shown = url
    if parts.password is not None:
        user, _, host = parts.netloc.rpartition("@")
        name = user.partition(":")[0]
        shown = urllib.parse.urlunsplit(parts._replace(netloc=f"{name}:***@{host}"))
    # redis-py takes a password from the query too (?password=...).
    base, mark, query = shown.partition("?")
    return base + mark + _QUERY_PASSWORD.sub(r"\1***", query)
