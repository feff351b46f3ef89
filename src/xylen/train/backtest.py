"""A backtest that trades what the label predicts: long for exactly the label's horizon, trades never overlapping.

The label says "the return over the next N candles exceeds theta", so the trade that matches it buys at the close of
a candle whose signal fires and sells N candles later, at close[i + N]. Trades do not overlap (an entry inside an
open trade is skipped: the next entry is at or after the exit candle), so each trade is one independent-ish draw and
the t-statistic of the per-trade net returns means something; overlapping trades would count one move several
times. A trade never spans a gap in the data (``can_hold``, computed by the caller from the interval grid): its exit
price would belong to another moment than the label's.

Next to it: buy-and-hold over the same test rows, and volatility timing -- the same procedure with the signal
"the volatility score is in its top share", firing on as many rows as the model's signal does. A model that beats
buy-and-hold but not volatility timing has learned when the market moves, not which way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class TradeStats:
    trades: int
    gross_bp: float  # mean gross return per trade in basis points (NaN when no trades)
    net_bp: float  # gross minus the round-trip fee (2 * fee * 1e4)
    t_stat: float  # of the per-trade net returns: mean / (sd / sqrt(n)), NaN when n < 2 or sd == 0
    exposure: float  # share of the evaluated candles spent in a trade
    total_return: float  # compounded net return of all trades in time order (0.0 when no trades)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: NaN (no trades, or no spread) becomes None."""
        return {
            "trades": self.trades,
            "gross_bp": _finite_or_none(self.gross_bp),
            "net_bp": _finite_or_none(self.net_bp),
            "t_stat": _finite_or_none(self.t_stat),
            "exposure": self.exposure,
            "total_return": self.total_return,
        }


@dataclass(frozen=True)
class Backtest:
    horizon: int
    fee: float  # per side
    model: TradeStats  # trades where the signal fires
    volatility_timing: TradeStats  # same procedure, signal = volatility score in its top share, same signal rate
    buy_hold: float  # close[last test row] / close[first test row] - 1, minus two fees
    open_time: np.ndarray  # for the equity plot: the test rows' open times ...
    equity: np.ndarray  # ... and the model's compounded equity at each test row (1.0 = start)

    @property
    def rule(self) -> str:
        return (
            f"long at the close of a candle whose signal fires, held {self.horizon} candles, no overlapping trades, "
            f"fee {self.fee:.2%} per side"
        )

    def to_dict(self) -> dict[str, Any]:
        """Everything but the arrays, JSON-ready."""
        return {
            "rule": self.rule,
            "horizon": self.horizon,
            "fee": self.fee,
            "model": self.model.to_dict(),
            "volatility_timing": self.volatility_timing.to_dict(),
            "buy_hold": self.buy_hold,
        }


def _finite_or_none(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def entries(rows: np.ndarray, fires: np.ndarray, can_hold: np.ndarray, horizon: int) -> np.ndarray:
    """Entry candle indices, in time order: the rows where ``fires`` (one per row) and ``can_hold``, skipping every
    one that falls inside an open trade, i.e. before the previous entry + ``horizon``."""
    candidates = rows[fires & can_hold[rows]]
    taken: list[int] = []
    at = 0
    # one iteration per trade, not per row: jump straight to the first candidate at or after the exit
    while at < len(candidates):
        i = int(candidates[at])
        taken.append(i)
        at = int(np.searchsorted(candidates, i + horizon, "left"))
    return np.asarray(taken, dtype=np.int64)


def _stats(close: np.ndarray, rows: np.ndarray, entry: np.ndarray, horizon: int, fee: float) -> TradeStats:
    if len(entry) == 0:
        return TradeStats(0, math.nan, math.nan, math.nan, 0.0, 0.0)
    gross = close[entry + horizon] / close[entry] - 1.0
    net = gross - 2.0 * fee
    n = len(net)
    sd = float(np.std(net, ddof=1)) if n >= 2 else 0.0
    t_stat = float(net.mean() / (sd / math.sqrt(n))) if sd > 0 else math.nan
    # evaluated candles a trade spans: the test rows from its entry up to (not including) its exit
    held = np.searchsorted(rows, entry + horizon, "left") - np.searchsorted(rows, entry, "left")
    return TradeStats(
        trades=n,
        gross_bp=float(gross.mean() * 1e4),
        net_bp=float(net.mean() * 1e4),
        t_stat=t_stat,
        exposure=float(held.sum() / len(rows)),
        total_return=float(np.prod(1.0 + net) - 1.0),
    )


def _equity(close: np.ndarray, rows: np.ndarray, entry: np.ndarray, horizon: int, fee: float) -> np.ndarray:
    """1.0 until the first exit, then compounded by each trade's net return from its exit row on; a trade whose exit
    candle is after the last test row is booked at the last row, so the curve ends at 1 + total_return."""
    step = np.ones(len(rows))
    if len(entry):
        net = close[entry + horizon] / close[entry] - 1.0 - 2.0 * fee
        at = np.minimum(np.searchsorted(rows, entry + horizon, "left"), len(rows) - 1)
        np.multiply.at(step, at, 1.0 + net)
    return np.cumprod(step)


def _top_share(vol_score: np.ndarray, firing: int) -> np.ndarray:
    """The rows whose score is at or above the ``firing``-th largest: the (1 - share) quantile, share = firing / n,
    as the threshold (ties at it all fire, so ties can make a few more rows fire than the model's signal)."""
    if firing == 0:
        return np.zeros(len(vol_score), dtype=bool)
    threshold = np.partition(vol_score, len(vol_score) - firing)[len(vol_score) - firing]
    return vol_score >= threshold


def _bools(name: str, values: Any) -> np.ndarray:
    """True/False, or 0/1: a probability passed by mistake would otherwise turn into True everywhere."""
    arr = np.asarray(values)
    if arr.dtype == bool:
        return arr
    if arr.dtype.kind not in "iuf":
        raise ValueError(f"{name} must hold True/False (dtype {arr.dtype}); hint: pass a boolean array.")
    bad = ~np.isin(arr, (0, 1))
    if bad.any():
        found = arr[bad].flat[0].item()
        raise ValueError(f"{name} must hold True/False, found {found!r}; hint: pass a boolean array (e.g. p >= 0.5).")
    return arr.astype(bool)


def _check(
    open_time: np.ndarray,
    close: np.ndarray,
    can_hold: np.ndarray,
    rows: np.ndarray,
    signal: np.ndarray,
    vol_score: np.ndarray,
    horizon: Any,
    fee: Any,
) -> None:
    n = len(close)
    if rows.ndim != 1 or len(rows) == 0 or rows.dtype.kind not in "iu":
        raise ValueError(f"rows must be a non-empty array of row indices, got {rows!r}; hint: the test rows.")
    if rows[0] < 0 or rows[-1] >= n or (np.diff(rows) <= 0).any():
        raise ValueError(
            f"rows must be strictly increasing indices in [0, {n}), got {rows[0]}..{rows[-1]}; hint: the test rows, "
            "in time order."
        )
    for name, arr, size in (
        ("open_time", open_time, n),
        ("can_hold", can_hold, n),
        ("signal", signal, len(rows)),
        ("vol_score", vol_score, len(rows)),
    ):
        if arr.ndim != 1 or len(arr) != size:
            raise ValueError(f"{name} has shape {arr.shape}, expected ({size},); hint: one value per row.")
    if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)) or horizon < 1:
        raise ValueError(f"horizon must be a positive whole number of candles, got {horizon!r}; hint: e.g. 6.")
    if isinstance(fee, bool) or not isinstance(fee, (int, float)) or not 0.0 <= fee < 0.5:
        raise ValueError(f"fee must be a share per side in [0, 0.5), got {fee!r}; hint: 0.001 is 0.1%.")
    if np.isnan(vol_score).any():
        raise ValueError(
            f"vol_score holds NaN at test row {int(np.argmax(np.isnan(vol_score)))}; hint: score every test row."
        )
    held = rows[can_hold[rows]]
    if len(held) and held[-1] + horizon >= n:
        raise ValueError(
            f"can_hold is True at row {int(held[-1])} but the data end at row {n - 1}, before its exit at "
            f"{int(held[-1]) + horizon}; hint: can_hold[i] means candles i..i+horizon exist and are consecutive."
        )
    used = np.unique(np.concatenate((rows, held + horizon)))
    if not (np.isfinite(close[used]) & (close[used] > 0)).all():
        bad = int(used[np.argmax(~(np.isfinite(close[used]) & (close[used] > 0)))])
        raise ValueError(f"close[{bad}] is {float(close[bad])!r}; hint: prices must be positive and finite.")


def run(
    open_time: Any,
    close: Any,
    can_hold: Any,
    rows: Any,
    signal: Any,
    vol_score: Any,
    *,
    horizon: int,
    fee: float,
) -> Backtest:
    """Backtest ``signal`` (one bool per test row) over the test ``rows`` (indices into the full arrays).

    ``can_hold[i]``: candles i..i+horizon are consecutive on the interval grid. ``vol_score``: a volatility feature
    per test row, for the volatility-timing comparison at the same signal rate."""
    open_time, close = np.asarray(open_time), np.asarray(close, dtype=np.float64)
    can_hold, rows = _bools("can_hold", can_hold), np.asarray(rows)
    signal, vol_score = _bools("signal", signal), np.asarray(vol_score, dtype=np.float64)
    _check(open_time, close, can_hold, rows, signal, vol_score, horizon, fee)
    horizon, fee = int(horizon), float(fee)
    model = entries(rows, signal, can_hold, horizon)
    timing = entries(rows, _top_share(vol_score, int(signal.sum())), can_hold, horizon)
    return Backtest(
        horizon=horizon,
        fee=fee,
        model=_stats(close, rows, model, horizon, fee),
        volatility_timing=_stats(close, rows, timing, horizon, fee),
        buy_hold=float(close[rows[-1]] / close[rows[0]] - 1.0 - 2.0 * fee),
        open_time=open_time[rows],
        equity=_equity(close, rows, model, horizon, fee),
    )
