"""Follow live by REST polling: for the exchanges reached through ccxt (xylen uses no websocket there).

Each series is asked for its new candles just after each of its candles closes (``delay_s`` later: exchanges publish
a closed candle within a second or two), through the same :func:`~xylen.collect.backfill.backfill_series` as the
backfill, so the rules are the same: closed candles only (a row whose close_time has not passed is never stored),
everything since the last stored candle is caught up (after a sleep, a suspended laptop, an outage), nothing is
stored twice, and a candle the exchange has not published yet is asked for again ``retry_s`` later (growing to
``max_retry_s``) instead of being recorded as a gap.

Time is injected: ``clock`` (epoch ms) says what is due; ``sleep`` waits in steps short enough to notice a stop.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from xylen.collect.backfill import backfill_series
from xylen.collect.governor import StopRequested
from xylen.core import intervals
from xylen.core.errors import ExchangeTemporaryError
from xylen.core.store import Store

log = logging.getLogger("xylen.collect")

STEP_S = 0.2  # how often a wait looks at the stop request


@dataclass
class PollStats:
    polls: collections.Counter[str] = field(default_factory=collections.Counter)
    stored: collections.Counter[str] = field(default_factory=collections.Counter)
    early: collections.Counter[str] = field(default_factory=collections.Counter)  # asked before it was published
    failures: collections.Counter[str] = field(default_factory=collections.Counter)


class Poller:
    """Poll ``series`` of ``source`` into ``store`` until ``should_stop()``. ``run()`` blocks."""

    def __init__(
        self,
        source: Any,
        store: Store,
        series: list[tuple[str, str]],
        clock: Callable[[], int],
        should_stop: Callable[[], bool],
        *,
        sleep: Callable[[float], None] = time.sleep,
        delay_s: float = 2.0,
        retry_s: float = 5.0,
        max_retry_s: float = 60.0,
    ) -> None:
        self.source, self.store, self.series = source, store, series
        self.clock, self.should_stop, self.sleep = clock, should_stop, sleep
        self.delay_ms, self.retry_s, self.max_retry_s = int(delay_s * 1000), retry_s, max_retry_s
        self.stats = PollStats()
        self.due: dict[tuple[str, str], int] = {}
        self._retry: dict[tuple[str, str], float] = {}

    def expected_due(self, symbol: str, interval: str) -> int:
        """When the candle after the last stored one has closed (plus the delay): the next poll of the series."""
        last = self.store.last_open_time(symbol, interval)
        now = self.clock()
        if last is None:
            return now
        after = intervals.next_open(last, interval)  # the candle we wait for opens here ...
        return intervals.next_open(after, interval) + self.delay_ms  # ... and has closed by then

    def run(self) -> None:
        for s in self.series:
            self.due[s] = self.expected_due(*s)
        while not self.should_stop():
            now = self.clock()
            ready = [s for s in self.series if self.due[s] <= now]
            for s in ready:
                if self.should_stop():
                    return
                self.poll(*s)
            if not ready:
                wait_s = (min(self.due.values()) - now) / 1000
                self.sleep(max(0.0, min(STEP_S, wait_s)))

    def poll(self, symbol: str, interval: str) -> None:
        key = f"{symbol} {interval}"
        self.stats.polls[key] += 1
        try:
            r = backfill_series(self.source, self.store, symbol, interval, self.clock(), should_stop=self.should_stop)
        except StopRequested:
            return
        except ExchangeTemporaryError as exc:  # the governor gave up for now: try again later, keep the rest going
            self.stats.failures[key] += 1
            log.warning("%s %s: polling failed for now: %s", self.source.exchange, key, exc.message)
            self._later((symbol, interval))
            return
        self.stats.stored[key] += r.added
        due = self.expected_due(symbol, interval)
        if due <= self.clock():  # the candle we waited for has closed but was not published yet
            self.stats.early[key] += 1
            self._later((symbol, interval))
        else:
            self._retry.pop((symbol, interval), None)
            self.due[(symbol, interval)] = due

    def _later(self, s: tuple[str, str]) -> None:
        wait = self._retry.get(s, self.retry_s)
        self._retry[s] = min(self.max_retry_s, wait * 2)
        self.due[s] = self.clock() + int(wait * 1000)
