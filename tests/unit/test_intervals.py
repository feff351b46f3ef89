"""Binance interval grids on real calendar dates: weeks open on Mondays, months on the 1st (28 to 31 days)."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from xylen.core import intervals as iv
from xylen.core.errors import DataError

pytestmark = pytest.mark.unit


def ms(*args: int) -> int:
    return int(datetime(*args, tzinfo=timezone.utc).timestamp() * 1000)


MON_2024_01_01 = ms(2024, 1, 1)  # a Monday
DAY = 86_400_000


def test_every_binance_interval_is_known_and_case_matters() -> None:
    assert iv.INTERVALS == ("1s", "1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d", "3d",
                            "1w", "1M")
    assert iv.check("1M") == "1M"
    with pytest.raises(DataError, match="'1W'"):
        iv.check("1W")


def test_weeks_open_on_mondays() -> None:
    wed = ms(2024, 1, 3, 15, 30)
    assert iv.floor(wed, "1w") == MON_2024_01_01
    assert iv.ceil(wed, "1w") == ms(2024, 1, 8)
    assert iv.ceil(MON_2024_01_01, "1w") == MON_2024_01_01
    assert iv.next_open(MON_2024_01_01, "1w") == ms(2024, 1, 8)
    assert iv.close_time(MON_2024_01_01, "1w") == ms(2024, 1, 8) - 1
    # the epoch was a Thursday: epoch-modulo-a-week would put candles on Thursdays
    thursday = ms(2024, 1, 4)
    assert thursday % (7 * DAY) == 0
    assert iv.aligned(np.array([MON_2024_01_01, thursday]), "1w").tolist() == [True, False]


def test_months_are_calendar_months() -> None:
    feb = ms(2024, 2, 1)
    assert iv.floor(ms(2024, 2, 29, 23, 59), "1M") == feb
    assert iv.next_open(feb, "1M") == ms(2024, 3, 1)  # 2024 is a leap year: 29 days
    assert iv.next_open(ms(2023, 2, 1), "1M") == ms(2023, 3, 1)  # 28 days
    assert iv.next_open(ms(2023, 12, 1), "1M") == ms(2024, 1, 1)  # over the year end
    assert iv.ceil(ms(2024, 1, 15), "1M") == feb
    assert iv.close_time(feb, "1M") == ms(2024, 3, 1) - 1
    assert iv.aligned(np.array([feb, feb + DAY]), "1M").tolist() == [True, False]
    assert iv.slots(ms(2024, 1, 1), ms(2024, 4, 1), "1M") == 3
    assert iv.slots(ms(2024, 1, 1), ms(2024, 3, 2), "1M") == 3  # March opens before the end
    assert iv.opens_between(ms(2023, 11, 15), ms(2024, 3, 1), "1M").tolist() == [
        ms(2023, 12, 1), ms(2024, 1, 1), ms(2024, 2, 1)]
    assert iv.approx_ms("1M") == 2_629_746_000


def test_gaps_and_holes_count_calendar_slots() -> None:
    months = np.array([ms(2023, 12, 1), ms(2024, 1, 1), ms(2024, 4, 1), ms(2024, 5, 1)])
    assert iv.gaps(months, "1M") == [(ms(2024, 1, 1), 2)]  # February and March are missing
    assert iv.holes(months, "1M") == [(ms(2024, 2, 1), ms(2024, 4, 1))]
    weeks = np.array([MON_2024_01_01, ms(2024, 1, 8), ms(2024, 1, 29)])
    assert iv.gaps(weeks, "1w") == [(ms(2024, 1, 8), 2)]
    assert iv.holes(weeks, "1w") == [(ms(2024, 1, 15), ms(2024, 1, 29))]
    assert iv.holes(np.array([0, 60_000, 120_000]), "1m") == []
    assert iv.consecutive(months, "1M").tolist() == [True, False, True]


def test_infer_recognises_weeks_and_months() -> None:
    assert iv.infer(np.arange(5) * 7 * DAY + MON_2024_01_01) == "1w"
    assert iv.infer(np.array([ms(2024, m, 1) for m in range(1, 13)])) == "1M"
    assert iv.infer(np.arange(10) * 300_000) == "5m"
    assert iv.infer(np.array([ms(2024, 1, 3), ms(2024, 2, 3), ms(2024, 3, 3)])) is None  # monthly, not on the 1st
    assert iv.infer(np.array([5])) is None


@given(st.integers(min_value=ms(2017, 1, 1), max_value=ms(2035, 1, 1)), st.sampled_from(iv.INTERVALS))
def test_floor_ceil_next_open_agree(t: int, interval: str) -> None:
    lo, hi = iv.floor(t, interval), iv.ceil(t, interval)
    assert lo <= t <= hi and iv.aligned(np.array([lo, hi]), interval).all()
    assert iv.slots(lo, iv.next_open(lo, interval), interval) == 1
    if interval == "3d":  # no known anchor: floor and ceil round to the day (test_three_day_candles_...)
        assert hi - lo in (0, iv.DAY_MS)
        return
    assert lo == hi or iv.next_open(lo, interval) == hi
    assert iv.floor(iv.next_open(lo, interval) - 1, interval) == lo


def test_three_day_candles_assume_no_grid_anchor():
    """Binance does not document where 3d candles start: every day boundary is accepted, and floor/ceil agree with
    that (they round to the day), so a backfill asks from the right day and never skips a candle at --since."""
    import numpy as np

    from xylen.core import intervals

    day = 86_400_000
    jan2 = 1_704_153_600_000  # 2024-01-02 00:00 UTC, not on the epoch's 3-day grid
    assert jan2 % (3 * day) != 0
    assert intervals.aligned(np.array([jan2]), "3d").all()
    assert intervals.floor(jan2, "3d") == jan2 == intervals.ceil(jan2, "3d")
    assert intervals.floor(jan2 + 5, "3d") == jan2 and intervals.ceil(jan2 + 5, "3d") == jan2 + day
    assert intervals.next_open(jan2, "3d") == jan2 + 3 * day
    assert list(intervals.opens_between(jan2 + 5, jan2 + 7 * day, "3d")) == [jan2 + day, jan2 + 4 * day]
    assert not intervals.aligned(np.array([jan2 + 3_600_000]), "3d").any()
