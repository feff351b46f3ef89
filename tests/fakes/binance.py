"""A loopback fake of the Binance spot market-data API (REST + kline websocket) for tests.

It replays real recorded candles, follows an injectable clock, counts request weight like
Binance and misbehaves on request (429/418/5xx, timeouts, truncated bodies, duplicated or
shuffled rows, transient empty pages, maintenance gaps, dropped sockets). The real
python-binance client talks to it::

    with FakeBinance(series={("BTCUSDT", "1h"): rows}, now_ms=clock) as fake:
        client = Client(ping=False)
        client.API_URL = fake.base_url + "/api"
        client.get_klines(symbol="BTCUSDT", interval="1h", limit=10)

The exchange's answers (klines selection, the still-open last candle, errors) live in
``market.py``; this module is the transport: HTTP + websocket server, weights, bans, faults.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from aiohttp import WSMsgType, web

from tests.fakes.faults import BAN_MSG, LIMIT_MSG, Fault, Faults
from tests.fakes.klines import FakeClock, Row, load_series
from tests.fakes.loopback import LoopbackServer
from tests.fakes.market import WEIGHTS, ApiError, Market

__all__ = [
    "FakeBinance",
    "FakeClock",
    "Fault",
    "Faults",
    "ServedRequest",
    "load_series",
    "python_binance_client",
]

WEIGHT_WINDOW_MS = 60_000


@dataclass(frozen=True)
class ServedRequest:
    """One request as the fake answered it (websocket upgrades have status 101)."""

    path: str
    params: dict[str, str]
    status: int
    weight: int
    used_weight: int
    now_ms: int
    fault: str | None = None


class FakeBinance(LoopbackServer):
    """Process-local fake Binance on 127.0.0.1, served from a background thread.

    Args:
        series: ``{(symbol, interval): rows}``; rows as a numpy array or a list of 12-field
            (or 6-field ``open_time, o, h, l, c, v``) rows, e.g. from :func:`load_series`.
        now_ms: clock returning epoch ms (e.g. :class:`FakeClock`); default: the real clock.
        missing: ``[(start_ms, end_ms), ...]``: the exchange has no candle whose open_time is in
            any ``[start, end)`` (a maintenance gap), on every series.
        weight_limit: used weight per rolling minute above which it answers 429 itself
            (``None``: never). Every REST request counts its endpoint's weight (ping/time 1,
            klines 2, exchangeInfo 20), refused ones included; ``X-MBX-USED-WEIGHT-1M`` on every
            answer reports the sum over the last 60 s of the fake clock.
        ban_s: ``Retry-After`` of the 418 earned by calling inside a 429's Retry-After window;
            until a ban (from that or a 418 fault) ends, every request gets 418. Each request
            inside such a window counts in ``requests_during_backoff``.
        ws_heartbeat: seconds between server pings on websockets (``None``: none sent; client
            pings are always answered).

    Attributes: ``base_url``, ``ws_url`` (``.../ws``), ``stream_url`` (for python-binance's
    ``BinanceSocketManager.STREAM_URL``), ``faults``, ``requests``, ``max_used_weight``,
    ``requests_during_backoff``, ``missing``.
    """

    name = "binance"

    def __init__(
        self,
        series: dict[tuple[str, str], Sequence[Sequence[Any]] | np.ndarray] | None = None,
        now_ms: Callable[[], int] | None = None,
        *,
        missing: Iterable[tuple[int, int]] = (),
        weight_limit: int | None = 6000,
        ban_s: int = 120,
        ws_heartbeat: float | None = None,
    ) -> None:
        self._now = now_ms or (lambda: int(time.time() * 1000))
        self.market = Market(series, missing)
        self.weight_limit = weight_limit
        self.ban_s = ban_s
        self.faults = Faults()
        self.max_used_weight = 0
        self.requests_during_backoff = 0
        self._ws_heartbeat = ws_heartbeat
        self._log: list[ServedRequest] = []
        self._weights: collections.deque[tuple[int, int]] = collections.deque()
        self._backoff_until = 0
        self._banned_until = 0
        self._state = threading.Lock()
        self._subs_changed = threading.Condition()
        self._sockets: dict[web.WebSocketResponse, tuple[set[str], bool, asyncio.Transport | None]] = {}
        super().__init__()

    # ------------------------------------------------------------------ lifecycle (LoopbackServer: the transport)
    def _routes(self, app: web.Application) -> None:
        app.router.add_get("/ws", self._handle_ws)
        app.router.add_get("/ws/{stream}", self._handle_ws)
        app.router.add_get("/stream", self._handle_ws)
        app.router.add_route("*", "/{tail:.*}", self._handle_rest)

    async def _before_stop(self) -> None:
        for ws in list(self._sockets):
            await ws.close(code=1001, message=b"server shutting down")

    # ------------------------------------------------------------------ public API
    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def stream_url(self) -> str:
        """Value for python-binance's ``BinanceSocketManager.STREAM_URL`` (it appends ``ws/<stream>``)."""
        return f"ws://127.0.0.1:{self.port}/"

    @property
    def requests(self) -> list[ServedRequest]:
        with self._state:
            return list(self._log)

    @property
    def missing(self) -> list[tuple[int, int]]:
        """The maintenance gaps ``[(start_ms, end_ms), ...]``; append to add one."""
        return self.market.missing

    def set_series(self, symbol: str, interval: str, rows: Sequence[Sequence[Any]] | np.ndarray) -> None:
        """Add or replace the candles of one (symbol, interval)."""
        self.market.set_series(symbol, interval, rows)

    def rows(self, symbol: str, interval: str) -> list[Row]:
        """All configured rows of a series, as served (ignoring the clock and ``missing``)."""
        return self.market.rows(symbol, interval)

    def used_weight(self) -> int:
        with self._state:
            return self._used_weight(self._now())

    def reset_limits(self) -> None:
        """Forget used weight, pending Retry-After windows and bans."""
        with self._state:
            self._weights.clear()
            self._backoff_until = self._banned_until = 0

    def subscribers(self, symbol: str, interval: str) -> int:
        """How many sockets are subscribed to ``<symbol>@kline_<interval>`` now."""
        with self._subs_changed:
            return self._count_subs(symbol, interval)

    def wait_for_subscribers(self, symbol: str, interval: str, n: int = 1, timeout: float = 60.0) -> None:
        """Block until exactly ``n`` sockets are subscribed to the stream (woken by each
        (un)subscription, no polling); ``n=0`` waits for dropped sockets to be gone."""
        with self._subs_changed:
            if not self._subs_changed.wait_for(lambda: self._count_subs(symbol, interval) == n, timeout):
                have = self._count_subs(symbol, interval)
                raise TimeoutError(
                    f"{symbol.lower()}@kline_{interval} has {have} subscriber(s), not {n}, after {timeout}s"
                )

    def _count_subs(self, symbol: str, interval: str) -> int:
        stream = f"{symbol.lower()}@kline_{interval}"
        return sum(stream in streams for streams, _, _ in self._sockets.values())

    def kline_event(
        self, symbol: str, interval: str, open_time: int, *, closed: bool, fraction: float = 1.0
    ) -> dict[str, Any]:
        """The raw kline event of a recorded candle (see :meth:`Market.kline_event`); its event
        time is the fake's now for updates and just after the candle for the close."""
        row = self.market.row(symbol, interval, open_time)
        event_time = row[6] + 1 if closed else self._now()
        return self.market.kline_event(
            symbol, interval, open_time, closed=closed, event_time=event_time, fraction=fraction
        )

    def push_candle(self, symbol: str, interval: str, open_time: int, updates: int = 2) -> int:
        """Send ``updates`` in-progress (``x: false``) events and then the closing (``x: true``)
        event of a recorded candle to every subscriber of its stream. Returns the number of
        sockets it was delivered to. Event times lie inside the candle, the close just after it.
        """
        row = self.market.row(symbol, interval, open_time)
        span = row[6] + 1 - row[0]
        events = [
            self.market.kline_event(
                symbol,
                interval,
                open_time,
                closed=False,
                fraction=(i + 1) / (updates + 1),
                event_time=row[0] + span * (i + 1) // (updates + 1),
            )
            for i in range(updates)
        ]
        events.append(self.kline_event(symbol, interval, open_time, closed=True))
        return self.push_events(symbol, interval, events)

    def push_events(self, symbol: str, interval: str, events: Sequence[dict[str, Any]]) -> int:
        """Send arbitrary messages to every subscriber of ``<symbol>@kline_<interval>``."""
        return int(self._call(self._broadcast(f"{symbol.lower()}@kline_{interval}", list(events))))

    def drop_connections(self) -> int:
        """Abort every websocket connection (no close frame, like a network drop). Returns how many."""
        return int(self._call(self._drop_all()))

    # ------------------------------------------------------------------ REST
    def _used_weight(self, now: int) -> int:
        while self._weights and self._weights[0][0] <= now - WEIGHT_WINDOW_MS:
            self._weights.popleft()
        return sum(w for t, w in self._weights if t <= now)

    def _respond(
        self,
        request: web.Request,
        status: int,
        body: Any,
        weight: int,
        used: int,
        now: int,
        fault: Fault | None,
        headers: dict[str, str] | None = None,
        text: str | None = None,
    ) -> web.Response:
        hdrs = {"X-MBX-USED-WEIGHT-1M": str(used), **(headers or {})}
        self._record(request, status, weight, used, now, fault)
        return web.Response(
            status=status,
            text=text if text is not None else json.dumps(body, separators=(",", ":")),
            content_type="application/json",
            headers=hdrs,
        )

    def _record(self, request: web.Request, status: int, weight: int, used: int, now: int, fault: Fault | None) -> None:
        entry = ServedRequest(
            request.path, dict(request.query), status, weight, used, now, fault.kind if fault else None
        )
        with self._state:
            self._log.append(entry)

    async def _handle_rest(self, request: web.Request) -> web.StreamResponse:
        path, params, now = request.path, dict(request.query), self._now()
        weight = WEIGHTS.get(path)
        if weight is None:
            self._record(request, 404, 0, 0, now, None)
            return web.Response(
                status=404, text=f"<html><body>404 Not Found: {path}</body></html>", content_type="text/html"
            )
        with self._state:
            self._weights.append((now, weight))
            used = self._used_weight(now)
            self.max_used_weight = max(self.max_used_weight, used)
            early = self._check_backoff(now)
        if early is not None:  # inside a Retry-After window or banned: 418
            retry_after, until = early
            ban = {"code": -1003, "msg": BAN_MSG.format(until=until)}
            return self._respond(request, 418, ban, weight, used, now, None, {"Retry-After": str(retry_after)})

        fault = self.faults.take(path, params.get("symbol"), now)
        if fault is not None and fault.kind == "status":
            headers = {}
            if fault.retry_after is not None:
                headers["Retry-After"] = str(fault.retry_after)
                self._arm_backoff(fault.status, now, fault.retry_after)
            return self._respond(request, fault.status, fault.error_body(now), weight, used, now, fault, headers)
        if fault is not None and fault.kind in ("timeout", "reset"):
            self._record(request, 0, weight, used, now, fault)  # status 0: never answered
            if fault.kind == "timeout":
                assert self._closing is not None
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), fault.hold_s)
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError  # nothing to answer: the connection is gone

        if self.weight_limit is not None and used > self.weight_limit:
            retry_after = self._seconds_until_under_limit(now)
            self._arm_backoff(429, now, retry_after)
            limited = {"code": -1003, "msg": LIMIT_MSG.format(limit=self.weight_limit)}
            return self._respond(request, 429, limited, weight, used, now, None, {"Retry-After": str(retry_after)})

        try:
            body = self.market.answer(path, params, now, self.weight_limit)
        except ApiError as err:
            return self._respond(request, err.status, err.body(), weight, used, now, fault)
        if fault is not None and fault.kind == "duplicate" and isinstance(body, list):
            body = [
                r for i, row in enumerate(body) for r in ([row, row] if i % fault.every == fault.every - 1 else [row])
            ]
        if fault is not None and fault.kind == "empty" and isinstance(body, list):
            body = []
        if fault is not None and fault.kind == "out_of_order" and isinstance(body, list):
            body = list(body)
            for i in range(0, len(body) - 1, 2):
                body[i], body[i + 1] = body[i + 1], body[i]
        text = json.dumps(body, separators=(",", ":"))
        if fault is not None and fault.kind == "truncate":
            text = text[: max(1, len(text) // 2)]
        return self._respond(request, 200, None, weight, used, now, fault, text=text)

    def _check_backoff(self, now: int) -> tuple[int, int] | None:
        """Called under the state lock. Returns (Retry-After s, banned-until ms) when the request
        must be refused with 418, and counts it in ``requests_during_backoff``."""
        if now < self._banned_until:
            self.requests_during_backoff += 1
            return math.ceil((self._banned_until - now) / 1000), self._banned_until
        if now < self._backoff_until:  # ignored a 429's Retry-After: IP ban, as Binance
            self.requests_during_backoff += 1
            self._banned_until = now + 1000 * self.ban_s
            return self.ban_s, self._banned_until
        return None

    def _arm_backoff(self, status: int, now: int, retry_after: int) -> None:
        with self._state:
            if status == 429:
                self._backoff_until = max(self._backoff_until, now + 1000 * retry_after)
            elif status == 418:
                self._banned_until = max(self._banned_until, now + 1000 * retry_after)

    def _seconds_until_under_limit(self, now: int) -> int:
        assert self.weight_limit is not None
        with self._state:
            excess = self._used_weight(now) - self.weight_limit
            for t, w in self._weights:
                excess -= w
                if excess <= 0:
                    return max(1, math.ceil((t + WEIGHT_WINDOW_MS - now) / 1000))
        return 60  # pragma: no cover - only with a clock running backwards

    # ------------------------------------------------------------------ websocket
    async def _handle_ws(self, request: web.Request) -> web.StreamResponse:
        now = self._now()
        combined = request.path == "/stream"
        if combined:
            streams = {s for s in request.query.get("streams", "").split("/") if s}
        elif "stream" in request.match_info:
            streams = {request.match_info["stream"]}
        else:
            streams = set()
        symbol = next(iter(streams)).split("@")[0].upper() if len(streams) == 1 else None
        fault = self.faults.take(request.path, symbol, now, kinds=("status",))
        if fault is not None:
            self._record(request, fault.status, 0, 0, now, fault)
            return web.json_response(fault.error_body(now), status=fault.status)
        # timeout: how long a shutdown waits for the client's close frame
        ws = web.WebSocketResponse(autoping=True, heartbeat=self._ws_heartbeat, timeout=1.0)
        await ws.prepare(request)
        self._record(request, 101, 0, 0, now, None)
        with self._subs_changed:
            self._sockets[ws] = ({s.lower() for s in streams}, combined, request.transport)
            self._subs_changed.notify_all()
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    await self._on_ws_text(ws, msg.data)
        finally:
            with self._subs_changed:
                self._sockets.pop(ws, None)
                self._subs_changed.notify_all()
        return ws

    async def _on_ws_text(self, ws: web.WebSocketResponse, data: str) -> None:
        """Binance's live SUBSCRIBE / UNSUBSCRIBE / LIST_SUBSCRIPTIONS requests."""
        try:
            req = json.loads(data)
            method, req_id = req["method"], req.get("id")
        except (ValueError, KeyError, TypeError):
            await ws.send_str(json.dumps({"error": {"code": 2, "msg": f"Invalid request: {data[:80]}"}}))
            return
        with self._subs_changed:
            streams = self._sockets[ws][0]
            if method == "SUBSCRIBE":
                streams.update(str(s).lower() for s in req.get("params", []))
            elif method == "UNSUBSCRIBE":
                streams.difference_update(str(s).lower() for s in req.get("params", []))
            self._subs_changed.notify_all()
            result = sorted(streams) if method == "LIST_SUBSCRIPTIONS" else None
        await ws.send_str(json.dumps({"result": result, "id": req_id}))

    async def _broadcast(self, stream: str, events: list[dict[str, Any]]) -> int:
        with self._subs_changed:
            targets = [(ws, combined) for ws, (streams, combined, _) in self._sockets.items() if stream in streams]
        delivered = 0
        for ws, combined in targets:
            try:
                for event in events:
                    await ws.send_str(
                        json.dumps({"stream": stream, "data": event} if combined else event, separators=(",", ":"))
                    )
                delivered += 1
            except ConnectionError:
                continue  # socket died meanwhile; it unregisters itself
        return delivered

    async def _drop_all(self) -> int:
        with self._subs_changed:
            transports = [t for _, _, t in self._sockets.values()]
        for transport in transports:
            if transport is not None:
                transport.abort()
        return len(transports)


@contextlib.contextmanager
def python_binance_client(fake: FakeBinance, **kwargs: Any) -> Iterator[Any]:
    """A real ``binance.client.Client`` pointed at ``fake``, closed afterwards.

    python-binance's constructor calls ``asyncio.get_event_loop()``, which outside a running
    loop creates one for the thread and never closes it (a ResourceWarning at the next
    ``asyncio.run``); this closes that loop too.

    Example:
        with FakeBinance(series, clock) as fake, python_binance_client(fake) as client:
            client.get_klines(symbol="BTCUSDT", interval="1h")
    """
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # its websockets imports
        from binance.client import Client

    before = _thread_loop()
    client = Client(ping=False, **kwargs)
    client.API_URL = fake.base_url + "/api"
    try:
        yield client
    finally:
        client.close_connection()
        current = _thread_loop()
        # close only a loop that Client itself created for this thread
        created = before is None and current is not None and getattr(client, "loop", None) is current
        if created and current is not None and not current.is_running():
            asyncio.set_event_loop(None)
            current.close()


def _thread_loop() -> asyncio.AbstractEventLoop | None:
    """The thread's current event loop without creating one (None if unknown)."""
    local = getattr(asyncio.get_event_loop_policy(), "_local", None)
    return getattr(local, "_loop", None)
