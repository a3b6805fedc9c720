"""Keys remembered for a while: what the store knows of pages it could not keep.

A page that answered ``no-store`` will most likely answer it again. The store remembers such
keys (Varnish calls the idea hit-for-miss and hit-for-pass) so that the request path can skip
work that would be wasted on them: waiting for another request's response (single flight),
or capturing a response to a request with credentials that the page never makes public.

    remembered = RememberedKeys(limit=500, ttl_s=120.0)
    remembered.remember(key, now)
    if remembered.get(key, 0.0) > now: ...   # one C call
"""

from __future__ import annotations

import threading

from .policy import CacheKey, key_path

__all__ = ["RememberedKeys"]


class RememberedKeys(dict[CacheKey, float]):
    """Keys remembered until ``ttl_s`` after they were last remembered; at most ``limit`` of
    them, the oldest forgotten first.

    A dict of key -> the moment it stops being remembered: ``get(key, 0.0)`` is 0.0 for a
    key not remembered, and the caller compares it with its own reading of the clock, so the
    request path asks in one C call. ``pop(key, None)`` forgets a key.
    """

    def __init__(self, limit: int, ttl_s: float) -> None:
        super().__init__()
        self.limit = limit
        self.ttl_s = ttl_s
        self._lock = threading.Lock()  # only to forget the oldest: a dict op is atomic

    def remember(self, key: CacheKey, now: float) -> None:
        """Remember ``key`` until ``now + ttl_s``."""
        self[key] = now + self.ttl_s
        if len(self) > self.limit:
            with self._lock:
                while len(self) > self.limit:
                    try:
                        self.pop(next(iter(self)), None)
                    except RuntimeError:
                        continue  # another thread changed the dict between iter and next

    def forget_under(self, path_prefix: str, below: str) -> None:
        """Forget the keys of ``path_prefix`` and of the paths starting with ``below``."""
        with self._lock:
            for key in list(self):
                # A variant's key is (base key, values); a base key starts with the scheme.
                path = key_path(key if type(key[0]) is str else key[0])
                if path == path_prefix or path.startswith(below):
                    del self[key]
