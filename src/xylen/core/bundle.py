"""ModelBundle: an immutable folder holding a model artifact and its manifest.json.

``load()`` validates everything -- manifest schema, artifact size and sha256, feature count, golden
predictions -- before the bundle may serve.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from xylen import __version__
from xylen.core import features, featuresets, labels
from xylen.core.backends import Predictor, load_predictor
from xylen.core.errors import BundleError
from xylen.core.storage import fsync_dir

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
GOLDEN_TOLERANCE = {"lightgbm": 1e-9, "onnx": 1e-5, "torch": 1e-5, "ensemble": 1e-5}  # an ensemble may hold onnx


class Artifact(BaseModel):
    file: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=1)


class FeatureSet(BaseModel):
    version: str
    names: list[str] = Field(min_length=1)


class Golden(BaseModel):
    """A few input rows and the outputs the artifact gave for them when it was written."""

    rows: list[list[float | None]]
    outputs: list[float]
    # A window of raw candles (open_time, o, h, l, c, v) and the probability for its last candle: proves the
    # whole serving path (features + model), not only the model. Absent for imported external models.
    window: list[list[float]] | None = None
    window_output: float | None = None


class Head(BaseModel):
    """A second output of a bundle (e.g. the move-size head beside a direction model): its own LightGBM artifact on
    the same features, its own label, and its golden outputs for the bundle's golden rows and window. The primary
    head is the manifest's ``artifact``/``label``/``golden``: a reader that knows nothing of heads still serves it."""

    artifact: Artifact
    label: dict[str, Any]
    golden_outputs: list[float]
    window_output: float | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)


class TrainingWindow(BaseModel):
    first_open_time: int
    last_open_time: int
    rows: int


class Manifest(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())

    format_version: int = FORMAT_VERSION
    name: str
    version: str
    backend: Literal["lightgbm", "onnx", "torch", "ensemble"]  # ensemble: core/ensemble.py
    artifact: Artifact
    feature_set: FeatureSet
    label: dict[str, Any] = Field(default_factory=dict)
    symbol: str | None = None
    interval: str | None = None
    exchange: str = "binance"  # where the candles came from (bundles before exchanges: binance)
    training_window: TrainingWindow | None = None
    profile: dict[str, Any] = Field(default_factory=dict)
    params: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    golden: Golden
    heads: list[Head] = Field(default_factory=list)
    created_at: str
    xylen_version: str

    @field_validator("exchange")
    @classmethod
    def _exchange(cls, v: str) -> str:
        from xylen.core.markets import EXCHANGES

        if v not in EXCHANGES:  # a model answers and retrains only for a market xylen can name and collect
            raise ValueError(f"{str(v)[:20]!r} is not one of {', '.join(EXCHANGES)}")
        return v


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def make_golden(
    predict: Callable[[np.ndarray], Any],
    rows: np.ndarray,
    window: np.ndarray | None = None,
    fs: featuresets.FeatureSet = featuresets.OHLCV_V2,
) -> Golden:
    """Golden rows with the outputs ``predict`` gives them, and -- for a model on a feature set xylen computes -- a
    candle window (open_time, o, h, l, c, v) with the probability for its last candle (features + model)."""
    outputs = np.asarray(predict(rows), dtype=np.float64).tolist()
    if window is None:
        return Golden(rows=rows.tolist(), outputs=outputs)
    last = fs.last_row(features.CandleArrays.from_matrix(window)).reshape(1, -1)
    return Golden(
        rows=rows.tolist(), outputs=outputs, window=window.tolist(), window_output=float(np.asarray(predict(last))[0])
    )


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def read_manifest(folder: Path) -> Manifest:
    return _read_manifest(folder)[0]


def _read_manifest(folder: Path, expect_sha256: str | None = None) -> tuple[Manifest, str]:
    """The manifest and the sha256 of its bytes; ``expect_sha256``: refused unless the bytes have that digest (the
    manifest a verifier child checked: a server then reads the very bundle the child proved, see load_bundle)."""
    path = folder / MANIFEST
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise BundleError(
            f"Bundle {str(folder)!r} has no {MANIFEST}.",
            hint="it is not a xylen bundle, or it was written partially; roll back or retrain.",
        ) from None
    digest = hashlib.sha256(raw).hexdigest()
    if expect_sha256 is not None and digest != expect_sha256:
        raise BundleError(
            f"{str(path)!r} changed after it was verified (sha256 {digest[:12]}..., verified {expect_sha256[:12]}...).",
            hint="bundle folders are never edited in place: publish a new version and promote it.",
        )
    try:
        return Manifest.model_validate(orjson.loads(raw)), digest
    except orjson.JSONDecodeError as exc:
        raise BundleError(
            f"{str(path)!r} is not valid JSON ({exc}).", hint="the bundle is corrupt; roll back."
        ) from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise BundleError(
            f"{str(path)!r}: field {where!r} {first['msg'].lower()} (got {str(first.get('input'))[:60]!r}).",
            hint="the manifest is damaged or from an incompatible xylen; retrain or re-import.",
        ) from None


def write_manifest(folder: Path, manifest: Manifest) -> None:
    data = orjson.dumps(manifest.model_dump(mode="json"), option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
    write_durably(folder / MANIFEST, data)


def write_durably(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file + fsync + rename: readers see old or new, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def verify_artifact(folder: Path, manifest: Manifest, artifact: Artifact | None = None) -> Path:
    """Size, then sha256, of the artifact (the primary one by default) against the manifest. Cheap enough to run
    before every load."""
    artifact = artifact or manifest.artifact
    art = folder / artifact.file
    if Path(artifact.file).name != artifact.file:
        raise BundleError(
            f"Manifest artifact path {artifact.file!r} leaves the bundle folder.",
            hint="artifacts live inside the bundle; re-import the model.",
        )
    try:
        size = art.stat().st_size
    except FileNotFoundError:
        raise BundleError(
            f"Bundle {str(folder)!r} lacks its artifact {artifact.file!r}.",
            hint="the bundle is incomplete; roll back or retrain.",
        ) from None
    if size != artifact.size:
        raise BundleError(
            f"{str(art)!r} is {size} bytes but its manifest says {artifact.size}.",
            hint="the file was truncated or replaced; roll back or retrain.",
        )
    digest = sha256_file(art)
    if digest != artifact.sha256:
        raise BundleError(
            f"{str(art)!r} has sha256 {digest[:12]}... but its manifest says {artifact.sha256[:12]}....",
            hint="the model file was tampered with or corrupted; roll back (`xylen models rollback`) or retrain.",
        )
    return art


class ModelBundle:
    """A loaded, verified bundle. ``predict(X)`` and ``num_feature()`` mirror lightgbm.Booster."""

    def __init__(
        self, folder: Path, manifest: Manifest, predictor: Predictor, heads: list[tuple[str, Predictor]] | None = None,
        manifest_sha256: str | None = None,
    ) -> None:
        self.folder = folder
        self.manifest = manifest
        self.manifest_sha256 = manifest_sha256  # of the manifest.json bytes it was loaded from
        self.predictor = predictor
        self.feature_names = list(manifest.feature_set.names)
        # the feature set this xylen computes for it from candles (None: the caller sends features)
        self.features = featuresets.for_manifest(manifest.feature_set.version, self.feature_names, manifest.interval)
        self.computes_features = self.features is not None
        # the extra heads: (/predict field, predictor), e.g. ("move_probability", ...)
        self.heads = heads or []

    @property
    def min_candles(self) -> int | None:
        """Candles a /predict request must send (None: a model that is sent features, not candles)."""
        return self.features.min_candles if self.features is not None else None

    def outputs(self) -> dict[str, str]:
        """Every probability this bundle answers with: field -> what it means (from the heads' labels)."""
        return outputs_of(self.manifest)

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def backend(self) -> str:
        return self.manifest.backend

    def num_feature(self) -> int:
        return len(self.feature_names)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.predictor.predict(X)

    def predict_candles(self, candles: features.CandleArrays) -> float:
        """Probability for the last candle of a window (the serving path: same feature code as training)."""
        return float(self.predictor.predict(self.row_of(candles).reshape(1, -1))[0])

    def row_of(self, candles: features.CandleArrays) -> np.ndarray:
        if self.features is None:
            raise BundleError(
                f"Bundle {self.name} {self.version} needs feature set {self.manifest.feature_set.version!r} "
                f"({self.num_feature()} features), which this xylen does not compute from {self.manifest.interval} "
                "candles.",
                hint="retrain with this xylen version, or install the xylen that trained it.",
            )
        return self.features.last_row(candles)

    def check_golden(self) -> None:
        g = self.manifest.golden
        tol = GOLDEN_TOLERANCE[self.backend]
        X = np.array([[np.nan if v is None else v for v in r] for r in g.rows], dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.num_feature():
            raise BundleError(
                f"Bundle {self.name} {self.version}: golden rows have shape {X.shape} but the manifest "
                f"names {self.num_feature()} features.",
                hint="the manifest is inconsistent; re-import.",
            )
        got = self.predict(X)
        want = np.asarray(g.outputs)
        if got.shape != want.shape or not np.allclose(got, want, rtol=0, atol=tol):
            raise BundleError(
                f"Bundle {self.name} {self.version}: golden predictions differ from the manifest "
                f"(max |diff| {float(np.max(np.abs(got - want))) if got.shape == want.shape else 'shape'}).",
                hint="the artifact does not behave like the model that was trained; roll back.",
            )
        window_row = None
        if g.window is not None and g.window_output is not None:
            window_row = self.row_of(features.CandleArrays.from_matrix(np.asarray(g.window, dtype=np.float64)))
            p = float(self.predictor.predict(window_row.reshape(1, -1))[0])
            if abs(p - g.window_output) > tol:
                raise BundleError(
                    f"Bundle {self.name} {self.version}: the golden candle window predicts {p:.6f}, "
                    f"the manifest says {g.window_output:.6f}.",
                    hint="the feature code changed since training; retrain.",
                )
        for (field, pred), head in zip(self.heads, self.manifest.heads):
            got = np.asarray(pred.predict(X))
            want = np.asarray(head.golden_outputs)
            if got.shape != want.shape or not np.allclose(got, want, rtol=0, atol=tol):
                raise BundleError(
                    f"Bundle {self.name} {self.version}: the {field} head's golden predictions differ from the "
                    "manifest.",
                    hint="the head's artifact does not behave like the model that was trained; roll back.",
                )
            if window_row is not None and head.window_output is not None:
                p = float(pred.predict(window_row.reshape(1, -1))[0])
                if abs(p - head.window_output) > tol:
                    raise BundleError(
                        f"Bundle {self.name} {self.version}: the {field} head predicts {p:.6f} for the golden "
                        f"candle window, the manifest says {head.window_output:.6f}.",
                        hint="the feature code changed since training; retrain.",
                    )


def load_bundle(
    folder: str | Path, *, check_golden: bool = True, num_threads: int = 1, manifest_sha256: str | None = None
) -> ModelBundle:
    """Load and verify a bundle folder. Raises BundleError with the reason and the fix.

    ``manifest_sha256``: the digest of the manifest a verifier child loaded this folder with (core/verify.py); a
    manifest with other bytes is refused before any artifact is read. Each LightGBM artifact is parsed from the very
    bytes its sha256 was checked on, so what loads here is byte for byte what the child loaded."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BundleError(
            f"Model bundle {str(folder)!r} does not exist.", hint="check the path or `xylen models list`."
        )
    manifest, digest = _read_manifest(folder, manifest_sha256)
    if manifest.backend == "ensemble":  # its members, each loaded and verified like this (core/ensemble.py)
        from xylen.core.ensemble import load_ensemble

        return load_ensemble(folder, manifest, check_golden=check_golden, num_threads=num_threads,
                             manifest_sha256=digest)
    art = verify_artifact(folder, manifest)
    if manifest.backend == "lightgbm":
        options: dict[str, Any] = {"num_threads": num_threads, "sha256": manifest.artifact.sha256}
    else:
        # onnx/torch: how to read the model's output ("probability" or "logit"), recorded at import; the
        # backend validates it
        options = {"output": (manifest.model_extra or {}).get("output", "probability")}
    predictor = load_predictor(manifest.backend, art, **options)
    if predictor.num_feature() != len(manifest.feature_set.names):
        raise BundleError(
            f"Bundle {str(folder)!r}: the model expects {predictor.num_feature()} features but the "
            f"manifest names {len(manifest.feature_set.names)}.",
            hint="the manifest does not belong to this artifact; retrain or re-import.",
        )
    heads = _load_heads(folder, manifest, num_threads)
    bundle = ModelBundle(folder, manifest, predictor, heads, manifest_sha256=digest)
    if check_golden:
        bundle.check_golden()
    return bundle


def outputs_of(manifest: Manifest) -> dict[str, str]:
    """The probabilities a server answers with for this manifest (field -> what it means), without loading the
    model: "probability" always; "up_probability" too when the primary label is direction; each head's field."""
    recorded = (manifest.model_extra or {}).get("ensemble") if manifest.backend == "ensemble" else None
    if isinstance(recorded, dict) and isinstance(recorded.get("outputs"), dict):  # its members', at creation
        return {str(k): str(v) for k, v in recorded["outputs"].items()}
    out = {"probability": _meaning(manifest.label)}
    field = _field_of(manifest.label)
    if field:
        out[field] = out["probability"]
    for head in manifest.heads:
        out[_field_of(head.label) or "?"] = _meaning(head.label)
    return out


def _field_of(label: dict[str, Any]) -> str | None:
    return labels.OUTPUT_FIELD.get(labels.kind_of(label) or "")


def _meaning(label: dict[str, Any]) -> str:
    return str(label.get("predicts") or label.get("description") or "the probability of the positive label")


def head_fields(manifest: Manifest, where: str = "The manifest") -> list[str]:
    """The /predict field of each extra head, in order; a BundleError when a server would refuse the heads (so
    `xylen retrain` skips such a model instead of training a candidate no server could load)."""
    if manifest.heads and manifest.backend != "lightgbm":
        raise BundleError(f"{where}: extra heads are LightGBM models, but the bundle's backend is "
                          f"{manifest.backend}.", hint="the manifest is damaged; retrain or re-import.")
    fields = {_field_of(manifest.label)}
    out: list[str] = []
    for head in manifest.heads:
        labels.LabelSpec.from_dict(head.label)  # a label this xylen reads, or a BundleError naming it
        field = _field_of(head.label)
        if field is None or field in fields:
            raise BundleError(
                f"{where}: a head with label kind {str(head.label.get('kind'))[:40]!r} "
                + ("duplicates another head." if field else "has no /predict field (heads are 'direction' or 'move')."),
                hint="the manifest is damaged; retrain.",
            )
        fields.add(field)
        if head.artifact.file == manifest.artifact.file:
            raise BundleError(f"{where}: a head reuses the primary artifact {head.artifact.file!r}.",
                              hint="the manifest is damaged; retrain.")
        out.append(field)
    return out


def _load_heads(folder: Path, manifest: Manifest, num_threads: int) -> list[tuple[str, Predictor]]:
    """Verify and load the extra heads: LightGBM models on the bundle's features, one per /predict field."""
    if not manifest.heads:
        return []
    where = f"Bundle {str(folder)!r}"
    out: list[tuple[str, Predictor]] = []
    for field, head in zip(head_fields(manifest, where), manifest.heads):
        pred = load_predictor("lightgbm", verify_artifact(folder, manifest, head.artifact), num_threads=num_threads,
                              sha256=head.artifact.sha256)
        if pred.num_feature() != len(manifest.feature_set.names):
            raise BundleError(
                f"{where}: the {field} head expects {pred.num_feature()} features but the manifest names "
                f"{len(manifest.feature_set.names)}.",
                hint="the manifest does not belong to this artifact; retrain.",
            )
        out.append((field, pred))
    return out


def artifact_info(path: Path) -> Artifact:
    return Artifact(file=path.name, sha256=sha256_file(path), size=path.stat().st_size)


def new_manifest(**fields: Any) -> Manifest:
    fields.setdefault("created_at", now_iso())
    fields.setdefault("xylen_version", __version__)
    return Manifest(**fields)
