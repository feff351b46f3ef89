"""API keys: ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``, compared in constant time.

Keys come from XYLEN_API_KEYS (comma-separated, plain) and/or XYLEN_API_KEYS_FILE (sha256 hex digests, one a
line, ``#`` comments allowed). Only digests are kept in memory; a presented key is hashed and compared with
``hmac.compare_digest`` against every digest, so timing says nothing about how much of a key matched. Keys are
never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from pathlib import Path

from xylen.core.errors import ConfigError
from xylen.core.settings import Settings

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def _digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


class KeyRing:
    def __init__(self, digests: list[bytes]) -> None:
        self._digests = tuple(digests)

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

    @staticmethod
    def from_settings(settings: Settings) -> KeyRing:
        digests = [_digest(k.encode()) for k in settings.api_key_list()]
        if settings.api_keys_file is not None:
            digests += read_key_file(settings.api_keys_file)
        return KeyRing(digests)


def read_key_file(path: Path) -> list[bytes]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"Cannot read the API key file {str(path)!r} ({exc.__class__.__name__}).",
                          hint="XYLEN_API_KEYS_FILE must be a readable text file of sha256 hex digests.") from None
    out = []
    for i, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip().lower()
        if not line:
            continue
        if not _HEX64.match(line):
            raise ConfigError(f"{str(path)!r} line {i} is not a sha256 hex digest (64 hex characters).",
                              hint="store digests, not keys: `printf %s \"$KEY\" | sha256sum`.")
        out.append(bytes.fromhex(line))
    return out


def presented_key(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """The key in raw ASGI headers (names are lowercase bytes)."""
    for name, value in headers:
        if name == b"x-api-key":
            return value.strip()
        if name == b"authorization" and value[:7].lower() == b"bearer ":
            return value[7:].strip()
    return None


def check_bind(host: str, keys: KeyRing, allow_unauthenticated: bool) -> None:
    """Refuse to listen beyond loopback without keys unless explicitly allowed."""
    if host in LOOPBACK or host.startswith("127.") or keys.enabled or allow_unauthenticated:
        return
    raise ConfigError(f"Refusing to serve on {host!r} without API keys: anyone who can reach it could use it.",
                      hint="set XYLEN_API_KEYS (or XYLEN_API_KEYS_FILE), bind 127.0.0.1, or pass "
                           "--allow-unauthenticated if a proxy in front authenticates.")
