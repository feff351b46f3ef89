"""`xylen collect` as a user runs it: a real subprocess backfills from the fake exchange, follows its websocket,
stores the closed candle it pushes, survives a dropped connection (REST backfill after the reconnect) and stops
on SIGTERM (a service's normal stop) with exit 0 and nothing half-written."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.fakes import FakeBinance, load_series
from xylen.core.store import Store

pytestmark = [pytest.mark.integration, pytest.mark.slow]
BTC_1H = (
    Path(__file__).resolve().parents[1]
    / "data"
    / "spot_klines_12col"
    / ("sadunalpdag_batmayacagiz__BTCUSDT-1h-2022-01.csv.gz")
)


def test_collect_follows_live_and_stops_on_sigterm(tmp_path: Path) -> None:
    rows = load_series(BTC_1H, "1h")
    known = rows[:-3]  # the exchange knows these when we start; the last three arrive "live"
    store = Store(tmp_path / "data")

    def stored() -> list[int]:
        return store.read("BTCUSDT", "1h")["open_time"].to_list()

    with FakeBinance({("BTCUSDT", "1h"): known}) as fake:  # real clock: every 2022 candle is closed
        env = {
            **os.environ,
            "XYLEN_HOME": str(tmp_path),
            "XYLEN_BINANCE_BASE_URL": fake.base_url,
            "XYLEN_BINANCE_WS_URL": fake.ws_url,
        }
        log = tmp_path / "collect.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "xylen",
                    "collect",
                    "--symbols",
                    "BTCUSDT",
                    "--intervals",
                    "1h",
                    "--since",
                    "2022-01-01",
                    "--quiet",
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            fake.wait_for_subscribers("BTCUSDT", "1h", n=1, timeout=60)  # backfilled, now following
            wait_for(lambda: len(stored()) == len(known), timeout=120, what="the backfill")
            # a new candle closes on the exchange: the stream delivers it (updates first, then x: true)
            fake.set_series("BTCUSDT", "1h", rows[:-2])
            assert fake.push_candle("BTCUSDT", "1h", int(rows[-3][0])) == 1
            wait_for(lambda: int(rows[-3][0]) in stored(), timeout=120, what="the pushed closed candle")
            # the connection drops while two more candles close: the reconnect backfills them by REST
            fake.set_series("BTCUSDT", "1h", rows)
            fake.drop_connections()
            wait_for(lambda: len(stored()) == len(rows), timeout=60, what="the REST backfill after reconnecting")
            fake.wait_for_subscribers("BTCUSDT", "1h", n=1, timeout=60)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(120) == 0, log.read_text()[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    t = stored()
    assert t == sorted(set(t)) == [int(r[0]) for r in rows]  # every candle once, in order, no gap
    assert list(store.tmp.glob("*.tmp")) == []
