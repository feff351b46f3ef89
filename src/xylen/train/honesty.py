"""What the walk-forward says a model is worth, in figures that cannot flatter it.

For every head (the primary label, and an extra head such as the move-size head):
- its AUC, the mean over folds, with a 95% day-block bootstrap interval (train/bootstrap.py);
- the strongest baseline: the best mean-over-folds AUC among the fitted volatility-only learner and the raw
  volatility features (mean 12-candle range, 48-candle return std), each fitted or oriented on training rows only.
  Picking the strongest after seeing the test windows favours the baseline, never the model;
- the edge, AUC(model) - AUC(strongest baseline), with its paired interval, and the verdict its interval allows:
  "measurable" (the interval lies above 0), "none measurable" (it includes 0), "below the baseline" (under 0);
- the up-vs-down AUC: the same probabilities scored against the sign of the move, which says whether a head that
  "predicts a rise above theta" knows the direction or only that the market will move.

Then a backtest that matches the label (train/backtest.py) and one sentence that says it all.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from xylen.core.labels import LabelSpec
from xylen.train import backtest, bootstrap, metrics
from xylen.train.dataset import Dataset
from xylen.train.evaluate import Evaluation, HeadScores

DIRECTIONAL = ("direction", "threshold", "triple-barrier")  # a head whose 1 means "go long"


def verdict(edge: bootstrap.Interval) -> str:
    if not np.isfinite(edge.low):
        return "not measurable (too few days for an interval)"
    if edge.low > 0:
        return "measurable"
    if edge.high < 0:
        return "below the baseline"
    return "none measurable"


def _fold_mean_auc(y: np.ndarray, score: np.ndarray, fold: np.ndarray) -> float:
    aucs = [metrics.auc(y[fold == k], score[fold == k]) for k in np.unique(fold)]
    return float(np.nanmean(aucs)) if aucs else float("nan")


def assess_head(
    head: HeadScores, spec: LabelSpec, up: np.ndarray, open_time: np.ndarray, fold: np.ndarray, primary: bool
) -> dict[str, Any]:
    model = head.scores["model"]
    candidates = {n: _fold_mean_auc(head.y, s, fold) for n, s in head.scores.items() if n != "model"}
    best = max(candidates, key=lambda n: -np.inf if np.isnan(candidates[n]) else candidates[n])
    auc = bootstrap.auc_interval(head.y, model, open_time, fold)
    edge = bootstrap.auc_edge_interval(head.y, model, head.scores[best], open_time, fold)
    auc_up = auc if spec.kind == "direction" else bootstrap.auc_interval(up, model, open_time, fold)
    return {
        "kind": spec.kind,
        "field": "probability" if primary else spec.output_field,
        "primary": primary,
        "predicts": spec.predicts(),
        "auc": auc.to_dict(),
        "baseline": {"name": best, "auc": candidates[best], "candidates": candidates},
        "edge": edge.to_dict(),
        "verdict": verdict(edge),
        "auc_up": auc_up.to_dict(),
    }


def can_hold(ds: Dataset, horizon: int) -> np.ndarray:
    """Rows i whose candles i..i+horizon are consecutive: a trade from i may be held ``horizon`` candles."""
    n = len(ds.close)
    breaks = np.concatenate(([0], np.cumsum(~ds.contiguous_next[:-1]))) if n else np.zeros(0, dtype=np.int64)
    ok = np.zeros(n, dtype=bool)
    if n > horizon:
        ok[: n - horizon] = breaks[horizon:] == breaks[: n - horizon]
    return ok


def assess(
    ds: Dataset,
    ev: Evaluation,
    primary: LabelSpec,
    extra: Sequence[LabelSpec] = (),
    *,
    fee: float,
    entry_threshold: float,
) -> tuple[dict[str, Any], backtest.Backtest | None]:
    """The ``metrics["honesty"]`` record (see core/summary.py) and the backtest behind its "backtest" entry."""
    idx, fold = ev.test_index, ev.test_fold
    open_time = ds.open_time[idx]
    up = np.nan_to_num(ds.up[idx] if ds.up is not None else np.zeros(len(idx)), nan=0.0)
    specs = {"primary": primary, **{s.kind: s for s in extra}}
    heads = [assess_head(h, specs[h.kind], up, open_time, fold, h.kind == "primary") for h in ev.heads]
    # the backtest goes long on the head whose 1 means "up": the primary if it is one, else a direction head
    long_head = None
    for h, rec in zip(ev.heads, heads):  # the primary comes first
        if (rec["primary"] and rec["kind"] in DIRECTIONAL) or rec["kind"] == "direction":
            long_head = h
            break
    bt = None
    if long_head is not None:
        vol_col = ds.fs.indices([ds.fs.raw_volatility[0]])[0]
        bt = backtest.run(
            ds.open_time, ds.close, can_hold(ds, primary.horizon), idx, long_head.scores["model"] >= entry_threshold,
            np.nan_to_num(ds.X[idx, vol_col], nan=0.0), horizon=primary.horizon, fee=fee,
        )
    bt_record = None if bt is None or long_head is None else bt.to_dict() | {
        "entry_threshold": entry_threshold,
        "signal": "probability" if long_head.kind == "primary" else "up_probability",
    }
    return {"heads": heads, "sentence": sentence(heads, bt_record), "backtest": bt_record}, bt


def _iv(d: dict[str, Any], digits: int, signed: bool = False) -> str:
    fmt = f"{{:{'+' if signed else ''}.{digits}f}}"
    if d.get("value") is None:  # every fold had one class: no AUC at all
        return "n/a"
    if d.get("low") is None or d.get("high") is None:
        return f"{fmt.format(d['value'])} [no interval]"
    return f"{fmt.format(d['value'])} [{fmt.format(d['low'])}, {fmt.format(d['high'])}]"


BASELINE_NAMES = {
    "volatility_learner": "the volatility-only learner",
    "range_12": "the mean 12-candle range",
    "vol_48": "the 48-candle return std",
}


def head_phrase(h: dict[str, Any]) -> str:
    base = BASELINE_NAMES.get(h["baseline"]["name"], h["baseline"]["name"])
    edge = f"{_iv(h['edge'], 3, True)} over {base}: {h['verdict']}"
    if h["kind"] == "move":
        return f"forecasts move size (AUC {_iv(h['auc'], 2)}; {edge})"
    if h["kind"] == "direction":
        return f"direction AUC {_iv(h['auc'], 3)}, edge {edge}"
    what = "a rise above its threshold" if h["kind"] == "threshold" else "the upper barrier first"
    return f"forecasts {what} (AUC {_iv(h['auc'], 2)}), edge {edge}; up-vs-down AUC {_iv(h['auc_up'], 3)}"


def trades_phrase(bt: dict[str, Any] | None) -> str | None:
    if not bt:
        return None
    t = bt["model"]
    if not t["trades"]:
        return f"its signal ({bt['signal']} >= {bt['entry_threshold']:g}) never fired out of sample"
    tstat = f", t {t['t_stat']:+.1f}" if t["t_stat"] is not None else ""
    return (
        f"long trades at {bt['signal']} >= {bt['entry_threshold']:g} held {bt['horizon']} candles make "
        f"{t['gross_bp']:+.1f} bp gross, {t['net_bp']:+.1f} bp net of fees per trade ({t['trades']} trades{tstat})"
    )


def sentence(heads: list[dict[str, Any]], bt: dict[str, Any] | None = None) -> str:
    """One sentence for the model: the move-size head first (what it knows best), then the direction, then what
    trading its signal would have earned."""
    ordered = sorted(heads, key=lambda h: 0 if h["kind"] == "move" else 1)
    parts = [head_phrase(h) for h in ordered]
    trades = trades_phrase(bt)
    return "; ".join(parts + ([trades] if trades else []))
