"""Walk-forward splits are purged; metrics are right; the memory cap cuts the window."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from xylen.core.errors import TrainingError
from xylen.profiles import load
from xylen.train import evaluate, metrics
from xylen.train.pipeline import cap_rows

pytestmark = pytest.mark.unit


@given(
    n=st.integers(3_000, 50_000),
    folds=st.integers(2, 8),
    horizon=st.integers(1, 48),
    holes=st.lists(st.integers(0, 2_999), max_size=30),
)
def test_folds_are_purged_and_ordered(n, folds, horizon, holes):
    rows = np.setdiff1d(np.arange(n), np.array(holes, dtype=int))  # rows left out around gaps
    try:
        splits = evaluate.split(rows, folds, horizon)
    except TrainingError as exc:  # too little data for that many folds: refused, with the fix
        hint = exc.hint
    else:
        hint = None
    if hint is not None:
        assert "fewer folds" in hint
        return
    for fit, val, test, _purged in splits:
        assert fit.max() + horizon < val.min()  # no fitted label reaches the validation slice
        assert val.max() + horizon < test.min()  # no training label reaches the test window
        assert len(np.intersect1d(np.concatenate([fit, val]), test)) == 0


def test_too_few_rows_for_the_folds():
    with pytest.raises(TrainingError, match="too few for 5 walk-forward folds"):
        evaluate.split(np.arange(400), 5, 6)


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 5)), min_size=2, max_size=60))
def test_auc_matches_pairwise_definition(pairs):
    y = np.array([p[0] for p in pairs], dtype=float)
    s = np.array([p[1] for p in pairs], dtype=float)
    pos, neg = s[y == 1], s[y == 0]
    if not len(pos) or not len(neg):
        assert np.isnan(metrics.auc(y, s))
        return
    brute = np.mean([(a > b) + 0.5 * (a == b) for a in pos for b in neg])
    assert metrics.auc(y, s) == pytest.approx(brute)


def test_logloss_and_brier():
    y = np.array([1.0, 0.0, 1.0, 0.0])
    p = np.array([0.9, 0.1, 0.6, 0.4])
    assert metrics.brier(y, p) == pytest.approx((0.01 + 0.01 + 0.16 + 0.16) / 4)
    assert metrics.logloss(y, p) == pytest.approx(-(2 * np.log(0.9) + 2 * np.log(0.6)) / 4)


def test_memory_cap_cuts_the_window():
    prof = load("8gb")
    keep, reason = cap_rows(10_000_000, prof, 300_000)
    assert keep == 365 * 288 and "365-day window" in reason
    from dataclasses import replace

    small = replace(prof, memory_gb=0.4)
    keep, reason = cap_rows(10_000_000, small, 300_000)
    assert keep < 365 * 288 and reason == "the memory cap"
    with pytest.raises(TrainingError, match="leaves room for only"):
        cap_rows(1000, replace(prof, memory_gb=0.3), 300_000)


def test_each_fold_is_binned_on_its_own_training_rows(monkeypatch):
    """LightGBM's bin edges come from the rows a Dataset is built on: no fold may be binned with rows that come
    after its training window (the test window's distribution would leak into training)."""
    import lightgbm as lgb

    from xylen.core import features, labels
    from xylen.train.dataset import Dataset

    rng = np.random.default_rng(0)
    n = 3_000
    X = rng.normal(size=(n, features.N_FEATURES))
    y = (rng.random(n) < 0.3).astype(float)
    ds = Dataset(np.arange(n, dtype=np.int64) * 300_000, np.ones(n), X, y, np.ones(n, bool), np.ones(n, bool), 300_000)
    built: list[tuple[int, bool]] = []
    real = lgb.Dataset

    class Recording(real):  # type: ignore[misc, valid-type]
        def __init__(self, data, *args, **kwargs):
            built.append((len(data), kwargs.get("reference") is not None))
            super().__init__(data, *args, **kwargs)

    monkeypatch.setattr(lgb, "Dataset", Recording)
    from dataclasses import replace

    prof = replace(load("8gb"), num_boost_round=5, early_stopping_rounds=2, threads=1)
    ev = evaluate.walk_forward(ds, prof, 3, labels.LabelSpec().horizon)
    splits = evaluate.split(ds.rows, 3, labels.LabelSpec().horizon)
    binned = [rows for rows, has_ref in built if not has_ref]  # Datasets that compute their own bin edges
    assert binned and max(binned) <= max(len(fit) for fit, *_ in splits) < n
    assert len(ev.folds) == 3


def test_the_shuffled_control_cannot_see_a_leaking_feature():
    """What the README says each guard guards: a feature that reads the future lifts the model to AUC ~1, and the
    shuffled-label control stays at ~0.5 -- so the control is no leak detector (the no-look-ahead test is)."""
    from dataclasses import replace

    from xylen.core import features, labels
    from xylen.train.dataset import Dataset

    rng = np.random.default_rng(1)
    n = 6_000
    close = np.exp(np.cumsum(rng.normal(0, 0.003, n))) * 100
    spec = labels.LabelSpec()
    y = labels.make(close, spec)
    X = rng.normal(size=(n, features.N_FEATURES))
    X[:, 0] = labels.forward_returns(close, spec.horizon)  # the planted leak: the very return the label measures
    valid = ~np.isnan(y) & ~np.isnan(X[:, 0])
    ds = Dataset(np.arange(n, dtype=np.int64) * 300_000, close, X, y, valid, np.ones(n, bool), 300_000)
    prof = replace(load("8gb"), num_boost_round=60, early_stopping_rounds=10, threads=1, min_data_in_leaf=20)
    ev = evaluate.walk_forward(ds, prof, 3, spec.horizon)
    assert ev.mean("auc") > 0.95
    assert abs(ev.mean("auc_shuffled") - 0.5) < 0.05


def test_the_volatility_learner_of_the_context_set_sees_its_daily_volatility():
    """The baseline must know every volatility feature the model knows: a label driven by the daily volatility alone
    (dvol_1d, a context feature) is no edge over volatility. With the baseline blind to dvol_1d, the model would
    show an edge of ~0.3 AUC that is pure volatility -- the overclaim the strongest-baseline rule exists to stop."""
    from dataclasses import replace

    from xylen.core import featuresets
    from xylen.train.dataset import Dataset

    fs = featuresets.get(featuresets.CTX_VERSION, "1h")
    assert set(fs.volatility) >= {"dvol_1d", *featuresets.OHLCV_V2.volatility}
    rng = np.random.default_rng(3)
    n = 4_000
    X = rng.normal(size=(n, fs.n_features))  # noise, but for the daily volatility
    dvol = X[:, fs.names.index("dvol_1d")]
    y = (dvol + rng.normal(0, 0.5, n) > 0.3).astype(float)
    ds = Dataset(np.arange(n, dtype=np.int64) * 3_600_000, np.ones(n), X, y, np.ones(n, bool), np.ones(n, bool),
                 3_600_000, fs)
    prof = replace(load("8gb"), num_boost_round=60, early_stopping_rounds=10, threads=1, min_data_in_leaf=20)
    ev = evaluate.walk_forward(ds, prof, 2, 6)
    scores = ev.heads[0].scores
    y_test = ev.heads[0].y
    model, learner = metrics.auc(y_test, scores["model"]), metrics.auc(y_test, scores["volatility_learner"])
    assert model > 0.75
    assert learner > model - 0.03  # the baseline knows what the model knows: no edge


def test_a_raw_volatility_baseline_is_oriented_on_training_rows_never_on_the_test_window():
    """README: each raw baseline has "its sign chosen on training rows only". A feature that ranks the label one way
    in training and the other way in the test window must score below 0.5 there: choosing its sign on the test
    window would flatter the baseline with hindsight (and is not what is documented)."""
    from dataclasses import replace

    from xylen.core.featuresets import OHLCV_V2
    from xylen.train.dataset import Dataset

    rng = np.random.default_rng(5)
    n = 6_000
    X = rng.normal(size=(n, OHLCV_V2.n_features))
    y = (rng.random(n) < 0.4).astype(float)
    col = OHLCV_V2.names.index("range_12")
    sign = np.where(np.arange(n) < 4_000, 1.0, -1.0)  # fold 1 tests rows 2000..3999, fold 2 rows 4000..5999
    X[:, col] = sign * (y + rng.normal(0, 0.5, n))
    ds = Dataset(np.arange(n, dtype=np.int64) * 300_000, np.ones(n), X, y, np.ones(n, bool), np.ones(n, bool),
                 300_000)
    prof = replace(load("8gb"), num_boost_round=5, early_stopping_rounds=2, threads=1)
    ev = evaluate.walk_forward(ds, prof, 2, 6)
    head = ev.heads[0]
    by_fold = [metrics.auc(head.y[ev.test_fold == k], head.scores["range_12"][ev.test_fold == k]) for k in (1, 2)]
    assert by_fold[0] > 0.8 and by_fold[1] < 0.2
