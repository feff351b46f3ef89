"""Cost of the day-block bootstrap intervals of issue #10 (xylen.train.bootstrap): prints figures.

    python bench/bench_bootstrap.py [--rows 90000] [--folds 5] [--resamples 2000] [--reps 7] [--naive 10]

Synthetic walk-forward output shaped like `xylen train` on a year of 5m candles: --rows rows on the 5m grid (90,000
rows = 312.5 days, 318 (fold, UTC day) blocks), --folds folds of consecutive rows, a label with a 30% positive rate,
a model score and a baseline score correlated with it (continuous, as LightGBM probabilities are). Timed, median
of --reps runs each:

- auc_interval (the model's AUC) + auc_edge_interval (its edge over the baseline), --resamples resamples each:
  the figure (budget: well under 0.5 s on a 2-core machine);
- ONE metrics.auc call on all rows: the same-run baseline, so the figure reads as a ratio on any machine;
- the obvious implementation, for scale: each resample repeats every row as often as its day was drawn and calls
  metrics.auc per fold (a sort per fold and resample), timed over --naive resamples and scaled to --resamples.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from xylen.train import bootstrap, metrics  # noqa: E402

STEP = 300_000  # 5m
DAY = 86_400_000
T0 = 1_672_531_200_000  # 2023-01-01 00:00 UTC


def synthetic(rows: int, folds: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(0)
    open_time = T0 + STEP * np.arange(rows, dtype=np.int64)
    fold = 1 + np.arange(rows) * folds // rows
    y = (rng.random(rows) < 0.3).astype(np.float64)
    score = 1 / (1 + np.exp(-(0.5 * y + rng.normal(size=rows))))
    # the baseline: 0.6 of the model's logit (0.3 y + noise of sd 0.6) + 0.1 y + noise of sd 0.8 -> 0.4 y + N(0, 1)
    base = 1 / (1 + np.exp(-(0.6 * np.log(score / (1 - score)) + 0.1 * y + 0.8 * rng.normal(size=rows))))
    return y, score, base, open_time, fold


def median_time(fn: Callable[[], object], reps: int) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def naive(y: np.ndarray, score: np.ndarray, open_time: np.ndarray, fold: np.ndarray, resamples: int) -> None:
    rng = np.random.default_rng(1)
    for _ in range(resamples):
        for k in np.unique(fold):
            at = fold == k
            day = open_time[at] // DAY
            days, block = np.unique(day, return_inverse=True)
            reps = np.bincount(rng.integers(0, len(days), len(days)), minlength=len(days))[block]
            metrics.auc(np.repeat(y[at], reps), np.repeat(score[at], reps))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=90_000)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--resamples", type=int, default=2000)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--naive", type=int, default=10, help="resamples of the obvious implementation (0: skip)")
    a = ap.parse_args()
    y, score, base, open_time, fold = synthetic(a.rows, a.folds)
    r = a.resamples

    auc = bootstrap.auc_interval(y, score, open_time, fold, resamples=r)
    edge = bootstrap.auc_edge_interval(y, score, base, open_time, fold, resamples=r)
    t_auc = median_time(lambda: bootstrap.auc_interval(y, score, open_time, fold, resamples=r), a.reps)
    t_edge = median_time(lambda: bootstrap.auc_edge_interval(y, score, base, open_time, fold, resamples=r), a.reps)
    t_both = median_time(
        lambda: (
            bootstrap.auc_interval(y, score, open_time, fold, resamples=r),
            bootstrap.auc_edge_interval(y, score, base, open_time, fold, resamples=r),
        ),
        a.reps,
    )
    t_one = median_time(lambda: metrics.auc(y, score), a.reps)

    days = (open_time[-1] - open_time[0]) / DAY
    print(
        f"{a.rows:,} rows, {a.folds} folds, {days:.1f} days ({auc.blocks} blocks), {r:,} resamples, median of {a.reps}"
    )
    print(f"  AUC  {auc.value:.4f} [{auc.low:.4f}, {auc.high:.4f}]")
    print(f"  edge {edge.value:+.4f} [{edge.low:+.4f}, {edge.high:+.4f}]")
    print(f"{'timed':<52} {'seconds':>9} {'x one auc':>10}")
    for name, t in (
        ("auc_interval", t_auc),
        ("auc_edge_interval", t_edge),
        ("auc_interval + auc_edge_interval  (the figure)", t_both),
        ("one metrics.auc on all rows  (same-run baseline)", t_one),
    ):
        print(f"{name:<52} {t:>9.4f} {t / t_one:>10.1f}")
    if a.naive:
        t_naive = median_time(lambda: naive(y, score, open_time, fold, a.naive), 1) * r / a.naive
        print(f"{'obvious implementation, one score (scaled)':<52} {t_naive:>9.2f} {t_naive / t_one:>10.0f}")
        print(f"speed-up of auc_interval over the obvious implementation: {t_naive / t_auc:.0f}x")
    print(f"budget 0.5 s: {'met' if t_both < 0.5 else 'NOT met'} ({t_both:.3f} s)")
    assert math.isfinite(edge.low)


if __name__ == "__main__":
    main()
