"""Following live (a service), `xylen collect` outlasts an exchange that cannot be reached when it starts: it
reports each failure with its wait, resumes the backfill, and follows; a --once run (cron) still fails with it."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tests.fakes import FakeBinance, load_series
from xylen.collect import CollectOptions, collect, make_rest
from xylen.core.errors import ExchangeTemporaryError
from xylen.core.settings import load_settings
from xylen.core.store import Store

pytestmark = pytest.mark.integration
BTC_1H = (
    Path(__file__).resolve().parents[1]
    / "data"
    / "spot_klines_12col"
    / ("sadunalpdag_batmayacagiz__BTCUSDT-1h-2022-01.csv.gz")
)
SINCE = 1640995200000  # 2022-01-01


def _run(home: Path, fake: FakeBinance, *, once: bool, stop: threading.Event, waits: list[float]) -> object:
    settings = load_settings(
        {"home": home, "binance_base_url": fake.base_url, "binance_ws_url": fake.ws_url}, environ={}
    )
    rest = make_rest(settings, sleep=lambda s: None)  # the governor's own backoff, instant here
    opts = CollectOptions(["BTCUSDT"], ["1h"], since=SINCE, until=None, once=once)
    return collect(
        settings,
        opts,
        rest=rest,
        should_stop=stop.is_set,
        on_retry=lambda exc, delay: waits.append(delay),
        retry_delays_s=(0.01, 0.02),
    )


def test_following_outlasts_an_unreachable_exchange_and_loses_nothing(tmp_path: Path) -> None:
    rows = load_series(BTC_1H, "1h")
    with FakeBinance({("BTCUSDT", "1h"): rows}) as fake:
        outage = fake.faults.server_error(503, path="/api", times=20)  # 8 attempts per call: fails twice, then up
        stop, waits = threading.Event(), []
        follower = threading.Thread(target=lambda: (fake.wait_for_subscribers("BTCUSDT", "1h", n=1), stop.set()))
        follower.start()
        result = _run(tmp_path, fake, once=False, stop=stop, waits=waits)
        follower.join(60)
    assert outage.fired == 20
    assert waits == [0.01, 0.02]  # each failed start reported with its (growing) wait
    assert result.interrupted  # type: ignore[attr-defined]  # it reached the live follow and stopped on request
    assert Store(tmp_path / "data").read("BTCUSDT", "1h")["open_time"].to_list() == [int(r[0]) for r in rows]


def test_a_once_run_still_fails_on_an_unreachable_exchange(tmp_path: Path) -> None:
    rows = load_series(BTC_1H, "1h")
    with FakeBinance({("BTCUSDT", "1h"): rows}) as fake:
        fake.faults.server_error(503, path="/api", times=8)
        waits: list[float] = []
        with pytest.raises(ExchangeTemporaryError, match="kept failing"):
            _run(tmp_path, fake, once=True, stop=threading.Event(), waits=waits)
    assert waits == []


def test_the_documented_waits() -> None:
    from xylen.collect.runner import RETRY_DELAYS_S

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert "its wait (5 s, growing to 5 minutes)" in readme
    assert RETRY_DELAYS_S[0] == 5 and RETRY_DELAYS_S[-1] == 300 and list(RETRY_DELAYS_S) == sorted(RETRY_DELAYS_S)


def test_a_stop_during_the_retries_of_an_outage_ends_the_run_at_once(tmp_path: Path) -> None:
    """SIGTERM while the governor backs off between attempts (real waits, 0.5 s growing to 30 s): the run ends
    without making the remaining attempts (the old code made all 8, up to ~90 s, outlasting a 30 s stop timeout)."""
    rows = load_series(BTC_1H, "1h")
    with FakeBinance({("BTCUSDT", "1h"): rows}) as fake:
        fake.faults.server_error(503, path="/api", times=1000)
        settings = load_settings(
            {"home": tmp_path, "binance_base_url": fake.base_url, "binance_ws_url": fake.ws_url}, environ={}
        )
        # the stop arrives once the second attempt has failed: no thread, no timing, the same answer under load
        result = collect(
            settings,
            CollectOptions(["BTCUSDT"], ["1h"], since=SINCE, until=None, once=False),
            rest=make_rest(settings),
            should_stop=lambda: len(fake.requests) >= 2,
        )
        assert result.interrupted and result.series == []
        assert len(fake.requests) == 2  # stopped inside the backoff after attempt 2, not after 8 attempts
