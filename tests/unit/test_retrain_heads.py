"""`xylen retrain` of models with extra heads, other labels and feature sets: what it keeps, and the per-head gate."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import lightgbm
import numpy as np
import orjson
import pytest
from typer.testing import CliRunner

from tests.helpers import heads_home
from xylen.cli import app
from xylen.core import labels
from xylen.core.bundle import load_bundle, read_manifest, write_manifest
from xylen.core.registry import Registry
from xylen.core.settings import Settings, load_settings
from xylen.core.store import Store
from xylen.core.summary import sentence
from xylen.train import candidate, gate
from xylen.train.retrain import RetrainOptions, retrain

pytestmark = pytest.mark.unit
runner = CliRunner()
NAME = "btcusdt-1h"
ENV = {"XYLEN_RETRAIN_HOLDOUT": "500"}
# the label `xylen train` wrote before labels were a choice (xylen 0.1): the alpha's threshold label
OLD_LABEL = {
    "horizon": 6,
    "threshold": 0.002,
    "kind": "forward_log_return_above_threshold",
    "description": "1 if log(close[t+6] / close[t]) > 0.002, else 0",
}


@pytest.fixture(scope="module")
def two_head_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A live direction model with a move head (P(|6h return| > 1%)) on ohlcv-v2, 1,200 new candles in the store."""
    home = tmp_path_factory.mktemp("heads") / "home"
    heads_home(home)
    return home


@pytest.fixture
def home(two_head_base: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "home"
    shutil.copytree(two_head_base, copy)
    return copy


def settings(home: Path, **kw: Any) -> Settings:
    return load_settings({"home": home, "retrain_holdout": 500, **kw}, environ={})


def reg(home: Path) -> Registry:
    return Registry(home / "models")


def append_hours(home: Path, n: int) -> None:
    """``n`` new closed candles after the last one in the store (copies of it, an hour apart)."""
    import polars as pl

    store = Store(home / "data")
    last = store.read("BTCUSDT", "1h").tail(1)
    store.append(
        "BTCUSDT",
        "1h",
        pl.concat([last.with_columns(open_time=last["open_time"] + 3_600_000 * (i + 1)) for i in range(n)]),
    )


def live(home: Path) -> str | None:
    ptr = reg(home).current(NAME)
    return ptr.version if ptr else None


def specs(home: Path, version: str) -> tuple[labels.LabelSpec, list[labels.LabelSpec]]:
    m = reg(home).manifest(NAME, version)
    return labels.LabelSpec.from_dict(m.label), [labels.LabelSpec.from_dict(h.label) for h in m.heads]


def booster(home: Path, version: str, file: str) -> lightgbm.Booster:
    return lightgbm.Booster(model_file=str(reg(home).path(NAME, version) / file))


def test_a_full_refit_keeps_the_heads_label_and_feature_set_and_gates_each_head(home: Path) -> None:
    (res,) = retrain(settings(home, retrain_tolerance=0.5), RetrainOptions()).results
    assert res.outcome == "promoted" and res.candidate_version == "v0002", res.message
    old, new = reg(home).manifest(NAME, "v0001"), reg(home).manifest(NAME, "v0002")
    assert specs(home, "v0002") == specs(home, "v0001")
    assert specs(home, "v0002")[1] == [labels.LabelSpec(kind="move", horizon=6, threshold=0.01)]
    assert new.feature_set == old.feature_set
    # a real refit of each head (its own trees, its own labels), verified and served like the primary
    bundle = load_bundle(reg(home).path(NAME, "v0002"))
    assert [f for f, _ in bundle.heads] == ["move_probability"]
    assert set(bundle.outputs()) == {"probability", "up_probability", "move_probability"}
    head = new.heads[0]
    assert head.artifact.sha256 != old.heads[0].artifact.sha256
    assert booster(home, "v0002", head.artifact.file).num_trees() == 60  # the live head's count, recorded
    assert head.metrics["num_boost_round"] == 60 and 0.5 < head.metrics["auc_holdout"] < 1
    # the move head is scored on move labels against the live move head (like with like), not the direction model
    g = new.model_extra["gate"]
    move = g["heads"]["move"]
    assert move["head"] == "move" and move["compared_with"] == "live" and move["decision"] == "promote"
    assert g["primary"] == {"kind": "direction", "decision": "promote", "reason": g["primary"]["reason"]}
    assert g["decision"] == "promote" and g["failed_heads"] == []
    same = ("rows", "first_open_time", "last_open_time", "days", "purged")
    assert [move["holdout"][k] for k in same] == [g["holdout"][k] for k in same]  # the same candles...
    assert move["holdout"]["positive_rate"] != g["holdout"]["positive_rate"]  # ...with their own labels
    assert move["live"]["logloss"] != g["live"]["logloss"]
    assert "move head passed" in g["reason"] and "primary (direction) head passed" in g["reason"]


def test_the_move_head_is_scored_on_move_labels_against_the_live_move_head(home: Path) -> None:
    """The gate record of the move head equals one computed independently from the two move boosters."""
    (res,) = retrain(settings(home, retrain_tolerance=0.5), RetrainOptions()).results
    assert res.gate is not None
    move = res.gate["heads"]["move"]
    frame = Store(home / "data").read("BTCUSDT", "1h")
    from xylen.train.dataset import build

    ds = build(frame, "1h", labels.LabelSpec(kind="direction"), extra=(labels.LabelSpec(kind="move", threshold=0.01),))
    t = ds.open_time
    hold = np.flatnonzero((t >= move["holdout"]["first_open_time"]) & (t <= move["holdout"]["last_open_time"]))
    hold = hold[ds.valid[hold]]
    assert len(hold) == move["holdout"]["rows"]
    y = ds.heads["move"][hold]
    p_live = booster(home, "v0001", "head-move.txt").predict(ds.X[hold])
    p_cand = booster(home, "v0002", "head-move.txt").predict(ds.X[hold])
    from xylen.train import metrics

    assert move["live"]["logloss"] == pytest.approx(metrics.logloss(y, p_live), abs=1e-12)
    assert move["candidate"]["logloss"] == pytest.approx(metrics.logloss(y, p_cand), abs=1e-12)
    assert move["holdout"]["positive_rate"] == pytest.approx(y.mean())


def test_a_warm_start_continues_every_head_from_the_live_heads_trees(home: Path) -> None:
    s = settings(home, retrain_tolerance=0.5)
    (res,) = retrain(s, RetrainOptions(mode="warm")).results
    assert res.outcome == "promoted" and res.mode == "warm", res.message
    assert specs(home, "v0002") == specs(home, "v0001")
    X = np.asarray(read_manifest(reg(home).path(NAME, "v0001")).golden.rows, dtype=np.float64)
    for file in ("model.txt", "head-move.txt"):
        parent, child = booster(home, "v0001", file), booster(home, "v0002", file)
        assert child.num_trees() == parent.num_trees() + s.retrain_warm_rounds
        # the child's first trees are the parent's: it continued the live head, it did not start afresh
        np.testing.assert_allclose(child.predict(X, num_iteration=parent.num_trees()), parent.predict(X), atol=1e-12)
    m = reg(home).manifest(NAME, "v0002")
    assert m.heads[0].metrics["num_boost_round"] == 60 + s.retrain_warm_rounds


def shuffle_the_nth_fit(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """The ``n``-th lightgbm.train call of the run (0: the primary, 1: the first extra head) fits shuffled labels."""
    real, calls = lightgbm.train, [0]

    def train(params: dict[str, Any], data: lightgbm.Dataset, *a: Any, **kw: Any) -> Any:
        if calls[0] == n:
            y = np.asarray(data.get_label()).copy()
            np.random.default_rng(0).shuffle(y)
            data.set_label(y)
        calls[0] += 1
        return real(params, data, *a, **kw)

    monkeypatch.setattr(lightgbm, "train", train)


def test_a_candidate_whose_move_head_is_worse_is_not_promoted_though_its_primary_passes(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shuffle_the_nth_fit(monkeypatch, 1)
    r = runner.invoke(app, ["--home", str(home), "retrain", "--json"], env=ENV | {"XYLEN_RETRAIN_TOLERANCE": "0.005"})
    assert r.exit_code == 0, r.output
    (res,) = orjson.loads(r.stdout)["results"]
    assert res["outcome"] == "kept" and live(home) == "v0001"
    g = res["gate"]
    assert g["primary"]["decision"] == "promote"  # the direction model alone would have been promoted
    assert g["heads"]["move"]["decision"] == "keep" and g["decision"] == "keep" and g["failed_heads"] == ["move"]
    assert "refused: move head FAILED: candidate log-loss" in res["message"]
    assert "primary (direction) head passed" in res["message"]
    # the refused candidate is a version like any other, with its heads and every head's gate record
    m = reg(home).manifest(NAME, "v0002")
    assert len(m.heads) == 1 and m.model_extra["gate"]["heads"]["move"]["decision"] == "keep"
    load_bundle(reg(home).path(NAME, "v0002"))
    # the CLI table shows each head's decision and scores
    monkeypatch.undo()
    shutil.rmtree(reg(home).path(NAME, "v0002"))  # run again on the same candles, with the honest head
    shuffle_the_nth_fit(monkeypatch, 1)
    human = runner.invoke(app, ["--home", str(home), "retrain"], env=ENV | {"COLUMNS": "300"})
    assert human.exit_code == 0, human.output
    assert "move head: keep: log-loss candidate" in human.output
    assert "primary (direction) head: promote: log-loss candidate" in human.output


def test_a_worse_primary_with_a_good_head_is_not_promoted_either(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shuffle_the_nth_fit(monkeypatch, 0)
    (res,) = retrain(settings(home, retrain_tolerance=0.005), RetrainOptions()).results
    assert res.outcome == "kept" and res.gate is not None
    assert res.gate["failed_heads"] == ["primary"] and res.gate["heads"]["move"]["decision"] == "promote"
    assert "primary (direction) head FAILED" in res.message and live(home) == "v0001"


def test_an_unreadable_live_head_is_compared_with_the_base_rate_and_the_run_says_so(home: Path) -> None:
    art = reg(home).path(NAME, "v0001") / "head-move.txt"
    os.chmod(art, 0o644)
    art.write_bytes(art.read_bytes()[:-300])
    # a damaged live version is no reason to wait for new candles, nor can its heads be continued
    r = runner.invoke(
        app, ["--home", str(home), "retrain", "--json", "--warm-start", "--min-new-samples", "5000"], env=ENV
    )
    (res,) = orjson.loads(r.stdout)["results"]
    assert r.exit_code == 4, r.output
    assert res["outcome"] == "promoted" and live(home) == "v0002"
    assert res["mode"] == "full" and "a live head is unreadable, so there is nothing to continue" in res["message"]
    g = res["gate"]
    assert g["heads"]["move"]["compared_with"] == "base_rate" and g["compared_with"] == "live"
    assert "the constant base rate (the live move head is unreadable)" in g["heads"]["move"]["reason"]
    assert "move head" in res["error"]["message"] and "v0001 was unreadable" in res["error"]["message"]
    load_bundle(reg(home).path(NAME, "v0002"))  # the new live version serves both heads


def test_a_head_whose_label_this_xylen_does_not_read_is_skipped_with_the_reason(home: Path) -> None:
    folder = reg(home).path(NAME, "v0001")
    m = read_manifest(folder)
    m.heads[0].label["kind"] = "volatility-regime"
    write_manifest(folder, m)
    r = runner.invoke(app, ["--home", str(home), "retrain", NAME], env=ENV)
    assert r.exit_code == 4 and "volatility-regime" in r.output and "Traceback" not in r.output
    body = orjson.loads(runner.invoke(app, ["--home", str(home), "retrain", "--all", "--json"], env=ENV).stdout)
    (res,) = body["results"]
    assert res["outcome"] == "skipped" and "volatility-regime" in res["message"] and body["exit_code"] == 0
    assert reg(home).versions(NAME) == ["v0001"]


@pytest.mark.parametrize(
    ("edit", "why"),
    [("threshold", "has no /predict field"), ("duplicate", "duplicates another head"),
     ("primary-kind", "duplicates another head")],
)
def test_heads_a_server_would_refuse_are_skipped_before_any_training(home: Path, edit: str, why: str) -> None:
    """A hand-edited live manifest whose heads no server loads (a head without a /predict field, two heads of one
    field, a head of the primary's own field): retrain used to train a full candidate, then fail publishing it
    (exit 4 naming a staging folder under .tmp)."""
    folder = reg(home).path(NAME, "v0001")
    m = read_manifest(folder)
    if edit == "duplicate":
        m.heads.append(m.heads[0].model_copy(deep=True))
        m.heads[1].label["horizon"] = 3
    else:
        m.heads[0].label["kind"] = "threshold" if edit == "threshold" else "direction"
    write_manifest(folder, m)
    body = orjson.loads(runner.invoke(app, ["--home", str(home), "retrain", "--all", "--json"], env=ENV).stdout)
    (res,) = body["results"]
    assert res["outcome"] == "skipped" and why in res["message"] and body["exit_code"] == 0, res
    assert ".tmp" not in res["message"] and res["samples_used"] == 0
    r = runner.invoke(app, ["--home", str(home), "retrain", NAME], env=ENV)
    assert r.exit_code == 4 and why in r.output and "Traceback" not in r.output
    assert reg(home).versions(NAME) == ["v0001"]


def test_a_feature_set_this_xylen_does_not_compute_is_skipped_with_the_reason(home: Path) -> None:
    folder = reg(home).path(NAME, "v0001")
    m = read_manifest(folder)
    m.feature_set.version = "ohlcv-v9"
    write_manifest(folder, m)
    body = orjson.loads(runner.invoke(app, ["--home", str(home), "retrain", "--all", "--json"], env=ENV).stdout)
    (res,) = body["results"]
    assert res["outcome"] == "skipped" and "'ohlcv-v9'" in res["message"] and "xylen train" in res["message"]
    assert reg(home).versions(NAME) == ["v0001"]


def test_an_old_manifest_with_the_alphas_label_and_no_heads_still_retrains(tmp_path: Path) -> None:
    home = tmp_path / "home"
    heads_home(home, label=OLD_LABEL, heads=(), metrics={"auc_mean": 0.66, "auc_edge_vs_volatility": 0.004})
    (res,) = retrain(settings(home, retrain_tolerance=0.5), RetrainOptions()).results
    assert res.outcome == "promoted", res.message
    new = reg(home).manifest(NAME, "v0002")
    # the same label, now in today's spelling (with what it predicts), and still no heads
    assert labels.LabelSpec.from_dict(new.label) == labels.LabelSpec(kind="threshold", horizon=6, threshold=0.002)
    assert new.label["kind"] == "threshold" and "rises more than 0.2%" in new.label["predicts"]
    assert new.heads == [] and res.gate is not None and "heads" not in res.gate
    # its labels are the threshold labels: the holdout's positive rate is theirs, not the direction label's
    frame = Store(home / "data").read("BTCUSDT", "1h")
    close = frame["close"].to_numpy()
    t = frame["open_time"].to_numpy()
    h = res.gate["holdout"]
    idx = np.flatnonzero((t >= h["first_open_time"]) & (t <= h["last_open_time"]))
    y = np.log(close[idx + 6] / close[idx]) > 0.002
    assert h["positive_rate"] == pytest.approx(y.mean())
    assert res.watch is not None  # the watch reads the old label too


def test_a_model_on_the_context_feature_set_retrains_on_it(tmp_path: Path) -> None:
    home = tmp_path / "home"
    heads_home(home, feature_set="ohlcv-ctx-v1")
    s = settings(home, retrain_tolerance=0.5)
    (full,) = retrain(s, RetrainOptions()).results
    assert full.outcome == "promoted", full.message
    m = reg(home).manifest(NAME, "v0002")
    assert m.feature_set.version == "ohlcv-ctx-v1" and len(m.feature_set.names) == 34
    assert "dvol_1d" in m.feature_set.names and len(m.heads) == 1
    assert len(m.golden.window or []) == 73  # 3 days of 1h candles + 1: the serving window of this set
    bundle = load_bundle(reg(home).path(NAME, "v0002"))
    assert bundle.min_candles == 73 and bundle.features is not None and bundle.features.version == "ohlcv-ctx-v1"
    assert full.watch is not None
    # a warm start computes the context features of the newest rows only: its lookback is 3 days, not 48 candles
    append_hours(home, 150)
    (warm,) = retrain(s, RetrainOptions(mode="warm", min_new_samples=100)).results
    assert warm.outcome == "promoted" and warm.mode == "warm", warm.message
    assert reg(home).manifest(NAME, "v0003").feature_set.version == "ohlcv-ctx-v1"


def test_combine_without_heads_is_the_primary_record_unchanged() -> None:
    rec = {"decision": "keep", "reason": "r"}
    assert gate.combine(rec, {}, "direction") is rec
    both = gate.combine(
        {"decision": "promote", "reason": "a"}, {"move": {"decision": "keep", "reason": "b"}}, "threshold"
    )
    assert both["decision"] == "keep" and both["reason"] == "move head FAILED: b; primary (threshold) head passed: a"
    assert candidate.PRIMARY == "primary"


def test_a_model_made_by_xylen_train_with_a_head_and_context_features_keeps_them(tmp_path: Path) -> None:
    """`xylen train --label direction --extra-head move --features ohlcv-ctx-v1`, then `xylen retrain --warm-start`:
    the candidate has the same label, head and feature set, and carries the walk-forward record it was made with."""
    from tests.helpers import retrain_home

    home = tmp_path / "home"
    retrain_home(home, label="direction", extra_head="move", feature_set="ohlcv-ctx-v1")
    old = reg(home).manifest(NAME, "v0001")
    assert old.feature_set.version == "ohlcv-ctx-v1" and [h.label["kind"] for h in old.heads] == ["move"]
    r = runner.invoke(
        app, ["--home", str(home), "retrain", "--warm-start", "--json"], env=ENV | {"XYLEN_RETRAIN_TOLERANCE": "0.5"}
    )
    assert r.exit_code == 0, r.output
    (res,) = orjson.loads(r.stdout)["results"]
    assert res["outcome"] == "promoted" and res["mode"] == "warm", res["message"]
    new = reg(home).manifest(NAME, "v0002")
    assert specs(home, "v0002") == specs(home, "v0001") and new.feature_set == old.feature_set
    assert new.metrics["honesty"] == old.metrics["honesty"] | {"version": "v0001"}  # the walk-forward it inherits
    assert "(walk-forward of v0001; retrained since" in sentence(new)
    for file in ("model.txt", "head-move.txt"):
        assert booster(home, "v0002", file).num_trees() == booster(home, "v0001", file).num_trees() + 50
    assert set(load_bundle(reg(home).path(NAME, "v0002")).outputs()) == {
        "probability",
        "up_probability",
        "move_probability",
    }
    # a retrain of a retrained version inherits the same walk-forward, still named by the version it evaluated
    append_hours(home, 150)
    (again,) = retrain(settings(home, retrain_tolerance=0.5), RetrainOptions(min_new_samples=100)).results
    assert again.outcome == "promoted", again.message
    assert reg(home).manifest(NAME, "v0003").metrics["honesty"]["version"] == "v0001"


@pytest.mark.parametrize(
    ("label", "head"),
    [
        ({"kind": "direction", "horizon": 6}, {"kind": "move", "horizon": 12, "threshold": 0.015}),
        ({"kind": "triple-barrier", "horizon": 6, "threshold": 0.004}, {"kind": "direction", "horizon": 6}),
    ],
    ids=["head-looks-further-ahead", "triple-barrier-with-direction-head"],
)
def test_other_labels_and_a_head_with_a_longer_horizon_retrain(
    tmp_path: Path, label: dict[str, Any], head: dict[str, Any]
) -> None:
    """The purge covers the head that looks furthest ahead (no training label of any head reads the holdout), and a
    triple-barrier label (which reads highs and lows) keeps its definition."""
    home = tmp_path / "home"
    heads_home(home, label=label, heads=(head,))
    (res,) = retrain(settings(home, retrain_tolerance=0.5), RetrainOptions()).results
    assert res.outcome == "promoted" and res.gate is not None, res.message
    horizon = max(label["horizon"], head["horizon"])
    assert res.gate["holdout"]["purged"] == horizon
    m = reg(home).manifest(NAME, "v0002")
    assert m.training_window is not None
    assert m.training_window.last_open_time + horizon * 3_600_000 < res.gate["holdout"]["first_open_time"]
    # the same definitions (a triple-barrier's default lower barrier is written out explicitly: compare the dicts)
    (p_old, h_old), (p_new, h_new) = specs(home, "v0001"), specs(home, "v0002")
    assert p_new.to_dict() == p_old.to_dict() and [h.to_dict() for h in h_new] == [h.to_dict() for h in h_old]
    assert res.gate["heads"][head["kind"]]["decision"] == "promote"


@pytest.mark.parametrize("recorded", [10**9, -5, "many", True, None])
def test_a_heads_hostile_tree_count_falls_back_to_the_trees_it_has(home: Path, recorded: Any) -> None:
    """A hand-edited head's num_boost_round is not a reason to fit a billion trees, nor to crash."""
    folder = reg(home).path(NAME, "v0001")
    m = read_manifest(folder)
    if recorded is None:
        m.heads[0].metrics.pop("num_boost_round")
    else:
        m.heads[0].metrics["num_boost_round"] = recorded
    write_manifest(folder, m)
    (res,) = retrain(settings(home, retrain_tolerance=0.5), RetrainOptions()).results
    assert res.outcome == "promoted", res.message
    assert booster(home, "v0002", "head-move.txt").num_trees() == 60  # the live head's own count
