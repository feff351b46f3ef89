"""The live models and their hot swap.

``ModelHolder.live`` is one dict ``{name: Live}`` that is replaced, never mutated: a request reads it once
and keeps the ``Live`` it got, so a swap never changes a model under a request in flight. One watcher thread
polls each model's CURRENT.json (stat, then contents) and swaps in a new version only after a child process
has verified it (core/verify.py), the server has loaded it, and a warm-up prediction has run.

Which models are served: ``--model`` names, else every registry model with a live version (a CURRENT.json;
a folder of versions never promoted is not served and does not hold readiness back), plus an explicitly set
default model; or the one MODEL_PATH (a bundle folder or a bare model file).

Many models. A poll (and the start-up, which is a first poll) collects every model whose CURRENT.json changed
and verifies them as one batch: ``verify_many_in_children`` (core/verify.py) spreads the batch over
min(usable cores, 4) children, each loading many bundles, where one child per bundle paid ~0.4 s of start-up
each. Each model is then loaded, warmed and swapped in, or refused, on its own: its own event, problems entry and
log line. An unchanged model costs a poll two stats (Registry.live_names: one listing of the registry and a stat
per model; then its CURRENT.json's stat against the last one seen), so 1,000 models are still looked at every
interval (~5 ms a poll).

Why loading in this process stays safe (the child exists because a corrupt LightGBM text model can abort the
process that parses or predicts with it, rather than raise):

- nothing is parsed here that a child has not parsed and predicted with first: the child answers with the sha256
  of the manifest.json it verified, and ``load_bundle(manifest_sha256=...)`` refuses a manifest with other bytes
  before it reads any artifact;
- that manifest names the size and sha256 of every artifact (the model and each head), and LightGBM parses the
  very bytes that were hashed (one read: core/backends/lightgbm.py), so a file replaced on disk after the child
  looked -- truncated, or another model -- is refused, never parsed; the pointer's own sha256 must match too;
- the bytes parsed here are therefore byte for byte those the child loaded and reproduced the golden predictions
  with, so the golden check is not repeated (the fast single-row path is still checked against the booster on
  the golden rows). A ``verify`` injected for one folder (tests) reports no digest: those loads check the golden
  predictions again, as before.
What this does not cover: ONNX and TorchScript artifacts are hashed, then opened by their runtime from the path,
so one swapped in between the hash and the open would be parsed unverified. Bundle folders are immutable by
contract (a new version is a new folder), so only a writer that breaks the contract can open that window.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xylen.core.bundle import ModelBundle, load_bundle, read_manifest
from xylen.core.errors import BundleError, XylenError
from xylen.core.intervals import INTERVALS
from xylen.core.rawmodel import load_raw, resolve_backend
from xylen.core.registry import POINTER, Pointer, Registry
from xylen.core.verify import Verdict, verify_in_child, verify_many_in_children, verify_raw_in_child
from xylen.serve.fastrow import RowPredictor, head_row_predictors, row_predictor

log = logging.getLogger("xylen.serve")
MODEL_PATH = "(MODEL_PATH)"


@dataclass(frozen=True)
class Live:
    """One loaded, verified, warm model version. Immutable: a swap makes a new one."""

    name: str
    version: str
    bundle: ModelBundle
    predict_row: RowPredictor
    predict_path: str
    loaded_at: float  # time.time()
    interval: str | None = None  # the candle interval it was trained on (manifest); None: a model from elsewhere
    exchange: str = "binance"  # whose candles it was trained on (manifest); /predict's 'exchange' must match
    # The /predict fields besides "probability", in bundle.outputs() order, each with its one-row predictor, or None
    # where the field is the primary's own probability (up_probability of a direction model). Precomputed: a bundle
    # without heads whose label has no field of its own has none, and its requests do no extra work.
    extra: tuple[tuple[str, RowPredictor | None], ...] = ()
    who: str = ""  # "model 'btcusdt-5m' (feature set ohlcv-v2)": how request errors name it
    members: tuple[Live, ...] = ()  # an ensemble's members, as they answer in it (serve/ensemble_live.py)

    @property
    def computes_features(self) -> bool:
        return self.bundle.computes_features

    @property
    def output_names(self) -> tuple[str, ...]:
        return ("probability", *(field for field, _ in self.extra))


def load_live(name: str | None, folder: Path, *, manifest_sha256: str | None = None) -> Live:
    """Load + warm in this process (after verify_in_child said it is safe). ``name`` defaults to the manifest's.

    ``manifest_sha256``: the manifest a verifier child loaded the folder with and reproduced the golden predictions
    of; the bundle is then loaded from those very bytes (else refused), and the golden check is not run again."""
    bundle = load_bundle(folder, check_golden=manifest_sha256 is None, num_threads=1, manifest_sha256=manifest_sha256)
    from xylen.serve.ensemble_live import EnsembleBundle, warm_ensemble

    if isinstance(bundle, EnsembleBundle):  # its members warmed at its manifest's versions, combined
        return warm_ensemble(name or bundle.name, bundle)
    return _warm(name or bundle.name, bundle)


def load_raw_live(path: Path, backend: str) -> Live:
    """A bare model file (after verify_raw_in_child said it is safe), named after the file."""
    bundle = load_raw(path, backend, num_threads=1)
    return _warm(bundle.name, bundle)


def _warm(name: str, bundle: ModelBundle) -> Live:
    interval = bundle.manifest.interval
    if interval is not None and interval not in INTERVALS:
        raise BundleError(
            f"Bundle {name} {bundle.version}: the manifest's interval {interval[:20]!r} is not a Binance interval.",
            hint="the manifest is damaged; retrain or re-import the model.",
        )
    predict_row, how = row_predictor(bundle)
    heads = {field: (fn, path) for field, fn, path in head_row_predictors(bundle)}
    slow = sorted({path for _, path in heads.values() if path != how})
    if slow:  # say so in /models and the swap log: a head off the fast path costs ~tens of µs a request
        how += f" (heads: {', '.join(slow)})"
    extra = tuple((field, heads[field][0] if field in heads else None) for field in bundle.outputs()
                  if field != "probability")
    warm = np.zeros(bundle.num_feature())
    for _ in range(3):  # first calls allocate LightGBM's buffers; pay that here, not in a request
        predict_row(warm)
        for fn, _ in heads.values():
            fn(warm)
    return Live(
        name=name,
        version=bundle.version,
        bundle=bundle,
        predict_row=predict_row,
        predict_path=how,
        loaded_at=time.time(),
        interval=interval,
        exchange=bundle.manifest.exchange,  # one of markets.EXCHANGES: the manifest's validator says so
        extra=extra,
        who=f"model {name!r} (feature set {bundle.manifest.feature_set.version})",
    )


@dataclass
class SwapEvents:
    """Callbacks for metrics; the holder knows nothing about Prometheus."""

    accepted: Callable[[Live], None] = lambda live: None
    refused: Callable[[str, str, str], None] = lambda name, version, reason: None


class ModelHolder:
    def __init__(
        self,
        registry: Registry | None,
        names: list[str] | None = None,
        *,
        model_path: Path | None = None,
        default: str | None = None,
        backend: str | None = None,
        verify: Callable[[Path], str | None] = verify_in_child,
        verify_many: Callable[[Sequence[Path]], dict[Path, Verdict]] | None = None,
        events: SwapEvents | None = None,
    ) -> None:
        self.registry = registry
        self.model_path = model_path
        self.fixed_names = list(names or [])
        # the explicitly configured default model (XYLEN_DEFAULT_MODEL, the first --model, the MODEL_PATH model);
        # None: a request is answered only by its own series' model, or by the only model served
        self.default_name = default
        self.backend = backend  # MODEL_TYPE: a version of another backend is refused
        self.verify = verify
        # a batch in a few children (core/verify.py --many); an injected one-folder ``verify`` is asked per folder
        self.verify_many = verify_many or (verify_many_in_children if verify is verify_in_child else None)
        self.events = events or SwapEvents()
        from xylen.serve.ensemble_live import Ensembles  # imports this module

        self.ensembles = Ensembles(follow=model_path is None)  # the ensembles served, and their members' swaps
        self.live: dict[str, Live] = {}  # replaced, never mutated
        self.served: tuple[str, ...] = ()  # expected() as of the last poll: read per request without disk I/O
        self.problems: dict[str, str] = {}
        self.refused: dict[str, tuple[str, str, str]] = {}
        self._seen: dict[str, object] = {}  # name -> CURRENT.json's (inode, mtime, size), or its S3 ETag
        self._tokens: dict[str, str] | None = None  # S3: this poll's pointer ETags (Registry.pointer_tokens)
        self._pointer_paths: dict[str, str] = {}
        self._lock = threading.Lock()  # writers only: the watcher and an admin rollback
        self.started = False
        self.draining = False

    # -- reading (any thread) ------------------------------------------------------------------------------
    def expected(self) -> list[str]:
        """The models this server must serve before it is ready."""
        if self.model_path is not None:
            return list(self.live) or [MODEL_PATH]
        if self.registry and not self.fixed_names:
            registered = sorted(self._tokens) if self._tokens is not None else self.registry.live_names()
        else:
            registered = []
        names = list(self.fixed_names) or registered
        if self.default_name is not None and self.default_name not in names:
            names.append(self.default_name)
        names += [n for n in self.ensembles.needed() if n not in names]  # members of ensembles: loaded like these
        return names

    def default(self) -> Live | None:
        """The explicitly configured default model, when it is live."""
        return self.live.get(self.default_name) if self.default_name is not None else None

    def only(self) -> Live | None:
        """The one model, when exactly one is served (and live)."""
        live = self.live
        if len(live) == 1 and len(self.served) <= 1:
            return next(iter(live.values()))
        return None

    def not_ready_reason(self) -> str | None:
        if self.draining:
            return "shutting down"
        if not self.started:
            return "loading models"
        # the watcher's last look (every poll interval), not the disk: /predict's 503 and the probes read this
        expected = self.expected() if self.model_path is not None else list(self.served)
        if not expected:
            root = self.registry.location if self.registry else "?"
            return (
                f"no models with a live version in {root}; train one with `xylen train`, or make a version live "
                "with `xylen models promote NAME VERSION`"
            )
        live = self.live
        missing = [n for n in expected if n not in live]
        if missing:
            n = missing[0]
            return f"model {n!r} is not loaded: {self.problems.get(n, 'loading')}"
        return None

    # -- writing (watcher thread) --------------------------------------------------------------------------
    def load_all(self) -> None:
        if self.model_path is not None:
            self._load_path(self.model_path)
        else:
            self.poll()
            for _ in range(8):  # the members of the ensembles just loaded (and theirs), before readiness is judged
                if set(self.expected()) <= set(self.served):
                    break
                self.poll()
            if not self.served:
                log.warning(
                    "no models with a live version in %s yet: readiness answers 503 and /predict 503 until one "
                    "is promoted (`xylen train`); it is picked up within a second",
                    self.registry.location if self.registry else "?",
                )
        self.started = True

    def _load_path(self, path: Path) -> None:
        """MODEL_PATH: one bundle folder, or one bare model file (the alpha's trading_model.txt)."""
        try:
            if path.is_file():
                backend = resolve_backend(path, self.backend)
                reason = verify_raw_in_child(path, backend)
                if reason is None:
                    self._publish_default(load_raw_live(path, backend))
                    return
            else:
                reason = self._backend_problem(path) or self.verify(path)
                if reason is None:
                    self._publish_default(load_live(None, path))
                    return
        except XylenError as exc:
            reason = exc.message
        self.problems[MODEL_PATH] = reason or "unknown"
        log.error("MODEL_PATH %s refused: %s", path, reason)

    def _publish_default(self, live: Live) -> None:
        self.default_name = live.name  # the one MODEL_PATH model answers every request (same timeframe only)
        self._publish(live)
        self.served = (live.name,)

    def _backend_problem(self, folder: Path) -> str | None:
        """Why MODEL_TYPE refuses the bundle in ``folder`` (None: it does not, or MODEL_TYPE is unset)."""
        if self.backend is None:
            return None
        backend = read_manifest(folder).backend
        if backend == self.backend:
            return None
        return f"its backend is {backend} but MODEL_TYPE is {self.backend}; unset MODEL_TYPE to serve it"

    def poll(self) -> None:
        """One pass over the registry: every model whose CURRENT changed is verified in one batch, then swapped in
        (or refused) one by one."""
        if self.registry is None:
            return
        self._tokens = None
        if self.registry.remote:
            # S3: one listing and one HEAD per model (the pointer's ETag) tell every promotion; a GET only on change
            try:
                self._tokens = self.registry.pointer_tokens() if not self.fixed_names else {
                    n: t for n in self.fixed_names if (t := self.registry.storage.token(f"{n}/{POINTER}"))}
            except XylenError as exc:  # the object store is unreachable: keep serving what is live, look again
                log.error("cannot read the registry %s: %s", self.registry.location, exc.message)
                return
        names = self.expected()
        self.served = tuple(names)
        changed: list[tuple[str, Pointer]] = []
        for name in names:
            try:
                ptr = self._changed_pointer(name)
            except Exception as exc:  # never let one model's trouble stop the watcher
                log.exception("watching %s failed: %s", name, exc)
                continue
            if ptr is not None:
                changed.append((name, ptr))
        if changed:
            try:
                self.consider_many(changed)
            except Exception as exc:  # consider_many settles each model on its own; this is a bug's last resort
                log.exception("swapping in %d models failed: %s", len(changed), exc)

    def _changed_pointer(self, name: str) -> Pointer | None:
        """``name``'s pointer when CURRENT.json changed since the last look (one stat when it did not)."""
        assert self.registry is not None
        if self.registry.remote:
            return self._changed_remote_pointer(name)
        path = self._pointer_paths.get(name)
        if path is None:  # joined once: pathlib's "/" costs more than the stat itself, 1,000 times a poll
            path = self._pointer_paths[name] = os.path.join(self.registry.root, name, POINTER)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            self.problems.setdefault(name, f"no live version; promote one with `xylen models promote {name} vNNNN`")
            return None
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if self._seen.get(name) == key:
            return None
        try:
            ptr = self.registry.current(name)
        except XylenError as exc:
            self.problems[name] = exc.message
            return None  # a half-visible pointer cannot happen (rename), so this is a bad pointer: wait for the next
        self._seen[name] = key
        return ptr

    def _changed_remote_pointer(self, name: str) -> Pointer | None:
        """S3: the pointer when its ETag changed since the last look (this poll's HEAD; a GET only then)."""
        assert self.registry is not None
        token = (self._tokens or {}).get(name)
        if token is None:
            self.problems.setdefault(name, f"no live version; promote one with `xylen models promote {name} vNNNN`")
            return None
        if self._seen.get(name) == token:
            return None
        try:
            ptr, read_token = self.registry._read_pointer(name)
        except XylenError as exc:
            self.problems[name] = exc.message
            return None
        self._seen[name] = read_token
        return ptr

    def consider(self, name: str, ptr: Pointer) -> bool:
        """Verify, load, warm and swap in ``ptr``'s version unless it is live already or was refused."""
        return self.consider_many([(name, ptr)])[name]

    def consider_many(self, pointers: Sequence[tuple[str, Pointer]]) -> dict[str, bool]:
        """``consider`` for many models: the new versions are verified as one batch (a few children for all of
        them, core/verify.py), then each is loaded, warmed and swapped in, or refused, on its own: its own event,
        problems entry and log line, and one refused model never holds the others back. name -> live now."""
        assert self.registry is not None
        settled: dict[str, bool] = {}
        todo: list[tuple[str, Pointer, Path]] = []
        for name, ptr in pointers:
            current = self.live.get(name)
            if (
                current is not None
                and current.version == ptr.version
                and current.bundle.manifest.artifact.sha256 == ptr.sha256
            ):
                settled[name] = True
            elif self.refused.get(name) == (ptr.version, ptr.sha256, ptr.promoted_at):
                settled[name] = False  # refused once; not retried until CURRENT changes again
            else:
                try:
                    folder = self.registry.path(name, ptr.version)  # S3: downloaded into the local cache
                except BundleError as exc:  # S3: the copy does not match its manifest (tampered): refused
                    settled[name] = self._refuse(name, ptr, exc.message)
                    continue
                except XylenError as exc:  # S3 unreachable: not a refusal, look again next poll
                    self._seen.pop(name, None)
                    log.error("fetching %s %s failed (tried again next poll): %s", name, ptr.version, exc.message)
                    settled[name] = False
                    continue
                todo.append((name, ptr, folder))
        t0 = time.perf_counter()
        verdicts = self._verify_batch([folder for _, _, folder in todo])
        verified_s = time.perf_counter() - t0
        for name, ptr, folder in todo:
            try:
                settled[name] = self._swap_in(name, ptr, folder, verdicts[folder], verified_s, len(todo))
            except Exception as exc:  # a bug in one model's load must not keep the rest of the batch out
                log.exception("swapping in %s %s failed: %s", name, ptr.version, exc)
                settled[name] = False
        return settled

    def _verify_batch(self, folders: list[Path]) -> dict[Path, Verdict]:
        """folder -> its verdict (out of process); MODEL_TYPE's refusals cost no child."""
        verdicts: dict[Path, Verdict] = {}
        for folder in folders:
            try:
                verdicts[folder] = Verdict(self._backend_problem(folder))
            except XylenError as exc:
                verdicts[folder] = Verdict(exc.message)
        check = [f for f in folders if verdicts[f].reason is None]
        if self.verify_many is not None and check:
            verdicts.update(self.verify_many(check))
            return verdicts
        for folder in check:
            try:
                verdicts[folder] = Verdict(self.verify(folder))
            except XylenError as exc:
                verdicts[folder] = Verdict(exc.message)
        return verdicts

    def _swap_in(self, name: str, ptr: Pointer, folder: Path, verdict: Verdict, verified_s: float,
                 batch: int) -> bool:
        """Load, warm and publish ``folder`` when its verification passed, or refuse it."""
        current = self.live.get(name)
        t0 = time.perf_counter()
        live = None
        reason = verdict.reason
        if reason is None:
            try:
                live = load_live(name, folder, manifest_sha256=verdict.manifest_sha256)
                if live.bundle.manifest.artifact.sha256 != ptr.sha256:
                    reason = (
                        f"CURRENT.json names sha256 {ptr.sha256[:12]}... but {ptr.version}'s artifact has "
                        f"{live.bundle.manifest.artifact.sha256[:12]}...; promote it again"
                    )
                    live = None
            except XylenError as exc:
                reason = exc.message
        if live is None:
            return self._refuse(name, ptr, reason)
        self._publish(live)
        log.info(
            "%s: now serving %s (was %s; verified in %.2f s%s, loaded in %.3f s, %s)",
            name,
            live.version,
            current.version if current else "none",
            verified_s,
            f" with {batch - 1} other models" if batch > 1 else "",
            time.perf_counter() - t0,
            live.predict_path,
        )
        return True

    def _refuse(self, name: str, ptr: Pointer, reason: str | None) -> bool:
        current = self.live.get(name)
        self.refused[name] = (ptr.version, ptr.sha256, ptr.promoted_at)
        if current is None:
            self.problems[name] = f"{ptr.version} refused: {reason}"
        log.error(
            "refused %s %s (keeping %s): %s", name, ptr.version, current.version if current else "nothing", reason
        )
        self.events.refused(name, ptr.version, reason or "unknown")
        return False

    def _publish(self, live: Live) -> None:
        with self._lock:
            # rebinding, not mutating: requests in flight keep the dict (and Live) they already read
            self.problems.pop(live.name, None)
            self.refused.pop(live.name, None)
            # and every ensemble built on it, re-built in the same one assignment (serve/ensemble_live.py)
            self.live = self.ensembles.rebind(self.live, live, self.problems)
        self.events.accepted(live)

    # -- the watcher -----------------------------------------------------------------------------------------
    def start_watching(self, interval: float = 0.5) -> threading.Event:
        stop = threading.Event()

        def run() -> None:
            try:
                self.load_all()
            except Exception:
                log.exception("initial model load failed")
                self.started = True
            if self.model_path is not None:
                return  # MODEL_PATH serves one folder as it is
            while not stop.wait(interval):
                self.poll()

        threading.Thread(target=run, name="xylen-model-watcher", daemon=True).start()
        return stop
