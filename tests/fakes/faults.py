"""Scripted faults for the fake Binance server.

A fault matches requests by path (and optionally symbol) and fires a number of times, or
for every request whose fake-clock time falls inside a window. Faults are checked in the
order they were added; the first match wins.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

FaultKind = Literal["status", "timeout", "reset", "truncate", "duplicate", "out_of_order", "empty"]
KINDS: tuple[str, ...] = ("status", "timeout", "reset", "truncate", "duplicate", "out_of_order", "empty")

LIMIT_MSG = (
    "Too much request weight used; current limit is {limit} request weight per 1 MINUTE. "
    "Please use WebSocket Streams for live updates to avoid polling the API."
)
BAN_MSG = (
    "Way too much request weight used; IP banned until {until}. "
    "Please use WebSocket Streams for live updates to avoid bans."
)
_INTERNAL = "Internal error; unable to process your request. Please try again."
_UNKNOWN = "An unknown error occurred while processing the request."

# Bodies Binance sends with these statuses ({until}: end of the ban, epoch ms).
STATUS_BODIES: dict[int, tuple[int, str]] = {
    429: (-1003, LIMIT_MSG.replace("{limit}", "6000")),
    418: (-1003, BAN_MSG),
    500: (-1000, _UNKNOWN),
    502: (-1001, _INTERNAL),
    503: (-1001, _INTERNAL),
    504: (
        -1007,
        "Timeout waiting for response from backend server. Send status unknown; execution status unknown.",
    ),
}

MAX_HOLD_S = 30.0


def _norm_path(path: str) -> str:
    if path == "*" or path.startswith("/"):
        return path
    return "/api/v3/" + path  # "klines" -> "/api/v3/klines"


@dataclass
class Fault:
    """One scripted misbehaviour. Build them with :class:`Faults` methods.

    kind:
        ``status``        answer ``status`` (429/418 with ``Retry-After: retry_after``, 5xx) and a
                          Binance error body ``{"code": .., "msg": ..}``
        ``timeout``       hold the request ``hold_s`` seconds (real time, bounded), then close the
                          connection without an answer
        ``reset``         close the connection at once without an answer
        ``truncate``      answer 200 with only the first half of the JSON body
        ``duplicate``     klines: repeat every ``every``-th row right after itself
        ``out_of_order``  klines: swap neighbouring rows (0<->1, 2<->3, ...)
        ``empty``         klines: answer 200 ``[]`` although candles exist (a lagging replica, a glitch)
    path:   exact path or a prefix on a segment boundary (``/api`` matches every REST call,
            ``/ws`` every stream); ``"klines"`` means ``/api/v3/klines``; ``"*"`` matches all
    symbol: only requests (or streams) for this symbol
    times:  how many times it fires (``math.inf``: unlimited)
    during: ``(start_ms, end_ms)`` on the fake clock; fires only when start <= now < end
    """

    kind: FaultKind
    path: str = "/api/v3/klines"
    symbol: str | None = None
    times: float = 1
    during: tuple[int, int] | None = None
    status: int = 0
    retry_after: int | None = None
    code: int | None = None
    msg: str | None = None
    hold_s: float = 2.0
    every: int = 2
    fired: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; use one of {', '.join(KINDS)}")
        self.path = _norm_path(self.path)
        self.symbol = self.symbol.upper() if self.symbol else None
        if self.kind == "status" and not 400 <= self.status <= 599:
            raise ValueError(f"a status fault needs an HTTP error status, got {self.status!r}")
        if not 0 < self.hold_s <= MAX_HOLD_S:
            raise ValueError(f"hold_s must be in (0, {MAX_HOLD_S}] seconds, got {self.hold_s!r}")
        if self.every < 1:
            raise ValueError(f"every must be >= 1, got {self.every!r}")

    def matches(self, path: str, symbol: str | None, now_ms: int) -> bool:
        if self.fired >= self.times:
            return False
        if self.path != "*" and path != self.path and not path.startswith(self.path.rstrip("/") + "/"):
            return False
        if self.symbol is not None and (symbol or "").upper() != self.symbol:
            return False
        return self.during is None or self.during[0] <= now_ms < self.during[1]

    def error_body(self, now_ms: int) -> dict[str, object]:
        code, msg = STATUS_BODIES.get(self.status, (-1000, _UNKNOWN))
        until = now_ms + 1000 * (self.retry_after or 0)
        return {
            "code": self.code if self.code is not None else code,
            "msg": self.msg or msg.format(until=until),
        }


@dataclass
class Faults:
    """The fault plan of one fake. Every method returns the :class:`Fault` it added, whose
    ``fired`` attribute counts how often it has struck.

    Example:
        fake.faults.rate_limit(retry_after=3)                  # next klines call -> 429
        fake.faults.server_error(503, times=2, symbol="ETHUSDT")
        fake.faults.timeout(hold_s=1.0, during=(t0, t1))
    """

    _items: list[Fault] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(
        self,
        kind: FaultKind,
        *,
        path: str = "/api/v3/klines",
        symbol: str | None = None,
        times: float | None = None,
        during: tuple[int, int] | None = None,
        **options: object,
    ) -> Fault:
        """Add a fault. ``times=None`` means once, or unlimited inside ``during``."""
        if times is None:
            times = math.inf if during is not None else 1
        fault = Fault(kind, path=path, symbol=symbol, times=times, during=during, **options)  # type: ignore[arg-type]
        with self._lock:
            self._items.append(fault)
        return fault

    def rate_limit(self, retry_after: int = 2, **match: object) -> Fault:
        """429 + ``Retry-After``; a request inside that window then earns a 418 ban."""
        return self.add("status", status=429, retry_after=retry_after, **match)  # type: ignore[arg-type]

    def ban(self, retry_after: int = 120, **match: object) -> Fault:
        """418 (IP ban) + ``Retry-After``; requests before it expires keep getting 418."""
        return self.add("status", status=418, retry_after=retry_after, **match)  # type: ignore[arg-type]

    def server_error(self, status: int = 503, **match: object) -> Fault:
        return self.add("status", status=status, **match)  # type: ignore[arg-type]

    def timeout(self, hold_s: float = 2.0, **match: object) -> Fault:
        return self.add("timeout", hold_s=hold_s, **match)  # type: ignore[arg-type]

    def reset(self, **match: object) -> Fault:
        return self.add("reset", **match)  # type: ignore[arg-type]

    def truncate(self, **match: object) -> Fault:
        return self.add("truncate", **match)  # type: ignore[arg-type]

    def duplicate(self, every: int = 2, **match: object) -> Fault:
        return self.add("duplicate", every=every, **match)  # type: ignore[arg-type]

    def out_of_order(self, **match: object) -> Fault:
        return self.add("out_of_order", **match)  # type: ignore[arg-type]

    def empty(self, **match: object) -> Fault:
        """A transient empty page: 200 ``[]`` for a klines request that has candles."""
        return self.add("empty", **match)  # type: ignore[arg-type]

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def take(self, path: str, symbol: str | None, now_ms: int, kinds: tuple[str, ...] = KINDS) -> Fault | None:
        """The first matching fault of one of ``kinds``, counted as fired (server side)."""
        with self._lock:
            for fault in self._items:
                if fault.kind in kinds and fault.matches(path, symbol, now_ms):
                    fault.fired += 1
                    return fault
        return None

    def __iter__(self) -> Iterator[Fault]:
        with self._lock:
            return iter(list(self._items))

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
