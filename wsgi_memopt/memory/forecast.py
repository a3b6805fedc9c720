"""When will memory reach its limit? A trend fitted to the governor's recent samples.

A leak cannot be collected, and a container's OOM killer does not wait: from 90% to the limit
may take seconds. The governor therefore looks at the *rate* at which the measured memory
approaches its limit, and recycles a worker while a graceful exit can still finish first::

    forecast = Forecast(window_s=10)
    for sample in samples:
        trend = forecast.add(clock(), sample.used_mb, sample.limit_mb)
    trend.seconds_to_limit        # 4.2: the limit is 4.2 s away at the fitted rate

The rules, each one checkable:

- The rate is the Theil-Sen slope of the samples of the last ``window_s`` seconds: the median
  of the slopes between every pair of samples, so that one sample taken in the middle of a
  request's short-lived burst does not make a trend.
- The level the trend starts from is the higher of the last sample and the fitted line at its
  time: a forecast may err early, never late.
- A sample more than 1% of the limit below both the last sample and the fitted line (a
  sibling worker recycled or killed, the cache cleared, a burst freed) starts the window
  afresh: the old level says nothing of the new one, and a rise measured across such falls
  would count every rise and no fall. (Memory back at the line after a one-sample burst is
  no fall: the robust slope ignores that sample.)
- After such a fall, a trend reaches the limit only once memory has passed the highest level
  it had before the falls of the last ``window_s`` (:attr:`Trend.new_ground`): requests that
  take memory and free it again rise and fall at the same levels; a leak climbs past them.
- The window keeps at most 40 samples, none closer than a 40th of the window to the one
  before (a sample that comes sooner is skipped): a fit compares every pair, and with
  ``sample_interval_s=0`` every request samples.
- No trend until the window holds 4 samples over at least 1 s; a level or falling trend never
  reaches the limit (``seconds_to_limit`` is infinite).
- A trend is trusted no further ahead than three times the span it was fitted over
  (:meth:`Trend.reaches_limit_within`): a worker booting beside this one grows fast for a
  second or two, and that is no leak.
"""

from __future__ import annotations

import collections
import itertools
import math
import threading
from dataclasses import dataclass

__all__ = ["Forecast", "Trend"]

_MIN_SAMPLES = 4
_MIN_SPAN_S = 1.0
_FALL = 0.01  # of the limit: a fall of more than this moves the window's level
_REACH = 3.0  # a trend foresees at most this many times the span it was fitted over
_MAX_POINTS = 40


@dataclass(frozen=True, slots=True)
class Trend:
    """The fitted approach of the measured memory to its limit."""

    rate_mb_s: float  # MiB per second; negative when memory falls
    seconds_to_limit: float  # math.inf when memory is not rising
    samples: int  # how many samples the fit used
    span_s: float  # the time they cover
    new_ground: bool = True  # above the peaks before the window's recent falls

    def reaches_limit_within(self, horizon_s: float) -> bool:
        """Whether the limit comes within ``horizon_s``, as far as this trend can tell."""
        return self.new_ground and self.seconds_to_limit <= min(horizon_s, _REACH * self.span_s)

    def as_dict(self) -> dict[str, float | int | None]:
        """JSON-ready; an infinite forecast is ``None``."""
        eta = self.seconds_to_limit
        return {
            "rate_mb_per_s": round(self.rate_mb_s, 3),
            "seconds_to_limit": None if math.isinf(eta) else round(eta, 1),
            "samples": self.samples,
            "span_s": round(self.span_s, 1),
        }


class Forecast:
    """The trend of the last ``window_s`` seconds of samples (see the module docstring).

    Thread safe: the governor's tick and the memory API may both take samples.
    """

    def __init__(self, window_s: float) -> None:
        if not window_s > 0:
            raise ValueError(f"a forecast window must be positive, not {window_s!r}")
        self.window_s = window_s
        self._points: collections.deque[tuple[float, float]] = collections.deque()
        self._peaks: collections.deque[tuple[float, float]] = collections.deque()  # at falls
        self._line: _Line | None = None
        self._lock = threading.Lock()
        self.trend: Trend | None = None  # the latest fit, None while there is too little

    def add(self, at: float, used_mb: float, limit_mb: float) -> Trend | None:
        """Take a sample (``at`` on a monotonic clock) and return the trend, if there is one."""
        with self._lock:
            points = self._points
            if points and at - points[-1][0] < self.window_s / _MAX_POINTS:
                return self.trend  # too soon after the last sample kept
            if points:
                # A fall since the last sample, and below the line too: after a burst, memory
                # falls back to the line, which is no fall of the level.
                last = points[-1][1]
                fall = min(last, self._line.at(at) if self._line else last) - used_mb
                if fall > _FALL * limit_mb:
                    self._peaks.append((at, max(used for _, used in points)))
                    points.clear()
            points.append((at, used_mb))
            while points[0][0] < at - self.window_s:
                points.popleft()
            while self._peaks and self._peaks[0][0] < at - self.window_s:
                self._peaks.popleft()
            self._line = _fit(points)
            if self._line is None:
                self.trend = None
            else:
                peak = max((used for _, used in self._peaks), default=-math.inf)
                self.trend = self._line.trend(points, limit_mb, new_ground=used_mb > peak)
            return self.trend


@dataclass(frozen=True, slots=True)
class _Line:
    """The robust line through the window: used MiB = intercept + rate x time."""

    rate: float
    intercept: float

    def at(self, at: float) -> float:
        return self.intercept + self.rate * at

    def trend(
        self, points: collections.deque[tuple[float, float]], limit_mb: float, new_ground: bool
    ) -> Trend:
        last_at, last_used = points[-1]
        level = max(last_used, self.at(last_at))
        eta = max(limit_mb - level, 0.0) / self.rate if self.rate > 0 else math.inf
        return Trend(self.rate, eta, len(points), last_at - points[0][0], new_ground)


def _fit(points: collections.deque[tuple[float, float]]) -> _Line | None:
    """The Theil-Sen line through ``points``, or None while they are too few or too close."""
    if len(points) < _MIN_SAMPLES or points[-1][0] - points[0][0] < _MIN_SPAN_S:
        return None
    rate = _median(
        [
            (used_b - used_a) / (at_b - at_a)
            for (at_a, used_a), (at_b, used_b) in itertools.combinations(points, 2)
            if at_b > at_a
        ]
    )
    return _Line(rate, _median([used - rate * at for at, used in points]))


def _median(values: list[float]) -> float:
    """The median of a non-empty list (statistics.median's, without importing statistics,
    which brings decimal and fractions into every worker)."""
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2
