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
