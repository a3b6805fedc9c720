"""Two levels: this process's own store in front of one shared by every process and machine.

:class:`SharedStore` is a :class:`~wsgi_memopt.cache.store.ResponseStore` (the first level,
small, each copy kept at most ``cache_local_ttl_s``) with a
:class:`~wsgi_memopt.cache.redis_store.RedisStore` behind it. A lookup asks this process
first, then Redis, and keeps a copy of what Redis had; a store writes both; an invalidation
drops both here, and is published so that every other process drops its own copies. The cache
decides the same way whichever level answered: an entry from Redis is an
:class:`~wsgi_memopt.cache.entry.Entry` like any other, its age carried over.

Single flight across processes: the process that leads a fill holds a lock in Redis; the
others wait for its entry, at most ``cache_lock_timeout_s``, then ask the app themselves.
Without Redis every process fills for itself, as without a shared store.
"""

from __future__ import annotations

import functools
import logging
import secrets
import time
from collections.abc import Mapping
from typing import Any

from .entry import Entry
from .flight import FETCH, Claim
from .listener import Listener
from .policy import CacheKey
from .redis_store import RedisStore, Unavailable
from .store import ResponseStore

__all__ = ["SharedStore"]

log = logging.getLogger("wsgi_memopt")

# How often a process waiting for another's fill looks for its entry: soon at first (the
# page may take milliseconds), then at most this often.
_FIRST_LOOK_S = 0.002
_LOOK_EVERY_S = 0.05
# The text fields of each kind of invalidation message, in the order they are applied.
_FIELDS = {
    "uri": ("host", "script_name", "path_info", "query"),
    "prefix": ("path",),
    "key": ("id",),
}


class SharedStore(ResponseStore):
    """This process's entries (the inherited store) in front of ``shared``."""

    def __init__(self, shared: RedisStore, *, local_ttl_s: float, **local: Any) -> None:
        super().__init__(keep_for_s=local_ttl_s, **local)
        self.shared = shared
        shared.body_max_bytes = self.item_max_bytes
        self._origin = secrets.token_hex(8)  # this process, in the messages it publishes
        self.listener = Listener(lambda: shared.client, shared.channel, self._apply)
        self.published = 0

    # -- the request path

    def lookup(
        self, base_key: CacheKey, environ: Mapping[str, object], now: float
    ) -> tuple[CacheKey, Entry | None]:
        """This process's entry if it is fresh, else Redis's (kept here too) when it is
        fresher than the one here."""
        self.listener.ensure_running()
        key, entry = super().lookup(base_key, environ, now)
        if entry is not None and now < entry.expires:
            return key, entry
        shared_key, found, vary = self.shared.get(base_key, environ, now)
        if found is None or (entry is not None and found.expires <= entry.expires):
            return key, entry
        self._keep(found, vary)
        return shared_key, found

    def _keep(self, entry: Entry, vary: tuple[str, ...]) -> None:
        """Keep a copy of a shared entry here (it is served whether or not it fits)."""
        try:
            super().put(entry, vary)
        except Exception:
            log.warning("[CACHE] could not keep a copy of a shared entry", exc_info=True)

    def put(self, entry: Entry, vary: tuple[str, ...] = ()) -> bool:
        """Store ``entry`` in Redis for its whole life, and here for at most
        ``cache_local_ttl_s``; False when it does not fit here."""
        if not self.takes(entry):
            return False
        # Redis first: the copy kept here has its life cut short.
        self.shared.put(entry, vary, self.clock())
        return super().put(entry, vary)

    def claim(
        self,
        base_key: CacheKey,
        key: CacheKey,
        environ: Mapping[str, object],
        wait_s: float,
        wait: bool = True,
    ) -> Claim:
        """Single flight across processes for the request that leads this process's fill
        of ``key``: take the fill lock in Redis and fetch; or, when another process holds
        it, wait (``wait``) at most ``wait_s`` for its entry, then fetch without the lock."""
        try:
            token = self.shared.claim(key, wait_s)
        except Unavailable:
            return FETCH  # without Redis, each process fills for itself
        if token is not None:
            # Stored by another process between the lookup and the lock?
            entry = self._fresh_shared(base_key, environ)
            if entry is not None:
                self.shared.release(key, token)
                return Claim(False, entry)
            return Claim(True, release=functools.partial(self.shared.release, key, token))
        if not wait:
            return Claim(False)
        deadline = time.monotonic() + wait_s
        pause = _FIRST_LOOK_S
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(pause, left))
            pause = min(pause * 2, _LOOK_EVERY_S)
            entry = self._fresh_shared(base_key, environ)
            if entry is not None:
                return Claim(False, entry)
            if not self.shared.claimed(key, wait_s):
                break  # its fill ended and stored nothing (or Redis went away)
        return FETCH

    def _fresh_shared(self, base_key: CacheKey, environ: Mapping[str, object]) -> Entry | None:
        now = self.clock()
        _, entry, vary = self.shared.get(base_key, environ, now, count=False)
        if entry is None or now >= entry.expires:
            return None
        self._keep(entry, vary)
        return entry

    # -- invalidation, here and everywhere
    #
    # Redis first, then here: a request of this process that looks in between finds its
    # copy here still, and does not fetch the old entry back from Redis after this process
    # dropped its own (it skips its own message, so nothing would drop that one).

    def discard(self, entry: Entry) -> None:
        """Drop ``entry`` here, in Redis and in every process."""
        self.shared.delete(entry.key)
        super().discard(entry)
        self._publish("key", id=self.shared.key_id(entry.key))

    def invalidate_uri(
        self,
        host: str,
        script_name: str,
        path_info: str,
        query: str,
        key: CacheKey | None = None,
    ) -> int:
        """Drop one URI's entries here, in Redis and in every process; how many here and in
        Redis. ``key``: the base key of the request that invalidates, when it is for this URI."""
        dropped = self.shared.invalidate_uri(host, script_name + path_info, query, key)
        dropped += super().invalidate_uri(host, script_name, path_info, query)
        self._publish("uri", host=host, script_name=script_name, path_info=path_info, query=query)
        return dropped

    def may_hold_uris(self) -> bool:
        """Always: Redis may hold what this process does not."""
        return True

    def invalidate(self, path_prefix: str) -> int:
        """Drop the entries at ``path_prefix`` and below here, in Redis and in every
        process; how many here and in Redis."""
        dropped = self.shared.invalidate(path_prefix)
        dropped += super().invalidate(path_prefix)
        self._publish("prefix", path=path_prefix)
        return dropped

    def clear(self) -> tuple[int, int]:
        """Drop every entry here, in Redis (under the prefix) and in every process;
        ``(items, bytes)`` dropped here."""
        self.shared.clear()
        dropped = self.clear_local()
        self._publish("clear")
        return dropped

    def _publish(self, op: str, **fields: str) -> None:
        self.shared.publish({"op": op, "origin": self._origin, **fields})
        self.published += 1

    def _apply(self, data: bytes) -> None:
        """Apply another process's invalidation to the entries here."""
        message = self.shared.read_message(data)
        if message is None or message.get("origin") == self._origin:
            return  # done here already
        op = message.get("op")
        if op == "clear":
            self.clear_local()
            return
        names = _FIELDS.get(str(op))
        if names is None:
            return  # a kind of message this version does not know
        fields = [field for field in map(message.get, names) if isinstance(field, str)]
        if len(fields) < len(names):
            # Anyone may publish without a secret: counted, never a traceback.
            self.shared.refuse("message", f"an invalidation message {op!r} without its fields")
            return
        if op == "uri":
            super().invalidate_uri(fields[0], fields[1], fields[2], fields[3])
        elif op == "prefix":
            super().invalidate(*fields)
        else:
            # A key named by its digest alone: the entry here whose key has it (a rare
            # message, and this process's own level is small).
            for entry in self.entries():
                if self.shared.key_id(entry.key) == fields[0]:
                    super().discard(entry)

    # -- reports and housekeeping

    def stats(self) -> dict[str, Any]:
        """This process's figures, and the shared store's beside them."""
        report = super().stats()
        report["shared"] = {
            **self.shared.stats(),
            "local_ttl_s": self.keep_for_s,
            "listening": self.listener.connected,
            "invalidations_published": self.published,
            "invalidations_received": self.listener.received,
            "resubscribed": self.listener.reconnects,
        }
        return report

    def after_fork(self) -> None:
        """In a forked child: its own identity, locks and listener (started by its first
        request)."""
        super().after_fork()
        self.shared.after_fork()
        self.listener.after_fork()
        self._origin = secrets.token_hex(8)

    def close(self) -> None:
        """Stop listening (for tests and embedders that build many)."""
        self.listener.stop()
