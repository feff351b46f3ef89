"""`xylen train`: candles -> features + labels -> walk-forward evaluation -> final model -> bundle.

The names below are imported on first use: a server imports ``xylen.train.watch`` (the live model's record and
staleness) and must not pay for the pipeline's polars on the way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from xylen.train.pipeline import TrainOptions, TrainResult, train

__all__ = ["TrainOptions", "TrainResult", "train"]


def __getattr__(attr: str) -> Any:
    if attr in __all__:
        from xylen.train import pipeline

        return getattr(pipeline, attr)
    raise AttributeError(f"module 'xylen.train' has no attribute {attr!r}")
