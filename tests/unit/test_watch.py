"""Watching the live model: the record of its performance since promotion, its cache, its display, staleness."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from dataclasses import replace

import lightgbm as lgb
import numpy as np
import orjson
import polars as pl
import pytest
from sklearn.metrics import log_loss, roc_auc_score
from typer.testing import CliRunner

from tests.builders import build_bundle
from tests.helpers import BTC_1H, DATA
from xylen.cli import app
from xylen.core import features
from xylen.core.bundle import load_bundle, read_manifest, write_manifest
from xylen.core.candles import read_candles
from xylen.core.errors import BundleError
from xylen.core.registry import POINTER, Registry
from xylen.core.settings import load_settings
from xylen.core.storage import Conflict
from xylen.core.store import Store
from xylen.profiles import resolve
from xylen.train import TrainOptions, train, watch

pytestmark = pytest.mark.unit

NAME = "btcusdt-1h"
HOUR = 3_600_000
TRAIN_ROWS = 4000  # candles in the store when the model is trained
PROMOTED = 4100  # index of the candle the model is (said to be) promoted at
HOLE = (5000, 5005)  # candles missing from the store after the promotion: windows spanning them are not scored
TOBIAS = DATA / "models" / "TobiasSaile_ai-trading-bot__lightgbm_model.txt"  # a LightGBM model from elsewhere
runner = CliRunner()


def verify_here(folder):
    """The child-process verifier's checks, in this process (these tests are about the watch, not the registry)."""
    try:
        load_bundle(folder)
    except BundleError as exc:
        return exc.message
    return None


def settings_for(home, **overrides):
    # one LightGBM thread: the baseline fitted here and the one fitted by the test are then the same trees
    return load_settings({"home": home, "folds": 2, "lgbm_num_threads": 1, **overrides}, environ={})


def registry(home):
    return Registry(home / "models", verify=verify_here)


@pytest.fixture(scope="module")
def candles():
    return read_candles(BTC_1H).frame  # 5980 real BTCUSDT 1h candles of 2024, no gaps


@pytest.fixture(scope="module")
def trained(tmp_path_factory, candles):
    """A home whose store held the first TRAIN_ROWS candles when `xylen train` trained btcusdt-1h v0001 on it, and
    holds every later candle (but the HOLE) now."""
    home = tmp_path_factory.mktemp("watch-home")
    settings = settings_for(home, label="threshold", extra_head="none")  # the labels the checks below rebuild
    store = Store(settings.data_dir)
    store.append("BTCUSDT", "1h", candles.head(TRAIN_ROWS))
    prof = replace(resolve("8gb"), num_boost_round=60, early_stopping_rounds=10, threads=1)
    res = train(settings, TrainOptions(symbol="BTCUSDT", interval="1h"), prof)
    assert res.name == NAME and res.version == "v0001"
    later = candles.slice(TRAIN_ROWS)
    keep = ~pl.col("open_time").is_in(candles["open_time"].slice(HOLE[0], HOLE[1] - HOLE[0]).implode())
    store.append("BTCUSDT", "1h", later.filter(keep))
    return home


@pytest.fixture
def home(trained, tmp_path):
    dst = tmp_path / "home"
    shutil.copytree(trained, dst)
    return dst


def promote_at(home, version, open_time_ms):
    return registry(home).promote(NAME, version, now=watch.iso(open_time_ms / 1000))


def record(home, **overrides):
    settings = settings_for(home, **overrides)
    return watch.record(settings, registry(home), Store(settings.data_dir), NAME, now=1_800_000_000.0)


def edit_manifest(home, version, change):
    folder = home / "models" / NAME / version
    m = read_manifest(folder)
    change(m)
    write_manifest(folder, m)


# -- the metrics ------------------------------------------------------------------------------------------------
def scored_rows(candles, since_ms, horizon):
    """Independently of dataset.build: rows at or after ``since_ms`` whose 48 candles before and ``horizon`` after
    are all in the store, one hour apart."""
    t = candles["open_time"].to_numpy()
    stored = np.ones(len(t), dtype=bool)
    stored[HOLE[0] : HOLE[1]] = False
    out = [
        i
        for i in range(features.LOOKBACK, len(t) - horizon)
        if t[i] >= since_ms and stored[i - features.LOOKBACK : i + horizon + 1].all()
    ]
    return np.array(out)


def test_record_matches_an_independent_computation(home, candles):
    t = candles["open_time"].to_numpy()
    promote_at(home, "v0001", int(t[PROMOTED]))
    rec = record(home)
    m = read_manifest(home / "models" / NAME / "v0001")
    assert m.training_window.last_open_time < t[PROMOTED]
    horizon, threshold = m.label["horizon"], m.label["threshold"]
    rows = scored_rows(candles, t[PROMOTED], horizon)
    close = candles["close"].to_numpy()
    y = (np.log(close[rows + horizon] / close[rows]) > threshold).astype(float)
    X = features.frame(
        features.CandleArrays(t, *(candles[c].to_numpy() for c in ("open", "high", "low", "close", "volume")))
    )
    p = lgb.Booster(model_file=str(home / "models" / NAME / "v0001" / "model.txt")).predict(X[rows])

    assert rec["version"] == "v0001" and rec["promoted_at"] == watch.iso(t[PROMOTED] / 1000)
    assert rec["computed_at"] == watch.iso(1_800_000_000.0)
    assert rec["rows"] == len(rows) and len(rows) > 1500  # the hole's windows are left out...
    assert len(rows) < len(t) - PROMOTED - horizon  # ...so fewer than every candle since
    assert (rec["first_open_time"], rec["last_open_time"]) == (t[rows[0]], t[rows[-1]])
    assert rec["base_rate"] == pytest.approx(y.mean())
    live = rec["model"]
    assert live["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert live["logloss"] == pytest.approx(log_loss(y, p), abs=1e-9)
    signal = p >= 0.5
    assert live["signals"] == signal.sum() > 0 and live["hit_rate"] == pytest.approx(y[signal].mean())

    # the baseline: LightGBM on the volatility features of the training window's rows, the live model's params
    tw = m.training_window
    fit = np.flatnonzero((t >= tw.first_open_time) & (t <= tw.last_open_time))
    assert len(fit) == tw.rows
    fit_y = (np.log(close[fit + horizon] / close[fit]) > threshold).astype(float)
    vol = features.indices(features.VOLATILITY_FEATURES)
    params = {k: v for k, v in m.params.items() if k not in ("num_boost_round", "metric")} | {"num_threads": 1}
    booster = lgb.train(
        params,
        lgb.Dataset(X[fit][:, vol], label=fit_y, params={"max_bin": params["max_bin"], "verbosity": -1}),
        num_boost_round=m.params["num_boost_round"],
    )
    p_vol = booster.predict(X[rows][:, vol])
    base = rec["volatility_baseline"]
    assert base["auc"] == pytest.approx(roc_auc_score(y, p_vol), abs=1e-12)
    assert base["logloss"] == pytest.approx(log_loss(y, p_vol), abs=1e-9)
    assert base["signals"] == (p_vol >= 0.5).sum()
    assert rec["auc_edge_vs_volatility"] == pytest.approx(live["auc"] - base["auc"])
    assert rec["note"] is None

    stored = orjson.loads((home / "models" / NAME / watch.RECORD).read_bytes())
    assert stored == rec == watch.read(registry(home), NAME)

    lower = record(home, entry_threshold=0.4)  # XYLEN_ENTRY_THRESHOLD decides what counts as a signal
    assert lower["entry_threshold"] == 0.4 and lower["model"]["signals"] == (p >= 0.4).sum() > live["signals"]
    assert lower["model"]["hit_rate"] == pytest.approx(y[p >= 0.4].mean())
    assert lower["model"]["auc"] == live["auc"]


def test_rows_of_the_training_window_are_never_scored(home, candles):
    """A promotion dated inside the training window counts from the end of the window: no in-sample rows."""
    t = candles["open_time"].to_numpy()
    promote_at(home, "v0001", int(t[1000]))
    rec = record(home)
    last = read_manifest(home / "models" / NAME / "v0001").training_window.last_open_time
    assert rec["first_open_time"] > last
    assert rec["first_open_time"] == last + HOUR  # the first candle after the window
    assert rec["model"] is not None


@pytest.mark.parametrize(("offset", "rows"), [(10_000, 0), (-30, 25)])
def test_too_few_rows_yet(home, candles, offset, rows):
    t = candles["open_time"].to_numpy()
    when = int(t[-1]) + offset * HOUR  # after the last stored candle, or 30 candles before it
    promote_at(home, "v0001", when)
    rec = record(home)
    assert rec["rows"] == rows  # 31 candles, the last 6 without their label yet
    assert rec["model"] is None and rec["volatility_baseline"] is None and rec["auc_edge_vs_volatility"] is None
    assert f"{rows} candle(s) with a complete 6-candle label" in rec["note"] and "at least 50" in rec["note"]
    assert (rec["base_rate"] is None) == (rows == 0)
    assert not (home / "cache" / "watch").exists()  # nothing to compare: no baseline was fitted
    assert watch.read(registry(home), NAME) == rec


def test_one_class_only(home, candles):
    edit_manifest(home, "v0001", lambda m: m.label.update(threshold=0.5))  # a 65% rise in 6 hours: never
    promote_at(home, "v0001", int(candles["open_time"][PROMOTED]))
    rec = record(home)
    assert rec["rows"] > 1500 and rec["base_rate"] == 0.0
    assert rec["model"] is None and rec["volatility_baseline"] is None
    assert "every label since" in rec["note"] and "is 0" in rec["note"]


# -- models that are not watched --------------------------------------------------------------------------------
def test_imported_and_other_feature_sets_are_not_watched(home):
    res = runner.invoke(
        app, ["--home", str(home), "models", "import", str(TOBIAS), "--backend", "lightgbm", "--name", NAME]
    )
    assert res.exit_code == 0, res.output
    registry(home).promote(NAME, "v0002")
    assert record(home) is None  # an imported model: its features are not computed from candles
    registry(home).promote(NAME, "v0001")
    edit_manifest(home, "v0001", lambda m: setattr(m.feature_set, "version", "ohlcv-v1"))
    assert record(home) is None
    assert not (home / "models" / NAME / watch.RECORD).exists()
    settings = settings_for(home)
    assert watch.record(settings, registry(home), Store(settings.data_dir), "nothing-here") is None


def test_a_pointer_without_promotion_time_says_so(home):
    ptr = home / "models" / NAME / POINTER
    raw = orjson.loads(ptr.read_bytes())
    raw.pop("promoted_at")
    ptr.write_bytes(orjson.dumps(raw))
    rec = record(home)
    assert rec["rows"] == 0 and rec["model"] is None and "no promotion time" in rec["note"]


def test_a_damaged_live_bundle_is_an_error_and_keeps_the_record(home, candles):
    promote_at(home, "v0001", int(candles["open_time"][PROMOTED]))
    before = record(home)
    model = home / "models" / NAME / "v0001" / "model.txt"
    model.write_bytes(model.read_bytes().replace(b"leaf_value=-", b"leaf_value=+", 1))  # same size, other sha256
    with pytest.raises(BundleError, match="sha256") as err:
        record(home)
    assert err.value.exit_code == 4 and "roll back" in err.value.hint
    assert watch.read(registry(home), NAME) == before  # the stored record is untouched


def test_a_model_trained_on_the_bundled_sample_gets_its_baseline_from_the_sample(tmp_path):
    """`xylen serve --train-if-missing` trains on the bundled sample, not the store: the baseline is fitted on the
    same candles."""
    from xylen.train.dataset import arrays_of
    from xylen.train.pipeline import SAMPLE_FILE, sample_path

    sample = read_candles(sample_path()).frame
    home = tmp_path / "home"
    reg = registry(home)
    name = "btcusdt-5m"
    train_part = arrays_of(sample.slice(sample.height - 6000, 4000))
    build_bundle(reg, name, rounds=20, candles=train_part, promote=False)
    folder = home / "models" / name / "v0001"
    m = read_manifest(folder)
    m.metrics["data_source"] = f"bundled sample {SAMPLE_FILE}"  # what the pipeline writes for the sample
    write_manifest(folder, m)
    after = sample.slice(sample.height - 2000)
    reg.promote(name, "v0001", now=watch.iso(after["open_time"][0] / 1000))
    settings = settings_for(home)
    store = Store(settings.data_dir)
    store.append("BTCUSDT", "5m", after)  # only the candles since the promotion are in the store
    rec = watch.record(settings, reg, store, name)
    assert rec["rows"] == 2000 - features.LOOKBACK - 6 and rec["note"] is None  # no lookback stored before them
    assert rec["volatility_baseline"]["auc"] is not None and rec["model"]["auc"] is not None


# -- the baseline and its cache ---------------------------------------------------------------------------------
def cache_file(home):
    return home / "cache" / "watch" / NAME / "v0001.json"


def test_corrupt_baseline_cache_is_refitted_never_trusted(home, candles, monkeypatch):
    promote_at(home, "v0001", int(candles["open_time"][PROMOTED]))
    first = record(home)
    good = orjson.loads(cache_file(home).read_bytes())
    assert good["sha256"] and good["model_sha256"] == read_manifest(home / "models" / NAME / "v0001").artifact.sha256

    # a well-formed text model with one leaf changed (same length: tree_sizes counts bytes, and LightGBM aborts the
    # process on a mismatch): trusted, it would score differently
    lines = good["booster"].split("\n")
    at = next(i for i, line in enumerate(lines) if line.startswith("leaf_value="))
    leaf = lines[at].split("=", 1)[1].split(" ")[0]
    d = leaf.index(".") + 1
    lines[at] = lines[at].replace(leaf, leaf[:d] + ("9" if leaf[d] != "9" else "1") + leaf[d + 1 :], 1)
    forged = "\n".join(lines)
    X = np.random.default_rng(0).normal(size=(200, len(features.VOLATILITY_FEATURES))) * 0.01
    assert not np.allclose(lgb.Booster(model_str=forged).predict(X), lgb.Booster(model_str=good["booster"]).predict(X))
    torn = good["booster"][:500]
    loaded = []
    real_init = lgb.Booster.__init__

    def spy(self, *args, **kwargs):
        loaded.append(kwargs.get("model_str"))
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(lgb.Booster, "__init__", spy)
    damages = {
        "forged text": orjson.dumps(good | {"booster": forged}),
        "truncated text with its own sha": orjson.dumps(
            good | {"booster": torn, "sha256": watch.hashlib.sha256(torn.encode()).hexdigest()}
        ),
        "torn file": cache_file(home).read_bytes()[:1000],
        "not json": b"\x00\xff garbage",
        "a list": b"[1, 2]",
        "another model's": orjson.dumps(good | {"model_sha256": "0" * 64}),
    }
    for what, data in damages.items():
        cache_file(home).write_bytes(data)
        loaded.clear()
        again = record(home)
        assert again["volatility_baseline"] == first["volatility_baseline"], what
        assert forged not in loaded and torn not in loaded, what  # never handed to LightGBM
        assert orjson.loads(cache_file(home).read_bytes())["sha256"] == good["sha256"], what  # rewritten whole

    loaded.clear()
    assert record(home)["volatility_baseline"] == first["volatility_baseline"]
    assert good["booster"] in loaded  # the good cache is used, not refitted (a refit builds no Booster from text)


def test_baseline_needs_the_training_window_in_the_store(home, candles, tmp_path):
    """Only the candles after the window in the store: the live model is scored, the baseline says what to fetch."""
    promote_at(home, "v0001", int(candles["open_time"][PROMOTED]))
    store = Store(tmp_path / "data")
    store.append("BTCUSDT", "1h", candles.slice(TRAIN_ROWS))
    settings = settings_for(home)
    rec = watch.record(settings, registry(home), store, NAME)
    assert rec["model"]["auc"] is not None and rec["volatility_baseline"] is None
    assert "the store holds 0 usable candles of the training window" in rec["note"]
    assert "xylen collect --symbols BTCUSDT --intervals 1h --since 2024-01-0" in rec["note"]


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"num_boost_round": "many"}, "num_boost_round 'many' is not a number of trees"),
        ({"num_boost_round": 10**9}, "is not a number of trees"),
        ({"objective": "regression"}, "objective 'regression' is not binary"),
        ({"num_leaves": -3}, "LightGBM refused the live model's params"),
    ],
)
def test_hostile_params_cost_the_baseline_only(home, candles, params, needle):
    edit_manifest(home, "v0001", lambda m: m.params.update(params))
    promote_at(home, "v0001", int(candles["open_time"][PROMOTED]))
    rec = record(home)
    assert rec["model"]["auc"] is not None and rec["volatility_baseline"] is None
    assert needle in rec["note"]


# -- storing and reading ----------------------------------------------------------------------------------------
def test_the_record_follows_the_live_version(home, candles):
    reg = registry(home)
    promote_at(home, "v0001", int(candles["open_time"][PROMOTED]))
    first = record(home)
    assert watch.read(reg, NAME) == first
    v2 = build_bundle(reg, NAME, rows=800, rounds=5, promote=False)  # a 5m model: no 5m candles in the store
    reg.promote(NAME, v2)
    assert watch.read(reg, NAME) is None  # v0001's record is not shown for v0002
    assert "no record for this live version" in cli(home, "models", "show").output
    reg.rollback(NAME)
    assert watch.read(reg, NAME) is None  # v0001 again, but promoted anew: that record counted from before
    reg.promote(NAME, v2)
    second = record(home)
    assert second["version"] == v2 and second["rows"] == 0 and watch.read(reg, NAME) == second


@pytest.mark.parametrize(
    "damage",
    [
        b"",
        b"{not json",
        b"[]",
        b'{"name": "btcusdt-1h"}',
        "a record whose rows are text",
        "a record whose model scores are text",
        "a record whose model scores lack the AUC",
        "a record without its edge",
        "a record with a first but no last open time",
        "a record whose open time is out of any calendar",
    ],
)
def test_a_damaged_record_reads_as_none(home, candles, damage):
    promote_at(home, "v0001", int(candles["open_time"][PROMOTED]))
    rec = record(home)
    if damage == "a record whose rows are text":
        damage = orjson.dumps(rec | {"rows": "many"})
    elif damage == "a record whose model scores are text":
        damage = orjson.dumps(rec | {"model": rec["model"] | {"auc": "0.9"}})
    elif damage == "a record whose model scores lack the AUC":
        damage = orjson.dumps(rec | {"model": {k: v for k, v in rec["model"].items() if k != "auc"}})
    elif damage == "a record without its edge":
        damage = orjson.dumps({k: v for k, v in rec.items() if k != "auc_edge_vs_volatility"})
    elif damage == "a record with a first but no last open time":
        damage = orjson.dumps(rec | {"last_open_time": None})
    elif damage == "a record whose open time is out of any calendar":
        damage = orjson.dumps(rec | {"last_open_time": 2**62})
    (home / "models" / NAME / watch.RECORD).write_bytes(damage)
    assert watch.read(registry(home), NAME) is None
    res = cli(home, "models", "show")
    assert res.exit_code == 0 and "no record for this live version" in res.output
    (home / "models" / NAME / POINTER).write_bytes(b"{torn")
    assert watch.read(registry(home), NAME) is None  # a damaged CURRENT too
    assert watch.read(registry(home), "../etc") is None


def test_concurrent_records_agree_and_leave_whole_files(home, candles):
    promote_at(home, "v0001", int(candles["open_time"][PROMOTED]))
    results, errors = [], []

    def run():
        try:
            results.append(record(home))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert not errors and len(results) == 4
    assert all(r == results[0] for r in results)
    assert watch.read(registry(home), NAME) == results[0]
    cached = orjson.loads(cache_file(home).read_bytes())
    assert watch.hashlib.sha256(cached["booster"].encode()).hexdigest() == cached["sha256"]
    assert [p.name for p in cache_file(home).parent.iterdir()] == ["v0001.json"]  # no temp file left


def test_a_record_of_a_version_replaced_meanwhile_is_not_stored(home, candles, monkeypatch):
    reg = registry(home)
    promote_at(home, "v0001", int(candles["open_time"][PROMOTED]))
    v2 = build_bundle(reg, NAME, rows=800, rounds=5, promote=False)
    real_swap = reg.storage.swap

    raced = []

    def racing_swap(key, data, expect, **kwargs):
        if key.endswith(watch.RECORD) and not raced:
            raced.append(key)
            reg.promote(NAME, v2)  # another writer promotes while the record is being written
            raise Conflict(key, expect, "someone-else")
        return real_swap(key, data, expect, **kwargs)

    monkeypatch.setattr(reg.storage, "swap", racing_swap)
    settings = settings_for(home)
    rec = watch.record(settings, reg, Store(settings.data_dir), NAME)
    assert rec["version"] == "v0001" and raced
    assert not (home / "models" / NAME / watch.RECORD).exists()  # not retried over the newer live version


# -- staleness --------------------------------------------------------------------------------------------------
def test_staleness_by_age():
    created = "2026-01-01T00:00:00Z"
    t0 = watch.parse_iso(created)
    week = 7 * 86400.0
    assert watch.staleness({"created_at": created}, week, now=t0 + week - 1) == {
        "age_seconds": week - 1,
        "max_age_seconds": week,
        "stale": False,
    }
    assert watch.staleness({"created_at": created}, week, now=t0 + week + 1)["stale"] is True
    assert watch.staleness({"created_at": "2026-01-01T00:00:00+00:00"}, week, now=t0)["age_seconds"] == 0.0
    assert watch.staleness({"created_at": "2026-01-01T00:00:00"}, week, now=t0)["age_seconds"] == 0.0  # naive: UTC
    for bad in ("yesterday", "", None, 12):
        assert watch.staleness({"created_at": bad}, week, now=t0) == {
            "age_seconds": None,
            "max_age_seconds": week,
            "stale": None,
        }


def cli(home, *args, env=None):
    return runner.invoke(app, ["--home", str(home), *args], env=env)


def test_models_list_flags_a_stale_live_version(home):
    reg = registry(home)
    build_bundle(reg, NAME, rows=800, rounds=5, promote=False)
    rows = orjson.loads(cli(home, "models", "list", "--json", env={"XYLEN_MODEL_MAX_AGE": "7d"}).output)
    assert [(r["version"], r.get("stale")) for r in rows] == [("v0001", False), ("v0002", None)]
    assert "stale" in rows[0] and "stale" not in rows[1]  # the flag is on live rows only
    edit_manifest(home, "v0001", lambda m: setattr(m, "created_at", "2024-01-01T00:00:00Z"))
    rows = orjson.loads(cli(home, "models", "list", "--json", env={"XYLEN_MODEL_MAX_AGE": "7d"}).output)
    assert rows[0]["stale"] is True
    table = cli(home, "models", "list", env={"XYLEN_MODEL_MAX_AGE": "7d"}).output
    assert "stale" in table and "STALE" in table.split("v0001", 1)[1].split("\n", 1)[0]
    rows = orjson.loads(cli(home, "models", "list", "--json", env={"XYLEN_MODEL_MAX_AGE": "100000d"}).output)
    assert rows[0]["stale"] is False  # the max age decides
    reg.promote(NAME, "v0002")  # a newer version: fresh again
    rows = orjson.loads(cli(home, "models", "list", "--json", env={"XYLEN_MODEL_MAX_AGE": "12h"}).output)
    assert [(r["version"], r.get("stale")) for r in rows] == [("v0001", None), ("v0002", False)]
    res = cli(home, "models", "list", env={"XYLEN_MODEL_MAX_AGE": "soon"})
    assert res.exit_code == 2 and "soon" in res.output


def test_models_show_prints_the_watch_record_and_age(home, candles):
    promote_at(home, "v0001", int(candles["open_time"][PROMOTED]))
    rec = record(home)
    res = cli(home, "models", "show", NAME)
    assert res.exit_code == 0, res.output
    out = res.output
    assert f"watch since {rec['promoted_at']}" in out and f"{rec['rows']} candles scored" in out
    assert f"live model: AUC {rec['model']['auc']:.4f}" in out
    assert f"volatility baseline: AUC {rec['volatility_baseline']['auc']:.4f}" in out
    assert f"hit rate {rec['model']['hit_rate']:.3f} on {rec['model']['signals']} signals" in out
    assert "(max 7.0 d, XYLEN_MODEL_MAX_AGE): fresh" in out
    shown = orjson.loads(cli(home, "models", "show", NAME, "--json").output)
    assert shown["watch"] == rec and shown["version"] == "v0001"
    assert shown["staleness"]["stale"] is False and shown["staleness"]["max_age_seconds"] == 7 * 86400.0
    edit_manifest(home, "v0001", lambda m: setattr(m, "created_at", "2024-01-01T00:00:00Z"))
    assert "STALE: retrain it" in cli(home, "models", "show", NAME).output
    assert orjson.loads(cli(home, "models", "show", NAME, "--json").output)["staleness"]["stale"] is True


def test_models_show_of_an_older_version_has_no_watch(home, candles):
    reg = registry(home)
    promote_at(home, "v0001", int(candles["open_time"][PROMOTED]))
    record(home)
    reg.promote(NAME, build_bundle(reg, NAME, rows=800, rounds=5, promote=False))
    shown = orjson.loads(cli(home, "models", "show", NAME, "v0001", "--json").output)
    assert shown["watch"] is None and "stale" in shown["staleness"]
    assert "watch" not in cli(home, "models", "show", NAME, "v0001").output


def test_importing_the_watch_module_stays_light():
    """Servers read the record and the staleness: that must not import polars or lightgbm."""
    code = (
        "import sys, xylen.train.watch\n"
        "print(sorted(m for m in ('polars', 'lightgbm', 'pandas', 'sklearn') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]"


# -- other feature sets and labels --------------------------------------------------------------------------------
OLD_LABEL = {"horizon": 6, "threshold": 0.002, "kind": "forward_log_return_above_threshold"}


@pytest.mark.parametrize(
    ("feature_set", "label"),
    [("ohlcv-ctx-v1", {"kind": "direction", "horizon": 6}), ("ohlcv-v2", OLD_LABEL)],
    ids=["context-features-direction", "old-manifest-threshold"],
)
def test_a_model_is_scored_with_its_own_feature_set_and_label(tmp_path, candles, feature_set, label):
    """The watch computes the live model's own feature set (the context set reads 3 days, not 48 candles) and its
    own label (an old manifest's 'forward_log_return_above_threshold' is the threshold label), and its volatility
    baseline sees that set's volatility features."""
    from tests.helpers import heads_home
    from xylen.core import featuresets, labels
    from xylen.train.dataset import arrays_of

    home = tmp_path / "home"
    heads_home(home, new_rows=1500, feature_set=feature_set, label=label, heads=())
    t = candles["open_time"].to_numpy()
    since = int(t[len(t) - 1400])
    promote_at(home, "v0001", since)
    rec = record(home)
    fs = featuresets.get(feature_set, "1h")
    spec = labels.LabelSpec.from_dict(label)
    X = fs.frame(arrays_of(candles))
    y_all = labels.make(candles["close"].to_numpy(), spec)
    rows = np.flatnonzero((t >= since) & ~np.isnan(y_all))  # the series has no gaps
    y = y_all[rows]
    p = lgb.Booster(model_file=str(home / "models" / NAME / "v0001" / "model.txt")).predict(X[rows])
    assert rec["rows"] == len(rows) > 1300 and rec["base_rate"] == pytest.approx(y.mean())
    assert rec["model"]["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert rec["volatility_baseline"] is not None and rec["note"] is None
    m = read_manifest(home / "models" / NAME / "v0001")
    booster, why = watch.baseline(settings_for(home), Store(home / "data"), m)  # the cached one
    assert why is None and booster.num_feature() == len(fs.volatility)
    p_vol = booster.predict(np.ascontiguousarray(X[rows][:, fs.indices(fs.volatility)]))
    assert rec["volatility_baseline"]["auc"] == pytest.approx(roc_auc_score(y, p_vol), abs=1e-12)
