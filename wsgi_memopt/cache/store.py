"""The in-process response store: a thread-safe LRU with TTL, capped in items and in bytes.

Sizes are measured, not guessed: an entry's size is the ``sys.getsizeof`` of every object it
holds (body, key, each header name and value and the tuples around them) plus the shell of
the entry itself, which is measured once with ``pympler.asizeof``. The test suite checks the
total against ``pympler.asizeof`` of the stored entries.

    store = ResponseStore(max_items=500, max_bytes=25 << 20, item_max_bytes=2 << 20)
    key, entry = store.lookup(base_key, environ)
"""

from __future__ import annotations

import itertools
import logging
import math
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from ..counting import read_count
from .policy import CacheKey, variant_key

__all__ = ["Entry", "ResponseStore"]

log = logging.getLogger("wsgi_memopt")

Headers = tuple[tuple[str, str], ...]


class Entry:
    """One stored response: status, headers and the whole body as one ``bytes`` object."""

    __slots__ = (
        "base_key",
        "body",
        "created",
        "etag",
        "expires",
        "headers",
        "key",
        "last_modified",
        "not_modified_headers",
        "path",
        "replay_headers",
        "shareable_with_credentials",
        "shared",
        "size",
        "status",
    )

    def __init__(
        self,
        *,
        key: CacheKey,
        base_key: CacheKey,
        path: str,
        status: str,
        headers: Headers,
        body: bytes,
        created: float,
        lifetime: float,
        shareable_with_credentials: bool = False,
        etag: str | None = None,
        last_modified: float | None = None,
    ) -> None:
        self.key = key
        self.base_key = base_key
        self.path = path
        self.status = status
        self.headers = headers
        self.body = body
        self.created = created
        self.expires = created + lifetime
        self.shareable_with_credentials = shareable_with_credentials
        self.etag = etag
        self.last_modified = last_modified
        # RFC 9110 §15.4.5: a 304 carries the validators and caching headers, not the body's.
        self.not_modified_headers: Headers = tuple(
            (name, value) for name, value in headers if name.lower() in _KEPT_ON_304
        )
        # (valid until, the headers a hit replays): rebuilt once per whole second of age, so
        # that a hit copies a list instead of formatting three headers; first built by
        # share_parts() when stored, so its memory is always accounted.
        self.replay_headers: tuple[float, list[tuple[str, str]]] = _NOT_BUILT
        self.size = 0
        self.shared: tuple[object, ...] = ()  # the store's single copies this entry holds

    def share_parts(self, shared: SharedObjects) -> int:
        """Swap small strings and header pairs for the store's single copies of them.

        A thousand entries of one app repeat the same header names, values and status line;
        held once, they cost once (see :class:`SharedObjects`). Builds the derived header
        lists from the shared pairs. Returns the bytes of the header pairs this entry keeps
        as its own (those with long values).
        """
        headers, held, own_bytes = shared.share_headers(self.headers)
        if self.etag is not None:
            for name, value in headers:
                if name.lower() == "etag":
                    self.etag = value  # the header's own string, not a second copy
        self.headers = headers
        share = shared.share
        self.status = share(self.status)  # type: ignore[assignment]
        scheme, host, *rest = self.base_key
        base_key = (share(scheme), share(host), *rest)
        held += (self.status, base_key[0], base_key[1])
        self.key = base_key if self.key == self.base_key else (base_key, self.key[1])
        self.base_key = base_key
        self.not_modified_headers = tuple(
            pair for pair in headers if pair[0].lower() in _KEPT_ON_304
        )
        self.replay_headers = self._headers_at(self.created)
        # The hit-header constants are the module's; the store counts them once.
        self.shared = (*held, *_HIT_CONSTANTS)
        return own_bytes

    def own_size(self, own_header_bytes: int) -> int:
        """Bytes this entry alone holds once :meth:`share_parts` ran, walked along its known
        shape; its shared objects and the interpreter's singletons are not its own."""
        a, g, part = _aligned, sys.getsizeof, _part_size
        base, key = self.base_key, self.key
        valid_until, hit = self.replay_headers
        age, status = hit[-3], hit[-2]  # fresh pairs with fresh values; X-Cache is a constant
        size = (
            a(g(base))
            + sum(map(part, base[2:]))
            + a(g(self.headers))
            + own_header_bytes
            + part(self.body)
            + part(self.not_modified_headers)
            + a(g(self.replay_headers))
            + a(g(valid_until))
            + a(g(hit))
            + a(g(age))
            + part(age[1])
            + a(g(status))
            + a(g(status[1]))
            + a(g(self.shared))
        )
        if key is not base:
            size += a(g(key)) + part(key[1])
        if self.path is not base[2]:
            size += part(self.path)
        if self.last_modified is not None:
            size += a(g(self.last_modified))
        return size

    def _headers_at(self, now: float) -> tuple[float, list[tuple[str, str]]]:
        # A request that waited for another's fetch read the clock before the entry existed.
        age = max(int(now - self.created), 0)
        ttl = max(round(self.expires - self.created) - age, 0)
        return self.created + age + 1, [
            *self.headers,
            (_AGE, str(age)),
            (_CACHE_STATUS, f"wsgi-memopt; hit; ttl={ttl}"),
            _X_CACHE_HIT,
        ]

    def hit_headers(self, now: float) -> list[tuple[str, str]]:
        """A fresh list of the headers to replay at ``now`` (the server may change it)."""
        cached = self.replay_headers
        # Rebuilt once per second of age; ``now`` below ``created`` (a waiter's clock) too.
        if not self.created <= now < cached[0]:
            cached = self.rebuild_hit_headers(now)
        return cached[1][:]

    def rebuild_hit_headers(self, now: float) -> tuple[float, list[tuple[str, str]]]:
        """Age the cached hit headers to ``now``: ``(valid until, headers)``."""
        cached = self.replay_headers = self._headers_at(now)
        return cached

    def not_modified_headers_at(self, now: float) -> list[tuple[str, str]]:
        """The headers of a ``304`` answered from this entry at ``now``."""
        return [*self.not_modified_headers, *self.hit_headers(now)[-3:]]


_NOT_BUILT: tuple[float, list[tuple[str, str]]] = (float("-inf"), [])
_KEPT_ON_304 = frozenset({"cache-control", "content-location", "date", "etag", "expires", "vary"})
_AGE = "Age"
_CACHE_STATUS = "Cache-Status"
_X_CACHE_HIT = ("X-Cache", "HIT")
_HIT_CONSTANTS = (_AGE, _CACHE_STATUS, *_X_CACHE_HIT, _X_CACHE_HIT)
_HIT_CONSTANT_BYTES = sum((sys.getsizeof(obj) + 7) & ~7 for obj in _HIT_CONSTANTS)
# Header values up to this length are shared between entries; longer ones are rarely equal.
_SHARED_VALUE_MAX = 256


class SharedObjects:
    """One copy of each small object many entries hold, counted once while any holds it.

    Not thread safe by itself: the store calls it under its lock.
    """

    def __init__(self) -> None:
        self._records: dict[object, list[Any]] = {}  # value -> [the copy, holders, bytes]
        self.bytes = 0

    def share(self, obj: object) -> object:
        """The single copy equal to ``obj`` (``obj`` itself the first time), one more holder."""
        record = self._records.get(obj)
        if record is None:
            record = self._records[obj] = [obj, 0, _aligned(sys.getsizeof(obj))]
            self.bytes += record[2]
        record[1] += 1
        return record[0]

    def share_headers(self, headers: Headers) -> tuple[Headers, list[object], int]:
        """Share each header pair and its strings: ``(shared pairs, objects held, own bytes)``.

        A pair whose value is longer than ``_SHARED_VALUE_MAX`` stays the entry's own (its
        bytes are returned); only its name is shared.
        """
        records = self._records
        out: list[tuple[str, str]] = []
        held: list[object] = []
        own_bytes = 0
        for pair in headers:
            record = records.get(pair)
            if record is not None:  # the usual case: this exact header was stored before
                copy = record[0]
                record[1] += 1
                records[copy[0]][1] += 1
                records[copy[1]][1] += 1
                held += (copy, copy[0], copy[1])
                out.append(copy)
                continue
            name, value = pair
            name = self.share(name)  # type: ignore[assignment]
            if len(value) > _SHARED_VALUE_MAX:
                own = (name, value)
                own_bytes += _aligned(sys.getsizeof(own)) + _aligned(sys.getsizeof(value))
                held.append(name)
                out.append(own)
                continue
            shared_pair: tuple[str, str] = self.share((name, self.share(value)))  # type: ignore[assignment]
            held += (shared_pair, shared_pair[0], shared_pair[1])
            out.append(shared_pair)
        return tuple(out), held, own_bytes

    def release(self, objects: tuple[object, ...]) -> None:
        """One holder fewer for each of ``objects``; the last one out frees its bytes."""
        records = self._records
        for obj in objects:
            record = records.get(obj)
            if record is not None and record[0] is obj:
                record[1] -= 1
                if record[1] <= 0:
                    del records[obj]
                    self.bytes -= record[2]

    def size_of(self, objects: tuple[object, ...]) -> int:
        """Bytes of ``objects``, each held once, as booked here."""
        records = self._records
        return sum(records[obj][2] for obj in dict.fromkeys(objects) if obj in records)

    def clear(self) -> None:
        """Forget everything (the store was cleared)."""
        self._records.clear()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._records)


_SINGLETONS = ((), "", b"")


def _part_size(part: object) -> int:
    """Size of a string, bytes or a flat tuple of them, less the interpreter's singletons
    (``None``, empty objects, one-character strings, which CPython caches)."""
    if part is None or part in _SINGLETONS or (type(part) is str and len(part) == 1):
        return 0
    size = _aligned(sys.getsizeof(part))
    if type(part) is tuple:
        size += sum(_part_size(item) for item in part)
    return size


def _aligned(size: int) -> int:
    # pympler rounds every object up to the allocator's 8-byte alignment; so do we.
    return (size + 7) & ~7


def _deep_size(obj: object, seen: set[int]) -> int:
    """``sys.getsizeof`` of ``obj`` and, for tuples and lists, of what they hold, once each.

    The interpreter's singletons (``None``, ``()``, ``""``, ``b""``) belong to no entry.
    """
    if obj is None or id(obj) in seen or obj in _SINGLETONS:
        return 0
    if type(obj) is str and len(obj) == 1:
        return 0  # CPython caches one-character strings
    seen.add(id(obj))
    size = _aligned(sys.getsizeof(obj))
    if type(obj) is tuple or type(obj) is list:
        for item in obj:
            size += _deep_size(item, seen)
    return size


def _variable_size(entry: Entry) -> int:
    """Bytes of what this entry alone holds (its shared objects are counted by the store)."""
    seen: set[int] = {id(obj) for obj in entry.shared}
    return sum(
        _deep_size(part, seen)
        for part in (
            entry.key,
            entry.base_key,
            entry.path,
            entry.status,
            entry.headers,
            entry.body,
            entry.not_modified_headers,
            entry.replay_headers,
            entry.etag,
            entry.last_modified,
            entry.shared,
        )
    )


_shell_size: int | None = None


def entry_shell_size() -> int:
    """Bytes of an entry's fixed part (the object, its floats), measured once with pympler."""
    global _shell_size
    if _shell_size is None:
        from pympler import asizeof

        # An entry whose every variable part is a singleton: what is left is its own shell.
        # Distinct floats and a large size, as a stored entry holds: asizeof counts each.
        sample = Entry(
            key=(),
            base_key=(),
            path="",
            status="",
            headers=(),
            body=b"",
            created=1.5,
            lifetime=2.5,
        )
        sample.replay_headers = ()  # type: ignore[assignment]
        sample.size = 1 << 20
        whole = int(asizeof.asizeof(sample))  # type: ignore[no-untyped-call]
        singletons = int(asizeof.asizeof(None, False, *_SINGLETONS))  # type: ignore[no-untyped-call]
        _shell_size = whole - singletons
    return _shell_size


def measure_entry(entry: Entry) -> int:
    """Bytes held by ``entry`` (not yet shared): its variable parts plus the fixed part.

    The store uses the quicker :meth:`Entry.own_size` once an entry shares its parts; this
    general walk measures anything and is the reference the tests hold both to.
    """
    return entry_shell_size() + _variable_size(entry)


class Tally:
    """Counters by reason that many threads bump without taking a lock.

    ``next()`` on an ``itertools.count`` is a single C call, atomic under the GIL; only the
    first use of a reason takes the lock.
    """

    def __init__(self) -> None:
        self._counts: dict[str, itertools.count[int]] = {}
        self._lock = threading.Lock()

    def add(self, reason: str) -> None:
        """Count one more ``reason``."""
        counter = self._counts.get(reason)
        if counter is None:
            with self._lock:
                counter = self._counts.setdefault(reason, itertools.count())
        next(counter)

    def get(self, reason: str) -> int:
        """How many ``reason`` so far."""
        counter = self._counts.get(reason)
        return 0 if counter is None else read_count(counter)

    def _adopt(self, other: Tally) -> Tally:
        """Take ``other``'s counts, with a fresh lock (after a fork)."""
        self._counts = other._counts
        return self

    def snapshot(self) -> dict[str, int]:
        """Every reason and its count."""
        return {reason: read_count(counter) for reason, counter in list(self._counts.items())}


class ResponseStore:
    """Thread-safe LRU + TTL store of :class:`Entry`, bounded by item count and by bytes.

    Reaching a cap evicts ``evict_fraction`` of the entries, least recently used first (and
    more if the new entry still does not fit). An entry whose body is over ``item_max_bytes``,
    or that is larger than the whole cache, is refused.
    Expired entries are dropped when looked up and swept at most every ``cleanup_interval_s``.
    """

    def __init__(
        self,
        *,
        max_items: int,
        max_bytes: int,
        item_max_bytes: int,
        evict_fraction: float = 0.3,
        cleanup_interval_s: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.item_max_bytes = min(item_max_bytes, max_bytes)
        self.evict_fraction = evict_fraction
        self.cleanup_interval_s = cleanup_interval_s
        self.clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[CacheKey, Entry] = OrderedDict()
        # base key -> [environ keys named by Vary, number of entries under that base]
        self._vary: dict[CacheKey, list[Any]] = {}
        self._filling: dict[CacheKey, list[Any]] = {}  # key -> [event or None, start, owner]
        self._bytes = 0  # what the entries alone hold; the shared objects add theirs
        self._shared = SharedObjects()
        self._next_sweep = clock() + cleanup_interval_s
        self.stores = self.evictions = self.expirations = 0
        # Bumped on the lock-free request path: next() on a count is one C call.
        self._hits = itertools.count()
        self._misses = itertools.count()
        self._rejected = Tally()
        self._bypassed = Tally()

    # -- the request path

    def hit(self, base_key: CacheKey, environ: Mapping[str, object], now: float) -> Entry | None:
        """The entry fresh at ``now`` for a request without credentials, counted as a hit;
        None (and nothing counted) otherwise.

        Takes no lock: ``dict.get`` and ``OrderedDict.move_to_end`` are single C calls,
        atomic under the GIL, and every writer holds the lock. A key removed between the two
        calls raises ``KeyError``: a hit on an entry that is on its way out.
        """
        entry = self._entries.get(base_key)
        if entry is None:
            vary = self._vary.get(base_key)
            if vary is None or not vary[0]:
                return None
            key = variant_key(base_key, vary[0], environ)
            entry = self._entries.get(key)
            if entry is None:
                return None
        else:
            key = base_key
        if entry.expires <= now:
            return None
        try:  # noqa: SIM105 (a with block would cost five times as much here)
            self._entries.move_to_end(key)
        except KeyError:
            pass
        next(self._hits)
        return entry

    def hot_path(
        self,
    ) -> tuple[Callable[[CacheKey], Entry | None], Callable[[CacheKey], None], Callable[[], int]]:
        """``(get, move_to_end, count_hit)`` for a caller that inlines the commonest hit.

        ``get(key)`` is the raw lookup of an entry stored without ``Vary``: no freshness
        check, nothing counted. The caller checks ``expires``, then calls
        ``move_to_end(key)`` (``KeyError`` if the entry just left) and ``count_hit()``.
        These are the store's own C-level methods: no lock, no Python frame (SPEC §11).
        """
        return self._entries.get, self._entries.move_to_end, self._hits.__next__

    def lookup(
        self,
        base_key: CacheKey,
        environ: Mapping[str, object],
        now: float,
        *,
        credentials: bool = False,
    ) -> tuple[CacheKey, Entry | None]:
        """The full key for this request and its entry fresh at ``now``; counts a hit or miss.

        With ``credentials``, only an entry whose response said ``public`` or ``s-maxage``
        is returned. An expired entry is removed.
        """
        vary = self._vary.get(base_key)
        key = base_key if vary is None or not vary[0] else variant_key(base_key, vary[0], environ)
        entry = self._entries.get(key)
        if entry is not None:
            if entry.expires <= now:
                with self._lock:
                    if self._entries.get(key) is entry:
                        self._remove(entry)
                        self.expirations += 1
            elif not credentials or entry.shareable_with_credentials:
                try:  # noqa: SIM105
                    self._entries.move_to_end(key)
                except KeyError:
                    pass
                next(self._hits)
                return key, entry
        next(self._misses)
        return key, None

    def put(self, entry: Entry, vary: tuple[str, ...] = ()) -> bool:
        """Store ``entry`` (replacing one under the same key); False when it is too large.

        ``vary`` holds the environ keys of the response's ``Vary`` headers: they name the
        request values that select this variant of ``entry.base_key``.
        """
        # The item limit bounds the body, as the capture does while streaming and as the
        # "stored" promise of Cache-Status assumes; the whole entry must fit in the cache.
        if len(entry.body) > self.item_max_bytes:
            self.reject("too-large")
            return False
        with self._lock:
            own_header_bytes = entry.share_parts(self._shared)
            entry.size = entry_shell_size() + entry.own_size(own_header_bytes)
            alone = entry.size + self._shared.size_of(entry.shared) + _HIT_CONSTANT_BYTES
            if alone > self.max_bytes:
                # Larger than the whole cache even alone: refuse before evicting anything.
                self._shared.release(entry.shared)
                self._rejected.add("too-large")
                return False
            old = self._entries.get(entry.key)
            if old is not None:
                self._remove(old)
            if len(self._entries) >= self.max_items or self.bytes + entry.size > self.max_bytes:
                self._evict_for(entry.size)
            if vary:
                # A plain entry under the base key would be found first by hit(): the newest
                # response says the page varies, so the plain one goes.
                plain = self._entries.get(entry.base_key)
                if plain is not None:
                    self._remove(plain)
            known = self._vary.get(entry.base_key)
            if known is None:
                self._vary[entry.base_key] = [vary, 1]
            else:
                known[0] = vary  # the newest response's Vary names the variants to look up
                known[1] += 1
            self._entries[entry.key] = entry
            self._bytes += entry.size
            self.stores += 1
        return True

    def reject(self, reason: str) -> None:
        """Count a response that was not stored, by reason."""
        self._rejected.add(reason)

    def bypass(self, reason: str) -> None:
        """Count a request that did not use the cache, by reason."""
        self._bypassed.add(reason)

    # -- single flight

    def begin_fill(
        self, key: CacheKey, wait_s: float, owner: object = None
    ) -> threading.Event | None:
        """None when the caller should fetch ``key``; else an event set when the fetch ends.

        A fill older than ``wait_s`` is taken over, so a response whose iterable was never
        closed cannot make every later miss of its key wait. ``owner`` identifies the
        fetching request to :meth:`end_fill`. The event is made by the first request that
        waits: most fills have no waiter, and an Event costs microseconds.
        """
        now = self.clock()
        with self._lock:
            current = self._filling.get(key)
            if current is not None and now - current[1] < wait_s:
                if current[0] is None:
                    current[0] = threading.Event()
                return current[0]  # type: ignore[no-any-return]
            self._filling[key] = [None, now, owner]
            return None

    def end_fill(self, key: CacheKey, owner: object = None) -> None:
        """Wake the requests waiting for ``key``.

        With ``owner``, only that request's own fill ends: a leader whose fill was taken
        over must not release the waiters of the request that took over.
        """
        with self._lock:
            current = self._filling.get(key)
            if current is None or (owner is not None and current[2] is not owner):
                return
            del self._filling[key]
        if current[0] is not None:
            current[0].set()

    # -- housekeeping

    def sweep_due(self) -> bool:
        """Whether the expired-entry sweep is due (a float compare, for the request path)."""
        return self.clock() >= self._next_sweep

    def sweep(self) -> int:
        """Drop every expired entry; returns how many."""
        now = self.clock()
        with self._lock:
            self._next_sweep = now + self.cleanup_interval_s
            # list() first: a lock-free hit may reorder the dict while we look at it.
            expired = [entry for entry in list(self._entries.values()) if entry.expires <= now]
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
        with self._lock:
            dropped = len(self._entries), self.bytes
            self._entries.clear()
            self._vary.clear()
            self._bytes = 0
            self._shared.clear()
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
        return len(doomed)

    def entries(self) -> list[Entry]:
        """A snapshot of the stored entries, least recently used first."""
        with self._lock:
            return list(self._entries.values())

    @property
    def hits(self) -> int:
        """Lookups that found a fresh entry."""
        return read_count(self._hits)

    @property
    def misses(self) -> int:
        """Lookups that found none."""
        return read_count(self._misses)

    @property
    def rejected(self) -> dict[str, int]:
        """Responses not stored, by reason."""
        return self._rejected.snapshot()

    @property
    def bypassed(self) -> dict[str, int]:
        """Requests that did not use the cache, by reason."""
        return self._bypassed.snapshot()

    @property
    def bytes(self) -> int:
        """Bytes held by the stored entries, as measured at store time, shared parts once."""
        return self._bytes + self.shared_bytes

    @property
    def shared_bytes(self) -> int:
        """The part of :attr:`bytes` held once for many entries (header names, common values,
        the hit-header constants)."""
        return self._shared.bytes + (_HIT_CONSTANT_BYTES if self._entries else 0)

    def __len__(self) -> int:
        return len(self._entries)

    def stats(self) -> dict[str, Any]:
        """Counters and sizes, read under the lock so they agree with each other."""
        with self._lock:
            hits, misses = self.hits, self.misses
            lookups = hits + misses
            return {
                "items": len(self._entries),
                "bytes": self.bytes,
                "shared_bytes": self.shared_bytes,
                "size_mb": round(self.bytes / 2**20, 3),
                "max_items": self.max_items,
                "max_bytes": self.max_bytes,
                "hits": hits,
                "misses": misses,
                "hit_rate": round(hits / lookups, 4) if lookups else 0.0,
                "stores": self.stores,
                "evictions": self.evictions,
                "expirations": self.expirations,
                "rejected": self.rejected,
                "bypassed": self.bypassed,
            }

    def after_fork(self) -> None:
        """In a forked child: locks another thread held at the fork stay held for good, and
        the single-flight fills in progress belonged to threads that are gone."""
        self._lock = threading.Lock()
        self._filling = {}
        self._rejected = Tally()._adopt(self._rejected)
        self._bypassed = Tally()._adopt(self._bypassed)

    # -- under the lock

    def _remove(self, entry: Entry) -> None:
        del self._entries[entry.key]
        self._forget(entry)

    def _forget(self, entry: Entry) -> None:
        """Account for ``entry`` having left ``_entries``."""
        self._bytes -= entry.size
        self._shared.release(entry.shared)
        vary = self._vary.get(entry.base_key)
        if vary is not None:
            vary[1] -= 1
            if vary[1] <= 0:
                del self._vary[entry.base_key]

    def _evict_count(self, count: int) -> int:
        evicted = 0
        while evicted < count and self._entries:
            # popitem is one C call, safe against a lock-free hit reordering the dict.
            _, entry = self._entries.popitem(last=False)
            self._forget(entry)
            evicted += 1
        self.evictions += evicted
        return evicted

    def _evict_for(self, size: int) -> None:
        self._evict_count(max(1, math.ceil(len(self._entries) * self.evict_fraction)))
        # A large entry may need more room than the fraction made.
        while self._entries and (
            len(self._entries) >= self.max_items or self.bytes + size > self.max_bytes
        ):
            self._evict_count(1)
