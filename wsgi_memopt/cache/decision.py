"""The cache's decision: what one request gets, and why.

:class:`ResponseCache` reads a request's ``environ`` and what is stored, and decides one of:

- **serve** the stored response (or a ``304`` from it, when the request's validators match);
- **fetch** the app's response, streamed to the client and stored if its headers allow
  (a miss; or ``fwd=request``: the client asked for a fresh copy);
- **pass** the request through to the app, with the reason in ``Cache-Status``.

The rules are those of :mod:`wsgi_memopt.cache.policy`, asked in the order below, one ``if``
each. :meth:`ResponseCache.plain_hit` is the same decision for the commonest request (a GET or
HEAD with none of the headers that change the plan), derived from the same rule data; the test
suite holds the two to the same answers.

    cache = ResponseCache(settings)
    decision = cache.decide(environ)
    if decision.route is Route.SERVE: ...
"""

from __future__ import annotations

import contextlib
import enum
import functools
import itertools
import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from werkzeug.http import http_date as werkzeug_http_date

from ..backend import parse_backend
from ..counting import Tally, read_count
from ..settings import MB
from .entry import Entry
from .flight import Fill, Flights
from .policy import (
    PRECONDITION_KEYS,
    SAFE_METHODS,
    CacheKey,
    ResponseVerdict,
    assess_response,
    bypass_environ_keys,
    has_body,
    has_credentials,
    is_not_modified,
    key_host,
    key_variables,
    path_filter,
    plan_environ_keys,
    request_directives,
)
from .store import ResponseStore

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = ["Decision", "ResponseCache", "Route", "cache_status", "stored_response"]

_CACHEABLE_METHODS = ("GET", "HEAD")
# Fields a 304 does not update (RFC 9111 §3.2): they describe the stored body, which the 304
# does not replace, and its validator.
_KEPT_ON_REVALIDATION = frozenset(
    {"content-length", "content-encoding", "content-md5", "content-range", "etag"}
)
# How long a page whose response could not be stored is remembered as such (at most
# cache_ttl_s): Varnish's default for its hit-for-miss and hit-for-pass objects.
_REMEMBER_UNCACHEABLE_S = 120.0


class Route(enum.Enum):
    """Where a request's response comes from."""

    SERVE = "serve"  # the stored response, fresh
    SERVE_STALE = "serve-stale"  # the stored response, stale: refreshed after it is sent
    FETCH = "fetch"  # the app's, captured to be stored (asked conditionally to revalidate)
    PASS = "pass"  # the app's, untouched but for Cache-Status


class Decision(NamedTuple):
    """What the cache decided for one request.

    ``forward`` and ``detail`` are the ``fwd=`` and ``detail=`` of ``Cache-Status`` (RFC
    9211) for a response not served from the cache (``forward`` None: the cache is off, no
    header at all). A fetch carries the base ``key`` to store under, whether the request has
    ``credentials``, the single-flight ``fill`` it leads, if any, and the stale ``entry`` it
    revalidates (and serves if the app fails within its stale-if-error window), if any. A
    stale serve carries the ``fill`` of the refresh it leads, if any.
    """

    route: Route
    forward: str | None = None
    detail: str | None = None
    entry: Entry | None = None
    key: CacheKey | None = None
    credentials: bool = False
    fill: Fill | None = None


def _may_serve(entry: Entry, credentials: bool) -> bool:
    """One user's page must never reach another: a request with credentials is served only
    what a response marked ``public`` or ``s-maxage``."""
    return not credentials or entry.shareable_with_credentials


@functools.cache  # a few dozen (forward, detail) pairs, all ours
def passing(forward: str | None, detail: str | None = None) -> Decision:
    """The decision to pass a request through, with its ``Cache-Status`` words."""
    return Decision(Route.PASS, forward, detail)


@functools.cache
def cache_status(
    forward: str, detail: str | None = None, stored: bool = False
) -> tuple[tuple[str, str], ...]:
    """``Cache-Status`` (RFC 9211) and ``X-Cache`` of a response not served from the cache."""
    value = f"wsgi-memopt; fwd={forward}"
    if stored:
        value += "; stored"
    if detail is not None:
        value += f"; detail={detail}"
    return (("Cache-Status", value), ("X-Cache", "MISS"))


def _field(headers: Entry | list[tuple[str, str]], name: str) -> str | None:
    """One field's value in a header list (or an entry's), its lines joined; None if absent."""
    pairs = headers.headers if isinstance(headers, Entry) else headers
    values = [value for key, value in pairs if key.lower() == name]
    return ", ".join(values) if values else None


def _opaque_tag(etag: str) -> str:
    """An entity tag without its weakness (RFC 9110 §8.8.3.2: weak comparison)."""
    etag = etag.strip()
    return etag[2:] if etag.startswith("W/") else etag


def stored_response(
    entry: Entry, environ: Mapping[str, Any], now: float, status_value: str | None = None
) -> tuple[str, list[tuple[str, str]], bytes | None]:
    """What a request is answered from ``entry`` at ``now``: a ``304`` when its validators
    match the request's (RFC 9110 §13.2.2), else the stored response (its body for a GET,
    none for a HEAD). ``status_value`` replaces the ``Cache-Status`` of a plain hit."""
    conditional = "HTTP_IF_NONE_MATCH" in environ or "HTTP_IF_MODIFIED_SINCE" in environ
    if conditional and is_not_modified(environ, entry.etag, entry.modified):
        status, headers, body = "304 Not Modified", entry.not_modified_headers_at(now), None
    else:
        status, headers = entry.status, entry.hit_headers(now)
        body = entry.body if environ.get("REQUEST_METHOD") == "GET" else None
    if status_value is not None:
        headers = [
            (name, status_value if name == "Cache-Status" else value) for name, value in headers
        ]
    return status, headers, body


class ResponseCache:
    """Decides what each request gets, and keeps the responses it may store in ``store``.

    Built from the middleware's :class:`~wsgi_memopt.Settings`: the key (``cache_key_headers``),
    the path rules, single flight (``cache_lock_timeout_s``) and what a response needs to be
    stored (``cache_statuses``, ``cache_ttl_s``, ``cache_default_ttl_s``, the item limit).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        store: ResponseStore | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.enabled = settings.cache_enabled
        self.item_limit = int(min(settings.cache_item_max_mb, settings.cache_max_mb) * MB)
        self.statuses = frozenset(settings.cache_statuses)
        self.ttl_cap = settings.cache_ttl_s
        self.default_ttl = settings.cache_default_ttl_s
        self.targeted_fields = settings.cache_targeted_fields
        self.lock_wait_s = settings.cache_lock_timeout_s
        keyed = settings.cache_key_headers
        self._key_variables = key_variables(keyed)
        self.store = store if store is not None else self._make_store(settings, clock)
        self.flights = Flights()
        self._plan_headers = plan_environ_keys(keyed)
        self._bypass_headers = bypass_environ_keys(keyed)
        self._path_allowed = path_filter(settings.cache_paths, settings.cache_exclude_paths)
        # Counted without a lock: next() on a count is one C call, atomic under the GIL.
        self._hits = itertools.count()
        self._misses = itertools.count()
        self._bypassed = Tally()
        self._rejected = Tally()
        self._stale = Tally()  # stale responses served or revalidated, by how
        # Made now: a response collected unclosed is counted from a finalizer, which may run
        # where the tally's lock is held, so that count must never need the lock.
        self._rejected.counter("dropped")

    def _make_store(self, settings: Settings, clock: Callable[[], float]) -> ResponseStore:
        """This process's store; with a shared ``cache_backend``, in front of Redis."""
        local: dict[str, Any] = {
            "max_items": settings.cache_max_items,
            "max_bytes": int(settings.cache_max_mb * MB),
            "item_max_bytes": self.item_limit,
            "evict_fraction": settings.cache_evict_fraction,
            "cleanup_interval_s": settings.cache_cleanup_interval_s,
            "uncacheable_ttl_s": min(settings.cache_ttl_s, _REMEMBER_UNCACHEABLE_S),
            "clock": clock,
        }
        address = parse_backend(settings.cache_backend)
        if address is None:
            return ResponseStore(**local)
        from .redis_store import RedisStore
        from .shared import SharedStore

        shared = RedisStore(
            address,
            prefix=settings.cache_redis_prefix,
            timeout_s=settings.cache_redis_timeout_s,
            retry_s=settings.cache_redis_retry_s,
            secret=settings.cache_redis_secret,
            key_names=self._key_variables,
        )
        return SharedStore(shared, local_ttl_s=settings.cache_local_ttl_s, **local)

    @property
    def clock(self) -> Callable[[], float]:
        """The store's monotonic clock: every deadline of the cache is read off it."""
        return self.store.clock

    @clock.setter
    def clock(self, clock: Callable[[], float]) -> None:
        self.store.clock = clock

    def key(self, environ: Mapping[str, Any]) -> CacheKey:
        """The base key of a request (see :data:`~wsgi_memopt.cache.policy.KEY_VARIABLES`)."""
        return tuple(map(environ.get, self._key_variables))

    # -- deciding

    def plain_hit(self, environ: Mapping[str, Any]) -> Entry | None:
        """The fast path: the stored response for a GET or HEAD that carries none of the
        headers that change the plan, when :meth:`decide` would serve it; else None (ask
        :meth:`decide`). Counts the hits it finds, and nothing else.

        It skips three rules that cannot apply to such a request: the path rules and the
        ``Host`` rule (an entry is only ever stored under a key they allow) and single flight
        (a hit has nothing to wait for).
        """
        if (
            not self.enabled
            or environ.get("REQUEST_METHOD") not in _CACHEABLE_METHODS
            or not self._plan_headers.isdisjoint(environ)
            or has_body(environ)
        ):
            return None
        now = self.store.clock()
        # This process's entries alone: a shared store is asked by decide, once.
        _, entry = self.store.lookup_local(self.key(environ), environ, now)
        if entry is None or now >= entry.expires or not _may_serve(entry, has_credentials(environ)):
            return None
        next(self._hits)
        return entry

    def decide(self, environ: Mapping[str, Any]) -> Decision:
        """What this request gets: serve, fetch or pass (see the module docstring)."""
        if not self.enabled:
            return passing(None)
        method = environ.get("REQUEST_METHOD")
        if method not in _CACHEABLE_METHODS:
            return self._pass("method")  # only GET and HEAD are served from the cache
        no_store, refresh = request_directives(environ)
        if no_store:
            return self._pass("bypass", "request-no-store")
        if not self._bypass_headers.isdisjoint(environ):
            return self._pass("bypass", "forwarding-header")  # a URL the key does not hold
        if has_body(environ):
            return self._pass("bypass", "request-body")  # a page of what the key does not hold
        key = self.key(environ)
        if key_host(key) is None:
            return self._pass("bypass", "no-host")  # the app may build URLs of another name
        if self._path_allowed is not None and not self._path_allowed(key):
            return self._pass("bypass", "path")
        credentials = has_credentials(environ)
        if refresh:
            # The client wants a fresh copy: fetched, and stored for the others.
            if method == "HEAD":
                return self._pass("request", "head")  # nothing to refresh the entry with
            return self._fetch(key, "request", credentials)
        now = self.store.clock()
        lookup_key, entry = self.store.lookup(key, environ, now)
        if entry is not None and _may_serve(entry, credentials):
            if now < entry.expires:
                return self._serve(entry)
            if now < entry.swr_until:
                # Stale, within stale-while-revalidate: served now, one refresh after it.
                fill, _ = self.flights.join(lookup_key, self.lock_wait_s, now)
                if fill is not None:
                    fill = self._claimed(fill, key, environ)
                next(self._hits)
                return Decision(Route.SERVE_STALE, "stale", None, entry, key, credentials, fill)
            if method == "GET":
                # Stale: the app is asked (conditionally, when it has a validator); the stored
                # response stands in if the app fails within its stale-if-error window.
                if credentials or self.lock_wait_s <= 0:
                    return self._fetch(key, "stale", credentials, entry=entry)
                return self._fetch_once(key, lookup_key, environ, stale=entry)
        if method == "HEAD":
            return self._pass("miss", "head")  # a HEAD response has no body to store
        if credentials:
            # Never waits for another's fill: that response may not be public.
            if self.store.is_uncacheable(key, now, credentials=True):
                # The page's last response to credentials was not public: no capture.
                return self._pass("miss", "credentials")
            return self._fetch(key, credentials=True)
        if self.lock_wait_s <= 0 or self.store.is_uncacheable(lookup_key, now):
            # No single flight, or nothing to wait for: the last response was not storable.
            return self._fetch(key)
        return self._fetch_once(key, lookup_key, environ)

    def _fetch_once(
        self,
        key: CacheKey,
        lookup_key: CacheKey,
        environ: Mapping[str, Any],
        stale: Entry | None = None,
    ) -> Decision:
        """Single flight: the first miss of a key (or the first request of a ``stale``
        entry) fetches it; the others wait for its response (at most
        ``cache_lock_timeout_s``), then serve it or fetch themselves."""
        forward = "miss" if stale is None else "stale"
        fill, event = self.flights.join(lookup_key, self.lock_wait_s, self.store.clock())
        if event is not None:
            event.wait(self.lock_wait_s)
            now = self.store.clock()
            _, entry = self.store.lookup(key, environ, now)
            if entry is not None and now < entry.expires:
                return self._serve(entry)
            return self._fetch(key, forward, entry=stale)
        assert fill is not None
        # Stored by the previous fill between our lookup and now?
        now = self.store.clock()
        _, entry = self.store.lookup_local(key, environ, now)
        if entry is None or now >= entry.expires:
            # Another process may be fetching it: the store waits for that one's entry.
            claim = self.store.claim(key, lookup_key, environ, self.lock_wait_s)
            fill.release = claim.release
            entry = claim.entry
            if claim.fetch:
                return self._fetch(key, forward, fill=fill, entry=stale)
        self.flights.end(fill)
        if entry is None:
            return self._fetch(key, forward, entry=stale)
        return self._serve(entry)

    def _claimed(self, fill: Fill, key: CacheKey, environ: Mapping[str, Any]) -> Fill | None:
        """``fill`` when this process's refresh of a stale entry is the only one (another
        process may be refreshing it already: then None, and the fill ends)."""
        claim = self.store.claim(key, fill.key, environ, self.lock_wait_s, wait=False)
        if claim.fetch:
            fill.release = claim.release
            return fill
        self.flights.end(fill)
        return None

    # Each request is counted once, as what it ends as: a hit, a miss (fetched, or a HEAD or
    # credentials miss passed through) or a bypass by reason.

    def _serve(self, entry: Entry) -> Decision:
        next(self._hits)
        return Decision(Route.SERVE, entry=entry)

    def _fetch(
        self,
        key: CacheKey,
        forward: str = "miss",
        credentials: bool = False,
        fill: Fill | None = None,
        entry: Entry | None = None,
    ) -> Decision:
        if forward != "request":
            next(self._misses)
        return Decision(Route.FETCH, forward, None, entry, key, credentials, fill)

    def passing_on_error(self) -> Decision:
        """The decision for a request whose deciding failed: passed through, and counted
        (if counting works: the request's response comes first)."""
        with contextlib.suppress(Exception):
            self._bypassed.add("cache-error")
        return passing(None)

    def _pass(self, forward: str, detail: str | None = None) -> Decision:
        if forward == "miss":
            next(self._misses)
        self._bypassed.add(detail or forward)
        return passing(forward, detail)

    # -- what became of responses

    def assess(
        self, status: str, headers: list[tuple[str, str]], credentials: bool
    ) -> ResponseVerdict:
        """Whether a response to a GET may be stored, by this cache's settings."""
        return assess_response(
            status,
            headers,
            credentials,
            self.statuses,
            self.item_limit,
            self.ttl_cap,
            default_ttl=self.default_ttl,
            targeted=self.targeted_fields,
        )

    def entry_for(
        self,
        key: CacheKey,
        base_key: CacheKey,
        status: str,
        headers: list[tuple[str, str]],
        body: bytes,
        verdict: ResponseVerdict,
        requested_at: float,
        responded_at: float,
    ) -> Entry:
        """The entry of a response that ``verdict`` lets store; ``requested_at`` and
        ``responded_at`` (POSIX seconds) date the request that fetched it. Its initial age
        is RFC 9111 §4.2.3's: the larger of what its ``Date`` says and its ``Age`` plus the
        time the fetch took."""
        apparent = max(responded_at - verdict.date, 0.0) if verdict.date is not None else 0.0
        initial_age = max(apparent, verdict.age + max(responded_at - requested_at, 0.0))
        return Entry(
            key,
            base_key,
            status,
            tuple(headers),
            body,
            self.store.clock(),
            verdict.lifetime,
            verdict.shareable_with_credentials,
            verdict.etag,
            verdict.last_modified,
            initial_age=initial_age,
            must_revalidate=verdict.must_revalidate,
            stale_while_revalidate=verdict.stale_while_revalidate,
            stale_if_error=verdict.stale_if_error,
            revalidate_for=self.ttl_cap,
            date=verdict.date,
        )

    def same_representation(self, stale: Entry, headers: list[tuple[str, str]]) -> bool:
        """Whether a ``304`` speaks of ``stale``'s representation: the validators it sends
        (ETag, strong or weak; Last-Modified) are the stored ones (RFC 9111 §4.3.4)."""
        for name, value in headers:
            lower = name.lower()
            if lower == "etag" and _opaque_tag(value) != _opaque_tag(stale.etag or ""):
                return False
            if lower == "last-modified" and value != _field(stale, "last-modified"):
                return False
        return True

    def revalidated(
        self,
        stale: Entry,
        headers: list[tuple[str, str]],
        credentials: bool,
        requested_at: float,
        responded_at: float,
    ) -> Entry:
        """``stale`` freshened by a ``304`` with ``headers`` (RFC 9111 §4.3.4): each field the
        304 sends replaces the stored one (but those that describe the stored body and its
        identity, :data:`_KEPT_ON_REVALIDATION`), and the entry is stored again if the result
        may be. Returned either way: the
        304 validated it for the request that asked."""
        sent = {name.lower() for name, _ in headers} - _KEPT_ON_REVALIDATION
        if "date" not in sent:
            # Its age counts from this 304 (RFC 9111 §4.2.3), not from the first response.
            sent.add("date")
            headers = [*headers, ("Date", werkzeug_http_date(responded_at))]
        merged = [pair for pair in stale.headers if pair[0].lower() not in sent]
        merged += [pair for pair in headers if pair[0].lower() in sent]
        verdict = self.assess(stale.status, merged, credentials)
        # A 304 that changes Vary changes the key the entry belongs under: served this once.
        storable = verdict.reason is None and _field(stale, "vary") == _field(merged, "vary")
        if not storable:
            self.store.discard(stale)  # served this once, never again
        entry = self.entry_for(
            stale.key,
            stale.base_key,
            stale.status,
            merged,
            stale.body,
            verdict,
            requested_at,
            responded_at,
        )
        if storable and self.store.clock() < entry.keep_until:
            self.stored(entry, verdict.vary)
        return entry

    def served_stale(self, how: str) -> None:
        """Count a stale response served (``stale-while-revalidate``, ``stale-if-error``) or
        freshened by the app's ``304`` (``revalidated``)."""
        self._stale.add(how)

    def revalidation_environ(self, environ: Mapping[str, Any], entry: Entry) -> dict[str, Any]:
        """A copy of ``environ`` that asks the app for ``entry``'s URL only if it changed:
        the client's own preconditions replaced by the entry's validators (RFC 9111 §4.3.1)."""
        conditional = {k: v for k, v in environ.items() if k not in PRECONDITION_KEYS}
        conditional["REQUEST_METHOD"] = "GET"  # a HEAD's refresh fetches the body to store
        if entry.etag is not None:
            conditional["HTTP_IF_NONE_MATCH"] = entry.etag
        last_modified = next(
            (value for name, value in entry.headers if name.lower() == "last-modified"), None
        )
        if last_modified is not None:
            conditional["HTTP_IF_MODIFIED_SINCE"] = last_modified
        return conditional

    def invalidate_after(
        self, environ: Mapping[str, Any], status: str, headers: list[tuple[str, str]]
    ) -> int:
        """After a response to an unsafe method: when it is not an error, drop what is
        stored for the request's URI and for the same-host URIs its ``Location`` and
        ``Content-Location`` name (RFC 9111 §4.4); returns how many entries went."""
        if environ.get("REQUEST_METHOD") in SAFE_METHODS or not "200" <= status[:3] < "400":
            return 0
        host = environ.get("HTTP_HOST")
        if not host or not self.store.may_hold_uris():
            return 0
        script = str(environ.get("SCRIPT_NAME", ""))
        path_info = str(environ.get("PATH_INFO", ""))
        query = str(environ.get("QUERY_STRING", ""))
        dropped = self.store.invalidate_uri(host, script, path_info, query, self.key(environ))
        here = f"{environ.get('wsgi.url_scheme', 'http')}://{host}"
        base = here + urllib.parse.quote(script + path_info)
        for name, value in headers:
            if name.lower() in ("location", "content-location"):
                target = urllib.parse.urlsplit(urllib.parse.urljoin(base, value))
                # PEP 3333: PATH_INFO holds the request's bytes decoded as latin-1.
                path = urllib.parse.unquote(target.path, encoding="latin-1")
                if target.netloc == host and path.startswith(script):
                    route = path[len(script) :]
                    dropped += self.store.invalidate_uri(host, script, route, target.query)
        return dropped

    def refused(self, reason: str) -> None:
        """Count a response that was not stored, by reason."""
        self._rejected.add(reason)

    def stored(self, entry: Entry, vary: tuple[str, ...]) -> bool:
        """Store a whole response; False when it does not fit. Expired entries are swept
        now and then: the cache grows only by a store."""
        if not self.store.put(entry, vary):
            return False
        if self.store.sweep_due():
            self.sweep()
        return True

    # -- what the memory API and the governor see

    def stats(self) -> dict[str, Any]:
        """The store's figures, and what the requests and responses came to."""
        hits, misses = read_count(self._hits), read_count(self._misses)
        lookups = hits + misses
        return {
            **self.store.stats(),
            "hits": hits,
            "misses": misses,
            "hit_rate": round(hits / lookups, 4) if lookups else 0.0,
            "rejected": self._rejected.snapshot(),
            "bypassed": self._bypassed.snapshot(),
            "stale": self._stale.snapshot(),
        }

    @property
    def bytes(self) -> int:
        """Bytes the store holds, its bookkeeping included."""
        return self.store.bytes

    def __len__(self) -> int:
        return len(self.store)

    def entries(self) -> list[Entry]:
        """A snapshot of the stored entries, least recently used first."""
        return self.store.entries()

    def invalidate(self, path_prefix: str) -> int:
        """Drop the entries at ``path_prefix`` and below; returns how many."""
        return self.store.invalidate(path_prefix)

    def clear(self) -> tuple[int, int]:
        """Drop every entry (with a shared store: there and in every process too); returns
        ``(items, bytes)`` dropped here."""
        return self.store.clear()

    def clear_local(self) -> tuple[int, int]:
        """Drop every entry this process holds (what the governor frees in an emergency);
        returns ``(items, bytes)`` dropped."""
        return self.store.clear_local()

    def sweep(self) -> int:
        """Drop expired entries and abandoned fills; returns how many entries."""
        self.flights.forget_abandoned()
        return self.store.sweep()

    def evict(self) -> int:
        """Drop ``cache_evict_fraction`` of the entries, least recently used first."""
        return self.store.evict()

    def close(self) -> None:
        """Stop what the store runs beside the requests (a shared store's listener)."""
        self.store.close()

    def after_fork(self) -> None:
        """In a forked child: the parent's fills and locks are not this process's."""
        self.flights.after_fork()
        self.store.after_fork()
        self._bypassed = Tally()._adopt(self._bypassed)
        self._rejected = Tally()._adopt(self._rejected)
        self._stale = Tally()._adopt(self._stale)
