"""/predict reads the candles the model was trained for: consecutive candles of its interval, the still-open last
candle dropped (and said so), times in seconds, milliseconds or microseconds read by their magnitude. The clock is
an argument: every test passes a fixed one."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import wait_for
from xylen.core import features, intervals
from xylen.core.bundle import load_bundle
from xylen.core.registry import Registry
from xylen.core.settings import load_settings
from xylen.serve.app import create_app
from xylen.serve.decode import RequestError, closed_window, iso

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

pytestmark = pytest.mark.unit
STEP = 300_000  # 5m in ms
MODEL = "btcusdt-5m"


def rows(m: np.ndarray, close: bool = True) -> list[list[Any]]:
    """Binance 12-field arrays (with close_time) or, ``close=False``, 6-field arrays (none)."""
    if not close:
        return [[int(r[0]), *(repr(float(x)) for x in r[1:6])] for r in m]
    return [[int(r[0]), *(repr(float(x)) for x in r[1:6]), int(r[0]) + STEP - 1, "0", 0, "0", "0", "0"] for r in m]


class Clock:
    """A settable clock in epoch seconds: tests move it, the server reads it per request."""

    def __init__(self) -> None:
        self.now = 2e9

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def clock() -> Clock:
    return Clock()


@pytest.fixture(scope="module")
def served(trained_home: Path, clock: Clock) -> Iterator[Callable[..., Any]]:
    clients: dict[float, Any] = {}

    def post(body: dict[str, Any], now_ms: float | None = None, skew: float = 2.0) -> Any:
        if skew not in clients:
            settings = load_settings({"home": trained_home, "clock_skew": skew}, environ={})
            c = TestClient(create_app(settings, clock=clock), base_url="http://127.0.0.1").__enter__()
            wait_for(lambda: c.get("/health/ready").status_code == 200, timeout=60, what="readiness")
            clients[skew] = c
        clock.now = 2e9 if now_ms is None else now_ms / 1000
        return clients[skew].post("/predict", json={"symbol": "BTCUSDT", "timeframe": "5m"} | body)

    yield post
    for c in clients.values():
        c.__exit__(None, None, None)


@pytest.fixture(scope="module")
def offline(trained_home: Path) -> Callable[[np.ndarray], float]:
    bundle = load_bundle(Registry(trained_home / "models").current_path(MODEL))
    return lambda m: bundle.predict_candles(features.CandleArrays.from_matrix(m))


def test_the_still_open_candle_is_dropped_and_the_answer_says_so(served: Any, offline: Any,
                                                                  candle_window: np.ndarray) -> None:
    last = int(candle_window[-1, 0])
    note = f"dropped the still-open candle opened at {iso(last)}"
    for close in (True, False):  # close_time sent, or the next open time decides
        r = served({"candles": rows(candle_window, close)}, now_ms=last + 60_000)  # a minute into the last candle
        assert r.status_code == 200, r.text
        assert r.json()["probability"] == offline(candle_window[:-1]), close
        assert r.json()["notes"] == [note]
    r = served({"candles": rows(candle_window)}, now_ms=last + STEP)  # the candle has just closed
    assert r.json()["probability"] == offline(candle_window) and r.json()["notes"] == []


@pytest.mark.parametrize("close_time", ["zero", "open_time"])
def test_an_early_close_time_does_not_let_the_open_candle_through(served: Any, offline: Any,
                                                                   candle_window: np.ndarray, close_time: str) -> None:
    """A feed whose 7th field is not a close time (or a bogus one) must not make the open candle count as closed."""
    last = int(candle_window[-1, 0])
    c = rows(candle_window)
    c[-1][6] = 0 if close_time == "zero" else last
    r = served({"candles": c}, now_ms=last + 60_000)
    if close_time == "zero":
        assert r.status_code == 422 and "is earlier than its open_time" in r.json()["error"], r.text
    else:
        assert r.status_code == 200 and r.json()["notes"] == [f"dropped the still-open candle opened at {iso(last)}"]
        assert r.json()["probability"] == offline(candle_window[:-1])


def test_the_clock_skew_is_configurable(served: Any, offline: Any, candle_window: np.ndarray) -> None:
    close_time = int(candle_window[-1, 0]) + STEP - 1
    now = close_time - 1000  # the server's clock says the candle closes in one second
    r = served({"candles": rows(candle_window)}, now_ms=now)
    assert r.json()["notes"] == [] and r.json()["probability"] == offline(candle_window)  # within the default 2 s
    r = served({"candles": rows(candle_window)}, now_ms=now, skew=0.0)
    assert len(r.json()["notes"]) == 1 and r.json()["probability"] == offline(candle_window[:-1])


def test_after_dropping_the_open_candle_the_window_must_still_be_long_enough(served: Any,
                                                                             candle_window: np.ndarray) -> None:
    w = candle_window[-features.MIN_CANDLES :]
    r = served({"candles": rows(w)}, now_ms=int(w[-1, 0]) + 1000)
    assert r.status_code == 422
    assert f"{features.MIN_CANDLES - 1} closed candle(s) remain" in r.json()["error"]
    assert f"Send {features.MIN_CANDLES + 1} or more" in r.json()["error"]


def test_only_the_last_candle_may_be_open(served: Any, candle_window: np.ndarray) -> None:
    r = served({"candles": rows(candle_window)}, now_ms=int(candle_window[-2, 0]) + 1000)  # candles from the future
    assert r.status_code == 422, r.text
    assert f"candles[{len(candle_window) - 2}]" in r.json()["error"] and "only the last candle" in r.json()["error"]


def test_gaps_inside_the_feature_window_are_refused_naming_the_row(served: Any, offline: Any,
                                                                   candle_window: np.ndarray) -> None:
    n = len(candle_window)
    gap = np.delete(candle_window, n - 10, axis=0)  # one candle missing among the last 49
    r = served({"candles": rows(gap)})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert f"candles[{n - 10}] opens at {iso(candle_window[n - 9, 0])}" in err
    assert f"opens at {iso(candle_window[n - 10, 0])}" in err and "without gaps" in err
    early = np.delete(candle_window, 5, axis=0)  # a gap before the window the features read: fine
    r = served({"candles": rows(early)})
    assert r.status_code == 200 and r.json()["probability"] == offline(candle_window)


def test_candles_of_another_interval_are_refused(served: Any, candle_window: np.ndarray) -> None:
    hourly = candle_window.copy()
    hourly[:, 0] = candle_window[0, 0] + np.arange(len(hourly)) * 3_600_000
    r = served({"candles": rows(hourly)})
    assert r.status_code == 422 and "consecutive 5m candles" in r.json()["error"], r.text
    minutes = candle_window.copy()
    minutes[:, 0] = candle_window[0, 0] + np.arange(len(minutes)) * 60_000
    assert served({"candles": rows(minutes)}).status_code == 422
    shifted = candle_window.copy()
    shifted[:, 0] += 60_000  # consecutive, but off the 5m grid
    r = served({"candles": rows(shifted)})
    assert r.status_code == 422 and "not on the 5m grid" in r.json()["error"]


def test_duplicated_or_unsorted_times_are_refused_naming_the_row(served: Any, candle_window: np.ndarray) -> None:
    c = rows(candle_window)
    dup = [*c[:90], c[89], *c[90:]]
    r = served({"candles": dup})
    assert r.status_code == 422 and "candles[90].open_time repeats" in r.json()["error"]
    swapped = [*c[:80], c[81], c[80], *c[82:]]
    r = served({"candles": swapped})
    assert r.status_code == 422 and "candles[81].open_time is earlier than" in r.json()["error"]


def test_times_in_seconds_and_microseconds_are_read_by_magnitude(served: Any, offline: Any,
                                                                 candle_window: np.ndarray) -> None:
    want = offline(candle_window)
    c = rows(candle_window)
    seconds = [[r[0] // 1000, *r[1:6], r[6] // 1000, *r[7:]] for r in c]
    micros = [[r[0] * 1000, *r[1:6], r[6] * 1000, *r[7:]] for r in c]
    objects = [{"t": r[0] // 1000, "o": r[1], "h": r[2], "l": r[3], "c": r[4], "v": r[5]} for r in c]
    for label, body in (("s", seconds), ("µs", micros), ("objects in s", objects)):
        r = served({"candles": body})
        assert r.status_code == 200, (label, r.text)
        assert r.json()["probability"] == want, label
    # the unit of close_time is read by magnitude too: the open candle is found in any unit
    last = int(candle_window[-1, 0])
    r = served({"candles": seconds}, now_ms=last + 60_000)
    assert r.json()["notes"] == [f"dropped the still-open candle opened at {iso(last)}"]


@pytest.mark.parametrize(
    ("value", "needle"),
    [(1_704_067_200_000_000_000, "in nanoseconds"), (-1_704_067_200_000, "before 1970"), ("1e30", "nanoseconds")],
)
def test_times_that_no_unit_explains_are_refused_with_the_fix(served: Any, candle_window: np.ndarray,
                                                              value: Any, needle: str) -> None:
    c = rows(candle_window)
    c[93] = [value, *c[93][1:]]  # inside the window the model reads (the last 50 of 100)
    r = served({"candles": c})
    assert r.status_code == 422, r.text
    assert "candles[93].open_time" in r.json()["error"] and needle in r.json()["error"]
    assert "epoch milliseconds like 1704067200000" in r.json()["error"]


@pytest.mark.parametrize("bad", ["soon", True, {"t": 1}, "NaN", -5, 1e30])
def test_a_bad_close_time_is_refused(served: Any, candle_window: np.ndarray, bad: Any) -> None:
    c = rows(candle_window)
    c[-1][6] = bad
    r = served({"candles": c})
    assert r.status_code == 422 and f"candles[{len(c) - 1}].close_time" in r.json()["error"], r.text


def _months(n: int, first: str = "2019-01") -> np.ndarray:
    return np.arange(np.datetime64(first), np.datetime64(first) + n).astype("datetime64[ms]").astype(np.int64)


def _arrays(t: np.ndarray) -> features.CandleArrays:
    one = np.ones(len(t))
    return features.CandleArrays(t.astype(np.int64), one, one, one, one, one)


def test_weeks_open_on_mondays_and_months_are_calendar_months() -> None:
    n = features.MIN_CANDLES + 1
    months = _months(n)
    now = float(months[-1] + 40 * 86_400_000)  # long after the last month closed
    w, notes = closed_window(_arrays(months), None, "1M", now, 2000, "model 'm'")
    assert len(w) == n and notes == []
    w, notes = closed_window(_arrays(months), None, "1M", float(months[-1] + 86_400_000), 2000, "model 'm'")
    assert len(w) == n - 1 and notes == ["dropped the still-open candle opened at 2023-02-01T00:00:00Z"]
    thirty_days = months[0] + np.arange(n) * 30 * 86_400_000
    with pytest.raises(RequestError, match="consecutive 1M candles"):
        closed_window(_arrays(thirty_days), None, "1M", now, 2000, "model 'm'")
    mondays = intervals.floor(1_704_067_200_000, "1w") + np.arange(n) * 7 * 86_400_000
    assert len(closed_window(_arrays(mondays), None, "1w", now * 10, 2000, "m")[0]) == n
    thursdays = (1_704_067_200_000 // (7 * 86_400_000)) * 7 * 86_400_000 + np.arange(n) * 7 * 86_400_000
    with pytest.raises(RequestError, match="not on the 1w grid"):
        closed_window(_arrays(thursdays), None, "1w", now * 10, 2000, "m")
