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


def retrain_home(home: Path, new_rows: int = 1200, data: Path = BTC_1H, **overrides: object) -> TrainResult:
    """A live model trained on all but the last ``new_rows`` candles of ``data``, and the whole series in the store
    (so `xylen retrain` finds ``new_rows`` new candles). 1h candles: ~8,800 rows, a holdout of ~880."""
    from xylen.core.candles import read_candles
    from xylen.core.store import Store

    read = read_candles(data)
    old = home.parent / f"{home.name}-old.parquet"
    read.frame.head(read.frame.height - new_rows).write_parquet(old)
    result = train_small(home, old, symbol=read.symbol or "BTCUSDT", interval="1h", **overrides)
    Store(home / "data").append(result.symbol, result.interval, read.frame)
    return result
