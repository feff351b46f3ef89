"""`xylen retrain`, once: new candles in the store -> a candidate -> the gate -> maybe a promotion.

For each model: read the live version's manifest (its feature set, label, extra heads, series and parameters are
kept: changing them is a new model, made with `xylen train`), count the closed candles the store holds beyond its
training window, and with enough of them train a candidate on the latest window -- a full refit with the live
model's parameters, or
(``--warm-start``) more trees boosted onto the live model (LightGBM ``init_model``); each extra head likewise, on
the same rows (train/candidate.py). The candidate is published as a new immutable version whatever the gate decides
(its manifest records both scores, the interval and the decision, per head), and promoted only when the gate passes
for every head and the live version is still the one it was compared with
(``Registry.promote(expect_live=...)``: a trainer never replaces a version someone promoted meanwhile).

A model trained data-parallel (`xylen train --distributed`) is refitted data-parallel when a Dask cluster is given
(``retrain_model(client=...)``, from `xylen retrain --cluster`): the same rows, gate and publication, the fit on the
cluster (:func:`_fit_on_cluster`); without a cluster it is refitted in one process like any model.

Runs never overlap: the whole run holds core/runlock.RunLock on XYLEN_HOME.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from xylen.core import featuresets, labels
from xylen.core.bundle import (
    Manifest,
    TrainingWindow,
    head_fields,
)
from xylen.core.errors import BundleError, ConfigError, DataError, TrainingError, XylenError
from xylen.core.intervals import approx_ms
from xylen.core.markets import DEFAULT_EXCHANGE, exchange_flag, market_label, store_of
from xylen.core.registry import PromotionConflict, Registry, open_registry
from xylen.core.runlock import RunLock, describe
from xylen.core.settings import Settings
from xylen.core.store import Store, open_store
from xylen.profiles import Profile, resolve
from xylen.train import candidate, gate
from xylen.train.dataset import build
from xylen.train.pipeline import HeadModel, cap_rows, golden_of, peak_rss_mb, publish_booster
from xylen.train.threads import training_threads

Outcome = Literal["promoted", "kept", "nothing_new", "skipped", "busy", "conflict", "error"]
Mode = Literal["full", "warm"]

MIN_TRAIN_ROWS = 1000  # a candidate fitted on fewer rows than this is not worth a gate
WARM_MIN_ROWS = 5000  # a warm start fits its trees on at least the most recent this many training rows
# exit codes of --strict-exit (documented in the README and `xylen retrain --help`)
STRICT_CODES = {"kept": 10, "conflict": 10, "nothing_new": 11, "skipped": 11, "busy": 12}
# with several models, the exit code of the most severe error wins (internal, then model, training, data, config)
SEVERITY = (1, 4, 5, 3, 2, 6)
# LightGBM's distributed-learning parameters (and their aliases): a model trained with `train --distributed` has
# tree_learner=data in its manifest, but a one-process retrain has no use for them (a data-parallel one gets its own
# from distributed.dask_params)
NETWORK_PARAMS = frozenset({
    "tree_learner", "tree", "tree_type", "tree_learner_type", "num_machines", "num_machine", "local_listen_port",
    "local_port", "port", "time_out", "machine_list_filename", "machine_list_file", "machine_list", "mlist",
    "machines", "workers", "nodes", "pre_partition", "is_pre_partition",
})


class Terminated(BaseException):
    """SIGTERM during a run: unwinds like Ctrl-C, so every staging folder and the lock are cleaned up. ``results``:
    the models whose outcome was settled before it (a promotion among them happened: the report must say so)."""

    def __init__(self, results: Sequence[ModelResult] = ()) -> None:
        super().__init__()
        self.results = list(results)


class _Commit:
    """While a promotion is being made and reported, a SIGTERM waits (``pending``) instead of unwinding: else the
    promotion could happen and its report be lost, and the run would say it was aborted with a new version live."""

    held = False
    pending = False

    def release(self) -> bool:
        """Stop holding; True when a SIGTERM arrived meanwhile."""
        pending, self.held, self.pending = self.pending, False, False
        return pending


COMMIT = _Commit()


@dataclass
class RetrainOptions:
    names: Sequence[str] = ()
    all: bool = False
    min_new_samples: int | None = None  # default: settings.retrain_min_new_samples
    mode: Mode = "full"
    lock_fd: int | None = None  # the lock, handed over by `xylen serve` (see core/runlock.py)
    by: str = "cli"
    # called between the gate and the promotion (tests: a concurrent promotion, a kill at that point)
    before_promote: Callable[[str, str], None] | None = None


@dataclass
class ModelResult:
    name: str
    outcome: Outcome
    message: str
    live_version: str | None = None
    candidate_version: str | None = None
    mode: Mode | None = None
    new_candles: int | None = None
    samples_used: int = 0
    gate: dict[str, Any] | None = None
    watch: dict[str, Any] | None = None
    pruned: list[str] = field(default_factory=list)
    seconds: float = 0.0
    peak_rss_mb: float = 0.0
    error: dict[str, Any] | None = None

    @property
    def exit_code(self) -> int:
        return int(self.error["exit_code"]) if self.error else 0

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["seconds"] = round(self.seconds, 2)
        d["peak_rss_mb"] = round(self.peak_rss_mb, 1)
        return d


@dataclass
class RunReport:
    results: list[ModelResult]
    seconds: float = 0.0

    def exit_code(self, strict: bool = False) -> int:
        codes = {r.exit_code for r in self.results} - {0}
        for code in SEVERITY:
            if code in codes:
                return code
        if codes:
            return max(codes)
        if strict:
            stricts = [STRICT_CODES[r.outcome] for r in self.results if r.outcome in STRICT_CODES]
            return max(stricts, default=0)
        return 0

    def to_dict(self, strict: bool = False) -> dict[str, Any]:
        errors = any(r.error for r in self.results)
        return {
            "status": "error" if errors else "success",
            "message": "; ".join(f"{r.name}: {r.message}" for r in self.results) or "no models",
            "samples_used": sum(r.samples_used for r in self.results),
            "exit_code": self.exit_code(strict),
            "seconds": round(self.seconds, 2),
            "peak_rss_mb": round(max((r.peak_rss_mb for r in self.results), default=peak_rss_mb()), 1),
            "results": [r.to_dict() for r in self.results],
        }


def error_of(exc: XylenError) -> dict[str, Any]:
    return {"exit_code": exc.exit_code, "type": type(exc).__name__, "message": exc.message, "hint": exc.hint}


@contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """Turn SIGTERM into an exception for the duration (main thread only): staging folders and the lock are released
    by the normal unwinding, and nothing half-written stays visible."""

    def _raise(_sig: int, _frame: object) -> None:
        if COMMIT.held:
            COMMIT.pending = True
            return
        raise Terminated()

    try:
        old = signal.signal(signal.SIGTERM, _raise)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def retrain(settings: Settings, opts: RetrainOptions, profile: Profile | None = None) -> RunReport:
    """One run over the chosen models. Raises only for what stops the whole run (an unwritable XYLEN_HOME, an
    unknown model name); per-model problems are results."""
    t0 = time.perf_counter()
    registry = open_registry(settings)
    lock = RunLock(settings.home)  # first: an unwritable XYLEN_HOME is exit 2 before anything else is looked at
    if opts.lock_fd is not None:
        lock.adopt(opts.lock_fd)
    elif not lock.try_acquire(by=opts.by, models=list(opts.names) or ["all live models" if opts.all else "default"]):
        who = describe(lock.holder())
        msg = f"not run: {who} is retraining on this XYLEN_HOME (runs never overlap)"
        return RunReport([ModelResult(n, "busy", msg) for n in choose(registry, opts)], time.perf_counter() - t0)
    with lock:
        raw = None if opts.names else _model_path_skipped(settings, registry)
        try:
            names = choose(registry, opts)
        except BundleError:
            if raw is None:
                raise
            names = []  # only the MODEL_PATH model: say why it is not retrained, and that is all
        # what killed writers left in the registry's temp area (a trainer killed while it promoted or wrote a watch
        # record): a run that publishes nothing never reaches Registry.stage, which cleans it too
        with contextlib.suppress(OSError):
            registry.storage.clean_temp()
        profile = profile or resolve(
            settings.profile, max_memory_gb=settings.lgbm_max_memory_gb, num_threads=settings.lgbm_num_threads
        )
        threads, _why = training_threads(profile.threads, explicit=settings.lgbm_num_threads is not None)
        profile = replace(profile, threads=threads)
        store = open_store(settings, DEFAULT_EXCHANGE)
        results: list[ModelResult] = [raw] if raw else []
        try:
            for name in names:
                t1 = time.perf_counter()
                if COMMIT.release():  # held by a direct retrain_model call (tests) when a SIGTERM came
                    raise Terminated()
                try:
                    r = retrain_model(settings, registry, store, name, opts, profile, explicit=not opts.all)
                except XylenError as exc:
                    r = ModelResult(name, "error", exc.message, error=error_of(exc))
                finally:
                    terminated = COMMIT.release()
                results.append(r)
                r.seconds, r.peak_rss_mb = time.perf_counter() - t1, peak_rss_mb()
                if terminated:
                    raise Terminated()
                r.pruned = _prune(registry, name, settings, r)
                r.watch = _watch(settings, registry, store, name, r)
                r.seconds = time.perf_counter() - t1
                r.peak_rss_mb = peak_rss_mb()
        except Terminated:
            raise Terminated(results) from None
    return RunReport(results, time.perf_counter() - t0)


def choose(registry: Registry, opts: RetrainOptions) -> list[str]:
    if opts.all and opts.names:
        raise ConfigError(f"Both model names {list(opts.names)} and --all given.", hint="use one or the other.")
    if opts.names:
        return [registry.resolve_name(n) for n in dict.fromkeys(opts.names)]
    live = registry.live_names()
    if not live:
        raise BundleError(
            f"The registry {registry.location!r} has no live models to retrain.", hint="train one: `xylen train`."
        )
    if opts.all or len(live) == 1:
        return live
    raise ConfigError(f"Several live models ({', '.join(live)}); say which to retrain.", hint="name them, or --all.")


def _model_path_skipped(settings: Settings, registry: Registry) -> ModelResult | None:
    """A MODEL_PATH outside the registry (a bare model file, or a bundle folder elsewhere) is served as it is: there
    is no registry model to publish a new version of. Reported as skipped, with the way out."""
    if settings.model_path is None:
        return None
    path = Path(settings.model_path).expanduser()
    with contextlib.suppress(OSError, ValueError):
        path.resolve().relative_to(registry.root.resolve())
        return None  # a version folder of the registry: its model is retrained like any other
    return ModelResult(
        path.name or str(path),
        "skipped",
        f"skipped: MODEL_PATH {str(path)!r} is served as it is, outside the registry; `xylen retrain` makes new "
        "versions of registry models (train one with `xylen train`, or `xylen models import` this file)",
    )


def not_retrainable(m: Manifest) -> str | None:
    """Why ``xylen retrain`` cannot retrain a version (None if it can)."""
    if m.backend == "ensemble":
        return "it is an ensemble: retrain its members (`xylen models ensemble show` names them); it follows them"
    if m.backend != "lightgbm" or m.feature_set.version == "external":
        return (
            f"it is an imported {m.backend} model (features xylen does not compute); retrain it where it was made "
            "and import the new version"
        )
    if not (m.symbol and m.interval and m.training_window and m.label.get("horizon") is not None):
        return "its manifest names no series, training window or label (an imported model); use `xylen train`"
    if featuresets.for_manifest(m.feature_set.version, list(m.feature_set.names), m.interval) is None:
        return (
            f"it uses feature set {m.feature_set.version!r} ({len(m.feature_set.names)} features), which this xylen "
            f"does not compute from {m.interval} candles (it computes {', '.join(featuresets.VERSIONS)}); make a new "
            "model with `xylen train`"
        )
    try:
        labels.LabelSpec.from_dict(m.label)
        head_fields(m)  # heads a server would refuse: a candidate with them could never be promoted
    except BundleError as exc:
        return f"{exc.message[0].lower()}{exc.message[1:].rstrip('.')}; make a new model with `xylen train`"
    return None


def retrain_model(
    settings: Settings,
    registry: Registry,
    store: Store,
    name: str,
    opts: RetrainOptions,
    profile: Profile,
    *,
    explicit: bool = True,
    client: Any | None = None,
    address: str = "",
) -> ModelResult:
    """One model's retrain. With a Dask ``client`` (the cluster at ``address``) and a live model trained
    data-parallel (`xylen train --distributed`), its candidate is fitted data-parallel on the cluster (see
    :func:`_fit_on_cluster`); the rows, the gate and the publication are the same as in one process."""
    from xylen.core.imports import import_lightgbm

    lgb = import_lightgbm()
    ptr = registry.current(name)
    if ptr is None:
        raise BundleError(
            f"Model {name!r} has no live version to retrain.",
            hint=f"promote one (`xylen models promote {name} vNNNN`) or train one with `xylen train`.",
        )
    live_dir = registry.path(name, ptr.version)
    m = registry.manifest(name, ptr.version)  # unreadable: a BundleError, nothing to keep the label from
    why = not_retrainable(m)
    if why:
        if explicit:
            raise BundleError(f"Cannot retrain {name!r} {ptr.version}: {why}.", hint="retrain another model.")
        return ModelResult(name, "skipped", f"skipped: {why}", live_version=ptr.version)
    assert m.symbol and m.interval and m.training_window
    # what is kept: the feature set (the windows bots send keep working), the label and every head
    fs = featuresets.for_manifest(m.feature_set.version, list(m.feature_set.names), m.interval)
    assert fs is not None  # not_retrainable checked it
    res = ModelResult(name, "error", "", live_version=ptr.version)
    heads = candidate.live_heads(lgb, live_dir, m)
    spec = heads[0].spec
    live_problem = candidate.problems(heads)

    store = store_of(store, m.exchange)
    df = store.read(m.symbol, m.interval)
    if df.height == 0:
        on = exchange_flag(m.exchange)
        raise DataError(
            f"No {market_label(m.exchange, m.symbol)} {m.interval} candles in the store {str(store.klines)!r} to "
            "retrain "
            f"{name!r} on.",
            hint=f"collect them: `xylen collect{on} --symbols {m.symbol} --intervals {m.interval} --once`.",
        )
    tw = m.training_window
    open_time = df["open_time"].to_numpy()
    seen, since = _seen_until(registry, name, ptr.version, m, open_time)
    new = int((open_time > seen).sum())
    res.new_candles = new
    k = opts.min_new_samples if opts.min_new_samples is not None else settings.retrain_min_new_samples
    if new < k and live_problem is None:
        res.outcome, res.message = "nothing_new", f"nothing new: {new} of {k} new closed candles since {since}"
        return res

    keep, _reason = cap_rows(df.height, profile, approx_ms(m.interval))
    df = df.tail(keep)
    open_time = df["open_time"].to_numpy().astype(np.int64)
    y_all, valid = candidate.labels_and_rows(df, m.interval, heads, fs.lookback)
    horizon = max(h.spec.horizon for h in heads)  # the purge must cover the head that looks furthest ahead
    rows = np.flatnonzero(valid)
    size = gate.holdout_size(len(rows), settings.retrain_holdout)
    if len(rows) < size + MIN_TRAIN_ROWS:
        raise DataError(
            f"{m.symbol} {m.interval}: {len(rows)} usable candles are too few for a {size}-candle holdout plus "
            f"{MIN_TRAIN_ROWS} to train on.",
            hint="collect more history (`xylen collect --since ...`) or lower XYLEN_RETRAIN_HOLDOUT (at least 200).",
        )
    sp = gate.split(rows, horizon, size)
    # the live model must not have trained on the holdout (nor on labels reaching into it): else it would be
    # scored in-sample and the comparison would be rigged in its favour. Wait for enough new candles instead (a
    # damaged live version is no reason to wait: its heads are then compared with the base rate).
    live_last = int(np.searchsorted(open_time, tw.last_open_time, side="right")) - 1
    fair = not (live_last >= 0 and live_last + horizon >= sp.holdout[0])
    if live_problem is None and not fair:
        more = live_last + horizon + 1 - int(sp.holdout[0])
        res.outcome = "nothing_new"
        res.message = (
            f"nothing to compare yet: the live model trained on candles up to {_ts(tw.last_open_time)}, inside the "
            f"most recent {size}-candle holdout; a fair gate needs about {more} more new candles"
        )
        return res

    params = {k2: v for k2, v in m.params.items() if k2 != "num_boost_round" and k2 not in NETWORK_PARAMS} | {
        "num_threads": profile.threads}
    parallel = client is not None and data_parallel(m)
    candidate.check_labels(heads, {h.key: y_all[h.key][sp.train] for h in heads}, name)
    warm_row = int((m.model_extra or {}).get("retrain", {}).get("warm_starts_in_row", 0))
    mode: Mode = opts.mode
    forced = None
    if mode == "warm" and parallel:
        mode, forced = "full", "a data-parallel model is refitted in full (lightgbm.dask boosts onto no live model)"
    elif mode == "warm" and live_problem is not None:
        unreadable = "the live model is unreadable" if heads[0].problem else "a live head is unreadable"
        mode, forced = "full", f"{unreadable}, so there is nothing to continue"
    elif mode == "warm" and warm_row >= settings.retrain_max_warm_starts:
        mode, forced = "full", f"{warm_row} warm starts in a row (XYLEN_RETRAIN_MAX_WARM_STARTS)"
    fit = sp.train
    if mode == "warm":
        fresh = int((open_time[fit] > tw.last_open_time).sum())
        fit = fit[-max(fresh, min(WARM_MIN_ROWS, len(fit))) :]
    # features only where they are used: a warm start reads the newest rows, not the whole window
    off = max(0, int(fit[0]) - fs.lookback - 1) if mode == "warm" else 0
    df = df.slice(off)
    X_golden = None
    if parallel:
        fitted, ds, at, X_golden, parts = _fit_on_cluster(client, address, settings, m, df, heads, fs, sp, params)
        fit_s, hold = fit, sp.holdout - at  # ds: the holdout's rows on (see _fit_on_cluster)
    else:
        ds = build(df, m.interval, spec, fs, extra=tuple(h.spec for h in heads[1:]))
        fit_s, hold = fit - off, sp.holdout - off
        if not (ds.valid[fit_s].all() and ds.valid[hold].all()):  # the slice keeps every row's lookback
            raise TrainingError(
                "The feature window of the retrain rows is incomplete.", hint="this is a bug; report it."
            )
        fitted = candidate.fit(
            lgb, heads, ds, fit_s, params, warm_rounds=settings.retrain_warm_rounds if mode == "warm" else None
        )
    first_open = tw.first_open_time if mode == "warm" else int(open_time[fit[0]])
    res.mode, res.samples_used = mode, len(fit)
    verdict = candidate.score(
        fitted,
        ds,
        hold,
        {h.key: float(y_all[h.key][sp.train].mean()) for h in heads},
        tolerance=settings.retrain_tolerance,
        purged=sp.purged,
        fair=fair,
    )
    res.gate = verdict
    retrain_info = {
        "mode": mode,
        "parent": ptr.version,
        "warm_starts_in_row": warm_row + 1 if mode == "warm" else 0,
        "forced_full": forced,
        "new_candles": new,
        "seen_until": int(open_time[-1]),  # the newest candle this run read: the next run counts new ones from here
        "live_problem": live_problem,
        "data_source": f"store {store.series_location(m.symbol, m.interval)}",
    }
    if parallel:
        retrain_info["data_parallel"] = {"cluster": address, "partitions": parts}
    primary = fitted[0]
    metrics: dict[str, Any] = {
        "auc_holdout": primary.verdict["candidate"]["auc"],
        "logloss_holdout": primary.verdict["candidate"]["logloss"],
        "data_source": retrain_info["data_source"],
    }
    honesty = m.metrics.get("honesty")
    if isinstance(honesty, dict):
        # the walk-forward evaluation the model was made with: what the model knows is measured there; a retrain
        # only checks, by the gate, that each version is no worse than the last. It names the version it evaluated
        # (`xylen train` cannot: the version is chosen when it publishes), so the sentence can say it is inherited.
        named = honesty.get("version") or isinstance((m.model_extra or {}).get("retrain"), dict)
        metrics["honesty"] = honesty if named else honesty | {"version": ptr.version}
    if parallel:  # what `train --distributed` records: the next retrain with a cluster fits data-parallel again
        metrics["distributed"] = {"cluster": address, "partitions": parts}
    version = publish_booster(
        registry,
        name,
        primary.booster,
        heads=[HeadModel(f.head.spec, f.booster, f.metrics()) for f in fitted[1:]],
        feature_set=m.feature_set.model_dump(),
        label=spec.to_dict(),
        symbol=m.symbol,
        interval=m.interval,
        exchange=m.exchange,
        training_window=TrainingWindow(
            first_open_time=first_open, last_open_time=int(open_time[fit[-1]]), rows=len(fit)
        ),
        profile=profile.to_dict(),
        params=params | {"num_boost_round": primary.booster.current_iteration()}
        | ({"tree_learner": "data"} if parallel else {}),
        metrics=metrics,
        golden=golden_of(primary.booster, ds, df, fit_s, X_golden),
        gate=verdict,
        retrain=retrain_info,
    )
    res.candidate_version = version
    kind = "warm start" if mode == "warm" else "data-parallel full refit" if parallel else "full refit"
    how = f"{kind} on {len(fit)} candles" + (
        f" (full refit forced: {forced})" if forced else ""
    )
    if verdict["decision"] != "promote":
        res.outcome = "kept"
        res.message = f"kept {ptr.version}; candidate {version} ({how}) refused: {verdict['reason']}"
        return res
    if opts.before_promote is not None:
        opts.before_promote(name, version)
    COMMIT.held = True  # until retrain() has this result: a SIGTERM now waits (see _Commit)
    try:
        registry.promote(name, version, expect_live=ptr.version)
    except PromotionConflict as exc:
        res.outcome = "conflict"
        res.message = f"candidate {version} not promoted: {exc.message}"
        return res
    res.outcome = "promoted"
    res.message = f"promoted {version} over {ptr.version} ({how}): {verdict['reason']}"
    if live_problem:
        res.error = {
            "exit_code": BundleError.exit_code,
            "type": "BundleError",
            "message": f"the live version {ptr.version} was unreadable ({live_problem}); {version} verified and was "
            "promoted without a comparison with it",
            "hint": f"check the disk; {ptr.version} stays in the registry (`xylen models show {name} {ptr.version}`).",
        }
        res.message += f"; NOTE: the live {ptr.version} was unreadable ({live_problem})"
    return res


def data_parallel(m: Manifest) -> bool:
    """Whether a version was trained data-parallel (`xylen train --distributed`, or a retrain of one on a cluster)."""
    return isinstance(m.metrics.get("distributed"), dict) or m.params.get("tree_learner") == "data"


def _fit_on_cluster(
    client: Any,
    address: str,
    settings: Settings,
    m: Manifest,
    df: Any,
    heads: Sequence[candidate.LiveHead],
    fs: featuresets.FeatureSet,
    sp: gate.Split,
    params: dict[str, Any],
) -> tuple[list[candidate.Fitted], Any, int, np.ndarray, int]:
    """Every head fitted data-parallel on the cluster (lightgbm.dask, train/distributed.py) on the rows ``sp.train``
    of ``df`` (the window retrain_model read, its first candle the matrix's first): the features are computed on
    the workers, one month partition per task, and stay there. Only the holdout's and the golden rows' features
    come back. Returns the fitted heads, a Dataset of the rows from the holdout's first on (what the gate scores),
    that first row's index in ``df``, the golden rows' features and the number of month partitions."""
    from xylen.core.store import open_store
    from xylen.train import distributed as xd
    from xylen.train.dataset import Dataset
    from xylen.train.pipeline import golden_picks

    assert m.symbol and m.interval
    if problem := xd.lightgbm_dask_problem():
        raise ConfigError(f"A data-parallel retrain needs lightgbm's Dask estimators, but {problem}.",
                          hint="pip install 'xylen[dask]' (it brings scikit-learn and pandas) on this machine.")
    xd.check_ready(client, address)
    xd.quiet_lightgbm()
    version = m.feature_set.version
    if version not in featuresets.VERSIONS or list(featuresets.get(version, m.interval).names) != list(fs.names):
        raise TrainingError(f"The workers cannot compute {m.symbol} {m.interval}'s feature set {version!r} as the "
                            "live model has it.", hint="retrain without --cluster (in one process).")
    on_workers = settings.model_copy(update={"feature_set": version})
    open_time = df["open_time"].to_numpy().astype(np.int64)
    n, start = len(open_time), int(open_time[0])
    store = open_store(settings, m.exchange)
    months = [mo for mo in xd.months_of(store, m.symbol, m.interval) if mo[1] > start]
    tag = f"retrain-{m.exchange}-{m.symbol}-{m.interval}-{time.time_ns()}"
    mat = xd.distributed_matrix(client, on_workers, m.exchange, m.symbol, m.interval, months, start, heads[0].spec,
                                tuple(h.spec for h in heads[1:]), tag)
    if len(mat.open_time) < n or not np.array_equal(mat.open_time[:n], open_time):
        raise TrainingError(
            f"The workers read other {m.symbol} {m.interval} candles than this machine ({len(mat.open_time)} from "
            f"the store, {n} here): the store changed during the retrain, or they read another store.",
            hint="the workers must read the same store (XYLEN_DATA_URL, else XYLEN_HOME/data); run it again.",
        )
    fitted = []
    for h in heads:
        y = np.nan_to_num(mat.y if h.key == candidate.PRIMARY else mat.heads[h.key], nan=0.0)
        booster, _ = xd.dask_fit(mat, params, y, sp.train, h.rounds, what=f"candidate's {h.name}")
        fitted.append(candidate.Fitted(h, booster))
    at = int(sp.holdout[0])
    X_tail = np.full((n - at, len(fs.names)), np.nan)
    X_tail[sp.holdout - at] = mat.gather_X(sp.holdout)
    ds = Dataset(mat.open_time[at:n], mat.close[at:n], X_tail, mat.y[at:n], mat.valid[at:n],
                 mat.contiguous_next[at:n], approx_ms(m.interval), fs, mat.up[at:n],
                 {k: v[at:n] for k, v in mat.heads.items()})
    picks = golden_picks(sp.train)
    uniq = np.unique(picks)
    X_golden = mat.gather_X(uniq)[np.searchsorted(uniq, picks)]
    return fitted, ds, at, X_golden, len(months)


def _seen_until(registry: Registry, name: str, live: str, m: Manifest, open_time: np.ndarray) -> tuple[int, str]:
    """The newest candle already taken into account: the live model's training window with the ``horizon`` candles
    its last labels read, or the data the run that made it read (its gate's holdout lies beyond its training
    window), or the data of a newer candidate made from the live version and refused -- retraining on the same
    candles again would only publish the same candidate again."""
    assert m.training_window is not None
    after = int(np.searchsorted(open_time, m.training_window.last_open_time, side="right"))
    horizon = int(m.label.get("horizon", 0))
    seen = m.training_window.last_open_time
    if after < len(open_time) and horizon > 0:
        seen = max(seen, int(open_time[min(after + horizon - 1, len(open_time) - 1)]))
    since = f"the live {live}'s training data"
    made = (m.model_extra or {}).get("retrain") or {}
    if isinstance(made.get("seen_until"), int) and made["seen_until"] > seen:
        seen, since = made["seen_until"], f"the run that made {live}"
    versions = registry.versions(name)
    if versions and versions[-1] != live:
        with contextlib.suppress(XylenError):
            last = registry.manifest(name, versions[-1])
            info = (last.model_extra or {}).get("retrain") or {}
            # a candidate the gate passed but whose promotion never happened (its trainer was killed) is no reason
            # to wait: the next run trains and promotes again
            passed = ((last.model_extra or {}).get("gate") or {}).get("decision") == "promote"
            fresh = isinstance(info.get("seen_until"), int) and info["seen_until"] > seen
            if info.get("parent") == live and fresh and not passed:
                seen, since = info["seen_until"], f"candidate {versions[-1]} was refused"
    return seen, since


def _ts(ms: int) -> str:
    from xylen.core.candles import fmt_ts

    return fmt_ts(ms)


def _prune(registry: Registry, name: str, settings: Settings, r: ModelResult) -> list[str]:
    if r.candidate_version is None:
        return []
    try:
        return list(registry.prune(name, settings.keep_versions))
    except XylenError as exc:
        r.message += f"; retention skipped: {exc.message}"
        return []


def _watch(settings: Settings, registry: Registry, store: Store, name: str, r: ModelResult) -> dict[str, Any] | None:
    from xylen.train import watch

    try:
        return watch.record(settings, registry, store, name)
    except XylenError as exc:
        r.message += f"; live-model watch skipped: {exc.message}"
        return None
