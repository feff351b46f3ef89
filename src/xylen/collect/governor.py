"""The rate-limit governor: every REST call to an exchange goes through one of these (``name`` says which in its
messages; Binance's weight budget is the default, a ccxt venue's governor gets a budget that never binds because
ccxt's own limiter paces its calls).

python-binance has no retry and no notion of the exchange's weight budget, so the governor

* keeps a rolling one-minute log of the weight it spent and reads ``X-MBX-USED-WEIGHT-1M`` after every
  answer (the exchange's count includes other clients on the same IP), and waits before a call that would
  take the used weight above its cap (``weight_budget_share`` of 6000);
* on 429 or 418 stops *every* call until ``Retry-After`` has passed: a call inside a 429's window earns a
  418 ban, from 2 minutes up to 3 days;
* on 5xx, timeouts, dropped connections and truncated bodies retries with exponential backoff and full
  jitter, a bounded number of times, then raises :class:`ExchangeTemporaryError`;
* logs what it waits for.

Time is injected (``clock`` in epoch ms, ``sleep`` in seconds) so tests drive it with a fake clock.
"""

from __future__ import annotations

import collections
import logging
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from xylen.core.errors import ExchangeError, ExchangeTemporaryError

log = logging.getLogger("xylen.collect")

T = TypeVar("T")

WEIGHT_LIMIT_1M = 6000
WINDOW_MS = 60_000
RETRY_AFTER_MARGIN_S = 0.5  # Retry-After is whole seconds; a request a hair early is a 418
STOP_POLL_S = 0.2  # how often a wait checks for a stop request


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class GovernorStats:
    calls: int = 0
    retries: int = 0
    rate_limited: int = 0  # 429 answers
    banned: int = 0  # 418 answers
    server_errors: int = 0
    transport_errors: int = 0
    waited_s: float = 0.0
    max_used_weight: int = 0
    waits: list[str] = field(default_factory=list)


class Governor:
    """Thread-safe gate in front of the exchange. ``call(fn, weight=2, what="...")`` runs ``fn(client)``-style
    callables; ``fn`` returns ``(result, headers)`` or raises (see :func:`classify`)."""

    def __init__(
        self,
        share: float = 0.5,
        *,
        limit: int = WEIGHT_LIMIT_1M,
        clock: Callable[[], int] = wall_clock_ms,
        sleep: Callable[[float], None] = time.sleep,
        max_attempts: int = 8,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 30.0,
        rng: random.Random | None = None,
        name: str = "Binance",
    ) -> None:
        self.name = name
        self.cap = max(1, int(limit * share))
        self.clock = clock
        self.sleep = sleep
        self.max_attempts = max_attempts
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.rng = rng or random.Random()
        self.stats = GovernorStats()
        self._spent: collections.deque[tuple[int, int]] = collections.deque()  # (ms, weight) of our calls
        self._foreign = (0, 0)  # (weight seen in the header beyond our own, at ms)
        self._blocked_until = 0  # ms: Retry-After of a 429/418
        self._lock = threading.Lock()
        # Set by `collect` to its stop request: a wait (a retry's backoff, a Retry-After window, the weight budget)
        # then ends within STOP_POLL_S of SIGTERM with StopRequested, instead of outlasting a service's stop timeout.
        self.should_stop: Callable[[], bool] | None = None

    # ------------------------------------------------------------------ budget
    def _ours(self, now: int) -> int:
        while self._spent and self._spent[0][0] <= now - WINDOW_MS:
            self._spent.popleft()
        return sum(w for _, w in self._spent)

    def _used(self, now: int) -> int:
        foreign, seen = self._foreign
        return self._ours(now) + (foreign if now < seen + WINDOW_MS else 0)

    def _wait_needed(self, weight: int, now: int) -> tuple[float, str]:
        """Seconds to wait before spending ``weight`` now, and why (0 when it may go)."""
        if now < self._blocked_until:
            return (self._blocked_until - now) / 1000, "the exchange's Retry-After window"
        if self._used(now) + weight <= self.cap:
            return 0.0, ""
        # the earliest moment at which enough weight has left the window
        foreign, seen = self._foreign
        events = sorted({t + WINDOW_MS for t, _ in self._spent} | ({seen + WINDOW_MS} if foreign else set()))
        for t in events:
            if t > now and self._used(t) + weight <= self.cap:
                return (t - now) / 1000, f"the weight budget ({self._used(now)}/{self.cap} used in the last minute)"
        return WINDOW_MS / 1000, f"the weight budget ({self._used(now)}/{self.cap})"

    def acquire(self, weight: int, what: str) -> None:
        """Block (through the injected sleep) until ``weight`` fits the budget and no ban window is open."""
        while True:
            with self._lock:
                now = self.clock()
                wait_s, reason = self._wait_needed(weight, now)
                if wait_s <= 0:
                    self._spent.append((now, weight))
                    self.stats.max_used_weight = max(self.stats.max_used_weight, self._used(now))
                    return
            self._wait(wait_s, f"{what}: waiting {wait_s:.1f}s for {reason}")

    def _wait(self, seconds: float, message: str) -> None:
        log.info(message)
        self.stats.waited_s += seconds
        if len(self.stats.waits) < 100:
            self.stats.waits.append(message)
        if self.should_stop is None:
            self.sleep(seconds)
            return
        # counted in whole milliseconds, so the steps add up to exactly the wait (a fake clock that advances by
        # int(seconds * 1000) per sleep would otherwise fall a millisecond short after a float remainder)
        total_ms, done_ms = round(seconds * 1000, 6), 0.0
        while done_ms < total_ms:
            if self.should_stop():
                raise StopRequested(message)
            step_ms = min(STOP_POLL_S * 1000, total_ms - done_ms)
            self.sleep(step_ms / 1000)
            done_ms += step_ms
        if self.should_stop():
            raise StopRequested(message)

    def observe(self, headers: Any) -> None:
        """Read ``X-MBX-USED-WEIGHT-1M`` from an answer (successful or not)."""
        try:
            used = int(headers.get("X-MBX-USED-WEIGHT-1M") or headers.get("x-mbx-used-weight-1m"))
        except (TypeError, ValueError, AttributeError):
            return
        with self._lock:
            now = self.clock()
            self._foreign = (max(0, used - self._ours(now)), now)
            self.stats.max_used_weight = max(self.stats.max_used_weight, used)

    def block(self, retry_after_s: float, status: int) -> None:
        with self._lock:
            until = self.clock() + int((retry_after_s + RETRY_AFTER_MARGIN_S) * 1000)
            self._blocked_until = max(self._blocked_until, until)
            if status == 429:
                self.stats.rate_limited += 1
            else:
                self.stats.banned += 1

    def backoff_s(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2^attempt)], never below a tenth of the ceiling."""
        ceiling = min(self.backoff_cap_s, self.backoff_base_s * 2**attempt)
        return ceiling * (0.1 + 0.9 * self.rng.random())

    # ------------------------------------------------------------------ calls
    def call(self, fn: Callable[[], T], *, weight: int, what: str) -> T:
        """Run ``fn`` under the budget with retries. ``fn`` raises :class:`Refused` for 429/418,
        :class:`Retryable` for 5xx/timeouts/bad bodies, :class:`ExchangeError` for a final answer."""
        attempt = 0
        while True:
            self.acquire(weight, what)
            self.stats.calls += 1
            try:
                return fn()
            except Refused as exc:
                self.block(exc.retry_after, exc.status)
                kind = "rate limited (429)" if exc.status == 429 else f"banned ({exc.status})"
                log.warning("%s: %s, Retry-After %ss", what, kind, exc.retry_after)
                if exc.retry_after > 600:  # a long ban: waiting it out in-process helps nobody
                    raise ExchangeTemporaryError(
                        f"{self.name} {kind} this IP for {exc.retry_after:.0f}s while fetching {what}.",
                        retry_after=exc.retry_after,
                        hint="wait until the ban ends, and "
                        + (
                            "lower XYLEN_WEIGHT_BUDGET_SHARE if other tools share this IP."
                            if self.name == "Binance"
                            else "mind that other tools on this IP count against the same limit."
                        ),
                    ) from None
                # not counted as a failed attempt: the window is the exchange telling us exactly when
            except Retryable as exc:
                attempt += 1
                self.stats.retries += 1
                if exc.server:
                    self.stats.server_errors += 1
                else:
                    self.stats.transport_errors += 1
                if attempt >= self.max_attempts:
                    raise ExchangeTemporaryError(
                        f"{self.name} kept failing while fetching {what}: {exc} ({attempt} attempts).",
                        hint=(
                            "check XYLEN_BINANCE_BASE_URL and the network"
                            if self.name == "Binance"
                            else f"check the network and that {self.name} is reachable"
                        )
                        + ", then run the command again; what was stored so far is kept.",
                    ) from None
                self._wait(self.backoff_s(attempt), f"{what}: {exc}; retry {attempt}/{self.max_attempts - 1}")


class StopRequested(Exception):
    """A stop was asked for while the governor waited: the call was not made; nothing was half-written."""


class Refused(Exception):
    """429 or 418: stop every call until ``retry_after`` seconds have passed."""

    def __init__(self, status: int, retry_after: float) -> None:
        self.status = status
        self.retry_after = retry_after
        super().__init__(f"HTTP {status}, Retry-After {retry_after}")


class Retryable(Exception):
    """5xx, a timeout, a dropped connection or an unreadable body: try again later."""

    def __init__(self, message: str, *, server: bool = False) -> None:
        self.server = server
        super().__init__(message)


def retry_after_of(headers: Any, status: int) -> float:
    """Seconds to wait from a 429/418's Retry-After; a missing, negative or non-finite one (``nan``, ``inf``, a
    date) gets the careful default."""
    try:
        wait = float(headers.get("Retry-After"))
    except (TypeError, ValueError, AttributeError):
        wait = math.nan
    if math.isfinite(wait) and wait >= 0:
        return wait
    return 60.0 if status == 429 else 120.0  # Binance always sends it; be careful if it did not


__all__ = ["ExchangeError", "Governor", "GovernorStats", "Refused", "Retryable", "retry_after_of", "wall_clock_ms"]
