"""Training on a Dask cluster (`xylen train --cluster`, `xylen retrain --all --cluster`).

Many markets: one (symbol, interval) model per task (``client.submit``, the biggest markets first). Each task runs
on a worker exactly the training a local `xylen train` runs (:func:`xylen.train.pipeline.train`, the same parameters
and seeds), reading its candles from the store itself (the workers see the store at the same XYLEN_HOME path, a
shared volume, or in the bucket XYLEN_DATA_URL names), and writes the bundle into a private folder there instead
of a registry. It returns the bundle's files as bytes; this process (the client) then checks them exactly as a
server would load them and publishes them through the registry as local training does (the next free version, then
the promotion, which verifies the bundle again in a child process), two models at a time (each its own folder and
pointer): the only writer of the registry is the client.

Dask itself is an extra (``pip install 'xylen[dask]'``); nothing here imports it before a cluster is asked for.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any

from xylen.core.cluster import ADDRESS_FORM, check_address
from xylen.core.errors import ConfigError, TrainingError, XylenError
from xylen.core.registry import PromotionConflict, Registry, open_registry
from xylen.core.settings import Settings

CONNECT_TIMEOUT_S = 10.0
REQUIRED = ("xylen", "lightgbm")  # what every worker must have installed (the tasks run xylen's own training)
VERSION_SLOT = "@@xylen-version@@"  # the report names its version; the client fills it in when it publishes
SEVERITY = (1, 4, 5, 3, 2)  # with several markets, the exit code of the most severe error wins (as retrain)


def _dask() -> Any:
    try:
        import distributed
    except ImportError:
        raise ConfigError(
            "Training on a Dask cluster needs Dask's distributed scheduler client, which is not installed.",
            hint="pip install 'xylen[dask]' (on this machine and on every worker).",
        ) from None
    return distributed


@contextlib.contextmanager
def connect(address: str, *, timeout: float = CONNECT_TIMEOUT_S) -> Iterator[Any]:
    """A distributed.Client on the scheduler at ``address`` whose workers can run xylen's training; a clear
    ConfigError (exit 2) for a malformed or unreachable address, a cluster with no workers or workers without
    xylen/lightgbm (or another xylen version)."""
    address = check_address(address)
    from xylen.core.imports import import_lightgbm

    import_lightgbm()  # before dask: else lightgbm loads its Dask estimators (pandas, scikit-learn: seconds)
    distributed = _dask()
    try:
        client = distributed.Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise ConfigError(
            f"Cannot reach the Dask scheduler at {address!r} within {timeout:g} s ({type(exc).__name__}).",
            hint=f"start it (`dask scheduler`) and its workers, check the address ({ADDRESS_FORM}) and that this "
            "machine can reach that port.",
        ) from None
    try:
        check_workers(client, address)
        yield client
    finally:
        with contextlib.suppress(Exception):
            client.close(timeout=5)


def _version_of(package: str) -> str:
    return importlib.metadata.version(package)


def check_workers(client: Any, address: str, *, wait_s: float = CONNECT_TIMEOUT_S) -> list[str]:
    """The workers' addresses, once each has xylen and lightgbm installed, xylen at this process's version."""
    deadline = time.monotonic() + wait_s
    while not client.scheduler_info().get("workers") and time.monotonic() < deadline:
        time.sleep(0.2)
    workers = sorted(client.scheduler_info().get("workers", {}))
    if not workers:
        raise ConfigError(
            f"The Dask cluster at {address!r} has no workers (waited {wait_s:g} s).",
            hint="start workers: `dask worker ADDRESS` on each machine (with pip install 'xylen[dask]').",
        )
    mine = importlib.metadata.version("xylen")
    problems: list[str] = []
    for package in REQUIRED:
        # importlib.metadata.version runs on each worker as it is: the check needs nothing of xylen there
        got = client.run(importlib.metadata.version, package, on_error="return")
        for worker, v in sorted(got.items()):
            if isinstance(v, BaseException):
                problems.append(f"{worker} has no {package}")
            elif package == "xylen" and v != mine:
                problems.append(f"{worker} has xylen {v}, this machine {mine}")
    if problems:
        raise ConfigError(
            f"The Dask cluster at {address!r} cannot run xylen's training: {'; '.join(problems[:8])}"
            f"{' ...' if len(problems) > 8 else ''}.",
            hint=f"install the same xylen on every worker: pip install 'xylen[dask]=={mine}', then restart them.",
        )
    return workers


# -- the tasks (run on the workers) ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Market:
    symbol: str
    interval: str
    exchange: str
    name: str | None = None

    @property
    def label(self) -> str:
        return f"{self.symbol} {self.interval}" + ("" if self.exchange == "binance" else f" on {self.exchange}")


class _Capture(Registry):
    """A registry for a worker that never writes: it reads ``root`` (the registry, for a retrain's live model),
    but `publish` keeps the staged bundle's files (bytes) instead of making a version, and `promote` only notes
    the request, so the client can publish and promote into the real registry (its one writer)."""

    def __init__(self, root: str | Path, slot: str = "v0001", **where: Any) -> None:
        super().__init__(root, **where)
        self.files: dict[str, bytes] = {}
        self.slot = slot  # what publish answers: the client chooses the real version
        self.promote_request: str | None | bool = False  # the live version a retrain's promotion expects

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[Path]:
        with tempfile.TemporaryDirectory(prefix="xylen-task-") as tmp:
            yield Path(tmp)

    def publish(self, name: str, staging: Path, finalize: Callable[[Path, str], None] | None = None) -> str:
        if finalize is not None:
            finalize(staging, VERSION_SLOT)
        self.files = {
            p.relative_to(staging).as_posix(): p.read_bytes() for p in sorted(staging.rglob("*")) if p.is_file()
        }
        return self.slot

    def promote(self, name: str, version: str, *, now: str | None = None, expect_live: str | None | bool = True
                ) -> Any:
        self.promote_request = expect_live
        return None

    def prune(self, name: str, keep: int, *, dry_run: bool = False) -> list[str]:
        return []


def worker_threads(settings: Settings) -> Settings:
    """LightGBM threads on a worker: LGBM_NUM_THREADS when set, else the worker's thread count (tasks run one per
    worker thread: more would oversubscribe its cores)."""
    if settings.lgbm_num_threads is not None:
        return settings
    with contextlib.suppress(Exception):
        from distributed import get_worker

        return settings.model_copy(update={"lgbm_num_threads": max(1, int(get_worker().state.nthreads))})
    return settings


def error_record(exc: XylenError) -> dict[str, Any]:
    return {"exit_code": exc.exit_code, "type": type(exc).__name__, "message": exc.message, "hint": exc.hint}


def train_market(settings: Settings, market: Market) -> dict[str, Any]:
    """Train one market on this worker exactly as `xylen train` does; return the bundle's files and the result
    (or the error, as data: the client reports it beside the other markets')."""
    from xylen.train.pipeline import TrainOptions, train

    settings = worker_threads(settings)
    opts = TrainOptions(
        symbol=market.symbol, interval=market.interval, name=market.name, promote=False, exchange=market.exchange
    )
    try:
        with tempfile.TemporaryDirectory(prefix="xylen-task-") as tmp:
            capture = _Capture(Path(tmp))
            result = train(settings, opts, registry=capture)
        return {"files": capture.files, "result": result, "host": os.uname().nodename}
    except XylenError as exc:
        return {"error": error_record(exc), "host": os.uname().nodename}


PUBLISHERS = 2  # markets published at once on this machine


# -- the client: publish what the workers made --------------------------------------------------------------------
def publish_files(registry: Registry, name: str, files: dict[str, bytes]) -> str:
    """Publish a bundle a worker made (its files as bytes) as the next version of ``name``: staged where no reader
    looks, loaded exactly as a server would load it, then made visible whole. Returns the version."""
    from xylen.core.bundle import load_bundle

    if "manifest.json" not in files:
        raise TrainingError(f"The bundle a worker sent for {name!r} has no manifest.json.", hint="this is a bug.")
    report = files.get("report.html")
    with registry.stage(name) as staging:
        for rel, data in files.items():
            parts = PurePosixPath(rel).parts
            if PurePosixPath(rel).is_absolute() or not parts or ".." in parts:
                raise TrainingError(f"A worker sent a bundle file named {rel[:100]!r}.", hint="this is a bug.")
            path = staging.joinpath(*parts)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        load_bundle(staging)  # what came over the network is checked like anything a server loads

        def finalize(folder: Path, version: str) -> None:
            if report is not None:
                (folder / "report.html").write_bytes(report.replace(VERSION_SLOT.encode(), version.encode()))

        return registry.publish(name, staging, finalize)


@dataclass
class MarketOutcome:
    market: Market
    result: Any = None  # TrainResult once published
    error: dict[str, Any] | None = None
    host: str | None = None

    @property
    def exit_code(self) -> int:
        return int(self.error["exit_code"]) if self.error else 0


def exit_code(outcomes: Sequence[MarketOutcome]) -> int:
    codes = {o.exit_code for o in outcomes} - {0}
    return next((c for c in SEVERITY if c in codes), max(codes, default=0))


def finish(settings: Settings, registry: Registry, outcome: MarketOutcome, got: dict[str, Any], promote: bool) -> None:
    """Publish (and promote, and prune) one worker's bundle on the client, as local training does."""
    outcome.host = got.get("host")
    if "error" in got:
        outcome.error = got["error"]
        return
    result = got["result"]
    try:
        version = publish_files(registry, result.name, got["files"])
        if promote:
            registry.promote(result.name, version)
        try:
            pruned = registry.prune(result.name, settings.keep_versions)
        except XylenError as exc:
            pruned = []
            result.warnings.append(f"old versions were not pruned: {exc.message} hint: {exc.hint}")
    except XylenError as exc:
        outcome.error = error_record(exc)
        return
    bundle = registry.path(result.name, version)
    outcome.result = replace(
        result, version=version, bundle=bundle, promoted=promote, report=bundle / "report.html", pruned=pruned
    )


def train_markets(
    settings: Settings,
    markets: Sequence[Market],
    *,
    address: str,
    promote: bool = True,
    on_done: Callable[[MarketOutcome], None] | None = None,
) -> list[MarketOutcome]:
    """Train ``markets`` one per task on the cluster at ``address``; publish each on this machine as it arrives.

    A task whose worker dies is run again elsewhere by Dask; one that fails for good (KilledWorker, a crash in the
    task) is that market's error, the others are still published."""
    registry = open_registry(settings)
    outcomes = {m: MarketOutcome(m) for m in markets}
    with connect(address) as client:
        distributed = _dask()
        # the biggest markets first (submitted first, and a higher Dask priority runs earlier): the longest task
        # must not start last, behind small ones, and leave the other workers idle at the end
        sizes = {m: expected_candles(settings, m) for m in markets}
        by_future = {
            client.submit(train_market, settings, m, key=f"xylen-train-{m.exchange}-{m.symbol}-{m.interval}-"
                          f"{os.getpid()}-{i}", pure=False, priority=sizes[m]): m
            for i, m in sorted(enumerate(markets), key=lambda im: -sizes[im[1]])
        }
        told = threading.Lock()  # one market's report at a time: two publishers never interleave their lines

        def tell(out: MarketOutcome) -> None:
            if on_done is not None:
                with told:
                    on_done(out)

        def settle(out: MarketOutcome, got: dict[str, Any]) -> None:
            finish(settings, registry, out, got, promote)
            tell(out)

        # each market's publication (mostly its promotion's verification child) runs beside the next arrivals, so a
        # result that lands while another is being published does not wait for it; every market is its own model
        # (own folder, own pointer), so two publications never touch the same files
        with ThreadPoolExecutor(max_workers=PUBLISHERS, thread_name_prefix="xylen-publish") as pool:
            publishing = []
            for fut in distributed.as_completed(list(by_future), loop=client.loop):
                m = by_future[fut]
                out = outcomes[m]
                try:
                    got = fut.result()
                except Exception as exc:  # the task itself failed (a dead worker, out of memory, a bug on the worker)
                    out.error = {
                        "exit_code": TrainingError.exit_code,
                        "type": type(exc).__name__,
                        "message": f"{m.label}: the task failed on the cluster: {type(exc).__name__}: "
                                   f"{str(exc)[:300]}",
                        "hint": "see the workers' logs; nothing was published for this market.",
                    }
                    tell(out)
                else:
                    publishing.append(pool.submit(settle, out, got))
            for done in publishing:
                done.result()  # finish() reports a market's XylenError in its outcome; anything else is a bug
    return [outcomes[m] for m in markets]


def expected_candles(settings: Settings, market: Market) -> int:
    """A market's training cost, roughly: its month partitions in the store times the candles a month holds. 0 when
    the store cannot say (the market's task then reports why)."""
    from xylen.core.intervals import approx_ms
    from xylen.core.store import open_store

    try:
        months = open_store(settings, market.exchange).months(market.symbol, market.interval)
        return months * (31 * 86_400_000 // approx_ms(market.interval))
    except XylenError:
        return 0


def markets_from(settings: Settings, symbols: Sequence[str], intervals: Sequence[str], exchange: str) -> list[Market]:
    """Every (symbol, interval) pair, in the order given, each once."""
    from xylen.core.intervals import INTERVALS
    from xylen.core.markets import canonical_symbol

    out: list[Market] = []
    for s in symbols:
        sym = canonical_symbol(s)
        for i in intervals:
            if i not in INTERVALS:
                raise ConfigError(
                    f"--intervals: {i!r} is not an interval xylen knows.", hint=f"use one of {' '.join(INTERVALS)}."
                )
            if (m := Market(sym, i, exchange)) not in out:
                out.append(m)
    return out


def train_here(
    settings: Settings,
    markets: Sequence[Market],
    *,
    promote: bool = True,
    on_done: Callable[[MarketOutcome], None] | None = None,
) -> list[MarketOutcome]:
    """The same markets one after another in this process (no cluster): `xylen train` for each."""
    from xylen.train.pipeline import TrainOptions, train

    outcomes = []
    for m in markets:
        out = MarketOutcome(m, host=os.uname().nodename)
        opts = TrainOptions(symbol=m.symbol, interval=m.interval, name=m.name, promote=promote, exchange=m.exchange)
        try:
            out.result = train(settings, opts)
        except XylenError as exc:
            out.error = error_record(exc)
        outcomes.append(out)
        if on_done is not None:
            on_done(out)
    return outcomes


# -- retrain --all --cluster ------------------------------------------------------------------------------------
def retrain_task(settings: Settings, name: str, mode: str, min_new_samples: int | None, explicit: bool,
                 ) -> dict[str, Any]:
    """One model's retrain on a worker: the candidate and the gate's verdict exactly as `xylen retrain` makes them
    (reading the live bundle and the store at the shared XYLEN_HOME), but nothing written: the candidate's files
    and the promotion the gate asks for go back to the client."""
    from xylen.profiles import resolve
    from xylen.train.retrain import ModelResult, RetrainOptions, retrain_model
    from xylen.train.threads import training_threads

    settings = worker_threads(settings)
    profile = resolve(settings.profile, max_memory_gb=settings.lgbm_max_memory_gb,
                      num_threads=settings.lgbm_num_threads)
    threads, _why = training_threads(profile.threads, explicit=settings.lgbm_num_threads is not None)
    profile = replace(profile, threads=threads)
    capture = _Capture(settings.models_location, slot=VERSION_SLOT, endpoint_url=settings.s3_endpoint_url,
                       cache=settings.home / "cache")  # the registry the settings name, as open_registry
    opts = RetrainOptions(names=(name,), min_new_samples=min_new_samples, mode=mode)  # type: ignore[arg-type]
    from xylen.core.markets import DEFAULT_EXCHANGE
    from xylen.core.store import open_store

    try:
        store = open_store(settings, DEFAULT_EXCHANGE)
        r = retrain_model(settings, capture, store, name, opts, profile, explicit=explicit)
    except XylenError as exc:
        r = ModelResult(name, "error", exc.message, error=error_record(exc))
    return {"result": r, "files": capture.files, "promote": capture.promote_request,
            "host": os.uname().nodename}


def retrain_on_cluster(settings: Settings, opts: Any, address: str) -> Any:
    """`xylen retrain` with its models' candidates made on the cluster; this process holds the run lock, and
    publishes, promotes (compare-and-swap against the live version each candidate was gated against), prunes
    and records the watch of each model, one at a time."""
    from xylen.core.markets import DEFAULT_EXCHANGE
    from xylen.core.runlock import RunLock, describe
    from xylen.core.store import open_store
    from xylen.train.retrain import ModelResult, RunReport, _prune, _watch, choose

    t0 = time.perf_counter()
    registry = open_registry(settings)
    lock = RunLock(settings.home)
    if opts.lock_fd is not None:
        lock.adopt(opts.lock_fd)
    elif not lock.try_acquire(by=opts.by, models=list(opts.names) or ["all live models" if opts.all else "default"]):
        msg = f"not run: {describe(lock.holder())} is retraining on this XYLEN_HOME (runs never overlap)"
        return RunReport([ModelResult(n, "busy", msg) for n in choose(registry, opts)], time.perf_counter() - t0)
    results: list[Any] = []
    with lock:
        names = choose(registry, opts)
        store = open_store(settings, DEFAULT_EXCHANGE)
        # models trained data-parallel (`train --distributed`) are refitted data-parallel over the whole cluster,
        # one at a time from here; the others are one task each
        parallel = [n for n in names if _trained_data_parallel(registry, n)]
        fanned = [n for n in names if n not in parallel]
        with connect(address) as client:
            distributed = _dask()
            futures = client.map(
                retrain_task, [settings] * len(fanned), fanned, [opts.mode] * len(fanned),
                [opts.min_new_samples] * len(fanned), [not opts.all] * len(fanned),
                key=[f"xylen-retrain-{n}-{os.getpid()}-{i}" for i, n in enumerate(fanned)], pure=False,
            )
            by_future = dict(zip(futures, fanned))
            done: dict[str, Any] = {}
            for fut in distributed.as_completed(futures, loop=client.loop):
                name = by_future[fut]
                t1 = time.perf_counter()
                try:
                    got = fut.result()
                except Exception as exc:  # the task failed on the cluster: nothing of it was written
                    r = ModelResult(name, "error", f"the task failed on the cluster: {type(exc).__name__}: "
                                    f"{str(exc)[:300]}; nothing was published",
                                    error={"exit_code": TrainingError.exit_code, "type": type(exc).__name__,
                                           "message": str(exc)[:300], "hint": "see the workers' logs."})
                else:
                    r = _settle(registry, got)
                r.pruned = _prune(registry, name, settings, r)
                r.watch = _watch(settings, registry, store, name, r)
                r.seconds += time.perf_counter() - t1
                done[name] = r
            for name in parallel:
                done[name] = _retrain_data_parallel(settings, registry, store, name, opts, client, address)
            results = [done[n] for n in names]
    return RunReport(results, time.perf_counter() - t0)


def _trained_data_parallel(registry: Registry, name: str) -> bool:
    """Whether the live version of ``name`` was trained data-parallel (an unreadable one: no, its task says why)."""
    from xylen.train.retrain import data_parallel

    ptr = registry.current(name)
    try:
        return ptr is not None and data_parallel(registry.manifest(name, ptr.version))
    except XylenError:
        return False


def _retrain_data_parallel(
    settings: Settings, registry: Registry, store: Any, name: str, opts: Any, client: Any, address: str
) -> Any:
    """One data-parallel model's retrain, driven from here (retrain_model with the cluster's client): the same
    rows, gate, publication and promotion as in one process, the candidate fitted over the cluster."""
    from xylen.profiles import resolve
    from xylen.train.pipeline import peak_rss_mb
    from xylen.train.retrain import COMMIT, ModelResult, _prune, _watch, retrain_model
    from xylen.train.threads import training_threads

    t1 = time.perf_counter()
    profile = resolve(settings.profile, max_memory_gb=settings.lgbm_max_memory_gb,
                      num_threads=settings.lgbm_num_threads)
    threads, _why = training_threads(profile.threads, explicit=settings.lgbm_num_threads is not None)
    profile = replace(profile, threads=threads)
    try:
        r = retrain_model(settings, registry, store, name, opts, profile, explicit=not opts.all, client=client,
                          address=address)
    except XylenError as exc:
        r = ModelResult(name, "error", exc.message, error=error_record(exc))
    finally:
        COMMIT.release()
    r.pruned = _prune(registry, name, settings, r)
    r.watch = _watch(settings, registry, store, name, r)
    r.seconds, r.peak_rss_mb = time.perf_counter() - t1, peak_rss_mb()
    return r


def _settle(registry: Registry, got: dict[str, Any]) -> Any:
    """Publish a worker's candidate as the next version and promote it when its gate passed: the client's part."""
    r = got["result"]
    if not got["files"]:
        return r
    try:
        version = publish_files(registry, r.name, got["files"])
    except XylenError as exc:
        r.outcome, r.message, r.error = "error", f"candidate not published: {exc.message}", error_record(exc)
        return r
    r.candidate_version = version
    r.message = r.message.replace(VERSION_SLOT, version)
    if got["promote"] is not False:
        try:
            registry.promote(r.name, version, expect_live=got["promote"])
        except PromotionConflict as exc:
            r.outcome, r.message = "conflict", f"candidate {version} not promoted: {exc.message}"
        except XylenError as exc:
            r.outcome, r.message, r.error = "error", f"{version} not promoted: {exc.message}", error_record(exc)
    return r
