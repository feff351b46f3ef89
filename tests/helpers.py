"""Shared test helpers (plain functions; fixtures live in the test modules and conftest.py)."""

from __future__ import annotations

from pathlib import Path

from xylen.core.settings import load_settings
from xylen.profiles import resolve
from xylen.train import TrainOptions, TrainResult, train

DATA = Path(__file__).parent / "data"
BTC_1H = DATA / "spot_ohlcv_feather" / "imsatoshi_GeneTrader_2024" / "BTC_USDT-1h.feather"
ETH_1H = DATA / "spot_ohlcv_feather" / "imsatoshi_GeneTrader_2024" / "ETH_USDT-1h.feather"


def train_small(
    home: Path, data: Path = BTC_1H, name: str | None = None, promote: bool = True, **overrides: object
) -> TrainResult:
    """A real model on real 1h candles in ~1 s: 2 folds, the 8gb profile with few trees."""
    settings = load_settings({"home": home, "folds": 2, **overrides}, environ={})
    prof = resolve("8gb")
    from dataclasses import replace

    prof = replace(prof, num_boost_round=60, early_stopping_rounds=10)
    return train(settings, TrainOptions(data=[data], name=name, promote=promote), prof)
