"""What may be cached, under which key and for how long: the rules of SPEC §6 as pure functions.

The middleware calls these on the request path. They read ``environ`` and header lists
directly and hand parsing to werkzeug only when a header is actually present, so a request
without ``Cache-Control`` or conditional headers never builds a parser object.

The rules, as a user can check them:

- only GET and HEAD are served from the cache; HEAD is answered from a GET entry;
- the key is scheme, host, ``SCRIPT_NAME + PATH_INFO``, the raw query string, the values of
  ``X-Forwarded-Proto/-Port/-Prefix`` and of ``cache_key_headers``, and the request's values of
  every header the stored response names in ``Vary`` (an absent header differs from an empty one);
- a request carrying ``X-Forwarded-Host``, ``Forwarded``, ``X-Original-URL`` or
  ``X-Rewrite-URL`` bypasses the cache unless that header is keyed by ``cache_key_headers``;
- a request with ``Authorization`` or ``Cookie`` is served and stored only when the response
  says ``public`` or ``s-maxage``;
- request ``no-store`` bypasses; request ``no-cache``, ``max-age=0`` or ``Pragma: no-cache``
  skips the stored copy and refreshes it;
- a response is not stored when it says ``no-store``, ``private`` or ``no-cache``, sets a
  cookie, has ``Vary: *``, a status outside ``cache_statuses``, a body over the item limit, a
  freshness lifetime of zero, or a ``Content-Length`` its body does not match;
- freshness: ``s-maxage``, else ``max-age``, else ``Expires - Date``, each capped by
  ``cache_ttl_s``; no header gives ``cache_ttl_s``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from werkzeug.datastructures import RequestCacheControl, ResponseCacheControl
from werkzeug.http import parse_cache_control_header, parse_date, parse_etags, unquote_etag

__all__ = [
    "ABSENT",
    "BYPASS_HEADERS",
    "FORWARDED_KEY_HEADERS",
    "ResponseVerdict",
    "assess_response",
    "environ_key",
    "is_not_modified",
    "request_directives",
    "vary_suffix",
]

# Headers that make an app behind a proxy-fixing middleware build another URL for the same
# path: keying them would let any client fill the cache under an attacker's chosen host, so
# they bypass it (SPEC §6). X-Rewrite-URL is X-Original-URL's IIS twin.
BYPASS_HEADERS = ("forwarded", "x-forwarded-host", "x-original-url", "x-rewrite-url")
# Forwarding headers with a handful of honest values (http/https, a port, a mount prefix) are
# keyed instead of bypassed, so a cache behind a TLS proxy still works and still cannot hand
# an http:// page to an https:// client.
FORWARDED_KEY_HEADERS = ("x-forwarded-port", "x-forwarded-prefix", "x-forwarded-proto")
# Stands for "header absent" in a key, distinct from any real value (SPEC §6: absent != empty).
ABSENT = "\x01"

_SEP = "\x00"


def environ_key(header: str) -> str:
    """The WSGI environ key of a request header: ``Accept-Language`` -> ``HTTP_ACCEPT_LANGUAGE``."""
    name = header.strip().upper().replace("-", "_")
    if name in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        return name
    return "HTTP_" + name


def vary_suffix(environ_keys: Iterable[str], environ: Mapping[str, object]) -> str:
    """The part of a key made of the request's values of the ``Vary`` headers."""
    get = environ.get
    return "".join(_SEP + str(get(name, ABSENT)) for name in environ_keys)


def request_directives(environ: Mapping[str, object]) -> tuple[bool, bool]:
    """``(no_store, refresh)`` from a request's ``Cache-Control`` (or ``Pragma``).

    Call only when one of the two headers is present.
    """
    value = environ.get("HTTP_CACHE_CONTROL")
    if value is None:
        # RFC 9111 §5.4: Pragma counts only when Cache-Control is absent.
        pragma = str(environ.get("HTTP_PRAGMA", "")).lower()
        return False, "no-cache" in pragma
    directives = parse_cache_control_header(str(value), cls=RequestCacheControl)
    refresh = bool(directives.no_cache) or directives.max_age == 0
    return bool(directives.no_store), refresh


@dataclass(frozen=True)
class ResponseVerdict:
    """Whether a response may be stored, and what the store needs to know about it."""

    reason: str | None  # why it may not be stored; None when it may
    lifetime: float = 0.0  # seconds of freshness
    shareable_with_credentials: bool = False  # public / s-maxage: may serve Authorization/Cookie
    vary: tuple[str, ...] = ()  # environ keys of the Vary headers, sorted
    content_length: int | None = None
    etag: str | None = None
    last_modified: float | None = None  # POSIX seconds


def assess_response(
    status: str,
    headers: Sequence[tuple[str, str]],
    *,
    credentials: bool,
    statuses: frozenset[int],
    item_limit: int,
    ttl_cap: float,
    now: float | None = None,
) -> ResponseVerdict:
    """Decide at ``start_response`` time whether a GET response may be stored (SPEC §6)."""
    try:
        code = int(status[:3])
    except ValueError:
        return ResponseVerdict("status")
    if code not in statuses:
        return ResponseVerdict("status")
    cache_control = vary = expires = date = etag = last_modified = length = None
    for name, value in headers:
        lower = name.lower()
        if lower == "cache-control":
            cache_control = value if cache_control is None else f"{cache_control}, {value}"
        elif lower == "set-cookie":
            return ResponseVerdict("set-cookie")
        elif lower == "vary":
            vary = value if vary is None else f"{vary}, {value}"
        elif lower == "expires":
            expires = value
        elif lower == "date":
            date = value
        elif lower == "etag":
            etag = value
        elif lower == "last-modified":
            last_modified = value
        elif lower == "content-length":
            length = value

    directives = parse_cache_control_header(cache_control, cls=ResponseCacheControl)
    if directives.no_store:
        return ResponseVerdict("no-store")
    if directives.private:
        return ResponseVerdict("private")
    if directives.no_cache:
        return ResponseVerdict("no-cache")
    shareable = bool(directives.public) or directives.s_maxage is not None
    if credentials and not shareable:
        return ResponseVerdict("credentials")

    vary_keys: tuple[str, ...] = ()
    if vary is not None:
        names = [part.strip() for part in vary.split(",") if part.strip()]
        if "*" in names:
            return ResponseVerdict("vary-star")
        vary_keys = tuple(sorted({environ_key(name) for name in names}))

    content_length = None
    if length is not None:
        try:
            content_length = int(length)
        except ValueError:
            return ResponseVerdict("content-length")
        if content_length > item_limit:
            return ResponseVerdict("too-large")

    lifetime = _lifetime(directives, expires, date, ttl_cap, time.time() if now is None else now)
    if lifetime <= 0:
        return ResponseVerdict("stale")
    modified = parse_date(last_modified) if last_modified else None
    return ResponseVerdict(
        None,
        lifetime=lifetime,
        shareable_with_credentials=shareable,
        vary=vary_keys,
        content_length=content_length,
        etag=etag,
        last_modified=modified.timestamp() if modified else None,
    )


def _lifetime(
    directives: ResponseCacheControl,
    expires: str | None,
    date: str | None,
    ttl_cap: float,
    now: float,
) -> float:
    """RFC 9111 §4.2.1 freshness lifetime, capped by ``cache_ttl_s``."""
    if directives.s_maxage is not None:
        return min(float(directives.s_maxage), ttl_cap)
    if directives.max_age is not None:
        return min(float(directives.max_age), ttl_cap)
    if expires is not None:
        expires_at = parse_date(expires)
        if expires_at is None:
            return 0.0  # RFC 9111 §5.3: an invalid Expires means "already expired"
        date_at = parse_date(date) if date else None
        origin = date_at.timestamp() if date_at else now
        return min(expires_at.timestamp() - origin, ttl_cap)
    return ttl_cap


def is_not_modified(
    environ: Mapping[str, object], etag: str | None, last_modified: float | None
) -> bool:
    """Whether a conditional GET/HEAD may be answered ``304`` from an entry (RFC 9110 §13.2.2).

    ``If-None-Match`` is decided by weak comparison; ``If-Modified-Since`` counts only when
    ``If-None-Match`` is absent.
    """
    if_none_match = environ.get("HTTP_IF_NONE_MATCH")
    if if_none_match is not None:
        if etag is None:
            return False
        return parse_etags(str(if_none_match)).contains_weak(unquote_etag(etag)[0] or "")
    if_modified_since = environ.get("HTTP_IF_MODIFIED_SINCE")
    if if_modified_since is None or last_modified is None:
        return False
    since = parse_date(str(if_modified_since))
    return since is not None and since.timestamp() >= last_modified
