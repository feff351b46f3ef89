"""ONNX and torch backends against their oracles: lightgbm.Booster.predict and numpy (lleaves-style)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from xylen.core import features
from xylen.core.backends import load_predictor
from xylen.core.backends.onnx import to_probability
from xylen.core.errors import BundleError

MODELS = Path(__file__).parent.parent / "data" / "models"
DEVOPS = MODELS / "Devopsshaan_crypto_trading_system__lgbm_model.txt"
HYP = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def sample_features(n: int = 6000) -> np.ndarray:
    from xylen.core.candles import read_candles
    from xylen.train.pipeline import sample_path

    df = read_candles(sample_path()).frame.tail(n)
    c = features.CandleArrays(
        df["open_time"].to_numpy(), *(df[k].to_numpy() for k in ("open", "high", "low", "close", "volume"))
    )
    return features.frame(c)[features.LOOKBACK :]


@pytest.fixture(scope="module")
def booster():
    """200 trees on xylen's real features; a few NaNs in training so some splits track missing values."""
    import lightgbm as lgb

    X = sample_features()
    y = (np.roll(X[:, 0], -1) > 0).astype(int)
    X = X.copy()
    X[::13, 4] = np.nan
    params = {"objective": "binary", "num_leaves": 31, "verbose": -1, "num_threads": 1, "seed": 1}
    return lgb.train(params, lgb.Dataset(X, y, feature_name=list(features.NAMES)), 200)


def _thresholds(b) -> list[float]:
    out: list[float] = []

    def walk(n):
        if "threshold" in n:
            out.append(float(n["threshold"]))
            walk(n["left_child"])
            walk(n["right_child"])

    for t in b.dump_model()["tree_info"][:20]:
        walk(t["tree_structure"])
    return out


def onnx_predictor(booster, tmp_path: Path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxmltools")
    from xylen.core.onnx_export import booster_to_onnx

    path = tmp_path / "model.onnx"
    path.write_bytes(booster_to_onnx(booster).SerializeToString())
    return load_predictor("onnx", path, output="probability")


def rows_strategy(n_features: int, specials: list[float]):
    value = st.one_of(
        st.floats(allow_nan=True, allow_infinity=True, width=64),
        st.floats(-3, 3),
        st.sampled_from([0.0, -0.0, np.nan, np.inf, -np.inf, *specials]),
    )
    return hnp.arrays(np.float64, st.tuples(st.integers(1, 16), st.just(n_features)), elements=value)


def test_onnx_equals_booster_on_real_rows(booster, tmp_path):
    pred = onnx_predictor(booster, tmp_path)
    X = sample_features(3000)
    assert np.max(np.abs(pred.predict(X) - booster.predict(X, num_threads=1))) < 1e-6


def test_onnx_keeps_lightgbm_rules_for_nan_and_near_zero(booster, tmp_path):
    """Regressions Hypothesis found: an all-NaN row (NaN must stay NaN where a split tracks missing values) and
    values within LightGBM's zero threshold (|x| <= 1e-35f reads as 0.0), on ours and a third-party model."""
    import lightgbm as lgb

    tiny = float(np.float32(1e-35))
    for b in (booster, lgb.Booster(model_file=str(DEVOPS))):
        pred = onnx_predictor(b, tmp_path)
        n = b.num_feature()
        X = np.array(
            [
                np.full(n, np.nan),
                np.full(n, -tiny),
                np.full(n, tiny),
                np.full(n, np.nextafter(tiny, 1.0)),
                np.zeros(n),
                np.full(n, -0.0),
            ]
        )
        np.testing.assert_allclose(pred.predict(X), b.predict(X, num_threads=1), rtol=0, atol=1e-6)


def test_onnx_equals_booster_on_hypothesis_rows(booster, tmp_path):
    pred = onnx_predictor(booster, tmp_path)
    specials = _thresholds(booster)

    @HYP
    @given(rows_strategy(features.N_FEATURES, specials))
    def check(X):
        np.testing.assert_allclose(pred.predict(X), booster.predict(X, num_threads=1), rtol=0, atol=1e-6)

    check()


def test_onnx_equals_third_party_booster(tmp_path):
    import lightgbm as lgb

    b = lgb.Booster(model_file=str(DEVOPS))
    pred = onnx_predictor(b, tmp_path)
    assert pred.num_feature() == 24

    @HYP
    @given(rows_strategy(24, _thresholds(b)))
    def check(X):
        np.testing.assert_allclose(pred.predict(X), b.predict(X, num_threads=1), rtol=0, atol=1e-6)

    check()


def test_onnx_session_uses_one_thread(booster, tmp_path):
    opts = onnx_predictor(booster, tmp_path).session.get_session_options()
    assert (opts.intra_op_num_threads, opts.inter_op_num_threads) == (1, 1)


def test_onnx_zipmap_output_is_refused(booster, tmp_path):
    pytest.importorskip("onnxruntime")
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    m = convert_lightgbm(booster, initial_types=[("input", FloatTensorType([None, 30]))], zipmap=True)
    path = tmp_path / "zip.onnx"
    path.write_bytes(m.SerializeToString())
    with pytest.raises(BundleError, match="zipmap=False"):
        load_predictor("onnx", path)


# -- torch -----------------------------------------------------------------------------------------------------
def logistic_module(torch, w: np.ndarray, b: float, two_columns: bool = False):
    class Logistic(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(len(w), 1)
            self.two_columns = two_columns  # an attribute, not a closure: torch.jit.script reads it
            with torch.no_grad():
                self.linear.weight.copy_(torch.tensor(w, dtype=torch.float32).reshape(1, -1))
                self.linear.bias.fill_(b)

        def forward(self, x):
            z = self.linear(x)
            return torch.cat([torch.zeros_like(z), z], dim=1) if self.two_columns else z

    return Logistic().eval()


W = np.array([0.5, -1.25, 2.0, 0.0, 0.75])
BIAS = -0.3


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


@pytest.mark.parametrize(("fmt", "two_columns"), [("trace", False), ("trace", True), ("script", False)])
def test_torch_logistic_equals_numpy(tmp_path, fmt, two_columns):
    torch = pytest.importorskip("torch")
    m = logistic_module(torch, W, BIAS, two_columns)
    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.trace(m, torch.zeros(2, 5)) if fmt == "trace" else torch.jit.script(m), str(path))
    pred = load_predictor("torch", path, output="logit")
    assert pred.num_feature() == 5
    assert pred.kind == "torchscript"

    @HYP
    @given(hnp.arrays(np.float64, st.tuples(st.integers(1, 8), st.just(5)), elements=st.floats(-50, 50)))
    def check(X):
        want = _sigmoid(X.astype(np.float32).astype(np.float64) @ W + BIAS)
        np.testing.assert_allclose(pred.predict(X), want, rtol=0, atol=1e-5)

    check()


def test_torch_save_checkpoint_is_refused(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "state.pt"
    torch.save(logistic_module(torch, W, BIAS).state_dict(), str(path))
    with pytest.raises(BundleError, match="pickle"):
        load_predictor("torch", path)


def test_output_conventions():
    z = np.array([-2.0, 0.0, 3.0])
    np.testing.assert_allclose(to_probability(z, "logit", "m"), _sigmoid(z))
    np.testing.assert_allclose(to_probability(z[:, None], "logit", "m"), _sigmoid(z))
    two = np.column_stack([np.zeros(3), z])
    np.testing.assert_allclose(to_probability(two, "logit", "m"), _sigmoid(z))  # softmax column 1
    np.testing.assert_allclose(to_probability(np.column_stack([1 - z / 9, z / 9]), "probability", "m"), z / 9)
    with pytest.raises(BundleError, match="binary"):
        to_probability(np.zeros((3, 3)), "probability", "m")


def test_lightgbm_only_paths_never_import_torch_or_onnxruntime():
    code = (
        "import sys, xylen.cli, xylen.core.convert, xylen.core.backends.onnx, xylen.core.backends.torch;"
        "print(sorted(m for m in ('torch', 'onnxruntime', 'onnx', 'onnxmltools') if m in sys.modules))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[]"
