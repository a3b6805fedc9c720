"""What may be cached, under which key and for how long: the rules as pure functions.

The middleware calls these on the request path. They read ``environ`` and header lists
directly and hand parsing to werkzeug only when a header is actually present, so a request
without ``Cache-Control`` or conditional headers never builds a parser object.

The rules, as a user can check them:

- only GET and HEAD are served from the cache; HEAD is answered from a GET entry;
- the key is the request's scheme, ``Host``, ``SCRIPT_NAME`` and ``PATH_INFO``, the raw query
  string, the request target as the server received it (``RAW_URI``, ``REQUEST_URI``), the
  values of ``X-Forwarded-Proto/-Port/-Prefix`` and of ``cache_key_headers``, and the names and
  the request's values of the headers the stored response names in ``Vary`` (an absent header
  differs from an empty one); a request without ``Host`` (HTTP/1.0) bypasses the cache;
- a request carrying a header of :data:`FORWARDING_HEADERS` (one that frameworks and WSGI
  filters read to build URLs or pick the method) bypasses the cache unless that header is
  keyed by ``cache_key_headers``; so does a GET or HEAD with a body;
- ``cache_paths`` and ``cache_exclude_paths`` see the path as a router does: dot segments
  resolved, repeated slashes merged (:func:`normalized_path`);
- a request with ``Authorization`` or ``Cookie`` is served and stored only when the response
  says ``public`` or ``s-maxage``;
- request ``no-store`` bypasses; request ``no-cache``, ``max-age=0`` or ``Pragma: no-cache``
  skips the stored copy and refreshes it;
- a non-error response to an unsafe method invalidates its URI and the same-host URIs of its
  ``Location`` and ``Content-Location``;
- the first targeted field of ``cache_targeted_fields`` present (RFC 9213) replaces
  ``Cache-Control`` and ``Expires``;
- a response is not stored when it says ``no-store`` (unless ``must-understand`` with a status
  RFC 9110 defines) or ``private``, ``no-cache`` without a validator, sets a cookie, has
  ``Vary: *``, a status outside ``cache_statuses``, a body over the item limit, is stale on
  arrival without a validator, or has a ``Content-Length`` its body does not match;
- freshness: ``s-maxage``, else ``max-age``, else ``Expires - Date`` (strict HTTP dates, see
  :mod:`wsgi_memopt.cache.dates`); without any of them, the longer of the heuristic freshness
  RFC 9111 §4.2.2 allows (10% of the time since ``Last-Modified``, for a status RFC 9110 §15.1
  calls heuristically cacheable) and ``cache_default_ttl_s`` (0 by default: a response that
  says nothing is not stored); every lifetime capped by ``cache_ttl_s``; a response's age is
  RFC 9111 §4.2.3's (its ``Age``, its ``Date``, the time the app took);
- a stale entry with a validator is revalidated with a conditional request; within
  ``stale-while-revalidate`` it is served while one refresh runs after the response, within
  ``stale-if-error`` when the app fails; never with ``must-revalidate`` and its kin.
"""

from __future__ import annotations

import fnmatch
import functools
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from werkzeug.datastructures import ETags
from werkzeug.http import parse_dict_header, parse_etags, unquote_etag

from .dates import http_date

__all__ = [
    "BYPASS_HEADERS",
    "FORWARDED_KEY_HEADERS",
    "FORWARDING_HEADERS",
    "HEURISTIC_STATUSES",
    "KEY_VARIABLES",
    "NO_BODY_LENGTHS",
    "PRECONDITION_KEYS",
    "SAFE_METHODS",
    "UNDERSTOOD_STATUSES",
    "CacheKey",
    "ResponseVerdict",
    "assess_response",
    "bypass_environ_keys",
    "cache_directives",
    "environ_key",
    "has_body",
    "has_credentials",
    "is_not_modified",
    "key_host",
    "key_path",
    "key_query",
    "key_route",
    "key_variables",
    "normalized_path",
    "path_filter",
    "plan_environ_keys",
    "request_directives",
    "variant_key",
]

# The request headers that frameworks, servers and WSGI filters read to build a page's URLs
# (host, scheme, port, mount point, path) or to pick its method, each with who reads it. A
# request carrying one would let any client store a page built for its own values (a link to
# its host, a javascript: scheme, a GET answered as a DELETE), so it passes through uncached
# unless cache_key_headers keys the header. X-Forwarded-For, X-Real-IP and
# X-Client-IP are not here: they set REMOTE_ADDR, not a URL, and a TLS proxy adds
# X-Forwarded-For to every request (a page that shows the client's address says Vary).
FORWARDING_HEADERS: Mapping[str, str] = {
    "forwarded": "RFC 7239; waitress (trusted_proxy_headers)",
    "x-forwarded-host": "werkzeug ProxyFix, Django USE_X_FORWARDED_HOST, PasteDeploy prefix, "
    "waitress, mod_wsgi",
    "x-forwarded-server": "PasteDeploy prefix (SERVER_NAME and Host), mod_wsgi",
    "x-host": "mod_wsgi, cardinal_pythonlib ReverseProxiedMiddleware",
    "x-original-host": "Django middlewares behind Azure or ngrok that copy it to Host",
    "x-forwarded-proto": "werkzeug ProxyFix, Django SECURE_PROXY_SSL_HEADER, PasteDeploy prefix",
    "x-forwarded-port": "werkzeug ProxyFix, Django USE_X_FORWARDED_PORT, waitress, mod_wsgi",
    "x-forwarded-prefix": "werkzeug ProxyFix (SCRIPT_NAME)",
    "x-forwarded-scheme": "PasteDeploy prefix (wsgi.url_scheme), mod_wsgi",
    "x-scheme": "the Flask ReverseProxied snippet, mod_wsgi",
    "x-url-scheme": "Galaxy's XForwardedHostMiddleware",
    "x-forwarded-protocol": "gunicorn secure_scheme_headers, cardinal_pythonlib",
    "x-forwarded-ssl": "gunicorn secure_scheme_headers, mod_wsgi",
    "x-forwarded-https": "mod_wsgi",
    "x-https": "mod_wsgi",
    "x-script-name": "the Flask ReverseProxied snippet, mod_wsgi",
    "x-forwarded-script-name": "mod_wsgi, cardinal_pythonlib",
    "x-original-url": "IIS URL Rewrite; Symfony and Zend before their 2018 fixes",
    "x-rewrite-url": "IIS (X-Original-URL's older twin); the same frameworks",
    "x-http-method-override": "Flask's HTTPMethodOverrideMiddleware pattern, Django middlewares",
    "x-http-method": "Microsoft's OData and SharePoint convention; PHP REST apps",
    "x-method-override": "Django views and PHP frameworks",
}
# Of those, the ones with a handful of honest values (http/https, a port, a mount prefix) are
# keyed by default instead of bypassed, so a cache behind a TLS proxy still works and still
# cannot hand an http:// page to an https:// client.
FORWARDED_KEY_HEADERS = ("x-forwarded-port", "x-forwarded-prefix", "x-forwarded-proto")
# The others bypass the cache unless cache_key_headers names them.
BYPASS_HEADERS = tuple(name for name in FORWARDING_HEADERS if name not in FORWARDED_KEY_HEADERS)
# The request's own directives: which rule applies is the full path's to work out.
DIRECTIVE_HEADERS = ("cache-control", "pragma")
# RFC 9110 §9.2.1: the safe methods. A non-error response to any other invalidates what is
# stored for its target URI (RFC 9111 §4.4).
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
# The request's preconditions (RFC 9110 §13.1): a revalidation replaces the client's with
# the stored response's validators.
PRECONDITION_KEYS = (
    "HTTP_IF_MATCH",
    "HTTP_IF_NONE_MATCH",
    "HTTP_IF_MODIFIED_SINCE",
    "HTTP_IF_UNMODIFIED_SINCE",
    "HTTP_IF_RANGE",
)
# A body makes a GET's page depend on what the key does not hold: Transfer-Encoding, or a
# Content-Length other than these (absent, as gunicorn leaves it; empty, as werkzeug's
# server sets it; zero).
NO_BODY_LENGTHS = frozenset({None, "", "0"})
# RFC 9110 §15: the status codes it defines. A response marked must-understand is stored only
# with one of these (RFC 9111 §5.2.2.3).
UNDERSTOOD_STATUSES = frozenset(
    {200, 201, 202, 203, 204, 205, 206, 300, 301, 302, 303, 304, 305, 307, 308}
    | set(range(400, 418))
    | {421, 422, 426}
    | set(range(500, 506))
)
# RFC 9110 §15.1: the statuses a cache may give heuristic freshness (RFC 9111 §4.2.2).
HEURISTIC_STATUSES = frozenset({200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501})
# RFC 9111 §4.2.2's "typical setting": a tenth of the time since Last-Modified.
HEURISTIC_FRACTION = 0.1
# A key is a tuple, never a joined string: no header value or path can be crafted to spell
# another request's key. A request's base key is the values of these environ variables (None
# for one the server left out), then those of the keyed headers (see key_variables); the key of
# one variant of a page is (base key, Vary names, Vary values).
#
# The request target as the server received it (RAW_URI from gunicorn and werkzeug,
# REQUEST_URI from uWSGI, waitress and mod_wsgi) is in it: an app that reads it sees what
# PATH_INFO hides (an absolute-form http://other.host/p, %2F against /), so two spellings of a
# path never share an entry.
KEY_VARIABLES = (
    "wsgi.url_scheme",
    "HTTP_HOST",
    "SCRIPT_NAME",
    "PATH_INFO",
    "QUERY_STRING",
    "RAW_URI",
    "REQUEST_URI",
)
_HOST, _SCRIPT_NAME, _PATH_INFO, _QUERY = map(
    KEY_VARIABLES.index, ("HTTP_HOST", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING")
)
CacheKey = tuple[Any, ...]


def key_variables(keyed: Iterable[str]) -> tuple[str, ...]:
    """The environ variables whose values make a request's base key: :data:`KEY_VARIABLES`,
    then the forwarding headers keyed by default and the header names ``keyed``
    (``cache_key_headers``), sorted."""
    headers = {name.lower() for name in keyed}.union(FORWARDED_KEY_HEADERS)
    return KEY_VARIABLES + tuple(sorted(map(environ_key, headers)))


def has_credentials(environ: Mapping[str, object]) -> bool:
    """Whether a request carries credentials (``Authorization``, or a browser's cookies):
    it may be served and stored only what a response marks ``public`` or ``s-maxage``."""
    return "HTTP_AUTHORIZATION" in environ or "HTTP_COOKIE" in environ


def environ_key(header: str) -> str:
    """The WSGI environ key of a request header: ``Accept-Language`` -> ``HTTP_ACCEPT_LANGUAGE``."""
    name = header.strip().upper().replace("-", "_")
    if name in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        return name
    return "HTTP_" + name


def key_path(base_key: CacheKey) -> str:
    """``SCRIPT_NAME + PATH_INFO`` of a base key (the key holds them apart, unjoined)."""
    return (base_key[_SCRIPT_NAME] or "") + (base_key[_PATH_INFO] or "")


def key_host(base_key: CacheKey) -> str | None:
    """The ``Host`` of a base key; None for a request that sent none (HTTP/1.0), which a
    cache cannot tell apart from another server name's: such requests pass through."""
    return base_key[_HOST]  # type: ignore[no-any-return]


def key_query(base_key: CacheKey) -> str:
    """The query string of a base key ("" when there is none)."""
    return base_key[_QUERY] or ""


def key_route(base_key: CacheKey) -> str:
    """``PATH_INFO`` of a base key: the path as the app's router sees it under a mount."""
    return base_key[_PATH_INFO] or ""


def path_filter(
    include: Sequence[str], exclude: Sequence[str]
) -> Callable[[CacheKey], bool] | None:
    """A predicate on base keys from ``cache_paths`` / ``cache_exclude_paths`` globs, or None
    when neither is set. Each glob is matched against the full path (``SCRIPT_NAME +
    PATH_INFO``, as a client sees it) and ``PATH_INFO`` (as the app's router sees it under a
    mount), both normalized (:func:`normalized_path`): a glob that matches either counts, so
    an exclusion written either way holds."""
    if not include and not exclude:
        return None
    included = re.compile("|".join(map(fnmatch.translate, include))).match if include else None
    excluded = re.compile("|".join(map(fnmatch.translate, exclude))).match if exclude else None

    def allowed(base_key: CacheKey) -> bool:
        paths = {normalized_path(key_path(base_key)), normalized_path(key_route(base_key))}
        if included is not None and all(included(path) is None for path in paths):
            return False
        return excluded is None or all(excluded(path) is None for path in paths)

    return allowed


def normalized_path(path: str) -> str:
    """``path`` as an app's router sees it: dot segments resolved (RFC 3986 §5.2.4) and
    repeated slashes merged (werkzeug's ``merge_slashes``), so that no spelling of a path
    slips past a path rule: ``/static/../admin/x`` and ``/./admin//x`` are ``/admin/x``."""
    if "." not in path and "//" not in path:
        return path
    segments: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if segments:
                segments.pop()
        elif segment and segment != ".":
            segments.append(segment)
    normalized = "/" + "/".join(segments)
    if segments and path.endswith(("/", "/.", "/..")):
        normalized += "/"  # a directory stays one: /a/. is /a/
    return normalized


def variant_key(
    base_key: CacheKey, environ_keys: tuple[str, ...], environ: Mapping[str, object]
) -> CacheKey:
    """The key of the variant of ``base_key`` selected by the request's values of the
    ``Vary`` headers ``environ_keys`` names: the names are part of it, so that a value sent
    under another header never selects the variant."""
    return (base_key, environ_keys, tuple(map(environ.get, environ_keys)))


def bypass_environ_keys(keyed: Iterable[str]) -> frozenset[str]:
    """The environ keys of the forwarding headers a request passes through for: those of
    :data:`BYPASS_HEADERS` the header names ``keyed`` (``cache_key_headers``) do not key."""
    keyed = {name.lower() for name in keyed}
    return frozenset(environ_key(name) for name in BYPASS_HEADERS if name not in keyed)


def plan_environ_keys(keyed: Iterable[str]) -> frozenset[str]:
    """The environ keys whose presence in a GET or HEAD calls for the full rules: the
    request's own directives, a chunked body, and the forwarding headers it passes through
    for (:func:`bypass_environ_keys`). A request with none of them may take the fast path."""
    directives = {environ_key(name) for name in (*DIRECTIVE_HEADERS, "transfer-encoding")}
    return bypass_environ_keys(keyed).union(directives)


def has_body(environ: Mapping[str, object]) -> bool:
    """Whether a request carries a body (RFC 9112 §6.3: a Transfer-Encoding, or a
    ``Content-Length`` above zero)."""
    return (
        "HTTP_TRANSFER_ENCODING" in environ or environ.get("CONTENT_LENGTH") not in NO_BODY_LENGTHS
    )


def request_directives(environ: Mapping[str, object]) -> tuple[bool, bool]:
    """``(no_store, refresh)`` from a request's ``Cache-Control`` (or ``Pragma``): whether
    it may not use the cache at all, and whether it must not be served a stored response."""
    value = environ.get("HTTP_CACHE_CONTROL")
    if value is None:
        # RFC 9111 §5.4: Pragma counts only when Cache-Control is absent.
        pragma = environ.get("HTTP_PRAGMA")
        return False, pragma is not None and "no-cache" in str(pragma).lower()
    directives = cache_directives(str(value))
    refresh = "no-cache" in directives or _seconds(directives, "max-age") == 0
    return "no-store" in directives, refresh


def cache_directives(value: str) -> Mapping[str, str | None]:
    """``Cache-Control`` directives by lower-cased name (RFC 9111 §5.2: case-insensitive).

    Parsed by werkzeug; an app sends the same few values again and again, so the last
    results are kept (short values only: a request's header is the client's to choose).
    The mapping is shared: read it, never change it.
    """
    if len(value) <= _REMEMBERED_VALUE_MAX:
        return _remembered_directives(value)
    return parse_dict_header(value.lower())


_REMEMBERED_VALUE_MAX = 256


@functools.lru_cache(maxsize=256)
def _remembered_directives(value: str) -> Mapping[str, str | None]:
    return parse_dict_header(value.lower())


def _seconds(directives: Mapping[str, str | None], name: str) -> int | None:
    """A delta-seconds directive; -1 when present but not a non-negative integer."""
    if name not in directives:
        return None
    raw = directives[name]
    if raw is None or not raw.isdecimal():
        return -1  # RFC 9111 §4.2.1: an invalid freshness value is treated as stale
    return int(raw)


class ResponseVerdict(NamedTuple):
    """Whether a response may be stored, and what the store needs to know about it."""

    reason: str | None  # why it may not be stored; None when it may
    lifetime: float = 0.0  # seconds of freshness (0: to be revalidated before any reuse)
    shareable_with_credentials: bool = False  # public / s-maxage: may serve Authorization/Cookie
    vary: tuple[str, ...] = ()  # environ keys of the Vary headers, sorted
    content_length: int | None = None
    etag: str | None = None
    last_modified: float | None = None  # POSIX seconds
    age: float = 0.0  # the response's own Age header: seconds it spent in caches upstream
    date: float | None = None  # its Date, POSIX seconds
    must_revalidate: bool = False  # never served stale (must-/proxy-revalidate, s-maxage, no-cache)
    stale_while_revalidate: float = 0.0  # RFC 5861 windows, seconds past expiry
    stale_if_error: float = 0.0


# One verdict object per refusal reason, made once: refusing must cost next to nothing.
_REFUSED = {
    reason: ResponseVerdict(reason)
    for reason in (
        "status",
        "set-cookie",
        "no-store",
        "private",
        "no-cache",
        "credentials",
        "vary-star",
        "content-length",
        "too-large",
        "stale",
        "no-freshness",
        "must-understand",
    )
}


# The response headers assess_response reads, by their usual spellings and by lower case;
# any other name maps to _OTHER. A name spelled otherwise is looked up again lower-cased.
_OTHER = "other"
_READ = (
    "cache-control",
    "set-cookie",
    "vary",
    "expires",
    "date",
    "etag",
    "last-modified",
    "content-length",
    "age",
)
_HEADER_KINDS: dict[str, str] = {
    **{name: name for name in _READ},
    **{"-".join(part.capitalize() for part in name.split("-")): name for name in _READ},
    "ETag": "etag",
    **dict.fromkeys(("Content-Type", "Server", "Location", "Content-Encoding"), _OTHER),
}


def assess_response(
    status: str,
    headers: Sequence[tuple[str, str]],
    credentials: bool,
    statuses: frozenset[int],
    item_limit: int,
    ttl_cap: float,
    now: float | None = None,
    default_ttl: float = 0.0,
    targeted: Sequence[str] = (),
) -> ResponseVerdict:
    """Decide at ``start_response`` time whether a GET response may be stored.

    ``default_ttl`` is ``cache_default_ttl_s``: the lifetime of a response without explicit
    freshness (when its heuristic freshness is shorter); ``ttl_cap`` caps every lifetime.
    ``targeted`` names the targeted fields this cache obeys (RFC 9213), lower-cased, in order:
    the first one present replaces ``Cache-Control`` and ``Expires``. ``now``: POSIX seconds.
    """
    code = _status_code(status)
    if code not in statuses:
        return _REFUSED["status"]
    fields: dict[str, str] = {}
    for name, value in headers:
        kind = _HEADER_KINDS.get(name)
        if kind is None:
            kind = name.lower()  # an unusual spelling, or a header only targeted fields name
            kind = _HEADER_KINDS.get(kind, kind if kind in targeted else _OTHER)
        if kind is _OTHER:
            continue
        if kind == "set-cookie":
            return _REFUSED["set-cookie"]
        # A field sent on several lines is one comma-separated list (RFC 9110 §5.3).
        fields[kind] = f"{fields[kind]}, {value}" if kind in fields else value
    if not fields.keys() - {"content-length"}:
        # No caching header at all: the usual response of an app that does not think of it.
        if credentials:
            return _REFUSED["credentials"]
        return _plain_verdict(fields.get("content-length"), item_limit, min(default_ttl, ttl_cap))

    control = next((fields[name] for name in targeted if fields.get(name, "").strip()), None)
    expires = None
    if control is None:
        control, expires = fields.get("cache-control"), fields.get("expires")
    directives = _NO_DIRECTIVES if control is None else cache_directives(control)
    if "must-understand" in directives:
        # Stored only when this cache knows the status's rules; then no-store does not count.
        if code not in UNDERSTOOD_STATUSES:
            return _REFUSED["must-understand"]
    elif "no-store" in directives:
        return _REFUSED["no-store"]
    if "private" in directives:
        return _REFUSED["private"]
    s_maxage = _seconds(directives, "s-maxage")
    must_revalidate = "must-revalidate" in directives
    # What the origin lets every user have, a request's credentials aside. RFC 9111 §3.5 also
    # lets must-revalidate share a response to Authorization; here a cookie counts as
    # credentials too, and a page built for one carries must-revalidate as often as not.
    shareable = "public" in directives or s_maxage is not None
    if credentials and not shareable:
        return _REFUSED["credentials"]
    etag, last_modified = fields.get("etag"), fields.get("last-modified")
    # no-cache: stored only to be revalidated before every reuse, which needs a validator.
    no_cache = "no-cache" in directives
    if no_cache and etag is None and last_modified is None:
        return _REFUSED["no-cache"]

    vary_keys: tuple[str, ...] = ()
    if "vary" in fields:
        names = [part.strip() for part in fields["vary"].split(",") if part.strip()]
        if "*" in names:
            return _REFUSED["vary-star"]
        vary_keys = tuple(sorted({environ_key(name) for name in names}))

    content_length = _content_length(fields.get("content-length"), item_limit)
    if isinstance(content_length, ResponseVerdict):
        return content_length

    date = http_date(fields["date"]) if "date" in fields else None
    modified_at = http_date(last_modified) if last_modified else None
    lifetime = _lifetime(s_maxage, _seconds(directives, "max-age"), expires, date, ttl_cap, now)
    if lifetime is None:
        # Nothing explicit: what RFC 9111 §4.2.2 allows, or what the operator set.
        heuristic = 0.0
        if modified_at is not None and code in HEURISTIC_STATUSES:
            heuristic = _heuristic_lifetime(modified_at, date, now)
        lifetime = min(max(heuristic, default_ttl), ttl_cap)
        if lifetime <= 0 and not no_cache:
            return _REFUSED["no-freshness"]
    elif lifetime <= 0 and etag is None and last_modified is None:
        return _REFUSED["stale"]  # stale on arrival, and nothing to revalidate it with
    return ResponseVerdict(
        None,
        0.0 if no_cache else max(lifetime, 0.0),
        shareable,
        vary_keys,
        content_length,
        etag,
        modified_at,
        age=_age(fields.get("age")),
        date=date,
        must_revalidate=no_cache
        or must_revalidate
        or s_maxage is not None
        or "proxy-revalidate" in directives,
        stale_while_revalidate=max(_seconds(directives, "stale-while-revalidate") or 0, 0),
        stale_if_error=max(_seconds(directives, "stale-if-error") or 0, 0),
    )


_NO_DIRECTIVES: Mapping[str, str | None] = {}


def _age(value: str | None) -> float:
    """An ``Age`` header's seconds (RFC 9111 §5.1): 0 when absent; when it is not exactly one
    non-negative integer (a list, a fraction, a sign), so old the response is stale."""
    if value is None:
        return 0.0
    value = value.strip()
    return float(value) if value.isdecimal() and value.isascii() else _INVALID_AGE


# What RFC 9111 §1.2.2 has a cache send for an age it cannot express: stale, whatever else.
_INVALID_AGE = float(2**31)


def _status_code(status: str) -> int:
    """The code of a status line, or -1 (never a cacheable status) when it has none."""
    try:
        code = int(status[:3])
    except ValueError:
        code = -1
    return code


def _plain_verdict(length: str | None, item_limit: int, lifetime: float) -> ResponseVerdict:
    """The verdict on a response without any caching header: stored for ``lifetime``
    (``cache_default_ttl_s``, capped), not at all when that is zero."""
    content_length = _content_length(length, item_limit)
    if isinstance(content_length, ResponseVerdict):
        return content_length
    if lifetime <= 0:
        return _REFUSED["no-freshness"]
    return ResponseVerdict(None, lifetime, content_length=content_length)


def _content_length(length: str | None, item_limit: int) -> int | ResponseVerdict | None:
    """``Content-Length`` as a number (None when absent), or the refusal it earns."""
    if length is None:
        return None
    if not length.isdecimal():
        length = length.strip()  # RFC 9110 §5.5: surrounding whitespace is not the value's
        if not length.isdecimal():
            return _REFUSED["content-length"]
    content_length = int(length)
    if content_length > item_limit:
        return _REFUSED["too-large"]
    return content_length


def _lifetime(
    s_maxage: int | None,
    max_age: int | None,
    expires: str | None,
    date: float | None,
    ttl_cap: float,
    now: float | None,
) -> float | None:
    """RFC 9111 §4.2.1 freshness lifetime, capped by ``cache_ttl_s``; None when the response
    gives none."""
    if s_maxage is not None:
        return min(float(s_maxage), ttl_cap)
    if max_age is not None:
        return min(float(max_age), ttl_cap)
    if expires is not None:
        expires_at = http_date(expires)
        if expires_at is None:
            return 0.0  # RFC 9111 §5.3: an invalid Expires means "already expired"
        return min(expires_at - _date_or_now(date, now), ttl_cap)
    return None


def _heuristic_lifetime(last_modified: float, date: float | None, now: float | None) -> float:
    """RFC 9111 §4.2.2: a tenth of the time the response had gone unmodified when sent."""
    return max(_date_or_now(date, now) - last_modified, 0.0) * HEURISTIC_FRACTION


def _date_or_now(date: float | None, now: float | None) -> float:
    """The response's ``Date``, or now when it has none (or garbage): POSIX seconds."""
    if date is not None:
        return date
    return time.time() if now is None else now


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
        return _request_etags(str(if_none_match)).contains_weak(_etag_value(etag))
    if_modified_since = environ.get("HTTP_IF_MODIFIED_SINCE")
    if if_modified_since is None or last_modified is None:
        return False
    since = http_date(str(if_modified_since))
    return since is not None and since >= last_modified


# Clients revalidate a popular page with the validators it was sent: the same few values
# again and again, each dearer to parse than to look up. The last results are kept (short
# values only: a request's header is the client's to choose).


def _request_etags(value: str) -> ETags:
    if len(value) <= _REMEMBERED_VALUE_MAX:
        return _remembered_etags(value)
    return parse_etags(value)


@functools.lru_cache(maxsize=256)
def _remembered_etags(value: str) -> ETags:
    return parse_etags(value)


@functools.lru_cache(maxsize=256)
def _etag_value(etag: str) -> str:
    """A stored ``ETag`` header's tag, unquoted (the app's few tags: remembered)."""
    return unquote_etag(etag)[0] or ""
