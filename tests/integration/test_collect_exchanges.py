"""`xylen collect` on the exchanges reached through ccxt, end to end against their loopback fakes: a backfill through
faults (429 + Retry-After, 5xx, timeouts, empty pages) leaves exactly the store a clean run leaves; kill -9 and a
restart lose nothing and store nothing twice; unknown symbols and intervals get the exchange's list; following live
polls just after each close and stores closed candles only; Kraken's reach becomes a known gap."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from tests.conftest import wait_for
from tests.fakes.klines import FakeClock, Row, load_series
from tests.fakes.venues import EXCHANGES, FakeVenue
from tests.helpers import BTC_1H
from xylen.cli import app
from xylen.collect.runner import CollectOptions, collect, make_rest
from xylen.core.settings import load_settings
from xylen.core.store import Store

pytestmark = [pytest.mark.integration]

HOUR = 3_600_000
ROWS: list[Row] = load_series(BTC_1H, "1h")[:1500]
# the exchange's own spelling of the pair, as a user copies it from the exchange's site
SPELLING = {"bybit": "BTCUSDT", "okx": "BTC-USDT", "kraken": "XBTUSD", "coinbase": "BTC-USD", "binanceus": "btcusdt"}
CANONICAL = {"bybit": "BTCUSDT", "okx": "BTCUSDT", "kraken": "BTCUSD", "coinbase": "BTCUSD", "binanceus": "BTCUSDT"}


def shifted(rows: list[Row], end: int) -> list[Row]:
    """``rows`` moved by whole hours so that the last one opens at ``end`` (the exchange's open candle)."""
    d = end - rows[-1][0]
    return [[r[0] + d, *r[1:6], r[6] + d, *r[7:]] for r in rows]


def settings_for(home: Path, fake: FakeVenue) -> Any:
    return load_settings({"home": home}, environ={"XYLEN_EXCHANGE_BASE_URL": fake.base_url})


def run(home: Path, fake: FakeVenue, clock: FakeClock, name: str, **opts: Any) -> Any:
    """One `xylen collect --once` through the runner, the governor sleeping on the fake clock."""
    settings = settings_for(home, fake)
    src = make_rest(settings, clock=clock, sleep=lambda s: clock.advance(int(s * 1000)), timeout_s=2.0,
                    exchange=name)
    src.governor.rng = random.Random(0)
    src.client.enableRateLimit = False  # pacing is the bench's subject; these tests would wait Kraken's 1 s out
    o = CollectOptions([SPELLING[name]], ["1h"], opts.pop("since", ROWS[200][0]), None, True, name)
    return collect(settings, o, rest=src, clock=clock, **opts)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(ROWS[1400][0] + 17 * 60_000)  # inside the candle opening at ROWS[1400]


@pytest.mark.parametrize("name", EXCHANGES)
def test_a_backfill_through_faults_leaves_the_store_a_clean_run_leaves(tmp_path: Path, clock: FakeClock,
                                                                       name: str) -> None:
    sym = CANONICAL[name]
    with FakeVenue(name, {(sym, "1h"): ROWS}, now_ms=clock, enforce_rate=False) as fake:
        clean = run(tmp_path / "clean", fake, clock, name)
        want = Store(tmp_path / "clean" / "data", exchange=name).read(sym, "1h")
        assert clean.added == want.height > 0
        fake.faults.add("status", status=429, retry_after=3, times=2)
        fake.faults.add("status", status=503, times=2)
        fake.faults.add("timeout", times=1)
        fake.faults.add("empty", times=1)
        faulty = run(tmp_path / "faulty", fake, clock, name)
    store = Store(tmp_path / "faulty" / "data", exchange=name)
    got = store.read(sym, "1h")
    assert got.equals(want)
    assert faulty.retries >= 3 and faulty.rate_limited >= 2
    assert got["close_time"].max() < clock()  # the still-open candle is never stored
    assert store.known_gaps(sym, "1h") == Store(tmp_path / "clean" / "data", exchange=name).known_gaps(sym, "1h")
    assert store.market(sym)["id"] == fake.ids[sym]  # the exchange's spelling is kept beside the canonical name


@pytest.mark.parametrize("name", EXCHANGES)
def test_a_second_run_adds_nothing_and_a_later_one_only_the_new_candles(tmp_path: Path, clock: FakeClock,
                                                                        name: str) -> None:
    sym = CANONICAL[name]
    with FakeVenue(name, {(sym, "1h"): ROWS}, now_ms=clock, enforce_rate=False) as fake:
        first = run(tmp_path, fake, clock, name)
        assert run(tmp_path, fake, clock, name).added == 0
        clock.advance(3 * HOUR)
        later = run(tmp_path, fake, clock, name)
    assert first.added > 0 and later.added == 3
    t = Store(tmp_path / "data", exchange=name).read(sym, "1h")["open_time"]
    assert t.is_unique().all() and (t.diff().drop_nulls() == HOUR).all()


def test_kraken_stores_what_its_reach_allows_and_records_the_rest_as_a_known_gap(tmp_path: Path,
                                                                                 clock: FakeClock) -> None:
    with FakeVenue("kraken", {("BTCUSD", "1h"): ROWS}, now_ms=clock, enforce_rate=False) as fake:
        result = run(tmp_path, fake, clock, "kraken", since=ROWS[0][0])
    store = Store(tmp_path / "data", exchange="kraken")
    t = store.read("BTCUSD", "1h")["open_time"].to_list()
    assert t == [r[0] for r in ROWS[1400 - 719 : 1400]]  # the 719 closed candles of the most recent 720
    assert store.known_gaps("BTCUSD", "1h") == [(ROWS[0][0], ROWS[1400 - 719][0])]
    [series] = result.series
    assert series.unreachable == [(ROWS[0][0], ROWS[1400 - 719][0])]
    assert series.requests == 1  # never asked for what it cannot serve: one page of what it can


PAGED = [n for n in EXCHANGES if n != "kraken"]  # Kraken's page is all it has since `since`: no page span


@pytest.mark.parametrize("name", PAGED)
def test_a_market_listed_more_than_a_page_after_since_is_backfilled_from_its_first_candle(
        tmp_path: Path, clock: FakeClock, name: str) -> None:
    # a page spans at most `limit` candles (ccxt's `until`): an empty one says nothing about the candles after it
    sym, since = CANONICAL[name], ROWS[0][0] - 1100 * HOUR
    with FakeVenue(name, {(sym, "1h"): ROWS}, now_ms=clock, enforce_rate=False) as fake:
        run(tmp_path, fake, clock, name, since=since)
    store = Store(tmp_path / "data", exchange=name)
    assert store.read(sym, "1h")["open_time"].to_list() == [r[0] for r in ROWS[:1400]]
    assert store.known_gaps(sym, "1h") == [(since, ROWS[0][0])]  # before the listing: asked twice, nothing there


@pytest.mark.parametrize("name", PAGED)
def test_a_halt_longer_than_a_page_is_a_known_gap_and_the_candles_after_it_are_stored(
        tmp_path: Path, clock: FakeClock, name: str) -> None:
    sym, rows = CANONICAL[name], ROWS[:200] + ROWS[1250:]  # 1,050 hours without a candle: more than any page
    with FakeVenue(name, {(sym, "1h"): rows}, now_ms=clock, enforce_rate=False) as fake:
        run(tmp_path, fake, clock, name, since=ROWS[0][0])
        again = run(tmp_path, fake, clock, name, since=ROWS[0][0])
    store = Store(tmp_path / "data", exchange=name)
    assert store.read(sym, "1h")["open_time"].to_list() == [r[0] for r in rows[:-100]]  # all closed ones, once
    assert store.known_gaps(sym, "1h") == [(ROWS[200][0], ROWS[1250][0])]
    assert again.added == 0


cli = CliRunner()


@pytest.mark.parametrize("name", EXCHANGES)
def test_unknown_symbols_and_intervals_are_refused_with_what_the_exchange_has(tmp_path: Path, clock: FakeClock,
                                                                              name: str) -> None:
    sym = CANONICAL[name]
    with FakeVenue(name, {(sym, "1h"): ROWS}, now_ms=clock, enforce_rate=False) as fake:
        env = {"XYLEN_HOME": str(tmp_path), "XYLEN_EXCHANGE_BASE_URL": fake.base_url}
        typo = sym[:-1] + sym[-1] + "X"  # BTCUSDTX: close to the real one
        r = cli.invoke(app, ["collect", "--exchange", name, "--symbols", typo, "--intervals", "1h", "--once"],
                       env=env)
        assert r.exit_code == 6, r.output
        assert repr(typo) in r.stderr and "hint:" in r.stderr and "Traceback" not in r.output
        assert "did you mean" in r.stderr and fake.ids[sym] in r.stderr.split("hint:")[1]
        lacking = "1s"  # no exchange here has one-second candles through ccxt
        r = cli.invoke(app, ["collect", "--exchange", name, "--symbols", sym, "--intervals", lacking, "--once"],
                       env=env)
        assert r.exit_code == 2 and repr(lacking) in r.stderr and "1h" in r.stderr, r.output
    assert not (tmp_path / "data" / "klines").exists() or Store.exchanges(tmp_path / "data") == []


def test_coinbase_refuses_an_interval_it_has_no_granularity_for(tmp_path: Path, clock: FakeClock) -> None:
    with FakeVenue("coinbase", {("BTCUSD", "1h"): ROWS}, now_ms=clock, enforce_rate=False) as fake:
        env = {"XYLEN_HOME": str(tmp_path), "XYLEN_EXCHANGE_BASE_URL": fake.base_url}
        r = cli.invoke(app, ["collect", "--exchange", "coinbase", "--symbols", "BTC-USD", "--intervals", "4h",
                             "--once"], env=env)
    assert r.exit_code == 2 and "'4h'" in r.stderr, r.output
    for have in ("1m", "5m", "15m", "30m", "1h", "2h", "6h", "1d"):
        assert have in r.stderr


def test_following_polls_each_close_and_stores_closed_candles_only(tmp_path: Path, clock: FakeClock) -> None:
    """The runner follows a ccxt exchange by polling: each candle is stored once, soon after it closes."""
    name, sym = "okx", "BTCUSDT"
    with FakeVenue(name, {(sym, "1h"): ROWS}, now_ms=clock, enforce_rate=False) as fake:
        settings = settings_for(tmp_path, fake)
        src = make_rest(settings, clock=clock, sleep=lambda s: clock.advance(int(s * 1000)), exchange=name)
        src.client.enableRateLimit = False
        stop = threading.Event()
        opts = CollectOptions(["BTC-USDT"], ["1h"], ROWS[1300][0], None, False, name)
        done: list[Any] = []
        t = threading.Thread(target=lambda: done.append(collect(settings, opts, rest=src, clock=clock,
                                                                should_stop=stop.is_set)), daemon=True)
        t.start()
        store = Store(tmp_path / "data", exchange=name)
        wait_for(lambda: store.last_open_time(sym, "1h") == ROWS[1399][0], timeout=60, what="the backfill")
        for k in range(1, 4):  # three closes while following: each candle lands after its close, never before
            clock.set(ROWS[1400 + k][0] - 60_000)  # a minute before the close of candle 1400 + k - 1
            time.sleep(0.5)
            assert store.last_open_time(sym, "1h") == ROWS[1399 + k - 1][0]
            clock.set(ROWS[1400 + k][0] + 3_000)  # 3 s after it closed (the poller asks 2 s after each close)
            wait_for(lambda k=k: store.last_open_time(sym, "1h") == ROWS[1400 + k - 1][0], timeout=60,
                     what=f"the candle that closed {k}")
        stop.set()
        t.join(60)
    assert not t.is_alive() and done and done[0].interrupted
    got = store.read(sym, "1h")["open_time"].to_list()
    assert got == [r[0] for r in ROWS[1300:1403]]


# --------------------------------------------------------------------------------------------- kill -9
KILLS = 4


@pytest.fixture
def fake_now() -> int:
    return (int(time.time() * 1000) // HOUR) * HOUR  # the open candle's start in real time, as the subprocess sees it


@pytest.mark.slow
@pytest.mark.parametrize("name", EXCHANGES)
def test_kill_9_and_restart_lose_nothing_and_store_nothing_twice(tmp_path: Path, fake_now: int, name: str) -> None:
    """kill -9 a real `xylen collect --once`: at random moments, and as soon as its first page is stored (mid-way:
    several pages on every exchange but Kraken, whose reach is one page), then restart until one run completes."""
    sym = CANONICAL[name]
    # 700: inside Kraken's reach; elsewhere every recorded candle: 6 pages of 1,000, 20 of 300, so a kill lands between
    # two pages however fast or busy the machine is
    n = 700 if name == "kraken" else len(load_series(BTC_1H, "1h"))
    # the newest candle closed an hour before the one open now, so an hour turning during the test changes nothing
    rows = shifted(load_series(BTC_1H, "1h")[:n], fake_now - 2 * HOUR)
    rng = random.Random(12)
    with FakeVenue(name, {(sym, "1h"): rows}, enforce_rate=False) as fake:
        env = {**os.environ, "XYLEN_HOME": str(tmp_path), "XYLEN_EXCHANGE_BASE_URL": fake.base_url}
        cmd = [sys.executable, "-m", "xylen", "collect", "--exchange", name, "--symbols", SPELLING[name],
               "--intervals", "1h", "--since", str(rows[0][0]), "--once", "--quiet"]
        t0 = time.monotonic()
        subprocess.run(cmd, env=env, capture_output=True, timeout=120, check=True)
        full = time.monotonic() - t0
        store = Store(tmp_path / "data", exchange=name)
        want = store.read(sym, "1h")
        assert want.height == n
        series = store.series_dir(sym, "1h")

        def wipe() -> None:
            for f in store.klines.rglob("*.parquet"):
                f.unlink()

        wipe()
        killed, partial = 0, 0
        for cycle in range(4 * KILLS):
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            deadline = time.monotonic() + (rng.uniform(0.5, 0.97) * full if cycle % 2 else 120)
            while proc.poll() is None and time.monotonic() < deadline and not (
                cycle % 2 == 0 and any(series.rglob("*.parquet"))
            ):
                time.sleep(0.005)
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                killed += 1
            _, err = proc.communicate(timeout=60)
            assert proc.returncode in (0, -signal.SIGKILL), err.decode()[-2000:]
            df = store.read(sym, "1h")  # readable, no duplicates, no hole between what is there
            assert df["open_time"].is_unique().all() and (df["open_time"].diff().drop_nulls() == HOUR).all()
            partial += 0 < df.height < want.height
            if proc.returncode == 0 or df.height == want.height:
                wipe()  # complete: start over so the next kill lands mid-way again
            if killed >= KILLS and partial:
                break
        done = subprocess.run(cmd, env=env, capture_output=True, timeout=120)
        assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert store.read(sym, "1h").equals(want)
    assert killed >= KILLS, f"only {killed} runs were killed (a clean run took {full:.2f} s)"
    if name != "kraken":
        assert partial >= 1, "no kill landed between two pages"
    market = orjson.loads((tmp_path / "data" / "meta" / f"exchange={name}" / f"{sym}.market.json").read_bytes())
    assert market["id"] == fake.ids[sym]
