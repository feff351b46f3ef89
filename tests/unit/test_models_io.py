"""`xylen models export|import`: CLI and core, on real third-party LightGBM models and models the tests build."""

from __future__ import annotations

import pickle
import shutil
import sys
import zlib
from pathlib import Path

import numpy as np
import orjson
import pytest
from typer.testing import CliRunner

from xylen.cli import app
from xylen.core import features
from xylen.core.bundle import Golden, TrainingWindow, artifact_info, load_bundle, new_manifest, write_manifest
from xylen.core.registry import Registry

MODELS = Path(__file__).parent.parent / "data" / "models"
DEVOPS = MODELS / "Devopsshaan_crypto_trading_system__lgbm_model.txt"
TOBIAS = MODELS / "TobiasSaile_ai-trading-bot__lightgbm_model.txt"
MULTI = MODELS / "develop-17-bbp_trade__lgbm_btc_optimized.txt"
runner = CliRunner()


def cli(home: Path, *args: str):
    return runner.invoke(app, ["--home", str(home), *args])


def registry(home: Path) -> Registry:
    return Registry(home / "models")


def candles(n: int = 5000) -> tuple[features.CandleArrays, np.ndarray]:
    from xylen.core.candles import read_candles
    from xylen.train.pipeline import sample_path

    df = read_candles(sample_path()).frame.tail(n)
    cols = ("open_time", "open", "high", "low", "close", "volume")
    m = np.column_stack([df[k].to_numpy().astype(np.float64) for k in cols])
    return features.CandleArrays.from_matrix(m), m


@pytest.fixture(scope="module")
def lgb_home(tmp_path_factory) -> Path:
    """A registry holding one LightGBM bundle written the way `xylen train` writes it (golden rows + window)."""
    import lightgbm as lgb

    home = tmp_path_factory.mktemp("home")
    c, m = candles()
    X = features.frame(c)[features.LOOKBACK :]
    y = (np.roll(X[:, 0], -1) > 0).astype(int)
    booster = lgb.train(
        {"objective": "binary", "verbose": -1, "num_threads": 1, "seed": 3},
        lgb.Dataset(X, y, feature_name=list(features.NAMES)),
        120,
    )
    reg = registry(home)
    with reg.stage("btcusdt-5m") as st:
        booster.save_model(str(st / "model.txt"))
        golden = X[np.linspace(0, len(X) - 1, 8).astype(int)]
        window = m[-features.MIN_CANDLES :, :6]
        row = features.last_row(features.CandleArrays.from_matrix(window)).reshape(1, -1)
        manifest = new_manifest(
            name="btcusdt-5m",
            version="v0000",
            backend="lightgbm",
            artifact=artifact_info(st / "model.txt"),
            feature_set={"version": features.VERSION, "names": list(features.NAMES)},
            label={"horizon": 1, "threshold": 0.0},
            symbol="BTCUSDT",
            interval="5m",
            training_window=TrainingWindow(
                first_open_time=int(c.open_time[0]), last_open_time=int(c.open_time[-1]), rows=len(X)
            ),
            metrics={"auc_mean": 0.52},
            golden=Golden(
                rows=golden.tolist(),
                outputs=booster.predict(golden, num_threads=1).tolist(),
                window=window.tolist(),
                window_output=float(booster.predict(row, num_threads=1)[0]),
            ),
        )
        write_manifest(st, manifest)
        v = reg.publish("btcusdt-5m", st)
    reg.promote("btcusdt-5m", v)
    return home


@pytest.fixture
def home(lgb_home, tmp_path) -> Path:
    dst = tmp_path / "home"
    shutil.copytree(lgb_home, dst)
    return dst


# -- export ---------------------------------------------------------------------------------------------------
def test_export_writes_an_equivalent_onnx_bundle(home, tmp_path):
    pytest.importorskip("onnxruntime")
    res = cli(home, "models", "export", "btcusdt-5m", "--format", "onnx", "--out", str(tmp_path / "copy"), "--json")
    assert res.exit_code == 0, res.output
    out = orjson.loads(res.stdout)
    assert (out["name"], out["version"], out["promoted"]) == ("btcusdt-5m-onnx", "v0001", False)
    assert out["max_abs_diff"] < 1e-5
    reg = registry(home)
    assert reg.current("btcusdt-5m-onnx") is None  # not promoted unless asked
    src, onx = load_bundle(reg.path("btcusdt-5m", "v0001")), load_bundle(reg.path("btcusdt-5m-onnx", "v0001"))
    m = onx.manifest
    assert m.backend == "onnx" and m.artifact.file == "model.onnx"
    assert m.feature_set == src.manifest.feature_set and onx.computes_features
    assert (m.label, m.training_window, m.metrics) == (
        src.manifest.label,
        src.manifest.training_window,
        src.manifest.metrics,
    )
    assert m.source["version"] == "v0001" and m.conversion["input"] == "float64"
    np.testing.assert_allclose(m.golden.outputs, src.manifest.golden.outputs, rtol=0, atol=1e-5)
    c, _ = candles(3000)
    X = features.frame(c)[features.LOOKBACK :]
    assert np.max(np.abs(onx.predict(X) - src.predict(X))) < 1e-5
    assert (tmp_path / "copy" / "model.onnx").exists() and (tmp_path / "copy" / "manifest.json").exists()


def test_export_promote_and_custom_name(home):
    pytest.importorskip("onnxruntime")
    res = cli(home, "models", "export", "btcusdt-5m", "v0001", "--name", "fast", "--promote")
    assert res.exit_code == 0, res.output
    assert registry(home).current("fast").version == "v0001"


def test_export_refuses_unknown_model_and_non_lightgbm(home):
    res = cli(home, "models", "export", "nope", "--format", "onnx")
    assert res.exit_code == 4 and "'nope'" in res.output
    pytest.importorskip("onnxruntime")
    assert cli(home, "models", "export", "btcusdt-5m").exit_code == 0
    res = cli(home, "models", "export", "btcusdt-5m-onnx", "v0001")
    assert res.exit_code == 2 and "only lightgbm bundles" in res.output


# -- import ---------------------------------------------------------------------------------------------------
def test_import_real_lightgbm_models(home, tmp_path):
    names = tmp_path / "names.txt"
    import lightgbm as lgb

    names.write_text("\n".join(lgb.Booster(model_file=str(DEVOPS)).feature_name()) + "\n")
    res = cli(
        home,
        "models",
        "import",
        str(DEVOPS),
        "--backend",
        "lightgbm",
        "--features-file",
        str(names),
        "--name",
        "devops",
        "--promote",
    )
    assert res.exit_code == 0, res.output
    b = load_bundle(registry(home).current_path("devops"))
    assert b.manifest.feature_set.version == "external" and not b.computes_features
    assert len(b.manifest.golden.rows) == 8 and b.manifest.golden.window is None
    assert cli(home, "models", "import", str(TOBIAS), "--backend", "lightgbm", "--name", "tobias").exit_code == 0
    assert load_bundle(registry(home).path("tobias", "v0001")).num_feature() == 13


def test_import_refuses_multiclass_and_leaves_nothing(home):
    res = cli(home, "models", "import", str(MULTI), "--backend", "lightgbm", "--name", "multi")
    assert res.exit_code == 4 and "(8, 3)" in res.output and "binary" in res.output
    assert not (home / "models" / "multi").exists()


def test_import_wrong_feature_count_quotes_both_numbers(home):
    res = cli(home, "models", "import", str(DEVOPS), "--backend", "lightgbm", "--features", "a,b,c", "--name", "x")
    assert res.exit_code == 2 and "24 features but 3 feature names" in res.output
    assert registry(home).names() == ["btcusdt-5m"] and not (home / "models" / "x").exists()


def _onnx_logistic(path: Path, n: int, logit: bool) -> np.ndarray:
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    w = np.linspace(-1, 1, n).astype(np.float32).reshape(n, 1)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["z"])]
    nodes.append(helper.make_node("Identity" if logit else "Sigmoid", ["z"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "logistic",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
        initializer=[numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return w[:, 0].astype(np.float64)


@pytest.mark.parametrize("logit", [False, True])
def test_import_onnx_model(home, tmp_path, logit):
    w = _onnx_logistic(tmp_path / "m.onnx", 4, logit)
    args = ["--output", "logit"] if logit else []
    res = cli(
        home,
        "models",
        "import",
        str(tmp_path / "m.onnx"),
        "--backend",
        "onnx",
        "--features",
        "a,b,c,d",
        "--name",
        "ext",
        *args,
    )
    assert res.exit_code == 0, res.output
    b = load_bundle(registry(home).path("ext", "v0001"))
    X = np.array([[1.0, 2.0, 3.0, 4.0]])
    np.testing.assert_allclose(b.predict(X), 1 / (1 + np.exp(-(X @ w))), atol=1e-6)
    assert b.manifest.output == ("logit" if logit else "probability")


def test_import_onnx_logits_without_flag_is_refused(home, tmp_path):
    _onnx_logistic(tmp_path / "m.onnx", 4, logit=True)
    res = cli(
        home,
        "models",
        "import",
        str(tmp_path / "m.onnx"),
        "--backend",
        "onnx",
        "--features",
        "a,b,c,d",
        "--name",
        "ext",
    )
    assert res.exit_code == 4 and "--output logit" in res.output


def test_import_torchscript_model(home, tmp_path):
    torch = pytest.importorskip("torch")
    m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)).eval()
    torch.jit.save(torch.jit.trace(m, torch.zeros(2, 3)), str(tmp_path / "m.pt"))
    res = cli(
        home,
        "models",
        "import",
        str(tmp_path / "m.pt"),
        "--backend",
        "torch",
        "--features",
        "a,b,c",
        "--name",
        "tiny",
        "--output",
        "logit",
        "--promote",
    )
    assert res.exit_code == 0, res.output
    b = load_bundle(registry(home).current_path("tiny"))
    X = np.random.default_rng(1).standard_normal((5, 3))
    with torch.no_grad():
        want = torch.sigmoid(m(torch.tensor(X, dtype=torch.float32))).numpy()[:, 0]
    np.testing.assert_allclose(b.predict(X), want, atol=1e-6)


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("model.pkl", pickle.dumps({"a": 1})),
        ("model.bin", pickle.dumps([1, 2], protocol=4)),
        ("model.joblib.z", zlib.compress(pickle.dumps([1]))),
        ("model.txt", b"PK\x03\x04" + b"\0" * 40),
    ],
)
def test_import_refuses_pickles(home, tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    res = cli(home, "models", "import", str(path), "--backend", "lightgbm", "--features", "a", "--name", "bad")
    assert res.exit_code == 3 and "never loads pickles" in res.output
    assert registry(home).names() == ["btcusdt-5m"]


class _Marker:
    """Unpickling this creates ``path``: proof that something unpickled the file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


@pytest.mark.parametrize("backend", ["lightgbm", "onnx", "torch"])
@pytest.mark.parametrize("protocol", [0, 1, 2, 5])
def test_import_refuses_a_pickle_named_like_a_model(home, tmp_path, backend, protocol):
    """Protocol 0 and 1 pickles have no magic bytes: the file is parsed (never unpickled) to tell."""
    marker = tmp_path / "MARKER"
    path = tmp_path / {"lightgbm": "model.txt", "onnx": "model.onnx", "torch": "model.pt"}[backend]
    path.write_bytes(pickle.dumps(_Marker(marker), protocol=protocol))
    res = cli(home, "models", "import", str(path), "--backend", backend, "--features", "a", "--name", "bad")
    assert res.exit_code == 3 and "is a pickle/joblib file" in res.output and "never loads pickles" in res.output
    assert not marker.exists()
    assert registry(home).names() == ["btcusdt-5m"] and not (home / "models" / "bad").exists()


def test_export_without_the_onnx_extra_names_it(home, monkeypatch):
    """`pip install xylen` without [onnx]: a configuration problem (exit 2) naming the extra, not a crash."""
    for mod in ("onnx", "onnxmltools", "onnxruntime"):
        monkeypatch.setitem(sys.modules, mod, None)  # `import onnx` now raises ModuleNotFoundError
    res = cli(home, "models", "export", "btcusdt-5m", "--format", "onnx")
    assert res.exit_code == 2, res.output
    assert "pip install 'xylen[onnx]'" in res.output and "internal error" not in res.output
    assert registry(home).names() == ["btcusdt-5m"]


def test_import_bad_inputs(home, tmp_path):
    res = cli(
        home, "models", "import", str(tmp_path / "missing.onnx"), "--backend", "onnx", "--features", "a", "--name", "m"
    )
    assert res.exit_code == 3 and "missing.onnx" in res.output
    res = cli(home, "models", "import", str(DEVOPS), "--backend", "xgboost", "--features", "a", "--name", "m")
    assert res.exit_code == 2
    res = cli(home, "models", "import", str(DEVOPS), "--backend", "onnx", "--features", "a", "--name", "m")
    assert res.exit_code in (2, 4) and "Traceback" not in res.output
    res = cli(home, "models", "import", str(DEVOPS), "--backend", "lightgbm", "--name", "Bad Name")
    assert res.exit_code == 2 and "'Bad Name'" in res.output
    assert registry(home).names() == ["btcusdt-5m"]
    models = home / "models"
    assert sorted(p.name for p in models.iterdir() if not p.name.startswith(".")) == ["btcusdt-5m"]
    assert not (models / ".tmp").exists() or not any((models / ".tmp").iterdir())  # no staging left behind


@pytest.mark.parametrize("cmd", ["export", "import"])
def test_help_has_an_example(cmd):
    res = runner.invoke(app, ["models", cmd, "--help"])
    assert res.exit_code == 0 and "Example: xylen models " + cmd in res.output


# -- export of bundles with extra heads, and of other feature sets ---------------------------------------------
@pytest.fixture(scope="module")
def heads_base(tmp_path_factory) -> Path:
    from tests.helpers import heads_home

    home = tmp_path_factory.mktemp("heads") / "home"
    heads_home(home, new_rows=0)  # btcusdt-1h: a direction model with a move head
    return home


def test_export_of_a_bundle_with_heads_is_refused_naming_what_it_would_drop(heads_base, tmp_path):
    home = tmp_path / "home"
    shutil.copytree(heads_base, home)
    r = cli(home, "models", "export", "btcusdt-1h", "--format", "onnx", "--promote")
    assert r.exit_code == 2, r.output
    assert "btcusdt-1h v0001 has 1 extra head(s) (move_probability)" in r.output
    assert "serve the LightGBM bundle" in r.output and "--primary-only" in r.output and "Traceback" not in r.output
    assert registry(home).names() == ["btcusdt-1h"]  # nothing was written


def test_the_python_export_refuses_heads_too(heads_base, tmp_path):
    """The refusal lives in core.onnx_export, not only in the CLI: a Python caller cannot drop heads unawares."""
    from xylen.core.errors import ConfigError
    from xylen.core.onnx_export import export_onnx

    home = tmp_path / "home"
    shutil.copytree(heads_base, home)
    with pytest.raises(ConfigError, match="move_probability"):
        export_onnx(registry(home), "btcusdt-1h")
    assert registry(home).names() == ["btcusdt-1h"]


def test_export_primary_only_gives_an_onnx_bundle_of_the_primary_model(heads_base, tmp_path):
    home = tmp_path / "home"
    shutil.copytree(heads_base, home)
    r = cli(home, "models", "export", "btcusdt-1h", "--primary-only", "--json")
    assert r.exit_code == 0, r.output
    res = orjson.loads(r.stdout)
    onnx_bundle = load_bundle(res["bundle"])
    src = load_bundle(registry(home).path("btcusdt-1h", "v0001"))
    assert onnx_bundle.manifest.heads == [] and onnx_bundle.heads == []
    assert set(onnx_bundle.outputs()) == {"probability", "up_probability"}  # the direction label's own field
    X = np.asarray(src.manifest.golden.rows, dtype=np.float64)
    assert np.max(np.abs(onnx_bundle.predict(X) - src.predict(X))) < 1e-5


def test_export_of_a_context_feature_set_bundle(tmp_path):
    from tests.helpers import heads_home

    home = tmp_path / "home"
    heads_home(home, new_rows=0, heads=(), feature_set="ohlcv-ctx-v1")
    r = cli(home, "models", "export", "btcusdt-1h", "--json")
    assert r.exit_code == 0, r.output
    assert load_bundle(orjson.loads(r.stdout)["bundle"]).min_candles == 73
