"""Feature sets by version: serving/training parity, no look-ahead (and a planted leak caught), and their limits."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.builders import sample_arrays
from xylen.core import features, featuresets
from xylen.core.errors import ConfigError
from xylen.core.features import CandleArrays
from xylen.core.featuresets import CTX_VERSION, OHLCV_V2

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def candles() -> CandleArrays:
    return sample_arrays(12_000)


def _slice(c: CandleArrays, a: int, b: int) -> CandleArrays:
    return CandleArrays(*(x[a:b] for x in (c.open_time, c.open, c.high, c.low, c.close, c.volume)))


def _hourly(c: CandleArrays) -> CandleArrays:
    """The 5m sample as 1h candles (every 12th open, the 12 candles' high/low/close, summed volume)."""
    m = len(c) // 12 * 12
    r = lambda x: x[:m].reshape(-1, 12)  # noqa: E731
    return CandleArrays(r(c.open_time)[:, 0], r(c.open)[:, 0], r(c.high).max(1), r(c.low).min(1), r(c.close)[:, -1],
                        r(c.volume).sum(1))


@pytest.fixture(scope="module")
def ctx_frames(candles):
    hourly = _hourly(candles)
    return {
        "5m": (candles, featuresets.get(CTX_VERSION, "5m").frame(candles)),
        "1h": (hourly, featuresets.get(CTX_VERSION, "1h").frame(hourly)),
    }


def test_the_context_set_extends_ohlcv_v2_and_says_how_many_candles_it_needs():
    fs5, fs1 = featuresets.get(CTX_VERSION, "5m"), featuresets.get(CTX_VERSION, "1h")
    assert fs5.names[: len(OHLCV_V2.names)] == OHLCV_V2.names == features.NAMES
    assert fs5.names[len(OHLCV_V2.names) :] == featuresets.CTX_NAMES
    assert (fs5.min_candles, fs1.min_candles, OHLCV_V2.min_candles) == (3 * 288 + 1, 3 * 24 + 1, 49)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), interval=st.sampled_from(["5m", "1h"]))
def test_context_serving_row_equals_training_row(ctx_frames, data, interval):
    """For any window of real candles, the serving path's features of its last candle == the training row, bit
    for bit, for the 34-feature context set too."""
    c, X = ctx_frames[interval]
    fs = featuresets.get(CTX_VERSION, interval)
    end = data.draw(st.integers(fs.lookback, len(c) - 1), label="last candle")
    length = data.draw(st.integers(fs.min_candles, fs.min_candles + 300), label="window length")
    window = _slice(c, max(0, end + 1 - length), end + 1)
    if len(window) < fs.min_candles:
        return
    np.testing.assert_array_equal(fs.last_row(window), X[end])


def test_context_features_are_what_they_say(ctx_frames):
    c, X = ctx_frames["5m"]
    i = 5_000
    lc = np.log(c.close)
    col = {n: j for j, n in enumerate(featuresets.get(CTX_VERSION, "5m").names)}
    for days in (1, 2, 3):
        assert X[i, col[f"ret_{days}d"]] == pytest.approx(lc[i] - lc[i - 288 * days], abs=1e-12)
    r = np.diff(lc)[i - 288 : i]  # the 288 one-candle returns into candles i-287..i
    assert X[i, col["dvol_1d"]] == pytest.approx(r.std() * np.sqrt(288), rel=1e-9)
    assert np.isnan(X[: 3 * 288, -1]).all() and np.isfinite(X[3 * 288 :]).all()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(t=st.integers(900, 2_500), factor=st.floats(0.5, 2.0), seed=st.integers(0, 2**16),
       version=st.sampled_from(featuresets.VERSIONS))
def test_no_feature_set_reads_the_future(candles, t, factor, seed, version):
    """Changing every candle after t never changes a feature at or before t, in any feature set."""
    assert featuresets.reads_future(featuresets.get(version, "5m"), _slice(candles, 0, 3_000), t, seed, factor) == []


def test_a_planted_leaking_feature_is_caught_by_the_no_look_ahead_check(candles):
    """The guard against look-ahead is this check, not the shuffled-label control: a feature set that adds the
    next candle's return is named by it (and one that does not, is not)."""

    def leaky(c: CandleArrays, start: int) -> np.ndarray:
        nxt = np.append(c.close[start + 1 :], np.nan)  # the NEXT candle's close: unknown at the time
        return np.column_stack((features.compute(c, start), nxt / c.close[start:] - 1.0))

    planted = replace(OHLCV_V2, version="leaky", names=(*OHLCV_V2.names, "next_return"), _compute=leaky)
    window = _slice(candles, 0, 3_000)
    caught = {tuple(featuresets.reads_future(planted, window, t, seed)) for t, seed in [(500, 1), (1_700, 2)]}
    assert caught == {("next_return",)}
    assert featuresets.reads_future(OHLCV_V2, window, 500, 1) == []


@pytest.mark.parametrize(
    ("version", "interval", "says"),
    [
        ("ohlcv-v9", "5m", "'ohlcv-v9' is not one this xylen computes"),
        (CTX_VERSION, "1m", "not '1m'"),
        (CTX_VERSION, "1d", "not '1d'"),
        (CTX_VERSION, None, "not None"),
    ],
)
def test_a_feature_set_it_cannot_compute_is_refused_by_name(version, interval, says):
    with pytest.raises(ConfigError) as exc:
        featuresets.get(version, interval)
    assert says in exc.value.message and exc.value.hint


def test_a_manifest_feature_set_is_computed_only_when_version_and_names_match():
    names = list(featuresets.get(CTX_VERSION, "1h").names)
    assert featuresets.for_manifest(CTX_VERSION, names, "1h") is featuresets.get(CTX_VERSION, "1h")
    assert featuresets.for_manifest(CTX_VERSION, names[:-1], "1h") is None  # renamed or reordered: not ours
    assert featuresets.for_manifest(CTX_VERSION, names, "1d") is None
    assert featuresets.for_manifest("external", ["a", "b"], "5m") is None
    assert featuresets.for_manifest(OHLCV_V2.version, list(OHLCV_V2.names), "1M") is OHLCV_V2


@pytest.mark.parametrize(("interval", "needs"), [("5m", 865), ("15m", 289), ("30m", 145), ("1h", 73), ("2h", 49)])
def test_the_context_set_needs_3_days_plus_one_and_never_fewer_than_ohlcv_v2(interval, needs):
    """README and --help: 3 days of candles plus one, never fewer than ohlcv-v2's 49 (at 2h, 3 days are 36)."""
    assert featuresets.get(CTX_VERSION, interval).min_candles == needs == max(3 * featuresets.candles_per_day(
        interval) + 1, OHLCV_V2.min_candles)
