"""REST backfill: bring one series up to ``now`` (or ``until``), page by page, into the store.

What to fetch is computed from the store: everything after the last stored candle (or from ``since``),
plus every hole between stored candles that is not a known gap. Holes the exchange answers with no
candles (no trading, maintenance) are recorded as known gaps, so they are fetched once and never again,
and are never filled with invented candles. Rows whose ``close_time >= now`` (the still-open candle)
are dropped. Each page is appended as it arrives: a kill at any point loses at most one page.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from xylen.collect.rest import PAGE_LIMIT, Rest, rows_to_frame
from xylen.core.candles import interval_ms
from xylen.core.store import Store, find_gaps

DEFAULT_LOOKBACK_MS = 365 * 86_400_000  # an empty series without --since starts a year back

Progress = Callable[[str, str, int, int], None]  # (symbol, interval, candles done, candles expected)


@dataclass
class SeriesResult:
    symbol: str
    interval: str
    fetched: int = 0
    added: int = 0
    requests: int = 0
    ranges: list[tuple[int, int]] = field(default_factory=list)
    new_known_gaps: list[tuple[int, int]] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {
            "symbol": self.symbol,
            "interval": self.interval,
            "fetched": self.fetched,
            "added": self.added,
            "requests": self.requests,
            "new_known_gaps": [list(g) for g in self.new_known_gaps],
        }


def plan(
    store: Store, symbol: str, interval: str, now: int, since: int | None = None, until: int | None = None
) -> list[tuple[int, int, bool]]:
    """Ranges [start, end) of open_time to fetch, oldest first, each with ``tail``: True for the range after
    the newest stored candle (open on the right: the exchange may simply not have published more yet)."""
    step = interval_ms(interval)
    end = (now // step) * step  # a candle opening before this has closed (open + step - 1 < now)
    if until is not None:
        end = min(end, -(-until // step) * step)
    t = store.read(symbol, interval).get_column("open_time").to_numpy()
    known = store.known_gaps(symbol, interval)
    start = since
    if start is not None:
        start = -(-start // step) * step  # first grid point at or after --since
    ranges: list[tuple[int, int, bool]] = []
    if len(t) == 0:
        if start is None:
            start = (end - DEFAULT_LOOKBACK_MS) // step * step
        ranges.append((start, end, True))
    else:
        first, last = int(t[0]), int(t[-1])
        if start is not None and start < first:
            ranges.append((start, first, False))
        for before, n in find_gaps(t, step):
            a, b = before + step, before + (n + 1) * step
            if not any(x <= a and b <= y for x, y in known):
                ranges.append((a, b, False))
        ranges.append((max(last + step, start or 0), end, True))
    lo = start if start is not None else -(2**62)
    return [(max(a, lo), min(b, end), tail) for a, b, tail in ranges if min(b, end) > max(a, lo)]


def backfill_series(
    rest: Rest,
    store: Store,
    symbol: str,
    interval: str,
    now: int,
    *,
    since: int | None = None,
    until: int | None = None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    limit: int = PAGE_LIMIT,
) -> SeriesResult:
    """Fetch every planned range of one series and append it; record holes the exchange has no data for."""
    step = interval_ms(interval)
    result = SeriesResult(symbol, interval)
    ranges = plan(store, symbol, interval, now, since, until)
    result.ranges = [(a, b) for a, b, _ in ranges]
    total = sum((b - a) // step for a, b, _ in ranges)
    done = 0
    if progress:
        progress(symbol, interval, 0, total)
    for a, b, tail in ranges:  # a non-tail range ends at a stored candle: a hole up to b is a real hole
        cursor, got, complete = a, [], True
        while cursor < b:
            if should_stop():
                complete = False
                break
            rows = rest.klines(symbol, interval, cursor, b - 1, limit)
            result.requests += 1
            df = rows_to_frame(rows).filter(
                (pl.col("open_time") >= cursor) & (pl.col("open_time") < b) & (pl.col("close_time") < now)
            )
            if df.height == 0:
                break  # the exchange has nothing in [cursor, b) up to now
            result.added += store.append(symbol, interval, df).added
            result.fetched += df.height
            got.append(df.get_column("open_time").to_numpy())
            nxt = int(df["open_time"][-1]) + step
            done += (nxt - cursor) // step
            if progress:
                progress(symbol, interval, min(done, total), total)
            cursor = nxt
            if len(rows) < limit:
                break  # the exchange sent all it has in the range
        if complete:
            right = max((int(g[-1]) + step for g in got), default=a) if tail else b
            result.new_known_gaps += _holes(a, right, got, step)
    if result.new_known_gaps:
        store.add_known_gaps(symbol, interval, result.new_known_gaps)
    if progress:
        progress(symbol, interval, total, total)
    return result


def _holes(a: int, b: int, got: list[np.ndarray], step: int) -> list[tuple[int, int]]:
    """Ranges in [a, b) the exchange answered without candles, given the open times it did return."""
    if b <= a:
        return []
    t = np.concatenate(got) if got else np.array([], dtype=np.int64)
    t = np.unique(t[(t >= a) & (t < b)])
    edges = np.concatenate([[a - step], t, [b]])
    d = np.diff(edges)
    return [(int(edges[i]) + step, int(edges[i + 1])) for i in np.flatnonzero(d > step)]
