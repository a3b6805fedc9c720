"""A stored response, and how many bytes it holds.

An entry keeps the whole body as one ``bytes`` object and the header list a hit replays
(prebuilt, aged once per second: a hit copies it, since the server may change it). Its size is
what it holds alone, read off the objects' layouts (``sys.getsizeof``, as ``tracemalloc``
sees each allocation): the entry object, its floats, its key, its header pairs and their
values, the replayed list, the body. Header names, status lines and the URL scheme, which
every entry spells alike, are interned (one copy for the whole process, held by the
interpreter) and count nothing; header values are each entry's own, as frameworks build them
anew for every response. The test suite holds the store's figure to ``tracemalloc``.

    entry = Entry(key, base_key, "200 OK", headers, b"...", created=clock(), lifetime=60.0)
    entry.size = entry.settle()
"""

from __future__ import annotations

import sys

from .policy import CacheKey, key_path

__all__ = ["Entry", "Headers", "intern_scheme", "key_size", "part_size"]

Headers = tuple[tuple[str, str], ...]


class Entry:
    """One stored response: status, headers and the whole body as one ``bytes`` object.

    ``replay`` is the header list a hit sends (the app's headers, then ``Age``,
    ``Cache-Status`` and ``X-Cache``) and ``replay_until`` the moment it stops being right:
    when its ``Age`` is a second old or the entry expires, whichever comes first. Before that
    a hit needs no other check.

    Its age (RFC 9111 §4.2.3) is ``initial_age`` (what it had when stored: its ``Age``
    header and the time it took to arrive) plus its time here; it is fresh until
    ``expires``. Past that it may still be served while revalidated (``swr_until``), when the
    app fails (``sie_until``), or, with a validator, be revalidated, until ``keep_until``.
    """

    __slots__ = (
        "base_key",
        "body",
        "created",
        "etag",
        "expires",
        "headers",
        "initial_age",
        "keep_until",
        "key",
        "last_modified",
        "modified",
        "must_revalidate",
        "replay",
        "replay_until",
        "shareable_with_credentials",
        "sie_until",
        "size",
        "status",
        "swr_until",
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
        *,
        initial_age: float = 0.0,
        must_revalidate: bool = False,
        stale_while_revalidate: float = 0.0,
        stale_if_error: float = 0.0,
        revalidate_for: float = 0.0,
        date: float | None = None,
    ) -> None:
        self.key = key
        self.base_key = base_key
        self.status = status
        # Its own Age goes: a hit says the entry's age (see rebuild_hit_headers).
        self.headers = tuple([pair for pair in headers if pair[0].lower() != "age"])
        self.body = body
        self.created = created
        self.initial_age = initial_age
        self.expires = created + lifetime - initial_age
        self.shareable_with_credentials = shareable_with_credentials
        self.etag = etag
        self.last_modified = last_modified
        self.validated = etag is not None or last_modified is not None  # may be revalidated
        # When it last changed, for a client's If-Modified-Since: its Last-Modified, else its
        # Date (RFC 9111 §4.3.2).
        self.modified = last_modified if last_modified is not None else date
        # must-revalidate and its kin forbid serving it stale, in any window. A deadline equal
        # to another is the same float: an entry holds no more objects than it needs.
        self.must_revalidate = must_revalidate
        swr = 0.0 if must_revalidate else stale_while_revalidate
        sie = 0.0 if must_revalidate else stale_if_error
        self.swr_until = self.expires + swr if swr else self.expires
        self.sie_until = self.expires + sie if sie else self.expires
        # How long past both a validator keeps it worth a conditional request.
        last = max(self.swr_until, self.sie_until)
        self.keep_until = last + revalidate_for if self.validated and revalidate_for else last
        # Built by settle() when stored, so that their memory is always accounted.
        self.replay: list[tuple[str, str]] = _NOT_BUILT
        self.replay_until = _NEVER
        self.size = 0

    @property
    def path(self) -> str:
        """``SCRIPT_NAME + PATH_INFO`` of the request that stored it."""
        return key_path(self.base_key)

    def settle(self) -> int:
        """Make the entry ready to be stored and return the bytes it holds alone.

        Header names, the status line and the scheme are interned; the header pairs become
        tuples of the entry's own (an app may hand the same list to every response), their
        values kept as they are (``etag`` is one of them); the header list a hit replays is
        built.
        """
        self.status = sys.intern(self.status)
        # Its own Age goes: a hit says the entry's age (see rebuild_hit_headers).
        self.headers = tuple(
            [
                (sys.intern(str(name)), value)
                for name, value in self.headers
                if name.lower() != "age"
            ]
        )
        base_key = intern_scheme(self.base_key)
        self.key = base_key if self.key is self.base_key else (base_key, *self.key[1:])
        self.base_key = base_key
        self.rebuild_hit_headers(self.created)
        return self._own_size()

    def _own_size(self) -> int:
        # Written out along the entry's known shape, in C calls where it can be: this runs
        # on every store. Interned strings and the empty singletons are nobody's.
        headers, replay, body = self.headers, self.replay, self.body
        size = (
            _ENTRY
            + _INT  # size, once set
            + key_size(self.base_key)
            + _TUPLE_BASE
            + (_POINTER + _PAIR) * len(headers)
            + sys.getsizeof(replay)
            + 2 * _PAIR  # Age and Cache-Status; X-Cache's pair is a constant
            + str_size(replay[-3][1])
            + str_size(replay[-2][1])
        )
        for _, value in headers:
            size += str_size(value)
        if body:  # b"" is the interpreter's
            size += _BYTES_BASE + len(body)
        if self.key is not self.base_key:
            size += _TUPLE_BASE + 3 * _POINTER + part_size(self.key[1]) + part_size(self.key[2])
        # Its deadlines and ages: each float object once, however many names share it.
        floats = (
            self.created,
            self.expires,
            self.initial_age,
            self.swr_until,
            self.sie_until,
            self.keep_until,
            self.replay_until,
            self.last_modified,
            self.modified,
        )
        size += _FLOAT * len({id(value) for value in floats if type(value) is float})
        return size

    def rebuild_hit_headers(self, now: float) -> list[tuple[str, str]]:
        """Age the replayed headers to ``now``; returns them (the server must get a copy)."""
        # A request that waited for another's fetch read the clock before the entry existed.
        age = max(int(self.initial_age + now - self.created), 0)
        # Its freshness lifetime less its age, in whole seconds (RFC 9211: negative once stale).
        ttl = round(self.expires - self.created + self.initial_age) - age
        replay = [
            *self.headers,
            (_AGE, str(age)),
            (_CACHE_STATUS, f"wsgi-memopt; hit; ttl={ttl}"),
            _X_CACHE_HIT,
        ]
        # The list first: a hit reading the pair in between sends an Age a second behind.
        self.replay = replay
        until = self.created + age + 1 - self.initial_age
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

# The layouts, read once (sys.getsizeof costs a method lookup a call): a tuple is its base and
# a pointer an item, a compact ASCII str its base and a byte a character, and so on.
_ENTRY = sys.getsizeof(Entry((), (), "", (), b"", 0.0, 0.0))
_FLOAT = sys.getsizeof(0.5)
_INT = sys.getsizeof(1 << 20)
_TUPLE_BASE = sys.getsizeof(())
_POINTER = sys.getsizeof((None,)) - _TUPLE_BASE
_PAIR = sys.getsizeof(("a", "b"))
_STR_BASE = sys.getsizeof("")
_BYTES_BASE = sys.getsizeof(b"")
_NONE = sys.getsizeof(None)


def str_size(text: str) -> int:
    """Bytes of ``text`` (0 for the empty string, which CPython keeps once). A compact
    ASCII string is its base and a byte a character: no sys.getsizeof call for it."""
    if text.isascii():
        return _STR_BASE + len(text) if text else 0
    return sys.getsizeof(text)


def part_size(part: object) -> int:
    """Bytes of a part of a key: a string, ``None`` (an absent header) or a tuple of them."""
    if type(part) is str:
        return str_size(part)
    if part is None:
        return 0
    if type(part) is tuple:
        return _TUPLE_BASE + _POINTER * len(part) + sum(map(part_size, part)) if part else 0
    return sys.getsizeof(part)


def key_size(key: CacheKey) -> int:
    """Bytes a cache key holds alone: its tuples and strings, the interned scheme aside.

    A base key is a tuple of strings (and keyed values) starting with the scheme; a variant's
    is ``(base key, Vary names, Vary values)``.
    """
    if type(key[0]) is not str:
        parts = key_size(key[0]) + sum(part_size(part) for part in key[1:])
        return _TUPLE_BASE + _POINTER * len(key) + parts
    # Its parts are the environ's strings (and None): each one's own size, but the shared
    # singletons None and "" hold nothing.
    values = key[1:]
    shared = _NONE * values.count(None) + _STR_BASE * values.count("")
    return _TUPLE_BASE + _POINTER * len(key) + sum(map(sys.getsizeof, values)) - shared


def intern_scheme(key: CacheKey) -> CacheKey:
    """``key`` with its scheme interned: one copy of "http" for every key, whichever server
    made it (some make a new string for each request)."""
    if type(key[0]) is not str:
        base = intern_scheme(key[0])
        return key if base is key[0] else (base, *key[1:])
    scheme = sys.intern(key[0])
    return key if scheme is key[0] else (scheme, *key[1:])
