"""The retrain gate's arithmetic: the purged holdout, the decision rule and the day-block bootstrap interval."""

from __future__ import annotations

import numpy as np
import pytest

from xylen.train import gate, metrics

pytestmark = pytest.mark.unit
HOUR = 3_600_000


def test_holdout_is_max_of_the_minimum_and_a_tenth_of_the_window() -> None:
    assert gate.holdout_size(10_000, 2000) == 2000
    assert gate.holdout_size(100_000, 2000) == 10_000
    assert gate.holdout_size(100_001, 2000) == 10_001


def test_split_purges_the_rows_whose_labels_reach_into_the_holdout() -> None:
    rows = np.arange(50, 1050)  # dataset row indices
    sp = gate.split(rows, horizon=6, size=200)
    assert len(sp.holdout) == 200 and sp.holdout[0] == 850
    assert sp.purged == 6 and sp.train[-1] == 843  # 843 + 6 = 849 < 850: its label ends before the holdout
    assert (sp.train + 6 < sp.holdout[0]).all()


def test_a_constant_difference_has_a_zero_width_interval() -> None:
    t = np.arange(24 * 20) * HOUR
    lo, hi, days = gate.day_block_interval(np.full(len(t), 0.01), t)
    assert days == 20 and lo == pytest.approx(0.01) and hi == pytest.approx(0.01)


def test_one_day_gives_no_interval() -> None:
    lo, hi, days = gate.day_block_interval(np.ones(24), np.arange(24) * HOUR)
    assert days == 1 and np.isnan(lo) and np.isnan(hi)


def test_the_interval_covers_the_true_mean_about_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(1)
    t = np.arange(24 * 40) * HOUR
    covered = 0
    trials = 200
    for k in range(trials):
        diff = 0.002 + rng.normal(0, 0.05, len(t))
        lo, hi, _ = gate.day_block_interval(diff, t, resamples=500, seed=k)
        covered += lo <= 0.002 <= hi
    assert 0.88 <= covered / trials <= 0.99


@pytest.mark.parametrize("days", [3, 7])
def test_the_interval_keeps_its_95_percent_over_the_few_days_of_a_default_holdout(days: int) -> None:
    """2,000 5m candles (the default holdout) are 7 days, 2,000 1m candles 2-3: a plain percentile bootstrap over so
    few blocks covered ~87% and ~72%; the README promises a 95% interval."""
    rng = np.random.default_rng(days)
    per_day = 288
    t = np.arange(per_day * days) * (86_400_000 // per_day)
    covered = 0
    trials = 300
    for k in range(trials):
        diff = 0.002 + np.repeat(rng.normal(0, 0.02, days), per_day) + rng.normal(0, 0.05, len(t))
        lo, hi, n = gate.day_block_interval(diff, t, resamples=500, seed=k)
        covered += lo <= 0.002 <= hi
    assert n == days
    assert 0.91 <= covered / trials <= 0.99


def test_the_small_sample_factor_is_students_t_over_the_normal_with_the_clustered_correction() -> None:
    assert gate.small_sample_factor(2) == pytest.approx(12.706 / 1.959964 * np.sqrt(2), rel=1e-4)
    assert gate.small_sample_factor(8) == pytest.approx(2.365 / 1.959964 * np.sqrt(8 / 7), rel=1e-4)
    assert gate.small_sample_factor(41) == pytest.approx(2.021 / 1.959964 * np.sqrt(41 / 40), rel=1e-3)
    assert 1 < gate.small_sample_factor(10_000) < 1.001


def test_day_blocks_widen_the_interval_when_candles_of_a_day_move_together() -> None:
    """A shock shared by a day's candles (volatility clusters, overlapping labels) is one draw, not 24: an interval
    that resampled single candles would be far too narrow."""
    rng = np.random.default_rng(2)
    days = 30
    t = np.arange(24 * days) * HOUR
    diff = np.repeat(rng.normal(0, 0.05, days), 24) + rng.normal(0, 0.005, len(t))
    lo, hi, _ = gate.day_block_interval(diff, t)
    naive = 2 * 1.96 * diff.std() / np.sqrt(len(diff))  # what an iid-per-candle interval would say
    assert (hi - lo) > 3 * naive


def _probs(rng: np.random.Generator, y: np.ndarray, skill: float) -> np.ndarray:
    return np.clip(0.3 + skill * (y - 0.3) + rng.normal(0, 0.1, len(y)), 0.01, 0.99)


def test_compare_promotes_within_the_tolerance_and_keeps_beyond_it() -> None:
    rng = np.random.default_rng(3)
    y = (rng.random(2000) < 0.3).astype(float)
    t = np.arange(2000) * HOUR
    live = _probs(rng, y, 0.2)
    same = gate.compare(y, t, live, live, tolerance=0.001, base_rate=0.3, purged=6)
    assert same["decision"] == "promote" and same["difference"] == 0.0
    worse = np.clip(live + rng.normal(0, 0.15, len(y)), 0.01, 0.99)
    g = gate.compare(y, t, worse, live, tolerance=0.001, base_rate=0.3, purged=6)
    assert g["decision"] == "keep" and g["difference"] > 0.001
    assert g["candidate"]["logloss"] == pytest.approx(metrics.logloss(y, worse))
    assert g["live"]["logloss"] == pytest.approx(metrics.logloss(y, live))
    assert g["difference"] == pytest.approx(g["candidate"]["logloss"] - g["live"]["logloss"])
    assert g["interval"][0] <= g["difference"] <= g["interval"][1]
    # just inside / just outside the tolerance
    eps = g["difference"]
    assert gate.compare(y, t, worse, live, tolerance=eps + 1e-9, base_rate=0.3, purged=6)["decision"] == "promote"
    assert gate.compare(y, t, worse, live, tolerance=eps - 1e-9, base_rate=0.3, purged=6)["decision"] == "keep"


def test_without_a_live_model_the_candidate_must_beat_the_base_rate() -> None:
    rng = np.random.default_rng(4)
    y = (rng.random(1500) < 0.3).astype(float)
    t = np.arange(1500) * HOUR
    good = _probs(rng, y, 0.3)
    noise = np.clip(rng.random(1500), 0.01, 0.99)
    assert gate.compare(y, t, good, None, tolerance=0.5, base_rate=0.3, purged=6)["decision"] == "promote"
    g = gate.compare(y, t, noise, None, tolerance=0.5, base_rate=0.3, purged=6)
    assert g["decision"] == "keep" and g["compared_with"] == "base_rate" and g["live"] is None
