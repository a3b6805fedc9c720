"""Keys remembered for a while: what the store knows of pages it could not keep.

A page that answered ``no-store`` will most likely answer it again. The store remembers such
keys (Varnish calls the idea hit-for-miss and hit-for-pass) so that the request path can skip
work that would be wasted on them: waiting for another request's response (single flight),
or capturing a response to a request with credentials that the page never makes public.

    remembered = RememberedKeys(limit=500, ttl_s=120.0)
    remembered.remember(key, now)
    if remembered.until(key, 0.0) > now: ...   # one C call
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from .policy import CacheKey, key_path

__all__ = ["RememberedKeys"]


class RememberedKeys:
    """Keys remembered until ``ttl_s`` after they were last remembered; at most ``limit`` of
    them, the oldest forgotten first.

    ``until(key, 0.0)`` is the moment ``key`` stops being remembered (0.0 if it is not): the
    caller compares it with its own reading of the clock, so the lookup is one C call.
    """

    def __init__(self, limit: int, ttl_s: float) -> None:
        self.limit = limit
        self.ttl_s = ttl_s
        self._until: dict[CacheKey, float] = {}
        self._lock = threading.Lock()  # only to forget the oldest: a dict op is atomic
        self.until: Callable[[CacheKey, float], float] = self._until.get

    def remember(self, key: CacheKey, now: float) -> None:
        """Remember ``key`` until ``now + ttl_s``."""
        self._until[key] = now + self.ttl_s
        if len(self._until) > self.limit:
            with self._lock:
                while len(self._until) > self.limit:
                    del self._until[next(iter(self._until))]

    def forget(self, key: CacheKey) -> None:
        """Forget ``key``, if it is remembered."""
        self._until.pop(key, None)

    def forget_under(self, path_prefix: str, below: str) -> None:
        """Forget the keys of ``path_prefix`` and of the paths starting with ``below``."""
        with self._lock:
            for key in list(self._until):
                # A variant's key is (base key, values); a base key starts with the scheme.
                path = key_path(key if type(key[0]) is str else key[0])
                if path == path_prefix or path.startswith(below):
                    del self._until[key]

    def clear(self) -> None:
        """Forget every key."""
        self._until.clear()

    def __contains__(self, key: object) -> bool:
        return key in self._until

    def __len__(self) -> int:
        return len(self._until)
