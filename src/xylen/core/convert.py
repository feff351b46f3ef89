"""`xylen models import`: register a model trained elsewhere (LightGBM text, ONNX, TorchScript) in the registry.

The new bundle is built in ``Registry.stage``, verified with ``load_bundle`` exactly as a server would, and only
then published (one rename), so a failure at any step leaves nothing visible in the registry. Nothing here ever
unpickles: pickle and joblib files are refused by their bytes, and a torch archive is checked entry by entry
(backends/torch_archive.py) before torch reads it. ``xylen models export`` lives in core/onnx_export.py.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xylen.core.backends import load_predictor
from xylen.core.bundle import Golden, artifact_info, load_bundle, new_manifest, write_manifest
from xylen.core.errors import BundleError, ConfigError, DataError, first_line
from xylen.core.pickle_scan import looks_like_pickle
from xylen.core.registry import Registry, check_name

N_GOLDEN = 8
ARTIFACTS = {"lightgbm": "model.txt", "onnx": "model.onnx", "torch": "model.pt"}
_PROTO0_CHECK_BYTES = 16 << 20  # protocol 0/1 pickles have no magic bytes: parse files up to this size to tell
_PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib", ".sav", ".dill")
_COMPRESSED = {
    b"\x78\x9c": "zlib",
    b"\x78\x01": "zlib",
    b"\x78\xda": "zlib",
    b"\x1f\x8b": "gzip",
    b"BZh": "bz2",
    b"\xfd7zXZ\x00": "xz",
    b"\x04\x22\x4d\x18": "lz4",
}


@dataclass
class ModelIOResult:
    name: str
    version: str
    bundle: Path
    backend: str
    promoted: bool
    seconds: float
    max_abs_diff: float | None = None
    checked_rows: int = 0
    out: Path | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}


# -- importing external models ----------------------------------------------------------------------------
def refuse_pickle(path: Path, backend: str) -> None:
    """Refuse pickle/joblib files (and zips, except a torch archive) by their bytes, saying why. Never unpickles."""
    with open(path, "rb") as fh:
        head = fh.read(8)
        small = path.stat().st_size <= _PROTO0_CHECK_BYTES
        whole = head + fh.read() if small and head[:4] not in (b"tree", b"PK\x03\x04") else b""
    why = None
    if path.suffix.lower() in _PICKLE_SUFFIXES or head[:1] == b"\x80" or (whole and looks_like_pickle(whole)):
        why = "a pickle/joblib file"
    elif any(head.startswith(m) for m in _COMPRESSED):
        why = f"a {next(v for k, v in _COMPRESSED.items() if head.startswith(k))}-compressed file (joblib?)"
    elif head.startswith(b"PK\x03\x04") and backend != "torch":
        why = "a zip archive (joblib or torch.save?)"
    if why:
        raise DataError(
            f"{str(path)!r} is {why}; xylen never loads pickles, because unpickling runs arbitrary code.",
            hint="save LightGBM with booster.save_model('model.txt'), ONNX with onnxmltools/skl2onnx, "
            "torch with torch.jit.save(torch.jit.trace(model.eval(), example_input), 'model.pt').",
        )


def golden_inputs(n_features: int, seed: int = 0) -> np.ndarray:
    """Eight deterministic rows: zeros, ones, and six seeded standard-normal rows."""
    rng = np.random.default_rng(seed)
    return np.vstack([np.zeros(n_features), np.ones(n_features), rng.standard_normal((N_GOLDEN - 2, n_features))])


def trial_golden(predictor: Any, path: Path, n_features: int, logit_fix: str) -> Golden:
    """A trial prediction on the golden inputs, checked to be one probability in [0, 1] per row, as the golden
    rows a loader verifies the model against later. ``logit_fix`` says what to do if the model gives logits."""
    X = golden_inputs(n_features)
    try:
        y = np.asarray(predictor.predict(X), dtype=np.float64)
    except BundleError:
        raise
    except Exception as exc:  # the library's own error on a trial prediction: the file is unusable here
        raise BundleError(
            f"{str(path)!r} failed on a ({len(X)}, {n_features}) input: {first_line(exc, 200)}",
            hint="check the model's input width and dtype.",
        ) from None
    if y.shape != (len(X),):
        raise BundleError(
            f"{str(path)!r} returns shape {tuple(y.shape)} for {len(X)} rows; xylen serves binary "
            "classifiers (one probability per row).",
            hint="import a binary classifier.",
        )
    if not np.all(np.isfinite(y) & (y >= 0) & (y <= 1)):
        raise BundleError(f"{str(path)!r} returns values outside [0, 1] (e.g. {float(y[0]):.4g}).", hint=logit_fix)
    return Golden(rows=X.tolist(), outputs=y.tolist())


def import_model(
    registry: Registry,
    path: Path,
    backend: str,
    feature_names: list[str] | None,
    name: str,
    *,
    output: str = "probability",
    promote: bool = False,
) -> ModelIOResult:
    """Register an external model file as the next version of ``name`` (feature set "external")."""
    t0 = time.perf_counter()
    path = Path(path)
    if backend not in ARTIFACTS:
        raise ConfigError(f"Unknown backend {backend!r}.", hint=f"use one of: {', '.join(ARTIFACTS)}.")
    if output not in ("probability", "logit") or (backend == "lightgbm" and output != "probability"):
        raise ConfigError(
            f"--output {output!r} is not valid for the {backend} backend.",
            hint="use probability or logit (lightgbm models always give probabilities).",
        )
    if not path.is_file():
        raise DataError(f"Model file {str(path)!r} does not exist.", hint="check the path.")
    check_name(name)
    refuse_pickle(path, backend)
    if backend == "torch":
        from xylen.core.backends.torch_archive import inspect_archive

        inspect_archive(path)  # names the user's file in a refusal; the backend checks the staged copy again
    with registry.stage(name) as staging:
        art = staging / ARTIFACTS[backend]
        shutil.copyfile(path, art)
        options: dict[str, Any] = {"num_threads": 1} if backend == "lightgbm" else {"output": output}
        predictor = load_predictor(backend, art, **options)
        names = feature_names or (predictor.feature_name() if backend == "lightgbm" else None)  # type: ignore[attr-defined]
        if not names:
            raise ConfigError("No feature names given.", hint="pass --features a,b,c or --features-file names.txt.")
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise ConfigError(f"Feature names repeat: {', '.join(dup)}.", hint="give each input column one name.")
        if predictor.num_feature() != len(names):
            raise ConfigError(
                f"{str(path)!r} takes {predictor.num_feature()} features but {len(names)} feature names were given.",
                hint=f"pass exactly {predictor.num_feature()} names, in input order.",
            )
        golden = trial_golden(predictor, path, len(names), "if the model returns logits, pass --output logit.")
        manifest = new_manifest(
            name=name,
            version="v0000",
            backend=backend,
            artifact=artifact_info(art),
            feature_set={"version": "external", "names": list(names)},
            output=output,
            source={"path": str(path.resolve()), "file": path.name},
            golden=golden,
        )
        write_manifest(staging, manifest)
        load_bundle(staging)
        version = registry.publish(name, staging)
    if promote:
        registry.promote(name, version)
    return ModelIOResult(
        name=name,
        version=version,
        bundle=registry.path(name, version),
        backend=backend,
        promoted=promote,
        seconds=time.perf_counter() - t0,
        checked_rows=len(golden.rows),
    )
