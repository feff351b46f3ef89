"""Feature sets by version: what `xylen train --features` chooses, what a manifest records, what a server computes.

- ``ohlcv-v2`` (core/features.py): 30 features of the last 48 candles (returns, volatility, candle shape, RSI,
  volume, time of day). A request needs 49 candles.
- ``ohlcv-ctx-v1``: those 30 plus daily context: the log returns over the last 1, 2 and 3 days and the daily
  volatility. "A day" is counted in candles (288 at 5m, 24 at 1h), so the set is defined for intervals from 5m to
  2h, and a request needs 3 days of candles plus one, never fewer than ohlcv-v2's 49 (865 at 5m, 73 at 1h, 49 at
  2h; Binance returns up to 1,000 a call).

The same rules as core/features.py hold for every set: a value at row i reads only candles up to i, and every
rolling statistic is reduced along its own C-contiguous window in a fixed order, so the training row and the
serving row are equal bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from xylen.core import features
from xylen.core.errors import ConfigError
from xylen.core.features import CandleArrays
from xylen.core.intervals import INTERVAL_MS

CTX_VERSION = "ohlcv-ctx-v1"
DEFAULT = features.VERSION
VERSIONS = (features.VERSION, CTX_VERSION)
CTX_NAMES = ("ret_1d", "ret_2d", "ret_3d", "dvol_1d")
_DAY_MS = 86_400_000
_CTX_INTERVALS = tuple(i for i, ms in INTERVAL_MS.items() if 5 * 60_000 <= ms <= 2 * 3_600_000)


@dataclass(frozen=True)
class FeatureSet:
    version: str
    names: tuple[str, ...]
    lookback: int  # candles before the last one that its features read
    _compute: Callable[[CandleArrays, int], np.ndarray] = field(repr=False)
    volatility: tuple[str, ...] = features.VOLATILITY_FEATURES  # what the volatility-only baseline learner sees
    raw_volatility: tuple[str, ...] = ("range_12", "vol_48")  # raw features scored as baselines

    @property
    def min_candles(self) -> int:
        """Candles a request must send: the last one plus its lookback."""
        return self.lookback + 1

    @property
    def n_features(self) -> int:
        return len(self.names)

    def compute(self, c: CandleArrays, start: int | None = None) -> np.ndarray:
        n = len(c)
        start = n - 1 if start is None else start
        if start < self.lookback or start >= n:
            raise ValueError(f"start={start} needs {self.lookback} earlier candles and < n={n}")
        return self._compute(c, start)

    def last_row(self, c: CandleArrays) -> np.ndarray:
        """Features of the last candle (the serving path), from the trailing ``min_candles`` candles."""
        if len(c) > self.min_candles:
            c = c.tail(self.min_candles)
        return self.compute(c)[0]

    def frame(self, c: CandleArrays) -> np.ndarray:
        """Features of every row (training); rows without a full lookback are NaN. Bounded memory: chunks."""
        n, lb = len(c), self.lookback
        out = np.full((n, len(self.names)), np.nan)
        for start in range(lb, n, features.CHUNK_ROWS):
            stop = min(n, start + features.CHUNK_ROWS)
            cols = (c.open_time, c.open, c.high, c.low, c.close, c.volume)
            part = CandleArrays(*(x[start - lb : stop] for x in cols))
            out[start:stop] = self.compute(part, lb)
        return out

    def indices(self, names: tuple[str, ...] | list[str]) -> list[int]:
        return [self.names.index(n) for n in names]


OHLCV_V2 = FeatureSet(features.VERSION, features.NAMES, features.LOOKBACK, features.compute)


def candles_per_day(interval: str) -> int:
    return _DAY_MS // INTERVAL_MS[interval]


def get(version: str, interval: str | None) -> FeatureSet:
    """The feature set ``version`` for candles of ``interval``; ConfigError naming the choices otherwise."""
    if version == features.VERSION:
        return OHLCV_V2
    if version != CTX_VERSION:
        raise ConfigError(f"Feature set {version!r} is not one this xylen computes.",
                          hint=f"use one of: {', '.join(VERSIONS)}.")
    if interval not in _CTX_INTERVALS:
        raise ConfigError(
            f"Feature set {CTX_VERSION!r} counts days in candles, so it is defined for intervals "
            f"{_CTX_INTERVALS[0]}..{_CTX_INTERVALS[-1]}, not {interval!r}.",
            hint=f"use --features {features.VERSION} for {interval} candles.",
        )
    return _ctx_set(candles_per_day(interval))


def for_manifest(version: str, names: list[str], interval: str | None) -> FeatureSet | None:
    """The set a bundle was trained on when this xylen computes it exactly (same version and names), else None."""
    try:
        fs = get(version, interval)
    except ConfigError:
        return None
    return fs if list(fs.names) == list(names) else None


_CTX_CACHE: dict[int, FeatureSet] = {}


def _ctx_set(day: int) -> FeatureSet:
    fs = _CTX_CACHE.get(day)
    if fs is None:

        def compute(c: CandleArrays, start: int) -> np.ndarray:
            return np.hstack((features.compute(c, start), _context(c, start, day)))

        # the daily volatility is a volatility feature: a baseline blind to it would credit the model with it
        fs = FeatureSet(CTX_VERSION, features.NAMES + CTX_NAMES, max(features.LOOKBACK, 3 * day), compute,
                        volatility=(*features.VOLATILITY_FEATURES, "dvol_1d"))
        _CTX_CACHE[day] = fs
    return fs


_SUB_ROWS = 2048  # windows copied and reduced per step: a few MB whatever the day length


def _window_sums(r: np.ndarray, first: int, last: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Sum and sum of squares of r[k-w+1..k] for k = first..last, each window copied C-contiguous and reduced on
    its own (pairwise, in a fixed order): the value depends on the window alone, not on where the block starts."""
    ks = np.arange(first, last + 1)
    s1 = np.empty(len(ks))
    s2 = np.empty(len(ks))
    view = sliding_window_view(r, w)
    for a in range(0, len(ks), _SUB_ROWS):
        b = min(len(ks), a + _SUB_ROWS)
        win = np.ascontiguousarray(view[ks[a] - w + 1 : ks[b - 1] - w + 2])
        s1[a:b] = np.add.reduce(win, axis=1)
        s2[a:b] = np.add.reduce(win * win, axis=1)
    return s1, s2


def _context(c: CandleArrays, start: int, day: int) -> np.ndarray:
    """Rows start..n-1: log returns over 1, 2, 3 days and the daily volatility (std of the last day's one-candle
    log returns, times sqrt(candles a day))."""
    lc = np.log(c.close)
    n = len(lc)
    out = np.empty((n - start, len(CTX_NAMES)))
    for j, k in enumerate((day, 2 * day, 3 * day)):
        out[:, j] = lc[start:] - lc[start - k : n - k]
    r = lc[1:] - lc[:-1]  # r[i-1]: the return into candle i
    s1, s2 = _window_sums(r, start - 1, n - 2, day)
    mean = s1 / day
    out[:, 3] = np.sqrt(np.maximum(s2 / day - mean * mean, 0.0) * day)
    return out


def reads_future(fs: FeatureSet, c: CandleArrays, t: int, seed: int = 0, factor: float = 1.0) -> list[str]:
    """The names of the features of ``fs`` whose value at some row <= ``t`` changes when every candle after ``t``
    is changed (prices scaled by random factors, volumes reversed): a feature that reads the future. The
    no-look-ahead property test runs this on every feature set over many (t, seed); a set with a planted leak is
    caught by it (tests/unit/test_featuresets.py)."""
    n = len(c)
    rng = np.random.default_rng(seed)
    noise = rng.uniform(0.9, 1.1, n - t - 1) * factor
    changed = CandleArrays(c.open_time, c.open.copy(), c.high.copy(), c.low.copy(), c.close.copy(), c.volume.copy())
    for a in (changed.open, changed.high, changed.low, changed.close):
        a[t + 1 :] *= noise
    changed.volume[t + 1 :] = changed.volume[t + 1 :][::-1] * noise
    before, after = fs.frame(c)[: t + 1], fs.frame(changed)[: t + 1]
    same = (before == after) | (np.isnan(before) & np.isnan(after))
    return [name for name, ok in zip(fs.names, same.all(axis=0)) if not ok]
