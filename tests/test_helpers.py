"""The shared test helpers hold what the tests rely on them for."""

from __future__ import annotations

import pytest
from helpers.clock import FakeClock
from helpers.headers import cache_status


def test_cache_status_parser_rejects_invalid_lists() -> None:
    for invalid in ("wsgi memopt; hit", "wsgi-memopt; TTL=1", "wsgi-memopt; ttl=", "wsgi-memopt;;"):
        with pytest.raises(AssertionError):
            cache_status([("Cache-Status", invalid)])
    assert cache_status([("Cache-Status", 'wsgi-memopt; fwd=miss; detail="a b"; stored')]) == {
        "fwd": "miss",
        "detail": '"a b"',
        "stored": True,
    }


def test_cache_status_parser_wants_exactly_one_header() -> None:
    for headers in ([], [("Cache-Status", "wsgi-memopt; hit")] * 2):
        with pytest.raises(AssertionError):
            cache_status(headers)


def test_fake_clock_moves_only_when_told() -> None:
    clock = FakeClock(start=5.0)
    assert (clock(), clock()) == (5.0, 5.0)
    clock.advance(2.5)
    assert clock() == 7.5
