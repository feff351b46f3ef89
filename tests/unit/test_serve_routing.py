"""/predict is answered by the request's own series' model, or by an explicitly configured default model of the
same timeframe, and never by another model; readiness counts only models that have a live version."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.builders import build_bundle
from tests.conftest import wait_for
from xylen.core import features
from xylen.core.bundle import load_bundle
from xylen.core.errors import ConfigError
from xylen.core.registry import Registry
from xylen.core.settings import load_settings
from xylen.serve.app import check_models, create_app

with warnings.catch_warnings():  # starlette warns at import that httpx2 would be preferred
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

pytestmark = pytest.mark.unit
HOUR = 3_600_000


def rows(m: np.ndarray, step_ms: int = 300_000) -> list[list[Any]]:
    """Binance 12-field kline arrays (prices as strings) with the close_time of a ``step_ms`` candle."""
    return [[int(r[0]), *(repr(float(x)) for x in r[1:6]), int(r[0]) + step_ms - 1, "0", 0, "0", "0", "0"] for r in m]


def hourly(m: np.ndarray) -> np.ndarray:
    """The same prices re-stamped as consecutive 1h candles (a valid 1h request)."""
    out = m.copy()
    out[:, 0] = (m[0, 0] // HOUR) * HOUR + np.arange(len(m)) * HOUR
    return out


@pytest.fixture(scope="module")
def multi_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """btcusdt-5m and ethusdt-1h live; adausdt-1h live but trained on 5m candles (a misnamed model);
    solusdt-5m published but never promoted (`xylen train --no-promote`)."""
    home = tmp_path_factory.mktemp("multi") / "home"
    reg = Registry(home / "models")
    build_bundle(reg, "btcusdt-5m", rounds=5, rows=800)
    build_bundle(reg, "ethusdt-1h", rounds=5, rows=800, seed=1, symbol="ETHUSDT", interval="1h")
    build_bundle(reg, "adausdt-1h", rounds=5, rows=800, seed=2, symbol="ADAUSDT", interval="5m")
    build_bundle(reg, "solusdt-5m", rounds=5, rows=800, seed=3, symbol="SOLUSDT", promote=False)
    return home


def client(home: Path, env: dict[str, str] | None = None, **kwargs: Any) -> Any:
    settings = load_settings({"home": home}, environ=env or {})
    return TestClient(create_app(settings, **kwargs), base_url="http://127.0.0.1")


@pytest.fixture
def ready_client() -> Iterator[Any]:
    """Open a client and wait until its first model load finished (ready or not)."""
    opened: list[Any] = []

    def open_(home: Path, env: dict[str, str] | None = None, ready: bool = True, **kwargs: Any) -> Any:
        c = client(home, env, **kwargs).__enter__()
        opened.append(c)
        if ready:
            wait_for(lambda: c.get("/health/ready").status_code == 200, timeout=60, what="readiness")
        else:
            wait_for(lambda: "loading models" not in c.get("/health/ready").text, timeout=60, what="the first load")
        return c

    yield open_
    for c in opened:
        c.__exit__(None, None, None)


def test_a_series_without_its_own_model_is_404_not_another_model(ready_client: Any, trained_home: Path,
                                                                   candle_window: np.ndarray) -> None:
    c = ready_client(trained_home)  # only btcusdt-5m, no default configured
    r = c.post("/predict", json={"symbol": "ETHUSDT", "timeframe": "1h", "candles": rows(hourly(candle_window), HOUR)})
    assert r.status_code == 404, r.text
    err = r.json()["error"]
    assert "btcusdt-5m" in err and "`xylen train --symbol ETHUSDT --interval 1h`" in err
    r = c.post("/predict", json={"symbol": "ETHUSDT", "timeframe": "5m", "candles": rows(candle_window)})
    assert r.status_code == 404 and "no default model" in r.json()["error"]
    r = c.post("/predict", json={"symbol": "BTCUSDT", "timeframe": "5m", "candles": rows(candle_window)})
    assert r.status_code == 200 and r.json()["model"] == "btcusdt-5m"


def test_each_series_is_answered_by_its_own_model(ready_client: Any, multi_home: Path,
                                                  candle_window: np.ndarray) -> None:
    c = ready_client(multi_home)
    reg = Registry(multi_home / "models")
    w1h = hourly(candle_window)
    r = c.post("/predict", json={"symbol": "ETHUSDT", "timeframe": "1h", "candles": rows(w1h, HOUR)})
    assert r.status_code == 200, r.text
    got = r.json()
    want = load_bundle(reg.current_path("ethusdt-1h")).predict_candles(features.CandleArrays.from_matrix(w1h))
    assert (got["model"], got["probability"], got["notes"]) == ("ethusdt-1h", want, [])
    r = c.post("/predict", json={"symbol": "btcusdt", "timeframe": "5m", "candles": rows(candle_window)})
    assert r.status_code == 200 and r.json()["model"] == "btcusdt-5m"  # the symbol's case does not matter


def test_a_model_whose_manifest_says_another_interval_refuses(ready_client: Any, multi_home: Path,
                                                              candle_window: np.ndarray) -> None:
    c = ready_client(multi_home)
    r = c.post("/predict", json={"symbol": "ADAUSDT", "timeframe": "1h", "candles": rows(hourly(candle_window), HOUR)})
    assert r.status_code == 422 and "trained on 5m candles" in r.json()["error"]


def test_the_configured_default_answers_other_symbols_of_its_timeframe_only(
        ready_client: Any, trained_home: Path, candle_window: np.ndarray) -> None:
    c = ready_client(trained_home, env={"XYLEN_DEFAULT_MODEL": "btcusdt-5m"})
    r = c.post("/predict", json={"symbol": "ETHUSDT", "timeframe": "5m", "candles": rows(candle_window)})
    assert r.status_code == 200 and r.json()["model"] == "btcusdt-5m"
    assert r.json()["notes"] == ["no model for ETHUSDT 5m: answered by the default model 'btcusdt-5m' "
                                 "(trained on BTCUSDT)"]
    r = c.post("/predict", json={"symbol": "ETHUSDT", "timeframe": "1h", "candles": rows(hourly(candle_window), HOUR)})
    assert r.status_code == 404, r.text
    assert "'btcusdt-5m' is a 5m model and never answers for 1h" in r.json()["error"]
    r = c.post("/predict", json={"timeframe": "1h", "candles": rows(hourly(candle_window), HOUR)})
    assert r.status_code == 404 and "is a 5m model" in r.json()["error"]


def test_the_first_model_option_is_the_default(ready_client: Any, multi_home: Path, candle_window: np.ndarray) -> None:
    c = ready_client(multi_home, names=["ethusdt-1h", "btcusdt-5m"])
    w1h = rows(hourly(candle_window), HOUR)
    assert c.post("/predict", json={"candles": w1h}).json()["model"] == "ethusdt-1h"
    r = c.post("/predict", json={"symbol": "XRPUSDT", "timeframe": "1h", "candles": w1h})
    assert r.status_code == 200 and r.json()["model"] == "ethusdt-1h"
    r = c.post("/predict", json={"symbol": "XRPUSDT", "timeframe": "5m", "candles": rows(candle_window)})
    assert r.status_code == 404
    picked = ready_client(multi_home, env={"XYLEN_DEFAULT_MODEL": "btcusdt-5m"}, names=["ethusdt-1h", "btcusdt-5m"])
    assert picked.post("/predict", json={"candles": rows(candle_window)}).json()["model"] == "btcusdt-5m"


def test_without_symbol_and_timeframe(ready_client: Any, trained_home: Path, multi_home: Path,
                                      candle_window: np.ndarray) -> None:
    body = {"candles": rows(candle_window)}
    assert ready_client(trained_home).post("/predict", json=body).json()["model"] == "btcusdt-5m"  # the only one
    several = ready_client(multi_home)
    for partial in (body, body | {"timeframe": "5m"}, body | {"symbol": "BTCUSDT"}):
        r = several.post("/predict", json=partial)
        assert r.status_code == 422, r.text
        assert "send 'symbol' and 'timeframe'" in r.json()["error"] and "btcusdt-5m" in r.json()["error"]
    with_default = ready_client(multi_home, env={"XYLEN_DEFAULT_MODEL": "btcusdt-5m"})
    assert with_default.post("/predict", json=body).json()["model"] == "btcusdt-5m"


def test_hostile_symbols_and_timeframes_are_4xx(ready_client: Any, trained_home: Path,
                                                candle_window: np.ndarray) -> None:
    c = ready_client(trained_home)
    for symbol in ("../../etc/passwd", "x" * 5000, "BTC USDT", "BTC//USDT", "BTC/USDT:USDT", "", "ÄÖÜ\u202e",
                   "b/t-c", 7):
        r = c.post("/predict", json={"symbol": symbol, "timeframe": "5m", "candles": rows(candle_window)})
        assert r.status_code == 422, (str(symbol)[:20], r.status_code, r.text[:200])
        assert "'symbol'" in r.json()["error"] and len(r.json()["error"]) < 200  # quoted, truncated
    # one separator is a spelling of the same pair (ccxt's BTC/USDT, OKX's BTC-USDT); a model name is no symbol
    for symbol in ("BTC/USDT", "btc-usdt", "BTC_USDT"):
        r = c.post("/predict", json={"symbol": symbol, "timeframe": "5m", "candles": rows(candle_window)})
        assert r.status_code == 200 and r.json()["model"] == "btcusdt-5m", (symbol, r.text[:200])
    r = c.post("/predict", json={"symbol": "btcusdt-5m", "timeframe": "5m", "candles": rows(candle_window)})
    assert r.status_code == 404 and "BTCUSDT5M" in r.json()["error"]
    for exchange in ("Kraken ", "ftx", "", 7, "binance/../x"):
        r = c.post("/predict", json={"symbol": "BTCUSDT", "timeframe": "5m", "exchange": exchange,
                                     "candles": rows(candle_window)})
        assert r.status_code == 422 and "'exchange'" in r.json()["error"], (exchange, r.text[:200])
    # another exchange's market is not Binance's: no model for it, whatever the symbol
    r = c.post("/predict", json={"symbol": "BTCUSDT", "timeframe": "5m", "exchange": "kraken",
                                 "candles": rows(candle_window)})
    assert r.status_code == 404 and "kraken-btcusdt-5m" in r.json()["error"], r.text[:300]
    assert "--exchange kraken" in r.json()["error"]
    r = c.post("/predict", json={"symbol": "BTCUSDT", "exchange": "kraken", "candles": rows(candle_window)})
    assert r.status_code == 404 and "kraken BTCUSDT" in r.json()["error"], r.text[:300]
    r = c.post("/predict", json={"symbol": "BTCUSDT", "timeframe": "5m", "exchange": "binance",
                                 "candles": rows(candle_window)})
    assert r.status_code == 200 and r.json()["model"] == "btcusdt-5m"
    for timeframe in ("5M", "1M ", "", "5m\x00", 5):
        r = c.post("/predict", json={"symbol": "BTCUSDT", "timeframe": timeframe, "candles": rows(candle_window)})
        assert r.status_code == 422 and "timeframe" in r.json()["error"], timeframe
    r = c.post("/predict", json={"symbol": "BTCUSDT", "timeframe": "1M", "candles": rows(candle_window)})
    assert r.status_code == 404  # a real interval, no model for it


def test_a_new_series_model_never_gets_its_requests_answered_by_another(home_copy: Path, ready_client: Any,
                                                                          candle_window: np.ndarray) -> None:
    """While ethusdt-1h is published and swapped in under load, ETHUSDT 1h requests get 404 (then 503 while it
    loads), then that model: never btcusdt-5m."""
    c = ready_client(home_copy, watch_interval=0.05)
    body = {"symbol": "ETHUSDT", "timeframe": "1h", "candles": rows(hourly(candle_window), HOUR)}
    answers: list[tuple[int, str | None]] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            r = c.post("/predict", json=body)
            answers.append((r.status_code, r.json().get("model")))

    t = threading.Thread(target=hammer)
    t.start()
    try:
        wait_for(lambda: len(answers) > 5, timeout=60, what="requests before the new model")
        build_bundle(Registry(home_copy / "models"), "ethusdt-1h", rounds=5, rows=800, symbol="ETHUSDT", interval="1h")
        wait_for(lambda: answers[-1][0] == 200, timeout=60, what="ethusdt-1h to be served")
        n = len(answers)
        wait_for(lambda: len(answers) > n + 5, timeout=60, what="requests after the swap")
    finally:
        stop.set()
        t.join()
    # 404 before the promotion, 503 while it loads (it is then a served model), then only that model
    assert {a for a in answers if a[0] not in (404, 503)} == {(200, "ethusdt-1h")}, sorted(set(answers))
    first_200 = answers.index((200, "ethusdt-1h"))
    assert all(a == (200, "ethusdt-1h") for a in answers[first_200:])


def test_a_never_promoted_model_does_not_hold_readiness_back(ready_client: Any, multi_home: Path) -> None:
    c = ready_client(multi_home)  # solusdt-5m has a version but no CURRENT.json
    ready = c.get("/health/ready").json()
    assert ready["models"] == {"adausdt-1h": "v0001", "btcusdt-5m": "v0001", "ethusdt-1h": "v0001"}
    assert c.get("/health").json()["status"] == "healthy"
    assert c.get("/v2/health/ready").status_code == 200


def test_an_explicitly_requested_model_without_a_live_version_is_not_ready(ready_client: Any,
                                                                          multi_home: Path) -> None:
    for kwargs in ({"names": ["btcusdt-5m", "solusdt-5m"]}, {"env": {"XYLEN_DEFAULT_MODEL": "solusdt-5m"}}):
        c = ready_client(multi_home, ready=False, **kwargs)
        r = c.get("/health/ready")
        assert r.status_code == 503, (kwargs, r.text)
        assert "'solusdt-5m' is not loaded: no live version" in r.json()["error"]
        assert "xylen models promote solusdt-5m" in r.json()["error"]
        assert c.get("/health").json()["status"] == "unhealthy"


def test_a_registry_of_never_promoted_models_says_how_to_make_one_live(ready_client: Any, tmp_path: Path) -> None:
    build_bundle(Registry(tmp_path / "models"), "solusdt-5m", rounds=5, rows=800, promote=False)
    c = ready_client(tmp_path, ready=False)
    err = c.get("/health/ready").json()["error"]
    assert "no models with a live version" in err and "xylen models promote" in err


def test_the_default_model_setting_is_checked(tmp_path: Path, trained_home: Path) -> None:
    with pytest.raises(ConfigError, match="XYLEN_DEFAULT_MODEL"):
        load_settings({}, environ={"XYLEN_HOME": str(tmp_path), "XYLEN_DEFAULT_MODEL": "../btc"})
    assert load_settings({}, environ={"XYLEN_HOME": str(tmp_path), "XYLEN_DEFAULT_MODEL": ""}).default_model is None
    settings = load_settings({"home": trained_home, "default_model": "ethusdt-1h"}, environ={})
    with pytest.raises(ConfigError, match="not among --model btcusdt-5m") as exc:
        check_models(settings, ["btcusdt-5m"], None)
    assert exc.value.exit_code == 2


def test_a_model_path_bundle_is_the_default_for_its_timeframe(ready_client: Any, trained_home: Path,
                                                             tmp_path: Path, candle_window: np.ndarray) -> None:
    bundle = Registry(trained_home / "models").current_path("btcusdt-5m")
    c = ready_client(tmp_path, env={"MODEL_PATH": str(bundle)})
    r = c.post("/predict", json={"symbol": "ETHUSDT", "timeframe": "5m", "candles": rows(candle_window)})
    assert r.status_code == 200 and r.json()["model"] == "btcusdt-5m" and "default model" in r.json()["notes"][0]
    r = c.post("/predict", json={"symbol": "BTCUSDT", "timeframe": "5m", "candles": rows(candle_window)})
    assert r.status_code == 200 and r.json()["notes"] == []
    r = c.post("/predict", json={"symbol": "ETHUSDT", "timeframe": "1h", "candles": rows(hourly(candle_window), HOUR)})
    assert r.status_code == 404 and "never answers for 1h" in r.json()["error"]



def test_monthly_models_are_named_1mo_and_routed(ready_client: Any, tmp_path: Path, candle_window: np.ndarray) -> None:
    """Model names are lower case and 1m is the minute: a calendar-month (1M) model is btcusdt-1mo, and a request
    with timeframe 1M reaches it (and never the minute model)."""
    from xylen.core.intervals import next_open
    from xylen.core.registry import check_name, model_name

    assert model_name("BTCUSDT", "1M") == check_name("btcusdt-1mo") and model_name("BTCUSDT", "1m") == "btcusdt-1m"
    reg = Registry(tmp_path / "models")
    build_bundle(reg, "btcusdt-1mo", rounds=5, rows=800, interval="1M")
    monthly = candle_window.copy()
    t = 1_420_070_400_000  # 2015-01-01
    for i in range(len(monthly)):
        monthly[i, 0] = t
        t = next_open(t, "1M")
    month_rows = [[int(r[0]), *(repr(float(x)) for x in r[1:6]), next_open(int(r[0]), "1M") - 1, "0", 0, "0", "0", "0"]
                  for r in monthly]
    c = ready_client(tmp_path)
    r = c.post("/predict", json={"symbol": "BTCUSDT", "timeframe": "1M", "candles": month_rows})
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "btcusdt-1mo"
    r = c.post("/predict", json={"symbol": "BTCUSDT", "timeframe": "1m", "candles": month_rows})
    assert r.status_code == 404


def test_a_symbol_without_timeframe_is_not_answered_by_another_series(ready_client: Any, trained_home: Path,
                                                                      candle_window: np.ndarray) -> None:
    """The only model served is no permission to answer for another symbol; the explicit default is, with a note."""
    c = ready_client(trained_home)
    r = c.post("/predict", json={"symbol": "ETHUSDT", "candles": rows(candle_window)})
    assert r.status_code == 404 and "trained on BTCUSDT" in r.json()["error"], r.text
    assert c.post("/predict", json={"symbol": "btcusdt", "candles": rows(candle_window)}).status_code == 200
    d = ready_client(trained_home, {"XYLEN_DEFAULT_MODEL": "btcusdt-5m"})
    r = d.post("/predict", json={"symbol": "SOLUSDT", "candles": rows(candle_window)})
    assert r.status_code == 200 and r.json()["model"] == "btcusdt-5m"
    note = "no model for SOLUSDT: answered by the default model 'btcusdt-5m' (trained on BTCUSDT)"
    assert r.json()["notes"] == [note]


def test_a_model_named_for_another_symbol_refuses(ready_client: Any, tmp_path: Path,
                                                  candle_window: np.ndarray) -> None:
    """`xylen train --symbol BTCUSDT --name ethusdt-5m`: the name is no proof of the symbol; the manifest is."""
    build_bundle(Registry(tmp_path / "models"), "ethusdt-5m", rounds=5, rows=800, symbol="BTCUSDT")
    r = ready_client(tmp_path).post("/predict", json={"symbol": "ETHUSDT", "timeframe": "5m",
                                                      "candles": rows(candle_window)})
    assert r.status_code == 422 and "was trained on BTCUSDT candles, not ETHUSDT" in r.json()["error"], r.text


def test_a_503_and_the_probes_read_no_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           candle_window: np.ndarray) -> None:
    """While no model is live, /predict answers 503 and readiness 503 from the watcher's last look, not by listing
    the registry per request (/predict does no file I/O)."""
    calls: list[int] = []
    real = Registry.live_names
    monkeypatch.setattr(Registry, "live_names", lambda self: (calls.append(1), real(self))[1])
    settings = load_settings({"home": tmp_path}, environ={})
    with TestClient(create_app(settings, watch_interval=3600), base_url="http://127.0.0.1") as c:
        wait_for(lambda: "loading models" not in c.get("/health/ready").text, timeout=60, what="the first look")
        before = len(calls)
        for _ in range(20):
            assert c.post("/predict", json={"candles": rows(candle_window)}).status_code == 503
        assert c.get("/health/ready").status_code == 503
        assert len(calls) == before


@pytest.fixture(scope="module")
def exchanges_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """btcusdt-5m (Binance) and kraken-btcusdt-5m (the same pair on Kraken) live; kraken-ethusdt-5m is named for
    Kraken but trained on Binance's candles (a misnamed model)."""
    home = tmp_path_factory.mktemp("exchanges") / "home"
    reg = Registry(home / "models")
    build_bundle(reg, "btcusdt-5m", rounds=5, rows=800)
    build_bundle(reg, "kraken-btcusdt-5m", rounds=5, rows=800, seed=4, exchange="kraken")
    build_bundle(reg, "kraken-ethusdt-5m", rounds=5, rows=800, seed=5, symbol="ETHUSDT")
    return home


def test_each_exchange_is_answered_by_its_own_model(ready_client: Any, exchanges_home: Path,
                                                    candle_window: np.ndarray) -> None:
    c = ready_client(exchanges_home)
    window = rows(candle_window)
    for sent, model in (({}, "btcusdt-5m"), ({"exchange": "binance"}, "btcusdt-5m"),
                        ({"exchange": "kraken"}, "kraken-btcusdt-5m")):
        r = c.post("/predict", json={"symbol": "BTC/USDT", "timeframe": "5m", "candles": window, **sent})
        assert r.status_code == 200 and r.json()["model"] == model, (sent, r.text[:300])
        assert r.json()["notes"] == []
    r = c.post("/predict", json={"symbol": "BTCUSDT", "timeframe": "5m", "exchange": "okx", "candles": window})
    assert r.status_code == 404 and "okx-btcusdt-5m" in r.json()["error"] and "--exchange okx" in r.json()["error"]
    # a model named for Kraken but trained on Binance's candles never answers for Kraken's market
    r = c.post("/predict", json={"symbol": "ETHUSDT", "timeframe": "5m", "exchange": "kraken", "candles": window})
    assert r.status_code == 422 and "trained on binance candles, not kraken's" in r.json()["error"], r.text[:300]
    models = {m["name"]: m for m in c.get("/models").json()}
    assert (models["kraken-btcusdt-5m"]["exchange"], models["kraken-btcusdt-5m"]["symbol"]) == ("kraken", "BTCUSDT")
    assert (models["btcusdt-5m"]["exchange"], models["btcusdt-5m"]["interval"]) == ("binance", "5m")


def test_the_default_model_answering_another_exchange_says_so(ready_client: Any, exchanges_home: Path,
                                                              candle_window: np.ndarray) -> None:
    c = ready_client(exchanges_home, env={"XYLEN_DEFAULT_MODEL": "btcusdt-5m"})
    r = c.post("/predict", json={"symbol": "BTCUSDT", "timeframe": "5m", "exchange": "okx",
                                 "candles": rows(candle_window)})
    assert r.status_code == 200 and r.json()["model"] == "btcusdt-5m"
    assert r.json()["notes"] == ["no model for okx BTCUSDT 5m: answered by the default model 'btcusdt-5m' "
                                 "(trained on BTCUSDT)"]


def test_a_request_naming_another_exchange_without_a_symbol_is_not_answered_by_binances_model(
        ready_client: Any, trained_home: Path, multi_home: Path, candle_window: np.ndarray) -> None:
    body = {"timeframe": "5m", "exchange": "kraken", "candles": rows(candle_window)}
    r = ready_client(trained_home).post("/predict", json=body)  # the only live model is Binance's btcusdt-5m
    assert r.status_code == 404 and "kraken" in r.json()["error"] and "btcusdt-5m" in r.json()["error"], r.text
    assert "--exchange kraken" in r.json()["error"]
    r = ready_client(multi_home, env={"XYLEN_DEFAULT_MODEL": "btcusdt-5m"}).post("/predict", json=body)
    assert r.status_code == 200 and r.json()["model"] == "btcusdt-5m"
    assert r.json()["notes"] == ["no model for kraken's candles: answered by the default model 'btcusdt-5m' "
                                 "(trained on binance's)"]
