"""One model trained data-parallel on a Dask cluster (`xylen train --cluster ADDR --distributed`).

The training matrix never exists on one machine. Each month partition of the series in the store is one task
(:func:`build_block`): a worker reads that month through :class:`~xylen.core.store.Store` (so tails and the
one-row-per-open_time rule are honoured), plus the ``lookback`` candles before it and the ``horizon`` candles after
it, computes features and labels with xylen's own code (:func:`xylen.train.dataset.build`), and keeps the month's
own rows. The features of a row read only the ``lookback`` candles before it, its labels only the ``horizon``
after, so every row equals the row a local build of the whole series makes (a test proves it row for row). The
blocks stay in the workers' memory; :class:`lightgbm.dask.DaskLGBMClassifier` fits on them where they lie (each
worker its share of the months), with LightGBM's network time-out at one minute.

What comes back to this machine is narrow: open times, closes, labels, which rows are usable, and the two raw
volatility features (the baselines), plus the features of the held-out window (to score it) and of the eight
golden rows. The evaluation is local training's last walk-forward fold (the same split, purge and validation
slice): the model, the volatility-only learner and the shuffled-label control are fitted on the cluster on that
fold's rows, the number of trees chosen by early stopping's own rule on the validation slice's log-loss, and
scored on the held-out window with the same honesty code (bootstrap intervals, baselines, backtest) as
`xylen train`. The final model (and each extra head) is fitted on every usable row with that number of trees,
and published through the registry as local training publishes (staged, verified, then promoted).

A worker that dies during a fit fails the job: LightGBM's tasks are pinned to their workers, so Dask cannot run
them elsewhere; this process watches the fit's workers and stops at once with exit 5 (TrainingError), before
anything is published.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xylen.core import featuresets, labels
from xylen.core.errors import DataError, TrainingError, XylenError
from xylen.core.settings import Settings

NETWORK_TIMEOUT_MIN = 1  # LightGBM's socket time-out (minutes, its unit): a silent peer fails the fit in a minute
WATCH_S = 0.2  # how often the fit's workers are checked while it runs
_PARTITION = re.compile(r"year=(\d{4})[/\\]month=(\d{1,2})")


# -- the tasks (run on the workers) -----------------------------------------------------------------------------
@dataclass
class Block:
    """One month's rows of the training matrix (dataset.Dataset's arrays, restricted to the month)."""

    open_time: np.ndarray
    close: np.ndarray
    X: np.ndarray | None
    y: np.ndarray
    valid: np.ndarray
    contiguous_next: np.ndarray
    up: np.ndarray
    heads: dict[str, np.ndarray] = field(default_factory=dict)
    raw: np.ndarray | None = None  # the raw volatility features (the baselines), narrow enough to gather


def build_block(
    settings: Settings,
    exchange: str,
    symbol: str,
    interval: str,
    bounds: tuple[int, int],
    window_start: int,
    spec: labels.LabelSpec,
    extra: tuple[labels.LabelSpec, ...],
) -> Block:
    """The rows of [start, end) with the features and labels a local build of the whole series gives them: read
    with the ``lookback`` candles before (never before ``window_start``, where local training's window starts)
    and the ``horizon`` candles after."""
    from xylen.core.candles import validate
    from xylen.core.intervals import approx_ms
    from xylen.core.store import open_store
    from xylen.train.dataset import build

    start, end = bounds
    fs = featuresets.get(settings.feature_set, interval)
    step = approx_ms(interval)
    ahead = max([spec.horizon, *(h.horizon for h in extra)])
    store = open_store(settings, exchange)  # XYLEN_DATA_URL (s3://: no shared volume), else XYLEN_HOME/data
    # a few candles more each way than needed: more context never changes a row (features and labels read a
    # fixed number of rows), and a month's candle (1M) is not exactly approx_ms long
    lo = max(window_start, start - (fs.lookback + 2) * step)
    df = store.read(symbol, interval, lo, end + (ahead + 2) * step)
    if df.height:
        validate(df, interval, f"store {store.series_location(symbol, interval)}")
    ds = build(df, interval, spec, fs, extra)
    own = (ds.open_time >= max(start, window_start)) & (ds.open_time < end)
    raw_cols = fs.indices(fs.raw_volatility)
    return Block(
        open_time=ds.open_time[own], close=ds.close[own], X=np.ascontiguousarray(ds.X[own]), y=ds.y[own],
        valid=ds.valid[own], contiguous_next=ds.contiguous_next[own],
        up=ds.up[own] if ds.up is not None else np.zeros(int(own.sum())),
        heads={k: v[own] for k, v in (ds.heads or {}).items()}, raw=ds.X[own][:, raw_cols],
    )


def narrow(block: Block) -> Block:
    """The block without its features: what this machine gathers of every row."""
    return Block(block.open_time, block.close, None, block.y, block.valid, block.contiguous_next, block.up,
                 block.heads, block.raw)


def take(block: Block, mask: np.ndarray, cols: Sequence[int] | None = None) -> np.ndarray:
    """The features of the block's rows in ``mask`` (all columns, or ``cols``), on the worker that holds it."""
    assert block.X is not None
    X = block.X[mask]
    return np.ascontiguousarray(X if cols is None else X[:, list(cols)])


def lightgbm_dask_problem() -> str | None:
    """Load lightgbm with its Dask estimators in this process (client or worker); what is missing, or None.

    xylen's other training loads lightgbm without its optional integrations (core/imports.py: seconds of start-up
    a per-market task does not need), and lightgbm decides at import whether it has them. A worker that ran such a
    task first gets them here: lightgbm's modules that depend on them are loaded again, now that they can be."""
    import importlib
    import sys

    try:
        import dask.dataframe  # noqa: F401 -- what lightgbm.dask and its estimators need
        import pandas  # noqa: F401
        import sklearn  # noqa: F401
    except ImportError as exc:
        return f"cannot import {exc.name or exc} (lightgbm.dask needs dask[dataframe], pandas and scikit-learn)"
    try:
        lgb = importlib.import_module("lightgbm")
        from lightgbm import compat

        if not (compat.SKLEARN_INSTALLED and compat.PANDAS_INSTALLED):  # loaded lean by xylen's other training
            importlib.reload(compat)
            for name in ("lightgbm.sklearn", "lightgbm.dask"):
                if name in sys.modules:
                    importlib.reload(sys.modules[name])
            importlib.reload(lgb)
        importlib.import_module("lightgbm.dask")
    except ImportError as exc:
        return f"cannot import lightgbm.dask ({exc})"
    if not (compat.SKLEARN_INSTALLED and compat.PANDAS_INSTALLED):
        return "lightgbm does not see scikit-learn and pandas"
    return None


def check_ready(client: Any, address: str) -> None:
    """ConfigError (exit 2) naming the workers that cannot run lightgbm.dask, before anything is computed."""
    from xylen.core.errors import ConfigError

    got = client.run(lightgbm_dask_problem, on_error="return")
    bad = [f"{w}: {v}" for w, v in sorted(got.items()) if v is not None]
    if bad:
        raise ConfigError(
            f"The Dask cluster at {address!r} cannot train with lightgbm.dask: {'; '.join(bad[:8])}.",
            hint="pip install 'xylen[dask]' on every worker (it brings scikit-learn and pandas), then restart them.",
        )


def logloss_curve(
    block: Block, mask: np.ndarray, y: np.ndarray, booster: Any, cols: Sequence[int] | None
) -> np.ndarray:
    """The summed log-loss of the block's rows in ``mask`` (labels ``y``) after each round of ``booster``, computed
    where the block lies: the validation curve early stopping reads, without moving the features."""
    X = take(block, mask, cols)
    n = booster.num_trees()
    out = np.zeros(n)
    raw = np.zeros(len(X))
    for i in range(n):
        raw += booster.predict(X, raw_score=True, start_iteration=i, num_iteration=1)
        p = np.clip(1.0 / (1.0 + np.exp(-raw)), 1e-15, 1 - 1e-15)
        out[i] = -float(np.sum(y * np.log(p) + (1 - y) * np.log(1 - p)))
    return out


# -- the client ---------------------------------------------------------------------------------------------------
def months_of(store: Any, symbol: str, interval: str) -> list[tuple[int, int]]:
    """[start, end) open times of each month partition the series has in the store, oldest first."""
    from xylen.core.store_files import Month

    found = set()
    for p in store.files(symbol, interval):
        if m := _PARTITION.search(p.as_posix()):
            found.add((int(m.group(1)), int(m.group(2))))
    return [Month(y, mo, "").bounds() for y, mo in sorted(found)]


@dataclass
class Matrix:
    """The training matrix on the cluster: one future per month block, and its narrow columns here."""

    client: Any
    blocks: list[Any]  # futures of Block, one per month, held by the workers
    sizes: list[int]
    open_time: np.ndarray
    close: np.ndarray
    y: np.ndarray
    valid: np.ndarray
    contiguous_next: np.ndarray
    up: np.ndarray
    heads: dict[str, np.ndarray]
    raw: np.ndarray
    fs: featuresets.FeatureSet

    @property
    def rows(self) -> np.ndarray:
        return np.flatnonzero(self.valid)

    def masks(self, rows: np.ndarray) -> list[np.ndarray]:
        """Per block, which of its rows are among the (global) ``rows``."""
        sel = np.zeros(len(self.valid), dtype=bool)
        sel[rows] = True
        edges = np.cumsum([0, *self.sizes])
        return [sel[a:b] for a, b in zip(edges[:-1], edges[1:])]

    def gather_X(self, rows: np.ndarray) -> np.ndarray:
        """The features of ``rows`` (sorted global indices), brought to this machine."""
        parts = [self.client.submit(take, b, m, pure=False) for b, m in zip(self.blocks, self.masks(rows)) if m.any()]
        got = self.client.gather(parts)
        return np.concatenate(got) if got else np.zeros((0, len(self.fs.names)))

    def dask_X(self, rows: np.ndarray, cols: Sequence[int] | None = None) -> Any:
        """The features of ``rows`` as a dask array whose chunks stay on the workers that hold the blocks."""
        import dask.array as da

        width = len(self.fs.names) if cols is None else len(cols)
        parts = []
        for b, m in zip(self.blocks, self.masks(rows)):
            if m.any():
                fut = self.client.submit(take, b, m, None if cols is None else list(cols), pure=False)
                parts.append(da.from_delayed(fut, shape=(int(m.sum()), width), dtype=np.float64))
        return da.concatenate(parts)

    def dask_y(self, y: np.ndarray, rows: np.ndarray) -> Any:
        import dask.array as da

        sizes = tuple(int(m.sum()) for m in self.masks(rows) if m.any())
        return da.from_array(np.ascontiguousarray(y[rows], dtype=np.float64), chunks=(sizes,))


def distributed_matrix(
    client: Any, settings: Settings, exchange: str, symbol: str, interval: str, months: list[tuple[int, int]],
    window_start: int, spec: labels.LabelSpec, extra: tuple[labels.LabelSpec, ...], tag: str,
) -> Matrix:
    """Submit one block task per month and gather the narrow columns."""
    fs = featuresets.get(settings.feature_set, interval)
    workers = sorted(client.nthreads())
    # months dealt round-robin over the workers (sorted by address), so each worker's months spread over the whole
    # period: LightGBM finds each feature's bins on one worker's rows. A block may run elsewhere if its worker is
    # gone before it starts.
    blocks = [
        client.submit(build_block, settings, exchange, symbol, interval, m, window_start, spec, extra,
                      key=f"xylen-block-{tag}-{i}", pure=False,
                      workers=[workers[i % len(workers)]] if workers else None, allow_other_workers=True)
        for i, m in enumerate(months)
    ]
    small: list[Block] = client.gather([client.submit(narrow, b, pure=False) for b in blocks])
    heads = {h.kind: np.concatenate([b.heads[h.kind] for b in small]) for h in extra}
    raw = np.concatenate([b.raw for b in small if b.raw is not None]) if small else np.zeros((0, 2))
    col = {a: np.concatenate([getattr(b, a) for b in small])
           for a in ("open_time", "close", "y", "valid", "contiguous_next", "up")}
    return Matrix(client, blocks, [len(b.open_time) for b in small], col["open_time"], col["close"], col["y"],
                  col["valid"], col["contiguous_next"], col["up"], heads=heads, raw=raw, fs=fs)


def dask_params(params: dict[str, Any], rounds: int) -> dict[str, Any]:
    """Local training's LightGBM parameters for lightgbm.dask's estimator: data-parallel, a short network
    time-out (a dead peer fails the fit instead of waiting two hours), one estimator per round."""
    out = {k: v for k, v in params.items() if k not in ("num_threads",)}  # lightgbm.dask sets each worker's
    return out | {"n_estimators": rounds, "tree_learner": "data", "time_out": NETWORK_TIMEOUT_MIN}


def best_iteration(curve: Sequence[float], early: int) -> int:
    """The round lgb.early_stopping keeps for a validation curve (1-based): the best so far, stopping once
    ``early`` rounds brought no improvement."""
    best, best_i = float("inf"), 0
    for i, v in enumerate(curve):
        if v < best:
            best, best_i = v, i
        elif i - best_i >= early:
            break
    return best_i + 1


def holders(client: Any, blocks: Sequence[Any]) -> set[str]:
    """The workers that hold the matrix's blocks, where the fit's chunks are taken (and LightGBM's tasks run, on
    the workers holding the chunks); every worker of the cluster when there are no blocks."""
    if not blocks:
        return set(client.nthreads())
    return {w for ws in client.who_has(list(blocks)).values() for w in ws}


def training(client: Any) -> set[str]:
    """The workers running one of lightgbm.dask's training tasks now."""
    return {w for w, keys in client.processing().items() if any("train_part" in str(k) for k in keys)}


class _Watched:
    """Runs ``fit`` in a thread and returns its result; raises TrainingError as soon as one of the fit's workers
    (those holding the matrix's blocks at the start, and any seen running a LightGBM training task) is gone
    (killed, out of memory): LightGBM's tasks are pinned to their workers, so Dask would wait for a worker that
    never comes back. Any other worker (an idle one that adaptive scaling removes) may leave: the fit does not
    need it."""

    def __init__(self, client: Any, what: str, blocks: Sequence[Any] = ()) -> None:
        self.client, self.what, self.blocks = client, what, blocks

    def run(self, fit: Callable[[], Any]) -> Any:
        # nthreads() asks the scheduler each time; scheduler_info() may answer from a cache that a periodic
        # refresh fills without the workers
        watched = holders(self.client, self.blocks) & set(self.client.nthreads())
        box: dict[str, Any] = {}

        def go() -> None:
            try:
                box["value"] = fit()
            except BaseException as exc:  # noqa: BLE001 -- handed to the waiting thread
                box["error"] = exc

        t = threading.Thread(target=go, name=f"xylen-fit-{self.what}", daemon=True)
        t.start()
        while t.is_alive():
            t.join(WATCH_S)
            try:
                now = set(self.client.nthreads())
                watched |= training(self.client) & now
            except Exception:  # noqa: BLE001 -- the scheduler itself is gone
                now = set()
            if gone := sorted(watched - now):
                raise TrainingError(
                    f"Dask worker {', '.join(gone)} left the cluster during the distributed fit ({self.what}): "
                    "LightGBM's data-parallel training cannot continue without it; nothing was published.",
                    hint="see that worker's log (killed, out of memory?), then run the training again.",
                )
        if "error" in box:
            exc = box["error"]
            raise TrainingError(
                f"The distributed fit ({self.what}) failed on the cluster: {type(exc).__name__}: {str(exc)[:300]}; "
                "nothing was published.",
                hint="see the workers' logs.",
            ) from None
        return box["value"]


def quiet_lightgbm() -> None:
    """lightgbm.dask prints its progress ("Finding random open ports...") unless a logger is registered: to the
    xylen.lightgbm logger, so --json's stdout stays one document."""
    import logging

    import lightgbm

    log = logging.getLogger("xylen.lightgbm")
    if not log.filters:  # it sets each worker's threads itself, and says so about the estimator's default n_jobs
        log.addFilter(lambda r: "n_jobs will be ignored" not in r.getMessage())
    lightgbm.register_logger(log)


def dask_fit(
    m: Matrix, params: dict[str, Any], y: np.ndarray, fit: np.ndarray, rounds: int, *, what: str,
    cols: Sequence[int] | None = None, val: np.ndarray | None = None, early: int = 0,
) -> tuple[Any, int]:
    """A DaskLGBMClassifier fitted on ``fit`` rows (their features where they lie); with ``val``, the round
    early stopping keeps, from the validation log-loss LightGBM computes over the cluster. Returns (booster,
    rounds to use)."""
    from lightgbm.dask import DaskLGBMClassifier

    X, yy = m.dask_X(fit, cols), m.dask_y(y, fit)
    est = DaskLGBMClassifier(client=m.client, **dask_params(params, rounds))

    def go() -> Any:
        with m.client.as_current():
            return est.fit(X, yy)

    model = _Watched(m.client, what, m.blocks).run(go)
    booster = model.booster_
    if val is None:
        return booster, rounds
    edges = np.cumsum([0, *m.sizes])
    parts = [m.client.submit(logloss_curve, b, mk, y[a:e][mk], booster, None if cols is None else list(cols),
                             pure=False)
             for b, mk, a, e in zip(m.blocks, m.masks(val), edges[:-1], edges[1:]) if mk.any()]
    curve = np.sum(_Watched(m.client, f"{what}: validation", m.blocks).run(lambda: m.client.gather(parts)), axis=0)
    return booster, best_iteration(curve, early)


def check_single(markets: Sequence[Any]) -> Any:
    from xylen.core.errors import ConfigError

    if len(markets) != 1:
        raise ConfigError(
            f"--distributed trains one model over the whole cluster, but {len(markets)} markets were given "
            f"({', '.join(m.label for m in markets[:4])}{' ...' if len(markets) > 4 else ''}).",
            hint="name one market (--symbol BTCUSDT --interval 5m), or leave --distributed out to train one "
            "model per market (--symbols/--intervals).",
        )
    return markets[0]


def train_distributed(
    settings: Settings,
    market: Any,
    *,
    address: str,
    promote: bool = True,
    say: Callable[[str, float], None] | None = None,
    connect: Callable[[str], Any] | None = None,
) -> Any:
    """Train ``market`` as one model over the cluster at ``address``; publish (and promote) it here. Returns the
    TrainResult, as `xylen train` does."""
    from xylen.core.bundle import TrainingWindow, make_golden
    from xylen.core.intervals import approx_ms
    from xylen.core.markets import exchange_flag, market_label, model_name
    from xylen.core.registry import check_name, open_registry
    from xylen.core.store import open_store
    from xylen.profiles import resolve
    from xylen.train import cluster, evaluate, metrics
    from xylen.train.dataset import Dataset
    from xylen.train.honesty import assess
    from xylen.train.pipeline import OHLCV, HeadModel, TrainResult, label_specs, peak_rss_mb, publish_booster, summarize

    t0 = time.perf_counter()
    note = say or (lambda _s, _f: None)
    warnings: list[str] = []
    if problem := lightgbm_dask_problem():
        from xylen.core.errors import ConfigError

        raise ConfigError(f"--distributed needs lightgbm's Dask estimators, but {problem}.",
                          hint="pip install 'xylen[dask]' (it brings scikit-learn and pandas) on this machine.")
    profile = resolve(settings.profile, max_memory_gb=settings.lgbm_max_memory_gb,
                      num_threads=settings.lgbm_num_threads)
    spec, extra = label_specs(settings)
    symbol, interval, exchange = market.symbol, market.interval, market.exchange
    name = check_name(market.name or model_name(symbol, interval, exchange))
    fs = featuresets.get(settings.feature_set, interval)
    store = open_store(settings, exchange)
    months = months_of(store, symbol, interval)
    last = store.last_open_time(symbol, interval)
    if not months or last is None:
        raise DataError(
            f"No {market_label(exchange, symbol)} {interval} candles in the store {str(store.klines)!r}.",
            hint=f"collect them (`xylen collect{exchange_flag(exchange)} --symbols {symbol} --intervals {interval} "
            f"--once`); the workers read the same store ({store.location}: XYLEN_DATA_URL, else XYLEN_HOME/data).",
        )
    step = approx_ms(interval)
    window_start = last - (int(profile.train_window_days * 86_400_000 // step) - 1) * step
    months = [m for m in months if m[1] > window_start]
    source = f"store {store.series_location(symbol, interval)}"
    quiet_lightgbm()
    with (connect or cluster.connect)(address) as client:
        check_ready(client, address)
        note("Computing features and labels on the workers", 0.05)
        tag = f"{exchange}-{symbol}-{interval}-{time.time_ns()}"
        m = distributed_matrix(client, settings, exchange, symbol, interval, months, window_start, spec,
                               tuple(extra), tag)
        rows = m.rows
        if len(rows) == 0:
            raise TrainingError(f"No usable rows in the {len(m.valid)} stored candles.", hint="use more candles.")
        fit, val, test, purged = evaluate.split(rows, settings.folds, spec.horizon)[-1]
        if len(np.unique(m.y[fit])) < 2:
            raise TrainingError(f"Every training label is {int(m.y[fit][0])}.",
                                hint="the threshold is too high or too low for this data.")
        params = evaluate.lgb_params(profile)
        rounds, early = profile.num_boost_round, profile.early_stopping_rounds
        vol_cols = fs.indices(fs.volatility)
        y = np.nan_to_num(m.y, nan=0.0)
        rng = np.random.default_rng(evaluate.SEED)
        y_shuf = y.copy()
        y_shuf[rows] = rng.permutation(m.y[rows])
        y_shuf = np.nan_to_num(y_shuf, nan=0.0)
        head_y = {k: np.nan_to_num(v, nan=0.0) for k, v in m.heads.items()}

        note("Fitting on the held-out fold's training rows", 0.15)
        model, best = dask_fit(m, params, y, fit, rounds, what="model", val=val, early=early)
        vol_model, vol_best = dask_fit(m, params, y, fit, rounds, what="volatility-only learner", cols=vol_cols,
                                       val=val, early=early)
        shuf_model, shuf_best = dask_fit(m, params, y_shuf, fit, rounds, what="shuffled-label control", val=val,
                                         early=early)
        heads_fit = {
            k: (dask_fit(m, params, yk, fit, rounds, what=f"{k} head", val=val, early=early),
                dask_fit(m, params, yk, fit, rounds, what=f"{k} head's volatility-only learner", cols=vol_cols,
                         val=val, early=early))
            for k, yk in head_y.items()
        }
        note("Scoring the held-out window", 0.55)
        X_test = m.gather_X(test)
        raw_names = list(fs.raw_volatility)

        def baselines(yk: np.ndarray, vm: Any, vb: int) -> dict[str, np.ndarray]:
            out = {"volatility_learner": vm.predict(X_test[:, vol_cols], num_iteration=vb)}
            for j, n in enumerate(raw_names):
                out[n] = evaluate._oriented(m.raw[fit, j], yk[fit], X_test[:, fs.indices([n])[0]])
            return out

        p = model.predict(X_test, num_iteration=best)
        p_shuf = shuf_model.predict(X_test, num_iteration=shuf_best)
        scores = {"primary": {"model": p, **baselines(y, vol_model, vol_best)}}
        best_its = {"primary": [best]}
        for k, ((hm, hb), (hvm, hvb)) in heads_fit.items():
            scores[k] = {"model": hm.predict(X_test, num_iteration=hb), **baselines(head_y[k], hvm, hvb)}
            best_its[k] = [hb]
        y_test = m.y[test]
        base = float(m.y[np.concatenate([fit, val])].mean())
        fold = evaluate.Fold(
            index=settings.folds, train_rows=len(fit), val_rows=len(val), test_rows=len(test),  # the last fold
            test_first=int(m.open_time[test[0]]), test_last=int(m.open_time[test[-1]]), purged=purged,
            auc=metrics.auc(y_test, p), auc_volatility=metrics.auc(y_test, scores["primary"]["volatility_learner"]),
            auc_shuffled=metrics.auc(y_test, p_shuf), logloss=metrics.logloss(y_test, p),
            logloss_base=metrics.logloss(y_test, np.full(len(test), base)), brier=metrics.brier(y_test, p),
            brier_base=metrics.brier(y_test, np.full(len(test), base)), base_rate=base,
            test_positive_rate=float(y_test.mean()), best_iteration=best,
        )
        gain = model.feature_importance("gain", iteration=best)
        importance = {n: float(g / (gain.sum() or 1.0)) for n, g in zip(fs.names, gain)}
        # the held-out window as a Dataset (what the honesty code and the report read): rows from test[0] on
        a = int(test[0])
        X_tail = np.full((len(m.valid) - a, len(fs.names)), np.nan)
        X_tail[test - a] = X_test
        ds = Dataset(m.open_time[a:], m.close[a:], X_tail, m.y[a:], m.valid[a:], m.contiguous_next[a:], step, fs,
                     m.up[a:], {k: v[a:] for k, v in m.heads.items()})
        index = test - a
        ev = evaluate.Evaluation(
            [fold], index, p, importance, np.full(len(test), settings.folds, dtype=np.int64),
            [evaluate.HeadScores(k, (m.y if k == "primary" else m.heads[k])[test], s, best_its[k])
             for k, s in scores.items()],
        )
        honesty, bt = assess(ds, ev, spec, extra, fee=settings.fee, entry_threshold=settings.entry_threshold)
        result_metrics = summarize(ev, honesty)

        note("Fitting the final model on every usable row", 0.7)
        final_rounds = max(10, best)
        booster, _ = dask_fit(m, params, y, rows, final_rounds, what="final model")
        head_models = []
        for h in extra:
            rec = next(r for r in honesty["heads"] if r["kind"] == h.kind and not r["primary"])
            hr = max(10, best_its[h.kind][0])
            hb_final, _ = dask_fit(m, params, head_y[h.kind], rows, hr, what=f"final {h.kind} head")
            head_models.append(HeadModel(h, hb_final, {k: rec[k] for k in ("auc", "edge", "verdict", "baseline")}
                                         | {"num_boost_round": hr}))
        golden_rows = rows[np.linspace(0, len(rows) - 1, 8).astype(int)]
        X_golden = m.gather_X(np.unique(golden_rows))[np.searchsorted(np.unique(golden_rows), golden_rows)]
    last_row = int(rows[-1])
    t_last = int(m.open_time[last_row])
    candles = store.read(symbol, interval, t_last - (fs.lookback + 2) * step, t_last + 1).tail(fs.lookback + 1)
    window = np.column_stack([candles["open_time"].to_numpy().astype(np.float64),
                              *(candles[c].to_numpy().astype(np.float64) for c in OHLCV)])
    golden = make_golden(lambda Xg: booster.predict(Xg, num_threads=1), X_golden, window, fs)
    warnings.append(
        f"Trained data-parallel on the Dask cluster at {address} ({len(months)} month partitions); evaluated on "
        f"the last walk-forward fold only (fold {settings.folds} of {settings.folds}), not all of them."
    )
    note("Writing the bundle and report", 0.9)
    registry = open_registry(settings)
    params_final = {k: v for k, v in params.items() if k != "metric"} | {"tree_learner": "data"}
    peak = peak_rss_mb()
    result_metrics["peak_rss_mb"] = round(peak, 1)
    from xylen.train.report import write_report

    def finalize(folder: Path, manifest: Any, version: str) -> None:
        write_report(folder, manifest.model_copy(update={"version": version}), ev, bt, ds, warnings)

    version = publish_booster(
        registry, name, booster, heads=head_models, finalize=finalize,
        feature_set={"version": fs.version, "names": list(fs.names)}, label=spec.to_dict(), symbol=symbol,
        interval=interval, exchange=exchange,
        training_window=TrainingWindow(first_open_time=int(m.open_time[rows[0]]),
                                       last_open_time=int(m.open_time[rows[-1]]), rows=len(rows)),
        profile=profile.to_dict(), params=params_final | {"num_boost_round": final_rounds},
        metrics=result_metrics | {"folds": [fold.__dict__], "importance": importance, "data_source": source,
                                  "warnings": warnings, "distributed": {"cluster": address,
                                                                        "partitions": len(months)}},
        golden=golden,
    )
    if promote:
        registry.promote(name, version)
    try:  # retention: the new version is published already, so a failed clean-up is only a warning
        pruned = registry.prune(name, settings.keep_versions)
    except XylenError as exc:
        pruned = []
        warnings.append(f"old versions were not pruned: {exc.message} hint: {exc.hint}")
    bundle = registry.path(name, version)
    result = TrainResult(
        name=name, version=version, bundle=bundle, promoted=promote, symbol=symbol, interval=interval,
        source=source, exchange=exchange, rows_total=len(m.valid), rows_used=len(rows), metrics=result_metrics,
        folds=[fold.__dict__], profile=profile.to_dict(), report=bundle / "report.html", warnings=warnings,
        seconds=time.perf_counter() - t0, peak_rss_mb=peak_rss_mb(), pruned=pruned,
    )
    return result
