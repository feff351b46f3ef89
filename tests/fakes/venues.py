"""Loopback fakes of Bybit, OKX, Kraken, Coinbase and Binance.US: the paths ccxt 4.5.90 calls to load spot markets
and to fetch OHLCV, in each exchange's real format (``venue_apis.py``), over recorded candles (``venue_book.py``)::

    with FakeVenue("kraken", series={("BTCUSD", "1h"): rows}, now_ms=clock) as fake:
        source = make_source("kraken", base_url=fake.base_url)
        frame, sent = source.candles("BTCUSD", "1h", start, None, 720)

Besides the formats it enforces, per exchange, the documented page size, the documented public rate limit (what
the exchange answers when it is exceeded: Bybit's 403 ban, OKX's 429 50011, Kraken's ``EGeneral:Too many
requests`` lockout, Coinbase's 429, Binance.US's 429 + Retry-After then 418), Kraken's 720-candle reach and
Coinbase's fixed granularities, and misbehaves on request (``fake.faults``, as ``faults.py`` scripts them: 429 with
Retry-After, 5xx, timeouts past the client's, resets, truncated bodies, empty/duplicated/shuffled pages).

Rate limits are counted on ``rate_clock`` (default: real monotonic time), because ccxt's limiter paces its
requests in real time; a governor driven by a fake sleep therefore never waits a real limit out: test enforced
limits with the real sleep, or script the refusal as a fault. Market data follows ``now_ms`` (a FakeClock).

Run one in a subprocess (for kill -9 tests)::

    python -m tests.fakes.venues --exchange kraken --port 0 --series BTCUSD:1h:tests/data/...feather --now-ms N

prints one JSON line ``{"url": ..., "port": ..., "exchange": ...}`` and serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import web

from tests.fakes.faults import Fault, Faults
from tests.fakes.klines import FakeClock, Row, load_series
from tests.fakes.loopback import LoopbackServer
from tests.fakes.venue_api import Answer, ApiError, RateRule, VenueApi
from tests.fakes.venue_apis import APIS
from tests.fakes.venue_book import DEFAULT_EXTRA, Book

__all__ = ["FakeVenue", "VenueFaults", "VenueRequest", "EXCHANGES"]

EXCHANGES = tuple(APIS)


@dataclass(frozen=True)
class VenueRequest:
    """One request as the fake answered it (status 0: held or reset without an answer)."""

    path: str
    route: str | None
    params: dict[str, str]
    status: int
    now_ms: int
    symbol: str | None = None
    fault: str | None = None
    refused: str | None = None  # "limit" or "ban" when the rate limit answered


@dataclass
class VenueFaults(Faults):
    """:class:`Faults` whose default path is the venue's OHLCV endpoint (OKX: both of them)."""

    default_path: str = "*"

    def add(self, kind: Any, *, path: str | None = None, **kwargs: Any) -> Fault:  # type: ignore[override]
        return super().add(kind, path=path or self.default_path, **kwargs)


@dataclass
class _Limiter:
    """One rate rule's rolling window per key, on the rate clock (seconds)."""

    rule: RateRule
    log: dict[Any, collections.deque[tuple[float, int]]] = field(default_factory=dict)
    peak: int = 0

    def used(self, key: Any, t: float) -> int:
        q = self.log.setdefault(key, collections.deque())
        while q and q[0][0] <= t - self.rule.per_s:
            q.popleft()
        return sum(w for _, w in q)

    def spend(self, key: Any, t: float, weight: int) -> tuple[int, bool]:
        """Count the request; (used now, whether it exceeds the limit)."""
        used = self.used(key, t) + weight
        self.log[key].append((t, weight))
        self.peak = max(self.peak, used)
        return used, used > self.rule.requests

    def seconds_until_under(self, key: Any, t: float) -> int:
        q, excess = self.log[key], self.used(key, t) - self.rule.requests
        for when, w in q:
            excess -= w
            if excess <= 0:
                return max(1, math.ceil(when + self.rule.per_s - t))
        return max(1, math.ceil(self.rule.per_s))


class FakeVenue(LoopbackServer):
    """A fake exchange on 127.0.0.1:<free port>, served from a background thread.

    Args:
        name: bybit, okx, kraken, coinbase or binanceus.
        series: ``{(canonical symbol, interval): rows}``, Binance 12-field (or 6-field) rows as
            :func:`tests.fakes.klines.load_series` gives them; intervals in xylen's (Binance's) spelling.
        now_ms: the market's clock (epoch ms), e.g. a :class:`FakeClock`; default: the real clock.
        faults: a :class:`VenueFaults` to share (default: a new one on ``fake.faults``).
        markets: canonical symbols listed besides those with candles (default: a plausible spot list).
        missing: ``[(start_ms, end_ms), ...]`` maintenance gaps: no candle opens in them, on any series.
        enforce_rate: answer over-limit requests as the exchange does (default True).
        rate_clock: seconds for the rate limits (default ``time.monotonic``).
        ban_s: length of Bybit's / Binance.US's ban or Kraken's lockout (default: the exchange's, as documented or
            chosen in ``venue_apis``), for tests that hit one.

    Attributes: ``base_url``, ``requests`` (:class:`VenueRequest` per request), ``faults``, ``ids`` (canonical ->
    the exchange's spelling), ``peak_usage`` (the most requests/weight each rule saw in a window).
    """

    def __init__(
        self,
        name: str,
        series: dict[tuple[str, str], Sequence[Sequence[Any]] | np.ndarray] | None = None,
        now_ms: Callable[[], int] | None = None,
        faults: VenueFaults | None = None,
        *,
        markets: Iterable[str] = DEFAULT_EXTRA,
        missing: Iterable[tuple[int, int]] = (),
        enforce_rate: bool = True,
        rate_clock: Callable[[], float] = time.monotonic,
        ban_s: float | None = None,
    ) -> None:
        if name not in APIS:
            raise ValueError(f"unknown exchange {name!r}; fakes exist for {', '.join(APIS)}")
        self.name = name
        self.book = Book(series, markets, missing)
        self.api: VenueApi = APIS[name](self.book)
        self._now = now_ms or (lambda: int(time.time() * 1000))
        self.faults = faults if faults is not None else VenueFaults(default_path=self.api.ohlcv_route)
        self.enforce_rate = enforce_rate
        self.rate_clock = rate_clock
        self.ban_s = self.api.ban_s if ban_s is None else ban_s
        self._limiters = [_Limiter(rule) for rule in self.api.rate_rules()]
        self._blocked_until = 0.0  # rate clock: a ban (Bybit 403, Binance.US 418) or Kraken's lockout
        self._backoff_until = 0.0  # Binance.US: the 429's Retry-After window
        self._log: list[VenueRequest] = []
        self._state = threading.Lock()
        super().__init__()

    # ------------------------------------------------------------------ lifecycle (LoopbackServer: the transport)
    def _routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/{tail:.*}", self._handle)

    # ------------------------------------------------------------------ public API
    @property
    def requests(self) -> list[VenueRequest]:
        with self._state:
            return list(self._log)

    @property
    def ids(self) -> dict[str, str]:
        return self.api.ids()

    @property
    def peak_usage(self) -> dict[str, int]:
        with self._state:
            return {lim.rule.scope: lim.peak for lim in self._limiters}

    @property
    def rate_rules(self) -> list[RateRule]:
        return [lim.rule for lim in self._limiters]

    def set_series(self, symbol: str, interval: str, rows: Sequence[Sequence[Any]] | np.ndarray) -> None:
        self.book.set_series(symbol, interval, rows)

    def rows(self, symbol: str, interval: str) -> list[Row]:
        return self.book.rows(symbol, interval)

    def delist(self, symbol: str) -> None:
        """The exchange forgets ``symbol``: its market list and candle endpoint no longer know it."""
        self.book.delist(symbol)

    def reset_limits(self) -> None:
        with self._state:
            for lim in self._limiters:
                lim.log.clear()
            self._blocked_until = self._backoff_until = 0.0

    # ------------------------------------------------------------------ requests
    def _record(self, entry: VenueRequest) -> None:
        with self._state:
            self._log.append(entry)

    def _rate(self, route: str, symbol: str | None, now: int) -> tuple[Answer | None, str | None, dict[str, str]]:
        """Count the request against every rule; the exchange's refusal when it is over a limit or banned, and
        the headers that report usage (Binance.US)."""
        t = self.rate_clock()
        headers: dict[str, str] = {}
        refusal: Answer | None = None
        kind: str | None = None
        policy = self.api.policy
        with self._state:
            if self.enforce_rate and t < self._blocked_until:
                if policy == "lockout":  # calls while locked out keep the lockout going
                    self._blocked_until = t + self.ban_s
                return self.api.refusal("ban", math.ceil(self._blocked_until - t), now), "ban", headers
            if self.enforce_rate and policy == "escalate" and t < self._backoff_until:
                self._blocked_until = t + self.ban_s  # ignored a 429's Retry-After: banned, as Binance does
                return self.api.refusal("ban", math.ceil(self.ban_s), now), "ban", headers
            for lim in self._limiters:
                if not lim.rule.counts(route):
                    continue
                key = symbol if lim.rule.per_symbol else None
                used, over = lim.spend(key, t, lim.rule.weight(route))
                if lim.rule.header:
                    headers[lim.rule.header] = str(used)
                if over and refusal is None and self.enforce_rate:
                    wait = lim.seconds_until_under(key, t)
                    if policy in ("ban", "lockout"):
                        self._blocked_until = t + self.ban_s
                    elif policy == "escalate":
                        self._backoff_until = t + wait
                    refusal = self.api.refusal("limit", wait if policy == "escalate" else 0, now)
                    kind = "limit"
        if not self.enforce_rate:
            return None, None, headers
        return refusal, kind, headers

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path, params, now = request.path, dict(request.query), self._now()
        found = self.api.route(path)
        if found is None:
            self._record(VenueRequest(path, None, params, 404, now))
            return web.Response(status=404, text=f"404 Not Found: {path}", content_type="text/plain")
        route, path_params = found
        symbol = self.api.symbol(route, path_params, params)
        refusal, kind, headers = self._rate(route, symbol, now)
        if refusal is not None:
            self._record(VenueRequest(path, route, params, refusal.status, now, symbol, refused=kind))
            return self._respond(refusal, {**headers, **refusal.headers})

        fault = self.faults.take(route, symbol, now)
        if fault is not None and fault.kind == "status":
            ans = self.api.fault(fault.status, now)
            extra = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
            self._record(VenueRequest(path, route, params, ans.status, now, symbol, fault.kind))
            return self._respond(ans, {**headers, **ans.headers, **extra})
        if fault is not None and fault.kind in ("timeout", "reset"):
            self._record(VenueRequest(path, route, params, 0, now, symbol, fault.kind))
            if fault.kind == "timeout":
                assert self._closing is not None
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), fault.hold_s)
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError  # nothing to answer: the connection is gone

        try:
            ans = self.api.answer(route, path_params, params, now)
        except ApiError as err:
            ans = err.answer
        if fault is not None and ans.rows is not None and ans.wrap is not None:
            ans.body = ans.wrap(_transform(fault, ans.rows))
        text = ans.body if isinstance(ans.body, str) else json.dumps(ans.body, separators=(",", ":"))
        if fault is not None and fault.kind == "truncate":
            text = text[: max(1, len(text) // 2)]
        self._record(VenueRequest(path, route, params, ans.status, now, symbol, fault.kind if fault else None))
        return web.Response(
            status=ans.status, text=text, content_type=ans.content_type, headers={**headers, **ans.headers}
        )

    @staticmethod
    def _respond(ans: Answer, headers: dict[str, str]) -> web.Response:
        text = ans.body if isinstance(ans.body, str) else json.dumps(ans.body, separators=(",", ":"))
        return web.Response(status=ans.status, text=text, content_type=ans.content_type, headers=headers)


def _transform(fault: Fault, rows: list[Any]) -> list[Any]:
    if fault.kind == "empty":
        return []
    if fault.kind == "duplicate":
        return [r for i, row in enumerate(rows) for r in ([row, row] if i % fault.every == fault.every - 1 else [row])]
    if fault.kind == "out_of_order":
        out = list(rows)
        for i in range(0, len(out) - 1, 2):
            out[i], out[i + 1] = out[i + 1], out[i]
        return out
    return rows


# ---------------------------------------------------------------------------------------------------- subprocess
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fakes.venues", description="Serve one loopback fake exchange (tests/fakes/venues.py)."
    )
    parser.add_argument("--exchange", required=True, choices=EXCHANGES)
    parser.add_argument("--port", type=int, default=0, help="0: a free one (the URL is printed)")
    parser.add_argument("--series", action="append", default=[], metavar="SYMBOL:INTERVAL:FILE")
    parser.add_argument("--now-ms", type=int, default=None, help="a fixed market clock (default: the real clock)")
    parser.add_argument("--no-rate-limit", action="store_true")
    parser.add_argument("--fault", action="append", default=[], metavar="KIND[:STATUS][:times=N][:retry_after=S]")
    args = parser.parse_args(argv)
    series = {}
    for spec in args.series:
        parts = spec.split(":", 2)
        if len(parts) != 3:
            parser.error(f"--series {spec!r}: use SYMBOL:INTERVAL:FILE")
        symbol, interval, path = parts
        series[(symbol.upper(), interval)] = load_series(path, interval)
    clock = FakeClock(args.now_ms) if args.now_ms is not None else None
    fake = FakeVenue(args.exchange, series, now_ms=clock, enforce_rate=not args.no_rate_limit)
    for spec in args.fault:
        kind, *rest = spec.split(":")
        opts: dict[str, Any] = {}
        for part in rest:
            if part.isdigit():
                opts["status"] = int(part)
            else:
                k, v = part.split("=", 1)
                opts[k] = float(v) if k == "hold_s" else (math.inf if v == "inf" else int(v))
        fake.faults.add(kind, **opts)
    fake.port = args.port
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with fake:
        print(json.dumps({"url": fake.base_url, "port": fake.port, "exchange": fake.name}), flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
