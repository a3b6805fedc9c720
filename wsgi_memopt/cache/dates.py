"""Strict HTTP-date parsing (RFC 9110 §5.6.7): the three forms a recipient must accept.

    IMF-fixdate    Sun, 06 Nov 1994 08:49:37 GMT       the one form senders generate
    rfc850-date    Sunday, 06-Nov-94 08:49:37 GMT      obsolete, year at most 50 years ahead
    asctime-date   Sun Nov  6 08:49:37 1994            obsolete, implicitly GMT

Anything else is not a date: a cache then treats an ``Expires`` as already past
(RFC 9111 §5.3) and a ``Last-Modified`` or ``Date`` as absent. Names are case-sensitive as the
RFC spells them, the zone is exactly ``GMT``, day, hour, minute and second have two digits
(asctime pads the day with a space), the date must exist in the calendar and the time must
be in range (second 60 is a leap second). The day name is checked for spelling only, not
against the date. Spaces and tabs around the value are allowed.

    http_date("Sun, 06 Nov 1994 08:49:37 GMT")  # 784111777.0
    http_date("Sun, 06 Nov 94 08:49:37 GMT")    # None
"""

from __future__ import annotations

import calendar
import functools
import re
import time

__all__ = ["http_date"]

# Spelled out rather than taken from calendar.month_abbr, which follows the locale.
_MONTHS = {
    name: number
    for number, name in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1
    )
}
_DAY_NAME = "(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_DAY_NAME_LONG = "(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday)"
_MONTH = f"(?P<month>{'|'.join(_MONTHS)})"
# [0-9], not \d: \d would also accept digits of other scripts.
_TIME = "(?P<hour>[0-9]{2}):(?P<minute>[0-9]{2}):(?P<second>[0-9]{2})"

_IMF_FIXDATE = re.compile(
    rf"{_DAY_NAME}, (?P<day>[0-9]{{2}}) {_MONTH} (?P<year>[0-9]{{4}}) {_TIME} GMT"
)
_RFC850_DATE = re.compile(
    rf"{_DAY_NAME_LONG}, (?P<day>[0-9]{{2}})-{_MONTH}-(?P<year>[0-9]{{2}}) {_TIME} GMT"
)
_ASCTIME_DATE = re.compile(
    rf"{_DAY_NAME} {_MONTH} (?P<day>[0-9]{{2}}| [0-9]) {_TIME} (?P<year>[0-9]{{4}})"
)

# Each form has its own length, so the length alone says which pattern to try.
_IMF_FIXDATE_LENGTH = 29
_ASCTIME_DATE_LENGTH = 24
_RFC850_DATE_LENGTHS = range(30, 34)  # "Monday, " to "Wednesday, "


def http_date(value: str) -> float | None:
    """POSIX seconds of an HTTP-date, or None when ``value`` is not one."""
    value = value.strip(" \t")
    length = len(value)
    if length == _IMF_FIXDATE_LENGTH:
        return _imf_fixdate(value)
    if length == _ASCTIME_DATE_LENGTH:
        return _posix(_ASCTIME_DATE.fullmatch(value))
    if length in _RFC850_DATE_LENGTHS:
        return _posix(_RFC850_DATE.fullmatch(value), two_digit_year=True)
    return None


# Apps send the same few Expires and Last-Modified values again and again, so the common
# form's results are remembered. rfc850 ones are not: their year depends on today's date.
@functools.lru_cache(maxsize=256)
def _imf_fixdate(value: str) -> float | None:
    return _posix(_IMF_FIXDATE.fullmatch(value))


def _full_year(two_digit_year: int) -> int:
    """An rfc850 year in full: the next year ending in these digits (this one included),
    or the last one before when that is more than 50 years ahead (RFC 9110 §5.6.7)."""
    this_year = time.gmtime().tm_year
    year = this_year + (two_digit_year - this_year) % 100
    return year - 100 if year > this_year + 50 else year


def _posix(match: re.Match[str] | None, *, two_digit_year: bool = False) -> float | None:
    """POSIX seconds of a matched date, None when it did not match or names no real instant."""
    if match is None:
        return None
    year = int(match["year"])
    if two_digit_year:
        year = _full_year(year)
    month = _MONTHS[match["month"]]
    day = int(match["day"])
    hour, minute, second = int(match["hour"]), int(match["minute"]), int(match["second"])
    if hour > 23 or minute > 59 or second > 60:
        return None
    # Python's calendar starts at year 1: year 0000 names no day it can count.
    if year < 1 or not 1 <= day <= calendar.monthrange(year, month)[1]:
        return None
    return float(calendar.timegm((year, month, day, hour, minute, second)))
