"""The loopback Binance fake, driven by the real python-binance client and a plain websocket client."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import websockets

with warnings.catch_warnings():
    # python-binance 1.0.x imports names that websockets >= 14 deprecates; not our concern here
    warnings.simplefilter("ignore", DeprecationWarning)
    from binance.client import Client
    from binance.exceptions import BinanceAPIException, BinanceRequestException

from tests.fakes import FakeBinance, FakeClock, as_array, load_series, python_binance_client

DATA = Path(__file__).resolve().parents[1] / "data"
BTC_1H_2022 = DATA / "spot_klines_12col" / "sadunalpdag_batmayacagiz__BTCUSDT-1h-2022-01.csv.gz"
FEATHER = DATA / "spot_ohlcv_feather" / "imsatoshi_GeneTrader_2024"
ADA_JSON = DATA / "api_fixtures" / "rest_api_v3_klines__ADAUSDT_1m_limit500_2024-11-16.json"
ADA_CSV = DATA / "api_fixtures" / "rest_api_v3_klines__ADAUSDT_1m_limit500_2024-11-16.normalized.csv"
WS_ETH = DATA / "api_fixtures" / "ws_kline_stream__ethusdt_kline_5m_2021-04-25.jsonl"
HOUR = 3_600_000


@pytest.fixture(scope="module")
def btc() -> list[list]:
    return load_series(BTC_1H_2022, "1h")  # 744 real 12-column candles, January 2022


@pytest.fixture(scope="module")
def eth_sol() -> dict[tuple[str, str], list[list]]:
    return {
        ("ETHUSDT", "1h"): load_series(FEATHER / "ETH_USDT-1h.feather", "1h"),
        ("SOLUSDT", "1h"): load_series(FEATHER / "SOL_USDT-1h.feather", "1h"),
    }


@pytest.fixture
def clock(btc: list[list]) -> FakeClock:
    return FakeClock(btc[600][0] + 17 * 60_000)  # 17 minutes into candle 600


@pytest.fixture
def fake(btc: list[list], eth_sol: dict, clock: FakeClock) -> Iterator[FakeBinance]:
    with FakeBinance({("BTCUSDT", "1h"): btc, **eth_sol}, now_ms=clock) as f:
        yield f


@pytest.fixture
def client(fake: FakeBinance) -> Iterator[Client]:
    with python_binance_client(fake) as c:
        yield c


def api_error(call) -> BinanceAPIException:
    with pytest.raises(BinanceAPIException) as info:
        call()
    return info.value


# --------------------------------------------------------------------------- loading real data
def test_load_series_reads_12col_csv_with_header(btc: list[list]) -> None:
    assert len(btc) == 744
    assert btc[0] == [
        1640995200000, "46216.93000000", "46731.39000000", "46208.37000000", "46656.13000000",
        "1503.33095000", 1640998799999, "69879986.39049930", 38608, "806.06536000", "37462156.91764400", "0",
    ]  # fmt: skip
    assert all(b[0] - a[0] == HOUR for a, b in zip(btc, btc[1:], strict=False))


def test_load_series_maps_feather_to_binance_rows(eth_sol: dict) -> None:
    rows = eth_sol[("ETHUSDT", "1h")]
    first = rows[0]
    assert first[0] == 1704067200000  # 2024-01-01 00:00 UTC
    assert first[6] == first[0] + HOUR - 1
    assert first[7:] == ["0.00000000", 0, "0.00000000", "0.00000000", "0"]
    arr = as_array(rows)
    assert arr.shape == (5980, 12)
    assert (arr[:, 2] >= arr[:, [1, 4]].max(axis=1)).all()
    assert (arr[:, 3] <= arr[:, [1, 4]].min(axis=1)).all()


def test_load_series_json_fixture_equals_its_normalized_csv() -> None:
    from_json, from_csv = load_series(ADA_JSON, "1m"), load_series(ADA_CSV, "1m")
    assert len(from_json) == 500
    assert [r[:11] for r in from_json] == [r[:11] for r in from_csv]


# --------------------------------------------------------------------------- REST basics
def test_ping_time_and_exchange_info(fake: FakeBinance, client: Client, clock: FakeClock) -> None:
    assert client.ping() == {}
    assert client.get_server_time() == {"serverTime": clock()}
    info = client.get_exchange_info()
    assert [(s["symbol"], s["status"], s["baseAsset"], s["quoteAsset"]) for s in info["symbols"]] == [
        ("BTCUSDT", "TRADING", "BTC", "USDT"),
        ("ETHUSDT", "TRADING", "ETH", "USDT"),
        ("SOLUSDT", "TRADING", "SOL", "USDT"),
    ]
    assert client.response.headers["X-MBX-USED-WEIGHT-1M"] == "22"  # 1 + 1 + 20
    assert client.get_symbol_info("SOLUSDT")["symbol"] == "SOLUSDT"
    # the ?symbol= filter (python-binance's get_symbol_info fetches everything and searches)
    url = fake.base_url + "/api/v3/exchangeInfo"
    filtered = requests.get(url, params={"symbol": "ETHUSDT"}, timeout=5).json()
    assert [s["symbol"] for s in filtered["symbols"]] == ["ETHUSDT"]
    answer = requests.get(url, params={"symbol": "DOGEUSDT"}, timeout=5)
    assert (answer.status_code, answer.json()) == (400, {"code": -1121, "msg": "Invalid symbol."})


def test_klines_start_time_returns_oldest_rows_from_there(client: Client, btc: list[list]) -> None:
    assert client.get_klines(symbol="BTCUSDT", interval="1h", startTime=btc[10][0], limit=5) == btc[10:15]
    # a start inside a candle selects by open time: the next candle is the first
    assert client.get_klines(symbol="BTCUSDT", interval="1h", startTime=btc[10][0] + 1, limit=5) == btc[11:16]
    # without limit: 500 rows
    assert client.get_klines(symbol="BTCUSDT", interval="1h", startTime=btc[0][0]) == btc[:500]
    # before the first candle: starts at the first one
    assert client.get_klines(symbol="BTCUSDT", interval="1h", startTime=0, limit=2) == btc[:2]


def test_klines_end_time_bounds_the_answer(client: Client, btc: list[list]) -> None:
    # both: oldest first, open_time <= endTime
    got = client.get_klines(
        symbol="BTCUSDT", interval="1h", startTime=btc[10][0], endTime=btc[12][0], limit=1000
    )
    assert got == btc[10:13]
    # endTime only: the newest `limit` candles opening at or before endTime
    assert client.get_klines(symbol="BTCUSDT", interval="1h", endTime=btc[50][0] + 5, limit=3) == btc[48:51]
    assert client.get_klines(symbol="BTCUSDT", interval="1h", endTime=btc[0][0] - 1) == []


def test_klines_without_start_returns_most_recent_up_to_now(client: Client, btc: list[list]) -> None:
    assert client.get_klines(symbol="BTCUSDT", interval="1h") == btc[101:601]  # default limit 500
    assert client.get_klines(symbol="BTCUSDT", interval="1h", limit=1000) == btc[:601]


def test_last_candle_is_still_open(client: Client, btc: list[list], clock: FakeClock) -> None:
    now = clock()
    last = client.get_klines(symbol="BTCUSDT", interval="1h", limit=2)[-1]
    assert last == btc[600]
    assert last[0] <= now <= last[6]  # close_time >= now: not closed yet
    # the future does not exist yet
    assert client.get_klines(symbol="BTCUSDT", interval="1h", startTime=btc[601][0]) == []
    clock.set(btc[601][0])  # the next candle opens
    assert client.get_klines(symbol="BTCUSDT", interval="1h", limit=1) == [btc[601]]


def test_klines_errors_like_binance(client: Client) -> None:
    err = api_error(lambda: client.get_klines(symbol="BTCUSDT", interval="1h", limit=1001))
    assert (err.status_code, err.code) == (400, -1130)
    err = api_error(lambda: client.get_klines(symbol="BTCUSDT", interval="7m"))
    assert (err.status_code, err.code, err.message) == (400, -1120, "Invalid interval.")
    err = api_error(lambda: client.get_klines(symbol="NOPEUSDT", interval="1h"))
    assert (err.status_code, err.code, err.message) == (400, -1121, "Invalid symbol.")
    # a known symbol without data for that interval has no candles
    assert client.get_klines(symbol="BTCUSDT", interval="5m") == []


# --------------------------------------------------------------------------- weight
def test_used_weight_header_rolls_over_one_minute(
    fake: FakeBinance, client: Client, clock: FakeClock
) -> None:
    seen = []
    for _ in range(3):
        client.get_klines(symbol="BTCUSDT", interval="1h", limit=1)
        seen.append(int(client.response.headers["X-MBX-USED-WEIGHT-1M"]))
    assert seen == [2, 4, 6]
    clock.advance(30_000)
    client.ping()
    assert client.response.headers["X-MBX-USED-WEIGHT-1M"] == "7"
    clock.advance(30_000)  # the three klines calls are a minute old now
    client.ping()
    assert client.response.headers["X-MBX-USED-WEIGHT-1M"] == "2"
    assert fake.max_used_weight == 7
    assert [(r.path, r.status, r.weight) for r in fake.requests][-2:] == [("/api/v3/ping", 200, 1)] * 2


def test_weight_budget_answers_429_then_bans_a_client_that_ignores_it(
    btc: list[list], clock: FakeClock
) -> None:
    with (
        FakeBinance({("BTCUSDT", "1h"): btc}, now_ms=clock, weight_limit=5) as fake,
        python_binance_client(fake) as c,
    ):
        c.get_klines(symbol="BTCUSDT", interval="1h", limit=1)
        c.get_klines(symbol="BTCUSDT", interval="1h", limit=1)
        err = api_error(lambda: c.get_klines(symbol="BTCUSDT", interval="1h", limit=1))
        assert (err.status_code, err.code) == (429, -1003)
        retry_after = int(err.response.headers["Retry-After"])
        assert retry_after == 60  # the oldest weight leaves the window in a minute
        assert fake.requests_during_backoff == 0
        clock.advance(1_000)  # too early
        err = api_error(c.ping)
        assert (err.status_code, err.code, err.response.headers["Retry-After"]) == (418, -1003, "120")
        assert fake.requests_during_backoff == 1
        clock.advance(120_000)
        assert c.ping() == {}


# --------------------------------------------------------------------------- faults
def test_rate_limit_fault_honoured_is_not_punished(
    fake: FakeBinance, client: Client, clock: FakeClock
) -> None:
    fault = fake.faults.rate_limit(retry_after=3)
    err = api_error(lambda: client.get_klines(symbol="BTCUSDT", interval="1h", limit=1))
    assert (err.status_code, err.code, err.response.headers["Retry-After"]) == (429, -1003, "3")
    assert "X-MBX-USED-WEIGHT-1M" in err.response.headers
    clock.advance(3_000)
    assert len(client.get_klines(symbol="BTCUSDT", interval="1h", limit=1)) == 1
    assert (fault.fired, fake.requests_during_backoff) == (1, 0)


def test_rate_limit_fault_ignored_earns_418(fake: FakeBinance, client: Client, clock: FakeClock) -> None:
    fake.faults.rate_limit(retry_after=3)
    api_error(lambda: client.get_klines(symbol="BTCUSDT", interval="1h"))
    clock.advance(2_999)
    err = api_error(lambda: client.get_klines(symbol="BTCUSDT", interval="1h"))
    assert (err.status_code, err.response.headers["Retry-After"]) == (418, "120")
    assert fake.requests_during_backoff == 1
    assert [r.status for r in fake.requests] == [429, 418]


def test_ban_fault(fake: FakeBinance, client: Client, clock: FakeClock) -> None:
    fake.faults.ban(retry_after=300, path="/api")  # any REST path
    err = api_error(client.get_server_time)
    assert (err.status_code, err.code, err.response.headers["Retry-After"]) == (418, -1003, "300")
    clock.advance(100_000)
    err = api_error(client.ping)
    assert (err.status_code, err.response.headers["Retry-After"]) == (418, "200")
    clock.advance(200_000)
    assert client.ping() == {}
    assert fake.requests_during_backoff == 1


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_error_fault_fires_n_times(fake: FakeBinance, client: Client, status: int) -> None:
    fake.faults.server_error(status, times=2)
    for _ in range(2):
        err = api_error(lambda: client.get_klines(symbol="BTCUSDT", interval="1h", limit=1))
        assert err.status_code == status
        assert isinstance(err.code, int)
    assert len(client.get_klines(symbol="BTCUSDT", interval="1h", limit=1)) == 1


def test_fault_matches_symbol_and_clock_window(fake: FakeBinance, client: Client, clock: FakeClock) -> None:
    t0 = clock()
    fake.faults.server_error(503, symbol="BTCUSDT", during=(t0, t0 + 10_000))
    # another symbol is untouched (its 2024 candles lie in this clock's future, hence no rows)
    assert client.get_klines(symbol="ETHUSDT", interval="1h", limit=1) == []
    for _ in range(3):  # unlimited inside the window
        assert (
            api_error(lambda: client.get_klines(symbol="BTCUSDT", interval="1h", limit=1)).status_code == 503
        )
    clock.advance(10_000)
    assert client.get_klines(symbol="BTCUSDT", interval="1h", limit=1)
    assert [r.status for r in fake.requests] == [200, 503, 503, 503, 200]


def test_timeout_fault_holds_longer_than_the_client_waits(fake: FakeBinance, client: Client) -> None:
    fake.faults.timeout(hold_s=30.0)
    client.REQUEST_TIMEOUT = 0.2
    started = time.monotonic()
    with pytest.raises(requests.exceptions.ReadTimeout):
        client.get_klines(symbol="BTCUSDT", interval="1h")
    assert time.monotonic() - started < 15.0  # far less than the 30 s hold: the client gave up, it was not answered
    assert client.get_klines(symbol="BTCUSDT", interval="1h", limit=1)  # next one is fine
    assert [(r.status, r.fault) for r in fake.requests] == [(0, "timeout"), (200, None)]


def test_reset_fault_closes_without_answer(fake: FakeBinance, client: Client) -> None:
    fake.faults.reset()
    with pytest.raises(requests.exceptions.ConnectionError):
        client.get_klines(symbol="BTCUSDT", interval="1h")


def test_truncated_body(fake: FakeBinance, client: Client) -> None:
    fake.faults.truncate()
    with pytest.raises(BinanceRequestException, match="Invalid Response"):
        client.get_klines(symbol="BTCUSDT", interval="1h", limit=10)
    assert client.response.status_code == 200


def test_duplicated_and_out_of_order_rows(fake: FakeBinance, client: Client, btc: list[list]) -> None:
    fake.faults.duplicate(every=2)
    got = client.get_klines(symbol="BTCUSDT", interval="1h", startTime=btc[0][0], limit=4)
    assert got == [btc[0], btc[1], btc[1], btc[2], btc[3], btc[3]]
    fake.faults.out_of_order()
    got = client.get_klines(symbol="BTCUSDT", interval="1h", startTime=btc[0][0], limit=5)
    assert got == [btc[1], btc[0], btc[3], btc[2], btc[4]]


def test_missing_range_is_never_served(btc: list[list], clock: FakeClock) -> None:
    gap = (btc[20][0], btc[25][0])  # five hours of "maintenance"
    with (
        FakeBinance({("BTCUSDT", "1h"): btc}, now_ms=clock, missing=[gap]) as fake,
        python_binance_client(fake) as c,
    ):
        assert c.get_klines(symbol="BTCUSDT", interval="1h", startTime=gap[0], endTime=gap[1] - 1) == []
        assert (
            c.get_klines(symbol="BTCUSDT", interval="1h", startTime=btc[18][0], limit=4)
            == btc[18:20] + btc[25:27]
        )
        assert (
            c.get_klines(symbol="BTCUSDT", interval="1h", endTime=btc[26][0], limit=4)
            == btc[18:20] + btc[25:27]
        )
        with pytest.raises(KeyError):
            fake.push_candle("BTCUSDT", "1h", btc[22][0])


# --------------------------------------------------------------------------- websocket
async def _recv_json(ws, n: int) -> list[dict]:
    return [json.loads(await asyncio.wait_for(ws.recv(), 5)) for _ in range(n)]


def test_websocket_pushes_updates_then_close(fake: FakeBinance, btc: list[list]) -> None:
    recorded = [json.loads(line) for line in WS_ETH.read_text().splitlines() if line.strip()]
    candle = btc[599]

    async def scenario() -> list[dict]:
        async with websockets.connect(f"{fake.ws_url}/btcusdt@kline_1h") as ws:
            await asyncio.to_thread(fake.wait_for_subscribers, "BTCUSDT", "1h")
            delivered = await asyncio.to_thread(fake.push_candle, "BTCUSDT", "1h", candle[0], 2)
            assert delivered == 1
            return await _recv_json(ws, 3)

    msgs = asyncio.run(scenario())
    assert [m["k"]["x"] for m in msgs] == [False, False, True]
    # same keys and value types as Binance's real recorded stream
    real = recorded[0]
    for m in msgs:
        assert {k: type(v) for k, v in m.items()} == {k: type(v) for k, v in real.items()}
        assert {k: type(v) for k, v in m["k"].items()} == {k: type(v) for k, v in real["k"].items()}
    final = msgs[-1]["k"]
    assert (final["t"], final["T"], final["s"], final["i"]) == (candle[0], candle[6], "BTCUSDT", "1h")
    assert [final[k] for k in "ohlcvqVQ"] == [candle[i] for i in (1, 2, 3, 4, 5, 7, 9, 10)]
    assert final["n"] == candle[8]
    assert msgs[-1]["E"] > candle[6]  # the close message comes just after the candle ends
    volumes = [float(m["k"]["v"]) for m in msgs]
    assert volumes == sorted(volumes)
    assert volumes[0] < volumes[-1]  # updates are partial
    assert all(candle[0] <= m["E"] <= candle[6] for m in msgs[:2])


def test_python_binance_socket_manager_reads_the_stream(fake: FakeBinance, btc: list[list]) -> None:
    from binance import AsyncClient, BinanceSocketManager

    async def scenario() -> list[dict]:
        client = AsyncClient()  # the constructor does not touch the network
        try:
            manager = BinanceSocketManager(client)
            manager.STREAM_URL = fake.stream_url
            stream = manager.kline_socket("BTCUSDT", "1h")
            # its read loop only notices an exit after a recv timeout (10 s by default)
            stream.TIMEOUT = 0.2
            async with stream:
                await asyncio.to_thread(fake.wait_for_subscribers, "BTCUSDT", "1h")
                await asyncio.to_thread(fake.push_candle, "BTCUSDT", "1h", btc[599][0], 1)
                return [await asyncio.wait_for(stream.recv(), 5) for _ in range(2)]
        finally:
            await client.close_connection()

    msgs = asyncio.run(scenario())
    assert [(m["e"], m["k"]["x"]) for m in msgs] == [("kline", False), ("kline", True)]


def test_drop_connections_aborts_sockets_and_answers_pings(fake: FakeBinance, btc: list[list]) -> None:
    async def scenario() -> int | None:
        async with websockets.connect(f"{fake.ws_url}/btcusdt@kline_1h") as ws:
            await asyncio.to_thread(fake.wait_for_subscribers, "BTCUSDT", "1h")
            pong = await ws.ping()
            await asyncio.wait_for(pong, 5)  # the fake answers pings
            assert await asyncio.to_thread(fake.drop_connections) == 1
            with pytest.raises(websockets.ConnectionClosed) as info:
                await asyncio.wait_for(ws.recv(), 5)
            return info.value.rcvd.code if info.value.rcvd else None

    assert asyncio.run(scenario()) is None  # no close frame: an abrupt drop
    fake.wait_for_subscribers("BTCUSDT", "1h", n=0)
    assert fake.subscribers("BTCUSDT", "1h") == 0


def test_websocket_refused_by_a_status_fault(fake: FakeBinance) -> None:
    fake.faults.server_error(503, path="/ws")

    async def scenario() -> int:
        with pytest.raises(websockets.InvalidStatus) as info:
            await websockets.connect(f"{fake.ws_url}/btcusdt@kline_1h")
        return info.value.response.status_code

    assert asyncio.run(scenario()) == 503
    assert [(r.path, r.status) for r in fake.requests] == [("/ws/btcusdt@kline_1h", 503)]


def test_combined_stream_and_live_subscribe(fake: FakeBinance, eth_sol: dict) -> None:
    sol = eth_sol[("SOLUSDT", "1h")]
    now_candle = sol[100][0]

    async def scenario() -> tuple[dict, dict, dict]:
        combined_url = f"ws://127.0.0.1:{fake.port}/stream?streams=solusdt@kline_1h"
        async with websockets.connect(combined_url) as combined, websockets.connect(fake.ws_url) as bare:
            await bare.send(json.dumps({"method": "SUBSCRIBE", "params": ["solusdt@kline_1h"], "id": 7}))
            ack = json.loads(await asyncio.wait_for(bare.recv(), 5))
            await asyncio.to_thread(fake.wait_for_subscribers, "SOLUSDT", "1h", 2)
            await asyncio.to_thread(fake.push_candle, "SOLUSDT", "1h", now_candle, 0)
            (wrapped,) = await _recv_json(combined, 1)
            (raw,) = await _recv_json(bare, 1)
            return ack, wrapped, raw

    ack, wrapped, raw = asyncio.run(scenario())
    assert ack == {"result": None, "id": 7}
    assert wrapped == {"stream": "solusdt@kline_1h", "data": raw}
    assert raw["k"]["x"] is True
    assert raw["k"]["t"] == now_candle


def test_server_stops_cleanly(btc: list[list]) -> None:
    threads_before = set(threading.enumerate())
    with FakeBinance({("BTCUSDT", "1h"): btc}, now_ms=FakeClock(btc[-1][0])) as fake:
        port = fake.port
        fake.faults.timeout(hold_s=30.0)
        with (
            python_binance_client(fake, requests_params={"timeout": 0.1}) as c,
            pytest.raises(requests.exceptions.Timeout),
        ):
            c.get_klines(symbol="BTCUSDT", interval="1h")
        started = time.monotonic()
    assert time.monotonic() - started < 15.0  # a request held for 30 s does not delay shutdown
    assert set(threading.enumerate()) <= threads_before
    with socket.socket() as s, pytest.raises(ConnectionRefusedError):
        s.connect(("127.0.0.1", port))
