"""Tests of wsgi_memopt.cache.dates: the three HTTP-date forms parse to the right instant, and
everything else, among it every malformed ``Expires`` of the public HTTP cache test suite
(http-cache-tests, expires-parse), parses to None.

Expected instants come from ``datetime``, not from the arithmetic the module uses.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest

from wsgi_memopt.cache import dates
from wsgi_memopt.cache.dates import http_date

DAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> float:
    return datetime(year, month, day, hour, minute, second, tzinfo=timezone.utc).timestamp()


def rfc850(moment: datetime) -> str:
    """``moment`` as rfc850-date, spelled as the suite's harness spells it (two-digit year)."""
    return (
        f"{DAY_NAMES[moment.weekday()]}, {moment.day:02d}-{MONTHS[moment.month - 1]}-"
        f"{moment.year % 100:02d} {moment:%H:%M:%S} GMT"
    )


def pin_year(monkeypatch: pytest.MonkeyPatch, year: int) -> None:
    """Make the module believe today is in ``year`` (only the rfc850 rule asks)."""
    today = SimpleNamespace(tm_year=year)
    monkeypatch.setattr(dates, "time", SimpleNamespace(gmtime=lambda: today))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("Sun, 06 Nov 1994 08:49:37 GMT", at(1994, 11, 6, 8, 49, 37), id="imf"),
        pytest.param("Sunday, 06-Nov-94 08:49:37 GMT", at(1994, 11, 6, 8, 49, 37), id="rfc850"),
        pytest.param("Sun Nov  6 08:49:37 1994", at(1994, 11, 6, 8, 49, 37), id="asctime"),
        pytest.param("Sun Nov 16 08:49:37 1994", at(1994, 11, 16, 8, 49, 37), id="asctime-2-digit"),
        pytest.param("Sun Nov 06 08:49:37 1994", at(1994, 11, 6, 8, 49, 37), id="asctime-0-pad"),
        pytest.param("Thu, 01 Jan 1970 00:00:00 GMT", 0.0, id="epoch"),
        pytest.param("Wed, 31 Dec 1969 23:59:59 GMT", -1.0, id="before-epoch"),
        pytest.param("Thu, 29 Feb 2024 12:00:00 GMT", at(2024, 2, 29, 12), id="leap-day-imf"),
        pytest.param("Thursday, 29-Feb-24 12:00:00 GMT", at(2024, 2, 29, 12), id="leap-day-rfc850"),
        pytest.param("Thu Feb 29 12:00:00 2024", at(2024, 2, 29, 12), id="leap-day-asctime"),
        pytest.param("Tue, 29 Feb 2000 00:00:00 GMT", at(2000, 2, 29), id="leap-day-2000"),
        pytest.param("Sat, 31 Dec 2016 23:59:60 GMT", at(2017, 1, 1), id="leap-second"),
        pytest.param("Tue, 19 Jan 2038 03:14:08 GMT", float(2**31), id="past-32-bits"),
        pytest.param("Fri, 31 Dec 9999 23:59:59 GMT", at(9999, 12, 31, 23, 59, 59), id="year-9999"),
        pytest.param("Mon, 01 Jan 0001 00:00:00 GMT", at(1, 1, 1), id="year-0001"),
        pytest.param("  Sun, 06 Nov 1994 08:49:37 GMT\t", at(1994, 11, 6, 8, 49, 37), id="ows"),
        pytest.param("\tSun Nov  6 08:49:37 1994 ", at(1994, 11, 6, 8, 49, 37), id="ows-asctime"),
        # Valid ones of expires-parse; the asctime one names the wrong day (Aug 8 2050 is a
        # Monday): the day name is checked for spelling only, as the suite expects.
        pytest.param(
            "Thursday, 18-Aug-50 02:01:18 GMT", at(2050, 8, 18, 2, 1, 18), id="suite-rfc850"
        ),
        pytest.param("Thu Aug  8 02:01:18 2050", at(2050, 8, 8, 2, 1, 18), id="suite-asctime"),
        pytest.param(
            "Tue, 19 Jan 2038 14:14:08 GMT", at(2038, 1, 19, 14, 14, 8), id="32bit-with-comma"
        ),
        pytest.param(
            "Sun, 21 Nov 2286 04:46:39 GMT", at(2286, 11, 21, 4, 46, 39), id="far-future-with-comma"
        ),
    ],
)
def test_valid_dates_parse_to_their_instant(value: str, expected: float) -> None:
    assert http_date(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        # The invalid Expires values of expires-parse, in its order.
        pytest.param("THU, 18 Aug 2050 02:01:18 GMT", id="suite-wrong-case-weekday"),
        pytest.param("Thu, 18 AUG 2050 02:01:18 GMT", id="suite-wrong-case-month"),
        pytest.param("Thu, 18 Aug 2050 02:01:18 gMT", id="suite-wrong-case-tz"),
        pytest.param("Thu, 18 Aug 2050 02:01:18 UTC", id="suite-utc"),
        pytest.param("Thu, 18 Aug 2050 02:01:18 AEST", id="suite-aest"),
        pytest.param("Thu, 18 Aug 50 02:01:18 GMT", id="suite-2-digit-year"),
        pytest.param("Thu 18 Aug 2050 02:01:18 GMT", id="suite-no-comma"),
        pytest.param("Thu, 18  Aug  2050 02:01:18 GMT", id="suite-multiple-spaces"),
        pytest.param("Thu, 18-Aug-2050 02:01:18 GMT", id="suite-date-dashes"),
        pytest.param("Thu, 18 Aug 2050 02.01.18 GMT", id="suite-time-periods"),
        pytest.param("Thu, 18 Aug 2050 2:01:18 GMT", id="suite-1-digit-hour"),
        # Several Expires lines, as a server joins them and as they arrive unjoined.
        pytest.param(
            "Thu, 18 Aug 2050 2:01:18 GMT, Thu, 18 Aug 2050 2:01:19 GMT", id="suite-lines-joined"
        ),
        pytest.param("Thu, 18 Aug 2050 02:01:18 GMT\nThu, 18 Aug 2050 02:01:19 GMT", id="lines"),
        pytest.param(
            "Thu, 18 Aug 2050 02:01:18 GMT, Thu, 18 Aug 2050 02:01:19 GMT", id="valid-lines-joined"
        ),
        # The suite's 32bit and far-future checks leave out the comma: not IMF-fixdate.
        pytest.param("Tue 19 Jan 2038 14:14:08 GMT", id="suite-32bit-no-comma"),
        pytest.param("Sun 21 Nov 2286 04:46:39 GMT", id="suite-far-future-no-comma"),
        # Not a date at all.
        pytest.param("0", id="zero"),
        pytest.param("-1", id="minus-one"),
        pytest.param("", id="empty"),
        pytest.param("   \t", id="only-ows"),
        pytest.param("784111777", id="posix-seconds"),
        pytest.param("1994-11-06T08:49:37Z", id="iso-8601"),
        pytest.param("Sun, 06 Nov 1994 08:49:37 +0000", id="numeric-zone"),
        pytest.param("Sun, 06 Nov 1994 08:49:37", id="no-zone"),
        pytest.param("Sun, 06 Nov 1994 08:49:37 GMT;", id="trailing-junk"),
        pytest.param("\nSun, 06 Nov 1994 08:49:37 GMT", id="newline-is-not-ows"),
        pytest.param("Sun, 06 Nov 1994 08:49:37 GMT\r\n", id="crlf-is-not-ows"),
        pytest.param("Sun,\t06 Nov 1994 08:49:37 GMT", id="tab-inside"),
        pytest.param("Sun, 06 Nov 1994 08:49 GMT", id="no-seconds"),
        # Names: case-sensitive, short in IMF and asctime, long in rfc850.
        pytest.param("sun, 06 Nov 1994 08:49:37 GMT", id="lower-day"),
        pytest.param("Sun, 06 nov 1994 08:49:37 GMT", id="lower-month"),
        pytest.param("Sunday, 06 Nov 1994 08:49:37 GMT", id="imf-long-day"),
        pytest.param("Sun, 06-Nov-94 08:49:37 GMT", id="rfc850-short-day"),
        pytest.param("Sunday, 06-Nov-1994 08:49:37 GMT", id="rfc850-4-digit-year"),
        pytest.param("Sunday, 06-Nov-94 08:49:37 UTC", id="rfc850-utc"),
        pytest.param("Sunday, 6-Nov-94 08:49:37 GMT", id="rfc850-1-digit-day"),
        pytest.param("Son, 06 Nov 1994 08:49:37 GMT", id="unknown-day"),
        pytest.param("Sun, 06 Noe 1994 08:49:37 GMT", id="unknown-month"),
        pytest.param("Sun, 06 November 1994 08:49:37 GMT", id="long-month"),
        pytest.param("Sun Nov 6 08:49:37 1994", id="asctime-unpadded-day"),
        pytest.param("Sun Nov  6 08:49:37 94", id="asctime-2-digit-year"),
        pytest.param("Sun Nov  6 08:49:37 1994 GMT", id="asctime-with-zone"),
        pytest.param("Sun, 6 Nov 1994 08:49:37 GMT", id="imf-1-digit-day"),
        # Digits of another script are digits to \d, not to HTTP.
        pytest.param("Sun, \u0660\u0666 Nov 1994 08:49:37 GMT", id="arabic-indic-digits"),
        # Out of range, or no such day.
        pytest.param("Sun, 06 Nov 1994 24:00:00 GMT", id="hour-24"),
        pytest.param("Sun, 06 Nov 1994 08:60:00 GMT", id="minute-60"),
        pytest.param("Sun, 06 Nov 1994 08:49:61 GMT", id="second-61"),
        pytest.param("Sun, 00 Nov 1994 08:49:37 GMT", id="day-0"),
        pytest.param("Thu, 31 Nov 1994 08:49:37 GMT", id="november-31"),
        pytest.param("Wed, 29 Feb 2023 00:00:00 GMT", id="not-a-leap-year"),
        pytest.param("Thu, 29 Feb 1900 00:00:00 GMT", id="1900-not-leap"),
        pytest.param("Fri, 30 Feb 2024 00:00:00 GMT", id="february-30"),
        pytest.param("Sat, 01 Jan 0000 00:00:00 GMT", id="year-0000"),
        pytest.param("Saturday, 31-Sep-94 00:00:00 GMT", id="rfc850-september-31"),
        pytest.param("Sun Feb 30 00:00:00 2024", id="asctime-february-30"),
        pytest.param("Sun Nov  0 08:49:37 1994", id="asctime-day-0"),
    ],
)
def test_anything_else_is_not_a_date(value: str) -> None:
    assert http_date(value) is None


@pytest.mark.parametrize(
    ("this_year", "value", "year"),
    [
        pytest.param(2026, "Sunday, 06-Nov-94 08:49:37 GMT", 1994, id="2026-94"),
        pytest.param(2026, "Sunday, 06-Nov-26 08:49:37 GMT", 2026, id="2026-this-year"),
        pytest.param(2026, "Sunday, 06-Nov-00 08:49:37 GMT", 2000, id="2026-00"),
        pytest.param(2026, "Sunday, 06-Nov-76 08:49:37 GMT", 2076, id="2026-50-ahead"),
        pytest.param(2026, "Sunday, 06-Nov-77 08:49:37 GMT", 1977, id="2026-51-ahead"),
        pytest.param(2026, "Sunday, 06-Nov-27 08:49:37 GMT", 2027, id="2026-next-year"),
        # Past a century's turn the next year ending in these digits is in the next century.
        pytest.param(2090, "Sunday, 06-Nov-10 08:49:37 GMT", 2110, id="2090-10"),
        pytest.param(2090, "Sunday, 06-Nov-40 08:49:37 GMT", 2140, id="2090-50-ahead"),
        pytest.param(2090, "Sunday, 06-Nov-41 08:49:37 GMT", 2041, id="2090-51-ahead"),
        pytest.param(2090, "Sunday, 06-Nov-89 08:49:37 GMT", 2089, id="2090-last-year"),
    ],
)
def test_rfc850_year_is_at_most_50_years_ahead(
    monkeypatch: pytest.MonkeyPatch, this_year: int, value: str, year: int
) -> None:
    pin_year(monkeypatch, this_year)
    assert http_date(value) == at(year, 11, 6, 8, 49, 37)


@pytest.mark.parametrize("years_ahead", [-49, -1, 0, 1, 49, 50])
def test_rfc850_year_relative_to_now(years_ahead: int) -> None:
    moment = datetime.now(timezone.utc).replace(microsecond=0, month=7, day=1)
    moment = moment.replace(year=moment.year + years_ahead)
    assert http_date(rfc850(moment)) == moment.timestamp()


def test_rfc850_more_than_50_years_ahead_is_last_century() -> None:
    moment = datetime.now(timezone.utc).replace(microsecond=0, month=7, day=1)
    written = rfc850(moment.replace(year=moment.year + 51))
    assert http_date(written) == moment.replace(year=moment.year - 49).timestamp()


def test_rfc850_year_follows_the_clock_not_a_remembered_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    value = "Sunday, 06-Nov-77 08:49:37 GMT"
    pin_year(monkeypatch, 2026)
    assert http_date(value) == at(1977, 11, 6, 8, 49, 37)
    pin_year(monkeypatch, 2027)
    assert http_date(value) == at(2077, 11, 6, 8, 49, 37)


def test_suite_harness_dates_parse_to_the_instant_they_name() -> None:
    """Last-Modified, Date and If-Modified-Since as the suite's harness writes them
    (conditional-lm): JavaScript's toGMTString() for most, rfc850 for one If-Modified-Since."""
    moment = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(seconds=3000)
    imf = f"{DAY_NAMES[moment.weekday()][:3]}, {moment.day:02d} {MONTHS[moment.month - 1]} "
    imf += f"{moment:%Y %H:%M:%S} GMT"
    assert http_date(imf) == moment.timestamp()
    assert http_date(rfc850(moment)) == moment.timestamp()


def test_remembered_results_are_the_same_answer() -> None:
    value = "Sun, 06 Nov 1994 08:49:37 GMT"
    assert http_date(value) == http_date(value) == at(1994, 11, 6, 8, 49, 37)
    assert http_date("Sun, 31 Nov 1994 08:49:37 GMT") is None
    assert http_date("Sun, 31 Nov 1994 08:49:37 GMT") is None


def test_fixed_forms_read_no_clock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """IMF-fixdate and asctime carry their whole year: no clock is asked."""

    def no_clock() -> time.struct_time:
        raise AssertionError("the clock was read")

    monkeypatch.setattr(dates, "time", SimpleNamespace(gmtime=no_clock))
    assert http_date("Mon, 07 Dec 2026 01:02:03 GMT") == at(2026, 12, 7, 1, 2, 3)
    assert http_date("Mon Dec  7 01:02:03 2026") == at(2026, 12, 7, 1, 2, 3)
