"""Candles from an exchange other than Binance, through ccxt, behind the same governor contract as Binance's Rest.

:class:`CcxtSource` is what the backfill calls for ``--exchange bybit|okx|kraken|coinbase|binanceus``: ``resolve``
the symbols against the exchange's spot market list, ``check_intervals``, then ``candles`` one page at a time.
Every request goes through ``governor.call``: ccxt's own limiter paces the calls (the governor's weight budget
never binds), the governor honours Retry-After and backs off with jitter. Errors are sorted as ``rest.py`` sorts
python-binance's:

* 429 and 418, and the answers that mean the same in an exchange's own words (Kraken's HTTP 200
  ``EGeneral:Too many requests``, Bybit's HTTP 403 ``access too frequent`` IP ban) -> :class:`Refused`, with the
  answer's Retry-After or the venue's documented wait (``Venue.rate.retry_after_s``);
* 5xx, timeouts, dropped connections, unreadable bodies, the exchange's "busy, try again" codes -> :class:`Retryable`;
* anything final (an unknown symbol, bad parameters, another 4xx) -> :class:`ExchangeError` with a sentence and a
  hint.

ccxt cannot tell a truncated body from an empty page (it parses ``"{\\"retCode\\":0,\\"res"`` as no candles), so
each answer's parsed JSON is checked: a 200 that did not parse is retried, never taken for "no trading".
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from difflib import get_close_matches
from typing import Any, TypeVar

import numpy as np
import polars as pl
import requests

from xylen.collect.governor import Governor, Refused, Retryable, wall_clock_ms
from xylen.collect.venues import Market, Venue, make_exchange, venue
from xylen.core import intervals as iv
from xylen.core.candles import SCHEMA, empty_frame, fmt_ts
from xylen.core.errors import ConfigError, ExchangeError

__all__ = ["CcxtSource", "make_source"]

T = TypeVar("T")

NEVER_BINDS = 10**12  # the governor's weight cap for a ccxt venue: ccxt's own limiter paces the calls
_SEPARATORS = str.maketrans("", "", "/-_: ")


def make_source(
    name: str,
    base_url: str | None = None,
    timeout_s: float = 10.0,
    clock: Callable[[], int] = wall_clock_ms,
    sleep: Callable[[float], None] = time.sleep,
) -> CcxtSource:
    """The source for exchange ``name`` (bybit, okx, kraken, coinbase, binanceus). ``base_url`` replaces the
    exchange's host (a loopback fake in tests); ``clock``/``sleep`` drive the governor's waits."""
    v = venue(name)
    gov = Governor(1.0, limit=NEVER_BINDS, clock=clock, sleep=sleep, name=v.title)
    return CcxtSource(v, make_exchange(v, base_url, timeout_s), gov)


@dataclass(frozen=True)
class _Answer:
    status: int
    headers: Any
    body: str


class CcxtSource:
    """One exchange through ccxt: the same methods as Binance's :class:`~xylen.collect.rest.Rest` offers the
    backfill. Thread-safe (one ccxt instance is used by one call at a time)."""

    def __init__(self, v: Venue, client: Any, governor: Governor) -> None:
        self.venue = v
        self.exchange = v.name
        self.client = client
        self.governor = governor
        self.page_limit = v.page_limit
        self.reach = v.reach
        self._markets: dict[str, Market] | None = None  # canonical -> market
        self._index: dict[str, Market] = {}  # every accepted spelling -> market
        self._lock = threading.RLock()
        self._answer: _Answer | None = None
        client.session.hooks["response"].append(self._seen)

    # ------------------------------------------------------------------ the contract
    def resolve(self, symbols: list[str]) -> list[Market]:
        """Each symbol, in the exchange's spelling (its id: XBTUSDT, BTC-USDT), ccxt's unified BASE/QUOTE or the
        canonical form (BTCUSDT, btcusdt), as a :class:`Market`; one market list request, once. Duplicates are
        dropped. An unknown symbol is an ExchangeError with up to 5 close matches from the spot market list."""
        with self._lock:
            self._load()
            out: dict[str, Market] = {}
            for s in symbols:
                m = self._lookup(s)
                if m is None:
                    raise self._unknown(s)
                out.setdefault(m.canonical, m)
            return list(out.values())

    def check_intervals(self, intervals: list[str]) -> None:
        """A ConfigError naming the exchange and the intervals it has for the first interval it lacks."""
        for i in intervals:
            if not (isinstance(i, str) and self.venue.has(i)):
                raise ConfigError(
                    f"{self.venue.title} has no {str(i)[:20]!r} candles.",
                    hint=f"use one of the intervals {self.venue.title} has: {' '.join(self.venue.intervals)}"
                    + (" (a fixed set of granularities)." if self.exchange == "coinbase" else "."),
                )

    def candles(
        self, symbol: str, interval: str, start: int, end: int | None = None, limit: int | None = None
    ) -> tuple[pl.DataFrame, int]:
        """ONE ``fetch_ohlcv`` page: up to ``limit`` (at most ``page_limit``) candles opening in [start, end] (end
        inclusive, like Binance's endTime; None: open), as a sorted candle frame with one row per open_time,
        close_time from the interval's grid and the columns ccxt does not carry null. Returns it with the number of
        rows the exchange sent (rows outside [start, end] are dropped but counted). The still-open candle is kept:
        the backfill drops it; nor does this page on: the backfill does."""
        self.check_intervals([interval])
        start, end, limit = _window_args(start, end, limit, self.page_limit)
        with self._lock:
            market = self._market(symbol)
            if end is not None and end < start:
                return empty_frame(), 0
            params = self._until(interval, start, end, limit)
            what = f"{market.canonical} {interval} candles from {fmt_ts(start)}"
            rows = self._call(lambda: self.client.fetch_ohlcv(market.unified, interval, start, limit, params), what)
            sent = self._sent(market, what)
        return _frame(rows, interval, start, end, self.venue, what), sent

    def close(self) -> None:
        self.client.close()

    # ------------------------------------------------------------------ markets
    def _load(self) -> None:
        if self._markets is not None:
            return
        self._call(self.client.load_markets, "the spot market list")
        markets: dict[str, Market] = {}
        index: dict[str, Market] = {}
        for m in self.client.markets.values():
            if not m.get("spot") or m.get("type") not in (None, "spot"):
                continue
            unified, mid = str(m.get("symbol") or ""), str(m.get("id") or "")
            canonical = _squash(f"{m.get('base')}{m.get('quote')}")
            if not (canonical.isalnum() and canonical.isascii() and 2 <= len(canonical) <= 20) or "/" not in unified:
                continue  # not a pair xylen can name (or store) as BASEQUOTE
            altname = (m.get("info") or {}).get("altname") if isinstance(m.get("info"), dict) else None
            market = Market(canonical, unified, mid, {"altname": str(altname)} if altname else {})
            markets.setdefault(canonical, market)
        for market in markets.values():  # exact spellings first, the squashed ones may not shadow them
            for key in (market.id, market.unified.upper(), market.extra.get("altname", "").upper()):
                if key:
                    index.setdefault(key, market)
        for market in markets.values():
            for key in (_squash(market.id), market.canonical):
                index.setdefault(key, market)
        if not markets:
            raise ExchangeError(
                f"{self.venue.title} listed no spot markets.",
                hint="check the exchange URL: it should be the exchange's public API.",
            )
        self._markets, self._index = markets, index

    def _lookup(self, symbol: object) -> Market | None:
        if not isinstance(symbol, str):
            return None
        s = symbol.strip()
        return self._index.get(s) or self._index.get(s.upper()) or self._index.get(_squash(s))

    def _market(self, symbol: str) -> Market:
        self._load()
        m = self._lookup(symbol)
        if m is None:
            raise self._unknown(symbol)
        return m

    def _unknown(self, symbol: object) -> ExchangeError:
        assert self._markets is not None
        wanted = _squash(str(symbol))[:40]
        by_name: dict[str, Market] = {}
        for m in self._markets.values():
            for key in (m.canonical, _squash(m.id)):
                by_name.setdefault(key, m)
        close: list[Market] = []
        for name in get_close_matches(wanted, list(by_name), n=10, cutoff=0.6):
            if by_name[name] not in close:
                close.append(by_name[name])
        shown = ", ".join(f"{m.id} ({m.unified})" if m.id != m.canonical else m.id for m in close[:5])
        return ExchangeError(
            f"{self.venue.title} has no spot market {str(symbol)[:40]!r}.",
            hint=(f"did you mean {shown}? " if shown else "")
            + f"give the symbol in {self.venue.title}'s spelling, as BASE/QUOTE (BTC/USDT) or as BTCUSDT.",
        )

    # ------------------------------------------------------------------ one page
    def page_end(self, interval: str, start: int, end: int | None, limit: int | None = None) -> int | None:
        """The newest open time a ``candles(..., start, end, limit)`` page covers: ``limit`` candles past ``start``
        at most (``end`` if sooner), Kraken's all up to ``end``. A short page says the exchange has nothing more up
        to here, not up to ``end``: the candles after a halt or a listing longer than a page lie beyond it."""
        if self.exchange == "kraken":
            return end  # OHLC has only `since`: an answer holds everything after it
        limit = min(limit or self.page_limit, self.page_limit)
        last = iv.ceil(start, interval)
        if interval == iv.MONTH:
            for _ in range(limit - 1):
                last = iv.next_open(last, interval)
        else:
            last += (limit - 1) * iv.INTERVAL_MS[interval]
        return last if end is None else min(last, end)

    def _until(self, interval: str, start: int, end: int | None, limit: int) -> dict[str, Any]:
        """The page's end bound for ccxt's ``until``: never more than ``limit`` candles past ``start``, so that
        an exchange that answers the *newest* candles of a wider range (OKX, and Bybit may) answers these."""
        last = self.page_end(interval, start, end, limit)
        if last is None:
            return {}  # Kraken's OHLC has only `since`; ccxt filters and cuts the answer
        if self.exchange == "coinbase":
            # Coinbase's `end` is in seconds and its inclusiveness is not documented: one more candle span (what
            # ccxt itself sends) keeps the page whole either way, and ccxt cuts the answer to `limit`.
            return {"until": last + iv.INTERVAL_MS[interval]}
        return {"until": last + 1}  # OKX's `after` is exclusive; Bybit's `end` and Binance's endTime take it too

    def _sent(self, market: Market, what: str) -> int:
        """How many rows the exchange sent, from the answer's JSON (ccxt's list is already filtered and cut)."""
        body = self.client.last_json_response
        rows: Any
        try:
            if self.exchange == "bybit":
                rows = body["result"]["list"]
            elif self.exchange == "okx":
                rows = body["data"]
            elif self.exchange == "kraken":
                rows = body["result"][market.id]
            elif self.exchange == "coinbase":
                rows = body["candles"]
            else:
                rows = body
        except (KeyError, TypeError, IndexError):
            rows = None
        if not isinstance(rows, list):
            raise ExchangeError(
                f"{self.venue.title} answered {what} with {str(body)[:80]!r}, which holds no candle list.",
                hint=f"check that the exchange URL points at {self.venue.title}'s public API.",
            )
        for r in rows:  # ccxt leaves out a row it cannot read a time from: say so, or its range becomes a "gap"
            try:
                parsed = self.client.parse_ohlcv(r, None)
            except Exception:  # noqa: BLE001 (any failure of ccxt's parser on this row means the same)
                parsed = None
            if not _candle_shaped(parsed):
                raise ExchangeError(
                    f"{self.venue.title} answered {what} with a row that is not a candle [time, open, high, low, "
                    f"close, volume]: {str(r)[:80]}.",
                    hint="this answer will not change on retry; report it, or collect this series from another "
                    "exchange.",
                )
        return len(rows)

    # ------------------------------------------------------------------ requests and their errors
    def _seen(self, response: Any, *args: Any, **kwargs: Any) -> Any:
        """requests' response hook: the status, headers and (short) body of every answer ccxt gets."""
        try:
            text = response.text[:500]
        except Exception:  # an undecodable body is still an answer with a status
            text = ""
        self._answer = _Answer(int(response.status_code), response.headers, text)
        return response

    def _call(self, fn: Callable[[], T], what: str) -> T:
        """``fn`` (one ccxt call, one request) under the governor, its failures sorted. A 200 whose body is not
        JSON is retried: ccxt would have read it as an empty answer."""

        def attempt() -> T:
            self._answer = None
            self.client.last_json_response = None
            try:
                result = fn()
            except Exception as exc:
                raise self._sorted(exc, what) from None
            a = self._answer
            if a is not None and self.client.last_json_response is None:
                raise Retryable(f"unreadable answer (HTTP {a.status}, {a.body[:60]!r})")
            return result

        return self.governor.call(attempt, weight=1, what=what)

    def _sorted(self, exc: Exception, what: str) -> Exception:
        import ccxt

        a = self._answer
        title = self.venue.title
        if not isinstance(exc, ccxt.BaseError):
            if a is None:
                raise exc  # no answer to blame: a bug, let it surface with its traceback
            if a.status == 200 and self.client.last_json_response is None:
                return Retryable(f"unreadable answer ({a.body[:60]!r})")
            return ExchangeError(  # ccxt choked on an answer it could not read as the exchange's format
                f"{title} answered {what} with something ccxt could not read "
                f"(HTTP {a.status}, {a.body[:80]!r}: {type(exc).__name__}).",
                hint=f"check that the exchange URL points at {title}'s public API.",
            )
        status = a.status if a is not None else None
        if status in (429, 418) or (status == 403 and "access too frequent" in a.body if a else False):
            assert status is not None
            return Refused(status, self._retry_after(a))
        if status is not None and status >= 500:
            return Retryable(f"HTTP {status}", server=True)
        if status is None or status == 200:
            if isinstance(exc, (ccxt.RateLimitExceeded, ccxt.DDoSProtection)) and status == 200:
                return Refused(429, self._retry_after(a))  # e.g. Kraken's 200 "EGeneral:Too many requests"
            if isinstance(exc, ccxt.RequestTimeout):
                return Retryable("timed out")
            if isinstance(exc, (ccxt.NetworkError, ccxt.BadResponse)):
                # no answer at all (refused, reset), or the exchange's own "busy, try again" code in a 200
                return Retryable(f"{'connection failed' if status is None else 'exchange busy'} ({_first(exc)})")
            if status == 200 and self.client.last_json_response is None:
                return Retryable(f"unreadable answer ({a.body[:60]!r})" if a else "unreadable answer")
            if status is None and isinstance(exc.__cause__, requests.RequestException):
                # ccxt calls a TLS failure or a broken connection an ExchangeError; rest.py retries them
                return Retryable(f"connection failed ({type(exc.__cause__).__name__})")
        if status == 408:
            return Retryable("timed out (408)")
        if status in (403, 451):
            return ExchangeError(
                f"{title} refused {what} with HTTP {status}: {_first(a.body if a and a.body else exc)}",
                hint=f"{title} may not serve this country or network (Binance answers 451 so); "
                "check the exchange URL, or collect from another exchange.",
            )
        if isinstance(exc, ccxt.BadSymbol):
            return ExchangeError(
                f"{title} does not know the market in {what}: {_first(exc)}",
                hint=f"check the symbol against {title}'s spot market list; it may have been delisted.",
            )
        return ExchangeError(
            f"{title} refused {what}" + (f" with HTTP {status}" if status else "") + f": {_first(exc)}",
            hint="check the exchange URL and the options; this answer will not change on retry.",
        )

    def _retry_after(self, a: _Answer | None) -> float:
        try:
            value = float(a.headers.get("Retry-After")) if a is not None else math.nan
        except (TypeError, ValueError, AttributeError):
            value = math.nan
        return value if math.isfinite(value) and value >= 0 else self.venue.rate.retry_after_s


# ---------------------------------------------------------------------------------------------------- helpers


def _squash(s: str) -> str:
    return s.translate(_SEPARATORS).upper()


def _first(exc: object, limit: int = 200) -> str:
    text = " ".join(str(exc).split())
    return text[:limit] + ("..." if len(text) > limit else "")


def _window_args(start: object, end: object, limit: object, page_limit: int) -> tuple[int, int | None, int]:
    def ms(name: str, value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
            raise ConfigError(f"{name} {value!r} is not a time in epoch milliseconds.", hint="use an int >= 0.")
        return int(value)

    lim = page_limit if limit is None else limit
    if isinstance(lim, bool) or not isinstance(lim, int | np.integer) or lim < 1:
        raise ConfigError(f"Page size {limit!r} is not a positive number of candles.", hint="use e.g. 1000.")
    return ms("Start", start), None if end is None else ms("End", end), min(int(lim), page_limit)


def _candle_shaped(r: Any) -> bool:
    return isinstance(r, list | tuple) and len(r) >= 6 and isinstance(r[0], int | float) and not isinstance(r[0], bool)


def _frame(rows: Iterable[Any], interval: str, start: int, end: int | None, v: Venue, what: str) -> pl.DataFrame:
    """ccxt's ``[ms, open, high, low, close, volume]`` rows -> a candle frame of the rows in [start, end]."""
    rows = list(rows)
    shapeless = next((r for r in rows if not _candle_shaped(r)), None)
    if shapeless is not None:  # never dropped quietly: a page short of rows could be recorded as a known gap
        raise ExchangeError(
            f"{v.title} answered {what} with a row that is not a candle [time, open, high, low, close, volume]: "
            f"{str(shapeless)[:80]}.",
            hint="this answer will not change on retry; report it, or collect this series from another exchange.",
        )
    kept = [r for r in rows if start <= r[0] and (end is None or r[0] <= end)]
    if not kept:
        return empty_frame()
    bad = next((r for r in kept if any(x is None or not math.isfinite(float(x)) for x in r[:6])), None)
    if bad is not None:
        raise ExchangeError(
            f"{v.title} answered {what} with a candle that has no number for a price or the volume: {list(bad)[:6]}.",
            hint="this answer will not change on retry; report it, or collect this series from another exchange.",
        )
    arr = np.array([r[:6] for r in kept], dtype=np.float64)
    times = arr[:, 0].astype(np.int64)
    off = ~iv.aligned(times, interval)
    if off.any():
        t = int(times[np.flatnonzero(off)[0]])
        raise ExchangeError(
            f"{v.title} answered {what} with a candle opening at {fmt_ts(t)} ({t}), off xylen's {interval} grid.",
            hint=f"{v.title}'s {interval} candles do not open where xylen's do; collect another interval.",
        )
    df = pl.DataFrame(
        {
            "open_time": times,
            "open": arr[:, 1],
            "high": arr[:, 2],
            "low": arr[:, 3],
            "close": arr[:, 4],
            "volume": arr[:, 5],
            "close_time": iv.next_opens(times, interval) - 1,
        }
    )
    df = df.with_columns(
        [
            pl.lit(None, dtype=SCHEMA[c]).alias(c)
            for c in ("quote_volume", "trades", "taker_buy_base", "taker_buy_quote")
        ]
    )
    df = df.select(list(SCHEMA)).cast(SCHEMA)  # type: ignore[arg-type]
    return df.unique(subset="open_time", keep="last").sort("open_time")
