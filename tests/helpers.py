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
    (so `xylen retrain` finds ``new_rows`` new candles). 1h candles: ~8,800 rows, a holdout of ~880.

    The model has the threshold label and no extra head unless ``overrides`` say otherwise: the retrain tests
    built on it are about the gate's mechanics, and a threshold model's candidate passes the default tolerance on
    these candles (a direction model's log-loss moves by more than 0.001 between two windows). ``heads_home``
    makes models with heads."""
    from xylen.core.candles import read_candles
    from xylen.core.store import Store

    read = read_candles(data)
    old = home.parent / f"{home.name}-old.parquet"
    read.frame.head(read.frame.height - new_rows).write_parquet(old)
    single = {"label": "threshold", "extra_head": "none"}
    result = train_small(home, old, symbol=read.symbol or "BTCUSDT", interval="1h", **(single | overrides))
    Store(home / "data").append(result.symbol, result.interval, read.frame)
    return result


def heads_home(
    home: Path,
    new_rows: int = 1200,
    data: Path = BTC_1H,
    *,
    label: dict[str, object] | None = None,
    heads: tuple[dict[str, object], ...] = ({"kind": "move", "horizon": 6, "threshold": 0.01},),
    feature_set: str = "ohlcv-v2",
    rounds: int = 60,
    metrics: dict[str, object] | None = None,
) -> str:
    """Like ``retrain_home``, but the live model is written directly with ``pipeline.publish_booster`` and its heads
    (``HeadModel``), as `xylen train` writes a model with extra heads: a primary with ``label`` (default: direction,
    6 candles; an old manifest's label dict is written as given) on ``feature_set``, plus one head per ``heads``
    label, each a real LightGBM model fitted on all but the last ``new_rows`` candles. Returns the model's name."""
    from dataclasses import replace

    import lightgbm as lgb
    import numpy as np

    from xylen.core import featuresets, labels
    from xylen.core.bundle import TrainingWindow
    from xylen.core.candles import read_candles
    from xylen.core.registry import Registry, model_name
    from xylen.core.store import Store
    from xylen.train.dataset import build
    from xylen.train.evaluate import lgb_params
    from xylen.train.pipeline import HeadModel, golden_of, publish_booster

    read = read_candles(data)
    symbol, interval = read.symbol or "BTCUSDT", "1h"
    old = read.frame.head(read.frame.height - new_rows)
    spec = labels.LabelSpec.from_dict(label or {"kind": "direction", "horizon": 6})
    extra = tuple(labels.LabelSpec.from_dict(h) for h in heads)
    fs = featuresets.get(feature_set, interval)
    ds = build(old, interval, spec, fs, extra=extra)
    rows = ds.rows
    profile = replace(resolve("8gb"), threads=1)
    params = {k: v for k, v in lgb_params(profile).items() if k != "metric"}

    def fit(y: np.ndarray) -> lgb.Booster:
        data = lgb.Dataset(ds.X[rows], label=y[rows], feature_name=list(fs.names), params={"max_bin": profile.max_bin})
        return lgb.train(params, data, num_boost_round=rounds)

    booster = fit(ds.y)
    head_models = [HeadModel(h, fit((ds.heads or {})[h.kind]), {"num_boost_round": rounds}) for h in extra]
    registry = Registry(home / "models")
    name = model_name(symbol, interval)
    version = publish_booster(
        registry,
        name,
        booster,
        heads=head_models,
        feature_set={"version": fs.version, "names": list(fs.names)},
        label=label or spec.to_dict(),
        symbol=symbol,
        interval=interval,
        training_window=TrainingWindow(
            first_open_time=int(ds.open_time[rows[0]]), last_open_time=int(ds.open_time[rows[-1]]), rows=len(rows)
        ),
        profile=profile.to_dict(),
        params=params | {"num_boost_round": rounds},
        metrics={"data_source": f"tests.helpers.heads_home {data.name}"} | (metrics or {}),
        golden=golden_of(booster, ds, old, rows),
    )
    registry.promote(name, version)
    Store(home / "data").append(symbol, interval, read.frame)
    return name
