"""From validated candles to the training matrix: features, labels, and which rows may be used."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from xylen.core import features, intervals, labels
from xylen.core.featuresets import OHLCV_V2, FeatureSet


@dataclass
class Dataset:
    open_time: np.ndarray  # (n,)
    close: np.ndarray  # (n,)
    X: np.ndarray  # (n, n_features); NaN where the lookback is incomplete
    y: np.ndarray  # (n,) 1.0/0.0, NaN where the horizon runs past the data
    valid: np.ndarray  # (n,) bool: full lookback and full horizon inside one gap-free segment
    contiguous_next: np.ndarray  # (n,) bool: the next candle follows on the grid (for the backtest)
    step_ms: int  # the candle length (the average month for 1M)
    fs: FeatureSet = OHLCV_V2
    up: np.ndarray | None = None  # (n,) 1.0 where the close N candles ahead is higher (every model is scored on it)
    heads: dict[str, np.ndarray] | None = None  # labels of extra heads by kind (the move head's, ...)

    @property
    def rows(self) -> np.ndarray:
        return np.flatnonzero(self.valid)


def arrays_of(df: pl.DataFrame) -> features.CandleArrays:
    return features.CandleArrays(
        df["open_time"].to_numpy().astype(np.int64),
        *(df[c].to_numpy().astype(np.float64) for c in ("open", "high", "low", "close", "volume")),
    )


def segment_bounds(open_time: np.ndarray, interval: str) -> tuple[np.ndarray, np.ndarray]:
    """For each row, the index of the first and last row of its gap-free segment."""
    n = len(open_time)
    brk = np.flatnonzero(~intervals.consecutive(open_time, interval)) + 1  # first row of each new segment
    starts = np.concatenate(([0], brk))
    ends = np.concatenate((brk - 1, [n - 1]))
    seg = np.zeros(n, dtype=np.int64)
    seg[brk] = 1
    seg = np.cumsum(seg)
    return starts[seg], ends[seg]


def labelled(
    open_time: np.ndarray,
    close: np.ndarray,
    interval: str,
    spec: labels.LabelSpec,
    *,
    lookback: int = OHLCV_V2.lookback,
    high: np.ndarray | None = None,
    low: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(labels, valid): which rows may be used, without computing a single feature (cheap)."""
    y = labels.make(close, spec, high, low)
    idx = np.arange(len(open_time))
    seg_start, seg_end = segment_bounds(open_time, interval)
    # a window that spans a gap is left out: lookback and horizon must both sit inside one segment
    valid = (idx - seg_start >= lookback) & (seg_end - idx >= spec.horizon) & ~np.isnan(y)
    return y, valid


def build(
    df: pl.DataFrame,
    interval: str,
    spec: labels.LabelSpec,
    fs: FeatureSet = OHLCV_V2,
    extra: tuple[labels.LabelSpec, ...] = (),
) -> Dataset:
    """Features of ``fs`` and the labels of ``spec`` and of the ``extra`` heads. ``valid`` follows the primary's
    horizon: `xylen train`'s heads share it; a retrain of a head that looks further picks its rows from every head's
    labels (train/candidate.py)."""
    arr = arrays_of(df)
    X = fs.frame(arr)
    y, valid = labelled(arr.open_time, arr.close, interval, spec, lookback=fs.lookback, high=arr.high, low=arr.low)
    contiguous_next = np.zeros(len(arr), dtype=bool)
    contiguous_next[:-1] = intervals.consecutive(arr.open_time, interval)
    heads = {h.kind: labels.make(arr.close, h, arr.high, arr.low) for h in extra}
    return Dataset(arr.open_time, arr.close, X, y, valid, contiguous_next, intervals.approx_ms(interval), fs,
                   labels.up_labels(arr.close, spec.horizon), heads)
