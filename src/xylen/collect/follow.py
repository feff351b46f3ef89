"""Follow live candles: one websocket per series, closed candles only, a watchdog, REST to fill every hole.

python-binance's socket manager does not reconnect reliably, so this is a small client of its own on the
``websockets`` package. A Binance connection lives at most 24 h and never replays what was sent while it
was down, so after every (re)connect the series is backfilled by REST: connect first, then backfill, and
nothing that closes in between is missed. The watchdog rebuilds the socket and backfills when the next
candle is overdue (a silent socket looks alive); while the socket cannot be opened, REST polling carries on.

Time is injected: ``clock`` (epoch ms) decides what is overdue; ``tick_s`` is only how often to look.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import polars as pl

from xylen.collect.backfill import backfill_series
from xylen.collect.rest import Rest
from xylen.core import intervals
from xylen.core.candles import COLUMNS, SCHEMA, record_to_row
from xylen.core.errors import ExchangeError, ExchangeTemporaryError
from xylen.core.store import Store

log = logging.getLogger("xylen.collect")

MAX_CONNECTION_S = 23 * 3600  # Binance closes a connection after 24 h: leave first, on our terms


@dataclass
class FollowStats:
    connects: collections.Counter[str] = field(default_factory=collections.Counter)
    stored: collections.Counter[str] = field(default_factory=collections.Counter)
    ignored_open: int = 0
    watchdog: collections.Counter[str] = field(default_factory=collections.Counter)
    backfills: collections.Counter[str] = field(default_factory=collections.Counter)
    drops: collections.Counter[str] = field(default_factory=collections.Counter)


class Follower:
    """Follow ``series`` until :meth:`stop`. ``run()`` is a coroutine; ``stop()`` may be called from any thread."""

    def __init__(
        self,
        rest: Rest,
        store: Store,
        series: list[tuple[str, str]],
        ws_url: str,
        clock: Callable[[], int],
        *,
        tick_s: float = 1.0,
        grace_ms: int | None = None,
        reconnect_s: float = 1.0,
        max_reconnect_s: float = 60.0,
        max_connection_s: float = MAX_CONNECTION_S,
    ) -> None:
        self.rest, self.store, self.series = rest, store, series
        self.ws_url = ws_url.rstrip("/")
        self.clock = clock
        self.tick_s = tick_s
        self.grace_ms = grace_ms
        self.reconnect_s, self.max_reconnect_s = reconnect_s, max_reconnect_s
        self.max_connection_s = max_connection_s
        self.stats = FollowStats()
        self.last: dict[str, int | None] = {}
        self._quiet_until: dict[str, int] = {}
        self._rest_lock: asyncio.Lock | None = None
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped_early = threading.Event()
        self.errors: list[BaseException] = []

    def stop(self) -> None:
        self._stopped_early.set()
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        if self._stopped_early.is_set():
            return
        self._rest_lock = asyncio.Lock()
        tasks = [asyncio.create_task(self._follow(s, i), name=f"follow {s} {i}") for s, i in self.series]
        stopper = asyncio.create_task(self._stop.wait())
        try:  # a series that fails for good (unknown symbol) stops the whole follower with its error
            await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            for t in tasks:
                t.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            self.errors += [
                r for r in results if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError)
            ]

    # ------------------------------------------------------------------ one series
    async def _follow(self, symbol: str, interval: str) -> None:
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed, InvalidHandshake

        key = f"{symbol} {interval}"
        url = f"{self.ws_url}/{symbol.lower()}@kline_{interval}"
        delay = self.reconnect_s
        assert self._stop is not None
        while not self._stop.is_set():
            try:
                async with connect(url, open_timeout=10, close_timeout=1, ping_interval=20, ping_timeout=20) as ws:
                    self.stats.connects[key] += 1
                    delay = self.reconnect_s
                    await self._backfill(symbol, interval)  # no replay after a (re)connect
                    await self._read(ws, symbol, interval)
            except (ConnectionClosed, InvalidHandshake, OSError, TimeoutError) as exc:
                self.stats.drops[key] += 1
                log.warning("%s: websocket %s (%s); REST until it is back", key, type(exc).__name__, exc)
                await self._backfill(symbol, interval)  # the polling fallback
                await self._sleep(delay)
                delay = min(self.max_reconnect_s, delay * 2)

    async def _read(self, ws: Any, symbol: str, interval: str) -> None:
        key = f"{symbol} {interval}"
        opened = time.monotonic()
        assert self._stop is not None
        while not self._stop.is_set():
            try:
                raw = await asyncio.wait_for(ws.recv(), timeout=self.tick_s)
            except asyncio.TimeoutError:
                raw = None
            if raw is not None:
                await self._on_message(raw, symbol, interval)
            if self._overdue(symbol, interval):
                self.stats.watchdog[key] += 1
                log.warning("%s: candle overdue; rebuilding the socket and backfilling by REST", key)
                return
            if time.monotonic() - opened > self.max_connection_s:
                return

    async def _on_message(self, raw: str | bytes, symbol: str, interval: str) -> None:
        try:
            msg = orjson.loads(raw)
        except orjson.JSONDecodeError:
            log.warning("%s %s: unreadable message %r", symbol, interval, raw[:80])
            return
        if isinstance(msg, dict) and "data" in msg:  # combined-stream wrapper
            msg = msg["data"]
        k = msg.get("k") if isinstance(msg, dict) else None
        if not isinstance(k, dict) or k.get("s", symbol).upper() != symbol or k.get("i", interval) != interval:
            return
        if not k.get("x"):
            self.stats.ignored_open += 1  # the still-open candle: only closed candles are stored
            return
        row = record_to_row(k)
        df = (
            pl.DataFrame({c: [v] for c, v in zip(COLUMNS, row)})
            .with_columns([pl.col(c).fill_nan(None) for c in COLUMNS[6:]])
            .cast(SCHEMA)  # type: ignore[arg-type]
        )
        await asyncio.to_thread(self.store.append, symbol, interval, df)
        key = f"{symbol} {interval}"
        self.stats.stored[key] += 1
        self.last[key] = max(self.last.get(key) or 0, int(row[0]))

    def _overdue(self, symbol: str, interval: str) -> bool:
        key = f"{symbol} {interval}"
        last = self.last.get(key)
        now = self.clock()
        if last is None or now < self._quiet_until.get(key, 0):
            return False
        step = intervals.approx_ms(interval)
        grace = self.grace_ms if self.grace_ms is not None else min(step, 30_000)
        after = intervals.next_open(last, interval)
        if now > intervals.next_open(after, interval) + grace:  # the candle after `last` has closed
            self._quiet_until[key] = now + step  # the exchange may really have nothing: don't spin
            return True
        return False

    async def _backfill(self, symbol: str, interval: str) -> None:
        key = f"{symbol} {interval}"
        assert self._rest_lock is not None
        async with self._rest_lock:  # one REST call at a time: one session, one budget
            try:
                await asyncio.to_thread(
                    backfill_series,
                    self.rest,
                    self.store,
                    symbol,
                    interval,
                    self.clock(),
                    should_stop=self._stopped_early.is_set,
                )
                self.stats.backfills[key] += 1
            except ExchangeTemporaryError as exc:
                log.warning("%s: REST backfill failed for now: %s", key, exc.message)
            except ExchangeError:
                raise
            self.last[key] = await asyncio.to_thread(self.store.last_open_time, symbol, interval)

    async def _sleep(self, seconds: float) -> None:
        assert self._stop is not None
        with contextlib.suppress(asyncio.TimeoutError):  # the normal way out: nobody asked us to stop
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)
