"""What each label and feature set is worth, measured walk-forward: the figures behind the README's "Labels".

    python bench/bench_labels.py [--data FILE --interval 5m] [--labels direction,threshold,move,triple-barrier]

For each label (ohlcv-v2 features, the profile 8gb, 5 folds, horizon 6, theta 0.002): the mean-over-folds AUC with its
95% day-block bootstrap interval, the strongest volatility baseline, the edge over it with its interval, the
up-vs-down AUC, and the label-matched backtest (held N candles, 0.1% per side). Then the feature sets: ohlcv-ctx-v1
(1-3 day context) against ohlcv-v2 on the SAME rows and folds (the v2 model sees the first 30 columns of the ctx
frame), per label, as a paired AUC difference with its interval: the evidence for keeping the context features
opt-in.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from xylen.core import featuresets, labels
from xylen.core.candles import read_candles
from xylen.core.imports import import_lightgbm
from xylen.profiles import resolve
from xylen.train import bootstrap, evaluate
from xylen.train.dataset import build
from xylen.train.honesty import assess
from xylen.train.pipeline import sample_path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=None, help="candle file (default: the bundled 2023 BTCUSDT 5m sample)")
    ap.add_argument("--interval", default="5m")
    ap.add_argument("--labels", default="direction,threshold,move,triple-barrier")
    ap.add_argument("--threshold", type=float, default=0.002)
    ap.add_argument("--skip-features", action="store_true", help="only the labels, not the feature-set comparison")
    ap.add_argument("--cost", action="store_true", help="what the intervals, baselines and the move head cost")
    args = ap.parse_args()
    import_lightgbm()
    if args.cost:
        cost()
        return
    df = read_candles(args.data or sample_path()).frame
    prof = resolve("8gb")
    print(f"data: {args.data or 'bundled sample'} ({df.height} candles, {args.interval}); profile {prof.name}")
    kinds = args.labels.split(",")

    def fmt(d: dict) -> str:
        lo, hi = d["low"], d["high"]
        return f"{d['value']:+.4f} [{lo:+.4f}, {hi:+.4f}]" if lo is not None else f"{d['value']:+.4f} [n/a]"

    print("\n## labels (ohlcv-v2)")
    for kind in kinds:
        spec = labels.LabelSpec(horizon=6, threshold=args.threshold, kind=kind)
        t0 = time.perf_counter()
        ds = build(df, args.interval, spec)
        ev = evaluate.walk_forward(ds, prof, 5, spec.horizon)
        rec, _ = assess(ds, ev, spec, fee=0.001, entry_threshold=0.5)
        h = rec["heads"][0]
        bt = rec["backtest"]
        trades = (
            f"net {bt['model']['net_bp']:+.1f} bp/trade (gross {bt['model']['gross_bp']:+.1f}, {bt['model']['trades']} "
            "trades)" if bt and bt["model"]["trades"] else "no directional backtest"
        )
        print(
            f"{kind:15s} base rate {np.nanmean(ds.y[ds.rows]):.3f}  AUC {fmt(h['auc'])}  strongest baseline "
            f"{h['baseline']['name']} {h['baseline']['auc']:.4f}  edge {fmt(h['edge'])} ({h['verdict']})  "
            f"up-vs-down {fmt(h['auc_up'])}  {trades}  [{time.perf_counter() - t0:.1f} s]",
            flush=True,
        )
    if args.skip_features:
        return
    print("\n## ohlcv-ctx-v1 vs ohlcv-v2, same rows and folds (paired AUC difference, 95% day-block interval)")
    ctx = featuresets.get(featuresets.CTX_VERSION, args.interval)
    for kind in kinds:
        spec = labels.LabelSpec(horizon=6, threshold=args.threshold, kind=kind)
        ds_ctx = build(df, args.interval, spec, ctx)
        n30 = len(featuresets.OHLCV_V2.names)
        ds_v2 = replace(ds_ctx, X=np.ascontiguousarray(ds_ctx.X[:, :n30]), fs=featuresets.OHLCV_V2)
        ev_ctx = evaluate.walk_forward(ds_ctx, prof, 5, spec.horizon)
        ev_v2 = evaluate.walk_forward(ds_v2, prof, 5, spec.horizon)
        assert np.array_equal(ev_ctx.test_index, ev_v2.test_index)
        y = ev_ctx.heads[0].y
        t = ds_ctx.open_time[ev_ctx.test_index]
        diff = bootstrap.auc_edge_interval(y, ev_ctx.test_proba, ev_v2.test_proba, t, ev_ctx.test_fold)
        print(f"{kind:15s} AUC ctx {ev_ctx.mean('auc'):.4f} v2 {ev_v2.mean('auc'):.4f}  difference "
              f"{fmt(diff.to_dict())}", flush=True)


def cost(repeat: int = 3) -> None:
    """Full `xylen train --profile 8gb` on the bundled sample, timed by part: the bootstrap intervals and the backtest
    (honesty.assess), the raw-feature baselines (their orientation on training rows), and the move head (the default
    against --extra-head none, alternating runs). Median of ``repeat`` each."""
    import tempfile

    from xylen.core.settings import Settings
    from xylen.train import honesty, pipeline

    spent = {"assess": 0.0, "raw": 0.0}

    def timed(key, fn):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[key] += time.perf_counter() - t0
        return wrapper

    pipeline.assess = timed("assess", honesty.assess)  # type: ignore[assignment]
    evaluate._oriented = timed("raw", evaluate._oriented)  # type: ignore[assignment]
    runs: dict[str, list[tuple[float, float, float]]] = {"direction + move head (default)": [],
                                                          "direction, --extra-head none": []}
    for _ in range(repeat):
        for name, head in (("direction + move head (default)", "auto"), ("direction, --extra-head none", "none")):
            with tempfile.TemporaryDirectory() as home:
                spent.update(assess=0.0, raw=0.0)
                settings = Settings(home=Path(home), profile="8gb", extra_head=head)
                t0 = time.perf_counter()
                pipeline.train(settings, pipeline.TrainOptions())
                runs[name].append((time.perf_counter() - t0, spent["assess"], spent["raw"]))
    for name, rs in runs.items():
        total, assess_s, raw_s = (float(np.median([r[i] for r in rs])) for i in range(3))
        print(f"{name}: train {total:.2f} s; intervals + backtest {assess_s:.2f} s ({assess_s / total:.1%}); raw "
              f"baselines {raw_s:.3f} s ({raw_s / total:.1%}); runs {[round(r[0], 2) for r in rs]}")


if __name__ == "__main__":
    main()
