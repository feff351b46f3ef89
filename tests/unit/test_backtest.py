"""The label-matched backtest: hand-computed trades, fees, non-overlap, gaps, volatility timing, and hostile inputs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from xylen.train import backtest
from xylen.train.backtest import TradeStats

pytestmark = pytest.mark.unit
STEP = 300_000  # 5m
T0 = 1_700_000_000_000


def grid(n: int) -> np.ndarray:
    return T0 + STEP * np.arange(n, dtype=np.int64)


def run(
    close: list[float],
    signal: list[bool],
    *,
    rows: list[int] | None = None,
    can_hold: list[bool] | None = None,
    vol: list[float] | None = None,
    horizon: int = 1,
    fee: float = 0.001,
) -> backtest.Backtest:
    n = len(close)
    r = np.arange(len(signal)) if rows is None else np.asarray(rows)
    hold = np.arange(n) + horizon < n if can_hold is None else np.asarray(can_hold)
    v = np.zeros(len(r)) if vol is None else np.asarray(vol, dtype=float)
    return backtest.run(grid(n), np.asarray(close, float), hold, r, np.asarray(signal), v, horizon=horizon, fee=fee)


def test_fees_returns_t_stat_compounding_and_equity_by_hand() -> None:
    # trades: 0 -> 1 (+10%), 2 -> 3 (-10%), 4 -> 5 (+20%); row 1 and 3 do not fire
    bt = run([100, 110, 110, 99, 99, 118.8], [True, False, True, False, True], horizon=1, fee=0.001)
    m = bt.model
    assert m.trades == 3
    assert m.gross_bp == pytest.approx((0.1 - 0.1 + 0.2) / 3 * 1e4)  # 666.67 bp
    assert m.net_bp == pytest.approx(m.gross_bp - 20.0)  # two fees of 10 bp
    net = [0.098, -0.102, 0.198]
    mean, sd = sum(net) / 3, math.sqrt(sum((x - sum(net) / 3) ** 2 for x in net) / 2)
    assert m.t_stat == pytest.approx(mean / (sd / math.sqrt(3)))  # 0.7332
    assert m.t_stat == pytest.approx(0.73325, abs=1e-4)
    assert m.total_return == pytest.approx(1.098 * 0.898 * 1.198 - 1)  # compounded, not summed
    assert m.exposure == pytest.approx(3 / 5)
    # equity steps at each exit row; the last trade exits after the last test row (4) and is booked there
    np.testing.assert_allclose(bt.equity, [1.0, 1.098, 1.098, 1.098 * 0.898, 1.098 * 0.898 * 1.198])
    assert bt.equity[-1] == pytest.approx(1 + m.total_return)
    np.testing.assert_array_equal(bt.open_time, grid(6)[:5])


def test_trades_never_overlap_the_next_entry_is_at_or_after_the_exit() -> None:
    close = [100.0 + i for i in range(13)]
    bt = run(close, [True] * 10, horizon=3)
    hold = np.arange(13) + 3 < 13
    np.testing.assert_array_equal(backtest.entries(np.arange(10), np.ones(10, bool), hold, 3), [0, 3, 6, 9])
    assert bt.model.trades == 4
    gross = [103 / 100 - 1, 106 / 103 - 1, 109 / 106 - 1, 112 / 109 - 1]
    assert bt.model.gross_bp == pytest.approx(np.mean(gross) * 1e4)
    assert bt.model.exposure == 1.0  # every test row is inside a trade (the last one runs past the test rows)


def test_a_signal_inside_an_open_trade_is_skipped_not_queued() -> None:
    # fires at 0, 1, 3: the trade 0 -> 2 is open at 1 (skipped); 3 is after the exit, a new trade 3 -> 5
    bt = run([10, 10, 11, 12, 12, 15, 15], [True, True, False, True, False], horizon=2, fee=0.0)
    assert bt.model.trades == 2
    assert bt.model.gross_bp == pytest.approx((0.1 + 0.25) / 2 * 1e4)


def test_a_row_that_cannot_hold_is_not_entered_and_does_not_block_the_next() -> None:
    # can_hold[1] False (a gap within candles 1..3): the signal at 1 is skipped, the one at 2 trades
    bt = run(
        [100, 100, 100, 100, 120, 120],
        [False, True, True, False],
        can_hold=[True, False, True, True, False, False],
        horizon=2,
        fee=0.0,
    )
    assert bt.model.trades == 1
    assert bt.model.gross_bp == pytest.approx(2000.0)  # 2 -> 4: 100 -> 120
    lone = run([100, 100, 100, 100], [False, True], can_hold=[True, False, False, False], horizon=2)
    assert lone.model.trades == 0


def test_buy_and_hold_over_the_test_rows_minus_two_fees() -> None:
    close = [50, 100, 110, 120, 130, 125, 999]
    bt = run(close, [False] * 4, rows=[1, 2, 3, 5], vol=[1, 2, 3, 4], fee=0.001)
    assert bt.buy_hold == pytest.approx(125 / 100 - 1 - 0.002)


def test_volatility_timing_fires_on_as_many_rows_as_the_model_and_trades_the_same_way() -> None:
    # the model fires on 2 of 6 rows; volatility timing on the 2 highest vol scores: rows 1 and 3
    close = [100, 100, 90, 90, 99, 99, 99]
    bt = run(close, [True, False, False, False, False, True], vol=[0.1, 0.9, 0.3, 0.8, 0.2, 0.05], horizon=1)
    assert backtest._top_share(np.array([0.1, 0.9, 0.3, 0.8, 0.2, 0.05]), 2).tolist() == [
        False,
        True,
        False,
        True,
        False,
        False,
    ]
    v = bt.volatility_timing
    assert v.trades == 2
    assert v.gross_bp == pytest.approx((-0.1 + 0.1) / 2 * 1e4)
    assert v.net_bp == pytest.approx(-20.0)
    assert v.total_return == pytest.approx(0.898 * 1.098 - 1)
    assert bt.model.trades == 2


def test_volatility_timing_ties_at_the_threshold_all_fire() -> None:
    fires = backtest._top_share(np.array([1.0, 2.0, 2.0, 2.0, 0.5]), 2)
    assert fires.tolist() == [False, True, True, True, False]


def test_volatility_timing_matches_the_signal_rate_on_random_scores() -> None:
    rng = np.random.default_rng(0)
    for k in (1, 7, 250, 999, 1000):
        assert backtest._top_share(rng.normal(size=1000), k).sum() == k


def test_no_trades_gives_nan_statistics_and_a_flat_equity() -> None:
    bt = run([100, 101, 102, 103], [False, False, False], vol=[3.0, 2.0, 1.0])
    for stats in (bt.model, bt.volatility_timing):  # the model never fires: neither does volatility timing
        assert stats.trades == 0 and stats.exposure == 0.0 and stats.total_return == 0.0
        assert math.isnan(stats.gross_bp) and math.isnan(stats.net_bp) and math.isnan(stats.t_stat)
    np.testing.assert_array_equal(bt.equity, np.ones(3))
    d = bt.to_dict()
    assert d["model"]["gross_bp"] is None and d["model"]["t_stat"] is None
    json.dumps(d, allow_nan=False)


def test_t_stat_needs_two_trades_and_some_spread() -> None:
    one = run([100, 110, 110], [True, False], horizon=1)
    assert one.model.trades == 1 and math.isnan(one.model.t_stat) and one.model.net_bp == pytest.approx(980.0)
    same = run([100, 110, 100, 110], [True, False, True], horizon=1)
    assert same.model.trades == 2 and math.isnan(same.model.t_stat)


def test_to_dict_states_the_rule_and_leaves_out_the_arrays() -> None:
    bt = run([100, 110, 110, 99, 99, 118.8], [True, False, True, False, True], horizon=1, fee=0.001)
    d = bt.to_dict()
    assert d["rule"] == (
        "long at the close of a candle whose signal fires, held 1 candles, no overlapping trades, fee 0.10% per side"
    )
    assert set(d) == {"rule", "horizon", "fee", "model", "volatility_timing", "buy_hold"}
    assert set(d["model"]) == {"trades", "gross_bp", "net_bp", "t_stat", "exposure", "total_return"}
    assert d["model"]["trades"] == 3 and d["fee"] == 0.001
    json.dumps(d, allow_nan=False)
    assert TradeStats(0, math.nan, math.nan, math.nan, 0.0, 0.0).to_dict()["net_bp"] is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"horizon": 0}, "horizon must be a positive whole number of candles, got 0"),
        ({"horizon": 1.5}, "horizon must be a positive whole number of candles, got 1.5"),
        ({"fee": -0.001}, "fee must be a share per side in [0, 0.5), got -0.001"),
        ({"fee": math.nan}, "fee must be a share per side in [0, 0.5), got nan"),
        ({"rows": np.array([0, 2, 1, 3])}, "rows must be strictly increasing"),
        ({"rows": np.array([0, 1, 2, 9])}, "rows must be strictly increasing indices in [0, 8)"),
        ({"rows": np.array([], dtype=np.int64)}, "rows must be a non-empty array"),
        ({"signal": np.array([True, False])}, "signal has shape (2,), expected (4,)"),
        ({"signal": np.array([0.7, 0.2, 0.9, 0.1])}, "signal must hold True/False, found 0.7"),
        ({"signal": np.array(["yes"] * 4)}, "signal must hold True/False (dtype <U3)"),
        ({"vol_score": np.array([1.0, np.nan, 2.0, 3.0])}, "vol_score holds NaN at test row 1"),
        ({"can_hold": np.ones(8, bool), "horizon": 5}, "can_hold is True at row 3 but the data end at row 7"),
        ({"close": np.array([100.0, 101, 0, 103, 104, 105, 106, 107])}, "close[2] is 0.0"),
        ({"open_time": grid(7)}, "open_time has shape (7,), expected (8,)"),
    ],
)
def test_bad_inputs_raise_a_clear_value_error(change: dict[str, object], message: str) -> None:
    args: dict[str, object] = {
        "open_time": grid(8),
        "close": np.linspace(100, 107, 8),
        "can_hold": np.arange(8) + 4 < 8,
        "rows": np.arange(4),
        "signal": np.array([True, False, True, False]),
        "vol_score": np.arange(4.0),
        "horizon": 4,
        "fee": 0.001,
    } | change
    with pytest.raises(ValueError, match="hint:") as err:
        backtest.run(
            args["open_time"],
            args["close"],
            args["can_hold"],
            args["rows"],
            args["signal"],
            args["vol_score"],
            horizon=args["horizon"],  # type: ignore[arg-type]
            fee=args["fee"],  # type: ignore[arg-type]
        )
    assert message in str(err.value)


# -- property: against an obvious row-by-row oracle --------------------------------------------------------------


def oracle(close: np.ndarray, rows: np.ndarray, fires: np.ndarray, hold: np.ndarray, h: int) -> list[int]:
    """Walk every test row in time order; enter when flat, firing and holdable; be busy until the exit candle."""
    taken, busy_until = [], -1
    for r, f in zip(rows, fires):
        if f and hold[r] and r >= busy_until:
            taken.append(int(r))
            busy_until = r + h
    return taken


@given(
    gaps=st.lists(st.integers(1, 3), min_size=4, max_size=80),  # grid steps between candles: > 1 is a gap
    horizon=st.integers(1, 6),
    data=st.data(),
)
def test_trades_never_overlap_and_never_span_a_gap(gaps: list[int], horizon: int, data: st.DataObject) -> None:
    steps = np.array([1 if g < 3 else g for g in gaps])  # mostly consecutive, now and then a gap
    open_time = T0 + STEP * np.concatenate(([0], np.cumsum(steps)))
    n = len(open_time)
    idx = np.arange(n)
    ahead = np.minimum(idx + horizon, n - 1)
    can_hold = (idx + horizon < n) & (open_time[ahead] - open_time == horizon * STEP)
    test = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    test[max(n - horizon, 0) :] = False  # test rows have their label's horizon inside the data
    rows = np.flatnonzero(test)
    if len(rows) == 0:
        return
    fires = np.array(data.draw(st.lists(st.booleans(), min_size=len(rows), max_size=len(rows))))
    close = np.array(data.draw(st.lists(st.floats(1.0, 1e5), min_size=n, max_size=n)))
    vol = np.random.default_rng(len(rows)).permutation(len(rows)).astype(float)  # distinct scores

    bt = backtest.run(open_time, close, can_hold, rows, fires, vol, horizon=horizon, fee=0.001)
    taken = backtest.entries(rows, fires, can_hold, horizon)

    assert taken.tolist() == oracle(close, rows, fires, can_hold, horizon)
    assert (np.diff(taken) >= horizon).all()  # no overlap: the next entry is at or after the previous exit
    assert (open_time[taken + horizon] - open_time[taken] == horizon * STEP).all()  # never across a gap
    assert bt.model.trades == len(taken)
    assert bt.equity[-1] == pytest.approx(1 + bt.model.total_return, rel=1e-9)
    assert 0.0 <= bt.model.exposure <= 1.0 and 0.0 <= bt.volatility_timing.exposure <= 1.0
    if len(taken):
        net = close[taken + horizon] / close[taken] - 1 - 0.002
        assert bt.model.net_bp == pytest.approx(net.mean() * 1e4, rel=1e-9, abs=1e-9)
        assert bt.model.total_return == pytest.approx(np.prod(1 + net) - 1, rel=1e-9, abs=1e-12)
    timing = backtest._top_share(vol, int(fires.sum()))
    assert timing.sum() == fires.sum()
    assert bt.volatility_timing.trades == len(oracle(close, rows, timing, can_hold, horizon))
