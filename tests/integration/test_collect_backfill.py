"""REST backfill against the loopback fake: faults, weight cap, gaps, a clean-run-identical store."""

from __future__ import annotations

import random
from pathlib import Path

import polars as pl
import pytest

from tests.fakes import FakeBinance, FakeClock, load_series
from xylen.collect import CollectOptions, collect, make_rest
from xylen.collect.backfill import backfill_series
from xylen.core.errors import ExchangeError
from xylen.core.settings import load_settings
from xylen.core.store import Store

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parents[1] / "data"
FEATHER = DATA / "spot_ohlcv_feather" / "imsatoshi_GeneTrader_2024"
HOUR = 3_600_000
START = 1704067200000  # 2024-01-01
SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")


def _four_hourly(rows: list[list]) -> list[list]:
    """Real 4h candles built from the real 1h ones (for a second interval per symbol)."""
    out = []
    for i in range(0, len(rows) - 3, 4):
        grp = rows[i : i + 4]
        if grp[0][0] % (4 * HOUR):
            continue
        o, c = grp[0][1], grp[-1][4]
        h = max(float(r[2]) for r in grp)
        lo = min(float(r[3]) for r in grp)
        v = sum(float(r[5]) for r in grp)
        out.append([grp[0][0], o, f"{h:.8f}", f"{lo:.8f}", c, f"{v:.8f}"])
    return out


@pytest.fixture(scope="module")
def market() -> dict[tuple[str, str], list[list]]:
    series = {}
    for sym in SYMBOLS:
        rows = load_series(FEATHER / f"{sym[:-4]}_USDT-1h.feather", "1h")[:2000]
        series[(sym, "1h")] = rows
        series[(sym, "4h")] = _four_hourly(rows)
    return series


@pytest.fixture
def clock(market: dict) -> FakeClock:
    return FakeClock(market[("BTCUSDT", "1h")][1500][0] + 17 * 60_000)  # inside candle 1500


def settings_for(home: Path, fake: FakeBinance, share: float = 0.5):  # type: ignore[no-untyped-def]
    return load_settings(
        {"home": home, "binance_base_url": fake.base_url, "binance_ws_url": fake.ws_url, "weight_budget_share": share},
        environ={},
    )


def run_collect(
    home: Path,
    fake: FakeBinance,
    clock: FakeClock,
    *,
    share: float = 0.5,
    seed: int = 0,
    timeout_s: float = 10.0,
    **opts: object,
):  # type: ignore[no-untyped-def]
    settings = settings_for(home, fake, share)
    rest = make_rest(settings, clock=clock, sleep=lambda s: clock.advance(int(s * 1000)), timeout_s=timeout_s)
    rest.governor.rng = random.Random(seed)
    o = CollectOptions(
        list(opts.pop("symbols", SYMBOLS)),
        list(opts.pop("intervals", ["1h", "4h"])),  # type: ignore[call-overload]
        since=opts.pop("since", START),
        once=True,
    )  # type: ignore[arg-type]
    return collect(settings, o, rest=rest, clock=clock)


def store_frames(home: Path) -> dict[tuple[str, str], pl.DataFrame]:
    store = Store(home / "data")
    return {s: store.read(*s) for s in store.series()}


def expected_count(rows: list[list], now: int, step: int) -> int:
    return sum(1 for r in rows if r[0] + step - 1 < now)


def test_clean_backfill_stores_every_closed_candle_once(tmp_path: Path, market: dict, clock: FakeClock) -> None:
    with FakeBinance(market, now_ms=clock) as fake:
        result = run_collect(tmp_path, fake, clock)
    frames = store_frames(tmp_path)
    assert set(frames) == {(s, i) for s in SYMBOLS for i in ("1h", "4h")}
    for (sym, iv), df in frames.items():
        step = HOUR if iv == "1h" else 4 * HOUR
        assert df.height == expected_count(market[(sym, iv)], clock(), step)
        assert df["open_time"].is_unique().all()
        assert (df["close_time"] < clock()).all()  # the still-open candle is not stored
    assert result.added == sum(df.height for df in frames.values())
    # a second run has nothing to do: one short request per series
    with FakeBinance(market, now_ms=clock) as fake:
        again = run_collect(tmp_path, fake, clock, since=None)
    assert again.added == 0


def test_faults_end_with_a_store_identical_to_a_clean_run(tmp_path: Path, market: dict, clock: FakeClock) -> None:
    with FakeBinance(market, now_ms=clock) as fake:
        run_collect(tmp_path / "clean", fake, clock)
    clean = store_frames(tmp_path / "clean")
    with FakeBinance(market, now_ms=clock) as fake:
        f = fake.faults
        f.rate_limit(retry_after=2, symbol="BTCUSDT")
        f.rate_limit(retry_after=3, symbol="ETHUSDT")
        f.server_error(503, times=2)
        f.server_error(500, symbol="SOLUSDT")
        f.timeout(hold_s=1.0)
        f.truncate()
        f.duplicate(every=3, times=2)
        f.out_of_order(times=2)
        f.reset()
        f.ban(retry_after=5, symbol="SOLUSDT")
        result = run_collect(tmp_path / "faulty", fake, clock, timeout_s=0.3)
        assert all(x.fired >= 1 for x in fake.faults), [(x.kind, x.status, x.symbol, x.fired) for x in fake.faults]
        assert fake.requests_during_backoff == 0  # never called inside a Retry-After window: no 418 earned
        statuses = [r.status for r in fake.requests]
        assert statuses.count(418) == 1  # only the scripted one
    faulty = store_frames(tmp_path / "faulty")
    assert faulty.keys() == clean.keys()
    for key in clean:
        assert faulty[key].equals(clean[key]), key
    assert result.retries >= 5 and result.rate_limited == 3


def test_used_weight_stays_under_the_configured_cap(tmp_path: Path, market: dict, clock: FakeClock) -> None:
    share = 20 / 6000  # a cap of 20 weight per minute: 10 klines calls
    with FakeBinance(market, now_ms=clock) as fake:
        result = run_collect(tmp_path, fake, clock, share=share, since=START)
        # page size 1000 would make this too easy: also page with limit=100
        store = Store(tmp_path / "small")
        backfill_series(
            make_rest(settings_for(tmp_path, fake, share), clock=clock, sleep=lambda s: clock.advance(int(s * 1000))),
            store,
            "BTCUSDT",
            "1h",
            clock(),
            since=START,
            limit=100,
        )
        assert fake.max_used_weight <= 20, fake.max_used_weight
        assert max(r.used_weight for r in fake.requests) <= 20
        assert len(fake.requests) >= 25
    assert result.waited_s > 0 and result.max_used_weight <= 20


def test_gaps_are_fetched_once_and_recorded_as_known(tmp_path: Path, market: dict, clock: FakeClock) -> None:
    rows = market[("BTCUSDT", "1h")]
    gap = (rows[100][0], rows[110][0])  # ten hours without trading
    with FakeBinance(market, now_ms=clock, missing=[gap]) as fake:
        run_collect(tmp_path, fake, clock, symbols=["BTCUSDT"], intervals=["1h"])
        store = Store(tmp_path / "data")
        assert store.known_gaps("BTCUSDT", "1h") == [gap]
        summary = store.summary("BTCUSDT", "1h", clock())
        assert summary.gaps == [] and summary.known_gaps == [gap]
        n_before = len(fake.requests)
        clock.advance(HOUR)  # one more candle closed
        run_collect(tmp_path, fake, clock, symbols=["BTCUSDT"], intervals=["1h"], since=None)
        # the known gap is not fetched again: only the tail (1 request) plus the symbol check
        assert len(fake.requests) - n_before == 2
        assert fake.requests[-1].params["startTime"] == str(rows[1500][0])
        # a hole in the store that the exchange does have is re-fetched and filled
        df = store.read("BTCUSDT", "1h")
        hole = df.filter((pl.col("open_time") < rows[300][0]) | (pl.col("open_time") >= rows[310][0]))
        for f in store.files("BTCUSDT", "1h"):
            f.unlink()
        store.append("BTCUSDT", "1h", hole)
        assert len(store.summary("BTCUSDT", "1h", clock()).gaps) == 1
        run_collect(tmp_path, fake, clock, symbols=["BTCUSDT"], intervals=["1h"], since=None)
        assert store.read("BTCUSDT", "1h").equals(df)


def test_unknown_symbol_is_a_clear_exchange_error_and_the_store_is_untouched(
    tmp_path: Path, market: dict, clock: FakeClock
) -> None:
    with FakeBinance(market, now_ms=clock) as fake, pytest.raises(ExchangeError, match="NOPEUSDT.*-1121") as info:
        run_collect(tmp_path, fake, clock, symbols=["BTCUSDT", "NOPEUSDT"])
    assert "NOPEUSDT" in info.value.message or "symbol" in info.value.message
    assert Store(tmp_path / "data").series() == []


def test_an_unknown_symbol_comes_with_close_matches_from_binances_market_list(
    tmp_path: Path, market: dict, clock: FakeClock
) -> None:
    with FakeBinance(market, now_ms=clock) as fake, pytest.raises(ExchangeError) as info:
        run_collect(tmp_path, fake, clock, symbols=["BTC/USDT", "ETHUSTD"])
    assert info.value.message == "Binance does not list the symbol 'ETHUSTD' (code -1121)."
    assert "did you mean ETHUSDT" in info.value.hint
    assert Store(tmp_path / "data").series() == []
