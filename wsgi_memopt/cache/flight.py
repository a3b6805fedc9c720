"""Single flight: the first miss of a key fetches it, the others wait a bounded time for it.

Without it, a popular page that expires sends every concurrent request to the app at once (a
cache stampede). The request that leads a fill holds a :class:`Fill` until its response is
stored or refused; the others get the fill's event and wait at most ``wait_s`` for it.

    flights = Flights()
    fill, event = flights.join(key, wait_s=5.0, now=clock())
    if event is not None:
        event.wait(5.0)      # another request is fetching the key
    ...
    flights.end(fill)        # the leader, once its response is stored or refused
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from .entry import Entry
from .policy import CacheKey

__all__ = ["FETCH", "Claim", "Fill", "Flights"]


@dataclass(eq=False)
class Fill:
    """One request's fetch of ``key``, begun at ``started``; ``event`` made by the first
    request that waits (most fills have no waiter)."""

    key: CacheKey
    started: float
    event: threading.Event | None = field(default=None, repr=False)
    # Ends the fill's lock in a shared store, when it holds one (see Claim).
    release: Callable[[], None] | None = field(default=None, repr=False)


class Claim(NamedTuple):
    """A shared store's answer to the request that leads its process's fill of a key:
    ``fetch`` it from the app (holding the store's lock when ``release`` ends one), or not:
    the ``entry`` another process stored meanwhile, or None when another process is
    refreshing it."""

    fetch: bool
    entry: Entry | None = None
    release: Callable[[], None] | None = None


FETCH = Claim(True)  # ask the app: no other process is filling the key (or none can tell)


class Flights:
    """The fills in progress, by key; thread-safe."""

    def __init__(self) -> None:
        self._fills: dict[CacheKey, Fill] = {}
        self._lock = threading.Lock()

    def join(
        self, key: CacheKey, wait_s: float, now: float
    ) -> tuple[Fill | None, threading.Event | None]:
        """``(fill, None)`` when the caller leads the fetch of ``key``, else ``(None, event)``
        with the event that the leader's :meth:`end` sets.

        A fill older than ``wait_s`` is taken over: a response whose iterable was never
        closed cannot make every later miss of its key wait.
        """
        fill = Fill(key, now)
        # The usual miss has nobody else fetching its key: setdefault, one atomic call under
        # the GIL, makes it the leader without the lock.
        if self._fills.setdefault(key, fill) is fill:
            return fill, None
        with self._lock:
            held = self._fills.get(key)
            if held is not None and now - held.started < wait_s:
                if held.event is None:
                    held.event = threading.Event()
                return None, held.event
            self._fills[key] = fill
            return fill, None

    def end(self, fill: Fill) -> None:
        """Wake the requests waiting for ``fill``; a fill taken over by another request
        leaves that request's waiters alone."""
        with self._lock:
            if self._fills.get(fill.key) is fill:
                del self._fills[fill.key]
        if fill.event is not None:
            fill.event.set()
        release, fill.release = fill.release, None
        if release is not None:
            with contextlib.suppress(Exception):  # never fails: a shared store lets its lock expire
                release()

    def abandon(self, fill: Fill) -> None:
        """End ``fill`` without taking the lock: for the finalizer of a response collected
        unclosed, which may run anywhere, even where the lock is held. The next miss of the
        key takes the fill over; :meth:`forget_abandoned` drops it."""
        fill.started = -math.inf
        if fill.event is not None:
            fill.event.set()

    def forget_abandoned(self) -> None:
        """Drop the fills :meth:`abandon` marked (run from housekeeping)."""
        with self._lock:
            for key, fill in list(self._fills.items()):
                if fill.started == -math.inf:
                    del self._fills[key]

    def __len__(self) -> int:
        return len(self._fills)

    def after_fork(self) -> None:
        """In a forked child: the fills belonged to threads that are gone, and a lock another
        thread held at the fork stays held for good."""
        self._fills = {}
        self._lock = threading.Lock()
