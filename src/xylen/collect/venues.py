"""The exchanges xylen reaches through ccxt, as facts: one :class:`Venue` per exchange, and the ccxt instance for it.

Every number here comes from the exchange's own documentation (the ``docs`` URL of each record) and was checked
against ccxt 4.5.90's code for that exchange (``fetch_ohlcv``, ``parse_ohlcv``, ``fetch_markets``, ``timeframes``):

* ``page_limit``: the most candles one ``fetch_ohlcv`` call returns. It is the exchange's documented maximum,
  except on Coinbase, which documents 350 but whose ccxt ``fetch_ohlcv`` asks for a 300-candle span and keeps
  at most 300 rows of the answer.
* ``rate``: the documented public limit, in the exchange's words and as numbers, with what the exchange answers
  when it is exceeded and how long to wait when that answer carries no ``Retry-After``.
* ``intervals``: xylen interval (Binance's spelling) -> the exchange's own timeframe, only those it has. They are
  ccxt's ``timeframes`` for the exchange (OKX's 6h and longer are its UTC candles: ccxt adds ``utc``).
* ``reach``: how many of the most recent candles the OHLCV endpoint serves at all (Kraken: 720, whatever
  ``since`` says); ``None`` where the whole history is served.

:func:`make_exchange` builds the ccxt instance: ccxt's own rate limiter on, every API URL pointed at ``base_url``
when one is given (a loopback fake in tests), market loading restricted to SPOT markets in one request, and no
network call in the constructor (ccxt makes none; markets load on first use).
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from xylen.core.errors import ConfigError

__all__ = ["VENUES", "Market", "Rate", "Venue", "make_exchange", "venue"]


@dataclass(frozen=True)
class Rate:
    """An exchange's documented public rate limit: at most ``requests`` in any ``per_s`` seconds."""

    requests: int
    per_s: float
    words: str  # as the exchange documents it
    on_exceed: str  # what the exchange answers, and what it then does
    retry_after_s: float  # the wait when that answer carries no Retry-After header (documented, see words)
    docs: str

    @property
    def per_second(self) -> float:
        return self.requests / self.per_s


@dataclass(frozen=True)
class Venue:
    """What xylen knows about one exchange it collects from through ccxt."""

    name: str  # xylen's name: --exchange, the store's exchange= partition
    title: str  # how messages name it
    ccxt_id: str
    page_limit: int
    rate: Rate
    intervals: Mapping[str, str]
    reach: int | None
    docs: str  # the OHLCV endpoint's documentation
    markets_docs: str  # the market-list endpoint's documentation
    notes: str = ""

    def has(self, interval: str) -> bool:
        return interval in self.intervals

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "ccxt_id": self.ccxt_id,
            "page_limit": self.page_limit,
            "rate": {
                "requests": self.rate.requests,
                "per_s": self.rate.per_s,
                "words": self.rate.words,
                "on_exceed": self.rate.on_exceed,
                "retry_after_s": self.rate.retry_after_s,
                "docs": self.rate.docs,
            },
            "intervals": dict(self.intervals),
            "reach": self.reach,
            "docs": self.docs,
            "markets_docs": self.markets_docs,
            "notes": self.notes,
        }


@dataclass(frozen=True)
class Market:
    """One spot market: ``canonical`` is how xylen stores and names it (BTCUSDT; Kraken's XBT/USD is BTCUSD, as
    ccxt's unified symbol says), ``unified`` ccxt's spelling (BTC/USDT), ``id`` the exchange's own (BTC-USDT on
    OKX, XBTUSDT on Kraken, BTC-USD on Coinbase)."""

    canonical: str
    unified: str
    id: str
    extra: dict[str, str] = field(default_factory=dict, compare=False, repr=False)  # e.g. Kraken's altname

    def to_dict(self) -> dict[str, str]:
        return {"canonical": self.canonical, "unified": self.unified, "id": self.id}


def _frozen(d: dict[str, str]) -> Mapping[str, str]:
    return types.MappingProxyType(dict(d))


_BINANCE_INTERVALS = ("1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d", "3d", "1w", "1M")

VENUES: dict[str, Venue] = {
    v.name: v
    for v in (
        Venue(
            name="bybit",
            title="Bybit",
            ccxt_id="bybit",
            page_limit=1000,  # "limit: Limit for data size per page. [1, 1000]. Default: 200"
            rate=Rate(
                requests=600,
                per_s=5.0,
                words="600 requests within a 5-second window per IP (all of api.bybit.com)",
                on_exceed='HTTP 403 "access too frequent": the IP is banned; "wait for at least 10 minutes"',
                retry_after_s=600.0,
                docs="https://bybit-exchange.github.io/docs/v5/rate-limit",
            ),
            intervals=_frozen(
                {
                    "1m": "1",
                    "3m": "3",
                    "5m": "5",
                    "15m": "15",
                    "30m": "30",
                    "1h": "60",
                    "2h": "120",
                    "4h": "240",
                    "6h": "360",
                    "12h": "720",
                    "1d": "D",
                    "1w": "W",
                    "1M": "M",
                }
            ),
            reach=None,
            docs="https://bybit-exchange.github.io/docs/v5/market/kline",
            markets_docs="https://bybit-exchange.github.io/docs/v5/market/instrument",
            notes="rows newest first, all fields strings; with `start` the page holds the oldest candles from the "
            "one containing `start`; the still-open candle is the newest row",
        ),
        Venue(
            name="okx",
            title="OKX",
            ccxt_id="okx",
            page_limit=300,  # history-candles and candles: "The maximum is 300. The default is 100."
            rate=Rate(
                requests=20,
                per_s=2.0,
                words="GET /api/v5/market/history-candles: 20 requests per 2 seconds per IP "
                "(GET /api/v5/market/candles, the latest 1,440 candles: 40 per 2 seconds)",
                on_exceed='HTTP 429 {"code":"50011","msg":"Too Many Requests"} until the 2-second window passes',
                retry_after_s=2.0,
                docs="https://www.okx.com/docs-v5/en/#order-book-trading-market-data-get-candlesticks-history",
            ),
            intervals=_frozen(
                {
                    "1m": "1m",
                    "3m": "3m",
                    "5m": "5m",
                    "15m": "15m",
                    "30m": "30m",
                    "1h": "1H",
                    "2h": "2H",
                    "4h": "4H",
                    "6h": "6Hutc",
                    "12h": "12Hutc",
                    "1d": "1Dutc",
                    "1w": "1Wutc",
                    "1M": "1Mutc",
                }
            ),
            reach=None,
            docs="https://www.okx.com/docs-v5/en/#order-book-trading-market-data-get-candlesticks-history",
            markets_docs="https://www.okx.com/docs-v5/en/#public-data-rest-api-get-instruments",
            notes="rows newest first; `after`/`before` are exclusive bounds and a page is the newest `limit` between "
            "them; a larger limit is answered with 300; ccxt asks history-candles for candles older than 1,439 "
            "intervals (by the local clock) and candles for newer ones",
        ),
        Venue(
            name="kraken",
            title="Kraken",
            ccxt_id="kraken",
            page_limit=720,  # OHLC has no limit parameter: an answer is up to 720 entries
            rate=Rate(
                requests=1,
                per_s=1.0,
                words="public endpoints: calling them at 1 per second (or less) stays within the limits, counted "
                "per IP, and per IP and pair for OHLC",
                on_exceed='HTTP 200 {"error":["EGeneral:Too many requests"]}: calls "restricted for a few seconds '
                '(or possibly longer if calls continue to be made while rate limited)"',
                retry_after_s=5.0,
                docs="https://support.kraken.com/articles/206548367-what-are-the-api-rate-limits-",
            ),
            intervals=_frozen(
                {"1m": "1", "5m": "5", "15m": "15", "30m": "30", "1h": "60", "4h": "240", "1d": "1440", "1w": "10080"}
            ),
            reach=720,  # "Returns up to 720 of the most recent entries (older data cannot be retrieved...)"
            docs="https://docs.kraken.com/api-reference/market-data/get-ohlc-data",
            markets_docs="https://docs.kraken.com/api-reference/market-data/get-tradable-asset-pairs",
            notes="times in seconds, rows oldest first; the last entry is the current, not-yet-committed candle "
            "and is always present; 21600 (15 days) has no xylen interval",
        ),
        Venue(
            name="coinbase",
            title="Coinbase",
            ccxt_id="coinbase",
            page_limit=300,  # documented 350 per request; ccxt's fetch_ohlcv spans 300 candles and keeps <= 300
            rate=Rate(
                requests=10,
                per_s=1.0,
                words="Advanced Trade public endpoints: 10 requests per second per IP",
                on_exceed="HTTP 429 Too Many Requests",
                retry_after_s=1.0,
                docs="https://docs.cdp.coinbase.com/advanced-trade/docs/rest-api-rate-limits",
            ),
            intervals=_frozen(
                {
                    "1m": "ONE_MINUTE",
                    "5m": "FIVE_MINUTE",
                    "15m": "FIFTEEN_MINUTE",
                    "30m": "THIRTY_MINUTE",
                    "1h": "ONE_HOUR",
                    "2h": "TWO_HOUR",
                    "6h": "SIX_HOUR",
                    "1d": "ONE_DAY",
                }
            ),
            reach=None,
            docs="https://docs.cdp.coinbase.com/api-reference/advanced-trade-api/rest-api/public/get-public-product-candles",
            markets_docs="https://docs.cdp.coinbase.com/api-reference/advanced-trade-api/rest-api/public/list-public-products",
            notes="a fixed set of granularities; times in seconds, rows newest first, all fields strings; a "
            "request spanning more than 350 candles is refused (400 INVALID_ARGUMENT)",
        ),
        Venue(
            name="binanceus",
            title="Binance.US",
            ccxt_id="binanceus",
            page_limit=1000,  # "limit: Default 500; max 1000."
            rate=Rate(
                requests=1200,
                per_s=60.0,
                words="1,200 request weight per minute per IP; klines weigh 1, exchangeInfo 10",
                on_exceed="HTTP 429 with Retry-After; calling on earns HTTP 418, an IP ban from 2 minutes to 3 days",
                retry_after_s=60.0,
                docs="https://github.com/binance-us/binance-us-api-docs/blob/master/rest-api.md#limits",
            ),
            intervals=_frozen({i: i for i in _BINANCE_INTERVALS}),
            reach=None,
            docs="https://github.com/binance-us/binance-us-api-docs/blob/master/rest-api.md#klinecandlestick-data",
            markets_docs="https://github.com/binance-us/binance-us-api-docs/blob/master/rest-api.md#exchange-information",
            notes="Binance's 12-field rows and semantics (startTime: the oldest candles from there); no 1s candles",
        ),
    )
}


def venue(name: str) -> Venue:
    """The venue called ``name``, or a ConfigError quoting it and listing those xylen reaches through ccxt."""
    try:
        return VENUES[str(name).strip().lower()]
    except KeyError:
        raise ConfigError(
            f"Exchange {str(name)[:40]!r} is not one xylen collects from through ccxt.",
            hint=f"use one of: {', '.join(VENUES)} (binance has its own client).",
        ) from None


# ---------------------------------------------------------------------------------------------------- ccxt instance


BYBIT_COST = 5  # ccxt's cost of Bybit's v5/market/kline and v5/market/instruments-info


def make_exchange(v: Venue, base_url: str | None = None, timeout_s: float = 10.0) -> Any:
    """The ccxt instance for ``v``: ccxt's rate limiter on, ``timeout_s`` per request, every API URL pointed at
    ``base_url`` when given, markets limited to SPOT in one request, and nothing fetched yet."""
    import ccxt

    if not (isinstance(timeout_s, int | float) and 0 < timeout_s <= 600):
        raise ConfigError(f"Timeout {timeout_s!r} is not a number of seconds.", hint="use e.g. 10 (0 < t <= 600).")
    ex = getattr(ccxt, v.ccxt_id)({"enableRateLimit": True, "timeout": int(timeout_s * 1000)})
    # The answer's parsed JSON is kept so a source can count the rows the exchange sent and tell an unreadable
    # body from an empty page (ccxt turns a truncated body into an empty list without a word).
    ex.enableLastJsonResponse = True
    # load_markets() fetches currencies first where an exchange has them: that needs API keys (Bybit, OKX,
    # Binance.US answer nothing without them) or costs one to three more requests (Kraken's Assets, Coinbase's
    # v2 currencies and exchange rates). The spot market list names every asset xylen needs.
    ex.has["fetchCurrencies"] = False
    if v.name in ("bybit", "okx"):
        # default: spot, linear, inverse and option markets (Bybit 6+ requests, OKX 5+)
        ex.options.setdefault("fetchMarkets", {})["types"] = ["spot"]
    if v.name == "bybit":
        # ccxt 4.5.90 spaces Bybit's requests by rateLimit 20 ms x cost 5 (its kline and instruments costs): 10 a
        # second, where Bybit documents 600 per 5 s per IP. Spaced by the documented limit plus the 10% tolerance
        # ccxt gives OKX's (9.2 ms), a backfill never waits longer than Bybit requires (bench/bench_exchanges.py).
        ex.rateLimit = 1000 * v.rate.per_s / v.rate.requests * 1.1 / BYBIT_COST
    elif v.name == "coinbase":
        _coinbase_spot_markets(ex)
    # binanceus: ccxt already loads spot only (fetchMarkets types ['spot'], no margin or currency calls);
    # kraken: AssetPairs lists spot pairs only.
    if base_url is not None:
        _point_at(ex, _checked_url(base_url))
    return ex


def _checked_url(base_url: str) -> str:
    parts = urlsplit(str(base_url).strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ConfigError(
            f"Exchange URL {str(base_url)[:80]!r} is not an http(s) base URL.",
            hint="use e.g. https://api.kraken.com or http://127.0.0.1:8080 (scheme and host, no query).",
        )
    return str(base_url).strip().rstrip("/")


def _point_at(ex: Any, base: str) -> None:
    """Every URL in ``ex.urls['api']`` with its scheme and host replaced by ``base`` (its path kept: Binance.US's
    public API lives under /api/v3)."""

    def repoint(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: repoint(u) for k, u in value.items()}
        if isinstance(value, str):
            return base + urlsplit(ex.implode_hostname(value)).path.rstrip("/")
        return value

    ex.urls["api"] = repoint(ex.urls["api"])


def _coinbase_spot_markets(ex: Any) -> None:
    """ccxt 4.5.90's coinbase.fetch_markets always makes a second request for FUTURE products (and, with keys, a
    third for fees), and has no option to skip it: this asks for SPOT products only, in one request, and parses
    them with ccxt's own ``parse_spot_market``."""

    def fetch_markets(params: dict[str, Any] | None = None) -> list[Any]:
        response = ex.v3PublicGetBrokerageMarketProducts(ex.extend({"product_type": "SPOT"}, params or {}))
        products = ex.safe_list(response, "products", [])
        parsed = (ex.parse_spot_market(p, {}) for p in products if isinstance(p, dict))
        return [m for m in parsed if m is not None]

    ex.fetch_markets = fetch_markets
