"""GET /ws/predict: streaming predictions over a WebSocket (the protocol: README "Streaming predictions").

A connection holds subscriptions, one per series. In send mode the client sends a window, then one closed candle per
message, and gets a prediction for each; in push mode the server reads the window from the candle store and pushes a
prediction for every new candle `xylen collect` stores (serve/store_feed.py). Each candle costs one feature row and
one model call on a fixed buffer (stream_subs.py), not a 100-candle request.

Messages of one connection are handled one at a time and every answer is awaited, so a client that sends without
reading is held back by TCP. Pushed predictions cannot wait for the client: they go through a bounded queue, and a
consumer too slow to empty it is closed (1013) instead of growing the server's memory.

Close codes: 1008 auth/policy, 1003 a binary frame, 1007 a frame that is not a JSON object, 1009 a frame over
XYLEN_WS_MAX_MESSAGE_BYTES, 1013 a push consumer too slow, 1001 server shutdown (serve/stream_close.py). Everything
else (a bad candle, an unknown series, too many subscriptions) is an ``error`` message and the connection goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from xylen.core import intervals
from xylen.core.errors import XylenError
from xylen.serve.decode import RequestError, series_fields
from xylen.serve.predict import closed_candles, route
from xylen.serve.state import ServeState
from xylen.serve.stream_guard import KEY_STATE, Receive, Scope, Send, clip
from xylen.serve.stream_subs import Ring, Subscription, check_model, error_message

if TYPE_CHECKING:
    from xylen.serve.store_feed import StoreFeed

log = logging.getLogger("xylen.serve.stream")

PUSH_QUEUE = 1000  # pushed messages waiting for one slow client; one more closes it (1013)
AUTH_TIMEOUT_S = 30.0  # a connection that must authenticate in its first message gets this long to send it
MESSAGE_TYPES = ("auth", "subscribe", "candle", "candles", "unsubscribe", "ping", "other", "push")  # metric labels
_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}\Z")
_KEY_HINT = ("Missing or wrong API key: send it as 'Authorization: Bearer <key>' or first "
             "{\"type\": \"auth\", \"key\": ...}")


class _Closed(Exception):
    """The connection is closed (by us or the client): stop handling it."""


class StreamHub:
    """The /ws/predict endpoint (an ASGI app) and what its connections share: the server state, the store feed
    (started on the first push subscription), the open connections."""

    def __init__(self, state: ServeState) -> None:
        self.state = state
        self.connections: set[Connection] = set()
        self.push_queue = PUSH_QUEUE
        self._feed: StoreFeed | None = None

    def feed(self) -> StoreFeed:
        if self._feed is None:
            from xylen.serve.store_feed import StoreFeed

            settings = self.state.settings
            self._feed = StoreFeed(settings.data_location, endpoint_url=settings.s3_endpoint_url,
                                   cache=settings.home / "cache")
            self._feed.start(asyncio.get_running_loop())
        return self._feed

    def set_feed(self, feed: StoreFeed) -> None:
        """Use ``feed`` for push subscriptions (tests drive one by hand)."""
        self._feed = feed

    async def stop(self) -> None:
        if self._feed is not None:
            await asyncio.to_thread(self._feed.stop)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await Connection(self, scope, receive, send).run()


class Connection:
    def __init__(self, hub: StreamHub, scope: Scope, receive: Receive, send: Send) -> None:
        self.hub = hub
        self.state = hub.state
        self.scope = scope
        self.receive = receive
        self._send = send
        self.subs: dict[str, Subscription] = {}
        self.closed = False
        self.queue: asyncio.Queue[str] | None = None  # pushed messages (push subscriptions only)
        self.writer: asyncio.Task[None] | None = None
        self.overflowed = False
        self._close_sent = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._handlers: dict[str, Callable[[dict[str, Any]], Coroutine[Any, Any, None]]] = {
            "subscribe": self.subscribe, "candle": self.candle, "candles": self.candles,
            "unsubscribe": self.unsubscribe, "ping": self.ping, "auth": self.auth}

    # -- the connection's life ---------------------------------------------------------------------------------
    async def run(self) -> None:
        msg = await self.receive()
        if msg["type"] != "websocket.connect":
            return
        key = self.scope.get(KEY_STATE)
        try:
            await self._send({"type": "websocket.accept"})
        except OSError:  # the client left during the handshake
            return
        metrics = self.state.metrics
        metrics.ws_connections.inc()
        self.hub.connections.add(self)
        try:
            if key not in ("ok", "none"):  # "wrong", or a scope the gate never admitted
                await self.close(1008, _KEY_HINT)
                return
            if key == "none" and not await self.authenticate():
                return
            await self.serve()
        except _Closed:
            pass
        finally:
            self.cleanup()
            self.hub.connections.discard(self)
            metrics.ws_connections.dec()

    async def authenticate(self) -> bool:
        """The first message must be {"type": "auth", "key": ...} with a valid key."""
        try:
            msg = await asyncio.wait_for(self.receive(), AUTH_TIMEOUT_S)
        except asyncio.TimeoutError:
            await self.close(1008, f"No API key within {AUTH_TIMEOUT_S:.0f} s: send "
                                   "{\"type\": \"auth\", \"key\": ...} first, or the key in the headers")
            return False
        obj = await self.parse(msg)
        if obj is None:
            return False
        key = obj.get("key")
        if obj.get("type") != "auth" or not isinstance(key, str) or not self.state.keys.check(key.encode()):
            await self.close(1008, _KEY_HINT)
            return False
        await self.send_json({"type": "authenticated"})
        return True

    async def serve(self) -> None:
        metrics = self.state.metrics
        while not self.closed:
            msg = await self.receive()
            t0 = time.perf_counter()
            obj = await self.parse(msg)
            if obj is None:
                return
            kind = obj.get("type")
            handler = self._handlers.get(kind) if type(kind) is str else None
            try:
                if handler is None:
                    what = "has no 'type'" if kind is None else f"has an unknown type {str(kind)[:40]!r}"
                    raise RequestError(422, f"The message {what}; send one of subscribe, candle, candles, "
                                            "unsubscribe, ping (README: Streaming predictions).")
                await handler(obj)
            except RequestError as exc:
                sid = obj.get("id")
                await self.send_json(error_message(sid if type(sid) is str and sid in self.subs else None, exc))
            except (_Closed, OSError):
                raise _Closed() from None
            except Exception:  # a bug: say so and keep serving; never the 1011 a crashed handler would give
                log.exception("/ws/predict: handling a %r message failed", kind)
                await self.send_json({"type": "error", "id": None, "open_time": None,
                                      "error": "The server failed on this message (a bug, logged); the connection "
                                               "and its subscriptions are still usable."})
            metrics.ws_message(kind if handler is not None and type(kind) is str else "other",
                               time.perf_counter() - t0)

    async def parse(self, msg: dict[str, Any] | Any) -> dict[str, Any] | None:
        """The JSON object a received message carries, or None after closing the connection for it."""
        if msg["type"] != "websocket.receive":
            self.closed = True  # the client left
            return None
        limit = self.state.settings.ws_max_message_bytes
        text = msg.get("text")
        if text is None:
            data = msg.get("bytes") or b""
            if len(data) > limit:
                await self.close(1009, f"A {len(data)}-byte message is over the limit of {limit} bytes "
                                       "(XYLEN_WS_MAX_MESSAGE_BYTES)")
            else:
                await self.close(1003, "Binary frames are not accepted: send JSON objects in text frames")
            return None
        if len(text) > limit // 4 and len(size := text.encode()) > limit:
            await self.close(1009, f"A {len(size)}-byte message is over the limit of {limit} bytes "
                                   "(XYLEN_WS_MAX_MESSAGE_BYTES); send fewer candles per message")
            return None
        try:
            obj = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            await self.close(1007, f"Not JSON ({exc}): send a JSON object like {{\"type\": \"ping\"}}")
            return None
        if type(obj) is not dict:
            await self.close(1007, f"A JSON {_json_kind(obj)}, not an object: send one like {{\"type\": \"ping\"}}")
            return None
        return obj

    async def send_json(self, obj: dict[str, Any]) -> None:
        if self.closed:
            raise _Closed()
        try:
            await self._send({"type": "websocket.send", "text": orjson.dumps(obj).decode()})
        except (OSError, RuntimeError):  # the client went away (uvicorn: ClientDisconnected, an OSError)
            self.closed = True
            raise _Closed() from None

    async def close(self, code: int, reason: str) -> None:
        if self._close_sent:
            return
        self._close_sent = self.closed = True
        with contextlib.suppress(OSError, RuntimeError):
            await self._send({"type": "websocket.close", "code": code, "reason": clip(reason)})

    def cleanup(self) -> None:
        self.closed = True
        for sub in self.subs.values():
            if sub.unlisten is not None:
                sub.unlisten()
                sub.unlisten = None
        if self.writer is not None:
            self.writer.cancel()
        if self.queue is not None:
            while not self.queue.empty():
                self.queue.get_nowait()

    # -- client messages ---------------------------------------------------------------------------------------
    async def auth(self, obj: dict[str, Any]) -> None:
        key = obj.get("key")
        if self.state.keys.enabled and (not isinstance(key, str) or not self.state.keys.check(key.encode())):
            raise RequestError(401, "Wrong API key in the auth message; this connection is authenticated already "
                                    "and stays so.")
        await self.send_json({"type": "authenticated"})

    async def ping(self, obj: dict[str, Any]) -> None:
        await self.send_json({"type": "pong"})

    async def subscribe(self, obj: dict[str, Any]) -> None:
        sid = obj.get("id")
        if type(sid) is not str or not _ID.match(sid):
            raise RequestError(422, f"Field 'id' {str(sid)[:70]!r} must be 1-64 characters of A-Z a-z 0-9 _ . : - "
                                    "(e.g. \"s1\"), a name for the subscription of your choice.")
        try:
            await self._subscribe(sid, obj)
        except RequestError as exc:  # the error names the id even though the subscription does not exist
            await self.send_json(error_message(sid, exc))

    async def _subscribe(self, sid: str, obj: dict[str, Any]) -> None:
        st = self.state
        if sid in self.subs:
            raise RequestError(409, f"Subscription {sid!r} exists on this connection; unsubscribe it first or use "
                                    "another id.")
        limit = st.settings.ws_max_subscriptions
        if len(self.subs) >= limit:
            raise RequestError(429, f"This connection holds {len(self.subs)} subscriptions, the limit "
                                    f"(XYLEN_WS_MAX_SUBSCRIPTIONS={limit}); unsubscribe one, or open another "
                                    "connection.")
        mode = obj.get("mode", "send")
        if mode not in ("send", "push"):
            raise RequestError(422, f"Field 'mode' {str(mode)[:40]!r} must be \"send\" (you send the candles) or "
                                    "\"push\" (the server pushes what `xylen collect` stores).")
        model = obj.get("model")
        if model is not None and type(model) is not str:
            raise RequestError(422, "Field 'model' must be a model name (GET /models), or left out to route by "
                                    "symbol and timeframe as POST /predict does.")
        req = series_fields(obj)
        notes: list[str] = []
        live_map = st.holder.live
        if model is not None:
            live = live_map.get(model)
            if live is None:
                raise RequestError(404, f"No live model {model[:64]!r}; live: {', '.join(sorted(live_map)) or 'none'}"
                                        " (GET /models).")
        else:
            live = route(st.holder, live_map, req, notes)
        interval = req.timeframe or live.interval  # check_model refuses a named model of another interval
        if interval is None:
            raise RequestError(422, f"{live.who} does not say which candle interval it reads; send 'timeframe'.")
        fs = check_model(live, interval)
        symbol = req.symbol or live.bundle.manifest.symbol
        exchange = req.exchange if req.symbol is not None else live.exchange
        sub = Subscription(sid, mode, req, model, interval, symbol, exchange, Ring(fs.min_candles),
                           (live.name, live.version))
        if mode == "send":
            raw = obj.get("candles")
            if raw is None:
                raise RequestError(422, f"Field 'candles' is missing: send mode starts from a window of at least "
                                        f"{fs.min_candles} closed candles for {live.who}, oldest first, as POST "
                                        "/predict takes them; or use \"mode\": \"push\".")
            c = closed_candles(fs, raw, interval, st.clock() * 1000.0, st.settings.clock_skew * 1000.0, live.who,
                               notes)
            first = sub.first(st, live, fs, c, notes)
            self.subs[sid] = sub
            await self.send_json(_subscribed(sub, live.name, live.version, fs.min_candles))
            await self.send_json(first)
            return
        if obj.get("candles") is not None:
            raise RequestError(422, "Push mode takes no 'candles': the server reads them from its candle store. "
                                    "Leave 'candles' out, or use \"mode\": \"send\".")
        if symbol is None:
            raise RequestError(422, f"{live.who} does not say which symbol it was trained on; send 'symbol'.")
        feed = self.hub.feed()
        try:
            rows = await asyncio.to_thread(feed.history, exchange, symbol, interval, fs.min_candles)
        except XylenError as exc:
            raise RequestError(503, exc.message) from None
        if self.closed:
            return
        if not len(rows):  # the feed's history says so itself (404); an empty answer must not pass either
            raise RequestError(404, f"No {symbol} {interval} candles are stored; run `xylen collect --symbols "
                                    f"{symbol} --intervals {interval}`.")
        times = rows[:, 0].astype(np.int64)
        ok = intervals.consecutive(times, interval)  # a gap in the store: only the run after it counts
        start = len(ok) - int(np.argmin(ok[::-1])) if len(ok) and not ok.all() else 0
        sub.ring.fill(rows[start:])
        # listening first: a subscription exists only once its candles will come
        sub.unlisten = feed.listen(exchange, symbol, interval, lambda r: self.pushed(sub, r),
                                   on_error=lambda exc: self.push_error(sub, exc), since=int(times[-1]))
        self.subs[sid] = sub
        await self.send_json(_subscribed(sub, live.name, live.version, fs.min_candles))

    def _sub(self, obj: dict[str, Any]) -> Subscription:
        sid = obj.get("id")
        sub = self.subs.get(sid) if type(sid) is str else None
        if sub is None:
            raise RequestError(404, f"No subscription {str(sid)[:70]!r} on this connection "
                                    f"({', '.join(sorted(self.subs)) or 'none yet'}); subscribe first.")
        return sub

    async def candle(self, obj: dict[str, Any]) -> None:
        sub = self._send_mode(obj)
        if "candle" not in obj:
            raise RequestError(422, "Field 'candle' is missing: send the next closed candle as a Binance array or "
                                    "an object, as POST /predict takes them.")
        await self.send_json(sub.candle(self.state, obj["candle"]))

    async def candles(self, obj: dict[str, Any]) -> None:
        sub = self._send_mode(obj)
        raw = obj.get("candles")
        if type(raw) is not list:
            raise RequestError(422, "Field 'candles' must be a list of the next closed candles, oldest first.")
        for one in raw:  # each answered in order, a refused one with an error, as if sent one by one
            try:
                out = sub.candle(self.state, one)
            except RequestError as exc:
                out = error_message(sub.sid, exc)
            await self.send_json(out)

    def _send_mode(self, obj: dict[str, Any]) -> Subscription:
        sub = self._sub(obj)
        if sub.mode != "send":
            raise RequestError(409, f"Subscription {sub.sid!r} is in push mode: the server sends its candles. "
                                    "Subscribe in send mode to send candles.")
        return sub

    async def unsubscribe(self, obj: dict[str, Any]) -> None:
        sub = self._sub(obj)
        del self.subs[sub.sid]
        if sub.unlisten is not None:
            sub.unlisten()
            sub.unlisten = None
        await self.send_json({"type": "unsubscribed", "id": sub.sid})

    # -- pushed predictions (on the event loop, from the store feed) ------------------------------------------
    def pushed(self, sub: Subscription, rows: np.ndarray) -> None:
        if self.closed or self.subs.get(sub.sid) is not sub:
            return
        t0 = time.perf_counter()
        for out in sub.pushed(self.state, rows):
            self.push(out)
            if self.closed:
                break
        self.state.metrics.ws_message("push", time.perf_counter() - t0)

    def push_error(self, sub: Subscription, exc: XylenError) -> None:
        if not self.closed and self.subs.get(sub.sid) is sub:
            self.push({"type": "error", "id": sub.sid, "open_time": None,
                       "error": f"Reading the candle store failed: {exc.message} Pushes resume once it reads."})

    def push(self, out: dict[str, Any]) -> None:
        if self.closed or self.overflowed:
            return
        if self.queue is None:
            self.queue = asyncio.Queue(self.hub.push_queue)
            self.writer = asyncio.get_running_loop().create_task(self._write(self.queue))
        try:
            self.queue.put_nowait(orjson.dumps(out).decode())
        except asyncio.QueueFull:
            self.overflow()

    def overflow(self) -> None:
        """The client does not read its pushes: stop producing, drop what waits, close 1013."""
        self.overflowed = True
        limit = self.hub.push_queue
        self.cleanup()  # the close frame goes out once the client reads (TCP) again
        task = asyncio.get_running_loop().create_task(self.close(1013, f"Consumer too slow: {limit} pushed "
                                                                       "predictions waited unread; read faster"))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write(self, queue: asyncio.Queue[str]) -> None:
        while True:
            text = await queue.get()
            if self.closed:
                return
            try:
                await self._send({"type": "websocket.send", "text": text})
            except (OSError, RuntimeError):
                self.closed = True
                return


def _subscribed(sub: Subscription, model: str, version: str, min_candles: int) -> dict[str, Any]:
    return {"type": "subscribed", "id": sub.sid, "mode": sub.mode, "model": model, "model_version": version,
            "min_candles": min_candles, "symbol": sub.symbol, "timeframe": sub.interval, "exchange": sub.exchange,
            "last_open_time": sub.ring.last_time if sub.ring.n else None}


def _json_kind(obj: Any) -> str:
    return {list: "array", str: "string", int: "number", float: "number", bool: "boolean"}.get(type(obj), "null")
