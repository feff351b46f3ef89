"""The server's routes, in process (TestClient over the gate + FastAPI app), on a small real model."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from tests.conftest import binance_rows, wait_for
from xylen.core import features
from xylen.core.bundle import load_bundle
from xylen.core.registry import Registry
from xylen.core.settings import load_settings
from xylen.serve.app import create_app

with warnings.catch_warnings():  # starlette warns at import that httpx2 would be preferred
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

pytestmark = pytest.mark.unit
MODEL = "btcusdt-5m"


def open_client(home: Path, **kwargs: Any) -> Any:
    settings = load_settings({"home": home}, environ={})
    return TestClient(create_app(settings, **kwargs), base_url="http://127.0.0.1")  # a loopback Host


@pytest.fixture(scope="module")
def client(trained_home: Path) -> Iterator[Any]:
    with open_client(trained_home) as c:
        wait_for(lambda: c.get("/health/ready").status_code == 200, timeout=60, what="readiness")
        yield c


@pytest.fixture(scope="module")
def body(candle_window: np.ndarray) -> dict[str, Any]:
    return {"symbol": "BTCUSDT", "timeframe": "5m", "candles": binance_rows(candle_window), "indicators": {},
            "meta": {}}


def test_predict_matches_the_offline_bundle_prediction(client: Any, body: dict[str, Any], trained_home: Path,
                                                       candle_window: np.ndarray) -> None:
    r = client.post("/predict", json=body)
    assert r.status_code == 200, r.text
    got = r.json()
    bundle = load_bundle(Registry(trained_home / "models").current_path(MODEL))
    p = bundle.predict_candles(features.CandleArrays.from_matrix(candle_window))
    assert got["probability"] == p  # exact: same feature code, same trees
    assert got["prediction"] == (1 if p >= 0.5 else 0)
    assert got["confidence"] == (p if p >= 0.5 else 1 - p)
    assert got["model_version"] == "v0001"
    assert got["model"] == MODEL


def test_predict_on_many_real_windows_equals_offline(client: Any, trained_home: Path, sample_candles: Any) -> None:
    from tests.builders import window_matrix

    bundle = load_bundle(Registry(trained_home / "models").current_path(MODEL))
    for end in range(200, len(sample_candles), 397):
        w = window_matrix(sample_candles, end, 60)
        r = client.post("/predict", json={"symbol": "BTCUSDT", "timeframe": "5m", "candles": binance_rows(w)})
        assert r.json()["probability"] == bundle.predict_candles(features.CandleArrays.from_matrix(w))


def test_object_candles_and_numbers_give_the_same_answer(client: Any, body: dict[str, Any],
                                                         candle_window: np.ndarray) -> None:
    objs = [{"t": int(r[0]), "o": r[1], "h": r[2], "l": r[3], "c": r[4], "v": r[5]} for r in candle_window]
    longs = [{"open_time": int(r[0]), "open": str(r[1]), "high": str(r[2]), "low": str(r[3]), "close": str(r[4]),
              "volume": str(r[5])} for r in candle_window]
    numbers = [[int(r[0]), *map(float, r[1:6])] for r in candle_window]
    want = client.post("/predict", json=body).json()["probability"]
    for candles in (objs, longs, numbers):
        assert client.post("/predict", json={"candles": candles}).json()["probability"] == want


def test_features_payload_list_and_mapping(client: Any, candle_window: np.ndarray) -> None:
    row = features.last_row(features.CandleArrays.from_matrix(candle_window))
    want = client.post("/predict", json={"candles": binance_rows(candle_window)}).json()["probability"]
    assert client.post("/predict", json={"features": row.tolist()}).json()["probability"] == want
    mapping = dict(zip(features.NAMES, row.tolist()))
    assert client.post("/predict", json={"features": mapping}).json()["probability"] == want
    r = client.post("/predict", json={"features": row.tolist()[:-1]})
    assert r.status_code == 422 and str(features.N_FEATURES) in r.json()["error"]


def test_a_symbol_without_a_model_is_404_naming_the_live_ones(client: Any, body: dict[str, Any]) -> None:
    r = client.post("/predict", json=body | {"symbol": "ETHUSDT"})  # no default configured: no other model answers
    assert r.status_code == 404 and MODEL in r.json()["error"] and "xylen train --symbol ETHUSDT" in r.json()["error"]


def _bad_bodies(body: dict[str, Any]) -> list[tuple[str, bytes, str]]:
    """Bad bodies whose fault lies in the candles the model reads (the last 50 of 100: min_candles + 1)."""
    c = body["candles"]
    n = len(c)
    nan = [list(x) for x in c]
    nan[-1][4] = "NaN"
    neg = [list(x) for x in c]
    neg[-10][3] = "-1"
    dup = c[:-10] + [c[-11]] + c[-10:]
    word = [list(x) for x in c]
    word[-5][2] = "abc"
    huge = [list(x) for x in c]
    huge[-3][2] = "1e300"
    tiny = [list(x) for x in c]
    tiny[-2][3] = "1e-30"
    much = [list(x) for x in c]
    much[-4][5] = "1e30"
    return [
        ("malformed JSON", b'{"candles": [', "not valid JSON"),
        ("malformed JSON before the window", orjson.dumps(body).replace(b"],[", b"],,[", 1), "not valid JSON"),
        ("bad UTF-8 in an unused field", orjson.dumps(body | {"note": "x"}).replace(b'"x"', b'"\xff"'),
         "not valid JSON"),
        ("not an object", b"[1, 2]", "JSON object"),
        ("missing candles", orjson.dumps({"symbol": "BTCUSDT"}), "'candles' is missing"),
        ("candles not a list", orjson.dumps(body | {"candles": "all of them"}), "'candles' must be a list"),
        ("meta not an object", orjson.dumps(body | {"meta": [1]}), "'meta' must be a JSON object"),
        ("too few candles", orjson.dumps(body | {"candles": c[:20]}), f"at least {features.MIN_CANDLES}"),
        ("unsorted", orjson.dumps(body | {"candles": c[::-1]}), "sorted oldest first"),
        ("duplicate", orjson.dumps(body | {"candles": dup}), f"candles[{n - 10}].open_time repeats"),
        ("NaN price", orjson.dumps(body | {"candles": nan}), f"candles[{n - 1}].close is not finite"),
        ("negative price", orjson.dumps(body | {"candles": neg}), f"candles[{n - 10}].low is -1.0; prices must be "
                                                                  "greater than 0"),
        ("string price", orjson.dumps(body | {"candles": word}), f"candles[{n - 5}]: field 'high' value 'abc'"),
        ("absurd price", orjson.dumps(body | {"candles": huge}), f"candles[{n - 3}].high is 1e+300, outside the "
                                                                 "prices"),
        ("absurdly small price", orjson.dumps(body | {"candles": tiny}), f"candles[{n - 2}].low is 1e-30, outside"),
        ("absurd volume", orjson.dumps(body | {"candles": much}), f"candles[{n - 4}].volume is 1e+30, more than"),
        ("number as symbol", orjson.dumps(body | {"symbol": 5}), "'symbol'"),
        ("bad timeframe", orjson.dumps(body | {"timeframe": "7m"}), "'timeframe'"),
        ("short array", orjson.dumps(body | {"candles": [[1, 2, 3]] * 60}), "candles[10]: a candle array has 3 fields"),
        ("object lacks close", orjson.dumps({"candles": [{"t": 1, "o": 1, "h": 1, "l": 1, "v": 1}] * 60}),
         "candles[10]: a candle object lacks 'close'"),
        ("infinite volume", orjson.dumps({"candles": [[i, 1, 1, 1, 1, 1e309] for i in range(60)]}).replace(
            b"null", b"1e999"), "candles[10] '[10,1,1,1,1,1e999]' holds a number no 64-bit float can hold"),
    ]


def test_bad_input_is_a_4xx_json_error_naming_the_field(client: Any, body: dict[str, Any]) -> None:
    for label, raw, needle in _bad_bodies(body):
        r = client.post("/predict", content=raw, headers={"content-type": "application/json"})
        assert 400 <= r.status_code < 500, (label, r.status_code, r.text)
        assert needle in r.json()["error"], (label, r.json())


def test_wrong_content_type_and_oversized_body(client: Any, body: dict[str, Any]) -> None:
    r = client.post("/predict", content=orjson.dumps(body), headers={"content-type": "text/plain"})
    assert r.status_code == 415 and "application/json" in r.json()["error"]
    big = orjson.dumps(body | {"meta": {"pad": "x" * 1_100_000}})
    r = client.post("/predict", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "limit" in r.json()["error"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the streamed size is what counts
        for _ in range(20):
            yield b" " * 100_000

    r = client.post("/predict", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_health_shapes(client: Any) -> None:
    h = client.get("/health").json()
    assert h["status"] == "healthy" and h["model_loaded"] is True and h["model_type"] == "lightgbm"
    assert h["uptime_seconds"] >= 0 and h["memory_usage_mb"] > 0
    assert client.get("/health/live").status_code == 200
    assert client.get("/livez").status_code == 200
    assert client.get("/health/ready").json()["models"] == {MODEL: "v0001"}


def test_retrain_checks_its_options_before_it_starts_anything(client: Any) -> None:
    # the route itself: tests/unit/test_serve_retrain.py (this fixture's home is shared, so nothing is started)
    r = client.post("/retrain?wait=maybe", json={})
    assert r.status_code == 422 and "?wait" in r.json()["error"]


def test_v2_metadata_and_infer(client: Any, candle_window: np.ndarray) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").status_code == 200
    meta = client.get(f"/v2/models/{MODEL}").json()
    assert meta["inputs"][0]["shape"] == [-1, features.N_FEATURES] and meta["versions"] == ["v0001"]
    assert client.get(f"/v2/models/{MODEL}/versions/v0001").status_code == 200
    assert client.get(f"/v2/models/{MODEL}/versions/v0099").status_code == 404
    assert client.get(f"/v2/models/{MODEL}/ready").status_code == 200
    row = features.last_row(features.CandleArrays.from_matrix(candle_window))
    X = np.vstack([row, row * 0.5])
    req = {"id": "42", "inputs": [{"name": "features", "shape": [2, features.N_FEATURES], "datatype": "FP64",
                                   "data": X.ravel().tolist()}]}
    r = client.post(f"/v2/models/{MODEL}/infer", json=req)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["model_name"] == MODEL and out["id"] == "42"
    assert out["outputs"][0]["name"] == "probability" and out["outputs"][0]["shape"] == [2]
    single = client.post("/predict", json={"candles": binance_rows(candle_window)}).json()["probability"]
    assert out["outputs"][0]["data"][0] == single
    nested = req | {"inputs": [req["inputs"][0] | {"data": X.tolist(), "datatype": "FP32"}]}
    assert client.post(f"/v2/models/{MODEL}/infer", json=nested).status_code == 200


def test_v2_errors(client: Any) -> None:
    bad = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP64", "data": [0, 0, 0]}]}
    r = client.post(f"/v2/models/{MODEL}/infer", json=bad)
    assert r.status_code == 400 and f"expects {features.N_FEATURES}" in r.json()["error"]
    r = client.post("/v2/models/nope/infer", json=bad)
    assert r.status_code == 404 and "nope" in r.json()["error"]
    r = client.post(f"/v2/models/{MODEL}/infer", json={"inputs": [{"name": "x", "shape": [1, 30],
                                                                   "datatype": "BYTES", "data": ["a"]}]})
    assert r.status_code == 400


def test_metrics_count_requests_predictions_and_the_live_version(client: Any, body: dict[str, Any]) -> None:
    client.post("/predict", json=body)
    text = client.get("/metrics").text
    assert 'xylen_http_requests_total{route="/predict",status="200"}' in text
    assert 'xylen_http_request_duration_seconds_bucket{le="0.001",route="/predict",status="200"}' in text
    assert "xylen_predictions_total{model=\"btcusdt-5m\"" in text
    assert 'xylen_model_info{model="btcusdt-5m",version="v0001"} 1.0' in text
    assert 'xylen_model_swaps_total{model="btcusdt-5m",result="accepted"} 1.0' in text
    assert "xylen_model_loaded_age_seconds" in text
    client.get("/no/such/route/12345")
    assert "/no/such/route" not in client.get("/metrics").text  # labels never come from the request


def test_openapi_documents_the_bodies(client: Any) -> None:
    spec = client.get("/openapi.json").json()
    req = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "candles" in req["properties"]
    assert "PredictResponse" in spec["components"]["schemas"]
    assert "notes" in spec["components"]["schemas"]["PredictResponse"]["properties"]
    assert "symbol and timeframe" in spec["paths"]["/predict"]["post"]["responses"]["404"]["description"]
    for word in ("seconds", "microseconds", "still open", "XYLEN_CLOCK_SKEW", "consecutive", "only the last",
                 "1e-20 to 1e+20", "0 to 1e+24"):
        assert word in req["properties"]["candles"]["description"], word
    assert "409" in spec["paths"]["/models/{name}/rollback"]["post"]["responses"]  # nothing to roll back to
    assert client.get("/docs").status_code == 200


def test_models_listing(client: Any) -> None:
    rows = client.get("/models").json()
    assert rows[0]["name"] == MODEL and rows[0]["predict_path"] == "lightgbm-c-api-single-row"
    assert client.get("/v2/models").json()["models"][0]["name"] == MODEL


def test_not_ready_until_a_model_exists(tmp_path: Path, body: dict[str, Any]) -> None:
    with open_client(tmp_path) as c:
        wait_for(lambda: c.get("/health/ready").status_code == 503 and "no models" in c.get("/health/ready").text,
                 timeout=60, what="a 503 naming the cause")
        assert c.get("/health/live").status_code == 200
        r = c.post("/predict", json=body)
        assert r.status_code == 503 and "xylen train" in r.json()["error"]
        assert c.get("/health").json()["status"] == "unhealthy"
