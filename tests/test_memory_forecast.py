"""The forecast: the rate at which measured memory approaches its limit, and when it gets there.

The samples here are series written out by hand: the forecast is pure arithmetic on
``(time, used MB)`` pairs, and each series is the shape a real one has (a leak's straight
line, a request's short burst, a sibling's recycle).
"""

from __future__ import annotations

import math
import statistics
import sys

import pytest
from helpers.wsgi import run_threads

from wsgi_memopt.memory.forecast import Forecast, Trend, _median

LIMIT_MB = 300.0


def feed(forecast: Forecast, series: list[tuple[float, float]]) -> Trend | None:
    trend = None
    for at, used in series:
        trend = forecast.add(at, used, LIMIT_MB)
    return trend


def line(
    start_mb: float, rate_mb_s: float, count: int, every_s: float = 0.5
) -> list[tuple[float, float]]:
    """``count`` samples of a straight leak, ``every_s`` apart, starting at t=100."""
    return [(100 + n * every_s, start_mb + rate_mb_s * n * every_s) for n in range(count)]


def test_a_steady_leak_is_forecast_to_reach_the_limit_at_its_rate() -> None:
    trend = feed(Forecast(window_s=10), line(100, 7.0, 10))  # 100 MB + 7 MB/s for 4.5 s

    assert trend is not None
    assert trend.rate_mb_s == pytest.approx(7.0)
    assert trend.seconds_to_limit == pytest.approx((300 - 131.5) / 7.0)
    assert (trend.samples, trend.span_s) == (10, 4.5)
    assert trend.as_dict() == {
        "rate_mb_per_s": 7.0,
        "seconds_to_limit": 24.1,
        "samples": 10,
        "span_s": 4.5,
    }


@pytest.mark.parametrize(
    "series",
    [
        pytest.param([(100.0, 200.0), (100.5, 200.0), (101.0, 200.0), (101.5, 200.0)], id="level"),
        pytest.param(line(250, -2.0, 8), id="falling"),
    ],
)
def test_memory_that_does_not_rise_never_reaches_the_limit(
    series: list[tuple[float, float]],
) -> None:
    trend = feed(Forecast(window_s=10), series)

    assert trend is not None
    assert trend.seconds_to_limit == math.inf
    assert trend.as_dict()["seconds_to_limit"] is None


def test_one_sample_taken_during_a_burst_makes_no_trend() -> None:
    # A request held 60 MB for a moment, and one sample saw it; then it was freed.
    series = [(100 + n * 0.5, 200.0) for n in range(12)]
    series[6] = (103.0, 260.0)

    trend = feed(Forecast(window_s=10), series)

    assert trend is not None
    assert trend.rate_mb_s == pytest.approx(0.0)
    assert trend.seconds_to_limit == math.inf


def test_the_level_is_the_higher_of_the_last_sample_and_the_fitted_line() -> None:
    # The last sample jumped above a slow line: the forecast starts from it (early, not late).
    series = [*line(200, 1.0, 8), (104.0, 280.0)]

    trend = feed(Forecast(window_s=10), series)

    assert trend is not None
    assert trend.rate_mb_s == pytest.approx(1.0, rel=0.2)
    assert trend.seconds_to_limit == pytest.approx(20 / trend.rate_mb_s)


def test_no_trend_from_too_few_samples_or_too_short_a_span() -> None:
    forecast = Forecast(window_s=2)  # samples 0.05 s apart are kept
    assert feed(forecast, line(100, 7.0, 3)) is None  # three samples
    forecast = Forecast(window_s=2)
    assert feed(forecast, line(100, 7.0, 6, every_s=0.1)) is None  # six over 0.5 s
    assert feed(forecast, [(101.0, 107.0)]) is not None  # a seventh makes it 1 s


def test_only_the_window_counts() -> None:
    # A fast rise long ago, level since: the old rise has left the window.
    series = line(100, 20.0, 5) + [(110 + n * 0.5, 200.0) for n in range(21)]

    trend = feed(Forecast(window_s=10), series)

    assert trend is not None
    assert trend.span_s == 10.0
    assert trend.seconds_to_limit == math.inf


def test_a_fall_below_the_line_starts_afresh() -> None:
    # A sibling worker recycled: 80 MB given back at once. The trend before says nothing of
    # the level after, and the rate is measured again from there.
    forecast = Forecast(window_s=10)
    assert feed(forecast, line(150, 7.0, 10)) is not None

    assert forecast.add(105.0, 105.0, LIMIT_MB) is None  # one sample in the window
    trend = feed(forecast, [(105.5 + n * 0.5, 108.0 + 3 * n) for n in range(3)])

    assert trend is not None
    assert trend.rate_mb_s == pytest.approx(6.0, rel=0.2)


def test_bursts_that_are_freed_again_make_no_staircase() -> None:
    # A worker whose requests take 200 MB over 1.5 s and free it: memory goes up and down
    # between 500 and 700 MB of 1024 and never higher. The first rise is all there is to see
    # (had it gone on, the limit was 2.4 s away); once memory fell back, the same rise again
    # is no leak, and a staircase of rises without their falls is never read.
    forecast = Forecast(window_s=10)
    trends = [forecast.add(100 + n * 0.5, 500.0 + 200.0 * (n % 4) / 3, 1024.0) for n in range(60)]

    alarms = [n for n, trend in enumerate(trends) if trend and trend.reaches_limit_within(10)]
    assert alarms == [3]  # the first rise's top, before any fall
    assert trends[7] is not None
    assert not trends[7].new_ground


def test_a_leak_that_stops_is_no_fall_and_its_rate_fades_with_the_window() -> None:
    # 20 MB/s for 3 s, then level for 12 s: no sample falls, the old rise leaves the window.
    series = line(100, 20.0, 7) + [(103.5 + n * 0.5, 160.0) for n in range(24)]
    forecast = Forecast(window_s=10)
    trends = [forecast.add(at, used, LIMIT_MB) for at, used in series]

    assert trends[-1] is not None
    assert trends[-1].rate_mb_s == pytest.approx(0.0)
    assert trends[-1].seconds_to_limit == math.inf
    assert all(trend is None or trend.rate_mb_s <= 20.0 for trend in trends)


def test_a_fall_within_a_percent_is_noise_and_kept() -> None:
    forecast = Forecast(window_s=10)
    feed(forecast, line(150, 1.0, 6))
    trend = forecast.add(103.0, 152.0, LIMIT_MB)  # 1.5 MB below the last: 0.5% of the limit

    assert trend is not None
    assert trend.samples == 7


def test_the_window_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        Forecast(window_s=0)


def test_a_trend_foresees_no_further_than_three_times_its_span() -> None:
    # A sibling worker booting: 14 MB/s for a second and a half, 140 MB below the limit.
    trend = feed(Forecast(window_s=10), line(160, 14.0, 4))

    assert trend is not None
    assert trend.span_s == 1.5
    assert trend.seconds_to_limit == pytest.approx((300 - 181) / 14.0)
    assert not trend.reaches_limit_within(10)  # 8.5 s ahead: more than 3 x 1.5 s
    later = feed(Forecast(window_s=10), line(160, 14.0, 7))  # the same rise, for 3 s
    assert later is not None
    assert later.reaches_limit_within(10)


def test_samples_from_many_threads_at_once_never_break_the_fit() -> None:
    # The governor's tick and the memory API both sample; a fit must never see a window that
    # another thread is changing.
    forecast = Forecast(window_s=2.0)
    failures: list[BaseException] = []
    fits: list[Trend] = []

    def sampler(number: int) -> None:
        try:
            for step in range(300):
                # Every 30th sample falls by 10% of the limit: the window restarts under the
                # other threads' fits.
                used = 100.0 + step * 0.5 - (30.0 if step % 30 == 0 else 0.0) + number
                trend = forecast.add(step * 0.05, used, LIMIT_MB)
                if trend is not None:
                    fits.append(trend)
        except BaseException as error:  # any error in a thread fails the test
            failures.append(error)

    sys.setswitchinterval(1e-6)
    try:
        run_threads(4, sampler, timeout_s=60)
    finally:
        sys.setswitchinterval(0.005)
    assert failures == []
    assert len(fits) > 100  # fits ran while the others added


def test_samples_taken_at_every_request_are_thinned_to_forty_a_window() -> None:
    # sample_interval_s=0: every request samples; a fit compares every pair of the window.
    forecast = Forecast(window_s=10)
    trend = feed(forecast, [(100 + n * 0.001, 100 + n * 0.007) for n in range(20_000)])

    assert trend is not None
    assert trend.samples <= 41
    assert trend.rate_mb_s == pytest.approx(7.0)


@pytest.mark.parametrize(
    "values",
    [
        pytest.param([3.0], id="one"),
        pytest.param([5.0, 1.0, 4.0], id="odd"),
        pytest.param([4.0, -1.0, 2.5, 9.0], id="even"),
        pytest.param([2.0, 2.0, 7.0, 7.0, 7.0, 1.0], id="ties"),
    ],
)
def test_the_median_is_the_statistics_modules(values: list[float]) -> None:
    assert _median(values) == statistics.median(values)
