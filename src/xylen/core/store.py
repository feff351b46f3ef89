"""The market-data store: hive-partitioned Parquet, one file per series and month.

    XYLEN_HOME/data/klines/symbol=BTCUSDT/interval=5m/year=2024/month=01/data.parquet

Key columns (symbol, interval, year, month) live in the path, not in the files, so polars, DuckDB and dask
read the tree with hive partitioning and no conversion. Each file is replaced atomically (temp + fsync +
rename) with the old and new rows merged and deduplicated on open_time: a crash at any point leaves either
the old file or the new one, never half of one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import polars as pl

from xylen.core.bundle import fsync_dir
from xylen.core.candles import COLUMNS, SCHEMA, empty_frame, interval_ms
from xylen.core.errors import ConfigError, DataError

FILE_NAME = "data.parquet"


@dataclass
class AppendResult:
    added: int = 0
    duplicates: int = 0
    files: list[str] = field(default_factory=list)


@dataclass
class SeriesSummary:
    symbol: str
    interval: str
    rows: int
    first: int | None
    last: int | None
    gaps: list[tuple[int, int]]
    lag_ms: int | None

    @property
    def missing(self) -> int:
        return sum(n for _, n in self.gaps)


class Store:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.klines = self.root / "klines"

    def series_dir(self, symbol: str, interval: str) -> Path:
        return self.klines / f"symbol={symbol}" / f"interval={interval}"

    def partition_path(self, symbol: str, interval: str, year: int, month: int) -> Path:
        return self.series_dir(symbol, interval) / f"year={year}" / f"month={month:02d}" / FILE_NAME

    def series(self) -> list[tuple[str, str]]:
        out = []
        if not self.klines.is_dir():
            return out
        for sdir in sorted(self.klines.glob("symbol=*")):
            for idir in sorted(sdir.glob("interval=*")):
                if any(idir.rglob(FILE_NAME)):
                    out.append((sdir.name.split("=", 1)[1], idir.name.split("=", 1)[1]))
        return out

    def files(self, symbol: str, interval: str) -> list[Path]:
        d = self.series_dir(symbol, interval)
        return sorted(d.glob(f"year=*/month=*/{FILE_NAME}")) if d.is_dir() else []

    def read(self, symbol: str, interval: str, start: int | None = None, end: int | None = None) -> pl.DataFrame:
        """All stored candles of a series (optionally open_time in [start, end)), sorted, schema-conformant."""
        frames = []
        for f in self.files(symbol, interval):
            try:
                frames.append(pl.read_parquet(f).select(list(COLUMNS)).cast(SCHEMA))  # type: ignore[arg-type]
            except (pl.exceptions.PolarsError, OSError) as exc:
                raise DataError(f"Store file {str(f)!r} is unreadable: {str(exc).splitlines()[0][:200]}",
                                hint="delete that month's file and backfill it again with `xylen collect --once`.") from None
        if not frames:
            return empty_frame()
        df = pl.concat(frames).sort("open_time")
        if start is not None:
            df = df.filter(pl.col("open_time") >= start)
        if end is not None:
            df = df.filter(pl.col("open_time") < end)
        return df

    def last_open_time(self, symbol: str, interval: str) -> int | None:
        files = self.files(symbol, interval)
        for f in reversed(files):
            try:
                t = pl.read_parquet(f, columns=["open_time"])["open_time"]
            except (pl.exceptions.PolarsError, OSError):
                continue
            if len(t):
                return int(t.max())  # type: ignore[arg-type]
        return None

    def append(self, symbol: str, interval: str, df: pl.DataFrame) -> AppendResult:
        """Merge candles into their month files, dedupe on open_time (new rows win), write atomically."""
        result = AppendResult()
        if df.height == 0:
            return result
        step = interval_ms(interval)
        df = df.select(list(COLUMNS)).cast(SCHEMA)  # type: ignore[arg-type]
        if ((df["open_time"] % step) != 0).any():
            raise DataError(f"Candles for {symbol} {interval} are off the {interval} grid.",
                            hint="check the interval of the data being stored.")
        df = df.unique(subset="open_time", keep="last", maintain_order=True)
        dt = pl.from_epoch(pl.col("open_time"), time_unit="ms")
        keyed = df.with_columns(dt.dt.year().alias("_y"), dt.dt.month().alias("_m"))
        for (year, month), part in keyed.group_by(["_y", "_m"], maintain_order=True):
            path = self.partition_path(symbol, interval, int(year), int(month))  # type: ignore[call-overload]
            new = part.drop("_y", "_m")
            old = empty_frame()
            if path.exists():
                try:
                    old = pl.read_parquet(path).select(list(COLUMNS)).cast(SCHEMA)  # type: ignore[arg-type]
                except (pl.exceptions.PolarsError, OSError):
                    old = empty_frame()  # unreadable (e.g. torn by a foreign tool): rebuilt from what we have
            merged = pl.concat([old, new]).unique(subset="open_time", keep="last").sort("open_time")
            result.added += merged.height - old.height
            result.duplicates += new.height - (merged.height - old.height)
            self._write(path, merged)
            result.files.append(str(path))
        return result

    def _write(self, path: Path, df: pl.DataFrame) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            df.write_parquet(tmp, compression="zstd", statistics=True)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, path)
            fsync_dir(path.parent)
        except PermissionError as exc:
            raise ConfigError(f"Cannot write to the store {str(self.root)!r}: {exc.strerror}.",
                              hint="set XYLEN_HOME to a writable folder or fix its permissions.") from None

    def summary(self, symbol: str, interval: str, now_ms: int | None = None) -> SeriesSummary:
        df = self.read(symbol, interval)
        step = interval_ms(interval)
        if df.height == 0:
            return SeriesSummary(symbol, interval, 0, None, None, [], None)
        t = df["open_time"].to_numpy()
        d = np.diff(t)
        gaps = [(int(t[i]), int(d[i] // step) - 1) for i in np.flatnonzero(d != step)]
        now_ms = now_ms if now_ms is not None else int(datetime.now(timezone.utc).timestamp() * 1000)
        lag = max(0, now_ms - (int(t[-1]) + step))
        return SeriesSummary(symbol, interval, df.height, int(t[0]), int(t[-1]), gaps, lag)
