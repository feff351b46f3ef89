"""The candle schema as plain constants and the one-candle decoder (no polars): what a server needs without
the readers.

``xylen.core.candles`` re-exports these; the serving process imports this module alone so polars stays unloaded.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from xylen.core.errors import DataError
from xylen.core.intervals import INTERVAL_MS, INTERVALS  # noqa: E402,F401  (re-exported)

PRICE_COLUMNS = ("open", "high", "low", "close")
OHLCV = ("open", "high", "low", "close", "volume")
EXTRA_COLUMNS = ("close_time", "quote_volume", "trades", "taker_buy_base", "taker_buy_quote")
COLUMNS = ("open_time", *OHLCV, *EXTRA_COLUMNS)

# Object candles: every accepted spelling of each field (Binance websocket letters, long names, freqtrade).
FIELD_ALIASES: dict[str, tuple[str, ...]] = {
    "open_time": ("open_time", "t", "timestamp", "time", "date"),
    "open": ("open", "o"),
    "high": ("high", "h"),
    "low": ("low", "l"),
    "close": ("close", "c"),
    "volume": ("volume", "v"),
    "close_time": ("close_time", "T"),
    "quote_volume": ("quote_volume", "q"),
    "trades": ("trades", "n"),
    "taker_buy_base": ("taker_buy_base", "V"),
    "taker_buy_quote": ("taker_buy_quote", "Q"),
}


def record_to_row(rec: Any) -> list[float]:
    """One candle (12-field array or object with any accepted field spelling) -> 11 floats (NaN = unknown)."""
    if isinstance(rec, (list, tuple)):
        if len(rec) < 6:
            raise DataError(
                f"a candle array has {len(rec)} fields; Binance arrays have 12 "
                "[open_time, open, high, low, close, volume, close_time, ...].",
                hint="send at least 6.",
            )
        vals = list(rec[:11]) + [None] * (11 - min(len(rec), 11))
    elif isinstance(rec, dict):
        vals = []
        for name in COLUMNS:
            v = None
            for alias in FIELD_ALIASES[name]:
                if alias in rec:
                    v = rec[alias]
                    break
            if v is None and name in ("open_time", *OHLCV):
                raise DataError(
                    f"a candle object lacks {name!r} (also accepted: {', '.join(FIELD_ALIASES[name][1:])}).",
                    hint=f"add it; got keys {sorted(rec)[:12]}.",
                )
            vals.append(v)
    else:
        raise DataError(
            f"a candle must be an array or an object, got {type(rec).__name__} {str(rec)[:40]!r}.",
            hint="send Binance 12-field arrays or objects with open_time/open/high/low/close/volume.",
        )
    out = []
    for name, v in zip(COLUMNS, vals):
        if v is None:
            out.append(float("nan"))
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float, str)):
            raise DataError(
                f"field {name!r} is {type(v).__name__} {str(v)[:40]!r}, not a number.",
                hint="prices, volumes and times must be numbers or numeric strings.",
            )
        try:
            out.append(float(v))
        except (TypeError, ValueError):
            raise DataError(
                f"field {name!r} value {str(v)[:40]!r} is not a number.",
                hint="prices, volumes and times must be numbers or numeric strings.",
            ) from None
    if isinstance(vals[0], str) and not str(vals[0]).strip().lstrip("-").isdigit():
        out[0] = _parse_time(vals[0])
    return out


def _parse_time(v: str) -> float:
    try:
        return datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp() * 1000
    except ValueError:
        raise DataError(
            f"time {v!r} is neither epoch milliseconds nor ISO 8601.",
            hint="send open_time as an integer in ms like 1704067200000.",
        ) from None


def normalize_symbol(value: str) -> str:
    """A trading pair as the store and the registry spell it: stripped, upper case, letters and digits (2-20)."""
    import re

    sym = str(value).strip().upper()
    if not re.fullmatch(r"[A-Z0-9]{2,20}", sym):
        from xylen.core.errors import ConfigError

        raise ConfigError(
            f"Symbol {str(value)[:40]!r} is not a trading pair.",
            hint="use letters and digits only, like BTCUSDT (no '/', '-' or path characters).",
        )
    return sym


# Epoch times are read by their magnitude. Seconds stay below 1e11 until the year 5138, while milliseconds passed
# it in 1973; microseconds (data.binance.vision spot archives since 2025) passed 1e14 in 1973, nanoseconds 1e17.
# So every candle from 1973 to 5138 has exactly one reading; nanoseconds are refused (a float64 cannot hold them).
# The file readers and the server share this one rule.
SECONDS_BELOW = 10**11
MICROS_FROM = 10**14
NANOS_FROM = 10**17


class TimeUnitError(DataError):
    """An epoch time that is before 1970 or in nanoseconds; ``index`` is its position."""

    def __init__(self, index: int, value: float) -> None:
        self.index = index
        self.value = value
        what = "before 1970" if value < 0 else "in nanoseconds or later than the year 5138"
        super().__init__(
            f"time {value:.0f} is {what}",
            hint="send epoch milliseconds like 1704067200000 (seconds and microseconds are recognised too).",
        )


def to_epoch_ms(values: Any) -> tuple[Any, int, int]:
    """Epoch times in seconds, milliseconds or microseconds, each by its magnitude, as milliseconds (same dtype,
    a new array), and how many were in seconds and in microseconds. Raises TimeUnitError for the first bad one."""
    import numpy as np

    t = np.array(values, copy=True)
    bad = (t < 0) | (t >= NANOS_FROM)
    if bad.any():
        i = int(np.argmax(bad))
        raise TimeUnitError(i, float(t[i]))
    sec, micro = t < SECONDS_BELOW, t >= MICROS_FROM
    n_sec, n_micro = int(sec.sum()), int(micro.sum())
    if n_sec:
        t[sec] *= 1000
    if n_micro:
        t[micro] //= 1000
    return t, n_sec, n_micro
