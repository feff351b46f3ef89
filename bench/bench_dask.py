"""N markets trained on a 2-worker Dask LocalCluster against one after another in one process: prints figures.

    python bench/bench_dask.py [--workers 2] [--folds 3] [--rounds 1]

Eight real markets (no synthetic candles): BTCUSDT, ETHUSDT and SOLUSDT 1h (2024, tests/data), ETHUSDT and
SOLUSDT 2h (the same candles aggregated), and BTCUSDT 15m, 30m and 2h (the bundled 2023 5m sample, aggregated).
Three walk-forward folds by default: the 2h series hold ~3,000 candles, too few for five.
Both runs use the same settings (the 8gb profile, LightGBM on 1 thread per model, the same seeds) and publish
into their own registry:

- sequential: `xylen train` for each market, one after another, in this process (cluster.train_here);
- cluster: `xylen train --cluster` (cluster.train_markets) on a LocalCluster(n_workers=2, threads_per_worker=1,
  processes=True) bound to 127.0.0.1, started before the clock starts (its start-up is printed apart).

The two runs alternate ``--rounds`` times (sequential first). Prints per-market walk-forward AUC of each run and
the difference (aim <= 0.005), and the speed-up = sequential time / cluster time (aim >= 1.6x on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import polars as pl  # noqa: E402

from xylen.core.candles import read_candles  # noqa: E402
from xylen.core.settings import load_settings  # noqa: E402
from xylen.core.store import Store  # noqa: E402
from xylen.train import cluster  # noqa: E402
from xylen.train.pipeline import sample_path  # noqa: E402

FEATHER = ROOT / "tests" / "data" / "spot_ohlcv_feather" / "imsatoshi_GeneTrader_2024"
OUT = ROOT / "bench" / "out" / "dask"
MS = {"15m": 900_000, "30m": 1_800_000, "1h": 3_600_000, "2h": 7_200_000, "4h": 14_400_000}


def aggregate(df: pl.DataFrame, interval: str) -> pl.DataFrame:
    """Real candles of a shorter interval folded into ``interval`` candles (complete buckets only)."""
    step = MS[interval]
    per = df.with_columns((pl.col("open_time") // step * step).alias("bucket"))
    full = per.group_by("bucket").agg(pl.len().alias("n"))
    need = int(full["n"].max())
    out = (
        per.group_by("bucket", maintain_order=True)
        .agg(
            pl.col("open").first(), pl.col("high").max(), pl.col("low").min(), pl.col("close").last(),
            pl.col("volume").sum(), pl.col("quote_volume").sum(), pl.col("trades").sum(),
            pl.col("taker_buy_base").sum(), pl.col("taker_buy_quote").sum(), pl.len().alias("n"),
        )
        .filter(pl.col("n") == need)
        .rename({"bucket": "open_time"})
        .sort("open_time")
    )
    return out.with_columns((pl.col("open_time") + step - 1).alias("close_time")).select(df.columns).cast(
        dict(df.schema)
    )


def fill(home: Path) -> list[tuple[str, str]]:
    store = Store(home / "data")
    markets: list[tuple[str, str]] = []
    for sym in ("BTC", "ETH", "SOL"):
        frame = read_candles(FEATHER / f"{sym}_USDT-1h.feather").frame
        store.append(f"{sym}USDT", "1h", frame)
        markets.append((f"{sym}USDT", "1h"))
        if sym != "BTC":
            store.append(f"{sym}USDT", "2h", aggregate(frame, "2h"))
            markets.append((f"{sym}USDT", "2h"))
    five = read_candles(sample_path()).frame
    for interval in ("15m", "30m", "2h"):
        store.append("BTCUSDT", interval, aggregate(five, interval))
        markets.append(("BTCUSDT", interval))
    return markets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    from distributed import LocalCluster

    shutil.rmtree(OUT, ignore_errors=True)
    homes = {"seq": OUT / "seq", "dask": OUT / "dask"}
    pairs = fill(homes["seq"])
    shutil.copytree(homes["seq"] / "data", homes["dask"] / "data")
    print(f"{len(pairs)} markets: {', '.join(f'{s} {i}' for s, i in pairs)}; load average {os.getloadavg()[0]:.1f}")
    common = {"folds": args.folds, "profile": "8gb", "lgbm_num_threads": 1}
    settings = {k: load_settings({"home": h, **common}, environ={}) for k, h in homes.items()}
    markets = [cluster.Market(s, i, "binance") for s, i in pairs]
    t0 = time.perf_counter()
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as lc:
        print(f"LocalCluster({args.workers} workers x 1 thread) started in {time.perf_counter() - t0:.1f} s")
        times: dict[str, list[float]] = {"seq": [], "dask": []}
        aucs: dict[str, dict[str, float]] = {"seq": {}, "dask": {}}
        for _ in range(args.rounds):
            t = time.perf_counter()
            got = cluster.train_here(settings["seq"], markets)
            times["seq"].append(time.perf_counter() - t)
            bad = [o.error for o in got if o.error]
            assert not bad, bad
            aucs["seq"] = {o.market.label: o.result.metrics["auc_mean"] for o in got}
            t = time.perf_counter()
            got = cluster.train_markets(settings["dask"], markets, address=lc.scheduler_address)
            times["dask"].append(time.perf_counter() - t)
            bad = [o.error for o in got if o.error]
            assert not bad, bad
            aucs["dask"] = {o.market.label: o.result.metrics["auc_mean"] for o in got}
    print(f"\n{'market':<16}{'AUC sequential':>16}{'AUC cluster':>14}{'|diff|':>10}")
    worst = 0.0
    for m in markets:
        a, b = aucs["seq"][m.label], aucs["dask"][m.label]
        worst = max(worst, abs(a - b))
        print(f"{m.label:<16}{a:>16.4f}{b:>14.4f}{abs(a - b):>10.4f}")
    seq, dk = statistics.median(times["seq"]), statistics.median(times["dask"])
    print(f"\nsequential {seq:.1f} s ({', '.join(f'{x:.1f}' for x in times['seq'])}); cluster {dk:.1f} s "
          f"({', '.join(f'{x:.1f}' for x in times['dask'])})")
    print(f"speed-up x{seq / dk:.2f} (aim >= 1.6 on 2 cores); max per-market AUC difference {worst:.4f} "
          f"(aim <= 0.005); load average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
