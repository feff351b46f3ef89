"""`xylen train`: candles -> features + labels -> walk-forward evaluation -> final model -> bundle."""

from xylen.train.pipeline import TrainOptions, TrainResult, train

__all__ = ["TrainOptions", "TrainResult", "train"]
