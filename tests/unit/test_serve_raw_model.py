"""MODEL_PATH naming a bare model file (the alpha's trading_model.txt; ONNX; TorchScript) serves it, its features
taken by name from the alpha's `indicators`; MODEL_TYPE means something (for bundles too)."""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.conftest import wait_for
from xylen.cli import app as cli_app
from xylen.core.errors import BundleError, ConfigError
from xylen.core.rawmodel import detect_backend, load_raw
from xylen.core.registry import Registry
from xylen.core.settings import load_settings
from xylen.core.verify import verify_raw_in_child
from xylen.serve.app import check_models, create_app
from xylen.serve.holder import ModelHolder

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

pytestmark = pytest.mark.unit
TOBIAS = Path(__file__).parents[1] / "data" / "models" / "TobiasSaile_ai-trading-bot__lightgbm_model.txt"
NAMES = ["close", "volume", "sma_5", "sma_10", "sma_15", "return", "rsi_14", "bb_middle", "bb_upper", "bb_lower",
         "bb_width", "macd", "momentum"]
ROW = [43000.0, 512.5, 42950.0, 42900.0, 42800.0, 0.0012, 55.2, 42850.0, 43400.0, 42300.0, 0.025, 12.5, 0.8]


@pytest.fixture
def alpha_model(tmp_path: Path) -> Path:
    """The alpha's layout: /opt/trading_model/models/trading_model.txt (a real LightGBM text model)."""
    path = tmp_path / "opt" / "trading_model" / "models" / "trading_model.txt"
    path.parent.mkdir(parents=True)
    shutil.copyfile(TOBIAS, path)
    return path


@pytest.fixture
def serve_file(tmp_path: Path) -> Iterator[Any]:
    opened: list[Any] = []

    def open_(path: Path, model_type: str | None = None, ready: bool = True) -> Any:
        settings = load_settings({"home": tmp_path / "home", "model_path": path, "model_type": model_type},
                                 environ={})
        c = TestClient(create_app(settings), base_url="http://127.0.0.1").__enter__()
        opened.append(c)
        wait_for(lambda: "loading models" not in c.get("/health/ready").text, timeout=60, what="the model load")
        if ready:
            assert c.get("/health/ready").status_code == 200, c.get("/health/ready").text
        return c

    yield open_
    for c in opened:
        c.__exit__(None, None, None)


def booster_probability(path: Path, row: list[float]) -> float:
    import lightgbm as lgb

    return float(lgb.Booster(model_file=str(path)).predict(np.array([row]), num_threads=1)[0])


def test_the_alphas_model_file_serves_its_features_by_name(serve_file: Any, alpha_model: Path) -> None:
    c = serve_file(alpha_model, "lightgbm")
    want = booster_probability(alpha_model, ROW)
    indicators = dict(zip(NAMES, ROW)) | {"ema_200": 1.0, "note": "bots send more than the model reads"}
    r = c.post("/predict", json={"symbol": "BTCUSDT", "timeframe": "5m", "candles": [], "indicators": indicators,
                                 "meta": {}})
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["probability"] == want and got["model"] == "trading_model" and got["notes"] == []
    assert got["model_version"].startswith("sha256-") and got["feature_set"] == "external"
    assert c.post("/predict", json={"features": ROW}).json()["probability"] == want
    assert c.post("/predict", json={"indicators": indicators}).json()["probability"] == want
    h = c.get("/health").json()
    assert (h["status"], h["model_loaded"], h["model_type"]) == ("healthy", True, "lightgbm")
    meta = c.get("/v2/models/trading_model").json()
    assert meta["parameters"]["feature_names"] == NAMES


def test_missing_indicators_are_listed(serve_file: Any, alpha_model: Path, candle_window: np.ndarray) -> None:
    c = serve_file(alpha_model)  # MODEL_TYPE unset: read from the file
    partial = dict(zip(NAMES, ROW))
    del partial["rsi_14"], partial["macd"]
    r = c.post("/predict", json={"symbol": "BTCUSDT", "timeframe": "5m", "indicators": partial})
    assert r.status_code == 422
    assert "lacks 2 of the model's 13 features: 'rsi_14', 'macd'" in r.json()["error"]
    r = c.post("/predict", json={"indicators": dict(zip(NAMES, ROW)) | {"rsi_14": "high"}})
    assert r.status_code == 422 and "'rsi_14' is 'high'" in r.json()["error"]
    candles = [[int(x[0]), *map(float, x[1:6])] for x in candle_window]
    r = c.post("/predict", json={"symbol": "BTCUSDT", "timeframe": "5m", "candles": candles})
    assert r.status_code == 422 and "'indicators'" in r.json()["error"]


def test_onnx_and_torchscript_files_serve_with_f0_names(serve_file: Any, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    onnxmltools = pytest.importorskip("onnxmltools")
    import lightgbm as lgb
    from onnxmltools.convert.common.data_types import FloatTensorType

    rng = np.random.default_rng(0)
    X = rng.standard_normal((400, 4))
    booster = lgb.train({"objective": "binary", "verbose": -1, "num_threads": 1}, lgb.Dataset(X, X[:, 0] > 0), 20)
    onnx_path = tmp_path / "signal.onnx"  # what onnxmltools writes for a user: float32 input, (n, 2) probabilities
    model = onnxmltools.convert_lightgbm(booster, initial_types=[("input", FloatTensorType([None, 4]))], zipmap=False)
    onnx_path.write_bytes(model.SerializeToString())
    net = torch.nn.Sequential(torch.nn.Linear(4, 1), torch.nn.Sigmoid()).eval()
    ts_path = tmp_path / "net.pt"
    torch.jit.save(torch.jit.trace(net, torch.zeros(2, 4)), str(ts_path))
    row = [0.3, -1.0, 2.0, 0.5]
    with torch.no_grad():
        torch_p = float(net(torch.tensor([row], dtype=torch.float32))[0, 0])
    for path, backend, want in ((onnx_path, "onnx", float(booster.predict(np.array([row]))[0])),
                                (ts_path, "torch", torch_p)):
        assert detect_backend(path) == backend
        c = serve_file(path)
        r = c.post("/predict", json={"indicators": {"f0": 0.3, "f1": -1.0, "f2": 2.0, "f3": 0.5}})
        assert r.status_code == 200, r.text
        assert r.json()["probability"] == pytest.approx(want, abs=1e-5) and r.json()["model"] == path.stem


def test_a_file_that_is_not_a_probability_model_is_refused_and_the_server_says_why(serve_file: Any,
                                                                                     tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    logits = tmp_path / "logits.pt"
    net = torch.nn.Sequential(torch.nn.Linear(3, 1)).eval()
    with torch.no_grad():
        net[0].bias.fill_(5.0)
    torch.jit.save(torch.jit.trace(net, torch.zeros(2, 3)), str(logits))
    c = serve_file(logits, ready=False)
    r = c.get("/health/ready")
    assert r.status_code == 503 and "--output logit" in r.json()["error"]
    assert c.post("/predict", json={"features": [1, 2, 3]}).status_code == 503


@pytest.mark.parametrize(
    ("keep", "needle"),
    [
        (0.3, "not a complete LightGBM text model"),  # cut inside the trees: refused by the loader's own check
        (0.5, "killed the verifier with signal"),  # trees intact, parameters cut: LightGBM crashes the child
    ],
)
def test_a_truncated_model_file_is_refused_in_the_child_not_loaded(serve_file: Any, alpha_model: Path,
                                                                   keep: float, needle: str) -> None:
    data = alpha_model.read_bytes()
    alpha_model.write_bytes(data[: int(len(data) * keep)])
    assert needle in (verify_raw_in_child(alpha_model, "lightgbm") or "")
    c = serve_file(alpha_model, "lightgbm", ready=False)  # this process never loaded it: it is still here
    r = c.get("/health/ready")
    assert r.status_code == 503 and needle in r.json()["error"]
    assert c.get("/health/live").status_code == 200


def test_model_type_contradicting_the_file_is_a_config_error(alpha_model: Path, tmp_path: Path) -> None:
    settings = load_settings({"home": tmp_path, "model_path": alpha_model, "model_type": "onnx"}, environ={})
    with pytest.raises(ConfigError, match="MODEL_TYPE is 'onnx' but .* is a lightgbm model file") as exc:
        check_models(settings, [], alpha_model)
    assert "MODEL_TYPE=lightgbm" in (exc.value.hint or "")
    res = CliRunner().invoke(cli_app, ["--home", str(tmp_path), "serve"],
                             env={"MODEL_PATH": str(alpha_model), "MODEL_TYPE": "onnx"})
    assert res.exit_code == 2, res.output
    assert "MODEL_TYPE is 'onnx'" in res.output and "Traceback" not in res.output


def test_model_type_contradicting_a_bundle_is_a_config_error(trained_home: Path, tmp_path: Path) -> None:
    bundle = Registry(trained_home / "models").current_path("btcusdt-5m")
    for env in ({"MODEL_PATH": str(bundle), "MODEL_TYPE": "torch"}, {"XYLEN_MODEL_TYPE": "onnx"}):
        res = CliRunner().invoke(cli_app, ["--home", str(trained_home), "serve"], env=env)
        assert res.exit_code == 2, (env, res.output)
        assert "is a lightgbm model" in res.output, res.output
    # a new version of another backend than MODEL_TYPE is refused by the watcher too, with the reason
    holder = ModelHolder(Registry(trained_home / "models"), backend="onnx", verify=lambda p: None)
    holder.load_all()
    assert holder.live == {} and "MODEL_TYPE is onnx" in (holder.not_ready_reason() or "")


@pytest.mark.parametrize(
    ("content", "name", "error", "needle"),
    [
        (b"\x80\x04\x95pickle", "model.pkl", BundleError, "never loads pickles"),
        (b"\x1f\x8b\x08gzip", "model.bin", BundleError, "gzip-compressed"),
        (b"close,volume\n1,2\n", "model.csv", BundleError, "Cannot tell what kind of model"),
    ],
)
def test_files_that_are_no_model_are_refused_at_start(tmp_path: Path, content: bytes, name: str,
                                                     error: type[Exception], needle: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    settings = load_settings({"home": tmp_path, "model_path": path}, environ={})
    with pytest.raises(error, match=needle):
        check_models(settings, [], path)
    res = CliRunner().invoke(cli_app, ["--home", str(tmp_path), "serve", "--model-path", str(path)], env={})
    assert res.exit_code == 4 and needle in res.output, res.output


def test_a_missing_model_path_exits_4(tmp_path: Path) -> None:
    res = CliRunner().invoke(cli_app, ["--home", str(tmp_path), "serve"], env={"MODEL_PATH": str(tmp_path / "nope")})
    assert res.exit_code == 4 and "does not exist" in res.output, res.output


def test_load_raw_never_unpickles(tmp_path: Path) -> None:
    evil = tmp_path / "model.txt"
    evil.write_bytes(b"\x80\x04cos\nsystem\n(S'touch pwned'\ntR.")
    with pytest.raises(BundleError, match="never loads pickles"):
        load_raw(evil, "lightgbm")
    assert not (tmp_path / "pwned").exists()


def test_an_imported_model_takes_its_features_by_name_too(tmp_path: Path) -> None:
    res = CliRunner().invoke(cli_app, ["--home", str(tmp_path), "models", "import", str(TOBIAS), "--backend",
                                       "lightgbm", "--name", "tobias-signal", "--promote"], env={})
    assert res.exit_code == 0, res.output
    settings = load_settings({"home": tmp_path}, environ={})
    with TestClient(create_app(settings), base_url="http://127.0.0.1") as c:
        wait_for(lambda: c.get("/health/ready").status_code == 200, timeout=60, what="readiness")
        r = c.post("/predict", json={"indicators": dict(zip(NAMES, ROW)) | {"extra": 1}})
        assert r.status_code == 200, r.text
        assert (r.json()["model"], r.json()["probability"]) == ("tobias-signal", booster_probability(TOBIAS, ROW))



def test_a_model_file_naming_a_feature_twice_is_refused_as_import_refuses_it(tmp_path: Path) -> None:
    """Features are sent by name: two columns of one name could not be told apart (renaming them all to f0..fN
    would silently break the alpha's `indicators`)."""
    import lightgbm as lgb

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(300, 3)), (rng.random(300) > 0.5).astype(float)
    booster = lgb.train({"objective": "binary", "verbose": -1, "num_threads": 1},
                        lgb.Dataset(X, label=y, feature_name=["a", "b", "c"]), num_boost_round=3)
    path = tmp_path / "model.txt"
    path.write_text(booster.model_to_string().replace("feature_names=a b c", "feature_names=a b a"))
    with pytest.raises(BundleError, match="names a feature more than once \\(a\\)"):
        load_raw(path, "lightgbm")
