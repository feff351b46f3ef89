"""train/honesty.py: the verdict follows the interval, the sentence says what each head knows, trades never span a
gap."""

from __future__ import annotations

import numpy as np
import pytest

from xylen.train import honesty
from xylen.train.bootstrap import Interval
from xylen.train.dataset import Dataset

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("low", "high", "word"),
    [(0.001, 0.01, "measurable"), (-0.002, 0.01, "none measurable"), (0.0, 0.01, "none measurable"),
     (-0.01, -0.001, "below the baseline"),
     (float("nan"), float("nan"), "not measurable (too few days for an interval)")],
)
def test_the_verdict_follows_the_interval(low, high, word):
    assert honesty.verdict(Interval(0.004, low, high, 30, 2000)) == word


def _head(kind, auc, edge, lo, hi, verdict, base="range_12", primary=False):
    iv = {"value": auc, "low": auc - 0.01, "high": auc + 0.01}
    return {"kind": kind, "primary": primary, "field": "probability", "auc": iv, "auc_up": iv,
            "baseline": {"name": base, "auc": 0.5}, "edge": {"value": edge, "low": lo, "high": hi}, "verdict": verdict}


def test_the_sentence_names_move_size_first_then_direction_then_what_trading_it_earned():
    heads = [_head("direction", 0.52, 0.004, -0.002, 0.010, "none measurable", primary=True),
             _head("move", 0.73, 0.008, 0.006, 0.011, "measurable", "volatility_learner")]
    bt = {"model": {"trades": 120, "gross_bp": 1.5, "net_bp": -18.5, "t_stat": -3.2}, "signal": "probability",
          "entry_threshold": 0.5, "horizon": 6}
    s = honesty.sentence(heads, bt)
    assert s.startswith("forecasts move size (AUC 0.73 [0.72, 0.74]; +0.008 [+0.006, +0.011] over the volatility-only")
    assert "direction AUC 0.520 [0.510, 0.530], edge +0.004 [-0.002, +0.010] over the mean 12-candle range: none " \
           "measurable" in s
    assert s.endswith("+1.5 bp gross, -18.5 bp net of fees per trade (120 trades, t -3.2)")
    quiet = {"model": {"trades": 0}, "signal": "probability", "entry_threshold": 0.9, "horizon": 6}
    assert honesty.sentence(heads[:1], quiet).endswith("its signal (probability >= 0.9) never fired out of sample")
    no_auc = _head("threshold", 0.6, 0.0, None, None, "not measurable (too few days for an interval)")
    no_auc["auc"] = {"value": None, "low": None, "high": None}
    assert "AUC n/a" in honesty.sentence([no_auc])


def test_a_trade_is_held_only_where_the_next_n_candles_follow_without_a_gap():
    n = 12
    contiguous_next = np.ones(n, dtype=bool)
    contiguous_next[5] = False  # candle 6 does not follow candle 5
    ds = Dataset(np.arange(n), np.ones(n), np.zeros((n, 1)), np.zeros(n), np.ones(n, bool), contiguous_next, 1)
    ok = honesty.can_hold(ds, 3)
    # i..i+3 must not cross 5->6, and i+3 must exist
    assert ok.tolist() == [True, True, True, False, False, False, True, True, True, False, False, False]


def test_the_edge_is_measured_against_the_strongest_baseline_on_the_same_rows():
    """README: the baseline is the strongest of the fitted volatility learner and the raw features, and the edge is
    AUC(model) - AUC(that baseline) with its paired interval; the up-vs-down AUC scores the same probabilities."""
    from xylen.core.labels import LabelSpec
    from xylen.train import bootstrap, metrics
    from xylen.train.evaluate import HeadScores

    rng = np.random.default_rng(2)
    n = 40 * 48
    open_time = np.arange(n, dtype=np.int64) * 1_800_000  # 30m candles: 48 a day, 40 days
    fold = 1 + np.arange(n) * 4 // n
    y = (rng.random(n) < 0.3).astype(float)
    up = (rng.random(n) < 0.5).astype(float)
    scores = {"model": y + rng.normal(0, 1.0, n), "volatility_learner": y + rng.normal(0, 3.0, n),
              "range_12": y + rng.normal(0, 1.2, n), "vol_48": rng.normal(0, 1.0, n)}
    rec = honesty.assess_head(HeadScores("primary", y, scores), LabelSpec(kind="threshold"), up, open_time, fold,
                              True)
    fold_mean = {k: np.mean([metrics.auc(y[fold == f], s[fold == f]) for f in range(1, 5)]) for k, s in scores.items()}
    assert rec["baseline"]["name"] == "range_12" == max(set(fold_mean) - {"model"}, key=fold_mean.__getitem__)
    assert rec["edge"]["value"] == pytest.approx(fold_mean["model"] - fold_mean["range_12"])
    want = bootstrap.auc_edge_interval(y, scores["model"], scores["range_12"], open_time, fold).to_dict()
    assert rec["edge"] == want and rec["verdict"] == honesty.verdict(Interval(want["value"], want["low"],
                                                                             want["high"], 0, 0))
    assert rec["auc_up"]["value"] == pytest.approx(np.mean([metrics.auc(up[fold == f], scores["model"][fold == f])
                                                            for f in range(1, 5)]))


def _scored(kinds):
    """A Dataset and an Evaluation whose heads (primary first) are scored on 20 days of 30m candles."""
    from xylen.core.featuresets import OHLCV_V2
    from xylen.train.evaluate import Evaluation, HeadScores

    rng = np.random.default_rng(4)
    n = 20 * 48
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.003, n)))
    X = np.abs(rng.normal(size=(n, OHLCV_V2.n_features)))
    up = np.append((close[6:] > close[:-6]).astype(float), np.full(6, np.nan))
    ds = Dataset(np.arange(n, dtype=np.int64) * 1_800_000, close, X, up.copy(), ~np.isnan(up), np.ones(n, bool),
                 1_800_000, OHLCV_V2, up)
    idx = np.arange(n // 2, n - 6)
    fold = 1 + (idx - idx[0]) * 2 // len(idx)
    heads = []
    for kind in kinds:
        y = (rng.random(len(idx)) < 0.4).astype(float)
        s = {"model": rng.random(len(idx)), "volatility_learner": rng.random(len(idx)),
             "range_12": rng.random(len(idx)), "vol_48": rng.random(len(idx))}
        heads.append(HeadScores(kind, y, s))
    return ds, Evaluation([], idx, heads[0].scores["model"], {}, fold, heads)


def test_the_backtest_trades_the_head_whose_1_means_up_and_a_move_model_alone_has_none():
    from xylen.core.labels import LabelSpec

    move, direction = LabelSpec(kind="move"), LabelSpec(kind="direction")
    ds, ev = _scored(["primary"])
    rec, bt = honesty.assess(ds, ev, move, fee=0.001, entry_threshold=0.5)
    assert rec["backtest"] is None and bt is None and "bp" not in rec["sentence"]  # |move| says nothing of the sign
    ds, ev = _scored(["primary", "direction"])
    rec, bt = honesty.assess(ds, ev, move, (direction,), fee=0.001, entry_threshold=0.5)
    assert rec["backtest"]["signal"] == "up_probability" and bt is not None
    assert [h["field"] for h in rec["heads"]] == ["probability", "up_probability"]
    ds, ev = _scored(["primary", "move"])
    rec, _ = honesty.assess(ds, ev, LabelSpec(kind="threshold"), (move,), fee=0.001, entry_threshold=0.5)
    assert rec["backtest"]["signal"] == "probability"
    assert rec["sentence"].startswith("forecasts move size")  # move size first, whatever the primary
