"""The training report: pictures a person would rather look at than read, in one self-contained HTML file
(plus the same pictures as PNG files) inside the bundle folder."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import numpy as np

from xylen.core.bundle import Manifest
from xylen.core.candles import fmt_ts
from xylen.train.backtest import Backtest
from xylen.train.dataset import Dataset
from xylen.train.evaluate import Evaluation
from xylen.train.honesty import _iv


def _figures(ev: Evaluation, bt: Backtest | None, ds: Dataset) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")  # no display needed; safe on servers
    import matplotlib.pyplot as plt

    out: dict[str, bytes] = {}

    def save(fig: Any, name: str) -> None:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        out[name] = buf.getvalue()

    # 1. per-fold AUC: model vs volatility-only baseline vs shuffled-label control
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    k = np.arange(len(ev.folds))
    width = 0.27
    ax.bar(k - width, [f.auc for f in ev.folds], width, label="model", color="#2563eb")
    ax.bar(k, [f.auc_volatility for f in ev.folds], width, label="volatility only", color="#f59e0b")
    ax.bar(k + width, [f.auc_shuffled for f in ev.folds], width, label="shuffled labels", color="#9ca3af")
    ax.axhline(0.5, color="black", lw=0.8, ls="--")
    lo = min(0.45, *(f.auc_shuffled for f in ev.folds), *(f.auc for f in ev.folds))
    hi = max(0.6, *(f.auc for f in ev.folds), *(f.auc_volatility for f in ev.folds))
    ax.set_ylim(lo - 0.02, hi + 0.06)  # headroom for the legend above the bars
    ax.set_xticks(k, [f"fold {f.index}\n{fmt_ts(f.test_first)[:10]}" for f in ev.folds], fontsize=8)
    ax.set_ylabel("out-of-sample AUC")
    ax.set_title("Walk-forward AUC per fold")
    ax.legend(fontsize=8, ncol=3, loc="upper left")
    save(fig, "fold_auc.png")

    # 2. equity curve vs buy-and-hold over the out-of-sample windows
    if bt is not None:
        fig, ax = plt.subplots(figsize=(7.5, 3.6))
        when = np.asarray(bt.open_time, dtype="datetime64[ms]")
        ax.plot(when, bt.equity, label=f"model ({bt.model.total_return:+.1%}, {bt.model.trades} trades)",
                color="#2563eb", lw=1.2)
        close = ds.close[ev.test_index]
        ax.plot(when, close / close[0], label=f"buy and hold ({bt.buy_hold:+.1%})", color="#6b7280", lw=1.0)
        ax.set_ylabel("equity (start = 1)")
        ax.set_title(f"Out-of-sample backtest: held {bt.horizon} candles, {bt.fee:.2%} fee per side")
        ax.legend(fontsize=8)
        fig.autofmt_xdate()
        save(fig, "equity.png")

    # 3. feature importance (share of total gain)
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    items = sorted(ev.importance.items(), key=lambda kv: kv[1])[-15:]
    ax.barh([n for n, _ in items], [v for _, v in items], color="#10b981")
    ax.set_xlabel("share of total split gain (all folds)")
    ax.set_title("Feature importance (top 15)")
    ax.tick_params(axis="y", labelsize=8)
    save(fig, "importance.png")
    return out


_CSS = (
    "body{font:14px/1.45 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#111}"
    "table{border-collapse:collapse;margin:.5rem 0 1.5rem}"
    "td,th{border:1px solid #ddd;padding:.25rem .6rem;text-align:right}"
    "th{background:#f3f4f6}td:first-child{text-align:left}img{max-width:100%}.v{font-weight:600}"
)


def esc_(v: Any) -> str:
    return html.escape(str(v))


def _table(rows: list[list[str]], head: list[str]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def heads_table(honesty: dict[str, Any]) -> list[list[str]]:
    """One row per head: output, AUC [interval], strongest baseline, edge [interval], verdict, up-vs-down AUC."""
    return [
        [
            f"{h['field']} ({h['kind']})",
            _iv(h["auc"], 4),
            f"{h['baseline']['name']} {h['baseline']['auc']:.4f}",
            _iv(h["edge"], 4, True),
            h["verdict"],
            _iv(h["auc_up"], 4),
        ]
        for h in honesty["heads"]
    ]


HEAD_COLUMNS = ["output", "AUC [95%]", "strongest baseline", "edge [95%]", "verdict", "up-vs-down AUC [95%]"]


def backtest_table(bt: dict[str, Any]) -> list[list[str]]:
    def row(name: str, t: dict[str, Any]) -> list[str]:
        def num(v: Any, fmt: str) -> str:
            return "-" if v is None else format(v, fmt)

        return [name, str(t["trades"]), num(t["gross_bp"], "+.1f"), num(t["net_bp"], "+.1f"), num(t["t_stat"], "+.2f"),
                f"{t['exposure']:.1%}", f"{t['total_return']:+.1%}"]

    return [row("model", bt["model"]), row("volatility timing, same exposure", bt["volatility_timing"]),
            ["buy and hold", "1", "", "", "", "100%", f"{bt['buy_hold']:+.1%}"]]


BACKTEST_COLUMNS = ["strategy", "trades", "gross bp/trade", "net bp/trade", "t (net)", "exposure", "total"]


def write_report(
    folder: Path, manifest: Manifest, ev: Evaluation, bt: Backtest | None, ds: Dataset, warnings: list[str]
) -> Path:
    figs = _figures(ev, bt, ds)
    (folder / "report").mkdir(exist_ok=True)
    for name, data in figs.items():
        (folder / "report" / name).write_bytes(data)
    m = manifest.metrics
    honesty = m["honesty"]
    verdict = f"{manifest.name} {manifest.version} {honesty['sentence']}."
    if m["auc_shuffled_mean"] > 0.53:
        verdict += " WARNING: the shuffled-label control scores above 0.53 -- the evaluation itself is suspect."
    summary = _table(heads_table(honesty), HEAD_COLUMNS) + _table(
        [
            ["AUC, shuffled-label control", f"{m['auc_shuffled_mean']:.4f}"],
            ["log-loss (base rate)", f"{m['logloss_mean']:.4f} ({m['logloss_base_mean']:.4f})"],
            ["Brier (base rate)", f"{m['brier_mean']:.4f} ({m['brier_base_mean']:.4f})"],
            ["peak memory while training", f"{m.get('peak_rss_mb', float('nan')):.0f} MB"],
        ],
        ["metric", "value"],
    )
    if honesty.get("backtest"):
        b = honesty["backtest"]
        summary += (f"<p>Backtest: {esc_(b['rule'])}; signal: {esc_(b['signal'])} >= {b['entry_threshold']:g}."
                    "</p>" + _table(backtest_table(b), BACKTEST_COLUMNS))
    folds = _table(
        [
            [
                str(f.index),
                f"{fmt_ts(f.test_first)} .. {fmt_ts(f.test_last)}",
                str(f.train_rows),
                str(f.test_rows),
                str(f.purged),
                f"{f.auc:.4f}",
                f"{f.auc_volatility:.4f}",
                f"{f.auc_shuffled:.4f}",
                f"{f.logloss:.4f}",
                f"{f.logloss_base:.4f}",
                str(f.best_iteration),
            ]
            for f in ev.folds
        ],
        [
            "fold",
            "test window",
            "fit rows",
            "test rows",
            "purged",
            "AUC",
            "AUC vol",
            "AUC shuffled",
            "log-loss",
            "base log-loss",
            "trees",
        ],
    )
    imgs = "".join(
        f'<figure><img alt="{n}" src="data:image/png;base64,{base64.b64encode(d).decode()}"></figure>'
        for n, d in figs.items()
    )
    warn = "".join(f"<li>{html.escape(w)}</li>" for w in warnings)
    tw = manifest.training_window
    esc = html.escape
    window = f"{fmt_ts(tw.first_open_time)} .. {fmt_ts(tw.last_open_time)} ({tw.rows} rows)" if tw else "?"
    about = (
        f"{esc(manifest.symbol or '')} {esc(manifest.interval or '')}, "
        f"label: {esc(str(manifest.label.get('description', '')))}; training window {window}; "
        f"profile {esc(str(manifest.profile.get('name')))}; feature set {esc(manifest.feature_set.version)}; "
        f"created {esc(manifest.created_at)}."
    )
    doc = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>xylen report: {esc(manifest.name)} {esc(manifest.version)}</title><style>{_CSS}</style></head><body>
<h1>{esc(manifest.name)} <small>{esc(manifest.version)}</small></h1>
<p>{about}</p>
<p class="v">{esc(verdict)}</p>
{summary}{imgs}<h2>Folds</h2>{folds}
<h2>Notes</h2><ul>{warn or "<li>none</li>"}</ul>
<p>Intervals: 95% day-block bootstrap (UTC days resampled within each fold, 2,000 resamples, widened for few
days). The baseline is the strongest of the fitted volatility-only learner and the raw volatility features, each
fitted or oriented on training rows only; "none measurable" means the edge's interval includes 0.</p>
<p>Walk-forward: each test window is preceded by purged rows (labels that would overlap it); early stopping
uses a purged validation slice at the end of each training window. AUC near 0.5 is a coin flip; the
shuffled-label control must sit there (it checks the scoring, not the features: a feature that reads the future
would not move it).</p>
</body></html>"""
    path = folder / "report.html"
    path.write_text(doc, encoding="utf-8")
    return path
