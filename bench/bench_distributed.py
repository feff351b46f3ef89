"""One model over a Dask LocalCluster (`xylen train --distributed`): 2 workers against 1, in the same run.

    python bench/bench_distributed.py [--folds 5]

The bundled BTCUSDT 5m 2023 sample (105,000 real candles, 12 month partitions) in a store. Both runs use the same
settings (the 8gb profile, the same seeds) and publish into their own registry:

- 1 worker: LocalCluster(n_workers=1, threads_per_worker=2): LightGBM has one machine, so the fold AUC is exactly
  local training's (tests/integration/test_train_distributed.py proves it): the baseline;
- 2 workers: LocalCluster(n_workers=2, threads_per_worker=1): data-parallel LightGBM, each worker its months.

Both clusters are started before the clock. Prints the time of each run, the ratio, and the AUC difference.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xylen.core.candles import read_candles  # noqa: E402
from xylen.core.settings import load_settings  # noqa: E402
from xylen.core.store import Store  # noqa: E402
from xylen.train.cluster import Market  # noqa: E402
from xylen.train.distributed import train_distributed  # noqa: E402
from xylen.train.pipeline import sample_path  # noqa: E402

OUT = ROOT / "bench" / "out" / "distributed"


def run(workers: int, threads: int, folds: int) -> tuple[float, float, int]:
    import distributed

    home = OUT / f"w{workers}"
    shutil.rmtree(home, ignore_errors=True)
    Store(home / "data").append("BTCUSDT", "5m", read_candles(sample_path()).frame)
    settings = load_settings({"home": home, "folds": folds, "profile": "8gb"}, environ={})
    with distributed.LocalCluster(n_workers=workers, threads_per_worker=threads, processes=True, host="127.0.0.1",
                                  dashboard_address=":0") as lc:
        t0 = time.perf_counter()
        r = train_distributed(settings, Market("BTCUSDT", "5m", "binance"), address=lc.scheduler_address)
        return time.perf_counter() - t0, r.metrics["auc_mean"], r.rows_used


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--folds", type=int, default=5)
    a = ap.parse_args()
    t1, auc1, rows = run(1, 2, a.folds)
    t2, auc2, _ = run(2, 1, a.folds)
    print(f"BTCUSDT 5m, {rows} rows, last of {a.folds} folds held out")
    print(f"1 worker x 2 threads (= local training): {t1:6.1f} s  AUC {auc1:.4f}")
    print(f"2 workers x 1 thread (data-parallel):   {t2:6.1f} s  AUC {auc2:.4f}")
    print(f"speed-up x{t1 / t2:.2f}, AUC difference {auc2 - auc1:+.4f}")


if __name__ == "__main__":
    main()
