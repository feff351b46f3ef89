"""`xylen train --cluster` and `xylen retrain --all --cluster` on a Dask LocalCluster on loopback, on real candles
(BTC and ETH 1h, tests/data): the models equal local training's (AUC within 0.005), the client publishes
them, and bad addresses or clusters end with a clear message, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.helpers import BTC_1H, ETH_1H
from xylen.core.candles import read_candles
from xylen.core.registry import Registry
from xylen.core.settings import load_settings
from xylen.core.store import Store
from xylen.train import TrainOptions, train

distributed = pytest.importorskip("distributed")
pytestmark = [pytest.mark.integration, pytest.mark.slow]

SERIES = {"BTCUSDT": BTC_1H, "ETHUSDT": ETH_1H}
FAST = {"XYLEN_FOLDS": "2", "XYLEN_PROFILE": "8gb", "LGBM_NUM_THREADS": "1"}


def fill(home: Path) -> Path:
    for symbol, path in SERIES.items():
        Store(home / "data").append(symbol, "1h", read_candles(path).frame)
    return home


def xylen(home: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 240) -> Any:
    """The CLI as a user runs it, in its own process."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("XYLEN_")} | FAST | (env or {})
    return subprocess.run(
        [sys.executable, "-m", "xylen", "--home", str(home), *args],
        capture_output=True, text=True, env=full, timeout=timeout,
    )


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=":0"
    ) as lc:
        yield lc.scheduler_address


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cluster):
    home = fill(tmp_path_factory.mktemp("cluster-home"))
    r = xylen(home, "train", "--cluster", cluster, "--symbols", "BTCUSDT,ETHUSDT", "--intervals", "1h",
              "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    return home, orjson.loads(r.stdout)


def test_cluster_training_equals_local_training(trained, tmp_path):
    home, body = trained
    assert body["exit_code"] == 0
    assert [(x["symbol"], x["interval"]) for x in body["results"]] == [(s, "1h") for s in SERIES]
    local_home = fill(tmp_path / "local")
    settings = load_settings({"home": local_home, "folds": 2, "profile": "8gb", "lgbm_num_threads": 1}, environ={})
    for rec in body["results"]:
        res = rec["result"]
        local = train(settings, TrainOptions(symbol=rec["symbol"], interval="1h"))
        assert res["name"] == local.name == f"{rec['symbol'].lower()}-1h"
        assert abs(res["metrics"]["auc_mean"] - local.metrics["auc_mean"]) <= 0.005, (rec["symbol"], res, local)
        assert res["rows_used"] == local.rows_used
        assert res["source"].startswith("store ")  # the worker read the store itself


def test_the_client_published_and_promoted_each_bundle(trained):
    home, body = trained
    registry = Registry(home / "models")
    for rec in body["results"]:
        res = rec["result"]
        assert res["version"] == "v0001" and res["promoted"] is True
        assert registry.current(res["name"]).version == "v0001"
        registry.verify(res["name"], "v0001")  # size, sha256, trial load and golden predictions
        report = (Path(res["bundle"]) / "report.html").read_text()
        assert f"{res['name']} <small>v0001</small>" in report and "@@" not in report
    assert not list((home / "models").glob(".tmp/*"))  # nothing staged is left behind


def test_the_setting_names_the_cluster_and_the_option_overrides_it(tmp_path, cluster):
    home = fill(tmp_path / "h")
    r = xylen(home, "train", "--symbols", "ETHUSDT", "--intervals", "1h", "--json", "--no-promote",
              env={"XYLEN_DASK_CLUSTER": cluster})
    assert r.returncode == 0, r.stderr
    assert orjson.loads(r.stdout)["cluster"] == cluster
    assert Registry(home / "models").current("ethusdt-1h") is None  # --no-promote: published, not live
    # a well-formed setting that reaches nothing is overridden by --cluster
    r = xylen(home, "train", "--cluster", cluster, "--symbols", "ETHUSDT", "--intervals", "1h", "--json",
              env={"XYLEN_DASK_CLUSTER": "tcp://127.0.0.1:9"})
    assert r.returncode == 0, r.stderr
    body = orjson.loads(r.stdout)
    assert body["cluster"] == cluster and body["results"][0]["result"]["version"] == "v0002"


def test_a_market_without_candles_is_its_error_and_the_others_publish(tmp_path, cluster):
    home = fill(tmp_path / "h")
    r = xylen(home, "train", "--cluster", cluster, "--symbols", "BTCUSDT,ADAUSDT", "--intervals", "1h", "--json")
    assert r.returncode == 3, r.stdout + r.stderr  # DataError's code
    btc, ada = orjson.loads(r.stdout)["results"]
    assert btc["result"]["version"] == "v0001"
    assert "No ADAUSDT 1h candles in the store" in ada["error"]["message"]
    assert Registry(home / "models").names() == ["btcusdt-1h"]


def test_the_biggest_market_is_submitted_first_and_each_result_keeps_its_market(tmp_path, cluster, monkeypatch):
    """Dask runs a higher priority first: the market with the most month partitions must not start last, behind the
    small ones. The results still come back in the order asked, each under its own market."""
    from xylen.train import cluster as xc

    home = tmp_path / "h"
    eth = read_candles(ETH_1H).frame
    Store(home / "data").append("ETHUSDT", "1h", eth.head(24 * 70))  # ~2.5 months
    Store(home / "data").append("BTCUSDT", "1h", read_candles(BTC_1H).frame)  # 9 months
    settings = load_settings({"home": home, "folds": 2, "profile": "8gb", "lgbm_num_threads": 1}, environ={})
    submitted: list[tuple[str, int]] = []
    real = distributed.Client.submit

    def spy(self, func, *args, **kw):
        submitted.append((args[1].symbol, kw["priority"]))
        return real(self, func, *args, **kw)

    monkeypatch.setattr(distributed.Client, "submit", spy)
    markets = [xc.Market("ETHUSDT", "1h", "binance"), xc.Market("BTCUSDT", "1h", "binance")]
    got = xc.train_markets(settings, markets, address=cluster)
    assert [s for s, _ in submitted] == ["BTCUSDT", "ETHUSDT"]
    assert submitted[0][1] > submitted[1][1] > 0
    assert [o.market.symbol for o in got] == ["ETHUSDT", "BTCUSDT"]
    assert [o.result.name for o in got] == ["ethusdt-1h", "btcusdt-1h"]
    assert got[0].result.rows_used < got[1].result.rows_used  # each outcome holds its own market's model
    assert Registry(home / "models").live_names() == ["btcusdt-1h", "ethusdt-1h"]


@pytest.mark.parametrize("address", ["localhost:8786", "tcp://127.0.0.1", "http://127.0.0.1:8786", "tcp://h:99999"])
def test_a_malformed_address_is_quoted_with_the_form(tmp_path, address):
    r = xylen(tmp_path, "train", "--cluster", address)
    assert r.returncode == 2
    assert f"--cluster {address!r} is not a Dask scheduler address" in r.stderr
    assert "tcp://HOST:PORT" in r.stderr and "Traceback" not in r.stderr + r.stdout
    r = xylen(tmp_path, "train", env={"XYLEN_DASK_CLUSTER": address})
    assert r.returncode == 2 and "XYLEN_DASK_CLUSTER" in r.stderr and "tcp://HOST:PORT" in r.stderr
    assert "Traceback" not in r.stderr


def test_an_unreachable_scheduler_is_a_clear_error(tmp_path):
    t0 = time.monotonic()
    r = xylen(tmp_path, "train", "--cluster", "tcp://127.0.0.1:9", "--symbols", "BTCUSDT")
    assert r.returncode == 2
    assert "Cannot reach the Dask scheduler at 'tcp://127.0.0.1:9'" in r.stderr and "dask scheduler" in r.stderr
    assert "Traceback" not in r.stderr and time.monotonic() - t0 < 60
    assert not (tmp_path / "models").exists() or not Registry(tmp_path / "models").names()


SITE = """
    import importlib.abc, importlib.metadata, sys
    _version = importlib.metadata.version
    def version(name):  # this worker's environment has no lightgbm
        if name == "lightgbm":
            raise importlib.metadata.PackageNotFoundError(name)
        return _version(name)
    importlib.metadata.version = version
    class _NoLightgbm(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path=None, target=None):
            if fullname.partition(".")[0] == "lightgbm":
                raise ModuleNotFoundError("No module named 'lightgbm'", name=fullname)
    sys.meta_path.insert(0, _NoLightgbm())
"""


def test_workers_without_lightgbm_are_named(tmp_path):
    """A real `dask scheduler` and `dask worker` whose environment lacks lightgbm (a sitecustomize hides it)."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(textwrap.dedent(SITE))
    port = _free_port()
    dask = str(Path(sys.executable).with_name("dask"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("XYLEN_")}
    sched = subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = subprocess.Popen(
        [dask, "worker", f"tcp://127.0.0.1:{port}", "--host", "127.0.0.1", "--nthreads", "1", "--no-dashboard",
         "--name", "bare-worker"],
        env=env | {"PYTHONPATH": str(tmp_path / "site")}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            r = xylen(tmp_path, "train", "--cluster", f"tcp://127.0.0.1:{port}", "--symbols", "BTCUSDT")
            if "has no workers" not in r.stderr and "Cannot reach" not in r.stderr or time.monotonic() > deadline:
                break
        assert r.returncode == 2, r.stderr
        assert "cannot run xylen's training" in r.stderr and "has no lightgbm" in r.stderr
        assert "tcp://127.0.0.1:" in r.stderr  # the worker, by its address
        assert "pip install 'xylen[dask]" in r.stderr and "Traceback" not in r.stderr
    finally:
        for p in (worker, sched):
            p.terminate()
            p.wait(timeout=30)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_retrain_all_on_the_cluster_equals_the_local_run(tmp_path, cluster):
    """Two live models with 1,200 new candles each: the candidates are made on the workers, and the client
    publishes and gates them as the local run does (same outcomes, same holdout scores within 0.005)."""
    import shutil

    from tests.helpers import retrain_home

    home = tmp_path / "h"
    for data in (BTC_1H, ETH_1H):
        retrain_home(home, data=data, lgbm_num_threads=1)
    shutil.copytree(home, tmp_path / "local")
    hold = {"XYLEN_RETRAIN_HOLDOUT": "500"}
    r = xylen(home, "retrain", "--all", "--cluster", cluster, "--json", env=hold)
    here = xylen(tmp_path / "local", "retrain", "--all", "--json", env=hold)
    assert r.returncode == here.returncode == 0, r.stdout + r.stderr + here.stdout + here.stderr
    got, want = orjson.loads(r.stdout)["results"], orjson.loads(here.stdout)["results"]
    assert [x["name"] for x in got] == [x["name"] for x in want] == ["btcusdt-1h", "ethusdt-1h"]
    registry = Registry(home / "models")
    for g, w in zip(got, want):
        assert g["outcome"] == w["outcome"] and g["outcome"] in ("promoted", "kept"), (g, w)
        assert g["candidate_version"] == w["candidate_version"] == "v0002"
        assert abs(g["gate"]["candidate"]["auc"] - w["gate"]["candidate"]["auc"]) <= 0.005
        assert "@@" not in g["message"] and "v0002" in g["message"]
        live = registry.current(g["name"]).version
        assert live == ("v0002" if g["outcome"] == "promoted" else "v0001")
        assert registry.manifest(g["name"], "v0002").model_extra["gate"]["decision"] == w["gate"]["decision"]


def test_several_markets_without_a_cluster_train_one_after_another_here(tmp_path):
    home = fill(tmp_path / "h")
    r = xylen(home, "train", "--symbols", "BTCUSDT,ETHUSDT", "--intervals", "1h", "--json")
    assert r.returncode == 0, r.stderr
    body = orjson.loads(r.stdout)
    assert body["cluster"] is None
    assert [x["result"]["name"] for x in body["results"]] == ["btcusdt-1h", "ethusdt-1h"]
    assert Registry(home / "models").live_names() == ["btcusdt-1h", "ethusdt-1h"]


def test_options_that_do_not_go_with_a_cluster_are_refused(tmp_path):
    r = xylen(tmp_path, "train", "--cluster", "tcp://127.0.0.1:9", "--data", str(BTC_1H))
    assert r.returncode == 2 and "--data files cannot be sent to a --cluster" in r.stderr
    r = xylen(tmp_path, "retrain", "--all", "--loop", "--cluster", "tcp://127.0.0.1:9")
    assert r.returncode == 2 and "--cluster cannot be used with --loop" in r.stderr
    assert "XYLEN_DASK_CLUSTER=tcp://127.0.0.1:9" in r.stderr
    r = xylen(tmp_path, "retrain", "--all", "--cluster", "127.0.0.1:9")
    assert r.returncode == 2 and "--cluster '127.0.0.1:9' is not a Dask scheduler address" in r.stderr
    r = xylen(tmp_path, "train", "--symbols", "BTCUSDT,ETHUSDT", "--name", "one")
    assert r.returncode == 2 and "--name 'one' names one model, but 2 markets are trained" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("allowed_failures", [0, 3])
def test_a_worker_killed_mid_task(tmp_path, allowed_failures):
    """The worker training one market is killed (SIGKILL) while it trains. Dask's default (allowed-failures 3) runs
    the task again on another worker: both markets are published. With retries off (0), that market ends with a
    clear error naming KilledWorker and nothing of it reaches the registry; the other market is published."""
    import signal
    import threading

    import dask

    from xylen.train import cluster as xc

    home = fill(tmp_path / "h")
    settings = load_settings({"home": home, "folds": 2, "profile": "8gb", "lgbm_num_threads": 1}, environ={})
    markets = [xc.Market("BTCUSDT", "1h", "binance"), xc.Market("ETHUSDT", "1h", "binance")]
    killed: list[str] = []
    with dask.config.set({"distributed.scheduler.allowed-failures": allowed_failures}), distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=":0"
    ) as lc, distributed.Client(lc.scheduler_address, set_as_default=False) as spy:

        def kill_the_btc_worker() -> None:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                for worker, keys in spy.processing().items():
                    if any("BTCUSDT" in str(k) for k in keys):
                        time.sleep(0.5)  # well into the task
                        pid = spy.run(os.getpid, workers=[worker])[worker]
                        os.kill(pid, signal.SIGKILL)
                        killed.append(worker)
                        return
                time.sleep(0.05)

        t = threading.Thread(target=kill_the_btc_worker)
        t.start()
        t0 = time.monotonic()
        outcomes = xc.train_markets(settings, markets, address=lc.scheduler_address)
        t.join()
    assert killed, "no worker was seen training BTCUSDT"
    btc, eth = outcomes
    if allowed_failures:
        assert [o.error for o in outcomes] == [None, None]
        assert [o.result.version for o in outcomes] == ["v0001", "v0001"]
        assert Registry(home / "models").live_names() == ["btcusdt-1h", "ethusdt-1h"]
        return
    assert btc.result is None and "KilledWorker" in btc.error["message"] and btc.exit_code == 5
    assert "BTCUSDT 1h: the task failed on the cluster" in btc.error["message"]
    assert eth.error is None and eth.result.version == "v0001"
    assert Registry(home / "models").names() == ["ethusdt-1h"]
    assert xc.exit_code(outcomes) == 5 and time.monotonic() - t0 < 120
