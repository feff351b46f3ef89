"""REST backfill: bring one series up to ``now`` (or ``until``), page by page, into the store.

What to fetch is computed from the store: everything after the last stored candle (or from ``since``),
plus every hole between stored candles that is not a known gap. Holes the exchange answers with no
candles twice (no trading, maintenance) are recorded as known gaps, so they are fetched again only once
and then never, and are never filled with invented candles. Grids come from :mod:`xylen.core.intervals`
(weeks open on Mondays, months on the 1st). Rows whose ``close_time >= now`` (the still-open candle)
are dropped. Each page is appended as it arrives: a kill at any point loses at most one page.

The same loop serves every exchange: ``source`` is Binance's :class:`~xylen.collect.rest.Rest` or a
:class:`~xylen.collect.ccxt_source.CcxtSource`; pages are the exchange's biggest (``source.page_limit``). An exchange
that serves only its most recent candles (Kraken: 720, ``source.reach``) is never asked for older ones: that range
is recorded as a known gap, with a warning, and never invented.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from xylen.core import intervals
from xylen.core.candles import fmt_ts
from xylen.core.store import Store

log = logging.getLogger("xylen.collect")

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
    unreachable: list[tuple[int, int]] = field(default_factory=list)  # older than the exchange serves (Kraken)

    def to_dict(self) -> dict[str, object]:
        return {
            "symbol": self.symbol,
            "interval": self.interval,
            "fetched": self.fetched,
            "added": self.added,
            "requests": self.requests,
            "new_known_gaps": [list(g) for g in self.new_known_gaps],
            "unreachable": [list(g) for g in self.unreachable],
        }


def plan(
    store: Store, symbol: str, interval: str, now: int, since: int | None = None, until: int | None = None
) -> list[tuple[int, int, bool]]:
    """Ranges [start, end) of open_time to fetch, oldest first, each with ``tail``: True for the range after
    the newest stored candle (open on the right: the exchange may simply not have published more yet)."""
    # a candle opening before this has closed (its next open <= now); for 3d (a day floor) the rows' own
    # close_time still drops the open candle, as for every interval
    end = intervals.floor(now, interval)
    if until is not None:
        end = min(end, intervals.ceil(until, interval))
    t = store.read(symbol, interval).get_column("open_time").to_numpy()
    known = store.known_gaps(symbol, interval)
    start = None if since is None else intervals.ceil(since, interval)  # first grid point at or after --since
    ranges: list[tuple[int, int, bool]] = []
    if len(t) == 0:
        if start is None:
            start = intervals.floor(end - DEFAULT_LOOKBACK_MS, interval)
        ranges.append((start, end, True))
    else:
        first, last = int(t[0]), int(t[-1])
        if start is not None and start < first:
            ranges.append((start, first, False))
        for a, b in intervals.holes(t, interval):
            if not any(x <= a and b <= y for x, y in known):
                ranges.append((a, b, False))
        ranges.append((max(intervals.next_open(last, interval), start or 0), end, True))
    lo = start if start is not None else -(2**62)
    return [(max(a, lo), min(b, end), tail) for a, b, tail in ranges if min(b, end) > max(a, lo)]


def reach_start(source: Any, interval: str, now: int) -> int | None:
    """The oldest open time the exchange still serves for ``interval`` (None: all of them). Kraken's OHLC answers
    only its most recent ``reach`` candles, the still-open one included."""
    reach = getattr(source, "reach", None)
    if not reach:
        return None
    t = intervals.floor(now, interval)  # the open candle, the newest of the `reach`
    for _ in range(reach - 1):
        t = intervals.floor(t - 1, interval)
    return t


def backfill_series(
    rest: Any,
    store: Store,
    symbol: str,
    interval: str,
    now: int,
    *,
    since: int | None = None,
    until: int | None = None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    limit: int | None = None,
) -> SeriesResult:
    """Fetch every planned range of one series from ``rest`` (the exchange's source) and append it; record holes
    the exchange has no data for.

    A hole becomes a known gap only when a second request for it also comes back empty: one empty answer
    (a glitch, a lagging replica) must not hide candles for ever. A range older than the exchange serves at all
    (``rest.reach``) is not asked for: it is recorded as a known gap and logged."""
    result = SeriesResult(symbol, interval)
    limit = limit or rest.page_limit
    ranges = plan(store, symbol, interval, now, since, until)
    ranges = _within_reach(rest, store, symbol, interval, now, ranges, result)
    result.ranges = [(a, b) for a, b, _ in ranges]
    pager = _Pager(rest, store, symbol, interval, now, limit, result, should_stop, progress)
    pager.total = sum(intervals.slots(a, b, interval) for a, b, _ in ranges)
    pager.report(0)
    for a, b, tail in ranges:  # a non-tail range ends at a stored candle: a hole up to b is a real hole
        got, complete = pager.fetch(a, b)
        if not complete:
            continue
        right = max((intervals.next_open(int(g[-1]), interval) for g in got), default=a) if tail else b
        candidates = [(x, y, False) for x, y in _holes(a, right, got, interval)]
        if tail and right < b:
            candidates.append((right, b, True))  # nothing came back for the rest: ask once more before giving up
        for ca, cb, open_right in candidates:  # the second asking: only what is empty again is a known gap
            again, complete = pager.fetch(ca, cb)
            if not complete:
                continue
            if open_right:  # the exchange may not have published more yet: only holes before a candle it sent
                cb = max((intervals.next_open(int(g[-1]), interval) for g in again), default=ca)
            result.new_known_gaps += _holes(ca, cb, again, interval)
    if result.new_known_gaps:
        store.add_known_gaps(symbol, interval, result.new_known_gaps)
    pager.report(pager.total)
    return result


class _Pager:
    """Pages one series' candles in from the exchange and appends each page as it arrives."""

    def __init__(
        self,
        rest: Any,
        store: Store,
        symbol: str,
        interval: str,
        now: int,
        limit: int,
        result: SeriesResult,
        should_stop: Callable[[], bool],
        progress: Progress | None,
    ) -> None:
        self.rest, self.store, self.symbol, self.interval = rest, store, symbol, interval
        self.now, self.limit, self.result = now, limit, result
        self.should_stop, self.progress = should_stop, progress
        self.total = self.done = 0

    def report(self, done: int) -> None:
        if self.progress:
            self.progress(self.symbol, self.interval, min(done, self.total), self.total)

    def fetch(self, a: int, b: int) -> tuple[list[np.ndarray], bool]:
        """Every candle the exchange has with open_time in [a, b), closed by ``now``: (open times per page,
        False if stopped early)."""
        cursor, got = a, list[np.ndarray]()
        while cursor < b:
            if self.should_stop():
                return got, False
            page, sent = self.rest.candles(self.symbol, self.interval, cursor, b - 1, self.limit)
            self.result.requests += 1
            df = page.filter(
                (pl.col("open_time") >= cursor) & (pl.col("open_time") < b) & (pl.col("close_time") < self.now)
            )
            nxt = cursor
            if df.height:
                self.result.added += self.store.append(self.symbol, self.interval, df).added
                self.result.fetched += df.height
                got.append(df.get_column("open_time").to_numpy())
                nxt = intervals.next_open(int(df["open_time"][-1]), self.interval)
            elif sent >= self.limit:
                break  # a full page, none of it in [cursor, b) up to now: nothing more to ask for here
            if sent < self.limit:  # the exchange has nothing more in the span this page covered ...
                covered = self.rest.page_end(self.interval, cursor, b - 1, self.limit)
                if covered is None or covered >= b - 1:
                    break  # ... which is the whole range
                # ... a page's span (ccxt's exchanges: `limit` candles), not the range: a halt, or a listing after
                # the range's start, longer than a page; the candles after it are asked for next
                nxt = max(nxt, intervals.next_open(intervals.floor(covered, self.interval), self.interval))
            self.done += intervals.slots(cursor, min(nxt, b), self.interval)
            self.report(self.done)
            cursor = nxt
        return got, True


def _within_reach(
    source: Any,
    store: Store,
    symbol: str,
    interval: str,
    now: int,
    ranges: list[tuple[int, int, bool]],
    result: SeriesResult,
) -> list[tuple[int, int, bool]]:
    """``ranges`` cut to what the exchange still serves; what it cannot serve becomes a known gap (said once)."""
    first = reach_start(source, interval, now)
    if first is None:
        return ranges
    kept = []
    known = store.known_gaps(symbol, interval)
    for a, b, tail in ranges:
        if a < first and not any(x <= a and min(b, first) <= y for x, y in known):  # said before: not again
            result.unreachable.append((a, min(b, first)))
        if b > first:
            kept.append((max(a, first), b, tail))
    if result.unreachable:
        store.add_known_gaps(symbol, interval, result.unreachable)
        lo, hi = result.unreachable[0][0], result.unreachable[-1][1]
        log.warning(
            "%s %s %s: %s serves only its most recent %d candles; %s .. %s is out of its reach and recorded as a "
            "known gap (nothing invented). Import older candles from a file with `xylen collect import`.",
            source.exchange, symbol, interval, source.exchange, source.reach, fmt_ts(lo), fmt_ts(hi),
        )
    return kept


def _holes(a: int, b: int, got: list[np.ndarray], interval: str) -> list[tuple[int, int]]:
    """Ranges in [a, b) the exchange answered without candles, given the open times it did return."""
    if b <= a:
        return []
    t = np.concatenate(got) if got else np.array([], dtype=np.int64)
    t = np.unique(t[(t >= a) & (t < b)])
    out, cursor = [], a
    for x in t.tolist():
        if x > cursor:
            out.append((cursor, x))
        cursor = intervals.next_open(x, interval)
    if cursor < b:
        out.append((cursor, b))
    return out
