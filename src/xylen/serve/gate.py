"""One thin ASGI layer in front of FastAPI: auth, body-size limit, metrics, and the /predict fast path.

A middleware stack costs per request; this is one function call. Label values come from ``route_of`` (a
fixed table), never from the request. POST bodies are read here once (Content-Length first, then the streamed
size) and replayed to the app; POST /predict is answered here without FastAPI's routing and dependency
machinery, by the same ``predict`` function the documented FastAPI route calls.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from xylen.serve.auth import presented_key
from xylen.serve.decode import RequestError
from xylen.serve.predict import predict
from xylen.serve.state import ServeState
from xylen.serve.v2 import infer_body

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_ROUTES = frozenset({"/health/live", "/livez", "/v2/health/live"})
_EXACT = frozenset(
    {
        "/predict",
        "/health",
        "/health/live",
        "/livez",
        "/health/ready",
        "/readyz",
        "/metrics",
        "/retrain",
        "/models",
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models",
        "/docs",
        "/openapi.json",
        "/docs/oauth2-redirect",
        "/redoc",
    }
)
_JSON_HEADERS = [(b"content-type", b"application/json")]
_JSON_TYPES = (b"application/json", b"application/cloudevents+json", b"text/json")


def route_of(path: str) -> str:
    """A bounded label for ``path``: the route template, or "other"."""
    if path in _EXACT:
        return path
    if path.startswith("/v2/models/"):
        tail = "/versions/{version}" if "/versions/" in path else ""
        for suffix in ("/infer", "/ready"):
            if path.endswith(suffix):
                return f"/v2/models/{{name}}{tail}{suffix}"
        return f"/v2/models/{{name}}{tail}"
    if path.startswith("/models/") and path.endswith("/rollback"):
        return "/models/{name}/rollback"
    return "other"


async def send_bytes(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*(headers or _JSON_HEADERS), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def error_bytes(message: str) -> bytes:
    return orjson.dumps({"error": message})


class Gate:
    def __init__(self, app: ASGIApp, state: ServeState) -> None:
        self.app = app
        self.state = state
        self.max_body = state.settings.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        route = route_of(scope["path"])
        status = 500

        async def tracked(msg: Message) -> None:
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
            await send(msg)

        try:
            if (
                self.state.keys.enabled
                and route not in OPEN_ROUTES
                and not self.state.keys.check(presented_key(scope["headers"]))
            ):
                raise RequestError(
                    401, "Missing or wrong API key; send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'."
                )
            method = scope["method"]
            if method in ("GET", "HEAD", "OPTIONS", "DELETE"):
                await self.app(scope, receive, tracked)
                return
            body = await self._body(scope, receive)
            if body:
                _check_json(scope)
            if method == "POST" and route in _FAST_POST:
                # the two hot routes skip FastAPI's routing; their documented FastAPI routes call the same code
                if route == "/predict":
                    out = predict(self.state, body)
                else:
                    name, version = _infer_target(scope["path"])
                    out = orjson.dumps(infer_body(self.state, name, version, body), option=orjson.OPT_SERIALIZE_NUMPY)
                status = 200
                await send_bytes(send, 200, out)
                return
            await self.app(scope, _replay(body, receive), tracked)
        except RequestError as exc:
            status = exc.status
            headers = [*_JSON_HEADERS, (b"www-authenticate", b"Bearer")] if exc.status == 401 else None
            await send_bytes(send, exc.status, error_bytes(exc.message), headers)
        finally:
            self.state.metrics.observe(route, status, time.perf_counter() - t0)

    async def _body(self, scope: Scope, receive: Receive) -> bytes:
        limit = self.max_body
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    raise RequestError(400, "The Content-Length header is not a number.") from None
                if declared > limit:
                    raise RequestError(
                        413,
                        f"The request body is {declared} bytes; the limit is {limit} "
                        "(max_body_bytes). Send fewer candles (100 is plenty).",
                    )
        chunks = []
        size = 0
        more = True
        while more:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                raise RequestError(400, "The client disconnected before sending the whole body.")
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise RequestError(
                    413,
                    f"The request body exceeds the limit of {limit} bytes (max_body_bytes). "
                    "Send fewer candles (100 is plenty).",
                )
            chunks.append(chunk)
            more = msg.get("more_body", False)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


_FAST_POST = frozenset({"/predict", "/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"})


def _infer_target(path: str) -> tuple[str, str | None]:
    """(name, version) of /v2/models/{name}[/versions/{version}]/infer."""
    parts = path.split("/")  # "", "v2", "models", name, ["versions", version,] "infer"
    if len(parts) == 7 and parts[4] == "versions":
        return parts[3], parts[5]
    if len(parts) == 5:
        return parts[3], None
    raise RequestError(404, f"No such route {path[:80]!r}; use POST /v2/models/<name>/infer.")


def _check_json(scope: Scope) -> None:
    for name, value in scope["headers"]:
        if name == b"content-type":
            if value.split(b";", 1)[0].strip().lower() not in _JSON_TYPES:
                raise RequestError(
                    415,
                    f"Content-Type {value[:60].decode('latin-1')!r} is not JSON; send "
                    "'Content-Type: application/json'.",
                )
            return


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body we already read, then the real channel (which reports a client disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
