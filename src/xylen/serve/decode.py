"""Request decoding for the hot path: orjson bytes -> validated candle arrays or a feature vector.

Pydantic models describe these bodies for OpenAPI only (serve/schemas.py); parsing them with pydantic costs
1.6x requests/s here, so the hot path reads plain orjson values and checks what it needs by hand. Every failure
is a ``RequestError`` whose message names the field and the fix; the gate turns it into a JSON 4xx.

Two steps: ``decode_predict`` checks what needs no model (JSON shape, numbers, OHLC sanity, sorted unique
times, the time unit); ``closed_window`` then checks the candles against the model that will answer (its
interval, the still-open candle, gaps inside the feature window).

Long windows: bots forward Binance's klines page as it comes (500 candles by default, 1,000 at most), but a model
reads only its last ``min_candles``. The whole body is checked to be well-formed JSON (msgspec's decoder skips the
candles without building them), then only the tail that the model reads, plus one candle in case the last is still
open, is converted and checked; the candles before it are only counted. A request's cost therefore stops growing with
the candles it sends beyond the model's window (bench/bench_predict.py measures 100 against 1,000).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import msgspec
import numpy as np
import orjson

from xylen.core import features, intervals
from xylen.core.errors import ConfigError, DataError
from xylen.core.markets import DEFAULT_EXCHANGE, EXCHANGES, canonical_symbol
from xylen.core.schema import INTERVALS, MICROS_FROM, SECONDS_BELOW, TimeUnitError, record_to_row, to_epoch_ms

_OHLCV_FIELDS = ("open_time", "open", "high", "low", "close", "volume")
_FLOAT = np.float64
_LIST_NAMES = 12  # missing feature names quoted in a 422 before "and N more"


class RequestError(Exception):
    """A client error: HTTP ``status`` with a one-sentence ``message`` naming the field and the fix."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class PredictRequest:
    symbol: str | None  # canonical (BTCUSDT), whatever the spelling sent (btc/usdt, BTC-USDT)
    timeframe: str | None
    exchange: str  # binance unless the request names another
    # the JSON value, decoded by ``decode_candles`` only for a model that computes features from it: a list of
    # msgspec.Raw (each candle's JSON text, from the fast decoder) or of decoded values (from orjson)
    candles: Any
    features: Any  # list of numbers or {name: number}; checked against the model's names by the route
    indicators: dict[str, Any] | None  # the alpha's {name: value}: the features of a model trained elsewhere


class _Body(msgspec.Struct):
    """The /predict body as the fast decoder reads it: each candle stays raw JSON text (validated, not built)."""

    symbol: Any = None
    timeframe: Any = None
    exchange: Any = None
    candles: list[msgspec.Raw] | None = None
    features: Any = None
    indicators: Any = None
    meta: msgspec.Raw = msgspec.Raw(b"null")


_BODY = msgspec.json.Decoder(_Body)
_EMPTY = (
    "The request body is empty; send a JSON object like "
    '{"symbol": "BTCUSDT", "timeframe": "5m", "candles": [...]}.'
)


def _not_json(exc: Exception) -> RequestError:
    return RequestError(400, f"The request body is not valid JSON ({exc}); send a JSON object.")


def loads_object(body: bytes) -> dict[str, Any]:
    if not body:
        raise RequestError(400, _EMPTY)
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise _not_json(exc) from None
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
        f"Field {key!r} must be a string like {_EXAMPLES.get(key, '5m')}, "
        f"got {type(v).__name__} {str(v)[:40]!r}.",
    )


_EXAMPLES = {"symbol": "BTCUSDT", "exchange": "binance"}


def decode_predict(body: bytes) -> PredictRequest:
    """Parse a /predict body. Candles and ``features`` are checked once the model that answers is known.

    The fast decoder validates the whole body as JSON but keeps each candle as its JSON text. It skips strings
    without checking their UTF-8, so a body with any non-ASCII byte (rare: bots send ASCII) goes to orjson, which
    checks it all; so does a body of an unexpected shape, for orjson's path to name what is wrong."""
    if not body:
        raise RequestError(400, _EMPTY)
    if body.isascii():
        try:
            b = _BODY.decode(body)
        except msgspec.ValidationError:
            pass  # not an object, or candles not a list: the path below says which
        except RecursionError:
            pass  # nested deeper than msgspec follows on the interpreter's stack: orjson refuses past 1,024 levels
        except msgspec.DecodeError as exc:
            raise _not_json(exc) from None
        else:
            meta = bytes(b.meta)  # never built: only its kind is checked
            fields = {"symbol": b.symbol, "timeframe": b.timeframe, "exchange": b.exchange, "features": b.features,
                      "indicators": b.indicators}
            return _request(fields, b.candles, meta == b"null" or meta[:1] == b"{")
    obj = loads_object(body)
    return _request(obj, obj.get("candles"), obj.get("meta") is None or isinstance(obj["meta"], dict))


def _request(obj: dict[str, Any], candles: Any, meta_ok: bool) -> PredictRequest:
    if not meta_ok:
        raise RequestError(422, "Field 'meta' must be a JSON object (or left out).")
    symbol = _opt_str(obj, "symbol")
    if symbol is not None:
        symbol = _symbol(symbol)
    exchange = _opt_str(obj, "exchange")
    if exchange is None:
        exchange = DEFAULT_EXCHANGE
    elif exchange not in EXCHANGES:
        raise RequestError(
            422, f"Field 'exchange' {exchange[:40]!r} is not an exchange xylen collects from; use one of "
            f"{', '.join(EXCHANGES)} (lower case), or leave it out for binance."
        )
    timeframe = _opt_str(obj, "timeframe")
    if timeframe is not None and timeframe not in INTERVALS:
        raise RequestError(
            422, f"Field 'timeframe' {timeframe[:20]!r} is not a Binance interval; use one of {' '.join(INTERVALS)}."
        )
    if obj.get("indicators") is not None and not isinstance(obj["indicators"], dict):
        raise RequestError(422, "Field 'indicators' must be a JSON object (or left out).")
    indicators = obj.get("indicators") or None
    # a body with neither candles nor features is refused once the model that answers is known (predict.py): the
    # message names how many candles that model needs
    return PredictRequest(symbol, timeframe, exchange, candles, obj.get("features"), indicators)


def series_fields(obj: dict[str, Any]) -> PredictRequest:
    """'symbol', 'timeframe' and 'exchange' of a JSON object, checked and spelled as /predict's (the stream's
    subscribe message routes with them)."""
    return _request({k: obj.get(k) for k in ("symbol", "timeframe", "exchange")}, None, True)


def _symbol(sent: str) -> str:
    """The canonical symbol (markets.canonical_symbol's rule) or a 422 quoting what was sent."""
    if sent.isascii() and sent.isalnum() and 2 <= len(sent) <= 20:
        return sent.upper()  # the usual case, without a regex
    try:
        return canonical_symbol(sent)
    except ConfigError:
        raise RequestError(
            422, f"Field 'symbol' {sent[:40]!r} is not a trading pair; send it like BTCUSDT or BTC/USDT."
        ) from None


@dataclass(frozen=True)
class Window:
    """The candles ``decode_candles`` converted: the request's last ones, from index ``first`` of its 'candles'."""

    candles: features.CandleArrays
    close_time: float | None  # the last candle's close_time if it was sent, in ms
    first: int


def decode_candles(raw: Any, need: int = features.MIN_CANDLES, who: str = "the model") -> Window:
    """The last ``need + 1`` candles (sorted, unique, open_time in ms, values checked): what a model with
    min_candles ``need`` reads (``who`` names it), and one more in case the last is still open. Earlier candles are
    counted, not converted or checked. The rest is checked against the model by ``closed_window``."""
    if not isinstance(raw, list):
        raise RequestError(422, f"Field 'candles' must be a list of candles, got {type(raw).__name__}.")
    n = len(raw)
    if n < need:
        raise RequestError(
            422,
            f"Field 'candles' has {n} candle(s); {who} needs at least {need} candles (the last one plus "
            f"{need - 1} before it). Send {need} or more, oldest first; GET /models states each model's "
            "min_candles.",
        )
    first = max(0, n - need - 1)
    tail = raw[first:]
    if tail and type(tail[0]) is msgspec.Raw:
        tail = _decode_raw(tail, first)
    m = _matrix(tail, first)
    _check(m, first)
    return Window(features.CandleArrays.from_matrix(m), _sent_close_time(tail[-1], n - 1), first)


def _decode_raw(tail: list[Any], first: int) -> list[Any]:
    """Candles kept as JSON text by the fast decoder -> values (one orjson call for the whole tail)."""
    try:
        return orjson.loads(b"[" + b",".join(tail) + b"]")  # type: ignore[no-any-return]
    except orjson.JSONDecodeError:
        pass  # valid JSON (the whole body was checked), but a number no double holds, e.g. 1e400: find the candle
    for i, r in enumerate(tail):
        try:
            orjson.loads(memoryview(r))
        except orjson.JSONDecodeError as exc:
            raise RequestError(
                422,
                f"candles[{first + i}] {bytes(r)[:120].decode()!r} holds a number no 64-bit float can hold ({exc}); "
                "send the exchange's values.",
            ) from None
    raise AssertionError("unreachable: the joined candles failed but each one parses")  # pragma: no cover


def _matrix(raw: list[Any], first: int) -> np.ndarray:
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
    return np.array([_row(first + i, r) for i, r in enumerate(raw)], dtype=_FLOAT)


def _row(i: int, rec: Any) -> list[float]:
    """The slow path (objects, or a bad value somewhere): the core's one-candle decoder, messages prefixed."""
    try:
        return record_to_row(rec)[:6]
    except DataError as exc:
        raise RequestError(422, f"candles[{i}]: {exc.message}" + (f" Fix: {exc.hint}" if exc.hint else "")) from None


def _check(m: np.ndarray, first: int) -> None:
    """Values every feature can represent finitely (features.PRICE_RANGE, MAX_VOLUME), OHLC consistency, sorted
    unique open times in ms. Indices in messages count from the request's first candle."""
    if not np.isfinite(m).all():
        i, j = (int(x) for x in np.argwhere(~np.isfinite(m))[0])
        raise RequestError(
            422,
            f"candles[{first + i}].{_OHLCV_FIELDS[j]} is not finite ({m[i, j]}); send real numbers (no NaN or "
            "infinity).",
        )
    t = m[:, 0]
    if t.min() < SECONDS_BELOW or t.max() >= MICROS_FROM:  # not all milliseconds: read each by its magnitude
        _to_ms(t, first)
    prices = m[:, 1:5]
    if (prices <= 0).any():
        i, j = (int(x) for x in np.argwhere(prices <= 0)[0])
        raise RequestError(
            422, f"candles[{first + i}].{_OHLCV_FIELDS[j + 1]} is {prices[i, j]}; prices must be greater than 0."
        )
    lo, hi = features.PRICE_RANGE
    out = (prices < lo) | (prices > hi)
    if out.any():
        i, j = (int(x) for x in np.argwhere(out)[0])
        raise RequestError(
            422,
            f"candles[{first + i}].{_OHLCV_FIELDS[j + 1]} is {float(prices[i, j])!r}, outside the prices xylen's "
            f"features can represent finitely ({lo:g} to {hi:g}); send the exchange's prices.",
        )
    if (m[:, 5] < 0).any():
        i = int(np.argmax(m[:, 5] < 0))
        raise RequestError(422, f"candles[{first + i}].volume is {m[i, 5]}; volume must be 0 or more.")
    if (m[:, 5] > features.MAX_VOLUME).any():
        i = int(np.argmax(m[:, 5] > features.MAX_VOLUME))
        raise RequestError(
            422,
            f"candles[{first + i}].volume is {float(m[i, 5])!r}, more than xylen's features can represent finitely "
            f"({features.MAX_VOLUME:g}); send the exchange's volume (in the base asset).",
        )
    dt = np.diff(m[:, 0])
    if (dt <= 0).any():
        i = int(np.argmax(dt <= 0)) + 1
        what = "repeats" if dt[i - 1] == 0 else "is earlier than"
        raise RequestError(
            422,
            f"candles[{first + i}].open_time {what} candles[{first + i - 1}]'s; send unique candles sorted oldest "
            "first.",
        )
    hi_, lo_ = m[:, 2], m[:, 3]
    bad = (hi_ < np.maximum(m[:, 1], m[:, 4])) | (lo_ > np.minimum(m[:, 1], m[:, 4]))
    if bad.any():
        i = int(np.argmax(bad))
        raise RequestError(
            422,
            f"candles[{first + i}] has high {hi_[i]} / low {lo_[i]} outside its open and close; "
            "send candles as the exchange reports them.",
        )


def feature_vector(raw: Any, names: list[str], field: str = "features") -> np.ndarray:
    """The features of a model that does not compute its own -> a (n_features,) float64 row.

    ``features``: a list in the model's order, or {name: value} with exactly the model's names. ``indicators``
    (the alpha's field): {name: value}; other keys are ignored, because bots send every indicator they compute.
    """
    n = len(names)
    if isinstance(raw, dict):
        missing = [k for k in names if k not in raw]
        if missing:
            shown = ", ".join(repr(k[:40]) for k in missing[:_LIST_NAMES])
            more = f" and {len(missing) - _LIST_NAMES} more" if len(missing) > _LIST_NAMES else ""
            raise RequestError(
                422,
                f"Field {field!r} lacks {len(missing)} of the model's {n} features: {shown}{more}; send each by "
                "name (GET /v2/models/<name> lists them).",
            )
        if field == "features" and len(raw) != n:
            known = set(names)
            extra = next(k for k in raw if k not in known)
            raise RequestError(
                422,
                f"Field 'features' has unknown feature {str(extra)[:40]!r}; the model "
                f"takes {n} named features (see GET /v2/models/<name>).",
            )
        raw = [raw[k] for k in names]
    if not isinstance(raw, list):
        raise RequestError(422, f"Field {field!r} must be a list of numbers or an object {{name: number}}.")
    if len(raw) != n:
        raise RequestError(422, f"Field {field!r} has {len(raw)} value(s); the model expects {n}.")
    for i, v in enumerate(raw):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise RequestError(
                422, f"Field {field!r}: feature {names[i][:40]!r} is {str(v)[:40]!r}; send numbers (null for missing)."
            )
    try:
        row = np.array([np.nan if v is None else v for v in raw], dtype=_FLOAT)
    except OverflowError:  # an integer beyond any double (JSON allows any number of digits)
        row = np.array([np.nan if v is None else _to_float(v) for v in raw], dtype=_FLOAT)
    if np.isinf(row).any():  # null is the only non-finite value a request may send: missing (LightGBM's NaN)
        i = int(np.argmax(np.isinf(row)))
        raise RequestError(
            422,
            f"Field {field!r}: feature {names[i][:40]!r} is {str(raw[i])[:40]!r}, beyond a 64-bit float; send finite "
            "numbers (null for missing).",
        )
    return row


def _to_float(v: float) -> float:
    try:
        return float(v)
    except OverflowError:
        return np.inf


def _to_ms(t: np.ndarray, first: int) -> None:
    """Open times in seconds, milliseconds or microseconds -> milliseconds, in place (the readers' rule)."""
    try:
        t[:] = to_epoch_ms(t)[0]
    except TimeUnitError as exc:
        where = f"candles[{first + exc.index}].open_time"
        raise RequestError(422, f"{where} {exc.value:.0f} is {_unit_problem(exc)}") from None


def _unit_problem(exc: TimeUnitError) -> str:
    return exc.message.split(" is ", 1)[1] + "; " + (exc.hint or "")


def epoch_ms(x: float, what: str) -> float:
    """One epoch time (seconds, milliseconds or microseconds, by magnitude) in milliseconds."""
    if not np.isfinite(x):
        raise RequestError(422, f"{what} {x!r} is not a time; send epoch milliseconds like 1704067200000.")
    try:
        return float(to_epoch_ms(np.array([x]))[0][0])
    except TimeUnitError as exc:
        raise RequestError(422, f"{what} {x:.0f} is {_unit_problem(exc)}") from None


def _sent_close_time(rec: Any, i: int) -> float | None:
    """The close_time a candle carries (array field 7, or close_time|T), in ms; None when it has none."""
    if type(rec) is list:
        v = rec[6] if len(rec) > 6 else None
    elif isinstance(rec, dict):
        v = rec.get("close_time", rec.get("T"))
    else:
        return None
    if v is None:
        return None
    what = f"candles[{i}].close_time"
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise RequestError(
            422, f"{what} is {type(v).__name__} {str(v)[:40]!r}; send epoch milliseconds or leave it out."
        )
    try:
        x = float(v)
    except ValueError:
        raise RequestError(
            422, f"{what} {str(v)[:40]!r} is not a number; send epoch milliseconds or leave it out."
        ) from None
    return epoch_ms(x, what)


def iso(ms: float) -> str:
    """An epoch time in ms as ISO 8601 UTC, for messages and notes; milliseconds shown when it has any (a candle
    off the grid by less than a second must not read like the time it should have)."""
    t = datetime.fromtimestamp(int(ms) // 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{t}.{int(ms) % 1000:03d}Z" if int(ms) % 1000 else f"{t}Z"


def closed_window(
    c: features.CandleArrays,
    close_time: float | None,
    interval: str | None,
    now_ms: float,
    skew_ms: float,
    who: str,
    need: int = features.MIN_CANDLES,
    first: int = 0,
) -> tuple[features.CandleArrays, list[str]]:
    """The candles the features read, checked against the model ``who`` that answers (its ``interval``, and
    ``need``, its min_candles).

    The last candle is dropped, with a note, while it is still open: its close_time (if sent), else the next
    open time, is later than ``now_ms + skew_ms``. Then the trailing ``need`` candles must be consecutive candles
    of ``interval`` on its grid: training leaves windows with gaps out, so serving does not predict on them.
    ``first``: the index of ``c``'s first candle in the request (``Window.first``), for the messages.
    """
    notes: list[str] = []
    t = c.open_time
    n = len(t)
    limit = now_ms + skew_ms
    if interval is not None or close_time is not None:
        last = int(t[-1])
        if close_time is not None and close_time < last:
            raise RequestError(
                422,
                f"candles[{first + len(t) - 1}].close_time {close_time:.0f} is earlier than its open_time {last}; "
                "send Binance's close_time (open time + interval - 1 ms) or leave the field out.",
            )
        # open if either time says so: a close_time that is too early must not let an open candle through
        ends = max(
            close_time if close_time is not None else -1.0,
            intervals.next_open(last, interval) - 1 if interval is not None else -1.0,
        )
        if ends > limit:
            n -= 1
            notes.append(f"dropped the still-open candle opened at {iso(last)}")
            if n and interval is not None and intervals.next_open(int(t[n - 1]), interval) > limit:
                raise RequestError(
                    422,
                    f"candles[{first + n - 1}] (opened at {iso(t[n - 1])}) closes after the server's clock "
                    f"({iso(now_ms)}) too; only the last candle may still be open. Check the bot's clock and "
                    "that open_time is the candle's open time in epoch milliseconds.",
                )
    if n < need:
        raise RequestError(
            422,
            f"After dropping the still-open candle, {n} closed candle(s) remain; {who} needs {need}. "
            f"Send {need + 1} or more, oldest first (GET /models states each model's min_candles).",
        )
    if interval is not None:
        w = t[n - need : n]
        ok = intervals.consecutive(w, interval)
        if not ok.all():
            j = int(np.argmin(ok)) + 1
            i = first + n - need + j
            raise RequestError(
                422,
                f"candles[{i}] opens at {iso(w[j])}, but the {interval} candle after candles[{i - 1}] "
                f"({iso(w[j - 1])}) opens at {iso(intervals.next_open(int(w[j - 1]), interval))}: {who} reads the "
                f"last {need} candles, which must be consecutive {interval} candles without gaps. Send consecutive "
                f"{interval} candles, oldest first.",
            )
        if not intervals.aligned(w[-1:], interval)[0]:
            raise RequestError(
                422,
                f"candles[{first + n - 1}].open_time {iso(w[-1])} is not on the {interval} grid ({who} reads "
                f"{interval} candles); send the exchange's candles as they are.",
            )
    if n == len(t):
        return c, notes
    return features.CandleArrays(*(x[:n] for x in (t, c.open, c.high, c.low, c.close, c.volume))), notes
