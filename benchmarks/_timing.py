"""Interleaved side-by-side timing, shared by the scripts in ``benchmarks/``.

Every contender is timed once per round, in an order that rotates from round to round, so a
slow drift of the machine (frequency scaling, a neighbour's load) lands on all of them alike.
Times are medians over the rounds; a comparison is best read as the median of the ratios
taken within each round, where both contenders ran a few milliseconds apart:

    samples = interleaved({"ours": prepare_ours, "theirs": prepare_theirs}, rounds=15)
    ours_us = statistics.median(samples["ours"])
    speedup = statistics.median(round_ratios(samples["theirs"], samples["ours"]))

A contender is ``prepare(n) -> run``: ``prepare`` builds whatever ``n`` calls need outside the
clock and returns a zero-argument ``run`` that makes the ``n`` calls; only ``run`` is timed.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = [
    "Environ",
    "Prepare",
    "WSGIApp",
    "calibrate",
    "interleaved",
    "repeated",
    "round_ratios",
    "serve",
    "write_nothing",
]

Prepare = Callable[[int], Callable[[], object]]
Environ = dict[str, Any]
WSGIApp = Callable[[Environ, Callable[..., Any]], Iterable[bytes]]


def _time_once(prepare: Prepare, n: int, gc_off: bool) -> float:
    """Seconds per call of one timed run of ``n`` calls."""
    run = prepare(n)
    gc.collect()  # outside the clock: no contender pays for another's garbage
    if gc_off:
        gc.disable()
    try:
        start = time.perf_counter_ns()
        run()
        elapsed = time.perf_counter_ns() - start
    finally:
        if gc_off:
            gc.enable()
    return elapsed / n / 1e9


def calibrate(prepare: Prepare, seconds: float, *, gc_off: bool = True) -> int:
    """How many calls of ``prepare``'s contender take about ``seconds``."""
    _time_once(prepare, 10, gc_off)  # untimed: a slow first call must not set the pace
    n = 10
    while True:
        per_call = _time_once(prepare, n, gc_off)
        if per_call * n >= seconds / 5 or n >= 1 << 24:
            return max(1, round(seconds / per_call))
        n *= 4


def interleaved(
    contenders: Mapping[str, Prepare],
    *,
    rounds: int,
    seconds: float = 0.02,
    calls: Mapping[str, int] | None = None,
    gc_off: bool = True,
) -> dict[str, list[float]]:
    """Microseconds per call of every contender, one sample per round.

    Each contender makes ``calls[name]`` calls per round, or as many as take about
    ``seconds`` (calibrated once, after an untimed warm-up run).
    With ``gc_off`` the collector is off while a run is timed and collected before it.
    """
    names = list(contenders)
    counts = dict(calls or {})
    for name in names:
        if name not in counts:
            counts[name] = calibrate(contenders[name], seconds, gc_off=gc_off)
        else:
            _time_once(contenders[name], min(counts[name], 1000), gc_off)  # warm-up
    samples: dict[str, list[float]] = {name: [] for name in names}
    for index in range(rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            per_call = _time_once(contenders[name], counts[name], gc_off)
            samples[name].append(per_call * 1e6)
    return samples


def round_ratios(numerator: list[float], denominator: list[float]) -> list[float]:
    """``numerator / denominator`` within each round, e.g. baseline time / our time."""
    return [a / b for a, b in zip(numerator, denominator, strict=True)]


# -- the server's side of a call: what every contender is driven by


def write_nothing(data: bytes) -> None:
    pass


def _start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
    return write_nothing


def serve(app: WSGIApp, environs: list[Environ], *, copy: bool) -> Callable[[], None]:
    """Zero-argument run making one call of ``app`` per environ, as a WSGI server does."""
    start_response = _start_response
    if copy:

        def run() -> None:
            for environ in environs:
                result = app(dict(environ), start_response)
                for _ in result:
                    pass
                close = getattr(result, "close", None)
                if close is not None:
                    close()

    else:

        def run() -> None:
            for environ in environs:
                result = app(environ, start_response)
                for _ in result:
                    pass
                close = getattr(result, "close", None)
                if close is not None:
                    close()

    return run


def repeated(app: WSGIApp, environ: Environ, *, copy: bool) -> Prepare:
    """A contender calling ``app`` ``n`` times with the same environ."""
    return lambda n: serve(app, [environ] * n, copy=copy)
