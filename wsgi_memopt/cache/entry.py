"""A stored response, and how many bytes it holds.

An entry keeps the whole body as one ``bytes`` object and the header list a hit replays
(prebuilt, aged once per second: a hit copies it, since the server may change it). Its size is
measured, not guessed: ``sys.getsizeof`` of every object it holds alone (body, key, header
tuples) plus its fixed part, measured once with ``pympler.asizeof``. Header names, common
values and status lines are held once for all entries by :class:`SharedObjects`, and counted
there once. The test suite holds the figures to ``pympler.asizeof``.

    entry = Entry(key, base_key, "200 OK", headers, b"...", created=clock(), lifetime=60.0)
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from .policy import CacheKey, key_path

__all__ = [
    "HIT_CONSTANTS",
    "Entry",
    "Headers",
    "SharedObjects",
    "entry_shell_size",
    "measure_entry",
]

Headers = tuple[tuple[str, str], ...]


class Entry:
    """One stored response: status, headers and the whole body as one ``bytes`` object.

    ``replay`` is the header list a hit sends (the app's headers, then ``Age``,
    ``Cache-Status`` and ``X-Cache``) and ``replay_until`` the moment it stops being right:
    when its ``Age`` is a second old or the entry expires, whichever comes first. Before that
    a hit needs no other check.
    """

    __slots__ = (
        "base_key",
        "body",
        "created",
        "etag",
        "expires",
        "headers",
        "key",
        "last_modified",
        "replay",
        "replay_until",
        "shareable_with_credentials",
        "shared",
        "size",
        "status",
        "validated",
    )

    def __init__(
        self,
        key: CacheKey,
        base_key: CacheKey,
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
        self.status = status
        self.headers = headers
        self.body = body
        self.created = created
        self.expires = created + lifetime
        self.shareable_with_credentials = shareable_with_credentials
        self.etag = etag
        self.last_modified = last_modified
        self.validated = etag is not None or last_modified is not None  # may answer a 304
        # Built by share_parts() when stored, so that their memory is always accounted.
        self.replay: list[tuple[str, str]] = _NOT_BUILT
        self.replay_until = _NEVER
        self.size = 0
        self.shared: tuple[object, ...] = ()  # the store's single copies this entry holds

    @property
    def path(self) -> str:
        """``SCRIPT_NAME + PATH_INFO`` of the request that stored it."""
        return key_path(self.base_key)

    def share_parts(self, shared: SharedObjects) -> int:
        """Swap small strings and header pairs for the store's single copies of them, and
        build the header list a hit replays.

        A thousand entries of one app repeat the same header names, values and status line;
        held once, they cost once (see :class:`SharedObjects`). Returns the bytes of the
        header pairs this entry keeps as its own (those with long values).
        """
        headers, held, own_bytes = shared.share_headers(self.headers)
        if self.etag is not None:
            for name, value in headers:
                if name.lower() == "etag":
                    self.etag = value  # the header's own string, not a second copy
        self.headers = headers
        share = shared.share
        self.status = share(self.status)  # type: ignore[assignment]
        base_key = self.base_key
        scheme, host = share(base_key[0]), share(base_key[1])
        held += (self.status, scheme, host)
        base_key = (scheme, host, *base_key[2:])
        self.key = base_key if self.key is self.base_key else (base_key, *self.key[1:])
        self.base_key = base_key
        self.rebuild_hit_headers(self.created)
        # Released, one holder each, when the entry goes. The hit-header constants (Age,
        # Cache-Status, X-Cache) are not among them: they are the module's, the store counts
        # them once, and an app header may be the very same interned string.
        self.shared = tuple(held)
        return own_bytes

    def own_size(self, own_header_bytes: int) -> int:
        """Bytes this entry alone holds once :meth:`share_parts` ran, walked along its known
        shape; its shared objects and the interpreter's singletons are not its own.

        Every object is ``sys.getsizeof`` rounded up to 8 bytes, as pympler counts it; this
        runs under the store's lock on every store, so it is written out rather than looped.
        """
        base, key, replay = self.base_key, self.key, self.replay
        size = (
            _TUPLE_BASE
            + _POINTER * (len(base) + len(self.headers) + len(self.shared))
            + 2 * _TUPLE_BASE  # the headers and shared tuples
            + own_header_bytes
            + ((sys.getsizeof(replay) + 7) & ~7)  # a list: its allocation is its own
            + _HIT_PAIRS_BYTES  # the Age and Cache-Status pairs; X-Cache's is a constant
            + _part_size(replay[-3][1])
            + _size_of_str(replay[-2][1])
        )
        body = self.body
        if len(body) > 1:  # b"" and one-byte bodies are the interpreter's
            size += (_BYTES_BASE + len(body) + 7) & ~7
        for part in base[2:]:  # SCRIPT_NAME, PATH_INFO, query[, keyed values]: from environ
            if type(part) is str:
                if len(part) > 1:
                    size += _size_of_str(part)
            else:
                size += _part_size(part)
        if key is not base:  # a variant's: (base key, Vary names, Vary values)
            size += _TUPLE_BASE + 3 * _POINTER + _part_size(key[1]) + _part_size(key[2])
        if self.replay_until is not self.expires:
            size += _FLOAT_BYTES
        if self.last_modified is not None:
            size += _FLOAT_BYTES
        return size

    def rebuild_hit_headers(self, now: float) -> list[tuple[str, str]]:
        """Age the replayed headers to ``now``; returns them (the server must get a copy)."""
        # A request that waited for another's fetch read the clock before the entry existed.
        age = max(int(now - self.created), 0)
        ttl = max(round(self.expires - self.created) - age, 0)
        replay = [
            *self.headers,
            (_AGE, str(age)),
            (_CACHE_STATUS, f"wsgi-memopt; hit; ttl={ttl}"),
            _X_CACHE_HIT,
        ]
        # The list first: a hit reading the pair in between sends an Age a second behind.
        self.replay = replay
        until = self.created + age + 1
        self.replay_until = until if until < self.expires else self.expires
        return replay

    def hit_headers(self, now: float) -> list[tuple[str, str]]:
        """A fresh list of the headers to replay at ``now`` (the server may change it)."""
        # Rebuilt once per second of age; ``now`` below ``created`` (a waiter's clock) too.
        if self.created <= now < self.replay_until:
            return self.replay[:]
        return self.rebuild_hit_headers(now)[:]

    def not_modified_headers_at(self, now: float) -> list[tuple[str, str]]:
        """The headers of a ``304`` answered from this entry at ``now``.

        RFC 9110 §15.4.5: the validators and caching headers, not those of the body.
        """
        kept = [pair for pair in self.headers if pair[0].lower() in _KEPT_ON_304]
        return [*kept, *self.hit_headers(now)[-3:]]


_NOT_BUILT: list[tuple[str, str]] = []
_NEVER = float("-inf")
_KEPT_ON_304 = frozenset({"cache-control", "content-location", "date", "etag", "expires", "vary"})
_AGE = "Age"
_CACHE_STATUS = "Cache-Status"
_X_CACHE_HIT = ("X-Cache", "HIT")
# Every hit's headers hold these; the store counts them once while it holds any entry.
HIT_CONSTANTS = (_AGE, _CACHE_STATUS, *_X_CACHE_HIT, _X_CACHE_HIT)
_HIT_CONSTANT_BYTES = sum((sys.getsizeof(obj) + 7) & ~7 for obj in HIT_CONSTANTS)
_HIT_CONSTANT_IDS = frozenset(map(id, HIT_CONSTANTS))
_FLOAT_BYTES = (sys.getsizeof(1.5) + 7) & ~7
_HIT_PAIRS_BYTES = 2 * ((sys.getsizeof(("Age", "0")) + 7) & ~7)
_TUPLE_BASE = sys.getsizeof(())  # a tuple: this plus one pointer per item (8-byte multiples)
_POINTER = sys.getsizeof((None,)) - _TUPLE_BASE
# Header values up to this length are shared between entries; longer ones are rarely equal.
_SHARED_VALUE_MAX = 256


class SharedObjects:
    """One copy of each small object many entries hold, counted once while any holds it.

    Strings (status lines, hosts, header names and values) and header pairs are shared. A
    shared pair holds its name and value: an entry counts as one holder of the pair only,
    so storing a page whose headers were seen before costs one count per header.

    Not thread safe by itself: the store calls it under its lock.
    """

    def __init__(self) -> None:
        self._records: dict[object, list[Any]] = {}  # value -> [the copy, holders, bytes]
        self.bytes = 0

    def share(self, obj: object) -> object:
        """The single copy equal to ``obj`` (``obj`` itself the first time), one more holder."""
        record = self._records.get(obj)
        if record is None:
            if id(obj) in _HIT_CONSTANT_IDS:
                size = 0  # an app's "Age" is the hit headers' own: the store counts it once
            elif type(obj) is str:
                size = _size_of_str(obj)
            else:
                size = _aligned(sys.getsizeof(obj))
            self._records[obj] = [obj, 1, size]
            self.bytes += size
            return obj
        record[1] += 1
        return record[0]

    def share_headers(self, headers: Headers) -> tuple[Headers, list[object], int]:
        """Share each header pair: ``(shared pairs, objects held, own bytes)``.

        A pair whose value is longer than ``_SHARED_VALUE_MAX`` stays the entry's own (its
        bytes are returned); only its name is shared.
        """
        records = self._records
        out: list[tuple[str, str]] = []
        held: list[object] = []
        own_bytes = 0
        for pair in headers:
            if type(pair) is not tuple:  # PEP 3333 asks for tuples; keep a list's values
                pair = (str(pair[0]), str(pair[1]))
            record = records.get(pair)
            if record is not None:  # the usual case: this exact header was stored before
                record[1] += 1
                pair = record[0]
                out.append(pair)
                held.append(pair)
                continue
            name, value = pair
            name = self.share(name)  # type: ignore[assignment]
            if len(value) > _SHARED_VALUE_MAX:
                own_bytes += _PAIR_BYTES + _size_of_str(value)
                held.append(name)
                out.append((name, value))
                continue
            pair = (name, self.share(value))  # type: ignore[assignment]  # holds both
            records[pair] = [pair, 1, _PAIR_BYTES]
            self.bytes += _PAIR_BYTES
            out.append(pair)
            held.append(pair)
        return tuple(out), held, own_bytes

    def release(self, objects: Iterable[object]) -> None:
        """One holder fewer for each of ``objects``; the last one out frees its bytes (and
        a pair's, its hold on its name and value)."""
        records = self._records
        for obj in objects:
            record = records.get(obj)
            if record is not None and record[0] is obj:
                record[1] -= 1
                if record[1] <= 0:
                    del records[obj]
                    self.bytes -= record[2]
                    if type(obj) is tuple:
                        self.release(obj)

    def size_of(self, objects: tuple[object, ...]) -> int:
        """Bytes of ``objects`` (and of the names and values of the pairs among them), each
        held once, as booked here."""
        records = self._records
        every: dict[object, None] = {}
        for obj in objects:
            every[obj] = None
            if type(obj) is tuple:
                every.update(dict.fromkeys(obj))
        return sum(records[obj][2] for obj in every if obj in records)

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
    if not part or (type(part) is str and len(part) == 1):
        return 0
    size = (sys.getsizeof(part) + 7) & ~7
    if type(part) is tuple:
        size += sum(map(_part_size, part))
    return size


def _aligned(size: int) -> int:
    # pympler rounds every object up to the allocator's 8-byte alignment; so do we.
    return (size + 7) & ~7


# sys.getsizeof costs ~95 ns a call (a method lookup): the layouts below are read off it once.
_ASCII_BASE = sys.getsizeof("")  # a compact ASCII str: this plus one byte per character
_BYTES_BASE = sys.getsizeof(b"")
_PAIR_BYTES = _aligned(sys.getsizeof(("a", "b")))


def _size_of_str(text: str) -> int:
    """``sys.getsizeof(text)`` rounded as pympler does, without the call for ASCII text."""
    if text.isascii():
        return (_ASCII_BASE + len(text) + 7) & ~7
    return (sys.getsizeof(text) + 7) & ~7


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
    if isinstance(obj, (tuple, list)):
        for item in obj:
            size += _deep_size(item, seen)
    return size


def _variable_size(entry: Entry) -> int:
    """Bytes of what this entry alone holds (its shared objects are counted by the store)."""
    seen: set[int] = {id(obj) for obj in (*entry.shared, *HIT_CONSTANTS)}
    size = sum(
        _deep_size(part, seen)
        for part in (
            entry.key,
            entry.base_key,
            entry.status,
            entry.headers,
            entry.body,
            entry.replay,
            entry.etag,
            entry.shared,
        )
    )
    if entry.replay_until is not entry.expires and entry.replay_until is not _NEVER:
        size += _FLOAT_BYTES
    if entry.last_modified is not None:
        size += _FLOAT_BYTES
    return size


_shell_size: int | None = None


def entry_shell_size() -> int:
    """Bytes of an entry's fixed part (the object, two floats, its size), measured once
    with pympler."""
    global _shell_size
    if _shell_size is None:
        from pympler import asizeof

        # An entry whose every variable part is a singleton: what is left is its own shell.
        # Distinct floats and a large size, as a stored entry holds: asizeof counts each.
        sample = Entry((), (), "", (), b"", created=1.5, lifetime=2.5)
        sample.replay = ()  # type: ignore[assignment]
        sample.replay_until = sample.expires
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
