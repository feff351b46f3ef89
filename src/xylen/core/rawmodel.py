"""A bare model file served without a bundle: the alpha's ``MODEL_PATH=/opt/trading_model/models/trading_model.txt``.

The file is LightGBM text, ONNX or TorchScript (torch.export .pt2 archives are refused: loading one can run code,
see core/backends/torch.py); ``MODEL_TYPE`` names the backend or, unset, the
file's first bytes do. It has no manifest, so one is made in memory: the feature names come from the file
(LightGBM text carries them; ONNX and torch models take one (n, features) tensor, so their features are called
f0..fN-1), and the golden rows are eight fixed rows with the outputs the model gives them here, which the
serving process's fast single-row path is checked against. Requests send the features by name (the alpha's
``indicators``) or as a list (``features``). Pickle and joblib files are refused without being opened as such.

A corrupt LightGBM file can abort the process that loads it, so a server verifies the file in a child process
first (``python -m xylen.core.verify --raw BACKEND FILE``: a trial load and a prediction), as for bundles.
"""

from __future__ import annotations

import re
from pathlib import Path

from xylen.core.backends import load_predictor
from xylen.core.bundle import ModelBundle, artifact_info, new_manifest
from xylen.core.errors import BundleError, ConfigError, DataError

BACKENDS = ("lightgbm", "onnx", "torch")
_ONNX_SUFFIXES = (".onnx",)
_TORCH_SUFFIXES = (".pt", ".ts", ".torchscript")


def detect_backend(path: Path) -> str | None:
    """The backend a model file's first bytes (or, for ONNX, its suffix) say it needs; None when unknown."""
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head.startswith(b"tree"):
        return "lightgbm"  # LightGBM text models start with the line "tree"
    if head.startswith(b"PK\x03\x04"):
        return "torch"  # a zip: TorchScript / torch.export (the torch backend refuses a torch.save pickle)
    suffix = path.suffix.lower()
    if suffix in _ONNX_SUFFIXES or head[:1] == b"\x08":  # protobuf field 1 (ir_version) opens an ONNX model
        return "onnx"
    if suffix in _TORCH_SUFFIXES:
        return "torch"
    return None


def resolve_backend(path: Path, model_type: str | None) -> str:
    """The backend to load ``path`` with: MODEL_TYPE when set (refused if the file says otherwise), else the
    detected one. ConfigError (exit 2) for a contradiction, BundleError (exit 4) for an unknown file."""
    _refuse_pickle(path)
    detected = detect_backend(path)
    if model_type is not None:
        if detected is not None and detected != model_type:
            raise ConfigError(
                f"MODEL_TYPE is {model_type!r} but {str(path)!r} is a {detected} model file.",
                hint=f"set MODEL_TYPE={detected} (or leave MODEL_TYPE unset: xylen detects it from the file).",
            )
        return model_type
    if detected is None:
        raise BundleError(
            f"Cannot tell what kind of model {str(path)!r} is (not LightGBM text, ONNX or a TorchScript archive).",
            hint="set MODEL_TYPE=lightgbm|onnx|torch, or point MODEL_PATH at a bundle folder.",
        )
    return detected


def _refuse_pickle(path: Path) -> None:
    from xylen.core.convert import refuse_pickle

    try:
        refuse_pickle(path, "torch")  # "torch": a zip is allowed here; the torch backend tells archive from pickle
    except DataError as exc:
        raise BundleError(exc.message, hint=exc.hint) from None


def raw_name(path: Path) -> str:
    """A model name for the file: its stem in the registry's spelling (``trading_model``)."""
    name = re.sub(r"[^a-z0-9._-]+", "-", path.stem.lower()).strip("-._")[:64]
    return name or "model"


def load_raw(path: str | Path, backend: str, *, num_threads: int = 1) -> ModelBundle:
    """Load a bare model file as an in-memory bundle (feature set "external"). Raises BundleError/ConfigError."""
    from xylen.core.convert import trial_golden  # the trial prediction `xylen models import` makes, too

    path = Path(path)
    if not path.is_file():
        raise BundleError(f"Model file {str(path)!r} does not exist.", hint="check MODEL_PATH.")
    if backend not in BACKENDS:
        raise ConfigError(f"Unknown backend {backend!r}.", hint=f"use one of: {', '.join(BACKENDS)}.")
    _refuse_pickle(path)
    options: dict[str, object] = {"num_threads": num_threads} if backend == "lightgbm" else {"output": "probability"}
    predictor = load_predictor(backend, path, **options)
    n = predictor.num_feature()
    names = list(predictor.feature_name()) if backend == "lightgbm" else [f"f{i}" for i in range(n)]  # type: ignore[attr-defined]
    if len(names) != n:
        names = [f"f{i}" for i in range(n)]
    if len(set(names)) != n:  # as `xylen models import` refuses them: requests by name could not tell them apart
        dup = sorted({x for x in names if names.count(x) > 1})[:5]
        raise BundleError(
            f"{str(path)!r} names a feature more than once ({', '.join(dup)}); requests send features by name.",
            hint="re-save the model with one name per input column.",
        )
    golden = trial_golden(
        predictor,
        path,
        n,
        "serve binary classifiers that output probabilities; for logits, import the model with "
        "`xylen models import FILE --backend ... --output logit --promote` and serve the registry.",
    )
    art = artifact_info(path)
    manifest = new_manifest(
        name=raw_name(path),
        version=f"sha256-{art.sha256[:12]}",
        backend=backend,
        artifact=art,
        feature_set={"version": "external", "names": names},
        output="probability",
        source={"path": str(path.resolve()), "file": path.name, "raw": True},
        golden=golden,
    )
    return ModelBundle(path.parent, manifest, predictor)
