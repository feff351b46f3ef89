"""Who may open a WebSocket: the gate sends every "websocket" scope here before the app sees it.

CORS does not cover WebSockets: a page on any origin may open one to 127.0.0.1 and the browser sends it along
with the page's ``Origin``. So a server without API keys refuses, before the handshake completes (HTTP 403 with a
JSON error), an ``Origin`` that is not loopback and not in XYLEN_ALLOWED_HOSTS, and, as for HTTP, a ``Host`` that
is not (421). No ``Origin`` (a bot, a script) is fine. A server with keys lets the connection open and the
endpoint asks for the key: in the upgrade request's headers, else in the first message (browsers cannot set
headers); ``scope[KEY_STATE]`` says which it got.

A dashboard login (issue #14: the ``xylen_ui`` session cookie, serve/ui_auth.py) counts as a key only when the
``Origin`` is allowed too (the page's own origin, whose host is the request's Host, a loopback origin, or a host in
XYLEN_ALLOWED_HOSTS): a cookie rides along with any page's request, an allowed Origin does not.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

import orjson

from xylen.serve import ui_auth
from xylen.serve.auth import HostCheck, presented_key
from xylen.serve.state import ServeState

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# scope key: "ok" (a valid key in the headers, or a server without keys), "wrong" (a key that is not valid), or
# "none" (no key in the headers: the first message must carry it)
KEY_STATE = "xylen.ws_key"


def _header(scope: Scope, name: bytes) -> bytes | None:
    for k, v in scope["headers"]:
        if k == name:
            return v  # type: ignore[no-any-return]
    return None


def origin_allowed(origin: bytes, hosts: HostCheck) -> bool:
    """Whether a browser page of ``origin`` may talk to a server without keys: a loopback origin
    (http(s)://127.0.0.1[:port], localhost, [::1]) or one whose host is in XYLEN_ALLOWED_HOSTS."""
    try:
        parts = urlsplit(origin.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        return False
    if parts.scheme not in ("http", "https") or not parts.netloc or "@" in parts.netloc:
        return False  # "null" (a sandboxed page or a file), another scheme, or credentials: never a loopback page
    return hosts.allows(parts.netloc.encode("ascii"))


async def admit(state: ServeState, hosts: HostCheck | None, app: ASGIApp, scope: Scope, receive: Receive,
                send: Send) -> None:
    """Refuse the handshake or pass the scope on to ``app`` with ``scope[KEY_STATE]`` set."""
    if hosts is None:  # API keys: the key is the guard (any Host: proxies); the endpoint checks it
        key = presented_key(scope["headers"])
        scope[KEY_STATE] = "none" if key is None else "ok" if state.keys.check(key) else "wrong"
        if key is None and state.settings.ui and session_allowed(state, scope):
            scope[KEY_STATE] = "ok"
        await app(scope, receive, send)
        return
    host = _header(scope, b"host")
    if host is not None and not hosts.allows(host):
        await _refuse(scope, receive, send, 421, (
            f"Host {host[:100].decode('latin-1')!r} is not allowed: a server without API keys answers only loopback "
            "names (localhost, 127.0.0.1, [::1]) and those in XYLEN_ALLOWED_HOSTS. hint: add the name to "
            "XYLEN_ALLOWED_HOSTS, or set XYLEN_API_KEYS."))
        return
    origin = _header(scope, b"origin")
    if origin is not None and not origin_allowed(origin, hosts):
        await _refuse(scope, receive, send, 403, (
            f"Origin {origin[:100].decode('latin-1')!r} may not open a WebSocket to a server without API keys: any "
            "web page could otherwise use it (CORS does not cover WebSockets). Only loopback origins and hosts in "
            "XYLEN_ALLOWED_HOSTS may. hint: connect from a script (no Origin), list the page's host in "
            "XYLEN_ALLOWED_HOSTS, or set XYLEN_API_KEYS."))
        return
    scope[KEY_STATE] = "ok"
    await app(scope, receive, send)


def session_allowed(state: ServeState, scope: Scope) -> bool:
    """A valid dashboard session cookie sent by a page of an allowed Origin (never without an Origin)."""
    origin = _header(scope, b"origin")
    if origin is None or not ui_auth.origin_ok(origin, _header(scope, b"host"), state.settings.allowed_host_list()):
        return False
    token = ui_auth.cookie_value(scope["headers"])
    max_age = state.settings.ui_session_max_age
    keys = state.keys
    return token is not None and ui_auth.verify(keys.session_secret, token, keys.digests, max_age_s=max_age) is not None


async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, message: str) -> None:
    """An HTTP error instead of the handshake: with a JSON body where the server supports that (uvicorn does),
    else a close before accept (the server answers 403)."""
    msg = await receive()
    if msg["type"] != "websocket.connect":
        return
    if "websocket.http.response" in scope.get("extensions", {}):
        body = orjson.dumps({"error": message})
        await send({"type": "websocket.http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1008, "reason": clip(message)})


def clip(reason: str) -> str:
    """A close reason within the 123 bytes a close frame holds (whole UTF-8 characters)."""
    b = reason.encode()
    if len(b) <= 123:
        return reason
    return b[:120].decode(errors="ignore") + "..."
