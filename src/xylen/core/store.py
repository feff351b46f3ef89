"""The market-data store: hive-partitioned Parquet, one file per series and month.

    XYLEN_HOME/data/klines/symbol=BTCUSDT/interval=5m/year=2024/month=01/data.parquet

Key columns (symbol, interval, year, month) live in the path, not in the files, so polars, DuckDB and dask
read the tree with hive partitioning and no conversion. Each file is replaced atomically (temp + fsync +
rename) with the old and new rows merged and deduplicated on open_time: a crash at any point leaves either
the old file or the new one, never half of one.

The klines tree holds nothing but ``data.parquet`` files (polars refuses a directory scan that meets any
other file), so the store's own bookkeeping lives beside it: temp files in ``data/.tmp`` (same filesystem,
so the rename stays atomic), per-series locks and known gaps in ``data/meta``. Known gaps are ranges the
exchange answered with no candles (no trading): they are reported apart and never re-fetched.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import orjson
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
    known_gaps: list[tuple[int, int]] = field(default_factory=list)  # [start, end) the exchange has nothing in

    @property
    def missing(self) -> int:
        return sum(n for _, n in self.gaps)

    def to_dict(self) -> dict[str, object]:
        return {
            "symbol": self.symbol,
            "interval": self.interval,
            "rows": self.rows,
            "first": self.first,
            "last": self.last,
            "gaps": [list(g) for g in self.gaps],
            "missing": self.missing,
            "known_gaps": [list(g) for g in self.known_gaps],
            "lag_ms": self.lag_ms,
        }


class Store:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.klines = self.root / "klines"
        self.meta = self.root / "meta"
        self.tmp = self.root / ".tmp"

    def series_dir(self, symbol: str, interval: str) -> Path:
        return self.klines / f"symbol={symbol}" / f"interval={interval}"

    def partition_path(self, symbol: str, interval: str, year: int, month: int) -> Path:
        return self.series_dir(symbol, interval) / f"year={year}" / f"month={month:02d}" / FILE_NAME

    def series(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
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
                raise DataError(
                    f"Store file {str(f)!r} is unreadable: {str(exc).splitlines()[0][:200]}",
                    hint="delete that month's file and backfill it again with `xylen collect --once`.",
                ) from None
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
            raise DataError(
                f"Candles for {symbol} {interval} are off the {interval} grid.",
                hint="check the interval of the data being stored.",
            )
        df = df.unique(subset="open_time", keep="last", maintain_order=True)
        with self.lock(symbol, interval):
            self._merge(symbol, interval, df, result)
        return result

    def _merge(self, symbol: str, interval: str, df: pl.DataFrame, result: AppendResult) -> None:
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

    def _write(self, path: Path, df: pl.DataFrame) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.tmp.mkdir(parents=True, exist_ok=True)
            tmp = self.tmp / f"{os.getpid()}-{path.parent.parent.name}-{path.parent.name}.parquet.tmp"
            try:
                df.write_parquet(tmp, compression="zstd", statistics=True)
                with open(tmp, "rb") as fh:
                    os.fsync(fh.fileno())
                os.replace(tmp, path)
            except BaseException:  # interrupted or failed: the old file stays, the temp goes
                tmp.unlink(missing_ok=True)
                raise
            fsync_dir(path.parent)
        except PermissionError as exc:
            raise ConfigError(
                f"Cannot write to the store {str(self.root)!r}: {exc.strerror}.",
                hint="set XYLEN_HOME to a writable folder or fix its permissions.",
            ) from None

    @contextlib.contextmanager
    def lock(self, symbol: str, interval: str) -> Iterator[None]:
        """An exclusive lock on one series across processes (`collect` and `collect import` side by side)."""
        try:
            self.meta.mkdir(parents=True, exist_ok=True)
            fh = open(self.meta / f"{symbol}-{interval}.lock", "a+b")  # noqa: SIM115
        except PermissionError as exc:
            raise ConfigError(
                f"Cannot write to the store {str(self.root)!r}: {exc.strerror}.",
                hint="set XYLEN_HOME to a writable folder or fix its permissions.",
            ) from None
        with fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def clean_temp(self) -> int:
        """Remove temp files left by killed writers (their rename never happened: the data files are intact)."""
        n = 0
        if self.tmp.is_dir():
            for f in self.tmp.glob("*.tmp"):
                pid = f.name.split("-", 1)[0]
                if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
                    f.unlink(missing_ok=True)
                    n += 1
        return n

    # ---------------------------------------------------------------- known gaps
    def _gaps_path(self, symbol: str, interval: str) -> Path:
        return self.meta / f"{symbol}-{interval}.known_gaps.json"

    def known_gaps(self, symbol: str, interval: str) -> list[tuple[int, int]]:
        """Ranges [start, end) of open_time in which the exchange answered no candles (no trading)."""
        p = self._gaps_path(symbol, interval)
        try:
            return [(int(a), int(b)) for a, b in orjson.loads(p.read_bytes())]
        except FileNotFoundError:
            return []
        except (orjson.JSONDecodeError, ValueError, TypeError):
            return []  # unreadable bookkeeping: the gaps are simply fetched once more

    def add_known_gaps(self, symbol: str, interval: str, gaps: list[tuple[int, int]]) -> None:
        if not gaps:
            return
        merged = _merge_ranges([*self.known_gaps(symbol, interval), *gaps])
        p = self._gaps_path(symbol, interval)
        self.meta.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
        tmp.write_bytes(orjson.dumps(merged))
        os.replace(tmp, p)

    def summary(self, symbol: str, interval: str, now_ms: int | None = None) -> SeriesSummary:
        """First/last candle, rows, gaps (not counting known ones) and lag behind ``now_ms``."""
        df = self.read(symbol, interval)
        step = interval_ms(interval)
        known = self.known_gaps(symbol, interval)
        if df.height == 0:
            return SeriesSummary(symbol, interval, 0, None, None, [], None, known)
        t = df["open_time"].to_numpy()
        gaps = [
            (before, n)
            for before, n in find_gaps(t, step)
            if not _covered(before + step, before + (n + 1) * step, known)
        ]
        now_ms = now_ms if now_ms is not None else int(datetime.now(timezone.utc).timestamp() * 1000)
        lag = max(0, now_ms - (int(t[-1]) + step))  # since the last stored candle closed
        return SeriesSummary(symbol, interval, df.height, int(t[0]), int(t[-1]), gaps, lag, known)


def find_gaps(t: np.ndarray, step: int) -> list[tuple[int, int]]:
    """(open_time before the hole, missing candles) for each hole in sorted open times."""
    d = np.diff(t)
    return [(int(t[i]), int(d[i] // step) - 1) for i in np.flatnonzero(d != step)]


def _merge_ranges(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _covered(a: int, b: int, ranges: list[tuple[int, int]]) -> bool:
    return any(x <= a and b <= y for x, y in ranges)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
