"""`xylen train --cluster` with the candle store on S3 (XYLEN_DATA_URL, moto on loopback): the Dask workers read
the candles from the bucket, so no volume is shared with them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import s3moto
from tests.helpers import BTC_1H
from xylen.core.candles import read_candles
from xylen.core.registry import Registry
from xylen.core.store import Store

distributed = pytest.importorskip("distributed")
pytestmark = [pytest.mark.integration, pytest.mark.slow]
moto_endpoint, s3_env, s3_url = s3moto.moto_endpoint, s3moto.s3_env, s3moto.s3_url  # fixtures


@pytest.mark.parametrize("mode", [[], ["--distributed"]], ids=["per-market", "distributed"])
def test_cluster_workers_read_the_store_on_s3(s3_url: str, s3_env: str, tmp_path: Path, mode: list[str]) -> None:
    Store(s3_url, cache=tmp_path / "w").append("BTCUSDT", "1h", read_candles(BTC_1H).frame)
    home = tmp_path / "home"
    # the workers get the AWS variables of this process (set by s3_env), not its XYLEN_HOME: they read from S3
    # (--distributed: each month block is read by a worker, and this machine reads the months' list there too)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=":0") as lc:
        env = {k: v for k, v in os.environ.items() if not k.startswith("XYLEN_")}
        env |= {"XYLEN_DATA_URL": s3_url, "XYLEN_S3_ENDPOINT_URL": s3_env, "XYLEN_FOLDS": "2",
                "XYLEN_PROFILE": "8gb", "LGBM_NUM_THREADS": "1"}
        r = subprocess.run([sys.executable, "-m", "xylen", "--home", str(home), "train", "--cluster",
                            lc.scheduler_address, *mode, "--symbols", "BTCUSDT", "--intervals", "1h", "--json"],
                           capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert s3_url in r.stdout  # the data source each worker read
    assert Registry(home / "models").current("btcusdt-1h") is not None
    assert not (home / "data").exists()
    body = json.loads(r.stdout)
    if mode:
        assert body["distributed"] is True
        assert body["source"] == f"store {s3_url}/klines/exchange=binance/symbol=BTCUSDT/interval=1h"
