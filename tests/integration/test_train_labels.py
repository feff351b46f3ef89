"""`xylen train --label ...`: each label is recorded in the manifest and read back, the bundle carries the heads
it was asked for, and every reported edge carries an interval whose verdict follows it -- in the CLI table, --json
and the HTML report."""

from __future__ import annotations

import orjson
import pytest
from typer.testing import CliRunner

from tests.helpers import BTC_1H
from xylen.cli import app
from xylen.core import labels
from xylen.core.bundle import load_bundle
from xylen.core.summary import sentence

pytestmark = pytest.mark.integration
runner = CliRunner()
FAST = {"XYLEN_FOLDS": "2", "LGBM_NUM_THREADS": "2"}


def train(home, *args):
    r = runner.invoke(app, ["--home", str(home), "train", "--profile", "8gb", "--data", str(BTC_1H), *args], env=FAST)
    assert r.exit_code == 0, r.output
    return r


def _verdict_follows_interval(h):
    lo, hi = h["edge"]["low"], h["edge"]["high"]
    want = "measurable" if lo > 0 else "below the baseline" if hi < 0 else "none measurable"
    assert h["verdict"] == want, h
    assert lo <= h["edge"]["value"] <= hi and h["auc"]["low"] <= h["auc"]["value"] <= h["auc"]["high"]


@pytest.mark.parametrize(
    ("args", "primary", "heads"),
    [
        ([], labels.LabelSpec(6, 0.002, "direction"), {"move_probability": labels.LabelSpec(6, 0.002, "move")}),
        (["--label", "threshold", "--threshold", "0.004", "--extra-head", "none"],
         labels.LabelSpec(6, 0.004, "threshold"), {}),
        (["--label", "move", "--horizon", "4", "--extra-head", "direction"], labels.LabelSpec(4, 0.002, "move"),
         {"up_probability": labels.LabelSpec(4, 0.0, "direction")}),
        (["--label", "triple-barrier", "--threshold", "0.006", "--lower-barrier", "0.003", "--features",
          "ohlcv-ctx-v1"], labels.LabelSpec(6, 0.006, "triple-barrier", 0.003),
         {"move_probability": labels.LabelSpec(6, 0.006, "move")}),
    ],
    ids=["default", "threshold", "move+direction", "triple-barrier+ctx"],
)
def test_each_label_round_trips_and_every_edge_has_an_interval(tmp_path, args, primary, heads):
    r = train(tmp_path, *args, "--json")
    out = orjson.loads(r.output)
    bundle = load_bundle(out["bundle"])
    m = bundle.manifest
    assert labels.LabelSpec.from_dict(m.label) == primary
    assert {f: labels.LabelSpec.from_dict(h.label) for f, h in zip((f for f, _ in bundle.heads), m.heads)} == heads
    assert set(bundle.outputs()) == {"probability", *heads, *([primary.output_field] if primary.output_field else [])}
    want_fs = "ohlcv-ctx-v1" if "ohlcv-ctx-v1" in args else "ohlcv-v2"
    assert m.feature_set.version == want_fs and bundle.min_candles == (73 if want_fs == "ohlcv-ctx-v1" else 49)
    honesty = out["metrics"]["honesty"]
    assert [h["kind"] for h in honesty["heads"]] == [primary.kind, *(h.kind for h in heads.values())]
    for h in honesty["heads"]:
        _verdict_follows_interval(h)
        assert h["edge"]["method"] == "day-block bootstrap, stratified by fold"
    assert sentence(m) == honesty["sentence"]
    report = (bundle.folder / "report.html").read_text()
    for h in honesty["heads"]:
        assert h["verdict"] in report
    if primary.kind == "move" and not heads:
        assert honesty["backtest"] is None


def test_the_cli_table_report_and_sentence_say_the_same(tmp_path):
    r = train(tmp_path)
    m = load_bundle(tmp_path / "models" / "btcusdt-1h" / "v0001").manifest
    honesty = m.metrics["honesty"]
    text = " ".join(r.output.split())
    assert " ".join(honesty["sentence"].split()) in text
    for h in honesty["heads"]:
        assert h["verdict"] in r.output
        assert f"{h['edge']['value']:+.4f}" in r.output  # the edge, in the table, with ...
        assert f"{h['edge']['low']:+.4f}" in text  # ... its interval
    report = (tmp_path / "models" / "btcusdt-1h" / "v0001" / "report.html").read_text()
    assert honesty["sentence"].split(";")[0] in report and "net bp/trade" in report
    bt = honesty["backtest"]
    assert bt["horizon"] == 6 and bt["model"]["trades"] >= 0 and "volatility_timing" in bt
    assert "the model adds something" not in r.output  # the alpha's unqualified claim is gone
    # `xylen models list` shows the edge only with its interval and verdict, and the label
    rows = orjson.loads(runner.invoke(app, ["--home", str(tmp_path), "models", "list", "--json"]).output)
    edge = honesty["heads"][0]["edge"]
    assert rows[0]["label"] == "direction"
    assert rows[0]["edge"] == {"value": edge["value"], "low": edge["low"], "high": edge["high"],
                               "verdict": honesty["heads"][0]["verdict"]}
    table = runner.invoke(app, ["--home", str(tmp_path), "models", "list"], env={"COLUMNS": "80"}).output
    line = next(ln for ln in table.splitlines() if "v0001 *" in ln)  # the live version, on one 80-column line
    from xylen.cli.models import SHORT_VERDICT

    word = SHORT_VERDICT[honesty["heads"][0]["verdict"]]
    assert line.split()[3:7:3] == ["direction", word] and f"{edge['value']:+.4f}" not in line
    shown = runner.invoke(app, ["--home", str(tmp_path), "models", "show", "btcusdt-1h"], env={"COLUMNS": "200"})
    assert "edge +" not in shown.output.replace(honesty["sentence"], "")  # no bare edge beside the sentence
