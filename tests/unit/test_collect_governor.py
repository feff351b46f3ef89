"""The rate-limit governor with a fake clock: budget, Retry-After windows, backoff with jitter."""

from __future__ import annotations

import random

import pytest

from xylen.collect.governor import Governor, Refused, Retryable
from xylen.core.errors import ExchangeTemporaryError

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000_000
        self.slept: list[float] = []

    def __call__(self) -> int:
        return self.now

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.now += int(s * 1000)


def gov(clock: Clock, share: float = 10 / 6000, **kw: object) -> Governor:
    return Governor(share, clock=clock, sleep=clock.sleep, rng=random.Random(1), **kw)  # type: ignore[arg-type]


def test_budget_waits_for_weight_to_leave_the_window() -> None:
    c = Clock()
    g = gov(c)  # cap 10
    for _ in range(5):
        g.call(lambda: "ok", weight=2, what="klines")
    assert c.slept == []
    c.now += 10_000
    g.call(lambda: "ok", weight=2, what="klines")  # the first call leaves the window at +60 s
    assert c.slept == [50.0]
    assert g.stats.max_used_weight <= 10
    assert "weight budget" in g.stats.waits[0]


def test_header_weight_of_other_clients_counts() -> None:
    c = Clock()
    g = gov(c)
    g.observe({"X-MBX-USED-WEIGHT-1M": "9"})  # someone else on this IP used 9
    g.call(lambda: 1, weight=2, what="klines")
    assert c.slept == [60.0]


def test_retry_after_blocks_every_call_until_it_passed() -> None:
    c = Clock()
    g = gov(c, share=1.0)
    answers = iter([Refused(429, 3), "ok"])

    def fn() -> str:
        a = next(answers)
        if isinstance(a, Exception):
            raise a
        return a

    t0 = c.now
    assert g.call(fn, weight=2, what="klines") == "ok"
    assert c.now - t0 >= 3000  # nothing was sent inside the window
    assert g.stats.rate_limited == 1
    # a second caller is blocked by the same window
    g.block(5, 418)
    t1 = c.now
    g.call(lambda: 1, weight=1, what="time")
    assert c.now - t1 >= 5000 and g.stats.banned == 1


def test_a_long_ban_is_not_waited_out_in_process() -> None:
    c = Clock()
    g = gov(c, share=1.0)

    def fn() -> None:
        raise Refused(418, 7200)

    with pytest.raises(ExchangeTemporaryError, match="banned") as info:
        g.call(fn, weight=2, what="klines")
    assert info.value.retry_after == 7200 and info.value.exit_code == 6


def test_5xx_and_timeouts_back_off_with_jitter_then_give_up() -> None:
    c = Clock()
    g = gov(c, share=1.0, max_attempts=5)
    calls = []

    def fn() -> None:
        calls.append(c.now)
        raise Retryable("HTTP 503", server=True)

    with pytest.raises(ExchangeTemporaryError, match="5 attempts"):
        g.call(fn, weight=2, what="klines")
    assert len(calls) == 5 and len(c.slept) == 4
    ceilings = [min(30.0, 0.5 * 2 ** a) for a in range(1, 5)]
    assert all(0.1 * top <= s <= top for s, top in zip(c.slept, ceilings))
    assert len(set(c.slept)) == 4  # jittered
    assert g.stats.server_errors == 5


def test_a_stop_request_ends_a_wait_within_a_poll_step() -> None:
    """SIGTERM during a retry's backoff or a Retry-After window: the wait ends at the next poll step (0.2 s), not
    after the whole window (up to 600 s), so a service stops within its stop timeout; no further call is made."""
    from xylen.collect.governor import STOP_POLL_S, StopRequested

    c = Clock()
    g = gov(c, share=1.0)
    g.block(300, 429)  # a five-minute Retry-After window
    g.should_stop = lambda: len(c.slept) >= 3  # SIGTERM arrives during the third poll step
    calls = []
    with pytest.raises(StopRequested):
        g.call(lambda: calls.append(1), weight=2, what="klines")
    assert calls == [] and len(c.slept) == 3 and all(s <= STOP_POLL_S for s in c.slept)
    g.should_stop = None  # without a stop request the same wait is one sleep of the whole window
    g.call(lambda: calls.append(1), weight=2, what="klines")
    assert calls == [1] and c.slept[3] > 290


def test_a_stoppable_wait_lasts_exactly_as_long_as_an_unstoppable_one() -> None:
    """The poll steps add up to the whole wait, to the millisecond (a step short let a call out 1 ms before the
    exchange's window ended, and the fake answered with more used weight than the cap)."""
    for seconds in (60.0, 1.001, 0.3, 59.999):
        c = Clock()
        g = gov(c)
        g.should_stop = lambda: False
        start = c.now
        g._wait(seconds, "test")
        assert c.now - start == round(seconds * 1000), seconds


@pytest.mark.parametrize("value", ["nan", "inf", "-5", "Wed, 21 Oct 2026 07:28:00 GMT", None, ""])
def test_a_retry_after_that_is_no_wait_gets_the_careful_default(value: object) -> None:
    from xylen.collect.governor import retry_after_of

    assert retry_after_of({"Retry-After": value}, 429) == 60.0
    assert retry_after_of({"Retry-After": value}, 418) == 120.0
    assert retry_after_of({"Retry-After": "7"}, 429) == 7.0
