"""The store's other users with XYLEN_DATA_URL=s3://... (moto on loopback): `xylen serve`'s pushed candles
(StoreFeed) and dashboard data view, and `xylen collect import` / `export`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests import s3moto
from tests.unit.test_store_concurrency import frame
from tests.unit.test_store_feed import JAN, STEP, Loop, candles, loop, times  # noqa: F401 (loop: a fixture)
from xylen.cli import app
from xylen.core.store import Store
from xylen.serve import store_feed
from xylen.serve.store_feed import StoreFeed

pytestmark = pytest.mark.unit
moto_endpoint, s3_env, s3_url = s3moto.moto_endpoint, s3moto.s3_env, s3moto.s3_url  # fixtures


def test_the_push_feed_reads_history_and_new_candles_from_s3(
    s3_url: str, s3_env: str, tmp_path: Path, loop: Loop, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    store = Store(s3_url, cache=tmp_path / "w")
    store.append("BTCUSDT", "5m", candles(0, 100))
    feed = StoreFeed(s3_url, thread=False, endpoint_url=s3_env, cache=tmp_path / "r")
    feed.start(loop.loop)
    window = feed.history("binance", "BTCUSDT", "5m", 50)
    assert [int(t) for t in window[:, 0]] == times(range(50, 100))
    feed.listen("binance", "BTCUSDT", "5m", loop.on_rows, since=int(window[-1, 0]))
    feed.poll_once()
    for i in range(100, 103):
        store.append("BTCUSDT", "5m", candles(i, 1))
    feed.poll_once()  # within REMOTE_LOOK_S of the last look: no listing yet
    loop.settle()
    assert loop.times == []
    monkeypatch.setattr(store_feed, "REMOTE_LOOK_S", 0.0)
    feed.poll_once()  # next_full was set with the old REMOTE_LOOK_S: still waiting
    feed._series[("binance", "BTCUSDT", "5m")].next_full = 0.0
    feed.poll_once()
    loop.settle()
    assert loop.times == times(range(100, 103))
    rows = np.concatenate(loop.got)
    assert np.array_equal(rows[:, 1], candles(100, 3)["open"].to_numpy())


def test_the_dashboard_data_view_reads_the_store_on_s3(s3_url: str, s3_env: str, tmp_path: Path) -> None:
    from tests.builders import build_bundle
    from tests.unit.test_ui_backend import serving
    from xylen.core.registry import Registry
    from xylen.serve.auth import KeyRing

    home = tmp_path / "h"
    build_bundle(Registry(home / "models"), "btcusdt-5m", rounds=5, rows=800)
    store = Store(s3_url, cache=tmp_path / "w")
    store.append("BTCUSDT", "5m", candles(0, 50))
    store.add_known_gaps("BTCUSDT", "5m", [(0, 300_000)])
    env = {"XYLEN_DATA_URL": s3_url, "XYLEN_S3_ENDPOINT_URL": s3_env}
    with serving(home, keys=KeyRing([]), env=env) as c:
        d = c.app.app.state.dashboard
        [s] = d.data_feed()["series"]
        assert (s["exchange"], s["symbol"], s["candles"], s["known_gaps"]) == ("binance", "BTCUSDT", 50, [[0, 300_000]])
        reads: list[str] = []
        for st in d._stores.values():
            real = st.read
            st.read = lambda sym, iv, *a, _real=real, **k: reads.append(sym) or _real(sym, iv, *a, **k)
        assert d.data_feed()["series"][0]["candles"] == 50 and reads == []  # the ETags did not change: no read
        store.append("BTCUSDT", "5m", candles(50, 1))
        assert d.data_feed()["series"][0]["candles"] == 51 and reads == ["BTCUSDT"]
    assert not (home / "data").exists()


def test_collect_import_and_export_use_the_store_on_s3(s3_url: str, s3_env: str, tmp_path: Path) -> None:
    src = tmp_path / "BTCUSDT-5m.parquet"
    page = frame(JAN + STEP * np.arange(300), 100.0, STEP)
    page.write_parquet(src)
    env = {"XYLEN_DATA_URL": s3_url, "XYLEN_S3_ENDPOINT_URL": s3_env}
    runner = CliRunner()
    r = runner.invoke(app, ["--home", str(tmp_path / "home"), "collect", "import", str(src), "--symbol", "BTCUSDT",
                            "--interval", "5m"], env=env)
    assert r.exit_code == 0, r.output
    assert Store(s3_url, cache=tmp_path / "c").read("BTCUSDT", "5m").equals(page)
    out = tmp_path / "out.parquet"
    r = runner.invoke(app, ["--home", str(tmp_path / "home"), "collect", "export", "--symbol", "BTCUSDT",
                            "--interval", "5m", "--format", "parquet", "--out", str(out)], env=env)
    assert r.exit_code == 0, r.output
    import polars as pl

    assert pl.read_parquet(out)["open_time"].to_list() == page["open_time"].to_list()
    assert not (tmp_path / "home" / "data").exists()
