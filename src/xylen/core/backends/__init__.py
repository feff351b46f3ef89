"""Model backends behind one Predictor protocol; heavy imports happen only when a backend is used.

Like uvicorn's protocol registry: import strings here, `importlib` on first use, so a LightGBM-only
server never imports onnxruntime or torch.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from xylen.core.errors import BundleError, ConfigError, first_line

BACKENDS: dict[str, str] = {
    "lightgbm": "xylen.core.backends.lightgbm:LightGBMPredictor",
    "onnx": "xylen.core.backends.onnx:OnnxPredictor",
    "torch": "xylen.core.backends.torch:TorchPredictor",
}
EXTRAS = {"onnx": "xylen[onnx]", "torch": "xylen[torch]", "lightgbm": "xylen"}


class Predictor(Protocol):
    backend: str

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Probability of the positive class for each row of an (n, num_feature) float matrix."""
        ...

    def num_feature(self) -> int: ...


def load_predictor(backend: str, artifact: Path, **options: Any) -> Predictor:
    if backend not in BACKENDS:
        raise ConfigError(f"Unknown backend {backend!r}.", hint=f"use one of: {', '.join(BACKENDS)}.")
    module_name, _, attr = BACKENDS[backend].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"The {backend} backend needs {exc.name!r}, which is not installed.",
            hint=f"pip install '{EXTRAS[backend]}'.",
        ) from None
    cls = getattr(module, attr)
    try:
        return cls(artifact, **options)  # type: ignore[no-any-return]
    except BundleError:
        raise
    except Exception as exc:  # a backend library's own load error: the artifact is unusable
        raise BundleError(
            f"{backend} could not load {str(artifact)!r}: {first_line(exc)}",
            hint=f"the model file is corrupt or not a {backend} model; replace it or roll back.",
        ) from None
