"""tritonclient with its defaults (binary inputs, binary outputs, or no outputs named) against a real uvicorn server
on a loopback port: the answers equal the JSON path's bit for bit, for FP32 and FP64 and every output of a model."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn

from tests.builders import build_bundle
from tests.conftest import free_port, wait_for
from xylen.core import labels
from xylen.core.bundle import load_bundle
from xylen.core.registry import Registry
from xylen.core.settings import load_settings
from xylen.serve.app import create_app

pytestmark = pytest.mark.integration
httpclient = pytest.importorskip("tritonclient.http")
ONE, THREE = "btcusdt-5m", "xrpusdt-5m"
KEY = "v2-binary-key-not-secret"


def auth() -> dict[str, str]:
    """A new headers dict per call: tritonclient writes Inference-Header-Content-Length into the one it is given."""
    return {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("v2client") / "home"
    reg = Registry(home / "models")
    build_bundle(reg, ONE, rounds=20, rows=2500)
    build_bundle(reg, THREE, rounds=20, rows=2500, symbol="XRPUSDT", label=labels.LabelSpec(kind="threshold"),
                 heads=("direction", "move"))
    return home


@pytest.fixture(scope="module")
def url(home: Path) -> Iterator[str]:
    app = create_app(load_settings({"home": home, "api_keys": KEY}, environ={}))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(f"{base}/health/ready").status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(ready, timeout=60, what="the server to be ready")
        yield base
    finally:
        server.should_exit = True
        thread.join(60)


def json_outputs(url: str, name: str, X: np.ndarray, dtype: str) -> dict[str, bytes]:
    """Each output of the plain JSON path for ``X``, as float64 bytes."""
    data = X.astype(np.float32 if dtype == "FP32" else np.float64).ravel().tolist()
    r = httpx.post(f"{url}/v2/models/{name}/infer", headers=auth(),
                   json={"inputs": [{"name": "features", "shape": list(X.shape), "datatype": dtype, "data": data}]})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json", r.text
    return {o["name"]: np.array(o["data"], dtype="<f8").tobytes() for o in r.json()["outputs"]}


@pytest.mark.parametrize("dtype", ["FP64", "FP32"])
def test_tritonclient_defaults_equal_the_json_path_bit_for_bit(url: str, dtype: str) -> None:
    client = httpclient.InferenceServerClient(url.removeprefix("http://"))
    try:
        assert client.is_server_ready(headers=auth())
        assert "binary_tensor_data" in client.get_server_metadata(headers=auth())["extensions"]
        for name in (ONE, THREE):
            meta = client.get_model_metadata(name, headers=auth())
            n = meta["inputs"][0]["shape"][1]
            rng = np.random.default_rng(3)
            X = rng.normal(size=(256, n)) * 10.0 ** rng.integers(-6, 6, size=n)  # every magnitude the features use
            want = json_outputs(url, name, X, dtype)
            inp = httpclient.InferInput("features", list(X.shape), dtype)
            inp.set_data_from_numpy(X.astype(np.float32 if dtype == "FP32" else np.float64))  # binary_data=True
            # outputs named with their defaults (binary), then none named (binary_data_output), then one of them
            named = client.infer(name, [inp], outputs=[httpclient.InferRequestedOutput(o) for o in want],
                                 headers=auth())
            unnamed = client.infer(name, [inp], headers=auth())
            for result in (named, unnamed):
                assert [o["name"] for o in result.get_response()["outputs"]] == list(want)
                for o in result.get_response()["outputs"]:
                    assert o["parameters"]["binary_data_size"] == 256 * 8 and "data" not in o  # bytes on the wire
                    assert result.as_numpy(o["name"]).tobytes() == want[o["name"]], (name, o["name"])
            last = list(want)[-1]
            one = client.infer(name, [inp], outputs=[httpclient.InferRequestedOutput(last)], headers=auth())
            assert [o["name"] for o in one.get_response()["outputs"]] == [last]
            assert one.as_numpy(last).tobytes() == want[last]
            # one row: the single-row fast path, still equal to the JSON path's answer for that row
            single = httpclient.InferInput("features", [1, n], dtype)
            single.set_data_from_numpy(X[:1].astype(np.float32 if dtype == "FP32" else np.float64))
            got = client.infer(name, [single], headers=auth())
            for field, raw in json_outputs(url, name, X[:1], dtype).items():
                assert got.as_numpy(field).tobytes() == raw
    finally:
        client.close()


def test_tritonclient_binary_errors_are_sentences(url: str) -> None:
    client = httpclient.InferenceServerClient(url.removeprefix("http://"))
    try:
        n = client.get_model_metadata(ONE, headers=auth())["inputs"][0]["shape"][1]
        X = np.ones((2, n))
        X[1, 3] = np.nan
        inp = httpclient.InferInput("features", [2, n], "FP64")
        inp.set_data_from_numpy(X)
        with pytest.raises(Exception, match=r"row 1, feature .* is 'nan', which is not a finite FP64 number"):
            client.infer(ONE, [inp], headers=auth())
        short = httpclient.InferInput("features", [2, n], "FP64")
        short.set_data_from_numpy(np.ones((2, n)))
        short.set_shape([3, n])  # the shape says 3 rows, the bytes hold 2
        with pytest.raises(Exception, match=rf"shape \[3, {n}\] of FP64 needs 3 x {n} x 8"):
            client.infer(ONE, [short], headers=auth())
        assert client.is_server_ready(headers=auth())
    finally:
        client.close()


def test_golden_rows_through_tritonclient(url: str, home: Path) -> None:
    """Each model's own golden rows, sent and answered as tritonclient does by default, give its recorded outputs."""
    client = httpclient.InferenceServerClient(url.removeprefix("http://"))
    try:
        for name in (ONE, THREE):
            b = load_bundle(Registry(home / "models").current_path(name))
            X = np.array(b.manifest.golden.rows, dtype=np.float64)
            inp = httpclient.InferInput("features", list(X.shape), "FP64")
            inp.set_data_from_numpy(X)
            got = client.infer(name, [inp], outputs=[httpclient.InferRequestedOutput("probability")], headers=auth())
            np.testing.assert_allclose(got.as_numpy("probability"), b.manifest.golden.outputs, rtol=0, atol=1e-12)
    finally:
        client.close()
