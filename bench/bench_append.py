"""Cost of storing one closed candle (follow mode) in a nearly full month of 1m candles: prints figures.

    python bench/bench_append.py [--appends 10000] [--baseline 300]

Two algorithms in the same run, on the same machine and disk, interleaved in ten blocks so that both see the
same background load:

- today's (the baseline, as xylen stored candles until the tail design): read the month's data.parquet,
  concat the candle, unique, sort, write a temp file, fsync, rename, fsync the folder; ``--baseline`` appends
  to a month holding 44,000 candles;
- Store.append: the candle becomes a small immutable tail object (put_new), folded into data.parquet by a
  compaction once a month holds more than 256 tails (that append pays the compaction: it is in the figures).
  ``--appends`` appends, the month holding 44,640 - appends candles at the start and all 44,640 at the end,
  so every append lands in a nearly full month.

Per-append p50/p99/max and mean in milliseconds; done when the new p99 is <= 1/10 of today's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from xylen.core.candles import SCHEMA  # noqa: E402
from xylen.core.store import MAX_TAILS, Store  # noqa: E402

JAN = 1704067200000  # 2024-01-01
MONTH = 31 * 1440  # 1m candles in January
MIN = 60_000
BLOCKS = 10


def candles(start: int, n: int, rng: np.random.Generator) -> pl.DataFrame:
    t = start + MIN * np.arange(n, dtype=np.int64)
    close = 42_000 * np.exp(np.cumsum(rng.normal(0, 5e-4, n)))
    open_ = np.concatenate([[close[0]], close[:-1]])
    high = np.maximum(open_, close) * (1 + rng.uniform(0, 1e-3, n))
    low = np.minimum(open_, close) * (1 - rng.uniform(0, 1e-3, n))
    vol = rng.uniform(1, 50, n)
    return pl.DataFrame(
        {
            "open_time": t,
            "open": open_,
            "high": high,
            "low": low,
            "close": close,
            "volume": vol,
            "close_time": t + MIN - 1,
            "quote_volume": vol * close,
            "trades": rng.integers(10, 2000, n),
            "taker_buy_base": vol / 2,
            "taker_buy_quote": vol * close / 2,
        }
    ).cast(SCHEMA)  # type: ignore[arg-type]


def today_append(path: Path, tmp_dir: Path, new: pl.DataFrame) -> None:
    """xylen's store write before the tail design, step by step."""
    old = pl.read_parquet(path)
    merged = pl.concat([old, new]).unique(subset="open_time", keep="last").sort("open_time")
    tmp = tmp_dir / f"{os.getpid()}-year=2024-month=01.parquet.tmp"
    merged.write_parquet(tmp, compression="zstd", statistics=True)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def figures(ms: list[float]) -> dict[str, float]:
    s = sorted(ms)
    return {
        "p50": s[len(s) // 2],
        "p99": s[min(len(s) - 1, int(len(s) * 0.99))],
        "max": s[-1],
        "mean": statistics.fmean(s),
    }


def line(name: str, n: int, f: dict[str, float]) -> str:
    return (
        f"{name:<34} {n:>6} appends  p50 {f['p50']:8.3f} ms  p99 {f['p99']:8.3f} ms  "
        f"max {f['max']:8.3f} ms  mean {f['mean']:8.3f} ms"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--appends", type=int, default=10_000)
    ap.add_argument("--baseline", type=int, default=300)
    args = ap.parse_args()
    rng = np.random.default_rng(7)
    month = candles(JAN, MONTH, rng)
    with tempfile.TemporaryDirectory() as d:
        # today's algorithm, on a month of 44,000 stored candles
        base = Path(d) / "today" / "klines" / "data.parquet"
        base.parent.mkdir(parents=True)
        month.head(44_000).write_parquet(base, compression="zstd", statistics=True)
        tmp_dir = Path(d) / "today" / ".tmp"
        tmp_dir.mkdir()
        # Store.append, on a month filling up to all 44,640 candles
        first = MONTH - args.appends
        store = Store(Path(d) / "new")
        store.append("BTCUSDT", "1m", month.head(first))
        rows = [month.slice(i, 1) for i in range(first, MONTH)]  # built before timing: a decoded candle
        # interleaved in blocks (a tenth of each at a time): both see the same background load, and the new
        # appends are not measured in the wake of a 3 MB rewrite more often than follow mode ever is
        today, new = [], []
        for block in range(BLOCKS):
            for row in rows[block * len(rows) // BLOCKS : (block + 1) * len(rows) // BLOCKS]:
                t0 = time.perf_counter()
                store.append("BTCUSDT", "1m", row)
                new.append((time.perf_counter() - t0) * 1000)
            while len(today) < (block + 1) * args.baseline // BLOCKS:
                old = month.slice(44_000 + len(today), 1)
                t0 = time.perf_counter()
                today_append(base, tmp_dir, old)
                today.append((time.perf_counter() - t0) * 1000)
        store.compact("BTCUSDT", "1m")
        assert store.read("BTCUSDT", "1m").equals(month), "the store lost or changed candles"
        size = store.partition_path("BTCUSDT", "1m", 2024, 1).stat().st_size
    ft, fn = figures(today), figures(new)
    print(f"one 1m candle into a nearly full month (data.parquet {size / 1e6:.1f} MB when full), same run:")
    print(line("today: rewrite the month file", len(today), ft))
    print(line(f"Store.append: tail (+ fold > {MAX_TAILS})", len(new), fn))
    print(
        f"ratio today/new: p99 {ft['p99'] / fn['p99']:.1f}x, mean {ft['mean'] / fn['mean']:.1f}x, "
        f"p50 {ft['p50'] / fn['p50']:.1f}x (done when p99 >= 10x); the max is an append that folds "
        f"{MAX_TAILS + 1} tails into the month file"
    )
    print(f"month rows at the start: today 44000, Store.append {first} (ends at {MONTH})")


if __name__ == "__main__":
    main()
