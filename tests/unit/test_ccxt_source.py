"""CcxtSource through the real ccxt 4.5.90 against each loopback fake exchange (tests/fakes/venues.py): symbols in
every spelling, unknown ones with close matches, intervals an exchange lacks, one page equal to the recorded
candles, page sizes, Kraken's reach, and the errors: 429 + Retry-After waited out on the fake clock, 5xx, timeouts,
resets and truncated bodies retried, a final answer not retried.

Most tests turn ccxt's limiter and the fake's rate limits off (``quick``): their subject is not pacing, and Kraken's
limiter alone waits 1.2 s between requests. The tests of pacing keep both on.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from tests.fakes.klines import FakeClock, Row, load_series
from tests.fakes.venues import EXCHANGES, FakeVenue
from xylen.collect.ccxt_source import CcxtSource, make_source
from xylen.collect.venues import VENUES, Market
from xylen.core.candles import SCHEMA
from xylen.core.errors import ConfigError, ExchangeError, ExchangeTemporaryError

DATA = Path(__file__).parents[1] / "data" / "spot_ohlcv_feather" / "imsatoshi_GeneTrader_2024"
ROWS: list[Row] = load_series(DATA / "BTC_USDT-1h.feather", "1h")  # 5980 real hourly candles, 2024-01-01 on
HOUR = 3_600_000
SYMBOL = {"bybit": "BTCUSDT", "okx": "BTCUSDT", "kraken": "BTCUSD", "coinbase": "BTCUSD", "binanceus": "BTCUSDT"}


@dataclass
class Served:
    fake: FakeVenue
    src: CcxtSource
    clock: FakeClock
    sym: str
    slept: list[float] = field(default_factory=list)

    def ohlcv_requests(self) -> list[Any]:
        markets = self.fake.api.routes[0]
        return [r for r in self.fake.requests if r.route not in (None, markets)]

    def market_requests(self) -> list[Any]:
        return [r for r in self.fake.requests if r.route == self.fake.api.routes[0]]


@contextlib.contextmanager
def served(
    name: str, *, now: int | None = None, quick: bool = True, timeout_s: float = 5.0, series: Any = None, **kw: Any
) -> Iterator[Served]:
    """A fake exchange and a source pointed at it; the governor sleeps on the fake clock (no real waiting)."""
    sym = SYMBOL[name]
    clock = FakeClock(now if now is not None else ROWS[3000][0] + 7 * 60_000)
    with FakeVenue(name, series or {(sym, "1h"): ROWS}, now_ms=clock, enforce_rate=not quick, **kw) as fake:
        slept: list[float] = []

        def sleep(seconds: float) -> None:
            slept.append(seconds)
            clock.advance(int(seconds * 1000))

        src = make_source(name, base_url=fake.base_url, timeout_s=timeout_s, clock=clock, sleep=sleep)
        if quick:
            src.client.enableRateLimit = False
        try:
            yield Served(fake, src, clock, sym, slept)
        finally:
            src.close()


def recorded(first: int, last: int) -> pl.DataFrame:
    """ROWS[first..last] as the frame a source must return (OHLCV from the exchange, extras null)."""
    rows = ROWS[first : last + 1]
    return (
        pl.DataFrame(
            {
                "open_time": [r[0] for r in rows],
                "open": [float(r[1]) for r in rows],
                "high": [float(r[2]) for r in rows],
                "low": [float(r[3]) for r in rows],
                "close": [float(r[4]) for r in rows],
                "volume": [float(r[5]) for r in rows],
                "close_time": [r[0] + HOUR - 1 for r in rows],
            }
        )
        .with_columns([pl.lit(None).alias(c) for c in ("quote_volume", "trades", "taker_buy_base", "taker_buy_quote")])
        .cast(SCHEMA)
    )  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------- symbols
SPELLINGS = {
    "bybit": [("BTCUSDT", "BTCUSDT"), ("btcusdt", "BTCUSDT"), ("BTC/USDT", "BTCUSDT"), ("btc-usdt", "BTCUSDT")],
    "okx": [("BTC-USDT", "BTCUSDT"), ("BTCUSDT", "BTCUSDT"), ("btc/usdt", "BTCUSDT"), ("ETH-BTC", "ETHBTC")],
    "kraken": [
        ("XXBTZUSD", "BTCUSD"), ("XBTUSD", "BTCUSD"), ("BTC/USD", "BTCUSD"), ("btcusd", "BTCUSD"),
        ("XBT/USD", "BTCUSD"), ("XBTUSDT", "BTCUSDT"), ("XETHZUSD", "ETHUSD"),
    ],
    "coinbase": [("BTC-USD", "BTCUSD"), ("BTCUSD", "BTCUSD"), ("btc/usd", "BTCUSD"), (" BTC-USDC ", "BTCUSDC")],
    "binanceus": [("BTCUSDT", "BTCUSDT"), ("BTC/USDT", "BTCUSDT"), ("ethbtc", "ETHBTC")],
}  # fmt: skip
IDS = {
    "bybit": {"BTCUSDT": "BTCUSDT", "ETHBTC": "ETHBTC"},
    "okx": {"BTCUSDT": "BTC-USDT", "ETHBTC": "ETH-BTC"},
    "kraken": {"BTCUSD": "XXBTZUSD", "BTCUSDT": "XBTUSDT", "ETHUSD": "XETHZUSD"},
    "coinbase": {"BTCUSD": "BTC-USD", "BTCUSDC": "BTC-USDC"},
    "binanceus": {"BTCUSDT": "BTCUSDT", "ETHBTC": "ETHBTC"},
}


@pytest.mark.parametrize("name", EXCHANGES)
def test_resolve_accepts_the_exchange_spelling_the_unified_one_and_the_canonical_one(name: str) -> None:
    with served(name) as s:
        for given, canonical in SPELLINGS[name]:
            (m,) = s.src.resolve([given])
            assert m == Market(canonical, f"{canonical[:3]}/{canonical[3:]}", IDS[name][canonical]), given
            assert m.to_dict() == {"canonical": canonical, "unified": m.unified, "id": m.id}
        # every spelling of one market is one market; the market list was loaded once, and nothing else asked for
        same = [g for g, c in SPELLINGS[name] if c == SPELLINGS[name][0][1]]
        assert [m.canonical for m in s.src.resolve(same)] == [SPELLINGS[name][0][1]]
        assert len(s.market_requests()) == 1 and s.ohlcv_requests() == []


@pytest.mark.parametrize("name", EXCHANGES)
def test_an_unknown_symbol_is_refused_naming_the_exchange_with_close_matches(name: str) -> None:
    typo = {"kraken": "XBTUDS", "coinbase": "BTC-UDS"}.get(name, "BTCUSTD")
    with served(name) as s, pytest.raises(ExchangeError) as err:
        s.src.resolve([s.sym, typo])
    text = str(err.value)
    assert VENUES[name].title in text and repr(typo) in text, text
    assert "did you mean" in text and IDS[name].get(s.sym, s.sym) in err.value.hint, err.value.hint  # type: ignore[operator]
    assert err.value.exit_code == 6 and not isinstance(err.value, ExchangeTemporaryError)
    assert s.ohlcv_requests() == []


@pytest.mark.parametrize(
    "hostile", ["", "   ", "../../etc/passwd", "BTC/USDT/ETH", "B" * 5000, "BTC\x00USDT", "ＢＴＣＵＳＤＴ", 42, None]
)
def test_hostile_symbols_get_one_clear_refusal(hostile: Any) -> None:
    with served("okx") as s, pytest.raises(ExchangeError) as err:
        s.src.resolve([hostile])
    assert "OKX has no spot market" in err.value.message and len(str(err.value)) < 500
    assert len(s.market_requests()) == 1 and s.ohlcv_requests() == []


UNSUPPORTED = {"bybit": "8h", "okx": "8h", "kraken": "3m", "coinbase": "4h", "binanceus": "1s"}


@pytest.mark.parametrize("name", EXCHANGES)
def test_an_interval_the_exchange_lacks_is_refused_with_the_ones_it_has(name: str) -> None:
    with served(name) as s:
        for bad in (UNSUPPORTED[name], "1M" if name in ("kraken", "coinbase") else "2m", "1h; rm -rf /", 60):
            with pytest.raises(ConfigError) as err:
                s.src.check_intervals(["1h", bad])
            assert VENUES[name].title in err.value.message and repr(str(bad)[:20]) in err.value.message
            assert " ".join(VENUES[name].intervals) in (err.value.hint or "")
            with pytest.raises(ConfigError):
                s.src.candles(s.sym, bad, ROWS[0][0])
        s.src.check_intervals(list(VENUES[name].intervals))
        assert s.fake.requests == []  # refused before any request
    if name == "coinbase":
        assert "fixed set" in (err.value.hint or "")


# ---------------------------------------------------------------------------------------------------- one page
@pytest.mark.parametrize("name", EXCHANGES)
def test_one_page_is_the_recorded_candles_with_end_inclusive(name: str) -> None:
    with served(name) as s:
        frame, sent = s.src.candles(s.sym, "1h", ROWS[2600][0], ROWS[2649][0])
        assert frame.schema == pl.Schema(SCHEMA)
        assert frame.equals(recorded(2600, 2649), null_equal=True)
        assert sent >= 50  # Kraken answers from start to now; Coinbase's bounds may add one
        assert len(s.ohlcv_requests()) == 1


@pytest.mark.parametrize("name", [n for n in EXCHANGES if n != "kraken"])
def test_a_long_range_gets_the_oldest_page_from_start_capped_at_the_page_limit(name: str) -> None:
    """OKX answers the newest `limit` candles between its bounds, and Coinbase refuses a span over 350 candles: the
    page's end bound is never more than `limit` candles past start, whatever the range's end (with the range's own
    end, OKX would answer from the far end and the backfill would skip candles)."""
    with served(name, now=ROWS[5500][0] + 60_000) as s:
        frame, sent = s.src.candles(s.sym, "1h", ROWS[100][0], ROWS[5000][0], limit=10**6)
        limit = VENUES[name].page_limit
        assert frame.height == limit and sent >= limit
        assert frame.equals(recorded(100, 100 + limit - 1), null_equal=True)
        (req,) = s.ohlcv_requests()
        params = req.params
        if name in ("bybit", "okx", "binanceus"):
            assert int(params["limit"]) == limit  # the biggest page the exchange documents, no more
        if name == "coinbase":
            assert (int(params["end"]) - int(params["start"])) // 3600 <= 350


@pytest.mark.parametrize("name", EXCHANGES)
def test_the_still_open_candle_is_kept_and_nothing_after_now_exists(name: str) -> None:
    now = ROWS[3000][0] + 25 * 60_000  # 25 minutes into candle 3000
    with served(name, now=now) as s:
        frame, _ = s.src.candles(s.sym, "1h", ROWS[2990][0])
        assert frame["open_time"].to_list() == [r[0] for r in ROWS[2990:3001]]
        assert frame["close_time"][-1] >= now  # the backfill drops it; the source does not


def test_kraken_serves_only_its_720_most_recent_candles_whatever_since_says() -> None:
    with served("kraken", now=ROWS[4000][0] + 60_000) as s:
        assert s.src.reach == 720 and s.src.page_limit == 720
        frame, sent = s.src.candles(s.sym, "1h", ROWS[0][0])
        assert sent == 720 and frame.height == 720
        assert frame["open_time"][0] == ROWS[4000 - 719][0] and frame["open_time"][-1] == ROWS[4000][0]
        frame, sent = s.src.candles(s.sym, "1h", ROWS[0][0], ROWS[3000][0])  # entirely out of reach
        assert frame.height == 0 and sent == 720  # the exchange sent its 720, none of them in the range


def test_kraken_weekly_candles_off_xylens_monday_grid_are_refused_not_stored() -> None:
    thursday = 1704326400000  # 2024-01-04, a Thursday: epoch-aligned weeks, as some exchanges count them
    weeks = [[thursday + i * 7 * 86_400_000, r[1], r[2], r[3], r[4], r[5]] for i, r in enumerate(ROWS[:30])]
    with served("kraken", now=weeks[-1][0] + 1000, series={("BTCUSD", "1w"): weeks}) as s:
        with pytest.raises(ExchangeError) as err:
            s.src.candles(s.sym, "1w", weeks[0][0])
        assert "off xylen's 1w grid" in err.value.message and "Kraken" in err.value.message
        assert len(s.ohlcv_requests()) == 1  # final: not retried


def test_candles_refuses_bad_arguments_before_any_request() -> None:
    with served("bybit") as s:
        for start, end, limit in [
            (-1, None, 10),
            ("0", None, 10),
            (1.5, None, 10),
            (0, -5, 10),
            (0, None, 0),
            (0, None, True),
        ]:
            with pytest.raises(ConfigError):
                s.src.candles(s.sym, "1h", start, end, limit)
        frame, sent = s.src.candles(s.sym, "1h", ROWS[10][0], ROWS[5][0])  # end before start: nothing to ask
        assert frame.height == 0 and sent == 0
        assert s.ohlcv_requests() == []


# ---------------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("name", EXCHANGES)
def test_a_429_with_retry_after_is_waited_out_on_the_fake_clock(name: str) -> None:
    with served(name) as s:
        s.fake.faults.rate_limit(retry_after=7)
        frame, _ = s.src.candles(s.sym, "1h", ROWS[2600][0], ROWS[2609][0])
        assert frame.equals(recorded(2600, 2609), null_equal=True)
        assert [r.status for r in s.ohlcv_requests()] == [429, 200]
        assert s.src.governor.stats.rate_limited == 1 and s.slept == [pytest.approx(7.5)]  # Retry-After + margin


@pytest.mark.parametrize("name", ["okx", "coinbase", "kraken"])
def test_a_429_without_retry_after_waits_the_exchanges_documented_window(name: str) -> None:
    with served(name) as s:
        s.fake.faults.add("status", status=429)
        s.src.candles(s.sym, "1h", ROWS[2600][0], ROWS[2609][0])
        assert s.slept == [pytest.approx(VENUES[name].rate.retry_after_s + 0.5)]


def test_bybits_403_ip_ban_is_waited_out_for_its_documented_ten_minutes() -> None:
    with served("bybit") as s:
        s.fake.faults.add("status", status=403)  # "access too frequent"
        s.src.candles(s.sym, "1h", ROWS[2600][0], ROWS[2609][0])
        assert s.src.governor.stats.banned == 1 and s.slept == [pytest.approx(600.5)]


@pytest.mark.parametrize("name", EXCHANGES)
def test_5xx_timeouts_resets_and_truncated_bodies_are_retried_with_backoff(name: str) -> None:
    """A truncated body must be retried: ccxt itself reads it as an empty page, which the backfill would take for
    "no trading" and record as a known gap."""
    with served(name, timeout_s=0.5) as s:
        s.fake.faults.server_error(502)
        s.fake.faults.timeout(hold_s=3.0)
        s.fake.faults.reset()
        s.fake.faults.truncate()
        s.fake.faults.server_error(503)
        frame, _ = s.src.candles(s.sym, "1h", ROWS[2600][0], ROWS[2609][0])
        assert frame.equals(recorded(2600, 2609), null_equal=True)
        assert [r.fault for r in s.ohlcv_requests()] == ["status", "timeout", "reset", "truncate", "status", None]
        stats = s.src.governor.stats
        assert stats.retries == 5 and stats.server_errors == 2 and stats.transport_errors == 3
        assert len(s.slept) == 5 and all(w > 0 for w in s.slept)  # backoff with jitter, on the fake clock


def test_an_unreadable_market_list_is_retried_too() -> None:
    with served("coinbase") as s:
        s.fake.faults.truncate(path=s.fake.api.routes[0])
        assert s.src.resolve(["BTC-USD"])[0].canonical == "BTCUSD"
        assert [r.fault for r in s.market_requests()] == ["truncate", None]


@pytest.mark.parametrize("name", ["bybit", "kraken", "coinbase"])
def test_duplicated_and_shuffled_rows_become_one_sorted_row_per_candle(name: str) -> None:
    with served(name) as s:
        s.fake.faults.duplicate(every=2)
        s.fake.faults.out_of_order()
        for _ in range(2):
            frame, sent = s.src.candles(s.sym, "1h", ROWS[2600][0], ROWS[2609][0])
            assert frame.equals(recorded(2600, 2609), null_equal=True)
        assert [r.fault for r in s.ohlcv_requests()] == ["duplicate", "out_of_order"]


def test_an_empty_page_is_returned_empty_for_the_backfill_to_judge() -> None:
    with served("okx") as s:
        s.fake.faults.empty()
        frame, sent = s.src.candles(s.sym, "1h", ROWS[2600][0], ROWS[2609][0])
        assert frame.height == 0 and sent == 0 and len(s.ohlcv_requests()) == 1


@pytest.mark.parametrize("name", EXCHANGES)
def test_a_final_answer_is_not_retried(name: str) -> None:
    with served(name) as s:
        s.src.resolve([s.sym])
        s.fake.delist(s.sym)  # delisted between the market list and the candles: the exchange's own refusal
        with pytest.raises(ExchangeError) as err:
            s.src.candles(s.sym, "1h", ROWS[2600][0], ROWS[2609][0])
        assert not isinstance(err.value, ExchangeTemporaryError) and VENUES[name].title in err.value.message
        assert len(s.ohlcv_requests()) == 1 and s.slept == []


@pytest.mark.parametrize("name", ["kraken", "binanceus"])
def test_an_exchange_that_keeps_failing_is_given_up_naming_it(name: str) -> None:
    with served(name) as s:
        s.fake.faults.server_error(503, times=float("inf"))
        with pytest.raises(ExchangeTemporaryError) as err:
            s.src.candles(s.sym, "1h", ROWS[2600][0])
        assert err.value.message.startswith(f"{VENUES[name].title} kept failing") and "BINANCE" not in (
            err.value.hint or ""
        )
        assert len(s.ohlcv_requests()) == s.src.governor.max_attempts


@pytest.mark.parametrize(("name", "status"), [("okx", 403), ("coinbase", 451), ("kraken", 404)])
def test_a_refusal_of_this_ip_or_a_wrong_path_is_final_with_a_hint(name: str, status: int) -> None:
    with served(name) as s:
        s.src.resolve([s.sym])
        s.fake.faults.server_error(status, times=float("inf"))  # any status: a 4xx here
        with pytest.raises(ExchangeError) as err:
            s.src.candles(s.sym, "1h", ROWS[2600][0])
        assert not isinstance(err.value, ExchangeTemporaryError) and f"HTTP {status}" in err.value.message
        if status != 404:
            assert "may not serve this country" in (err.value.hint or "")
        assert len(s.ohlcv_requests()) == 1


def test_nothing_listening_and_a_tls_mismatch_are_retried_then_given_up() -> None:
    from tests.conftest import free_port

    with FakeVenue("okx") as fake:
        for url in (f"http://127.0.0.1:{free_port()}", fake.base_url.replace("http://", "https://")):
            slept: list[float] = []
            src = make_source("okx", base_url=url, timeout_s=5, sleep=slept.append)
            with pytest.raises(ExchangeTemporaryError) as err:
                src.resolve(["BTC-USDT"])
            assert "OKX kept failing while fetching the spot market list: connection failed" in err.value.message
            assert len(slept) == src.governor.max_attempts - 1
            src.close()


@pytest.mark.parametrize(
    ("name", "field", "value", "says"),
    [
        ("bybit", 4, "not-a-price", "no number for a price"),
        # a row ccxt cannot read a time from is never left out quietly: a page short of rows would make the
        # backfill record their range as a known gap
        ("okx", 0, "yesterday", "a row that is not a candle"),
    ],
)
def test_a_page_with_an_unreadable_row_is_a_final_error(name: str, field: int, value: str, says: str) -> None:
    with served(name) as s:
        s.src.resolve([s.sym])
        real = s.fake.api.answer

        def corrupt(*args: Any) -> Any:
            ans = real(*args)
            if ans.rows:
                ans.rows[0][field] = value
                ans.body = ans.wrap(ans.rows) if ans.wrap else ans.body
            return ans

        s.fake.api.answer = corrupt  # type: ignore[method-assign]
        with pytest.raises(ExchangeError, match=says):
            s.src.candles(s.sym, "1h", ROWS[2600][0], ROWS[2609][0])
        assert len(s.ohlcv_requests()) == 1


# ---------------------------------------------------------------------------------------------------- the wire
def test_every_request_goes_to_the_fake_and_nowhere_else() -> None:
    for name in EXCHANGES:
        with served(name) as s:
            urls: list[str] = []
            real = s.src.client.session.request

            def spy(method: str, url: str, *a: Any, _real: Any = real, _urls: list[str] = urls, **k: Any) -> Any:
                _urls.append(url)
                return _real(method, url, *a, **k)

            s.src.client.session.request = spy
            s.src.resolve([s.sym])
            s.src.candles(s.sym, "1h", ROWS[2600][0], ROWS[2609][0])
            assert len(urls) == 2 and all(u.startswith(s.fake.base_url + "/") for u in urls), urls
            assert len(s.fake.requests) == 2


def test_concurrent_callers_share_one_market_list_and_all_get_their_pages() -> None:
    with served("binanceus") as s:
        results: dict[int, Any] = {}
        errors: list[BaseException] = []

        def work(i: int) -> None:
            try:
                s.src.resolve([s.sym])
                results[i] = s.src.candles(s.sym, "1h", ROWS[1000 + 10 * i][0], ROWS[1009 + 10 * i][0])[0]
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == [] and len(results) == 6
        for i, frame in results.items():
            assert frame.equals(recorded(1000 + 10 * i, 1009 + 10 * i), null_equal=True)
        assert len(s.market_requests()) == 1 and len(s.ohlcv_requests()) == 6


def test_make_source_refuses_an_unknown_exchange_and_a_bad_url() -> None:
    with pytest.raises(ConfigError, match="'krakn'"):
        make_source("krakn")
    with pytest.raises(ConfigError, match="not an http"):
        make_source("kraken", base_url="ftp://127.0.0.1:1")
