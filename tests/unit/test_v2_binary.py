"""The binary tensor data extension of /v2 infer, in process: raw little-endian inputs after a JSON header answer
exactly as the JSON path does, outputs come back as raw bytes when asked, and every malformed binary body is a 4xx
that says what is wrong, never a 500 and never a change to the live model."""

from __future__ import annotations

import random
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from tests.builders import build_bundle
from tests.conftest import wait_for
from xylen.core import labels
from xylen.core.bundle import ModelBundle, load_bundle
from xylen.core.registry import Registry
from xylen.core.settings import load_settings
from xylen.serve.app import create_app

with warnings.catch_warnings():  # starlette warns at import that httpx2 would be preferred
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

pytestmark = pytest.mark.unit
ONE, THREE = "btcusdt-5m", "xrpusdt-5m"  # one output (probability); three (probability, up_, move_probability)
OCTETS = {"Content-Type": "application/octet-stream"}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("v2bin") / "home"
    reg = Registry(home / "models")
    build_bundle(reg, ONE, rounds=20, rows=2500)
    build_bundle(reg, THREE, rounds=20, rows=2500, symbol="XRPUSDT", label=labels.LabelSpec(kind="threshold"),
                 heads=("direction", "move"))
    return home


@pytest.fixture(scope="module")
def client(home: Path) -> Iterator[Any]:
    with TestClient(create_app(load_settings({"home": home}, environ={})), base_url="http://127.0.0.1") as c:
        wait_for(lambda: c.get("/health/ready").status_code == 200, timeout=60, what="readiness")
        yield c


@pytest.fixture(scope="module")
def bundles(home: Path) -> dict[str, ModelBundle]:
    reg = Registry(home / "models")
    return {name: load_bundle(reg.current_path(name)) for name in (ONE, THREE)}


def rows(b: ModelBundle, n: int = 8) -> np.ndarray:
    """``n`` real feature rows (the golden rows, repeated and scaled so they differ)."""
    g = np.array(b.manifest.golden.rows, dtype=np.float64)
    return np.vstack([g * (1 + 0.01 * i) for i in range(-(-n // len(g)))])[:n]


def binary_body(X: np.ndarray, dtype: str = "FP64", **request: Any) -> tuple[bytes, dict[str, str]]:
    """A binary request as tritonclient builds it: the JSON header, then the input's raw little-endian bytes."""
    raw = np.ascontiguousarray(X, dtype="<f4" if dtype == "FP32" else "<f8").tobytes()
    head = orjson.dumps({"inputs": [{"name": "features", "shape": list(X.shape), "datatype": dtype,
                                     "parameters": {"binary_data_size": len(raw)}}], **request})
    return head + raw, {**OCTETS, "Inference-Header-Content-Length": str(len(head))}


def json_answer(client: Any, name: str, X: np.ndarray, dtype: str = "FP64") -> dict[str, Any]:
    data = X.astype(np.float32).ravel().tolist() if dtype == "FP32" else X.ravel().tolist()
    r = client.post(f"/v2/models/{name}/infer",
                    json={"inputs": [{"name": "features", "shape": list(X.shape), "datatype": dtype, "data": data}]})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def read_binary(r: Any) -> dict[str, np.ndarray]:
    """Every output of a binary answer, as tritonclient reads it: JSON header, then each output's bytes in order."""
    assert r.headers["content-type"] == "application/octet-stream"
    n = int(r.headers["inference-header-content-length"])
    head = orjson.loads(r.content[:n])
    out, at = {}, n
    for o in head["outputs"]:
        if "parameters" in o:
            size = o["parameters"]["binary_data_size"]
            assert "data" not in o and size == 8 * o["shape"][0]
            out[o["name"]] = np.frombuffer(r.content[at:at + size], dtype="<f8")
            at += size
        else:
            out[o["name"]] = np.array(o["data"], dtype=np.float64)
    assert at == len(r.content)
    return out


@pytest.mark.parametrize("dtype", ["FP64", "FP32"])
@pytest.mark.parametrize("n", [1, 8, 256])
def test_binary_inputs_answer_as_the_json_path_bit_for_bit(client: Any, bundles: dict[str, ModelBundle], dtype: str,
                                                           n: int) -> None:
    for name, b in bundles.items():
        X = rows(b, n)
        want = json_answer(client, name, X, dtype)
        body, headers = binary_body(X, dtype, id="7")
        r = client.post(f"/v2/models/{name}/infer", content=body, headers=headers)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/json"  # no output asked for bytes: JSON as before
        assert r.json() == want | {"id": "7"}
        # outputs as bytes, each asked by name: the same float64 values, bit for bit
        asked = [{"name": o["name"], "parameters": {"binary_data": True}} for o in want["outputs"]]
        body, headers = binary_body(X, dtype, outputs=asked)
        got = read_binary(client.post(f"/v2/models/{name}/infer", content=body, headers=headers))
        assert list(got) == [o["name"] for o in want["outputs"]]
        for o in want["outputs"]:
            assert got[o["name"]].tobytes() == np.array(o["data"], dtype="<f8").tobytes(), o["name"]


def test_binary_outputs_by_request_parameter_and_per_output_override(client: Any,
                                                                     bundles: dict[str, ModelBundle]) -> None:
    X = rows(bundles[THREE], 5)
    want = {o["name"]: o["data"] for o in json_answer(client, THREE, X)["outputs"]}
    assert list(want) == ["probability", "up_probability", "move_probability"]
    # no outputs named + binary_data_output (tritonclient's default without outputs): all as bytes
    body, headers = binary_body(X, parameters={"binary_data_output": True})
    got = read_binary(client.post(f"/v2/models/{THREE}/infer", content=body, headers=headers))
    assert {k: v.tolist() for k, v in got.items()} == want
    # an output's own binary_data: false wins over the request's default
    outputs = [{"name": "move_probability", "parameters": {"binary_data": False}}, {"name": "probability"}]
    body, headers = binary_body(X, parameters={"binary_data_output": True}, outputs=outputs)
    r = client.post(f"/v2/models/{THREE}/infer", content=body, headers=headers)
    head = orjson.loads(r.content[:int(r.headers["inference-header-content-length"])])
    assert [o["name"] for o in head["outputs"]] == ["probability", "move_probability"]  # the model's order
    assert head["outputs"][1]["data"] == want["move_probability"]
    assert read_binary(r)["probability"].tolist() == want["probability"]
    # a JSON request may ask for binary outputs too
    row = rows(bundles[ONE], 1)
    r = client.post(f"/v2/models/{ONE}/infer", json={
        "inputs": [{"name": "f", "shape": [1, row.shape[1]], "datatype": "FP64", "data": row.ravel().tolist()}],
        "outputs": [{"name": "probability", "parameters": {"binary_data": True}}]})
    assert read_binary(r)["probability"].tolist() == json_answer(client, ONE, row)["outputs"][0]["data"]


def test_metadata_and_openapi_say_binary(client: Any) -> None:
    assert "binary_tensor_data" in client.get("/v2").json()["extensions"]
    op = client.get("/openapi.json").json()["paths"]["/v2/models/{name}/infer"]["post"]
    assert "Inference-Header-Content-Length" in op["requestBody"]["content"]["application/octet-stream"]["schema"][
        "description"]
    assert "application/octet-stream" in op["responses"]["200"]["content"]
    assert "tritonclient" in op["description"]


def _header(body: bytes, head: bytes, **extra: str) -> dict[str, str]:
    return {**OCTETS, "Inference-Header-Content-Length": str(len(head)), **extra}


def hostile_cases(X: np.ndarray) -> list[tuple[str, bytes, dict[str, str], str]]:
    """(what, body, headers, a phrase the 4xx message must contain)."""
    raw = X.astype("<f8").tobytes()
    good, headers = binary_body(X)
    head = good[: int(headers["Inference-Header-Content-Length"])]

    def req(size: Any = len(raw), dtype: str = "FP64", shape: Any = None, **tensor: Any) -> bytes:
        params = {} if size is None else {"parameters": {"binary_data_size": size}}
        return orjson.dumps({"inputs": [{"name": "f", "shape": shape or list(X.shape), "datatype": dtype,
                                         **params, **tensor}]})

    cases = [
        ("header length beyond the body", good, {**headers, "Inference-Header-Content-Length": str(len(good) + 1)},
         "cannot be longer than the body"),
        ("header length not a number", good, {**headers, "Inference-Header-Content-Length": "12abc"},
         "'12abc' is not a number"),
        ("negative header length", good, {**headers, "Inference-Header-Content-Length": "-5"}, "'-5' is not a number"),
        ("header not JSON", b"\x00\x01binary" + raw, _header(b"", b"\x00\x01binary"), "are not JSON"),
        ("header cut short", good, {**headers, "Inference-Header-Content-Length": str(len(head) - 3)}, "are not JSON"),
        ("header a JSON list", b"[1,2]" + raw, _header(b"", b"[1,2]"), "JSON list"),
        ("fewer bytes than binary_data_size", head + raw[:-8], headers, "must add up"),
        ("more bytes than binary_data_size", head + raw + b"\0" * 8, headers, "must add up"),
        ("size not shape x FP64", req(len(raw) - 8) + raw[:-8],
         _header(b"", req(len(raw) - 8)), f"needs {X.shape[0]} x {X.shape[1]} x 8 = {len(raw)}"),
        ("FP32 shape with FP64 bytes", req(dtype="FP32") + raw, _header(b"", req(dtype="FP32")),
         f"= {len(raw) // 2} bytes"),
        ("size a string", req("64") + raw, _header(b"", req("64")), "'64' is not a number of bytes"),
        ("negative size", req(-8) + raw, _header(b"", req(-8)), "'-8' is not a number of bytes"),
        ("binary_data_size without the header", req() + raw, OCTETS, "the header Inference-Header-Content-Length"),
        ("binary_data_size in a JSON body", req(), OCTETS, "has no Inference-Header-Content-Length header"),
        ("data and binary_data_size", req(data=[0.0] * X.size) + raw, _header(b"", req(data=[0.0] * X.size)),
         "both 'data' and parameters.binary_data_size"),
        ("bytes no input names", req(None, data=X.ravel().tolist()) + raw,
         _header(b"", req(None, data=X.ravel().tolist())), "no input names them"),
        ("parameters not an object", orjson.dumps({"inputs": [{"name": "f", "shape": list(X.shape),
                                                                "datatype": "FP64", "parameters": [1]}]}) + raw,
         _header(b"", orjson.dumps({"inputs": [{"name": "f", "shape": list(X.shape), "datatype": "FP64",
                                                "parameters": [1]}]})), "parameters must be an object"),
        ("INT64 datatype", req(dtype="INT64") + raw, _header(b"", req(dtype="INT64")), "'INT64' is not supported"),
        ("binary_data_output not a bool", head[:-1] + b',"parameters":{"binary_data_output":"yes"}}' + raw,
         _header(b"", head[:-1] + b',"parameters":{"binary_data_output":"yes"}}'), "must be true or false"),
        ("binary_data not a bool", head[:-1] + b',"outputs":[{"name":"probability","parameters":{"binary_data":1}}]}'
         + raw, _header(b"", head[:-1] + b',"outputs":[{"name":"probability","parameters":{"binary_data":1}}]}'),
         "must be true or false"),
        ("text/plain", good, {**headers, "Content-Type": "text/plain"}, "neither JSON nor binary"),
    ]
    return cases


def test_hostile_binary_bodies_get_a_sentence_never_a_500(client: Any, bundles: dict[str, ModelBundle]) -> None:
    X = rows(bundles[ONE], 4)
    before = json_answer(client, ONE, X)
    for what, body, headers, phrase in hostile_cases(X):
        r = client.post(f"/v2/models/{ONE}/infer", content=body, headers=headers)
        assert r.status_code in (400, 415, 422), (what, r.status_code, r.text)
        assert phrase in r.json()["error"], (what, r.json()["error"])
    assert json_answer(client, ONE, X) == before  # the live model is untouched


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", ["FP64", "FP32"])
def test_non_finite_binary_values_are_refused_naming_row_and_feature(client: Any, bundles: dict[str, ModelBundle],
                                                                     bad: float, dtype: str) -> None:
    b = bundles[ONE]
    X = rows(b, 3)
    X[2, 5] = bad
    body, headers = binary_body(X, dtype)
    r = client.post(f"/v2/models/{ONE}/infer", content=body, headers=headers)
    assert r.status_code == 400, r.text
    msg = r.json()["error"]
    assert f"row 2, feature {b.feature_names[5]!r}" in msg and str(bad) in msg and "finite" in msg, msg
    # the JSON path refuses the same row the same way
    assert json_answer(client, ONE, rows(b, 3))["outputs"]


def test_predict_still_takes_only_json(client: Any, bundles: dict[str, ModelBundle]) -> None:
    body, headers = binary_body(rows(bundles[ONE], 1))
    r = client.post("/predict", content=body, headers=headers)
    assert r.status_code == 415 and "is not JSON" in r.json()["error"]


def test_random_cuts_and_lengths_of_a_binary_body_never_500(client: Any, bundles: dict[str, ModelBundle]) -> None:
    """Every prefix length, declared header length and flipped byte of a real binary body: a 200 or a 4xx."""
    rng = random.Random(11)
    good, headers = binary_body(rows(bundles[THREE], 3), parameters={"binary_data_output": True})
    n = int(headers["Inference-Header-Content-Length"])
    for _ in range(300):
        body = bytearray(good[: rng.randint(0, len(good))])
        if body and rng.random() < 0.5:
            body[rng.randrange(len(body))] = rng.randrange(256)
        declared = str(rng.choice([n, rng.randint(0, len(good) + 5)]))
        r = client.post(f"/v2/models/{THREE}/infer", content=bytes(body),
                        headers={**OCTETS, "Inference-Header-Content-Length": declared})
        assert r.status_code == 200 or 400 <= r.status_code < 500, (declared, bytes(body)[:80], r.text)
        if r.status_code != 200:
            assert r.json()["error"]
