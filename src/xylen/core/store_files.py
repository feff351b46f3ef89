"""The candle store's files: their names, their encoding, and the one rule that merges a month's copies.

A month partition ``klines/exchange=E/symbol=S/interval=I/year=YYYY/month=MM/`` holds ``data.parquet`` and tails
``tail-<first open_time>-<last open_time>-<hash>.parquet`` (same columns; the hash is of the tail's bytes, so
the same candles always get the same name). :func:`view` is the only place
that decides which copy of a candle counts; readers and compaction both use it, so a compaction never
changes what a reader sees. See :mod:`xylen.core.store` for the design.
"""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import orjson
import polars as pl

from xylen.core import intervals
from xylen.core.candles import COLUMNS, SCHEMA, empty_frame
from xylen.core.errors import ConfigError
from xylen.core.markets import DEFAULT_EXCHANGE, EXCHANGES
from xylen.core.schema import normalize_symbol

FILE_NAME = "data.parquet"
KLINES, META, QUARANTINE = "klines", "meta", "quarantine"
_EXCHANGE = re.compile(r"[a-z0-9]{2,20}")  # the store accepts any well-formed name, not only EXCHANGES
TAIL = re.compile(r"^tail-(\d+)-(\d+)-[0-9a-f]{32}\.parquet$")
_YEAR, _MONTH = re.compile(r"^year=(\d{4})$"), re.compile(r"^month=(\d{2})$")


@dataclass
class Month:
    """One month partition as listed: whether it has a data.parquet, and its tails' names (sorted)."""

    year: int
    month: int
    prefix: str
    data: bool = False
    tails: list[str] = field(default_factory=list)
    data_token: str | None = None  # S3: the data.parquet's ETag in the listing (local: None)

    @property
    def data_key(self) -> str:
        return f"{self.prefix}/{FILE_NAME}"

    def object_keys(self) -> list[str]:
        return sorted(([self.data_key] if self.data else []) + [f"{self.prefix}/{n}" for n in self.tails])

    def tail_ranges(self) -> list[tuple[int, int]]:
        """(first, last) open time of each tail, from its name (checked against ``TAIL`` when listed)."""
        return [(int(p[1]), int(p[2])) for p in (n.split("-", 3) for n in self.tails)]

    def bounds(self) -> tuple[int, int]:
        start = month_start(self.year, self.month)
        return start, intervals.next_open(start, intervals.MONTH)


def months_of(prefix: str, keys: list[str]) -> list[Month]:
    """The month partitions of a series from a listing of its keys; files that are not ours are ignored."""
    months: dict[tuple[int, int], Month] = {}
    for key in keys:
        parts = key[len(prefix) + 1 :].split("/")
        if len(parts) != 3:
            continue
        y, m = _YEAR.match(parts[0]), _MONTH.match(parts[1])
        if not (y and m) or not (parts[2] == FILE_NAME or TAIL.match(parts[2])):
            continue  # not ours: never read, never deleted
        ym = (int(y[1]), int(m[1]))
        entry = months.setdefault(ym, Month(*ym, f"{prefix}/{parts[0]}/{parts[1]}"))
        if parts[2] == FILE_NAME:
            entry.data = True
        else:
            entry.tails.append(parts[2])
    for entry in months.values():
        entry.tails.sort()
    return [months[k] for k in sorted(months)]


def folders_of(storage: Any, prefix: str) -> list[str]:
    """Names of the folders directly under ``prefix``: one delimited listing where the storage has ``folders``
    (local disks, S3), else from a listing of every key under it."""
    folders = getattr(storage, "folders", None)
    if folders is not None:
        return list(folders(prefix))
    skip = len(prefix) + 1
    return sorted({k[skip:].split("/", 1)[0] for k in storage.list(prefix) if "/" in k[skip:]})


def check_series(symbol: str, interval: str) -> tuple[str, str]:
    """(normalised symbol, interval), or a ConfigError quoting the value: '../../evil' never becomes a path."""
    sym = normalize_symbol(symbol)
    if interval not in intervals.INTERVALS:
        raise ConfigError(
            f"Interval {str(interval)[:20]!r} is not a Binance interval.",
            hint=f"use one of: {' '.join(intervals.INTERVALS)} (1m is a minute, 1M a month).",
        )
    return sym, interval


def check_exchange(exchange: str) -> str:
    """The exchange's name as the store spells it (stripped, lower case), or a ConfigError quoting the value."""
    name = str(exchange).strip().lower()
    if not _EXCHANGE.fullmatch(name):
        raise ConfigError(
            f"Exchange {str(exchange)[:40]!r} is not an exchange name.",
            hint=f"use lower-case letters and digits (2-20); xylen collects from {', '.join(EXCHANGES)}.",
        )
    return name


def series_of(keys: list[str], depth: int) -> list[tuple[str, str]]:
    """The valid (symbol, interval) pairs named by ``.../symbol=S/interval=I/...`` keys (S at part ``depth``)."""
    found = set()
    for key in keys:
        parts = key.split("/")
        if len(parts) > depth + 3 and parts[depth].startswith("symbol=") and parts[depth + 1].startswith("interval="):
            found.add((parts[depth][7:], parts[depth + 1][9:]))
    out = []
    for s, i in sorted(found):
        try:
            if check_series(s, i) == (s, i):
                out.append((s, i))
        except ConfigError:
            continue  # a folder someone else made: not a series
    return out


# ------------------------------------------------------------------------------------------ encoding
class Unreadable(Exception):
    """A store file that is not the Parquet it should be (torn footer, foreign bytes)."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(reason)
        self.key, self.reason = key, reason


def decode(data: bytes, key: str) -> pl.DataFrame:
    try:
        return pl.read_parquet(io.BytesIO(data)).select(list(COLUMNS)).cast(SCHEMA)  # type: ignore[arg-type]
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise Unreadable(key, reason(exc)) from None


def decode_many(files: list[tuple[str, bytes]]) -> pl.DataFrame:
    """Many small files as one frame, in the given order (one polars call: 255 tails in ~20 ms, not ~150)."""
    if not files:
        return empty_frame()
    try:
        df = pl.read_parquet([d for _, d in files])
        return df.select(list(COLUMNS)).cast(SCHEMA)  # type: ignore[arg-type]
    except (pl.exceptions.PolarsError, OSError):
        return pl.concat([decode(d, k) for k, d in files])  # raises Unreadable naming the bad one


def decode_times(data: bytes, key: str) -> np.ndarray:
    """Only the sorted open times of a file (a month's 44,640 in ~1 ms)."""
    try:
        t = pl.read_parquet(io.BytesIO(data), columns=["open_time"])["open_time"].to_numpy()
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise Unreadable(key, reason(exc)) from None
    return np.sort(t)


def reason(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:200]


def tail_name(first: int, last: int, data: bytes) -> str:
    """A tail's name from its range and the sha256 of its bytes: deterministic, so writing the same candles twice
    names one object (``put_new`` refuses the second copy). Older stores' tails (a uuid in its place) still match
    ``TAIL``."""
    return f"tail-{first}-{last}-{hashlib.sha256(data).hexdigest()[:32]}.parquet"


def encode(df: pl.DataFrame, *, small: bool = False) -> bytes:
    """Parquet bytes: zstd with statistics for month files; plain for a tail of a few rows (a third faster)."""
    buf = io.BytesIO()
    if small:
        df.write_parquet(buf, compression="uncompressed", statistics=False)
    else:
        df.write_parquet(buf, compression="zstd", statistics=True)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------ the merge rule
def view(tails: pl.DataFrame, month: pl.DataFrame | None) -> pl.DataFrame:
    """One row per open_time from a month's tails (concatenated in name order) and its data.parquet: the
    data.parquet copy wins (a tail only ever adds candles that were not stored when it was written), then
    the tail whose name sorts last."""
    frames = ([tails] if tails.height else []) + ([month] if month is not None else [])
    if not frames:
        return empty_frame()
    if len(frames) == 1 and month is not None:
        return month
    return pl.concat(frames).unique(subset="open_time", keep="last").sort("open_time")


def newer_wins(old: pl.DataFrame, new: pl.DataFrame) -> pl.DataFrame:
    return pl.concat([old, new]).unique(subset="open_time", keep="last").sort("open_time")


def any_in(t: np.ndarray, sorted_times: np.ndarray) -> bool:
    """Whether any of ``t`` is in ``sorted_times`` (binary search: O(log n) per candle, no hashing)."""
    if not len(sorted_times):
        return False
    i = np.minimum(np.searchsorted(sorted_times, t), len(sorted_times) - 1)
    return bool((sorted_times[i] == t).any())


# ------------------------------------------------------------------------------------------ calendar, gaps
def month_start(year: int, month: int) -> int:
    return int(datetime(year, month, 1, tzinfo=timezone.utc).timestamp() * 1000)


def year_month(t: int) -> tuple[int, int]:
    d = datetime.fromtimestamp(t / 1000, tz=timezone.utc)
    return d.year, d.month


def fix_for(key: str) -> str:
    """The command that fetches again the candles of a store file
    (``klines/exchange=E/symbol=S/interval=I/year=Y/month=M/<name>[.<time>]``)."""
    parts = key.split("/")
    part = dict(p.split("=", 1) for p in parts[:-1] if "=" in p)
    tail = re.match(r"^tail-(\d+)-(\d+)-", parts[-1])
    ym = (part.get("year", ""), part.get("month", ""))
    if tail:
        span = f" --since {tail[1]} --until {int(tail[2]) + 1}"
    elif _YEAR.match(f"year={ym[0]}") and _MONTH.match(f"month={ym[1]}") and 1 <= int(ym[1]) <= 12:
        start = month_start(int(ym[0]), int(ym[1]))
        since, until = (
            datetime.fromtimestamp(t / 1000, tz=timezone.utc).strftime("%Y-%m-%d")
            for t in (start, intervals.next_open(start, intervals.MONTH))
        )
        span = f" --since {since} --until {until}"
    else:  # a file put beside the months by hand: its range is unknown, and a backfill fetches every hole
        span = ""
    ex = part.get("exchange", DEFAULT_EXCHANGE)
    venue = "" if ex == DEFAULT_EXCHANGE else f"--exchange {ex} "
    return (
        f"fetch its candles again with `xylen collect {venue}--symbols {part.get('symbol', '?')} --intervals "
        f"{part.get('interval', '?')}{span} --once`, then delete the quarantined file"
    )


def parse_gaps(data: bytes) -> list[tuple[int, int]]:
    try:
        return [(int(a), int(b)) for a, b in orjson.loads(data)]
    except (orjson.JSONDecodeError, ValueError, TypeError):
        return []  # unreadable bookkeeping: the gaps are simply fetched (and confirmed) once more


def merge_ranges(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def covered(a: int, b: int, ranges: list[tuple[int, int]]) -> bool:
    return any(x <= a and b <= y for x, y in ranges)
