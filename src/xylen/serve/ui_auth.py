"""Dashboard sessions (issue #14): a login cookie that is not the key, valid in every worker, and its CSRF token.

A session token is ``v1.<expiry>.<nonce>.<mac>``: the expiry (epoch seconds), 16 random bytes, and an HMAC-SHA256
over both keyed by a key derived from the server's session secret (``KeyRing.session_secret``) and the sha256
digest of the API key that logged in. The secret is the one in XYLEN_UI_SESSION_SECRET_FILE (serve/auth.py
read_session_secret), else 32 random bytes drawn at start and never written to disk. Nothing is stored: the
supervisor of ``xylen serve --workers N`` hands every worker the same secret and digests (the way the digests
already travel), so any worker accepts the token, and so does any replica (or a restarted server) with the same
secret file and key; a key removed from XYLEN_API_KEYS(_FILE) takes its sessions with it (no digest verifies them
any more). Without the file a restart ends every session (a new secret: log in again). The token
names no key and reveals nothing about one; a forged, tampered or expired token is simply not a session, and
knowing the digests (XYLEN_API_KEYS_FILE) is not enough to make one.

The CSRF token is a second HMAC over the session token (a different domain), so it is known to the page that
asked ``GET /ui/api/session`` and to nobody else; a state-changing POST that rides on the cookie must carry it in
``X-CSRF-Token``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time
from collections.abc import Iterable
from urllib.parse import urlsplit

from xylen.serve.auth import HostCheck, is_loopback

COOKIE = "xylen_ui"
CSRF_HEADER = b"x-csrf-token"
_VERSION = "v1"
_SESSION_DOMAIN = b"xylen-ui-session-v1"
_CSRF_DOMAIN = b"csrf."


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _signing_key(secret: bytes, digest: bytes) -> bytes:
    """A key for the sessions of one API key: the server's secret and the key's digest (never the digest alone)."""
    return hmac.new(secret, _SESSION_DOMAIN + digest, hashlib.sha256).digest()


def _mac(secret: bytes, digest: bytes, body: bytes) -> bytes:
    return hmac.new(_signing_key(secret, digest), body, hashlib.sha256).digest()


def issue(secret: bytes, digest: bytes, max_age_s: float, now: float | None = None) -> str:
    """A new session token for the key whose sha256 digest is ``digest``, valid ``max_age_s`` seconds."""
    expiry = int((time.time() if now is None else now) + max_age_s)
    body = f"{_VERSION}.{expiry}.{_b64(os.urandom(16))}"
    return f"{body}.{_b64(_mac(secret, digest, body.encode('ascii')))}"


def verify(secret: bytes, token: str | None, digests: Iterable[bytes], now: float | None = None,
           max_age_s: float | None = None) -> bytes | None:
    """The digest that signed ``token`` if it is a valid, unexpired session, else None (never raises).

    ``max_age_s``: also refuse a token whose expiry lies further ahead than a login made now would get (a
    setting lowered since). Every digest is compared, without an early exit."""
    if not token or len(token) > 200:
        return None
    parts = token.split(".")
    if len(parts) != 4 or parts[0] != _VERSION or not (parts[1].isascii() and parts[1].isdigit()):
        return None  # isascii: '\u00b2' is a digit to str.isdigit() but not to int()
    try:
        mac = base64.urlsafe_b64decode(parts[3] + "=" * (-len(parts[3]) % 4))
    except (ValueError, TypeError):
        return None
    t = time.time() if now is None else now
    expiry = int(parts[1])
    if expiry <= t or (max_age_s is not None and expiry > t + max_age_s + 1):
        return None
    body = ".".join(parts[:3]).encode("ascii", "replace")
    found = None
    for digest in digests:
        if hmac.compare_digest(_mac(secret, digest, body), mac) and found is None:
            found = digest
    return found


def csrf_token(secret: bytes, digest: bytes, token: str) -> str:
    """The CSRF token of session ``token`` (signed by ``digest``)."""
    return _b64(hmac.new(_signing_key(secret, digest), _CSRF_DOMAIN + token.encode("ascii", "replace"),
                         hashlib.sha256).digest())


def csrf_ok(secret: bytes, digest: bytes, token: str, presented: str | None) -> bool:
    return bool(presented) and hmac.compare_digest(csrf_token(secret, digest, token).encode(), str(presented).encode())


def cookie_value(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The ``xylen_ui`` cookie of raw ASGI headers (the first one), None if there is none."""
    for name, value in headers:
        if name != b"cookie":
            continue
        for part in value.decode("latin-1").split(";"):
            k, sep, v = part.strip().partition("=")
            if sep and k == COOKIE:
                return v.strip().strip('"')
    return None


def set_cookie(token: str, max_age_s: float, secure: bool) -> str:
    """The Set-Cookie header value for a session. Path=/: the dashboard's WebSocket (/ws/predict) gets it too."""
    flags = f"; Max-Age={int(max_age_s)}; Path=/; HttpOnly; SameSite=Strict"
    return f"{COOKIE}={token}{flags}{'; Secure' if secure else ''}"


def clear_cookie(secure: bool) -> str:
    return f"{COOKIE}=; Max-Age=0; Path=/; HttpOnly; SameSite=Strict{'; Secure' if secure else ''}"


def origin_ok(origin: bytes, host: bytes | None, allowed: Iterable[str]) -> bool:
    """Whether a browser page of ``origin`` may act on this server with a session: the page's own origin (its
    host and port are the request's Host), a loopback origin, or a host listed in XYLEN_ALLOWED_HOSTS."""
    try:
        text = origin.decode("ascii").strip()
        parts = urlsplit(text)
    except (UnicodeDecodeError, ValueError):
        return False
    if parts.scheme not in ("http", "https") or not parts.netloc or "@" in parts.netloc:
        return False  # "null" (a sandboxed page, a file), another scheme, credentials
    if host is not None and parts.netloc.lower() == host.decode("latin-1").strip().lower():
        return True
    if is_loopback(parts.hostname or ""):
        return True
    # "*" lets a keyless server answer any Host; it never makes every web page a trusted origin
    return HostCheck(a for a in allowed if a != "*").allows(parts.netloc.encode("ascii"))


def header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for k, v in headers:
        if k == name:
            return v
    return None
