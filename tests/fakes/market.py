"""What the fake exchange knows and answers, without any I/O: the recorded candles, the
maintenance gaps, and the bodies of the Binance spot market-data endpoints.

Semantics of ``GET /api/v3/klines`` (Binance spot docs, "Kline/candlestick data"): weight 2,
``limit`` default 500, 1..1000 (else 400 code -1130); a candle is selected by its open time,
``startTime <= open_time <= endTime``; with ``startTime`` the oldest ``limit`` candles from
there, otherwise the newest ``limit`` up to ``endTime`` (or now). Candles opening after "now" do
not exist yet; the candle containing "now" is served as the still-open last candle (its
close_time >= now) with the recorded row's values.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from tests.fakes.klines import INTERVALS, Row, normalize_rows

WEIGHTS = {"/api/v3/ping": 1, "/api/v3/time": 1, "/api/v3/exchangeInfo": 20, "/api/v3/klines": 2}
QUOTE_ASSETS = ("USDT", "FDUSD", "USDC", "BUSD", "TUSD", "BTC", "ETH", "BNB", "EUR", "TRY")


class ApiError(Exception):
    """A Binance error answer: HTTP status plus ``{"code": .., "msg": ..}``."""

    def __init__(self, status: int, code: int, msg: str) -> None:
        super().__init__(msg)
        self.status, self.code, self.msg = status, code, msg

    def body(self) -> dict[str, Any]:
        return {"code": self.code, "msg": self.msg}


def _int_param(params: dict[str, str], name: str) -> int | None:
    value = params.get(name)
    if value is None or value == "":
        return None
    if not value.lstrip("-").isdigit():
        legal = "'^[0-9]{1,20}$'"
        raise ApiError(400, -1100, f"Illegal characters found in parameter '{name}'; legal range is {legal}.")
    return int(value)


def _split_symbol(symbol: str) -> tuple[str, str]:
    for quote in QUOTE_ASSETS:
        if symbol.endswith(quote) and len(symbol) > len(quote):
            return symbol[: -len(quote)], quote
    return symbol, ""


class Market:
    """Recorded candles per (symbol, interval) and the gaps in which the exchange has none."""

    def __init__(
        self,
        series: dict[tuple[str, str], Sequence[Sequence[Any]] | np.ndarray] | None = None,
        missing: Iterable[tuple[int, int]] = (),
    ) -> None:
        self._series: dict[tuple[str, str], tuple[list[int], list[Row]]] = {}
        for (symbol, interval), rows in (series or {}).items():
            self.set_series(symbol, interval, rows)
        self.missing: list[tuple[int, int]] = [(int(a), int(b)) for a, b in missing]

    def set_series(self, symbol: str, interval: str, rows: Sequence[Sequence[Any]] | np.ndarray) -> None:
        if interval not in INTERVALS:
            raise ValueError(f"unknown interval {interval!r}; use one of {', '.join(INTERVALS)}")
        normalized = normalize_rows(rows, interval)
        self._series[(symbol.upper(), interval)] = ([r[0] for r in normalized], normalized)

    def rows(self, symbol: str, interval: str) -> list[Row]:
        return list(self._series[(symbol.upper(), interval)][1])

    def symbols(self) -> list[str]:
        return sorted({s for s, _ in self._series})

    def is_missing(self, open_time: int) -> bool:
        return any(a <= open_time < b for a, b in self.missing)

    def row(self, symbol: str, interval: str, open_time: int) -> Row:
        """The recorded candle opening at ``open_time``; KeyError if none or in a gap."""
        key = (symbol.upper(), interval)
        if key not in self._series:
            raise KeyError(f"no series {key}; configured: {sorted(self._series)}")
        times, rows = self._series[key]
        i = bisect.bisect_left(times, open_time)
        if i == len(times) or times[i] != open_time:
            raise KeyError(f"{key} has no candle opening at {open_time}")
        if self.is_missing(open_time):
            raise KeyError(f"{key} candle {open_time} lies in a missing range {self.missing}")
        return rows[i]

    def select_klines(
        self, symbol: str, interval: str, start: int | None, end: int | None, limit: int, now: int
    ) -> list[Row]:
        """The rows ``/api/v3/klines`` answers (see the module docstring)."""
        key = (symbol.upper(), interval)
        if key not in self._series:
            return []
        times, rows = self._series[key]
        upper = now if end is None else min(end, now)
        hi = bisect.bisect_right(times, upper)  # rows[:hi] have opened by now and by endTime
        out: list[Row] = []
        if start is not None:
            for i in range(bisect.bisect_left(times, start), hi):
                if len(out) == limit:
                    break
                if not self.is_missing(times[i]):
                    out.append(rows[i])
            return out
        for i in range(hi - 1, -1, -1):
            if len(out) == limit:
                break
            if not self.is_missing(times[i]):
                out.append(rows[i])
        out.reverse()
        return out

    # ------------------------------------------------------------------ endpoint bodies
    def answer(self, path: str, params: dict[str, str], now: int, weight_limit: int | None) -> Any:
        """The JSON body of a successful call, or :class:`ApiError`."""
        if path == "/api/v3/ping":
            return {}
        if path == "/api/v3/time":
            return {"serverTime": now}
        if path == "/api/v3/exchangeInfo":
            return self.exchange_info(params, now, weight_limit)
        if path == "/api/v3/klines":
            return self.klines(params, now)
        raise ApiError(404, -1000, f"Unknown path {path}.")

    def exchange_info(self, params: dict[str, str], now: int, weight_limit: int | None) -> dict[str, Any]:
        symbols = self.symbols()
        wanted: list[str] | None = None
        if params.get("symbol"):
            wanted = [params["symbol"].upper()]
        elif params.get("symbols"):
            try:
                wanted = [str(s).upper() for s in json.loads(params["symbols"])]
            except ValueError:
                raise ApiError(400, -1100, "Illegal characters found in parameter 'symbols'.") from None
        if wanted is not None:
            if any(s not in symbols for s in wanted):
                raise ApiError(400, -1121, "Invalid symbol.")
            symbols = wanted
        infos = []
        for s in symbols:
            base, quote = _split_symbol(s)
            infos.append(
                {
                    "symbol": s,
                    "status": "TRADING",
                    "baseAsset": base,
                    "baseAssetPrecision": 8,
                    "quoteAsset": quote,
                    "quotePrecision": 8,
                    "quoteAssetPrecision": 8,
                    "orderTypes": ["LIMIT", "MARKET"],
                    "isSpotTradingAllowed": True,
                    "filters": [],
                    "permissions": [],
                    "permissionSets": [["SPOT"]],
                }
            )
        weight = {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1}
        limits = [
            {**weight, "limit": weight_limit or 6000},
            {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100},
            {"rateLimitType": "RAW_REQUESTS", "interval": "MINUTE", "intervalNum": 5, "limit": 61000},
        ]
        return {
            "timezone": "UTC",
            "serverTime": now,
            "rateLimits": limits,
            "exchangeFilters": [],
            "symbols": infos,
        }

    def klines(self, params: dict[str, str], now: int) -> list[Row]:
        for name in ("symbol", "interval"):
            if not params.get(name):
                msg = f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed."
                raise ApiError(400, -1102, msg)
        symbol, interval = params["symbol"].upper(), params["interval"]
        if symbol not in self.symbols():
            raise ApiError(400, -1121, "Invalid symbol.")
        if interval not in INTERVALS:
            raise ApiError(400, -1120, "Invalid interval.")
        start, end, limit = (_int_param(params, n) for n in ("startTime", "endTime", "limit"))
        if limit is None:
            limit = 500
        if not 1 <= limit <= 1000:
            raise ApiError(400, -1130, "Invalid data sent for a parameter.")
        return self.select_klines(symbol, interval, start, end, limit, now)

    def kline_event(
        self,
        symbol: str,
        interval: str,
        open_time: int,
        *,
        closed: bool,
        event_time: int,
        fraction: float = 1.0,
    ) -> dict[str, Any]:
        """The raw ``<symbol>@kline_<interval>`` event for a recorded candle.

        ``fraction`` < 1 scales volumes and trade count (an in-progress update); prices are the
        recorded ones. Trade ids ``f``/``L`` are synthetic (0 .. trades-1, or -1 when none).
        """
        row = self.row(symbol, interval, open_time)
        trades = int(row[8] * fraction)

        def part(value: str) -> str:
            return value if fraction >= 1 else f"{float(value) * fraction:.8f}"

        return {
            "e": "kline",
            "E": event_time,
            "s": symbol.upper(),
            "k": {
                "t": row[0], "T": row[6], "s": symbol.upper(), "i": interval,
                "f": 0 if trades else -1, "L": trades - 1 if trades else -1,
                "o": row[1], "c": row[4], "h": row[2], "l": row[3], "v": part(row[5]),
                "n": trades, "x": closed, "q": part(row[7]), "V": part(row[9]), "Q": part(row[10]), "B": "0",
            },
        }  # fmt: skip
