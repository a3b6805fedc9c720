"""Keys remembered for a while: what the store knows of pages it could not keep.

A page that answered ``no-store`` will most likely answer it again. The store remembers such
keys (Varnish calls the idea hit-for-miss and hit-for-pass) so that the request path can skip
work that would be wasted on them: waiting for another request's response (single flight),
or capturing a response to a request with credentials that the page never makes public.

    remembered = RememberedKeys(limit=500, ttl_s=120.0, max_bytes=2 << 20)
    remembered.remember(key, now)
    if remembered.get(key, 0.0) > now: ...   # one C call
"""

from __future__ import annotations

import sys
import threading

from .entry import key_size
from .policy import CacheKey, key_path

__all__ = ["RememberedKeys"]


class RememberedKeys(dict[CacheKey, float]):
    """Keys remembered until ``ttl_s`` after they were last remembered; at most ``limit`` of
    them and ``max_bytes`` of memory (:attr:`bytes`), the oldest forgotten first.

    A dict of key -> the moment it stops being remembered: ``get(key, 0.0)`` is 0.0 for a
    key not remembered, and the caller compares it with its own reading of the clock, so the
    request path asks in one C call. Change it only through the methods below, which keep
    :attr:`bytes` true.
    """

    def __init__(self, limit: int, ttl_s: float, max_bytes: int = sys.maxsize) -> None:
        super().__init__()
        self.limit = limit
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        # Memory the remembering takes: the keys, their deadlines and the dict's table.
        self.bytes = 0
        self._held = 0  # the keys and their deadlines
        self._lock = threading.Lock()  # a lookup takes none: one dict op is atomic

    def remember(self, key: CacheKey, now: float) -> None:
        """Remember ``key`` until ``now + ttl_s``, within the limits."""
        with self._lock:
            if key not in self:
                self._held += key_size(key) + _FLOAT
            self[key] = now + self.ttl_s
            self._measure()
            while self and (len(self) > self.limit or self.bytes > self.max_bytes):
                self._forget(next(iter(self)))

    def forget(self, key: CacheKey) -> None:
        """Forget ``key``, if it is remembered."""
        with self._lock:
            if key in self:
                self._forget(key)

    def forget_oldest(self) -> None:
        """Forget the key remembered first, if any."""
        with self._lock:
            if self:
                self._forget(next(iter(self)))

    def forget_under(self, path_prefix: str, below: str) -> None:
        """Forget the keys of ``path_prefix`` and of the paths starting with ``below``."""
        with self._lock:
            for key in list(self):
                # A variant's key is (base key, values); a base key starts with the scheme.
                path = key_path(key if type(key[0]) is str else key[0])
                if path == path_prefix or path.startswith(below):
                    self._forget(key)

    def clear(self) -> None:
        """Forget every key."""
        with self._lock:
            super().clear()
            self._held = 0
            self._measure()

    def after_fork(self) -> None:
        """In a forked child: a lock another thread held at the fork stays held for good."""
        self._lock = threading.Lock()

    def _forget(self, key: CacheKey) -> None:
        del self[key]
        self._held -= key_size(key) + _FLOAT
        self._measure()

    def _measure(self) -> None:
        # The table is read off the dict: it grows, and shrinks only when emptied.
        self.bytes = self._held + sys.getsizeof(self) - _EMPTY_TABLE


_FLOAT = sys.getsizeof(0.5)
_EMPTY_TABLE = sys.getsizeof(RememberedKeys(0, 0.0))
