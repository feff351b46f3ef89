"""Binance candle intervals and their grids, including the two that are not "epoch time modulo a length".

* Fixed-length intervals (``1s`` .. ``1d``) open on multiples of their length since the Unix epoch.
* ``1w`` candles open on Mondays 00:00 UTC; the epoch (1970-01-01) was a Thursday, so the weekly grid is
  shifted by four days.
* ``3d`` candles are three days long, but where their grid starts is not something Binance documents; a
  candle on any day boundary is accepted and consecutive candles must be exactly three days apart.
* ``1M`` candles are calendar months (28 to 31 days): they open on the 1st at 00:00 UTC.

Every module that checks a grid, counts missing candles or plans pages uses these functions, never
``open_time % length`` itself. numpy only (no polars): the server imports this module.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from xylen.core.errors import DataError

DAY_MS = 86_400_000
INTERVAL_MS: dict[str, int] = {
    "1s": 1_000,
    "1m": 60_000,
    "3m": 180_000,
    "5m": 300_000,
    "15m": 900_000,
    "30m": 1_800_000,
    "1h": 3_600_000,
    "2h": 7_200_000,
    "4h": 14_400_000,
    "6h": 21_600_000,
    "8h": 28_800_000,
    "12h": 43_200_000,
    "1d": DAY_MS,
    "3d": 3 * DAY_MS,
    "1w": 7 * DAY_MS,
}
"""Intervals of a fixed length, in milliseconds. ``1M`` is not here: a month has no fixed length."""

INTERVALS: tuple[str, ...] = (*INTERVAL_MS, "1M")
"""Every Binance spot interval, in Binance's (case-sensitive) spelling."""

MONTH = "1M"
_WEEK_OFFSET_MS = 4 * DAY_MS  # 1970-01-05 was the first Monday after the epoch
_AVG_MONTH_MS = 2_629_746_000  # 365.2425 / 12 days


def check(interval: str) -> str:
    """``interval`` if Binance has it; otherwise a DataError listing the ones it has."""
    if interval not in INTERVALS:
        raise DataError(
            f"Unknown interval {str(interval)[:20]!r}.",
            hint=f"use one of: {' '.join(INTERVALS)} (case matters: 1m is a minute, 1M a month).",
        )
    return interval


def approx_ms(interval: str) -> int:
    """The length of one candle; the average month for ``1M`` (for sizing windows, never for grids)."""
    return _AVG_MONTH_MS if check(interval) == MONTH else INTERVAL_MS[interval]


def _months(t: Any) -> np.ndarray:
    return np.asarray(t, dtype=np.int64).astype("datetime64[ms]").astype("datetime64[M]")


def _ms(m: np.ndarray) -> np.ndarray:
    return m.astype("datetime64[ms]").astype(np.int64)


def floor(t: int, interval: str) -> int:
    """The open time of the candle that contains instant ``t`` (ms). For ``3d``, whose grid Binance does not
    document, the day boundary: like ``aligned``, it never assumes where a three-day candle starts (a backfill
    then asks from that day, and the exchange's own candles decide)."""
    check(interval)
    if interval == MONTH:
        return int(_ms(_months(t)))
    step = DAY_MS if interval == "3d" else INTERVAL_MS[interval]
    off = _offset(interval)
    return (t - off) // step * step + off


def ceil(t: int, interval: str) -> int:
    """The first open time at or after instant ``t`` (ms) (for ``3d``: the first day boundary)."""
    start = floor(t, interval)
    if start == t:
        return start
    return start + DAY_MS if interval == "3d" else next_open(start, interval)


def next_open(t: int, interval: str) -> int:
    """The open time of the candle after the one opening at ``t``."""
    if check(interval) == MONTH:
        return int(_ms(_months(t) + 1))
    return t + INTERVAL_MS[interval]


def close_time(t: int, interval: str) -> int:
    """Binance's close_time of the candle opening at ``t``: the next open time minus 1 ms."""
    return next_open(t, interval) - 1


def _offset(interval: str) -> int:
    return _WEEK_OFFSET_MS if interval == "1w" else 0


def aligned(times: np.ndarray, interval: str) -> np.ndarray:
    """A boolean mask: which open times lie on the interval's grid."""
    check(interval)
    t = np.asarray(times, dtype=np.int64)
    if interval == MONTH:
        return _ms(_months(t)) == t
    if interval == "3d":
        return t % DAY_MS == 0
    return (t - _offset(interval)) % INTERVAL_MS[interval] == 0


def next_opens(times: np.ndarray, interval: str) -> np.ndarray:
    """Vectorised ``next_open``."""
    t = np.asarray(times, dtype=np.int64)
    if check(interval) == MONTH:
        return _ms(_months(t) + 1)
    return t + INTERVAL_MS[interval]


def slots(a: int, b: int, interval: str) -> int:
    """How many candles open in [a, b) when ``a`` is on the grid (0 when b <= a)."""
    if b <= a:
        return 0
    if check(interval) == MONTH:
        return int((_months(b - 1) - _months(a)).astype(np.int64)) + 1
    step = INTERVAL_MS[interval]
    return (b - a + step - 1) // step


def opens_between(a: int, b: int, interval: str) -> np.ndarray:
    """Every open time in [a, b), from the first grid point at or after ``a``."""
    start = ceil(a, interval)
    if check(interval) == MONTH:
        n = slots(start, b, interval)
        return _ms(_months(start) + np.arange(n)) if n else np.empty(0, np.int64)
    return np.arange(start, b, INTERVAL_MS[interval], dtype=np.int64)


def gaps(times: np.ndarray, interval: str) -> list[tuple[int, int]]:
    """(open_time before the hole, missing candles) for each hole in sorted, aligned open times."""
    t = np.asarray(times, dtype=np.int64)
    if len(t) < 2:
        return []
    nxt = next_opens(t[:-1], interval)
    holes = np.flatnonzero(t[1:] != nxt)
    return [(int(t[i]), slots(int(nxt[i]), int(t[i + 1]), interval)) for i in holes]


def holes(times: np.ndarray, interval: str) -> list[tuple[int, int]]:
    """[start, end) of each run of missing open times between sorted, aligned open times (``end`` is stored)."""
    t = np.asarray(times, dtype=np.int64)
    if len(t) < 2:
        return []
    nxt = next_opens(t[:-1], interval)
    return [(int(nxt[i]), int(t[i + 1])) for i in np.flatnonzero(t[1:] != nxt)]


def infer(times: np.ndarray) -> str | None:
    """The interval of sorted open times, from the median spacing (a calendar month: 28-31 days, aligned)."""
    t = np.asarray(times, dtype=np.int64)
    if len(t) < 2:
        return None
    d = int(np.median(np.diff(t)))
    fixed = next((k for k, v in INTERVAL_MS.items() if v == d), None)
    if fixed is not None:
        return fixed
    if 28 * DAY_MS <= d <= 31 * DAY_MS and bool(aligned(t, MONTH).all()):
        return MONTH
    return None


def consecutive(times: np.ndarray, interval: str) -> np.ndarray:
    """A boolean mask over ``times[1:]``: True where a candle directly follows the one before it."""
    t = np.asarray(times, dtype=np.int64)
    if len(t) < 2:
        return np.zeros(0, dtype=bool)
    return t[1:] == next_opens(t[:-1], interval)
