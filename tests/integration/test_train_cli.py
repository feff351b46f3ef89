"""`xylen train`, `xylen models`, `xylen config` end to end on real candles, through the CLI as a user sees it."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys

import orjson
import pytest
from typer.testing import CliRunner

from tests.helpers import BTC_1H, DATA
from xylen.cli import app

pytestmark = pytest.mark.integration
runner = CliRunner()
FAST = {"XYLEN_FOLDS": "2", "LGBM_NUM_THREADS": "2"}


def xylen(home, *args, env=None):
    return runner.invoke(app, ["--home", str(home), *args], env={**FAST, **(env or {})})


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    h = tmp_path_factory.mktemp("home")
    r = xylen(h, "train", "--profile", "8gb", "--data", str(BTC_1H), "--json")
    assert r.exit_code == 0, r.output
    return h


def test_train_json_summary_and_bundle(home):
    reg = home / "models" / "btcusdt-1h"
    ptr = orjson.loads((reg / "CURRENT.json").read_bytes())
    assert ptr["version"] == "v0001"
    bundle = reg / "v0001"
    assert {"model.txt", "manifest.json", "report.html"} <= {p.name for p in bundle.iterdir()}
    assert {"fold_auc.png", "equity.png", "importance.png"} <= {p.name for p in (bundle / "report").iterdir()}
    html = (bundle / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3  # self-contained
    m = orjson.loads((bundle / "manifest.json").read_bytes())
    assert m["profile"]["name"] == "8gb" and m["metrics"]["n_folds"] == len(m["metrics"]["folds"]) == 2
    assert 0.3 < m["metrics"]["auc_shuffled_mean"] < 0.7
    assert m["metrics"]["peak_rss_mb"] > 0


def test_train_prints_tables_and_rich_summary(home):
    r = xylen(home, "train", "--profile", "8gb", "--data", str(BTC_1H), "--no-promote")
    assert r.exit_code == 0, r.output
    assert "walk-forward" in r.output and "AUC shuffled" in r.output and "what it knows" in r.output
    assert "forecasts move size (AUC" in r.output and "edge [95%]" in r.output  # the sentence and the table
    assert "not promoted" in r.output
    assert orjson.loads((home / "models" / "btcusdt-1h" / "CURRENT.json").read_bytes())["version"] == "v0001"


def test_models_list_show_promote_rollback(home, tmp_path):
    import shutil

    h = tmp_path / "h"
    shutil.copytree(home, h)
    r = xylen(h, "models", "list", "--json")
    rows = orjson.loads(r.output)
    assert [(x["version"], x["live"]) for x in rows][:1] == [("v0001", True)]
    if len(rows) < 2:
        assert xylen(h, "train", "--data", str(BTC_1H), "--profile", "8gb", "--no-promote").exit_code == 0
    r = xylen(h, "models", "promote", "btcusdt-1h", "v0002")
    assert r.exit_code == 0 and "v0002 is live" in r.output
    r = xylen(h, "models", "show", "--json")
    assert orjson.loads(r.output)["version"] == "v0002"
    r = xylen(h, "models", "rollback")
    assert r.exit_code == 0 and "v0001 is live" in r.output
    r = xylen(h, "models", "rollback")
    assert r.exit_code == 4 and "no previous live version" in r.output
    r = xylen(h, "models", "show", "btcusdt-1h", "v0042")
    assert r.exit_code == 4 and "has no version 'v0042'" in r.output


def test_config_shows_sources(tmp_path):
    (tmp_path / "models.env").write_text("PORT=9100\n")
    r = runner.invoke(app, ["--home", str(tmp_path), "config", "--json"], env={"XYLEN_SYMBOL": "ethusdt"})
    assert r.exit_code == 0, r.output
    rows = {x["setting"]: x for x in orjson.loads(r.output)["settings"]}
    assert rows["port"]["value"] == "9100" and rows["port"]["source"] == "models.env"
    assert rows["symbol"]["value"] == "ETHUSDT" and rows["symbol"]["source"] == "env"


# ---- bad input: a clear message, a distinct exit code, and the registry untouched --------------------
def _snapshot(home):
    reg = home / "models"
    return sorted(str(p.relative_to(reg)) for p in reg.rglob("*")) if reg.exists() else []


@pytest.mark.parametrize(
    ("make", "args", "code", "needle"),
    [
        (None, ["--profile", "9gb"], 2, "'9gb' is not one of"),
        (lambda d: d / "missing.csv", [], 3, "does not exist"),
        (lambda d: _trunc(d), [], 3, "corrupt or truncated"),
        (lambda d: _clash(d), [], 3, "Two different candles open at 2022-01-13 11:00 UTC"),
        (lambda d: _short(d), [], 5, "too few for 2 walk-forward folds"),
        (None, ["--data", str(BTC_1H), "--label", "threshold", "--threshold", "0.9"], 5, "every training label is 0"),
        (None, ["--data", str(BTC_1H), "--threshold", "0.9"], 5, "every training label of the move head is 0"),
        (None, ["--label", "lottery"], 2, "'lottery' is not one of"),
        (None, ["--data", str(BTC_1H), "--lower-barrier", "0.003"], 2, "but the label is 'direction'"),
        (None, ["--features", "ohlcv-v9"], 2, "'ohlcv-v9' is not one of"),
        (None, ["--data", str(BTC_1H), "--extra-head", "direction"], 2, "The extra head 'direction' is the label"),
        (None, ["--data", str(BTC_1H), "--label", "triple-barrier", "--lower-barrier", "-1"], 2, "-1"),
        (None, ["--symbol", "ETHUSDT"], 3, "No ETHUSDT 5m candles in the store"),
    ],
)
def test_bad_input_exit_codes_and_registry_untouched(home, tmp_path, make, args, code, needle):
    before = _snapshot(home)
    extra = ["--data", str(make(tmp_path))] if make else []
    r = xylen(home, "train", "--profile", "8gb", *extra, *args)
    assert r.exit_code == code, r.output
    assert needle in r.output
    assert "Traceback" not in r.output
    assert _snapshot(home) == before


def test_bad_setting_exit_code(tmp_path):
    r = runner.invoke(app, ["--home", str(tmp_path), "train"], env={"LGBM_MAX_MEMORY_GB": "lots"})
    assert r.exit_code == 2 and "LGBM_MAX_MEMORY_GB (environment) = 'lots'" in r.output


def test_unwritable_home(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    r = xylen(f, "train", "--data", str(BTC_1H), "--profile", "8gb")
    assert r.exit_code == 2 and "XYLEN_HOME" in r.output


CSV_GZ = DATA / "spot_klines_12col" / "sadunalpdag_batmayacagiz__BTCUSDT-1h-2022-01.csv.gz"


def _trunc(d):
    p = d / "BTCUSDT-1h-2022-01.csv.gz"
    p.write_bytes(CSV_GZ.read_bytes()[:4000])
    return p


def _csv_from_lines(d, pick):
    lines = gzip.decompress(CSV_GZ.read_bytes()).decode().splitlines()
    p = d / "BTCUSDT-1h-2022-01.csv"
    p.write_text("\n".join(pick(lines)) + "\n")
    return p


def _clash(d):
    """Row 300 repeated with another close price: two different candles for one open time."""

    def pick(lines):
        row = lines[300].split(",")
        row[4] = str(float(row[4]) + 1)
        return lines[:301] + [",".join(row)] + lines[301:]

    return _csv_from_lines(d, pick)


def test_overlapping_data_files_are_merged_by_the_rule_import_uses(tmp_path):
    """Two exports that overlap (the same candles in both) train like one file; the note says how many merged."""
    from xylen.core.candles import read_candles

    df = read_candles(BTC_1H).frame
    a, b = tmp_path / "BTCUSDT-1h-a.parquet", tmp_path / "BTCUSDT-1h-b.parquet"
    df.head(5000).write_parquet(a)
    df.slice(4000).write_parquet(b)  # rows 4000-4999 are in both
    r = xylen(tmp_path, "train", "--profile", "8gb", "--data", str(a), "--data", str(b), "--json")
    assert r.exit_code == 0, r.output
    res = orjson.loads(r.stdout)
    assert res["rows_total"] == df.height
    assert any("1000 candle(s) appeared more than once" in w for w in res["warnings"]), res["warnings"]


def test_report_title_names_the_published_version(home):
    for v in ("v0001", "v0002"):
        if not (home / "models" / "btcusdt-1h" / v).exists():
            assert xylen(home, "train", "--profile", "8gb", "--data", str(BTC_1H), "--no-promote").exit_code == 0
        html = (home / "models" / "btcusdt-1h" / v / "report.html").read_text()
        assert f"<title>xylen report: btcusdt-1h {v}</title>" in html


def test_symbol_is_normalised_before_the_store_is_read(tmp_path):
    from xylen.core.candles import read_candles
    from xylen.core.store import Store

    Store(tmp_path / "data").append("BTCUSDT", "1h", read_candles(BTC_1H).frame)
    r = xylen(tmp_path, "train", "--profile", "8gb", "--symbol", " btcusdt ", "--interval", "1h", "--json")
    assert r.exit_code == 0, r.output
    assert orjson.loads(r.stdout)["source"].startswith("store")
    r = xylen(tmp_path, "train", "--profile", "8gb", "--symbol", "../../evil", "--interval", "1h")
    assert r.exit_code == 2 and "'../../evil'" in r.output


def _short(d):
    return _csv_from_lines(d, lambda lines: lines[:400])


def test_every_command_has_help_with_an_example():
    import typer.main

    root = typer.main.get_command(app)

    def walk(cmd, path):
        yield path, cmd
        if getattr(cmd, "commands", None):
            for name, sub in cmd.commands.items():
                yield from walk(sub, [*path, name])

    seen = 0
    for path, _cmd in walk(root, []):
        r = runner.invoke(app, [*path, "--help"])
        assert r.exit_code == 0, path
        assert "Example:" in r.output, f"`xylen {' '.join(path)} --help` has no Example"
        seen += 1
    assert seen >= 6


def test_python_m_xylen_and_help_stays_light():
    """`python -m xylen --help` works and imports neither torch, lightgbm nor polars."""
    code = (
        "import sys, runpy; sys.argv=['xylen','--help']\n"
        "try: runpy.run_module('xylen', run_name='__main__')\n"
        "except SystemExit: pass\n"
        "heavy = ('torch', 'lightgbm', 'polars', 'onnxruntime', 'matplotlib')\n"
        "print('HEAVY', sorted(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "100"}
    )
    assert "Usage:" in out.stdout
    assert "HEAVY []" in out.stdout


@pytest.mark.parametrize("every", ["1w", "1mo"])
def test_weekly_and_monthly_candles_reach_training(tmp_path, every):
    """1w (Mondays) and 1M (calendar months) are read, validated and binned like any interval; years of them are
    still too few rows to train on, and the message says that -- not that the interval is unknown."""
    import polars as pl

    from xylen.core.candles import read_candles

    hourly = read_candles(BTC_1H).frame
    bars = (
        hourly.with_columns(pl.from_epoch("open_time", time_unit="ms").alias("t"))
        .group_by_dynamic("t", every=every)
        .agg(pl.col("open").first(), pl.col("high").max(), pl.col("low").min(), pl.col("close").last(),
             pl.col("volume").sum())
        .with_columns(pl.col("t").dt.epoch("ms").alias("open_time"))
        .drop("t")
    )
    interval = "1w" if every == "1w" else "1M"
    path = tmp_path / f"BTCUSDT-{interval}.parquet"
    bars.write_parquet(path)
    r = xylen(tmp_path, "train", "--profile", "8gb", "--data", str(path), "--interval", interval)
    assert r.exit_code == 5, r.output
    assert f"No usable rows: {bars.height} candles are fewer than the 49 of lookback (ohlcv-v2)" in r.output


def test_gaps_that_leave_no_stretch_long_enough_are_named_not_called_too_few_candles(tmp_path):
    """Thousands of 1h candles with a gap every 2 days: every stretch is shorter than ohlcv-ctx-v1's 73 candles.
    The message says so (and how to fix it) instead of calling the candles too few."""
    import polars as pl

    from xylen.core.candles import read_candles

    hourly = read_candles(BTC_1H).frame
    gappy = hourly.filter(pl.int_range(pl.len()) % 48 != 47)  # drop one candle in every 48
    path = tmp_path / "BTCUSDT-1h-gappy.parquet"
    gappy.write_parquet(path)
    r = xylen(tmp_path, "train", "--profile", "8gb", "--data", str(path), "--interval", "1h", "--features",
              "ohlcv-ctx-v1")
    assert r.exit_code == 5, r.output
    text = " ".join(r.output.split())
    assert f"the {gappy.height} candles have gaps, and no stretch between two gaps holds the 73 of lookback" in text
    assert "--features ohlcv-v2" in text and "are fewer than" not in text
