"""From validated candles to the training matrix: features, labels, and which rows may be used."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from xylen.core import features, intervals, labels


@dataclass
class Dataset:
    open_time: np.ndarray  # (n,)
    close: np.ndarray  # (n,)
    X: np.ndarray  # (n, n_features); NaN where the lookback is incomplete
    y: np.ndarray  # (n,) 1.0/0.0, NaN where the horizon runs past the data
    valid: np.ndarray  # (n,) bool: full lookback and full horizon inside one gap-free segment
    contiguous_next: np.ndarray  # (n,) bool: the next candle follows on the grid (for the backtest)
    step_ms: int  # the candle length (the average month for 1M)

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
    open_time: np.ndarray, close: np.ndarray, interval: str, spec: labels.LabelSpec
) -> tuple[np.ndarray, np.ndarray]:
    """(labels, valid): which rows may be used, without computing a single feature (cheap)."""
    y = labels.make(close, spec)
    idx = np.arange(len(open_time))
    seg_start, seg_end = segment_bounds(open_time, interval)
    # a window that spans a gap is left out: lookback and horizon must both sit inside one segment
    valid = (idx - seg_start >= features.LOOKBACK) & (seg_end - idx >= spec.horizon) & ~np.isnan(y)
    return y, valid


def build(df: pl.DataFrame, interval: str, spec: labels.LabelSpec) -> Dataset:
    arr = arrays_of(df)
    X = features.frame(arr)
    y, valid = labelled(arr.open_time, arr.close, interval, spec)
    contiguous_next = np.zeros(len(arr), dtype=bool)
    contiguous_next[:-1] = intervals.consecutive(arr.open_time, interval)
    return Dataset(arr.open_time, arr.close, X, y, valid, contiguous_next, intervals.approx_ms(interval))
