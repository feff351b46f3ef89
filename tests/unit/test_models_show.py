"""`xylen models show`: the honest sentence, the label, the outputs and the serving window of new, old, retrained
and imported models."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from tests.helpers import DATA, heads_home
from xylen.cli import app
from xylen.core.bundle import load_bundle, outputs_of
from xylen.core.registry import Registry
from xylen.core.settings import load_settings
from xylen.core.summary import sentence
from xylen.train.retrain import RetrainOptions, retrain

pytestmark = pytest.mark.unit
runner = CliRunner()
NAME = "btcusdt-1h"
TOBIAS = DATA / "models" / "TobiasSaile_ai-trading-bot__lightgbm_model.txt"
HONEST = (
    "forecasts move size (AUC 0.73 [0.72, 0.74]); direction edge over baseline +0.004 [-0.002, +0.010]: "
    "none measurable"
)
OLD_LABEL = {"horizon": 6, "threshold": 0.002, "kind": "forward_log_return_above_threshold"}


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """btcusdt-1h v0001: a direction model with a move head on the context feature set, with a walk-forward record."""
    home = tmp_path_factory.mktemp("show") / "home"
    heads_home(home, feature_set="ohlcv-ctx-v1", metrics={"honesty": {"version": "v0001", "sentence": HONEST}})
    return home


@pytest.fixture
def home(base: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "home"
    shutil.copytree(base, copy)
    return copy


def show(home: Path, *args: str) -> Any:
    return runner.invoke(app, ["--home", str(home), "models", "show", *args], env={"COLUMNS": "400"})


def shown_json(home: Path, *args: str) -> dict[str, Any]:
    r = show(home, *args, "--json")
    assert r.exit_code == 0, r.output
    return orjson.loads(r.stdout)  # type: ignore[no-any-return]


def test_a_new_two_head_model_shows_its_sentence_label_outputs_and_window(home: Path) -> None:
    r = show(home)
    assert r.exit_code == 0, r.output
    assert f"what it knows: {HONEST}" in r.output
    assert "label: direction, 6 candles ahead: 1 if log(close[t+6] / close[t]) > 0, else 0" in r.output
    assert "predicts P(the price is higher 6 candles from now)" in r.output
    assert "up_probability = P(the price is higher 6 candles from now)" in r.output
    assert "move_probability = P(the price moves more than 1% either way over the next 6 candles)" in r.output
    assert "features ohlcv-ctx-v1: 34" in r.output and "a request sends at least 73 candles" in r.output
    assert "head move: artifact head-move.txt" in r.output
    assert "trained on binance BTCUSDT 1h: " in r.output  # the market: exchange, symbol, interval
    body = shown_json(home)
    assert body["summary"] == HONEST and body["min_candles"] == 73
    assert body["label_spec"]["kind"] == "direction" and body["label_spec"]["horizon"] == 6
    assert set(body["outputs"]) == {"probability", "up_probability", "move_probability"}
    assert body["heads"][0]["label"]["kind"] == "move"  # the manifest itself, as before


def test_the_outputs_shown_are_what_the_loaded_bundle_answers_with(home: Path, tmp_path: Path) -> None:
    reg = Registry(home / "models")
    assert outputs_of(reg.manifest(NAME, "v0001")) == load_bundle(reg.path(NAME, "v0001")).outputs()
    old = tmp_path / "old"
    heads_home(old, label=OLD_LABEL, heads=())
    reg_old = Registry(old / "models")
    assert outputs_of(reg_old.manifest(NAME, "v0001")) == load_bundle(reg_old.path(NAME, "v0001")).outputs()
    assert set(outputs_of(reg_old.manifest(NAME, "v0001"))) == {"probability"}


def test_a_retrained_model_shows_the_walk_forward_it_was_made_with(home: Path) -> None:
    settings = load_settings({"home": home, "retrain_holdout": 500, "retrain_tolerance": 0.5}, environ={})
    (res,) = retrain(settings, RetrainOptions()).results
    assert res.outcome == "promoted", res.message
    r = show(home, NAME, "v0002")
    assert r.exit_code == 0, r.output
    assert f"what it knows: {HONEST} (walk-forward of v0001; retrained since, each version gated on log-loss)" in (
        r.output
    )
    assert "move_probability" in r.output and "retrained from v0001 (full); gate: promote" in r.output


def test_an_old_model_shows_its_figures_without_an_interval_and_its_threshold_label(tmp_path: Path) -> None:
    home = tmp_path / "home"
    heads_home(home, label=OLD_LABEL, heads=(), metrics={"auc_mean": 0.66, "auc_edge_vs_volatility": 0.004})
    m = Registry(home / "models").manifest(NAME, "v0001")
    r = show(home)
    assert r.exit_code == 0, r.output
    assert f"what it knows: {sentence(m)}" in r.output
    assert "AUC 0.660, edge over the volatility-only learner +0.0040, without an interval" in r.output
    assert "label: threshold, 6 candles ahead: 1 if log(close[t+6] / close[t]) > 0.002" in r.output
    assert "predicts P(the price rises more than 0.2% over the next 6 candles)" in r.output
    assert "up_probability" not in r.output and "move_probability" not in r.output
    assert "a request sends at least 49 candles" in r.output
    assert "AUC 0.6600" in r.output and "| edge" not in r.output  # its figures; the edge only in the sentence
    body = shown_json(home)
    assert body["label"] == OLD_LABEL and body["label_spec"]["kind"] == "threshold" and body["min_candles"] == 49


def test_an_imported_model_says_xylen_cannot_say_what_it_knows(home: Path) -> None:
    args = ["--home", str(home), "models", "import", str(TOBIAS), "--backend", "lightgbm", "--name", "tobias"]
    assert runner.invoke(app, args).exit_code == 0
    r = show(home, "tobias", "v0001")
    assert r.exit_code == 0, r.output
    assert "what it knows: no evaluation recorded (an imported model): xylen cannot say what it knows" in r.output
    assert "label: none recorded (an imported model)" in r.output
    assert "this xylen does not compute them from candles" in r.output
    body = shown_json(home, "tobias", "v0001")
    assert body["summary"].startswith("no evaluation recorded") and body["min_candles"] is None
    assert body["label_spec"] is None and set(body["outputs"]) == {"probability"}


def test_a_tampered_head_artifact_is_an_error_naming_it(home: Path) -> None:
    art = Registry(home / "models").path(NAME, "v0001") / "head-move.txt"
    os.chmod(art, 0o644)
    art.write_bytes(art.read_bytes().replace(b"leaf_value=", b"leaf_value=1", 1))
    r = show(home)
    assert r.exit_code == 4 and "head-move.txt" in r.output and "Traceback" not in r.output


def test_a_label_this_xylen_does_not_read_is_shown_as_such(home: Path) -> None:
    from xylen.core.bundle import read_manifest, write_manifest

    folder = Registry(home / "models").path(NAME, "v0001")
    m = read_manifest(folder)
    m.label = {"kind": "sharpe-above", "horizon": 6}
    write_manifest(folder, m)
    r = show(home)
    assert r.exit_code == 0, r.output
    assert "label: not one this xylen reads ({'kind': 'sharpe-above', 'horizon': 6})" in r.output
    assert shown_json(home)["label_spec"] is None


def test_models_list_never_shows_an_edge_without_saying_whether_it_has_an_interval():
    from xylen.cli.models import _edge_cell

    edge = {"value": 0.0447, "low": 0.0354, "high": 0.0546, "verdict": "measurable"}
    assert _edge_cell(edge, 0.0447) == "+0.0447 [+0.0354, +0.0546] measurable"
    assert _edge_cell(None, 0.0066) == "+0.0066 (no interval)"  # a model trained by xylen 0.1
    assert _edge_cell({"value": 0.01, "low": None, "high": None}, 0.01) == "+0.0100 (no interval)"
    assert _edge_cell(None, None) == _edge_cell({"value": "x"}, True) == ""  # imported or hand-edited: nothing
    assert _edge_cell({**edge, "verdict": "none measurable"}, 0.0447, short=True) == "none"
    assert _edge_cell(None, 0.0066, short=True) == "no interval"
