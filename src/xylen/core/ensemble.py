"""Ensembles: a registry model whose versions combine other models' probabilities.

An ensemble version is a bundle like any other (``models/<name>/vNNNN/``): its artifact ``ensemble.json`` holds the
spec as the user gave it -- members (``name``: follows that model's live version; ``name@v0002``: that version),
weights and the aggregation -- and its manifest (backend ``ensemble``) names the version of every member resolved at
creation, with golden rows computed through the whole ensemble with those versions. Verification is the same as
for any bundle (core/verify.py loads every member at its manifest version and reproduces the golden rows), so
``Registry.promote``/``rollback`` work unchanged. Members share one label, one set of outputs and one feature set
(version, names in order, interval): the ensemble feeds all of them the same row. Creation refuses anything else,
and a cycle (an ensemble that reaches itself through its members), with a message naming the value and the fix.

Aggregations, on each member's probability p_i with weights w_i: ``mean`` (unweighted), ``weighted``
(sum w_i p_i / sum w_i), ``vote`` (weighted majority: the weighted share of members with p_i >= 0.5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from xylen.core import features
from xylen.core.bundle import (
    Manifest,
    ModelBundle,
    artifact_info,
    load_bundle,
    new_manifest,
    outputs_of,
    read_manifest,
    verify_artifact,
    write_durably,
    write_manifest,
)
from xylen.core.errors import BundleError, ConfigError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from xylen.core.backends import Predictor
    from xylen.core.registry import Registry

SPEC_FILE = "ensemble.json"
AGGREGATIONS = ("mean", "weighted", "vote")
MAX_MEMBERS = 32
GOLDEN_ROWS = 8


@dataclass(frozen=True)
class MemberRef:
    name: str
    version: str | None  # None: follows the member's live version

    def text(self) -> str:
        return self.name if self.version is None else f"{self.name}@{self.version}"


@dataclass(frozen=True)
class Spec:
    """What ensemble.json says: the members as given, one weight each, and the aggregation."""

    members: tuple[MemberRef, ...]
    weights: tuple[float, ...]
    aggregation: str

    def normalized(self) -> tuple[float, ...]:
        """The weights each member's probability is multiplied by (mean: all equal); they sum to 1."""
        w = (1.0,) * len(self.members) if self.aggregation == "mean" else self.weights
        total = math.fsum(w)
        return tuple(x / total for x in w)

    def to_json(self) -> bytes:
        return orjson.dumps(
            {"members": [m.text() for m in self.members], "weights": list(self.weights),
             "aggregation": self.aggregation},
            option=orjson.OPT_INDENT_2,
        )


def parse_member(text: str) -> MemberRef:
    """``name`` or ``name@vNNNN``; a ConfigError quoting anything else."""
    from xylen.core.registry import check_name, check_version

    name, at, version = str(text).partition("@")
    try:
        check_name(name)
        if at:
            check_version(name, version)
    except (ConfigError, BundleError):
        raise ConfigError(
            f"Member {str(text)[:80]!r} is not a model name or name@version.",
            hint="give --member btcusdt-5m-a (follows its live version) or --member btcusdt-5m-a@v0002.",
        ) from None
    return MemberRef(name, version if at else None)


def make_spec(members: Sequence[str], weights: Sequence[float] | None = None, aggregation: str | None = None) -> Spec:
    """The spec for the given members, weights and aggregation; a ConfigError naming the first bad value.

    Without an aggregation: ``weighted`` when weights are given, else ``mean``."""
    refs = tuple(parse_member(m) for m in members)
    if len(refs) < 2:
        raise ConfigError(
            f"An ensemble needs at least 2 members; got {len(refs)} ({', '.join(m.text() for m in refs) or 'none'}).",
            hint="give --member once per model, e.g. --member btcusdt-5m-a --member btcusdt-5m-b.",
        )
    if len(refs) > MAX_MEMBERS:
        raise ConfigError(f"An ensemble of {len(refs)} members is more than {MAX_MEMBERS}.",
                          hint="combine fewer models, or nest ensembles.")
    if aggregation is not None and aggregation not in AGGREGATIONS:
        raise ConfigError(f"Unknown aggregation {str(aggregation)[:40]!r}.",
                          hint=f"use one of: {', '.join(AGGREGATIONS)}.")
    if weights:
        if len(weights) != len(refs):
            raise ConfigError(
                f"{len(weights)} weights for {len(refs)} members ({', '.join(m.text() for m in refs)}).",
                hint="give one --weight per --member, in the same order, or none.",
            )
        for ref, w in zip(refs, weights):
            if not isinstance(w, (int, float)) or isinstance(w, bool) or not math.isfinite(w) or w <= 0:
                raise ConfigError(f"Weight {w!r} of member {ref.text()!r} is not a finite number above 0.",
                                  hint="weights are positive numbers like 2 or 0.5.")
        if not math.isfinite(sum(float(w) for w in weights)):  # normalizing divides by the sum
            raise ConfigError(f"Weights {list(weights)} add up to more than a float holds.",
                              hint="only the weights' ratios matter: scale them down, e.g. 2 and 1.")
        agg = aggregation or "weighted"
        if agg == "mean" and len(set(weights)) > 1:
            raise ConfigError(
                f"Weights {list(weights)} were given with aggregation 'mean', which ignores them.",
                hint="use --aggregation weighted (or vote), or leave the weights out.",
            )
        return Spec(refs, tuple(float(w) for w in weights), agg)
    return Spec(refs, (1.0,) * len(refs), aggregation or "mean")


def read_spec(folder: Path, manifest: Manifest) -> Spec:
    """The spec in a verified ensemble bundle, checked against its manifest (BundleError when they disagree)."""
    verify_artifact(folder, manifest)
    where = str(folder / manifest.artifact.file)
    try:
        raw = orjson.loads((folder / manifest.artifact.file).read_bytes())
        spec = make_spec([str(m) for m in raw["members"]], [float(w) for w in raw["weights"]], str(raw["aggregation"]))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, ConfigError) as exc:
        why = exc.message if isinstance(exc, ConfigError) else str(exc)[:200]
        raise BundleError(f"{where!r} is not a valid ensemble spec ({why}).",
                          hint="the bundle is damaged; roll back or create the ensemble again.") from None
    recorded = resolved_members(manifest)
    if [m["name"] for m in recorded] != [m.name for m in spec.members]:
        raise BundleError(f"{where!r} names members {[m.text() for m in spec.members]} but the manifest resolves "
                          f"{[m['name'] for m in recorded]}.", hint="the bundle is damaged; roll back.")
    return spec


def resolved_members(manifest: Manifest) -> list[dict[str, Any]]:
    """The manifest's members: [{name, version, follows_live, weight, backend, sha256}] (the versions the golden rows
    were computed with)."""
    info = (manifest.model_extra or {}).get("ensemble")
    members = info.get("members") if isinstance(info, dict) else None
    if not isinstance(members, list) or not all(
        isinstance(m, dict) and isinstance(m.get("name"), str) and isinstance(m.get("version"), str) for m in members
    ):
        raise BundleError(f"Ensemble {manifest.name} {manifest.version}: the manifest does not name its members' "
                          "versions.", hint="the manifest is damaged; roll back or create the ensemble again.")
    return members


def ensemble_info(manifest: Manifest) -> dict[str, Any]:
    info = (manifest.model_extra or {}).get("ensemble")
    return info if isinstance(info, dict) else {}


# -- the math ----------------------------------------------------------------------------------------------------
def aggregate(values: np.ndarray, weights: Sequence[float], aggregation: str) -> np.ndarray:
    """Combine (n_members, n_rows) probabilities with normalized ``weights``."""
    w = np.asarray(weights, dtype=np.float64)[:, None]
    v = np.asarray(values, dtype=np.float64)
    if aggregation == "vote":
        v = (v >= 0.5).astype(np.float64)
    out: np.ndarray = (w * v).sum(axis=0)
    return out


def row_aggregator(fns: Sequence[Callable[[np.ndarray], float]], weights: Sequence[float], aggregation: str
                   ) -> Callable[[np.ndarray], float]:
    """One row through every member's one-row predictor, combined as ``aggregate`` does (the serving path)."""
    pairs = tuple(zip(fns, (float(w) for w in weights)))
    if aggregation == "vote":
        def vote(row: np.ndarray) -> float:
            return sum(w for fn, w in pairs if fn(row) >= 0.5)
        return vote

    def weighted(row: np.ndarray) -> float:
        total = 0.0
        for fn, w in pairs:
            total += w * fn(row)
        return total

    return weighted


class EnsemblePredictor:
    """The Predictor protocol over member predictors."""

    backend = "ensemble"

    def __init__(self, members: Sequence[Predictor], weights: Sequence[float], aggregation: str, n: int) -> None:
        self.members = tuple(members)
        self.weights = tuple(weights)
        self.aggregation = aggregation
        self._n = n

    def predict(self, X: np.ndarray) -> np.ndarray:
        return aggregate(np.vstack([np.asarray(m.predict(X), dtype=np.float64) for m in self.members]), self.weights,
                         self.aggregation)

    def num_feature(self) -> int:
        return self._n


def member_output(bundle: ModelBundle, field: str) -> Predictor | None:
    """The predictor behind ``field`` of a member: its head, or None where the field is its primary's own."""
    return dict(bundle.heads).get(field)


class EnsembleBundle(ModelBundle):
    """A loaded ensemble version: its members' bundles combined. ``with_members`` makes the same ensemble over other
    member versions (a server's members follow their live versions)."""

    def __init__(self, folder: Path, manifest: Manifest, spec: Spec, members: Sequence[ModelBundle],
                 manifest_sha256: str | None = None) -> None:
        self.spec = spec
        self.members = tuple(members)
        self.weights = spec.normalized()
        n = len(manifest.feature_set.names)
        primary = EnsemblePredictor([m.predictor for m in members], self.weights, spec.aggregation, n)
        heads: list[tuple[str, Predictor]] = []
        for field in list(outputs_of(manifest))[1:]:
            preds = [member_output(m, field) for m in members]
            if any(p is not None for p in preds):
                heads.append((field, EnsemblePredictor([p or m.predictor for p, m in zip(preds, members)],
                                                       self.weights, spec.aggregation, n)))
        super().__init__(folder, manifest, primary, heads, manifest_sha256=manifest_sha256)

    def with_members(self, members: Sequence[ModelBundle]) -> EnsembleBundle:
        return EnsembleBundle(self.folder, self.manifest, self.spec, members, self.manifest_sha256)

    def check_golden(self) -> None:
        super().check_golden()  # the primary: golden rows and the candle window through every member
        g = self.manifest.golden
        X = np.array([[np.nan if v is None else v for v in r] for r in g.rows], dtype=np.float64)
        heads = dict(self.heads)
        recorded = ensemble_info(self.manifest).get("heads") or {}
        for field in list(self.outputs())[1:]:
            want = recorded.get(field) if isinstance(recorded, dict) else None
            if not isinstance(want, dict):
                continue  # the primary's own field (up_probability of a direction label): checked above
            pred = heads.get(field, self.predictor)
            got = pred.predict(X)
            ok = np.allclose(got, np.asarray(want.get("golden_outputs")), rtol=0, atol=1e-5)
            if ok and g.window is not None and isinstance(want.get("window_output"), float):
                row = self.row_of(features.CandleArrays.from_matrix(np.asarray(g.window, dtype=np.float64)))
                ok = abs(float(pred.predict(row.reshape(1, -1))[0]) - want["window_output"]) <= 1e-5
            if not ok:
                raise BundleError(f"Ensemble {self.name} {self.version}: the {field} golden predictions differ from "
                                  "the manifest.", hint="a member does not behave as it did at creation; roll back.")


def load_ensemble(folder: Path, manifest: Manifest, *, check_golden: bool = True, num_threads: int = 1,
                  manifest_sha256: str | None = None, _path: tuple[str, ...] = ()) -> EnsembleBundle:
    """Load every member at the version the manifest names (each verified like any bundle), then the ensemble's own
    golden rows. The registry is the one the bundle lives in (``<root>/<name>/vNNNN``)."""
    from xylen.core.registry import Registry

    spec = read_spec(folder, manifest)
    registry = Registry(folder.parent.parent)
    path = (*_path, manifest.name)
    members: list[ModelBundle] = []
    for ref, rec in zip(spec.members, resolved_members(manifest)):
        if ref.name in path:
            raise BundleError(f"Ensemble {manifest.name} {manifest.version} is a cycle: "
                              f"{' -> '.join((*path, ref.name))}.",
                              hint="an ensemble may not contain itself; roll back.")
        mfolder = _member_folder(registry, manifest, ref.name, str(rec["version"]))
        mm = read_manifest(mfolder)
        if rec.get("sha256") and mm.artifact.sha256 != rec["sha256"]:
            raise BundleError(f"Ensemble {manifest.name} {manifest.version}: member {ref.name} {rec['version']} has "
                              f"sha256 {mm.artifact.sha256[:12]}... but the ensemble was made with "
                              f"{str(rec['sha256'])[:12]}....", hint="that member version was replaced; roll back.")
        if mm.backend == "ensemble":
            members.append(load_ensemble(mfolder, mm, check_golden=check_golden, num_threads=num_threads, _path=path))
        else:
            members.append(load_bundle(mfolder, check_golden=check_golden, num_threads=num_threads))
    problem = incompatible(manifest, [m.manifest for m in members])
    if problem:
        raise BundleError(f"Ensemble {manifest.name} {manifest.version}: {problem}", hint="roll back.")
    bundle = EnsembleBundle(folder, manifest, spec, members, manifest_sha256)
    if not _path:
        cycle = find_cycle(registry, manifest.name, spec.members)
        if cycle:
            raise BundleError(f"Ensemble {manifest.name} {manifest.version} would be a cycle: {cycle}.",
                              hint="an ensemble may not reach itself through its members' live versions; promote "
                              "another version of a member, or roll back.")
    if check_golden:
        bundle.check_golden()
    return bundle


def _member_folder(registry: Registry, manifest: Manifest, name: str, version: str) -> Path:
    folder = registry.path(name, version)
    if not folder.is_dir():
        raise BundleError(
            f"Ensemble {manifest.name} {manifest.version}: member {name} {version} is missing from "
            f"{str(registry.root)!r}.",
            hint=f"it was removed; restore it, or create the ensemble again (`xylen models ensemble create "
            f"{manifest.name} ...`) with versions that exist.",
        )
    return folder


# -- compatibility and cycles ------------------------------------------------------------------------------------
def incompatible(first: Manifest, others: Sequence[Manifest]) -> str | None:
    """Why one row cannot feed ``first`` and each of ``others`` alike (None: it can)."""
    want_out = list(outputs_of(first))
    for m in others:
        who = f"member {m.name} {m.version}"
        if m.feature_set.version != first.feature_set.version or m.feature_set.names != first.feature_set.names:
            return (f"{who} has feature set {m.feature_set.version!r} ({len(m.feature_set.names)} features), not "
                    f"{first.feature_set.version!r} ({len(first.feature_set.names)} features) like {first.name}: one "
                    "row cannot feed both.")
        if m.interval != first.interval:
            return f"{who} was trained on {m.interval} candles, {first.name} on {first.interval} candles."
        if m.label != first.label:
            return f"{who} predicts another label ({str(m.label)[:120]}) than {first.name} ({str(first.label)[:120]})."
        if list(outputs_of(m)) != want_out:
            return f"{who} answers {', '.join(outputs_of(m))}, {first.name} answers {', '.join(want_out)}."
        if m.exchange != first.exchange:
            return f"{who} was trained on {m.exchange}'s candles, {first.name} on {first.exchange}'s."
    return None


def find_cycle(registry: Registry, name: str, refs: Sequence[MemberRef]) -> str | None:
    """``a -> b -> a`` when ``name`` with these members would reach a model twice on one path (following each member's
    pinned version, or its live one); None when it would not."""

    def walk(path: tuple[str, ...], refs: Sequence[MemberRef]) -> str | None:
        for ref in refs:
            if ref.name in path:
                return " -> ".join((*path, ref.name))
            try:
                version = ref.version or (registry.current(ref.name) or _NoLive).version
                m = registry.manifest(ref.name, version)
                if m.backend != "ensemble":
                    continue
                sub = [parse_member(str(x)) for x in orjson.loads((registry.path(ref.name, version) / SPEC_FILE)
                                                                  .read_bytes())["members"]]
            except (BundleError, ConfigError, OSError, KeyError, TypeError, ValueError, orjson.JSONDecodeError):
                continue  # a member that cannot be read is refused where it is loaded, with its own reason
            found = walk((*path, ref.name), sub)
            if found:
                return found
        return None

    return walk((name,), refs)


class _NoLive:
    version = ""


# -- creation ----------------------------------------------------------------------------------------------------
def _resolve(registry: Registry, ref: MemberRef) -> str:
    versions = registry.versions(ref.name)
    if not versions:
        raise BundleError(
            f"Member {ref.text()!r}: no model named {ref.name!r} in {str(registry.root)!r} "
            f"(known: {', '.join(registry.names()) or 'none'}).",
            hint="see `xylen models list`; train or import the member first.",
        )
    if ref.version is not None:
        if ref.version not in versions:
            raise BundleError(f"Member {ref.text()!r}: model {ref.name!r} has no version {ref.version} "
                              f"(known: {', '.join(versions)}).", hint=f"see `xylen models list {ref.name}`.")
        return ref.version
    live = registry.current(ref.name)
    if live is None:
        raise BundleError(
            f"Member {ref.text()!r} has no live version to follow.",
            hint=f"promote one (`xylen models promote {ref.name} vNNNN`) or pin a version: {ref.name}@{versions[-1]}.",
        )
    return live.version


def create(registry: Registry, name: str, members: Sequence[str], weights: Sequence[float] | None = None,
           aggregation: str | None = None, *, promote: bool = False) -> tuple[str, Manifest]:
    """Write a new version of ensemble ``name`` (and make it live with ``promote``). Every member version is verified
    in a child process before this process loads it, and pinned (`xylen models pin`) so that no prune removes a
    version the ensemble's golden rows need. Returns (version, manifest)."""
    from xylen.core.registry import check_name

    check_name(name)
    spec = make_spec(members, weights, aggregation)
    cycle = find_cycle(registry, name, spec.members)
    if cycle:
        raise ConfigError(f"Ensemble {name!r} would be a cycle: {cycle}.",
                          hint="an ensemble may not contain itself, directly or through another ensemble.")
    versions = [_resolve(registry, ref) for ref in spec.members]
    manifests = [registry.verify(ref.name, v) for ref, v in zip(spec.members, versions)]  # in a child process
    problem = incompatible(manifests[0], manifests[1:])
    if problem:
        raise ConfigError(f"Ensemble {name!r}: {problem}",
                          hint="combine models trained on the same feature set, label, outputs and interval.")
    loaded = [load_ensemble(registry.path(r.name, v), m) if m.backend == "ensemble"
              else load_bundle(registry.path(r.name, v)) for r, v, m in zip(spec.members, versions, manifests)]
    first = manifests[0]
    rows = np.array([r for m in manifests for r in m.golden.rows][:GOLDEN_ROWS], dtype=np.float64)
    window_of = next((m for m in manifests if m.golden.window is not None), None)
    symbols = {m.symbol for m in manifests}
    with registry.stage(name) as staging:
        spec_file = staging / SPEC_FILE
        write_durably(spec_file, spec.to_json())
        info = {
            "aggregation": spec.aggregation,
            "members": [{"name": r.name, "version": v, "follows_live": r.version is None, "weight": w,
                         "backend": m.backend, "sha256": m.artifact.sha256}
                        for r, v, w, m in zip(spec.members, versions, spec.weights, manifests)],
            "outputs": outputs_of(first),
        }
        draft = new_manifest(name=name, version="v0000", backend="ensemble", artifact=artifact_info(spec_file),
                             feature_set=first.feature_set.model_dump(), label=first.label,
                             symbol=symbols.pop() if len(symbols) == 1 else None, interval=first.interval,
                             exchange=first.exchange, golden={"rows": [[0.0]], "outputs": [0.0]}, ensemble=info)
        bundle = EnsembleBundle(staging, draft, spec, loaded)
        golden: dict[str, Any] = {"rows": [[None if math.isnan(x) else x for x in r] for r in rows.tolist()],
                                  "outputs": bundle.predict(rows).tolist()}
        window_row = None
        if window_of is not None and bundle.features is not None:
            golden["window"] = window_of.golden.window
            window_row = bundle.row_of(features.CandleArrays.from_matrix(np.asarray(golden["window"]))).reshape(1, -1)
            golden["window_output"] = float(bundle.predict(window_row)[0])
        info["heads"] = {
            field: {"golden_outputs": pred.predict(rows).tolist(),
                    "window_output": None if window_row is None else float(pred.predict(window_row)[0])}
            for field, pred in bundle.heads
        }
        manifest = Manifest.model_validate(draft.model_dump(mode="json") | {"golden": golden, "ensemble": info})
        write_manifest(staging, manifest)
        for ref, v in zip(spec.members, versions):
            registry.pin(ref.name, v)  # the golden rows need these versions: no prune may remove them
        version = registry.publish(name, staging)
    if promote:
        registry.promote(name, version)
    return version, registry.manifest(name, version)


def describe(registry: Registry, name: str, version: str | None = None) -> dict[str, Any]:
    """What `xylen models ensemble show` prints: the spec, each member's resolved version and its live one."""
    version = version or registry.current_path(name).name
    m = registry.manifest(name, version)
    if m.backend != "ensemble":
        raise ConfigError(f"Model {name!r} {version} is a {m.backend} model, not an ensemble.",
                          hint=f"see `xylen models show {name} {version}`.")
    spec = read_spec(registry.path(name, version), m)
    live = registry.current(name)
    rows = []
    for ref, rec, w in zip(spec.members, resolved_members(m), spec.normalized()):
        member_live = None
        try:
            ptr = registry.current(ref.name)
            member_live = ptr.version if ptr else None
        except BundleError:
            pass
        rows.append({"member": ref.text(), "name": ref.name, "follows_live": ref.version is None,
                     "created_with": rec["version"], "live_version": member_live,
                     "serves": member_live if ref.version is None else ref.version,
                     "weight": w, "backend": rec.get("backend")})
    return {"name": name, "version": version, "live": bool(live and live.version == version),
            "aggregation": spec.aggregation, "members": rows, "outputs": outputs_of(m),
            "feature_set": m.feature_set.version, "interval": m.interval, "symbol": m.symbol,
            "created_at": m.created_at}
