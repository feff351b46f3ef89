"""Ensembles end to end: created with the CLI, promoted and rolled back, served by /predict (as a series' model and as
the default), the stream and v2; members of other backends; a member's hot swap under concurrent requests."""

from __future__ import annotations

import shutil
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.conftest import binance_rows, wait_for
from tests.ensembles import build_members
from xylen.cli import app
from xylen.core import features
from xylen.core.bundle import load_bundle
from xylen.core.registry import Registry
from xylen.core.settings import load_settings
from xylen.serve.app import create_app

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

pytestmark = pytest.mark.integration
runner = CliRunner()
ENS = "btcusdt-5m"


def xylen(home: Path, *args: str) -> Any:
    return runner.invoke(app, ["--home", str(home), *args], env={"COLUMNS": "400"})


@pytest.fixture(scope="module")
def ens_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """m-a, m-b and the ensemble btcusdt-5m = weighted(2 x m-a, 1 x m-b@v0001), live, created with the CLI."""
    home = tmp_path_factory.mktemp("ens-serve")
    build_members(Registry(home / "models"), others=False)
    r = xylen(home, "models", "ensemble", "create", ENS, "--member", "m-a", "--member", "m-b@v0001",
              "--weight", "2", "--weight", "1", "--promote")
    assert r.exit_code == 0, r.output
    assert "btcusdt-5m v0001: ensemble (weighted) of m-a, m-b@v0001 (live)" in r.output
    return home


@pytest.fixture
def home(ens_home: Path, tmp_path: Path) -> Path:
    shutil.copytree(ens_home, tmp_path / "home")
    return tmp_path / "home"


def client_of(home: Path, **kw: Any) -> Any:
    return TestClient(create_app(load_settings({"home": home}, environ={}), **kw), base_url="http://127.0.0.1")


@pytest.fixture(scope="module")
def client(ens_home: Path) -> Iterator[Any]:
    with client_of(ens_home) as c:
        wait_for(lambda: c.get("/health/ready").status_code == 200, timeout=60, what="readiness")
        yield c


def window(sample_candles: Any, end: int) -> np.ndarray:
    from tests.builders import window_matrix

    return window_matrix(sample_candles, end, 100)


def offline(reg: Registry, w: np.ndarray, versions: tuple[str, str] = ("v0001", "v0001")) -> float:
    a, b = (load_bundle(reg.path(n, v)) for n, v in zip(("m-a", "m-b"), versions))
    assert a.features is not None
    row = a.features.last_row(features.CandleArrays.from_matrix(w)).reshape(1, -1)
    return float((2 * a.predict(row)[0] + b.predict(row)[0]) / 3)


def test_the_cli_shows_refuses_and_explains(home: Path) -> None:
    r = xylen(home, "models", "ensemble", "show", ENS, "--json")
    assert r.exit_code == 0, r.output
    import orjson

    info = orjson.loads(r.output)
    assert (info["aggregation"], info["live"]) == ("weighted", True)
    assert [(m["member"], m["created_with"], m["serves"], round(m["weight"], 4)) for m in info["members"]] == [
        ("m-a", "v0001", "v0001", 0.6667), ("m-b@v0001", "v0001", "v0001", 0.3333)]
    shown = xylen(home, "models", "show", ENS)
    assert shown.exit_code == 0 and "backend ensemble" in shown.output
    assert "m-b@v0001" in shown.output and "not evaluated as a whole" in shown.output
    for args, code, said in (
        (["--member", "m-a", "--member", "m-zz"], 4, "no model named 'm-zz'"),
        (["--member", "m-a", "--member", "m-b@v0042"], 4, "no version v0042"),
        (["--member", "m-a", "--member", "m-b", "--weight", "nan", "--weight", "1"], 2, "Weight nan"),
        (["--member", "m-a", "--member", "m-b", "--aggregation", "median"], 2, "'median'"),
        (["--member", ENS, "--member", "m-a", "--promote"], 0, ""),  # an ensemble may contain one ...
    ):
        r = xylen(home, "models", "ensemble", "create", "e-x", *args)
        assert r.exit_code == code, r.output
        assert said in r.output and "Traceback" not in r.output
    r = xylen(home, "models", "ensemble", "create", ENS, "--member", "e-x", "--member", "m-a")
    assert r.exit_code == 2 and "btcusdt-5m -> e-x -> btcusdt-5m" in r.output  # ... but never itself
    assert Registry(home / "models").versions("e-x") == ["v0001"]


def test_predict_v2_and_models_answer_with_the_ensemble(client: Any, ens_home: Path, sample_candles: Any) -> None:
    reg = Registry(ens_home / "models")
    w = window(sample_candles, 2500)
    r = client.post("/predict", json={"symbol": "BTCUSDT", "timeframe": "5m", "candles": binance_rows(w)})
    assert r.status_code == 200, r.text
    got = r.json()
    assert (got["model"], got["model_version"]) == (ENS, "v0001")
    assert got["probability"] == pytest.approx(offline(reg, w), abs=1e-12)
    row = next(m for m in client.get("/models").json() if m["name"] == ENS)
    assert row["backend"] == "ensemble" and row["members"] == [{"name": "m-a", "version": "v0001"},
                                                                {"name": "m-b", "version": "v0001"}]
    spec = client.get("/openapi.json").json()["components"]["schemas"]["ModelRow"]["properties"]["members"]
    assert "version of each it answers with now" in spec["description"]
    meta = client.get(f"/v2/models/{ENS}").json()
    assert meta["platform"] == "xylen-ensemble" and meta["parameters"]["members"] == row["members"]
    X = np.array(reg.manifest(ENS, "v0001").golden.rows[:3], dtype=np.float64)
    for n in (1, 3):
        body = {"inputs": [{"name": "features", "shape": [n, X.shape[1]], "datatype": "FP64",
                            "data": X[:n].ravel().tolist()}]}
        out = client.post(f"/v2/models/{ENS}/infer", json=body).json()
        assert out["model_version"] == "v0001"
        assert out["outputs"][0]["data"] == pytest.approx(reg.manifest(ENS, "v0001").golden.outputs[:n], abs=1e-12)


def test_the_stream_answers_with_the_ensemble_as_predict_does(client: Any, sample_candles: Any) -> None:
    rows = binance_rows(window(sample_candles, 2600))
    with client.websocket_connect("ws://127.0.0.1/ws/predict") as ws:
        ws.send_json({"type": "subscribe", "id": "s", "symbol": "BTCUSDT", "timeframe": "5m", "candles": rows[:-1]})
        assert ws.receive_json()["model"] == ENS
        first = ws.receive_json()
        ws.send_json({"type": "candle", "id": "s", "candle": rows[-1]})
        second = ws.receive_json()
    for msg, ask in ((first, rows[:-1]), (second, rows[1:])):
        want = client.post("/predict", json={"symbol": "BTCUSDT", "timeframe": "5m", "candles": ask}).json()
        assert (msg["model"], msg["model_version"], msg["probability"]) == (ENS, "v0001", want["probability"])


def test_the_ensemble_alone_is_the_default_and_its_members_load_with_it(ens_home: Path, sample_candles: Any) -> None:
    with client_of(ens_home, names=[ENS]) as c:
        wait_for(lambda: c.get("/health/ready").status_code == 200, timeout=60, what="readiness")
        assert {m["name"] for m in c.get("/models").json()} == {ENS, "m-a"}  # m-b@v0001 lives inside it
        w = window(sample_candles, 2700)
        got = c.post("/predict", json={"candles": binance_rows(w)}).json()  # no symbol: the default model
        assert got["model"] == ENS
        assert got["probability"] == pytest.approx(offline(Registry(ens_home / "models"), w), abs=1e-12)


def test_promote_rollback_and_a_member_swap_under_concurrent_requests(home: Path, sample_candles: Any) -> None:
    reg = Registry(home / "models")
    assert xylen(home, "models", "ensemble", "create", "e-nest", "--member", ENS, "--member", "m-a",
                 "--promote").exit_code == 0  # follows btcusdt-5m, which follows m-a: m-a counts twice
    w = window(sample_candles, 2800)
    wants = {v: offline(reg, w, (v, "v0001")) for v in ("v0001", "v0002")}
    mb = load_bundle(reg.path("m-b", "v0001"))
    assert mb.features is not None
    row = mb.features.last_row(features.CandleArrays.from_matrix(w)).reshape(1, -1)
    pa = {v: float(load_bundle(reg.path("m-a", v)).predict(row)[0]) for v in ("v0001", "v0002")}
    nest = {v: (wants[v] + pa[v]) / 2 for v in pa}
    assert len({*wants.values(), *nest.values()}) == 4  # distinguishable answers
    infer = {"inputs": [{"name": "features", "shape": list(row.shape), "datatype": "FP64",
                         "data": row.ravel().tolist()}]}
    with client_of(home, watch_interval=0.05) as c:
        wait_for(lambda: c.get("/health/ready").status_code == 200, timeout=60, what="readiness")
        holder = c.app.state.holder
        done, bad, seen = threading.Event(), [], set()

        def ask() -> None:
            while not done.is_set():
                p = c.post("/predict", json={"symbol": "BTCUSDT", "timeframe": "5m", "candles": binance_rows(w)})
                n = c.post("/v2/models/e-nest/infer", json=infer)
                if p.status_code != 200 or n.status_code != 200:
                    bad.append((p.text, n.text))
                    continue
                pp, nn = p.json()["probability"], n.json()["outputs"][0]["data"][0]
                match = [v for v in wants if abs(pp - wants[v]) < 1e-12]
                nmatch = [v for v in nest if abs(nn - nest[v]) < 1e-12]
                if not match or not nmatch:
                    bad.append((pp, nn))
                seen.update(match)

        t = threading.Thread(target=ask)
        t.start()
        try:
            for v in ("v0002", "v0001", "v0002"):
                assert xylen(home, "models", "promote", "m-a", v).exit_code == 0
                wait_for(lambda v=v: holder.live["m-a"].version == v and holder.live[ENS].members[0].version == v
                         and holder.live["e-nest"].members[1].version == v, timeout=60, what=f"m-a {v} swapped in")
                wait_for(lambda v=v: v in seen, timeout=60, what=f"an answer over m-a {v}")
        finally:
            done.set()
            t.join(60)
        assert not bad, bad[:5]
        # a new version of the ensemble itself, then a rollback to the first: the CLI, unchanged
        r = xylen(home, "models", "ensemble", "create", ENS, "--member", "m-a", "--member", "m-b",
                  "--aggregation", "vote", "--promote")
        assert r.exit_code == 0, r.output
        wait_for(lambda: holder.live[ENS].version == "v0002", timeout=60, what="ensemble v0002")
        p = c.post("/predict", json={"symbol": "BTCUSDT", "timeframe": "5m", "candles": binance_rows(w)}).json()
        assert p["model_version"] == "v0002" and p["probability"] in (0.0, 0.5, 1.0)
        assert xylen(home, "models", "rollback", ENS).exit_code == 0
        wait_for(lambda: holder.live[ENS].version == "v0001", timeout=60, what="rolled back")
        p = c.post("/predict", json={"symbol": "BTCUSDT", "timeframe": "5m", "candles": binance_rows(w)}).json()
        assert (p["model_version"], p["probability"]) == ("v0001", pytest.approx(wants["v0002"], abs=1e-12))


def test_a_corrupt_member_version_is_refused_at_promotion(home: Path) -> None:
    assert xylen(home, "models", "ensemble", "create", "e2", "--member", "m-a", "--member", "m-b@v0001").exit_code == 0
    model = home / "models" / "m-b" / "v0001" / "model.txt"
    model.write_bytes(model.read_bytes()[:100])
    r = xylen(home, "models", "promote", "e2", "v0001")
    assert r.exit_code == 4 and "failed verification" in r.output and "m-b" in r.output


def test_members_of_other_backends(home: Path, tmp_path: Path, sample_candles: Any) -> None:
    """An ONNX export of one member beside LightGBM ones; a TorchScript model beside a LightGBM one (features sent)."""
    pytest.importorskip("onnxruntime")
    assert xylen(home, "models", "export", "m-b", "v0001", "--name", "m-b-onnx", "--promote").exit_code == 0
    r = xylen(home, "models", "ensemble", "create", "e-onnx", "--member", "m-a", "--member", "m-b-onnx",
              "--promote")
    assert r.exit_code == 0, r.output
    reg = Registry(home / "models")
    w = window(sample_candles, 2900)
    torch = pytest.importorskip("torch")
    from tests.unit.test_backends import logistic_module

    names = [f"f{i}" for i in range(5)]
    (tmp_path / "names.txt").write_text("\n".join(names))
    pt = tmp_path / "model.pt"
    torch.jit.save(torch.jit.trace(logistic_module(torch, np.array([0.5, -1.0, 2.0, 0.0, 0.7]), -0.3),
                                   torch.zeros(2, 5)), str(pt))
    import lightgbm as lgb

    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 5))
    lgb.train({"objective": "binary", "verbose": -1, "num_threads": 1}, lgb.Dataset(X, label=(X[:, 0] > 0)),
              num_boost_round=5).save_model(str(tmp_path / "model.txt"))
    for f, backend, name in ((pt, "torch", "x-torch"), (tmp_path / "model.txt", "lightgbm", "x-lgbm")):
        args = [str(f), "--backend", backend, "--features-file", str(tmp_path / "names.txt"), "--name", name]
        r = xylen(home, "models", "import", *args, *(["--output", "logit"] if backend == "torch" else []), "--promote")
        assert r.exit_code == 0, r.output
    r = xylen(home, "models", "ensemble", "create", "e-mixed", "--member", "x-torch", "--member", "x-lgbm", "--promote")
    assert r.exit_code == 0, r.output
    with client_of(home, names=["e-onnx", "e-mixed"]) as c:
        wait_for(lambda: c.get("/health/ready").status_code == 200, timeout=120, what="readiness")
        got = c.post("/predict", json={"candles": binance_rows(w)}).json()  # e-onnx: the default (first --model)
        a, b = load_bundle(reg.current_path("m-a")), load_bundle(reg.current_path("m-b-onnx"))
        assert a.features is not None
        row = a.features.last_row(features.CandleArrays.from_matrix(w)).reshape(1, -1)
        assert got["model"] == "e-onnx"
        assert got["probability"] == pytest.approx((a.predict(row)[0] + b.predict(row)[0]) / 2, abs=1e-6)
        x = [0.3, -0.2, 0.1, 1.0, 0.5]
        out = c.post("/v2/models/e-mixed/infer", json={"inputs": [{"name": "features", "shape": [1, 5],
                                                                     "datatype": "FP64", "data": x}]}).json()
        t_, l_ = load_bundle(reg.current_path("x-torch")), load_bundle(reg.current_path("x-lgbm"))
        want = (t_.predict(np.array([x]))[0] + l_.predict(np.array([x]))[0]) / 2
        assert out["outputs"][0]["data"][0] == pytest.approx(want, abs=1e-6)
