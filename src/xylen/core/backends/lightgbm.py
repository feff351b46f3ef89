"""LightGBM text models. Predicts with one thread: the OpenMP team collapses throughput under contention."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from xylen.core.errors import BundleError


class LightGBMPredictor:
    backend = "lightgbm"

    def __init__(self, artifact: Path, num_threads: int = 1, sha256: str | None = None) -> None:
        import lightgbm as lgb  # lazy: only servers/trainers of LightGBM models pay for it

        data = Path(artifact).read_bytes()
        # ``sha256`` (a bundle's manifest): the bytes parsed are the bytes hashed, read once -- a file replaced after
        # its check (a truncated model can abort this process) is refused, not parsed
        if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
            raise BundleError(
                f"{str(artifact)!r} changed while it was loaded (its sha256 is no longer the manifest's).",
                hint="model files are never edited in place: publish a new version, or roll back.",
            )
        text = data.decode("utf-8", errors="strict")
        if "\r" in text:  # as read_text did: universal newlines
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        if not text.startswith("tree") or "end of trees" not in text:
            # a truncated text model can abort the process inside LightGBM instead of raising
            raise BundleError(
                f"{str(artifact)!r} is not a complete LightGBM text model.",
                hint="it is truncated or not a LightGBM model.txt; replace it.",
            )
        self.booster = lgb.Booster(model_str=text)
        self._num_threads = num_threads
        self._n = self.booster.num_feature()
        self.objective = str(self.booster.params.get("objective", ""))
        self.num_class = int(self.booster.num_model_per_iteration())

    def num_feature(self) -> int:
        return self._n

    def feature_name(self) -> list[str]:
        return list(self.booster.feature_name())

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(self.booster.predict(X, num_threads=self._num_threads))
