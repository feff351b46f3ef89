"""Request decoding for the hot path: orjson bytes -> validated candle arrays or a feature vector.

Pydantic models describe these bodies for OpenAPI only (serve/schemas.py); parsing them with pydantic costs
1.6x requests/s here, so the hot path reads plain orjson values and checks what it needs by hand. Every failure
is a ``RequestError`` whose message names the field and the fix; the gate turns it into a JSON 4xx.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from xylen.core import features
from xylen.core.errors import DataError
from xylen.core.schema import INTERVAL_MS, record_to_row

MICROS_THRESHOLD = 10**13  # epoch ms stays below this until 2286; epoch µs is above (Binance archives since 2025)
_OHLCV_FIELDS = ("open_time", "open", "high", "low", "close", "volume")
_FLOAT = np.float64


class RequestError(Exception):
    """A client error: HTTP ``status`` with a one-sentence ``message`` naming the field and the fix."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class PredictRequest:
    symbol: str | None
    timeframe: str | None
    candles: features.CandleArrays | None
    features: Any  # list of numbers or {name: number}; checked against the model's names by the route


def loads_object(body: bytes) -> dict[str, Any]:
    if not body:
        raise RequestError(
            400,
            "The request body is empty; send a JSON object like "
            '{"symbol": "BTCUSDT", "timeframe": "5m", "candles": [...]}.',
        )
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RequestError(400, f"The request body is not valid JSON ({exc}); send a JSON object.") from None
    if not isinstance(obj, dict):
        raise RequestError(
            400,
            f"The request body is a JSON {type(obj).__name__}; send a JSON object "
            'like {"symbol": "BTCUSDT", "timeframe": "5m", "candles": [...]}.',
        )
    return obj


def _opt_str(obj: dict[str, Any], key: str) -> str | None:
    v = obj.get(key)
    if v is None or isinstance(v, str):
        return v
    raise RequestError(
        422,
        f"Field {key!r} must be a string like {'BTCUSDT' if key == 'symbol' else '5m'}, "
        f"got {type(v).__name__} {str(v)[:40]!r}.",
    )


def decode_predict(body: bytes) -> PredictRequest:
    """Parse a /predict body. Candles are validated; a ``features`` payload is passed on unchecked."""
    obj = loads_object(body)
    symbol = _opt_str(obj, "symbol")
    timeframe = _opt_str(obj, "timeframe")
    if timeframe is not None and timeframe not in INTERVAL_MS:
        raise RequestError(
            422, f"Field 'timeframe' {timeframe[:20]!r} is not a Binance interval; use one of {' '.join(INTERVAL_MS)}."
        )
    for key in ("indicators", "meta"):
        if obj.get(key) is not None and not isinstance(obj[key], dict):
            raise RequestError(422, f"Field {key!r} must be a JSON object (or left out).")
    raw = obj.get("candles")
    if raw is None:
        if obj.get("features") is None:
            raise RequestError(
                422,
                "Field 'candles' is missing; send at least "
                f"{features.MIN_CANDLES} candles (Binance 12-field arrays or objects), "
                "or 'features' for a model trained elsewhere.",
            )
        return PredictRequest(symbol, timeframe, None, obj["features"])
    return PredictRequest(symbol, timeframe, decode_candles(raw), obj.get("features"))


def decode_candles(raw: Any) -> features.CandleArrays:
    if not isinstance(raw, list):
        raise RequestError(422, f"Field 'candles' must be a list of candles, got {type(raw).__name__}.")
    n = len(raw)
    if n < features.MIN_CANDLES:
        raise RequestError(
            422,
            f"Field 'candles' has {n} candle(s); the features need at least "
            f"{features.MIN_CANDLES} (the last one plus {features.LOOKBACK} before it). "
            f"Send {features.MIN_CANDLES} or more, oldest first.",
        )
    m = _matrix(raw)
    _check(m)
    return features.CandleArrays.from_matrix(m)


def _matrix(raw: list[Any]) -> np.ndarray:
    """An (n, 6) float64 matrix: open_time, open, high, low, close, volume."""
    if all(type(r) is list for r in raw):
        # the fast path: one flat list, numeric strings and numbers alike parsed in C; every row gave 6 values
        # exactly when the total is 6n (r[:6] caps each row), else a row is short: locate it below
        flat = [x for r in raw for x in r[:6]]
        if len(flat) == 6 * len(raw):
            try:
                return np.array(flat, dtype=_FLOAT).reshape(-1, 6)
            except (ValueError, TypeError):
                pass  # a bad value: locate it for the message below
    return np.array([_row(i, r) for i, r in enumerate(raw)], dtype=_FLOAT)


def _row(i: int, rec: Any) -> list[float]:
    """The slow path (objects, or a bad value somewhere): the core's one-candle decoder, messages prefixed."""
    try:
        return record_to_row(rec)[:6]
    except DataError as exc:
        raise RequestError(422, f"candles[{i}]: {exc.message}" + (f" Fix: {exc.hint}" if exc.hint else "")) from None


def _check(m: np.ndarray) -> None:
    if not np.isfinite(m).all():
        i, j = (int(x) for x in np.argwhere(~np.isfinite(m))[0])
        raise RequestError(
            422, f"candles[{i}].{_OHLCV_FIELDS[j]} is not finite ({m[i, j]}); send real numbers (no NaN or infinity)."
        )
    t = m[:, 0]
    if (t < 0).any() or (t >= 2**62).any():
        i = int(np.argmax((t < 0) | (t >= 2**62)))
        raise RequestError(422, f"candles[{i}].open_time {t[i]:.0f} is not an epoch time in milliseconds.")
    micro = t > MICROS_THRESHOLD
    if micro.any():
        m[micro, 0] = np.floor_divide(t[micro], 1000)
    prices = m[:, 1:5]
    if (prices <= 0).any():
        i, j = (int(x) for x in np.argwhere(prices <= 0)[0])
        raise RequestError(
            422, f"candles[{i}].{_OHLCV_FIELDS[j + 1]} is {prices[i, j]}; prices must be greater than 0."
        )
    if (m[:, 5] < 0).any():
        i = int(np.argmax(m[:, 5] < 0))
        raise RequestError(422, f"candles[{i}].volume is {m[i, 5]}; volume must be 0 or more.")
    dt = np.diff(m[:, 0])
    if (dt <= 0).any():
        i = int(np.argmax(dt <= 0)) + 1
        what = "repeats" if dt[i - 1] == 0 else "is earlier than"
        raise RequestError(
            422, f"candles[{i}].open_time {what} candles[{i - 1}]'s; send unique candles sorted oldest first."
        )
    hi, lo = m[:, 2], m[:, 3]
    bad = (hi < np.maximum(m[:, 1], m[:, 4])) | (lo > np.minimum(m[:, 1], m[:, 4]))
    if bad.any():
        i = int(np.argmax(bad))
        raise RequestError(
            422,
            f"candles[{i}] has high {hi[i]} / low {lo[i]} outside its open and close; "
            "send candles as the exchange reports them.",
        )


def feature_vector(raw: Any, names: list[str]) -> np.ndarray:
    """A ``features`` payload (list in manifest order, or {name: value}) -> a (n_features,) float64 row."""
    n = len(names)
    if isinstance(raw, dict):
        missing = [k for k in names if k not in raw]
        if missing:
            raise RequestError(
                422,
                f"Field 'features' lacks {len(missing)} of the model's {n} features "
                f"(first: {missing[0]!r}); send every name the model lists.",
            )
        extra = [k for k in raw if k not in set(names)]
        if extra:
            raise RequestError(
                422,
                f"Field 'features' has unknown feature {str(extra[0])[:40]!r}; the model "
                f"takes {n} named features (see GET /v2/models/<name>).",
            )
        raw = [raw[k] for k in names]
    if not isinstance(raw, list):
        raise RequestError(422, "Field 'features' must be a list of numbers or an object {name: number}.")
    if len(raw) != n:
        raise RequestError(422, f"Field 'features' has {len(raw)} value(s); the model expects {n}.")
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in raw if v is not None):
        raise RequestError(422, "Field 'features' must hold numbers (null for missing).")
    return np.array([np.nan if v is None else v for v in raw], dtype=_FLOAT)
