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
    args = ap.parse_args()
    import_lightgbm()
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


if __name__ == "__main__":
    main()
