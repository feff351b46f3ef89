"""POST /predict: body bytes -> signal bytes. No I/O, no imports, no logging; one counter per request.

Routing: a request for (symbol, timeframe) is answered by that series' model ``<symbol lower>-<timeframe>``;
without one, only by the explicitly configured default model (XYLEN_DEFAULT_MODEL, the first ``--model``, the
MODEL_PATH model) and only when that model was trained on the same timeframe. A request without symbol and
timeframe goes to the default, or to the only model served (with several and no default: 422 asking for them).
Anything else is a 404 that names the live models and the command that adds the missing one: a model never
answers for a series it was not trained for unless the operator said it may.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from xylen.core import featuresets
from xylen.core.features import CandleArrays
from xylen.core.featuresets import FeatureSet
from xylen.core.markets import DEFAULT_EXCHANGE, exchange_flag, market_label, model_name
from xylen.serve.decode import (
    PredictRequest,
    RequestError,
    closed_window,
    decode_candles,
    decode_predict,
    feature_vector,
)
from xylen.serve.holder import Live, ModelHolder
from xylen.serve.state import ServeState


def predict(state: ServeState, body: bytes) -> bytes:
    """The alpha's /predict. Raises RequestError (4xx/503) with a sentence naming the field and the fix."""
    req = decode_predict(body)
    holder = state.holder
    live_map = holder.live  # read once: a swap during this request does not change our model
    notes: list[str] = []
    live = route(holder, live_map, req, notes)
    fs = live.bundle.features  # the model's own feature set (None: it is sent features)
    if req.candles is not None and fs is not None:
        row = candle_row(fs, req.candles, live.interval or req.timeframe, state.clock() * 1000.0,
                         state.settings.clock_skew * 1000.0, live.who, notes)
    elif req.features is not None:
        row = feature_vector(req.features, live.bundle.feature_names)
    elif req.indicators is not None and fs is None:
        row = feature_vector(req.indicators, live.bundle.feature_names, "indicators")
    elif fs is not None:
        raise RequestError(422, f"Field 'candles' is missing: {live.who} computes its features from candles; send at "
                                f"least {fs.min_candles} (GET /models states each model's min_candles), oldest "
                                f"first, or 'features' with its {live.bundle.num_feature()} values.")
    else:
        trained = live.bundle.manifest.feature_set.version
        raise RequestError(422, f"Model {live.name!r} {live.version} was trained on feature set {trained!r}, which "
                                f"this server does not compute from candles ({', '.join(featuresets.VERSIONS)}); send "
                                f"its {live.bundle.num_feature()} features by name in 'indicators' "
                                "({name: value}), or in 'features' (GET /v2/models/<name> lists them).")
    return orjson.dumps(answer(state, live, row, notes))


def answer(state: ServeState, live: Live, row: np.ndarray, notes: list[str], out: dict[str, Any] | None = None
           ) -> dict[str, Any]:
    """The signal fields of /predict for the feature ``row`` (the stream sends the same, after its own fields in
    ``out``)."""
    p = live.predict_row(row)
    cls = 1 if p >= 0.5 else 0
    state.metrics.predicted(live.name, cls)
    if out is None:
        out = {}
    out.update(prediction=cls, confidence=p if cls else 1.0 - p, model_version=live.version, model=live.name,
               probability=p, feature_set=live.bundle.manifest.feature_set.version, notes=notes)
    if live.extra:  # up_probability / move_probability: the bundle's other outputs for the same row
        for field, head in live.extra:
            out[field] = p if head is None else head(row)
    return out


def candle_row(fs: FeatureSet, raw: Any, interval: str | None, now_ms: float, skew_ms: float, who: str,
               notes: list[str]) -> np.ndarray:
    """The features of the last closed candle of ``raw`` (a request's 'candles') for the model ``who``: decoded,
    checked against the model (decode.py), computed. Never a non-finite value: decode refuses candles outside what
    the features represent finitely, and this checks the row itself too, so that no model ever sees one."""
    return features_row(fs, closed_candles(fs, raw, interval, now_ms, skew_ms, who, notes), who)


def closed_candles(fs: FeatureSet, raw: Any, interval: str | None, now_ms: float, skew_ms: float, who: str,
                   notes: list[str]) -> CandleArrays:
    """The closed candles of ``raw`` whose trailing ``fs.min_candles`` the features read, checked (decode.py)."""
    w = decode_candles(raw, fs.min_candles, who)
    candles, dropped = closed_window(w.candles, w.close_time, interval, now_ms, skew_ms, who, fs.min_candles, w.first)
    notes += dropped
    return candles


def features_row(fs: FeatureSet, candles: CandleArrays, who: str) -> np.ndarray:
    """``fs``'s features of the last of ``candles``, which must all be finite."""
    row = fs.last_row(candles)
    if not np.isfinite(row).all():
        j = int(np.argmin(np.isfinite(row)))
        raise RequestError(422, f"The candles give feature {fs.names[j]!r} the value {row[j]}, which is not finite, "
                                f"so {who} was not asked. Send the exchange's candles; if these are, report "
                                f"it as a bug in feature set {fs.version!r}.")
    return row


def route(holder: ModelHolder, live_map: dict[str, Live], req: PredictRequest, notes: list[str]) -> Live:
    """The model that answers ``req`` (see the module docstring), or a RequestError saying why none does."""
    symbol, timeframe, exchange = req.symbol, req.timeframe, req.exchange
    on = exchange_flag(exchange)
    if symbol is not None and timeframe is not None:
        name = model_name(symbol, timeframe, exchange)
        live = live_map.get(name)
        if live is not None:
            if live.interval is not None and live.interval != timeframe:
                raise RequestError(422, f"Model {name!r} was trained on {live.interval} candles, but the request "
                                        f"says timeframe {timeframe!r}; retrain it on {timeframe} candles "
                                        f"(`xylen train{on} --symbol {symbol} --interval {timeframe}`).")
            trained_on = live.bundle.manifest.symbol
            if trained_on is not None and trained_on != symbol:  # a misnamed model: the name is no proof
                raise RequestError(422, f"Model {name!r} was trained on {trained_on} candles, not {symbol}; "
                                        f"train one on {symbol} (`xylen train{on} --symbol {symbol} "
                                        f"--interval {timeframe}`) or rename that model.")
            if live.exchange != exchange:
                raise RequestError(422, f"Model {name!r} was trained on {live.exchange} candles, not {exchange}'s; "
                                        f"train one on {exchange}'s (`xylen train{on} --symbol {symbol} "
                                        f"--interval {timeframe}`) or rename that model.")
            return live
        _not_loaded(holder, live_map, name)
        default = _default(holder, live_map)
        if default is not None and default.interval in (None, timeframe):
            trained_on = default.bundle.manifest.symbol
            if trained_on is not None and (trained_on, default.exchange) != (symbol, exchange):  # say so
                notes.append(f"no model for {market_label(exchange, symbol)} {timeframe}: answered by the default "
                             f"model {default.name!r} (trained on {market_label(default.exchange, trained_on)})")
            return default
        raise RequestError(404, f"No model for {market_label(exchange, symbol)} {timeframe} ({name!r})"
                                f"{_default_says(default, timeframe)}; live: {_names(live_map)}. Train one: "
                                f"`xylen train{on} --symbol {symbol} --interval {timeframe}`, or set "
                                "XYLEN_DEFAULT_MODEL to a model that may answer for other symbols.")
    if not live_map:
        _not_loaded(holder, live_map, None)
    default = _default(holder, live_map)
    live = default or holder.only()
    if live is None:
        raise RequestError(422, f"Several models are live ({_names(live_map)}) and none is the default: send "
                                "'symbol' and 'timeframe' (e.g. \"BTCUSDT\", \"5m\") to choose one, or set "
                                "XYLEN_DEFAULT_MODEL.")
    if timeframe is not None and live.interval not in (None, timeframe):
        raise RequestError(404, f"No model for timeframe {timeframe!r}: {live.name!r} is a {live.interval} model; "
                                f"live: {_names(live_map)}. Send 'symbol' too, or train one with "
                                f"`xylen train --symbol SYMBOL --interval {timeframe}`.")
    trained_on = live.bundle.manifest.symbol
    if symbol is not None and trained_on is not None and (trained_on, live.exchange) != (symbol, exchange):
        if live is not default:  # the only model served is no permission to answer for another series
            raise RequestError(404, f"No model for {market_label(exchange, symbol)}: the only live model, "
                                    f"{live.name!r}, was trained on {market_label(live.exchange, trained_on)}. Train "
                                    f"one (`xylen train{on} --symbol {symbol}`), or set XYLEN_DEFAULT_MODEL to a model "
                                    "that may answer for other symbols.")
        notes.append(f"no model for {market_label(exchange, symbol)}: answered by the default model {live.name!r} "
                     f"(trained on {market_label(live.exchange, trained_on)})")
    elif symbol is None and exchange not in (DEFAULT_EXCHANGE, live.exchange):  # named, and not the model's
        if live is not default:
            raise RequestError(404, f"No model for {exchange}'s candles: the only live model, {live.name!r}, was "
                                    f"trained on {live.exchange}'s. Train one (`xylen train{on} --symbol SYMBOL`), "
                                    "or set XYLEN_DEFAULT_MODEL to a model that may answer for other exchanges.")
        notes.append(f"no model for {exchange}'s candles: answered by the default model {live.name!r} (trained on "
                     f"{live.exchange}'s)")
    return live


def _default(holder: ModelHolder, live_map: dict[str, Live]) -> Live | None:
    name = holder.default_name
    if name is None:
        return None
    live = live_map.get(name)
    if live is None:
        _not_loaded(holder, live_map, name)
    return live


def _not_loaded(holder: ModelHolder, live_map: dict[str, Live], name: str | None) -> None:
    """503 while the model a request needs is configured but not (yet) loaded; nothing for an unknown one."""
    if live_map and (name is None or name not in holder.served):
        return
    reason = holder.problems.get(name, "loading") if name is not None and live_map else holder.not_ready_reason()
    raise RequestError(503, f"No model is ready to answer ({reason or 'loading'}); retry shortly or see "
                            "GET /health/ready.")


def _default_says(default: Live | None, timeframe: str) -> str:
    if default is None:
        return " and no default model"
    return f"; the default model {default.name!r} is a {default.interval} model and never answers for {timeframe}"


def _names(live_map: dict[str, Live]) -> str:
    return ", ".join(sorted(live_map)) or "none"
