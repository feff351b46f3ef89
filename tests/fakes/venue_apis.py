"""The public market-data APIs of Bybit, OKX, Kraken, Coinbase and Binance.US, as a fake answers them: paths,
parameters, envelopes, field order, strings vs numbers, row order, time units, page sizes and error answers.

Written from each exchange's API documentation (the URL at each class) and from what ccxt 4.5.90's parser for it
reads, independently of ``xylen.collect.venues`` (so a wrong fact there is not mirrored here). Where the docs are
silent, the choice is said in the class docstring.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from tests.fakes.faults import BAN_MSG, LIMIT_MSG
from tests.fakes.klines import Row
from tests.fakes.venue_api import Answer, ApiError, RateRule, VenueApi, _int
from tests.fakes.venue_book import Book, exchange_id, kraken_altname, kraken_asset, plain, split


# ---------------------------------------------------------------------------------------------------- Bybit
class BybitApi(VenueApi):
    """Bybit v5 (https://bybit-exchange.github.io/docs/v5/market/kline, .../v5/market/instrument,
    .../v5/rate-limit). Kline rows ``[startTime, open, high, low, close, volume, turnover]``, all strings, sorted
    in reverse by startTime; ``limit`` [1, 1000], default 200; with ``start`` the page holds the oldest candles
    from the one containing ``start`` (ccxt #26736: "bybit returns the candle that contains start"). The IP limit:
    600 requests in any 5 s; exceeding it answers HTTP 403 "access too frequent" and bans the IP ("wait for at least
    10 minutes"). Not documented, chosen: a ``limit`` above 1000 is clamped; with ``start`` and ``end`` spanning more
    than ``limit`` candles the oldest are answered."""

    name = "bybit"
    routes = ("/v5/market/instruments-info", "/v5/market/kline")
    ohlcv_route = "/v5/market/kline"
    policy = "ban"
    ban_s = 600.0
    INTERVALS = {
        "1": "1m", "3": "3m", "5": "5m", "15": "15m", "30": "30m", "60": "1h", "120": "2h", "240": "4h",
        "360": "6h", "720": "12h", "D": "1d", "W": "1w", "M": "1M",
    }  # fmt: skip

    def _error(self, msg: str, now: int) -> ApiError:
        return ApiError(Answer(200, {"retCode": 10001, "retMsg": msg, "result": {}, "retExtInfo": {}, "time": now}))

    def _ok(self, result: Any, now: int) -> dict[str, Any]:
        return {"retCode": 0, "retMsg": "OK", "result": result, "retExtInfo": {}, "time": now}

    def symbol(self, route: str, path_params: dict[str, str], params: dict[str, str]) -> str | None:
        return self.canonical(params.get("symbol"))

    def answer(self, route: str, path_params: dict[str, str], params: dict[str, str], now: int) -> Answer:
        category = params.get("category", "linear")  # "When category is not passed, use linear by default"
        if route == "/v5/market/instruments-info":
            listed = [self._instrument(s, i) for s, i in self.ids().items()] if category == "spot" else []
            return Answer(body=self._ok({"category": category, "list": listed}, now))
        sym = self.canonical(params.get("symbol")) if category == "spot" else None
        if sym is None:
            raise self._error("Not supported symbols", now)
        interval = self.INTERVALS.get(params.get("interval", ""))
        if interval is None:
            raise self._error("Invalid period!", now)
        bad = lambda: self._error("params error", now)  # noqa: E731
        start, end, limit = (_int(params.get(k), bad) for k in ("start", "end", "limit"))
        limit = 200 if limit is None else limit
        if limit < 1:
            raise bad()
        limit = min(limit, 1000)
        times, rows = self.book.visible(sym, interval, now)
        if end is not None:
            keep = [i for i, t in enumerate(times) if t <= end]
            times, rows = [times[i] for i in keep], [rows[i] for i in keep]
        if start is not None:
            first = next((i for i, r in enumerate(rows) if int(r[6]) >= start), len(rows))  # contains or after
            page = rows[first : first + limit]
        else:
            page = rows[-limit:]
        out = [[str(r[0]), plain(r[1]), plain(r[2]), plain(r[3]), plain(r[4]), plain(r[5]), plain(r[7])] for r in page]
        out.reverse()

        def wrap(items: list[Any]) -> Any:
            return self._ok({"symbol": params["symbol"], "category": "spot", "list": items}, now)

        return Answer(body=wrap(out), rows=out, wrap=wrap)

    def _instrument(self, symbol: str, market_id: str) -> dict[str, Any]:
        base, quote = split(symbol)
        return {
            "symbol": market_id, "baseCoin": base, "quoteCoin": quote, "innovation": "0", "status": "Trading",
            "marginTrading": "utaOnly", "stTag": "0",
            "lotSizeFilter": {"basePrecision": "0.000001", "quotePrecision": "0.00000001", "minOrderQty": "0.000048",
                              "maxOrderQty": "71.73956243", "minOrderAmt": "1", "maxOrderAmt": "2000000"},
            "priceFilter": {"tickSize": "0.01"},
            "riskParameters": {"priceLimitRatioX": "0.01", "priceLimitRatioY": "0.02"},
        }  # fmt: skip

    def rate_rules(self) -> list[RateRule]:
        return [RateRule("ip", ("*",), 600, 5.0)]

    def refusal(self, kind: str, retry_after: int, now: int) -> Answer:
        return Answer(403, "access too frequent", content_type="text/plain")

    def fault(self, status: int, now: int) -> Answer:
        if status == 429:
            body = {"retCode": 10006, "retMsg": "Too many visits!", "result": {}, "retExtInfo": {}, "time": now}
            return Answer(429, body)
        if status == 403:
            return Answer(403, "access too frequent", content_type="text/plain")
        return super().fault(status, now)


# ---------------------------------------------------------------------------------------------------- OKX
class OkxApi(VenueApi):
    """OKX v5 (https://www.okx.com/docs-v5/en/#order-book-trading-market-data-get-candlesticks and
    -get-candlesticks-history, #public-data-rest-api-get-instruments). Rows ``[ts, o, h, l, c, vol, volCcy,
    volCcyQuote, confirm]``, strings, newest first, ``confirm`` "0" for the still-open candle; ``after`` ("records
    earlier than the requested ts") and ``before`` ("newer than") are exclusive and a page is the newest ``limit``
    between them; ``limit`` default 100, "The maximum is 300", a larger one is answered with 300 (measured by
    kanso against us.okx.com); ``candles`` serves "the latest 1,440 data entries", ``history-candles`` all.
    Limits per IP: history-candles and instruments 20 requests per 2 s, candles 40; over them HTTP 429
    ``{"msg":"Too Many Requests","code":"50011"}``. Candles opening on UTC+8 (6H, 1D... without ``utc``) are not
    recorded here: those bars answer no rows."""

    name = "okx"
    routes = ("/api/v5/public/instruments", "/api/v5/market/candles", "/api/v5/market/history-candles")
    ohlcv_route = "/api/v5/market"  # both candle endpoints
    BARS = {
        "1m": "1m", "3m": "3m", "5m": "5m", "15m": "15m", "30m": "30m", "1H": "1h", "2H": "2h", "4H": "4h",
        "6Hutc": "6h", "12Hutc": "12h", "1Dutc": "1d", "1Wutc": "1w", "1Mutc": "1M",
    }  # fmt: skip
    OTHER_BARS = ("1s", "6H", "12H", "1D", "2D", "3D", "1W", "1M", "3M", "2Dutc", "3Dutc", "3Mutc")

    def _error(self, code: str, msg: str, status: int = 200) -> ApiError:
        return ApiError(Answer(status, {"code": code, "msg": msg, "data": []}))

    def symbol(self, route: str, path_params: dict[str, str], params: dict[str, str]) -> str | None:
        return self.canonical(params.get("instId"))

    def answer(self, route: str, path_params: dict[str, str], params: dict[str, str], now: int) -> Answer:
        if route == "/api/v5/public/instruments":
            kind = params.get("instType")
            if not kind:
                raise self._error("50014", "Parameter instType can not be empty", 400)
            if kind not in ("SPOT", "MARGIN", "SWAP", "FUTURES", "OPTION"):
                raise self._error("51000", "Parameter instType error")
            data = [self._instrument(s, i) for s, i in self.ids().items()] if kind == "SPOT" else []
            return Answer(body={"code": "0", "msg": "", "data": data})
        if not params.get("instId"):
            raise self._error("50014", "Parameter instId can not be empty", 400)
        sym = self.canonical(params["instId"])
        if sym is None:
            raise self._error("51001", "Instrument ID does not exist")
        bar = params.get("bar", "1m")
        if bar not in self.BARS and bar not in self.OTHER_BARS:
            raise self._error("51000", "Parameter bar error")
        after, before, limit = (
            _int(params.get(k), lambda k=k: self._error("51000", f"Parameter {k} error"))  # type: ignore[misc]
            for k in ("after", "before", "limit")
        )
        limit = 100 if limit is None else limit
        if limit < 1:
            raise self._error("51000", "Parameter limit error")
        limit = min(limit, 300)
        times, rows = self.book.visible(sym, self.BARS[bar], now) if bar in self.BARS else ([], [])
        if route == "/api/v5/market/candles":
            rows = rows[-1440:]
        page = [r for r in rows if (after is None or r[0] < after) and (before is None or r[0] > before)][-limit:]
        out = [
            [str(r[0]), plain(r[1]), plain(r[2]), plain(r[3]), plain(r[4]), plain(r[5]), plain(r[7]), plain(r[7]),
             "0" if Book.is_open(r, now) else "1"]
            for r in reversed(page)
        ]  # fmt: skip

        def wrap(items: list[Any]) -> Any:
            return {"code": "0", "msg": "", "data": items}

        return Answer(body=wrap(out), rows=out, wrap=wrap)

    def _instrument(self, symbol: str, market_id: str) -> dict[str, Any]:
        base, quote = split(symbol)
        return {
            "alias": "", "auctionEndTime": "", "baseCcy": base, "category": "1", "ctMult": "", "ctType": "",
            "ctVal": "", "ctValCcy": "", "expTime": "", "instFamily": "", "instId": market_id, "instType": "SPOT",
            "lever": "10", "listTime": "1606468572000", "lotSz": "0.00000001", "maxIcebergSz": "9999999999",
            "maxLmtAmt": "20000000", "maxLmtSz": "9999999999", "maxMktAmt": "1000000", "maxMktSz": "1000000",
            "maxStopSz": "1000000", "maxTriggerSz": "9999999999", "maxTwapSz": "9999999999", "minSz": "0.00001",
            "optType": "", "quoteCcy": quote, "ruleType": "normal", "settleCcy": "", "state": "live", "stk": "",
            "tickSz": "0.1", "uly": "",
        }  # fmt: skip

    def rate_rules(self) -> list[RateRule]:
        return [
            RateRule("instruments", ("/api/v5/public/instruments",), 20, 2.0),
            RateRule("candles", ("/api/v5/market/candles",), 40, 2.0),
            RateRule("history-candles", ("/api/v5/market/history-candles",), 20, 2.0),
        ]

    def refusal(self, kind: str, retry_after: int, now: int) -> Answer:
        return Answer(429, {"msg": "Too Many Requests", "code": "50011"})


# ---------------------------------------------------------------------------------------------------- Kraken
class KrakenApi(VenueApi):
    """Kraken spot REST (https://docs.kraken.com/api-reference/market-data/get-ohlc-data and
    -get-tradable-asset-pairs; limits: https://support.kraken.com/articles/206548367-what-are-the-api-rate-limits-).
    Every answer is ``{"error": [...], "result": ...}``, errors with HTTP 200. OHLC rows ``[time (s), "open",
    "high", "low", "close", "vwap", "volume", count]``, oldest first: "up to 720 of the most recent entries (older
    data cannot be retrieved, regardless of the value of since)", the last one the current, not-yet-committed
    candle, "always present, regardless of the value of since"; ``last`` is the newest committed entry's time. The
    public limit is about one call per second, per IP (per IP and pair for OHLC); over it ``EGeneral:Too many
    requests`` and "additional calls would be restricted for a few seconds (or possibly longer if calls continue
    to be made while rate limited)". Not documented, chosen: ``since`` answers entries strictly after it (ccxt asks
    from one interval before the first candle it wants); the lockout lasts 5 s from the last refused call."""

    name = "kraken"
    routes = ("/0/public/AssetPairs", "/0/public/OHLC")
    ohlcv_route = "/0/public/OHLC"
    policy = "lockout"
    ban_s = 5.0
    INTERVALS = {"1": "1m", "5": "5m", "15": "15m", "30": "30m", "60": "1h", "240": "4h", "1440": "1d", "10080": "1w"}
    OTHER_INTERVALS = ("21600",)
    REACH = 720

    @staticmethod
    def _error(msg: str) -> ApiError:
        return ApiError(Answer(200, {"error": [msg]}))

    def _pair(self, name: str | None) -> str | None:
        if not name:
            return None
        wanted = name.upper()
        return next((s for s in self.book.markets() if wanted in (exchange_id("kraken", s), kraken_altname(s))), None)

    def symbol(self, route: str, path_params: dict[str, str], params: dict[str, str]) -> str | None:
        return self._pair(params.get("pair"))

    def answer(self, route: str, path_params: dict[str, str], params: dict[str, str], now: int) -> Answer:
        if route == "/0/public/AssetPairs":
            wanted = [p for p in params.get("pair", "").split(",") if p]
            symbols = [self._pair(p) for p in wanted] if wanted else self.book.markets()
            if any(s is None for s in symbols):
                raise self._error("EQuery:Unknown asset pair")
            return Answer(body={"error": [], "result": {exchange_id("kraken", s): self._pair_info(s) for s in symbols}})
        sym = self._pair(params.get("pair"))
        if sym is None:
            raise self._error("EQuery:Unknown asset pair" if params.get("pair") else "EGeneral:Invalid arguments")
        code = params.get("interval", "1")
        if code not in self.INTERVALS and code not in self.OTHER_INTERVALS:
            raise self._error("EGeneral:Invalid arguments")
        since = params.get("since")
        if since is not None and not re.fullmatch(r"\d{1,12}(\.\d+)?", since):
            raise self._error("EGeneral:Invalid arguments")
        _, rows = self.book.visible(sym, self.INTERVALS[code], now) if code in self.INTERVALS else ([], [])
        rows = rows[-self.REACH :]
        page = [r for r in rows if since is None or r[0] // 1000 > float(since)]
        if rows and (not page or page[-1] is not rows[-1]):
            page.append(rows[-1])  # the current candle is always there
        committed = [r for r in rows if not Book.is_open(r, now)]
        last = (committed[-1][0] if committed else (rows[0][0] if rows else now)) // 1000
        out = [self._row(r) for r in page]
        key = exchange_id("kraken", sym)

        def wrap(items: list[Any]) -> Any:
            return {"error": [], "result": {key: items, "last": last}}

        return Answer(body=wrap(out), rows=out, wrap=wrap)

    @staticmethod
    def _row(r: Row) -> list[Any]:
        volume, quote = float(r[5]), float(r[7])
        vwap = plain(f"{quote / volume:.8f}") if volume > 0 and quote > 0 else plain(r[4])
        return [r[0] // 1000, plain(r[1]), plain(r[2]), plain(r[3]), plain(r[4]), vwap, r[5], int(r[8])]

    def _pair_info(self, symbol: str) -> dict[str, Any]:
        base, quote = split(symbol)
        fees = [[0, 0.4], [10000, 0.35], [50000, 0.24], [100000, 0.22], [250000, 0.2], [500000, 0.18]]
        fees_maker = [[0, 0.25], [10000, 0.2], [50000, 0.14], [100000, 0.12], [250000, 0.1], [500000, 0.08]]
        alt = kraken_altname(symbol)
        return {
            "altname": alt, "wsname": f"{alt[: -len(quote)] if alt.endswith(quote) else base}/{quote}",
            "aclass_base": "currency", "base": kraken_asset(base), "aclass_quote": "currency",
            "quote": kraken_asset(quote), "lot": "unit", "cost_decimals": 5, "pair_decimals": 1,
            "lot_decimals": 8, "lot_multiplier": 1, "leverage_buy": [2, 3, 4, 5], "leverage_sell": [2, 3, 4, 5],
            "fees": fees, "fees_maker": fees_maker, "fee_volume_currency": "ZUSD", "margin_call": 80,
            "margin_stop": 40, "ordermin": "0.00005", "costmin": "0.5", "tick_size": "0.1", "status": "online",
            "long_position_limit": 270, "short_position_limit": 180,
        }  # fmt: skip

    def rate_rules(self) -> list[RateRule]:
        return [
            RateRule("ip", ("/0/public/AssetPairs",), 1, 1.0),
            RateRule("ohlc", ("/0/public/OHLC",), 1, 1.0, per_symbol=True),
        ]

    def refusal(self, kind: str, retry_after: int, now: int) -> Answer:
        return Answer(200, {"error": ["EGeneral:Too many requests"]})


# ---------------------------------------------------------------------------------------------------- Coinbase
class CoinbaseApi(VenueApi):
    """Coinbase Advanced Trade public REST (https://docs.cdp.coinbase.com/api-reference/advanced-trade-api/rest-api/
    public/get-public-product-candles and .../list-public-products; limits: .../advanced-trade/docs/rest-api-rate-
    limits). Candles ``{"candles": [{"start", "low", "high", "open", "close", "volume"}]}``, strings, times in
    seconds, newest first; ``granularity`` one of ONE_MINUTE FIVE_MINUTE FIFTEEN_MINUTE THIRTY_MINUTE ONE_HOUR
    TWO_HOUR SIX_HOUR ONE_DAY; ``limit`` "max 350"; a start/end span of more than 350 candles is refused with 400
    ``INVALID_ARGUMENT`` "number of candles requested should be less than 350" (measured live, as quoted); an
    unknown product answers 404 ``NOT_FOUND`` "Product ... not supported". 10 requests per second per IP, 429
    over it. Not documented, chosen: ``start`` and ``end`` both inclusive; the 400 texts for a bad granularity or
    missing bounds follow the measured one's wording."""

    name = "coinbase"
    routes = ("/api/v3/brokerage/market/products", "/api/v3/brokerage/market/products/{product_id}/candles")
    ohlcv_route = "/api/v3/brokerage/market/products/{product_id}/candles"
    GRANULARITY = {
        "ONE_MINUTE": ("1m", 60), "FIVE_MINUTE": ("5m", 300), "FIFTEEN_MINUTE": ("15m", 900),
        "THIRTY_MINUTE": ("30m", 1800), "ONE_HOUR": ("1h", 3600), "TWO_HOUR": ("2h", 7200),
        "SIX_HOUR": ("6h", 21600), "ONE_DAY": ("1d", 86400),
    }  # fmt: skip
    MAX = 350

    @staticmethod
    def _invalid(details: str, status: int = 400) -> ApiError:
        return ApiError(Answer(status, {"error": "INVALID_ARGUMENT", "error_details": details, "message": details}))

    def symbol(self, route: str, path_params: dict[str, str], params: dict[str, str]) -> str | None:
        return self.canonical(path_params.get("product_id"))

    def answer(self, route: str, path_params: dict[str, str], params: dict[str, str], now: int) -> Answer:
        if route == "/api/v3/brokerage/market/products":
            kind = params.get("product_type", "SPOT")
            if kind not in ("SPOT", "FUTURE", "UNKNOWN_PRODUCT_TYPE"):
                raise self._invalid("product_type argument is invalid")
            products = [self._product(s, i) for s, i in self.ids().items()] if kind != "FUTURE" else []
            return Answer(body={"products": products, "num_products": len(products)})
        product = path_params["product_id"]
        sym = self.canonical(product)
        if sym is None:
            msg = f"Product {product} not supported"
            raise ApiError(Answer(404, {"error": "NOT_FOUND", "error_details": msg, "message": msg}))
        gran = self.GRANULARITY.get(params.get("granularity", "UNKNOWN_GRANULARITY"))
        if gran is None:
            raise self._invalid("granularity argument is invalid")
        bad = lambda: self._invalid("start and end argument is invalid")  # noqa: E731
        start, end, limit = (_int(params.get(k), bad) for k in ("start", "end", "limit"))
        if start is None or end is None or end < start:
            raise bad()
        if (end - start) // gran[1] > self.MAX:
            raise self._invalid(
                f"start and end argument is invalid - number of candles requested should be less than {self.MAX}"
            )
        if limit is not None and not 1 <= limit <= self.MAX:
            raise self._invalid(f"limit argument is invalid - limit should be between 1 and {self.MAX}")
        _, rows = self.book.visible(sym, gran[0], now)
        page = [r for r in rows if start <= r[0] // 1000 <= end][::-1][: limit or self.MAX]
        out = [
            {"start": str(r[0] // 1000), "low": plain(r[3]), "high": plain(r[2]), "open": plain(r[1]),
             "close": plain(r[4]), "volume": plain(r[5])}
            for r in page
        ]  # fmt: skip

        def wrap(items: list[Any]) -> Any:
            return {"candles": items}

        return Answer(body=wrap(out), rows=out, wrap=wrap)

    def _product(self, symbol: str, market_id: str) -> dict[str, Any]:
        base, quote = split(symbol)
        return {
            "product_id": market_id, "price": "", "price_percentage_change_24h": "", "volume_24h": "",
            "volume_percentage_change_24h": "", "base_increment": "0.00000001", "quote_increment": "0.01",
            "quote_min_size": "1", "quote_max_size": "150000000", "base_min_size": "0.00000001",
            "base_max_size": "3400", "base_name": base, "quote_name": quote, "watched": False,
            "is_disabled": False, "new": False, "status": "online", "cancel_only": False, "limit_only": False,
            "post_only": False, "trading_disabled": False, "auction_mode": False, "product_type": "SPOT",
            "quote_currency_id": quote, "base_currency_id": base, "fcm_trading_session_details": None,
            "mid_market_price": "", "alias": "", "alias_to": [], "base_display_symbol": base,
            "quote_display_symbol": quote, "view_only": False, "price_increment": "0.01",
            "display_name": market_id, "product_venue": "CBE",
        }  # fmt: skip

    def rate_rules(self) -> list[RateRule]:
        return [RateRule("ip", ("*",), 10, 1.0)]

    def refusal(self, kind: str, retry_after: int, now: int) -> Answer:
        return Answer(429, {"errors": [{"id": "rate_limit_exceeded", "message": "Too many requests"}]})


# ---------------------------------------------------------------------------------------------------- Binance.US
class BinanceUsApi(VenueApi):
    """Binance.US spot REST (https://github.com/binance-us/binance-us-api-docs/blob/master/rest-api.md): Binance's
    12-field klines, ``limit`` "Default 500; max 1000" (outside 1..1000: 400 code -1130, as Binance), with
    ``startTime`` the oldest candles from there, else the newest up to ``endTime`` or now; intervals 1m .. 1M (no
    1s). 1,200 request weight per minute per IP, klines 1, exchangeInfo 10, reported in ``X-MBX-USED-WEIGHT-1M``;
    over it 429 with Retry-After, and a call inside that window earns 418, an IP ban."""

    name = "binanceus"
    routes = ("/api/v3/exchangeInfo", "/api/v3/klines", "/api/v3/ping", "/api/v3/time")
    ohlcv_route = "/api/v3/klines"
    policy = "escalate"
    ban_s = 120.0
    INTERVALS = ("1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d", "3d", "1w", "1M")

    @staticmethod
    def _error(code: int, msg: str, status: int = 400) -> ApiError:
        return ApiError(Answer(status, {"code": code, "msg": msg}))

    def symbol(self, route: str, path_params: dict[str, str], params: dict[str, str]) -> str | None:
        return self.canonical(params.get("symbol"))

    def answer(self, route: str, path_params: dict[str, str], params: dict[str, str], now: int) -> Answer:
        if route == "/api/v3/ping":
            return Answer(body={})
        if route == "/api/v3/time":
            return Answer(body={"serverTime": now})
        if route == "/api/v3/exchangeInfo":
            return Answer(body=self._info(params, now))
        for name in ("symbol", "interval"):
            if not params.get(name):
                raise self._error(-1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.")
        sym = self.canonical(params["symbol"])
        if sym is None:
            raise self._error(-1121, "Invalid symbol.")
        if params["interval"] not in self.INTERVALS:
            raise self._error(-1120, "Invalid interval.")
        legal = "'^[0-9]{1,20}$'"

        def bad(n: str) -> Callable[[], ApiError]:
            return lambda: self._error(-1100, f"Illegal characters found in parameter '{n}'; legal range is {legal}.")

        start, end, limit = (_int(params.get(n), bad(n)) for n in ("startTime", "endTime", "limit"))
        limit = 500 if limit is None else limit
        if not 1 <= limit <= 1000:
            raise self._error(-1130, "Invalid data sent for a parameter.")
        times, rows = self.book.visible(sym, params["interval"], now)
        inside = [r for r in rows if (start is None or r[0] >= start) and (end is None or r[0] <= end)]
        page = inside[:limit] if start is not None else inside[-limit:]
        return Answer(body=list(page), rows=list(page), wrap=lambda items: items)

    def _info(self, params: dict[str, str], now: int) -> dict[str, Any]:
        listed = self.ids()
        wanted = [params["symbol"]] if params.get("symbol") else None
        if wanted is not None and any(w not in listed.values() for w in wanted):
            raise self._error(-1121, "Invalid symbol.")
        symbols = []
        for s, i in listed.items():
            if wanted is None or i in wanted:
                base, quote = split(s)
                symbols.append(
                    {
                        "symbol": i, "status": "TRADING", "baseAsset": base, "baseAssetPrecision": 8,
                        "quoteAsset": quote, "quotePrecision": 8, "quoteAssetPrecision": 8,
                        "baseCommissionPrecision": 8, "quoteCommissionPrecision": 8,
                        "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT"],
                        "icebergAllowed": True, "ocoAllowed": True, "quoteOrderQtyMarketAllowed": True,
                        "allowTrailingStop": False, "isSpotTradingAllowed": True, "isMarginTradingAllowed": False,
                        "filters": [], "permissions": ["SPOT"],
                    }
                )  # fmt: skip
        weight = {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 1200}
        orders = {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 1, "limit": 10}
        raw = {"rateLimitType": "RAW_REQUESTS", "interval": "MINUTE", "intervalNum": 5, "limit": 5000}
        return {"timezone": "UTC", "serverTime": now, "rateLimits": [weight, orders, raw], "exchangeFilters": [],
                "symbols": symbols}  # fmt: skip

    def rate_rules(self) -> list[RateRule]:
        weights = (("/api/v3/exchangeInfo", 10), ("/api/v3/klines", 1), ("/api/v3/ping", 1), ("/api/v3/time", 1))
        return [RateRule("weight", ("*",), 1200, 60.0, weights=weights, header="X-MBX-USED-WEIGHT-1M")]

    def refusal(self, kind: str, retry_after: int, now: int) -> Answer:
        if kind == "ban":
            until = now + 1000 * retry_after
            return Answer(418, {"code": -1003, "msg": BAN_MSG.format(until=until)}, {"Retry-After": str(retry_after)})
        return Answer(429, {"code": -1003, "msg": LIMIT_MSG.format(limit=1200)}, {"Retry-After": str(retry_after)})


APIS: dict[str, type[VenueApi]] = {api.name: api for api in (BybitApi, OkxApi, KrakenApi, CoinbaseApi, BinanceUsApi)}
