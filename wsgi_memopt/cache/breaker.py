"""A circuit breaker: stop asking a failing peer for a while, then let one request probe it.

Every request that asks a dead Redis waits out the whole timeout first; after ``threshold``
failures in a row the breaker *opens* and requests go on without Redis at once. ``retry_s``
later it is *half-open*: one caller probes, the others still skip. A success closes it, a
failure opens it again.

    breaker = Breaker(threshold=3, retry_s=2.0)
    if breaker.allows():
        try:
            ...; breaker.succeeded()
        except ConnectionError:
            breaker.failed()
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["Breaker"]

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"


class Breaker:
    """Thread-safe; ``clock`` is monotonic seconds."""

    def __init__(
        self, threshold: int, retry_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.threshold = threshold
        self.retry_s = retry_s
        self.clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False
        self.opened = 0  # times it opened

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half-open``."""
        if self._opened_at is None:
            return CLOSED
        return HALF_OPEN if self.clock() - self._opened_at >= self.retry_s else OPEN

    def allows(self) -> bool:
        """Whether a call may go to the peer now (while half-open: only the one probe)."""
        if self.state == CLOSED:
            return True
        with self._lock:
            opened_at = self._opened_at  # closed meanwhile by another thread?
            if opened_at is None:
                return True
            if self._probing or self.clock() - opened_at < self.retry_s:
                return False
            self._probing = True
            return True

    def succeeded(self) -> None:
        """The peer answered: close."""
        if self._failures or self._opened_at is not None:
            with self._lock:
                self._failures = 0
                self._opened_at = None
                self._probing = False

    def failed(self) -> None:
        """The peer failed (unreachable, timed out): count it, and open at the threshold or
        when the probe failed."""
        with self._lock:
            self._failures += 1
            if self._probing or (self._opened_at is None and self._failures >= self.threshold):
                self._opened_at = self.clock()
                self.opened += 1
            self._probing = False

    def after_fork(self) -> None:
        """In a forked child: a lock another thread held at the fork stays held for good."""
        self._lock = threading.Lock()
