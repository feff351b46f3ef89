"""The feature set: ONE implementation, used by training (every row) and serving (the last row).

``compute(arrays, start)`` returns the features of rows ``start .. n-1``. Each value at row ``i`` reads only
candles ``i - LOOKBACK .. i`` (no look-ahead), and every rolling statistic is reduced along its own
C-contiguous window row, in a fixed order, so the arithmetic -- and therefore the value, bit for bit -- is the
same whether the row is computed inside a 100k-candle training frame or as the last row of a 49-candle request.

Bump ``VERSION`` whenever a formula changes: it goes into every manifest and a server refuses a bundle whose
feature-set version it does not compute.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

VERSION = "ohlcv-v2"

RET_LAGS = (1, 3, 6, 12, 24, 48)
VOL_WINDOWS = (6, 12, 24, 48)
LOOKBACK = 48
MIN_CANDLES = LOOKBACK + 1
"""Candles a request needs: the feature of the last candle reads the 48 before it."""

PRICE_RANGE = (1e-20, 1e20)
MAX_VOLUME = 1e24
"""Inputs for which every feature of every feature set is finite, in any mix within one window: the widest ratio of
two prices (1e40) and the largest volume, squared and summed over a window, stay far below the largest double
(1.8e308), and the smallest values are normal doubles. Real markets sit well inside (prices of 1e-10 BTC to 1e9
IDR, volumes under 1e16). /predict refuses candles outside with a 422 naming the candle and field; the property
test in tests/unit/test_features_extreme.py drives extreme values inside through every feature set."""

NAMES: tuple[str, ...] = (
    *(f"ret_{k}" for k in RET_LAGS),
    *(f"vol_{w}" for w in VOL_WINDOWS),
    "range_0",
    "range_12",
    "range_48",
    "body",
    "upper_wick",
    "lower_wick",
    "close_pos",
    "sma_gap_12",
    "sma_gap_48",
    "zscore_48",
    "rsi_14",
    "volume_ratio_48",
    "volume_z_24",
    "channel_48",
    "hour_sin",
    "hour_cos",
    "dow_sin",
    "dow_cos",
    "ret_vol_ratio",
    "vol_ratio_6_48",
)
N_FEATURES = len(NAMES)
VOLATILITY_FEATURES = ("vol_6", "vol_12", "vol_24", "vol_48", "range_0", "range_12", "range_48")
"""The volatility-only baseline is trained on these alone."""

_TWO_PI = 2.0 * np.pi
_DAY_MS = 86_400_000
_WEEK_MS = 7 * _DAY_MS
_EPOCH_THURSDAY_MS = 3 * _DAY_MS  # 1970-01-01 was a Thursday; shift so Monday = 0


@dataclass(frozen=True)
class CandleArrays:
    """Plain float64/int64 arrays of one candle series (the hot path never touches a DataFrame)."""

    open_time: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray

    def __len__(self) -> int:
        return len(self.close)

    @classmethod
    def from_matrix(cls, m: np.ndarray) -> CandleArrays:
        """From an (n, >=6) float array laid out like Binance klines: open_time, o, h, l, c, v."""
        return cls(m[:, 0].astype(np.int64), m[:, 1], m[:, 2], m[:, 3], m[:, 4], m[:, 5])

    def tail(self, n: int) -> CandleArrays:
        return CandleArrays(
            self.open_time[-n:], self.open[-n:], self.high[-n:], self.low[-n:], self.close[-n:], self.volume[-n:]
        )


def _win(x: np.ndarray, w: int, start: int) -> np.ndarray:
    """Rows ``start..n-1`` of the trailing windows of length ``w`` (a view; oldest value first)."""
    n = len(x)
    if n - start == 1:  # serving: one window, a plain slice (sliding_window_view costs ~10 µs here)
        return x[n - w :].reshape(1, w)
    return sliding_window_view(x, w)[start - w + 1 :]


_LAGS = np.array(RET_LAGS)
# columns of the newest-first running sums that hold the sums over the last 6, 12, 14, 24 and 48 values
_COLS = np.array([5, 11, 13, 23, 47])
_SUM_N = (_COLS + 1).astype(np.float64)
_R_COLS = [0, 1, 3, 4]  # of _COLS: the volatility windows 6, 12, 24, 48
_PERIOD = np.array([_DAY_MS, _WEEK_MS])
_OFFSET = np.array([0, _EPOCH_THURSDAY_MS])
_SCALE = _TWO_PI / _PERIOD
# the ratio features, computed together at the end: output column and the value used when the denominator is 0
_RATIO_COLS = np.array([16, 19, 20, 22, 23, 28, 29])
_RATIO_FILL = np.array([0.5, 0.0, 50.0, 0.0, 0.5, 0.0, 1.0])
CHUNK_ROWS = 8192
"""frame() computes this many rows per call: bounded memory (~6 KB a row inside compute), same values."""


def compute(c: CandleArrays, start: int | None = None) -> np.ndarray:
    """Features of rows ``start..n-1`` as an (n - start, N_FEATURES) float64 matrix.

    ``start`` defaults to the last row. It must be >= LOOKBACK (the first row with a full lookback).

    The hot path is one request's last row (~70 numpy calls would cost ~80 µs), so the work is batched into
    few calls: the trailing 48-value windows of four series (returns, ranges, closes relative to the current
    close, volumes) go newest-first into one (4, rows, 48) block whose running sums give the sums over the last
    6, 12, 14, 24 and 48 values of all four at once, and the seven guarded ratios are divided in one call.
    """
    n = len(c)
    if start is None:
        start = n - 1
    if start < LOOKBACK or start >= n:
        raise ValueError(f"start={start} needs {LOOKBACK} earlier candles and < n={n}")
    L = LOOKBACK
    first = start - L  # the oldest candle any requested row reads
    close, high, low, opn, vol = (x[first:] for x in (c.close, c.high, c.low, c.open, c.volume))
    m = n - start
    lc = np.log(close)
    c_ = close[L:]
    r = lc[1:] - lc[:-1]  # r[j] is the one-candle log return of candle first + 1 + j
    rng = (high - low) / close
    block = np.empty((8, m, L))  # four series, then their squares
    block[0] = _win(r, L, L - 1)[:, ::-1]
    block[1] = _win(rng, L, L)[:, ::-1]
    np.subtract(_win(close, L, L)[:, ::-1], c_[:, None], out=block[2])  # closes relative to the current one
    block[3] = _win(vol, L, L)[:, ::-1]
    np.multiply(block[:4], block[:4], out=block[4:])
    sums = np.cumsum(block, axis=2)[:, :, _COLS]  # (8, m, 5): sums over the last 6, 12, 14, 24, 48 values
    s1 = sums[:4]
    mean = s1 / _SUM_N
    std = np.sqrt(np.maximum(sums[4:] / _SUM_N - mean * mean, 0.0))  # population std over each window
    out = np.empty((m, N_FEATURES))
    num = np.empty((m, len(_RATIO_COLS)))
    den = np.empty((m, len(_RATIO_COLS)))
    # log returns over 1..48 candles
    out[:, 0:6] = lc[L:, None] - lc[(L + np.arange(m))[:, None] - _LAGS]
    # realised volatility of one-candle returns over 6, 12, 24, 48 candles
    vols = std[0][:, _R_COLS]
    out[:, 6:10] = vols
    # candle ranges: now, and the mean over 12 and 48 candles
    out[:, 10] = rng[L:]
    out[:, 11:13] = mean[1][:, [1, 4]]
    # candle shape; position of the close in the candle's range
    o_, h_, l_ = opn[L:], high[L:], low[L:]
    out[:, 13] = np.log(c_ / o_)
    out[:, 14] = (h_ - np.maximum(o_, c_)) / c_
    out[:, 15] = (np.minimum(o_, c_) - l_) / c_
    num[:, 0], den[:, 0] = c_ - l_, h_ - l_
    # distance from the 12- and 48-candle mean close, z-score over 48
    dev = mean[2][:, [1, 4]]  # mean(close) - close_now
    out[:, 17:19] = c_[:, None] / (c_[:, None] + dev) - 1.0
    dev48 = dev[:, 1]
    num[:, 1], den[:, 1] = -dev48, std[2][:, 4]
    # RSI over 14 returns with simple averages: 100 * gains / (gains + losses)
    gains = np.add.reduce(np.maximum(block[0, :, :14], 0.0), axis=1)
    num[:, 2], den[:, 2] = 100.0 * gains, 2.0 * gains - s1[0][:, 2]  # losses = gains - sum(returns)
    # volume now vs its 48-candle mean, z-score over 24
    v_ = vol[L:]
    out[:, 21] = np.log((v_ + 1e-12) / (mean[3][:, 4] + 1e-12))
    num[:, 3], den[:, 3] = v_ - mean[3][:, 3], std[3][:, 3]
    # position of the close in the 48-candle high-low channel
    lo48 = np.minimum.reduce(_win(low, L, L), axis=1)
    num[:, 4], den[:, 4] = c_ - lo48, np.maximum.reduce(_win(high, L, L), axis=1) - lo48
    # time of day and day of week (Monday = 0) as points on a circle
    angle = ((c.open_time[start:, None] - _OFFSET) % _PERIOD) * _SCALE
    out[:, 24:28:2] = np.sin(angle)
    out[:, 25:28:2] = np.cos(angle)
    # the 12-candle return in units of 12-candle volatility; short vs long volatility
    num[:, 5], den[:, 5] = out[:, 3], vols[:, 3] * np.sqrt(12.0)
    num[:, 6], den[:, 6] = vols[:, 0], vols[:, 3]
    zero = den == 0  # flat windows: the documented fill value instead of a division by zero
    out[:, _RATIO_COLS] = np.where(zero, _RATIO_FILL, num / np.where(zero, 1.0, den))
    return out


def last_row(c: CandleArrays) -> np.ndarray:
    """Features of the last candle (the serving path): one (N_FEATURES,) row from the trailing MIN_CANDLES."""
    if len(c) > MIN_CANDLES:
        c = c.tail(MIN_CANDLES)
    return compute(c)[0]


def frame(c: CandleArrays) -> np.ndarray:
    """Features of every row (training); rows without a full lookback are NaN."""
    n = len(c)
    out = np.full((n, N_FEATURES), np.nan)
    for start in range(LOOKBACK, n, CHUNK_ROWS):
        stop = min(n, start + CHUNK_ROWS)
        part = CandleArrays(
            *(x[start - LOOKBACK : stop] for x in (c.open_time, c.open, c.high, c.low, c.close, c.volume))
        )
        out[start:stop] = compute(part, LOOKBACK)
    return out


def indices(names: tuple[str, ...] | list[str]) -> list[int]:
    return [NAMES.index(n) for n in names]
