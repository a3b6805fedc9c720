"""Tests of wsgi_memopt.cache.breaker: when the shared cache stops asking Redis, and when it
asks again. Time is a :class:`FakeClock`; the one-probe rule is checked with real threads."""

from __future__ import annotations

import threading

import pytest
from helpers.clock import FakeClock
from helpers.wsgi import run_threads

from wsgi_memopt.cache.breaker import Breaker

RETRY_S = 2.0


def breaker() -> tuple[Breaker, FakeClock]:
    clock = FakeClock(100.0)
    return Breaker(3, RETRY_S, clock), clock


def opened() -> tuple[Breaker, FakeClock]:
    """A breaker that has just opened."""
    made, clock = breaker()
    for _ in range(3):
        made.failed()
    return made, clock


def test_a_new_breaker_is_closed_and_allows() -> None:
    made, _ = breaker()
    assert made.state == "closed"
    assert made.allows()
    assert made.opened == 0


def test_three_failures_in_a_row_open_it() -> None:
    made, _ = breaker()
    made.failed()
    made.failed()
    assert made.state == "closed"
    assert made.allows()
    made.failed()
    assert made.state == "open"
    assert not made.allows()
    assert made.opened == 1


def test_a_success_between_failures_starts_the_count_again() -> None:
    made, _ = breaker()
    made.failed()
    made.failed()
    made.succeeded()
    made.failed()
    made.failed()
    assert made.state == "closed"
    assert made.allows()
    made.failed()
    assert made.state == "open"


def test_it_stays_open_until_retry_s_has_passed() -> None:
    made, clock = opened()
    clock.advance(RETRY_S - 0.01)
    assert made.state == "open"
    assert not made.allows()
    clock.advance(0.01)
    assert made.state == "half-open"


def test_half_open_lets_exactly_one_probe_through() -> None:
    made, clock = opened()
    clock.advance(RETRY_S)
    assert made.allows()
    # The probe is out: every other caller still skips, however long it takes.
    assert not made.allows()
    clock.advance(10 * RETRY_S)
    assert not made.allows()


def test_one_probe_among_many_threads() -> None:
    made, clock = opened()
    clock.advance(RETRY_S)
    count = 16
    barrier = threading.Barrier(count)
    answers: list[bool] = []

    def ask(_: int) -> None:
        barrier.wait(5.0)
        answers.append(made.allows())

    run_threads(count, ask, 5.0)
    assert sorted(answers) == [False] * (count - 1) + [True]


def test_a_successful_probe_closes_it() -> None:
    made, clock = opened()
    clock.advance(RETRY_S)
    assert made.allows()
    made.succeeded()
    assert made.state == "closed"
    assert all(made.allows() for _ in range(5))
    # And it counts failures from zero again.
    made.failed()
    made.failed()
    assert made.state == "closed"


def test_a_failed_probe_opens_it_again_for_retry_s() -> None:
    made, clock = opened()
    clock.advance(RETRY_S)
    assert made.allows()
    made.failed()  # one failure is enough while probing
    assert made.state == "open"
    assert made.opened == 2
    assert not made.allows()
    clock.advance(RETRY_S)
    assert made.state == "half-open"
    assert made.allows()


def test_failures_of_calls_made_before_it_opened_do_not_push_the_retry_back() -> None:
    made, clock = opened()
    clock.advance(RETRY_S / 2)
    made.failed()  # a call that was already waiting on the dead peer
    assert made.opened == 1
    clock.advance(RETRY_S / 2)
    assert made.state == "half-open"


@pytest.mark.parametrize("threshold", [1, 5])
def test_the_threshold_is_the_breakers(threshold: int) -> None:
    made = Breaker(threshold, RETRY_S, FakeClock())
    for _ in range(threshold - 1):
        made.failed()
    assert made.state == "closed"
    made.failed()
    assert made.state == "open"
