"""Real candles in Binance's REST shape, for the fake exchange and for tests.

A *row* here is exactly what ``GET /api/v3/klines`` returns for one candle::

    [open_time_ms, "open", "high", "low", "close", "volume", close_time_ms,
     "quote_volume", trades, "taker_buy_base", "taker_buy_quote", "0"]

times and the trade count are ints, every decimal is a string with 8 decimals. Keeping
rows in this shape lets a test compare what python-binance returns with ``==``.
"""

from __future__ import annotations

import calendar
import csv
import gzip
import io
import json
import threading
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

Row = list[Any]

# Binance spot intervals (case-sensitive). "1M" is a calendar month and has no fixed length.
INTERVAL_MS: dict[str, int] = {
    "1s": 1_000,
    "1m": 60_000,
    "3m": 180_000,
    "5m": 300_000,
    "15m": 900_000,
    "30m": 1_800_000,
    "1h": 3_600_000,
    "2h": 7_200_000,
    "4h": 14_400_000,
    "6h": 21_600_000,
    "8h": 28_800_000,
    "12h": 43_200_000,
    "1d": 86_400_000,
    "3d": 259_200_000,
    "1w": 604_800_000,
}
INTERVALS: tuple[str, ...] = (*INTERVAL_MS, "1M")

_DECIMAL_FIELDS = (1, 2, 3, 4, 5, 7, 9, 10)


def candle_close_time(interval: str, open_time: int) -> int:
    """close_time of the candle opening at ``open_time`` (open_time + length - 1, as Binance)."""
    if interval == "1M":
        start = datetime.fromtimestamp(open_time / 1000, tz=timezone.utc)
        year, month = (start.year + 1, 1) if start.month == 12 else (start.year, start.month + 1)
        return calendar.timegm((year, month, 1, 0, 0, 0)) * 1000 - 1
    try:
        return open_time + INTERVAL_MS[interval] - 1
    except KeyError:
        raise ValueError(f"unknown interval {interval!r}; use one of {', '.join(INTERVALS)}") from None


def _ms(value: Any) -> int:
    ts = int(float(value)) if isinstance(value, str) else int(value)
    # data.binance.vision spot files switch to microseconds on 2025-01-01
    return ts // 1000 if ts > 10**13 else ts


def _dec(value: Any) -> str:
    if isinstance(value, str):
        float(value)  # validate, keep the exact original digits
        return value
    return f"{float(value):.8f}"


def normalize_row(raw: Sequence[Any], interval: str) -> Row:
    """One candle in any of the accepted layouts -> a Binance REST row.

    Accepts 12 fields (Binance), 11 (no ``ignore``) or 6 (``open_time, o, h, l, c, v``; the
    unknown fields become 0 and close_time is derived from the interval).
    """
    n = len(raw)
    if n not in (6, 11, 12):
        raise ValueError(f"a candle row needs 6, 11 or 12 fields, got {n}: {list(raw)!r}")
    open_time = _ms(raw[0])
    if n == 6:
        o, h, lo, c, v = (_dec(x) for x in raw[1:6])
        zero = "0.00000000"
        return [open_time, o, h, lo, c, v, candle_close_time(interval, open_time), zero, 0, zero, zero, "0"]
    row: Row = list(raw[:12]) if n == 12 else [*raw[:11], "0"]
    row[0] = open_time
    row[6] = _ms(row[6])
    row[8] = int(float(row[8])) if isinstance(row[8], str) else int(row[8])
    for i in _DECIMAL_FIELDS:
        row[i] = _dec(row[i])
    row[11] = row[11] if isinstance(row[11], str) else str(int(row[11]))
    return row


def normalize_rows(rows: Iterable[Sequence[Any]] | np.ndarray, interval: str) -> list[Row]:
    """Rows (list or numpy array) -> Binance REST rows sorted by open_time; duplicates raise."""
    if isinstance(rows, np.ndarray):
        rows = rows.tolist()
    out = sorted((normalize_row(r, interval) for r in rows), key=lambda r: r[0])
    for prev, cur in zip(out, out[1:], strict=False):
        if prev[0] == cur[0]:
            raise ValueError(f"duplicate open_time {cur[0]} in the series")
    return out


def as_array(rows: Sequence[Row]) -> np.ndarray:
    """Binance REST rows -> float64 array of shape (n, 12), for numeric assertions."""
    return np.array([[float(x) for x in r] for r in rows], dtype=np.float64).reshape(len(rows), 12)


def load_series(path: str | Path, interval: str) -> list[Row]:
    """Read real candles from ``tests/data``: 12-column CSV(.gz) with or without a header,
    a freqtrade feather file, or a recorded ``/api/v3/klines`` JSON body.

    Example:
        rows = load_series(DATA / "BTC_USDT-1h.feather", "1h")
    """
    path = Path(path)
    name = path.name.lower()
    if name.endswith(".feather") or name.endswith(".arrow"):
        return _load_feather(path, interval)
    if name.endswith(".json"):
        return normalize_rows(json.loads(path.read_text()), interval)
    if name.endswith(".csv") or name.endswith(".csv.gz"):
        raw = gzip.decompress(path.read_bytes()) if name.endswith(".gz") else path.read_bytes()
        lines = list(csv.reader(io.StringIO(raw.decode("utf-8"))))
        lines = [ln for ln in lines if ln]
        if lines and not lines[0][0].strip().isdigit():
            lines = lines[1:]  # header row
        return normalize_rows(lines, interval)
    raise ValueError(f"don't know how to read {path}; expected .feather, .json, .csv or .csv.gz")


def _load_feather(path: Path, interval: str) -> list[Row]:
    import polars as pl  # only needed for feather files

    df = pl.read_ipc(path)
    missing = {"date", "open", "high", "low", "close", "volume"} - set(df.columns)
    if missing:
        raise ValueError(f"{path} is not a freqtrade feather file: columns {sorted(missing)} missing")
    open_times = df["date"].dt.epoch("ms").to_list()
    cols = [df[c].to_list() for c in ("open", "high", "low", "close", "volume")]
    return normalize_rows(([t, *vals] for t, *vals in zip(open_times, *cols, strict=True)), interval)


class FakeClock:
    """A settable epoch-ms clock to pass as ``now_ms``; thread-safe, never sleeps.

    Example:
        clock = FakeClock(rows[100][0] + 1)   # inside candle 100
        clock.advance(300_000)
    """

    def __init__(self, now_ms: int) -> None:
        self._now = int(now_ms)
        self._lock = threading.Lock()

    def __call__(self) -> int:
        with self._lock:
            return self._now

    def set(self, now_ms: int) -> None:
        with self._lock:
            self._now = int(now_ms)

    def advance(self, ms: int) -> int:
        with self._lock:
            self._now += int(ms)
            return self._now
