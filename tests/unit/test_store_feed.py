"""The push feed (serve/store_feed.py): history, and every newly stored candle handed to listeners on the event
loop exactly once and in order, read only when a folder it would land in changed; store errors reach listeners."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from tests.conftest import wait_for
from tests.unit.test_store_concurrency import frame
from xylen.core.errors import DataError, XylenError
from xylen.core.store import Store
from xylen.serve import store_feed
from xylen.serve.decode import RequestError
from xylen.serve.store_feed import StoreFeed

pytestmark = pytest.mark.unit

JAN = 1704067200000  # 2024-01-01
STEP = 300_000  # 5m
HOUR_AGO_NS = 3600 * 10**9


def candles(first: int, n: int, marker: float = 100.0) -> pl.DataFrame:
    """``n`` consecutive 5m candles from index ``first`` (open = marker + index: each row is recognisable)."""
    t = JAN + STEP * np.arange(first, first + n)
    df = frame(t, marker, STEP)
    return df.with_columns((pl.col("open") + pl.Series(np.arange(first, first + n, dtype=np.float64))).alias("open"))


def times(i: Any) -> list[int]:
    return [JAN + STEP * k for k in i]


class Loop:
    """An event loop on its own thread, as a server's; records what listeners receive and on which thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.got: list[np.ndarray] = []
        self.errors: list[XylenError] = []
        self.threads: set[int] = set()

    def on_rows(self, rows: np.ndarray) -> None:
        self.threads.add(threading.get_ident())
        self.got.append(rows)

    def on_error(self, exc: XylenError) -> None:
        self.threads.add(threading.get_ident())
        self.errors.append(exc)

    def run(self, fn: Any) -> Any:
        """Call ``fn()`` on the loop's thread and return its result."""

        async def call() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(60)

    def settle(self) -> None:
        """Wait until every callback scheduled so far has run (FIFO: a no-op scheduled now runs after them)."""
        self.run(lambda: None)

    @property
    def times(self) -> list[int]:
        return [int(t) for rows in self.got for t in rows[:, 0]]


@pytest.fixture
def loop() -> Iterator[Loop]:
    lp = Loop()
    yield lp
    lp.loop.call_soon_threadsafe(lp.loop.stop)
    lp.thread.join(10)
    lp.loop.close()


def age_folders(root: Path) -> None:
    """Make every folder's mtime an hour old: the feed trusts such stamps (no clock tick can hide a change)."""
    past = time.time_ns() - HOUR_AGO_NS
    for d in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        os.utime(d, ns=(past, past))


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Every Store.last_open_time and Store.read call (the feed's only two store reads), by (kind, symbol)."""
    calls: list[tuple[str, str]] = []
    last, read = Store.last_open_time, Store.read

    def counting_last(self: Store, symbol: str, interval: str) -> Any:
        calls.append(("last", symbol))
        return last(self, symbol, interval)

    def counting_read(self: Store, symbol: str, interval: str, *a: Any, **k: Any) -> Any:
        calls.append(("read", symbol))
        return read(self, symbol, interval, *a, **k)

    monkeypatch.setattr(Store, "last_open_time", counting_last)
    monkeypatch.setattr(Store, "read", counting_read)
    return calls


# ---------------------------------------------------------------- history
def test_history_is_the_last_n_candles_as_a_float_matrix(tmp_path: Path) -> None:
    Store(tmp_path).append("BTCUSDT", "5m", candles(0, 300))
    got = StoreFeed(tmp_path, thread=False).history("binance", "BTCUSDT", "5m", 100)
    assert got.dtype == np.float64 and got.shape == (100, 6)
    assert got[:, 0].astype(np.int64).tolist() == times(range(200, 300))
    want = candles(200, 100).select(list(store_feed.COLUMNS)).to_numpy()
    assert np.array_equal(got, want)
    short = StoreFeed(tmp_path, thread=False).history("binance", "btcusdt", "5m", 1000)  # fewer stored: all of them
    assert short.shape == (300, 6)


def test_history_reaches_past_gaps_for_n_candles(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.append("BTCUSDT", "5m", candles(0, 50))
    store.append("BTCUSDT", "5m", candles(5000, 50))  # a long outage between them
    got = StoreFeed(tmp_path, thread=False).history("binance", "BTCUSDT", "5m", 80)
    assert got[:, 0].astype(np.int64).tolist() == times([*range(20, 50), *range(5000, 5050)])


def test_history_of_nothing_stored_is_a_404_naming_the_collect_command(tmp_path: Path) -> None:
    Store(tmp_path).append("BTCUSDT", "5m", candles(0, 10))
    feed = StoreFeed(tmp_path, thread=False)
    with pytest.raises(RequestError) as err:
        feed.history("binance", "ETHUSDT", "5m", 100)
    assert err.value.status == 404
    assert "No ETHUSDT 5m candles are stored" in err.value.message
    assert "`xylen collect --symbols ETHUSDT --intervals 5m`" in err.value.message
    with pytest.raises(RequestError) as err:
        feed.history("kraken", "BTCUSD", "1h", 100)
    assert "No kraken BTCUSD 1h candles" in err.value.message
    assert "`xylen collect --exchange kraken --symbols BTCUSD --intervals 1h`" in err.value.message


@pytest.mark.parametrize(
    ("exchange", "symbol", "interval", "quoted"),
    [
        ("binance", "BTCUSDT", "7m", "'7m'"),
        ("binance", "../../etc", "5m", "../../etc"),
        ("bin/ance", "BTCUSDT", "5m", "bin/ance"),
    ],
)
def test_a_name_that_is_no_series_is_a_422_quoting_it(
    tmp_path: Path, loop: Loop, exchange: str, symbol: str, interval: str, quoted: str
) -> None:
    feed = StoreFeed(tmp_path, thread=False)
    feed.start(loop.loop)
    for call in (
        lambda: feed.history(exchange, symbol, interval, 10),
        lambda: feed.listen(exchange, symbol, interval, loop.on_rows),
    ):
        with pytest.raises(RequestError) as err:
            call()
        assert err.value.status == 422 and quoted in err.value.message
    assert feed.listened == [] and not (tmp_path / "klines").exists()  # nothing was created by a bad name


def test_history_of_an_unreadable_store_is_a_503_naming_the_file(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.append("BTCUSDT", "5m", candles(0, 100))
    [data] = store.files("BTCUSDT", "5m")
    data.write_bytes(b"PAR1 torn")
    with pytest.raises(RequestError) as err:
        StoreFeed(tmp_path, thread=False).history("binance", "BTCUSDT", "5m", 10)
    assert err.value.status == 503 and str(data) in err.value.message and "xylen collect status" in err.value.message


def test_history_of_a_read_failure_core_does_not_name_is_a_503_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Store(tmp_path).append("BTCUSDT", "5m", candles(0, 100))

    def broken(self: Store, *a: Any, **k: Any) -> pl.DataFrame:
        raise pl.exceptions.ComputeError("parquet: out-of-spec page")

    monkeypatch.setattr(Store, "read", broken)
    with pytest.raises(RequestError) as err:
        StoreFeed(tmp_path, thread=False).history("binance", "BTCUSDT", "5m", 10)
    assert err.value.status == 503 and "out-of-spec page" in err.value.message


# ---------------------------------------------------------------- listening
def test_new_candles_reach_the_listener_on_the_loop_in_order_exactly_once(tmp_path: Path, loop: Loop) -> None:
    store = Store(tmp_path)
    store.append("BTCUSDT", "5m", candles(0, 100))
    feed = StoreFeed(tmp_path, poll_s=0.01)
    feed.start(loop.loop)
    try:
        loop.run(lambda: feed.listen("binance", "BTCUSDT", "5m", loop.on_rows))
        wait_for(lambda: feed.polls >= 2, what="the feed to look once")  # from the newest stored on
        for i in range(100, 130):
            store.append("BTCUSDT", "5m", candles(i, 1))
        store.append("BTCUSDT", "5m", candles(130, 70))  # a page: merged into the month file, not a tail
        wait_for(lambda: len(loop.times) >= 100, what="100 pushed candles")
        loop.settle()
    finally:
        feed.stop()
    assert loop.times == times(range(100, 200))
    assert loop.threads == {loop.thread.ident}
    rows = np.concatenate(loop.got)
    assert np.array_equal(rows, candles(100, 100).select(list(store_feed.COLUMNS)).to_numpy())


def test_since_delivers_what_was_stored_between_history_and_listen(tmp_path: Path, loop: Loop) -> None:
    store = Store(tmp_path)
    store.append("BTCUSDT", "5m", candles(0, 100))
    feed = StoreFeed(tmp_path, thread=False)
    feed.start(loop.loop)
    window = feed.history("binance", "BTCUSDT", "5m", 50)
    store.append("BTCUSDT", "5m", candles(100, 3))  # stored before the subscription is in place
    feed.listen("binance", "BTCUSDT", "5m", loop.on_rows, since=int(window[-1, 0]))
    store.append("BTCUSDT", "5m", candles(103, 1))
    feed.poll_once()
    loop.settle()
    assert loop.times == times(range(100, 104))


def test_only_listened_series_are_read_and_an_unchanged_store_costs_no_read(
    tmp_path: Path, loop: Loop, counted: list[tuple[str, str]]
) -> None:
    store = Store(tmp_path)
    store.append("BTCUSDT", "5m", candles(0, 100))
    store.append("ETHUSDT", "5m", candles(0, 100))
    age_folders(tmp_path)
    feed = StoreFeed(tmp_path, thread=False)
    feed.start(loop.loop)
    feed.listen("binance", "BTCUSDT", "5m", loop.on_rows)
    for _ in range(3):
        feed.poll_once()  # the first look finds the cursor; its stamps are old, so the store is trusted
    counted.clear()
    for _ in range(50):
        feed.poll_once()
    assert counted == []  # 50 looks at an unchanged series: stat calls only
    store.append("ETHUSDT", "5m", candles(100, 5))  # a series nobody listens to
    store.append("BTCUSDT", "5m", candles(100, 1))
    feed.poll_once()
    loop.settle()
    assert loop.times == times([100])
    assert counted and {sym for _, sym in counted} == {"BTCUSDT"}


def test_a_recent_unchanged_stamp_is_not_trusted(tmp_path: Path, loop: Loop, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two changes within one timestamp tick leave a folder's stamp as it was after the first: while a stamp is
    younger than RACY_NS, every look asks the store."""
    store = Store(tmp_path)
    store.append("BTCUSDT", "5m", candles(0, 10))
    feed = StoreFeed(tmp_path, thread=False)
    feed.start(loop.loop)
    feed.listen("binance", "BTCUSDT", "5m", loop.on_rows)
    feed.poll_once()
    frozen = (1, time.time_ns(), time.time_ns())  # every folder "unchanged", changed just now
    monkeypatch.setattr(store_feed, "_stat", lambda path: frozen)
    feed.poll_once()
    store.append("BTCUSDT", "5m", candles(10, 1))
    feed.poll_once()
    loop.settle()
    assert loop.times == times([10])
    old = (1, time.time_ns() - HOUR_AGO_NS, 0)  # an old stamp is trusted ... until the safety-net look
    monkeypatch.setattr(store_feed, "_stat", lambda path: old)
    feed.poll_once()
    store.append("BTCUSDT", "5m", candles(11, 1))
    feed.poll_once()
    loop.settle()
    assert loop.times == times([10])
    later = time.monotonic() + store_feed.FULL_EVERY_S + 1
    monkeypatch.setattr(store_feed, "_monotonic", lambda: later)
    feed.poll_once()  # the safety-net look is due
    loop.settle()
    assert loop.times == times([10, 11])


def test_a_new_month_and_a_new_year_are_seen(tmp_path: Path, loop: Loop) -> None:
    store = Store(tmp_path)
    dec = 1733011200000 - STEP * 3  # three candles before 2024-12-01
    store.append("BTCUSDT", "5m", frame([dec - STEP], 1.0, STEP))
    age_folders(tmp_path)
    feed = StoreFeed(tmp_path, thread=False)
    feed.start(loop.loop)
    feed.listen("binance", "BTCUSDT", "5m", loop.on_rows)
    feed.poll_once()
    want = [dec, dec + STEP, dec + 2 * STEP, dec + 3 * STEP, 1735689600000]  # ... 2024-12-01, 2025-01-01
    for t in want:
        age_folders(tmp_path)
        store.append("BTCUSDT", "5m", frame([t], 1.0, STEP))
        feed.poll_once()
        feed.poll_once()
    loop.settle()
    assert loop.times == want


def test_a_hole_is_read_again_before_it_is_delivered(
    tmp_path: Path, loop: Loop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A listing taken while a writer adds tails may show the newer tail only: the second read shows both."""
    store = Store(tmp_path)
    store.append("BTCUSDT", "5m", candles(0, 10))
    feed = StoreFeed(tmp_path, thread=False)
    feed.start(loop.loop)
    feed.listen("binance", "BTCUSDT", "5m", loop.on_rows)
    feed.poll_once()
    store.append("BTCUSDT", "5m", candles(10, 1))
    store.append("BTCUSDT", "5m", candles(11, 1))
    real, reads = Store.read, []

    def first_read_misses_candle_10(self: Store, *a: Any, **k: Any) -> pl.DataFrame:
        df = real(self, *a, **k)
        reads.append(df.height)
        return df.filter(pl.col("open_time") != JAN + 10 * STEP) if len(reads) == 1 else df

    monkeypatch.setattr(Store, "read", first_read_misses_candle_10)
    feed.poll_once()
    loop.settle()
    assert loop.times == times([10, 11]) and len(reads) == 2


def test_a_real_gap_is_delivered_as_a_jump_and_a_late_older_candle_never(tmp_path: Path, loop: Loop) -> None:
    store = Store(tmp_path)
    store.append("BTCUSDT", "5m", candles(0, 10))
    feed = StoreFeed(tmp_path, thread=False)
    feed.start(loop.loop)
    feed.listen("binance", "BTCUSDT", "5m", loop.on_rows)
    feed.poll_once()
    store.append("BTCUSDT", "5m", candles(15, 1))  # the live candle lands before the REST backfill of 10..14
    feed.poll_once()
    store.append("BTCUSDT", "5m", candles(10, 5))  # the backfill: older than what was delivered
    store.append("BTCUSDT", "5m", candles(16, 1))
    feed.poll_once()
    feed.poll_once()
    loop.settle()
    assert loop.times == times([15, 16])  # in order, once each; history() has 10..14
    assert feed.history("binance", "BTCUSDT", "5m", 7)[:, 0].astype(np.int64).tolist() == times(range(10, 17))


def test_listeners_have_their_own_cursors_and_unlisten_stops_delivery(tmp_path: Path, loop: Loop) -> None:
    store = Store(tmp_path)
    store.append("BTCUSDT", "5m", candles(0, 10))
    feed = StoreFeed(tmp_path, thread=False)
    feed.start(loop.loop)
    second: list[int] = []
    stop_first = feed.listen("binance", "BTCUSDT", "5m", loop.on_rows)
    feed.poll_once()
    store.append("BTCUSDT", "5m", candles(10, 2))
    feed.listen("binance", "btcusdt", "5m", lambda r: second.extend(int(t) for t in r[:, 0]), since=JAN + 5 * STEP)
    feed.poll_once()
    loop.settle()
    assert loop.times == times([10, 11]) and second == times(range(6, 12))
    assert feed.listened == [("binance", "BTCUSDT", "5m")]  # one series, polled once for both
    store.append("BTCUSDT", "5m", candles(12, 1))
    # on the loop: the batch is scheduled for both, then unlisten returns before it runs: the first never gets it
    loop.run(lambda: (feed.poll_once(), stop_first()))
    loop.settle()
    assert loop.times == times([10, 11]) and second == times(range(6, 13))


def test_a_failing_listener_does_not_stop_the_others(tmp_path: Path, loop: Loop) -> None:
    store = Store(tmp_path)
    store.append("BTCUSDT", "5m", candles(0, 10))
    feed = StoreFeed(tmp_path, thread=False)
    feed.start(loop.loop)

    def broken(rows: np.ndarray) -> None:
        raise RuntimeError("listener bug")

    feed.listen("binance", "BTCUSDT", "5m", broken)
    feed.listen("binance", "BTCUSDT", "5m", loop.on_rows)
    feed.poll_once()
    for i in (10, 11):
        store.append("BTCUSDT", "5m", candles(i, 1))
        feed.poll_once()
    loop.settle()
    assert loop.times == times([10, 11])


def test_a_store_error_is_reported_once_and_delivery_resumes(
    tmp_path: Path, loop: Loop, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store(tmp_path)
    store.append("BTCUSDT", "5m", candles(0, 10))
    feed = StoreFeed(tmp_path, poll_s=0.01)
    feed.start(loop.loop)
    try:
        loop.run(lambda: feed.listen("binance", "BTCUSDT", "5m", loop.on_rows, on_error=loop.on_error))
        wait_for(lambda: feed.polls >= 2, what="the first look")
        month = store.files("BTCUSDT", "5m")[0].parent
        torn = month / f"tail-{JAN + 10 * STEP}-{JAN + 10 * STEP}-{'0' * 32}.parquet"
        torn.write_bytes(b"PAR1 half a file")  # a foreign tool tore a file the feed must read
        wait_for(lambda: loop.errors, what="the error callback")
        polls = feed.polls
        wait_for(lambda: feed.polls >= polls + 20, what="20 more looks")  # the thread carries on ...
        loop.settle()
        [err] = loop.errors  # ... without repeating the same error
        assert isinstance(err, DataError) and str(torn) in err.message
        logged = [r for r in caplog.records if r.name == "xylen.serve.feed" and r.levelname == "WARNING"]
        assert len(logged) == 1 and str(torn) in logged[0].getMessage()  # logged once, not every look
        assert loop.times == []
        store.compact("BTCUSDT", "5m")  # what `xylen collect` does: the torn file goes to quarantine
        store.append("BTCUSDT", "5m", candles(10, 1))
        wait_for(lambda: loop.times == times([10]), what="delivery after the store reads again")
    finally:
        feed.stop()
    assert feed._thread is not None and not feed._thread.is_alive()


def test_an_unexpected_read_failure_is_reported_as_a_store_error(
    tmp_path: Path, loop: Loop, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(tmp_path)
    store.append("BTCUSDT", "5m", candles(0, 10))
    feed = StoreFeed(tmp_path, thread=False)
    feed.start(loop.loop)
    feed.listen("binance", "BTCUSDT", "5m", loop.on_rows, on_error=loop.on_error)
    feed.poll_once()
    store.append("BTCUSDT", "5m", candles(10, 1))

    def broken(self: Store, *a: Any, **k: Any) -> pl.DataFrame:
        raise pl.exceptions.ComputeError("parquet: out-of-spec page")

    with monkeypatch.context() as m:
        m.setattr(Store, "read", broken)
        feed.poll_once()
        feed.poll_once()
    feed.poll_once()
    loop.settle()
    [err] = loop.errors
    assert isinstance(err, DataError) and "out-of-spec page" in err.message
    assert loop.times == times([10])  # and the next look delivers


def test_stop_ends_the_thread_and_a_closed_loop_is_no_crash(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.append("BTCUSDT", "5m", candles(0, 10))
    lp = asyncio.new_event_loop()
    feed = StoreFeed(tmp_path, thread=False)
    feed.start(lp)
    feed.listen("binance", "BTCUSDT", "5m", lambda rows: None)
    feed.poll_once()
    lp.close()  # the server's loop is gone before the feed stopped
    store.append("BTCUSDT", "5m", candles(10, 1))
    feed.poll_once()  # nothing to deliver to: no exception
    feed.stop()
    assert feed.listened == []
    with pytest.raises(RuntimeError, match="after stop"):
        feed.listen("binance", "BTCUSDT", "5m", lambda rows: None)


def test_a_concurrent_writer_thread_every_candle_once_in_order(tmp_path: Path, loop: Loop) -> None:
    """``xylen collect`` appends while the feed polls as fast as it can: closed candles one by one (tails), pages
    (month merges), compactions folding tails between the feed's listing and its reads, and a month boundary."""
    store = Store(tmp_path)
    start = 1706745600000 // STEP - 150 - JAN // STEP  # 150 candles before 2024-02-01
    store.append("BTCUSDT", "5m", candles(start - 100, 100))
    feed = StoreFeed(tmp_path, poll_s=0.001)
    feed.start(loop.loop)
    writer_store = Store(tmp_path)
    total = 300

    def write() -> None:
        i = start
        while i < start + total:
            k = 1 if (i - start) % 50 < 40 else 10
            writer_store.append("BTCUSDT", "5m", candles(i, k))
            if (i - start) % 25 == 0:
                writer_store.compact("BTCUSDT", "5m")
            i += k

    try:
        loop.run(lambda: feed.listen("binance", "BTCUSDT", "5m", loop.on_rows, since=JAN + (start - 1) * STEP))
        writer = threading.Thread(target=write)
        writer.start()
        writer.join(120)
        wait_for(lambda: len(loop.times) >= total, what=f"{total} candles")
        polls = feed.polls
        wait_for(lambda: feed.polls > polls + 5, what="a few more looks")
        loop.settle()
    finally:
        feed.stop()
    assert loop.times == times(range(start, start + total))
    rows = np.concatenate(loop.got)
    assert np.array_equal(rows, candles(start, total).select(list(store_feed.COLUMNS)).to_numpy())


def test_the_feed_reads_in_a_server_process_that_blocks_polars_and_loads_it_only_then(tmp_path: Path) -> None:
    Store(tmp_path).append("BTCUSDT", "5m", candles(0, 120))
    code = (
        "import sys\n"
        "from xylen.core.imports import block_heavy_imports\n"
        "block_heavy_imports()\n"  # as `xylen serve` does before anything loads
        "from xylen.serve.store_feed import StoreFeed\n"
        "feed = StoreFeed(sys.argv[1], thread=False)\n"
        "print('polars' in sys.modules, feed.history('binance', 'BTCUSDT', '5m', 100).shape, 'polars' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "False (100, 6) True"
