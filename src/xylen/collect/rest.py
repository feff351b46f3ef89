"""Binance REST through python-binance, behind the governor: one page of klines at a time.

``Client(ping=False)`` keeps the constructor off the network; ``API_URL`` points it at
``settings.binance_base_url`` (the keyless market-data host by default, the loopback fake in tests).
Errors are sorted here into what the governor retries (429/418/5xx/timeouts/bad bodies) and what is a
final answer turned into a readable :class:`ExchangeError` (unknown symbol -1121, bad parameters).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import polars as pl

from xylen.collect.governor import Governor, Refused, Retryable, retry_after_of
from xylen.core.candles import COLUMNS, SCHEMA, empty_frame
from xylen.core.errors import ExchangeError

KLINES_WEIGHT = 2
EXCHANGE_INFO_WEIGHT = 20
PAGE_LIMIT = 1000


def make_client(base_url: str, timeout_s: float = 10.0) -> Any:
    with warnings.catch_warnings():
        # python-binance 1.0.x imports names that websockets >= 14 deprecates
        warnings.simplefilter("ignore", DeprecationWarning)
        from binance.client import Client

    client = Client(ping=False, requests_params={"timeout": timeout_s})
    client.API_URL = base_url.rstrip("/") + "/api"
    return client


class Rest:
    """The few market-data calls xylen needs, each governed and classified. The backfill calls ``candles``,
    ``resolve`` and ``check_intervals``, as it does on :class:`xylen.collect.ccxt_source.CcxtSource`."""

    exchange = "binance"
    page_limit = PAGE_LIMIT
    reach: int | None = None  # Binance serves every candle since a market opened

    def __init__(self, client: Any, governor: Governor) -> None:
        self.client = client
        self.governor = governor

    def _run(self, fn: Any, what: str, weight: int) -> Any:
        import requests
        from binance.exceptions import BinanceAPIException, BinanceRequestException

        def attempt() -> Any:
            try:
                result = fn()
            except BinanceAPIException as exc:
                headers = getattr(exc.response, "headers", {}) or {}
                self.governor.observe(headers)
                if exc.status_code in (418, 429):
                    raise Refused(exc.status_code, retry_after_of(headers, exc.status_code)) from None
                if exc.status_code >= 500:
                    raise Retryable(f"HTTP {exc.status_code} {exc.message}", server=True) from None
                raise _final(exc, what) from None
            except BinanceRequestException as exc:  # 200 with an unreadable body (truncated JSON)
                self.governor.observe(getattr(self.client.response, "headers", {}))
                raise Retryable(f"unreadable answer ({str(exc.message)[:60]}...)") from None
            except requests.exceptions.Timeout:
                raise Retryable("timed out") from None
            except requests.exceptions.RequestException as exc:
                raise Retryable(f"connection failed ({type(exc).__name__})") from None
            self.governor.observe(getattr(self.client.response, "headers", {}))
            return result

        return self.governor.call(attempt, weight=KLINES_WEIGHT if weight is None else weight, what=what)

    def klines(
        self, symbol: str, interval: str, start: int, end: int | None = None, limit: int = PAGE_LIMIT
    ) -> list[list[Any]]:
        """One page: up to ``limit`` candles with open_time in [start, end] (Binance's endTime is inclusive)."""
        params: dict[str, Any] = {"symbol": symbol, "interval": interval, "startTime": start, "limit": limit}
        if end is not None:
            params["endTime"] = end
        what = f"{symbol} {interval} klines"
        rows = self._run(lambda: self.client.get_klines(**params), what, KLINES_WEIGHT)
        if not isinstance(rows, list):
            raise ExchangeError(
                f"Binance answered {what} with {str(rows)[:80]!r} instead of a list.",
                hint="check that XYLEN_BINANCE_BASE_URL points at a Binance spot API.",
            )
        return rows

    def candles(
        self, symbol: str, interval: str, start: int, end: int | None = None, limit: int = PAGE_LIMIT
    ) -> tuple[pl.DataFrame, int]:
        """One page as a candle frame (sorted, one row per open_time), and how many rows Binance sent."""
        rows = self.klines(symbol, interval, start, end, limit)
        return rows_to_frame(rows), len(rows)

    def page_end(self, interval: str, start: int, end: int | None, limit: int | None = None) -> int | None:
        """The newest open time a ``candles`` page covers: ``end`` (Binance answers the oldest ``limit`` candles
        of [startTime, endTime], so a short page means there are no more up to ``end``)."""
        return end

    def check_intervals(self, intervals: list[str]) -> None:
        """Binance has every interval xylen knows (xylen's interval names are Binance's)."""

    def resolve(self, symbols: list[str]) -> list[Any]:
        """Each symbol (BTCUSDT, btc/usdt, BTC-USDT) as a :class:`xylen.collect.venues.Market`, checked by one
        exchangeInfo call; an unknown one is an ExchangeError with close matches from Binance's market list."""
        from xylen.collect.venues import Market
        from xylen.core.markets import canonical_symbol

        names = list(dict.fromkeys(canonical_symbol(s) for s in symbols))
        try:
            got = self.check_symbols(names)
        except ExchangeError as exc:
            if "-1121" not in exc.message:
                raise
            raise self._unknown(exc, names) from None
        listed = got.get("symbols", []) if isinstance(got, dict) else []
        info = {i.get("symbol"): i for i in listed if isinstance(i, dict)}
        out = []
        for n in names:
            i = info.get(n, {})
            base, quote = i.get("baseAsset"), i.get("quoteAsset")
            out.append(Market(n, f"{base}/{quote}" if base and quote else n, n))
        return out

    def _unknown(self, exc: ExchangeError, names: list[str]) -> ExchangeError:
        """The -1121 answer, with close matches from the whole market list (one more call, 20 weight)."""
        from difflib import get_close_matches

        bad = names[0]
        try:
            everything = self._run(lambda: self.client._get("exchangeInfo"), "the market list", EXCHANGE_INFO_WEIGHT)
            listed = [i["symbol"] for i in everything.get("symbols", []) if isinstance(i, dict) and "symbol" in i]
        except (ExchangeError, AttributeError, TypeError, KeyError):
            return exc  # the list is a courtesy: the refusal stands without it
        unknown = [n for n in names if n not in set(listed)] or [bad]
        close = get_close_matches(unknown[0], listed, n=5, cutoff=0.6)
        return ExchangeError(
            f"Binance does not list the symbol {unknown[0]!r} (code -1121).",
            hint=(f"did you mean {', '.join(close)}? " if close else "")
            + "use Binance's spelling, e.g. BTCUSDT, or ccxt's BTC/USDT.",
        )

    def check_symbols(self, symbols: list[str]) -> Any:
        """One exchangeInfo call; an unknown symbol becomes the exchange's -1121 as a clear error."""
        import orjson

        def info(names: list[str]) -> Any:
            return self._run(
                lambda: self.client._get("exchangeInfo", data={"symbols": orjson.dumps(names).decode()}),
                f"symbol {','.join(names)}",
                EXCHANGE_INFO_WEIGHT,
            )

        try:
            return info(symbols)
        except ExchangeError as exc:
            if "-1121" not in exc.message or len(symbols) == 1:
                raise
            for s in symbols:  # which one? (only on this failure path: 20 weight each)
                info([s])
            raise

    def close(self) -> None:
        self.client.close_connection()


def _final(exc: Any, what: str) -> ExchangeError:
    if exc.code == -1121:
        return ExchangeError(
            f"Binance does not know the {what!r}: {exc.message} (code -1121).",
            hint="use the exchange's spelling, e.g. BTCUSDT (no slash, no dash); "
            "see https://api.binance.com/api/v3/exchangeInfo for the list.",
        )
    if exc.code == -1120:
        return ExchangeError(
            f"Binance rejected the interval in {what!r}: {exc.message} (code -1120).",
            hint="use one of 1s 1m 3m 5m 15m 30m 1h 2h 4h 6h 8h 12h 1d 3d 1w 1M.",
        )
    return ExchangeError(
        f"Binance refused {what}: HTTP {exc.status_code} code {exc.code}: {exc.message}",
        hint="check XYLEN_BINANCE_BASE_URL and the options; this answer will not change on retry.",
    )


def rows_to_frame(rows: list[list[Any]]) -> pl.DataFrame:
    """Binance 12-field rows -> a candle frame (sorted, deduplicated on open_time)."""
    if not rows:
        return empty_frame()
    arr = np.array([r[:11] for r in rows], dtype=np.float64)
    df = pl.DataFrame({c: arr[:, j] for j, c in enumerate(COLUMNS)}).cast(SCHEMA)  # type: ignore[arg-type]
    return df.unique(subset="open_time", keep="last").sort("open_time")
