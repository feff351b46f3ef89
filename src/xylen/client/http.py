"""The HTTP half of the client: ``Client`` (sync) and ``AsyncClient`` (asyncio) over one keep-alive httpx pool."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
import orjson

if TYPE_CHECKING:
    from xylen.client.stream import AsyncStream, Stream

DEFAULT_URL = "http://127.0.0.1:8000"
JSON = {"Content-Type": "application/json"}


class ClientError(Exception):
    """What the server refused, or why it could not be asked, in the server's own sentence.

    ``status``: the HTTP status (4xx/5xx), the WebSocket close code (1008, 1013, 1001 ...), or None for a stream
    ``error`` message (the subscription stays usable) and for a server that could not be reached.
    ``open_time``: the candle a stream error is about (epoch ms), else None."""

    def __init__(self, status: int | None, message: str, *, open_time: int | None = None) -> None:
        super().__init__(message if status is None else f"{status}: {message}")
        self.status = status
        self.message = message
        self.open_time = open_time


def check_url(url: str) -> str:
    """The server's base URL without a trailing slash; ValueError quoting it unless it is http(s)://host[:port]."""
    if not isinstance(url, str):
        raise ValueError(f"url must be a string like {DEFAULT_URL!r}, got {type(url).__name__}")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ValueError(f"url {url[:200]!r} is not the base URL of a xylen server; use one like {DEFAULT_URL!r}")
    return url.rstrip("/")


def check_timeout(timeout: float) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not math.isfinite(timeout) or timeout <= 0:
        raise ValueError(f"timeout {timeout!r} is not a positive number of seconds; use e.g. 10.0")
    return float(timeout)


def auth_headers(key: str | None) -> dict[str, str]:
    if key is None:
        return {}
    if not isinstance(key, str) or not key or any(c in key for c in "\r\n"):
        raise ValueError("key must be a non-empty one-line string (the server's XYLEN_API_KEYS holds it), or None")
    return {"Authorization": f"Bearer {key}"}


def dumps(obj: Any) -> bytes:
    """JSON bytes; numpy arrays and numbers (a candle matrix) are written as lists without importing numpy."""
    try:
        return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)
    except TypeError as exc:
        raise ValueError(f"cannot send this as JSON ({exc}); send lists, dicts, numbers and strings") from None


def predict_body(
    candles: Any, symbol: str | None, timeframe: str | None, exchange: str | None, features: Any
) -> dict[str, Any]:
    body = {"candles": candles, "symbol": symbol, "timeframe": timeframe, "exchange": exchange, "features": features}
    return {k: v for k, v in body.items() if v is not None}


def answer(r: httpx.Response) -> Any:
    """The JSON body of a 2xx; otherwise a ClientError carrying the server's {"error"} sentence."""
    if r.is_success:
        try:
            return orjson.loads(r.content)
        except orjson.JSONDecodeError:
            raise ClientError(r.status_code, f"the answer is not JSON: {r.text[:200]!r}") from None
    raise ClientError(r.status_code, error_text(r.content, r.reason_phrase))


def error_text(body: bytes, fallback: str) -> str:
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        obj = None
    if isinstance(obj, Mapping) and isinstance(obj.get("error"), str):
        return obj["error"]
    text = body.decode("utf-8", "replace").strip()
    return text[:300] if text else fallback


def unreachable(url: str, exc: httpx.TransportError) -> ClientError:
    what = "timed out" if isinstance(exc, httpx.TimeoutException) else "failed"
    return ClientError(
        None, f"The request to {url} {what} ({type(exc).__name__}: {exc}); is `xylen serve` running there?"
    )


class Client:
    """A xylen server over HTTP (sync): ``with Client(url, key=...) as c: c.predict(candles, "BTCUSDT", "5m")``.

    One keep-alive connection pool; thread-safe as httpx.Client is. Every refusal raises ``ClientError`` with the
    server's sentence; a server that cannot be reached raises ``ClientError`` with status None."""

    def __init__(self, url: str = DEFAULT_URL, key: str | None = None, timeout: float = 10.0) -> None:
        self.url = check_url(url)
        self.key = key
        self.timeout = check_timeout(timeout)
        self._http = httpx.Client(base_url=self.url, headers=auth_headers(key), timeout=self.timeout)

    def _call(self, method: str, path: str, body: Any = None, ok: tuple[int, ...] = ()) -> Any:
        try:
            if body is None:
                r = self._http.request(method, path)
            else:
                r = self._http.request(method, path, content=dumps(body), headers=JSON)
        except httpx.TransportError as exc:
            raise unreachable(self.url + path, exc) from None
        return orjson.loads(r.content) if r.status_code in ok else answer(r)

    def predict(
        self,
        candles: Any = None,
        symbol: str | None = None,
        timeframe: str | None = None,
        exchange: str | None = None,
        features: Any = None,
    ) -> dict[str, Any]:
        """POST /predict: the signal for the last closed candle of ``candles`` (Binance 12-field arrays, objects,
        or an (n, 6+) numpy array), as the server answers it (prediction, confidence, model_version, ...)."""
        return self._call("POST", "/predict", predict_body(candles, symbol, timeframe, exchange, features))  # type: ignore[no-any-return]

    def models(self) -> list[dict[str, Any]]:
        """GET /models: the live models, each with its version, outputs and min_candles."""
        return self._call("GET", "/models")  # type: ignore[no-any-return]

    def ready(self) -> dict[str, Any]:
        """GET /health/ready: {"status": "ready", ...} or, while models load, {"status": "not ready", "error"}."""
        return self._call("GET", "/health/ready", ok=(503,))  # type: ignore[no-any-return]

    def stream(self) -> Stream:
        """A WebSocket to /ws/predict (``xylen.client.stream.Stream``); not reconnected automatically."""
        from xylen.client.stream import Stream

        return Stream(self.url, self.key, self.timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient:
    """``Client`` for asyncio: the same methods, awaited; ``async with AsyncClient(url) as c: await c.predict(...)``."""

    def __init__(self, url: str = DEFAULT_URL, key: str | None = None, timeout: float = 10.0) -> None:
        self.url = check_url(url)
        self.key = key
        self.timeout = check_timeout(timeout)
        self._http = httpx.AsyncClient(base_url=self.url, headers=auth_headers(key), timeout=self.timeout)

    async def _call(self, method: str, path: str, body: Any = None, ok: tuple[int, ...] = ()) -> Any:
        try:
            if body is None:
                r = await self._http.request(method, path)
            else:
                r = await self._http.request(method, path, content=dumps(body), headers=JSON)
        except httpx.TransportError as exc:
            raise unreachable(self.url + path, exc) from None
        return orjson.loads(r.content) if r.status_code in ok else answer(r)

    async def predict(
        self,
        candles: Any = None,
        symbol: str | None = None,
        timeframe: str | None = None,
        exchange: str | None = None,
        features: Any = None,
    ) -> dict[str, Any]:
        """POST /predict (see ``Client.predict``)."""
        return await self._call("POST", "/predict", predict_body(candles, symbol, timeframe, exchange, features))  # type: ignore[no-any-return]

    async def models(self) -> list[dict[str, Any]]:
        return await self._call("GET", "/models")  # type: ignore[no-any-return]

    async def ready(self) -> dict[str, Any]:
        return await self._call("GET", "/health/ready", ok=(503,))  # type: ignore[no-any-return]

    def stream(self) -> AsyncStream:
        """``async with client.stream() as s``: a WebSocket to /ws/predict; not reconnected automatically."""
        from xylen.client.stream import AsyncStream

        return AsyncStream(self.url, self.key, self.timeout)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
