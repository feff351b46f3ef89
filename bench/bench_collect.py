"""Collector benchmarks against the loopback fake: prints figures.

    python bench/bench_collect.py

Figures:
- REST backfill of one year of BTCUSDT 5m candles (the bundled real 2023 sample, ~105k candles, ~106 requests
  of 1000) through python-binance + the governor into the store, wall seconds including every store write;
  target <= 10 s;
- `collect import` of one month of 1m candles (44,640 rows) from a data.binance.vision-style zip with its
  .CHECKSUM. The rows are the real BTCUSDT 1m candles of the shared freqtrade file (7,207 rows) repeated with
  shifted timestamps to fill 31 days (real values, synthetic times); target <= 1 s.
"""

from __future__ import annotations

import hashlib
import io
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import polars as pl  # noqa: E402
from tests.fakes import FakeBinance, FakeClock  # noqa: E402

from xylen.collect import CollectOptions, collect, import_files, make_rest  # noqa: E402
from xylen.core.candles import read_candles  # noqa: E402
from xylen.core.settings import load_settings  # noqa: E402
from xylen.core.store import Store  # noqa: E402
from xylen.train.pipeline import sample_path  # noqa: E402

ONE_M = [
    ROOT / "tests" / "data" / "spot_ohlcv_feather" / "NIC-project-team_TradingStrategyGA" / "BTC_USDT-1m.feather",
    Path("/work/shared/data/spot_ohlcv_feather/NIC-project-team_TradingStrategyGA/BTC_USDT-1m.feather"),
]


def bench_backfill() -> None:
    df = read_candles(sample_path()).frame
    rows = df.select("open_time", "open", "high", "low", "close", "volume").rows()
    first, last = int(df["open_time"][0]), int(df["open_time"][-1])
    clock = FakeClock(last + 2 * 300_000)
    with FakeBinance({("BTCUSDT", "5m"): rows}, now_ms=clock) as fake, tempfile.TemporaryDirectory() as home:
        settings = load_settings({"home": home, "binance_base_url": fake.base_url}, environ={})
        rest = make_rest(settings, clock=clock, sleep=lambda s: clock.advance(int(s * 1000)))
        t = time.perf_counter()
        res = collect(settings, CollectOptions(["BTCUSDT"], ["5m"], since=first, once=True), rest=rest, clock=clock)
        wall = time.perf_counter() - t
        stored = Store(Path(home) / "data").read("BTCUSDT", "5m").height
    print(
        f"backfill BTCUSDT 5m one year: {stored} candles stored, {res.requests} requests, "
        f"max used weight {res.max_used_weight}, {wall:.2f} s wall (target <= 10 s)"
    )


def bench_import() -> None:
    src = next((p for p in ONE_M if p.exists()), None)
    if src is None:
        print("import: skipped (no real 1m feather file found)")
        return
    base = read_candles(src, interval="1m").frame
    n, month = base.height, 31 * 1440
    start = 1704067200000  # 2024-01-01
    reps = -(-month // n)
    frames = [
        base.with_columns(pl.Series("open_time", [start + (k * n + i) * 60_000 for i in range(n)])) for k in range(reps)
    ]
    df = pl.concat(frames).head(month).with_columns((pl.col("open_time") + 59_999).alias("close_time"))
    df = df.with_columns(
        pl.col("quote_volume").fill_null(0.0),
        pl.col("trades").fill_null(0),
        pl.col("taker_buy_base").fill_null(0.0),
        pl.col("taker_buy_quote").fill_null(0.0),
        pl.lit(0).alias("ignore"),
    )
    with tempfile.TemporaryDirectory() as d:
        buf = io.BytesIO()
        df.write_csv(buf, include_header=False)
        z = Path(d) / "BTCUSDT-1m-2024-01.zip"
        with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("BTCUSDT-1m-2024-01.csv", buf.getvalue())
        (Path(d) / (z.name + ".CHECKSUM")).write_text(f"{hashlib.sha256(z.read_bytes()).hexdigest()}  {z.name}\n")
        store = Store(Path(d) / "home")
        t = time.perf_counter()
        res = import_files(store, [z])
        wall = time.perf_counter() - t
    print(
        f"import one month of 1m ({df.height} rows, {src.name} x{reps} with shifted times, zip + CHECKSUM): "
        f"{res.added} added, {wall:.3f} s (target <= 1 s)"
    )


if __name__ == "__main__":
    bench_backfill()
    bench_import()
