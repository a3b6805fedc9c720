"""Counters that many threads bump without a lock.

``next()`` on an ``itertools.count`` is a single C call, atomic under the GIL: the request
path counts with it. :func:`read_count` reads one without advancing it.
"""

from __future__ import annotations

import itertools

__all__ = ["read_count"]


def read_count(counter: itertools.count[int]) -> int:
    """The next value ``counter`` would give, i.e. how many times it was advanced from 0."""
    # The repr of a count is "count(N)": reading it this way does not advance it.
    return int(repr(counter)[6:-1])
