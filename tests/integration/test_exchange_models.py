"""One model per market: `xylen train --exchange kraken` reads Kraken's partition of the store and names the model
kraken-<symbol>-<interval>, `xylen retrain` keeps reading that partition, and /predict routes Kraken's requests to
it while Binance's (the alpha's request, without 'exchange') stay with Binance's model."""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import wait_for
from tests.helpers import BTC_1H
from xylen.core.candles import read_candles
from xylen.core.errors import DataError
from xylen.core.registry import Registry
from xylen.core.settings import load_settings
from xylen.core.store import Store
from xylen.profiles import resolve
from xylen.serve.app import create_app
from xylen.train import TrainOptions, train
from xylen.train.retrain import RetrainOptions, retrain

with warnings.catch_warnings():  # starlette warns at import that httpx2 would be preferred
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

pytestmark = [pytest.mark.integration]

NEW = 1200


def settings(home: Path, **kw: Any) -> Any:
    return load_settings({"home": home, "folds": 2, "label": "threshold", "extra_head": "none", **kw}, environ={})


def small() -> Any:
    return replace(resolve("8gb"), num_boost_round=60, early_stopping_rounds=10)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Kraken's BTC/USD 1h candles in the store (all but the newest NEW), a model trained on them, and a Binance
    BTCUSDT 5m model from the bundled sample."""
    home = tmp_path_factory.mktemp("exchanges") / "home"
    frame = read_candles(BTC_1H).frame
    Store(home / "data", exchange="kraken").append("BTCUSD", "1h", frame.head(frame.height - NEW))
    r = train(settings(home), TrainOptions(symbol="BTC/USD", interval="1h", exchange="kraken"), small())
    assert (r.name, r.exchange, r.symbol) == ("kraken-btcusd-1h", "kraken", "BTCUSD")
    assert "exchange=kraken" in r.source
    b = train(settings(home), TrainOptions(), small())  # binance BTCUSDT 5m: the bundled sample
    assert (b.name, b.exchange) == ("btcusdt-5m", "binance")
    return home


def test_the_model_is_named_and_stamped_with_its_exchange(home: Path) -> None:
    reg = Registry(home / "models")
    m = reg.manifest("kraken-btcusd-1h", reg.current("kraken-btcusd-1h").version)
    assert (m.exchange, m.symbol, m.interval) == ("kraken", "BTCUSD", "1h")
    assert reg.manifest("btcusdt-5m", "v0001").exchange == "binance"


def test_another_exchanges_candles_are_not_binances(home: Path) -> None:
    with pytest.raises(DataError) as exc:  # Binance's partition has no BTCUSD 1h: it is not Kraken's
        train(settings(home), TrainOptions(symbol="BTCUSD", interval="1h"), small())
    assert "No BTCUSD 1h candles" in exc.value.message
    with pytest.raises(DataError) as exc:
        train(settings(home), TrainOptions(symbol="BTCUSD", interval="5m", exchange="okx"), small())
    assert "--exchange okx --symbols BTCUSD --intervals 5m" in exc.value.hint


def test_retrain_reads_the_models_own_exchange(home: Path) -> None:
    frame = read_candles(BTC_1H).frame
    Store(home / "data", exchange="kraken").append("BTCUSD", "1h", frame)  # the newest NEW candles arrive
    s = settings(home, retrain_holdout=500)
    report = retrain(s, RetrainOptions(names=["kraken-btcusd-1h"], min_new_samples=1), small())
    [res] = report.results
    assert res.outcome in ("promoted", "kept"), res.message
    assert res.new_candles == NEW
    reg = Registry(home / "models")
    assert reg.manifest("kraken-btcusd-1h", res.candidate_version).exchange == "kraken"


def test_predict_routes_each_exchange_to_its_model(home: Path, candle_window: np.ndarray) -> None:
    hourly = read_candles(BTC_1H).frame.tail(60)
    candles = [[t, str(o), str(h), str(lo), str(c), str(v), t + 3_599_999] for t, o, h, lo, c, v in
               hourly.select(["open_time", "open", "high", "low", "close", "volume"]).rows()]
    app = create_app(load_settings({"home": home}, environ={}))
    with TestClient(app, base_url="http://127.0.0.1") as c:
        wait_for(lambda: c.get("/health/ready").status_code == 200, timeout=60, what="readiness")
        r = c.post("/predict", json={"exchange": "kraken", "symbol": "BTC/USD", "timeframe": "1h",
                                     "candles": candles})
        assert r.status_code == 200 and r.json()["model"] == "kraken-btcusd-1h", r.text[:300]
        r = c.post("/predict", json={"symbol": "BTCUSD", "timeframe": "1h", "candles": candles})
        assert r.status_code == 404 and "btcusd-1h" in r.json()["error"], r.text[:300]  # Binance's: none
        alpha = {"symbol": "BTCUSDT", "timeframe": "5m", "candles": [
            [int(r[0]), *map(str, r[1:6]), int(r[0]) + 299_999] for r in candle_window]}
        assert c.post("/predict", json=alpha).json()["model"] == "btcusdt-5m"
        rows = {m["name"]: m for m in c.get("/models").json()}
        assert rows["kraken-btcusd-1h"]["exchange"] == "kraken" and rows["btcusdt-5m"]["exchange"] == "binance"
