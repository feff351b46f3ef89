"""`xylen collect import` and `export`: candle files in and out of the store.

Import reads every file first (data.binance.vision zips with their .CHECKSUM, 12-column CSVs with ms or
µs timestamps and with or without a header, freqtrade feather/parquet, JSONL) and validates it; only when
all of them are good is anything appended, so one bad file leaves the store untouched. Repeated candles
follow the one rule of :func:`xylen.core.candles.combine` (also `xylen train --data`): the same candle twice,
inside or across the files, is kept once; two different candles at one open_time are refused, naming both
places. Candles already in the store are replaced by the imported ones.
"""

from __future__ import annotations

import io
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

import orjson
import polars as pl

from xylen.core import intervals
from xylen.core.candles import ReadResult, combine, infer_interval, read_candles, validate
from xylen.core.errors import ConfigError, DataError
from xylen.core.markets import canonical_symbol as normalize_symbol  # BTC/USDT is BTCUSDT
from xylen.core.store import Store

ExportFormat = Literal["jsonl", "csv", "parquet"]


@dataclass
class ImportResult:
    files: list[dict[str, Any]] = field(default_factory=list)
    added: int = 0
    duplicates: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"added": self.added, "duplicates": self.duplicates, "files": self.files}

    def line(self) -> str:
        return f"import: {len(self.files)} file(s), {self.added} new candles, {self.duplicates} already stored"


def import_files(
    store: Store, paths: list[Path], *, symbol: str | None = None, interval: str | None = None
) -> ImportResult:
    """Read and validate every file, then append them all. Raises DataError/ConfigError before any write."""
    if not paths:
        raise ConfigError("No file to import.", hint="pass files, e.g. xylen collect import BTCUSDT-5m-2024-01.zip.")
    _check_interval(interval)
    symbol = normalize_symbol(symbol) if symbol is not None else None
    batches: dict[tuple[str, str], list[ReadResult]] = {}
    result = ImportResult()
    for p in paths:
        read = read_candles(p, interval=interval, symbol=symbol)
        df, dupes = combine([read])  # a candle repeated inside the file: kept once, or refused if they differ
        iv = read.interval or infer_interval(df)
        if iv is None:
            raise DataError(
                f"Cannot tell the interval of {str(p)!r} from its name or its candles.",
                hint="pass --interval, e.g. --interval 5m.",
            )
        if read.symbol is None:
            raise DataError(
                f"Cannot tell the symbol of {str(p)!r} from its name.",
                hint="pass --symbol, e.g. --symbol BTCUSDT, or name the file like BTCUSDT-5m-2024-01.zip.",
            )
        sym = normalize_symbol(read.symbol)
        if read.frame["close_time"].null_count() == read.frame.height:
            closes = intervals.next_opens(read.frame["open_time"].to_numpy(), iv) - 1
            read = ReadResult(read.frame.with_columns(pl.Series("close_time", closes)), str(p), sym, iv, read.notes)
            df = combine([read])[0]
        report = validate(df, iv, str(p))
        batches.setdefault((sym, iv), []).append(read)  # the file's own rows: a refusal names them
        result.files.append(
            {
                "file": str(p),
                "symbol": sym,
                "interval": iv,
                "rows": df.height,
                "duplicates_in_file": dupes,
                "gaps": len(report.gaps),
                "notes": read.notes,
            }
        )
    merged = {key: combine(reads)[0] for key, reads in batches.items()}  # files that disagree: refused here
    for (sym, iv), df in merged.items():
        result.added += store.append(sym, iv, df).added
    # rows already stored, or repeated inside or across the files
    result.duplicates = sum(f["rows"] + f["duplicates_in_file"] for f in result.files) - result.added
    return result


def export_series(
    store: Store, symbol: str, interval: str, fmt: ExportFormat, out: Path | None, *, stdout: BinaryIO | None = None
) -> int:
    """Write one series as JSONL, CSV (Binance column order, with a header) or Parquet. Returns rows."""
    symbol = normalize_symbol(symbol)
    _check_interval(interval)
    df = store.read(symbol, interval)
    if df.height == 0:
        known = ", ".join(f"{s} {i}" for s, i in store.series()) or "none"
        raise DataError(
            f"The store has no {symbol} {interval} candles (stored series: {known}).",
            hint=f"collect them first: xylen collect --symbols {symbol} --intervals {interval} --once.",
        )
    buf = io.BytesIO()
    if fmt == "jsonl":
        buf.write(b"".join(orjson.dumps(r) + b"\n" for r in df.iter_rows(named=True)))
    elif fmt == "csv":
        df.write_csv(buf)
    elif fmt == "parquet":
        df.write_parquet(buf, compression="zstd")
    else:
        raise ConfigError(f"Export format {fmt!r} is unknown.", hint="use jsonl, csv or parquet.")
    data = buf.getvalue()
    if out is None:
        target = stdout or sys.stdout.buffer
        target.write(data)
        target.flush()
    else:
        tmp = out.with_name(f".{out.name}.tmp")
        try:
            tmp.write_bytes(data)
            tmp.replace(out)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise ConfigError(
                f"Cannot write {str(out)!r}: {exc.strerror}.", hint="pick a writable --out path."
            ) from None
    return df.height


def _check_interval(interval: str | None) -> None:
    if interval is not None and interval not in intervals.INTERVALS:
        raise ConfigError(
            f"Interval {interval!r} is not a Binance interval.",
            hint=f"use one of: {' '.join(intervals.INTERVALS)} (case matters: 1m is a minute, 1M a month).",
        )
