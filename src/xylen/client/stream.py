"""The stream half of the client: one WebSocket to ``/ws/predict``, many subscriptions on it (README "Streaming
predictions" has the protocol).

Messages for every subscription arrive on the one socket in the server's order. Whoever waits reads the socket
(one reader at a time) and files each message under its subscription's id, so a push that arrives while another
subscription waits for its answer is kept for its own ``receive`` and never lost or answered to the wrong caller.

No reconnection: a closed socket (server shutdown 1001, a slow push consumer 1013, a wrong key 1008) raises
``ClientError`` with the close code from every call; open a new stream and subscribe again. After a reconnect a push
subscription starts again from the store's newest candle, and candles stored meanwhile get no prediction.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import threading
import time
from typing import Any

import orjson

from xylen.client.http import ClientError, auth_headers, dumps, error_text

MAX_MESSAGE = 16 << 20  # bytes: a prediction is ~1 KB; the bound only stops a runaway peer


def ws_url(url: str) -> str:
    """``http://host:port[/prefix]`` -> ``ws://host:port[/prefix]/ws/predict`` (https -> wss)."""
    scheme, rest = url.split("://", 1)
    return f"{'wss' if scheme == 'https' else 'ws'}://{rest}/ws/predict"


class _Router:
    """Incoming messages filed by subscription id (None: pongs and errors about no subscription). No I/O."""

    def __init__(self) -> None:
        self.queues: dict[str | None, collections.deque[dict[str, Any]]] = {None: collections.deque()}
        self.closed: ClientError | None = None  # why the socket is gone; raised by every later call
        self.ids = itertools.count(1)

    def open(self, sid: str) -> None:
        if sid in self.queues:
            raise ValueError(f"subscription id {sid!r} is already in use on this stream")
        self.queues[sid] = collections.deque()

    def forget(self, sid: str) -> None:
        self.queues.pop(sid, None)

    def file(self, raw: str | bytes) -> None:
        try:
            msg = orjson.loads(raw)
        except orjson.JSONDecodeError:
            msg = None
        if not isinstance(msg, dict):
            msg = {
                "type": "error",
                "id": None,
                "error": f"the server sent a frame that is not a JSON object: {raw!r:.120}",
            }
        sid = msg.get("id")
        q = self.queues.get(sid if isinstance(sid, str) else None)
        if q is not None:  # a message for a subscription already given up (unsubscribed) is dropped
            q.append(msg)

    def take(self, sid: str | None) -> dict[str, Any] | None:
        q = self.queues.get(sid)
        if q:
            return q.popleft()
        if self.closed is not None:
            raise self.closed
        if q is None:
            raise ClientError(None, f"subscription {sid!r} is no longer on this stream (unsubscribed)")
        orphans = self.queues[None]
        if sid is not None and orphans and orphans[0].get("type") == "error":
            return orphans.popleft()  # an error the server could not tie to a subscription: whoever waits hears it
        return None


def closed_error(exc: Exception) -> ClientError:
    """A ConnectionClosed as a ClientError with its close code and reason."""
    rcvd = getattr(exc, "rcvd", None)
    code = rcvd.code if rcvd is not None else 1006
    reason = rcvd.reason if rcvd is not None and rcvd.reason else "no reason given"
    return ClientError(
        code,
        f"The server closed the stream ({code}: {reason}). xylen.client does not reconnect: open a new stream and "
        "subscribe again.",
    )


def handshake_error(url: str, exc: Exception) -> ClientError:
    response = getattr(exc, "response", None)
    if response is not None:  # the server answered the upgrade with an HTTP error (a foreign Origin, a bad Host)
        return ClientError(response.status_code, error_text(bytes(response.body or b""), response.reason_phrase))
    return ClientError(None, f"Cannot open a stream to {url} ({type(exc).__name__}: {exc}); is `xylen serve` running?")


def subscribe_message(
    sid: str,
    symbol: str | None,
    timeframe: str | None,
    candles: Any,
    push: bool,
    exchange: str | None,
    model: str | None,
) -> dict[str, Any]:
    if push and candles is not None:
        raise ValueError("push=True takes no candles: the server reads them from its store; leave candles out")
    if not push and candles is None:
        raise ValueError("send mode needs candles (the initial window, at least the model's min_candles); or push=True")
    msg = {"type": "subscribe", "id": sid, "mode": "push" if push else "send", "symbol": symbol,
           "timeframe": timeframe, "exchange": exchange, "model": model, "candles": candles}  # fmt: skip
    return {k: v for k, v in msg.items() if v is not None}


def prediction(msg: dict[str, Any]) -> dict[str, Any]:
    """A ``prediction`` message as it is; an ``error`` as a ClientError (status None) naming its candle."""
    kind = msg.get("type")
    if kind == "prediction":
        return msg
    if kind == "error":
        raise ClientError(None, str(msg.get("error")), open_time=msg.get("open_time"))
    raise ClientError(None, f"expected a prediction, the server sent {orjson.dumps(msg)[:200].decode()}")


class Stream:
    """A WebSocket to ``/ws/predict`` (sync). ``with client.stream() as s: sub = s.subscribe(...)``.

    Connects on creation; usable from one thread at a time per subscription. Not reconnected automatically."""

    def __init__(self, url: str, key: str | None = None, timeout: float = 10.0) -> None:
        from websockets.sync.client import connect

        self.url = ws_url(url)
        self.timeout = timeout
        self._router = _Router()
        self._lock = threading.Lock()  # one reader of the socket at a time
        try:
            self._ws = connect(
                self.url, additional_headers=auth_headers(key), open_timeout=timeout, max_size=MAX_MESSAGE
            )
        except Exception as exc:  # OSError, TimeoutError, websockets' InvalidStatus/InvalidHandshake
            raise handshake_error(self.url, exc) from None

    def _send(self, msg: dict[str, Any]) -> None:
        if self._router.closed is not None:
            raise self._router.closed
        from websockets.exceptions import ConnectionClosed

        try:
            self._ws.send(dumps(msg).decode())
        except ConnectionClosed as exc:
            self._router.closed = closed_error(exc)
            raise self._router.closed from None

    def _wait(self, sid: str | None, timeout: float | None) -> dict[str, Any]:
        from websockets.exceptions import ConnectionClosed

        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                msg = self._router.take(sid)
                if msg is not None:
                    return msg
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    raw = self._ws.recv(timeout=left)
                except TimeoutError:
                    raise TimeoutError(f"no message for {sid or 'the stream'} within {timeout} s") from None
                except ConnectionClosed as exc:
                    self._router.closed = closed_error(exc)
                    raise self._router.closed from None
                self._router.file(raw)

    def subscribe(
        self,
        symbol: str | None = None,
        timeframe: str | None = None,
        candles: Any = None,
        push: bool = False,
        exchange: str | None = None,
        model: str | None = None,
        *,
        id: str | None = None,
    ) -> Subscription:
        """Send mode (``candles``: the initial window; ``sub.prediction`` answers it, ``sub.send`` the next ones) or
        push mode (``push=True``: iterate the subscription for a prediction per candle `xylen collect` stores).
        A refusal (unknown series, too many subscriptions, a bad window) raises ClientError."""
        sid = id if id is not None else f"s{next(self._router.ids)}"
        msg = subscribe_message(sid, symbol, timeframe, candles, push, exchange, model)
        self._router.open(sid)
        try:
            self._send(msg)
            info = self._wait(sid, self.timeout)
            if info.get("type") != "subscribed":
                prediction(info)  # raises the server's error
                raise ClientError(None, f"expected 'subscribed', the server sent {info.get('type')!r}")
            sub = Subscription(self, sid, info)
            if not push:
                sub.prediction = prediction(self._wait(sid, self.timeout))
        except BaseException:
            self._router.forget(sid)
            raise
        return sub

    def ping(self) -> None:
        """A protocol-level ping; returns once the server answered ``pong``."""
        self._send({"type": "ping"})
        msg = self._wait(None, self.timeout)
        if msg.get("type") != "pong":
            prediction(msg)

    def close(self) -> None:
        if self._router.closed is None:
            self._router.closed = ClientError(None, "this stream was closed; open a new one")
        self._ws.close()

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Subscription:
    """One series on a ``Stream``. ``info``: the server's ``subscribed`` message (model, model_version,
    min_candles, last_open_time ...); ``prediction``: the answer to the initial window (send mode)."""

    def __init__(self, stream: Stream, sid: str, info: dict[str, Any]) -> None:
        self.stream = stream
        self.id = sid
        self.info = info
        self.mode: str = info.get("mode", "send")
        self.prediction: dict[str, Any] | None = None
        self._done = False

    def send(self, candle: Any) -> dict[str, Any]:
        """The next closed candle -> its prediction. A refused candle (a gap, a duplicate, NaN ...) raises
        ClientError naming it (``.open_time``); the subscription stays usable and its window unchanged."""
        if self.mode != "send":
            raise TypeError("send() is for send-mode subscriptions; a push subscription is iterated")
        self.stream._send({"type": "candle", "id": self.id, "candle": candle})
        return prediction(self.stream._wait(self.id, self.stream.timeout))

    def receive(self, timeout: float | None = None) -> dict[str, Any]:
        """The next pushed prediction (push mode), waiting up to ``timeout`` s (None: until it comes); an ``error``
        the server pushed (e.g. an unreadable store) raises ClientError and the subscription stays usable."""
        if self.mode != "push":
            raise TypeError("receive() is for push subscriptions (push=True); send mode answers send()")
        return prediction(self.stream._wait(self.id, timeout))

    def __iter__(self) -> Subscription:
        return self

    def __next__(self) -> dict[str, Any]:
        if self._done:
            raise StopIteration
        return self.receive()

    def unsubscribe(self) -> None:
        """Stop this subscription (the server answers ``unsubscribed``); other subscriptions carry on."""
        if self._done:
            return
        self._done = True
        self.stream._send({"type": "unsubscribe", "id": self.id})
        while self.stream._wait(self.id, self.stream.timeout).get("type") != "unsubscribed":
            pass  # pushes already on their way
        self.stream._router.forget(self.id)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.stream._router.closed is None:
            self.unsubscribe()


class AsyncStream:
    """``Stream`` for asyncio: ``async with client.stream() as s: sub = await s.subscribe(...)``; any number of
    tasks may wait on its subscriptions at once. Not reconnected automatically."""

    def __init__(self, url: str, key: str | None = None, timeout: float = 10.0) -> None:
        self.url = ws_url(url)
        self.timeout = timeout
        self._key = key
        self._router = _Router()
        self._lock: asyncio.Lock | None = None
        self._ws: Any = None

    async def connect(self) -> AsyncStream:
        from websockets.asyncio.client import connect

        if self._ws is None:
            self._lock = asyncio.Lock()
            try:
                self._ws = await connect(
                    self.url,
                    additional_headers=auth_headers(self._key),
                    open_timeout=self.timeout,
                    max_size=MAX_MESSAGE,
                )
            except Exception as exc:
                raise handshake_error(self.url, exc) from None
        return self

    async def _send(self, msg: dict[str, Any]) -> None:
        from websockets.exceptions import ConnectionClosed

        if self._ws is None:
            await self.connect()
        if self._router.closed is not None:
            raise self._router.closed
        try:
            await self._ws.send(dumps(msg).decode())
        except ConnectionClosed as exc:
            self._router.closed = closed_error(exc)
            raise self._router.closed from None

    async def _wait(self, sid: str | None, timeout: float | None) -> dict[str, Any]:
        from websockets.exceptions import ConnectionClosed

        assert self._lock is not None
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            msg = self._router.take(sid)
            if msg is not None:
                return msg
            async with self._lock:  # one reader; the others find their message filed when they get the lock
                msg = self._router.take(sid)
                if msg is not None:
                    return msg
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    raw = await asyncio.wait_for(self._ws.recv(), left)  # cancelling recv loses no message
                except asyncio.TimeoutError:
                    raise TimeoutError(f"no message for {sid or 'the stream'} within {timeout} s") from None
                except ConnectionClosed as exc:
                    self._router.closed = closed_error(exc)
                    raise self._router.closed from None
                self._router.file(raw)

    async def subscribe(
        self,
        symbol: str | None = None,
        timeframe: str | None = None,
        candles: Any = None,
        push: bool = False,
        exchange: str | None = None,
        model: str | None = None,
        *,
        id: str | None = None,
    ) -> AsyncSubscription:
        """See ``Stream.subscribe``."""
        sid = id if id is not None else f"s{next(self._router.ids)}"
        msg = subscribe_message(sid, symbol, timeframe, candles, push, exchange, model)
        self._router.open(sid)
        try:
            await self._send(msg)
            info = await self._wait(sid, self.timeout)
            if info.get("type") != "subscribed":
                prediction(info)
                raise ClientError(None, f"expected 'subscribed', the server sent {info.get('type')!r}")
            sub = AsyncSubscription(self, sid, info)
            if not push:
                sub.prediction = prediction(await self._wait(sid, self.timeout))
        except BaseException:
            self._router.forget(sid)
            raise
        return sub

    async def ping(self) -> None:
        await self._send({"type": "ping"})
        msg = await self._wait(None, self.timeout)
        if msg.get("type") != "pong":
            prediction(msg)

    async def close(self) -> None:
        if self._router.closed is None:
            self._router.closed = ClientError(None, "this stream was closed; open a new one")
        if self._ws is not None:
            await self._ws.close()

    async def __aenter__(self) -> AsyncStream:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AsyncSubscription:
    """``Subscription`` for asyncio: ``await sub.send(candle)``, ``async for p in sub``."""

    def __init__(self, stream: AsyncStream, sid: str, info: dict[str, Any]) -> None:
        self.stream = stream
        self.id = sid
        self.info = info
        self.mode: str = info.get("mode", "send")
        self.prediction: dict[str, Any] | None = None
        self._done = False

    async def send(self, candle: Any) -> dict[str, Any]:
        """See ``Subscription.send``."""
        if self.mode != "send":
            raise TypeError("send() is for send-mode subscriptions; a push subscription is iterated")
        await self.stream._send({"type": "candle", "id": self.id, "candle": candle})
        return prediction(await self.stream._wait(self.id, self.stream.timeout))

    async def receive(self, timeout: float | None = None) -> dict[str, Any]:
        """See ``Subscription.receive``."""
        if self.mode != "push":
            raise TypeError("receive() is for push subscriptions (push=True); send mode answers send()")
        return prediction(await self.stream._wait(self.id, timeout))

    def __aiter__(self) -> AsyncSubscription:
        return self

    async def __anext__(self) -> dict[str, Any]:
        if self._done:
            raise StopAsyncIteration
        return await self.receive()

    async def unsubscribe(self) -> None:
        if self._done:
            return
        self._done = True
        await self.stream._send({"type": "unsubscribe", "id": self.id})
        while (await self.stream._wait(self.id, self.stream.timeout)).get("type") != "unsubscribed":
            pass
        self.stream._router.forget(self.id)

    async def __aenter__(self) -> AsyncSubscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.stream._router.closed is None:
            await self.unsubscribe()
