"""Extreme but valid candles through the feature code: every feature of every feature set is finite for any candles
/predict accepts (prices in features.PRICE_RANGE, volumes up to features.MAX_VOLUME, in any mix within a window), and
nothing non-finite reaches a model from /predict or /v2."""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import binance_rows
from xylen.core import features, featuresets
from xylen.core.featuresets import FeatureSet
from xylen.serve import decode

pytestmark = pytest.mark.unit
LO, HI = features.PRICE_RANGE
STEP = 300_000  # 5m
T0 = 1_704_067_200_000
SETS = [featuresets.OHLCV_V2, featuresets.get(featuresets.CTX_VERSION, "2h"), featuresets.get(featuresets.CTX_VERSION,
                                                                                              "1h")]

prices = st.floats(min_value=LO, max_value=HI, allow_nan=False)
volumes = st.floats(min_value=0.0, max_value=features.MAX_VOLUME, allow_nan=False)  # subnormals included
candle = st.tuples(prices, prices, prices, prices, volumes)


def arrays(rows: list[tuple[float, float, float, float, float]]) -> features.CandleArrays:
    """Valid candles from four prices each: high the largest, low the smallest, open and close the other two."""
    m = np.empty((len(rows), 6))
    for i, (a, b, c, d, v) in enumerate(rows):
        m[i] = (T0 + i * STEP, a, max(a, b, c, d), min(a, b, c, d), b, v)
    return features.CandleArrays.from_matrix(m)


def finite_everywhere(fs: FeatureSet, c: features.CandleArrays) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an overflow or invalid operation on the way fails too, not only the result
        last = fs.last_row(c)
        whole = fs.frame(c)[fs.lookback :]
    bad = [fs.names[j] for j in np.flatnonzero(~np.isfinite(last))]
    assert not bad, (fs.version, bad, last)
    assert np.isfinite(whole).all(), fs.version


@pytest.mark.parametrize("fs", SETS, ids=lambda f: f"{f.version}-{f.min_candles}")
@given(data=st.data())
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
def test_extreme_valid_candles_give_finite_features(fs: FeatureSet, data: st.DataObject) -> None:
    n = fs.min_candles + 3
    rows = data.draw(st.lists(candle, min_size=n, max_size=n))
    finite_everywhere(fs, arrays(rows))


@pytest.mark.parametrize("fs", SETS, ids=lambda f: f"{f.version}-{f.min_candles}")
@pytest.mark.parametrize("pattern", ["alternate", "spike", "flat-low", "flat-high", "step"])
def test_the_corners_of_the_range_give_finite_features(fs: FeatureSet, pattern: str) -> None:
    """The worst cases for squares, ratios and running sums: prices jumping between the bounds every candle, one
    candle at the far bound, flat windows at each bound (zero variance), and a step; volumes at 0, the smallest
    subnormal and the maximum."""
    n = fs.min_candles + 3
    tiny = 5e-324
    if pattern == "alternate":
        rows = [(LO, HI, HI, LO, features.MAX_VOLUME if i % 2 else 0.0) for i in range(n)]
    elif pattern == "spike":
        rows = [(LO, LO, LO, LO, tiny)] * (n - 1) + [(LO, HI, HI, LO, features.MAX_VOLUME)]
    elif pattern == "flat-low":
        rows = [(LO, LO, LO, LO, tiny)] * n
    elif pattern == "flat-high":
        rows = [(HI, HI, HI, HI, features.MAX_VOLUME)] * n
    else:
        rows = [(LO, LO, LO, LO, 0.0)] * (n // 2) + [(HI, HI, HI, HI, features.MAX_VOLUME)] * (n - n // 2)
    finite_everywhere(fs, arrays(rows))


@given(st.lists(candle, min_size=features.MIN_CANDLES + 1, max_size=features.MIN_CANDLES + 1))
@settings(max_examples=40, deadline=None, derandomize=True)
def test_decode_accepts_every_value_inside_the_range(rows: list[Any]) -> None:
    c = arrays(rows)
    m = np.column_stack([c.open_time, c.open, c.high, c.low, c.close, c.volume])
    w = decode.decode_candles(binance_rows(m), features.MIN_CANDLES)
    np.testing.assert_array_equal(w.candles.close, c.close)  # repr round-trips every double


@pytest.mark.parametrize(("field", "value", "says"), [
    (2, np.nextafter(HI, np.inf), "outside the prices xylen's features can represent finitely (1e-20 to 1e+20)"),
    (3, np.nextafter(LO, 0.0), "outside the prices"),
    (5, np.nextafter(features.MAX_VOLUME, np.inf), "more than xylen's features can represent finitely (1e+24)"),
    (5, 1e308, "more than"),
])
def test_decode_refuses_values_just_outside_naming_the_candle_and_field(candle_window: np.ndarray, field: int,
                                                                        value: float, says: str) -> None:
    rows = binance_rows(candle_window)
    rows[-7][field] = repr(float(value))
    if field == 2:
        rows[-7][1] = rows[-7][4] = rows[-7][3]  # keep the candle's own shape valid: only the bound is wrong
    with pytest.raises(decode.RequestError) as info:
        decode.decode_candles(rows, features.MIN_CANDLES)
    name = ("open_time", "open", "high", "low", "close", "volume")[field]
    assert info.value.status == 422
    assert f"candles[{len(rows) - 7}].{name} is {float(value)!r}, {says}" in info.value.message


@pytest.fixture(scope="module")
def client(served_client: Any) -> Any:
    return served_client


def post(client: Any, url: str, body: Any) -> Any:
    return client.post(url, content=orjson.dumps(body) if not isinstance(body, bytes) else body,
                       headers={"content-type": "application/json"})


def test_a_feature_row_that_is_not_finite_never_reaches_the_model(client: Any, candle_window: np.ndarray,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Belt and braces for a future feature set: the row itself is checked before the model is asked."""
    asked: list[Any] = []
    holder = client.app.state.holder
    live = holder.live["btcusdt-5m"]
    spy = dataclasses.replace(live, predict_row=lambda row: asked.append(row) or live.predict_row(row))
    monkeypatch.setattr(holder, "live", {**holder.live, live.name: spy})
    ok = post(client, "/predict", {"candles": binance_rows(candle_window)})
    assert ok.status_code == 200 and len(asked) == 1
    monkeypatch.setattr(FeatureSet, "last_row", lambda self, c: np.full(self.n_features, np.inf))
    r = post(client, "/predict", {"candles": binance_rows(candle_window)})
    assert r.status_code == 422, r.text
    assert f"feature {features.NAMES[0]!r} the value inf, which is not finite" in r.json()["error"]
    assert len(asked) == 1  # the model was not asked


def test_sent_features_must_be_finite_or_null(client: Any) -> None:
    n = features.N_FEATURES
    body = b'{"features": [' + b",".join([b"1" * 400] + [b"0"] * (n - 1)) + b"]}"  # an integer beyond any double
    r = post(client, "/predict", body)
    assert r.status_code == 422 and f"feature {features.NAMES[0]!r} is '111" in r.json()["error"], r.text
    assert "beyond a 64-bit float" in r.json()["error"]
    r = post(client, "/predict", {"features": [None] + [0.0] * (n - 1)})  # null: missing, LightGBM's NaN
    assert r.status_code == 200, r.text
    r = post(client, "/predict", {"features": [1e308] + [0.0] * (n - 1)})  # finite, however large
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(("dtype", "value", "needle"), [
    ("FP32", 1e39, "is '1e+39', which is not a finite FP32 number; send finite numbers within +-3.4e38"),
    ("FP64", None, "is 'None', which is not a finite FP64 number"),
    ("FP64", "NaN", "is 'NaN', which is not a finite FP64 number"),
    ("FP64", "-inf", "is '-inf'"),
])
def test_v2_refuses_values_that_are_not_finite(client: Any, dtype: str, value: Any, needle: str) -> None:
    n = features.N_FEATURES
    data = [0.5] * (2 * n)
    data[n + 3] = value  # row 1, feature 3
    body = {"inputs": [{"name": "x", "shape": [2, n], "datatype": dtype, "data": data}]}
    r = post(client, "/v2/models/btcusdt-5m/infer", body)
    assert r.status_code == 400, r.text
    assert f"inputs[0].data[{n + 3}] (row 1, feature {features.NAMES[3]!r})" in r.json()["error"]
    assert needle in r.json()["error"]
    data[n + 3] = 3e38 if dtype == "FP32" else 1e308  # the largest values are fine
    assert post(client, "/v2/models/btcusdt-5m/infer", body).status_code == 200


@pytest.mark.parametrize(("dtype", "value", "needle"), [
    ("FP32", 1e39, "is '1e+39', which is not a finite FP32 number"),
    ("FP64", None, "is 'None', which is not a finite FP64 number"),
])
def test_v2_quotes_the_value_sent_in_nested_data_too(client: Any, dtype: str, value: Any, needle: str) -> None:
    """The protocol lets data be nested [[row], [row]]: the message quotes what was sent, not numpy's inf/nan."""
    n = features.N_FEATURES
    data = [[0.5] * n, [0.5] * n]
    data[1][3] = value
    body = {"inputs": [{"name": "x", "shape": [2, n], "datatype": dtype, "data": data}]}
    r = post(client, "/v2/models/btcusdt-5m/infer", body)
    assert r.status_code == 400, r.text
    assert f"inputs[0].data[{n + 3}] (row 1, feature {features.NAMES[3]!r}) {needle}" in r.json()["error"]
