"""A stored response, and how many bytes it holds.

An entry keeps the whole body as one ``bytes`` object and the headers a hit replays, prebuilt.
Its size is measured, not guessed: ``sys.getsizeof`` of every object it holds alone (body,
key, header tuples) plus its fixed part, measured once with ``pympler.asizeof``. Header names,
common values and status lines are held once for all entries by :class:`SharedObjects`,
and counted there once. The test suite holds the figures to ``pympler.asizeof``.

    entry = Entry(key=..., base_key=..., path="/", status="200 OK", headers=...,
                  body=b"...", created=clock(), lifetime=60.0)
"""

from __future__ import annotations

import sys
from typing import Any

from .policy import CacheKey

__all__ = ["Entry", "Headers", "SharedObjects", "entry_shell_size", "measure_entry"]

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
