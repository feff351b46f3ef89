"""Against the loopback fake: one empty page is not a known gap, weekly and monthly candles are collected on
their calendar grids, and a store file that became unreadable is quarantined and fetched again."""

from __future__ import annotations

import random
from datetime import datetime, timezone
from pathlib import Path

import polars as pl
import pytest

from tests.fakes import FakeBinance, FakeClock, load_series
from xylen.collect import CollectOptions, collect, make_rest, status
from xylen.collect.runner import parse_intervals, parse_symbols, parse_time
from xylen.collect.status import rows_for_table
from xylen.core import intervals
from xylen.core.candles import read_candles
from xylen.core.settings import load_settings
from xylen.core.store import Store
from xylen.train.pipeline import sample_path

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parents[1] / "data"
BTC_1H = DATA / "spot_ohlcv_feather" / "imsatoshi_GeneTrader_2024" / "BTC_USDT-1h.feather"
HOUR = 3_600_000


def ms(*args: int) -> int:
    return int(datetime(*args, tzinfo=timezone.utc).timestamp() * 1000)


def run(home: Path, fake: FakeBinance, clock: FakeClock, series: list[tuple[str, str]], **kw: object) -> object:
    settings = load_settings({"home": home, "binance_base_url": fake.base_url}, environ={})
    rest = make_rest(settings, clock=clock, sleep=lambda s: clock.advance(int(s * 1000)))
    rest.governor.rng = random.Random(0)
    opts = CollectOptions(
        sorted({s for s, _ in series}),
        sorted({i for _, i in series}),
        since=kw.get("since"),  # type: ignore[arg-type]
        until=kw.get("until"),  # type: ignore[arg-type]
        once=True,
    )
    return collect(settings, opts, rest=rest, clock=clock)


def klines_requests(fake: FakeBinance) -> int:
    return sum(r.path == "/api/v3/klines" for r in fake.requests)


@pytest.fixture(scope="module")
def btc_1h() -> list[list]:
    return load_series(BTC_1H, "1h")[:2200]  # 2024-01-01 .. 2024-03-32: three months


def test_one_empty_page_is_not_a_known_gap(tmp_path: Path, btc_1h: list[list]) -> None:
    clock = FakeClock(btc_1h[-1][0] + HOUR + 1)  # every candle closed
    expected = [r[0] for r in btc_1h]
    with FakeBinance({("BTCUSDT", "1h"): btc_1h}, now_ms=clock) as fake:
        glitch = fake.faults.empty()  # the very first klines answer is [] although the exchange has candles
        run(tmp_path, fake, clock, [("BTCUSDT", "1h")], since=btc_1h[0][0])
        store = Store(tmp_path / "data")
        assert glitch.fired == 1
        assert store.read("BTCUSDT", "1h")["open_time"].to_list() == expected
        assert store.known_gaps("BTCUSDT", "1h") == []
        assert {f.name for f in store.files("BTCUSDT", "1h")} == {"data.parquet"}  # the run folded its tails
        # a hole in the store, and the exchange's first answer for it is empty again
        df = store.read("BTCUSDT", "1h")
        for f in store.files("BTCUSDT", "1h"):
            f.unlink()
        hole = (pl.col("open_time") < expected[300]) | (pl.col("open_time") >= expected[310])
        store.append("BTCUSDT", "1h", df.filter(hole))
        glitch = fake.faults.empty()
        run(tmp_path, fake, clock, [("BTCUSDT", "1h")])
        assert glitch.fired == 1
        assert store.read("BTCUSDT", "1h")["open_time"].to_list() == expected
        assert store.known_gaps("BTCUSDT", "1h") == []
        # a real gap (two empty answers) is recorded once and never asked for again
        fake.missing.append((expected[500], expected[505]))
        store2 = Store(tmp_path / "again" / "data")
        run(tmp_path / "again", fake, clock, [("BTCUSDT", "1h")], since=btc_1h[0][0])
        assert store2.known_gaps("BTCUSDT", "1h") == [(expected[500], expected[505])]
        before = klines_requests(fake)
        run(tmp_path / "again", fake, clock, [("BTCUSDT", "1h")])
        assert klines_requests(fake) == before  # nothing is due: the known gap is not fetched again


def calendar(df: pl.DataFrame, interval: str) -> list[list]:
    """Real candles of a longer interval, built from the bundled real 5m candles of 2023."""
    key = pl.Series([intervals.floor(int(t), interval) for t in df["open_time"].to_list()])
    agg = (
        df.with_columns(key.alias("k"))
        .group_by("k", maintain_order=True)
        .agg(pl.col("open").first(), pl.col("high").max(), pl.col("low").min(), pl.col("close").last(),
             pl.col("volume").sum(), pl.len().alias("n"))
    )
    return [[int(r[0]), *(f"{float(x):.8f}" for x in r[1:6])] for r in agg.rows()]


def test_weekly_and_monthly_candles_are_collected_on_their_calendar_grids(tmp_path: Path) -> None:
    assert parse_intervals(",".join(intervals.INTERVALS)) == list(intervals.INTERVALS)  # every Binance interval
    assert parse_symbols(" btcusdt,ETH/usdt ") == ["btcusdt", "ETH/usdt"]  # as given: the exchange resolves them
    five = read_candles(sample_path()).frame  # real BTCUSDT 5m candles, all of 2023
    weeks = [r for r in calendar(five, "1w") if r[0] >= ms(2023, 1, 2)]  # whole weeks from the first Monday
    months = calendar(five, "1M")
    assert datetime.fromtimestamp(weeks[0][0] / 1000, tz=timezone.utc).weekday() == 0
    clock = FakeClock(ms(2023, 12, 20, 12))  # the week of Dec 18 and the month of December are still open
    series = {("BTCUSDT", "1w"): weeks, ("BTCUSDT", "1M"): months}
    no_trading = (ms(2023, 5, 8), ms(2023, 5, 22))  # two weekly candles the exchange never had
    with FakeBinance(series, now_ms=clock, missing=[no_trading]) as fake:
        run(tmp_path, fake, clock, list(series), since=parse_time("2023-01-04", "--since"))  # a Wednesday
        store = Store(tmp_path / "data")
        w = store.read("BTCUSDT", "1w")["open_time"].to_list()
        assert w[0] == ms(2023, 1, 9)  # the first Monday at or after --since
        assert w[-1] == ms(2023, 12, 11)  # the last closed week
        assert w == [r[0] for r in weeks if ms(2023, 1, 9) <= r[0] < ms(2023, 12, 18) and not
                     no_trading[0] <= r[0] < no_trading[1]]
        m = store.read("BTCUSDT", "1M")["open_time"].to_list()
        assert m == [ms(2023, mo, 1) for mo in range(2, 12)]  # February (first after --since) .. November
        assert store.read("BTCUSDT", "1M")["close_time"].to_list()[0] == ms(2023, 3, 1) - 1  # 28 days
        sw = store.summary("BTCUSDT", "1w", clock())
        assert (sw.gaps, sw.known_gaps) == ([], [no_trading])  # 2 weeks without trading, recorded once
        row = rows_for_table(status(store, clock(), [("BTCUSDT", "1w")]))[0]
        assert (row["known gaps"], row["gaps"], row["lag"]) == ("1 (2 candles)", "0", "2d")  # since Dec 18 00:00
        assert store.summary("BTCUSDT", "1M", clock()).gaps == []
        before = klines_requests(fake)
        clock.set(ms(2024, 1, 2))  # a week and a month close
        run(tmp_path, fake, clock, list(series))
        assert klines_requests(fake) - before == 2  # one page per series: the known gap is not asked again
        assert store.last_open_time("BTCUSDT", "1w") == ms(2023, 12, 25)
        assert store.last_open_time("BTCUSDT", "1M") == ms(2023, 12, 1)


def test_an_unreadable_month_is_quarantined_and_fetched_again(tmp_path: Path, btc_1h: list[list]) -> None:
    clock = FakeClock(btc_1h[-1][0] + HOUR + 1)
    expected = [r[0] for r in btc_1h]
    with FakeBinance({("BTCUSDT", "1h"): btc_1h}, now_ms=clock) as fake:
        run(tmp_path, fake, clock, [("BTCUSDT", "1h")], since=btc_1h[0][0])
        store = Store(tmp_path / "data")
        feb, jan = (store.partition_path("BTCUSDT", "1h", 2024, m) for m in (2, 1))
        feb.write_bytes(feb.read_bytes()[:-50])  # torn footer
        run(tmp_path, fake, clock, [("BTCUSDT", "1h")])  # quarantined first, then the hole is fetched
        assert store.read("BTCUSDT", "1h")["open_time"].to_list() == expected
        jan.write_bytes(jan.read_bytes()[:-50])  # the first month: nothing after --since asks for it
        run(tmp_path, fake, clock, [("BTCUSDT", "1h")])
        assert store.read("BTCUSDT", "1h")["open_time"].to_list()[0] == ms(2024, 2, 1)
        [s] = status(store, clock())
        assert len(s.quarantined) == 2
        [fix] = [q.fix for q in s.quarantined if "month=01" in q.file]
        args = fix.split("`")[1].split()  # the command status prints: run it as given
        since, until = args[args.index("--since") + 1], args[args.index("--until") + 1]
        run(tmp_path, fake, clock, [("BTCUSDT", "1h")], since=parse_time(since, "--since"),
            until=parse_time(until, "--until"))
        assert store.read("BTCUSDT", "1h")["open_time"].to_list() == expected
