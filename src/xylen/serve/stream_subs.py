"""One /ws/predict subscription: its series, its ring buffer of closed candles, and one prediction per candle.

A subscription keeps the last ``min_candles`` closed candles of its series in a fixed buffer (a float64 matrix laid
out as decode.py's, so that ``FeatureSet.last_row`` reads exactly what POST /predict gives it for the same candles and
the probabilities are the same floats). Each new candle is checked as /predict checks candles (decode.py), then must
be the next candle of the series: one interval after the previous one, closed by the server's clock. A refused candle
is an error naming its open time and the expected one; the buffer is left as it was.

Every candle reads ``holder.live`` once and routes as /predict routes (``serve.predict.route``), so a hot swap reaches
the next candle, which says so in ``notes``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from xylen.core import features, intervals
from xylen.core.features import CandleArrays
from xylen.core.featuresets import FeatureSet
from xylen.core.schema import MICROS_FROM, SECONDS_BELOW
from xylen.serve.decode import PredictRequest, RequestError, decode_candles, iso
from xylen.serve.holder import Live
from xylen.serve.predict import answer, features_row, route
from xylen.serve.state import ServeState

_LO, _HI = features.PRICE_RANGE
_MAX_VOLUME = features.MAX_VOLUME


class CandleError(RequestError):
    """A refused candle: the message names it; ``open_time`` is its open time in ms when it has one."""

    def __init__(self, message: str, open_time: float | None) -> None:
        super().__init__(422, message)
        self.open_time = open_time


class Ring:
    """The last ``cap`` candles as rows of a (2 * cap, 6) matrix: the window is always one contiguous slice (a
    view), and appending copies ``cap - 1`` rows once every ``cap + 1`` appends (about one row per candle)."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.buf = np.empty((2 * cap, 6), dtype=np.float64)
        self.end = 0  # rows [end - n, end) are the window
        self.n = 0

    def fill(self, m: np.ndarray) -> None:
        k = min(len(m), self.cap)
        self.buf[:k] = m[len(m) - k :, :6]
        self.end = self.n = k

    @property
    def last_time(self) -> int:
        return int(self.buf[self.end - 1, 0])

    def stage(self, row: np.ndarray) -> CandleArrays:
        """The window with ``row`` appended, without committing it (``commit`` does)."""
        if self.end == len(self.buf):
            keep = min(self.n, self.cap - 1)
            self.buf[:keep] = self.buf[self.end - keep : self.end]
            self.end = self.n = keep
        self.buf[self.end] = row
        k = min(self.n + 1, self.cap)
        return CandleArrays.from_matrix(self.buf[self.end + 1 - k : self.end + 1])

    def commit(self) -> None:
        self.end += 1
        self.n = min(self.n + 1, self.cap)

    def restart(self, row: np.ndarray) -> None:
        """Forget the window (the series has a gap): ``row`` is its first candle."""
        self.buf[0] = row
        self.end = self.n = 1


def one_candle(raw: Any, who: str) -> tuple[np.ndarray, float | None]:
    """One candle (a Binance array or object, as /predict takes them) -> its 6 values (open time in ms) and the
    close_time it carries. The common case (a 6+ field array of plain values, times in ms) is checked here in a few
    µs; anything else, and anything this check would refuse, goes through decode.py's checks, which then accept
    it or name the problem: decode.py decides, this is only its shortcut."""
    if type(raw) is list and len(raw) >= 6:
        try:
            v = np.array(raw[:6], dtype=np.float64)
        except (ValueError, TypeError, OverflowError):
            v = None
        if v is not None:
            t, o, h, lo, c, vol = v.tolist()
            ct = raw[6] if len(raw) > 6 else None
            # NaN and infinities fail every comparison below, so they take decode.py's path too
            if (SECONDS_BELOW <= t < MICROS_FROM and _LO <= o <= _HI and _LO <= h <= _HI and _LO <= lo <= _HI
                    and _LO <= c <= _HI and 0.0 <= vol <= _MAX_VOLUME and h >= o and h >= c and lo <= o and lo <= c
                    and (ct is None or (type(ct) is int and SECONDS_BELOW <= ct < MICROS_FROM))):
                v[0] = float(int(t))  # whole milliseconds, as CandleArrays.from_matrix makes them
                return v, None if ct is None else float(ct)
    t = _open_time(raw)
    try:
        w = decode_candles([raw], 1, who)
    except RequestError as exc:
        raise CandleError(f"{_candle(t)} was refused: " + exc.message.replace("candles[0]", "the candle"), t) from None
    m = w.candles
    v = np.array([m.open_time[0], m.open[0], m.high[0], m.low[0], m.close[0], m.volume[0]], dtype=np.float64)
    return v, w.close_time


def _open_time(raw: Any) -> float | None:
    """The candle's open time as sent, when it is a number a 64-bit integer holds (for messages only)."""
    v = raw[0] if isinstance(raw, list) and raw else raw.get("open_time", raw.get("t")) if isinstance(raw, dict) \
        else None
    try:
        x = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return None
    return x if -(2.0**63) <= x < 2.0**63 else None  # an error message's open_time: JSON writes 64-bit integers only


def _candle(t: float | None) -> str:
    if t is None:
        return "The candle"
    if SECONDS_BELOW <= t < MICROS_FROM:
        return f"The candle opened at {iso(t)} ({t:.0f})"
    return f"The candle with open_time {t:.0f}"


@dataclass
class Subscription:
    """``req`` routes each candle as /predict would; ``model``, when the client named one, is used instead."""

    sid: str
    mode: str
    req: PredictRequest
    model: str | None
    interval: str
    symbol: str | None
    exchange: str
    ring: Ring
    last_model: tuple[str, str]  # (name, version) that answered the previous message
    unlisten: Any = None  # push: StoreFeed's unlisten()

    def resolve(self, state: ServeState, live_map: dict[str, Live], notes: list[str]) -> tuple[Live, FeatureSet]:
        """The model that answers now, checked against what this subscription holds."""
        if self.model is not None:
            live = live_map.get(self.model)
            if live is None:
                raise RequestError(404, f"Model {self.model!r} is no longer live (live: "
                                        f"{', '.join(sorted(live_map)) or 'none'}); unsubscribe and subscribe to one "
                                        "that is (GET /models).")
        else:
            live = route(state.holder, live_map, self.req, notes)
        fs = check_model(live, self.interval)
        if fs.min_candles > self.ring.cap:
            raise RequestError(422, f"{live.who} {live.version} reads {fs.min_candles} candles, but this subscription "
                                    f"holds {self.ring.cap} (it was made for a model that needs fewer); unsubscribe "
                                    f"and subscribe again with at least {fs.min_candles} candles.")
        return live, fs

    def swapped(self, live: Live, notes: list[str]) -> None:
        name, version = self.last_model
        if (live.name, live.version) != (name, version):
            notes.append(f"model swapped: {version} -> {live.version}" if live.name == name else
                         f"model changed: {name} {version} -> {live.name} {live.version}")
            self.last_model = (live.name, live.version)

    def candle(self, state: ServeState, raw: Any) -> dict[str, Any]:
        """The prediction message for the next candle ``raw`` (send mode); CandleError/RequestError otherwise."""
        notes: list[str] = []
        live, fs = self.resolve(state, state.holder.live, notes)  # read once: a swap now reaches the next candle
        v, close_time = one_candle(raw, live.who)
        t = v[0]
        want = intervals.next_open(self.ring.last_time, self.interval)
        if t != want:
            what = "repeats" if t == self.ring.last_time else "is older than" if t < want else "skips past"
            raise CandleError(f"{_candle(t)} {what} the next {self.interval} candle of subscription {self.sid!r}, "
                              f"which opens at {iso(want)} ({want}) after the last one ({iso(self.ring.last_time)}); "
                              "send each closed candle once, in order, without gaps (unsubscribe and subscribe again "
                              "with a fresh window after a gap).", t)
        ends = float(intervals.next_open(int(t), self.interval) - 1)
        if close_time is not None:
            if close_time < t:
                raise CandleError(f"{_candle(t)} has close_time {close_time:.0f}, earlier than its open time; send "
                                  "Binance's close_time (open time + interval - 1 ms) or leave it out.", t)
            ends = max(ends, close_time)
        now_ms = state.clock() * 1000.0
        if ends > now_ms + state.settings.clock_skew * 1000.0:
            raise CandleError(f"{_candle(t)} is still open: it closes at {iso(ends + 1)}, after the server's clock "
                              f"({iso(now_ms)}); send it once it has closed.", t)
        return self.predict(state, live, fs, v, notes)

    def predict(self, state: ServeState, live: Live, fs: FeatureSet, v: np.ndarray, notes: list[str]
                ) -> dict[str, Any]:
        """Append the checked next candle ``v`` and answer for it (the buffer changes only if this succeeds)."""
        c = self.ring.stage(v)
        try:
            row = features_row(fs, c, live.who)
        except RequestError as exc:
            raise CandleError(exc.message, float(v[0])) from None
        out = answer(state, live, row, notes, {"type": "prediction", "id": self.sid, "open_time": int(v[0])})
        self.ring.commit()
        self.swapped(live, notes)
        return out

    def first(self, state: ServeState, live: Live, fs: FeatureSet, c: CandleArrays, notes: list[str]
              ) -> dict[str, Any]:
        """Fill the buffer from the subscription's checked closed window ``c`` and answer for its last candle."""
        m = np.column_stack([c.open_time.astype(np.float64), c.open, c.high, c.low, c.close, c.volume])
        self.ring.fill(m[-fs.min_candles :])
        row = features_row(fs, CandleArrays.from_matrix(self.ring.buf[: self.ring.end]), live.who)
        return answer(state, live, row, notes, {"type": "prediction", "id": self.sid,
                                                "open_time": self.ring.last_time})


    def pushed(self, state: ServeState, rows: np.ndarray) -> list[dict[str, Any]]:
        """The messages for candles the store feed delivered (push mode): a prediction for each, an error for a
        candle refused or a gap in the store (the window starts again after it)."""
        out: list[dict[str, Any]] = []
        for r in rows:
            t = float(r[0])
            if self.ring.n and t <= self.ring.last_time:
                continue  # never a candle twice (the feed promises it; a store rewritten under us must not break it)
            notes: list[str] = []
            try:
                live, fs = self.resolve(state, state.holder.live, notes)
                v, _ = one_candle(r[:6].tolist(), live.who)
                if self.ring.n and t != intervals.next_open(self.ring.last_time, self.interval):
                    last = self.ring.last_time
                    self.ring.restart(v)
                    raise CandleError(f"The store has no {self.interval} candles between {iso(last)} and {iso(t)} "
                                      "(a gap: the exchange halted, or collect was stopped); predictions for "
                                      f"subscription {self.sid!r} resume after {fs.min_candles} consecutive candles "
                                      f"({fs.min_candles - 1} more).", t)
                if self.ring.n + 1 < fs.min_candles:
                    self.ring.stage(v)
                    self.ring.commit()
                    continue
                out.append(self.predict(state, live, fs, v, notes))
            except RequestError as exc:
                out.append(error_message(self.sid, exc))
        return out


def error_message(sid: str | None, exc: RequestError) -> dict[str, Any]:
    t = exc.open_time if isinstance(exc, CandleError) else None
    return {"type": "error", "id": sid, "error": exc.message, "open_time": None if t is None else int(t)}


def check_model(live: Live, interval: str) -> FeatureSet:
    """The feature set of ``live``, a model that can be streamed candles of ``interval``."""
    fs = live.bundle.features
    if fs is None:
        raise RequestError(422, f"{live.who} takes features, not candles, so it cannot be streamed candles; use POST "
                                "/predict with 'indicators' or 'features' for it.")
    if live.interval is not None and live.interval != interval:
        raise RequestError(422, f"{live.who} was trained on {live.interval} candles, but the subscription is for "
                                f"{interval} candles; subscribe with timeframe {live.interval!r}.")
    return fs
