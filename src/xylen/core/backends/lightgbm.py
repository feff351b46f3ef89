"""LightGBM text models. Predicts with one thread: the OpenMP team collapses throughput under contention."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from xylen.core.errors import BundleError


class LightGBMPredictor:
    backend = "lightgbm"

    def __init__(self, artifact: Path, num_threads: int = 1) -> None:
        import lightgbm as lgb  # lazy: only servers/trainers of LightGBM models pay for it

        text = Path(artifact).read_text(encoding="utf-8", errors="strict")
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
