"""One thin ASGI layer in front of FastAPI: who may call (keys, Host, CSRF), body-size limit, metrics, and the
/predict fast path.

A middleware stack costs per request; this is one function call. Label values come from ``route_of`` (a
fixed table), never from the request. POST bodies are read here once (Content-Length first, then the streamed
size) and replayed to the app; POST /predict is answered here without FastAPI's routing and dependency
machinery, by the same ``predict`` function the documented FastAPI route calls.

Who may call: with API keys, a valid key on every route but the probes (any Host: proxies and probes by pod
IP must work). Without keys, only loopback Host names and XYLEN_ALLOWED_HOSTS (DNS rebinding), and a POST that
may change state (anything but /predict and v2 infer) must be ``Content-Type: application/json``: a page on
another origin can send a form or text/plain without asking, but JSON only after a CORS preflight, and xylen
approves none.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from xylen.serve.auth import DETAIL, HostCheck, presented_key
from xylen.serve.decode import RequestError
from xylen.serve.docs import ASSETS
from xylen.serve.predict import predict
from xylen.serve.state import ServeState
from xylen.serve.stream_guard import admit
from xylen.serve.v2 import infer_answer
from xylen.serve.v2binary import HEADER, OCTETS

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# probes: no key and any Host (Docker HEALTHCHECK, Kubernetes by pod IP); they reveal no model data unless DETAIL
OPEN_ROUTES = frozenset({"/health/live", "/livez", "/v2/health/live", "/health/ready", "/readyz", "/v2/health/ready"})
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
        "/ui",
    }
)
_ASSETS = ASSETS + "/"
# the dashboard (serve/ui.py): its own auth (login page, session cookie), so the gate asks no key; Host rule as usual
UI_ROUTES = frozenset({"/ui", "/ui/login", "/ui/logout", "/ui/api/{feed}", "/ui/assets/{file}", "/ui/report/{file}"})
_UI_FORMS = frozenset({"/ui/login", "/ui/logout"})  # HTML forms: no JSON, the dashboard checks their Origin
_JSON_HEADERS = [(b"content-type", b"application/json")]
_JSON_TYPES = (b"application/json", b"application/cloudevents+json", b"text/json")


def route_of(path: str) -> str:
    """A bounded label for ``path``: the route template, or "other"."""
    if path in _EXACT:
        return path
    if path.startswith(_ASSETS):  # after the exact table: /predict never gets here
        return "/static/docs/{file}"
    if path.startswith("/v2/models/"):
        tail = "/versions/{version}" if "/versions/" in path else ""
        for suffix in ("/infer", "/ready"):
            if path.endswith(suffix):
                return f"/v2/models/{{name}}{tail}{suffix}"
        return f"/v2/models/{{name}}{tail}"
    if path.startswith("/models/") and path.endswith("/rollback"):
        return "/models/{name}/rollback"
    if path.startswith("/retrain/"):
        return "/retrain/{job_id}"
    if path.startswith("/ui/"):
        return _ui_route(path)
    return "other"


def _ui_route(path: str) -> str:
    for prefix, label in (("/ui/api/", "/ui/api/{feed}"), ("/ui/assets/", "/ui/assets/{file}"),
                          ("/ui/report/", "/ui/report/{file}")):
        if path.startswith(prefix):
            return label
    return path if path in ("/ui/login", "/ui/logout") else "/ui" if path == "/ui/" else "other"


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
        self.keys = state.keys
        # with keys the key is the guard and any Host is fine; without, the Host is checked
        self.hosts = None if state.keys.enabled else HostCheck(state.settings.allowed_host_list())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":  # who may open one: keys, Host and Origin (serve/stream_guard.py)
                await admit(self.state, self.hosts, self.app, scope, receive, send)
                return
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
            key_ok = False
            if self.hosts is None:
                key_ok = self.keys.check(presented_key(scope["headers"]))
                if not key_ok:
                    if route in UI_ROUTES:
                        pass  # the dashboard asks for its session cookie or shows its login page
                    elif route not in OPEN_ROUTES:
                        raise RequestError(
                            401, "Missing or wrong API key; send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'."
                        )
                    scope[DETAIL] = False
            else:
                host = _host(scope["headers"])
                if host is not None and not self.hosts.allows(host):
                    if route not in OPEN_ROUTES:
                        raise RequestError(421, _foreign_host(host))
                    scope[DETAIL] = False
            method = scope["method"]
            if method in ("GET", "HEAD", "OPTIONS", "DELETE"):
                await self.app(scope, receive, tracked)
                return
            body = await self._body(scope, receive)
            if method == "POST" and route in _FAST_POST:
                # the two hot routes skip FastAPI's routing; their documented FastAPI routes call the same code
                headers = None
                if route == "/predict":
                    if body:
                        _check_json(scope)
                    out = predict(self.state, body)
                else:
                    name, version = _infer_target(scope["path"])
                    out, headers = infer_answer(self.state, name, version, body, _v2_header(scope))
                status = 200
                await send_bytes(send, 200, out, headers)
                return
            if route in _UI_FORMS:
                pass
            elif not key_ok:
                _require_json(scope, method, route)
            elif body:
                _check_json(scope)
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
                        f"(max_body_bytes). {_FEWER}",
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
                    f"The request body exceeds the limit of {limit} bytes (max_body_bytes). {_FEWER}",
                )
            chunks.append(chunk)
            more = msg.get("more_body", False)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


# 1,000 Binance klines (the most one call returns) are under 200 kB as JSON: far under the 1 MB default
_FEWER = ("Send fewer candles: the model's min_candles (GET /models; 49 for feature set ohlcv-v2), plus one when "
          "the last may still be open, is enough; or raise XYLEN_MAX_BODY_BYTES.")
_FAST_POST = frozenset({"/predict", "/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"})


def _infer_target(path: str) -> tuple[str, str | None]:
    """(name, version) of /v2/models/{name}[/versions/{version}]/infer."""
    parts = path.split("/")  # "", "v2", "models", name, ["versions", version,] "infer"
    if len(parts) == 7 and parts[4] == "versions":
        return parts[3], parts[5]
    if len(parts) == 5:
        return parts[3], None
    raise RequestError(404, f"No such route {path[:80]!r}; use POST /v2/models/<name>/infer.")


def _host(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    for name, value in headers:
        if name == b"host":
            return value
    return None  # HTTP/1.0 may omit it; a browser never does


def _foreign_host(host: bytes) -> str:
    return (
        f"Host {host[:100].decode('latin-1')!r} is not allowed: a server without API keys answers only loopback "
        "names (localhost, 127.0.0.1, [::1]) and those in XYLEN_ALLOWED_HOSTS, so that a web page cannot reach it "
        "through DNS rebinding. hint: add the name to XYLEN_ALLOWED_HOSTS (comma-separated), or set XYLEN_API_KEYS."
    )


def _require_json(scope: Scope, method: str, route: str) -> None:
    """A request that may change state without a key: only JSON, which a cross-origin page cannot send unasked."""
    for name, value in scope["headers"]:
        if name == b"content-type":
            if value.split(b";", 1)[0].strip().lower() in _JSON_TYPES:
                return
            got = repr(value[:60].decode("latin-1"))
            break
    else:
        got = "none"
    raise RequestError(
        415,
        f"{method} {route} may change state, so without an API key it needs 'Content-Type: application/json' "
        f"(got {got}): a web page on another origin cannot send that without a CORS preflight, which xylen never "
        "approves. hint: send -H 'Content-Type: application/json', or an API key.",
    )


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


def _v2_header(scope: Scope) -> bytes | None:
    """v2 infer's Inference-Header-Content-Length (None: a JSON body), after the content-type check: JSON, or
    application/octet-stream for the binary tensor data extension (v2 infer only: /predict takes JSON)."""
    length = None
    for name, value in scope["headers"]:
        if name == HEADER:
            length = value
        elif name == b"content-type":
            kind = value.split(b";", 1)[0].strip().lower()
            if kind != OCTETS and kind not in _JSON_TYPES:
                raise RequestError(
                    415,
                    f"Content-Type {value[:60].decode('latin-1')!r} is neither JSON nor binary tensor data; send "
                    "'Content-Type: application/json', or application/octet-stream with an "
                    "Inference-Header-Content-Length header (the binary tensor data extension).",
                )
    return length


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
