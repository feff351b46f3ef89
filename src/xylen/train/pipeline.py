"""The training pipeline behind `xylen train` (and later `xylen retrain`): callable without the CLI."""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources as ir
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from xylen.core import features, featuresets, labels
from xylen.core.bundle import (
    Golden,
    Head,
    Manifest,
    TrainingWindow,
    artifact_info,
    load_bundle,
    make_golden,
    new_manifest,
    write_manifest,
)
from xylen.core.candles import ReadResult, combine, fmt_ts, infer_interval, read_candles, validate
from xylen.core.errors import ConfigError, DataError, TrainingError, XylenError
from xylen.core.intervals import approx_ms
from xylen.core.markets import (
    DEFAULT_EXCHANGE,
    canonical_symbol,
    check_exchange,
    exchange_flag,
    market_label,
    model_name,
)
from xylen.core.registry import Registry, check_name, open_registry
from xylen.core.settings import Settings
from xylen.core.store import open_store
from xylen.profiles import Profile, resolve
from xylen.train import evaluate
from xylen.train.dataset import Dataset, build
from xylen.train.honesty import assess
from xylen.train.threads import training_threads

SAMPLE_FILE = "BTCUSDT-5m-2023.parquet"
SAMPLE_SERIES = ("BTCUSDT", "5m")
BASE_RSS_BYTES = 300 * 2**20  # python + numpy + polars + lightgbm + matplotlib, measured ~250 MB
BYTES_PER_ROW = 1600  # features, fold subsets, LightGBM bins, transient windows (measured ~1.2 KB)
N_GOLDEN = 8
OHLCV = ("open", "high", "low", "close", "volume")

Progress = Callable[[str, float], None]  # (step description, fraction done 0..1)


@dataclass
class TrainOptions:
    data: Sequence[Path] = ()
    symbol: str | None = None
    interval: str | None = None
    name: str | None = None
    promote: bool = True
    exchange: str | None = None  # whose candles in the store (default: the exchange setting, binance)


@dataclass
class TrainResult:
    name: str
    version: str
    bundle: Path
    promoted: bool
    symbol: str
    interval: str
    source: str
    exchange: str
    rows_total: int
    rows_used: int
    metrics: dict[str, Any]
    folds: list[dict[str, Any]]
    profile: dict[str, Any]
    report: Path | None
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    peak_rss_mb: float = 0.0
    pruned: list[str] = field(default_factory=list)  # old versions removed by the retention (XYLEN_KEEP_VERSIONS)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "bundle": str(self.bundle),
            "promoted": self.promoted,
            "symbol": self.symbol,
            "interval": self.interval,
            "exchange": self.exchange,
            "source": self.source,
            "rows_total": self.rows_total,
            "rows_used": self.rows_used,
            "metrics": self.metrics,
            "folds": self.folds,
            "profile": self.profile,
            "report": str(self.report) if self.report else None,
            "warnings": self.warnings,
            "seconds": round(self.seconds, 2),
            "peak_rss_mb": round(self.peak_rss_mb, 1),
            "pruned": self.pruned,
        }


def peak_rss_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 2**20 if sys.platform == "darwin" else r / 1024  # bytes on macOS, KiB on Linux


def sample_path() -> Path:
    return Path(str(ir.files("xylen.data").joinpath(SAMPLE_FILE)))


def load_candles(settings: Settings, opts: TrainOptions, warnings: list[str]) -> tuple[pl.DataFrame, str, str, str]:
    """Candles from --data files, else the exchange's store, else (Binance's default series) the bundled sample."""
    if opts.data:
        reads: list[ReadResult] = [read_candles(p, interval=opts.interval, symbol=opts.symbol) for p in opts.data]
        symbols = {r.symbol for r in reads if r.symbol}
        intervals = {r.interval for r in reads if r.interval}
        if len(symbols) > 1 and not opts.symbol:
            raise DataError(
                f"The --data files hold several symbols: {sorted(symbols)}.",
                hint="train one series at a time, or pass --symbol to name it.",
            )
        if len(intervals) > 1:
            raise DataError(
                f"The --data files hold several intervals: {sorted(intervals)}.", hint="train one interval at a time."
            )
        df, merged = combine(reads)
        if merged:
            warnings.append(f"{merged} candle(s) appeared more than once across or within the files; kept once.")
        interval = opts.interval or next(iter(intervals), None) or infer_interval(df)
        if interval is None:
            raise DataError(f"Cannot tell the interval of {[str(p) for p in opts.data]}.", hint="pass --interval 5m.")
        symbol = canonical_symbol(opts.symbol or next(iter(symbols), None) or settings.symbol)
        for r in reads:
            warnings += [f"{Path(r.source).name}: {n}" for n in r.notes]
        source = ", ".join(str(p) for p in opts.data)
        return df, symbol, interval, source
    symbol = canonical_symbol(opts.symbol) if opts.symbol else settings.symbol
    interval = opts.interval or settings.interval
    exchange = exchange_of(settings, opts)
    store = open_store(settings, exchange)
    df = store.read(symbol, interval)
    if df.height:
        return df, symbol, interval, f"store {store.series_location(symbol, interval)}"
    on = exchange_flag(exchange)
    if (symbol, interval) == SAMPLE_SERIES and exchange == DEFAULT_EXCHANGE:
        warnings.append(
            f"No {symbol} {interval} candles in the store; trained on the bundled 2023 sample. "
            "Run `xylen collect` for current data."
        )
        return read_candles(sample_path()).frame, symbol, interval, f"bundled sample {SAMPLE_FILE}"
    raise DataError(
        f"No {market_label(exchange, symbol)} {interval} candles in the store {str(store.klines)!r}.",
        hint=f"collect them (`xylen collect{on} --symbols {symbol} --intervals {interval} --once`) "
        "or pass files with --data.",
    )


def exchange_of(settings: Settings, opts: TrainOptions) -> str:
    """The exchange a model is trained for: --exchange, else the exchange setting (binance)."""
    return check_exchange(opts.exchange) if opts.exchange else settings.exchange


def cap_rows(n_rows: int, profile: Profile, step_ms: int) -> tuple[int, str | None]:
    """Rows to keep: the profile's training window, cut further so the estimated peak stays under the cap."""
    window = int(profile.train_window_days * 86_400_000 // step_ms)
    by_memory = int((profile.memory_gb * 2**30 - BASE_RSS_BYTES) // BYTES_PER_ROW)
    if by_memory < 5_000:
        raise TrainingError(
            f"A memory cap of {profile.memory_gb:g} GB leaves room for only {max(by_memory, 0)} rows.",
            hint="raise LGBM_MAX_MEMORY_GB (at least 0.5) or use a larger profile.",
        )
    keep = min(n_rows, window, by_memory)
    reason = None
    if keep < n_rows:
        reason = "the memory cap" if by_memory < window else f"the profile's {profile.train_window_days}-day window"
    return keep, reason


def train(
    settings: Settings,
    opts: TrainOptions,
    profile: Profile | None = None,
    progress: Progress | None = None,
    *,
    registry: Registry | None = None,
) -> TrainResult:
    """``registry``: where the bundle is published (default: settings' models folder); a cluster task passes one
    that keeps the files for its client (train/cluster.py)."""
    t0 = time.perf_counter()
    say = progress or (lambda _s, _f: None)
    warnings: list[str] = []
    profile = profile or resolve(
        settings.profile, max_memory_gb=settings.lgbm_max_memory_gb, num_threads=settings.lgbm_num_threads
    )
    threads, why = training_threads(profile.threads, explicit=settings.lgbm_num_threads is not None)
    if why:
        warnings.append(why)
        profile = replace(profile, threads=threads)
    spec, extra = label_specs(settings)
    if spec.kind in ("threshold", "triple-barrier") and spec.threshold < 2 * settings.fee:
        warnings.append(
            f"The label threshold {spec.threshold:g} is below the round-trip fee {2 * settings.fee:g}: "
            "a positive label may still lose money."
        )
    from xylen.core.imports import import_lightgbm

    import_lightgbm()  # before evaluate or anything else imports it with scikit-learn & co (seconds of start-up)
    say("Reading candles", 0.02)
    df, symbol, interval, source = load_candles(settings, opts, warnings)
    exchange = exchange_of(settings, opts)
    name = check_name(opts.name or model_name(symbol, interval, exchange))
    report = validate(df, interval, source)
    if report.gaps:
        warnings.append(
            f"{len(report.gaps)} gap(s), {report.missing} missing candle(s) (largest after "
            f"{fmt_ts(max(report.gaps, key=lambda g: g[1])[0])}); windows spanning them are left out."
        )
    if report.zero_volume:
        warnings.append(f"{report.zero_volume} zero-volume candle(s) (exchange halts); kept as recorded.")
    keep, reason = cap_rows(df.height, profile, approx_ms(interval))
    if reason:
        warnings.append(f"Training window cut to the most recent {keep} of {df.height} candles by {reason}.")
        df = df.tail(keep)
    fs = featuresets.get(settings.feature_set, interval)
    say("Computing features and labels", 0.08)
    ds = build(df, interval, spec, fs, tuple(extra))
    if ds.valid.sum() == 0:
        need = f"the {fs.min_candles} of lookback ({fs.version}) plus the {spec.horizon}-candle horizon"
        if df.height >= fs.min_candles + spec.horizon:  # enough candles, but gaps cut every stretch short
            raise TrainingError(
                f"No usable rows: the {df.height} candles have gaps, and no stretch between two gaps holds {need}.",
                hint="collect the missing candles (`xylen collect --since ...`), or use a feature set that reads "
                "fewer candles (--features ohlcv-v2).",
            )
        raise TrainingError(f"No usable rows: {df.height} candles are fewer than {need}.", hint="use more candles.")
    folds = settings.folds

    def on_fold(k: int, n: int) -> None:
        say(f"Walk-forward fold {k}/{n}", 0.1 + 0.7 * (k - 1) / n)

    ev = evaluate.walk_forward(ds, profile, folds, spec.horizon, on_fold)
    say("Bootstrap intervals and the backtest", 0.78)
    honesty, bt = assess(ds, ev, spec, extra, fee=settings.fee, entry_threshold=settings.entry_threshold)
    metrics = summarize(ev, honesty)
    say("Training the final model", 0.82)
    import lightgbm as lgb

    rows = ds.rows
    best = [f.best_iteration for f in ev.folds]
    rounds = max(10, int(np.median(best)))
    params = evaluate.lgb_params(profile)
    params_final = {k: v for k, v in params.items() if k != "metric"}
    dset = lgb.Dataset(ds.X[rows], label=ds.y[rows], feature_name=list(fs.names), params={"max_bin": profile.max_bin})
    booster = lgb.train(params_final, dset, num_boost_round=rounds)
    head_models = []
    for h in extra:  # the same rows and bins; only the labels (and the tree count early stopping chose) differ
        head_set = lgb.Dataset(ds.X[rows], label=(ds.heads or {})[h.kind][rows], reference=dset)
        head_rec = next(r for r in honesty["heads"] if r["kind"] == h.kind and not r["primary"])
        head_rounds = max(10, int(np.median(next(e for e in ev.heads if e.kind == h.kind).best_iterations)))
        head_models.append(
            HeadModel(
                h,
                lgb.train(params_final, head_set, num_boost_round=head_rounds),
                {k: head_rec[k] for k in ("auc", "edge", "verdict", "baseline")} | {"num_boost_round": head_rounds},
            )
        )
    registry = registry or open_registry(settings)
    say("Writing the bundle and report", 0.9)
    peak = peak_rss_mb()
    metrics["peak_rss_mb"] = round(peak, 1)
    from xylen.train.report import write_report

    def finalize(folder: Path, manifest: Manifest, version: str) -> None:  # the report names the version publish chose
        write_report(folder, manifest.model_copy(update={"version": version}), ev, bt, ds, warnings)

    version = publish_booster(
        registry,
        name,
        booster,
        heads=head_models,
        finalize=finalize,
        feature_set={"version": fs.version, "names": list(fs.names)},
        label=spec.to_dict(),
        symbol=symbol,
        interval=interval,
        exchange=exchange,
        training_window=TrainingWindow(
            first_open_time=int(ds.open_time[rows[0]]), last_open_time=int(ds.open_time[rows[-1]]), rows=len(rows)
        ),
        profile=profile.to_dict(),
        params=params_final | {"num_boost_round": rounds},
        metrics=metrics
        | {
            "folds": [f.__dict__ for f in ev.folds],
            "importance": ev.importance,
            "data_source": source,
            "warnings": warnings,
        },
        golden=golden_of(booster, ds, df, rows),
    )
    bundle_dir = registry.path(name, version)
    if opts.promote:
        registry.promote(name, version)
    try:  # retention; the new version is published (and live) already, so a failed clean-up is only a warning
        pruned = registry.prune(name, settings.keep_versions)
    except XylenError as exc:
        pruned = []
        warnings.append(f"old versions were not pruned: {exc.message} hint: {exc.hint}")
    say("Done", 1.0)
    return TrainResult(
        name=name,
        version=version,
        bundle=bundle_dir,
        promoted=opts.promote,
        symbol=symbol,
        interval=interval,
        source=source,
        exchange=exchange,
        rows_total=df.height,
        rows_used=len(rows),
        metrics=metrics,
        folds=[f.__dict__ for f in ev.folds],
        profile=profile.to_dict(),
        report=bundle_dir / "report.html",
        warnings=warnings,
        seconds=time.perf_counter() - t0,
        peak_rss_mb=peak_rss_mb(),
        pruned=pruned,
    )


@dataclass
class HeadModel:
    """An extra head to publish beside the primary booster: its label, its booster, and its metrics."""

    spec: labels.LabelSpec
    booster: Any
    metrics: dict[str, Any] = field(default_factory=dict)


def publish_booster(
    registry: Registry,
    name: str,
    booster: Any,
    *,
    heads: Sequence[HeadModel] = (),
    finalize: Callable[[Path, Manifest, str], None] | None = None,
    **fields: Any,
) -> str:
    """Write ``booster`` (and the ``heads``' boosters, as <kind>.txt) and its manifest (``fields`` + the artifacts)
    as the next version of ``name``: staged where no reader looks, loaded exactly as a server would load it, then
    made visible whole. The heads' golden outputs are their predictions for the primary's golden rows and window.
    Returns the version."""
    with registry.stage(name) as staging:
        model_file = staging / "model.txt"
        booster.save_model(str(model_file))
        golden: Golden = fields.pop("golden")
        extra = []
        for h in heads:
            head_file = staging / f"head-{h.spec.kind}.txt"
            h.booster.save_model(str(head_file))
            outputs, window_output = _head_golden(h.booster, golden, fields)
            extra.append(
                Head(
                    artifact=artifact_info(head_file),
                    label=h.spec.to_dict(),
                    golden_outputs=outputs,
                    window_output=window_output,
                    metrics=h.metrics,
                )
            )
        manifest = new_manifest(
            name=name,
            version="v0000",
            backend="lightgbm",
            artifact=artifact_info(model_file),
            golden=golden,
            heads=extra,
            **fields,
        )
        write_manifest(staging, manifest)
        load_bundle(staging)  # verify what we wrote exactly as a server would, before anyone can see it
        if finalize is None:
            return registry.publish(name, staging)
        done = finalize
        return registry.publish(name, staging, lambda folder, version: done(folder, manifest, version))


def golden_picks(rows: np.ndarray) -> np.ndarray:
    """The golden rows among the fitted ``rows``: N_GOLDEN of them, spread evenly."""
    return rows[np.linspace(0, len(rows) - 1, N_GOLDEN).astype(int)]


def golden_of(
    booster: Any, ds: Dataset, df: pl.DataFrame, rows: np.ndarray, X_golden: np.ndarray | None = None
) -> Golden:
    """Golden rows spread over the fitted rows, and the candle window of the last one, with the booster's outputs.
    ``X_golden``: the golden rows' features when ``ds`` does not hold them (a data-parallel retrain gathers them
    from the workers); ``rows`` index ``df``."""
    golden_rows = ds.X[golden_picks(rows)] if X_golden is None else X_golden
    last = int(rows[-1])
    lb = ds.fs.lookback
    window = np.column_stack(
        [
            df["open_time"].to_numpy()[last - lb : last + 1].astype(np.float64),
            *(df[c].to_numpy()[last - lb : last + 1] for c in OHLCV),
        ]
    )
    return make_golden(lambda X: booster.predict(X, num_threads=1), golden_rows, window, ds.fs)


def _head_golden(booster: Any, golden: Golden, fields: dict[str, Any]) -> tuple[list[float], float | None]:
    """A head's outputs for the primary's golden rows and golden candle window."""
    rows = np.array([[np.nan if v is None else v for v in r] for r in golden.rows], dtype=np.float64)
    outputs = np.asarray(booster.predict(rows, num_threads=1), dtype=np.float64).tolist()
    if golden.window is None:
        return outputs, None
    fs_fields = fields["feature_set"]
    fs = featuresets.for_manifest(fs_fields["version"], list(fs_fields["names"]), fields.get("interval"))
    if fs is None:
        raise TrainingError(f"Feature set {fs_fields['version']!r} is not computed by this xylen.",
                            hint="this is a bug: heads are trained on a feature set xylen computes.")
    row = fs.last_row(features.CandleArrays.from_matrix(np.asarray(golden.window, dtype=np.float64)))
    return outputs, float(booster.predict(row.reshape(1, -1), num_threads=1)[0])


def label_specs(settings: Settings) -> tuple[labels.LabelSpec, list[labels.LabelSpec]]:
    """The primary label and the extra heads' labels (same horizon and theta) that settings ask for."""
    spec = labels.LabelSpec(
        horizon=settings.label_horizon,
        threshold=settings.label_threshold,
        kind=settings.label,
        lower=settings.label_lower_barrier if settings.label == "triple-barrier" else None,
    )
    head = settings.extra_head
    if head == "auto":
        head = "none" if spec.kind == "move" else "move"
    if head == "none":
        return spec, []
    if head == spec.kind:
        other = "direction" if head == "move" else "move"
        raise ConfigError(
            f"The extra head {head!r} is the label itself.",
            hint=f"choose --extra-head {other}, or --extra-head none for --label {spec.kind}.",
        )
    try:
        return spec, [labels.LabelSpec(horizon=spec.horizon, threshold=settings.label_threshold, kind=head)]
    except ConfigError as exc:  # e.g. --threshold 0: fine for a direction label, not for the default move head
        raise ConfigError(
            f"The extra {head} head (--extra-head {settings.extra_head}): {exc.message}",
            hint=f"{(exc.hint or 'fix the threshold.').rstrip('.')}, or train without it: --extra-head none.",
        ) from None


def summarize(ev: evaluate.Evaluation, honesty: dict[str, Any]) -> dict[str, Any]:
    auc = ev.mean("auc")
    auc_vol = ev.mean("auc_volatility")
    primary = honesty["heads"][0]
    return {
        "auc_mean": auc,
        "auc_volatility_mean": auc_vol,
        "auc_shuffled_mean": ev.mean("auc_shuffled"),
        # the edge over the strongest volatility baseline (the fitted learner or a raw feature), interval in honesty
        "auc_edge_vs_volatility": primary["edge"]["value"],
        "auc_baseline_mean": primary["baseline"]["auc"],
        "baseline": primary["baseline"]["name"],
        "logloss_mean": ev.mean("logloss"),
        "logloss_base_mean": ev.mean("logloss_base"),
        "brier_mean": ev.mean("brier"),
        "brier_base_mean": ev.mean("brier_base"),
        "base_rate_mean": ev.mean("base_rate"),
        "n_folds": len(ev.folds),
        "backtest": honesty["backtest"],
        "honesty": honesty,
    }
