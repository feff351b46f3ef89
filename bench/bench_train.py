"""Training and feature benchmarks: prints figures, with baselines measured in the same run.

    python bench/bench_train.py [--profile 8gb]
    python bench/bench_train.py --contention 2     # the thread measurement behind train/threads.py (0: idle)

Figures:
- feature set over the bundled sample (~105k candles), and a naive per-window loop as the baseline
  (what "features of the last candle" costs when every window is computed from scratch with pandas-free numpy);
- features of the last candle of a 100-candle window (the serving path), p50/p99 in µs;
- a full `xylen train --profile 8gb` on the bundled sample (walk-forward evaluation included): wall seconds and
  peak RSS of the training process, next to a single plain LightGBM fit on the same rows as the baseline.
- with --contention N: the same training beside N busy processes (0 for an idle machine): 1 thread (the baseline),
  2 threads with OpenMP's default spinning and its passive wait policy, and what xylen picks by itself.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="8gb")
    ap.add_argument("--contention", type=int, default=None, help="busy processes beside the trainer")
    args = ap.parse_args()
    if args.contention is not None:
        contention(args.profile, args.contention)
        return

    from xylen.core import features
    from xylen.core.candles import read_candles
    from xylen.train.dataset import arrays_of
    from xylen.train.pipeline import sample_path

    df = read_candles(sample_path()).frame
    arr = arrays_of(df)
    t = time.perf_counter()
    X = features.frame(arr)
    full = time.perf_counter() - t
    print(f"features, all {len(arr)} candles: {full:.3f} s ({full / len(arr) * 1e6:.2f} µs/candle)")

    window = features.CandleArrays(
        *(a[50_000:50_100] for a in (arr.open_time, arr.open, arr.high, arr.low, arr.close, arr.volume))
    )
    for _ in range(2000):
        features.last_row(window)
    samples = []
    for _ in range(20_000):
        t = time.perf_counter()
        features.last_row(window)
        samples.append(time.perf_counter() - t)
    s = np.array(samples) * 1e6
    print(f"features, last candle of a 100-candle window: p50 {np.median(s):.1f} µs, p99 {np.percentile(s, 99):.1f} µs")
    # baseline in the same run: the training frame computed on the same window (all rows, then take the last)
    samples = []
    for _ in range(5_000):
        t = time.perf_counter()
        features.frame(window)[-1]
        samples.append(time.perf_counter() - t)
    b = np.median(samples) * 1e6
    print(f"  baseline, whole-window frame then last row: p50 {b:.1f} µs -> last_row is {b / np.median(s):.1f}x faster")

    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "XYLEN_HOME": home}
        t = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-m", "xylen", "train", "--profile", args.profile, "--json"],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        wall = time.perf_counter() - t
        if out.returncode:
            print(out.stderr)
            raise SystemExit(out.returncode)
        res = json.loads(out.stdout)
        m = res["metrics"]
        print(
            f"xylen train --profile {args.profile} (sample, {res['rows_used']} rows, "
            f"{len(res['folds'])} folds x 3 models "
            f"+ final): {wall:.1f} s wall, peak RSS {res['peak_rss_mb']:.0f} MB"
        )
        print(
            f"  AUC {m['auc_mean']:.4f} | volatility-only {m['auc_volatility_mean']:.4f} | shuffled "
            f"{m['auc_shuffled_mean']:.4f} | edge {m['auc_edge_vs_volatility']:+.4f}"
        )

    import lightgbm as lgb

    from xylen.core import labels
    from xylen.profiles import resolve
    from xylen.train.evaluate import lgb_params

    prof = resolve(args.profile)
    y = labels.make(arr.close, labels.LabelSpec())
    ok = ~np.isnan(y) & ~np.isnan(X).any(axis=1)
    t = time.perf_counter()
    lgb.train(
        lgb_params(prof) | {"metric": "none"},
        lgb.Dataset(X[ok], label=y[ok], params={"max_bin": prof.max_bin}),
        num_boost_round=100,
    )
    one = time.perf_counter() - t
    print(
        f"  baseline, one plain LightGBM fit of 100 trees on all rows: {one:.2f} s "
        f"-> the full train costs {wall / one:.1f} such fits"
    )


def _train_seconds(profile: str, threads: int | None, policy: str | None) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "LGBM_NUM_THREADS")}
    if threads is not None:
        env["LGBM_NUM_THREADS"] = str(threads)
    if policy is not None:
        env["OMP_WAIT_POLICY"] = policy
    with tempfile.TemporaryDirectory() as home:
        t = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "xylen", "--home", home, "train", "--profile", profile, "--json", "--no-promote"],
            env=env,
            capture_output=True,
            check=True,
        )
        return time.perf_counter() - t


def contention(profile: str, busy: int, repeat: int = 3) -> None:
    """Each setting ``repeat`` times, interleaved, beside ``busy`` processes that spin; medians."""
    import statistics

    configs = {
        "1 thread": (1, None),
        "2 threads, default (spinning) wait policy": (2, None),
        "2 threads, OMP_WAIT_POLICY=PASSIVE": (2, "PASSIVE"),
        "xylen's choice (threads capped at idle cores)": (None, None),
    }
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
    try:
        times: dict[str, list[float]] = {k: [] for k in configs}
        for _ in range(repeat):
            for name, (threads, policy) in configs.items():
                times[name].append(_train_seconds(profile, threads, policy))
    finally:
        for h in hogs:
            h.kill()
    base = statistics.median(times["1 thread"])
    print(
        f"xylen train --profile {profile} beside {busy} busy process(es), {os.cpu_count()} cores, median of {repeat}:"
    )
    for name, t in times.items():
        m = statistics.median(t)
        print(f"  {name:48s} {m:6.1f} s = {m / base:.2f}x one thread  {[round(x, 1) for x in t]}")


if __name__ == "__main__":
    main()
