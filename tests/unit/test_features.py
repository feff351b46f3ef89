"""The feature set: serving/training parity, no look-ahead, labels."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xylen.core import features, labels
from xylen.core.candles import read_candles
from xylen.train.dataset import arrays_of, build
from xylen.train.pipeline import sample_path

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def sample():
    df = read_candles(sample_path()).frame.head(20_000)
    arr = arrays_of(df)
    return arr, features.frame(arr)


def _slice(arr: features.CandleArrays, a: int, b: int) -> features.CandleArrays:
    return features.CandleArrays(*(x[a:b] for x in (arr.open_time, arr.open, arr.high, arr.low, arr.close, arr.volume)))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_serving_row_equals_training_row(sample, data):
    """For any window of real candles, the serving path's features of its last candle == the training row."""
    arr, X = sample
    end = data.draw(st.integers(features.LOOKBACK, len(arr) - 1), label="last candle")
    length = data.draw(st.integers(features.MIN_CANDLES, 500), label="window length")
    window = _slice(arr, max(0, end + 1 - length), end + 1)
    if len(window) < features.MIN_CANDLES:
        return
    np.testing.assert_array_equal(features.last_row(window), X[end])


def test_first_rows_without_lookback_are_nan(sample):
    _, X = sample
    assert np.isnan(X[: features.LOOKBACK]).all()
    assert np.isfinite(X[features.LOOKBACK :]).all()
    assert X.shape[1] == features.N_FEATURES == len(features.NAMES)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(t=st.integers(200, 4_000), factor=st.floats(0.5, 2.0), seed=st.integers(0, 2**16))
def test_no_look_ahead(sample, t, factor, seed):
    """Changing every candle after t never changes a feature at or before t, nor a label at t' <= t - N."""
    arr, _ = sample
    n = 5_000
    base = _slice(arr, 0, n)
    rng = np.random.default_rng(seed)
    noise = rng.uniform(0.9, 1.1, n - t - 1) * factor
    changed = features.CandleArrays(
        base.open_time, base.open.copy(), base.high.copy(), base.low.copy(), base.close.copy(), base.volume.copy()
    )
    for a in (changed.open, changed.high, changed.low, changed.close):
        a[t + 1 :] *= noise
    changed.volume[t + 1 :] *= noise[::-1]
    X0, X1 = features.frame(base), features.frame(changed)
    np.testing.assert_array_equal(X0[: t + 1], X1[: t + 1])
    spec = labels.LabelSpec(horizon=6, threshold=0.002)
    y0, y1 = labels.make(base.close, spec), labels.make(changed.close, spec)
    np.testing.assert_array_equal(y0[: t + 1 - spec.horizon], y1[: t + 1 - spec.horizon])


def test_label_definition():
    close = np.array([100.0, 101.0, 100.0, 99.0, 103.0, 103.0])
    y = labels.make(close, labels.LabelSpec(horizon=2, threshold=0.005))
    # log(100/100)=0 -> 0 ; log(99/101) < 0 -> 0 ; log(103/100) > .005 -> 1 ; log(103/99) -> 1 ; no future -> nan
    np.testing.assert_array_equal(y[:4], [0.0, 0.0, 1.0, 1.0])
    assert np.isnan(y[4:]).all()


def test_windows_spanning_a_gap_are_left_out():
    df = read_candles(sample_path()).frame
    # the sample has one real gap after 2023-03-24 12:35 UTC (16 missing candles)
    ds = build(df, "5m", labels.LabelSpec(horizon=6))
    gap_row = int(np.flatnonzero(np.diff(ds.open_time) != ds.step_ms)[0]) + 1  # first row after the gap
    assert not ds.valid[gap_row : gap_row + features.LOOKBACK].any()  # lookback would span the gap
    assert ds.valid[gap_row + features.LOOKBACK]
    assert not ds.valid[gap_row - 6 : gap_row].any()  # horizon would span the gap
    assert ds.valid[gap_row - 7]


def test_calendar_month_candles_are_contiguous_and_a_missing_month_is_a_gap():
    """Months are 28-31 days: a fixed step would call every month boundary a gap (and train on nothing)."""
    from xylen.core.intervals import next_open

    df = read_candles(sample_path()).frame.head(120)
    t, times = 1_262_304_000_000, []  # 2010-01-01
    for _ in range(df.height):
        times.append(t)
        t = next_open(t, "1M")
    monthly = df.with_columns(pl.Series("open_time", times))
    ds = build(monthly, "1M", labels.LabelSpec(horizon=6))
    assert int(ds.valid.sum()) == df.height - features.LOOKBACK - 6
    holed = monthly.filter(pl.col("open_time") != times[80])  # one month missing
    ds = build(holed, "1M", labels.LabelSpec(horizon=6))
    assert not ds.valid[80 : 80 + features.LOOKBACK].any() and not ds.valid[74:80].any()


def test_short_window_is_refused():
    df = read_candles(sample_path()).frame.head(features.MIN_CANDLES - 1)
    with pytest.raises(ValueError, match="needs 48 earlier candles"):
        features.compute(arrays_of(df))
