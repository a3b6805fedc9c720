"""Counters that many threads bump without a lock.

``next()`` on an ``itertools.count`` is a single C call, atomic under the GIL: the request
path counts with it. :func:`read_count` reads one without advancing it.
"""

from __future__ import annotations

import itertools
import threading

__all__ = ["Tally", "read_count"]


def read_count(counter: itertools.count[int]) -> int:
    """The next value ``counter`` would give, i.e. how many times it was advanced from 0."""
    # The repr of a count is "count(N)": reading it this way does not advance it.
    return int(repr(counter)[6:-1])


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
            counter = self.counter(reason)
        next(counter)

    def counter(self, reason: str) -> itertools.count[int]:
        """The count of ``reason``: ``next()`` on it is :meth:`add` in one C call."""
        with self._lock:
            return self._counts.setdefault(reason, itertools.count())

    def _adopt(self, other: Tally) -> Tally:
        """Take ``other``'s counts, with a fresh lock (after a fork)."""
        self._counts = other._counts
        return self

    def snapshot(self) -> dict[str, int]:
        """Every reason counted at least once, and its count."""
        counts = {reason: read_count(counter) for reason, counter in list(self._counts.items())}
        return {reason: count for reason, count in counts.items() if count}
