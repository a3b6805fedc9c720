"""The in-process response store: a thread-safe LRU with TTL, capped in items and in bytes.

Entries are measured when stored (see :mod:`wsgi_memopt.cache.entry`); the bytes the store
reports and enforces are theirs plus its bookkeeping: the tables that index them and the
keys it remembers. Reaching a cap evicts the least recently used. Hits take no lock.

    store = ResponseStore(max_items=500, max_bytes=25 << 20, item_max_bytes=2 << 20)
    key, entry = store.lookup(base_key, environ, store.clock())
"""

from __future__ import annotations

import logging
import math
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from ..settings import MB
from .entry import Entry, intern_scheme, part_size
from .flight import FETCH, Claim
from .policy import CacheKey, key_host, key_query, key_route, variant_key
from .remembered import RememberedKeys

__all__ = ["Entry", "ResponseStore", "Store"]

log = logging.getLogger("wsgi_memopt")


class Store(Protocol):
    """What the cache asks of a place that keeps responses: this module's in-process
    :class:`ResponseStore`, and :class:`~wsgi_memopt.cache.shared.SharedStore`, the same with
    Redis behind it. Each keeps its own byte accounting and reports it in :meth:`stats`."""

    def lookup(
        self, base_key: CacheKey, environ: Mapping[str, object], now: float
    ) -> tuple[CacheKey, Entry | None]:
        """The full key of the request (its ``Vary`` variant) and the entry stored under it,
        fresh or stale, while it is of use at ``now``."""
        ...

    def lookup_local(
        self, base_key: CacheKey, environ: Mapping[str, object], now: float
    ) -> tuple[CacheKey, Entry | None]:
        """:meth:`lookup` among this process's entries alone."""
        ...

    def claim(
        self,
        base_key: CacheKey,
        key: CacheKey,
        environ: Mapping[str, object],
        wait_s: float,
        wait: bool = True,
    ) -> Claim:
        """Single flight beyond this process, for the request that leads its fill of ``key``."""
        ...

    def put(self, entry: Entry, vary: tuple[str, ...] = ()) -> bool:
        """Store ``entry``; False when it does not fit."""
        ...

    def discard(self, entry: Entry) -> None:
        """Drop ``entry`` if it is still the one stored under its key."""
        ...

    def invalidate(self, path_prefix: str) -> int:
        """Drop the entries at ``path_prefix`` and below; how many."""
        ...

    def clear(self) -> tuple[int, int]:
        """Drop everything; ``(items, bytes)`` dropped."""
        ...

    def clear_local(self) -> tuple[int, int]:
        """Drop everything this process holds; ``(items, bytes)`` dropped."""
        ...

    def stats(self) -> dict[str, Any]:
        """Items, bytes and the store's own counts."""
        ...


class ResponseStore:
    """Thread-safe LRU + TTL store of :class:`Entry`, bounded by item count and by bytes.

    Reaching a cap evicts ``evict_fraction`` of the entries, least recently used first (and
    more if the new entry still does not fit). An entry whose body is over ``item_max_bytes``,
    or that is larger than the whole cache, is refused. Each kind of remembered key may take
    up to ``_REMEMBERED_SHARE`` of ``max_bytes``, within the same cap.
    Expired entries are dropped when looked up and swept at most every ``cleanup_interval_s``.
    With ``keep_for_s``, none is kept longer than that after it is stored (copies of entries
    that live elsewhere).
    """

    def __init__(
        self,
        *,
        max_items: int,
        max_bytes: int,
        item_max_bytes: int,
        evict_fraction: float = 0.3,
        cleanup_interval_s: float = 120.0,
        uncacheable_ttl_s: float = 120.0,
        keep_for_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_items = max_items
        self.keep_for_s = keep_for_s
        self.max_bytes = max_bytes
        self.item_max_bytes = min(item_max_bytes, max_bytes)
        self.evict_fraction = evict_fraction
        self.cleanup_interval_s = cleanup_interval_s
        self.clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[CacheKey, Entry] = OrderedDict()
        # base key -> [environ keys named by the newest Vary, number of variant entries]; a base
        # key absent here has no variants: its entry, if any, is under the base key itself.
        self._vary: dict[CacheKey, list[Any]] = {}
        # Keys whose last response could not be stored (see remember_uncacheable): the
        # anonymous request's lookup key, and the base key for a request with credentials.
        remembered_bytes = int(max_bytes * _REMEMBERED_SHARE)
        self._uncacheable = RememberedKeys(max_items, uncacheable_ttl_s, remembered_bytes)
        self._private = RememberedKeys(max_items, uncacheable_ttl_s, remembered_bytes)
        self._bytes = 0  # what the entries alone hold
        self._vary_bytes = 0  # the records of _vary, beside its table
        # (host, PATH_INFO, query) -> its entries: what an unsafe method's URI invalidates.
        self._by_uri: dict[tuple[Any, str, str], list[Entry]] = {}
        self._uri_bytes = 0  # the records of _by_uri, beside its table
        self._books = 0  # books_bytes as of the last store (see _make_room)
        self._next_sweep = clock() + cleanup_interval_s
        self.stores = self.evictions = self.expirations = 0

    # -- the request path

    def lookup(
        self, base_key: CacheKey, environ: Mapping[str, object], now: float
    ) -> tuple[CacheKey, Entry | None]:
        """The full key of this request (the variant its ``Vary`` values select, if the page
        varies) and the entry under it, or None. The entry may be stale (the caller reads
        ``expires``): one past its ``keep_until``, of no use any more, is dropped instead.
        Takes no lock: a hit only marks the entry as the most recently used."""
        # Most sites vary no page: then a key is hashed once less.
        vary = self._vary.get(base_key) if self._vary else None
        key = base_key if vary is None or not vary[0] else variant_key(base_key, vary[0], environ)
        entry = self._entries.get(key)
        if entry is None:
            return key, None
        if entry.keep_until <= now:
            with self._lock:
                if self._entries.get(key) is entry:
                    self._remove(entry)
                    self.expirations += 1
            return key, None
        try:  # noqa: SIM105 (a with block costs a hit several times as much)
            self._entries.move_to_end(key)
        except KeyError:
            pass  # evicted meanwhile by another thread: still the caller's to send
        return key, entry

    def takes(self, entry: Entry) -> bool:
        """Whether ``entry`` is within the item limit. The limit bounds the body, as the
        capture does while streaming and as the "stored" promise of Cache-Status assumes
        (the whole entry must also fit in the cache)."""
        return len(entry.body) <= self.item_max_bytes

    # This process's entries alone: here, all there is (a store with a level behind it
    # inherits this binding, and still means its own).
    lookup_local = lookup

    def claim(
        self,
        base_key: CacheKey,
        key: CacheKey,
        environ: Mapping[str, object],
        wait_s: float,
        wait: bool = True,
    ) -> Claim:
        """Single flight beyond this process: none here, so the fill's leader fetches."""
        return FETCH

    def put(self, entry: Entry, vary: tuple[str, ...] = ()) -> bool:
        """Store ``entry`` (replacing one under the same key); False when it is too large.

        ``vary`` holds the environ keys of the response's ``Vary`` headers: they name the
        request values that select this variant of ``entry.base_key``.
        """
        if not self.takes(entry):
            return False
        if self.keep_for_s is not None:
            entry.keep_until = min(entry.keep_until, self.clock() + self.keep_for_s)
        entry.size = entry.settle()
        with self._lock:
            entries = self._entries
            old = entries.get(entry.key)
            if old is not None:
                self._remove(old)
            # Larger than the whole cache even alone (its tables as large as they grew)?
            # Refused before anything is evicted for it.
            if not self._could_fit(entry.size) or not self._make_room(entry.size):
                return False
            for remembered in (self._uncacheable, self._private):
                if not remembered:
                    continue  # most caches remember no key, or few
                for key in (entry.key, entry.base_key):
                    if key in remembered:
                        remembered.forget(key)
            known = self._vary.get(entry.base_key)
            if vary:
                # A plain entry under the base key would be found first by the plain-hit path
                # (hot_path): the newest response says the page varies, so the plain one goes.
                plain = entries.get(entry.base_key)
                if plain is not None:
                    self._remove(plain)
                if known is None:
                    self._vary[entry.base_key] = [vary, 1]
                    self._vary_bytes += _VARY_RECORD + part_size(vary)
                else:
                    self._newest_vary(known, vary)
                    known[1] += 1
            elif known is not None:
                self._newest_vary(known, vary)  # "no Vary": look up the base key itself
            entries[entry.key] = entry
            self._index(entry)
            self._bytes += entry.size
            self.stores += 1
            # The table that indexes the entries may have grown with this one past the cap
            # (a table never shrinks: only the entries' own bytes go).
            books = self._books = self.books_bytes
            if self._bytes + books > self.max_bytes:
                self._evict_count(max(1, math.ceil((len(entries) - 1) * self.evict_fraction)))
                while len(entries) > 1 and self._bytes + books > self.max_bytes:
                    self._evict_count(1)
        return True

    def _newest_vary(self, known: list[Any], vary: tuple[str, ...]) -> None:
        # The newest response's Vary names the variants to look up.
        self._vary_bytes += part_size(vary) - part_size(known[0])
        known[0] = vary

    def discard(self, entry: Entry) -> None:
        """Drop ``entry`` if it is still the one stored under its key (its response failed
        after it was stored)."""
        with self._lock:
            if self._entries.get(entry.key) is entry:
                self._remove(entry)

    def is_uncacheable(self, key: CacheKey, now: float, credentials: bool = False) -> bool:
        """Whether ``key`` is remembered as uncacheable at ``now`` (see
        :meth:`remember_uncacheable`)."""
        remembered = self._private if credentials else self._uncacheable
        return remembered.get(key, 0.0) > now

    def remember_uncacheable(self, key: CacheKey, credentials: bool = False) -> None:
        """Remember that ``key``'s response could not be stored, for ``uncacheable_ttl_s``.

        Without ``credentials`` (a lookup key): its next misses skip single flight, since
        waiting for a response that will not be stored would queue every request of a
        ``no-store`` page behind another (Varnish's "hit-for-miss"); they are still captured.
        With ``credentials`` (a base key whose response to a request with credentials was
        not public): such requests pass through without a capture ("hit-for-pass"), while
        requests without credentials still capture, and store, what the page answers them.
        A key is forgotten when an entry is stored under it; each kind is bounded by
        ``max_items`` and by ``_REMEMBERED_SHARE`` of ``max_bytes``, the oldest forgotten
        first. Its bytes count in :attr:`bytes`: the least recently used entries make room.
        """
        remembered = self._private if credentials else self._uncacheable
        with self._lock:
            remembered.remember(intern_scheme(key), self.clock())
            books = self._books = self.books_bytes
            while self._entries and self._bytes + books > self.max_bytes:
                self._evict_count(1)

    # -- housekeeping

    def sweep_due(self) -> bool:
        """Whether the expired-entry sweep is due (a float compare, for the request path)."""
        return self.clock() >= self._next_sweep

    def sweep(self) -> int:
        """Drop every entry past its ``keep_until``; returns how many."""
        now = self.clock()
        with self._lock:
            self._next_sweep = now + self.cleanup_interval_s
            # list() first: a lock-free hit may reorder the dict while we look at it.
            expired = [e for e in list(self._entries.values()) if e.keep_until <= now]
            for entry in expired:
                self._remove(entry)
            self.expirations += len(expired)
        if expired:
            log.debug("[CACHE] swept %d expired entries", len(expired))
        return len(expired)

    def evict(self, fraction: float | None = None) -> int:
        """Drop ``fraction`` (default ``evict_fraction``) of the entries, LRU first."""
        with self._lock:
            return self._evict_count(
                math.ceil(
                    len(self._entries) * (self.evict_fraction if fraction is None else fraction)
                )
            )

    def clear(self) -> tuple[int, int]:
        """Drop everything; returns ``(items, bytes)`` dropped."""
        return self.clear_local()

    def clear_local(self) -> tuple[int, int]:
        """Drop everything this process holds; returns ``(items, bytes)`` dropped."""
        with self._lock:
            dropped = len(self._entries), self.bytes
            self._entries.clear()
            self._vary.clear()
            self._by_uri.clear()
            self._uncacheable.clear()
            self._private.clear()
            self._bytes = self._vary_bytes = self._uri_bytes = 0
            self._books = self.books_bytes
        return dropped

    def invalidate(self, path_prefix: str) -> int:
        """Drop the entries at ``path_prefix`` and below it; returns how many.

        Whole path segments: ``/a`` drops ``/a`` and ``/a/b``, not ``/about``.
        """
        below = path_prefix if path_prefix.endswith("/") else path_prefix + "/"
        with self._lock:
            doomed = [
                entry
                for entry in list(self._entries.values())
                if entry.path == path_prefix or entry.path.startswith(below)
            ]
            for entry in doomed:
                self._remove(entry)
            self._uncacheable.forget_under(path_prefix, below)
            self._private.forget_under(path_prefix, below)
        return len(doomed)

    def invalidate_uri(
        self,
        host: str,
        script_name: str,
        path_info: str,
        query: str,
        key: CacheKey | None = None,
    ) -> int:
        """Drop every entry of one URI (``host``, ``SCRIPT_NAME``, ``PATH_INFO``, ``query``),
        whatever its variants and keyed header values; returns how many. (``key``, the
        request's base key, is for a store whose URI index may lose records: not this one.)"""
        path = script_name + path_info
        with self._lock:
            bucket = self._by_uri.get((host, path_info, query), ())
            doomed = [entry for entry in bucket if entry.path == path]
            for entry in doomed:
                self._remove(entry)
        return len(doomed)

    def may_hold_uris(self) -> bool:
        """Whether an invalidation could find anything to drop (False: an empty store, so
        that an unsafe method in a cache that holds nothing costs nothing more)."""
        return bool(self._by_uri)

    def entries(self) -> list[Entry]:
        """A snapshot of the stored entries, least recently used first."""
        with self._lock:
            return list(self._entries.values())

    @property
    def bytes(self) -> int:
        """Bytes the cache holds: its entries (measured when stored) and its books."""
        return self._bytes + self.books_bytes

    @property
    def books_bytes(self) -> int:
        """The part of :attr:`bytes` that is bookkeeping: the tables that index the entries
        (as large as they have grown), the Vary records, the remembered keys."""
        return (
            sys.getsizeof(self._entries)
            - _EMPTY_ENTRIES
            + sys.getsizeof(self._vary)
            - _EMPTY_DICT
            + self._vary_bytes
            + sys.getsizeof(self._by_uri)
            - _EMPTY_DICT
            + self._uri_bytes
            + self._uncacheable.bytes
            + self._private.bytes
        )

    def __len__(self) -> int:
        return len(self._entries)

    def stats(self) -> dict[str, Any]:
        """Counters and sizes, read under the lock so they agree with each other."""
        with self._lock:
            return {
                "items": len(self._entries),
                "bytes": self.bytes,
                "books_bytes": self.books_bytes,
                "size_mb": round(self.bytes / MB, 3),
                "max_items": self.max_items,
                "max_bytes": self.max_bytes,
                "stores": self.stores,
                "evictions": self.evictions,
                "expirations": self.expirations,
            }

    def close(self) -> None:
        """Stop what the store runs beside the requests: nothing here (a shared store's
        invalidation listener)."""

    def after_fork(self) -> None:
        """In a forked child: locks another thread held at the fork stay held for good, and
        the single-flight fills in progress belonged to threads that are gone."""
        self._lock = threading.Lock()
        self._uncacheable.after_fork()
        self._private.after_fork()

    # -- under the lock

    def _remove(self, entry: Entry) -> None:
        del self._entries[entry.key]
        self._forget(entry)

    def _index(self, entry: Entry) -> None:
        """File ``entry`` under its URI (see :meth:`invalidate_uri`)."""
        uri = _uri_of(entry)
        bucket = self._by_uri.get(uri)
        if bucket is None:
            bucket = self._by_uri[uri] = []
            self._uri_bytes += _URI_RECORD
        before = sys.getsizeof(bucket)
        bucket.append(entry)
        self._uri_bytes += sys.getsizeof(bucket) - before

    def _unindex(self, entry: Entry) -> None:
        uri = _uri_of(entry)
        bucket = self._by_uri.get(uri)
        if bucket is None or entry not in bucket:
            return
        before = sys.getsizeof(bucket)
        bucket.remove(entry)
        if bucket:
            self._uri_bytes += sys.getsizeof(bucket) - before
        else:
            del self._by_uri[uri]
            self._uri_bytes -= before + _URI_RECORD - _EMPTY_LIST

    def _forget(self, entry: Entry) -> None:
        """Account for ``entry`` having left ``_entries``."""
        self._unindex(entry)
        self._bytes -= entry.size
        if entry.key is not entry.base_key:
            vary = self._vary.get(entry.base_key)
            if vary is not None:
                vary[1] -= 1
                if vary[1] <= 0:
                    del self._vary[entry.base_key]
                    self._vary_bytes -= _VARY_RECORD + part_size(vary[0])

    def _evict_count(self, count: int) -> int:
        evicted = 0
        while evicted < count and self._entries:
            # popitem is one C call, safe against a lock-free hit reordering the dict.
            _, entry = self._entries.popitem(last=False)
            self._forget(entry)
            evicted += 1
        self.evictions += evicted
        return evicted

    def _could_fit(self, size: int) -> bool:
        tables = self._books - self._uncacheable.bytes - self._private.bytes
        return size + tables <= self.max_bytes

    def _make_room(self, size: int) -> bool:
        """Evict until one more item of ``size`` bytes fits: ``evict_fraction`` of the
        entries when a cap is reached, then one at a time, then the oldest remembered keys.
        False when it cannot fit even so."""
        entries = self._entries
        # For the entries' own bytes: the books as the last store left them (measuring them
        # costs more than the rest of this). Evictions since only made them smaller.
        room = self.max_bytes - size - self._books
        if len(entries) >= self.max_items or self._bytes > room:
            self._evict_count(max(1, math.ceil(len(entries) * self.evict_fraction)))
        while entries and (len(entries) >= self.max_items or self._bytes > room):
            self._evict_count(1)
        if self._bytes <= room:
            return True
        # No entry left, and still no room: the remembered keys make it, if they can.
        for remembered in (self._uncacheable, self._private):
            while remembered and self.bytes + size > self.max_bytes:
                remembered.forget_oldest()
        self._books = self.books_bytes
        return self._bytes + self._books + size <= self.max_bytes


# Each kind of remembered key (hit-for-miss, hit-for-pass) may hold this share of the cap.
_REMEMBERED_SHARE = 0.1
_EMPTY_ENTRIES = sys.getsizeof(OrderedDict())
_EMPTY_DICT = sys.getsizeof({})
_VARY_RECORD = sys.getsizeof([(), 0])  # [environ keys, variants]: the list itself
_EMPTY_LIST = sys.getsizeof([])
_URI_RECORD = sys.getsizeof(("", "", "")) + _EMPTY_LIST  # the key tuple, an empty bucket


def _uri_of(entry: Entry) -> tuple[Any, str, str]:
    """Where the URI index files ``entry``: its host, ``PATH_INFO`` and query, the key's own
    strings (the index holds no new ones)."""
    base = entry.base_key
    return (key_host(base), key_route(base), key_query(base))


if TYPE_CHECKING:
    _IN_PROCESS_IS_A_STORE: type[Store] = ResponseStore
    from .shared import SharedStore

    _SHARED_IS_A_STORE: type[Store] = SharedStore
