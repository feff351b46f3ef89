"""The candle schema, readers for every supported file format, and validation.

A candle frame is a polars DataFrame with the columns in ``COLUMNS`` (the last five may be null when the
source does not carry them), unique and strictly increasing on ``open_time`` (UTC epoch milliseconds).
"""

from __future__ import annotations

import hashlib
import io
import re
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import polars as pl

from xylen.core import intervals
from xylen.core.errors import DataError
from xylen.core.schema import (  # noqa: F401  re-exported; they live polars-free for the server
    COLUMNS,
    EXTRA_COLUMNS,
    FIELD_ALIASES,
    INTERVAL_MS,
    INTERVALS,
    OHLCV,
    PRICE_COLUMNS,
    TimeUnitError,
    record_to_row,
    to_epoch_ms,
)

SCHEMA: dict[str, Any] = {
    "open_time": pl.Int64,
    "open": pl.Float64,
    "high": pl.Float64,
    "low": pl.Float64,
    "close": pl.Float64,
    "volume": pl.Float64,
    "close_time": pl.Int64,
    "quote_volume": pl.Float64,
    "trades": pl.Int64,
    "taker_buy_base": pl.Float64,
    "taker_buy_quote": pl.Float64,
}


def interval_ms(interval: str) -> int:
    """The fixed length of a candle. ``1M`` has none: grids go through :mod:`xylen.core.intervals`."""
    try:
        return INTERVAL_MS[interval]
    except KeyError:
        if interval in INTERVALS:
            raise DataError(
                f"Interval {interval!r} (a calendar month) has no fixed length.",
                hint="this step does not support 1M candles yet; use 1w or shorter.",
            ) from None
        raise DataError(f"Unknown interval {interval!r}.", hint=f"use one of: {' '.join(INTERVALS)}.") from None


def fmt_ts(ms: int | float) -> str:
    return datetime.fromtimestamp(int(ms) / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


Units = tuple[int, int]  # open times a reader converted from seconds, and from microseconds


def empty_frame() -> pl.DataFrame:
    return pl.DataFrame(schema=SCHEMA)


@dataclass
class ReadResult:
    """Candles read from one source plus what the reader had to do to them."""

    frame: pl.DataFrame
    source: str
    symbol: str | None = None
    interval: str | None = None
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------------
# Name inference: BTCUSDT-5m-2024-01.zip, BTC_USDT-5m.feather, btcusdt_5m.parquet ...
# data.binance.vision spells the calendar month "1mo" in file names (BTCUSDT-1mo-2024-01.zip); xylen's model names too
_NAME_RE = re.compile(r"(?P<sym>[A-Za-z0-9]+(?:_[A-Za-z0-9]+)?)[-_](?P<iv>\d+(?:mo|[smhdwM]))(?:[-_.]|$)")


def infer_series(path: Path) -> tuple[str | None, str | None]:
    name = path.name
    for suffix in (".gz", ".zip", ".csv", ".feather", ".parquet", ".jsonl", ".json", ".arrow", ".ipc"):
        name = name.removesuffix(suffix)
    m = _NAME_RE.search(name.split("__")[-1])
    if not m:
        return None, None
    iv = "1M" if m.group("iv") == "1mo" else m.group("iv")
    return m.group("sym").replace("_", "").upper(), (iv if iv in INTERVALS else None)


# --------------------------------------------------------------------------------------------------------
def _conform(df: pl.DataFrame) -> pl.DataFrame:
    cols = []
    for name, dtype in SCHEMA.items():
        cols.append(
            pl.col(name).cast(dtype, strict=True) if name in df.columns else pl.lit(None, dtype=dtype).alias(name)
        )
    return df.select(cols)


def read_candles(path: str | Path, *, interval: str | None = None, symbol: str | None = None) -> ReadResult:
    """Read one candle file of any supported format. Raises DataError naming the file and the fix."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"Candle file {str(p)!r} does not exist.", hint="check the path passed to --data.")
    if p.is_dir():
        raise DataError(
            f"{str(p)!r} is a folder, not a candle file.",
            hint="pass the files themselves, e.g. --data 'dir/*.zip' expanded by your shell.",
        )
    sym, iv = infer_series(p)
    interval = interval or iv
    name = p.name.lower()
    notes: list[str] = []
    try:
        if name.endswith(".zip"):
            notes += verify_checksum(p)
            df, units = _read_zip(p)
        elif name.endswith((".csv", ".csv.gz")):
            df, units = _read_binance_csv(p.read_bytes() if name.endswith(".csv") else _gunzip(p), p)
        elif name.endswith((".feather", ".arrow", ".ipc")):
            df, units = _from_table(pl.read_ipc(p), p, interval)
        elif name.endswith(".parquet"):
            df, units = _from_table(pl.read_parquet(p), p, interval)
        elif name.endswith((".jsonl", ".ndjson", ".json")):
            df, units = _read_jsonl(p)
        else:
            raise DataError(
                f"Unknown candle file type {p.name!r}.",
                hint="use .csv/.csv.gz/.zip (Binance 12 columns), .feather, .parquet or .jsonl.",
            )
    except DataError:
        raise
    except (pl.exceptions.PolarsError, OSError, zipfile.BadZipFile, EOFError, ValueError) as exc:
        raise DataError(
            f"Cannot read {str(p)!r}: {str(exc).splitlines()[0][:300]}",
            hint="the file looks corrupt or truncated; download or export it again.",
        ) from None
    for n, unit in zip(units, ("seconds", "microseconds")):
        if n:
            notes.append(f"{n} timestamps were in {unit} and were converted to milliseconds")
    if df.height == 0:
        raise DataError(f"{str(p)!r} holds no candles.", hint="check that it is the right file and not empty.")
    if interval and df["close_time"].null_count() == df.height:
        closes = intervals.next_opens(df["open_time"].to_numpy(), intervals.check(interval)) - 1
        df = df.with_columns(pl.Series("close_time", closes))
    return ReadResult(frame=df, source=str(p), symbol=symbol or sym, interval=interval, notes=notes)


def _gunzip(p: Path) -> bytes:
    import gzip

    with gzip.open(p, "rb") as fh:
        return fh.read()


def verify_checksum(p: Path) -> list[str]:
    """Verify a data.binance.vision ``.CHECKSUM`` file beside an archive, when one is there."""
    ck = p.with_name(p.name + ".CHECKSUM")
    if not ck.exists():
        return []
    expected = ck.read_text(errors="replace").split()[0].strip().lower() if ck.stat().st_size else ""
    actual = hashlib.sha256(p.read_bytes()).hexdigest()
    if expected != actual:
        raise DataError(
            f"{str(p)!r} does not match its checksum file: sha256 {actual[:12]}... != {expected[:12]}...",
            hint="the download is corrupt or truncated; download the archive again.",
        )
    return [f"sha256 verified against {ck.name}"]


def _read_zip(p: Path) -> tuple[pl.DataFrame, Units]:
    with zipfile.ZipFile(p) as zf:
        members = [m for m in zf.namelist() if m.lower().endswith(".csv")]
        if len(members) != 1:
            raise DataError(
                f"{str(p)!r} should hold exactly one .csv file, found {len(members)}: {members[:5]}.",
                hint="use the monthly or daily kline archives from data.binance.vision.",
            )
        return _read_binance_csv(zf.read(members[0]), p)


def _read_binance_csv(data: bytes, p: Path) -> tuple[pl.DataFrame, Units]:
    first = data.split(b"\n", 1)[0].strip()
    if not first:
        raise DataError(f"{str(p)!r} is empty.", hint="download or export it again.")
    has_header = not first.split(b",")[0].strip().lstrip(b"-").isdigit()
    raw = pl.read_csv(io.BytesIO(data), has_header=has_header, infer_schema=False, truncate_ragged_lines=False)
    if raw.width < 6:
        raise DataError(
            f"{str(p)!r} has {raw.width} columns; a Binance kline CSV has 12 "
            "(open_time, open, high, low, close, volume, close_time, ...).",
            hint="export the klines in Binance's layout or convert the file to parquet with our column names.",
        )
    names = list(COLUMNS[: min(raw.width, 11)])
    raw = raw.select(raw.columns[: len(names)])
    raw.columns = names
    try:
        df = raw.select(
            [
                pl.col(c).str.strip_chars().cast(SCHEMA[c], strict=True)
                if c not in ("open_time", "close_time", "trades")
                else pl.col(c).str.strip_chars().cast(pl.Float64, strict=True).cast(pl.Int64)
                for c in names
            ]
        )
    except pl.exceptions.PolarsError:
        bad = _first_bad_number(raw)
        raise DataError(
            f"{str(p)!r} row {bad[0] + 1 + int(has_header)}: column {bad[1]!r} value {bad[2]!r} is not a number.",
            hint="fix or remove that row; every column of a Binance kline CSV is numeric.",
        ) from None
    return _normalize_times(_conform(df), p)


def _first_bad_number(raw: pl.DataFrame) -> tuple[int, str, str]:
    for c in raw.columns:
        s = raw[c]
        bad = s.str.strip_chars().cast(pl.Float64, strict=False).is_null() & s.is_not_null()
        if bad.any():
            i = int(bad.arg_max())  # type: ignore[arg-type]
            return i, c, str(s[i])
        if s.null_count():
            i = int(s.is_null().arg_max())  # type: ignore[arg-type]
            return i, c, ""
    return 0, raw.columns[0], "?"


def _normalize_times(df: pl.DataFrame, p: Path) -> tuple[pl.DataFrame, Units]:
    """Open and close times in ms, each converted from seconds or microseconds by its magnitude (the one rule of
    ``schema.to_epoch_ms``, which the server uses too). Returns the frame and how many open times were converted."""
    try:
        ot, n_sec, n_micro = to_epoch_ms(df["open_time"].to_numpy())
        out = df.with_columns(pl.Series("open_time", ot))
        known = df["close_time"].is_not_null()
        if known.any():
            ct = df["close_time"].fill_null(0).to_numpy().copy()  # int64: the unknown ones are put back below
            mask = known.to_numpy()
            ct[mask] = to_epoch_ms(ct[mask])[0]
            out = out.with_columns(pl.Series("close_time", ct).set(~known, None))  # type: ignore[arg-type]
    except TimeUnitError as exc:
        raise DataError(f"{str(p)!r} row {exc.index + 1}: {exc.message}.", hint=exc.hint) from None
    return out, (n_sec, n_micro)


def _from_table(df: pl.DataFrame, p: Path, interval: str | None) -> tuple[pl.DataFrame, Units]:
    cols = set(df.columns)
    if "date" in cols and "open_time" not in cols:  # freqtrade
        dt = df.schema["date"]
        if isinstance(dt, pl.Datetime):
            df = df.with_columns(pl.col("date").dt.epoch("ms").alias("open_time")).drop("date")
        else:
            df = df.rename({"date": "open_time"})
    missing = [c for c in ("open_time", *OHLCV) if c not in df.columns]
    if missing:
        raise DataError(
            f"{str(p)!r} lacks the column(s) {missing}; it has {df.columns[:12]}.",
            hint="candle tables need open_time (or freqtrade's date), open, high, low, close, volume.",
        )
    try:
        return _normalize_times(_conform(df), p)
    except pl.exceptions.PolarsError as exc:
        raise DataError(
            f"{str(p)!r} has a column of the wrong type: {str(exc).splitlines()[0][:200]}",
            hint="prices and volume must be numbers, open_time an integer in ms or a datetime.",
        ) from None


def _read_jsonl(p: Path) -> tuple[pl.DataFrame, Units]:
    rows = []
    text = p.read_bytes()
    if p.name.lower().endswith(".json") and text.lstrip().startswith(b"["):
        try:
            records: Iterable[Any] = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise DataError(f"{str(p)!r} is not valid JSON: {exc}", hint="the file is truncated or corrupt.") from None
        lines = list(enumerate(records, 1))
    else:
        lines = []
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                lines.append((i, orjson.loads(line)))
            except orjson.JSONDecodeError:
                raise DataError(
                    f"{str(p)!r} line {i} is not valid JSON: {line[:80]!r}",
                    hint="remove or fix that line (a truncated last line is common after a crash).",
                ) from None
    for i, rec in lines:
        if isinstance(rec, dict) and "k" in rec and isinstance(rec["k"], dict):  # websocket kline event
            if not rec["k"].get("x", False):
                continue  # still-open candle: only closed candles are stored
            rec = rec["k"]
        try:
            rows.append(record_to_row(rec))
        except DataError as exc:
            raise DataError(f"{str(p)!r} line {i}: {exc.message}", hint=exc.hint) from None
    if not rows:
        return empty_frame(), (0, 0)
    arr = np.array(rows, dtype=np.float64)
    df = pl.DataFrame({c: arr[:, j] for j, c in enumerate(COLUMNS)})
    df = df.with_columns([pl.col(c).fill_nan(None) for c in EXTRA_COLUMNS])
    return _normalize_times(_conform(df), p)


# --------------------------------------------------------------------------------------------------------
@dataclass
class ValidationReport:
    rows: int
    first: int
    last: int
    interval: str
    gaps: list[tuple[int, int]] = field(default_factory=list)  # (last open_time before, missing candles)
    zero_volume: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def missing(self) -> int:
        return sum(n for _, n in self.gaps)


def validate(df: pl.DataFrame, interval: str, source: str) -> ValidationReport:
    """Check a candle frame; raises DataError naming the row and value. Gaps are reported, never filled."""
    intervals.check(interval)
    if df.height == 0:
        raise DataError(f"{source}: no candles.", hint="point --data at a file with candles, or run `xylen collect`.")
    t = df["open_time"].to_numpy()
    for name in OHLCV:
        col = df[name]
        if col.null_count():
            i = int(col.is_null().arg_max())  # type: ignore[arg-type]
            raise DataError(f"{source}: row {i + 1} ({fmt_ts(t[i])}) has no {name}.", hint="fix or drop that row.")
        a = col.to_numpy()
        bad = ~np.isfinite(a)
        if bad.any():
            i = int(bad.argmax())
            raise DataError(
                f"{source}: row {i + 1} ({fmt_ts(t[i])}) has {name} = {float(a[i])}.",
                hint="NaN and infinity are not prices; fix or drop that row.",
            )
        neg = (a <= 0) if name != "volume" else (a < 0)
        if neg.any():
            i = int(neg.argmax())
            raise DataError(
                f"{source}: row {i + 1} ({fmt_ts(t[i])}) has {name} = {float(a[i])}.",
                hint="prices must be > 0 and volume >= 0; fix or drop that row.",
            )
    o, h, lo, c = (df[n].to_numpy() for n in PRICE_COLUMNS)
    bad = (h < np.maximum(o, c)) | (lo > np.minimum(o, c)) | (lo > h)
    if bad.any():
        i = int(bad.argmax())
        raise DataError(
            f"{source}: row {i + 1} ({fmt_ts(t[i])}) breaks OHLC sanity: open={float(o[i])} "
            f"high={float(h[i])} low={float(lo[i])} close={float(c[i])}.",
            hint="high must be >= open, close and low; fix or drop that row.",
        )
    off = ~intervals.aligned(t, interval)
    if off.any():
        i = int(off.argmax())
        raise DataError(
            f"{source}: row {i + 1} open_time {int(t[i])} is not on the {interval} grid.",
            hint=f"check the interval (is this really {interval} data?) or pass the right --interval.",
        )
    d = np.diff(t)
    if (d == 0).any():
        idx = np.flatnonzero(d == 0)
        raise DataError(
            f"{source}: {len(idx)} duplicate candle(s), first at row {idx[0] + 2} ({fmt_ts(t[idx[0]])}).",
            hint="keep one row per open_time (`xylen collect import` deduplicates while importing).",
        )
    if (d < 0).any():
        i = int(np.flatnonzero(d < 0)[0])
        raise DataError(
            f"{source}: candles are not sorted: row {i + 2} ({fmt_ts(t[i + 1])}) comes after "
            f"row {i + 1} ({fmt_ts(t[i])}).",
            hint="sort the file by open_time.",
        )
    gaps = intervals.gaps(t, interval)
    zero = int((df["volume"].to_numpy() == 0).sum())
    return ValidationReport(
        rows=df.height, first=int(t[0]), last=int(t[-1]), interval=interval, gaps=gaps, zero_volume=zero
    )


def infer_interval(df: pl.DataFrame) -> str | None:
    """The interval of sorted candles from their spacing (weeks and calendar months included), or None."""
    return intervals.infer(df["open_time"].to_numpy())


def combine(results: Sequence[ReadResult]) -> tuple[pl.DataFrame, int]:
    """Several reads of one series (monthly archives, overlapping exports) as one frame sorted by open_time, and
    how many repeated candles were merged. The one rule of `xylen train --data` and `xylen collect import`: a
    candle that appears more than once with the same open, high, low, close and volume is kept once (the copy
    with the most known extra columns); the same open_time with different values is refused, naming both places.
    """
    frames = [r.frame.with_columns(pl.lit(i, dtype=pl.Int32).alias("_src"), pl.int_range(pl.len()).alias("_row"))
              for i, r in enumerate(results)]
    df = pl.concat(frames, how="vertical")
    extras = pl.sum_horizontal(*(pl.col(c).is_not_null().cast(pl.Int32) for c in EXTRA_COLUMNS))
    df = df.with_columns(extras.alias("_known")).sort(["open_time", "_known"], descending=[False, True])
    distinct = df.unique(subset=["open_time", *OHLCV], keep="first", maintain_order=True)
    clash = distinct.filter(pl.col("open_time").is_duplicated())
    if clash.height:
        a, b = clash.row(0, named=True), clash.row(1, named=True)
        where = [f"{results[x['_src']].source} row {x['_row'] + 1}" for x in (a, b)]
        raise DataError(
            f"Two different candles open at {fmt_ts(a['open_time'])}: {where[0]} says close {a['close']}, "
            f"{where[1]} says close {b['close']}.",
            hint="the files disagree about the same candle; drop the wrong file or fix that row.",
        )
    out = distinct.drop("_src", "_row", "_known")
    return out, df.height - out.height
