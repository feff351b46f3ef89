"""The commands that open the candle store, with XYLEN_DATA_URL=s3://... (moto's server on loopback): `xylen collect`
from the fake Binance into S3, `xylen collect status` and `xylen train` from it, in real subprocesses; a malformed
URL or an unreachable endpoint ends with exit 2 naming it, and `xylen collect migrate` (local only) is refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from tests import s3moto
from tests.conftest import free_port
from tests.fakes import FakeBinance, load_series
from xylen.core.store import Store

pytestmark = [pytest.mark.integration, pytest.mark.slow]
moto_endpoint, s3_env, s3_url = s3moto.moto_endpoint, s3moto.s3_env, s3moto.s3_url  # fixtures
BTC_1H = Path(__file__).resolve().parents[1] / "data" / "spot_ohlcv_feather" / "imsatoshi_GeneTrader_2024" / (
    "BTC_USDT-1h.feather"
)
APR = 1711929600000  # 2024-04-01: three months of hours, enough for two walk-forward folds


def xylen(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "xylen", *args], env=env, capture_output=True, text=True,
                          timeout=600)


def frame_of(rows: list) -> pl.DataFrame:
    from xylen.core.candles import COLUMNS, SCHEMA

    return pl.DataFrame([[float(x) if i not in (0, 6, 8) else int(x) for i, x in enumerate(r[:11])] for r in rows],
                        schema=list(COLUMNS), orient="row").cast(SCHEMA)  # type: ignore[arg-type]


def test_collect_into_s3_then_train_and_retrain_from_it(s3_url: str, s3_env: str, tmp_path: Path) -> None:
    rows = [r for r in load_series(BTC_1H, "1h") if int(r[0]) < APR]
    home = tmp_path / "home"
    with FakeBinance({("BTCUSDT", "1h"): rows}) as fake:
        env = {**os.environ, "XYLEN_HOME": str(home), "XYLEN_DATA_URL": s3_url, "XYLEN_BINANCE_BASE_URL": fake.base_url,
               "XYLEN_BINANCE_WS_URL": fake.ws_url, "XYLEN_FOLDS": "2", "LGBM_NUM_THREADS": "2"}
        r = xylen(env, "collect", "--symbols", "BTCUSDT", "--intervals", "1h", "--since", "2024-01-01",
                  "--until", "2024-04-01", "--once", "--quiet")
        assert r.returncode == 0, r.stderr
        # collecting again (a re-sync of the same candles) changes nothing on S3
        store = Store(s3_url, cache=tmp_path / "reader")
        before = store.storage.list()
        r = xylen(env, "collect", "--symbols", "BTCUSDT", "--intervals", "1h", "--since", "2024-01-01",
                  "--until", "2024-04-01", "--once", "--quiet")
        assert r.returncode == 0, r.stderr
    assert store.storage.list() == before
    df = store.read("BTCUSDT", "1h")
    assert df["open_time"].to_list() == [int(row[0]) for row in rows]
    assert not (home / "data").exists()  # nothing went to the local default
    r = xylen(env, "collect", "status", "--json")
    assert r.returncode == 0, r.stderr
    [row] = json.loads(r.stdout)
    assert (row["symbol"], row["interval"], row["rows"]) == ("BTCUSDT", "1h", len(rows))
    r = xylen(env, "train", "--profile", "8gb", "--symbol", "BTCUSDT", "--interval", "1h", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert s3_url in json.dumps(out)  # trained from the store on S3 (the data source names it)
    assert (home / "models" / "btcusdt-1h").is_dir()
    # new candles reach the store on S3; `xylen retrain` reads them from there
    more = [r for r in load_series(BTC_1H, "1h") if APR <= int(r[0]) < APR + 300 * 3_600_000]
    store.append("BTCUSDT", "1h", frame_of(more))
    env["XYLEN_RETRAIN_HOLDOUT"] = "200"
    r = xylen(env, "retrain", "--min-new-samples", "100", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    [res] = json.loads(r.stdout)["results"]
    assert res["new_candles"] == 300 and res["outcome"] in ("promoted", "kept"), res  # the 300 on S3 were read
    before = store.storage.list()
    r = xylen(env, "collect", "migrate")
    assert r.returncode == 2 and s3_url in r.stderr and "local" in r.stderr and "Traceback" not in r.stderr
    assert store.storage.list() == before


def test_a_malformed_data_url_or_an_unreachable_endpoint_ends_with_exit_2(s3_url: str, tmp_path: Path) -> None:
    env = {**os.environ, "XYLEN_HOME": str(tmp_path), "XYLEN_DATA_URL": "s3:///nobucket"}
    r = xylen(env, "collect", "status")
    assert r.returncode == 2 and "s3:///nobucket" in r.stderr and "XYLEN_DATA_URL" in r.stderr
    assert "Traceback" not in r.stderr
    env["XYLEN_DATA_URL"], env["XYLEN_S3_ENDPOINT_URL"] = s3_url, f"http://127.0.0.1:{free_port()}"  # nothing there
    for args in (("collect", "status"), ("train", "--symbol", "ETHUSDT", "--interval", "1h")):
        r = xylen(env, *args)
        assert r.returncode == 2 and env["XYLEN_S3_ENDPOINT_URL"] in r.stderr, r.stderr
        assert "Traceback" not in r.stderr and "testing-secret" not in r.stdout + r.stderr
    # `train --data FILE` reads no store: the unreachable endpoint does not matter
    env |= {"XYLEN_FOLDS": "2", "LGBM_NUM_THREADS": "2"}
    r = xylen(env, "train", "--profile", "8gb", "--data", str(BTC_1H), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
