"""Serving bundles with extra heads (up_probability, move_probability) and models on the daily-context feature set
(ohlcv-ctx-v1, 865 candles at 5m), in process, on real LightGBM boosters trained on the bundled sample's features.

Four live models: btcusdt-5m (ohlcv-ctx-v1, direction label + a move head), xrpusdt-5m (ohlcv-v2, threshold label
+ direction and move heads), ethusdt-5m (ohlcv-v2, threshold label, no head: the alpha's response exactly) and
btcusdt-1h (ohlcv-ctx-v1 on real 1h candles: 73 candles).
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from tests.builders import build_bundle, point, publish_corrupt, window_matrix
from tests.conftest import binance_rows, wait_for
from xylen.core import features, featuresets, labels, summary
from xylen.core.bundle import ModelBundle, load_bundle, read_manifest, write_manifest
from xylen.core.registry import Registry
from xylen.core.settings import load_settings
from xylen.serve import schemas
from xylen.serve.app import create_app
from xylen.serve.fastrow import LightGBMFastRow, fast_row, golden_rows

with warnings.catch_warnings():  # starlette warns at import that httpx2 would be preferred
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

pytestmark = pytest.mark.unit
CTX, TWO, ONE, HOURLY = "btcusdt-5m", "xrpusdt-5m", "ethusdt-5m", "btcusdt-1h"
SYMBOL = {CTX: "BTCUSDT", TWO: "XRPUSDT", ONE: "ETHUSDT"}
ALPHA_FIELDS = {"prediction", "confidence", "model_version", "model", "probability", "feature_set", "notes"}
THRESHOLD = labels.LabelSpec(kind="threshold")
CTX_MIN = featuresets.get(featuresets.CTX_VERSION, "5m").min_candles  # 3 days of 5m candles + 1


@pytest.fixture(scope="module")
def heads_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("heads") / "home"
    reg = Registry(home / "models")
    build_bundle(reg, CTX, rounds=30, rows=4000, feature_set=featuresets.CTX_VERSION,
                 label=labels.LabelSpec(kind="direction"), heads=("move",))
    build_bundle(reg, TWO, rounds=30, rows=3000, symbol="XRPUSDT", label=THRESHOLD, heads=("direction", "move"))
    build_bundle(reg, ONE, rounds=30, rows=3000, symbol="ETHUSDT", label=THRESHOLD)
    build_bundle(reg, HOURLY, rounds=10, candles=hourly_candles(), interval="1h", feature_set=featuresets.CTX_VERSION)
    return home


def hourly_candles() -> features.CandleArrays:
    from tests.helpers import BTC_1H
    from xylen.core.candles import read_candles
    from xylen.train.dataset import arrays_of

    return arrays_of(read_candles(BTC_1H).frame.tail(3000))


def open_client(home: Path) -> Any:
    c = TestClient(create_app(load_settings({"home": home}, environ={})), base_url="http://127.0.0.1").__enter__()
    wait_for(lambda: c.get("/health/ready").status_code == 200, timeout=60, what="readiness")
    return c


@pytest.fixture(scope="module")
def client(heads_home: Path) -> Iterator[Any]:
    c = open_client(heads_home)
    yield c
    c.__exit__(None, None, None)


@pytest.fixture(scope="module")
def bundles(heads_home: Path) -> dict[str, ModelBundle]:
    reg = Registry(heads_home / "models")
    return {name: load_bundle(reg.current_path(name)) for name in (CTX, TWO, ONE, HOURLY)}


def ask(client: Any, name: str, window: np.ndarray) -> Any:
    return client.post("/predict", json={"symbol": SYMBOL[name], "timeframe": "5m", "candles": binance_rows(window)})


def offline(bundle: ModelBundle, window: np.ndarray) -> dict[str, float]:
    """Every output the way training code would compute it: the bundle's feature set on the window's last candle,
    then each head's Booster.predict."""
    row = bundle.row_of(features.CandleArrays.from_matrix(window)).reshape(1, -1)
    out = {"probability": float(bundle.predict(row)[0])}
    for field, pred in bundle.heads:
        out[field] = float(pred.predict(row)[0])
    return out


def test_two_heads_answer_exactly_the_offline_path(client: Any, bundles: dict[str, ModelBundle],
                                                   sample_candles: Any) -> None:
    for end in range(300, len(sample_candles), 541):
        w = window_matrix(sample_candles, end, 100)
        r = ask(client, TWO, w)
        assert r.status_code == 200, r.text
        got = r.json()
        want = offline(bundles[TWO], w)
        assert set(got) == ALPHA_FIELDS | {"up_probability", "move_probability"}
        assert got["probability"] == want["probability"]  # exact: same features, same trees
        assert got["up_probability"] == want["up_probability"] and got["move_probability"] == want["move_probability"]
        assert got["up_probability"] != got["probability"]  # a head of its own, not the primary's value again
        p = want["probability"]  # prediction and confidence stay the primary head's
        assert got["prediction"] == (1 if p >= 0.5 else 0) and got["confidence"] == (p if p >= 0.5 else 1 - p)


def test_a_context_model_answers_its_window_exactly(client: Any, bundles: dict[str, ModelBundle],
                                                    sample_candles: Any) -> None:
    assert CTX_MIN == 865  # README: 865 at 5m, 73 at 1h (below), never fewer than ohlcv-v2's 49 (at 2h: 49)
    assert featuresets.get(featuresets.CTX_VERSION, "2h").min_candles == features.MIN_CANDLES
    for n in (CTX_MIN, 1000):
        w = window_matrix(sample_candles, len(sample_candles) - 1, n)
        r = ask(client, CTX, w)
        assert r.status_code == 200, r.text
        got = r.json()
        want = offline(bundles[CTX], w)
        assert got["feature_set"] == featuresets.CTX_VERSION and got["probability"] == want["probability"]
        assert got["move_probability"] == want["move_probability"]
        assert got["up_probability"] == got["probability"]  # its own label is direction: the same value
        assert set(got) == ALPHA_FIELDS | {"up_probability", "move_probability"}


def test_a_bundle_without_heads_answers_the_alphas_fields_only(client: Any, bundles: dict[str, ModelBundle],
                                                              candle_window: np.ndarray) -> None:
    r = ask(client, ONE, candle_window)
    assert r.status_code == 200 and set(r.json()) == ALPHA_FIELDS, r.text
    assert r.json()["probability"] == offline(bundles[ONE], candle_window)["probability"]
    # nothing extra is computed per request: the field list is precomputed empty
    assert client.app.state.holder.live[ONE].extra == ()


def test_the_100_candle_alpha_request_keeps_working_for_ohlcv_v2(client: Any, candle_window: np.ndarray) -> None:
    assert len(candle_window) == 100
    for name in (ONE, TWO):
        assert ask(client, name, candle_window).status_code == 200
        assert ask(client, name, candle_window[-features.MIN_CANDLES:]).status_code == 200
        r = ask(client, name, candle_window[-features.MIN_CANDLES + 1:])
        assert r.status_code == 422 and f"needs at least {features.MIN_CANDLES} candles" in r.json()["error"]


def test_a_short_window_for_a_context_model_is_422_naming_the_number(client: Any, sample_candles: Any) -> None:
    end = len(sample_candles) - 1
    for n in (100, CTX_MIN - 1):
        r = ask(client, CTX, window_matrix(sample_candles, end, n))
        assert r.status_code == 422, r.text
        err = r.json()["error"]
        assert f"model {CTX!r} (feature set ohlcv-ctx-v1) needs at least {CTX_MIN} candles" in err
        assert f"has {n} candle(s)" in err and "GET /models states" in err
    # the still-open last candle is dropped first: then the model still needs 865 closed ones
    w = window_matrix(sample_candles, end, CTX_MIN)
    c = TestClient(create_app(load_settings({"home": client.app.state.settings.home}, environ={}),
                              clock=lambda: float(w[-1, 0]) / 1000 + 60), base_url="http://127.0.0.1")
    with c:
        wait_for(lambda: c.get("/health/ready").status_code == 200, timeout=60, what="readiness")
        r = ask(c, CTX, w)
        assert r.status_code == 422 and f"{CTX_MIN - 1} closed candle(s) remain" in r.json()["error"]
        assert f"Send {CTX_MIN + 1} or more" in r.json()["error"]
        r = ask(c, CTX, window_matrix(sample_candles, end, CTX_MIN + 1))
        assert r.status_code == 200 and r.json()["notes"][0].startswith("dropped the still-open candle")
    # a gap inside the 865 candles the features read (but before the last 49) is refused too
    gap = np.delete(window_matrix(sample_candles, end, CTX_MIN + 1), 100, axis=0)
    r = ask(client, CTX, gap)
    assert r.status_code == 422 and f"reads the last {CTX_MIN} candles" in r.json()["error"]
    # a 1h context model needs three days of hourly candles plus one
    c1h = hourly_candles()
    w = window_matrix(c1h, len(c1h) - 1, 72)
    rows = [[int(r[0]), *(repr(float(x)) for x in r[1:6])] for r in w]
    r = client.post("/predict", json={"symbol": "BTCUSDT", "timeframe": "1h", "candles": rows})
    assert r.status_code == 422 and "model 'btcusdt-1h' (feature set ohlcv-ctx-v1) needs at least 73" in r.text
    w = window_matrix(c1h, len(c1h) - 1, 73)
    rows = [[int(r[0]), *(repr(float(x)) for x in r[1:6])] for r in w]
    r = client.post("/predict", json={"symbol": "BTCUSDT", "timeframe": "1h", "candles": rows})
    assert r.status_code == 200 and r.json()["model"] == HOURLY, r.text
    # a body without candles is told the same number
    r = client.post("/predict", json={"symbol": "BTCUSDT", "timeframe": "5m"})
    assert r.status_code == 422 and "'candles' is missing" in r.json()["error"] and str(CTX_MIN) in r.json()["error"]


def binance_klines(m: np.ndarray) -> list[list[Any]]:
    """What GET /api/v3/klines returns, field for field: prices and volumes as 8-decimal strings."""
    return [[int(r[0]), f"{r[1]:.8f}", f"{r[2]:.8f}", f"{r[3]:.8f}", f"{r[4]:.8f}", f"{r[5]:.8f}",
             int(r[0]) + 299_999, f"{r[5] * r[4]:.8f}", 123456, f"{r[5] / 2:.8f}", f"{r[5] * r[4] / 2:.8f}", "0"]
            for r in m]


def test_the_default_body_limit_admits_a_context_window_with_room(client: Any, sample_candles: Any) -> None:
    limit = client.app.state.settings.max_body_bytes
    assert limit == 1_000_000
    for n in (CTX_MIN + 1, 1000):  # 1000: the most one Binance klines call returns
        w = window_matrix(sample_candles, len(sample_candles) - 1, n)
        body = orjson.dumps({"symbol": "BTCUSDT", "timeframe": "5m", "candles": binance_klines(w), "indicators": {},
                             "meta": {}})
        assert len(body) < 200_000 <= limit / 5, len(body)  # README: 1,000 klines are under 200 kB
        r = client.post("/predict", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 200, r.text
    big = b'{"candles": [' + b"0," * limit + b"0]}"
    r = client.post("/predict", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "min_candles" in r.json()["error"] and "XYLEN_MAX_BODY_BYTES" in r.json()["error"]


def test_models_state_the_label_outputs_window_and_summary(client: Any, bundles: dict[str, ModelBundle]) -> None:
    rows = {r["name"]: r for r in client.get("/models").json()}
    for row in rows.values():
        schemas.ModelRow.model_validate(row)  # the documented schema is what is served
    ctx, two, one = rows[CTX], rows[TWO], rows[ONE]
    assert ctx["min_candles"] == CTX_MIN and two["min_candles"] == one["min_candles"] == features.MIN_CANDLES
    assert ctx["label"]["kind"] == "direction" and ctx["label"]["horizon"] == 6
    assert ctx["label"]["predicts"] == "P(the price is higher 6 candles from now)"
    assert ctx["label"]["description"] == "1 if log(close[t+6] / close[t]) > 0, else 0"
    assert two["label"] == THRESHOLD.to_dict()
    assert ctx["outputs"] == {"probability": ctx["label"]["predicts"], "up_probability": ctx["label"]["predicts"],
                              "move_probability": labels.LabelSpec(kind="move").predicts()}
    assert set(two["outputs"]) == {"probability", "up_probability", "move_probability"}
    assert one["outputs"] == {"probability": THRESHOLD.predicts()}
    assert rows[HOURLY]["min_candles"] == 73 == 3 * 24 + 1  # three days of 1h candles + 1
    for name, row in rows.items():
        assert row["summary"] == summary.sentence(bundles[name].manifest) and row["summary"]
        assert row["predict_path"] == "lightgbm-c-api-single-row"  # every head on the fast path


def test_v2_metadata_and_infer_carry_every_output(client: Any, bundles: dict[str, ModelBundle],
                                                  sample_candles: Any) -> None:
    for name, fields in ((CTX, ["probability", "up_probability", "move_probability"]),
                         (TWO, ["probability", "up_probability", "move_probability"]), (ONE, ["probability"])):
        b = bundles[name]
        meta = client.get(f"/v2/models/{name}").json()
        assert [o["name"] for o in meta["outputs"]] == fields
        assert all(o["datatype"] == "FP64" and o["shape"] == [-1] for o in meta["outputs"])
        assert meta["parameters"]["label_kind"] == b.manifest.label["kind"]
        assert meta["parameters"]["min_candles"] == b.min_candles
        Xs = golden_rows(b)  # no NaN: the builder's rows are complete
        req = {"inputs": [{"name": "features", "shape": list(Xs.shape), "datatype": "FP64",
                           "data": Xs.ravel().tolist()}]}
        out = {o["name"]: o for o in client.post(f"/v2/models/{name}/infer", json=req).json()["outputs"]}
        assert list(out) == fields and all(o["shape"] == [len(Xs)] for o in out.values())
        assert out["probability"]["data"] == b.predict(Xs).tolist()
        heads = dict(b.heads)
        for field in fields[1:]:  # batches: each head's Booster.predict (the primary's where it is its own field)
            want = heads[field].predict(Xs) if field in heads else b.predict(Xs)
            assert out[field]["data"] == want.tolist()
            asked = client.post(f"/v2/models/{name}/infer", json=req | {"outputs": [{"name": field}]}).json()
            assert asked["outputs"] == [out[field]]
        # one row: the fast paths, equal to /predict's answer for the same candles
        w = window_matrix(sample_candles, len(sample_candles) - 1, b.min_candles or 0)
        row = b.row_of(features.CandleArrays.from_matrix(w))
        single = {"inputs": [{"name": "features", "shape": [1, len(row)], "datatype": "FP64", "data": row.tolist()}]}
        got = {o["name"]: o["data"][0] for o in client.post(f"/v2/models/{name}/infer", json=single).json()["outputs"]}
        answer = ask(client, name, w).json()
        assert got == {f: answer[f] for f in fields}
        # the request may ask for some outputs only; an unknown one is a 400 naming the model's outputs
        only = single | {"outputs": [{"name": fields[-1]}]}
        r = client.post(f"/v2/models/{name}/infer", json=only)
        assert [o["name"] for o in r.json()["outputs"]] == [fields[-1]]
        r = client.post(f"/v2/models/{name}/infer", json=single | {"outputs": [{"name": "volatility"}]})
        assert r.status_code == 400 and "'volatility'" in r.json()["error"] and fields[-1] in r.json()["error"]


def test_openapi_documents_the_new_fields(client: Any) -> None:
    spec = client.get("/openapi.json").json()["components"]["schemas"]
    props = spec["PredictResponse"]["properties"]
    assert "move" in props["move_probability"]["description"] and "sizing" in props["move_probability"]["description"]
    assert "direction" in props["up_probability"]["description"]
    assert {"move_probability", "up_probability"}.isdisjoint(spec["PredictResponse"].get("required", []))
    assert {"label", "outputs", "min_candles", "summary"} <= set(spec["ModelRow"]["properties"])


def test_each_head_gets_the_fast_path_only_when_it_equals_its_booster(bundles: dict[str, ModelBundle]) -> None:
    b = bundles[TWO]
    rows = golden_rows(b)
    for _field, pred in b.heads:
        fn, how = fast_row(pred, b.num_feature(), rows)
        assert isinstance(fn, LightGBMFastRow) and how == "lightgbm-c-api-single-row"
        assert [fn(r) for r in rows] == pred.predict(rows).tolist()

    class Mismatched:  # a head whose booster is not the model its predict() runs: the check must notice
        backend = "lightgbm"
        num_class = 1
        booster = b.heads[0][1].booster  # type: ignore[attr-defined]

        def predict(self, X: np.ndarray) -> np.ndarray:
            return b.heads[1][1].predict(X)

    fn, how = fast_row(Mismatched(), b.num_feature(), rows)  # type: ignore[arg-type]
    assert how == "lightgbm-predict" and fn(rows[0]) == b.heads[1][1].predict(rows[:1])[0]
    fn, how = fast_row(b.heads[0][1], b.num_feature(), rows[:0])  # no rows to check against: never unchecked
    assert how == "lightgbm-predict"


# -- hot swap of bundles with heads: a damaged or hostile head is refused and the old version keeps serving ---------


@pytest.fixture(scope="module")
def swap_client(heads_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, list[str]]]:
    home = tmp_path_factory.mktemp("heads-swap") / "home"
    shutil.copytree(heads_home, home)
    c = open_client(home)
    reasons: list[str] = []
    holder = c.app.state.holder
    counted = holder.events.refused

    def refused(name: str, version: str, reason: str) -> None:
        reasons.append(reason)
        counted(name, version, reason)

    holder.events.refused = refused
    yield c, reasons
    c.__exit__(None, None, None)


def _hostile(reg: Registry, edit: str) -> str:
    """A copy of v0001 of the two-head model whose first head's file was damaged (``head_*``, tests/builders.py) or
    whose manifest's heads were edited as a buggy or hostile writer might, pointed at directly (no checks)."""
    if edit.startswith("head_"):
        return publish_corrupt(reg, TWO, edit, base="v0001")  # type: ignore[arg-type]
    src = reg.path(TWO, "v0001")
    with reg.stage(TWO) as staging:
        for f in src.iterdir():
            if f.is_file():
                shutil.copy2(f, staging / f.name)
        m = read_manifest(staging)
        direction, move = m.heads
        if edit == "unknown_kind":
            direction.label = direction.label | {"kind": "sideways"}
        elif edit == "duplicate_field":
            direction.label = move.label
        elif edit == "duplicates_the_primary":
            m.label = labels.LabelSpec(kind="direction").to_dict()  # its own field is up_probability already
        elif edit == "no_field":
            direction.label = labels.LabelSpec(kind="triple-barrier").to_dict()
        else:
            direction.artifact = m.artifact
        write_manifest(staging, m)
        version = reg.publish(TWO, staging)
    point(reg, TWO, version)
    return version


@pytest.mark.parametrize(("kind", "reason"), [
    ("head_tampered", "sha256"),
    ("head_truncated", "not a complete LightGBM text model"),
    ("head_swapped", "the up_probability head's golden predictions differ"),
    ("unknown_kind", "'sideways' is not one xylen knows"),
    ("duplicate_field", "duplicates another head"),
    ("duplicates_the_primary", "duplicates another head"),
    ("no_field", "has no /predict field"),
    ("reused_artifact", "reuses the primary artifact"),
])
def test_a_bad_head_is_refused_at_swap_and_the_old_version_keeps_serving(
        swap_client: tuple[Any, list[str]], candle_window: np.ndarray, kind: str, reason: str) -> None:
    c, reasons = swap_client
    reg = Registry(c.app.state.settings.home / "models")
    before = len(reasons)
    version = _hostile(reg, kind)
    wait_for(lambda: len(reasons) > before, timeout=60, what=f"{version} ({kind}) to be refused")
    assert reason in reasons[-1], reasons[-1]
    r = ask(c, TWO, candle_window)
    assert r.status_code == 200 and r.json()["model_version"] == "v0001", r.text
    assert "move_probability" in r.json() and "up_probability" in r.json()
    text = c.get("/metrics").text
    assert f'xylen_model_swaps_total{{model="{TWO}",result="refused"}}' in text



def test_a_head_artifact_path_that_leaves_the_bundle_is_refused(tmp_path):
    """A crafted manifest cannot make a head load a file outside its bundle folder (a planted ../model.txt)."""
    import shutil

    import orjson

    from tests.builders import build_bundle
    from xylen.core.bundle import load_bundle
    from xylen.core.errors import BundleError
    from xylen.core.registry import Registry

    reg = Registry(tmp_path / "models")
    version = build_bundle(reg, rows=1500, rounds=5, heads=("move",))
    folder = reg.path("btcusdt-5m", version)
    outside = folder.parent / "head-move.txt"
    shutil.copy(folder / "head-move.txt", outside)  # the same bytes, so only the path check can refuse it
    m = orjson.loads((folder / "manifest.json").read_bytes())
    m["heads"][0]["artifact"]["file"] = "../head-move.txt"
    (folder / "manifest.json").write_bytes(orjson.dumps(m))
    with pytest.raises(BundleError, match="leaves the bundle folder"):
        load_bundle(folder)
