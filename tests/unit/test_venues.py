"""The per-exchange facts (xylen.collect.venues), the ccxt instance make_exchange builds, and the loopback fakes
themselves (tests/fakes/venues.py): their formats, page sizes, reach, granularities and enforced rate limits,
checked over plain HTTP, and the subprocess runner the kill -9 tests use."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import wait_for
from tests.fakes.klines import FakeClock, Row, load_series
from tests.fakes.venues import EXCHANGES, FakeVenue
from xylen.collect.ccxt_source import make_source
from xylen.collect.venues import VENUES, make_exchange, venue
from xylen.core.errors import ConfigError
from xylen.core.intervals import INTERVALS

ROOT = Path(__file__).parents[2]
FEATHER = ROOT / "tests" / "data" / "spot_ohlcv_feather" / "imsatoshi_GeneTrader_2024" / "BTC_USDT-1h.feather"
ROWS: list[Row] = load_series(FEATHER, "1h")
SYMBOL = {"bybit": "BTCUSDT", "okx": "BTCUSDT", "kraken": "BTCUSD", "coinbase": "BTCUSD", "binanceus": "BTCUSDT"}
OHLCV_COST = {  # (api path in ccxt's describe(), endpoint) of the OHLCV call ccxt makes
    "bybit": ("public", "get", "v5/market/kline"),
    "okx": ("public", "get", "market/history-candles"),
    "kraken": ("public", "get", "OHLC"),
    "coinbase": ("v3", "public", "get", "brokerage/market/products/{product_id}/candles"),
    "binanceus": ("public", "get", "klines"),
}


# ---------------------------------------------------------------------------------------------------- facts
@pytest.mark.parametrize("name", EXCHANGES)
def test_intervals_are_xylen_intervals_spelled_as_ccxt_asks_the_exchange(name: str) -> None:
    import ccxt

    v = VENUES[name]
    ex = getattr(ccxt, v.ccxt_id)()
    assert set(v.intervals) <= set(INTERVALS)
    for interval, spelled in v.intervals.items():
        ccxt_spelling = str(ex.timeframes[interval])
        if name == "okx" and ex.parse_timeframe(interval) >= 21600:
            ccxt_spelling += "utc"  # ccxt asks for OKX's UTC candles from 6h up
        assert spelled == ccxt_spelling, interval
    # every xylen interval ccxt can ask the exchange for is there, but Binance.US's 1s (its docs list none)
    left_out = {i for i in ex.timeframes if i in INTERVALS} - set(v.intervals)
    assert left_out == ({"1s"} if name == "binanceus" else set())


@pytest.mark.parametrize("name", EXCHANGES)
def test_ccxts_limiter_paces_the_ohlcv_endpoint_within_the_documented_limit(name: str) -> None:
    v = VENUES[name]
    ex = make_exchange(v)  # as xylen configures it
    node: Any = ex.api
    for key in OHLCV_COST[name]:
        node = node[key]
    per_second = 1000 / (ex.rateLimit * node["cost"])
    assert per_second <= v.rate.per_second * 1.0001, (per_second, v.rate.words)
    if name == "bybit":  # ccxt alone paces Bybit at 10 a second; xylen within 10% of the documented 120
        assert per_second >= v.rate.per_second / 1.1001, per_second


@pytest.mark.parametrize("name", EXCHANGES)
def test_the_fake_enforces_the_same_documented_limit_and_page_size(name: str) -> None:
    """Two transcriptions of each exchange's docs, made independently (venues.py, the fake), agree."""
    v = VENUES[name]
    with FakeVenue(name) as fake:
        route = fake.api.ohlcv_route
        rule = next(r for r in fake.rate_rules if r.counts(route) or any(c.startswith(route) for c in r.routes))
        if name == "okx":
            rule = next(r for r in fake.rate_rules if r.scope == "history-candles")
        assert (rule.requests, rule.per_s) == (v.rate.requests, v.rate.per_s)
    assert v.reach == (720 if name == "kraken" else None)
    assert (
        v.docs.startswith("https://") and v.markets_docs.startswith("https://") and v.rate.docs.startswith("https://")
    )
    assert json.loads(json.dumps(v.to_dict()))["page_limit"] == v.page_limit


def test_an_unknown_venue_is_a_config_error_listing_them() -> None:
    with pytest.raises(ConfigError) as err:
        venue("binance.com")
    assert "'binance.com'" in err.value.message and "kraken" in (err.value.hint or "")
    assert venue(" Kraken ").name == "kraken"


# ---------------------------------------------------------------------------------------------------- make_exchange
@pytest.mark.parametrize("name", EXCHANGES)
def test_make_exchange_points_every_api_url_at_the_base_and_asks_nothing(name: str) -> None:
    with FakeVenue(name) as fake:
        ex = make_exchange(VENUES[name], fake.base_url + "/", timeout_s=3)
        assert ex.enableRateLimit is True and ex.timeout == 3000
        urls: list[str] = []

        def walk(node: Any) -> None:
            if isinstance(node, dict):
                for value in node.values():
                    walk(value)
            else:
                urls.append(str(node))

        walk(ex.urls["api"])
        assert urls and all(u.startswith(fake.base_url) for u in urls), urls
        if name == "binanceus":
            assert ex.urls["api"]["public"] == fake.base_url + "/api/v3"  # its path is kept
        assert fake.requests == []  # the constructor asked nothing


MARKET_REQUEST = {
    "bybit": ("/v5/market/instruments-info", {"category": "spot"}),
    "okx": ("/api/v5/public/instruments", {"instType": "SPOT"}),
    "kraken": ("/0/public/AssetPairs", {}),
    "coinbase": ("/api/v3/brokerage/market/products", {"product_type": "SPOT"}),
    "binanceus": ("/api/v3/exchangeInfo", {}),
}


@pytest.mark.parametrize("name", EXCHANGES)
def test_loading_markets_is_one_request_for_spot_markets_only(name: str) -> None:
    """ccxt's defaults load futures, options and currencies too: 2 to 7 requests, some needing API keys."""
    with FakeVenue(name) as fake:
        src = make_source(name, base_url=fake.base_url)
        markets = src.resolve([SYMBOL[name]])
        assert [(r.path, r.params) for r in fake.requests] == [MARKET_REQUEST[name]]
        assert markets[0].canonical == SYMBOL[name]
        assert all(m["spot"] for m in src.client.markets.values())
        src.close()


@pytest.mark.parametrize("url", ["ftp://127.0.0.1:1", "127.0.0.1:8080", "http://", "http://h:1/?q=1", "", "http://h#x"])
def test_a_bad_base_url_is_a_config_error_quoting_it(url: str) -> None:
    with pytest.raises(ConfigError) as err:
        make_exchange(VENUES["okx"], url)
    assert repr(url) in err.value.message
    for timeout in (0, -1, float("nan"), 10_000):
        with pytest.raises(ConfigError):
            make_exchange(VENUES["okx"], None, timeout)


# ------------------------------------------------------------------------------------------------ the fakes' formats
def get(fake: FakeVenue, path: str, **params: Any) -> requests.Response:
    return requests.get(fake.base_url + path, params=params, timeout=30)


def test_bybit_klines_are_newest_first_strings_and_a_big_limit_is_clamped() -> None:
    clock = FakeClock(ROWS[3000][0] + 60_000)
    with FakeVenue("bybit", {("BTCUSDT", "1h"): ROWS}, now_ms=clock) as fake:
        body = get(fake, "/v5/market/kline", category="spot", symbol="BTCUSDT", interval="60", limit=5000).json()
        rows = body["result"]["list"]
        assert body["retCode"] == 0 and len(rows) == 1000 and all(len(r) == 7 for r in rows)
        assert rows[0][0] == str(ROWS[3000][0]) and rows[-1][0] == str(ROWS[2001][0])  # newest first, the open one
        assert all(isinstance(x, str) for x in rows[0]) and float(rows[0][4]) == float(ROWS[3000][4])
        mid = ROWS[100][0] + 1_800_000  # inside candle 100: the page starts with the candle containing it
        page = get(fake, "/v5/market/kline", category="spot", symbol="BTCUSDT", interval="60", start=mid, limit=3)
        assert [r[0] for r in page.json()["result"]["list"]] == [str(ROWS[i][0]) for i in (102, 101, 100)]
        bad = get(fake, "/v5/market/kline", category="spot", symbol="BTCUSDX", interval="60").json()
        assert (bad["retCode"], bad["retMsg"]) == (10001, "Not supported symbols")


def test_okx_candles_are_newest_first_with_confirm_and_exclusive_bounds() -> None:
    clock = FakeClock(ROWS[3000][0] + 60_000)
    with FakeVenue("okx", {("BTCUSDT", "1h"): ROWS}, now_ms=clock) as fake:
        data = get(fake, "/api/v5/market/history-candles", instId="BTC-USDT", bar="1H", limit=500).json()["data"]
        assert len(data) == 300 and len(data[0]) == 9 and data[0][8] == "0" and data[1][8] == "1"
        between = get(
            fake, "/api/v5/market/history-candles", instId="BTC-USDT", bar="1H", before=ROWS[10][0], after=ROWS[14][0]
        ).json()["data"]
        assert [int(r[0]) for r in between] == [ROWS[i][0] for i in (13, 12, 11)]
        recent = get(fake, "/api/v5/market/candles", instId="BTC-USDT", bar="1H", after=ROWS[1000][0]).json()
        assert recent == {"code": "0", "msg": "", "data": []}  # "the latest 1,440 data entries" only
        assert get(fake, "/api/v5/market/candles", instId="BTC-USDT", bar="1h").json()["code"] == "51000"
        assert get(fake, "/api/v5/market/candles", instId="BTC-USDX", bar="1H").json()["code"] == "51001"


def test_kraken_ohlc_is_in_seconds_oldest_first_and_only_the_last_720() -> None:
    clock = FakeClock(ROWS[3000][0] + 60_000)
    with FakeVenue("kraken", {("BTCUSD", "1h"): ROWS}, now_ms=clock, enforce_rate=False) as fake:
        body = get(fake, "/0/public/OHLC", pair="XBTUSD", interval=60, since=0).json()
        rows = body["result"]["XXBTZUSD"]
        assert body["error"] == [] and len(rows) == 720 and rows[0][0] == ROWS[3000 - 719][0] // 1000
        assert body["result"]["last"] == ROWS[2999][0] // 1000 and isinstance(rows[0][7], int) and len(rows[0]) == 8
        future = get(fake, "/0/public/OHLC", pair="XXBTZUSD", interval=60, since=ROWS[5000][0] // 1000).json()
        assert [r[0] for r in future["result"]["XXBTZUSD"]] == [ROWS[3000][0] // 1000]  # the current one, always
        assert get(fake, "/0/public/OHLC", pair="XBTUSX", interval=60).json() == {
            "error": ["EQuery:Unknown asset pair"]
        }
        assert get(fake, "/0/public/OHLC", pair="XBTUSD", interval=2).json() == {
            "error": ["EGeneral:Invalid arguments"]
        }


def test_coinbase_candles_refuse_a_span_over_350_and_other_granularities() -> None:
    clock = FakeClock(ROWS[3000][0] + 60_000)
    with FakeVenue("coinbase", {("BTCUSD", "1h"): ROWS}, now_ms=clock) as fake:
        path = "/api/v3/brokerage/market/products/BTC-USD/candles"
        start = ROWS[100][0] // 1000
        ok = get(fake, path, granularity="ONE_HOUR", start=start, end=start + 350 * 3600)
        assert ok.status_code == 200 and ok.json()["candles"][0]["start"] == str(ROWS[450][0] // 1000)
        assert set(ok.json()["candles"][0]) == {"start", "low", "high", "open", "close", "volume"}
        over = get(fake, path, granularity="ONE_HOUR", start=start, end=start + 351 * 3600)
        assert over.status_code == 400 and "should be less than 350" in over.json()["message"]
        four = get(fake, path, granularity="FOUR_HOUR", start=start, end=start + 3600)
        assert four.status_code == 400 and four.json()["error"] == "INVALID_ARGUMENT"
        missing = get(fake, "/api/v3/brokerage/market/products/BTC-USX/candles", granularity="ONE_HOUR", start=1, end=2)
        assert missing.status_code == 404 and missing.json()["error"] == "NOT_FOUND"


def test_binanceus_klines_refuse_a_limit_over_1000_and_1s_and_report_weight() -> None:
    clock = FakeClock(ROWS[3000][0] + 60_000)
    with FakeVenue("binanceus", {("BTCUSDT", "1h"): ROWS}, now_ms=clock) as fake:
        ok = get(fake, "/api/v3/klines", symbol="BTCUSDT", interval="1h", limit=1000)
        assert len(ok.json()) == 1000 and ok.json()[-1] == ROWS[3000] and ok.headers["X-MBX-USED-WEIGHT-1M"] == "1"
        assert get(fake, "/api/v3/klines", symbol="BTCUSDT", interval="1h", limit=1001).json()["code"] == -1130
        assert get(fake, "/api/v3/klines", symbol="BTCUSDT", interval="1s").json()["code"] == -1120
        assert get(fake, "/api/v3/exchangeInfo").headers["X-MBX-USED-WEIGHT-1M"] == "13"  # refused ones count too


# ---------------------------------------------------------------------------------------------------- enforced limits
OVER_LIMIT = {  # (path, params, requests allowed in one window)
    "bybit": ("/v5/market/instruments-info", {"category": "spot"}, 600),
    "okx": ("/api/v5/market/history-candles", {"instId": "BTC-USDT", "bar": "1H"}, 20),
    "kraken": ("/0/public/OHLC", {"pair": "XBTUSD", "interval": 60}, 1),
    "coinbase": ("/api/v3/brokerage/market/products", {}, 10),
    "binanceus": ("/api/v3/exchangeInfo", {}, 120),  # weight 10 of 1,200
}


@pytest.mark.parametrize("name", EXCHANGES)
def test_the_fake_answers_over_the_documented_limit_as_the_exchange_does(name: str) -> None:
    """On a frozen rate clock every request falls in one window, whatever the machine's load."""
    path, params, allowed = OVER_LIMIT[name]
    with (
        FakeVenue(
            name, {(SYMBOL[name], "1h"): ROWS[:100]}, now_ms=FakeClock(ROWS[99][0]), rate_clock=lambda: 0.0
        ) as fake,
        requests.Session() as http,
    ):
        answers = [http.get(fake.base_url + path, params=params, timeout=30) for _ in range(allowed + 2)]
    assert all(a.status_code == 200 and "Too many" not in a.text for a in answers[:allowed])
    over, after = answers[allowed], answers[allowed + 1]
    if name == "bybit":
        assert (over.status_code, over.text) == (403, "access too frequent") and after.status_code == 403  # banned
    elif name == "okx":
        assert over.status_code == 429 and over.json() == {"msg": "Too Many Requests", "code": "50011"}
    elif name == "kraken":
        assert over.status_code == 200 and over.json() == {"error": ["EGeneral:Too many requests"]}
        assert after.json() == {"error": ["EGeneral:Too many requests"]}  # locked out "for a few seconds"
    elif name == "coinbase":
        assert over.status_code == 429
    else:
        assert over.status_code == 429 and int(over.headers["Retry-After"]) >= 1 and over.json()["code"] == -1003
        assert after.status_code == 418  # called inside the Retry-After window: banned
    penalty = {"bybit": "ban", "kraken": "ban", "binanceus": "ban"}.get(name, "limit")  # ban, lockout, 418 / window
    assert [r.refused for r in fake.requests][allowed:] == ["limit", penalty]


def test_kraken_counts_ohlc_per_pair() -> None:
    series = {("BTCUSD", "1h"): ROWS[:100], ("ETHUSD", "1h"): ROWS[:100]}
    with FakeVenue("kraken", series, now_ms=FakeClock(ROWS[99][0]), rate_clock=lambda: 0.0) as fake:
        first = get(fake, "/0/public/OHLC", pair="XBTUSD", interval=60).json()
        other = get(fake, "/0/public/OHLC", pair="XETHZUSD", interval=60).json()
        assert first["error"] == [] and other["error"] == []


@pytest.mark.parametrize("name", ["coinbase", "kraken"])
def test_ccxts_limiter_keeps_real_requests_under_the_fakes_real_time_limit(name: str) -> None:
    """ccxt paces in real time (Coinbase 10/s, Kraken ~1/1.2 s): more requests than one window allows, none
    refused. This test waits for real, as the limiter must: ~1.2 s (Coinbase) and ~2.4 s (Kraken)."""
    calls = {"coinbase": 12, "kraken": 3}[name]
    clock = FakeClock(ROWS[3000][0] + 60_000)
    with FakeVenue(name, {(SYMBOL[name], "1h"): ROWS}, now_ms=clock) as fake:
        src = make_source(name, base_url=fake.base_url)  # the real clock and sleep, as ccxt's limiter
        src.resolve([SYMBOL[name]])
        for i in range(calls):
            src.candles(SYMBOL[name], "1h", ROWS[2900 + i][0], ROWS[2905 + i][0])
        assert [r.status for r in fake.requests] == [200] * (calls + 1) and src.governor.stats.rate_limited == 0
        src.close()


def test_a_kraken_rate_limit_in_a_200_is_refused_waited_out_and_retried() -> None:
    """Kraken says "EGeneral:Too many requests" with HTTP 200: with ccxt's limiter off, the second call inside one
    second trips the fake's limit and lockout; the governor waits the documented few seconds and retries. The
    fake's rate clock is the test's: the governor's sleep moves it, nothing waits for real."""
    clock = FakeClock(ROWS[3000][0] + 60_000)
    rate_t = [0.0]
    with FakeVenue("kraken", {("BTCUSD", "1h"): ROWS}, now_ms=clock, rate_clock=lambda: rate_t[0]) as fake:
        waits: list[float] = []

        def sleep(seconds: float) -> None:
            waits.append(seconds)
            clock.advance(int(seconds * 1000))
            rate_t[0] += seconds

        src = make_source("kraken", base_url=fake.base_url, clock=clock, sleep=sleep)
        src.client.enableRateLimit = False
        src.resolve(["BTCUSD"])
        src.candles("BTCUSD", "1h", ROWS[2900][0], ROWS[2905][0])
        frame, _ = src.candles("BTCUSD", "1h", ROWS[2910][0], ROWS[2915][0])
        assert frame.height == 6 and src.governor.stats.rate_limited == 1
        assert waits == [pytest.approx(VENUES["kraken"].rate.retry_after_s + 0.5)]  # outlasts the 5 s lockout
        assert [r.refused for r in fake.requests] == [None, None, "limit", None]
        src.close()


# ---------------------------------------------------------------------------------------------------- subprocess
def test_the_fake_runs_in_a_subprocess_printing_its_url_and_stops_on_sigterm(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.venues", "--exchange", "okx", "--port", "0",
         "--series", f"BTCUSDT:1h:{FEATHER}", "--now-ms", str(ROWS[3000][0] + 60_000), "--fault", "status:503:times=1"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    try:
        line = wait_for(proc.stdout.readline, timeout=120, what="the fake's URL line")  # type: ignore[union-attr]
        info = json.loads(line)
        assert info["exchange"] == "okx" and info["url"] == f"http://127.0.0.1:{info['port']}"
        src = make_source("okx", base_url=info["url"], sleep=lambda s: None)
        frame, _ = src.candles("BTC-USDT", "1h", ROWS[2990][0], ROWS[2999][0])  # through the scripted 503
        assert frame.height == 10 and src.governor.stats.server_errors == 1
        src.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
