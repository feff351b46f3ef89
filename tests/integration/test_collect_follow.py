"""Following live candles over the fake's websocket: closed candles only, reconnect + REST, watchdog.

The test drives the fake (push/drop) and its clock; it never sleeps to wait: it polls the store with a
deadline, and the follower looks every 20 ms (``tick_s``)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.fakes import FakeBinance, FakeClock, load_series
from xylen.collect.follow import Follower
from xylen.collect.governor import Governor
from xylen.collect.rest import Rest, make_client
from xylen.core.store import Store

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parents[1] / "data"
BTC_1H = DATA / "spot_klines_12col" / "sadunalpdag_batmayacagiz__BTCUSDT-1h-2022-01.csv.gz"
HOUR = 3_600_000


def wait_until(cond: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.fixture(scope="module")
def btc() -> list[list]:
    return load_series(BTC_1H, "1h")


@pytest.fixture
def clock(btc: list[list]) -> FakeClock:
    return FakeClock(btc[600][0] + 60_000)  # one minute into candle 600: 0..599 are closed


@pytest.fixture
def running(tmp_path: Path, btc: list[list], clock: FakeClock) -> Iterator[tuple[FakeBinance, Follower, Store]]:
    with FakeBinance({("BTCUSDT", "1h"): btc}, now_ms=clock) as fake:
        store = Store(tmp_path)
        rest = Rest(make_client(fake.base_url, timeout_s=2.0), Governor(0.5, clock=clock, sleep=lambda s: None))
        follower = Follower(rest, store, [("BTCUSDT", "1h")], fake.ws_url, clock, tick_s=0.02,
                            reconnect_s=0.01, grace_ms=60_000)
        thread = threading.Thread(target=lambda: asyncio.run(follower.run()), daemon=True)
        thread.start()
        try:
            fake.wait_for_subscribers("BTCUSDT", "1h")
            wait_until(lambda: store.last_open_time("BTCUSDT", "1h") == btc[599][0], "the first backfill")
            yield fake, follower, store
        finally:
            follower.stop()
            thread.join(10)
            rest.close()
    assert not thread.is_alive()
    assert follower.errors == []


def test_only_closed_candles_are_stored(running: tuple, btc: list[list], clock: FakeClock) -> None:
    fake, follower, store = running
    assert store.read("BTCUSDT", "1h").height == 600  # the REST backfill after connecting
    clock.set(btc[601][0] + 1_000)
    assert fake.push_candle("BTCUSDT", "1h", btc[600][0], updates=3) == 1
    wait_until(lambda: follower.stats.stored["BTCUSDT 1h"] == 1, "the closed candle")
    df = store.read("BTCUSDT", "1h")
    assert df.height == 601 and df["open_time"].is_unique().all()
    assert df["volume"][-1] == float(btc[600][5])  # the closing values, not a partial update
    assert any(f.name.startswith(f"tail-{btc[600][0]}-") for f in store.files("BTCUSDT", "1h"))  # not a rewrite
    assert follower.stats.ignored_open == 3
    # an update alone (still open) stores nothing
    fake.push_events("BTCUSDT", "1h", [fake.kline_event("BTCUSDT", "1h", btc[601][0], closed=False, fraction=0.5)])
    wait_until(lambda: follower.stats.ignored_open == 4, "the open update")
    assert store.read("BTCUSDT", "1h").height == 601


def test_a_dropped_connection_reconnects_and_backfills(running: tuple, btc: list[list], clock: FakeClock) -> None:
    fake, follower, store = running
    connects = follower.stats.connects["BTCUSDT 1h"]
    clock.set(btc[603][0] + 5_000)  # three candles close while the socket is down
    assert fake.drop_connections() == 1
    wait_until(lambda: follower.stats.connects["BTCUSDT 1h"] == connects + 1, "the reconnect")
    wait_until(lambda: store.last_open_time("BTCUSDT", "1h") == btc[602][0], "the REST backfill")
    fake.wait_for_subscribers("BTCUSDT", "1h")
    clock.set(btc[604][0] + 1_000)
    fake.push_candle("BTCUSDT", "1h", btc[603][0])
    wait_until(lambda: store.last_open_time("BTCUSDT", "1h") == btc[603][0], "the pushed candle")
    df = store.read("BTCUSDT", "1h")
    assert df.height == 604 and df["open_time"].is_unique().all()
    assert follower.stats.drops["BTCUSDT 1h"] >= 1


def test_the_watchdog_backfills_an_overdue_candle(running: tuple, btc: list[list], clock: FakeClock) -> None:
    fake, follower, store = running
    connects = follower.stats.connects["BTCUSDT 1h"]
    # the socket stays silent while candles 600 and 601 close; at 2 steps + grace after 599, 600 is overdue
    clock.set(btc[602][0] + 60_001)
    wait_until(lambda: follower.stats.watchdog["BTCUSDT 1h"] == 1, "the watchdog")
    wait_until(lambda: store.last_open_time("BTCUSDT", "1h") == btc[601][0], "the watchdog's backfill")
    wait_until(lambda: follower.stats.connects["BTCUSDT 1h"] == connects + 1, "the rebuilt socket")
    assert store.read("BTCUSDT", "1h").height == 602
    # the exchange has nothing newer: the watchdog does not spin
    assert follower.stats.watchdog["BTCUSDT 1h"] == 1


def test_rest_polling_carries_on_while_the_socket_is_refused(running: tuple, btc: list[list], clock: FakeClock) -> None:
    fake, follower, store = running
    fake.faults.server_error(503, path="/ws", times=3)
    drops = follower.stats.drops["BTCUSDT 1h"]
    clock.set(btc[602][0] + 5_000)
    fake.drop_connections()
    wait_until(lambda: follower.stats.drops["BTCUSDT 1h"] >= drops + 3, "refused reconnects")
    wait_until(lambda: store.last_open_time("BTCUSDT", "1h") == btc[601][0], "REST polling")
    fake.wait_for_subscribers("BTCUSDT", "1h")  # and the socket comes back


def test_the_watchdog_knows_weeks_and_calendar_months() -> None:
    now = [0]
    f = Follower(None, None, [], "ws://127.0.0.1:9/ws", lambda: now[0], grace_ms=0)  # type: ignore[arg-type]
    jan, mar = 1704067200000, 1709251200000  # 2024-01-01, 2024-03-01 (February 2024 has 29 days)
    f.last["BTCUSDT 1M"] = jan
    now[0] = mar - 1  # February, the candle after January, is still open
    assert not f._overdue("BTCUSDT", "1M")
    now[0] = mar + 1
    assert f._overdue("BTCUSDT", "1M")
    f.last["BTCUSDT 1w"] = jan  # a Monday: the week after it closes on 2024-01-15
    now[0] = jan + 14 * 86_400_000
    assert not f._overdue("BTCUSDT", "1w")
    now[0] += 1
    assert f._overdue("BTCUSDT", "1w")
