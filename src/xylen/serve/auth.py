"""Who may call the server: API keys, and the Host names a server without keys answers.

Keys: ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``, from XYLEN_API_KEYS (comma-separated, plain)
and/or XYLEN_API_KEYS_FILE (sha256 hex digests, one a line, ``#`` comments allowed). Only digests are kept in
memory; a presented key is hashed and compared with ``hmac.compare_digest`` against every digest, so timing says
nothing about how much of a key matched. Keys are never logged.

Hosts: without keys, the only guard of a loopback server is that it is on loopback, and DNS rebinding defeats
that (a page on evil.example re-points its name at 127.0.0.1 and reads the answers as same-origin). The browser
still sends ``Host: evil.example``, so a server without keys answers only loopback Host names and those listed
in XYLEN_ALLOWED_HOSTS.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import re
import stat
from collections.abc import Iterable
from pathlib import Path

from xylen.core.errors import ConfigError
from xylen.core.settings import Settings, host_entry

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX = re.compile(r"^[0-9a-fA-F]+$")
# ASGI scope key the gate sets to False when a probe came without a valid key (or from a Host a keyless server
# does not answer): the probe's answer then names no model, version or reason
DETAIL = "xylen.detail"


def _digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


class KeyRing:
    def __init__(self, digests: list[bytes], session_secret: bytes | None = None) -> None:
        self._digests = tuple(digests)
        # signs dashboard sessions (serve/ui_auth.py) with the digests: XYLEN_UI_SESSION_SECRET_FILE's, else random
        # per server start; handed to every worker of --workers N
        self.session_secret = session_secret if session_secret is not None else os.urandom(32)

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def __len__(self) -> int:
        return len(self._digests)

    def check(self, presented: bytes | None) -> bool:
        if not presented:
            return False
        d = _digest(presented)
        ok = False
        for want in self._digests:  # no early exit: every digest is compared
            ok |= hmac.compare_digest(d, want)
        return ok

    @property
    def digests(self) -> tuple[bytes, ...]:
        """The sha256 digests: all a worker process needs (``xylen serve --workers``), never the keys."""
        return self._digests

    @staticmethod
    def from_settings(settings: Settings) -> KeyRing:
        digests = [_digest(k.encode()) for k in settings.api_key_list()]
        if settings.api_keys_file is not None:
            digests += read_key_file(settings.api_keys_file)
        secret_file = settings.ui_session_secret_file
        return KeyRing(digests, None if secret_file is None else read_session_secret(secret_file))


def read_key_file(path: Path) -> list[bytes]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"Cannot read the API key file {str(path)!r} ({exc.__class__.__name__}).",
            hint="XYLEN_API_KEYS_FILE must be a readable text file of sha256 hex digests.",
        ) from None
    out = []
    for i, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip().lower()
        if not line:
            continue
        if not _HEX64.match(line):
            raise ConfigError(
                f"{str(path)!r} line {i} is not a sha256 hex digest (64 hex characters).",
                hint='store digests, not keys: `printf %s "$KEY" | sha256sum`.',
            )
        out.append(bytes.fromhex(line))
    return out


SECRET_MIN_HEX = 64  # 32 bytes: the size of the random secret drawn without the file, and of HMAC-SHA256's output
_SECRET_MAX_BYTES = 4096
_SECRET_FIX = "openssl rand -hex 32 > FILE && chmod 600 FILE"


def read_session_secret(path: Path) -> bytes:
    """The dashboard's session secret from XYLEN_UI_SESSION_SECRET_FILE: one line of at least 64 hex characters
    (``#`` comment lines and blank lines ignored). Raises ConfigError, whose message quotes the path and never
    the file's content, for a path that is missing, unreadable or not a regular file (a FIFO is refused, never
    waited on), readable or writable by other users (mode o+rwx) or writable by its group (group read is allowed:
    Kubernetes mounts a Secret 0440 with the pod's fsGroup), not hex, too short, or of more than one secret line."""
    where = repr(str(path))
    unset = "or unset XYLEN_UI_SESSION_SECRET_FILE (a random secret per start: logins hold on one replica only)"
    try:
        # O_NONBLOCK: opening a FIFO (or a device) must not wait for a writer; whatever is not a regular file is
        # refused before a byte is read
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        try:
            mode = os.fstat(fd).st_mode
        except OSError:
            os.close(fd)
            raise
        if not stat.S_ISREG(mode):
            os.close(fd)
            kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a device or socket"
            raise ConfigError(
                f"The dashboard session secret file {where} is {kind}, not a regular file.",
                hint=f"point XYLEN_UI_SESSION_SECRET_FILE at a file made by `{_SECRET_FIX}`, {unset}.",
            )
        with os.fdopen(fd, "rb") as f:
            data = f.read(_SECRET_MAX_BYTES + 1)
    except OSError as exc:
        raise ConfigError(
            f"Cannot read the dashboard session secret file {where} ({exc.__class__.__name__}: {exc.strerror}).",
            hint=f"create it: `{_SECRET_FIX}`, {unset}.",
        ) from None
    if os.name == "posix" and mode & 0o027:
        raise ConfigError(
            f"The dashboard session secret file {where} is {'writable' if mode & 0o022 else 'readable'} by other "
            f"users (mode {stat.S_IMODE(mode):04o}): anyone who reads it can make a dashboard session.",
            hint=f"`chmod 600 {path}` (0640 or 0440 if a group must read it).",
        )
    if len(data) > _SECRET_MAX_BYTES:
        raise ConfigError(
            f"The dashboard session secret file {where} is over {_SECRET_MAX_BYTES} bytes: not a secret file.",
            hint=f"`{_SECRET_FIX}`",
        )
    text = data.decode("ascii", "replace")  # U+FFFD is not hex: a non-ASCII byte is refused below
    lines = [ln for ln in (raw.strip() for raw in text.splitlines()) if ln and not ln.startswith("#")]
    if not lines:
        what = "is empty"
    elif len(lines) > 1:
        what = f"holds {len(lines)} lines besides comments; it must hold the secret alone"
    elif len(lines[0]) % 2 or not _HEX.match(lines[0]):
        what = "is not one line of hex characters"
    elif len(lines[0]) < SECRET_MIN_HEX:
        what = f"holds {len(lines[0])} hex characters; at least {SECRET_MIN_HEX} (32 random bytes) are needed"
    else:
        return bytes.fromhex(lines[0])
    raise ConfigError(f"The dashboard session secret file {where} {what}.", hint=f"`{_SECRET_FIX}`")


def presented_key(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """The key in raw ASGI headers (names are lowercase bytes)."""
    for name, value in headers:
        if name == b"x-api-key":
            return value.strip()
        if name == b"authorization" and value[:7].lower() == b"bearer ":
            return value[7:].strip()
    return None


def is_loopback(host: str) -> bool:
    """True for "localhost" and loopback IP literals (127.0.0.0/8, ::1, bracketed or not).

    A name is never resolved: "127.evil.example" or "localhost.evil.example" is a name its owner points
    anywhere, so every name but "localhost" counts as non-loopback.
    """
    h = host.strip().lower()
    if h == "localhost":
        return True
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    try:
        ip = ipaddress.ip_address(h)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


class HostCheck:
    """Which ``Host`` headers a server without keys answers: loopback names plus XYLEN_ALLOWED_HOSTS.

    A Host value is judged once and remembered (a dict lookup per request afterwards); the memory is capped so
    that a client spraying random names cannot grow it.
    """

    CACHE = 256

    def __init__(self, allowed: Iterable[str] = ()) -> None:
        self.allowed = frozenset(allowed)
        self.any = "*" in self.allowed
        self._verdicts: dict[bytes, bool] = {}

    def allows(self, value: bytes) -> bool:
        ok = self._verdicts.get(value)
        if ok is None:
            ok = self.any or self._judge(value)
            if len(self._verdicts) < self.CACHE:
                self._verdicts[value] = ok
        return ok

    def _judge(self, value: bytes) -> bool:
        try:
            text = value.decode("ascii").strip().lower()
        except UnicodeDecodeError:
            return False
        if text.startswith("["):  # [v6]:port
            name, bracket, port = text[1:].partition("]")
            name = f"[{name}]"
            if not bracket or (port and not port.startswith(":")):
                return False
            port = port[1:]
        else:
            name, _, port = text.partition(":")
        if port and not port.isdigit():
            return False
        if is_loopback(name):
            return True
        try:
            return host_entry(name) in self.allowed  # spelled as the allowed entries are: [fd00:0::1] is [fd00::1]
        except ValueError:
            return False


def check_bind(host: str, keys: KeyRing, allow_unauthenticated: bool) -> None:
    """Refuse to listen beyond loopback without keys unless explicitly allowed."""
    if is_loopback(host) or keys.enabled or allow_unauthenticated:
        return
    raise ConfigError(
        f"Refusing to serve on {host!r} without API keys: anyone who can reach it could use it.",
        hint="set XYLEN_API_KEYS (or XYLEN_API_KEYS_FILE), bind 127.0.0.1, or pass "
        "--allow-unauthenticated if a proxy in front authenticates.",
    )
