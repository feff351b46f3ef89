"""The feature set: ONE implementation, used by training (every row) and serving (the last row).

``compute(arrays, start)`` returns the features of rows ``start .. n-1``. Each value at row ``i`` reads only
candles ``i - LOOKBACK .. i`` (no look-ahead), and every rolling statistic is reduced over a C-contiguous
window row, so the arithmetic -- and therefore the value, bit for bit -- is the same whether the row is
computed inside a 100k-candle training frame or as the last row of a 49-candle request.

Bump ``VERSION`` whenever a formula changes: it goes into every manifest and a server refuses a bundle whose
feature-set version it does not compute.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

VERSION = "ohlcv-v1"

RET_LAGS = (1, 3, 6, 12, 24, 48)
VOL_WINDOWS = (6, 12, 24, 48)
LOOKBACK = 48
MIN_CANDLES = LOOKBACK + 1
"""Candles a request needs: the feature of the last candle reads the 48 before it."""

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
    """Rows ``start..n-1`` of the trailing windows of length ``w``, each window C-contiguous."""
    n = len(x)
    if n - start == 1:  # serving: one window, a plain slice (sliding_window_view costs ~10 µs here)
        return x[n - w :].reshape(1, w)
    return np.ascontiguousarray(sliding_window_view(x, w)[start - w + 1 :])


def _safe_div(a: np.ndarray, b: np.ndarray, fill: float) -> np.ndarray:
    out = np.full(np.broadcast(a, b).shape, fill)
    np.divide(a, b, out=out, where=b != 0)
    return out


# ufunc reductions instead of ndarray.mean/std: the same arithmetic, without ~5 µs of Python per call.
_sum = np.add.reduce


def _mean(w: np.ndarray) -> np.ndarray:
    return _sum(w, axis=1) / w.shape[1]


def _mean_std(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = _sum(w, axis=1) / w.shape[1]
    dev = w - mean[:, None]
    return mean, np.sqrt(_sum(dev * dev, axis=1) / w.shape[1])


def compute(c: CandleArrays, start: int | None = None) -> np.ndarray:
    """Features of rows ``start..n-1`` as an (n - start, N_FEATURES) float64 matrix.

    ``start`` defaults to the last row. It must be >= LOOKBACK (the first row with a full lookback).
    """
    n = len(c)
    if start is None:
        start = n - 1
    if start < LOOKBACK or start >= n:
        raise ValueError(f"start={start} needs {LOOKBACK} earlier candles and < n={n}")
    close, high, low, opn, vol = c.close, c.high, c.low, c.open, c.volume
    lc = np.log(close)
    m = n - start
    out = np.empty((m, N_FEATURES))
    j = 0
    # log returns over several lags
    lc_now = lc[start:]
    for k in RET_LAGS:
        out[:, j] = lc_now - lc[start - k : n - k]
        j += 1
    # realised volatility: std of one-candle log returns over trailing windows (returns r_i = lc_i - lc_{i-1})
    r = np.diff(lc[start - LOOKBACK :])  # r[q] is the return of row start - LOOKBACK + 1 + q
    r_start = LOOKBACK - 1  # index in r of row `start`
    vols = {}
    for w in VOL_WINDOWS:
        vols[w] = _mean_std(_win(r, w, r_start))[1]
        out[:, j] = vols[w]
        j += 1
    rng = (high - low) / close
    out[:, j] = rng[start:]
    out[:, j + 1] = _mean(_win(rng, 12, start))
    out[:, j + 2] = _mean(_win(rng, 48, start))
    j += 3
    o_, h_, l_, c_ = opn[start:], high[start:], low[start:], close[start:]
    out[:, j] = np.log(c_ / o_)
    out[:, j + 1] = (h_ - np.maximum(o_, c_)) / c_
    out[:, j + 2] = (np.minimum(o_, c_) - l_) / c_
    out[:, j + 3] = _safe_div(c_ - l_, h_ - l_, 0.5)
    j += 4
    mean48, std48 = _mean_std(_win(close, 48, start))
    out[:, j] = c_ / _mean(_win(close, 12, start)) - 1.0
    out[:, j + 1] = c_ / mean48 - 1.0
    out[:, j + 2] = _safe_div(c_ - mean48, std48, 0.0)
    r14 = _win(r, 14, r_start)
    gain = _mean(np.maximum(r14, 0.0))
    loss = _mean(np.maximum(-r14, 0.0))
    out[:, j + 3] = 100.0 * _safe_div(gain, gain + loss, 0.5)
    j += 4
    v_ = vol[start:]
    vmean48 = _mean(_win(vol, 48, start))
    out[:, j] = np.log((v_ + 1e-12) / (vmean48 + 1e-12))
    vmean24, vstd24 = _mean_std(_win(vol, 24, start))
    out[:, j + 1] = _safe_div(v_ - vmean24, vstd24, 0.0)
    lo48 = np.minimum.reduce(_win(low, 48, start), axis=1)
    hi48 = np.maximum.reduce(_win(high, 48, start), axis=1)
    out[:, j + 2] = _safe_div(c_ - lo48, hi48 - lo48, 0.5)
    j += 3
    t = c.open_time[start:]
    day = (t % _DAY_MS) * (_TWO_PI / _DAY_MS)
    week = ((t - _EPOCH_THURSDAY_MS) % _WEEK_MS) * (_TWO_PI / _WEEK_MS)
    out[:, j] = np.sin(day)
    out[:, j + 1] = np.cos(day)
    out[:, j + 2] = np.sin(week)
    out[:, j + 3] = np.cos(week)
    j += 4
    out[:, j] = _safe_div(out[:, 3], vols[48] * np.sqrt(12.0), 0.0)  # ret_12 in units of 12-candle volatility
    out[:, j + 1] = _safe_div(vols[6], vols[48], 1.0)
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
    if n > LOOKBACK:
        out[LOOKBACK:] = compute(c, LOOKBACK)
    return out


def indices(names: tuple[str, ...] | list[str]) -> list[int]:
    return [NAMES.index(n) for n in names]
