"""Polling follow (the ccxt exchanges) and the reach of an exchange that serves only recent candles, driven by an
in-process source and a fake clock: closed candles only, catch-up, a late candle asked again (never a gap), nothing
stored twice, and Kraken's 720-candle reach recorded as a known gap without a request for it."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from tests.fakes.klines import FakeClock, load_series
from tests.helpers import BTC_1H
from xylen.collect.backfill import backfill_series, reach_start
from xylen.collect.governor import Governor
from xylen.collect.poll import Poller
from xylen.collect.rest import rows_to_frame
from xylen.core.errors import ExchangeTemporaryError
from xylen.core.store import Store

HOUR = 3_600_000


class Source:
    """What the backfill calls (see CcxtSource), over recorded rows, published ``lag_ms`` after each close."""

    exchange = "kraken"

    def __init__(self, rows: list, clock: FakeClock, *, page_limit: int = 100, reach: int | None = None,
                 lag_ms: int = 0) -> None:
        self.rows, self.clock = rows, clock
        self.page_limit, self.reach, self.lag_ms = page_limit, reach, lag_ms
        self.governor = Governor(clock=clock, sleep=lambda s: clock.advance(int(s * 1000)))
        self.calls: list[tuple[int, int | None]] = []
        self.fail_next = 0

    def candles(self, symbol: str, interval: str, start: int, end: int | None, limit: int) -> tuple[pl.DataFrame, int]:
        self.calls.append((start, end))
        if self.fail_next:
            self.fail_next -= 1
            raise ExchangeTemporaryError("the exchange kept failing (test)")
        now = self.clock()
        # published: closed at least lag_ms ago, or the open candle (like a real exchange, it is sent)
        served = [r for r in self.rows if r[0] <= now and (r[6] + self.lag_ms < now or r[6] >= now)]
        if self.reach:
            served = served[-self.reach:]
        page = [r for r in served if r[0] >= start and (end is None or r[0] <= end)][: min(limit, self.page_limit)]
        return rows_to_frame(page), len(page)

    def page_end(self, interval: str, start: int, end: int | None, limit: int | None = None) -> int | None:
        return end  # a page is the oldest `limit` candles of [start, end], as Binance's


@pytest.fixture
def rows() -> list:
    return load_series(BTC_1H, "1h")[:3000]


def test_polling_stores_each_closed_candle_once_and_never_the_open_one(tmp_path: Path, rows: list) -> None:
    start = rows[2000][0]
    clock = FakeClock(start + 30 * 60_000)  # half way through the candle opening at rows[2000]
    src = Source(rows, clock, lag_ms=1500)
    store = Store(tmp_path)
    backfill_series(src, store, "BTCUSDT", "1h", clock(), since=rows[1900][0])
    assert store.last_open_time("BTCUSDT", "1h") == rows[1999][0]  # the open candle is not stored
    stop_at = start + 5 * HOUR + 10_000

    def sleep(s: float) -> None:
        clock.advance(max(1, int(s * 1000)))

    poller = Poller(src, store, [("BTCUSDT", "1h")], clock, lambda: clock() >= stop_at, sleep=sleep, delay_s=1.0,
                    retry_s=2.0)
    poller.run()
    got = store.read("BTCUSDT", "1h")
    want = rows_to_frame(rows[1900:2005])  # the candle opening at start+5h closes at start+6h-1: still open
    assert got["open_time"].to_list() == want["open_time"].to_list()
    assert got.equals(want.select(got.columns))
    # asked 1 s after each close, published 1.5 s after: each candle was early once, then asked again; no gap
    assert poller.stats.early["BTCUSDT 1h"] >= 4
    assert store.known_gaps("BTCUSDT", "1h") == []
    # nothing fetched twice: every poll asked only for what follows the last stored candle
    assert all(a > rows[1999][0] for a, _ in src.calls[-10:])


def test_polling_catches_up_after_a_long_pause_and_survives_failures(tmp_path: Path, rows: list) -> None:
    clock = FakeClock(rows[1000][0] + 1)
    src = Source(rows, clock)
    store = Store(tmp_path)
    backfill_series(src, store, "BTCUSDT", "1h", clock(), since=rows[990][0])
    clock.set(rows[1300][0] + 1)  # a suspended laptop: 300 candles later
    src.fail_next = 1
    n = {"polls": 0}

    def stop() -> bool:
        return store.last_open_time("BTCUSDT", "1h") == rows[1299][0] or n["polls"] > 50

    def sleep(s: float) -> None:
        n["polls"] += 1
        clock.advance(max(1, int(s * 1000)))

    poller = Poller(src, store, [("BTCUSDT", "1h")], clock, stop, sleep=sleep, retry_s=1.0)
    poller.run()
    assert poller.stats.failures["BTCUSDT 1h"] == 1  # the failure was logged and retried, not fatal
    assert store.read("BTCUSDT", "1h")["open_time"].to_list() == [r[0] for r in rows[990:1300]]


def test_an_exchange_with_a_short_reach_is_never_asked_for_older_candles(tmp_path: Path, rows: list,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    now = rows[2500][0] + 60_000
    clock = FakeClock(now)
    src = Source(rows, clock, reach=720, page_limit=720)
    store = Store(tmp_path)
    first = reach_start(src, "1h", now)
    assert first == rows[2500 - 719][0]
    r = backfill_series(src, store, "BTCUSDT", "1h", now, since=rows[1000][0])
    assert r.unreachable == [(rows[1000][0], first)]
    said = [m for m in caplog.messages if "serves only its most recent 720 candles" in m]
    assert len(said) == 1 and "recorded as a known gap (nothing invented)" in said[0]
    assert all(a >= first for a, _ in src.calls)  # no request for what it cannot serve
    assert store.known_gaps("BTCUSDT", "1h") == [(rows[1000][0], first)]
    got = store.read("BTCUSDT", "1h")["open_time"].to_list()
    assert got == [r[0] for r in rows[2500 - 719: 2500]]  # 719 closed candles: all it serves but the open one
    assert r.requests == 1  # one page: the 719 closed candles it serves (fewer than the page: no more to ask)
    # the next run asks nothing for the unreachable range again
    src.calls.clear()
    again = backfill_series(src, store, "BTCUSDT", "1h", now, since=rows[1000][0])
    assert again.unreachable == [] and again.added == 0
    assert len([m for m in caplog.messages if "most recent 720" in m]) == 1  # said once, not on every run
