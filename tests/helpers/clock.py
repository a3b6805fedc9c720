"""A clock for code that takes one as a callable: time moves only when a test says so; and
a fixed date for the HTTP dates (``Date``, ``Expires``, ``Last-Modified``) tests send."""

from __future__ import annotations

from datetime import datetime, timezone

DATE = datetime(2030, 1, 1, tzinfo=timezone.utc)


class FakeClock:
    """A monotonic clock advanced by hand: expiry and intervals without sleeping."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` forward."""
        self.now += seconds
